//! Field types shared by several PDU kinds: login stages, ISID, task attributes and the
//! one-byte code spaces (kept as open newtypes so that values we do not name survive a decode).

/// A login stage (CSG/NSG fields, RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// 0: SecurityNegotiation.
    Security,
    /// 1: LoginOperationalNegotiation.
    Operational,
    /// 2: reserved; never valid, kept so that a decode is lossless.
    Reserved,
    /// 3: FullFeaturePhase.
    FullFeature,
}

impl Stage {
    /// From the 2-bit field value.
    pub fn from_bits(v: u8) -> Stage {
        match v & 3 {
            0 => Stage::Security,
            1 => Stage::Operational,
            2 => Stage::Reserved,
            _ => Stage::FullFeature,
        }
    }

    /// The 2-bit field value.
    pub fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::Reserved => 2,
            Stage::FullFeature => 3,
        }
    }
}

/// The Initiator Session ID (6 bytes: type/OUI/qualifier, RFC 7143 §11.12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Isid(pub [u8; 6]);

/// SCSI task attribute of a SCSI Command (ATTR field, 3 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAttribute {
    /// 0: untagged.
    Untagged,
    /// 1: simple.
    Simple,
    /// 2: ordered.
    Ordered,
    /// 3: head of queue.
    HeadOfQueue,
    /// 4: ACA.
    Aca,
    /// 5..=7: reserved values, kept as received.
    Reserved(u8),
}

impl TaskAttribute {
    /// From the 3-bit field value.
    pub fn from_bits(v: u8) -> Self {
        match v & 7 {
            0 => TaskAttribute::Untagged,
            1 => TaskAttribute::Simple,
            2 => TaskAttribute::Ordered,
            3 => TaskAttribute::HeadOfQueue,
            4 => TaskAttribute::Aca,
            r => TaskAttribute::Reserved(r),
        }
    }

    /// The 3-bit field value.
    pub fn bits(self) -> u8 {
        match self {
            TaskAttribute::Untagged => 0,
            TaskAttribute::Simple => 1,
            TaskAttribute::Ordered => 2,
            TaskAttribute::HeadOfQueue => 3,
            TaskAttribute::Aca => 4,
            TaskAttribute::Reserved(r) => r & 7,
        }
    }
}

/// Task management function codes (RFC 7143 §11.5.1), 7 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TmfFunction(pub u8);

impl TmfFunction {
    /// ABORT TASK.
    pub const ABORT_TASK: Self = Self(1);
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: Self = Self(2);
    /// CLEAR ACA.
    pub const CLEAR_ACA: Self = Self(3);
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: Self = Self(4);
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: Self = Self(5);
    /// TARGET WARM RESET.
    pub const TARGET_WARM_RESET: Self = Self(6);
    /// TARGET COLD RESET.
    pub const TARGET_COLD_RESET: Self = Self(7);
    /// TASK REASSIGN.
    pub const TASK_REASSIGN: Self = Self(8);
}

/// Task management response codes (RFC 7143 §11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TmfResponseCode(pub u8);

impl TmfResponseCode {
    /// Function complete.
    pub const COMPLETE: Self = Self(0);
    /// Task does not exist.
    pub const TASK_DOES_NOT_EXIST: Self = Self(1);
    /// LUN does not exist.
    pub const LUN_DOES_NOT_EXIST: Self = Self(2);
    /// Task still allegiant.
    pub const TASK_STILL_ALLEGIANT: Self = Self(3);
    /// Task allegiance reassignment not supported.
    pub const REASSIGNMENT_NOT_SUPPORTED: Self = Self(4);
    /// Task management function not supported.
    pub const NOT_SUPPORTED: Self = Self(5);
    /// Function authorization failed.
    pub const AUTHORIZATION_FAILED: Self = Self(6);
    /// Function rejected.
    pub const REJECTED: Self = Self(255);
}

/// Logout reason codes (RFC 7143 §11.14.1), 7 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogoutReason(pub u8);

impl LogoutReason {
    /// Close the session.
    pub const CLOSE_SESSION: Self = Self(0);
    /// Close the connection.
    pub const CLOSE_CONNECTION: Self = Self(1);
    /// Remove the connection for recovery.
    pub const REMOVE_CONNECTION: Self = Self(2);
}

/// Logout response codes (RFC 7143 §11.15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogoutResponseCode(pub u8);

impl LogoutResponseCode {
    /// Connection or session closed successfully.
    pub const CLOSED: Self = Self(0);
    /// CID not found.
    pub const CID_NOT_FOUND: Self = Self(1);
    /// Connection recovery is not supported.
    pub const RECOVERY_NOT_SUPPORTED: Self = Self(2);
    /// Cleanup failed for various reasons.
    pub const CLEANUP_FAILED: Self = Self(3);
}

/// Reject reason codes (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RejectReason(pub u8);

impl RejectReason {
    /// Data (payload) digest error.
    pub const DATA_DIGEST_ERROR: Self = Self(0x02);
    /// SNACK reject.
    pub const SNACK_REJECT: Self = Self(0x03);
    /// Protocol error (e.g. SNACK request for a status that was already acknowledged).
    pub const PROTOCOL_ERROR: Self = Self(0x04);
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: Self = Self(0x05);
    /// Immediate command rejected: too many immediate commands.
    pub const IMMEDIATE_COMMAND_REJECT: Self = Self(0x06);
    /// Task in progress.
    pub const TASK_IN_PROGRESS: Self = Self(0x07);
    /// Invalid data ACK.
    pub const INVALID_DATA_ACK: Self = Self(0x08);
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: Self = Self(0x09);
    /// Long operation reject: out of resources generating a target transfer tag.
    pub const LONG_OPERATION_REJECT: Self = Self(0x0a);
    /// Deprecated (negotiation reset in RFC 3720).
    pub const NEGOTIATION_RESET: Self = Self(0x0b);
    /// Waiting for Logout.
    pub const WAITING_FOR_LOGOUT: Self = Self(0x0c);
}

/// SNACK types (RFC 7143 §11.16.1), 4 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnackType(pub u8);

impl SnackType {
    /// Data/R2T SNACK.
    pub const DATA_R2T: Self = Self(0);
    /// Status SNACK.
    pub const STATUS: Self = Self(1);
    /// DataACK.
    pub const DATA_ACK: Self = Self(2);
    /// R-Data SNACK.
    pub const R_DATA: Self = Self(3);
}

/// Login status (Status-Class, Status-Detail; RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    /// Status-Class: 0 success, 1 redirection, 2 initiator error, 3 target error.
    pub class: u8,
    /// Status-Detail within the class.
    pub detail: u8,
}

impl LoginStatus {
    /// 0x0000 Success.
    pub const SUCCESS: Self = Self::new(0, 0);
    /// 0x0101 Target moved temporarily.
    pub const TARGET_MOVED_TEMPORARILY: Self = Self::new(1, 1);
    /// 0x0102 Target moved permanently.
    pub const TARGET_MOVED_PERMANENTLY: Self = Self::new(1, 2);
    /// 0x0200 Initiator error (miscellaneous).
    pub const INITIATOR_ERROR: Self = Self::new(2, 0);
    /// 0x0201 Authentication failure.
    pub const AUTHENTICATION_FAILURE: Self = Self::new(2, 1);
    /// 0x0202 Authorization failure.
    pub const AUTHORIZATION_FAILURE: Self = Self::new(2, 2);
    /// 0x0203 Not found.
    pub const NOT_FOUND: Self = Self::new(2, 3);
    /// 0x0204 Target removed.
    pub const TARGET_REMOVED: Self = Self::new(2, 4);
    /// 0x0205 Unsupported version.
    pub const UNSUPPORTED_VERSION: Self = Self::new(2, 5);
    /// 0x0206 Too many connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self::new(2, 6);
    /// 0x0207 Missing parameter.
    pub const MISSING_PARAMETER: Self = Self::new(2, 7);
    /// 0x0208 Can't include in session.
    pub const CANT_INCLUDE_IN_SESSION: Self = Self::new(2, 8);
    /// 0x0209 Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self::new(2, 9);
    /// 0x020a Session does not exist.
    pub const SESSION_DOES_NOT_EXIST: Self = Self::new(2, 0x0a);
    /// 0x020b Invalid request during login.
    pub const INVALID_DURING_LOGIN: Self = Self::new(2, 0x0b);
    /// 0x0300 Target error (miscellaneous).
    pub const TARGET_ERROR: Self = Self::new(3, 0);
    /// 0x0301 Service unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self::new(3, 1);
    /// 0x0302 Out of resources.
    pub const OUT_OF_RESOURCES: Self = Self::new(3, 2);

    /// A status from its class and detail.
    pub const fn new(class: u8, detail: u8) -> Self {
        LoginStatus { class, detail }
    }

    /// Whether this is the success status.
    pub fn is_success(self) -> bool {
        self.class == 0
    }

    /// Class and detail as one 16-bit number (e.g. 0x0201).
    pub fn code(self) -> u16 {
        u16::from_be_bytes([self.class, self.detail])
    }

    /// The status's name as RFC 7143 §11.13.5 gives it, in lower case with underscores (the
    /// `result` label of the login metrics); `other` for a status this target never sends.
    pub fn name(self) -> &'static str {
        match self {
            Self::SUCCESS => "success",
            Self::TARGET_MOVED_TEMPORARILY => "target_moved_temporarily",
            Self::TARGET_MOVED_PERMANENTLY => "target_moved_permanently",
            Self::INITIATOR_ERROR => "initiator_error",
            Self::AUTHENTICATION_FAILURE => "authentication_failure",
            Self::AUTHORIZATION_FAILURE => "authorization_failure",
            Self::NOT_FOUND => "not_found",
            Self::TARGET_REMOVED => "target_removed",
            Self::UNSUPPORTED_VERSION => "unsupported_version",
            Self::TOO_MANY_CONNECTIONS => "too_many_connections",
            Self::MISSING_PARAMETER => "missing_parameter",
            Self::CANT_INCLUDE_IN_SESSION => "cant_include_in_session",
            Self::SESSION_TYPE_NOT_SUPPORTED => "session_type_not_supported",
            Self::SESSION_DOES_NOT_EXIST => "session_does_not_exist",
            Self::INVALID_DURING_LOGIN => "invalid_during_login",
            Self::TARGET_ERROR => "target_error",
            Self::SERVICE_UNAVAILABLE => "service_unavailable",
            Self::OUT_OF_RESOURCES => "out_of_resources",
            _ => "other",
        }
    }
}

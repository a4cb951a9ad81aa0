//! Why a login was refused: one named reason per failure, for the target's log, and the
//! login status (RFC 7143 §11.13.5) the initiator is sent for it.
//!
//! Every exit of the login state machine and every refusal of the session layer (admission)
//! is a [`LoginError`]; only [`LoginError::status`], at the edge where the failure response is
//! built, turns it into a Status-Class and Status-Detail. The initiator learns the status, the
//! log learns the reason (`Display`).

use super::keys::KeyError;
use crate::iscsi::pdu::{LoginStatus, Stage};

/// The reason a login was refused. `Display` is the log text; the initiator only learns
/// [`LoginError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    // Header and sequencing rules (RFC 7143 §6.3, §11.12).
    /// A Login Request came after the login had already ended (failed, accepted or refused).
    #[error("login request after the login ended")]
    AfterEnd,
    /// Version-min above the only version there is, or Version-max below Version-min.
    #[error("unsupported iSCSI version (min {min:#04x}, max {max:#04x})")]
    UnsupportedVersion {
        /// Version-min of the first request.
        min: u8,
        /// Version-max of the first request.
        max: u8,
    },
    /// The T (transit) and C (continue) bits are both set (RFC 7143 §11.12.2 forbids it).
    #[error("T and C bits both set")]
    TransitAndContinue,
    /// The first request's CSG is neither security nor operational negotiation.
    #[error("login starts in stage {0:?}, not in a negotiation stage")]
    BadFirstStage(Stage),
    /// ISID, TSIH, CID or a version field differs from the first request's (they must stay
    /// the same for the whole login, RFC 7143 §11.12).
    #[error("ISID, TSIH, CID or version changed during the login")]
    LeadingFieldsChanged,
    /// CSG is not the stage the login is in.
    #[error("CSG {got:?} while the login is in stage {current:?}")]
    WrongStage {
        /// The stage the login is in.
        current: Stage,
        /// The request's CSG.
        got: Stage,
    },
    /// T=1 with an NSG that does not follow CSG (only security → operational or full
    /// feature, and operational → full feature exist).
    #[error("invalid stage transition {from:?} -> {to:?}")]
    BadTransition {
        /// CSG.
        from: Stage,
        /// NSG.
        to: Stage,
    },
    /// The login went on for more PDUs than any real negotiation needs.
    #[error("more than {0} login PDUs")]
    TooManyPdus(u32),
    /// A PDU other than a Login Request arrived once the login had started (RFC 7143 §6.3:
    /// the target answers "invalid during login" and disconnects).
    #[error("PDU with opcode {opcode:#04x} during login")]
    NotALoginRequest {
        /// The PDU's opcode.
        opcode: u8,
    },
    /// The initiator sent text while the target's response was still being sent in pieces
    /// (it must answer a continued response with empty requests).
    #[error("data sent while the target's response continues")]
    DataDuringContinuation,

    // Login text (RFC 7143 §6.1-6.2).
    /// The login text is malformed or over a per-request limit.
    #[error("malformed login text: {0}")]
    BadText(KeyError),
    /// A key appears twice in one request.
    #[error("key {0} appears twice in one request")]
    DuplicateKey(String),
    /// A key offered in an earlier request of the login is offered again (RFC 7143 §6.2:
    /// renegotiation is a protocol error).
    #[error("key {0} renegotiated")]
    KeyRenegotiated(String),
    /// A leading-only key (InitiatorName, TargetName, SessionType) in a request after the
    /// first.
    #[error("leading-only key {0} after the first request")]
    LeadingKeyLate(String),
    /// The login offered more keys in all than any real negotiation needs.
    #[error("more than {0} keys in the login")]
    TooManyKeys(usize),
    /// The login's requests carried more text in all than the cap.
    #[error("more than {0} bytes of login text")]
    TooMuchText(usize),
    /// AuthMethod or a CHAP key where the login is not in the security stage.
    #[error("security key {0} outside the security stage")]
    SecurityKeyOutsideSecurity(String),
    /// A security key the authentication exchange does not expect now (AuthMethod twice,
    /// CHAP_A before AuthMethod=CHAP, CHAP_N/CHAP_R before our challenge, the initiator's
    /// CHAP_I/CHAP_C without its response).
    #[error("{0} not expected at this point of the authentication")]
    AuthKeyOutOfOrder(&'static str),

    // Who logs in, to what (RFC 7143 §13.4-13.6).
    /// A mandatory key (InitiatorName, TargetName) is absent or empty.
    #[error("{0} missing")]
    MissingKey(&'static str),
    /// InitiatorName is longer than an iSCSI name can be.
    #[error("InitiatorName longer than 223 bytes")]
    NameTooLong,
    /// SessionType is neither Normal nor Discovery.
    #[error("unknown session type {0:?}")]
    UnknownSessionType(String),
    /// No target of that name is served.
    #[error("no such target")]
    TargetNotFound,
    /// The target exists but its access list does not name the initiator. The initiator is
    /// told the same as for [`LoginError::TargetNotFound`].
    #[error("initiator not in the target's allowed_initiators")]
    InitiatorNotAllowed,

    // Authentication (RFC 7143 §12).
    /// The initiator left (or skipped) the security stage before authenticating, on a target
    /// that requires CHAP.
    #[error("security stage left before authenticating")]
    UnauthenticatedTransit,
    /// Authentication failed.
    #[error("authentication failed: {0}")]
    Auth(AuthError),

    // Operational negotiation (RFC 7143 §13).
    /// The digest policy requires CRC32C and the initiator offered something else, or left
    /// the key out (its default is None).
    #[error("{key}=CRC32C required (--digests require-crc32c), initiator offered {offered}")]
    DigestRequired {
        /// HeaderDigest or DataDigest.
        key: &'static str,
        /// The initiator's offer, or "nothing" when it sent no such key.
        offered: String,
    },

    // Admission, decided by the session layer after negotiation (Login::refuse).
    /// A non-zero TSIH names no live session of this initiator port.
    #[error("TSIH names no live session")]
    SessionDoesNotExist,
    /// A second connection for a live session (MaxConnections is 1), or continuing one
    /// (needs ErrorRecoveryLevel 2).
    #[error("the session takes no more connections")]
    TooManyConnections,
    /// The server's session limit is reached, or no TSIH is free.
    #[error("no room for another session")]
    OutOfResources,
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// CHAP is required but the initiator did not offer it, or offered only CHAP to a target
    /// without authentication.
    #[error("no common AuthMethod")]
    NoCommonMethod,
    /// CHAP_A listed no algorithm we support (MD5).
    #[error("no common CHAP algorithm")]
    NoCommonAlgorithm,
    /// CHAP_N or CHAP_R is missing or CHAP_R is not a binary value.
    #[error("CHAP_N/CHAP_R missing or malformed")]
    MalformedResponse,
    /// CHAP_N is not the configured user.
    #[error("unknown CHAP user")]
    UnknownUser,
    /// CHAP_R does not match the secret.
    #[error("wrong CHAP response")]
    WrongResponse,
    /// The initiator asked for mutual CHAP but the target has no mutual_chap account.
    #[error("mutual CHAP requested but not configured")]
    MutualNotConfigured,
    /// CHAP_I/CHAP_C from the initiator are malformed or one is missing.
    #[error("malformed mutual CHAP challenge")]
    MalformedChallenge,
    /// The initiator's challenge is shorter than the minimum.
    #[error(
        "mutual CHAP challenge shorter than {} bytes",
        super::chap::MIN_PEER_CHALLENGE_LEN
    )]
    ShortChallenge,
    /// The initiator sent our own challenge back (reflection attack).
    #[error("our CHAP challenge reflected back")]
    ReflectedChallenge,
}

impl From<AuthError> for LoginError {
    fn from(a: AuthError) -> Self {
        LoginError::Auth(a)
    }
}

impl From<KeyError> for LoginError {
    /// A key twice in one request gets its own name; every other text error is bad text.
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::DuplicateKey(key) => LoginError::DuplicateKey(key),
            other => LoginError::BadText(other),
        }
    }
}

impl LoginError {
    /// The status sent to the initiator (RFC 7143 §11.13.5).
    pub fn status(&self) -> LoginStatus {
        use LoginError as E;
        match self {
            // 0x0200 "initiator error (miscellaneous)": the protocol was broken. RFC 7143 §6
            // asks for "Initiator Error" or "Missing Parameter" when keys or values are not
            // according to the step definition.
            E::AfterEnd
            | E::TransitAndContinue
            | E::BadFirstStage(_)
            | E::LeadingFieldsChanged
            | E::WrongStage { .. }
            | E::BadTransition { .. }
            | E::TooManyPdus(_)
            | E::DataDuringContinuation
            | E::BadText(_)
            | E::DuplicateKey(_)
            | E::KeyRenegotiated(_)
            | E::LeadingKeyLate(_)
            | E::TooManyKeys(_)
            | E::TooMuchText(_)
            | E::SecurityKeyOutsideSecurity(_)
            | E::AuthKeyOutOfOrder(_)
            | E::NameTooLong => LoginStatus::INITIATOR_ERROR,
            E::UnsupportedVersion { .. } => LoginStatus::UNSUPPORTED_VERSION,
            E::NotALoginRequest { .. } => LoginStatus::INVALID_DURING_LOGIN,
            E::MissingKey(_) => LoginStatus::MISSING_PARAMETER,
            E::UnknownSessionType(_) => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            // One answer for both, so an initiator that is not allowed on a target cannot tell
            // a protected name from one that does not exist.
            E::TargetNotFound | E::InitiatorNotAllowed => LoginStatus::NOT_FOUND,
            E::UnauthenticatedTransit | E::Auth(_) => LoginStatus::AUTHENTICATION_FAILURE,
            // 0x0207 "missing parameter": the target requires a parameter value (CRC32C) the
            // initiator did not offer. Unlike 0x0200, which we send for every protocol error,
            // it points at configuration; libiscsi prints it as "Missing parameter" and
            // open-iscsi reports a non-retryable login failure (02/07), so neither retries in a
            // loop. 0x0201/0x0202 would wrongly blame credentials or access lists.
            E::DigestRequired { .. } => LoginStatus::MISSING_PARAMETER,
            E::SessionDoesNotExist => LoginStatus::SESSION_DOES_NOT_EXIST,
            E::TooManyConnections => LoginStatus::TOO_MANY_CONNECTIONS,
            E::OutOfResources => LoginStatus::OUT_OF_RESOURCES,
        }
    }

    /// Whether this is a failed authentication attempt, the kind a password guesser makes
    /// (such failures are slowed down by the transport).
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            LoginError::Auth(_) | LoginError::UnauthenticatedTransit
        )
    }
}

//! Parsing a CDB into a closed [`Command`] enum.
//!
//! Every supported command has one entry in [`SUPPORTED`] with its CDB usage bitmap (the bits a
//! client may set). Parsing rejects any other set bit with INVALID FIELD IN CDB pointing at it,
//! and REPORT SUPPORTED OPERATION CODES reports the same table, so what we advertise is exactly
//! what we accept. The operation codes and service actions are named once, in [`opcode`] and
//! [`service_action`]; the table, the decoder, the dispatcher, REPORT SUPPORTED OPERATION
//! CODES and the reservations use the names, never the numbers.

use super::sense::Sense;

/// Operation codes (SPC-4, SBC-3) by name: [`SUPPORTED`], the decoder, the dispatcher and
/// REPORT SUPPORTED OPERATION CODES all say which command they mean with these.
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0a;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// RESERVE(6).
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE(6).
    pub const RELEASE_6: u8 = 0x17;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1b;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2a;
    /// WRITE AND VERIFY(10).
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    /// VERIFY(10).
    pub const VERIFY_10: u8 = 0x2f;
    /// PRE-FETCH(10).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// READ DEFECT DATA(10).
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME(10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// SANITIZE (service actions in [`super::service_action::sanitize`]).
    pub const SANITIZE: u8 = 0x48;
    /// MODE SELECT(10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// RESERVE(10).
    pub const RESERVE_10: u8 = 0x56;
    /// RELEASE(10).
    pub const RELEASE_10: u8 = 0x57;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// PERSISTENT RESERVE IN (service actions in [`super::service_action::pr_in`]).
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    /// PERSISTENT RESERVE OUT (service actions in [`super::service_action::pr_out`]).
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    /// EXTENDED COPY (service action in [`super::service_action::EXTENDED_COPY_LID1`]).
    pub const EXTENDED_COPY: u8 = 0x83;
    /// RECEIVE COPY RESULTS (service actions in [`super::service_action::copy_results`]).
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8a;
    /// ORWRITE(16).
    pub const ORWRITE_16: u8 = 0x8b;
    /// WRITE AND VERIFY(16).
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    /// VERIFY(16).
    pub const VERIFY_16: u8 = 0x8f;
    /// PRE-FETCH(16).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// WRITE ATOMIC(16).
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    /// SERVICE ACTION IN(16): READ CAPACITY(16) and GET LBA STATUS.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xa0;
    /// MAINTENANCE IN: REPORT TARGET PORT GROUPS and REPORT SUPPORTED OPERATION CODES.
    pub const MAINTENANCE_IN: u8 = 0xa3;
    /// READ(12).
    pub const READ_12: u8 = 0xa8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xaa;
    /// WRITE AND VERIFY(12).
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    /// VERIFY(12).
    pub const VERIFY_12: u8 = 0xaf;
    /// READ DEFECT DATA(12).
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// Service actions (byte 1 bits 4..0) of the opcodes that carry one.
pub mod service_action {
    /// SERVICE ACTION IN(16): READ CAPACITY(16).
    pub const READ_CAPACITY_16: u8 = 0x10;
    /// SERVICE ACTION IN(16): GET LBA STATUS.
    pub const GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN: REPORT TARGET PORT GROUPS.
    pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
    /// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES.
    pub const REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;

    /// EXTENDED COPY: the LID1 form (one-byte list identifiers).
    pub const EXTENDED_COPY_LID1: u8 = 0x00;

    /// RECEIVE COPY RESULTS service actions (SPC-4 6.20).
    pub mod copy_results {
        /// COPY STATUS of one held copy.
        pub const COPY_STATUS: u8 = 0x00;
        /// OPERATING PARAMETERS: the copy manager's limits.
        pub const OPERATING_PARAMETERS: u8 = 0x03;
    }

    /// SANITIZE service actions (SBC-4 5.30).
    pub mod sanitize {
        /// OVERWRITE.
        pub const OVERWRITE: u8 = 0x01;
        /// BLOCK ERASE.
        pub const BLOCK_ERASE: u8 = 0x02;
        /// CRYPTOGRAPHIC ERASE.
        pub const CRYPTO_ERASE: u8 = 0x03;
        /// EXIT FAILURE MODE.
        pub const EXIT_FAILURE_MODE: u8 = 0x1f;
    }

    /// PERSISTENT RESERVE IN service actions (SPC-4 6.15).
    pub mod pr_in {
        /// READ KEYS.
        pub const READ_KEYS: u8 = 0;
        /// READ RESERVATION.
        pub const READ_RESERVATION: u8 = 1;
        /// REPORT CAPABILITIES.
        pub const REPORT_CAPABILITIES: u8 = 2;
        /// READ FULL STATUS.
        pub const READ_FULL_STATUS: u8 = 3;
    }

    /// PERSISTENT RESERVE OUT service actions (SPC-4 6.16).
    pub mod pr_out {
        /// REGISTER.
        pub const REGISTER: u8 = 0;
        /// RESERVE.
        pub const RESERVE: u8 = 1;
        /// RELEASE.
        pub const RELEASE: u8 = 2;
        /// CLEAR.
        pub const CLEAR: u8 = 3;
        /// PREEMPT.
        pub const PREEMPT: u8 = 4;
        /// PREEMPT AND ABORT.
        pub const PREEMPT_AND_ABORT: u8 = 5;
        /// REGISTER AND IGNORE EXISTING KEY.
        pub const REGISTER_AND_IGNORE: u8 = 6;
        /// REGISTER AND MOVE.
        pub const REGISTER_AND_MOVE: u8 = 7;
    }
}

use service_action::{copy_results, pr_in, pr_out, sanitize};

/// One supported operation code (and service action) with its CDB usage bitmap.
#[derive(Debug)]
pub struct OpInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that carry one in byte 1 bits 4..0.
    pub service_action: Option<u16>,
    /// CDB usage data (SPC-4 6.35.3): byte 0 is the opcode, then a mask per CDB byte.
    pub usage: &'static [u8],
}

/// A [`SUPPORTED`] entry: `op!(NAME => [masks])` for an [`opcode`] without a service action,
/// `op!(NAME, ACTION => [masks])` for one service action of it. The masks are the usage data
/// of CDB bytes 1 onwards; byte 0 of the usage data is the opcode itself, filled in here.
macro_rules! op {
    ($code:ident => [$($mask:expr),* $(,)?]) => {
        OpInfo {
            opcode: opcode::$code,
            service_action: None,
            usage: &[opcode::$code, $($mask),*],
        }
    };
    ($code:ident, $sa:path => [$($mask:expr),* $(,)?]) => {
        OpInfo {
            opcode: opcode::$code,
            service_action: Some($sa as u16),
            usage: &[opcode::$code, $($mask),*],
        }
    };
}

/// Opcodes whose byte 1 bits 4..0 hold a service action.
const SERVICE_ACTION_OPCODES: [u8; 7] = [
    opcode::SANITIZE,
    opcode::PERSISTENT_RESERVE_IN,
    opcode::PERSISTENT_RESERVE_OUT,
    opcode::EXTENDED_COPY,
    opcode::RECEIVE_COPY_RESULTS,
    opcode::SERVICE_ACTION_IN_16,
    opcode::MAINTENANCE_IN,
];

/// Every command this target implements, sorted by opcode then service action.
// One line (or two) per command, so the table reads as one; rustfmt would spread each
// usage array over a dozen lines.
#[rustfmt::skip]
pub static SUPPORTED: &[OpInfo] = &[
    op!(TEST_UNIT_READY => [0, 0, 0, 0, 0]),
    op!(REQUEST_SENSE => [0x01, 0, 0, 0xff, 0]),
    op!(READ_6 => [0x1f, 0xff, 0xff, 0xff, 0]),
    op!(WRITE_6 => [0x1f, 0xff, 0xff, 0xff, 0]),
    op!(INQUIRY => [0x01, 0xff, 0xff, 0xff, 0]),
    op!(MODE_SELECT_6 => [0x10, 0, 0, 0xff, 0]),
    op!(RESERVE_6 => [0, 0, 0, 0, 0]),
    op!(RELEASE_6 => [0, 0, 0, 0, 0]),
    op!(MODE_SENSE_6 => [0x08, 0xff, 0xff, 0xff, 0]),
    op!(START_STOP_UNIT => [0x01, 0, 0x0f, 0xf7, 0]),
    op!(PREVENT_ALLOW_MEDIUM_REMOVAL => [0, 0, 0, 0x03, 0]),
    op!(READ_CAPACITY_10 => [0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0]),
    op!(READ_10 => [0x1e, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(WRITE_10 => [0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(WRITE_AND_VERIFY_10 => [0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(VERIFY_10 => [0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(PRE_FETCH_10 => [0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(SYNCHRONIZE_CACHE_10 => [0x06, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(READ_DEFECT_DATA_10 => [0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(WRITE_SAME_10 => [0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]),
    op!(UNMAP => [0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0]),
    op!(SANITIZE, sanitize::OVERWRITE => [0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(SANITIZE, sanitize::BLOCK_ERASE => [0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(SANITIZE, sanitize::CRYPTO_ERASE => [0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(SANITIZE, sanitize::EXIT_FAILURE_MODE => [0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(MODE_SELECT_10 => [0x10, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(RESERVE_10 => [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    op!(RELEASE_10 => [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    op!(MODE_SENSE_10 => [0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_IN, pr_in::READ_KEYS => [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_IN, pr_in::READ_RESERVATION => [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_IN, pr_in::REPORT_CAPABILITIES => [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_IN, pr_in::READ_FULL_STATUS => [0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::REGISTER => [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::RESERVE => [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::RELEASE => [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::CLEAR => [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::PREEMPT => [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::PREEMPT_AND_ABORT =>
        [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::REGISTER_AND_IGNORE =>
        [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(PERSISTENT_RESERVE_OUT, pr_out::REGISTER_AND_MOVE =>
        [0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]),
    op!(EXTENDED_COPY, service_action::EXTENDED_COPY_LID1 =>
        [0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(RECEIVE_COPY_RESULTS, copy_results::COPY_STATUS =>
        [0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(RECEIVE_COPY_RESULTS, copy_results::OPERATING_PARAMETERS =>
        [0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(READ_16 =>
        [0x1e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(COMPARE_AND_WRITE =>
        [0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0]),
    op!(WRITE_16 =>
        [0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(ORWRITE_16 =>
        [0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(WRITE_AND_VERIFY_16 =>
        [0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(VERIFY_16 =>
        [0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(PRE_FETCH_16 =>
        [0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(SYNCHRONIZE_CACHE_16 =>
        [0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(WRITE_SAME_16 =>
        [0x19, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(WRITE_ATOMIC_16 =>
        [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0x1f, 0]),
    op!(SERVICE_ACTION_IN_16, service_action::READ_CAPACITY_16 =>
        [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0]),
    op!(SERVICE_ACTION_IN_16, service_action::GET_LBA_STATUS =>
        [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(REPORT_LUNS => [0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(MAINTENANCE_IN, service_action::REPORT_TARGET_PORT_GROUPS =>
        [0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(MAINTENANCE_IN, service_action::REPORT_SUPPORTED_OPERATION_CODES =>
        [0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
    op!(READ_12 => [0x1e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(WRITE_12 => [0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(WRITE_AND_VERIFY_12 => [0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(VERIFY_12 => [0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]),
    op!(READ_DEFECT_DATA_12 => [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]),
];

/// Finds the table entry for `opcode` (and `service_action` when the opcode has one).
pub fn lookup(opcode: u8, service_action: u16) -> Option<&'static OpInfo> {
    SUPPORTED.iter().find(|info| {
        info.opcode == opcode && info.service_action.map_or(true, |sa| sa == service_action)
    })
}

/// True when `opcode` carries a service action in byte 1.
pub fn has_service_action(opcode: u8) -> bool {
    SERVICE_ACTION_OPCODES.contains(&opcode)
}

/// Address, length and cache hints shared by the block data commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks.
    pub blocks: u32,
    /// Disable page out (a cache hint we accept and ignore).
    pub dpo: bool,
    /// Force unit access: the data must be durable before status.
    pub fua: bool,
    /// CDB byte of the transfer length field (for INVALID FIELD IN CDB pointers).
    pub length_byte: u16,
}

/// A parsed CDB. Only commands in [`SUPPORTED`] parse to anything but `Unsupported`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor-format sense requested.
        desc: bool,
        /// Allocation length.
        alloc_len: u32,
    },
    /// INQUIRY.
    Inquiry {
        /// Vital product data requested.
        evpd: bool,
        /// VPD page code.
        page: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MODE SENSE(6) / MODE SENSE(10).
    ModeSense {
        /// The 10-byte form (8-byte header, LLBAA allowed).
        long: bool,
        /// Disable block descriptors.
        dbd: bool,
        /// Long LBA block descriptors accepted.
        llbaa: bool,
        /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
        pc: u8,
        /// Page code (0x3f = all).
        page: u8,
        /// Subpage code (0xff = all).
        subpage: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MODE SELECT(6) / MODE SELECT(10).
    ModeSelect {
        /// The 10-byte form.
        long: bool,
        /// Page format.
        pf: bool,
        /// Save pages.
        sp: bool,
        /// Parameter list length.
        param_len: u32,
    },
    /// RESERVE(6) / RESERVE(10).
    Reserve,
    /// RELEASE(6) / RELEASE(10).
    Release,
    /// START STOP UNIT.
    StartStopUnit {
        /// Load/eject.
        loej: bool,
        /// Start.
        start: bool,
        /// Power condition field.
        power_condition: u8,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow {
        /// The PREVENT field.
        prevent: u8,
    },
    /// READ DEFECT DATA(10/12).
    ReadDefectData {
        /// The 12-byte form (8-byte header).
        long: bool,
        /// REQ_PLIST (0x10) and REQ_GLIST (0x08) as they sit in the CDB.
        lists: u8,
        /// DEFECT LIST FORMAT.
        format: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ CAPACITY(10).
    ReadCapacity10 {
        /// Logical block address field (must be 0 unless PMI).
        lba: u32,
        /// Partial medium indicator.
        pmi: bool,
    },
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ(6/10/12/16).
    Read(Extent),
    /// WRITE(6/10/12/16).
    Write(Extent),
    /// WRITE AND VERIFY(10/12/16).
    WriteAndVerify(Extent),
    /// VERIFY(10/12/16).
    Verify {
        /// The range to verify.
        extent: Extent,
        /// BYTCHK: 0 medium check only, 1 compare, 3 compare one block against each.
        bytchk: u8,
    },
    /// ORWRITE(16).
    OrWrite(Extent),
    /// WRITE ATOMIC(16): written whole or not at all, never interleaved with other commands.
    WriteAtomic(Extent),
    /// COMPARE AND WRITE.
    CompareAndWrite(Extent),
    /// SYNCHRONIZE CACHE(10/16).
    SyncCache {
        /// First block (range checked only).
        lba: u64,
        /// Number of blocks (0 = to the end).
        blocks: u32,
    },
    /// PRE-FETCH(10/16).
    PreFetch {
        /// First block.
        lba: u64,
        /// Number of blocks (0 = to the end).
        blocks: u32,
    },
    /// WRITE SAME(10/16).
    WriteSame {
        /// The range written.
        extent: Extent,
        /// Deallocate instead of writing when possible.
        unmap: bool,
        /// Anchor (not supported; rejected).
        anchor: bool,
        /// No data-out buffer: write zeros.
        ndob: bool,
    },
    /// UNMAP.
    Unmap {
        /// ANCHOR (not supported; rejected).
        anchor: bool,
        /// Parameter list length.
        param_len: u32,
    },
    /// SANITIZE.
    Sanitize {
        /// Return status at once and sanitize in the background.
        immed: bool,
        /// Allow unrestricted sanitize exit: EXIT FAILURE MODE may end a failure of this one.
        ause: bool,
        /// Service action ([`service_action::sanitize`]).
        action: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting block.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action.
        action: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action.
        action: u8,
        /// Scope (byte 2 bits 7..4).
        scope: u8,
        /// Reservation type (byte 2 bits 3..0).
        pr_type: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// EXTENDED COPY (LID1).
    ExtendedCopy {
        /// Parameter list length.
        param_len: u32,
    },
    /// RECEIVE COPY RESULTS.
    ReceiveCopyResults {
        /// Service action ([`service_action::copy_results`]).
        action: u8,
        /// LIST IDENTIFIER of the copy asked about (COPY STATUS).
        list_id: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT.
        select: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT TARGET PORT GROUPS.
    ReportTargetPortGroups {
        /// PARAMETER DATA FORMAT: 000b length only, 001b the extended header.
        format: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// Return command timeouts descriptors.
        rctd: bool,
        /// Reporting options.
        options: u8,
        /// Requested operation code.
        opcode: u8,
        /// Requested service action.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// Anything else: answered with INVALID COMMAND OPERATION CODE.
    Unsupported {
        /// The operation code.
        opcode: u8,
    },
}

impl Command {
    /// Commands that describe the unit and its paths rather than use it: they work while a
    /// sanitize runs (SBC-4 4.11.1), on a LUN that is not ready and through a standby or
    /// unavailable ALUA path, so an initiator can always see the LUN and follow what is going
    /// on.
    pub fn describes_unit(&self) -> bool {
        matches!(
            self,
            Command::Inquiry { .. }
                | Command::ReportLuns { .. }
                | Command::RequestSense { .. }
                | Command::ReportSupportedOpcodes { .. }
                | Command::ReportTargetPortGroups { .. }
        )
    }
}

/// Big-endian field at byte `at` (the caller has checked the length).
pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Big-endian field at byte `at` (the caller has checked the length).
pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Big-endian field at byte `at` (the caller has checked the length).
pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Block address and length from a 10-, 12- or 16-byte data CDB, with DPO/FUA from byte 1.
fn extent(c: &[u8]) -> Extent {
    let (lba, blocks, length_byte) = match c.len() {
        10 => (u64::from(be32(c, 2)), u32::from(be16(c, 7)), 7),
        12 => (u64::from(be32(c, 2)), be32(c, 6), 6),
        _ => (be64(c, 2), be32(c, 10), 10),
    };
    Extent {
        lba,
        blocks,
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
        length_byte,
    }
}

/// Parses a CDB. `Ok(Command::Unsupported)` for unknown opcodes; `Err` (ILLEGAL REQUEST with a
/// field pointer) for a known opcode with a bad field, or an unknown service action.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let sa = if has_service_action(opcode) {
        match cdb.get(1) {
            Some(b) => u16::from(b & 0x1f),
            None => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
    } else {
        0
    };
    let Some(info) = lookup(opcode, sa) else {
        if has_service_action(opcode) && SUPPORTED.iter().any(|i| i.opcode == opcode) {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        return Ok(Command::Unsupported { opcode });
    };
    let Some(c) = cdb.get(..info.usage.len()) else {
        // Shorter than the command's CDB length: the transport lost bytes.
        return Err(Sense::invalid_cdb_field(0, None));
    };
    check_usage(c, info.usage)?;
    Ok(decode(c, sa))
}

/// Rejects any bit outside the usage bitmap, pointing at the highest offending bit.
fn check_usage(cdb: &[u8], usage: &[u8]) -> Result<(), Sense> {
    for (index, (&byte, &mask)) in cdb.iter().zip(usage).enumerate().skip(1) {
        let bad = byte & !mask;
        if bad != 0 {
            let bit = 7 - bad.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(index as u16, Some(bit)));
        }
    }
    Ok(())
}

/// Decodes a CDB that has the right length and passed the usage check.
fn decode(c: &[u8], sa: u16) -> Command {
    match c[0] {
        opcode::TEST_UNIT_READY => Command::TestUnitReady,
        opcode::REQUEST_SENSE => Command::RequestSense {
            desc: c[1] & 1 != 0,
            alloc_len: u32::from(c[4]),
        },
        opcode::READ_6 | opcode::WRITE_6 => {
            // READ(6)/WRITE(6): a transfer length of 0 means 256 blocks.
            let blocks = match c[4] {
                0 => 256,
                n => u32::from(n),
            };
            let e = Extent {
                lba: u64::from(be32(c, 0) & 0x001f_ffff),
                blocks,
                dpo: false,
                fua: false,
                length_byte: 4,
            };
            if c[0] == opcode::READ_6 {
                Command::Read(e)
            } else {
                Command::Write(e)
            }
        }
        opcode::INQUIRY => Command::Inquiry {
            evpd: c[1] & 1 != 0,
            page: c[2],
            alloc_len: u32::from(be16(c, 3)),
        },
        opcode::MODE_SELECT_6 | opcode::MODE_SELECT_10 => Command::ModeSelect {
            long: c[0] == opcode::MODE_SELECT_10,
            pf: c[1] & 0x10 != 0,
            sp: c[1] & 0x01 != 0,
            param_len: if c[0] == opcode::MODE_SELECT_10 {
                u32::from(be16(c, 7))
            } else {
                u32::from(c[4])
            },
        },
        opcode::RESERVE_6 | opcode::RESERVE_10 => Command::Reserve,
        opcode::RELEASE_6 | opcode::RELEASE_10 => Command::Release,
        opcode::MODE_SENSE_6 | opcode::MODE_SENSE_10 => Command::ModeSense {
            long: c[0] == opcode::MODE_SENSE_10,
            dbd: c[1] & 0x08 != 0,
            llbaa: c[1] & 0x10 != 0,
            pc: c[2] >> 6,
            page: c[2] & 0x3f,
            subpage: c[3],
            alloc_len: if c[0] == opcode::MODE_SENSE_10 {
                u32::from(be16(c, 7))
            } else {
                u32::from(c[4])
            },
        },
        opcode::START_STOP_UNIT => Command::StartStopUnit {
            loej: c[4] & 0x02 != 0,
            start: c[4] & 0x01 != 0,
            power_condition: c[4] >> 4,
        },
        opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => Command::PreventAllow { prevent: c[4] & 3 },
        opcode::READ_DEFECT_DATA_10 => Command::ReadDefectData {
            long: false,
            lists: c[2] & 0x18,
            format: c[2] & 0x07,
            alloc_len: u32::from(be16(c, 7)),
        },
        opcode::READ_DEFECT_DATA_12 => Command::ReadDefectData {
            long: true,
            lists: c[1] & 0x18,
            format: c[1] & 0x07,
            alloc_len: be32(c, 6),
        },
        opcode::SANITIZE => Command::Sanitize {
            immed: c[1] & 0x80 != 0,
            ause: c[1] & 0x20 != 0,
            action: sa as u8,
            param_len: u32::from(be16(c, 7)),
        },
        opcode::WRITE_ATOMIC_16 => Command::WriteAtomic(Extent {
            lba: be64(c, 2),
            blocks: u32::from(be16(c, 12)),
            dpo: c[1] & 0x10 != 0,
            fua: c[1] & 0x08 != 0,
            length_byte: 12,
        }),
        opcode::READ_CAPACITY_10 => Command::ReadCapacity10 {
            lba: be32(c, 2),
            pmi: c[8] & 1 != 0,
        },
        opcode::READ_10 | opcode::READ_12 | opcode::READ_16 => Command::Read(extent(c)),
        opcode::WRITE_10 | opcode::WRITE_12 | opcode::WRITE_16 => Command::Write(extent(c)),
        opcode::WRITE_AND_VERIFY_10 | opcode::WRITE_AND_VERIFY_12 | opcode::WRITE_AND_VERIFY_16 => {
            Command::WriteAndVerify(extent(c))
        }
        opcode::VERIFY_10 | opcode::VERIFY_12 | opcode::VERIFY_16 => Command::Verify {
            extent: extent(c),
            bytchk: (c[1] >> 1) & 3,
        },
        opcode::PRE_FETCH_10 | opcode::PRE_FETCH_16 => {
            let e = extent(c);
            Command::PreFetch {
                lba: e.lba,
                blocks: e.blocks,
            }
        }
        opcode::SYNCHRONIZE_CACHE_10 | opcode::SYNCHRONIZE_CACHE_16 => {
            let e = extent(c);
            Command::SyncCache {
                lba: e.lba,
                blocks: e.blocks,
            }
        }
        opcode::WRITE_SAME_10 | opcode::WRITE_SAME_16 => Command::WriteSame {
            extent: Extent {
                dpo: false,
                fua: false,
                ..extent(c)
            },
            unmap: c[1] & 0x08 != 0,
            anchor: c[1] & 0x10 != 0,
            ndob: c[0] == opcode::WRITE_SAME_16 && c[1] & 0x01 != 0,
        },
        opcode::UNMAP => Command::Unmap {
            anchor: c[1] & 0x01 != 0,
            param_len: u32::from(be16(c, 7)),
        },
        opcode::PERSISTENT_RESERVE_IN => Command::PersistentReserveIn {
            action: sa as u8,
            alloc_len: u32::from(be16(c, 7)),
        },
        opcode::PERSISTENT_RESERVE_OUT => Command::PersistentReserveOut {
            action: sa as u8,
            scope: c[2] >> 4,
            pr_type: c[2] & 0x0f,
            param_len: be32(c, 5),
        },
        opcode::COMPARE_AND_WRITE => Command::CompareAndWrite(Extent {
            blocks: u32::from(c[13]),
            length_byte: 13,
            ..extent(c)
        }),
        opcode::ORWRITE_16 => Command::OrWrite(extent(c)),
        opcode::SERVICE_ACTION_IN_16 if sa == u16::from(service_action::READ_CAPACITY_16) => {
            Command::ReadCapacity16 {
                alloc_len: be32(c, 10),
            }
        }
        opcode::SERVICE_ACTION_IN_16 => Command::GetLbaStatus {
            lba: be64(c, 2),
            alloc_len: be32(c, 10),
        },
        opcode::EXTENDED_COPY => Command::ExtendedCopy {
            param_len: be32(c, 10),
        },
        opcode::RECEIVE_COPY_RESULTS => Command::ReceiveCopyResults {
            action: sa as u8,
            list_id: c[2],
            alloc_len: be32(c, 10),
        },
        opcode::REPORT_LUNS => Command::ReportLuns {
            select: c[2],
            alloc_len: be32(c, 6),
        },
        opcode::MAINTENANCE_IN if sa == u16::from(service_action::REPORT_TARGET_PORT_GROUPS) => {
            Command::ReportTargetPortGroups {
                format: c[1] >> 5,
                alloc_len: be32(c, 6),
            }
        }
        opcode::MAINTENANCE_IN => Command::ReportSupportedOpcodes {
            rctd: c[2] & 0x80 != 0,
            options: c[2] & 0x07,
            opcode: c[3],
            service_action: be16(c, 4),
            alloc_len: be32(c, 6),
        },
        opcode => Command::Unsupported { opcode },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::asc;

    fn pad16(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(16, 0);
        v
    }

    #[test]
    fn table_is_sorted_and_masks_match_opcodes() {
        for pair in SUPPORTED.windows(2) {
            let a = (pair[0].opcode, pair[0].service_action);
            let b = (pair[1].opcode, pair[1].service_action);
            assert!(a < b, "{a:?} !< {b:?}");
        }
        for info in SUPPORTED {
            assert_eq!(info.usage[0], info.opcode);
            let expected_len = match info.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(info.usage.len(), expected_len, "opcode {:#x}", info.opcode);
        }
    }

    #[test]
    fn parses_read10_with_padding() {
        let cdb = pad16(&[0x28, 0x18, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        assert_eq!(
            parse(&cdb),
            Ok(Command::Read(Extent {
                lba: 0x1234,
                blocks: 8,
                dpo: true,
                fua: true,
                length_byte: 7
            }))
        );
    }

    #[test]
    fn read6_zero_length_means_256() {
        let cdb = [0x08, 0x01, 0x02, 0x03, 0, 0];
        assert_eq!(
            parse(&cdb),
            Ok(Command::Read(Extent {
                lba: 0x010203,
                blocks: 256,
                dpo: false,
                fua: false,
                length_byte: 4
            }))
        );
    }

    #[test]
    fn parses_write16_and_caw() {
        let cdb = [0x8a, 0x08, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0];
        assert_eq!(
            parse(&cdb),
            Ok(Command::Write(Extent {
                lba: (1 << 32) + 2,
                blocks: 4,
                dpo: false,
                fua: true,
                length_byte: 10
            }))
        );
        let caw = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0];
        assert_eq!(
            parse(&caw),
            Ok(Command::CompareAndWrite(Extent {
                lba: 9,
                blocks: 1,
                dpo: false,
                fua: false,
                length_byte: 13
            }))
        );
    }

    #[test]
    fn rdprotect_is_rejected_with_bit_pointer() {
        let cdb = pad16(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]);
        let err = parse(&cdb).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
        let field = err.field.unwrap();
        assert_eq!((field.in_cdb, field.byte, field.bit), (true, 1, Some(5)));
    }

    #[test]
    fn naca_in_control_byte_is_rejected() {
        let err = parse(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err();
        let field = err.field.unwrap();
        assert_eq!((field.byte, field.bit), (5, Some(2)));
    }

    #[test]
    fn unknown_opcode_and_service_action() {
        assert_eq!(
            parse(&[0x04, 0, 0, 0, 0, 0]),
            Ok(Command::Unsupported { opcode: 0x04 })
        );
        assert_eq!(parse(&[]), Err(Sense::invalid_opcode()));
        // READ CAPACITY(16) family with an unknown service action.
        let err = parse(&pad16(&[0x9e, 0x11])).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(err.field.unwrap().byte, 1);
    }

    #[test]
    fn short_cdb_is_rejected() {
        let err = parse(&[0x28, 0, 0]).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn parses_service_action_commands() {
        let rc16 = pad16(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32]);
        assert_eq!(parse(&rc16), Ok(Command::ReadCapacity16 { alloc_len: 32 }));
        let prout = [0x5f, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(
            parse(&pad16(&prout)),
            Ok(Command::PersistentReserveOut {
                action: 1,
                scope: 0,
                pr_type: 3,
                param_len: 24
            })
        );
        let rsoc = [0xa3, 0x0c, 0x81, 0x28, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(
            parse(&pad16(&rsoc)),
            Ok(Command::ReportSupportedOpcodes {
                rctd: true,
                options: 1,
                opcode: 0x28,
                service_action: 0,
                alloc_len: 256
            })
        );
    }

    #[test]
    fn every_bit_outside_the_usage_map_is_rejected_with_its_pointer() {
        for info in SUPPORTED {
            let mut base = vec![0u8; info.usage.len()];
            base[0] = info.opcode;
            if let Some(sa) = info.service_action {
                base[1] = sa as u8;
            }
            for byte in 1..info.usage.len() {
                for bit in 0..8u8 {
                    if info.usage[byte] & (1 << bit) != 0 {
                        continue;
                    }
                    let mut cdb = base.clone();
                    cdb[byte] |= 1 << bit;
                    let err = parse(&cdb).unwrap_err();
                    assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB, "{cdb:02x?}");
                    let field = err.field.unwrap();
                    assert_eq!(
                        (field.byte, field.bit),
                        (byte as u16, Some(bit)),
                        "{cdb:02x?}"
                    );
                }
            }
            // With only the service action set the command parses.
            assert!(parse(&base).is_ok(), "{base:02x?}");
        }
    }
}

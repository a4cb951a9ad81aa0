//! iSCSI PDUs (RFC 7143 §11) and their framing, free of I/O.
//!
//! # Public API
//!
//! * [`Pdu`]: a closed enum over every PDU kind, one struct per kind in its own file
//!   (initiator → target: [`NopOut`], [`ScsiCommand`], [`TaskMgmtRequest`], [`LoginRequest`],
//!   [`TextRequest`], [`DataOut`], [`LogoutRequest`], [`Snack`]; target → initiator:
//!   [`NopIn`], [`ScsiResponse`], [`TaskMgmtResponse`], [`LoginResponse`], [`TextResponse`],
//!   [`DataIn`], [`LogoutResponse`], [`R2t`], [`AsyncMessage`], [`Reject`]) plus
//!   [`UnknownPdu`] for any other opcode. Each struct holds every BHS field of its kind (but not
//!   TotalAHSLength/DataSegmentLength, which the codec derives), its AHS in typed form (only
//!   SCSI Command has any) and its data segment as [`bytes::Bytes`] without padding.
//! * [`PduCodec`]: the framing codec.
//!   - [`PduCodec::decode`] takes bytes from a `BytesMut` incrementally: `Ok(None)` until a whole
//!     PDU (BHS, AHS, header digest, padded data, data digest) is buffered; the data segment is
//!     split off the buffer without copying.
//!   - [`PduCodec::encode`] returns an [`EncodedPdu`]: header bytes (BHS + AHS + header digest),
//!     the data `Bytes` untouched, and a small trailer (padding + data digest), ready for a
//!     vectored write. [`PduCodec::encode_into`] appends all of it to a `BytesMut` instead.
//!   - Digests ([`Digests`]) and the receive limit (our MaxRecvDataSegmentLength) are set with
//!     [`PduCodec::set_digests`] / [`PduCodec::set_max_recv_data_segment_length`] and take effect
//!     from the next PDU, which is what the switch at the end of login needs.
//! * [`PduError`]: framing and decoding errors. Recoverable ones
//!   ([`PduError::is_recoverable`]) consumed the bad PDU and carry its header for a Reject.
//! * [`LunField`]: the 8-byte LUN field and flat LUN numbers.
//! * [`serial`]: RFC 1982 serial number comparisons for CmdSN/StatSN.
//! * Field types: [`Stage`], [`Isid`], [`TaskAttribute`], [`LoginStatus`], and open code
//!   newtypes [`TmfFunction`], [`TmfResponseCode`], [`LogoutReason`], [`LogoutResponseCode`],
//!   [`RejectReason`], [`SnackType`].
//!
//! Decoding checks framing and structure only (lengths, digests, AHS layout, data segments on
//! PDU kinds that have none); sequence numbers, tags and state belong to the session.

mod async_message;
mod bhs;
mod codec;
mod data_in;
mod data_out;
mod error;
mod fields;
mod login_request;
mod login_response;
mod logout_request;
mod logout_response;
mod lun;
mod nop_in;
mod nop_out;
mod r2t;
mod reject;
mod scsi_command;
mod scsi_response;
pub mod serial;
mod snack;
mod task_mgmt_request;
mod task_mgmt_response;
mod text_request;
mod text_response;
mod unknown;

#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use async_message::{
    AsyncMessage, ASYNC_EVENT_DROPPING_ALL_CONNECTIONS, ASYNC_EVENT_DROPPING_CONNECTION,
    ASYNC_EVENT_LOGOUT_REQUESTED,
};
pub use bhs::BHS_LEN;
pub use codec::{Digests, EncodedPdu, PduCodec, DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH};
pub use data_in::DataIn;
pub use data_out::DataOut;
pub use error::PduError;
pub use fields::{
    Isid, LoginStatus, LogoutReason, LogoutResponseCode, RejectReason, SnackType, Stage,
    TaskAttribute, TmfFunction, TmfResponseCode,
};
pub use login_request::LoginRequest;
pub use login_response::LoginResponse;
pub use logout_request::LogoutRequest;
pub use logout_response::LogoutResponse;
pub use lun::LunField;
pub use nop_in::NopIn;
pub use nop_out::NopOut;
pub use r2t::R2t;
pub use reject::Reject;
pub use scsi_command::{ScsiCommand, MAX_CDB_LEN};
pub use scsi_response::{ScsiResponse, RESPONSE_COMPLETED, RESPONSE_TARGET_FAILURE};
pub use snack::Snack;
pub use task_mgmt_request::TaskMgmtRequest;
pub use task_mgmt_response::TaskMgmtResponse;
pub use text_request::TextRequest;
pub use text_response::TextResponse;
pub use unknown::UnknownPdu;

/// The reserved tag value 0xffffffff (ITT/TTT "not used").
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcode values (the low 6 bits of byte 0).
pub mod opcode {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_COMMAND: u8 = 0x01;
    /// Task Management Function Request.
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQUEST: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQUEST: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQUEST: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESPONSE: u8 = 0x21;
    /// Task Management Function Response.
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESPONSE: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESPONSE: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC_MESSAGE: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Declares the `Pdu` enum and its dispatch over every known kind in one place.
macro_rules! pdu_kinds {
    ($($(#[$doc:meta])* $variant:ident($ty:ident) = $op:ident,)*) => {
        /// One iSCSI PDU of any kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Pdu {
            $($(#[$doc])* $variant($ty),)*
            /// Any other opcode, kept whole.
            Unknown(UnknownPdu),
        }

        impl Pdu {
            /// The opcode (6 bits).
            pub fn opcode(&self) -> u8 {
                match self {
                    $(Pdu::$variant(_) => opcode::$op,)*
                    Pdu::Unknown(u) => u.opcode(),
                }
            }

            /// The data segment (without padding).
            pub fn data(&self) -> Bytes {
                match self {
                    $(Pdu::$variant(p) => bhs::WirePdu::data(p),)*
                    Pdu::Unknown(u) => u.data.clone(),
                }
            }

            /// Decodes a framed PDU; `None` for an opcode we do not know.
            fn from_wire(h: &bhs::Bhs, ahs: &[u8], data: Bytes) -> Option<Result<Pdu, bhs::Invalid>> {
                use bhs::WirePdu;
                Some(match h.opcode() {
                    $(opcode::$op => $ty::from_wire(h, ahs, data).map(Pdu::$variant),)*
                    _ => return None,
                })
            }

            /// The BHS (lengths still zero), AHS and data of this PDU.
            fn to_wire(&self) -> (bhs::Bhs, Vec<u8>, Bytes) {
                use bhs::WirePdu;
                match self {
                    $(Pdu::$variant(p) => (p.to_bhs(), p.ahs(), p.data()),)*
                    Pdu::Unknown(u) => (bhs::Bhs(u.bhs), u.ahs.to_vec(), u.data.clone()),
                }
            }
        }

        $(impl From<$ty> for Pdu {
            fn from(p: $ty) -> Pdu {
                Pdu::$variant(p)
            }
        })*
    };
}

pdu_kinds! {
    /// NOP-Out (0x00).
    NopOut(NopOut) = NOP_OUT,
    /// SCSI Command (0x01).
    ScsiCommand(ScsiCommand) = SCSI_COMMAND,
    /// Task Management Function Request (0x02).
    TaskMgmtRequest(TaskMgmtRequest) = TASK_MGMT_REQUEST,
    /// Login Request (0x03).
    LoginRequest(LoginRequest) = LOGIN_REQUEST,
    /// Text Request (0x04).
    TextRequest(TextRequest) = TEXT_REQUEST,
    /// SCSI Data-Out (0x05).
    DataOut(DataOut) = DATA_OUT,
    /// Logout Request (0x06).
    LogoutRequest(LogoutRequest) = LOGOUT_REQUEST,
    /// SNACK Request (0x10).
    Snack(Snack) = SNACK,
    /// NOP-In (0x20).
    NopIn(NopIn) = NOP_IN,
    /// SCSI Response (0x21).
    ScsiResponse(ScsiResponse) = SCSI_RESPONSE,
    /// Task Management Function Response (0x22).
    TaskMgmtResponse(TaskMgmtResponse) = TASK_MGMT_RESPONSE,
    /// Login Response (0x23).
    LoginResponse(LoginResponse) = LOGIN_RESPONSE,
    /// Text Response (0x24).
    TextResponse(TextResponse) = TEXT_RESPONSE,
    /// SCSI Data-In (0x25).
    DataIn(DataIn) = DATA_IN,
    /// Logout Response (0x26).
    LogoutResponse(LogoutResponse) = LOGOUT_RESPONSE,
    /// Ready To Transfer (0x31).
    R2t(R2t) = R2T,
    /// Asynchronous Message (0x32).
    AsyncMessage(AsyncMessage) = ASYNC_MESSAGE,
    /// Reject (0x3f).
    Reject(Reject) = REJECT,
}

impl Pdu {
    /// The Initiator Task Tag (bytes 16..20; 0xffffffff where the PDU kind has none).
    pub fn itt(&self) -> u32 {
        match self {
            Pdu::NopOut(p) => p.itt,
            Pdu::ScsiCommand(p) => p.itt,
            Pdu::TaskMgmtRequest(p) => p.itt,
            Pdu::LoginRequest(p) => p.itt,
            Pdu::TextRequest(p) => p.itt,
            Pdu::DataOut(p) => p.itt,
            Pdu::LogoutRequest(p) => p.itt,
            Pdu::Snack(p) => p.itt,
            Pdu::NopIn(p) => p.itt,
            Pdu::ScsiResponse(p) => p.itt,
            Pdu::TaskMgmtResponse(p) => p.itt,
            Pdu::LoginResponse(p) => p.itt,
            Pdu::TextResponse(p) => p.itt,
            Pdu::DataIn(p) => p.itt,
            Pdu::LogoutResponse(p) => p.itt,
            Pdu::R2t(p) => p.itt,
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => RESERVED_TAG,
            Pdu::Unknown(u) => u.itt(),
        }
    }

    /// Whether the opcode is one an initiator sends (below 0x20). Target-side opcodes arriving
    /// at the target decode fine but must be rejected by the session as protocol errors.
    pub fn is_initiator_opcode(&self) -> bool {
        self.opcode() < 0x20
    }

    /// The ExpCmdSN and MaxCmdSN fields, for writing; `None` for kinds without them (requests
    /// and unknown opcodes). Every target → initiator kind carries both (RFC 7143 §11), a
    /// Data-In whether or not it carries status, an R2T and a Reject too.
    pub fn cmd_window_mut(&mut self) -> Option<(&mut u32, &mut u32)> {
        match self {
            Pdu::NopIn(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::ScsiResponse(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::TaskMgmtResponse(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::LoginResponse(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::TextResponse(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::DataIn(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::LogoutResponse(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::R2t(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::AsyncMessage(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::Reject(p) => Some((&mut p.exp_cmd_sn, &mut p.max_cmd_sn)),
            Pdu::NopOut(_)
            | Pdu::ScsiCommand(_)
            | Pdu::TaskMgmtRequest(_)
            | Pdu::LoginRequest(_)
            | Pdu::TextRequest(_)
            | Pdu::DataOut(_)
            | Pdu::LogoutRequest(_)
            | Pdu::Snack(_)
            | Pdu::Unknown(_) => None,
        }
    }

    /// The I (immediate) bit; always false for target PDUs, always true for Login Requests.
    pub fn immediate(&self) -> bool {
        match self {
            Pdu::NopOut(p) => p.immediate,
            Pdu::ScsiCommand(p) => p.immediate,
            Pdu::TaskMgmtRequest(p) => p.immediate,
            Pdu::LoginRequest(_) => true,
            Pdu::TextRequest(p) => p.immediate,
            Pdu::LogoutRequest(p) => p.immediate,
            Pdu::Unknown(u) => u.immediate(),
            _ => false,
        }
    }
}

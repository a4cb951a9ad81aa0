//! Errors of PDU framing and decoding.

use super::bhs::BHS_LEN;
use super::fields::RejectReason;

/// Why a PDU could not be framed or decoded.
///
/// After a *recoverable* error ([`PduError::is_recoverable`]) the codec has consumed the whole
/// bad PDU and the byte stream is still in sync: the session may answer with a Reject that
/// carries [`PduError::rejected_header`] and keep reading. After any other error the stream
/// cannot be trusted and the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The CRC32C header digest did not match (the lengths in the header cannot be trusted).
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest {
        /// Digest found on the wire.
        received: u32,
        /// Digest computed over the BHS and AHS.
        computed: u32,
    },
    /// The CRC32C data digest did not match; the PDU was consumed (recoverable).
    #[error("data digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    DataDigest {
        /// The Basic Header Segment of the discarded PDU.
        bhs: Box<[u8; BHS_LEN]>,
        /// Digest found on the wire.
        received: u32,
        /// Digest computed over the data segment and its padding.
        computed: u32,
    },
    /// DataSegmentLength exceeds our MaxRecvDataSegmentLength (or, when encoding, the 24-bit
    /// field). When decoding, nothing is consumed: the offending header is still at the front
    /// of the buffer, so the caller can copy it into a Reject before closing.
    #[error("data segment of {len} bytes exceeds the limit of {limit} bytes")]
    SegmentTooLong {
        /// The announced (or given) data segment length.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The Additional Header Segments are malformed or not allowed for this opcode; the PDU was
    /// consumed (recoverable).
    #[error("bad additional header segment: {reason}")]
    BadAhs {
        /// The Basic Header Segment of the discarded PDU.
        bhs: Box<[u8; BHS_LEN]>,
        /// What was wrong.
        reason: &'static str,
    },
    /// A header field holds a value this PDU kind cannot carry; the PDU was consumed
    /// (recoverable).
    #[error("invalid PDU field: {reason}")]
    InvalidField {
        /// The Basic Header Segment of the discarded PDU.
        bhs: Box<[u8; BHS_LEN]>,
        /// What was wrong.
        reason: &'static str,
    },
    /// When encoding: a SCSI Command's CDB is longer than an Extended CDB AHS can carry.
    #[error("CDB of {len} bytes exceeds {max} bytes")]
    CdbTooLong {
        /// The CDB length given.
        len: usize,
        /// The largest encodable CDB.
        max: usize,
    },
    /// The transport failed (only produced through the `tokio_util` codec adapter).
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

impl PduError {
    /// Whether the bad PDU was consumed and the stream is still in sync.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            PduError::DataDigest { .. } | PduError::BadAhs { .. } | PduError::InvalidField { .. }
        )
    }

    /// The header of the discarded PDU, to be echoed in a Reject's data segment.
    pub fn rejected_header(&self) -> Option<&[u8; BHS_LEN]> {
        match self {
            PduError::DataDigest { bhs, .. }
            | PduError::BadAhs { bhs, .. }
            | PduError::InvalidField { bhs, .. } => Some(bhs),
            _ => None,
        }
    }

    /// The Reject reason matching a recoverable error.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            PduError::DataDigest { .. } => Some(RejectReason::DATA_DIGEST_ERROR),
            PduError::BadAhs { .. } | PduError::InvalidField { .. } => {
                Some(RejectReason::INVALID_PDU_FIELD)
            }
            _ => None,
        }
    }
}

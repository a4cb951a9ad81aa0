//! A PDU with an opcode we do not implement, kept whole so that the session can answer it with
//! a Reject ("command not supported") that echoes its header.

use bytes::Bytes;

use super::bhs::{Bhs, BHS_LEN};

/// A framed PDU with an unrecognised opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPdu {
    /// The Basic Header Segment as received.
    pub bhs: [u8; BHS_LEN],
    /// The Additional Header Segments as received (padded).
    pub ahs: Bytes,
    /// The data segment (without padding).
    pub data: Bytes,
}

impl UnknownPdu {
    /// The opcode (6 bits).
    pub fn opcode(&self) -> u8 {
        Bhs(self.bhs).opcode()
    }

    /// The I bit.
    pub fn immediate(&self) -> bool {
        Bhs(self.bhs).immediate()
    }

    /// Bytes 16..20, the Initiator Task Tag in every initiator PDU layout.
    pub fn itt(&self) -> u32 {
        Bhs(self.bhs).itt()
    }
}

//! SCSI Response (opcode 0x21, RFC 7143 §11.4). The data segment holds SenseLength (2 bytes),
//! the sense data, and optional response data; [`ScsiResponse::sense_segment`] builds it.

use bytes::{BufMut, Bytes, BytesMut};

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::opcode;

/// iSCSI response code: command completed at target (the SCSI status says how).
pub const RESPONSE_COMPLETED: u8 = 0x00;
/// iSCSI response code: target failure.
pub const RESPONSE_TARGET_FAILURE: u8 = 0x01;

/// A SCSI Response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    /// o bit: bidirectional read residual overflow.
    pub bidi_overflow: bool,
    /// u bit: bidirectional read residual underflow.
    pub bidi_underflow: bool,
    /// O bit: residual overflow.
    pub overflow: bool,
    /// U bit: residual underflow.
    pub underflow: bool,
    /// iSCSI response code ([`RESPONSE_COMPLETED`], [`RESPONSE_TARGET_FAILURE`]).
    pub response: u8,
    /// SCSI status (valid when `response` is completed).
    pub status: u8,
    /// Initiator Task Tag of the command.
    pub itt: u32,
    /// SNACK Tag (ErrorRecoveryLevel > 0), else 0.
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// ExpDataSN: number of Data-In PDUs sent for the command (reads), else 0.
    pub exp_data_sn: u32,
    /// Bidirectional Read Residual Count.
    pub bidi_read_residual_count: u32,
    /// Residual Count.
    pub residual_count: u32,
    /// SenseLength + sense data (+ response data), or empty.
    pub data: Bytes,
}

impl ScsiResponse {
    /// The data segment for `sense` bytes: a 2-byte SenseLength followed by the sense data.
    /// Empty sense gives an empty segment. Sense longer than 65535 bytes is cut (SPC sense is
    /// at most 252 bytes, so this never happens with valid sense).
    pub fn sense_segment(sense: &[u8]) -> Bytes {
        if sense.is_empty() {
            return Bytes::new();
        }
        let sense = &sense[..sense.len().min(usize::from(u16::MAX))];
        let mut b = BytesMut::with_capacity(2 + sense.len());
        b.put_u16(sense.len() as u16);
        b.put_slice(sense);
        b.freeze()
    }

    /// The sense data carried in `data`, if any and well formed.
    pub fn sense(&self) -> Option<Bytes> {
        let [a, b, ..] = *self.data.as_ref() else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([a, b]));
        let end = len.checked_add(2)?;
        (len > 0 && end <= self.data.len()).then(|| self.data.slice(2..end))
    }
}

impl WirePdu for ScsiResponse {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let flags = h.u8(1);
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(ScsiResponse {
            bidi_overflow: flags & 0x10 != 0,
            bidi_underflow: flags & 0x08 != 0,
            overflow: flags & 0x04 != 0,
            underflow: flags & 0x02 != 0,
            response: h.u8(2),
            status: h.u8(3),
            itt: h.itt(),
            snack_tag: h.u32(20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            exp_data_sn: h.u32(36),
            bidi_read_residual_count: h.u32(40),
            residual_count: h.u32(44),
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::SCSI_RESPONSE, false);
        h.set_u8(1, 0x80);
        h.set_flag(1, 0x10, self.bidi_overflow);
        h.set_flag(1, 0x08, self.bidi_underflow);
        h.set_flag(1, 0x04, self.overflow);
        h.set_flag(1, 0x02, self.underflow);
        h.set_u8(2, self.response);
        h.set_u8(3, self.status);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.snack_tag);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u32(36, self.exp_data_sn);
        h.set_u32(40, self.bidi_read_residual_count);
        h.set_u32(44, self.residual_count);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

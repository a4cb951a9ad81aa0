//! Reject (opcode 0x3f, RFC 7143 §11.17): the target refuses a PDU; the data segment carries
//! the refused PDU's header.

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu, BHS_LEN};
use super::fields::RejectReason;
use super::opcode;

/// A Reject PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Reason code.
    pub reason: RejectReason,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN for a rejected SNACK, else 0.
    pub data_sn_or_r2t_sn: u32,
    /// The complete header (BHS, usually 48 bytes) of the rejected PDU.
    pub data: Bytes,
}

impl Reject {
    /// A Reject of the PDU whose BHS is `bad_header`, with the sequence numbers to be filled in
    /// by the session.
    pub fn of_header(reason: RejectReason, bad_header: &[u8; BHS_LEN]) -> Self {
        Reject {
            reason,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn_or_r2t_sn: 0,
            data: Bytes::copy_from_slice(bad_header),
        }
    }
}

impl WirePdu for Reject {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(Reject {
            reason: RejectReason(h.u8(2)),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data_sn_or_r2t_sn: h.u32(36),
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::REJECT, false);
        h.set_u8(1, 0x80);
        h.set_u8(2, self.reason.0);
        h.set_u32(16, 0xffff_ffff);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u32(36, self.data_sn_or_r2t_sn);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

//! SNACK Request (opcode 0x10, RFC 7143 §11.16). Only meaningful at ErrorRecoveryLevel > 0;
//! decoded so that the session can reject it properly.

use bytes::Bytes;

use super::bhs::{expect_bare, Bhs, Invalid, WirePdu};
use super::fields::SnackType;
use super::{opcode, LunField};

/// A SNACK Request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snack {
    /// SNACK type (4 bits).
    pub snack_type: SnackType,
    /// LUN (DataACK) or reserved.
    pub lun: LunField,
    /// Initiator Task Tag, or 0xffffffff for a status SNACK.
    pub itt: u32,
    /// Target Transfer Tag (DataACK) or SNACK Tag (R-Data), else 0xffffffff.
    pub ttt_or_snack_tag: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun: first DataSN/R2TSN/StatSN requested.
    pub beg_run: u32,
    /// RunLength: how many (0 = all from BegRun).
    pub run_length: u32,
}

impl WirePdu for Snack {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_bare(ahs, &data)?;
        Ok(Snack {
            snack_type: SnackType(h.u8(1) & 0x0f),
            lun: h.lun(),
            itt: h.itt(),
            ttt_or_snack_tag: h.u32(20),
            exp_stat_sn: h.u32(28),
            beg_run: h.u32(40),
            run_length: h.u32(44),
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::SNACK, false);
        h.set_u8(1, 0x80 | (self.snack_type.0 & 0x0f));
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt_or_snack_tag);
        h.set_u32(28, self.exp_stat_sn);
        h.set_u32(40, self.beg_run);
        h.set_u32(44, self.run_length);
        h
    }
}

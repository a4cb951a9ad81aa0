//! Ready To Transfer (opcode 0x31, RFC 7143 §11.8): the target solicits write data.

use bytes::Bytes;

use super::bhs::{expect_bare, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// An R2T PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2t {
    /// LUN of the command.
    pub lun: LunField,
    /// Initiator Task Tag of the command.
    pub itt: u32,
    /// Target Transfer Tag the initiator copies into the solicited Data-Out PDUs.
    pub ttt: u32,
    /// StatSN (the next StatSN; not advanced by an R2T).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// R2TSN within the command.
    pub r2t_sn: u32,
    /// Offset of the solicited data.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length (at most MaxBurstLength).
    pub desired_length: u32,
}

impl WirePdu for R2t {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_bare(ahs, &data)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(R2t {
            lun: h.lun(),
            itt: h.itt(),
            ttt: h.u32(20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            r2t_sn: h.u32(36),
            buffer_offset: h.u32(40),
            desired_length: h.u32(44),
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::R2T, false);
        h.set_u8(1, 0x80);
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u32(36, self.r2t_sn);
        h.set_u32(40, self.buffer_offset);
        h.set_u32(44, self.desired_length);
        h
    }
}

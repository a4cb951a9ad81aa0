//! NOP-In (opcode 0x20, RFC 7143 §11.19): the answer to a NOP-Out, or a target ping.

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// A NOP-In PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    /// LUN (must be echoed by the initiator when TTT is not 0xffffffff).
    pub lun: LunField,
    /// The NOP-Out's ITT when answering, 0xffffffff for a target ping.
    pub itt: u32,
    /// 0xffffffff when answering; a tag the initiator must echo for a target ping.
    pub ttt: u32,
    /// StatSN (advanced only when answering a NOP-Out that had a valid ITT).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Ping data (the NOP-Out's data when answering).
    pub data: Bytes,
}

impl WirePdu for NopIn {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(NopIn {
            lun: h.lun(),
            itt: h.itt(),
            ttt: h.u32(20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::NOP_IN, false);
        h.set_u8(1, 0x80);
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

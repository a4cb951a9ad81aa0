//! NOP-Out (opcode 0x00, RFC 7143 §11.18): initiator ping, or the answer to a target's NOP-In.

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// A NOP-Out PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    /// I bit: immediate delivery (CmdSN not advanced).
    pub immediate: bool,
    /// LUN (echoed from a NOP-In when answering one).
    pub lun: LunField,
    /// Initiator Task Tag; 0xffffffff when this answers a NOP-In and wants no reply.
    pub itt: u32,
    /// Target Transfer Tag: 0xffffffff for an initiator ping, else the NOP-In's tag.
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Ping data, to be echoed in the NOP-In.
    pub data: Bytes,
}

impl WirePdu for NopOut {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let [cmd_sn, exp_stat_sn] = h.initiator_sns();
        Ok(NopOut {
            immediate: h.immediate(),
            lun: h.lun(),
            itt: h.itt(),
            ttt: h.u32(20),
            cmd_sn,
            exp_stat_sn,
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::NOP_OUT, self.immediate);
        h.set_u8(1, 0x80);
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_initiator_sns(self.cmd_sn, self.exp_stat_sn);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

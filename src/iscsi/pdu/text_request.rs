//! Text Request (opcode 0x04, RFC 7143 §11.10).

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// A Text Request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// F bit: the last PDU of this request.
    pub is_final: bool,
    /// C bit: the text in `data` continues in the next PDU.
    pub continues: bool,
    /// LUN (reserved unless a key needs it).
    pub lun: LunField,
    /// Initiator Task Tag (the same for the whole exchange).
    pub itt: u32,
    /// Target Transfer Tag: 0xffffffff to start, else the tag of the response being continued.
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// Text (key=value pairs, NUL separated).
    pub data: Bytes,
}

impl WirePdu for TextRequest {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let [cmd_sn, exp_stat_sn] = h.initiator_sns();
        Ok(TextRequest {
            immediate: h.immediate(),
            is_final: h.flag(1, 0x80),
            continues: h.flag(1, 0x40),
            lun: h.lun(),
            itt: h.itt(),
            ttt: h.u32(20),
            cmd_sn,
            exp_stat_sn,
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::TEXT_REQUEST, self.immediate);
        h.set_flag(1, 0x80, self.is_final);
        h.set_flag(1, 0x40, self.continues);
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

//! Text Response (opcode 0x24, RFC 7143 §11.11).

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// A Text Response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    /// F bit: the last PDU of the response.
    pub is_final: bool,
    /// C bit: the text in `data` continues in the next PDU.
    pub continues: bool,
    /// LUN, echoed.
    pub lun: LunField,
    /// Initiator Task Tag, echoed.
    pub itt: u32,
    /// 0xffffffff on the final PDU, else a tag the initiator echoes to ask for more.
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Text (key=value pairs, NUL separated).
    pub data: Bytes,
}

impl WirePdu for TextResponse {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(TextResponse {
            is_final: h.flag(1, 0x80),
            continues: h.flag(1, 0x40),
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
        let mut h = Bhs::new(opcode::TEXT_RESPONSE, false);
        h.set_flag(1, 0x80, self.is_final);
        h.set_flag(1, 0x40, self.continues);
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

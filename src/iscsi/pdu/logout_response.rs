//! Logout Response (opcode 0x26, RFC 7143 §11.15).

use bytes::Bytes;

use super::bhs::{expect_bare, Bhs, Invalid, WirePdu};
use super::fields::LogoutResponseCode;
use super::opcode;

/// A Logout Response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    /// Response code.
    pub response: LogoutResponseCode,
    /// Initiator Task Tag, echoed.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait (seconds).
    pub time2wait: u16,
    /// Time2Retain (seconds).
    pub time2retain: u16,
}

impl WirePdu for LogoutResponse {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_bare(ahs, &data)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(LogoutResponse {
            response: LogoutResponseCode(h.u8(2)),
            itt: h.itt(),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            time2wait: h.u16(40),
            time2retain: h.u16(42),
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::LOGOUT_RESPONSE, false);
        h.set_u8(1, 0x80);
        h.set_u8(2, self.response.0);
        h.set_u32(16, self.itt);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u16(40, self.time2wait);
        h.set_u16(42, self.time2retain);
        h
    }
}

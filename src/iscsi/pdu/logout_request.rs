//! Logout Request (opcode 0x06, RFC 7143 §11.14).

use bytes::Bytes;

use super::bhs::{expect_bare, Bhs, Invalid, WirePdu};
use super::fields::LogoutReason;
use super::opcode;

/// A Logout Request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// Reason code (7 bits).
    pub reason: LogoutReason,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection to close (reason 1 or 2; reserved for closing the session).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl WirePdu for LogoutRequest {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_bare(ahs, &data)?;
        let [cmd_sn, exp_stat_sn] = h.initiator_sns();
        Ok(LogoutRequest {
            immediate: h.immediate(),
            reason: LogoutReason(h.u8(1) & 0x7f),
            itt: h.itt(),
            cid: h.u16(20),
            cmd_sn,
            exp_stat_sn,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::LOGOUT_REQUEST, self.immediate);
        h.set_u8(1, 0x80 | (self.reason.0 & 0x7f));
        h.set_u32(16, self.itt);
        h.set_u16(20, self.cid);
        h.set_initiator_sns(self.cmd_sn, self.exp_stat_sn);
        h
    }
}

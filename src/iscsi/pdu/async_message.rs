//! Asynchronous Message (opcode 0x32, RFC 7143 §11.9).

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// AsyncEvent 1: the target requests a Logout (Parameter3 = seconds to wait for it).
pub const ASYNC_EVENT_LOGOUT_REQUESTED: u8 = 1;
/// AsyncEvent 2: the target will drop the connection (Parameter1 = CID).
pub const ASYNC_EVENT_DROPPING_CONNECTION: u8 = 2;
/// AsyncEvent 3: the target will drop all connections of the session.
pub const ASYNC_EVENT_DROPPING_ALL_CONNECTIONS: u8 = 3;

/// An Asynchronous Message PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncMessage {
    /// LUN (for SCSI async events), else zero.
    pub lun: LunField,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// AsyncEvent code.
    pub event: u8,
    /// AsyncVCode (vendor code for event 255).
    pub vcode: u8,
    /// Parameter1.
    pub parameter1: u16,
    /// Parameter2.
    pub parameter2: u16,
    /// Parameter3.
    pub parameter3: u16,
    /// SenseLength + sense data and/or iSCSI event data.
    pub data: Bytes,
}

impl WirePdu for AsyncMessage {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(AsyncMessage {
            lun: h.lun(),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            event: h.u8(36),
            vcode: h.u8(37),
            parameter1: h.u16(38),
            parameter2: h.u16(40),
            parameter3: h.u16(42),
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::ASYNC_MESSAGE, false);
        h.set_u8(1, 0x80);
        h.set_lun(self.lun);
        // The ITT of an asynchronous message is always the reserved tag.
        h.set_u32(16, 0xffff_ffff);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u8(36, self.event);
        h.set_u8(37, self.vcode);
        h.set_u16(38, self.parameter1);
        h.set_u16(40, self.parameter2);
        h.set_u16(42, self.parameter3);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

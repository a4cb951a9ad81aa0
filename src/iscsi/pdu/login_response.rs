//! Login Response (opcode 0x23, RFC 7143 §11.13).

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::fields::{Isid, LoginStatus, Stage};
use super::opcode;

/// A Login Response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    /// T bit: the target agrees to transit to `nsg`.
    pub transit: bool,
    /// C bit: the text in `data` continues in the next PDU.
    pub continues: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage.
    pub nsg: Stage,
    /// Version-max (highest version the target supports).
    pub version_max: u8,
    /// Version-active (the version in use).
    pub version_active: u8,
    /// Initiator Session ID, echoed.
    pub isid: Isid,
    /// TSIH: the new session's handle in the final response, else the request's.
    pub tsih: u16,
    /// Initiator Task Tag, echoed.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Status-Class and Status-Detail.
    pub status: LoginStatus,
    /// Login text (key=value pairs, NUL separated).
    pub data: Bytes,
}

/// Builds byte 1 shared by Login Request and Response: T, C, CSG and NSG.
pub(crate) fn stage_flags(transit: bool, continues: bool, csg: Stage, nsg: Stage) -> u8 {
    (if transit { 0x80 } else { 0 })
        | (if continues { 0x40 } else { 0 })
        | (csg.bits() << 2)
        | nsg.bits()
}

impl WirePdu for LoginResponse {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let flags = h.u8(1);
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(LoginResponse {
            transit: flags & 0x80 != 0,
            continues: flags & 0x40 != 0,
            csg: Stage::from_bits(flags >> 2),
            nsg: Stage::from_bits(flags),
            version_max: h.u8(2),
            version_active: h.u8(3),
            isid: Isid(h.bytes::<6>(8)),
            tsih: h.u16(14),
            itt: h.itt(),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            status: LoginStatus::new(h.u8(36), h.u8(37)),
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::LOGIN_RESPONSE, false);
        h.set_u8(
            1,
            stage_flags(self.transit, self.continues, self.csg, self.nsg),
        );
        h.set_u8(2, self.version_max);
        h.set_u8(3, self.version_active);
        h.set_bytes(8, &self.isid.0);
        h.set_u16(14, self.tsih);
        h.set_u32(16, self.itt);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u8(36, self.status.class);
        h.set_u8(37, self.status.detail);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

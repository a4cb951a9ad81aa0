//! Login Request (opcode 0x03, RFC 7143 §11.12). The I bit is always set on the wire.

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::fields::{Isid, Stage};
use super::opcode;

/// A Login Request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T bit: the initiator is ready to transit to `nsg`.
    pub transit: bool,
    /// C bit: the text in `data` continues in the next PDU.
    pub continues: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful only with `transit`).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// Initiator Session ID.
    pub isid: Isid,
    /// Target Session Identifying Handle: 0 for a new session.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN (or the old connection's last StatSN when restarting a connection).
    pub exp_stat_sn: u32,
    /// Login text (key=value pairs, NUL separated).
    pub data: Bytes,
}

impl LoginRequest {
    /// The one-PDU login of a new session that skips security: operational stage to full
    /// feature phase (T set, C clear), version 0, TSIH, ITT, CID and sequence numbers zero.
    /// Callers change what differs with struct update syntax.
    pub fn operational(isid: Isid, data: Bytes) -> Self {
        LoginRequest {
            transit: true,
            continues: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
            data,
        }
    }
}

impl WirePdu for LoginRequest {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let flags = h.u8(1);
        let [cmd_sn, exp_stat_sn] = h.initiator_sns();
        Ok(LoginRequest {
            transit: flags & 0x80 != 0,
            continues: flags & 0x40 != 0,
            csg: Stage::from_bits(flags >> 2),
            nsg: Stage::from_bits(flags),
            version_max: h.u8(2),
            version_min: h.u8(3),
            isid: Isid(h.bytes::<6>(8)),
            tsih: h.u16(14),
            itt: h.itt(),
            cid: h.u16(20),
            cmd_sn,
            exp_stat_sn,
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::LOGIN_REQUEST, true);
        h.set_u8(
            1,
            super::login_response::stage_flags(self.transit, self.continues, self.csg, self.nsg),
        );
        h.set_u8(2, self.version_max);
        h.set_u8(3, self.version_min);
        h.set_bytes(8, &self.isid.0);
        h.set_u16(14, self.tsih);
        h.set_u32(16, self.itt);
        h.set_u16(20, self.cid);
        h.set_initiator_sns(self.cmd_sn, self.exp_stat_sn);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

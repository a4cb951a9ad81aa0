//! Task Management Function Response (opcode 0x22, RFC 7143 §11.6).

use bytes::Bytes;

use super::bhs::{expect_bare, Bhs, Invalid, WirePdu};
use super::fields::TmfResponseCode;
use super::opcode;

/// A Task Management Function Response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    /// Response code.
    pub response: TmfResponseCode,
    /// Initiator Task Tag of the request.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl WirePdu for TaskMgmtResponse {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_bare(ahs, &data)?;
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(TaskMgmtResponse {
            response: TmfResponseCode(h.u8(2)),
            itt: h.itt(),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::TASK_MGMT_RESPONSE, false);
        h.set_u8(1, 0x80);
        h.set_u8(2, self.response.0);
        h.set_u32(16, self.itt);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h
    }
}

//! Task Management Function Request (opcode 0x02, RFC 7143 §11.5).

use bytes::Bytes;

use super::bhs::{expect_bare, Bhs, Invalid, WirePdu};
use super::fields::TmfFunction;
use super::{opcode, LunField};

/// A Task Management Function Request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// Function code (7 bits).
    pub function: TmfFunction,
    /// LUN the function applies to.
    pub lun: LunField,
    /// Initiator Task Tag of this request.
    pub itt: u32,
    /// ITT of the task to abort (ABORT TASK), else 0xffffffff.
    pub referenced_task_tag: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// CmdSN of the referenced task (ABORT TASK).
    pub ref_cmd_sn: u32,
    /// ExpDataSN (TASK REASSIGN).
    pub exp_data_sn: u32,
}

impl WirePdu for TaskMgmtRequest {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_bare(ahs, &data)?;
        let [cmd_sn, exp_stat_sn] = h.initiator_sns();
        Ok(TaskMgmtRequest {
            immediate: h.immediate(),
            function: TmfFunction(h.u8(1) & 0x7f),
            lun: h.lun(),
            itt: h.itt(),
            referenced_task_tag: h.u32(20),
            cmd_sn,
            exp_stat_sn,
            ref_cmd_sn: h.u32(32),
            exp_data_sn: h.u32(36),
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::TASK_MGMT_REQUEST, self.immediate);
        h.set_u8(1, 0x80 | (self.function.0 & 0x7f));
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.referenced_task_tag);
        h.set_initiator_sns(self.cmd_sn, self.exp_stat_sn);
        h.set_u32(32, self.ref_cmd_sn);
        h.set_u32(36, self.exp_data_sn);
        h
    }
}

//! Task management (RFC 7143 §11.5, §11.6, §4.2.3.3).
//!
//! Aborted tasks are cancelled for real ([`super::Event::Cancel`]) and get no response of
//! their own. ABORT TASK of a tag the session does not know answers "Function complete" when
//! RefCmdSN lies in the CmdSN window below the TMF's own CmdSN (the command is then considered
//! received and is skipped, §11.5.1), and "Task does not exist" otherwise. TARGET WARM/COLD
//! RESET act only when the target allows them ([`super::SessionOptions::allow_target_reset`]);
//! otherwise they are answered "Function rejected" (255, §11.6.1) and nothing happens.

use super::{CloseReason, Event, Session, STAMPED_AT_TRANSMIT};
use crate::iscsi::pdu::{
    serial::sn_lt, Pdu, TaskMgmtRequest, TaskMgmtResponse, TmfFunction, TmfResponseCode,
};

impl Session {
    pub(super) fn on_tmf(&mut self, req: TaskMgmtRequest) {
        let lun = req.lun.number().filter(|&n| self.opts.lun_exists.check(n));
        let response = match req.function {
            TmfFunction::ABORT_TASK => self.abort_task(&req),
            TmfFunction::ABORT_TASK_SET | TmfFunction::CLEAR_TASK_SET => match lun {
                Some(_) => {
                    // Only commands that precede the TMF in CmdSN order are affected.
                    let n = self.drop_tasks_where(|t| {
                        t.lun == req.lun
                            && (t.phase != super::Phase::Waiting || sn_lt(t.cmd_sn, req.cmd_sn))
                    });
                    tracing::info!(function = req.function.0, aborted = n, "task set aborted");
                    TmfResponseCode::COMPLETE
                }
                None => TmfResponseCode::LUN_DOES_NOT_EXIST,
            },
            TmfFunction::LOGICAL_UNIT_RESET => match lun {
                Some(number) => {
                    let n = self.drop_tasks_where(|t| t.lun == req.lun);
                    tracing::info!(lun = number, aborted = n, "logical unit reset");
                    self.events.push_back(Event::LunReset { lun: number });
                    TmfResponseCode::COMPLETE
                }
                None => TmfResponseCode::LUN_DOES_NOT_EXIST,
            },
            TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET
                if !self.opts.allow_target_reset =>
            {
                tracing::warn!(
                    function = req.function.0,
                    "target reset refused: not enabled for this target (allow_target_reset)"
                );
                TmfResponseCode::REJECTED
            }
            TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
                let cold = req.function == TmfFunction::TARGET_COLD_RESET;
                let n = self.drop_tasks_where(|_| true);
                tracing::info!(cold, aborted = n, "target reset");
                self.events.push_back(Event::TargetReset { cold });
                TmfResponseCode::COMPLETE
            }
            // Needs ErrorRecoveryLevel 2.
            TmfFunction::TASK_REASSIGN => TmfResponseCode::REASSIGNMENT_NOT_SUPPORTED,
            // We never establish an ACA condition (NACA is not supported).
            TmfFunction::CLEAR_ACA => TmfResponseCode::NOT_SUPPORTED,
            _ => TmfResponseCode::REJECTED,
        };
        let resp = TaskMgmtResponse {
            response,
            itt: req.itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: STAMPED_AT_TRANSMIT,
            max_cmd_sn: STAMPED_AT_TRANSMIT,
        };
        self.transmit.push_back(Pdu::TaskMgmtResponse(resp));
        if req.function == TmfFunction::TARGET_COLD_RESET && response == TmfResponseCode::COMPLETE {
            // RFC 7143 §11.5.1: after a cold reset the target drops all its connections.
            self.closing = Some(CloseReason::ColdReset);
        }
    }

    fn abort_task(&mut self, req: &TaskMgmtRequest) -> TmfResponseCode {
        if self.tasks.contains_key(&req.referenced_task_tag) {
            self.drop_task(req.referenced_task_tag);
            return TmfResponseCode::COMPLETE;
        }
        if self.window.in_window(req.ref_cmd_sn) && sn_lt(req.ref_cmd_sn, req.cmd_sn) {
            // The command is still on its way (or lost): consider its CmdSN received so that
            // it is ignored when it arrives and the window moves on.
            self.window.void(req.ref_cmd_sn);
            return TmfResponseCode::COMPLETE;
        }
        TmfResponseCode::TASK_DOES_NOT_EXIST
    }
}

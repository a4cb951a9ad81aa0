//! Task attributes (SAM-5 §8.5, §8.6): when a delivered command may start.
//!
//! The task set is per I_T nexus and per logical unit (the control mode page reports
//! TST=001), so the ordering rules are this session's alone and need no help from the SCSI
//! layer. A command joins its LUN's task set when its CmdSN turn comes (immediate commands on
//! arrival); that order is its *admission* order. Then:
//! - HEAD OF QUEUE starts at once.
//! - SIMPLE (and untagged) starts once every older ORDERED and HEAD OF QUEUE task of the
//!   same LUN has left the task set.
//! - ORDERED starts once every older task of the same LUN has left it.
//! - ACA (and the reserved values) are refused with INVALID FIELD IN CDB: NACA is not
//!   supported, so no ACA condition ever exists for such a command to run in.
//!
//! A task leaves the task set when its status is queued or it is aborted. The gate sits where
//! a task would take memory and solicit its data ([`Session::advance`]): a *dormant* task holds
//! only the unsolicited data the initiator sent with it, and every task holding solicited-data
//! or Data-In memory is one that may start. So memory cannot be tied up by a task that waits
//! for another task that waits for that memory.
//!
//! Cost: with no ORDERED or HEAD OF QUEUE task in the table (what Linux sends), a SIMPLE
//! command passes the gate on one counter test; otherwise the check walks the table (at most
//! the queue depth).

use super::tasks::Task;
use super::Session;
use crate::iscsi::pdu::TaskAttribute;
use crate::scsi::sense::{asc, Sense};
use crate::scsi::CommandOutcome;

/// How an attribute orders its task against older ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ordering {
    /// Waits for older ORDERED and HEAD OF QUEUE tasks.
    Simple,
    /// Waits for every older task.
    Ordered,
    /// Waits for nothing.
    HeadOfQueue,
}

impl Ordering {
    /// The ordering of `attr`, or the refusal for attributes this target cannot honour.
    pub(super) fn of(attr: TaskAttribute) -> Result<Ordering, CommandOutcome> {
        match attr {
            TaskAttribute::Untagged | TaskAttribute::Simple => Ok(Ordering::Simple),
            TaskAttribute::Ordered => Ok(Ordering::Ordered),
            TaskAttribute::HeadOfQueue => Ok(Ordering::HeadOfQueue),
            TaskAttribute::Aca | TaskAttribute::Reserved(_) => Err(
                CommandOutcome::check_condition(Sense::illegal(asc::INVALID_FIELD_IN_CDB)),
            ),
        }
    }

    /// Tasks of this kind make younger SIMPLE tasks wait.
    fn blocks_simple(self) -> bool {
        self != Ordering::Simple
    }
}

impl Session {
    /// Task `itt` joins its LUN's task set (its CmdSN turn came).
    pub(super) fn admit(&mut self, itt: u32) {
        let seq = self.next_admission;
        let Some(task) = self.tasks.get_mut(&itt).filter(|t| t.admitted.is_none()) else {
            return;
        };
        self.next_admission += 1;
        task.admitted = Some(seq);
        if task.ordering.blocks_simple() {
            self.blocking += 1;
        }
    }

    /// Whether task `itt` may start now; a task that may not is marked dormant and started by
    /// [`Session::wake_dormant`] once the tasks it waits for have left. Once true, stays true
    /// (only older tasks matter, and no task becomes older).
    pub(super) fn may_start(&mut self, itt: u32) -> bool {
        let Some(task) = self.tasks.get(&itt) else {
            return false;
        };
        if task.enabled {
            return true;
        }
        let enabled = match (task.ordering, task.admitted) {
            (_, None) => false,
            (Ordering::HeadOfQueue, _) => true,
            (Ordering::Simple, _) if self.blocking == 0 => true,
            (ordering, Some(seq)) => !self.tasks.values().any(|older| {
                older.lun == task.lun
                    && older.admitted.is_some_and(|s| s < seq)
                    && (ordering == Ordering::Ordered || older.ordering.blocks_simple())
            }),
        };
        let Some(task) = self.tasks.get_mut(&itt) else {
            return false;
        };
        if enabled {
            task.enabled = true;
            if std::mem::take(&mut task.dormant) {
                self.dormant -= 1;
            }
        } else if !task.dormant {
            task.dormant = true;
            self.dormant += 1;
        }
        enabled
    }

    /// Bookkeeping for a task that left the table (finished or dropped).
    pub(super) fn left_task_set(&mut self, task: &Task) {
        if task.dormant {
            self.dormant -= 1;
        }
        if task.admitted.is_some() && task.ordering.blocks_simple() {
            self.blocking -= 1;
        }
    }

    /// A task left: dormant tasks whose wait is over start, oldest first.
    pub(super) fn wake_dormant(&mut self) {
        if self.dormant == 0 || self.wakes_held {
            return;
        }
        let mut waiting: Vec<(u64, u32)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.dormant)
            .filter_map(|(itt, t)| Some((t.admitted?, *itt)))
            .collect();
        waiting.sort_unstable();
        for (_, itt) in waiting {
            if self.may_start(itt) {
                self.advance(itt);
            }
        }
    }
}

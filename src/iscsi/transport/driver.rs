//! Drives a [`Session`] on a live connection: feeds it PDUs, completions and time, runs its SCSI
//! commands as concurrent tokio tasks (aborted for real when the session cancels them), and
//! sends what it queues, in order, through the writer task.
//!
//! The driver reads the socket itself (no reader task: one hand-off less per command) and, once
//! woken, takes every PDU already buffered and every command already finished before sending, so
//! that the responses of a burst leave in one batch.
//!
//! It never waits on a send: PDUs the writer task cannot take yet stay in an outbox while the
//! driver keeps running timers, completions and shutdown. What an initiator can make it queue
//! is bounded: Data-In by the session's memory budgets, everything else (responses, NOP-In
//! echoes, R2Ts, Rejects) by [`CONTROL_HIGH_WATER`], past which the socket is not read until
//! the peer drains its side. A peer that drains nothing for the stall timeout is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::catalog::{ResetNotice, ResetScope};
use super::wire::{Incoming, PduReader};
use crate::iscsi::pdu::{EncodedPdu, PduCodec, RejectReason};
use crate::iscsi::session::{CloseReason, Event, Session, TaskId};
use crate::scsi::sense::{asc, key, Sense};
use crate::scsi::{CommandOutcome, Nexus, ScsiTarget};

/// How long an initiator gets to log out after the target asked it to (Async Message).
pub const LOGOUT_GRACE: Duration = Duration::from_secs(3);

/// Bytes of queued, unsent PDUs other than Data-In past which the driver stops reading the
/// socket (Data-In is bounded by the memory budgets instead).
pub const CONTROL_HIGH_WATER: u64 = 1 << 20;

/// Why the driver stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The session closed itself (logout, NOP timeout, cold reset, protocol error).
    Closed(CloseReason),
    /// The initiator closed the connection or it failed.
    ConnectionLost,
    /// Another login reinstated this session.
    Replaced,
    /// Another session performed a TARGET COLD RESET.
    ColdReset,
    /// The server is shutting down.
    Shutdown,
    /// The peer took none of the queued bytes for the stall timeout.
    Stalled,
}

/// The SCSI side of a normal session.
pub struct ScsiBinding {
    /// The SCSI target the session's commands run against.
    pub target: Arc<ScsiTarget>,
    /// The I_T nexus of the session.
    pub nexus: Nexus,
    /// The session's TSIH, to recognise its own reset notices.
    pub tsih: u16,
    /// Resets are announced here so the target's other sessions abort their tasks too.
    pub resets: broadcast::Sender<ResetNotice>,
}

/// What the driver needs besides the session itself.
pub struct DriverContext {
    /// The target and nexus; `None` for discovery sessions, which run no SCSI commands.
    pub scsi: Option<ScsiBinding>,
    /// Encodes outgoing PDUs (digests as negotiated).
    pub codec: PduCodec,
    /// Cancelled to end this session at once (reinstatement, cold reset).
    pub kill: CancellationToken,
    /// Cancelled when the server shuts down: ask for logout, then end.
    pub shutdown: CancellationToken,
    /// Cancelled when the session's target is removed: ask for logout, then end.
    pub retired: CancellationToken,
    /// Bytes the writer task has written to the socket so far.
    pub written: Arc<AtomicU64>,
    /// How long queued bytes may sit with the peer taking none of them.
    pub stall_timeout: Duration,
}

/// Feeds one item from the reader to the session; `Some` when the connection is lost.
fn on_incoming(session: &mut Session, incoming: Incoming) -> Option<Ended> {
    match incoming {
        Incoming::Pdu(pdu) => session.handle_pdu(pdu, std::time::Instant::now()),
        Incoming::Bad(e) => {
            tracing::debug!(error = %e, "undecodable PDU rejected");
            if let (Some(bhs), Some(reason)) = (e.rejected_header(), e.reject_reason()) {
                session.reject_corrupt(reason, bhs);
            }
        }
        Incoming::TooLong(bhs) => {
            session.reject_header(RejectReason::PROTOCOL_ERROR, &bhs);
            session.fail("data segment longer than MaxRecvDataSegmentLength");
        }
        Incoming::Closed(error) => {
            if let Some(e) = error {
                tracing::debug!(error = %e, "connection read failed");
            }
            return Some(Ended::ConnectionLost);
        }
    }
    None
}

/// Hands a finished command task to the session.
fn on_joined(
    session: &mut Session,
    joined: Result<(tokio::task::Id, (TaskId, CommandOutcome)), tokio::task::JoinError>,
    handles: &mut HashMap<TaskId, AbortHandle>,
    by_tokio_id: &mut HashMap<tokio::task::Id, TaskId>,
) {
    match joined {
        Ok((tokio_id, (task, response))) => {
            by_tokio_id.remove(&tokio_id);
            handles.remove(&task);
            session.complete(task, response);
        }
        Err(e) => {
            let task = by_tokio_id.remove(&e.id());
            if e.is_panic() {
                if let Some(task) = task {
                    tracing::error!(?task, "SCSI command panicked");
                    handles.remove(&task);
                    let failure = Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE);
                    session.complete(task, CommandOutcome::check_condition(failure));
                }
            }
        }
    }
}

/// PDUs encoded but not yet handed to the writer task, and what the stream has carried.
struct Outbox {
    queue: VecDeque<EncodedPdu>,
    /// Bytes encoded so far (handed to the writer or still queued here).
    encoded: u64,
    /// Bytes written by the writer the last time progress was seen, and when.
    seen_written: u64,
    progress_at: Instant,
}

impl Outbox {
    fn push(&mut self, pdu: EncodedPdu) {
        self.encoded += pdu.len() as u64;
        self.queue.push_back(pdu);
    }

    /// Hands queued PDUs to the writer until its channel is full; false when it is gone.
    fn hand_over(&mut self, tx: &mpsc::Sender<EncodedPdu>) -> bool {
        while let Some(pdu) = self.queue.pop_front() {
            match tx.try_send(pdu) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(pdu)) => {
                    self.queue.push_front(pdu);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Bytes not yet written to the socket; notes progress of the writer at `now`.
    fn unsent(&mut self, written: u64, now: Instant) -> u64 {
        if written != self.seen_written {
            self.seen_written = written;
            self.progress_at = now;
        }
        let unsent = self.encoded.saturating_sub(written);
        if unsent == 0 {
            self.progress_at = now;
        }
        unsent
    }
}

/// Runs `session` until it ends. Incoming PDUs are read with `reader`, outgoing ones go to
/// `tx` (the writer task).
pub async fn drive<R: AsyncRead + Unpin>(
    mut session: Session,
    ctx: DriverContext,
    mut reader: PduReader<R>,
    tx: mpsc::Sender<EncodedPdu>,
) -> Ended {
    let mut running: JoinSet<(TaskId, CommandOutcome)> = JoinSet::new();
    let mut handles: HashMap<TaskId, AbortHandle> = HashMap::new();
    let mut by_tokio_id: HashMap<tokio::task::Id, TaskId> = HashMap::new();
    let mut logout_asked = false;
    let mut resets = ctx.scsi.as_ref().map(|s| s.resets.subscribe());
    let mut aborts = ctx.scsi.as_ref().map(|s| s.target.task_aborts());
    let mut outbox = Outbox {
        queue: VecDeque::new(),
        encoded: 0,
        seen_written: 0,
        progress_at: Instant::now(),
    };
    let (own_budget, shared_budget) = session.budgets();
    let mut own_freed = own_budget.subscribe();
    let mut shared_freed = shared_budget.as_ref().map(|b| b.subscribe());

    let ended = loop {
        // Work first, so resets happen before their TMF response is sent.
        while let Some(event) = session.poll_event() {
            match event {
                Event::Execute { task, request } => {
                    let Some(scsi) = &ctx.scsi else {
                        continue;
                    };
                    let target = scsi.target.clone();
                    let nexus = scsi.nexus.clone();
                    let handle = running.spawn(async move {
                        let response = target.execute(&nexus, request).await;
                        (task, response)
                    });
                    by_tokio_id.insert(handle.id(), task);
                    handles.insert(task, handle);
                }
                Event::Cancel(task) => {
                    if let Some(handle) = handles.remove(&task) {
                        handle.abort();
                    }
                }
                Event::LunReset { lun } => {
                    if let Some(scsi) = &ctx.scsi {
                        scsi.target.lun_reset(lun, &scsi.nexus);
                        scsi.announce(ResetScope::Lun(lun));
                    }
                }
                Event::TargetReset { cold } => {
                    if let Some(scsi) = &ctx.scsi {
                        scsi.target.target_reset(cold, &scsi.nexus);
                        scsi.announce(ResetScope::Target { cold });
                    }
                }
            }
        }
        while let Some(pdu) = session.poll_transmit() {
            match ctx.codec.encode(&pdu) {
                Ok(encoded) => outbox.push(encoded),
                Err(e) => tracing::error!(error = %e, "cannot encode PDU"),
            }
        }
        if !outbox.hand_over(&tx) {
            break Ended::ConnectionLost;
        }
        if let Some(reason) = session.close_reason() {
            // What is queued still goes out (e.g. the Logout Response), unless the peer
            // stopped taking it; one that ignored a logout request gets nothing more.
            if outbox.queue.is_empty() || *reason == CloseReason::LogoutTimeout {
                break Ended::Closed(reason.clone());
            }
        }
        if tx.is_closed() {
            break Ended::ConnectionLost;
        }

        let now = Instant::now();
        let unsent = outbox.unsent(ctx.written.load(Ordering::Acquire), now);
        let stall_deadline = (unsent > 0).then(|| outbox.progress_at + ctx.stall_timeout);
        // Data-In is bounded by the memory budgets; the rest must not pile up unread.
        let readable = session.close_reason().is_none()
            && unsent.saturating_sub(own_budget.used()) <= CONTROL_HIGH_WATER;
        // Marked as waiting before the retry below, so no release goes unnoticed.
        let waiting = session.waiting_for_memory().then(|| {
            own_freed.borrow_and_update();
            if let Some(rx) = shared_freed.as_mut() {
                rx.borrow_and_update();
            }
            (own_budget.wait(), shared_budget.as_ref().map(|b| b.wait()))
        });
        if waiting.is_some() {
            session.memory_freed();
            if session.has_work() {
                continue;
            }
        }
        let timer = session.poll_timeout().map(Instant::from_std);
        tokio::select! {
            incoming = reader.next(), if readable => {
                if let Some(lost) = on_incoming(&mut session, incoming) {
                    break lost;
                }
                // Everything else already buffered, without waiting for more.
                let mut lost = None;
                while session.close_reason().is_none() {
                    let Some(more) = reader.buffered() else { break };
                    lost = on_incoming(&mut session, more);
                    if lost.is_some() {
                        break;
                    }
                }
                if let Some(lost) = lost {
                    break lost;
                }
            }
            permit = tx.reserve(), if !outbox.queue.is_empty() => {
                let Ok(permit) = permit else { break Ended::ConnectionLost };
                if let Some(pdu) = outbox.queue.pop_front() {
                    permit.send(pdu);
                }
            }
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                on_joined(&mut session, joined, &mut handles, &mut by_tokio_id);
                // Other commands that finished meanwhile go out in the same batch.
                while let Some(joined) = running.try_join_next_with_id() {
                    on_joined(&mut session, joined, &mut handles, &mut by_tokio_id);
                }
            }
            _ = changed(&mut own_freed), if waiting.is_some() => {}
            _ = changed_opt(&mut shared_freed), if waiting.is_some() => {}
            _ = sleep_until_opt(timer) => session.handle_timeout(std::time::Instant::now()),
            _ = sleep_until_opt(stall_deadline) => {
                let written = ctx.written.load(Ordering::Acquire);
                if written == outbox.seen_written && written < outbox.encoded {
                    tracing::info!(
                        unsent = outbox.encoded - written,
                        timeout = ?ctx.stall_timeout,
                        "peer took nothing of what was queued, dropping the connection"
                    );
                    break Ended::Stalled;
                }
            }
            Some(abort) = recv_notice(&mut aborts, "task aborts") => {
                // PREEMPT AND ABORT through another session took this nexus's registration.
                if ctx.scsi.as_ref().is_some_and(|s| s.nexus == abort.nexus) {
                    let dropped = session.abort_for_foreign_reset(Some(abort.lun));
                    tracing::info!(lun = abort.lun, dropped, "tasks aborted by PREEMPT AND ABORT");
                }
            }
            Some(notice) = recv_notice(&mut resets, "reset notices") => {
                let own = ctx.scsi.as_ref().map(|s| s.tsih);
                match notice.scope {
                    _ if Some(notice.origin_tsih) == own => {}
                    ResetScope::Target { cold: true } => break Ended::ColdReset,
                    ResetScope::Target { cold: false } => {
                        session.abort_for_foreign_reset(None);
                    }
                    ResetScope::Lun(lun) => {
                        session.abort_for_foreign_reset(Some(lun));
                    }
                }
            }
            _ = ctx.kill.cancelled() => break Ended::Replaced,
            // The session keeps the grace period's deadline and closes when it passes.
            _ = ctx.shutdown.cancelled(), if !logout_asked => {
                session.request_logout(LOGOUT_GRACE, std::time::Instant::now());
                logout_asked = true;
            }
            _ = ctx.retired.cancelled(), if !logout_asked => {
                tracing::info!("target removed, asking the initiator to log out");
                session.request_logout(LOGOUT_GRACE, std::time::Instant::now());
                logout_asked = true;
            }
        }
    };
    running.abort_all();
    if let Some(scsi) = &ctx.scsi {
        scsi.target.nexus_gone(&scsi.nexus);
    }
    ended
}

/// Resolves when `rx` sees a new value (never, once its sender is gone).
async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// [`changed`] for an optional receiver.
async fn changed_opt(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => changed(rx).await,
        None => std::future::pending().await,
    }
}

impl ScsiBinding {
    fn announce(&self, scope: ResetScope) {
        // No receiver besides ourselves is fine.
        let _ = self.resets.send(ResetNotice {
            origin_tsih: self.tsih,
            scope,
        });
    }
}

/// The next notice on `rx` (reset notices, task aborts); never resolves once the channel is
/// gone. `what` names the notices in the warning about missed ones.
async fn recv_notice<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>, what: &str) -> Option<T> {
    loop {
        let Some(r) = rx.as_mut() else {
            return std::future::pending().await;
        };
        match r.recv().await {
            Ok(notice) => return Some(notice),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "missed {what}");
            }
            Err(broadcast::error::RecvError::Closed) => *rx = None,
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

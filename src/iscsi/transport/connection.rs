//! One TCP connection from accept to close: login (with the sans-IO login state machine),
//! session admission (TSIH, reinstatement), then the full-feature phase of a discovery or
//! normal session.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::PendingGuard;
use super::catalog::Catalog;
use super::driver::{drive, sleep_until_opt, DriverContext, Ended, ScsiBinding};
use super::wire::{write_loop, Incoming, PduReader};
use super::{discovery, Shared};
use crate::iscsi::login::{
    Login, LoginError, LoginOutcome, LoginSettings, LoginStep, LoginTarget, SessionParams,
    SessionType, TargetDirectory,
};
use crate::iscsi::pdu::{EncodedPdu, LoginResponse, LoginStatus, Pdu, PduCodec};
use crate::iscsi::session::registry::SessionKey;
use crate::iscsi::session::{LunExists, Session, SessionOptions};
use crate::scsi::Nexus;

/// How long a reinstating login waits for the old session to finish.
const REINSTATE_WAIT: Duration = Duration::from_secs(10);
/// PDUs queued towards the writer task.
const WRITE_QUEUE: usize = 256;
/// Write data one session may be collecting at once (see
/// [`SessionOptions::write_buffer_budget`]): bounds memory per session whatever the initiator
/// declares, while leaving room for many large writes in flight. The server-wide
/// `memory_budget` bounds all sessions together.
const WRITE_BUFFER_BUDGET: u64 = 64 << 20;
/// Data-In one session may hold read but unsent (see [`SessionOptions::data_in_budget`]):
/// room for 32 reads of 1 MiB in flight, the largest READ (65536 blocks of 512 bytes) alone.
const DATA_IN_BUDGET: u64 = 32 << 20;

/// How the server reaches a live session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Cancel to end the session at once.
    pub kill: CancellationToken,
    /// Completes when the session has fully ended (tasks aborted, nexus released).
    pub done: Arc<tokio::sync::Notify>,
    /// Set once the session ended (so waiters that arrive late do not block).
    pub ended: Arc<std::sync::atomic::AtomicBool>,
    /// The initiator's address.
    pub peer: Option<SocketAddr>,
    /// What login negotiated.
    pub params: SessionParams,
}

impl SessionHandle {
    fn new(peer: Option<SocketAddr>, params: SessionParams) -> Self {
        SessionHandle {
            kill: CancellationToken::new(),
            done: Arc::new(tokio::sync::Notify::new()),
            ended: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            peer,
            params,
        }
    }

    /// Resolves once the session has fully ended.
    pub async fn ended(&self) {
        loop {
            let notified = self.done.notified();
            if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn mark_ended(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// Ends the session and waits (bounded) until it is gone.
    pub async fn stop(&self, wait: Duration) {
        let notified = self.done.notified();
        self.kill.cancel();
        if !self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }
}

/// Serves one accepted connection until it closes; `pending` is its place among the
/// connections in login, given up once login ends.
pub async fn serve(stream: TcpStream, tag: u16, pending: PendingGuard, shared: Arc<Shared>) {
    let peer = stream.peer_addr().ok();
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "connection vanished");
            return;
        }
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    let shown = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    let span = tracing::info_span!("conn", peer = %shown);
    run(stream, Portal { local, tag }, peer, pending, shared)
        .instrument(span)
        .await;
}

/// Where a connection came in: the local address and its portal group's tag.
#[derive(Debug, Clone, Copy)]
struct Portal {
    local: SocketAddr,
    tag: u16,
}

/// The target directory as one portal group shows it: the catalog's, with that group's
/// TargetPortalGroupTag in the login response.
struct PortalDirectory<'a> {
    catalog: &'a Catalog,
    settings: LoginSettings,
}

impl TargetDirectory for PortalDirectory<'_> {
    fn settings(&self) -> &LoginSettings {
        &self.settings
    }

    fn target(&self, name: &str) -> Option<LoginTarget> {
        self.catalog.target(name)
    }

    fn targets(&self) -> Vec<LoginTarget> {
        self.catalog.targets()
    }
}

async fn run(
    stream: TcpStream,
    portal: Portal,
    peer: Option<SocketAddr>,
    pending: PendingGuard,
    shared: Arc<Shared>,
) {
    let (rd, wr) = stream.into_split();
    let mut reader = PduReader::new(rd);
    let (tx, rx) = mpsc::channel::<EncodedPdu>(WRITE_QUEUE);
    let written = Arc::new(AtomicU64::new(0));
    let mut writer = tokio::spawn(write_loop(wr, rx, written.clone()));
    let mut codec = PduCodec::new();

    // The login's deadline is the login machine's (see `before_deadline`).
    let admitted = tokio::select! {
        r = login(&mut reader, &tx, &codec, peer, portal.tag, &shared) => r,
        _ = shared.shutdown.cancelled() => None,
    };
    drop(pending);
    let mut stalled = false;
    if let Some(admitted) = admitted {
        let params = &admitted.outcome.params;
        codec.set_digests(params.digests());
        reader.codec.set_digests(params.digests());
        reader
            .codec
            .set_max_recv_data_segment_length(params.max_recv_data_segment_length);
        stalled = full_feature(admitted, reader, tx, written, codec, portal, &shared).await
            == Ended::Stalled;
    } else {
        drop(tx);
    }
    // The writer drains what is queued (e.g. a Logout or login failure response), then FIN;
    // a peer that stopped reading gets nothing more.
    let drain = if stalled {
        Duration::ZERO
    } else {
        Duration::from_secs(5)
    };
    match tokio::time::timeout(drain, &mut writer).await {
        Ok(Ok(Err(e))) => tracing::debug!(error = %e, "write failed"),
        Ok(_) => {}
        Err(_) => {
            tracing::debug!("writer did not drain in time");
            // Its queue and socket go now, not when the peer reads again.
            writer.abort();
        }
    }
}

/// A login that was accepted.
struct Admitted {
    outcome: LoginOutcome,
    tsih: u16,
    key: SessionKey,
    handle: SessionHandle,
}

async fn send(tx: &mpsc::Sender<EncodedPdu>, codec: &PduCodec, rsp: LoginResponse) -> bool {
    match codec.encode(&Pdu::LoginResponse(rsp)) {
        Ok(enc) => tx.send(enc).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode login response");
            false
        }
    }
}

/// Awaits `work` unless the login's deadline ([`Login::poll_timeout`]) passes first: then the
/// login is over and `None` comes back. The login machine decides when time is up; this only
/// sleeps until the deadline it reports.
async fn before_deadline<T>(login: &mut Login, work: impl Future<Output = T>) -> Option<T> {
    tokio::pin!(work);
    loop {
        let deadline = login.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            out = &mut work => return Some(out),
            _ = sleep_until_opt(deadline) => {
                if login.handle_timeout(std::time::Instant::now()) {
                    let (initiator, target) = (Claimed(login.initiator_name()), Claimed(login.target_name()));
                    tracing::info!(?initiator, ?target, "login timed out");
                    return None;
                }
            }
        }
    }
}

/// Runs the login phase; `None` when the connection must close.
async fn login(
    reader: &mut PduReader<tokio::net::tcp::OwnedReadHalf>,
    tx: &mpsc::Sender<EncodedPdu>,
    codec: &PduCodec,
    peer_addr: Option<SocketAddr>,
    tag: u16,
    shared: &Arc<Shared>,
) -> Option<Admitted> {
    let peer = peer_addr.map(|p| p.ip());
    let mut login = Login::new(std::time::Instant::now());
    let mut settings = shared.catalog.settings().clone();
    settings.target_portal_group_tag = tag;
    let directory = PortalDirectory {
        catalog: &shared.catalog,
        settings,
    };
    loop {
        let req = match before_deadline(&mut login, reader.next()).await? {
            Incoming::Pdu(Pdu::LoginRequest(req)) => req,
            Incoming::Pdu(other) => {
                // After the first Login Request RFC 7143 asks for a Login Response saying
                // "invalid during login"; before it, the connection just closes.
                match login.invalid_pdu(other.opcode(), other.itt()) {
                    Some(LoginStep::Fail(rsp, reason)) => {
                        failed_login(&login, &reason, peer, shared);
                        send(tx, codec, rsp).await;
                    }
                    _ => tracing::info!(opcode = other.opcode(), "non-login PDU before login"),
                }
                return None;
            }
            Incoming::Bad(e) => {
                tracing::info!(error = %e, "bad PDU during login");
                return None;
            }
            Incoming::TooLong(_) | Incoming::Closed(_) => return None,
        };
        match login.handle(&directory, &req) {
            LoginStep::Respond(rsp) => {
                if !before_deadline(&mut login, send(tx, codec, rsp)).await? {
                    return None;
                }
            }
            LoginStep::Fail(rsp, reason) => {
                // The login is over, so its deadline no longer applies; the throttle's delay
                // is bounded on its own.
                tokio::time::sleep(failed_login(&login, &reason, peer, shared)).await;
                send(tx, codec, rsp).await;
                return None;
            }
            LoginStep::Ready(outcome) => {
                if outcome.chap_user.is_some() {
                    let now = std::time::Instant::now();
                    let name = Some(outcome.initiator_name.as_str());
                    shared.auth_throttle.lock().succeeded(now, name, peer);
                }
                let admitted =
                    before_deadline(&mut login, admit(*outcome, peer_addr, tag, shared)).await?;
                return match admitted {
                    Ok(a) => {
                        let sent = match login.accept(a.tsih) {
                            Some(rsp) => send(tx, codec, rsp).await,
                            None => false,
                        };
                        if sent {
                            Some(a)
                        } else {
                            shared.sessions.lock().remove(&a.key, a.tsih);
                            a.handle.mark_ended();
                            None
                        }
                    }
                    Err(reason) => {
                        failed_login(&login, &reason, peer, shared);
                        if let Some(rsp) = login.refuse(&reason) {
                            send(tx, codec, rsp).await;
                        }
                        None
                    }
                };
            }
        }
    }
}

/// Logs a failed or refused login: who (as the initiator claimed), to what, as which CHAP
/// user, why, and the status the initiator is sent (names quoted and escaped, as they come
/// from the network). Returns how long to wait before answering: failed authentication earns
/// a growing delay, which slows password guessing.
fn failed_login(
    login: &Login,
    reason: &LoginError,
    peer: Option<IpAddr>,
    shared: &Shared,
) -> Duration {
    crate::metrics::global().login(
        &target_label(login.target_name(), &shared.catalog),
        reason.status().name(),
    );
    let (initiator, target) = (
        Claimed(login.initiator_name()),
        Claimed(login.target_name()),
    );
    let chap_user = Claimed(login.chap_name());
    let status = format!("{:#06x}", reason.status().code());
    if !reason.is_auth_failure() {
        tracing::info!(?initiator, ?target, ?chap_user, %reason, %status, "login failed");
        return Duration::ZERO;
    }
    tracing::warn!(?initiator, ?target, ?chap_user, %reason, %status, "login failed");
    let now = std::time::Instant::now();
    shared.auth_throttle.lock().failed(now, initiator.0, peer)
}

/// A name the initiator sent, for a log line: quoted and escaped by `Debug` (it comes from the
/// network), or `-` when it sent none, never Rust's `Some(..)`.
struct Claimed<'a>(Option<&'a str>);

impl std::fmt::Debug for Claimed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(name) => std::fmt::Debug::fmt(name, f),
            None => f.write_str("-"),
        }
    }
}

/// The `target` label of a login's metrics: the name when this target serves it, else a
/// fixed word, so names an initiator makes up cannot grow the metrics without bound.
fn target_label(claimed: Option<&str>, catalog: &Catalog) -> String {
    match claimed {
        Some(name) if catalog.get(name).is_some() => name.to_string(),
        Some(_) => "(unknown)".to_string(),
        None => "(none)".to_string(),
    }
}

/// Decides whether a negotiated login may become a session; assigns the TSIH, reinstating
/// (tearing down) an older session of the same initiator port first.
async fn admit(
    outcome: LoginOutcome,
    peer: Option<SocketAddr>,
    tag: u16,
    shared: &Arc<Shared>,
) -> Result<Admitted, LoginError> {
    let target = match outcome.session_type {
        SessionType::Discovery => String::new(),
        // The login machine names the target of every normal session.
        SessionType::Normal => outcome
            .target
            .as_ref()
            .map(|t| t.name.clone())
            .ok_or(LoginError::MissingKey("TargetName"))?,
    };
    let key = SessionKey {
        initiator: outcome.initiator_name.clone(),
        isid: outcome.isid.0,
        target,
        tpgt: tag,
    };
    if outcome.requested_tsih != 0 {
        // Joining an existing session needs MaxConnections > 1, continuing one needs ERL 2.
        let live = shared.sessions.lock().tsih(&key) == Some(outcome.requested_tsih);
        return Err(if live {
            LoginError::TooManyConnections
        } else {
            LoginError::SessionDoesNotExist
        });
    }
    let handle = SessionHandle::new(peer, outcome.params.clone());
    let inserted = {
        let mut sessions = shared.sessions.lock();
        // A reinstatement replaces a session; anything else needs a free place.
        let replacing = sessions.tsih(&key).is_some();
        if !replacing && sessions.len() >= shared.limits.max_sessions as usize {
            tracing::warn!(
                max = shared.limits.max_sessions,
                initiator = %key.initiator,
                "session limit reached, login refused"
            );
            return Err(LoginError::OutOfResources);
        }
        sessions.insert(key.clone(), handle.clone())
    };
    let Some((tsih, old)) = inserted else {
        return Err(LoginError::OutOfResources);
    };
    if let Some(old) = old {
        tracing::info!(initiator = %key.initiator, "reinstating session");
        old.stop(REINSTATE_WAIT).await;
    }
    Ok(Admitted {
        outcome,
        tsih,
        key,
        handle,
    })
}

async fn full_feature(
    admitted: Admitted,
    reader: PduReader<tokio::net::tcp::OwnedReadHalf>,
    tx: mpsc::Sender<EncodedPdu>,
    written: Arc<AtomicU64>,
    codec: PduCodec,
    portal: Portal,
    shared: &Arc<Shared>,
) -> Ended {
    let Admitted {
        outcome,
        tsih,
        key,
        handle,
    } = admitted;
    let span = tracing::info_span!(
        "session",
        initiator = %outcome.initiator_name,
        isid = %hex::encode(outcome.isid.0),
        tsih,
        target = %key.target,
    );

    let served = match outcome.session_type {
        SessionType::Normal => match shared.catalog.get(&key.target) {
            Some(served) => Some(served),
            None => {
                // Removed between login and now: the initiator will find it gone.
                tracing::info!(target = %key.target, "target removed during login");
                shared.sessions.lock().remove(&key, tsih);
                handle.mark_ended();
                return Ended::Shutdown;
            }
        },
        SessionType::Discovery => None,
    };
    let retired = served
        .as_ref()
        .map_or_else(CancellationToken::new, |t| t.retired());
    let opts = SessionOptions {
        params: outcome.params.clone(),
        discovery: outcome.session_type == SessionType::Discovery,
        queue_depth: shared.limits.queue_depth,
        nop_interval: shared.limits.nop_interval,
        nop_timeout: shared.limits.nop_timeout,
        write_buffer_budget: WRITE_BUFFER_BUDGET,
        data_in_budget: DATA_IN_BUDGET,
        shared_budget: Some(shared.budget.clone()),
        data_out_timeout: shared.limits.data_out_timeout,
        lun_exists: served.as_ref().map_or_else(LunExists::none, |t| {
            let scsi = t.scsi.clone();
            LunExists::new(move |n| scsi.has_lun(n))
        }),
        allow_target_reset: served.as_ref().is_some_and(|t| t.allow_target_reset),
        cid: outcome.cid,
        first_cmd_sn: outcome.exp_cmd_sn,
        first_stat_sn: outcome.next_stat_sn,
    };
    let mut session = Session::new(opts, std::time::Instant::now());
    session.set_text_handler(discovery::text_handler(
        shared.catalog.clone(),
        discovery::advertised(portal.local, portal.tag, &shared.portal_groups),
        outcome.session_type,
        outcome.initiator_name.clone(),
        served.as_ref().map(|t| t.login.name.clone()),
    ));
    let target_label = match &served {
        Some(target) => target.login.name.clone(),
        None => "(discovery)".to_string(),
    };
    let metrics = crate::metrics::global();
    metrics.login(&target_label, LoginStatus::SUCCESS.name());
    let _counted = metrics.session(&target_label);
    let ended = async {
        tracing::info!(session_type = ?outcome.session_type, "logged in");
        let scsi = served.map(|target| ScsiBinding {
            target: target.scsi.clone(),
            nexus: Nexus {
                initiator_name: outcome.initiator_name.clone(),
                isid: outcome.isid.0,
                tpgt: portal.tag,
            },
            tsih,
            resets: target.resets.clone(),
        });
        let ctx = DriverContext {
            scsi,
            codec,
            kill: handle.kill.clone(),
            shutdown: shared.shutdown.clone(),
            retired,
            written,
            stall_timeout: shared.limits.nop_timeout,
        };
        let ended = drive(session, ctx, reader, tx).await;
        tracing::info!(?ended, "session ended");
        ended
    }
    .instrument(span)
    .await;
    shared.sessions.lock().remove(&key, tsih);
    handle.mark_ended();
    ended
}

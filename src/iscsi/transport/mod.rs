//! The tokio transport: thin drivers around the sans-IO protocol state.
//!
//! [`Server::bind`] listens on every portal and serves the targets of a live [`Catalog`] that
//! its owner (the daemon) fills and changes; [`Server::run`] accepts connections until its
//! shutdown future resolves, then asks every session to log out (Async Message), waits
//! briefly, and closes what is left. A [`ServerHandle`] lists the sessions and retires the
//! sessions of a removed target while the server runs.
//!
//! Inside: `catalog.rs` holds the served targets (login view, SCSI devices, reset broadcast);
//! each connection (`connection.rs`) is one task that reads the socket, with a writer task
//! beside it (`wire.rs`: codec framing, vectored writes); after login, `driver.rs` runs the
//! sans-IO [`crate::iscsi::session::Session`], with each SCSI command as its own tokio task, and
//! `discovery.rs` answers Text Requests.

mod admission;
mod catalog;
mod connection;
mod discovery;
mod driver;
mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::admission::{PendingGuard, PendingLogins};
pub use self::catalog::{Catalog, ServedTarget, TargetExists};
use self::connection::SessionHandle;
use crate::iscsi::login::{AuthThrottle, SessionParams};
use crate::iscsi::session::budget::MemoryBudget;
use crate::iscsi::session::registry::SessionTable;
use crate::scsi::io_log::LogLimiter;

/// A portal could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {portal}: {source}")]
pub struct BindError {
    /// The portal address.
    pub portal: SocketAddr,
    /// The operating-system error.
    pub source: io::Error,
}

/// Session timers and the limits that bound what initiators can make the server hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Commands a session may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Idle time after which the target pings the initiator; `None` disables pings.
    pub nop_interval: Option<Duration>,
    /// How long the initiator has to answer a ping before the connection is dropped.
    pub nop_timeout: Duration,
    /// Bytes all sessions together may hold for write data and unsent Data-In.
    pub memory_budget: u64,
    /// How long a write may wait for Data-Out before it is ended; `None`: forever.
    pub data_out_timeout: Option<Duration>,
    /// Sessions admitted at once; more logins are refused (out of resources).
    pub max_sessions: u32,
    /// Connections that may be in login at once; more are closed on accept.
    pub max_pending_logins: u32,
    /// Connections from one source address that may be in login at once.
    pub max_pending_logins_per_address: u32,
}

/// State shared by every connection of a server.
pub(crate) struct Shared {
    catalog: Arc<Catalog>,
    limits: Limits,
    sessions: Mutex<SessionTable<SessionHandle>>,
    /// Delays for failed CHAP attempts, by initiator name and source address.
    auth_throttle: Mutex<AuthThrottle>,
    shutdown: CancellationToken,
    /// Write data and unsent Data-In of every session (`Tuning::memory_budget`).
    budget: Arc<MemoryBudget>,
    /// Connections that have not finished login.
    pending: Arc<Mutex<PendingLogins>>,
    /// Every portal group: the address it listens on and its tag (1, 2, … in `--portal`
    /// order). Each is a target port of every target (see `scsi::alua`).
    portal_groups: Vec<(SocketAddr, u16)>,
}

/// A bound iSCSI server.
pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

/// Extra time, beyond the logout grace period, that shutdown waits for connections to close.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

impl Server {
    /// Binds every portal (port 0 picks a free port) to serve the targets of `catalog`.
    pub async fn bind(
        portals: &[SocketAddr],
        limits: Limits,
        catalog: Arc<Catalog>,
    ) -> Result<Server, BindError> {
        let mut listeners = Vec::with_capacity(portals.len());
        let mut portal_groups = Vec::with_capacity(portals.len());
        for (&portal, tag) in portals.iter().zip(1u16..) {
            let listener = TcpListener::bind(portal)
                .await
                .map_err(|source| BindError { portal, source })?;
            portal_groups.push((listener.local_addr().unwrap_or(portal), tag));
            listeners.push(listener);
        }
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                catalog,
                sessions: Mutex::new(SessionTable::new()),
                auth_throttle: Mutex::new(AuthThrottle::new()),
                shutdown: CancellationToken::new(),
                budget: MemoryBudget::new(limits.memory_budget),
                pending: Arc::new(Mutex::new(PendingLogins::new(
                    limits.max_pending_logins,
                    limits.max_pending_logins_per_address,
                ))),
                limits,
                portal_groups,
            }),
        })
    }

    /// A handle to look at and act on the server's sessions while it runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The addresses actually listened on (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` resolves, then logs every session out (waiting at most a few
    /// seconds) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (accepted_tx, mut accepted_rx) = mpsc::channel::<Accepted>(64);
        let mut acceptors = JoinSet::new();
        for (listener, tag) in self.listeners.into_iter().zip(1u16..) {
            acceptors.spawn(accept_loop(listener, tag, accepted_tx.clone()));
        }
        drop(accepted_tx);
        let mut connections = JoinSet::new();
        let mut refusals = LogLimiter::new(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some((stream, peer, tag)) = accepted_rx.recv() => {
                    match PendingGuard::enter(&self.shared.pending, peer.ip()) {
                        Ok(guard) => {
                            connections.spawn(connection::serve(stream, tag, guard, self.shared.clone()));
                        }
                        Err(why) => {
                            // Closed at once: its descriptor is free again.
                            drop(stream);
                            if let Some(more) = refusals.admit(std::time::Instant::now()) {
                                let in_login = self.shared.pending.lock().total();
                                tracing::warn!(%peer, ?why, in_login, suppressed = more, "too many connections in login, closed");
                            }
                        }
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut shutdown => break,
            }
        }
        tracing::info!(
            sessions = self.shared.sessions.lock().len(),
            "shutting down"
        );
        acceptors.abort_all();
        self.shared.shutdown.cancel();
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(driver::LOGOUT_GRACE + SHUTDOWN_SLACK, drain)
            .await
            .is_err()
        {
            tracing::info!(
                left = connections.len(),
                "closing connections that did not log out"
            );
        }
        connections.abort_all();
    }
}

/// What the owner of a running server can ask of it.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

/// One live session, as the management API shows it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// InitiatorName.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// The TSIH the target assigned.
    pub tsih: u16,
    /// The initiator's address.
    pub peer: Option<SocketAddr>,
    /// The target; `None` for a discovery session.
    pub target: Option<String>,
    /// The negotiated operational parameters.
    pub params: SessionParams,
}

impl ServerHandle {
    /// Every live session (normal and discovery).
    pub fn sessions(&self) -> Vec<SessionView> {
        let sessions = self.shared.sessions.lock();
        sessions
            .entries()
            .map(|(key, tsih, handle)| SessionView {
                initiator: key.initiator.clone(),
                isid: key.isid,
                tsih,
                peer: handle.peer,
                target: (!key.target.is_empty()).then(|| key.target.clone()),
                params: handle.params.clone(),
            })
            .collect()
    }

    /// Live sessions logged in to `target`.
    pub fn session_count(&self, target: &str) -> usize {
        self.shared.sessions.lock().of_target(target).count()
    }

    /// Waits until every session of `target` has ended: they were asked to log out when the
    /// target left the catalog ([`Catalog::remove`]); those still there after the logout grace
    /// period are ended.
    pub async fn retire(&self, target: &str) {
        let handles: Vec<SessionHandle> = self
            .shared
            .sessions
            .lock()
            .of_target(target)
            .map(|(_, h)| h.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + driver::LOGOUT_GRACE + SHUTDOWN_SLACK;
        for handle in &handles {
            if tokio::time::timeout_at(deadline, handle.ended())
                .await
                .is_err()
            {
                handle.stop(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Accepts connections on one portal and hands them to the server loop.
/// A connection accepted by the listener of portal group `.2`.
type Accepted = (TcpStream, SocketAddr, u16);

async fn accept_loop(listener: TcpListener, tag: u16, tx: mpsc::Sender<Accepted>) {
    let mut failures = LogLimiter::new(Duration::from_secs(1));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, tag, "accepted");
                if tx.send((stream, peer, tag)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning, and
                // log once a second at most.
                if let Some(more) = failures.admit(std::time::Instant::now()) {
                    tracing::warn!(error = %e, suppressed = more, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

//! The tokio transport: thin drivers around the sans-IO protocol state.
//!
//! [`Server::bind`] opens every LUN and listens on every portal; [`Server::run`] accepts
//! connections until its shutdown future resolves, then asks every session to log out (Async
//! Message), waits briefly, and closes what is left.
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
use self::catalog::Catalog;
pub use self::catalog::LunOpenError;
use self::connection::SessionHandle;
use crate::config::{Config, Tuning};
use crate::iscsi::login::AuthThrottle;
use crate::iscsi::session::budget::MemoryBudget;
use crate::iscsi::session::registry::SessionTable;
use crate::scsi::io_log::LogLimiter;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A LUN's backing could not be opened.
    #[error(transparent)]
    Lun(#[from] LunOpenError),
    /// A portal could not be bound.
    #[error("cannot listen on {portal}: {source}")]
    Bind {
        /// The portal address.
        portal: SocketAddr,
        /// The operating-system error.
        source: io::Error,
    },
}

/// State shared by every connection of a server.
pub(crate) struct Shared {
    catalog: Arc<Catalog>,
    tuning: Tuning,
    sessions: Mutex<SessionTable<SessionHandle>>,
    /// Delays for failed CHAP attempts, by initiator name and source address.
    auth_throttle: Mutex<AuthThrottle>,
    shutdown: CancellationToken,
    /// Write data and unsent Data-In of every session (`Tuning::memory_budget`).
    budget: Arc<MemoryBudget>,
    /// Connections that have not finished login.
    pending: Arc<Mutex<PendingLogins>>,
}

/// A bound iSCSI server.
pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

/// Extra time, beyond the logout grace period, that shutdown waits for connections to close.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

impl Server {
    /// Opens every LUN of `config` and binds every portal (port 0 picks a free port).
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        let catalog = Catalog::open(config)?;
        let mut listeners = Vec::with_capacity(config.portals.len());
        for &portal in &config.portals {
            let listener = TcpListener::bind(portal)
                .await
                .map_err(|source| ServerError::Bind { portal, source })?;
            listeners.push(listener);
        }
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                catalog: Arc::new(catalog),
                tuning: config.tuning.clone(),
                sessions: Mutex::new(SessionTable::new()),
                auth_throttle: Mutex::new(AuthThrottle::new()),
                shutdown: CancellationToken::new(),
                budget: MemoryBudget::new(config.tuning.memory_budget),
                pending: Arc::new(Mutex::new(PendingLogins::new(
                    config.tuning.max_pending_logins,
                    config.tuning.max_pending_logins_per_address,
                ))),
            }),
        })
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
        let (accepted_tx, mut accepted_rx) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let mut acceptors = JoinSet::new();
        for listener in self.listeners {
            acceptors.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);
        let mut connections = JoinSet::new();
        let mut refusals = LogLimiter::new(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some((stream, peer)) = accepted_rx.recv() => {
                    match PendingGuard::enter(&self.shared.pending, peer.ip()) {
                        Ok(guard) => {
                            connections.spawn(connection::serve(stream, guard, self.shared.clone()));
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

/// Accepts connections on one portal and hands them to the server loop.
async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<(TcpStream, SocketAddr)>) {
    let mut failures = LogLimiter::new(Duration::from_secs(1));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "accepted");
                if tx.send((stream, peer)).await.is_err() {
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

//! The operations of the management API, independent of HTTP: the daemon implements
//! [`ControlPlane`], the HTTP server calls it, and each [`ControlError`] maps to one status
//! code. Every operation either completes or changes nothing.

use async_trait::async_trait;

use super::model::{
    AddLun, AddTarget, CacheReport, CachedLayer, LunInfo, PublishInfo, SessionInfo, Status,
    TargetInfo, TraceInfo, WarmReport, WarmRequest,
};

/// Why an operation was refused or failed; the message is one line meant for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed or a value is out of range (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// No target or LUN of that name or number (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// It already exists, or it is in use and `force` was not given (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The LUN's backing could not be opened; nothing was added (HTTP 422).
    #[error("{0}")]
    OpenFailed(String),
    /// The daemon is shutting down or could not persist the change (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

impl ControlError {
    /// The HTTP status code the API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ControlError::Invalid(_) => 400,
            ControlError::NotFound(_) => 404,
            ControlError::Conflict(_) => 409,
            ControlError::OpenFailed(_) => 422,
            ControlError::Unavailable(_) => 503,
        }
    }
}

/// What the management API can ask of the daemon.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Targets, LUNs with their state, session count, cache counters.
    fn status(&self) -> Status;

    /// Every logged-in session.
    fn sessions(&self) -> Vec<SessionInfo>;

    /// One target.
    fn target(&self, name: &str) -> Result<TargetInfo, ControlError>;

    /// Adds a target without LUNs. `Conflict` when the name is taken.
    async fn add_target(&self, request: AddTarget) -> Result<TargetInfo, ControlError>;

    /// Removes a target. With sessions logged in, `Conflict` unless `force`; with `force` they
    /// are asked to log out (Async Message) and dropped after a grace period.
    async fn remove_target(&self, name: &str, force: bool) -> Result<(), ControlError>;

    /// Opens the backing and adds the LUN (raising REPORTED LUNS DATA HAS CHANGED for the
    /// target's sessions). Returns once it serves I/O, or `OpenFailed` with nothing added.
    async fn add_lun(&self, target: &str, request: AddLun) -> Result<LunInfo, ControlError>;

    /// Removes a LUN. In use by a session, `Conflict` unless `force`; with `force` its
    /// outstanding commands complete and new ones get LOGICAL UNIT NOT SUPPORTED.
    async fn remove_lun(&self, target: &str, lun: u64, force: bool) -> Result<(), ControlError>;

    /// The registry layer cache: its bounds, its use and what it holds per layer. Opens the
    /// cache folder if no image has yet.
    async fn cache(&self) -> Result<CacheReport, ControlError>;

    /// Drops the cached units of the layer `digest`, or with `None` those of every unpinned
    /// layer, and returns what was dropped. Naming a pinned layer is `Conflict` unless
    /// `force` (its pin stays). Images using a purged layer fetch what they read next again.
    async fn purge_cache(
        &self,
        digest: Option<&str>,
        force: bool,
    ) -> Result<Vec<CachedLayer>, ControlError>;

    /// Pins (`true`) or unpins the layer `digest`, so its units are kept whatever else is
    /// read (saved across restarts); returns the layer. `Conflict` without a disk tier.
    async fn pin_layer(&self, digest: &str, pinned: bool) -> Result<CachedLayer, ControlError>;

    /// Fetches every byte of an image's registry layers into the cache; returns when done.
    async fn warm(&self, request: WarmRequest) -> Result<WarmReport, ControlError>;

    /// What the LUN's trace prefetch does (recording, replaying, none). `NotFound` without
    /// such a LUN.
    async fn trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ControlError>;

    /// Ends the LUN's trace recording now and returns once the trace is written (with its
    /// `.ok`). `NotFound` without such a LUN, `Conflict` when it is not recording.
    async fn stop_trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ControlError>;

    /// Publishes the trace the `registry:` LUN learned as its image's acceleration layer, to
    /// `to` (a reference with a tag) or else the LUN's own tag, with the daemon's registry
    /// credentials. `NotFound` without such a LUN; `Conflict` when the LUN is not a
    /// `registry:` one, has no learned trace (or is still recording it), or the registry
    /// refuses; `Invalid` for a malformed `to`.
    async fn publish_trace(
        &self,
        target: &str,
        lun: u64,
        to: Option<String>,
    ) -> Result<PublishInfo, ControlError>;
}

//! The resources of the management API, as JSON. These shapes are a contract that scripts
//! (through `overlaybd-target ctl … --json`) rely on: fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a LUN is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LunState {
    /// Its backing is being opened; media commands answer NOT READY, BECOMING READY.
    Opening,
    /// Serving I/O.
    Ready,
    /// Its backing could not be opened (see the reason); it answers NOT READY.
    Failed,
}

/// One logical unit of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunInfo {
    /// The LUN number.
    pub lun: u64,
    /// The backing string exactly as `--lun` takes it (`file:PATH`, `ro:image:CONFIG`, …).
    pub backing: String,
    /// Writes are refused.
    pub read_only: bool,
    /// Opening, ready or failed.
    pub state: LunState,
    /// Why it failed (only when `state` is `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Capacity in bytes once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// One target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// The iSCSI name.
    pub name: String,
    /// TargetAlias, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Initiator names allowed to log in; empty allows everyone.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// The CHAP user initiators must authenticate as (the secret is never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_user: Option<String>,
    /// The CHAP user the target answers mutual CHAP as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_user: Option<String>,
    /// The LUNs, by number.
    pub luns: Vec<LunInfo>,
    /// Sessions logged in to it now.
    pub sessions: usize,
}

/// One logged-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The initiator's iSCSI name.
    pub initiator: String,
    /// The ISID, as 12 hex digits.
    pub isid: String,
    /// The TSIH the target gave the session.
    pub tsih: u16,
    /// The initiator's address and port, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The target (absent for a discovery session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The negotiated operational keys (HeaderDigest, MaxRecvDataSegmentLength, …).
    pub keys: BTreeMap<String, String>,
}

/// Counters of the registry layer cache, summed over the images that use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInfo {
    /// Units found in the memory tier.
    pub memory_hits: u64,
    /// Units read from the disk tier.
    pub disk_hits: u64,
    /// Units a reader waited for while another reader fetched them.
    pub shared_fetches: u64,
    /// Requests sent to the registry.
    pub source_requests: u64,
    /// Bytes received from the registry.
    pub source_bytes: u64,
    /// Bytes held in the memory tier now.
    pub memory_bytes: u64,
    /// Bytes held in the disk tier now.
    pub disk_bytes: u64,
}

/// The whole picture: `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The server's version.
    pub version: String,
    /// The addresses iSCSI is served on.
    pub portals: Vec<String>,
    /// Every target.
    pub targets: Vec<TargetInfo>,
    /// Sessions logged in now (normal and discovery).
    pub sessions: usize,
    /// Layer cache counters (absent until an image with registry layers was opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheInfo>,
}

/// A CHAP user name and secret, as a request carries them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapInput {
    /// CHAP name.
    pub user: String,
    /// CHAP secret (at least 12 characters).
    pub secret: String,
}

impl std::fmt::Debug for ChapInput {
    // Keeps secrets out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapInput")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/targets`: a new target, without LUNs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTarget {
    /// The iSCSI name.
    pub name: String,
    /// TargetAlias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Initiator names allowed to log in; empty allows everyone.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP the initiator must prove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapInput>,
    /// CHAP the target proves back (needs `chap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<ChapInput>,
    /// Honour TARGET WARM/COLD RESET.
    #[serde(default)]
    pub allow_target_reset: bool,
}

/// `POST /v1/targets/{name}/luns`: a new LUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLun {
    /// The backing string exactly as `--lun` takes it.
    pub backing: String,
    /// The LUN number; the lowest free one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u64>,
    /// Export read-only (same as a `ro:` prefix).
    #[serde(default)]
    pub read_only: bool,
}

/// The body of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line saying what went wrong.
    pub error: String,
}

/// The registry layer cache: `GET /v1/cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The cache folder.
    pub folder: String,
    /// The refill unit in bytes.
    pub unit_bytes: u64,
    /// Bytes held in the memory tier, and its bound.
    pub memory_bytes: u64,
    /// The memory tier's bound in bytes.
    pub memory_capacity_bytes: u64,
    /// Bytes of entry files in the disk tier.
    pub disk_bytes: u64,
    /// The disk tier's bound in bytes (0: no disk tier).
    pub disk_capacity_bytes: u64,
    /// Free bytes the disk tier leaves on its file system.
    pub min_free_bytes: u64,
    /// Every layer either tier holds units of, and every pinned one, by digest.
    pub layers: Vec<CachedLayer>,
}

/// What the disk tier holds of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    /// The layer's blob digest.
    pub digest: String,
    /// Refill units stored.
    pub units: u64,
    /// Bytes of their entry files.
    pub bytes: u64,
    /// Kept whatever else is read (see `ctl cache pin`).
    pub pinned: bool,
    /// Bytes of it in the memory tier.
    #[serde(default)]
    pub memory_bytes: u64,
    /// The blob's size, when an image opened since the start uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// `POST /v1/cache/warm`: fetch an image's registry layers into the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// An image reference (`registry/repo:tag`, `…@sha256:…`) or the absolute path of a
    /// `config.v1.json`.
    pub image: String,
    /// Pin the layers as well, so they stay cached.
    #[serde(default)]
    pub pin: bool,
}

/// What a warm did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmReport {
    /// The image as asked (a reference is reported pinned to its digest).
    pub image: String,
    /// Each registry layer, bottom first.
    pub layers: Vec<WarmedLayer>,
    /// Lower layers served from local files, which need no warming.
    pub local_layers: usize,
    /// Seconds the warm took.
    pub seconds: f64,
}

/// One warmed layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmedLayer {
    /// The layer's blob digest.
    pub digest: String,
    /// The blob's size in bytes.
    pub size_bytes: u64,
    /// Refill units cached before the warm.
    pub units_before: u64,
    /// Refill units cached after it.
    pub units_after: u64,
    /// Refill units the blob spans.
    pub units_total: u64,
    /// False when P2P is enabled: the reads filled the proxy's cache, not this one.
    pub cached_locally: bool,
    /// Whether the layer is pinned now.
    pub pinned: bool,
}

/// What a LUN's trace prefetch is doing (`trace-prefetch.md`; learned traces in README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceMode {
    /// Neither recording nor replaying.
    None,
    /// Recording the reads into a trace.
    Recording,
    /// The recording ended; its trace was written (or the write failed, see `error`).
    Recorded,
    /// Replaying a trace in the background.
    Replaying,
}

/// The body of `POST /v1/targets/{name}/luns/{n}/trace/publish`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Where to push the image with the trace (`HOST/REPOSITORY:TAG`); absent: the LUN's
    /// own reference's tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What `POST …/trace/publish` pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishInfo {
    /// The LUN number.
    pub lun: u64,
    /// The learned trace published.
    pub trace: String,
    /// The image pushed, pinned to its new manifest's digest.
    pub pushed: String,
    /// The acceleration layer's digest.
    pub layer: String,
    /// The acceleration layer it replaced, if the image had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// A LUN's trace prefetch (`GET /v1/targets/{name}/luns/{n}/trace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// The LUN number.
    pub lun: u64,
    /// What it does.
    pub mode: TraceMode,
    /// The trace file (or, replaying an acceleration layer, the layer), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Records held (recording), written (recorded) or replayed (replaying).
    pub records: u64,
    /// Why writing the trace failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TraceInfo {
    /// LUN `lun` whose prefetch is in `state`.
    pub fn of(lun: u64, state: crate::prefetch::PrefetchState) -> TraceInfo {
        use crate::prefetch::PrefetchState as S;
        let (mode, path, records, error) = match state {
            S::None => (TraceMode::None, None, 0, None),
            S::Recording { path, records } => (
                TraceMode::Recording,
                Some(path.display().to_string()),
                records,
                None,
            ),
            S::Recorded {
                path,
                records,
                error,
            } => (
                TraceMode::Recorded,
                Some(path.display().to_string()),
                records,
                error,
            ),
            S::Replaying { name, records } => (TraceMode::Replaying, Some(name), records, None),
        };
        TraceInfo {
            lun,
            mode,
            path,
            records: records as u64,
            error,
        }
    }
}

//! The running daemon: builds the live catalog from the declared configuration and the state
//! file, opens every LUN concurrently in the background, serves iSCSI, and carries out the
//! management API's changes ([`ControlPlane`]).
//!
//! Every change follows one order: validate, do the slow part (opening a backing) without any
//! lock, then under the change lock write the state file and only then apply the change to
//! what is served. A change whose state cannot be written is refused and changes nothing; a
//! crash after the write and before the apply restores the change at the next start, which is
//! what the caller asked for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::block::Unavailable;
use crate::config::backing::ImageOpener;
use crate::config::{BackingError, ChapCredentials, Config, LunSpec, TargetConfig};
use crate::iscsi::transport::{Catalog, ServedTarget, Server, ServerHandle};
use crate::scsi::{ReservationStore, ScsiTarget};

use tokio_util::sync::CancellationToken;

use super::api::ApiServer;
use super::control::{ControlError, ControlPlane};
use super::definition::TargetDef;
use super::inventory::{Inventory, LunSlot, TargetEntry};
use super::model::{
    AddLun, AddTarget, CacheInfo, CacheReport, CachedLayer, ChapInput, LunInfo, LunState,
    PublishInfo, SessionInfo, Status, TargetInfo, TraceInfo, WarmReport, WarmRequest,
};
use super::reservations::ReservationDir;
use super::settings::{limits, login_settings, login_view};
use super::state::{self, StateFile};
use crate::metrics::MetricsServer;

/// LUN numbers the API accepts: flat space addressing reaches 16383.
pub const MAX_LUN: u64 = 16383;

/// How long the start waits for declared LUNs to open before it listens. Local files and
/// images open in milliseconds, so initiators that log in at once find them ready; a LUN still
/// opening after this (a slow registry) answers NOT READY, BECOMING READY until it is, and never
/// holds the others back.
pub const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state file could not be read.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// With `strict`, a LUN could not be opened.
    #[error("target {target}, LUN {lun}: {source}")]
    Lun {
        /// The target's name.
        target: String,
        /// The LUN number.
        lun: u64,
        /// Why it failed.
        source: BackingError,
    },
    /// A portal could not be bound.
    #[error(transparent)]
    Bind(#[from] crate::iscsi::transport::BindError),
    /// The management API's socket could not be bound.
    #[error(transparent)]
    Api(#[from] super::api::ApiError),
    /// The metrics address could not be bound (the message names it).
    #[error("{0}")]
    Metrics(std::io::Error),
}

/// Where the daemon keeps its state and serves its management API.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// The state file; `None`: changes made through the API last until the process exits.
    pub state: Option<PathBuf>,
    /// The management API's Unix socket; `None`: no API.
    pub api: Option<PathBuf>,
    /// The API socket was named by the operator: failing to bind it stops the start. The
    /// default one is best effort (another instance may hold it): a warning, and no API.
    pub api_explicit: bool,
    /// Where to serve `GET /metrics` over plain HTTP; `None`: only through the API.
    pub metrics: Option<SocketAddr>,
}

/// A started daemon: LUNs opening or open, portals and API socket bound.
pub struct Daemon {
    inner: Arc<Inner>,
    server: Server,
    api: Option<ApiServer>,
    metrics: Option<MetricsServer>,
}

struct Inner {
    /// What `--config` or the quick form declares; replaced by a reload.
    declared: Mutex<BTreeMap<String, TargetDef>>,
    catalog: Arc<Catalog>,
    images: ImageOpener,
    inventory: Mutex<Inventory>,
    server: OnceLock<ServerHandle>,
    portals: OnceLock<Vec<SocketAddr>>,
    /// The portal group tags, 1 to the number of portals, with their ALUA access states:
    /// every target's SCSI ports.
    ports: Vec<(u16, crate::scsi::AccessState)>,
    /// Where persistent reservations with APTPL are saved: beside the state file, so without
    /// one they cannot be (PTPL_C 0).
    pr_store: Option<Arc<dyn ReservationStore>>,
    state: Option<StateFile>,
    /// Serialises changes: each computes the state from what the previous one left.
    changes: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

impl Daemon {
    /// Restores the served set (`config` plus the state file), opens every LUN, binds the
    /// portals. LUNs open in the background and answer NOT READY, BECOMING READY until then;
    /// with `config.strict` every LUN is opened first and any failure stops the start.
    pub async fn start(config: Config, options: DaemonOptions) -> Result<Daemon, StartError> {
        open_audit_log(&config.images);
        let declared: BTreeMap<String, TargetDef> = config
            .targets
            .iter()
            .map(|t| (t.name.clone(), TargetDef::from_config(t)))
            .collect();
        let state = options.state.map(StateFile::new);
        if let Some(file) = &state {
            // Temporary files of a save that a crash interrupted hold CHAP secrets.
            match file.remove_leftovers() {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(
                        count = removed.len(),
                        "removed temporary state files left by an interrupted save"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot clean up temporary state files"),
            }
        }
        let served = match &state {
            Some(file) => match file.load()? {
                Some(diff) => {
                    let (served, notices) = state::apply(&declared, &diff);
                    for notice in notices {
                        tracing::warn!(state = %file.path().display(), "{notice}");
                    }
                    tracing::info!(state = %file.path().display(), "restored changes made through the API");
                    served
                }
                None => declared.clone(),
            },
            None => declared.clone(),
        };
        let images = learning(
            ImageOpener::new(config.images.clone()),
            &config.learn,
            state.as_ref(),
        );
        let inner = Arc::new(Inner {
            declared: Mutex::new(declared),
            catalog: Arc::new(Catalog::new(login_settings(&config.tuning))),
            images,
            inventory: Mutex::new(Inventory::default()),
            server: OnceLock::new(),
            portals: OnceLock::new(),
            ports: config.port_states(),
            pr_store: state.as_ref().map(|file| {
                Arc::new(ReservationDir::beside(file.path())) as Arc<dyn ReservationStore>
            }),
            state,
            changes: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
        });
        let mut opened = BTreeMap::new();
        if config.strict {
            opened = inner.open_all_now(&served).await?;
        }
        let mut opening = Vec::new();
        for def in served.values() {
            opening.extend(inner.serve_declared(def, &mut opened));
        }
        let opens: Vec<_> = opening
            .into_iter()
            .map(|(target, number, id, spec)| {
                let inner = inner.clone();
                tokio::spawn(async move { inner.finish_open(&target, number, id, spec).await })
            })
            .collect();
        let count = opens.len();
        // Dropping the handles after the wait does not stop the opens still running.
        let all = futures_util::future::join_all(opens);
        if tokio::time::timeout(OPEN_WAIT, all).await.is_err() {
            tracing::warn!(
                luns = count,
                "some LUNs are still opening; they answer NOT READY until they are ready"
            );
        }
        let api = match &options.api {
            None => None,
            Some(path) => match ApiServer::bind(path, options.api_explicit) {
                Ok(api) => Some(api),
                Err(e) if options.api_explicit => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "serving no management API");
                    None
                }
            },
        };
        let metrics = match options.metrics {
            Some(addr) => Some(
                MetricsServer::bind(addr)
                    .await
                    .map_err(StartError::Metrics)?,
            ),
            None => None,
        };
        let server = Server::bind(
            &config.portals,
            limits(&config.tuning),
            inner.catalog.clone(),
        )
        .await?;
        let _ = inner.server.set(server.handle());
        let _ = inner.portals.set(server.local_addrs());
        Ok(Daemon {
            inner,
            server,
            api,
            metrics,
        })
    }

    /// The addresses iSCSI is served on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.server.local_addrs()
    }

    /// The address metrics are served on, when `--metrics` asked for them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// A handle that applies a re-read configuration to this daemon ([`Reloader::reload`]).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.inner.clone())
    }

    /// The operations of the management API.
    pub fn control(&self) -> Arc<dyn ControlPlane> {
        self.inner.clone().control()
    }

    /// Serves iSCSI and the management API until `shutdown` resolves, then asks every
    /// initiator to log out.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let stop_api = CancellationToken::new();
        let api = self
            .api
            .map(|api| tokio::spawn(api.serve(self.inner.clone().control(), stop_api.clone())));
        let metrics = self
            .metrics
            .map(|m| tokio::spawn(crate::metrics::serve(m, stop_api.clone())));
        self.server.run(shutdown).await;
        stop_api.cancel();
        if let Some(api) = api {
            let _ = api.await;
        }
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
    }
}

/// Applies a re-read configuration (SIGHUP) to a running daemon.
#[derive(Clone)]
pub struct Reloader(Arc<Inner>);

impl Reloader {
    /// Serves what a restart with `config` would serve, without the restart: the targets and
    /// LUNs it declares, with the changes made through the management API kept on top (the
    /// state file's rules, see [`state`]). Each difference goes through the same operations as
    /// the API, so sessions are told of LUN changes by unit attentions. A target or LUN still
    /// in use is not removed: that is logged, and the API's `--force` or a later reload does
    /// it. The learning settings apply to LUNs opened from now on. Portals, tuning and
    /// overlaybd.json settings need a restart. Returns one line per
    /// change made or refused.
    pub async fn reload(&self, config: &Config) -> Vec<String> {
        let inner = &self.0;
        let control = Control(inner.clone());
        let new_declared: BTreeMap<String, TargetDef> = config
            .targets
            .iter()
            .map(|t| (t.name.clone(), TargetDef::from_config(t)))
            .collect();
        let served = inner.inventory.lock().committed();
        let api_changes = state::diff(&inner.declared.lock(), &served);
        let (wanted, mut report) = state::apply(&new_declared, &api_changes);
        *inner.declared.lock() = new_declared;
        // Before any LUN this reload adds is opened, so those learn as the new settings say.
        report.extend(inner.images.relearn(&config.learn));
        // What could not be removed (in use) stays declared, so neither the state file nor
        // the next reload takes it for a change made through the API; a restart drops it.
        let mut kept_targets: Vec<TargetDef> = Vec::new();
        let mut kept_luns: Vec<(String, u64, LunSpec)> = Vec::new();
        let mut note = |what: String, result: Result<(), ControlError>| {
            report.push(match result {
                Ok(()) => what,
                Err(e) => format!("{what}: not done: {e}"),
            });
        };
        for (name, def) in served.iter().filter(|(n, _)| !wanted.contains_key(*n)) {
            let result = control.remove_target(name, false).await;
            if result.is_err() {
                kept_targets.push(def.clone());
            }
            note(format!("removed target {name}"), result);
        }
        for (name, def) in &wanted {
            let current = served.get(name);
            let same_settings = current.is_some_and(|c| {
                TargetDef {
                    luns: BTreeMap::new(),
                    ..c.clone()
                } == TargetDef {
                    luns: BTreeMap::new(),
                    ..def.clone()
                }
            });
            if let Some(current) = current.filter(|_| same_settings) {
                for (&number, spec) in &current.luns {
                    if def.luns.get(&number) != Some(spec) {
                        let result = control.remove_lun(name, number, false).await;
                        if result.is_err() {
                            kept_luns.push((name.clone(), number, spec.clone()));
                        }
                        note(format!("removed LUN {number} ({spec}) of {name}"), result);
                    }
                }
                for (&number, spec) in &def.luns {
                    let kept = kept_luns.iter().any(|(t, n, _)| t == name && *n == number);
                    if current.luns.get(&number) != Some(spec) && !kept {
                        let result = add_lun(&control, name, number, spec).await;
                        note(format!("added LUN {number} ({spec}) to {name}"), result);
                    }
                }
                continue;
            }
            if current.is_some() {
                // Other login settings (CHAP, access list, alias): the target is rebuilt.
                let result = control.remove_target(name, false).await;
                let failed = result.is_err();
                note(
                    format!("removed target {name} to change its settings"),
                    result,
                );
                if failed {
                    kept_targets.extend(current.cloned());
                    continue;
                }
            }
            let result = control.add_target(add_request(def)).await.map(|_| ());
            let failed = result.is_err();
            note(format!("added target {name}"), result);
            if failed {
                continue;
            }
            for (&number, spec) in &def.luns {
                let result = add_lun(&control, name, number, spec).await;
                note(format!("added LUN {number} ({spec}) to {name}"), result);
            }
        }
        if !kept_targets.is_empty() || !kept_luns.is_empty() {
            let _change = inner.changes.lock().await;
            {
                let mut declared = inner.declared.lock();
                for def in kept_targets {
                    declared.insert(def.name.clone(), def);
                }
                for (target, number, spec) in kept_luns {
                    if let Some(def) = declared.get_mut(&target) {
                        def.luns.insert(number, spec);
                    }
                }
            }
            let committed = inner.inventory.lock().committed();
            if let Err(e) = inner.persist(committed).await {
                report.push(format!("state file not updated: {e}"));
            }
        }
        report
    }
}

/// The API request that adds `def`'s target (without its LUNs).
fn add_request(def: &TargetDef) -> AddTarget {
    let input = |c: &Option<ChapCredentials>| {
        c.as_ref().map(|c| ChapInput {
            user: c.user.clone(),
            secret: c.secret.clone(),
        })
    };
    AddTarget {
        name: def.name.clone(),
        alias: def.alias.clone(),
        allowed_initiators: def.allowed_initiators.clone(),
        chap: input(&def.chap),
        mutual_chap: input(&def.mutual_chap),
        allow_target_reset: def.allow_target_reset,
    }
}

/// Adds LUN `number` backed by `spec` to `target` through the API's operation.
async fn add_lun(
    control: &Control,
    target: &str,
    number: u64,
    spec: &LunSpec,
) -> Result<(), ControlError> {
    let request = AddLun {
        backing: spec.to_string(),
        lun: Some(number),
        read_only: spec.read_only,
    };
    control.add_lun(target, request).await.map(|_| ())
}

/// `images` with a store of learned traces: `traces/` beside the state file, so without one
/// learning is off (a warning when `learn_traces` asks for it). Every LUN learns with
/// `learn_traces`, else only LUNs with `learn=true`. Stale locks of a previous run are removed
/// first (see [`crate::prefetch::learn::LearnStore::prepare`]).
fn learning(
    images: ImageOpener,
    learn: &crate::config::LearnSettings,
    state: Option<&StateFile>,
) -> ImageOpener {
    let Some(state) = state else {
        if learn.enabled {
            tracing::warn!("learn_traces needs a state file (--state), beside which traces are kept; learning is off");
        }
        return images;
    };
    let store = crate::prefetch::learn::LearnStore::beside(state.path(), learn.window);
    if !learn.enabled && !store.dir().exists() {
        // Nothing learned yet and nothing to clean: the folder is made by the first LUN
        // that learns (learn=true), not beside every state file.
        return images.with_learning_when_asked(store);
    }
    match store.prepare() {
        Ok(stale) => {
            if learn.enabled {
                tracing::info!(
                    store = %store.dir().display(),
                    window_secs = learn.window.as_secs(),
                    stale_locks_removed = stale,
                    publish = learn.publish,
                    "images without a prefetch trace learn one"
                );
            }
            // Without learn_traces the store still serves LUNs with learn=true.
            let images = if learn.enabled {
                images.with_learning(store)
            } else {
                images.with_learning_when_asked(store)
            };
            if learn.publish {
                images.publishing_learned()
            } else {
                images
            }
        }
        Err(e) => {
            tracing::warn!(store = %store.dir().display(), error = %e, "cannot use the learned trace folder; learning is off");
            images
        }
    }
}

/// Opens the audit log overlaybd.json asks for. One that cannot be opened is a warning, not a
/// failed start: the log is for looking back, serving is what matters now.
fn open_audit_log(settings: &crate::cache::DaemonSettings) {
    if !settings.enable_audit || settings.audit_path.is_empty() {
        return;
    }
    let slow = std::time::Duration::from_millis(settings.audit_slow_command_ms);
    match crate::audit::open(std::path::Path::new(&settings.audit_path), slow) {
        Ok(()) => {
            tracing::info!(path = %settings.audit_path, slow_ms = settings.audit_slow_command_ms, "audit log open")
        }
        Err(e) => tracing::warn!(error = %e, "no audit log"),
    }
}

/// The line an operator reads for each LUN at start: what serves it and how large it is.
fn log_ready(target: &str, number: u64, spec: &LunSpec, config: &crate::scsi::LunConfig) {
    tracing::info!(
        target,
        lun = number,
        backing = %spec,
        size = config.device.size(),
        read_only = config.device.read_only(),
        "LUN ready"
    );
}

impl Inner {
    fn control(self: Arc<Self>) -> Arc<dyn ControlPlane> {
        Arc::new(Control(self))
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens every LUN of `served` concurrently, failing on the first that cannot be opened.
    async fn open_all_now(
        &self,
        served: &BTreeMap<String, TargetDef>,
    ) -> Result<BTreeMap<(String, u64), crate::scsi::LunConfig>, StartError> {
        let opens = served.values().flat_map(|def| {
            def.luns.iter().map(move |(&number, spec)| async move {
                let opened = spec.lun_config(&def.name, number, &self.images).await;
                opened
                    .map(|config| ((def.name.clone(), number), config))
                    .map_err(|source| StartError::Lun {
                        target: def.name.clone(),
                        lun: number,
                        source,
                    })
            })
        });
        let opened = futures_util::future::try_join_all(opens).await?;
        Ok(opened.into_iter().collect())
    }

    /// An empty SCSI target `name` with this daemon's ports and reservation store.
    /// The canonical name of `target` when it has the committed LUN `lun`; `NotFound` else.
    fn lun_name(&self, target: &str, lun: u64) -> Result<String, ControlError> {
        let inventory = self.inventory.lock();
        let entry = inventory.get(target).ok_or_else(|| not_found(target))?;
        let canonical = entry.def.name.clone();
        if !entry.luns.get(&lun).is_some_and(|s| s.committed) {
            return Err(ControlError::NotFound(format!(
                "target {canonical} has no LUN {lun}"
            )));
        }
        Ok(canonical)
    }

    fn scsi_target(&self, name: &str) -> ScsiTarget {
        let target = ScsiTarget::named(name, Vec::new()).with_port_states(&self.ports);
        match &self.pr_store {
            Some(store) => target.with_reservation_store(store.clone()),
            None => target,
        }
    }

    /// Puts a declared target in the catalog. LUNs already in `opened` serve at once; the
    /// others serve NOT READY (becoming ready) and are returned to be opened.
    fn serve_declared(
        &self,
        def: &TargetDef,
        opened: &mut BTreeMap<(String, u64), crate::scsi::LunConfig>,
    ) -> Vec<(String, u64, u64, LunSpec)> {
        let scsi = Arc::new(self.scsi_target(&def.name));
        let mut slots = BTreeMap::new();
        let mut opening = Vec::new();
        for (&number, spec) in &def.luns {
            let id = self.id();
            let (config, state, size) = match opened.remove(&(def.name.clone(), number)) {
                Some(config) => {
                    let size = config.device.size();
                    log_ready(&def.name, number, spec, &config);
                    (config, LunState::Ready, Some(size))
                }
                None => {
                    opening.push((def.name.clone(), number, id, spec.clone()));
                    let placeholder = spec.unavailable_lun(&def.name, number, Unavailable::Opening);
                    (placeholder, LunState::Opening, None)
                }
            };
            if let Err(e) = scsi.insert_lun(number, config) {
                tracing::error!(target = %def.name, lun = number, error = %e, "LUN not served");
                continue;
            }
            slots.insert(
                number,
                LunSlot {
                    spec: spec.clone(),
                    state,
                    reason: None,
                    size,
                    id,
                    committed: true,
                },
            );
        }
        let served = Arc::new(ServedTarget::new(
            login_view(def),
            scsi,
            def.allow_target_reset,
        ));
        if let Err(e) = self.catalog.insert(served.clone()) {
            tracing::error!(error = %e, "target not served");
            return Vec::new();
        }
        self.inventory.lock().insert(TargetEntry {
            def: def.clone(),
            served,
            luns: slots,
        });
        opening
    }

    /// Opens a LUN that serves NOT READY meanwhile, then swaps the device in (or records why
    /// it failed: it keeps answering NOT READY with the reason's code).
    async fn finish_open(&self, target: &str, number: u64, id: u64, spec: LunSpec) {
        let opened = spec.lun_config(target, number, &self.images).await;
        let mut inventory = self.inventory.lock();
        let Some(entry) = inventory.get_mut(target) else {
            return;
        };
        let scsi = entry.served.scsi.clone();
        let Some(slot) = entry.luns.get_mut(&number).filter(|s| s.id == id) else {
            return; // removed while it was opening
        };
        match opened {
            Ok(config) => {
                slot.size = Some(config.device.size());
                slot.state = LunState::Ready;
                log_ready(target, number, &spec, &config);
                scsi.replace_lun(number, config);
            }
            Err(cause) => {
                let reason = cause.unavailable();
                tracing::error!(
                    target,
                    lun = number,
                    backing = %spec,
                    %cause,
                    "LUN failed to open; serving it as NOT READY ({reason})"
                );
                slot.state = LunState::Failed;
                slot.reason = Some(cause.to_string());
                scsi.replace_lun(number, spec.unavailable_lun(target, number, reason));
            }
        }
    }

    fn sessions_of(&self, target: &str) -> usize {
        self.server
            .get()
            .map_or(0, |server| server.session_count(target))
    }

    /// Writes the state file for the served set `committed` (called with the change lock held,
    /// before the change is applied).
    async fn persist(&self, committed: BTreeMap<String, TargetDef>) -> Result<(), ControlError> {
        let Some(file) = &self.state else {
            return Ok(());
        };
        let diff = state::diff(&self.declared.lock(), &committed);
        let file = file.clone();
        let saved = match crate::sys::run_blocking(move || file.save(&diff)).await {
            Ok(saved) => saved.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        saved.map_err(|e| {
            // The change is refused; the operator must see why, not only the API client.
            tracing::error!(error = %e, "cannot save the state file; change refused");
            ControlError::Unavailable(format!("cannot save the state: {e}"))
        })
    }
}

/// The operational keys a session negotiated, by their RFC 7143 names.
fn negotiated_keys(p: &crate::iscsi::login::SessionParams) -> BTreeMap<String, String> {
    let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
    let digest = |b: bool| if b { "CRC32C" } else { "None" }.to_string();
    [
        ("HeaderDigest", digest(p.header_digest)),
        ("DataDigest", digest(p.data_digest)),
        (
            "MaxRecvDataSegmentLength",
            p.max_recv_data_segment_length.to_string(),
        ),
        (
            "InitiatorMaxRecvDataSegmentLength",
            p.max_send_data_segment_length.to_string(),
        ),
        ("MaxBurstLength", p.max_burst_length.to_string()),
        ("FirstBurstLength", p.first_burst_length.to_string()),
        ("MaxOutstandingR2T", p.max_outstanding_r2t.to_string()),
        ("InitialR2T", yes_no(p.initial_r2t)),
        ("ImmediateData", yes_no(p.immediate_data)),
        ("DataPDUInOrder", yes_no(p.data_pdu_in_order)),
        ("DataSequenceInOrder", yes_no(p.data_sequence_in_order)),
        ("DefaultTime2Wait", p.default_time2wait.to_string()),
        ("DefaultTime2Retain", p.default_time2retain.to_string()),
        ("ErrorRecoveryLevel", p.error_recovery_level.to_string()),
        ("MaxConnections", p.max_connections.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The management API's operations on a daemon.
struct Control(Arc<Inner>);

fn credentials(input: Option<ChapInput>) -> Option<ChapCredentials> {
    input.map(|c| ChapCredentials {
        user: c.user,
        secret: c.secret,
    })
}

fn not_found(target: &str) -> ControlError {
    ControlError::NotFound(format!("no target {target}"))
}

#[async_trait]
impl ControlPlane for Control {
    fn status(&self) -> Status {
        let inner = &self.0;
        let targets = inner
            .inventory
            .lock()
            .entries()
            .map(|e| e.info(inner.sessions_of(&e.def.name)))
            .collect();
        let cache = inner
            .images
            .cache_stats()
            .map(|(stats, memory_bytes, disk_bytes)| CacheInfo {
                memory_hits: stats.memory_hits,
                disk_hits: stats.disk_hits,
                shared_fetches: stats.shared_fetches,
                source_requests: stats.source_requests,
                source_bytes: stats.source_bytes,
                memory_bytes,
                disk_bytes,
            });
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            portals: inner
                .portals
                .get()
                .map(|p| p.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            targets,
            sessions: inner.server.get().map_or(0, |s| s.sessions().len()),
            cache,
        }
    }

    fn sessions(&self) -> Vec<SessionInfo> {
        let Some(server) = self.0.server.get() else {
            return Vec::new();
        };
        server
            .sessions()
            .into_iter()
            .map(|s| SessionInfo {
                initiator: s.initiator,
                isid: hex::encode(s.isid),
                tsih: s.tsih,
                peer: s.peer.map(|p| p.to_string()),
                target: s.target,
                keys: negotiated_keys(&s.params),
            })
            .collect()
    }

    fn target(&self, name: &str) -> Result<TargetInfo, ControlError> {
        let inventory = self.0.inventory.lock();
        let entry = inventory.get(name).ok_or_else(|| not_found(name))?;
        Ok(entry.info(self.0.sessions_of(&entry.def.name)))
    }

    async fn add_target(&self, request: AddTarget) -> Result<TargetInfo, ControlError> {
        let inner = &self.0;
        let config = TargetConfig {
            name: request.name,
            alias: request.alias,
            luns: Vec::new(),
            chap: credentials(request.chap),
            mutual_chap: credentials(request.mutual_chap),
            allowed_initiators: request.allowed_initiators,
            allow_target_reset: request.allow_target_reset,
        };
        config
            .check_login(&|field| field.to_string())
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let def = TargetDef::from_config(&config);
        let _change = inner.changes.lock().await;
        let mut committed = {
            let inventory = inner.inventory.lock();
            if inventory.get(&def.name).is_some() {
                return Err(ControlError::Conflict(format!(
                    "target {} already exists",
                    def.name
                )));
            }
            inventory.committed()
        };
        committed.insert(def.name.clone(), def.clone());
        inner.persist(committed).await?;
        let served = Arc::new(ServedTarget::new(
            login_view(&def),
            Arc::new(inner.scsi_target(&def.name)),
            def.allow_target_reset,
        ));
        inner
            .catalog
            .insert(served.clone())
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        let entry = TargetEntry {
            def,
            served,
            luns: BTreeMap::new(),
        };
        let info = entry.info(0);
        inner.inventory.lock().insert(entry);
        tracing::info!(target = %info.name, "target added");
        Ok(info)
    }

    async fn remove_target(&self, name: &str, force: bool) -> Result<(), ControlError> {
        let inner = &self.0;
        let change = inner.changes.lock().await;
        let (canonical, committed) = {
            let inventory = inner.inventory.lock();
            let entry = inventory.get(name).ok_or_else(|| not_found(name))?;
            let canonical = entry.def.name.clone();
            let sessions = inner.sessions_of(&canonical);
            if sessions > 0 && !force {
                return Err(ControlError::Conflict(format!(
                    "target {canonical} has {sessions} session(s) logged in; --force asks them to log out and removes it"
                )));
            }
            let mut committed = inventory.committed();
            committed.remove(&canonical);
            (canonical, committed)
        };
        inner.persist(committed).await?;
        inner.catalog.remove(&canonical);
        inner.inventory.lock().remove(&canonical);
        drop(change);
        tracing::info!(target = %canonical, force, "target removed");
        if let Some(server) = inner.server.get() {
            server.retire(&canonical).await;
        }
        Ok(())
    }

    async fn add_lun(&self, target: &str, request: AddLun) -> Result<LunInfo, ControlError> {
        let inner = &self.0;
        let mut spec =
            LunSpec::parse(&request.backing).map_err(|e| ControlError::Invalid(e.to_string()))?;
        spec.read_only |= request.read_only;
        if request.lun.is_some_and(|n| n > MAX_LUN) {
            return Err(ControlError::Invalid(format!(
                "LUN numbers go from 0 to {MAX_LUN}"
            )));
        }
        // Claim the number first, so concurrent adds never pick the same one.
        let id = inner.id();
        let (canonical, number) = {
            let mut inventory = inner.inventory.lock();
            let entry = inventory.get_mut(target).ok_or_else(|| not_found(target))?;
            let number = match request.lun {
                Some(n) if entry.luns.contains_key(&n) => {
                    return Err(ControlError::Conflict(format!(
                        "target {} already has LUN {n}",
                        entry.def.name
                    )))
                }
                Some(n) => n,
                None => entry.free_number(),
            };
            if number > MAX_LUN {
                return Err(ControlError::Conflict(format!(
                    "target {} has no free LUN number",
                    entry.def.name
                )));
            }
            entry.luns.insert(
                number,
                LunSlot {
                    spec: spec.clone(),
                    state: LunState::Opening,
                    reason: None,
                    size: None,
                    id,
                    committed: false,
                },
            );
            (entry.def.name.clone(), number)
        };
        let release = |inner: &Inner| {
            let mut inventory = inner.inventory.lock();
            if let Some(entry) = inventory.get_mut(&canonical) {
                if entry.luns.get(&number).is_some_and(|s| s.id == id) {
                    entry.luns.remove(&number);
                }
            }
        };
        let opened = match spec.lun_config(&canonical, number, &inner.images).await {
            Ok(config) => config,
            Err(e) => {
                release(inner);
                tracing::warn!(target = %canonical, lun = number, backing = %spec, error = %e, "LUN not added");
                return Err(ControlError::OpenFailed(e.to_string()));
            }
        };
        let size = opened.device.size();
        let _change = inner.changes.lock().await;
        let committed = {
            let mut inventory = inner.inventory.lock();
            let Some(entry) = inventory.get_mut(&canonical) else {
                return Err(not_found(&canonical));
            };
            if !entry.luns.get(&number).is_some_and(|s| s.id == id) {
                return Err(ControlError::Conflict(format!(
                    "LUN {number} of {canonical} was removed while it was opening"
                )));
            }
            let mut committed = inventory.committed();
            if let Some(def) = committed.get_mut(&canonical) {
                def.luns.insert(number, spec.clone());
            }
            committed
        };
        if let Err(e) = inner.persist(committed).await {
            release(inner);
            return Err(e);
        }
        let mut inventory = inner.inventory.lock();
        let Some(entry) = inventory.get_mut(&canonical) else {
            return Err(not_found(&canonical));
        };
        if let Err(e) = entry.served.scsi.insert_lun(number, opened) {
            entry.luns.remove(&number);
            return Err(ControlError::Conflict(e.to_string()));
        }
        let Some(slot) = entry.luns.get_mut(&number) else {
            return Err(not_found(&canonical));
        };
        slot.state = LunState::Ready;
        slot.size = Some(size);
        slot.committed = true;
        tracing::info!(target = %canonical, lun = number, backing = %spec, "LUN added");
        Ok(LunInfo {
            lun: number,
            backing: spec.to_string(),
            read_only: spec.read_only,
            state: LunState::Ready,
            reason: None,
            size_bytes: Some(size),
        })
    }

    async fn remove_lun(&self, target: &str, lun: u64, force: bool) -> Result<(), ControlError> {
        let inner = &self.0;
        let _change = inner.changes.lock().await;
        let (canonical, committed) = {
            let inventory = inner.inventory.lock();
            let entry = inventory.get(target).ok_or_else(|| not_found(target))?;
            let canonical = entry.def.name.clone();
            if !entry.luns.get(&lun).is_some_and(|s| s.committed) {
                return Err(ControlError::NotFound(format!(
                    "target {canonical} has no LUN {lun}"
                )));
            }
            let users = entry.served.scsi.lun_users(lun).unwrap_or(0);
            if users > 0 && !force {
                return Err(ControlError::Conflict(format!(
                    "LUN {lun} of {canonical} is in use by {users} session(s); --force removes it anyway"
                )));
            }
            let mut committed = inventory.committed();
            if let Some(def) = committed.get_mut(&canonical) {
                def.luns.remove(&lun);
            }
            (canonical, committed)
        };
        inner.persist(committed).await?;
        let mut inventory = inner.inventory.lock();
        if let Some(entry) = inventory.get_mut(&canonical) {
            entry.luns.remove(&lun);
            entry.served.scsi.remove_lun(lun);
        }
        tracing::info!(target = %canonical, lun, force, "LUN removed");
        Ok(())
    }

    async fn cache(&self) -> Result<CacheReport, ControlError> {
        super::cache::report(&self.0.images)
    }

    async fn purge_cache(
        &self,
        digest: Option<&str>,
        force: bool,
    ) -> Result<Vec<CachedLayer>, ControlError> {
        super::cache::purge(&self.0.images, digest, force).await
    }

    async fn pin_layer(&self, digest: &str, pinned: bool) -> Result<CachedLayer, ControlError> {
        super::cache::pin(&self.0.images, digest, pinned).await
    }

    async fn warm(&self, request: WarmRequest) -> Result<WarmReport, ControlError> {
        super::cache::warm(&self.0.images, request).await
    }

    async fn trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ControlError> {
        let canonical = self.0.lun_name(target, lun)?;
        let state = match self.0.images.prefetch_of(&canonical, lun) {
            Some(handle) => handle.state(),
            None => crate::prefetch::PrefetchState::None,
        };
        Ok(TraceInfo::of(lun, state))
    }

    async fn stop_trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ControlError> {
        let canonical = self.0.lun_name(target, lun)?;
        let recorder = self
            .0
            .images
            .prefetch_of(&canonical, lun)
            .and_then(|h| h.recorder())
            .filter(|r| r.is_recording())
            .ok_or_else(|| {
                ControlError::Conflict(format!("LUN {lun} of {canonical} is not recording a trace"))
            })?;
        // Bounded: the trace is at most 24 MiB, written and flushed once.
        let outcome = recorder.finish().await;
        tracing::info!(target = %canonical, lun, records = outcome.records, "trace recording stopped through the API");
        let state = crate::prefetch::PrefetchState::Recorded {
            path: recorder.path().to_path_buf(),
            records: outcome.records,
            error: outcome.error,
        };
        Ok(TraceInfo::of(lun, state))
    }

    async fn publish_trace(
        &self,
        target: &str,
        lun: u64,
        to: Option<String>,
    ) -> Result<PublishInfo, ControlError> {
        use crate::config::backing::Backing;
        use crate::prefetch::PrefetchState as S;
        let canonical = self.0.lun_name(target, lun)?;
        let backing = {
            let inventory = self.0.inventory.lock();
            inventory
                .get(&canonical)
                .and_then(|e| e.def.luns.get(&lun))
                .map(|spec| spec.backing.clone())
        };
        let Some(Backing::Registry(reference)) = backing else {
            return Err(ControlError::Conflict(format!(
                "LUN {lun} of {canonical} is not a registry: LUN, so it names no image to publish to; use `overlaybd-target trace attach TRACE REF`"
            )));
        };
        let to = to
            .map(|text| crate::registry::ImageReference::parse(&text))
            .transpose()
            .map_err(|e| ControlError::Invalid(format!("to: {e}")))?;
        let store = self.0.images.learning().map(|s| s.dir().to_path_buf());
        let state = self
            .0
            .images
            .prefetch_of(&canonical, lun)
            .map_or(S::None, |h| h.state());
        let learned = |path: &std::path::Path| store.as_ref().is_some_and(|d| path.starts_with(d));
        let trace = match state {
            S::Recorded {
                path,
                records,
                error: None,
            } if records > 0 && learned(&path) => path,
            S::Replaying { name, .. } if learned(std::path::Path::new(&name)) => name.into(),
            S::Recording { .. } => {
                return Err(ControlError::Conflict(format!(
                    "LUN {lun} of {canonical} is still recording its trace; stop it (ctl trace stop) or wait for its window to end"
                )))
            }
            _ => {
                return Err(ControlError::Conflict(format!(
                    "LUN {lun} of {canonical} has no learned trace to publish (learning needs learn_traces and a state file; an image with an acceleration layer learns none)"
                )))
            }
        };
        let published = self
            .0
            .images
            .publish_trace(&trace, &reference, to)
            .await
            .map_err(|e| {
                let message = format!("publishing {}: {e}", trace.display());
                match e {
                    crate::registry::publish::PublishError::Refused(_) => {
                        ControlError::Conflict(message)
                    }
                    crate::registry::publish::PublishError::Registry(_) => {
                        ControlError::Unavailable(message)
                    }
                }
            })?;
        tracing::info!(target = %canonical, lun, trace = %trace.display(), pushed = %published.pinned, "learned trace published through the API");
        Ok(PublishInfo {
            lun,
            trace: trace.display().to_string(),
            pushed: published.pinned.to_string(),
            layer: published.layer.digest,
            replaced: published.replaced.map(|b| b.digest),
        })
    }
}

//! An in-memory [`ControlPlane`] for the API's tests, and a server running it on a socket in
//! a temporary directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::server::{ApiLimits, ApiServer};
use crate::daemon::control::{ControlError, ControlPlane};
use crate::daemon::model::{
    AddLun, AddTarget, CacheReport, CachedLayer, LunInfo, LunState, PublishInfo, SessionInfo,
    Status, TargetInfo, TraceInfo, TraceMode, WarmReport, WarmRequest, WarmedLayer,
};

/// Targets in a map; a backing starting with `bad:` fails to open; removals are recorded with
/// their `force` flag.
#[derive(Default)]
pub(crate) struct FakeControl {
    pub targets: Mutex<BTreeMap<String, TargetInfo>>,
    pub sessions: Vec<SessionInfo>,
    /// (target, LUN, force) of each successful removal.
    pub removed: Mutex<Vec<(String, Option<u64>, bool)>>,
    /// The cached layers, by digest; a digest must start with `sha256:`.
    pub layers: Mutex<BTreeMap<String, CachedLayer>>,
    /// LUNs (target, number) that record a trace until stopped.
    pub recording: Mutex<Vec<(String, u64)>>,
}

impl FakeControl {
    fn targets(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TargetInfo>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn layers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CachedLayer>> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `NotFound` unless `target` has LUN `lun`.
    fn check_lun(&self, target: &str, lun: u64) -> Result<(), ControlError> {
        let targets = self.targets();
        let t = targets
            .get(target)
            .ok_or_else(|| ControlError::NotFound(format!("no target {target}")))?;
        if !t.luns.iter().any(|l| l.lun == lun) {
            return Err(ControlError::NotFound(format!("no LUN {lun} in {target}")));
        }
        Ok(())
    }

    fn record(&self, target: &str, lun: Option<u64>, force: bool) {
        let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        removed.push((target.to_string(), lun, force));
    }
}

#[async_trait]
impl ControlPlane for FakeControl {
    fn status(&self) -> Status {
        Status {
            version: "test".to_string(),
            portals: vec!["127.0.0.1:3260".to_string()],
            targets: self.targets().values().cloned().collect(),
            sessions: self.sessions.len(),
            cache: None,
        }
    }

    fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.clone()
    }

    fn target(&self, name: &str) -> Result<TargetInfo, ControlError> {
        self.targets()
            .get(name)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no target {name}")))
    }

    async fn add_target(&self, request: AddTarget) -> Result<TargetInfo, ControlError> {
        if request.name.is_empty() {
            return Err(ControlError::Invalid("the target name is empty".into()));
        }
        let mut targets = self.targets();
        if targets.contains_key(&request.name) {
            return Err(ControlError::Conflict(format!(
                "target {} already exists",
                request.name
            )));
        }
        let info = TargetInfo {
            name: request.name.clone(),
            alias: request.alias,
            allowed_initiators: request.allowed_initiators,
            chap_user: request.chap.map(|c| c.user),
            mutual_chap_user: request.mutual_chap.map(|c| c.user),
            luns: Vec::new(),
            sessions: 0,
        };
        targets.insert(request.name, info.clone());
        Ok(info)
    }

    async fn remove_target(&self, name: &str, force: bool) -> Result<(), ControlError> {
        let mut targets = self.targets();
        let target = targets
            .get(name)
            .ok_or_else(|| ControlError::NotFound(format!("no target {name}")))?;
        if target.sessions > 0 && !force {
            return Err(ControlError::Conflict(format!(
                "target {name} has sessions"
            )));
        }
        targets.remove(name);
        drop(targets);
        self.record(name, None, force);
        Ok(())
    }

    async fn add_lun(&self, target: &str, request: AddLun) -> Result<LunInfo, ControlError> {
        let mut targets = self.targets();
        let t = targets
            .get_mut(target)
            .ok_or_else(|| ControlError::NotFound(format!("no target {target}")))?;
        if request.backing.starts_with("bad:") {
            return Err(ControlError::OpenFailed(format!(
                "cannot open {}",
                request.backing
            )));
        }
        let taken = |n: u64| t.luns.iter().any(|l| l.lun == n);
        let lun = match request.lun {
            Some(n) if taken(n) => {
                return Err(ControlError::Conflict(format!(
                    "LUN {n} of {target} exists"
                )))
            }
            Some(n) => n,
            None => (0..).find(|n| !taken(*n)).unwrap_or(0),
        };
        let info = LunInfo {
            lun,
            read_only: request.read_only || request.backing.starts_with("ro:"),
            backing: request.backing,
            state: LunState::Ready,
            reason: None,
            size_bytes: Some(1 << 30),
        };
        t.luns.push(info.clone());
        t.luns.sort_by_key(|l| l.lun);
        Ok(info)
    }

    async fn remove_lun(&self, target: &str, lun: u64, force: bool) -> Result<(), ControlError> {
        let mut targets = self.targets();
        let t = targets
            .get_mut(target)
            .ok_or_else(|| ControlError::NotFound(format!("no target {target}")))?;
        let before = t.luns.len();
        t.luns.retain(|l| l.lun != lun);
        if t.luns.len() == before {
            return Err(ControlError::NotFound(format!("no LUN {lun} in {target}")));
        }
        drop(targets);
        self.record(target, Some(lun), force);
        Ok(())
    }

    async fn cache(&self) -> Result<CacheReport, ControlError> {
        let layers: Vec<CachedLayer> = self.layers().values().cloned().collect();
        Ok(CacheReport {
            folder: "/var/cache/test".to_string(),
            unit_bytes: 262_144,
            memory_bytes: 0,
            memory_capacity_bytes: 64 << 20,
            disk_bytes: layers.iter().map(|l| l.bytes).sum(),
            disk_capacity_bytes: 4 << 30,
            min_free_bytes: 1 << 30,
            layers,
        })
    }

    async fn purge_cache(
        &self,
        digest: Option<&str>,
        force: bool,
    ) -> Result<Vec<CachedLayer>, ControlError> {
        let mut layers = self.layers();
        let names: Vec<String> = match digest {
            Some(d) if !d.starts_with("sha256:") => {
                return Err(ControlError::Invalid(format!(
                    "{d:?} is not a layer digest"
                )))
            }
            Some(d) if layers.get(d).is_some_and(|l| l.pinned) && !force => {
                return Err(ControlError::Conflict(format!("layer {d} is pinned")))
            }
            Some(d) => vec![d.to_string()],
            None => layers
                .values()
                .filter(|l| !l.pinned)
                .map(|l| l.digest.clone())
                .collect(),
        };
        Ok(names
            .into_iter()
            .filter_map(|name| layers.remove(&name))
            .collect())
    }

    async fn pin_layer(&self, digest: &str, pinned: bool) -> Result<CachedLayer, ControlError> {
        if !digest.starts_with("sha256:") {
            return Err(ControlError::Invalid(format!(
                "{digest:?} is not a layer digest"
            )));
        }
        let mut layers = self.layers();
        let layer = layers
            .entry(digest.to_string())
            .or_insert_with(|| CachedLayer {
                digest: digest.to_string(),
                units: 0,
                bytes: 0,
                pinned,
                memory_bytes: 0,
                size_bytes: None,
            });
        layer.pinned = pinned;
        Ok(layer.clone())
    }

    async fn trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ControlError> {
        self.check_lun(target, lun)?;
        let recording = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        let mode = match recording.contains(&(target.to_string(), lun)) {
            true => TraceMode::Recording,
            false => TraceMode::None,
        };
        Ok(TraceInfo {
            lun,
            mode,
            path: (mode == TraceMode::Recording).then(|| "/traces/k.trace".to_string()),
            records: 0,
            error: None,
        })
    }

    async fn stop_trace(&self, target: &str, lun: u64) -> Result<TraceInfo, ControlError> {
        self.check_lun(target, lun)?;
        let mut recording = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        let before = recording.len();
        recording.retain(|r| r != &(target.to_string(), lun));
        if recording.len() == before {
            return Err(ControlError::Conflict(format!(
                "LUN {lun} of {target} is not recording a trace"
            )));
        }
        Ok(TraceInfo {
            lun,
            mode: TraceMode::Recorded,
            path: Some("/traces/k.trace".to_string()),
            records: 3,
            error: None,
        })
    }

    async fn publish_trace(
        &self,
        target: &str,
        lun: u64,
        to: Option<String>,
    ) -> Result<PublishInfo, ControlError> {
        self.check_lun(target, lun)?;
        match to {
            Some(to) if !to.contains(':') => Err(ControlError::Invalid(format!("{to}: no tag"))),
            to => Ok(PublishInfo {
                lun,
                trace: "/traces/k.trace".to_string(),
                pushed: to.unwrap_or_else(|| "reg.example/app:v1".to_string()),
                layer: format!("sha256:{}", "0".repeat(64)),
                replaced: None,
            }),
        }
    }

    async fn warm(&self, request: WarmRequest) -> Result<WarmReport, ControlError> {
        if request.image.starts_with("bad") {
            return Err(ControlError::Invalid(format!(
                "cannot resolve {}",
                request.image
            )));
        }
        let layer = WarmedLayer {
            digest: format!("sha256:{}", "ab".repeat(32)),
            size_bytes: 1 << 20,
            units_before: 1,
            units_after: 4,
            units_total: 4,
            cached_locally: true,
            pinned: request.pin,
        };
        Ok(WarmReport {
            image: request.image,
            layers: vec![layer],
            local_layers: 0,
            seconds: 0.5,
        })
    }
}

/// A server of a [`FakeControl`] on `DIR/run/api.sock`, stopped (and awaited) on drop.
pub(crate) struct Running {
    /// Kept so that the directory lives as long as the server.
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub control: Arc<FakeControl>,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Starts a server with the default limits.
    pub async fn start(control: FakeControl) -> Running {
        Running::start_with(control, ApiLimits::default()).await
    }

    /// Starts a server with `limits`.
    pub async fn start_with(control: FakeControl, limits: ApiLimits) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run").join("api.sock");
        let server = ApiServer::bind(&path, true)
            .expect("bind")
            .with_limits(limits);
        let control = Arc::new(control);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(control.clone(), shutdown.clone()));
        Running {
            _dir: dir,
            path,
            control,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

//! The targets a server serves, live: the daemon inserts and removes them while the server
//! runs, and every login and Text Request looks them up at that moment. Each target carries
//! its login view (names, CHAP, access lists), its SCSI device server and the channel through
//! which its sessions learn of resets and of its own removal.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::iscsi::login::{self, LoginSettings, TargetDirectory};
use crate::scsi::ScsiTarget;

/// What a reset performed through one session covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetScope {
    /// LOGICAL UNIT RESET of this LUN.
    Lun(u64),
    /// TARGET WARM RESET (`cold` false) or TARGET COLD RESET (`cold` true).
    Target {
        /// A cold reset ends every session of the target.
        cold: bool,
    },
}

/// A reset one session performed that the target's other sessions must honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetNotice {
    /// TSIH of the session that performed it.
    pub origin_tsih: u16,
    /// What it covered.
    pub scope: ResetScope,
}

/// Resets in flight are rare; a lagging session only misses aborts, never data.
const RESET_CHANNEL: usize = 16;

/// One served target.
pub struct ServedTarget {
    /// What login and discovery see.
    pub login: login::LoginTarget,
    /// The SCSI device server with the target's LUNs.
    pub scsi: Arc<ScsiTarget>,
    /// Announces resets to every session of the target.
    pub resets: broadcast::Sender<ResetNotice>,
    /// TARGET WARM/COLD RESET are honoured (otherwise answered "Function rejected").
    pub allow_target_reset: bool,
    /// Cancelled when the target is removed: its sessions are asked to log out.
    retired: CancellationToken,
}

impl ServedTarget {
    /// A target with the login view `login` over the device server `scsi`.
    pub fn new(login: login::LoginTarget, scsi: Arc<ScsiTarget>, allow_target_reset: bool) -> Self {
        ServedTarget {
            login,
            scsi,
            resets: broadcast::channel(RESET_CHANNEL).0,
            allow_target_reset,
            retired: CancellationToken::new(),
        }
    }

    /// The target's iSCSI name.
    pub fn name(&self) -> &str {
        &self.login.name
    }

    /// Resolves once the target has been removed from its catalog.
    pub(super) fn retired(&self) -> CancellationToken {
        self.retired.clone()
    }
}

/// The target is already served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target {0} already exists")]
pub struct TargetExists(pub String);

/// Every served target, by name, plus the login settings shared by all. Names compare
/// case-insensitively (RFC 7143 §4.2.7.1: iSCSI names are not case-sensitive).
pub struct Catalog {
    settings: LoginSettings,
    targets: RwLock<BTreeMap<String, Arc<ServedTarget>>>,
}

impl Catalog {
    /// An empty catalog whose logins negotiate with `settings`.
    pub fn new(settings: LoginSettings) -> Self {
        Catalog {
            settings,
            targets: RwLock::new(BTreeMap::new()),
        }
    }

    /// Serves `target` from now on: new logins and SendTargets see it.
    pub fn insert(&self, target: Arc<ServedTarget>) -> Result<(), TargetExists> {
        let key = target.name().to_ascii_lowercase();
        let mut targets = self.targets.write();
        if targets.contains_key(&key) {
            return Err(TargetExists(target.name().to_string()));
        }
        targets.insert(key, target);
        Ok(())
    }

    /// Stops serving `name`: no new logins, gone from SendTargets, and its sessions are asked
    /// to log out (the transport ends them after a grace period). Returns the target.
    pub fn remove(&self, name: &str) -> Option<Arc<ServedTarget>> {
        let removed = self.targets.write().remove(&name.to_ascii_lowercase())?;
        removed.retired.cancel();
        Some(removed)
    }

    /// The served target called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ServedTarget>> {
        self.targets.read().get(&name.to_ascii_lowercase()).cloned()
    }

    /// Every served target, by name.
    pub fn all(&self) -> Vec<Arc<ServedTarget>> {
        self.targets.read().values().cloned().collect()
    }
}

impl TargetDirectory for Catalog {
    fn settings(&self) -> &LoginSettings {
        &self.settings
    }

    fn target(&self, name: &str) -> Option<login::LoginTarget> {
        self.get(name).map(|t| t.login.clone())
    }

    fn targets(&self) -> Vec<login::LoginTarget> {
        self.targets
            .read()
            .values()
            .map(|t| t.login.clone())
            .collect()
    }
}

//! The daemon's record of what it serves: every target with its declared settings, its
//! [`ServedTarget`] in the transport's catalog, and each LUN's backing and life state. One
//! short-held lock guards it (never held across an await); slow work (opening a backing,
//! saving the state file) happens outside it and is then checked in by LUN identity, so a LUN
//! removed while it was opening is never brought back.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::LunSpec;
use crate::iscsi::transport::ServedTarget;

use super::definition::TargetDef;
use super::model::{LunInfo, LunState, TargetInfo};

/// One LUN of a served target.
#[derive(Debug, Clone)]
pub struct LunSlot {
    /// The backing as declared.
    pub spec: LunSpec,
    /// Opening, ready or failed.
    pub state: LunState,
    /// Why it failed.
    pub reason: Option<String>,
    /// Capacity once open.
    pub size: Option<u64>,
    /// Tells this LUN apart from a later one at the same number.
    pub id: u64,
    /// Part of the declared set (persisted). False only while a LUN added through the API is
    /// being opened: it is not served yet and a failure leaves no trace.
    pub committed: bool,
}

impl LunSlot {
    fn info(&self, number: u64) -> LunInfo {
        LunInfo {
            lun: number,
            backing: self.spec.to_string(),
            read_only: self.spec.read_only,
            state: self.state,
            reason: self.reason.clone(),
            size_bytes: self.size,
        }
    }
}

/// One served target.
pub struct TargetEntry {
    /// Its settings as declared (`luns` is not used: the slots are the truth).
    pub def: TargetDef,
    /// What the transport serves.
    pub served: Arc<ServedTarget>,
    /// LUNs by number, including ones still being added.
    pub luns: BTreeMap<u64, LunSlot>,
}

impl TargetEntry {
    /// The declared definition with its committed LUNs.
    pub fn committed(&self) -> TargetDef {
        let mut def = self.def.clone();
        def.luns = self
            .luns
            .iter()
            .filter(|(_, slot)| slot.committed)
            .map(|(n, slot)| (*n, slot.spec.clone()))
            .collect();
        def
    }

    /// The API's view; `sessions` comes from the transport.
    pub fn info(&self, sessions: usize) -> TargetInfo {
        TargetInfo {
            name: self.def.name.clone(),
            alias: self.def.alias.clone(),
            allowed_initiators: self.def.allowed_initiators.clone(),
            chap_user: self.def.chap.as_ref().map(|c| c.user.clone()),
            mutual_chap_user: self.def.mutual_chap.as_ref().map(|c| c.user.clone()),
            luns: self.luns.iter().map(|(n, slot)| slot.info(*n)).collect(),
            sessions,
        }
    }

    /// The lowest LUN number not taken.
    pub fn free_number(&self) -> u64 {
        (0..).find(|n| !self.luns.contains_key(n)).unwrap_or(0)
    }
}

/// Every served target, by lower-cased name (iSCSI names compare case-insensitively).
#[derive(Default)]
pub struct Inventory {
    targets: BTreeMap<String, TargetEntry>,
}

impl Inventory {
    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&TargetEntry> {
        self.targets.get(&name.to_ascii_lowercase())
    }

    /// The entry of `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut TargetEntry> {
        self.targets.get_mut(&name.to_ascii_lowercase())
    }

    /// Adds an entry (the caller checked the name is free).
    pub fn insert(&mut self, entry: TargetEntry) {
        self.targets
            .insert(entry.def.name.to_ascii_lowercase(), entry);
    }

    /// Removes the entry of `name`.
    pub fn remove(&mut self, name: &str) -> Option<TargetEntry> {
        self.targets.remove(&name.to_ascii_lowercase())
    }

    /// Every entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = &TargetEntry> {
        self.targets.values()
    }

    /// The declared set as it stands: what the state file must reproduce.
    pub fn committed(&self) -> BTreeMap<String, TargetDef> {
        self.targets
            .values()
            .map(|e| (e.def.name.clone(), e.committed()))
            .collect()
    }
}

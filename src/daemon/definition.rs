//! What is served, as declared: targets with their LUNs by number. The configuration file and
//! the quick form produce these at start; the management API changes them; the state file
//! persists them.

use std::collections::BTreeMap;

use crate::config::{ChapCredentials, LunSpec, TargetConfig};

/// One target as declared: everything needed to serve it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDef {
    /// The iSCSI name.
    pub name: String,
    /// TargetAlias.
    pub alias: Option<String>,
    /// LUNs by number (numbers need not be contiguous).
    pub luns: BTreeMap<u64, LunSpec>,
    /// CHAP the initiator must prove.
    pub chap: Option<ChapCredentials>,
    /// CHAP the target proves back.
    pub mutual_chap: Option<ChapCredentials>,
    /// Initiator names allowed to log in; empty allows everyone.
    pub allowed_initiators: Vec<String>,
    /// TARGET WARM/COLD RESET are honoured.
    pub allow_target_reset: bool,
}

impl TargetDef {
    /// The target of a configuration, its LUNs numbered from 0 in order.
    pub fn from_config(t: &TargetConfig) -> Self {
        TargetDef {
            name: t.name.clone(),
            alias: t.alias.clone(),
            luns: t
                .luns
                .iter()
                .enumerate()
                .map(|(i, spec)| (i as u64, spec.clone()))
                .collect(),
            chap: t.chap.clone(),
            mutual_chap: t.mutual_chap.clone(),
            allowed_initiators: t.allowed_initiators.clone(),
            allow_target_reset: t.allow_target_reset,
        }
    }

    /// True when everything but the LUNs is the same (a target whose login settings changed
    /// is replaced as a whole).
    pub fn same_settings(&self, other: &TargetDef) -> bool {
        self.name == other.name
            && self.alias == other.alias
            && self.chap == other.chap
            && self.mutual_chap == other.mutual_chap
            && self.allowed_initiators == other.allowed_initiators
            && self.allow_target_reset == other.allow_target_reset
    }
}

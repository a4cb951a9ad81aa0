//! The targets a server serves: their login view (names, CHAP, access lists) and their SCSI
//! devices, built once from the [`Config`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::config::backing::ImageOpener;
use crate::config::{BackingError, Config, Credentials, Digests, Tuning};
use crate::iscsi::login::{
    self, AuthConfig, ChapAccount, DigestPolicy, LoginSettings, TargetDirectory,
};
use crate::scsi::ScsiTarget;

/// A LUN could not be opened; names the target and LUN.
#[derive(Debug, thiserror::Error)]
#[error("target {target}, LUN {lun}: {source}")]
pub struct LunOpenError {
    /// The target's name.
    pub target: String,
    /// The LUN number.
    pub lun: usize,
    /// Why it failed.
    pub source: BackingError,
}

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
    pub login: login::TargetConfig,
    /// The SCSI device server with the target's LUNs.
    pub scsi: Arc<ScsiTarget>,
    /// Announces resets to every session of the target.
    pub resets: broadcast::Sender<ResetNotice>,
    /// TARGET WARM/COLD RESET are honoured (otherwise answered "Function rejected").
    pub allow_target_reset: bool,
}

/// Every served target, by name, plus the login settings shared by all.
pub struct Catalog {
    settings: LoginSettings,
    targets: BTreeMap<String, Arc<ServedTarget>>,
}

fn account(c: &Credentials) -> ChapAccount {
    ChapAccount {
        user: c.user.clone(),
        secret: c.secret.as_bytes().to_vec(),
    }
}

/// Our side of login negotiation, from the configured tuning.
pub fn login_settings(tuning: &Tuning) -> LoginSettings {
    let digest = match tuning.digests {
        Digests::PreferNone => DigestPolicy::PreferNone,
        Digests::PreferCrc32c => DigestPolicy::PreferCrc32c,
        Digests::RequireCrc32c => DigestPolicy::Crc32cOnly,
    };
    LoginSettings {
        max_recv_data_segment_length: tuning.max_recv_data_segment_length,
        header_digest: digest,
        data_digest: digest,
        queue_depth: tuning.queue_depth,
        // The session handles unsolicited Data-Out, which saves a round trip per write.
        initial_r2t: false,
        ..LoginSettings::default()
    }
}

impl Catalog {
    /// Opens every LUN of every configured target. A LUN that fails to open is logged and
    /// served as NOT READY ([`crate::config::LunSpec::unavailable_lun`]) so every other LUN
    /// and target keeps working; with `config.strict` it is an error instead.
    pub fn open(config: &Config) -> Result<Catalog, LunOpenError> {
        let mut targets = BTreeMap::new();
        // One opener for all LUNs, so image LUNs share the registry caches.
        let images = ImageOpener::new(config.images.clone());
        for t in &config.targets {
            let mut luns = Vec::with_capacity(t.luns.len());
            for (i, spec) in t.luns.iter().enumerate() {
                let lun = match spec.lun_config(&t.name, i, &images) {
                    Ok(lun) => lun,
                    Err(source) if config.strict => {
                        return Err(LunOpenError {
                            target: t.name.clone(),
                            lun: i,
                            source,
                        })
                    }
                    Err(cause) => {
                        let reason = cause.unavailable();
                        tracing::error!(
                            target = %t.name,
                            lun = i,
                            backing = %spec,
                            %cause,
                            "LUN failed to open; serving it as NOT READY ({reason})"
                        );
                        spec.unavailable_lun(&t.name, i, reason)
                    }
                };
                luns.push(lun);
            }
            let login = login::TargetConfig {
                name: t.name.clone(),
                alias: t.alias.clone(),
                auth: AuthConfig {
                    chap: t.chap.as_ref().map(account),
                    mutual_chap: t.mutual_chap.as_ref().map(account),
                },
                allowed_initiators: t.allowed_initiators.clone(),
            };
            let served = ServedTarget {
                login,
                scsi: Arc::new(ScsiTarget::named(&t.name, luns)),
                resets: broadcast::channel(RESET_CHANNEL).0,
                allow_target_reset: t.allow_target_reset,
            };
            targets.insert(t.name.clone(), Arc::new(served));
        }
        Ok(Catalog {
            settings: login_settings(&config.tuning),
            targets,
        })
    }

    /// The served target called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ServedTarget>> {
        self.targets.get(name)
    }
}

impl TargetDirectory for Catalog {
    fn settings(&self) -> &LoginSettings {
        &self.settings
    }

    fn target(&self, name: &str) -> Option<login::TargetConfig> {
        self.targets.get(name).map(|t| t.login.clone())
    }

    fn targets(&self) -> Vec<login::TargetConfig> {
        self.targets.values().map(|t| t.login.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_knob_sets_both_digest_policies() {
        for (knob, policy) in [
            (Digests::PreferNone, DigestPolicy::PreferNone),
            (Digests::PreferCrc32c, DigestPolicy::PreferCrc32c),
            (Digests::RequireCrc32c, DigestPolicy::Crc32cOnly),
        ] {
            let s = login_settings(&Tuning {
                digests: knob,
                ..Tuning::default()
            });
            assert_eq!(
                (s.header_digest, s.data_digest),
                (policy, policy),
                "{knob:?}"
            );
        }
    }
}

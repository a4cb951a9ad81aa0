//! Translations from the declared configuration to what the protocol layers take: the
//! transport's limits, login negotiation settings, and each target's login view.

use crate::config::{ChapCredentials, DigestSetting, Tuning};
use crate::iscsi::login::{self, AuthConfig, ChapAccount, DigestPolicy, LoginSettings};
use crate::iscsi::transport::Limits;

use super::definition::TargetDef;

/// The transport's limits and timers from the configured tuning.
pub fn limits(tuning: &Tuning) -> Limits {
    Limits {
        queue_depth: tuning.queue_depth,
        nop_interval: tuning.nop_interval,
        nop_timeout: tuning.nop_timeout,
        memory_budget: tuning.memory_budget,
        data_out_timeout: tuning.data_out_timeout,
        max_sessions: tuning.max_sessions,
        max_pending_logins: tuning.max_pending_logins,
        max_pending_logins_per_address: tuning.max_pending_logins_per_address,
    }
}

/// Our side of login negotiation, from the configured tuning.
pub fn login_settings(tuning: &Tuning) -> LoginSettings {
    let digest = match tuning.digests {
        DigestSetting::PreferNone => DigestPolicy::PreferNone,
        DigestSetting::PreferCrc32c => DigestPolicy::PreferCrc32c,
        DigestSetting::RequireCrc32c => DigestPolicy::Crc32cOnly,
    };
    LoginSettings {
        max_recv_data_segment_length: tuning.max_recv_data_segment_length,
        header_digest: digest,
        data_digest: digest,
        queue_depth: tuning.queue_depth,
        // The session handles unsolicited Data-Out, which saves a round trip per write.
        initial_r2t: false,
        discovery_auth: AuthConfig {
            chap: tuning.discovery_chap.as_ref().map(account),
            mutual_chap: tuning.discovery_mutual_chap.as_ref().map(account),
        },
        ..LoginSettings::default()
    }
}

fn account(c: &ChapCredentials) -> ChapAccount {
    ChapAccount {
        user: c.user.clone(),
        secret: c.secret.as_bytes().to_vec(),
    }
}

/// What login and discovery see of a target.
pub fn login_view(def: &TargetDef) -> login::LoginTarget {
    login::LoginTarget {
        name: def.name.clone(),
        alias: def.alias.clone(),
        auth: AuthConfig {
            chap: def.chap.as_ref().map(account),
            mutual_chap: def.mutual_chap.as_ref().map(account),
        },
        allowed_initiators: def.allowed_initiators.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_knob_sets_both_digest_policies() {
        for (knob, policy) in [
            (DigestSetting::PreferNone, DigestPolicy::PreferNone),
            (DigestSetting::PreferCrc32c, DigestPolicy::PreferCrc32c),
            (DigestSetting::RequireCrc32c, DigestPolicy::Crc32cOnly),
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

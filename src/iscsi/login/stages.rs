//! What each request's keys do, stage by stage: the per-login key bookkeeping, the leading
//! keys of the first request (who logs in, to what), the operational keys answered in any
//! stage, and what ends the security and the operational stage. The authentication steps
//! themselves are in `security.rs`.

use super::config::{AuthConfig, LoginSettings, TargetDirectory};
use super::error::LoginError;
use super::keys::{self, TextWriter};
use super::machine::{clip, required_digest, Login, Session, SessionType, MAX_NAME_LEN};
use super::params::{self, Answer};
use super::security::{AuthProgress, SecurityKeys};
use crate::iscsi::pdu::Stage;

/// Most distinct keys one login may offer across all its requests (a real one offers ~20).
const MAX_LOGIN_KEYS: usize = keys::MAX_KEYS;

/// Keys only the first Login Request may carry.
const LEADING_KEYS: &[&str] = &["InitiatorName", "TargetName", "SessionType"];
/// Keys only a target sends.
const TARGET_ONLY_KEYS: &[&str] = &["TargetAlias", "TargetAddress", "TargetPortalGroupTag"];

fn is_security_key(key: &str) -> bool {
    key == "AuthMethod" || key.starts_with("CHAP_")
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Login {
    /// Parses one request's complete text and records its keys: a key may be offered once
    /// per login (RFC 7143 §6.2), leading keys only in the first request, and a login offers
    /// at most [`MAX_LOGIN_KEYS`] keys in all.
    ///
    /// One tolerance: a leading key repeated later with the value the first request gave is
    /// dropped, not refused. libiscsi resends InitiatorName and SessionType when it moves to
    /// the operational stage after an AuthMethod=None answer (so `iscsi-ls` with CHAP
    /// credentials fails against a strict target); tgtd and LIO accept it, and a repeat that
    /// changes nothing cannot change who logs in. A leading key that was not in the first
    /// request, or comes back with another value, is still refused.
    pub(super) fn take_keys(&mut self, text: &[u8]) -> Result<Vec<(String, String)>, LoginError> {
        let mut pairs = keys::parse(text)?;
        let first = self.session.is_none();
        let mut repeats = Vec::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if !first && LEADING_KEYS.contains(&k.as_str()) {
                if self.leading_keys.iter().any(|(lk, lv)| lk == k && lv == v) {
                    repeats.push(i);
                    continue;
                }
                return Err(LoginError::LeadingKeyLate(clip(k)));
            }
            if !self.seen_keys.insert(k.clone()) {
                return Err(LoginError::KeyRenegotiated(clip(k)));
            }
            if first && LEADING_KEYS.contains(&k.as_str()) {
                self.leading_keys.push((k.clone(), v.clone()));
            }
        }
        for i in repeats.into_iter().rev() {
            pairs.remove(i);
        }
        if self.seen_keys.len() > MAX_LOGIN_KEYS {
            return Err(LoginError::TooManyKeys(MAX_LOGIN_KEYS));
        }
        Ok(pairs)
    }

    /// The leading keys of the first request: who logs in, to what, for what, and which
    /// authentication that asks for.
    pub(super) fn expect_first_keys(
        &mut self,
        dir: &dyn TargetDirectory,
        pairs: &[(String, String)],
    ) -> Result<Session, LoginError> {
        let nonempty = |key| lookup(pairs, key).filter(|n| !n.is_empty());
        self.claimed.initiator = nonempty("InitiatorName").map(clip);
        self.claimed.target = nonempty("TargetName").map(clip);
        let initiator_name =
            nonempty("InitiatorName").ok_or(LoginError::MissingKey("InitiatorName"))?;
        if initiator_name.len() > MAX_NAME_LEN {
            return Err(LoginError::NameTooLong);
        }
        let session_type = match lookup(pairs, "SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(other) => return Err(LoginError::UnknownSessionType(clip(other))),
        };
        let (target, auth) = match session_type {
            SessionType::Discovery => (None, dir.settings().discovery_auth.clone()),
            SessionType::Normal => {
                let name = nonempty("TargetName").ok_or(LoginError::MissingKey("TargetName"))?;
                let target = dir.target(name).ok_or(LoginError::TargetNotFound)?;
                if !target.allows(initiator_name) {
                    return Err(LoginError::InitiatorNotAllowed);
                }
                let auth = target.auth.clone();
                (Some(target), auth)
            }
        };
        // Skipping the security stage is only allowed when the target requires no CHAP.
        if self.state.stage() != Some(Stage::Security) && auth.chap.is_some() {
            return Err(LoginError::UnauthenticatedTransit);
        }
        let session = Session {
            session_type,
            initiator_name: initiator_name.to_owned(),
            initiator_alias: lookup(pairs, "InitiatorAlias").map(str::to_owned),
            target,
            auth,
        };
        self.session = Some(session.clone());
        Ok(session)
    }

    /// The target's declarations that go in its first response: TargetPortalGroupTag (RFC
    /// 7143 §13.9 asks for it in the first response) and TargetAlias when one is set.
    pub(super) fn declare_target(
        &mut self,
        settings: &LoginSettings,
        session: &Session,
        out: &mut TextWriter,
    ) {
        if self.first_response_sent {
            return;
        }
        self.first_response_sent = true;
        out.push(
            "TargetPortalGroupTag",
            &settings.target_portal_group_tag.to_string(),
        );
        if let Some(alias) = session.target.as_ref().and_then(|t| t.alias.as_deref()) {
            out.push("TargetAlias", alias);
        }
    }

    /// Answers every key of a request except the security keys, which it returns for the
    /// security stage (and refuses outside it).
    pub(super) fn negotiate<'a>(
        &mut self,
        settings: &LoginSettings,
        session: &Session,
        pairs: &'a [(String, String)],
        out: &mut TextWriter,
    ) -> Result<SecurityKeys<'a>, LoginError> {
        let discovery = session.session_type == SessionType::Discovery;
        let in_security = self.state.stage() == Some(Stage::Security);
        let mut security = Vec::new();
        for (key, value) in pairs {
            let key = key.as_str();
            if is_security_key(key) {
                if !in_security {
                    return Err(LoginError::SecurityKeyOutsideSecurity(clip(key)));
                }
                security.push((key, value.as_str()));
            } else if LEADING_KEYS.contains(&key) {
                // Consumed by expect_first_keys.
            } else if key == "InitiatorAlias" {
                if let Some(s) = &mut self.session {
                    s.initiator_alias = Some(value.clone());
                }
            } else if TARGET_ONLY_KEYS.contains(&key) || key == "SendTargets" {
                out.push(key, "Reject");
            } else {
                let answer = params::answer(key, value, discovery, settings, &mut self.params);
                if let Some(key) = required_digest(settings, key) {
                    if answer != Answer::Value("CRC32C".into()) {
                        return Err(LoginError::DigestRequired {
                            key,
                            offered: clip(value),
                        });
                    }
                }
                match answer {
                    Answer::Value(v) => out.push(key, &v),
                    Answer::Silent => {}
                    Answer::NotOperational => out.push(key, "NotUnderstood"),
                }
            }
        }
        params::settle(&mut self.params);
        Ok(SecurityKeys(security))
    }

    /// The security stage's part of a request: the next authentication step. True when the
    /// stage may end with this request if the initiator asks for transit.
    pub(super) fn expect_security(
        &mut self,
        auth_cfg: &AuthConfig,
        transit: bool,
        keys: &SecurityKeys<'_>,
        out: &mut TextWriter,
    ) -> Result<bool, LoginError> {
        let super::machine::State::ExpectSecurity(auth) = &mut self.state else {
            return Err(LoginError::AfterEnd);
        };
        let mut progress = AuthProgress::default();
        let result = auth.negotiate(auth_cfg, keys, out, &mut progress);
        // Who tried goes to the log even when the attempt failed.
        if let Some(name) = progress.claimed_chap_name {
            self.claimed.chap_name = Some(clip(&name));
        }
        result?;
        if let Some(user) = progress.authenticated_as {
            self.chap_user = Some(user);
        }
        auth.may_leave(auth_cfg.chap.is_some(), transit)
    }

    /// The operational stage's part of a request: our MaxRecvDataSegmentLength, declared once
    /// (RFC 7143 §13.12). The stage may always end.
    pub(super) fn expect_operational(
        &mut self,
        settings: &LoginSettings,
        out: &mut TextWriter,
    ) -> bool {
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.params.max_recv_data_segment_length = settings.max_recv_data_segment_length;
            out.push(
                "MaxRecvDataSegmentLength",
                &settings.max_recv_data_segment_length.to_string(),
            );
        }
        true
    }
}

//! The security stage (RFC 7143 §6.3.1, §12.1.3): AuthMethod, then CHAP_A, then the
//! initiator's CHAP_N/CHAP_R (and, for mutual CHAP, our answer to its CHAP_I/CHAP_C). Each
//! step is named by what it expects next.

use super::chap;
use super::config::AuthConfig;
use super::error::{AuthError, LoginError};
use super::keys::{self, TextWriter};

/// Where authentication stands: what the security stage expects next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Auth {
    /// Expecting AuthMethod (or, on a target without authentication, transit).
    ExpectAuthMethod,
    /// AuthMethod=CHAP agreed; expecting CHAP_A.
    ExpectChapAlgorithm,
    /// Challenge sent; expecting CHAP_N and CHAP_R.
    ExpectChapResponse {
        /// CHAP_I we sent.
        id: u8,
        /// CHAP_C we sent.
        challenge: Vec<u8>,
    },
    /// Authenticated, or AuthMethod=None agreed.
    Authenticated,
}

/// The security keys of one request, in the order they came.
pub(super) struct SecurityKeys<'a>(pub(super) Vec<(&'a str, &'a str)>);

impl SecurityKeys<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// What one request did to authentication.
#[derive(Debug, Default)]
pub(super) struct AuthProgress {
    /// CHAP_N as the initiator sent it, right or wrong (for log lines).
    pub(super) claimed_chap_name: Option<String>,
    /// The CHAP name, once the response proved the secret.
    pub(super) authenticated_as: Option<String>,
}

impl Auth {
    /// Runs one request's security keys through the step they belong to, writing our
    /// answers to `out`. A key that no step expects now fails the login.
    pub(super) fn negotiate(
        &mut self,
        cfg: &AuthConfig,
        keys: &SecurityKeys<'_>,
        out: &mut TextWriter,
        progress: &mut AuthProgress,
    ) -> Result<(), LoginError> {
        // Who tried goes to the log even when the attempt fails.
        progress.claimed_chap_name = keys.get("CHAP_N").map(str::to_owned);
        if let Some(offer) = keys.get("AuthMethod") {
            self.on_auth_method(cfg, offer, out)?;
        }
        if let Some(algorithms) = keys.get("CHAP_A") {
            self.on_chap_algorithm(algorithms, out)?;
        }
        progress.authenticated_as = self.on_chap_response(cfg, keys, out)?;
        Ok(())
    }

    /// Whether the security stage may end with this request, as the initiator asks with
    /// `transit`; `required` says the target demands CHAP.
    pub(super) fn may_leave(&mut self, required: bool, transit: bool) -> Result<bool, LoginError> {
        match self {
            Auth::Authenticated => Ok(true),
            // A target without authentication lets the initiator skip AuthMethod.
            Auth::ExpectAuthMethod if !required => {
                if transit {
                    *self = Auth::Authenticated;
                }
                Ok(true)
            }
            // Leaving the security stage before authenticating is not allowed.
            Auth::ExpectAuthMethod if transit => Err(LoginError::UnauthenticatedTransit),
            // In the middle of CHAP: stay in the stage (T=0 in our answer).
            _ => Ok(false),
        }
    }

    /// AuthMethod: picks CHAP where the target requires it, None where it requires nothing.
    fn on_auth_method(
        &mut self,
        cfg: &AuthConfig,
        offer: &str,
        out: &mut TextWriter,
    ) -> Result<(), LoginError> {
        if *self != Auth::ExpectAuthMethod {
            return Err(LoginError::AuthKeyOutOfOrder("AuthMethod"));
        }
        let offered: Vec<&str> = keys::list_items(offer).collect();
        if cfg.chap.is_some() && offered.contains(&"CHAP") {
            out.push("AuthMethod", "CHAP");
            *self = Auth::ExpectChapAlgorithm;
        } else if cfg.chap.is_none() && offered.contains(&"None") {
            out.push("AuthMethod", "None");
            *self = Auth::Authenticated;
        } else {
            return Err(AuthError::NoCommonMethod.into());
        }
        Ok(())
    }

    /// CHAP_A: MD5 must be among the algorithms; answers with our identifier and challenge.
    fn on_chap_algorithm(
        &mut self,
        algorithms: &str,
        out: &mut TextWriter,
    ) -> Result<(), LoginError> {
        if *self != Auth::ExpectChapAlgorithm {
            return Err(LoginError::AuthKeyOutOfOrder("CHAP_A"));
        }
        if !keys::list_items(algorithms).any(|a| a == chap::CHAP_MD5) {
            return Err(AuthError::NoCommonAlgorithm.into());
        }
        let (id, challenge) = chap::new_challenge();
        out.push("CHAP_A", chap::CHAP_MD5);
        out.push("CHAP_I", &id.to_string());
        out.push("CHAP_C", &chap::encode_hex(&challenge));
        *self = Auth::ExpectChapResponse { id, challenge };
        Ok(())
    }

    /// CHAP_N/CHAP_R: checks the response against the secret, then answers the initiator's
    /// own challenge (mutual CHAP) if it sent one. The CHAP name once it is proven.
    fn on_chap_response(
        &mut self,
        cfg: &AuthConfig,
        keys: &SecurityKeys<'_>,
        out: &mut TextWriter,
    ) -> Result<Option<String>, LoginError> {
        let (name, response) = (keys.get("CHAP_N"), keys.get("CHAP_R"));
        let (mutual_id, mutual_challenge) = (keys.get("CHAP_I"), keys.get("CHAP_C"));
        if name.is_none() && response.is_none() {
            // CHAP_I/CHAP_C from the initiator only make sense together with its response.
            return match (mutual_id, mutual_challenge) {
                (Some(_), _) => Err(LoginError::AuthKeyOutOfOrder("CHAP_I")),
                (_, Some(_)) => Err(LoginError::AuthKeyOutOfOrder("CHAP_C")),
                (None, None) => Ok(None),
            };
        }
        let Auth::ExpectChapResponse { id, challenge } = &*self else {
            return Err(LoginError::AuthKeyOutOfOrder(if name.is_some() {
                "CHAP_N"
            } else {
                "CHAP_R"
            }));
        };
        let account = cfg.chap.as_ref().ok_or(AuthError::NoCommonMethod)?;
        let (Some(name), Some(response)) = (name, response) else {
            return Err(AuthError::MalformedResponse.into());
        };
        let expected = chap::md5_response(*id, &account.secret, challenge);
        let received = chap::decode_binary(response).ok_or(AuthError::MalformedResponse)?;
        // Both checks run before either answers, so the time taken does not tell a wrong
        // name from a wrong secret.
        let response_ok = chap::constant_time_eq(&received, &expected);
        if name != account.user {
            return Err(AuthError::UnknownUser.into());
        }
        if !response_ok {
            return Err(AuthError::WrongResponse.into());
        }
        match (mutual_id, mutual_challenge) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let mutual = cfg
                    .mutual_chap
                    .as_ref()
                    .ok_or(AuthError::MutualNotConfigured)?;
                let i = chap::parse_identifier(i).ok_or(AuthError::MalformedChallenge)?;
                let c = chap::decode_binary(c).ok_or(AuthError::MalformedChallenge)?;
                if c.len() < chap::MIN_PEER_CHALLENGE_LEN {
                    return Err(AuthError::ShortChallenge.into());
                }
                // A reflected challenge would let an attacker make us answer our own challenge.
                if chap::constant_time_eq(&c, challenge) {
                    return Err(AuthError::ReflectedChallenge.into());
                }
                out.push("CHAP_N", &mutual.user);
                out.push(
                    "CHAP_R",
                    &chap::encode_hex(&chap::md5_response(i, &mutual.secret, &c)),
                );
            }
            _ => return Err(AuthError::MalformedChallenge.into()),
        }
        *self = Auth::Authenticated;
        Ok(Some(name.to_owned()))
    }
}

//! Why a login was refused: one named reason per failure, for the target's log, and the
//! login status (RFC 7143 §11.13.5) the initiator is sent for it.

use super::keys::KeyError;
use crate::iscsi::pdu::LoginStatus;

/// The reason the login state machine refused a login. `Display` is the log text; the
/// initiator only learns [`LoginFailure::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    /// A header or sequencing rule was broken (stage change, T and C together, a field that
    /// must stay fixed changed, a request after the login ended, ...).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The login text is malformed or over a per-request limit.
    #[error("malformed login text: {0}")]
    Text(#[from] KeyError),
    /// A key was offered a second time during the login (RFC 7143 §6.2 forbids renegotiation).
    #[error("key {0} renegotiated")]
    Renegotiated(String),
    /// The login went on for more PDUs than any real negotiation needs.
    #[error("more than {0} login PDUs")]
    TooManyPdus(u32),
    /// The login offered more keys in all than any real negotiation needs.
    #[error("more than {0} keys in the login")]
    TooManyKeys(usize),
    /// The login's requests carried more text in all than the cap.
    #[error("more than {0} bytes of login text")]
    TooMuchText(usize),
    /// Version-min above the only version there is.
    #[error("unsupported iSCSI version")]
    UnsupportedVersion,
    /// A mandatory key (InitiatorName, TargetName) is absent or empty.
    #[error("{0} missing")]
    MissingKey(&'static str),
    /// InitiatorName is longer than an iSCSI name can be.
    #[error("InitiatorName longer than 223 bytes")]
    NameTooLong,
    /// SessionType is neither Normal nor Discovery.
    #[error("unknown session type")]
    UnknownSessionType,
    /// No target of that name is served.
    #[error("no such target")]
    UnknownTarget,
    /// The target exists but its access list does not name the initiator. The initiator is
    /// told the same as for [`LoginFailure::UnknownTarget`].
    #[error("initiator not in the target's allowed_initiators")]
    InitiatorNotAllowed,
    /// Authentication failed.
    #[error("authentication failed: {0}")]
    Auth(AuthFailure),
    /// The digest policy requires CRC32C and the initiator offered something else, or left
    /// the key out (its default is None).
    #[error("{key}=CRC32C required (--digests require-crc32c), initiator offered {offered}")]
    DigestRequired {
        /// HeaderDigest or DataDigest.
        key: &'static str,
        /// The initiator's offer, or "nothing" when it sent no such key.
        offered: String,
    },
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// CHAP is required but the initiator did not offer it, or offered only CHAP to a target
    /// without authentication.
    #[error("no common AuthMethod")]
    NoCommonMethod,
    /// The initiator tried to leave the security stage before authenticating.
    #[error("security stage left before authenticating")]
    Skipped,
    /// CHAP_A listed no algorithm we support (MD5).
    #[error("no common CHAP algorithm")]
    NoCommonAlgorithm,
    /// CHAP_N or CHAP_R is missing or CHAP_R is not a binary value.
    #[error("CHAP_N/CHAP_R missing or malformed")]
    MalformedResponse,
    /// CHAP_N is not the configured user.
    #[error("unknown CHAP user")]
    UnknownUser,
    /// CHAP_R does not match the secret.
    #[error("wrong CHAP response")]
    WrongResponse,
    /// The initiator asked for mutual CHAP but the target has no mutual_chap account.
    #[error("mutual CHAP requested but not configured")]
    MutualNotConfigured,
    /// CHAP_I/CHAP_C from the initiator are malformed or one is missing.
    #[error("malformed mutual CHAP challenge")]
    MalformedChallenge,
    /// The initiator's challenge is shorter than the minimum.
    #[error(
        "mutual CHAP challenge shorter than {} bytes",
        super::chap::MIN_PEER_CHALLENGE_LEN
    )]
    ShortChallenge,
    /// The initiator sent our own challenge back (reflection attack).
    #[error("our CHAP challenge reflected back")]
    ReflectedChallenge,
}

impl From<AuthFailure> for LoginFailure {
    fn from(a: AuthFailure) -> Self {
        LoginFailure::Auth(a)
    }
}

impl LoginFailure {
    /// The status sent to the initiator.
    pub fn status(&self) -> LoginStatus {
        match self {
            LoginFailure::Protocol(_)
            | LoginFailure::Text(_)
            | LoginFailure::Renegotiated(_)
            | LoginFailure::TooManyPdus(_)
            | LoginFailure::TooManyKeys(_)
            | LoginFailure::TooMuchText(_)
            | LoginFailure::NameTooLong => LoginStatus::INITIATOR_ERROR,
            LoginFailure::UnsupportedVersion => LoginStatus::UNSUPPORTED_VERSION,
            LoginFailure::MissingKey(_) => LoginStatus::MISSING_PARAMETER,
            LoginFailure::UnknownSessionType => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            // One answer for both, so an initiator that is not allowed on a target cannot tell
            // a protected name from one that does not exist.
            LoginFailure::UnknownTarget | LoginFailure::InitiatorNotAllowed => {
                LoginStatus::NOT_FOUND
            }
            LoginFailure::Auth(_) => LoginStatus::AUTHENTICATION_FAILURE,
            // 0x0207 "missing parameter": the target requires a parameter value (CRC32C) the
            // initiator did not offer. Unlike 0x0200, which we send for every protocol error,
            // it points at configuration; libiscsi prints it as "Missing parameter" and
            // open-iscsi reports a non-retryable login failure (02/07), so neither retries in a
            // loop. 0x0201/0x0202 would wrongly blame credentials or access lists.
            LoginFailure::DigestRequired { .. } => LoginStatus::MISSING_PARAMETER,
        }
    }

    /// Whether this is a failed authentication attempt, the kind a password guesser makes
    /// (such failures are slowed down by the transport).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, LoginFailure::Auth(_))
    }
}

//! Login (RFC 7143 §6, §11.12-11.13, §12-13), free of I/O.
//!
//! # Public API
//!
//! * [`Login`]: one connection's login state machine, free of I/O and clocks. Create it with
//!   the time the connection started ([`Login::new`]) and feed every Login Request to
//!   [`Login::handle`] with a [`TargetDirectory`]; it returns a [`LoginStep`]:
//!   - `Respond(rsp)`: send `rsp`, keep reading Login Requests;
//!   - `Fail(rsp, reason)`: send `rsp` (non-zero status) and close the connection; the
//!     [`LoginError`] names the reason for the log, with [`Login::initiator_name`],
//!     [`Login::target_name`] and [`Login::chap_name`] saying who tried;
//!   - `Ready(outcome)`: negotiation is complete. The session layer looks at
//!     [`LoginOutcome`] (session type, initiator and target, ISID, requested TSIH,
//!     negotiated [`SessionParams`], ExpCmdSN, next StatSN), assigns a TSIH, and sends
//!     [`Login::accept`]`(tsih)` (or [`Login::refuse`]`(reason)` with its own
//!     [`LoginError`]). After that response is written, switch the codec to
//!     [`SessionParams::digests`] and `max_recv_data_segment_length`.
//!
//!   The whole login, admission included, must end within [`LOGIN_TIMEOUT`]: sleep until
//!   [`Login::poll_timeout`] and call [`Login::handle_timeout`]; when it says the time is up,
//!   close the connection without an answer.
//! * [`TargetDirectory`] (with the ready-made [`StaticDirectory`]): target lookup, CHAP
//!   accounts ([`AuthConfig`], [`ChapAccount`]), allowed initiators, and target-wide
//!   [`LoginSettings`] (our MaxRecvDataSegmentLength, [`DigestPolicy`], burst limits, queue
//!   depth, portal group tag, discovery authentication).
//! * [`keys`]: NUL-separated key=value text with limits, reassembly across continued PDUs and
//!   splitting of long responses; shared with the Text Request handling.
//! * [`chap`]: CHAP-MD5 and binary value encodings.
//! * [`AuthThrottle`]: the growing delay the transport puts before answering failed
//!   authentication attempts, per initiator name and per source address (clock injected).
//!
//! # Files
//!
//! `machine.rs` holds [`Login`], its states (named by what each expects next: the first
//! request, security negotiation, operational negotiation, the session layer's decision) and
//! the rules every request obeys; `stages.rs` what the keys of a request do in each stage;
//! `security.rs` the authentication steps (AuthMethod, CHAP_A, CHAP_N/CHAP_R); `error.rs`
//! [`LoginError`] and the one mapping from a reason to a login status.
//!
//! Failure statuses ([`LoginError::status`]): 0x0200 protocol violations (stage or field
//! changes, renegotiated keys, malformed text, a login over its PDU, key or text caps), 0x0201
//! authentication failure (including leaving the security stage unauthenticated), 0x0203
//! unknown target or initiator not allowed on it (one answer, so protected names do not show),
//! 0x0205 unsupported version, 0x0206 a second connection for a live session, 0x0207 missing
//! InitiatorName/TargetName or a required CRC32C digest not offered, 0x0209 unknown session
//! type, 0x020a a TSIH that names no session, 0x0302 no room for another session. A login's
//! work is linear in its text, which is capped at 64 KiB, 1024 keys and 64 PDUs.

pub mod chap;
mod config;
mod error;
pub mod keys;
mod machine;
mod params;
mod security;
mod stages;
mod throttle;

#[cfg(test)]
mod tests;

pub use config::{
    AuthConfig, ChapAccount, DigestPolicy, LoginSettings, LoginTarget, StaticDirectory,
    TargetDirectory,
};
pub use error::{AuthError, LoginError};
pub use machine::{Login, LoginOutcome, LoginStep, SessionType, LOGIN_TIMEOUT};
pub use params::SessionParams;
pub use throttle::AuthThrottle;

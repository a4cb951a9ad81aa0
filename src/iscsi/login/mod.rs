//! Login (RFC 7143 §6, §11.12-11.13, §12-13), free of I/O.
//!
//! # Public API
//!
//! * [`Login`]: one connection's login state machine. Feed every Login Request to
//!   [`Login::handle`] with a [`TargetDirectory`]; it returns a [`LoginStep`]:
//!   - `Respond(rsp)`: send `rsp`, keep reading Login Requests;
//!   - `Fail(rsp)`: send `rsp` (non-zero status) and close the connection;
//!   - `Ready(outcome)`: negotiation is complete. The session layer looks at
//!     [`LoginOutcome`] (session type, initiator and target, ISID, requested TSIH,
//!     negotiated [`SessionParams`], ExpCmdSN, next StatSN), assigns a TSIH, and sends
//!     [`Login::accept`]`(tsih)` (or [`Login::refuse`]`(status)`). After that response is
//!     written, switch the codec to [`SessionParams::digests`] and
//!     `max_recv_data_segment_length`.
//! * [`TargetDirectory`] (with the ready-made [`StaticDirectory`]): target lookup, CHAP
//!   accounts ([`AuthConfig`], [`ChapAccount`]), allowed initiators, and target-wide
//!   [`LoginSettings`] (our MaxRecvDataSegmentLength, [`DigestPolicy`], burst limits, queue
//!   depth, portal group tag, discovery authentication).
//! * [`keys`]: NUL-separated key=value text with limits, reassembly across continued PDUs and
//!   splitting of long responses; shared with the Text Request handling.
//! * [`chap`]: CHAP-MD5 and binary value encodings.
//!
//! Failure statuses: 0x0200 protocol violations (stage or field changes, renegotiated keys,
//! malformed text), 0x0201 authentication failure, 0x0202 initiator not allowed, 0x0203 unknown
//! target, 0x0205 unsupported version, 0x0207 missing InitiatorName/TargetName, 0x0209 unknown
//! session type.

pub mod chap;
mod config;
pub mod keys;
mod machine;
mod params;

#[cfg(test)]
mod tests;

pub use config::{
    AuthConfig, ChapAccount, DigestPolicy, LoginSettings, StaticDirectory, TargetConfig,
    TargetDirectory,
};
pub use machine::{Login, LoginOutcome, LoginStep, SessionType};
pub use params::SessionParams;

//! The management API: HTTP/1.1 with JSON bodies over a Unix socket. The [`server`] answers
//! the routes below by calling a [`super::control::ControlPlane`]; the [`client`] is what
//! `overlaybd-target ctl` uses.
//!
//! | method and path                          | body     | answer                      |
//! |------------------------------------------|----------|-----------------------------|
//! | `GET /v1/status`                         |          | 200 `Status`                |
//! | `GET /v1/sessions`                       |          | 200 `[SessionInfo]`         |
//! | `GET /v1/targets`                        |          | 200 `[TargetInfo]`          |
//! | `POST /v1/targets`                       | `AddTarget` | 201 `TargetInfo`         |
//! | `GET /v1/targets/{name}`                 |          | 200 `TargetInfo`            |
//! | `DELETE /v1/targets/{name}?force=BOOL`   |          | 204                         |
//! | `POST /v1/targets/{name}/luns`           | `AddLun` | 201 `LunInfo`               |
//! | `DELETE /v1/targets/{name}/luns/{n}?force=BOOL` |   | 204                         |
//! | `GET /v1/targets/{name}/luns/{n}/trace`  |          | 200 `TraceInfo`             |
//! | `POST /v1/targets/{name}/luns/{n}/trace/stop` |     | 200 `TraceInfo` (trace written; 409 when not recording) |
//! | `GET /v1/cache`                          |          | 200 `CacheReport`           |
//! | `DELETE /v1/cache/layers`                |          | 200 `[CachedLayer]` purged (every unpinned layer) |
//! | `DELETE /v1/cache/layers/{digest}?force=BOOL` |     | 200 `[CachedLayer]` purged  |
//! | `PUT /v1/cache/pins/{digest}`            |          | 200 `CachedLayer`           |
//! | `DELETE /v1/cache/pins/{digest}`         |          | 200 `CachedLayer`           |
//! | `POST /v1/cache/warm`                    | `WarmRequest` | 200 `WarmReport` (when done) |
//!
//! Path segments are percent-decoded. Every error answer is an
//! [`ErrorBody`](super::model::ErrorBody) with the status of its
//! [`ControlError`](super::control::ControlError), or 400 (malformed request), 404 (no such
//! path), 405 (with `Allow`), 408 (body too slow) or 413 (body over 64 KiB).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub mod client;
pub mod server;

#[cfg(test)]
pub(crate) mod fake;

pub use client::{ApiClient, ClientError};
pub use server::{ApiError, ApiLimits, ApiServer};

/// Where the daemon serves the API unless told otherwise (`--api PATH`).
pub const DEFAULT_API_SOCKET: &str = "/run/overlaybd-target/api.sock";

/// Characters kept as they are in a path segment: RFC 3986 unreserved ones plus ':', which
/// every IQN contains and which a segment may hold unescaped, so that URLs stay readable.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// A value percent-encoded for use as one path segment (the server decodes it back).
pub(crate) fn encode_segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

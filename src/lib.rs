//! overlaybd-target: an async iSCSI target that serves overlaybd container images as SCSI disks.
//!
//! The crate is layered from the wire inward (see `../shared/design.md`):
//! - [`iscsi`]: the RFC 7143 protocol, sans-IO, plus a thin tokio transport;
//! - [`scsi`]: CDB parsing and the SPC/SBC command set executed against a logical unit;
//! - [`block`]: the block-device trait every logical unit is backed by, with file and RAM backends;
//! - [`overlaybd`]: the LSMT layer stack and image configs, as a block device;
//! - [`zfile`]: random-access ZFile decompression;
//! - [`source`]: the layer-bytes contract ([`source::LayerSource`]) and its typed errors, which
//!   `zfile`, `overlaybd` and `cache` build on;
//! - [`config`]: what the server serves (command line and TOML file);
//! - [`daemon`]: the composition root: live catalog, state file, management API;
//! - [`prefetch`]: recording which layer bytes a container start reads, and replaying them to
//!   warm the cache at later starts (overlaybd's trace format);
//! - [`cache`]: layer bytes (local files, registry blobs) behind memory and disk caches;
//! - [`registry`]: image references and registry manifests, turned into an image config;
//! - [`audit`]: the audit log of remote fetches and slow commands;
//! - [`metrics`]: the Prometheus metrics every layer counts into, and their HTTP endpoint;
//! - [`tools`]: the image tools (create, commit, zfile, merge, inspect, export, import, build);
//! - `sys`: the ground floor, the file system calls made through `libc` (all of their
//!   `unsafe`) and the one helper that runs blocking work off the async threads.

#![warn(missing_docs)]

pub mod audit;
pub mod block;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod host;
pub mod iscsi;
pub mod metrics;
pub mod overlaybd;
pub mod prefetch;
pub mod registry;
pub mod scsi;
pub mod source;
pub(crate) mod sys;
pub mod tools;
pub mod zfile;

/// The shared fixtures locator, the same file the integration tests use.
#[cfg(test)]
#[path = "../tests/support/fixtures.rs"]
pub(crate) mod test_fixtures;

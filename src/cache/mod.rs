//! Layer bytes: random-access sources for layer blobs (local files, registry blobs) and the
//! memory and disk caches in front of remote ones.
//!
//! A remote layer is opened with [`RemoteLayers::open`] and read like any other
//! [`LayerSource`]. A read goes [`CachedSource`] (aligned refill units, single-flight) ->
//! [`memory::MemoryTier`] -> [`disk::DiskTier`] -> [`http::HttpBlobSource`] (ranged GETs with
//! registry auth, redirects, proxies and retries), until [`download`] has a verified local
//! copy. [`settings`] reads the daemon's `overlaybd.json`; [`key`] names cached units by blob
//! digest, so images that share a layer share its cache.

use async_trait::async_trait;
use bytes::Bytes;

/// Random-access bytes of one immutable blob (a layer file, a registry blob, a ZFile's
/// decompressed view). ZFile and LSMT read through this trait, whatever stores the bytes.
#[async_trait]
pub trait LayerSource: Send + Sync + 'static {
    /// Total size of the blob in bytes.
    fn size(&self) -> u64;

    /// Reads exactly `len` bytes at `offset`; a range past the end is an error
    /// (`std::io::ErrorKind::UnexpectedEof`).
    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes>;

    /// A short human-readable name for errors and logs (a path or a digest).
    fn describe(&self) -> String;

    /// Drops any cached copy of `[offset, offset + len)` so the next read fetches it again
    /// (called once when a block read through this source fails its checksum). Sources
    /// without a cache have nothing to drop.
    async fn invalidate(&self, _offset: u64, _len: u64) {}
}

pub mod cached_source;
pub mod disk;
pub mod download;
pub mod http;
pub mod key;
pub mod memory;
pub mod remote;
pub mod settings;

pub use cached_source::{CacheStats, CacheTiers, CachedSource};
pub use remote::{RemoteLayer, RemoteLayers};
pub use settings::DaemonSettings;

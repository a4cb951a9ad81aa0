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

pub mod bytes_source;
pub mod cached_source;
pub mod disk;
pub mod download;
pub mod file;
pub mod http;
pub mod key;
pub mod memory;
pub mod remote;
pub mod settings;

pub use cached_source::{CacheStats, CacheTiers, CachedSource};
pub use remote::{RemoteLayer, RemoteLayers};
pub use settings::DaemonSettings;

/// Checks that `[offset, offset + len)` lies inside a blob of `size` bytes, as
/// [`LayerSource::read_at`] requires, and returns the end offset. Errors are `UnexpectedEof`
/// (past the end) or `InvalidInput` (the range overflows u64).
pub fn check_range(size: u64, offset: u64, len: usize) -> std::io::Result<u64> {
    let end = u64::try_from(len)
        .ok()
        .and_then(|len| offset.checked_add(len))
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "read range overflows")
        })?;
    if end > size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("read [{offset}, {end}) past the end ({size} bytes)"),
        ));
    }
    Ok(end)
}

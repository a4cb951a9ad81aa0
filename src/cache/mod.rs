//! Layer bytes: random-access sources for layer blobs (local files, registry blobs) and the
//! memory and disk caches in front of remote ones.
//!
//! A remote layer is opened with [`RemoteLayers::open`] and read like any other
//! [`LayerSource`](crate::source::LayerSource). A read goes [`CachedSource`] (the [`read_path`]: aligned refill units, single-flight) ->
//! [`memory::MemoryTier`] -> [`disk::DiskTier`] -> [`http::HttpBlobSource`] (ranged GETs with
//! registry auth, redirects, proxies and retries), until [`download`] has a verified local
//! copy. [`settings`] reads the daemon's `overlaybd.json`; [`key`] names cached units by blob
//! digest, so images that share a layer share its cache.

pub mod disk;
pub mod download;
pub mod file;
pub mod http;
pub mod key;
pub mod memory;
pub mod read_path;
pub mod remote;
pub mod settings;
pub mod warm;

pub use read_path::{background, CacheStats, CacheTiers, CachedSource};
pub use remote::{RemoteLayer, RemoteLayers};
pub use settings::DaemonSettings;

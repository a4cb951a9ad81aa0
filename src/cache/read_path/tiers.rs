//! The data tiers and the tier lookup: memory, then disk, before any fetch from the source.
//!
//! [`CacheTiers`] holds what every cached blob of the daemon shares: the memory tier, the
//! optional disk tier, the refill unit, the in-flight table and the counters. Its lookup
//! decides, per planned unit, where the bytes come from and what is admitted to memory:
//! - a unit in memory is served from memory;
//! - a read that needs at most a quarter of a unit ([`small_part`]) takes only its part from
//!   the disk tier (which verifies just the 4 KiB chunks it covers) and leaves memory alone:
//!   the part is not a unit, and random small reads over a working set larger than memory
//!   would only churn it;
//! - a larger read takes the whole unit from disk and puts it in memory;
//! - anything else is missing, for the in-flight table and a fetch.
//!
//! A disk hit is first tried on the calling thread ([`DiskTier::try_get_range`]: an entry
//! already open, bytes in the page cache), and a unit the disk tier does not hold is a miss at
//! once; only the rest (opening an entry, waiting for the disk) and all writes run on blocking
//! threads. A disk tier that fails a read just misses (the unit is fetched), one that fails a
//! write is logged, never failing a read that has its data.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::inflight::InFlight;
use super::plan::PlannedUnit;
use super::priority::Gate;
use crate::cache::disk::{DiskTier, LayerUsage, Quick};
use crate::cache::key::{BlobId, UnitKey};
use crate::cache::memory::MemoryTier;
use crate::cache::settings::EffectiveCache;
use crate::metrics::{self, Tier};

/// Counters of where units came from, since the tiers were created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Units found in memory.
    pub memory_hits: u64,
    /// Units, or parts of units for small reads, read from the disk tier.
    pub disk_hits: u64,
    /// Units a reader waited for while another reader fetched them.
    pub shared_fetches: u64,
    /// Requests sent to the source (each covers one or more adjacent units).
    pub source_requests: u64,
    /// Bytes received from the source.
    pub source_bytes: u64,
    /// Units fetched ahead of a sequential stream (also counted in the two above).
    pub readahead_units: u64,
    /// Times a background read (a trace replay) waited for foreground fetches to finish.
    pub background_waits: u64,
}

/// The live counters behind [`CacheStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) memory_hits: AtomicU64,
    pub(super) disk_hits: AtomicU64,
    pub(super) shared_fetches: AtomicU64,
    pub(super) source_requests: AtomicU64,
    pub(super) source_bytes: AtomicU64,
    pub(super) readahead_units: AtomicU64,
}

/// Adds `n` to a counter.
pub(super) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The largest part of a unit (a quarter) that a read takes from the disk tier on its own,
/// without loading the whole unit into memory.
pub(super) fn small_part(unit: u64) -> usize {
    usize::try_from(unit / 4).unwrap_or(usize::MAX)
}

/// What the tier lookup found for one planned unit.
pub(super) enum Found {
    /// The whole unit (the read cuts its needed part).
    Whole(Bytes),
    /// Exactly the needed part of the unit (a small read served by the disk tier).
    Part(Bytes),
}

impl Found {
    /// The bytes of `unit` the read needs.
    pub(super) fn needed(self, unit: &PlannedUnit) -> Bytes {
        match self {
            Found::Whole(b) => b.slice(unit.needed.clone()),
            Found::Part(b) => b,
        }
    }
}

/// The tiers and the in-flight table shared by every cached blob of the daemon.
pub struct CacheTiers {
    pub(super) memory: MemoryTier,
    pub(super) disk: Option<Arc<DiskTier>>,
    pub(super) unit: u64,
    pub(super) inflight: Arc<InFlight>,
    pub(super) counters: Counters,
    /// Read-ahead bound per blob in bytes (0: off).
    pub(super) read_ahead: u64,
    /// Foreground fetches before background ones ([`super::priority`]).
    pub(super) gate: Gate,
}

impl CacheTiers {
    /// Tiers with a memory tier of `memory_bytes` (0 = none), an optional disk tier, and refill
    /// unit `unit` bytes (a power of two, at least 512).
    /// Blobs opened with [`super::CachedSource::shared`] read ahead up to 4 MiB.
    pub fn new(memory_bytes: u64, disk: Option<DiskTier>, unit: u64) -> io::Result<Arc<Self>> {
        Self::with_read_ahead(memory_bytes, disk, unit, super::readahead::MAX_BYTES)
    }

    /// [`CacheTiers::new`] with a read-ahead bound of `read_ahead` bytes per blob (0: off).
    pub fn with_read_ahead(
        memory_bytes: u64,
        disk: Option<DiskTier>,
        unit: u64,
        read_ahead: u64,
    ) -> io::Result<Arc<Self>> {
        if unit < 512 || !unit.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refill unit {unit} is not a power of two >= 512"),
            ));
        }
        Ok(Arc::new(Self {
            memory: MemoryTier::new(memory_bytes, unit),
            disk: disk.map(Arc::new),
            unit,
            inflight: Arc::new(InFlight::default()),
            counters: Counters::default(),
            read_ahead,
            gate: Gate::default(),
        }))
    }

    /// Tiers for the daemon's cache settings; the disk tier lives in the cache folder (none
    /// when its size is 0).
    pub fn from_settings(cache: &EffectiveCache) -> io::Result<Arc<Self>> {
        let disk = if cache.disk_bytes > 0 {
            Some(
                DiskTier::open(&cache.dir, cache.disk_bytes)?.with_free_floor(cache.min_free_bytes),
            )
        } else {
            None
        };
        Self::with_read_ahead(
            cache.memory_bytes,
            disk,
            cache.refill_size,
            cache.read_ahead_bytes,
        )
    }

    /// The refill unit in bytes.
    pub fn unit_size(&self) -> u64 {
        self.unit
    }

    /// Bytes held by the memory tier.
    pub fn memory_used(&self) -> u64 {
        self.memory.used_bytes()
    }

    /// Bytes held by the disk tier (0 without one).
    pub fn disk_used(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.used_bytes())
    }

    /// What the disk tier holds per layer, pinned layers included, then the layers only the
    /// memory tier holds units of (with no disk units), in digest order.
    pub fn layers(&self) -> Vec<LayerUsage> {
        let mut layers = self.disk.as_ref().map_or_else(Vec::new, |d| d.layers());
        for blob in self.memory.blobs().into_keys() {
            if !layers.iter().any(|l| l.blob == blob) {
                layers.push(LayerUsage::empty(blob, false));
            }
        }
        layers.sort_by(|a, b| a.blob.cmp(&b.blob));
        layers
    }

    /// Bytes the memory tier holds of each layer.
    pub fn memory_by_layer(&self) -> std::collections::BTreeMap<BlobId, u64> {
        self.memory.blobs()
    }

    /// What the disk tier holds of one layer.
    pub fn layer(&self, blob: &BlobId) -> LayerUsage {
        self.layers()
            .into_iter()
            .find(|l| l.blob == *blob)
            .unwrap_or_else(|| LayerUsage::empty(blob.clone(), false))
    }

    /// Pins or unpins a layer in the disk tier (saving the pin list); false when it already
    /// was so. `Unsupported` without a disk tier.
    pub async fn set_pinned(&self, blob: &BlobId, pinned: bool) -> io::Result<bool> {
        let Some(disk) = self.disk.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the cache has no disk tier (its size is 0): nothing to pin",
            ));
        };
        let blob = blob.clone();
        crate::sys::blocking(move || disk.set_pinned(&blob, pinned)).await
    }

    /// Drops every unit of a layer from both tiers; returns what the disk tier held.
    pub async fn purge(&self, blob: &BlobId) -> LayerUsage {
        self.memory.remove_blob(blob);
        let gone = match self.disk.clone() {
            Some(disk) => {
                let id = blob.clone();
                crate::sys::run_blocking(move || disk.purge(&id)).await.ok()
            }
            None => None,
        };
        self.publish_sizes();
        gone.unwrap_or_else(|| LayerUsage::empty(blob.clone(), false))
    }

    /// Where units came from so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            memory_hits: get(&c.memory_hits),
            disk_hits: get(&c.disk_hits),
            shared_fetches: get(&c.shared_fetches),
            source_requests: get(&c.source_requests),
            source_bytes: get(&c.source_bytes),
            readahead_units: get(&c.readahead_units),
            background_waits: get(&self.gate.waits),
        }
    }

    /// Memory, then disk, for one planned unit, with the admission rules of the module doc;
    /// `None` when neither tier has it.
    pub(super) async fn lookup(&self, key: &UnitKey, unit: &PlannedUnit) -> Option<Found> {
        if let Some(b) = self.memory.get(key) {
            bump(&self.counters.memory_hits, 1);
            metrics::global().cache_hit(Tier::Memory);
            return Some(Found::Whole(b));
        }
        let needed = unit.needed.len();
        let found = if needed <= small_part(self.unit) {
            self.disk_read(key, unit.len, unit.needed.start, needed)
                .await
                .map(Found::Part)
        } else {
            let whole = self.disk_read(key, unit.len, 0, unit.len).await;
            if let Some(b) = &whole {
                self.memory.insert(key.clone(), b.clone());
                self.publish_sizes();
            }
            whole.map(Found::Whole)
        };
        if found.is_some() {
            bump(&self.counters.disk_hits, 1);
            metrics::global().cache_hit(Tier::Disk);
        }
        found
    }

    /// Whether memory or disk holds `key` (nothing is read).
    pub(super) fn holds(&self, key: &UnitKey) -> bool {
        self.memory.contains(key) || self.disk.as_ref().is_some_and(|d| d.contains(key))
    }

    /// Bytes `[start, start + len)` of a unit (`expected` bytes long) from the disk tier,
    /// reading only the chunks they cover: without leaving this thread when it can.
    async fn disk_read(
        &self,
        key: &UnitKey,
        expected: usize,
        start: usize,
        len: usize,
    ) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        match disk.try_get_range(key, self.unit, expected, start, len) {
            Quick::Hit(b) => return Some(b),
            Quick::Absent => return None,
            Quick::WouldBlock => {}
        }
        let (disk, key, unit) = (Arc::clone(disk), key.clone(), self.unit);
        tokio::task::spawn_blocking(move || disk.get_range(&key, unit, expected, start, len))
            .await
            .ok()
            .flatten()
    }

    /// Writes a fetched unit to the disk tier; a failure is logged, not returned.
    pub(super) async fn disk_put(&self, key: UnitKey, data: Bytes) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let unit = self.unit;
        let folder = disk.root().to_path_buf();
        let result = tokio::task::spawn_blocking(move || disk.put(&key, unit, &data)).await;
        // A full or broken cache disk must not fail the read that already has its data.
        if let Ok(Err(e)) | Err(e) = result.map_err(io::Error::other) {
            tracing::warn!(folder = %folder.display(), error = %e, "disk cache write failed");
        }
        self.publish_sizes();
    }

    /// Sets the `cache_bytes` gauges to what the tiers hold now.
    pub(super) fn publish_sizes(&self) {
        let m = metrics::global();
        m.cache_bytes(Tier::Memory, self.memory.used_bytes());
        if let Some(disk) = &self.disk {
            m.cache_bytes(Tier::Disk, disk.used_bytes());
        }
    }

    /// Drops `key` from both tiers.
    pub(super) async fn forget(&self, key: UnitKey) {
        self.memory.remove(&key);
        if let Some(disk) = self.disk.clone() {
            let _ = tokio::task::spawn_blocking(move || disk.remove(&key)).await;
        }
    }
}

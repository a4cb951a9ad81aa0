//! A remote blob behind the memory and disk tiers.
//!
//! Reads are split into aligned refill units (256 KiB by default). Each unit is looked up in
//! memory, then on disk; the missing ones are claimed in a shared in-flight table so that
//! concurrent readers of the same unit (even through different images sharing the layer)
//! wait for one fetch instead of issuing their own (single-flight), and adjacent claimed units
//! are fetched in one ranged request. Fetched units go to memory, to waiting readers, then to
//! disk. A read that needs at most a quarter of a unit the memory tier lacks takes only that
//! part from the disk tier (verified per 4 KiB chunk) and leaves memory alone, so random small
//! reads over a working set larger than memory cost their own size, not a unit each. A failed
//! fetch caches nothing. After a background download completes, reads are
//! served from the verified local file instead.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::disk::DiskTier;
use super::key::{BlobId, UnitKey};
use super::memory::MemoryTier;
use super::settings::EffectiveCache;
use super::LayerSource;

/// The outcome of one unit fetch as seen by the readers waiting on it.
type UnitResult = Result<Bytes, (io::ErrorKind, Arc<str>)>;
type UnitWatch = watch::Receiver<Option<UnitResult>>;

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
}

#[derive(Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    shared_fetches: AtomicU64,
    source_requests: AtomicU64,
    source_bytes: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The largest part of a unit (a quarter) that a read takes from the disk tier on its own,
/// without loading the whole unit into memory.
fn small_part(unit: u64) -> usize {
    usize::try_from(unit / 4).unwrap_or(usize::MAX)
}

/// The tiers and the in-flight table shared by every cached blob of the daemon.
pub struct CacheTiers {
    memory: MemoryTier,
    disk: Option<Arc<DiskTier>>,
    unit: u64,
    inflight: Mutex<HashMap<UnitKey, UnitWatch>>,
    counters: Counters,
}

impl CacheTiers {
    /// Tiers with a memory tier of `memory_bytes` (0 = none), an optional disk tier, and refill
    /// unit `unit` bytes (a power of two, at least 512).
    pub fn new(memory_bytes: u64, disk: Option<DiskTier>, unit: u64) -> io::Result<Arc<Self>> {
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
            inflight: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }))
    }

    /// Tiers for the daemon's cache settings; the disk tier lives in the cache folder (none
    /// when its size is 0).
    pub fn from_settings(cache: &EffectiveCache) -> io::Result<Arc<Self>> {
        let disk = if cache.disk_bytes > 0 {
            Some(DiskTier::open(&cache.dir, cache.disk_bytes)?)
        } else {
            None
        };
        Self::new(cache.memory_bytes, disk, cache.refill_size)
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
        }
    }

    async fn disk_get(&self, key: &UnitKey, expected: usize) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let (key, unit) = (key.clone(), self.unit);
        tokio::task::spawn_blocking(move || disk.get(&key, unit, expected))
            .await
            .ok()
            .flatten()
    }

    /// Bytes `[start, start + len)` of a unit from the disk tier, reading only the chunks
    /// they cover.
    async fn disk_get_range(
        &self,
        key: &UnitKey,
        expected: usize,
        start: usize,
        len: usize,
    ) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let (key, unit) = (key.clone(), self.unit);
        tokio::task::spawn_blocking(move || disk.get_range(&key, unit, expected, start, len))
            .await
            .ok()
            .flatten()
    }

    async fn disk_put(&self, key: UnitKey, data: Bytes) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let unit = self.unit;
        let result = tokio::task::spawn_blocking(move || disk.put(&key, unit, &data)).await;
        // A full or broken cache disk must not fail the read that already has its data.
        if let Ok(Err(e)) | Err(e) = result.map_err(io::Error::other) {
            tracing::warn!(error = %e, "disk cache write failed");
        }
    }
}

/// A unit this reader has claimed and must fetch; dropping it (done or cancelled) releases
/// the claim, and waiters of a claim released without a result fetch for themselves.
struct Claim {
    key: UnitKey,
    tx: watch::Sender<Option<UnitResult>>,
    tiers: Arc<CacheTiers>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut inflight = self.tiers.inflight.lock();
        if inflight
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            inflight.remove(&self.key);
        }
    }
}

enum Slot {
    Ready(Bytes),
    Mine(Claim),
    Theirs(UnitWatch),
}

/// A blob read through the cache tiers, falling back to `inner` for missing units.
pub struct CachedSource {
    inner: Arc<dyn LayerSource>,
    blob: BlobId,
    tiers: Arc<CacheTiers>,
    size: u64,
    local: RwLock<Option<Arc<std::fs::File>>>,
}

impl CachedSource {
    /// Caches `inner` (a blob named by `digest`) in `tiers`.
    pub fn new(inner: Arc<dyn LayerSource>, digest: &str, tiers: Arc<CacheTiers>) -> Self {
        let size = inner.size();
        Self {
            inner,
            blob: BlobId::from_digest(digest),
            tiers,
            size,
            local: RwLock::new(None),
        }
    }

    /// The uncached source behind the tiers.
    pub fn inner(&self) -> &Arc<dyn LayerSource> {
        &self.inner
    }

    /// The blob's cache identity.
    pub fn blob_id(&self) -> &BlobId {
        &self.blob
    }

    /// Serves every later read from `file`, a complete, verified copy of the blob.
    pub fn use_local_file(&self, file: std::fs::File) {
        *self.local.write() = Some(Arc::new(file));
    }

    /// Whether reads are served from a downloaded local copy.
    pub fn is_local(&self) -> bool {
        self.local.read().is_some()
    }

    fn unit_len(&self, index: u64) -> usize {
        let start = index * self.tiers.unit;
        (self.size - start).min(self.tiers.unit) as usize
    }

    fn key(&self, index: u64) -> UnitKey {
        UnitKey {
            blob: self.blob.clone(),
            index,
        }
    }

    /// Looks the unit up in memory, then claims it or joins the reader already fetching it.
    fn claim(&self, index: u64) -> Slot {
        let key = self.key(index);
        let mut inflight = self.tiers.inflight.lock();
        // Re-check memory under the lock: a fetch may have finished since the first look.
        if let Some(b) = self.tiers.memory.get(&key) {
            return Slot::Ready(b);
        }
        if let Some(rx) = inflight.get(&key) {
            return Slot::Theirs(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(key.clone(), rx);
        Slot::Mine(Claim {
            key,
            tx,
            tiers: Arc::clone(&self.tiers),
        })
    }

    /// Fetches a run of adjacent claimed units in one request and publishes each unit.
    async fn fetch_run(&self, claims: Vec<Claim>) -> io::Result<Vec<Bytes>> {
        let Some(first) = claims.first().map(|c| c.key.index) else {
            return Ok(Vec::new());
        };
        let start = first * self.tiers.unit;
        let len: usize = claims.iter().map(|c| self.unit_len(c.key.index)).sum();
        bump(&self.tiers.counters.source_requests, 1);
        let data = match self.inner.read_at(start, len).await {
            Ok(d) if d.len() == len => {
                bump(&self.tiers.counters.source_bytes, len as u64);
                d
            }
            Ok(d) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: source returned {} of {len} bytes",
                        self.describe(),
                        d.len()
                    ),
                );
                publish_error(&claims, &e);
                return Err(e);
            }
            Err(e) => {
                publish_error(&claims, &e);
                return Err(e);
            }
        };
        let mut units = Vec::with_capacity(claims.len());
        let mut at = 0;
        let merged = claims.len() > 1;
        for claim in &claims {
            let n = self.unit_len(claim.key.index);
            // Units of a merged fetch get their own buffers: a slice would keep the whole
            // fetch alive after its siblings are evicted, beyond the memory tier's bound.
            let unit = if merged {
                Bytes::copy_from_slice(&data[at..at + n])
            } else {
                data.slice(at..at + n)
            };
            at += n;
            self.tiers.memory.insert(claim.key.clone(), unit.clone());
            claim.tx.send_replace(Some(Ok(unit.clone())));
            units.push(unit);
        }
        // Waiters have their data; release the claims before the slower disk writes.
        let keys: Vec<UnitKey> = claims.iter().map(|c| c.key.clone()).collect();
        drop(claims);
        for (key, unit) in keys.into_iter().zip(&units) {
            self.tiers.disk_put(key, unit.clone()).await;
        }
        Ok(units)
    }

    /// Evicts the units covering `[offset, offset + len)` from both tiers, so the next read
    /// refetches them (for a block whose checksum failed above the cache).
    pub async fn invalidate_range(&self, offset: u64, len: u64) {
        if len == 0 || offset >= self.size {
            return;
        }
        let end = offset.saturating_add(len).min(self.size);
        let (first, last) = (offset / self.tiers.unit, (end - 1) / self.tiers.unit);
        for index in first..=last {
            let key = self.key(index);
            self.tiers.memory.remove(&key);
            if let Some(disk) = self.tiers.disk.clone() {
                let _ = tokio::task::spawn_blocking(move || disk.remove(&key)).await;
            }
        }
    }

    async fn read_local(
        &self,
        file: Arc<std::fs::File>,
        offset: u64,
        len: usize,
    ) -> io::Result<Bytes> {
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }
}

fn publish_error(claims: &[Claim], e: &io::Error) {
    let shared: Arc<str> = Arc::from(e.to_string());
    for c in claims {
        c.tx.send_replace(Some(Err((e.kind(), Arc::clone(&shared)))));
    }
}

#[async_trait]
impl LayerSource for CachedSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = crate::cache::check_range(self.size, offset, len)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.describe())))?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let local = self.local.read().clone();
        if let Some(file) = local {
            return self.read_local(file, offset, len).await;
        }
        let unit = self.tiers.unit;
        let (first, last) = (offset / unit, (end - 1) / unit);
        // Per unit: the slot (the whole unit, or only the needed part when `partial`) and the
        // needed part's range within the unit.
        let mut units: Vec<Option<Bytes>> = Vec::new();
        let mut partial: Vec<bool> = Vec::new();
        let mut needed: Vec<std::ops::Range<usize>> = Vec::new();
        for index in first..=last {
            let unit_start = index * unit;
            let unit_len = self.unit_len(index);
            let lo = (offset.max(unit_start) - unit_start) as usize;
            let hi = (end.min(unit_start + unit_len as u64) - unit_start) as usize;
            needed.push(lo..hi);
            let key = self.key(index);
            let mut part = false;
            let mut got = self.tiers.memory.get(&key);
            if got.is_some() {
                bump(&self.tiers.counters.memory_hits, 1);
            } else {
                if hi - lo <= small_part(unit) {
                    // A small read (e.g. 4 KiB of a 256 KiB unit) reads and verifies only its
                    // chunks: the whole unit would cost up to 64 times the bytes. The part is
                    // not put in memory: it is not a unit, and a random small-read working
                    // set larger than the memory tier would only churn it.
                    got = self.tiers.disk_get_range(&key, unit_len, lo, hi - lo).await;
                    part = got.is_some();
                } else if let Some(b) = self.tiers.disk_get(&key, unit_len).await {
                    self.tiers.memory.insert(key, b.clone());
                    got = Some(b);
                }
                if got.is_some() {
                    bump(&self.tiers.counters.disk_hits, 1);
                }
            }
            units.push(got);
            partial.push(part);
        }
        // Each round fetches what this reader claimed and waits for the rest; a unit whose
        // fetcher was cancelled comes back empty and is claimed again in the next round.
        while units.iter().any(Option::is_none) {
            let mut runs: Vec<Vec<Claim>> = Vec::new();
            let mut waits: Vec<(usize, UnitWatch)> = Vec::new();
            let mut prev_mine = false;
            for (i, slot) in units.iter_mut().enumerate() {
                if slot.is_some() {
                    prev_mine = false;
                    continue;
                }
                match self.claim(first + i as u64) {
                    Slot::Ready(b) => {
                        *slot = Some(b);
                        prev_mine = false;
                    }
                    Slot::Mine(c) => {
                        match runs.last_mut() {
                            Some(run) if prev_mine => run.push(c),
                            _ => runs.push(vec![c]),
                        }
                        prev_mine = true;
                    }
                    Slot::Theirs(rx) => {
                        waits.push((i, rx));
                        prev_mine = false;
                    }
                }
            }
            for run in runs {
                let base = run.first().map_or(0, |c| (c.key.index - first) as usize);
                for (j, b) in self.fetch_run(run).await?.into_iter().enumerate() {
                    units[base + j] = Some(b);
                }
            }
            for (i, mut rx) in waits {
                let Ok(value) = rx.wait_for(Option::is_some).await else {
                    continue;
                };
                match value.clone() {
                    Some(Ok(b)) => {
                        bump(&self.tiers.counters.shared_fetches, 1);
                        units[i] = Some(b);
                    }
                    Some(Err((kind, msg))) => return Err(io::Error::new(kind, msg.to_string())),
                    None => {}
                }
            }
        }
        let pieces: Vec<Bytes> = units
            .into_iter()
            .zip(partial)
            .zip(needed)
            .filter_map(|((slot, part), range)| {
                // A partial slot already holds just the needed bytes; a whole unit is cut.
                slot.map(|b| if part { b } else { b.slice(range) })
            })
            .collect();
        // Every slot is filled by now; a short total would mean a bug above, and is an error
        // rather than a short read served as data.
        let total: usize = pieces.iter().map(Bytes::len).sum();
        if total != len {
            return Err(io::Error::other(format!(
                "cache assembled {total} bytes for a {len}-byte read at {offset}"
            )));
        }
        if let [one] = pieces.as_slice() {
            return Ok(one.clone());
        }
        let mut out = BytesMut::with_capacity(len);
        for p in &pieces {
            out.extend_from_slice(p);
        }
        Ok(out.freeze())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn invalidate(&self, offset: u64, len: u64) {
        self.invalidate_range(offset, len).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    /// A blob in memory that records each read and can fail or stall on demand.
    struct Fake {
        data: Vec<u8>,
        calls: Mutex<Vec<(u64, usize)>>,
        fail_next: AtomicU32,
        delay: Duration,
    }

    impl Fake {
        fn new(size: usize, delay: Duration) -> Arc<Self> {
            let data = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
            Arc::new(Self {
                data,
                calls: Mutex::new(Vec::new()),
                fail_next: AtomicU32::new(0),
                delay,
            })
        }
        fn calls(&self) -> Vec<(u64, usize)> {
            self.calls.lock().clone()
        }
    }

    #[async_trait]
    impl LayerSource for Fake {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
            self.calls.lock().push((offset, len));
            tokio::time::sleep(self.delay).await;
            if self.fail_next.load(Ordering::SeqCst) > 0 {
                self.fail_next.fetch_sub(1, Ordering::SeqCst);
                return Err(io::Error::other("injected failure"));
            }
            Ok(Bytes::copy_from_slice(
                &self.data[offset as usize..offset as usize + len],
            ))
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn cached(fake: &Arc<Fake>, tiers: &Arc<CacheTiers>) -> CachedSource {
        CachedSource::new(
            Arc::clone(fake) as Arc<dyn LayerSource>,
            DIGEST,
            Arc::clone(tiers),
        )
    }

    #[tokio::test]
    async fn reads_are_correct_and_fetch_aligned_units() {
        let fake = Fake::new(10_000, Duration::ZERO);
        let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
        let src = cached(&fake, &tiers);
        for (off, len) in [
            (0usize, 1usize),
            (1000, 100),
            (1023, 2),
            (5000, 3000),
            (9999, 1),
            (0, 10_000),
            (8192, 1808),
        ] {
            let got = src.read_at(off as u64, len).await.unwrap();
            assert_eq!(&got[..], &fake.data[off..off + len], "{off}+{len}");
        }
        for (off, len) in fake.calls() {
            assert_eq!(off % 1024, 0, "aligned");
            assert!(
                len % 1024 == 0 || off + len as u64 == 10_000,
                "whole units or the tail"
            );
        }
        assert!(src.read_at(9_999, 2).await.is_err(), "past the end");
        assert_eq!(src.read_at(10_000, 0).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn adjacent_missing_units_merge_into_one_request() {
        let fake = Fake::new(8192, Duration::ZERO);
        let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
        let src = cached(&fake, &tiers);
        src.read_at(2048, 1).await.unwrap(); // unit 2
        fake.calls.lock().clear();
        src.read_at(0, 5 * 1024).await.unwrap(); // units 0-1 and 3-4 missing
        assert_eq!(fake.calls(), vec![(0, 2048), (3072, 2048)]);
        fake.calls.lock().clear();
        src.read_at(100, 4000).await.unwrap();
        assert!(fake.calls().is_empty(), "served from memory");
    }

    #[tokio::test]
    async fn concurrent_reads_of_a_unit_fetch_once() {
        let fake = Fake::new(4096, Duration::from_millis(50));
        let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
        let src = Arc::new(cached(&fake, &tiers));
        // A second source for the same digest (another image sharing the layer) joins too.
        let other = Arc::new(cached(&fake, &tiers));
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let s = if i % 2 == 0 {
                Arc::clone(&src)
            } else {
                Arc::clone(&other)
            };
            tasks.push(tokio::spawn(async move {
                s.read_at(i * 10, 100).await.map(|b| (i, b))
            }));
        }
        for t in tasks {
            let (i, b) = t.await.unwrap().unwrap();
            assert_eq!(&b[..], &fake.data[i as usize * 10..i as usize * 10 + 100]);
        }
        assert_eq!(fake.calls(), vec![(0, 1024)]);
        let stats = tiers.stats();
        assert_eq!((stats.source_requests, stats.source_bytes), (1, 1024));
        assert_eq!(stats.shared_fetches + stats.memory_hits, 7, "{stats:?}");
    }

    #[tokio::test]
    async fn a_failed_fetch_caches_nothing_and_waiters_see_the_error() {
        let fake = Fake::new(4096, Duration::from_millis(30));
        let dir = tempfile::tempdir().unwrap();
        let tiers = CacheTiers::new(
            1 << 20,
            Some(DiskTier::open(dir.path(), 1 << 20).unwrap()),
            1024,
        )
        .unwrap();
        let src = Arc::new(cached(&fake, &tiers));
        fake.fail_next.store(1, Ordering::SeqCst);
        let (a, b) = tokio::join!(src.read_at(0, 10), src.read_at(5, 10));
        assert!(a.is_err() && b.is_err());
        assert_eq!(fake.calls().len(), 1, "the waiter did not fetch on its own");
        assert_eq!((tiers.memory_used(), tiers.disk_used()), (0, 0));
        assert_eq!(&src.read_at(0, 10).await.unwrap()[..], &fake.data[..10]);
        assert_eq!(fake.calls().len(), 2);
    }

    #[tokio::test]
    async fn cancelled_fetch_does_not_strand_waiters() {
        let fake = Fake::new(4096, Duration::from_millis(200));
        let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
        let src = Arc::new(cached(&fake, &tiers));
        let leader = tokio::spawn({
            let s = Arc::clone(&src);
            async move { s.read_at(0, 10).await }
        });
        while fake.calls().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waiter = tokio::spawn({
            let s = Arc::clone(&src);
            async move { s.read_at(0, 10).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter hung")
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], &fake.data[..10]);
        assert_eq!(
            fake.calls().len(),
            2,
            "the waiter fetched after the leader vanished"
        );
    }

    #[tokio::test]
    async fn disk_tier_serves_after_restart_and_invalidate_refetches() {
        let fake = Fake::new(5000, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        {
            let tiers = CacheTiers::new(
                1 << 20,
                Some(DiskTier::open(dir.path(), 1 << 20).unwrap()),
                1024,
            )
            .unwrap();
            cached(&fake, &tiers).read_at(0, 5000).await.unwrap();
        }
        fake.calls.lock().clear();
        // A new process: empty memory, same cache folder, no memory tier at all.
        let tiers =
            CacheTiers::new(0, Some(DiskTier::open(dir.path(), 1 << 20).unwrap()), 1024).unwrap();
        let src = cached(&fake, &tiers);
        assert_eq!(&src.read_at(0, 5000).await.unwrap()[..], &fake.data[..]);
        assert!(fake.calls().is_empty(), "all from disk");
        assert_eq!(tiers.stats().disk_hits, 5);
        src.invalidate(1500, 1000).await; // units 1 and 2
        assert_eq!(&src.read_at(0, 5000).await.unwrap()[..], &fake.data[..]);
        assert_eq!(fake.calls(), vec![(1024, 2048)]);
    }

    #[tokio::test]
    async fn a_changed_refill_unit_does_not_misread_old_entries() {
        let fake = Fake::new(8192, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        {
            let tiers =
                CacheTiers::new(0, Some(DiskTier::open(dir.path(), 1 << 20).unwrap()), 1024)
                    .unwrap();
            cached(&fake, &tiers).read_at(0, 8192).await.unwrap();
        }
        let tiers =
            CacheTiers::new(0, Some(DiskTier::open(dir.path(), 1 << 20).unwrap()), 4096).unwrap();
        let src = cached(&fake, &tiers);
        assert_eq!(
            &src.read_at(4096, 4096).await.unwrap()[..],
            &fake.data[4096..]
        );
    }

    #[tokio::test]
    async fn local_file_takes_over() {
        let fake = Fake::new(3000, Duration::ZERO);
        let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
        let src = cached(&fake, &tiers);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &fake.data).unwrap();
        src.use_local_file(f);
        assert!(src.is_local());
        assert_eq!(
            &src.read_at(100, 2000).await.unwrap()[..],
            &fake.data[100..2100]
        );
        assert!(fake.calls().is_empty());
    }

    /// A deterministic stream of numbers below `n` (xorshift), so failures reproduce.
    fn next_below(state: &mut u64, n: u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state % n
    }

    #[tokio::test]
    async fn small_disk_reads_take_parts_and_match_the_source() {
        const UNIT: u64 = 32_768; // eight 4 KiB chunks; a quarter is 8 KiB
        const SIZE: usize = 100_000; // the last unit is short (1696 bytes)
        let fake = Fake::new(SIZE, Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        {
            let tiers =
                CacheTiers::new(0, Some(DiskTier::open(dir.path(), 1 << 20).unwrap()), UNIT)
                    .unwrap();
            cached(&fake, &tiers).read_at(0, SIZE).await.unwrap();
        }
        fake.calls.lock().clear();
        // A restart with a memory tier of two units: the disk tier holds everything.
        let disk = DiskTier::open(dir.path(), 1 << 20).unwrap();
        let tiers = CacheTiers::new(2 * UNIT, Some(disk), UNIT).unwrap();
        let src = cached(&fake, &tiers);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        // Small reads (some crossing a unit boundary, some in the short last unit).
        let mut small = vec![
            (32_760u64, 100usize),
            (98_300, 1700),
            (99_999, 1),
            (0, 8192),
        ];
        for _ in 0..300 {
            let off = next_below(&mut rng, SIZE as u64);
            let len = 1 + next_below(&mut rng, 8192) as usize;
            small.push((off, len.min(SIZE - off as usize)));
        }
        for &(off, len) in &small {
            let got = src.read_at(off, len).await.unwrap();
            assert_eq!(
                &got[..],
                &fake.data[off as usize..off as usize + len],
                "{off}+{len}"
            );
        }
        let stats = tiers.stats();
        assert!(fake.calls().is_empty(), "all from disk");
        assert_eq!(tiers.memory_used(), 0, "parts are not put in memory");
        assert_eq!(stats.memory_hits, 0);
        assert!(stats.disk_hits >= small.len() as u64, "{stats:?}");
        // Large reads take whole units, which do go to memory.
        for _ in 0..50 {
            let off = next_below(&mut rng, SIZE as u64 - 8193);
            let len = (8193 + next_below(&mut rng, 60_000) as usize).min(SIZE - off as usize);
            let got = src.read_at(off, len).await.unwrap();
            assert_eq!(
                &got[..],
                &fake.data[off as usize..off as usize + len],
                "{off}+{len}"
            );
        }
        assert!(fake.calls().is_empty(), "still all from disk");
        assert!(tiers.memory_used() > 0 && tiers.memory_used() <= 2 * UNIT);
        assert!(tiers.stats().disk_hits > stats.disk_hits);
        // A damaged chunk: a small read touching it refetches the unit and returns true bytes.
        let key = UnitKey {
            blob: BlobId::from_digest(DIGEST),
            index: 2,
        };
        tiers.memory.remove(&key);
        let path = tiers.disk.as_ref().unwrap().entry_path(&key);
        let mut raw = std::fs::read(&path).unwrap();
        let at = raw.len() - UNIT as usize + 5000; // payload byte 5000 of unit 2
        raw[at] ^= 0xff;
        std::fs::write(&path, &raw).unwrap();
        let off = 2 * UNIT + 4100;
        let got = src.read_at(off, 100).await.unwrap();
        assert_eq!(&got[..], &fake.data[off as usize..off as usize + 100]);
        assert_eq!(
            fake.calls(),
            vec![(2 * UNIT, UNIT as usize)],
            "refetched once"
        );
    }

    #[test]
    fn unit_must_be_a_power_of_two() {
        assert!(CacheTiers::new(0, None, 1000).is_err());
        assert!(CacheTiers::new(0, None, 256).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Concurrent reads under memory and disk pressure, with invalidations and injected
        /// source failures, always return the blob's bytes or an error, never other bytes.
        #[test]
        fn concurrent_reads_under_pressure_return_true_bytes(
            ops in proptest::collection::vec((0u64..20_000, 1usize..3000, 0u8..10), 1..40),
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let fake = Fake::new(20_000, Duration::ZERO);
                let dir = tempfile::tempdir().unwrap();
                let disk = DiskTier::open(dir.path(), 6 * 1024).unwrap();
                let tiers = CacheTiers::new(3 * 512, Some(disk), 512).unwrap();
                let src = Arc::new(cached(&fake, &tiers));
                let mut tasks = tokio::task::JoinSet::new();
                for (off, len, action) in ops {
                    let len = len.min((20_000 - off) as usize);
                    let (src, fake) = (Arc::clone(&src), Arc::clone(&fake));
                    tasks.spawn(async move {
                        match action {
                            0 => src.invalidate(off, len as u64).await,
                            1 => fake.fail_next.store(1, Ordering::SeqCst),
                            _ => {
                                if let Ok(got) = src.read_at(off, len).await {
                                    assert_eq!(&got[..], &fake.data[off as usize..off as usize + len], "{off}+{len}");
                                }
                            }
                        }
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r.unwrap();
                }
                // With failures off, everything reads back right.
                fake.fail_next.store(0, Ordering::SeqCst);
                assert_eq!(&src.read_at(0, 20_000).await.unwrap()[..], &fake.data[..]);
                assert!(tiers.memory_used() <= 3 * 512 && tiers.disk_used() <= 6 * 1024);
            });
        }
    }
}

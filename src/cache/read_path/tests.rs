//! The cached read path's behaviour, end to end over a fake source: alignment, merged
//! requests, single-flight across sources sharing a blob, failures and cancellation, the disk
//! tier across restarts, small reads and local files, and a property test under pressure.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{CacheTiers, CachedSource};
use crate::cache::disk::DiskTier;
use crate::cache::key::{BlobId, UnitKey};
use crate::source::{LayerSource, SourceError, SourceResult, Span};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A blob in memory that records each read and can fail or stall on demand.
struct Fake {
    data: Vec<u8>,
    calls: Mutex<Vec<(u64, usize)>>,
    fail_next: AtomicU32,
    delay: Duration,
    /// When set, each read waits for a permit of its own ([`Fake::release`]).
    held: Option<tokio::sync::Semaphore>,
}

impl Fake {
    fn new(size: usize, delay: Duration) -> Arc<Self> {
        let data = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        Arc::new(Self {
            data,
            calls: Mutex::new(Vec::new()),
            fail_next: AtomicU32::new(0),
            delay,
            held: None,
        })
    }
    /// A blob whose reads each wait until [`Fake::release`] lets one go.
    fn held(size: usize) -> Arc<Self> {
        let mut fake = Arc::into_inner(Fake::new(size, Duration::ZERO)).unwrap();
        fake.held = Some(tokio::sync::Semaphore::new(0));
        Arc::new(fake)
    }
    /// Lets one held read (the next to take a permit) finish.
    fn release(&self) {
        self.held.as_ref().unwrap().add_permits(1);
    }
    fn calls(&self) -> Vec<(u64, usize)> {
        self.calls.lock().clone()
    }
    /// Waits (up to 5 s) until the source has been asked `n` times.
    async fn asked(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.calls.lock().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "asked {:?}, not {n} times",
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[async_trait]
impl LayerSource for Fake {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        self.calls.lock().push((span.offset(), span.len()));
        tokio::time::sleep(self.delay).await;
        if let Some(held) = &self.held {
            held.acquire().await.unwrap().forget();
        }
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(SourceError::Unavailable("injected failure".into()));
        }
        Ok(Bytes::copy_from_slice(
            &self.data[span.offset() as usize..span.end() as usize],
        ))
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

/// Tiers over a 1 MiB disk tier in `dir`, which outlives them as a cache folder outlives a
/// process, with a memory tier of `memory_bytes` (0 = none) and `unit`-byte refill units.
fn with_disk(dir: &std::path::Path, memory_bytes: u64, unit: u64) -> Arc<CacheTiers> {
    CacheTiers::new(
        memory_bytes,
        Some(DiskTier::open(dir, 1 << 20).unwrap()),
        unit,
    )
    .unwrap()
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
        let got = src.read_exact_at(off as u64, len).await.unwrap();
        assert_eq!(&got[..], &fake.data[off..off + len], "{off}+{len}");
    }
    for (off, len) in fake.calls() {
        assert_eq!(off % 1024, 0, "aligned");
        assert!(
            len % 1024 == 0 || off + len as u64 == 10_000,
            "whole units or the tail"
        );
    }
    assert!(src.read_exact_at(9_999, 2).await.is_err(), "past the end");
    assert_eq!(src.read_exact_at(10_000, 0).await.unwrap().len(), 0);
}

#[tokio::test]
async fn adjacent_missing_units_merge_into_one_request() {
    let fake = Fake::new(8192, Duration::ZERO);
    let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
    let src = cached(&fake, &tiers);
    src.read_exact_at(2048, 1).await.unwrap(); // unit 2
    fake.calls.lock().clear();
    src.read_exact_at(0, 5 * 1024).await.unwrap(); // units 0-1 and 3-4 missing
    assert_eq!(fake.calls(), vec![(0, 2048), (3072, 2048)]);
    fake.calls.lock().clear();
    src.read_exact_at(100, 4000).await.unwrap();
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
            s.read_exact_at(i * 10, 100).await.map(|b| (i, b))
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
    let tiers = with_disk(dir.path(), 1 << 20, 1024);
    let src = Arc::new(cached(&fake, &tiers));
    fake.fail_next.store(1, Ordering::SeqCst);
    let (a, b) = tokio::join!(src.read_exact_at(0, 10), src.read_exact_at(5, 10));
    assert!(a.is_err() && b.is_err());
    assert_eq!(fake.calls().len(), 1, "the waiter did not fetch on its own");
    assert_eq!((tiers.memory_used(), tiers.disk_used()), (0, 0));
    assert_eq!(
        &src.read_exact_at(0, 10).await.unwrap()[..],
        &fake.data[..10]
    );
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test]
async fn cancelled_fetch_does_not_strand_waiters() {
    let fake = Fake::new(4096, Duration::from_millis(200));
    let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
    let src = Arc::new(cached(&fake, &tiers));
    let leader = tokio::spawn({
        let s = Arc::clone(&src);
        async move { s.read_exact_at(0, 10).await }
    });
    while fake.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiter = tokio::spawn({
        let s = Arc::clone(&src);
        async move { s.read_exact_at(0, 10).await }
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
        let tiers = with_disk(dir.path(), 1 << 20, 1024);
        cached(&fake, &tiers).read_exact_at(0, 5000).await.unwrap();
    }
    fake.calls.lock().clear();
    // A new process: empty memory, same cache folder, no memory tier at all.
    let tiers = with_disk(dir.path(), 0, 1024);
    let src = cached(&fake, &tiers);
    assert_eq!(
        &src.read_exact_at(0, 5000).await.unwrap()[..],
        &fake.data[..]
    );
    assert!(fake.calls().is_empty(), "all from disk");
    assert_eq!(tiers.stats().disk_hits, 5);
    src.invalidate(1500, 1000).await; // units 1 and 2
    assert_eq!(
        &src.read_exact_at(0, 5000).await.unwrap()[..],
        &fake.data[..]
    );
    assert_eq!(fake.calls(), vec![(1024, 2048)]);
}

#[tokio::test]
async fn a_changed_refill_unit_does_not_misread_old_entries() {
    let fake = Fake::new(8192, Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    {
        let tiers = with_disk(dir.path(), 0, 1024);
        cached(&fake, &tiers).read_exact_at(0, 8192).await.unwrap();
    }
    let tiers = with_disk(dir.path(), 0, 4096);
    let src = cached(&fake, &tiers);
    assert_eq!(
        &src.read_exact_at(4096, 4096).await.unwrap()[..],
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
        &src.read_exact_at(100, 2000).await.unwrap()[..],
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
        let tiers = with_disk(dir.path(), 0, UNIT);
        cached(&fake, &tiers).read_exact_at(0, SIZE).await.unwrap();
    }
    fake.calls.lock().clear();
    // A restart with a memory tier of two units: the disk tier holds everything.
    let tiers = with_disk(dir.path(), 2 * UNIT, UNIT);
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
        let got = src.read_exact_at(off, len).await.unwrap();
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
        let got = src.read_exact_at(off, len).await.unwrap();
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
    let got = src.read_exact_at(off, 100).await.unwrap();
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
                            if let Ok(got) = src.read_exact_at(off, len).await {
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
            assert_eq!(&src.read_exact_at(0, 20_000).await.unwrap()[..], &fake.data[..]);
            assert!(tiers.memory_used() <= 3 * 512 && tiers.disk_used() <= 6 * 1024);
        });
    }
}

#[tokio::test]
async fn a_layer_only_in_memory_is_listed_and_purged() {
    // No disk tier: what a full cache disk (below its free-space floor) leaves too.
    let tiers = CacheTiers::new(1 << 20, None, 4096).unwrap();
    let fake = Fake::new(20_000, Duration::ZERO);
    let src = CachedSource::new(fake.clone(), DIGEST, Arc::clone(&tiers));
    src.read_exact_at(0, 10_000).await.unwrap();
    let blob = BlobId::from_digest(DIGEST);
    let layers = tiers.layers();
    assert_eq!(layers.len(), 1);
    assert_eq!((&layers[0].blob, layers[0].units), (&blob, 0));
    assert_eq!(tiers.memory_by_layer()[&blob], 12_288, "three 4 KiB units");
    tiers.purge(&blob).await;
    assert_eq!(tiers.memory_used(), 0);
    assert!(tiers.layers().is_empty());
    let before = fake.calls().len();
    src.read_exact_at(0, 10_000).await.unwrap();
    assert!(
        fake.calls().len() > before,
        "a purged unit is fetched again"
    );
}

/// Reads `units` (unit numbers of `unit` bytes) one by one through `src`, checking the bytes.
async fn read_units(src: &CachedSource, fake: &Fake, unit: usize, units: &[usize]) {
    for &u in units {
        let got = src.read_exact_at((u * unit) as u64, unit).await.unwrap();
        assert_eq!(&got[..], &fake.data[u * unit..(u + 1) * unit], "unit {u}");
    }
}

#[tokio::test]
async fn a_sequential_stream_is_fetched_ahead_in_few_requests() {
    let unit = 4096;
    let fake = Fake::new(64 * unit, Duration::from_millis(5));
    let tiers = CacheTiers::new(1 << 20, None, unit as u64).unwrap();
    let src = CachedSource::shared(
        Arc::clone(&fake) as Arc<dyn LayerSource>,
        DIGEST,
        Arc::clone(&tiers),
    );
    read_units(&src, &fake, unit, &(0..64).collect::<Vec<_>>()).await;
    let stats = tiers.stats();
    assert!(
        stats.source_requests <= 12,
        "64 units in {} requests: {:?}",
        stats.source_requests,
        fake.calls()
    );
    assert!(stats.readahead_units >= 48, "{stats:?}");
    // Nothing was fetched twice.
    let fetched: usize = fake.calls().iter().map(|c| c.1).sum();
    assert_eq!(fetched, 64 * unit);
}

#[tokio::test]
async fn random_reads_are_not_fetched_ahead() {
    let unit = 4096;
    let fake = Fake::new(64 * unit, Duration::from_millis(1));
    let tiers = CacheTiers::new(1 << 20, None, unit as u64).unwrap();
    let src = CachedSource::shared(
        Arc::clone(&fake) as Arc<dyn LayerSource>,
        DIGEST,
        Arc::clone(&tiers),
    );
    // Every unit once, in a stride-7 order: no read follows the one before.
    let order: Vec<usize> = (0..64).map(|i| (i * 7) % 64).collect();
    read_units(&src, &fake, unit, &order).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = tiers.stats();
    assert_eq!(stats.readahead_units, 0);
    assert_eq!(stats.source_requests, 64);
}

#[tokio::test]
async fn a_cached_stream_fetches_nothing_ahead() {
    let unit = 4096;
    let fake = Fake::new(32 * unit, Duration::ZERO);
    let tiers = CacheTiers::new(1 << 20, None, unit as u64).unwrap();
    let src = CachedSource::shared(
        Arc::clone(&fake) as Arc<dyn LayerSource>,
        DIGEST,
        Arc::clone(&tiers),
    );
    // All of it cached in one read, then a sequential stream over it.
    src.read_exact_at(0, 32 * unit).await.unwrap();
    fake.calls.lock().clear();
    read_units(&src, &fake, unit, &(0..32).collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert_eq!(tiers.stats().readahead_units, 0);
}

/// A background read of unit `index` (1 KiB units), spawned.
fn spawn_background(
    src: &Arc<CachedSource>,
    index: u64,
) -> tokio::task::JoinHandle<SourceResult<Bytes>> {
    let src = Arc::clone(src);
    tokio::spawn(async move { super::background(src.read_exact_at(index * 1024, 1024)).await })
}

/// A foreground read of unit `index` (1 KiB units), spawned.
fn spawn_foreground(
    src: &Arc<CachedSource>,
    index: u64,
) -> tokio::task::JoinHandle<SourceResult<Bytes>> {
    let src = Arc::clone(src);
    tokio::spawn(async move { src.read_exact_at(index * 1024, 1024).await })
}

async fn done(read: tokio::task::JoinHandle<SourceResult<Bytes>>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the read finishes")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_background_read_starts_no_fetch_while_a_foreground_one_is_in_flight() {
    let fake = Fake::held(8192);
    let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
    let src = Arc::new(cached(&fake, &tiers));
    let fg = spawn_foreground(&src, 0);
    fake.asked(1).await;
    let bg = spawn_background(&src, 4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.calls(), [(0, 1024)], "the background read waits");
    fake.release();
    assert_eq!(&done(fg).await[..], &fake.data[..1024]);
    fake.asked(2).await;
    assert_eq!(fake.calls()[1], (4096, 1024));
    fake.release();
    assert_eq!(&done(bg).await[..], &fake.data[4096..5120]);
    assert_eq!(tiers.stats().background_waits, 1);
}

#[tokio::test]
async fn a_foreground_read_never_waits_for_background_ones() {
    let fake = Fake::held(8192);
    let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
    let src = Arc::new(cached(&fake, &tiers));
    let bg = spawn_background(&src, 4);
    fake.asked(1).await;
    // The background fetch is on the wire; a foreground miss goes out beside it.
    let fg = spawn_foreground(&src, 0);
    fake.asked(2).await;
    // A foreground read of the unit the background fetch is bringing joins that fetch.
    let joined = spawn_foreground(&src, 4);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fake.calls(), [(4096, 1024), (0, 1024)]);
    fake.release();
    fake.release();
    assert_eq!(&done(fg).await[..], &fake.data[..1024]);
    assert_eq!(&done(bg).await[..], &fake.data[4096..5120]);
    assert_eq!(&done(joined).await[..], &fake.data[4096..5120]);
    let stats = tiers.stats();
    assert_eq!((stats.background_waits, stats.shared_fetches), (0, 1));
}

#[tokio::test]
async fn a_waiting_background_read_holds_no_claim() {
    let fake = Fake::held(8192);
    let tiers = CacheTiers::new(1 << 20, None, 1024).unwrap();
    let src = Arc::new(cached(&fake, &tiers));
    let first = spawn_foreground(&src, 0);
    fake.asked(1).await;
    let bg = spawn_background(&src, 4);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Had the waiting background read claimed unit 4, this read would wait behind it, and
    // behind the first foreground fetch with it.
    let second = spawn_foreground(&src, 4);
    fake.asked(2).await;
    assert_eq!(
        fake.calls()[1],
        (4096, 1024),
        "fetched by the foreground read itself"
    );
    fake.release();
    fake.release();
    assert_eq!(&done(first).await[..], &fake.data[..1024]);
    assert_eq!(&done(second).await[..], &fake.data[4096..5120]);
    assert_eq!(&done(bg).await[..], &fake.data[4096..5120]);
    assert_eq!(
        fake.calls().len(),
        2,
        "the background read found the unit fetched"
    );
    assert_eq!(tiers.stats().background_waits, 1);
}

#[tokio::test]
async fn background_reads_do_not_drive_read_ahead() {
    let unit = 4096;
    let fake = Fake::new(64 * unit, Duration::ZERO);
    let tiers = CacheTiers::new(1 << 20, None, unit as u64).unwrap();
    let src = CachedSource::shared(
        Arc::clone(&fake) as Arc<dyn LayerSource>,
        DIGEST,
        Arc::clone(&tiers),
    );
    super::background(read_units(&src, &fake, unit, &(0..16).collect::<Vec<_>>())).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(tiers.stats().readahead_units, 0);
    let fetched: usize = fake.calls().iter().map(|c| c.1).sum();
    assert_eq!(fetched, 16 * unit, "only what was read: {:?}", fake.calls());
}

//! Replaying a trace (spec `trace-prefetch.md` §5): the recorded reads are issued again in
//! the background, through the layers' normal read path, so their bytes land in the cache
//! before the guest asks for them. The data read is discarded.
//!
//! - **Order and workers.** [`replay`] spawns `concurrency` workers sharing one FIFO: each
//!   takes the next read in file order, so what was read first at the recorded start is
//!   fetched first.
//! - **Coalescing.** Consecutive `'R'` records of the same layer whose ranges touch or overlap
//!   are merged into one read of at most [`MAX_JOB`] (4 MiB): a start's many small reads
//!   become fewer, larger requests, and repeated reads of one range are issued once. Only
//!   neighbours in file order are merged, so the order is kept.
//! - **Bounded memory.** A read is issued in pieces of at most [`PIECE`] (1 MiB), one piece at
//!   a time per worker, so at most `concurrency × 1 MiB` of data is held whatever a record's
//!   `count` says. The queue is built lazily from the decoded records (a huge record is not
//!   split up front).
//! - **Bad records never panic.** Records that are not `'R'`, name an unknown layer, are empty
//!   or start at or past the layer's end are skipped; ranges running past the end are cut at
//!   it.
//! - **Errors.** A failed piece is logged (the first at `warn`, the rest at `debug`) and the
//!   rest of its read is dropped (its later pieces would most likely fail the same way); the
//!   workers go on with the next read.
//! - **Foreground first.** Reads run as background reads ([`crate::cache::background`]): on
//!   a registry-backed layer none starts a fetch while a read of the host's is fetching.
//! - **Cancellation.** The replay stops when its token is cancelled: workers check it before
//!   each piece and race it against the read in flight, which is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::trace::{Op, TraceRecord};
use crate::source::LayerSource;

/// Largest read issued at once, in bytes (and the data a worker holds at most).
pub const PIECE: u64 = 1 << 20;
/// Largest range consecutive records are merged into, in bytes.
pub const MAX_JOB: u64 = 4 << 20;
/// Workers when the settings do not say (`prefetchConfig.concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Most workers one replay runs, whatever the settings say.
pub const MAX_CONCURRENCY: usize = 256;

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records in the trace.
    pub records: u64,
    /// Records skipped: not `'R'`, an unknown layer, empty, or starting past the layer's end.
    pub skipped: u64,
    /// `'R'` records whose range was cut at the end of their layer.
    pub clipped: u64,
    /// Reads queued after coalescing (before splitting into pieces).
    pub jobs: u64,
    /// Pieces read successfully.
    pub reads: u64,
    /// Bytes read successfully.
    pub bytes: u64,
    /// Pieces that failed (or came back short).
    pub errors: u64,
    /// True when the replay was cancelled before it was done.
    pub cancelled: bool,
}

/// A range of one layer to read: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    layer: usize,
    start: u64,
    end: u64,
}

impl Job {
    fn len(&self) -> u64 {
        self.end - self.start
    }

    /// The union of `self` and `next` when they are of one layer, touch or overlap, and the
    /// union stays within [`MAX_JOB`].
    fn merge(&self, next: &Job) -> Option<Job> {
        let touching = next.start <= self.end && next.end >= self.start;
        let start = self.start.min(next.start);
        let end = self.end.max(next.end);
        (self.layer == next.layer && touching && end - start <= MAX_JOB).then_some(Job {
            layer: self.layer,
            start,
            end,
        })
    }
}

/// The FIFO the workers share: turns records into coalesced reads of at most [`MAX_JOB`], in
/// file order, one at a time.
struct Planner {
    records: std::vec::IntoIter<TraceRecord>,
    /// Size of each layer, by index.
    sizes: Vec<u64>,
    /// The read being built (or the rest of one larger than [`MAX_JOB`]).
    pending: Option<Job>,
    /// A usable record that did not merge into `pending`: the start of the next read.
    next: Option<Job>,
    stats: ReplayStats,
}

impl Planner {
    fn new(records: Vec<TraceRecord>, sizes: Vec<u64>) -> Planner {
        Planner {
            stats: ReplayStats {
                records: records.len() as u64,
                ..ReplayStats::default()
            },
            records: records.into_iter(),
            sizes,
            pending: None,
            next: None,
        }
    }

    /// The record's range, cut at its layer's end; `None` (counted as skipped) when it is not
    /// a read of a known layer inside it.
    fn usable(&mut self, r: &TraceRecord) -> Option<Job> {
        let size = match (r.op, self.sizes.get(r.layer as usize)) {
            (Op::Read, Some(&size)) if r.count > 0 && r.offset < size => size,
            _ => {
                self.stats.skipped += 1;
                return None;
            }
        };
        let end = match r.offset.checked_add(r.count) {
            Some(end) if end <= size => end,
            _ => {
                self.stats.clipped += 1;
                size
            }
        };
        Some(Job {
            layer: r.layer as usize,
            start: r.offset,
            end,
        })
    }

    /// The next read, in file order.
    fn pop(&mut self) -> Option<Job> {
        while !matches!(self.pending, Some(p) if p.len() >= MAX_JOB) {
            let candidate = match self.next.take() {
                Some(job) => job,
                None => match self.records.next() {
                    Some(r) => match self.usable(&r) {
                        Some(job) => job,
                        None => continue,
                    },
                    None => break,
                },
            };
            match self.pending {
                None => self.pending = Some(candidate),
                Some(p) => match p.merge(&candidate) {
                    Some(merged) => self.pending = Some(merged),
                    None => {
                        self.next = Some(candidate);
                        break;
                    }
                },
            }
        }
        let job = self.pending.take()?;
        self.stats.jobs += 1;
        if job.len() <= MAX_JOB {
            return Some(job);
        }
        let cut = job.start + MAX_JOB;
        self.pending = Some(Job { start: cut, ..job });
        Some(Job { end: cut, ..job })
    }
}

/// Counters the workers update.
#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// Starts replaying `records` against `sources` (index = layer index) with `concurrency`
/// workers (clamped to 1..=[`MAX_CONCURRENCY`]), until done or `cancel` is cancelled. The
/// task's result says what was done.
pub fn replay(
    records: Vec<TraceRecord>,
    sources: Vec<Arc<dyn LayerSource>>,
    concurrency: usize,
    cancel: CancellationToken,
) -> JoinHandle<ReplayStats> {
    let sizes = sources.iter().map(|s| s.size()).collect();
    let planner = Arc::new(Mutex::new(Planner::new(records, sizes)));
    let sources = Arc::new(sources);
    let counters = Arc::new(Counters::default());
    let workers = concurrency.clamp(1, MAX_CONCURRENCY);
    tokio::spawn(async move {
        let mut set = JoinSet::new();
        for _ in 0..workers {
            set.spawn(worker(
                Arc::clone(&planner),
                Arc::clone(&sources),
                Arc::clone(&counters),
                cancel.clone(),
            ));
        }
        while let Some(joined) = set.join_next().await {
            if let Err(e) = joined {
                tracing::warn!(error = %e, "a prefetch worker failed");
            }
        }
        let mut stats = planner.lock().stats;
        stats.reads = counters.reads.load(Ordering::Relaxed);
        stats.bytes = counters.bytes.load(Ordering::Relaxed);
        stats.errors = counters.errors.load(Ordering::Relaxed);
        stats.cancelled = cancel.is_cancelled();
        tracing::info!(?stats, "trace replay ended");
        stats
    })
}

/// One worker: reads jobs from the shared planner, piece by piece, until none is left or the
/// replay is cancelled.
async fn worker(
    planner: Arc<Mutex<Planner>>,
    sources: Arc<Vec<Arc<dyn LayerSource>>>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let Some(job) = planner.lock().pop() else {
            return;
        };
        // The planner only hands out jobs of known layers.
        let Some(source) = sources.get(job.layer) else {
            continue;
        };
        let mut at = job.start;
        while at < job.end {
            // At most PIECE (1 MiB), so the cast is lossless.
            let len = (job.end - at).min(PIECE) as usize;
            let read = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                read = crate::cache::background(source.read_exact_at(at, len)) => read,
            };
            match read {
                Ok(bytes) => {
                    counters.reads.fetch_add(1, Ordering::Relaxed);
                    counters
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let before = counters.errors.fetch_add(1, Ordering::Relaxed);
                    let layer = job.layer;
                    if before == 0 {
                        tracing::warn!(layer, offset = at, len, error = %e, "prefetch read failed (further failures are logged at debug)");
                    } else {
                        tracing::debug!(layer, offset = at, len, error = %e, "prefetch read failed");
                    }
                    break;
                }
            }
            at += len as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{BytesSource, SourceError, SourceResult, Span};
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A source of `size` zero bytes that logs every read, tracks how many are in flight,
    /// optionally waits `delay` per read, never answers when `hang`, and fails reads at
    /// `fail_at`.
    #[derive(Default)]
    struct Probe {
        size: u64,
        delay: Option<Duration>,
        hang: bool,
        fail_at: Option<u64>,
        reads: Mutex<Vec<(u64, usize)>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        dropped: AtomicUsize,
        started: tokio::sync::Notify,
        /// Reads not marked as background reads ([`crate::cache::background`]).
        foreground: AtomicUsize,
    }

    impl Probe {
        fn sized(size: u64) -> Probe {
            Probe {
                size,
                ..Probe::default()
            }
        }
        fn reads(&self) -> Vec<(u64, usize)> {
            let mut r = self.reads.lock().clone();
            r.sort();
            r
        }
    }

    /// Counts a read out of flight when dropped, finished or not.
    struct InFlight<'a>(&'a Probe, bool);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !self.1 {
                self.0.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[async_trait]
    impl LayerSource for Probe {
        fn size(&self) -> u64 {
            self.size
        }
        async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let mut guard = InFlight(self, false);
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            self.reads.lock().push((span.offset(), span.len()));
            if !crate::cache::read_path::is_background() {
                self.foreground.fetch_add(1, Ordering::SeqCst);
            }
            self.started.notify_one();
            if self.hang {
                std::future::pending::<()>().await;
            }
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            guard.1 = true;
            if self.fail_at == Some(span.offset()) {
                return Err(SourceError::Unavailable("probe failure".into()));
            }
            Ok(Bytes::from(vec![0; span.len()]))
        }
        fn describe(&self) -> String {
            "probe".into()
        }
    }

    fn r(layer: u32, offset: u64, count: u64) -> TraceRecord {
        TraceRecord::read(layer, offset, count)
    }

    async fn run(
        records: Vec<TraceRecord>,
        sources: Vec<Arc<dyn LayerSource>>,
        concurrency: usize,
    ) -> ReplayStats {
        tokio::time::timeout(
            Duration::from_secs(20),
            replay(records, sources, concurrency, CancellationToken::new()),
        )
        .await
        .expect("replay did not finish")
        .unwrap()
    }

    /// Whether every byte of `[start, end)` is covered by one of `reads`.
    fn covered(reads: &[(u64, usize)], start: u64, end: u64) -> bool {
        let mut at = start;
        for &(o, l) in reads {
            if o <= at && o + l as u64 > at {
                at = o + l as u64;
            }
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    #[tokio::test]
    async fn every_recorded_range_is_read_and_neighbours_are_merged() {
        let a = Arc::new(Probe::sized(64 << 20));
        let b = Arc::new(Probe::sized(1 << 20));
        let records = vec![
            r(0, 0, 4096),
            r(0, 4096, 4096),      // adjacent: merged
            r(0, 2048, 8192),      // overlapping: merged
            r(1, 512, 512),        // other layer
            r(0, 1 << 30, 4096),   // past the end: skipped
            r(0, 100 << 10, 4096), // a gap: a read of its own
            r(1, 1024, 4096),      // touches the last read of layer 1, but not its neighbour
            r(1, 1024, 4096),      // a repeat: merged
        ];
        let sources: Vec<Arc<dyn LayerSource>> = vec![a.clone(), b.clone()];
        let stats = run(records.clone(), sources, 4).await;
        assert_eq!(
            a.reads(),
            vec![(0, 10240), (100 << 10, 4096)],
            "layer 0 merged"
        );
        assert_eq!(b.reads(), vec![(512, 512), (1024, 4096)]);
        assert_eq!(stats.records, 8);
        assert_eq!(stats.skipped, 1);
        assert_eq!(stats.jobs, 4);
        assert_eq!(stats.reads, 4);
        assert_eq!(stats.bytes, 10240 + 4096 + 512 + 4096);
        assert_eq!((stats.errors, stats.cancelled), (0, false));
        let foreground = a.foreground.load(Ordering::SeqCst) + b.foreground.load(Ordering::SeqCst);
        assert_eq!(foreground, 0, "every replay read gives way to the host's");
        for rec in records.iter().filter(|rec| rec.offset < 64 << 20) {
            let reads = if rec.layer == 0 { a.reads() } else { b.reads() };
            assert!(
                covered(&reads, rec.offset, rec.offset + rec.count),
                "{rec:?}"
            );
        }
    }

    #[tokio::test]
    async fn merging_stops_at_four_mib_and_reads_are_pieces_of_one_mib() {
        let a = Arc::new(Probe::sized(64 << 20));
        // 24 consecutive 256 KiB reads: 6 MiB, merged into 4 MiB + 2 MiB.
        let records: Vec<_> = (0..24).map(|i| r(0, i * (256 << 10), 256 << 10)).collect();
        let stats = run(records, vec![a.clone()], 2).await;
        assert_eq!(stats.jobs, 2);
        let reads = a.reads();
        assert_eq!(reads.len(), 6);
        assert!(reads.iter().all(|&(_, l)| l as u64 == PIECE), "{reads:?}");
        assert!(covered(&reads, 0, 6 << 20));
    }

    #[tokio::test]
    async fn a_huge_count_is_clipped_and_read_in_pieces() {
        let size = (5 << 20) + 100;
        let a = Arc::new(Probe::sized(size));
        let records = vec![r(0, 100, u64::MAX), r(0, u64::MAX, 1)];
        let stats = run(records, vec![a.clone()], 3).await;
        assert_eq!((stats.clipped, stats.skipped), (1, 1));
        let reads = a.reads();
        assert!(reads.iter().all(|&(_, l)| l as u64 <= PIECE), "{reads:?}");
        assert_eq!(reads.len(), 5);
        assert!(covered(&reads, 100, size));
        assert_eq!(stats.bytes, size - 100);
        assert_eq!(stats.jobs, 2, "4 MiB, then the rest");
    }

    #[tokio::test]
    async fn unknown_layers_writes_and_odd_ops_are_skipped() {
        let a = Arc::new(Probe::sized(1 << 20));
        let mut w = r(0, 0, 512);
        w.op = Op::Write;
        let mut other = r(0, 512, 512);
        other.op = Op::Other(b'X');
        let records = vec![w, other, r(1, 0, 512), r(u32::MAX, 0, 512), r(0, 0, 0)];
        let stats = run(records, vec![a.clone()], 2).await;
        assert!(a.reads().is_empty());
        assert_eq!((stats.records, stats.skipped, stats.jobs), (5, 5, 0));
        let stats = run(vec![], vec![], 0).await;
        assert_eq!(stats, ReplayStats::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_bounded() {
        let a = Arc::new(Probe {
            delay: Some(Duration::from_millis(5)),
            ..Probe::sized(64 << 20)
        });
        // 40 reads far apart, so none merge.
        let records: Vec<_> = (0..40).map(|i| r(0, i * (1 << 20), 4096)).collect();
        let stats = run(records, vec![a.clone()], 3).await;
        assert_eq!(stats.reads, 40);
        assert_eq!(a.max_in_flight.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failures_are_counted_and_the_rest_of_the_read_dropped() {
        let a = Arc::new(Probe {
            fail_at: Some(1 << 20),
            ..Probe::sized(16 << 20)
        });
        // One 3 MiB read whose second piece fails, then another read.
        let records = vec![r(0, 0, 3 << 20), r(0, 8 << 20, 4096)];
        let stats = run(records, vec![a.clone()], 1).await;
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.reads, 2);
        assert_eq!(
            a.reads(),
            vec![(0, 1 << 20), (1 << 20, 1 << 20), (8 << 20, 4096)]
        );
    }

    #[tokio::test]
    async fn cancelling_stops_promptly_and_drops_reads_in_flight() {
        let a = Arc::new(Probe {
            hang: true,
            ..Probe::sized(64 << 20)
        });
        let records: Vec<_> = (0..100).map(|i| r(0, i * (1 << 20), 4096)).collect();
        let cancel = CancellationToken::new();
        let handle = replay(records, vec![a.clone()], 4, cancel.clone());
        while a.in_flight.load(Ordering::SeqCst) < 4 {
            a.started.notified().await;
        }
        cancel.cancel();
        let stats = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("replay did not stop")
            .unwrap();
        assert!(stats.cancelled);
        assert_eq!(stats.reads, 0);
        assert_eq!(a.reads().len(), 4, "no read started after the cancel");
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(a.dropped.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn reads_go_through_the_source_and_return_its_bytes() {
        let src: Arc<dyn LayerSource> = Arc::new(BytesSource::new(vec![9u8; 10_000], "mem"));
        let stats = run(vec![r(0, 9_000, 5_000)], vec![src], 16).await;
        assert_eq!((stats.reads, stats.bytes, stats.clipped), (1, 1_000, 1));
    }

    #[test]
    fn planner_keeps_file_order() {
        let mut p = Planner::new(
            vec![r(1, 0, 10), r(0, 0, 10), r(1, 10, 10), r(0, 10, 10)],
            vec![100, 100],
        );
        let order: Vec<_> = std::iter::from_fn(|| p.pop())
            .map(|j| (j.layer, j.start, j.end))
            .collect();
        assert_eq!(
            order,
            vec![(1, 0, 10), (0, 0, 10), (1, 10, 20), (0, 10, 20)]
        );
    }
}

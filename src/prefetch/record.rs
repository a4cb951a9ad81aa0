//! Recording a trace (spec `trace-prefetch.md` §4): a [`Recorder`] collects one record per
//! full read of a read-only layer, through a [`RecordingSource`] shim around each layer's
//! bytes, and writes the trace file when recording stops.
//!
//! Recording stops at the first of: `<trace>.lock` deleted (checked every
//! [`RecordOptions::lock_poll`], one second by default), [`RecordOptions::max_duration`]
//! elapsed, [`RecordOptions::max_records`] reached (the bound on the memory held, 24 bytes a
//! record), [`Recorder::stop`] / [`Recorder::finish`] called (the image holds a guard that
//! calls `stop` when the device is closed), or every handle of the recorder dropped (noticed
//! at the next lock poll). The trace is then written by a background task:
//! header with checksum 0, the records, the header again with the real checksum, fsync; then
//! `<trace>.lock` is deleted and an empty `<trace>.ok` created. If any write fails the trace
//! file is truncated to 0 and no `.ok` is created (the recording tool, which waits for it,
//! then reports the failure instead of packaging an empty trace).
//!
//! The time limit counts from the recorder's creation, or with
//! [`WindowStart::FirstReadAfterOpen`] from the first read after the device is open (the
//! daemon's learned traces, [`super::learn`]); such a recording closed before that read
//! writes nothing (see [`StopGuard`]).
//!
//! [`Recorder::start`] creates `<trace>.lock` exclusively. If it already exists another
//! device may be recording into the same file (or one crashed while recording): start fails
//! with `AlreadyExists` and the caller opens the device without recording, rather than have
//! two recorders overwrite each other's trace.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::trace::{self, TraceRecord, MAX_RECORDS};
use crate::source::{LayerSource, SourceResult, Span};

/// Default [`RecordOptions::max_records`]: 1 Mi records, a 24 MiB trace.
pub const DEFAULT_MAX_RECORDS: usize = 1 << 20;
const _: () = assert!(DEFAULT_MAX_RECORDS <= MAX_RECORDS);

/// Limits of one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOptions {
    /// Records kept at most; recording stops when this many are held. Clamped to
    /// [`trace::MAX_RECORDS`] so every trace written can be decoded.
    pub max_records: usize,
    /// Recording stops this long after the window opened ([`RecordOptions::window`]), if set.
    pub max_duration: Option<Duration>,
    /// When the [`RecordOptions::max_duration`] window opens.
    pub window: WindowStart,
    /// How often the presence of `<trace>.lock` is checked (§4.1: once a second).
    pub lock_poll: Duration,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            max_records: DEFAULT_MAX_RECORDS,
            max_duration: None,
            window: WindowStart::Creation,
            lock_poll: Duration::from_secs(1),
        }
    }
}

/// When the time limit of a recording starts counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowStart {
    /// When the recorder is created (before the layers are opened).
    #[default]
    Creation,
    /// At the first read recorded after [`Recorder::opened`] was called: a device that learns
    /// its trace is opened long before a host logs in and starts the container, and the
    /// window must cover that start, not the idle time before it. Reads before (the header
    /// and index reads of the open) are recorded all the same.
    FirstReadAfterOpen,
}
/// Why a recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `<trace>.lock` was deleted (the recording tool's signal).
    LockRemoved,
    /// [`RecordOptions::max_duration`] elapsed.
    TimeLimit,
    /// [`RecordOptions::max_records`] records were held.
    RecordLimit,
    /// [`Recorder::stop`] or [`Recorder::finish`] was called, or the device was closed.
    Stopped,
    /// [`Recorder::abandon`] was called (the device failed to open), or the device closed before
    /// a [`WindowStart::FirstReadAfterOpen`] window opened: nothing is written.
    Abandoned,
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOutcome {
    /// What stopped it.
    pub reason: StopReason,
    /// Records written to the trace (0 when abandoned or failed).
    pub records: usize,
    /// The write failure, if any (the trace file was then truncated to 0).
    pub error: Option<String>,
}

/// The records collected so far, and whether collection has stopped.
#[derive(Debug)]
struct State {
    records: Vec<TraceRecord>,
    stopped: Option<StopReason>,
}

/// One recording into one trace file. Shared (`Arc`) by the [`RecordingSource`] shims of an
/// image's layers and by the background task that watches the lock file and writes the trace.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    max_records: usize,
    state: Mutex<State>,
    /// Wakes the background task when recording stops for a reason other than the lock file.
    wake: CancellationToken,
    /// The outcome, once the background task is done.
    done: watch::Sender<Option<RecordOutcome>>,
    /// When the time limit starts counting.
    window: WindowStart,
    /// Set by [`Recorder::opened`]: the device is open, its next read opens the time window.
    opened: AtomicBool,
    /// Cancelled at the first read recorded after [`Recorder::opened`].
    first_read: CancellationToken,
}

impl Recorder {
    /// Starts recording into `path` (an existing empty file): creates `<path>.lock`
    /// exclusively and spawns the task that watches it and writes the trace when recording
    /// stops. Fails with `AlreadyExists` when the lock file exists (see the module doc).
    pub async fn start(path: &Path, options: RecordOptions) -> io::Result<Arc<Recorder>> {
        let lock = companion(path, ".lock");
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .await?;
        let recorder = Arc::new(Recorder {
            path: path.to_path_buf(),
            max_records: options.max_records.min(MAX_RECORDS),
            window: options.window,
            state: Mutex::new(State {
                records: Vec::new(),
                stopped: None,
            }),
            wake: CancellationToken::new(),
            done: watch::channel(None).0,
            opened: AtomicBool::new(false),
            first_read: CancellationToken::new(),
        });
        tokio::spawn(run(Arc::clone(&recorder), options));
        Ok(recorder)
    }

    /// The trace file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a read of `count` bytes at `offset` of layer `layer`, unless recording has
    /// stopped. Reaching the record limit stops recording.
    pub fn record(&self, layer: u32, offset: u64, count: u64) {
        let mut state = self.state.lock();
        if state.stopped.is_some() {
            return;
        }
        state.records.push(TraceRecord::read(layer, offset, count));
        // Checked before the token so a recording of an open device costs one load per read.
        if self.opened.load(Ordering::Relaxed) && !self.first_read.is_cancelled() {
            self.first_read.cancel();
        }
        if state.records.len() >= self.max_records {
            state.stopped = Some(StopReason::RecordLimit);
            self.wake.cancel();
        }
    }

    /// Marks the device as open: with [`WindowStart::FirstReadAfterOpen`], the next recorded
    /// read starts the time limit.
    pub fn opened(&self) {
        self.opened.store(true, Ordering::Relaxed);
    }

    /// The outcome once the trace is written (or failed), without waiting; `None` while
    /// recording or writing.
    pub fn written(&self) -> Option<RecordOutcome> {
        self.done.borrow().clone()
    }

    /// Whether records are still being collected.
    pub fn is_recording(&self) -> bool {
        self.state.lock().stopped.is_none()
    }

    /// How many records are held (before the trace is written; 0 after).
    pub fn len(&self) -> usize {
        self.state.lock().records.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops collecting for `reason` unless already stopped; the background task then writes
    /// the trace (or, for [`StopReason::Abandoned`], only removes the lock file).
    fn stop_for(&self, reason: StopReason) {
        let mut state = self.state.lock();
        if state.stopped.is_none() {
            state.stopped = Some(reason);
        }
        self.wake.cancel();
    }

    /// Stops recording; the trace is written in the background.
    pub fn stop(&self) {
        self.stop_for(StopReason::Stopped);
    }

    /// The device was closed: stops recording, and writes the trace unless the recording was
    /// to start its window at the first read after the open and no such read came. Such a
    /// trace would hold only the open's reads and, complete with its `.ok`, keep the start it
    /// was meant to capture from ever being recorded: it is abandoned instead (the trace file
    /// stays empty, so the next open records again).
    fn close(&self) {
        let unused =
            self.window == WindowStart::FirstReadAfterOpen && !self.first_read.is_cancelled();
        self.stop_for(match unused {
            true => StopReason::Abandoned,
            false => StopReason::Stopped,
        });
    }

    /// Stops recording without writing a trace (the device failed to open): the lock file is
    /// removed, the trace file is left as it was (empty) so a later open records again.
    pub fn abandon(&self) {
        self.stop_for(StopReason::Abandoned);
    }

    /// A guard that stops recording when dropped (held by the open device).
    pub fn stop_guard(self: &Arc<Self>) -> StopGuard {
        StopGuard(Arc::clone(self))
    }

    /// Stops recording and waits until the trace is written (or failed).
    pub async fn finish(&self) -> RecordOutcome {
        self.stop();
        self.outcome().await
    }

    /// Waits until recording has stopped and the trace is written (or failed), without
    /// stopping it.
    pub async fn outcome(&self) -> RecordOutcome {
        let mut rx = self.done.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let result = rx.wait_for(Option::is_some).await;
        match result.ok().and_then(|o| o.clone()) {
            Some(outcome) => outcome,
            None => RecordOutcome {
                reason: StopReason::Stopped,
                records: 0,
                error: Some("the recorder's task ended without an outcome".into()),
            },
        }
    }
}

/// Stops a [`Recorder`] when dropped (the device closed): the trace is then written in the
/// background, unless a window that opens at the first read after the open never opened.
#[derive(Debug)]
pub struct StopGuard(Arc<Recorder>);

impl StopGuard {
    /// The recorder this guard stops.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.0
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// `path` with `suffix` appended to its file name (`trace` → `trace.lock`).
pub fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The background task of a recording: waits for a stop, then writes the trace.
async fn run(recorder: Arc<Recorder>, options: RecordOptions) {
    let lock = companion(&recorder.path, ".lock");
    let mut deadline = match options.window {
        WindowStart::Creation => options
            .max_duration
            .map(|d| tokio::time::Instant::now() + d),
        WindowStart::FirstReadAfterOpen => None,
    };
    let poll = options.lock_poll.max(Duration::from_millis(1));
    loop {
        let time_limit = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // The window opens at the first read after the open, once.
        let window_opens = async {
            match (options.max_duration, deadline) {
                (Some(d), None) => {
                    recorder.first_read.cancelled().await;
                    d
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = recorder.wake.cancelled() => break,
            d = window_opens => {
                deadline = Some(tokio::time::Instant::now() + d);
            }
            _ = time_limit => {
                recorder.stop_for(StopReason::TimeLimit);
                break;
            }
            _ = tokio::time::sleep(poll) => {
                if Arc::strong_count(&recorder) == 1 {
                    // Every other holder (shims, guard) is gone: the recorder was dropped.
                    recorder.close();
                    break;
                }
                // An error other than "not found" (a transient one) keeps recording.
                if let Ok(false) = tokio::fs::try_exists(&lock).await {
                    recorder.stop_for(StopReason::LockRemoved);
                    break;
                }
            }
        }
    }
    let (records, reason) = {
        let mut state = recorder.state.lock();
        let reason = state.stopped.unwrap_or(StopReason::Stopped);
        (std::mem::take(&mut state.records), reason)
    };
    let outcome = if reason == StopReason::Abandoned {
        if let Err(e) = remove_if_present(&lock) {
            tracing::warn!(lock = %lock.display(), error = %e, "could not remove the trace lock file");
        }
        RecordOutcome {
            reason,
            records: 0,
            error: None,
        }
    } else {
        let count = records.len();
        let path = recorder.path.clone();
        let written = crate::sys::blocking(move || write_trace(&path, &records)).await;
        match written {
            Ok(()) => {
                tracing::info!(trace = %recorder.path.display(), records = count, ?reason, "trace recorded");
                RecordOutcome {
                    reason,
                    records: count,
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(trace = %recorder.path.display(), error = %e, ?reason, "could not write the trace");
                RecordOutcome {
                    reason,
                    records: 0,
                    error: Some(e.to_string()),
                }
            }
        }
    };
    recorder.done.send_replace(Some(outcome));
}

/// Removes `path`; a file already gone is fine.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `records` to the trace at `path` in the order of §4.3 and signals completion.
fn write_trace(path: &Path, records: &[TraceRecord]) -> io::Result<()> {
    conclude(path, write_records(path, records))
}

/// After the trace was written with `result`: on failure the trace is truncated to 0; either
/// way `<trace>.lock` is removed (recording is over); on success an empty `<trace>.ok` is
/// created. A lock that cannot be removed is logged, not a failure: the trace is whole.
fn conclude(path: &Path, result: io::Result<()>) -> io::Result<()> {
    if result.is_err() {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            // Best effort: the write already failed, this is cleanup.
            let _ = f.set_len(0);
        }
    }
    let lock = companion(path, ".lock");
    if let Err(e) = remove_if_present(&lock) {
        tracing::warn!(lock = %lock.display(), error = %e, "could not remove the trace lock file");
    }
    result?;
    std::fs::File::create(companion(path, ".ok"))?;
    Ok(())
}

/// Header with checksum 0, records, header with the checksum, fsync.
fn write_records(path: &Path, records: &[TraceRecord]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;

    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let body = trace::encode_records(records);
    file.write_all_at(&trace::header(records.len(), 0), 0)?;
    file.write_all_at(&body, trace::HEADER_SIZE as u64)?;
    let checksum = trace::checksum(&body);
    file.write_all_at(&trace::header(records.len(), checksum), 0)?;
    file.sync_all()
}

/// A read-only layer's bytes that record every full read into a [`Recorder`] (§4.2): what
/// the image reads through it, header and index reads at open included, becomes
/// `{'R', layer, count, offset}`. Failed or short reads are not recorded.
pub struct RecordingSource {
    inner: Arc<dyn LayerSource>,
    layer: u32,
    recorder: Arc<Recorder>,
}

impl RecordingSource {
    /// Records reads of `inner`, layer `layer` of the image, into `recorder`.
    pub fn new(inner: Arc<dyn LayerSource>, layer: u32, recorder: Arc<Recorder>) -> Self {
        RecordingSource {
            inner,
            layer,
            recorder,
        }
    }
}

impl std::fmt::Debug for RecordingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingSource")
            .field("inner", &self.inner.describe())
            .field("layer", &self.layer)
            .finish()
    }
}

#[async_trait]
impl LayerSource for RecordingSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        // The span was checked against our size, which is the inner source's.
        let bytes = self.inner.read_span(span).await?;
        if bytes.len() == span.len() {
            self.recorder
                .record(self.layer, span.offset(), span.len() as u64);
        }
        Ok(bytes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn invalidate(&self, offset: u64, len: u64) {
        self.inner.invalidate(offset, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{BytesSource, SourceError};

    fn options() -> RecordOptions {
        RecordOptions {
            lock_poll: Duration::from_millis(10),
            ..RecordOptions::default()
        }
    }

    /// An empty trace file in a fresh directory.
    fn empty_trace() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        std::fs::write(&path, b"").unwrap();
        (dir, path)
    }

    /// Answers reads with `answer` bytes (short or long), or fails when `answer` is `None`.
    struct Odd {
        answer: Option<usize>,
    }

    #[async_trait]
    impl LayerSource for Odd {
        fn size(&self) -> u64 {
            1 << 20
        }
        async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
            match self.answer {
                Some(n) => Ok(Bytes::from(vec![0; n])),
                None => Err(SourceError::corrupt(format!("refused {span:?}"))),
            }
        }
        fn describe(&self) -> String {
            "odd".into()
        }
    }

    fn mem(len: usize) -> Arc<dyn LayerSource> {
        Arc::new(BytesSource::new(vec![7u8; len], "mem"))
    }

    async fn await_outcome(recorder: &Recorder) -> RecordOutcome {
        tokio::time::timeout(Duration::from_secs(10), recorder.outcome())
            .await
            .expect("recording did not end")
    }

    #[tokio::test]
    async fn reads_through_the_shim_are_recorded_and_written() {
        let (_dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        assert!(companion(&path, ".lock").exists());
        let l0 = RecordingSource::new(mem(10_000), 0, Arc::clone(&recorder));
        let l2 = RecordingSource::new(mem(10_000), 2, Arc::clone(&recorder));
        assert_eq!(l0.read_exact_at(512, 100).await.unwrap().len(), 100);
        assert_eq!(l2.read_exact_at(0, 4096).await.unwrap(), vec![7u8; 4096]);
        // Empty and out-of-range reads never reach the shim's read_span.
        assert!(l0.read_exact_at(9_999, 0).await.unwrap().is_empty());
        assert!(l0.read_exact_at(9_999, 2).await.is_err());
        assert_eq!(l0.read_exact_at(9_000, 1_000).await.unwrap().len(), 1_000);
        assert_eq!(l0.size(), 10_000);
        assert_eq!(recorder.len(), 3);

        let outcome = recorder.finish().await;
        assert_eq!(
            outcome,
            RecordOutcome {
                reason: StopReason::Stopped,
                records: 3,
                error: None
            }
        );
        let expected = vec![
            TraceRecord::read(0, 512, 100),
            TraceRecord::read(2, 0, 4096),
            TraceRecord::read(0, 9_000, 1_000),
        ];
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(trace::decode(&bytes).unwrap(), expected);
        assert_eq!(bytes, trace::encode(&expected));
        assert!(!companion(&path, ".lock").exists());
        assert_eq!(std::fs::read(companion(&path, ".ok")).unwrap(), b"");
        // Reads after the stop are not recorded and nothing is rewritten.
        l0.read_exact_at(0, 10).await.unwrap();
        assert!(!recorder.is_recording());
        assert_eq!(recorder.finish().await.records, 3);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn short_long_and_failed_reads_are_not_recorded() {
        let (_dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        for answer in [Some(10), Some(30), None] {
            let shim = RecordingSource::new(Arc::new(Odd { answer }), 1, Arc::clone(&recorder));
            assert!(shim.read_exact_at(0, 20).await.is_err(), "{answer:?}");
        }
        let ok = RecordingSource::new(Arc::new(Odd { answer: Some(20) }), 1, recorder.clone());
        ok.read_exact_at(40, 20).await.unwrap();
        assert_eq!(recorder.finish().await.records, 1);
        assert_eq!(
            trace::decode(&std::fs::read(&path).unwrap()).unwrap(),
            vec![TraceRecord::read(1, 40, 20)]
        );
    }

    #[tokio::test]
    async fn deleting_the_lock_file_stops_and_writes_the_trace() {
        let (_dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        let shim = RecordingSource::new(mem(4096), 0, Arc::clone(&recorder));
        shim.read_exact_at(0, 4096).await.unwrap();
        std::fs::remove_file(companion(&path, ".lock")).unwrap();
        let outcome = await_outcome(&recorder).await;
        assert_eq!(outcome.reason, StopReason::LockRemoved);
        assert_eq!(outcome.records, 1);
        assert!(companion(&path, ".ok").exists());
        assert!(!companion(&path, ".lock").exists());
        shim.read_exact_at(0, 512).await.unwrap();
        assert_eq!(
            trace::decode(&std::fs::read(&path).unwrap()).unwrap(),
            vec![TraceRecord::read(0, 0, 4096)]
        );
    }

    #[tokio::test]
    async fn the_record_limit_stops_recording() {
        let (_dir, path) = empty_trace();
        let opts = RecordOptions {
            max_records: 5,
            ..options()
        };
        let recorder = Recorder::start(&path, opts).await.unwrap();
        let shim = RecordingSource::new(mem(4096), 3, Arc::clone(&recorder));
        for i in 0..8 {
            shim.read_exact_at(i * 8, 8).await.unwrap();
        }
        let outcome = await_outcome(&recorder).await;
        assert_eq!(outcome.reason, StopReason::RecordLimit);
        assert_eq!(outcome.records, 5);
        let records = trace::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[4], TraceRecord::read(3, 32, 8));
    }

    #[tokio::test]
    async fn the_time_limit_stops_recording() {
        let (_dir, path) = empty_trace();
        let opts = RecordOptions {
            max_duration: Some(Duration::from_millis(50)),
            lock_poll: Duration::from_secs(3600),
            ..options()
        };
        let recorder = Recorder::start(&path, opts).await.unwrap();
        let outcome = await_outcome(&recorder).await;
        assert_eq!(outcome.reason, StopReason::TimeLimit);
        assert_eq!(trace::decode(&std::fs::read(&path).unwrap()).unwrap(), []);
        assert!(companion(&path, ".ok").exists());
    }

    #[tokio::test]
    async fn a_window_from_the_first_read_after_open_starts_there() {
        let (_dir, path) = empty_trace();
        let opts = RecordOptions {
            max_duration: Some(Duration::from_millis(100)),
            window: WindowStart::FirstReadAfterOpen,
            lock_poll: Duration::from_secs(3600),
            ..options()
        };
        let recorder = Recorder::start(&path, opts).await.unwrap();
        // Reads of the open do not start the window...
        recorder.record(0, 0, 512);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(recorder.is_recording());
        // ...nor does the open itself, or time...
        recorder.opened();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(recorder.is_recording());
        // ...the first read after it does.
        recorder.record(1, 4096, 512);
        let outcome = await_outcome(&recorder).await;
        assert_eq!(outcome.reason, StopReason::TimeLimit);
        assert_eq!(outcome.records, 2);
        assert_eq!(recorder.written(), Some(outcome));
        assert!(companion(&path, ".ok").exists());
    }

    #[tokio::test]
    async fn closing_before_the_window_opened_writes_nothing() {
        let (_dir, path) = empty_trace();
        let opts = RecordOptions {
            max_duration: Some(Duration::from_secs(60)),
            window: WindowStart::FirstReadAfterOpen,
            ..options()
        };
        let recorder = Recorder::start(&path, opts.clone()).await.unwrap();
        recorder.record(0, 0, 512);
        recorder.opened();
        drop(recorder.stop_guard());
        let outcome = await_outcome(&recorder).await;
        assert_eq!(outcome.reason, StopReason::Abandoned);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(!companion(&path, ".ok").exists());
        assert!(!companion(&path, ".lock").exists());
        // Once read after the open, closing writes what was recorded.
        let recorder = Recorder::start(&path, opts.clone()).await.unwrap();
        recorder.opened();
        recorder.record(0, 4096, 512);
        drop(recorder.stop_guard());
        assert_eq!(await_outcome(&recorder).await.records, 1);
        assert!(companion(&path, ".ok").exists());
        // An explicit stop writes whatever was read.
        std::fs::write(&path, b"").unwrap();
        let recorder = Recorder::start(&path, opts).await.unwrap();
        recorder.record(0, 0, 512);
        recorder.opened();
        assert_eq!(recorder.finish().await.records, 1);
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_recording() {
        let (_dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        let guard = recorder.stop_guard();
        recorder.record(0, 0, 1);
        assert!(recorder.is_recording());
        drop(guard);
        assert!(!recorder.is_recording());
        assert_eq!(await_outcome(&recorder).await.records, 1);
    }

    #[tokio::test]
    async fn dropping_every_handle_stops_recording() {
        let (_dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        let shim = RecordingSource::new(mem(4096), 1, Arc::clone(&recorder));
        shim.read_exact_at(512, 512).await.unwrap();
        drop((recorder, shim));
        let ok = companion(&path, ".ok");
        for _ in 0..1000 {
            if ok.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok.exists());
        assert_eq!(
            trace::decode(&std::fs::read(&path).unwrap()).unwrap(),
            vec![TraceRecord::read(1, 512, 512)]
        );
    }

    #[tokio::test]
    async fn an_existing_lock_file_refuses_a_second_recorder() {
        let (_dir, path) = empty_trace();
        let first = Recorder::start(&path, options()).await.unwrap();
        let err = Recorder::start(&path, options()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        first.record(1, 2, 3);
        assert_eq!(first.finish().await.records, 1);
    }

    #[tokio::test]
    async fn abandoning_removes_the_lock_and_leaves_the_trace_empty() {
        let (_dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        recorder.record(0, 0, 4096);
        recorder.abandon();
        let outcome = await_outcome(&recorder).await;
        assert_eq!(outcome.reason, StopReason::Abandoned);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert!(!companion(&path, ".lock").exists());
        assert!(!companion(&path, ".ok").exists());
        // A later open records again.
        let again = Recorder::start(&path, options()).await.unwrap();
        assert_eq!(again.finish().await.records, 0);
    }

    #[tokio::test]
    async fn a_failed_write_truncates_and_creates_no_ok_file() {
        let (dir, path) = empty_trace();
        let recorder = Recorder::start(&path, options()).await.unwrap();
        recorder.record(0, 0, 4096);
        // A directory where the trace file was: opening it for writing fails.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let outcome = recorder.finish().await;
        assert!(outcome.error.is_some(), "{outcome:?}");
        assert_eq!(outcome.records, 0);
        assert!(!companion(&path, ".ok").exists());
        assert!(!companion(&path, ".lock").exists());
        drop(dir);
    }

    #[test]
    fn a_write_failure_truncates_the_trace() {
        let (_dir, path) = empty_trace();
        std::fs::write(&path, trace::encode(&[TraceRecord::read(0, 0, 1)])).unwrap();
        std::fs::write(companion(&path, ".lock"), b"").unwrap();
        let err = conclude(&path, Err(io::Error::other("disk full"))).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(!companion(&path, ".lock").exists());
        assert!(!companion(&path, ".ok").exists());
        conclude(&path, Ok(())).unwrap();
        assert!(companion(&path, ".ok").exists());
    }

    #[test]
    fn companions_append_to_the_file_name() {
        assert_eq!(
            companion(Path::new("/w/trace.bin"), ".lock"),
            PathBuf::from("/w/trace.bin.lock")
        );
    }
}

//! Trace-based prefetch (spec `trace-prefetch.md`): record which bytes of which layer a
//! container start reads, and replay those reads at later starts so the bytes are in the
//! cache before the guest asks for them.
//!
//! # Design
//!
//! The unit of a trace is a read of a layer's *uncompressed LSMT blob*, the bytes every
//! [`LayerSource`] of a lower layer exposes after tar unwrapping and ZFile decoding. Recording
//! and replay therefore sit exactly there, between the layer opener and [`SealedLayer`]:
//!
//! - [`trace`] is the file format (§3), sans-IO: encode, decode with every check of §3.3, a
//!   size cap so a hostile file cannot make us allocate without bound, and the binary vs
//!   file-list classification of §2.1.
//! - [`record`]: while recording, each lower's source is wrapped in a [`RecordingSource`]
//!   that appends a record to a shared [`Recorder`] for every full read, header and index
//!   reads at open included. The recorder watches `<trace>.lock`, enforces its limits (time,
//!   record count = memory) and writes the trace in the background when it stops: the open
//!   device holds a [`StopGuard`], so closing the device ends the recording.
//! - [`replay`]: after the device is open, a spawned task with `prefetchConfig.concurrency`
//!   workers re-reads the recorded ranges through the same sources the device reads (so ZFile
//!   CRC checks, the cache tiers and the registry client all apply), coalescing neighbouring
//!   records, in pieces of at most 1 MiB, discarding the data. The device holds a
//!   [`DropGuard`] of its cancellation token: closing the device abandons the replay.
//!
//! [`Mode::select`] applies the decision table of §2 to an image config, [`load`] reads a
//! trace file with its size checked before the bytes are read, and [`Prefetch`] is what an
//! open image keeps (the guard of its recording or of its replay).
//!
//! Prefetch is best effort everywhere: a trace that cannot be read, decoded or recorded is
//! logged and the device opens without it; replay failures are logged and ignored.
//!
//! An acceleration layer without a local `dir` (a config made from a registry reference,
//! where the layer is only a blob in the registry, or a `file` naming the layer's tar) is read
//! as a blob: [`Mode::ReplayLayerBlob`] has the image's opener fetch the layer's raw bytes
//! (bounded by [`MAX_LAYER_BLOB`], through the cache like any registry blob), and
//! [`load_layer_blob`] takes the file `trace` out of the tar
//! ([`crate::registry::acceleration`]) and decodes it.
//!
//! Not yet supported: Dynamic mode (a file list instead of a binary trace, §6), which is
//! logged and skipped.
//!
//! [`LayerSource`]: crate::source::LayerSource
//! [`SealedLayer`]: crate::overlaybd::SealedLayer

pub mod learn;
pub mod record;
pub mod replay;
pub mod trace;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use tokio_util::sync::{CancellationToken, DropGuard};

pub use record::{
    RecordOptions, RecordOutcome, Recorder, RecordingSource, StopGuard, StopReason, WindowStart,
};
pub use replay::{replay, ReplayStats, DEFAULT_CONCURRENCY};
pub use trace::{FileKind, Op, TraceError, TraceRecord};

use crate::overlaybd::ImageConfig;
pub use crate::registry::acceleration::{ExtractError, MAX_LAYER_BLOB};
use crate::source::LayerSource;

/// What an image does about prefetch at open, from its config (§2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Nothing: no trace configured, the file is missing, or the acceleration layer's trace
    /// is empty.
    Off,
    /// Record into this existing, empty file (`recordTracePath`).
    Record(PathBuf),
    /// Replay the trace (or, for a file list, prefetch the files) in this non-empty file.
    Replay(PathBuf),
    /// Replay the trace in the acceleration layer's blob (the last lower has no `dir`, §7):
    /// the layer is located like any lower (`file`, then the registry) and its raw bytes,
    /// a tar, are read ([`load_layer_blob`]).
    ReplayLayerBlob,
}

impl Mode {
    /// Applies §2's decision table. The acceleration layer's trace is `<dir>/trace` of the
    /// last lower; an acceleration layer without `dir` but with a `file` or `digest` is read
    /// as a blob ([`Mode::ReplayLayerBlob`]): the snapshotter always gives a `dir` (the
    /// unpacked layer), configs made from a registry reference never do.
    /// Setting both inputs is refused by the caller (config validation, `Image::open`); here
    /// the acceleration layer wins. A path that exists but is not a regular file, or cannot
    /// be examined, is logged and means no prefetch.
    pub async fn select(config: &ImageConfig) -> Mode {
        let (path, accelerated) = if config.acceleration_layer {
            match config.lowers.last() {
                Some(l) if !l.dir.is_empty() => (Path::new(&l.dir).join("trace"), true),
                Some(l) if !l.file.is_empty() || !l.digest.is_empty() => {
                    return Mode::ReplayLayerBlob
                }
                _ => {
                    tracing::warn!(
                        "the acceleration layer has no `dir`, `file` or `digest`; no prefetch"
                    );
                    return Mode::Off;
                }
            }
        } else if !config.record_trace_path.is_empty() {
            (PathBuf::from(&config.record_trace_path), false)
        } else {
            return Mode::Off;
        };
        match tokio::fs::metadata(&path).await {
            Ok(m) if !m.is_file() => {
                tracing::warn!(trace = %path.display(), "the prefetch trace is not a regular file; no prefetch");
                Mode::Off
            }
            Ok(m) if m.len() == 0 && accelerated => Mode::Off,
            Ok(m) if m.len() == 0 => Mode::Record(path),
            Ok(_) => Mode::Replay(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Mode::Off,
            Err(e) => {
                tracing::warn!(trace = %path.display(), error = %e, "cannot examine the prefetch trace; no prefetch");
                Mode::Off
            }
        }
    }
}

/// What a prefetch file holds once read (§2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceFile {
    /// No bytes.
    Empty,
    /// A valid binary trace, its records in file order.
    Binary(Vec<TraceRecord>),
    /// A list of paths (Dynamic mode, §6); its contents are not read.
    FileList,
}

/// Why a prefetch file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file starts like a binary trace but fails its checks (§3.3).
    #[error("{0}")]
    Trace(#[from] TraceError),
    /// The acceleration layer blob holds no usable trace file (too large, not a tar, no
    /// `trace` in it).
    #[error("{0}")]
    Layer(#[from] ExtractError),
}

/// Classifies and, for a binary trace, decodes the whole prefetch file `bytes` (§2.1, §3).
pub fn parse(bytes: &[u8]) -> Result<TraceFile, TraceError> {
    match trace::classify(&bytes[..bytes.len().min(trace::HEADER_SIZE)]) {
        FileKind::Empty => Ok(TraceFile::Empty),
        FileKind::FileList => Ok(TraceFile::FileList),
        FileKind::Binary => Ok(TraceFile::Binary(trace::decode(bytes)?)),
    }
}

/// Reads the acceleration layer blob `blob` (a tar, §7) and the prefetch file `trace` in it.
/// A blob over [`MAX_LAYER_BLOB`] is refused before anything is read, and it is read in
/// pieces, so memory stays bounded by that size.
pub async fn load_layer_blob(blob: &dyn LayerSource) -> Result<TraceFile, LoadError> {
    /// Bytes per read of the blob.
    const PIECE: u64 = 4 << 20;
    let size = blob.size();
    if size > MAX_LAYER_BLOB {
        return Err(ExtractError::TooLarge {
            size,
            max: MAX_LAYER_BLOB,
        }
        .into());
    }
    // At most MAX_LAYER_BLOB (checked above), so the casts are lossless.
    let mut bytes = Vec::with_capacity(size as usize);
    while (bytes.len() as u64) < size {
        let len = (size - bytes.len() as u64).min(PIECE) as usize;
        let piece = blob
            .read_exact_at(bytes.len() as u64, len)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        bytes.extend_from_slice(&piece);
    }
    let trace = crate::registry::acceleration::extract_trace(&bytes)?;
    drop(bytes);
    Ok(parse(&trace)?)
}

/// Reads the prefetch file at `path`: classifies it from its first 24 bytes, and for a binary
/// trace checks the header and the file's size before reading the records, so at most
/// 24 + [`trace::MAX_DATA_SIZE`] bytes are ever read.
pub async fn load(path: &Path) -> Result<TraceFile, LoadError> {
    let path = path.to_path_buf();
    crate::sys::run_blocking(move || load_blocking(&path)).await?
}

fn load_blocking(path: &Path) -> Result<TraceFile, LoadError> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = Vec::with_capacity(trace::HEADER_SIZE);
    (&mut file)
        .take(trace::HEADER_SIZE as u64)
        .read_to_end(&mut head)?;
    match trace::classify(&head) {
        FileKind::Empty => Ok(TraceFile::Empty),
        FileKind::FileList => Ok(TraceFile::FileList),
        FileKind::Binary => {
            let data_size = trace::check_header(&head)?;
            let expected = trace::HEADER_SIZE as u64 + data_size;
            if len != expected {
                return Err(TraceError::SizeMismatch { len, expected }.into());
            }
            // At most 24 + 64 MiB (checked above); one byte more reveals a file that grew.
            let mut bytes = head;
            bytes.reserve_exact(data_size as usize);
            file.take(data_size + 1).read_to_end(&mut bytes)?;
            Ok(TraceFile::Binary(trace::decode(&bytes)?))
        }
    }
}

/// What an open image keeps of its prefetch: dropping it (closing the device) stops the
/// recording, whose trace is then written, or abandons the replay.
#[derive(Debug)]
pub struct Prefetch(Active);

#[derive(Debug)]
enum Active {
    Recording(StopGuard),
    /// Held for its drop, which cancels the replay.
    Replaying {
        _cancel: DropGuard,
        /// What [`PrefetchHandle`]s report; they hold it weakly, so it lives as long as the
        /// replay's owner.
        info: Arc<ReplayInfo>,
    },
}

/// What is replayed: the trace's name and its record count.
#[derive(Debug)]
struct ReplayInfo {
    name: String,
    records: usize,
}

/// A weak view of an open image's prefetch, for the management API: it reports the state
/// and can end a recording, but does not keep the image (or its replay) alive.
#[derive(Debug, Clone)]
pub struct PrefetchHandle(Handle);

#[derive(Debug, Clone)]
enum Handle {
    Recording(Weak<Recorder>),
    Replaying(Weak<ReplayInfo>),
}

/// What a device does about prefetch, as the management API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchState {
    /// Neither recording nor replaying (or the device is gone).
    None,
    /// Recording into `path` (or writing the trace once stopped); `records` held so far.
    Recording {
        /// The trace file.
        path: PathBuf,
        /// Records held so far.
        records: usize,
    },
    /// The recording ended and its trace was written (`records` of them) or failed.
    Recorded {
        /// The trace file.
        path: PathBuf,
        /// Records written (0 when the write failed).
        records: usize,
        /// The write failure, if any.
        error: Option<String>,
    },
    /// Replaying the trace `name` of `records` records.
    Replaying {
        /// The trace file, or the acceleration layer blob, as logs name it.
        name: String,
        /// Records in the trace.
        records: usize,
    },
}

impl PrefetchHandle {
    /// The recorder, while its device is open (or its trace is being written).
    pub fn recorder(&self) -> Option<Arc<Recorder>> {
        match &self.0 {
            Handle::Recording(r) => r.upgrade(),
            Handle::Replaying(_) => None,
        }
    }

    /// The current state.
    pub fn state(&self) -> PrefetchState {
        match &self.0 {
            Handle::Recording(weak) => match weak.upgrade() {
                None => PrefetchState::None,
                // Until the trace is written (or failed) it is still being recorded: a
                // stopped recording is only "recorded" once its file is complete.
                Some(r) => match r.written() {
                    None => PrefetchState::Recording {
                        path: r.path().to_path_buf(),
                        records: r.len(),
                    },
                    Some(outcome) => PrefetchState::Recorded {
                        path: r.path().to_path_buf(),
                        records: outcome.records,
                        error: outcome.error,
                    },
                },
            },
            Handle::Replaying(weak) => match weak.upgrade() {
                None => PrefetchState::None,
                Some(info) => PrefetchState::Replaying {
                    name: info.name.clone(),
                    records: info.records,
                },
            },
        }
    }
}

impl Prefetch {
    /// Starts a recording into the empty file `path` (§4), before the layers are opened.
    /// `None`, logged, when it cannot start (e.g. another recorder holds `<path>.lock`).
    pub async fn start_recording(path: &Path) -> Option<Arc<Recorder>> {
        Prefetch::start_recording_with(path, RecordOptions::default()).await
    }

    /// [`Prefetch::start_recording`] with the limits of `options`.
    pub async fn start_recording_with(
        path: &Path,
        options: RecordOptions,
    ) -> Option<Arc<Recorder>> {
        match Recorder::start(path, options).await {
            Ok(recorder) => {
                tracing::info!(trace = %path.display(), "recording a prefetch trace");
                Some(recorder)
            }
            Err(e) => {
                tracing::warn!(trace = %path.display(), error = %e, "cannot record a prefetch trace; opening without");
                None
            }
        }
    }

    /// What the open device keeps of `recorder`: recording stops when it is dropped.
    pub fn recording(recorder: &Arc<Recorder>) -> Prefetch {
        Prefetch(Active::Recording(recorder.stop_guard()))
    }

    /// Loads the prefetch file at `path` and, for a binary trace, starts replaying it over
    /// `sources` (index = layer index) with `workers` workers (0: replay is off). `None`,
    /// logged, when there is nothing to replay.
    pub async fn replay_file(
        path: &Path,
        sources: Vec<Arc<dyn LayerSource>>,
        workers: usize,
    ) -> Option<Prefetch> {
        let loaded = load(path).await;
        Prefetch::replay_loaded(&path.display().to_string(), loaded, sources, workers)
    }

    /// Starts replaying `loaded`, the prefetch file named `name` in logs (a path, or the
    /// acceleration layer blob), when it is a valid binary trace, as [`Prefetch::replay_file`]
    /// does. Must be called within a Tokio runtime.
    pub fn replay_loaded(
        name: &str,
        loaded: Result<TraceFile, LoadError>,
        sources: Vec<Arc<dyn LayerSource>>,
        workers: usize,
    ) -> Option<Prefetch> {
        let records = match loaded {
            Ok(TraceFile::Binary(records)) => records,
            Ok(TraceFile::Empty) => return None,
            Ok(TraceFile::FileList) => {
                tracing::info!(trace = name, "the prefetch file is a file list (Dynamic mode), not supported yet; no prefetch");
                return None;
            }
            Err(e) => {
                tracing::warn!(trace = name, error = %e, "unusable prefetch trace; no prefetch");
                return None;
            }
        };
        if workers == 0 {
            tracing::info!(
                trace = name,
                "prefetchConfig.concurrency is 0; the trace is not replayed"
            );
            return None;
        }
        tracing::info!(
            trace = name,
            records = records.len(),
            workers,
            "replaying the prefetch trace"
        );
        let info = Arc::new(ReplayInfo {
            name: name.to_string(),
            records: records.len(),
        });
        let cancel = CancellationToken::new();
        // Detached: the task ends when done or when the guard below is dropped.
        drop(replay(records, sources, workers, cancel.clone()));
        Some(Prefetch(Active::Replaying {
            _cancel: cancel.drop_guard(),
            info,
        }))
    }

    /// A weak handle reporting this prefetch's state (see [`PrefetchHandle`]).
    pub fn handle(&self) -> PrefetchHandle {
        PrefetchHandle(match &self.0 {
            Active::Recording(guard) => Handle::Recording(Arc::downgrade(guard.recorder())),
            Active::Replaying { info, .. } => Handle::Replaying(Arc::downgrade(info)),
        })
    }

    /// The recorder, while the device records a trace.
    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        match &self.0 {
            Active::Recording(guard) => Some(guard.recorder()),
            Active::Replaying { .. } => None,
        }
    }

    /// True when the device replays a trace.
    pub fn is_replaying(&self) -> bool {
        matches!(self.0, Active::Replaying { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlaybd::config::LowerLayer;

    fn config(record: &Path) -> ImageConfig {
        ImageConfig {
            lowers: vec![LowerLayer {
                file: "/l0".into(),
                ..LowerLayer::default()
            }],
            record_trace_path: record.display().to_string(),
            ..ImageConfig::default()
        }
    }

    fn accelerated(dir: &Path) -> ImageConfig {
        ImageConfig {
            lowers: vec![
                LowerLayer {
                    file: "/l0".into(),
                    ..LowerLayer::default()
                },
                LowerLayer {
                    dir: dir.display().to_string(),
                    ..LowerLayer::default()
                },
            ],
            acceleration_layer: true,
            ..ImageConfig::default()
        }
    }

    #[tokio::test]
    async fn the_decision_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        assert_eq!(Mode::select(&ImageConfig::default()).await, Mode::Off);
        // recordTracePath: missing, empty, non-empty, a directory.
        assert_eq!(Mode::select(&config(&path)).await, Mode::Off);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            Mode::select(&config(&path)).await,
            Mode::Record(path.clone())
        );
        std::fs::write(&path, b"/usr/bin\n").unwrap();
        assert_eq!(
            Mode::select(&config(&path)).await,
            Mode::Replay(path.clone())
        );
        assert_eq!(Mode::select(&config(dir.path())).await, Mode::Off);
        // accelerationLayer: `<last dir>/trace` non-empty, empty, missing.
        assert_eq!(
            Mode::select(&accelerated(dir.path())).await,
            Mode::Replay(path.clone())
        );
        std::fs::write(&path, b"").unwrap();
        assert_eq!(Mode::select(&accelerated(dir.path())).await, Mode::Off);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(Mode::select(&accelerated(dir.path())).await, Mode::Off);
        // Without `dir`, a registry blob or a local tar is read as the layer's blob.
        let mut no_dir = accelerated(dir.path());
        no_dir.lowers[1] = LowerLayer {
            digest: format!("sha256:{}", "a".repeat(64)),
            ..LowerLayer::default()
        };
        assert_eq!(Mode::select(&no_dir).await, Mode::ReplayLayerBlob);
        no_dir.lowers[1] = LowerLayer {
            file: "/accel.tar".into(),
            ..LowerLayer::default()
        };
        assert_eq!(Mode::select(&no_dir).await, Mode::ReplayLayerBlob);
        no_dir.lowers[1] = LowerLayer::default();
        assert_eq!(Mode::select(&no_dir).await, Mode::Off);
    }

    #[tokio::test]
    async fn loading_classifies_and_checks_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        let records = vec![TraceRecord::read(0, 4096, 512)];
        std::fs::write(&path, trace::encode(&records)).unwrap();
        assert_eq!(load(&path).await.unwrap(), TraceFile::Binary(records));
        std::fs::write(&path, b"").unwrap();
        assert_eq!(load(&path).await.unwrap(), TraceFile::Empty);
        std::fs::write(&path, b"/usr/bin/containerd\n").unwrap();
        assert_eq!(load(&path).await.unwrap(), TraceFile::FileList);
        // A header claiming more than the cap is refused from its 24 bytes.
        let mut huge = trace::header(0, 0);
        huge[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, huge).unwrap();
        assert!(matches!(
            load(&path).await,
            Err(LoadError::Trace(TraceError::TooLarge { .. }))
        ));
        // A file whose size disagrees with its header.
        let mut short = trace::encode(&[TraceRecord::read(0, 0, 1)]);
        short.pop();
        std::fs::write(&path, &short).unwrap();
        assert!(matches!(
            load(&path).await,
            Err(LoadError::Trace(TraceError::SizeMismatch { .. }))
        ));
        assert!(matches!(
            load(&dir.path().join("missing")).await,
            Err(LoadError::Io(_))
        ));
    }

    #[tokio::test]
    async fn the_trace_of_a_layer_blob_is_read_bounded_and_checked() {
        use crate::registry::acceleration::layer_tar;
        use crate::source::BytesSource;
        let records = vec![TraceRecord::read(1, 8192, 4096), TraceRecord::read(0, 0, 1)];
        let blob = BytesSource::new(layer_tar(&trace::encode(&records)), "accel");
        assert_eq!(
            load_layer_blob(&blob).await.unwrap(),
            TraceFile::Binary(records)
        );
        let list = BytesSource::new(layer_tar(b"/usr/bin/containerd\n"), "accel");
        assert_eq!(load_layer_blob(&list).await.unwrap(), TraceFile::FileList);
        let damaged = BytesSource::new(
            layer_tar(b"\x20\x18\xEF\xC2 but this is not a trace at all"),
            "accel",
        );
        assert!(matches!(
            load_layer_blob(&damaged).await,
            Err(LoadError::Trace(_))
        ));
        let not_tar = BytesSource::new(vec![9u8; 4096], "accel");
        assert!(matches!(
            load_layer_blob(&not_tar).await,
            Err(LoadError::Layer(ExtractError::BadTar(_)))
        ));
        // A blob over the bound is refused from its size, without reading it.
        struct Huge;
        #[async_trait::async_trait]
        impl LayerSource for Huge {
            fn size(&self) -> u64 {
                MAX_LAYER_BLOB + 1
            }
            async fn read_span(
                &self,
                _: crate::source::Span,
            ) -> crate::source::SourceResult<bytes::Bytes> {
                panic!("a blob over the bound must not be read")
            }
            fn describe(&self) -> String {
                "huge".into()
            }
        }
        assert!(matches!(
            load_layer_blob(&Huge).await,
            Err(LoadError::Layer(ExtractError::TooLarge { .. }))
        ));
    }

    #[tokio::test]
    async fn handles_report_the_state_without_keeping_it_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        std::fs::write(&path, b"").unwrap();
        let recorder = Recorder::start(&path, RecordOptions::default())
            .await
            .unwrap();
        let prefetch = Prefetch::recording(&recorder);
        let handle = prefetch.handle();
        recorder.record(0, 0, 512);
        assert_eq!(
            handle.state(),
            PrefetchState::Recording {
                path: path.clone(),
                records: 1
            }
        );
        assert_eq!(handle.recorder().unwrap().finish().await.records, 1);
        assert_eq!(
            handle.state(),
            PrefetchState::Recorded {
                path: path.clone(),
                records: 1,
                error: None
            }
        );
        drop((prefetch, recorder));
        // The recorder's task holds it until its trace is written, which it is.
        for _ in 0..100 {
            if handle.state() == PrefetchState::None {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(handle.state(), PrefetchState::None);
        assert!(handle.recorder().is_none());

        let source: Arc<dyn LayerSource> =
            Arc::new(crate::source::BytesSource::new(vec![0u8; 4096], "mem"));
        std::fs::write(&path, trace::encode(&[TraceRecord::read(0, 0, 512)])).unwrap();
        let replaying = Prefetch::replay_file(&path, vec![source], 2).await.unwrap();
        let handle = replaying.handle();
        assert_eq!(
            handle.state(),
            PrefetchState::Replaying {
                name: path.display().to_string(),
                records: 1
            }
        );
        assert!(handle.recorder().is_none());
        drop(replaying);
        assert_eq!(handle.state(), PrefetchState::None);
    }

    #[tokio::test]
    async fn replay_file_starts_only_for_a_valid_binary_trace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        let source: Arc<dyn LayerSource> =
            Arc::new(crate::source::BytesSource::new(vec![0u8; 4096], "mem"));
        std::fs::write(&path, b"/usr/bin\n").unwrap();
        assert!(Prefetch::replay_file(&path, vec![source.clone()], 4)
            .await
            .is_none());
        std::fs::write(&path, b"\x20\x18\xEF\xC2 but not a trace at all").unwrap();
        assert!(Prefetch::replay_file(&path, vec![source.clone()], 4)
            .await
            .is_none());
        std::fs::write(&path, trace::encode(&[TraceRecord::read(0, 0, 512)])).unwrap();
        assert!(Prefetch::replay_file(&path, vec![source.clone()], 0)
            .await
            .is_none());
        let p = Prefetch::replay_file(&path, vec![source], 4).await.unwrap();
        assert!(p.is_replaying() && p.recorder().is_none());
    }
}

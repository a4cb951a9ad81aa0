//! Self-learning traces: a daemon that serves an image without a trace of its own records the
//! first start's reads into a local store and replays them at later opens of the same image.
//!
//! The store is a folder, `traces/` beside the daemon's state file, holding one trace per
//! image, `<key>.trace`, named by [`learn_key`]: a digest of the identities of the image's
//! data layers (registry digests when the config has them, else a local layer file's path,
//! size and modification time). The files follow the recording protocol of
//! `trace-prefetch.md` §4: while a device records, `<key>.trace.lock` exists; a complete
//! trace has an empty `<key>.trace.ok` beside it.
//!
//! [`LearnStore::plan`] makes the decision at open ([`Learn`]):
//!
//! - a non-empty trace with its `.ok` is replayed;
//! - a `.lock` means another device of this daemon is learning the image right now (locks of
//!   a previous run are removed by [`LearnStore::prepare`] at start): that open neither
//!   records nor replays, rather than have two recorders write one file;
//! - anything else (no trace, an empty one, one without `.ok` that a crash cut short) is
//!   (re)started from an empty file and recorded.
//!
//! The image then opens with `recordTracePath` set to the trace, so the ordinary Record or
//! Replay mode of [`super::Mode::select`] runs; a recording uses [`LearnStore::record_options`],
//! whose time window opens at the device's first read after the open, not at the open.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::record::{companion, RecordOptions, WindowStart};
use crate::overlaybd::config::LayerLocation;
use crate::overlaybd::ImageConfig;

/// The default recording window of a learned trace (`learn_seconds`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// What to do about an image's learned trace at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learn {
    /// Replay this complete trace.
    Replay(PathBuf),
    /// Record into this (now empty) file.
    Record(PathBuf),
    /// Another device is learning this image (its `.lock` exists): neither.
    Busy(PathBuf),
}

impl Learn {
    /// The trace file.
    pub fn path(&self) -> &Path {
        match self {
            Learn::Replay(p) | Learn::Record(p) | Learn::Busy(p) => p,
        }
    }
}

/// The folder of learned traces and the recording window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnStore {
    dir: PathBuf,
    window: Duration,
}

impl LearnStore {
    /// The store in `dir`, recording `window` from the first read after open.
    pub fn new(dir: impl Into<PathBuf>, window: Duration) -> LearnStore {
        LearnStore {
            dir: dir.into(),
            window,
        }
    }

    /// The store `traces/` in the folder of the state file `state`.
    pub fn beside(state: &Path, window: Duration) -> LearnStore {
        let parent = match state.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        LearnStore::new(parent.join("traces"), window)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The recording window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Creates the folder (0700) and removes the `.lock` files a previous run left: at start
    /// no device of this daemon records yet, so every lock is stale (a crash, a kill), and
    /// left alone it would keep its image from ever learning. Returns how many were removed.
    pub fn prepare(&self) -> io::Result<usize> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".trace.lock") {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// The trace file of the image whose key is `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.trace"))
    }

    /// The limits of a learning recording: the default record cap, and the window of
    /// [`LearnStore::window`] from the first read after the open.
    pub fn record_options(&self) -> RecordOptions {
        RecordOptions {
            max_duration: Some(self.window),
            window: WindowStart::FirstReadAfterOpen,
            ..RecordOptions::default()
        }
    }

    /// The decision for the image `config` (`config_file` names it in logs): `None` when the
    /// image does not learn (it has an acceleration layer or a `recordTracePath` of its own,
    /// no layers, or a layer that cannot be identified), or the store cannot be used (logged).
    pub async fn plan(&self, config: &ImageConfig, config_file: &str) -> Option<Learn> {
        if config.acceleration_layer || !config.record_trace_path.is_empty() {
            return None;
        }
        let store = self.clone();
        let config = config.clone();
        let name = config_file.to_string();
        let planned = crate::sys::run_blocking(move || {
            let Some(key) = learn_key(&config, &name) else {
                return Ok(None);
            };
            store.decide(&store.path_of(&key)).map(Some)
        })
        .await;
        match planned {
            Ok(Ok(learn)) => learn,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(store = %self.dir.display(), image = config_file, error = %e, "cannot use the learned trace store; no learning");
                None
            }
        }
    }

    /// The decision for the trace file `path` (see the module doc); for [`Learn::Record`] the
    /// file is left empty, without `.ok`.
    pub fn decide(&self, path: &Path) -> io::Result<Learn> {
        let lock = companion(path, ".lock");
        let ok = companion(path, ".ok");
        if exists(&lock)? {
            return Ok(Learn::Busy(path.to_path_buf()));
        }
        let len = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => Some(m.len()),
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a regular file",
                    path.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if len.is_some_and(|n| n > 0) && exists(&ok)? {
            return Ok(Learn::Replay(path.to_path_buf()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // An `.ok` without a trace (or beside an empty one) would make the half-written file of
        // a crash look complete later.
        match std::fs::remove_file(&ok) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Learn::Record(path.to_path_buf()))
    }
}

/// Whether `path` exists; errors other than "not found" are errors.
fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key of an image's learned trace: the SHA-256 (hex) of the identities of its data
/// layers, bottom first (the acceleration layer and the writable layer are left out: a trace
/// names reads of the data layers only). A layer is identified by its registry digest when
/// the config gives one, else by its local file's absolute path, size and modification time
/// (so a rebuilt file learns anew). `None` when there are no data layers or a local one cannot
/// be examined. Blocking (it examines local files).
pub fn learn_key(config: &ImageConfig, config_file: &str) -> Option<String> {
    let lowers = config.data_lowers();
    if lowers.is_empty() {
        return None;
    }
    let mut hash = Sha256::new();
    hash.update(b"overlaybd-target learned trace v1\n");
    for (i, l) in lowers.iter().enumerate() {
        let line = if !l.digest.is_empty() {
            format!("digest {}\n", l.digest)
        } else {
            match config.locate(i, config_file).ok()? {
                LayerLocation::Remote { digest, .. } => format!("digest {digest}\n"),
                LayerLocation::Local(path) => {
                    let path = std::path::absolute(&path).unwrap_or(path);
                    let meta = std::fs::metadata(&path).ok()?;
                    format!(
                        "file {} {} {}.{}\n",
                        path.display(),
                        meta.len(),
                        meta.mtime(),
                        meta.mtime_nsec()
                    )
                }
            }
        };
        hash.update(line.as_bytes());
    }
    Some(hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlaybd::config::LowerLayer;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn registry(digests: &[String]) -> ImageConfig {
        ImageConfig {
            repo_blob_url: "https://reg.example.com/v2/app/blobs".into(),
            lowers: digests
                .iter()
                .map(|d| LowerLayer {
                    digest: d.clone(),
                    size: 4096,
                    ..LowerLayer::default()
                })
                .collect(),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn the_key_is_the_data_layers_identity() {
        let a = registry(&[digest('a'), digest('b')]);
        let key = learn_key(&a, "c").unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        // Stable, and only the data layers count.
        assert_eq!(learn_key(&a.clone(), "other").unwrap(), key);
        let mut upper = a.clone();
        upper.result_file = "/tmp/result".into();
        assert_eq!(learn_key(&upper, "c").unwrap(), key);
        // Order and content matter.
        assert_ne!(
            learn_key(&registry(&[digest('b'), digest('a')]), "c").unwrap(),
            key
        );
        assert_ne!(learn_key(&registry(&[digest('a')]), "c").unwrap(), key);
        // The acceleration layer is not data.
        let mut accel = registry(&[digest('a'), digest('b'), digest('c')]);
        accel.acceleration_layer = true;
        assert_eq!(learn_key(&accel, "c").unwrap(), key);
        // No layers: no key.
        assert_eq!(learn_key(&ImageConfig::default(), "c"), None);
    }

    #[test]
    fn local_layers_are_keyed_by_path_size_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer.obd");
        std::fs::write(&file, b"one").unwrap();
        let config = ImageConfig {
            lowers: vec![LowerLayer {
                file: file.display().to_string(),
                ..LowerLayer::default()
            }],
            ..ImageConfig::default()
        };
        let key = learn_key(&config, "c").unwrap();
        assert_eq!(learn_key(&config, "c").unwrap(), key);
        std::fs::write(&file, b"longer").unwrap();
        assert_ne!(learn_key(&config, "c").unwrap(), key);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(learn_key(&config, "c"), None);
    }

    #[test]
    fn the_decision_replays_records_or_stays_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = LearnStore::new(dir.path().join("traces"), DEFAULT_WINDOW);
        let path = store.path_of("k");
        let ok = companion(&path, ".ok");
        let lock = companion(&path, ".lock");
        // Missing: recorded, into a new empty file in a new 0700 folder.
        assert_eq!(store.decide(&path).unwrap(), Learn::Record(path.clone()));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let mode = std::fs::metadata(store.dir()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Empty with `.ok` (an empty `.ok` of a failed write is not trusted): recorded again.
        std::fs::write(&ok, b"").unwrap();
        assert_eq!(store.decide(&path).unwrap(), Learn::Record(path.clone()));
        assert!(!ok.exists());
        // Written but without `.ok` (cut short): recorded again, from an empty file.
        std::fs::write(&path, b"partial").unwrap();
        assert_eq!(store.decide(&path).unwrap(), Learn::Record(path.clone()));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        // Complete: replayed, untouched.
        std::fs::write(&path, b"trace").unwrap();
        std::fs::write(&ok, b"").unwrap();
        assert_eq!(store.decide(&path).unwrap(), Learn::Replay(path.clone()));
        assert_eq!(std::fs::read(&path).unwrap(), b"trace");
        // Being recorded: neither.
        std::fs::write(&lock, b"").unwrap();
        assert_eq!(store.decide(&path).unwrap(), Learn::Busy(path.clone()));
        // A stale lock is removed at start; other files stay.
        assert_eq!(store.prepare().unwrap(), 1);
        assert!(!lock.exists() && ok.exists() && path.exists());
        assert_eq!(store.decide(&path).unwrap(), Learn::Replay(path.clone()));
        // Not a regular file: an error, nothing learned.
        let odd = store.path_of("dir");
        std::fs::create_dir(&odd).unwrap();
        assert!(store.decide(&odd).is_err());
    }

    #[tokio::test]
    async fn images_with_their_own_trace_do_not_learn() {
        let dir = tempfile::tempdir().unwrap();
        let store = LearnStore::beside(&dir.path().join("state.json"), DEFAULT_WINDOW);
        assert_eq!(store.dir(), dir.path().join("traces"));
        let plain = registry(&[digest('a')]);
        let key = learn_key(&plain, "c").unwrap();
        assert_eq!(
            store.plan(&plain, "c").await,
            Some(Learn::Record(store.path_of(&key)))
        );
        let mut own = plain.clone();
        own.record_trace_path = "/x/trace".into();
        assert_eq!(store.plan(&own, "c").await, None);
        let mut accel = registry(&[digest('a'), digest('b')]);
        accel.acceleration_layer = true;
        assert_eq!(store.plan(&accel, "c").await, None);
        assert_eq!(store.plan(&ImageConfig::default(), "c").await, None);
        let options = store.record_options();
        assert_eq!(options.max_duration, Some(DEFAULT_WINDOW));
        assert_eq!(options.window, WindowStart::FirstReadAfterOpen);
    }
}

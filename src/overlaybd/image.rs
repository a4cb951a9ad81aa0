//! An overlaybd image as a block device: read-only layers merged into a [`LayerStack`], topped
//! by an optional [`WritableLayer`] that takes all writes and discards (spec `lsmt.md` §9.7).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;

use super::config::{ImageConfig, LayerLocation};
use super::error::{LsmtError, LsmtResult};
use super::index::{Record, SECTOR};
use super::layer::SealedLayer;
use super::stack::{read_virtual, LayerStack, ZEROS};
use super::writable::WritableLayer;
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, BlockStatus, Provisioning};
use crate::cache::file::FileSource;
use crate::cache::settings::DownloadConfig;
use crate::cache::{RemoteLayer, RemoteLayers};
use crate::prefetch::{self, Mode, Prefetch, RecordingSource};
use crate::source::LayerSource;
use crate::zfile::{open_payload, BlobFormat, Payload, ZFileError};

/// Longest run [`BlockDevice::block_status`] reports at once; bounds the work per call.
const STATUS_WINDOW_SECTORS: u64 = 1 << 21; // 1 GiB

/// Turns a located lower layer into its (decompressed) bytes: local file, ZFile, registry blob.
#[async_trait]
pub trait LayerOpener: Send + Sync {
    /// Opens lower layer `index` of `config` found at `location`.
    async fn open(
        &self,
        config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>>;

    /// Workers replaying a device's prefetch trace (`prefetchConfig.concurrency`,
    /// `trace-prefetch.md` §5); 0 turns replay off.
    fn prefetch_workers(&self) -> usize {
        prefetch::DEFAULT_CONCURRENCY
    }

    /// The raw bytes of lower `index` of `config` found at `location`, neither tar-unwrapped
    /// nor decompressed: the acceleration layer, a tar holding the prefetch trace
    /// (`trace-prefetch.md` §7). This default reads local files and refuses registry blobs.
    async fn open_raw(
        &self,
        _config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        match location {
            LayerLocation::Local(path) => {
                let file = FileSource::open(path)
                    .await
                    .map_err(|e| LsmtError::io(path.display().to_string(), e))?;
                Ok(Arc::new(file))
            }
            LayerLocation::Remote { url, .. } => Err(not_local(index, url)),
        }
    }
}

/// The refusal of openers that read local files only, for registry blob `url` at lower `index`.
fn not_local(index: usize, url: &str) -> LsmtError {
    LsmtError::Unsupported(format!(
        "lowers[{index}] is a registry blob ({url}); this opener reads local files only"
    ))
}

/// An opener whose trace replay uses `workers` workers (`prefetchConfig.concurrency`) and
/// otherwise opens layers as `opener` does: gives local-only images the daemon's setting,
/// which [`LocalOpener`] itself does not know.
#[derive(Debug, Clone, Copy)]
pub struct WithPrefetchWorkers<O> {
    /// The opener of the layers.
    pub opener: O,
    /// Replay workers; 0 turns replay off.
    pub workers: usize,
}

#[async_trait]
impl<O: LayerOpener> LayerOpener for WithPrefetchWorkers<O> {
    async fn open(
        &self,
        config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        self.opener.open(config, index, location).await
    }

    fn prefetch_workers(&self) -> usize {
        self.workers
    }

    async fn open_raw(
        &self,
        config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        self.opener.open_raw(config, index, location).await
    }
}

/// Opens lower layers stored locally: a file, tar-unwrapped and ZFile-decompressed when
/// needed. Registry blobs are refused; a registry-aware opener handles those.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalOpener;

impl LocalOpener {
    /// The uncompressed LSMT bytes of the layer file at `path`.
    pub async fn open_path(path: &Path) -> LsmtResult<Arc<dyn LayerSource>> {
        let (name, payload) = Self::payload(path).await?;
        payload
            .decompressed()
            .await
            .map_err(|e| zfile_error(&name, e))
    }

    /// The file at `path` (named for errors) with its format detected.
    async fn payload(path: &Path) -> LsmtResult<(String, Payload)> {
        let name = path.display().to_string();
        let file = FileSource::open(path)
            .await
            .map_err(|e| LsmtError::io(&name, e))?;
        let payload = open_payload(Arc::new(file))
            .await
            .map_err(|e| zfile_error(&name, e))?;
        Ok((name, payload))
    }

    /// Opens and validates the sealed layer file at `path`.
    pub async fn open_layer(path: &Path) -> LsmtResult<SealedLayer> {
        SealedLayer::open(Self::open_path(path).await?).await
    }

    /// Opens the file at `path` as a one-layer image: a sealed layer blob (plain, ZFile or
    /// tar-wrapped), read-only. A file that is none of these is refused saying what was
    /// expected, not with whatever a JSON or LSMT parser makes of it.
    pub async fn open_blob_image(path: &Path) -> LsmtResult<Image> {
        let (name, payload) = Self::payload(path).await?;
        if payload.format == BlobFormat::Unknown {
            return Err(LsmtError::Corrupt {
                file: name,
                reason: "neither an image config (config.v1.json) nor an overlaybd layer \
                         blob (ZFile or LSMT, plain or in a tar)"
                    .into(),
            });
        }
        let source = payload
            .decompressed()
            .await
            .map_err(|e| zfile_error(&name, e))?;
        let layer = SealedLayer::open(source).await?;
        Image::new(LayerStack::new(vec![layer])?, None).await
    }
}

#[async_trait]
impl LayerOpener for LocalOpener {
    async fn open(
        &self,
        _config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        match location {
            LayerLocation::Local(path) => Self::open_path(path).await,
            LayerLocation::Remote { url, .. } => Err(not_local(index, url)),
        }
    }
}

/// The daemon's opener: local files as [`LocalOpener`] does, registry blobs through the cache
/// tiers (and P2P proxy, background download) of [`RemoteLayers`]. Either way the bytes are
/// tar-unwrapped and ZFile-decompressed as needed.
#[async_trait]
impl LayerOpener for RemoteLayers {
    async fn open(
        &self,
        config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        let (url, digest, size, dir) = match location {
            LayerLocation::Local(path) => return LocalOpener::open_path(path).await,
            LayerLocation::Remote {
                url,
                digest,
                size,
                dir,
            } => (url, digest, size, dir),
        };
        let layer = RemoteLayer {
            repo_blob_url: &config.repo_blob_url,
            digest,
            size: Some(*size).filter(|&s| s != 0),
            dir: dir.as_deref(),
            download: config.download.as_ref(),
        };
        let blob = RemoteLayers::open(self, &layer)
            .await
            .map_err(|e| LsmtError::io(format!("lowers[{index}] ({url})"), e))?;
        // Source errors already name the blob URL; name the layer around them.
        decompressed(blob, &format!("lowers[{index}]")).await
    }

    fn prefetch_workers(&self) -> usize {
        self.settings().prefetch_config.workers()
    }

    /// A registry blob through the routes and cache tiers of [`RemoteLayers::open`], without
    /// background download (the one user, the acceleration layer, is read once and whole).
    async fn open_raw(
        &self,
        config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        let (url, digest, size) = match location {
            LayerLocation::Local(_) => return LocalOpener.open_raw(config, index, location).await,
            LayerLocation::Remote {
                url, digest, size, ..
            } => (url, digest, size),
        };
        let no_download = DownloadConfig {
            enable: false,
            ..DownloadConfig::default()
        };
        let layer = RemoteLayer {
            repo_blob_url: &config.repo_blob_url,
            digest,
            size: Some(*size).filter(|&s| s != 0),
            dir: None,
            download: Some(&no_download),
        };
        RemoteLayers::open(self, &layer)
            .await
            .map_err(|e| LsmtError::io(format!("lowers[{index}] ({url})"), e))
    }
}

/// The prefetch file in the acceleration layer blob of `config` (its last lower), named for
/// logs. Any failure to locate, fetch or read it is returned for the caller to log: the
/// device opens without prefetch, never fails because of its trace.
async fn acceleration_trace(
    config: &ImageConfig,
    config_file: &str,
    opener: &dyn LayerOpener,
) -> (String, Result<prefetch::TraceFile, prefetch::LoadError>) {
    let index = config.lowers.len().saturating_sub(1);
    let named = |what: &str| format!("{config_file}: lowers[{index}] ({what})");
    if config
        .lowers
        .get(index)
        .is_some_and(|l| l.size > prefetch::MAX_LAYER_BLOB)
    {
        let size = config.lowers[index].size;
        let err = prefetch::ExtractError::TooLarge {
            size,
            max: prefetch::MAX_LAYER_BLOB,
        };
        return (named("acceleration layer"), Err(err.into()));
    }
    let location = match config.locate(index, config_file) {
        Ok(location) => location,
        Err(e) => {
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string());
            return (named("acceleration layer"), Err(e.into()));
        }
    };
    let name = match &location {
        LayerLocation::Local(path) => named(&path.display().to_string()),
        LayerLocation::Remote { url, .. } => named(url),
    };
    let loaded = match opener.open_raw(config, index, &location).await {
        Ok(blob) => prefetch::load_layer_blob(blob.as_ref()).await,
        Err(e) => Err(std::io::Error::other(e.to_string()).into()),
    };
    (name, loaded)
}

/// Removes a tar wrapper and decompresses a ZFile, naming `name` in errors. A registry blob
/// whose wrapper, header or jump table fails its checks may hold bytes damaged in transit and
/// kept by the cache, so its cached bytes are dropped and the open is tried once more.
async fn decompressed(blob: Arc<dyn LayerSource>, name: &str) -> LsmtResult<Arc<dyn LayerSource>> {
    /// One open; a payload that is neither ZFile nor LSMT counts as failed checks too (a
    /// damaged tar header hides the ZFile behind it).
    async fn attempt(
        blob: Arc<dyn LayerSource>,
        last: bool,
    ) -> Result<Arc<dyn LayerSource>, ZFileError> {
        let payload = open_payload(blob).await?;
        if payload.format == BlobFormat::Unknown && !last {
            return Err(ZFileError::NotZFile("neither a ZFile nor an LSMT file"));
        }
        payload.decompressed().await
    }
    let result = match attempt(Arc::clone(&blob), false).await {
        Err(ZFileError::Source(e)) => Err(ZFileError::Source(e)),
        Err(first) => {
            tracing::warn!(blob = name, error = %first, "layer blob failed its checks; refetching once");
            blob.invalidate(0, blob.size()).await;
            attempt(blob, true).await
        }
        ok => ok,
    };
    result.map_err(|e| zfile_error(name, e))
}

/// A failed unwrap or ZFile open of layer `name`: the source's own failure keeps its kind,
/// a finding of the format makes the layer corrupt.
fn zfile_error(name: &str, e: ZFileError) -> LsmtError {
    match e {
        ZFileError::Source(e) => LsmtError::source(name, e),
        other => LsmtError::corrupt(name, other.to_string()),
    }
}

/// A stack of read-only layers with an optional writable layer on top.
#[derive(Debug)]
pub struct Image {
    stack: LayerStack,
    upper: Option<WritableLayer>,
    size: u64,
    /// Serialises the writes that fill part of a sparse layer's allocation unit from the
    /// layers below (read, merge, write): two of them in one unit must not lose each other.
    unit_fill: tokio::sync::Mutex<()>,
    /// The trace being recorded or replayed for this device, if any: dropping the image
    /// (closing the device) ends the recording, whose trace is then written, or the replay.
    prefetch: Option<Prefetch>,
}

impl Image {
    /// Assembles an image. A writable layer with virtual size 0 takes the stack's size, which is
    /// written into its headers (§6.6).
    pub async fn new(stack: LayerStack, upper: Option<WritableLayer>) -> LsmtResult<Self> {
        let size = match &upper {
            Some(u) if u.virtual_size() == 0 && stack.virtual_size() != 0 => {
                u.set_virtual_size(stack.virtual_size()).await?;
                stack.virtual_size()
            }
            Some(u) => u.virtual_size(),
            None => stack.virtual_size(),
        };
        // The device exposes whole sectors only.
        let size = size - size % SECTOR;
        Ok(Image {
            stack,
            upper,
            size,
            unit_fill: tokio::sync::Mutex::new(()),
            prefetch: None,
        })
    }

    /// Opens the image a config describes; `config_file` names the config in errors. Lowers are
    /// opened concurrently through `opener`. This is the plain open of tools (inspect, export,
    /// push...): a `recordTracePath` or acceleration-layer trace is neither recorded nor
    /// replayed, which only the device's owner does ([`Image::open_loaded`]).
    pub async fn open(
        config: &ImageConfig,
        config_file: &str,
        opener: &dyn LayerOpener,
    ) -> LsmtResult<Self> {
        Image::open_with(config, config_file, opener, None).await
    }

    /// [`Image::open`], with the trace prefetch of `trace-prefetch.md` §2 when `prefetch`:
    /// recording wraps each lower's bytes in a [`RecordingSource`] before the layer is opened
    /// (so header and index reads are recorded too) and suppresses background download (§4.4);
    /// replay starts once the image is open. Either is tied to the image's lifetime. A
    /// recording has the limits of `prefetch` (`None`: no prefetch at all).
    async fn open_with(
        config: &ImageConfig,
        config_file: &str,
        opener: &dyn LayerOpener,
        prefetch: Option<prefetch::RecordOptions>,
    ) -> LsmtResult<Self> {
        if config.acceleration_layer && !config.record_trace_path.is_empty() {
            return Err(LsmtError::Config {
                file: config_file.into(),
                field: "recordTracePath".into(),
                reason: "cannot be combined with accelerationLayer".into(),
            });
        }
        let mode = match prefetch {
            Some(_) => Mode::select(config).await,
            None => Mode::Off,
        };
        let recorder = match (&mode, prefetch) {
            (Mode::Record(path), Some(options)) => {
                Prefetch::start_recording_with(path, options).await
            }
            _ => None,
        };
        let recording_config;
        let config = match recorder {
            Some(_) => {
                // No background download while recording (§4.4).
                recording_config = ImageConfig {
                    download: Some(DownloadConfig {
                        enable: false,
                        ..DownloadConfig::default()
                    }),
                    ..config.clone()
                };
                &recording_config
            }
            None => config,
        };
        // The acceleration layer's blob is fetched while the layers open: one more round trip
        // to the registry, hidden behind theirs.
        let from_blob = mode == Mode::ReplayLayerBlob;
        let layer_trace = async {
            match from_blob {
                true => Some(acceleration_trace(config, config_file, opener).await),
                false => None,
            }
        };
        let (opened, layer_trace) = tokio::join!(
            Image::open_layers(config, config_file, opener, recorder.as_ref()),
            layer_trace
        );
        let mut image = match opened {
            Ok(image) => image,
            Err(e) => {
                if let Some(recorder) = &recorder {
                    // A later open records again into the still empty trace.
                    recorder.abandon();
                }
                return Err(e);
            }
        };
        // Trace layer indexes count from the bottom, stack tags from the top.
        let sources = || {
            (image.stack.layers_top_first().iter().rev())
                .map(|l| Arc::clone(l.source()))
                .collect()
        };
        let workers = opener.prefetch_workers();
        if let Some(recorder) = &recorder {
            // The open's own reads are recorded; a window that starts at the first read after
            // the open starts with the next one.
            recorder.opened();
        }
        image.prefetch = match (mode, layer_trace) {
            (Mode::Record(_), _) => recorder.as_ref().map(Prefetch::recording),
            (Mode::Replay(path), _) => Prefetch::replay_file(&path, sources(), workers).await,
            (Mode::ReplayLayerBlob, Some((name, loaded))) => {
                Prefetch::replay_loaded(&name, loaded, sources(), workers)
            }
            (Mode::ReplayLayerBlob | Mode::Off, _) => None,
        };
        Ok(image)
    }

    /// Opens the layers and the writable layer; with `recorder`, each lower's reads are
    /// recorded under its index.
    async fn open_layers(
        config: &ImageConfig,
        config_file: &str,
        opener: &dyn LayerOpener,
        recorder: Option<&Arc<prefetch::Recorder>>,
    ) -> LsmtResult<Self> {
        let lowers = config.data_lowers();
        for (i, l) in lowers.iter().enumerate() {
            if l.is_turbo_oci() {
                return Err(LsmtError::Config {
                    file: config_file.into(),
                    field: format!("lowers[{i}].targetFile"),
                    reason: "TurboOCI layers are not supported".into(),
                });
            }
        }
        let opening = (0..lowers.len()).map(|i| async move {
            let location = config.locate(i, config_file)?;
            let mut source = opener.open(config, i, &location).await?;
            if let Some(recorder) = recorder {
                // At most MAX_LAYERS (255) lowers, so the index fits.
                let layer = u32::try_from(i).unwrap_or(u32::MAX);
                source = Arc::new(RecordingSource::new(source, layer, Arc::clone(recorder)));
            }
            SealedLayer::open(source).await
        });
        let layers = try_join_all(opening).await?;
        let stack = LayerStack::new(layers)?;
        let upper = match config.writable() {
            Some(u) if !u.target.is_empty() => {
                return Err(LsmtError::Config {
                    file: config_file.into(),
                    field: "upper.target".into(),
                    reason: "writable TurboOCI layers are not supported".into(),
                })
            }
            Some(u) => Some(WritableLayer::open(
                Path::new(&u.data),
                Path::new(&u.index),
            )?),
            None => None,
        };
        Image::new(stack, upper).await
    }

    /// Loads `config.v1.json` at `path` and opens the image as [`Image::open_loaded`] does (with
    /// its trace prefetch, writing the config's result file).
    pub async fn open_config_file(path: &Path, opener: &dyn LayerOpener) -> LsmtResult<Self> {
        let config = ImageConfig::load(path)?;
        Image::open_loaded(&config, &path.display().to_string(), opener).await
    }

    /// Opens the image a config already loaded from `config_file` describes, as the device's
    /// owner: with its trace prefetch (recording or replay, `trace-prefetch.md` §2) tied to
    /// the image's lifetime, and the config's result file (`success` or `failed:<reason>`)
    /// written as the reference daemon does.
    pub async fn open_loaded(
        config: &ImageConfig,
        config_file: &str,
        opener: &dyn LayerOpener,
    ) -> LsmtResult<Self> {
        Image::open_owned(
            config,
            config_file,
            opener,
            prefetch::RecordOptions::default(),
        )
        .await
    }

    /// [`Image::open_loaded`], a recording (if the config asks for one) having the limits of
    /// `record` (the daemon's learned traces record for a time window, see
    /// [`prefetch::learn`]).
    pub async fn open_owned(
        config: &ImageConfig,
        config_file: &str,
        opener: &dyn LayerOpener,
        record: prefetch::RecordOptions,
    ) -> LsmtResult<Self> {
        let result = Image::open_with(config, config_file, opener, Some(record)).await;
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        config
            .write_result(outcome.as_ref().map(|_| ()).map_err(String::as_str))
            .map_err(|e| LsmtError::io(&config.result_file, e))?;
        result
    }

    /// The read-only layers.
    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    /// The writable layer, if any.
    pub fn upper(&self) -> Option<&WritableLayer> {
        self.upper.as_ref()
    }

    /// The trace this device records or replays, if any.
    pub fn prefetch(&self) -> Option<&Prefetch> {
        self.prefetch.as_ref()
    }

    /// Tag of the writable layer's records in [`Image::extents`] (the number of lowers, §9.7).
    fn upper_tag(&self) -> u8 {
        // A stack holds at most 255 layers, so this fits.
        self.stack.len() as u8
    }

    /// The visible extents in `[start, start + sectors)`: writable records first, gaps between
    /// them filled from the merged read-only map. Tags below the layer count name read-only
    /// layers, the layer count names the writable layer. Uncovered sectors are holes.
    pub fn extents(&self, start: u64, sectors: u64) -> Vec<Record> {
        let Some(upper) = &self.upper else {
            return self.stack.lookup(start, sectors);
        };
        let end = start + sectors;
        let tag = self.upper_tag();
        let mut out = Vec::new();
        let mut cur = start;
        for r in upper.lookup(start, sectors) {
            if r.offset > cur {
                out.extend(self.stack.lookup(cur, r.offset - cur));
            }
            out.push(r.with_tag(tag));
            cur = r.end();
        }
        if cur < end {
            out.extend(self.stack.lookup(cur, end - cur));
        }
        out
    }

    /// The byte source of an extent's tag.
    pub fn source(&self, tag: u8) -> Option<Arc<dyn LayerSource>> {
        match &self.upper {
            Some(u) if tag == self.upper_tag() => Some(u.data_source()),
            _ => self.stack.source(tag),
        }
    }

    /// Reads `len` bytes of the virtual disk at `offset` (both multiples of 512); no range check
    /// against the device size (sectors past every layer read as zeros).
    pub async fn read_at(&self, offset: u64, len: usize) -> LsmtResult<Bytes> {
        read_virtual(
            offset,
            len,
            |s, n| self.extents(s, n),
            |tag| self.source(tag),
        )
        .await
    }

    fn writable(&self) -> BlockResult<&WritableLayer> {
        self.upper.as_ref().ok_or(BlockError::ReadOnly)
    }

    /// Writes `len` zero bytes at `offset` of `upper`, at most 1 MiB per write.
    async fn write_zeros(&self, upper: &WritableLayer, offset: u64, len: u64) -> LsmtResult<()> {
        let mut done = 0;
        while done < len {
            // At most 1 MiB, so the cast is lossless.
            let n = (len - done).min(ZEROS.len() as u64) as usize;
            let zeros = Bytes::from_static(&ZEROS[..n]);
            self.write_upper(upper, offset + done, zeros).await?;
            done += n as u64;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the writable layer. A sparse layer only remembers which of
    /// its file system's allocation units hold data (§7), so a write that covers part of a
    /// unit first takes the rest of the unit from what the disk shows now (the layers below,
    /// or earlier writes) and writes whole units: otherwise, after a reopen, the rest would
    /// read as zeros instead of the lower data (a 1 KiB ext4 block write over an image would
    /// damage its neighbours). Such writes are serialised among themselves.
    async fn write_upper(&self, upper: &WritableLayer, offset: u64, data: Bytes) -> LsmtResult<()> {
        let unit = upper.allocation_unit();
        let end = offset + data.len() as u64;
        let (first, last) = (offset / unit * unit, end.div_ceil(unit) * unit);
        // The disk's last unit may be cut short by its size; sectors past it are never read.
        let last = last.min(self.size.max(end));
        if !upper.is_sparse() || (first == offset && last == end) {
            return upper.write(offset, data).await;
        }
        let _one_at_a_time = self.unit_fill.lock().await;
        let head = self.read_at(first, (offset - first) as usize).await?;
        let tail = self.read_at(end, (last - end) as usize).await?;
        let mut whole = Vec::with_capacity((last - first) as usize);
        whole.extend_from_slice(&head);
        whole.extend_from_slice(&data);
        whole.extend_from_slice(&tail);
        upper.write(first, Bytes::from(whole)).await
    }
}

#[async_trait]
impl BlockDevice for Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.upper.is_none()
    }

    fn can_unmap(&self) -> bool {
        self.upper.is_some()
    }

    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        check_range(offset, len as u64, self.size)?;
        Ok(self.read_at(offset, len).await?)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> BlockResult<()> {
        let upper = self.writable()?;
        check_range(offset, data.len() as u64, self.size)?;
        self.write_upper(upper, offset, data).await?;
        if fua {
            upper.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        match &self.upper {
            Some(u) => Ok(u.flush().await?),
            None => Ok(()),
        }
    }

    async fn unmap(&self, offset: u64, len: u64) -> BlockResult<()> {
        let upper = self.writable()?;
        check_range(offset, len, self.size)?;
        if !upper.is_sparse() || offset % SECTOR != 0 || len % SECTOR != 0 {
            // Misaligned ranges get the layer's own error.
            return Ok(upper.discard(offset, len).await?);
        }
        // A sparse layer forgets its discards when reopened: its holes show the lower layers
        // again (§7). Where a lower layer has data the range is overwritten with zeros instead,
        // in place, so the layer stays bounded and the range keeps reading as zeros (LBPRZ);
        // elsewhere the hole is punched.
        let (start, end) = (offset / SECTOR, (offset + len) / SECTOR);
        let mut cur = start;
        for r in self.stack.lookup(start, end - start) {
            if r.zeroed {
                continue;
            }
            if r.offset > cur {
                upper
                    .discard(cur * SECTOR, (r.offset - cur) * SECTOR)
                    .await?;
            }
            self.write_zeros(upper, r.offset * SECTOR, u64::from(r.length) * SECTOR)
                .await?;
            cur = r.end();
        }
        if cur < end {
            upper.discard(cur * SECTOR, (end - cur) * SECTOR).await?;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        if offset % SECTOR != 0 || offset >= self.size {
            return Err(BlockError::OutOfRange {
                offset,
                len: SECTOR,
                size: self.size,
            });
        }
        let start = offset / SECTOR;
        let window = (self.size / SECTOR - start).min(STATUS_WINDOW_SECTORS);
        let extents = self.extents(start, window);
        let (state, run) = status_run(start, window, &extents);
        Ok(BlockStatus {
            state,
            len: run * SECTOR,
        })
    }
}

/// State at `start` and how many sectors keep it, within `window` sectors: data extents are
/// mapped; holes and zeroed extents are deallocated (they read as zeros without storage).
fn status_run(start: u64, window: u64, extents: &[Record]) -> (Provisioning, u64) {
    let end = start + window;
    let mapped_at_start = extents
        .first()
        .is_some_and(|r| r.offset == start && !r.zeroed);
    let mut cur = start;
    for r in extents {
        if mapped_at_start {
            if r.offset != cur || r.zeroed {
                break;
            }
            cur = r.end();
        } else if !r.zeroed {
            return (Provisioning::Deallocated, r.offset - start);
        }
    }
    if mapped_at_start {
        (Provisioning::Mapped, cur - start)
    } else {
        (Provisioning::Deallocated, end - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_runs() {
        let ex = [
            Record::data(10, 5, 8),
            Record::data(15, 5, 100),
            Record::zeroed(20, 5, 8),
            Record::data(30, 5, 8),
        ];
        assert_eq!(status_run(10, 100, &ex), (Provisioning::Mapped, 10));
        assert_eq!(status_run(0, 100, &[]), (Provisioning::Deallocated, 100));
        assert_eq!(
            status_run(20, 90, &ex[2..]),
            (Provisioning::Deallocated, 10)
        );
    }
}

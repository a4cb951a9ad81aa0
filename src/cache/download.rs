//! Background full download of a remote layer (overlaybd's `download` settings): after a
//! delay, copy the whole blob into `<dir>/.download` at a bounded rate, check its sha256
//! against the layer digest, rename it to `<dir>/overlaybd.commit`, and switch the layer's
//! reads to that local file. A mismatch discards the copy and the next attempt starts over;
//! after `tryCnt` attempts the layer simply stays remote.
//!
//! `<dir>` is the layer's own folder when the config gives one (overlaybd's only case: it
//! does nothing, silently, for a layer without `dir`), otherwise
//! `<cacheDir>/downloads/<algorithm>/<hex>/` in the cache folder, where every image that
//! shares the layer finds the one verified copy. That folder is outside the disk tier's
//! budget. Start, progress (every [`PROGRESS_STEP`] of the blob) and end are logged.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::read_path::CachedSource;
use super::settings::DownloadConfig;
use crate::source::LayerSource;
use crate::sys::blocking;

/// What to download, where, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadJob {
    /// Expected digest of the whole blob (`sha256:<hex>`).
    pub digest: String,
    /// The verified copy's final path (`<dir>/overlaybd.commit`).
    pub dest: PathBuf,
    /// The partial copy's path while downloading (`<dir>/.download`).
    pub temp: PathBuf,
    /// Wait before the first attempt.
    pub delay: Duration,
    /// Throughput limit in bytes per second (`None` = unlimited).
    pub bytes_per_sec: Option<u64>,
    /// Attempts before giving up.
    pub tries: u32,
    /// Bytes per read.
    pub block_size: u64,
    /// Reads in flight at once (the blob is still hashed and written in order).
    pub parallel: usize,
}

/// Share of a blob between two progress lines of a background download.
pub const PROGRESS_STEP: f64 = 0.1;

impl DownloadJob {
    /// The job for a layer without a folder of its own: the layer's folder under
    /// `<cache_dir>/downloads/`, named by its digest. `None` for a digest that is not a
    /// well-formed `algorithm:hex` (it could not be verified, nor name a safe folder).
    pub fn in_cache_folder(
        cache_dir: &Path,
        digest: &str,
        config: &DownloadConfig,
    ) -> Option<Self> {
        let (algo, hex) = super::key::BlobId::parse(digest)?;
        let dir = cache_dir.join("downloads").join(algo).join(hex);
        Some(Self::for_layer_dir(&dir, digest, config))
    }

    /// The job overlaybd runs for a layer directory: `.download`, then `overlaybd.commit`,
    /// with the delay, rate, attempts and read size of `config`.
    pub fn for_layer_dir(dir: &Path, digest: &str, config: &DownloadConfig) -> Self {
        Self {
            digest: digest.to_string(),
            dest: dir.join("overlaybd.commit"),
            temp: dir.join(".download"),
            delay: config.start_delay(),
            bytes_per_sec: config.bytes_per_sec(),
            tries: config.try_cnt.clamp(1, 100) as u32,
            block_size: u64::from(config.block_size.max(4096)),
            parallel: config.parallel.clamp(1, 64) as usize,
        }
    }
}

/// The hex sha256 a digest names, or an error for another algorithm or a malformed digest.
fn expected_sha256(digest: &str) -> io::Result<String> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hex.to_ascii_lowercase())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot verify digest {digest:?}: only sha256 is supported"),
        )),
    }
}

/// Sleeps as needed so that `done` bytes since `start` stay within `rate` bytes per second.
async fn throttle(start: Instant, done: u64, rate: Option<u64>) {
    let Some(rate) = rate.filter(|r| *r > 0) else {
        return;
    };
    let due = Duration::from_secs_f64(done as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(start.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// Whether `[offset, offset + len)` of `file` is all data (no hole), i.e. was written by an
/// earlier, interrupted attempt. Uses `SEEK_DATA`/`SEEK_HOLE`; any error counts as absent.
fn block_present(file: &std::fs::File, offset: u64, len: u64) -> bool {
    use crate::sys::file::{seek_data, seek_hole};
    use crate::sys::Region;
    let Some(end) = offset.checked_add(len) else {
        return false;
    };
    matches!(seek_data(file, offset), Ok(Region::At(data)) if data == offset)
        && matches!(seek_hole(file, offset), Ok(Region::At(hole)) if hole >= end)
}

/// Copies `source` into `job.temp` once and checks the digest; on success renames it to
/// `job.dest`. Blocks already written to an existing `job.temp` by an interrupted attempt
/// are reused (overlaybd skips them the same way); the digest check covers them too.
/// `alive` is polled between reads so an abandoned layer stops downloading.
async fn attempt(
    source: &dyn LayerSource,
    job: &DownloadJob,
    hex: &str,
    alive: &(dyn Fn() -> bool + Sync),
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let size = source.size();
    let temp = job.temp.clone();
    let (file, resumed) = blocking(move || {
        if let Some(parent) = temp.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let resumed = temp.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&temp)?;
        file.set_len(size)?;
        Ok((Arc::new(file), resumed))
    })
    .await?;
    tracing::info!(
        blob = %source.describe(),
        bytes = size,
        path = %job.temp.display(),
        resumed,
        "background download started"
    );
    let mut hasher = Sha256::new();
    let start = Instant::now();
    let (mut offset, mut fetched) = (0u64, 0u64);
    let mut next_report = PROGRESS_STEP;
    // Up to `parallel` blocks are read at once; they are hashed and counted in order.
    let bs = job.block_size;
    let blocks = (0..size.div_ceil(bs)).map(|i| (i * bs, bs.min(size - i * bs)));
    let mut blocks = futures_util::stream::iter(blocks)
        .map(|(at, n)| {
            let file = Arc::clone(&file);
            async move {
                if !alive() {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "layer closed"));
                }
                let f = Arc::clone(&file);
                let local = resumed && blocking(move || Ok(block_present(&f, at, n))).await?;
                if local {
                    let block = blocking(move || {
                        let mut buf = vec![0u8; n as usize];
                        file.read_exact_at(&mut buf, at)?;
                        Ok(bytes::Bytes::from(buf))
                    })
                    .await?;
                    return Ok((block, false));
                }
                let block = source.read_exact_at(at, n as usize).await?;
                let b = block.clone();
                blocking(move || file.write_all_at(&b, at)).await?;
                Ok::<_, io::Error>((block, true))
            }
        })
        .buffered(job.parallel.max(1));
    while let Some(next) = blocks.next().await {
        let (block, was_fetched) = next?;
        let n = block.len() as u64;
        if was_fetched {
            fetched += n;
            throttle(start, fetched, job.bytes_per_sec).await;
        }
        hasher.update(&block);
        offset += n;
        let ratio = offset as f64 / size as f64;
        crate::metrics::global().download_ratio(&job.digest, ratio);
        if ratio >= next_report && offset < size {
            tracing::info!(
                blob = %source.describe(),
                percent = (ratio * 100.0).floor() as u32,
                bytes = offset,
                of = size,
                "background download progress"
            );
            while next_report <= ratio {
                next_report += PROGRESS_STEP;
            }
        }
    }
    drop(blocks);
    let got = hex::encode(hasher.finalize());
    if got != hex {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("downloaded blob has sha256:{got}, expected {}", job.digest),
        ));
    }
    // Durable before it takes over from the network copy.
    let f = Arc::clone(&file);
    blocking(move || f.sync_all()).await?;
    drop(file);
    tokio::fs::rename(&job.temp, &job.dest).await?;
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        blob = %source.describe(),
        bytes = size,
        fetched,
        seconds = format!("{secs:.1}"),
        mb_per_sec = format!("{:.1}", fetched as f64 / 1e6 / secs.max(1e-3)),
        path = %job.dest.display(),
        "background download finished and verified"
    );
    Ok(())
}

/// Checks an existing file against the expected sha256.
async fn verify_file(path: &Path, hex: &str) -> io::Result<bool> {
    let path = path.to_path_buf();
    let hex = hex.to_string();
    blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()) == hex)
    })
    .await
}

/// Downloads `source` to `job.dest` with up to `job.tries` attempts (no delay, no switch).
/// An existing `job.dest` with the right digest counts as done.
pub async fn download(
    source: &dyn LayerSource,
    job: &DownloadJob,
    alive: &(dyn Fn() -> bool + Sync),
) -> io::Result<()> {
    let hex = expected_sha256(&job.digest)?;
    if tokio::fs::try_exists(&job.dest).await.unwrap_or(false)
        && verify_file(&job.dest, &hex).await.unwrap_or(false)
    {
        return Ok(());
    }
    let mut last = io::Error::other("no attempt made");
    for n in 1..=job.tries.max(1) {
        match attempt(source, job, &hex, alive).await {
            Ok(()) => return Ok(()),
            // Closed layer: keep the partial copy, a later open resumes it.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                tracing::warn!(blob = %source.describe(), attempt = n, error = %e, "background download failed");
                // A copy that failed its digest is discarded whole; after a network error the
                // blocks written so far are good (or caught by the final digest) and are kept.
                if e.kind() == io::ErrorKind::InvalidData {
                    let _ = tokio::fs::remove_file(&job.temp).await;
                }
                last = e;
            }
        }
    }
    Err(io::Error::new(
        last.kind(),
        format!(
            "{}: background download gave up after {} attempts: {last}",
            source.describe(),
            job.tries
        ),
    ))
}

/// Starts the background download of a cached remote layer: waits `job.delay`, downloads
/// from the layer's uncached source, then serves the layer from the verified file. The task
/// holds only a weak reference, so closing the layer stops it. Returns the final path.
///
/// `queue` serialises downloads (overlaybd processes layers one at a time): a task waits for
/// a permit after its delay, so two devices sharing a layer folder never write the same
/// `.download` at once, and the second finds the first one's verified copy and just switches.
pub fn spawn_background_download(
    layer: &Arc<CachedSource>,
    job: DownloadJob,
    queue: Arc<tokio::sync::Semaphore>,
) -> tokio::task::JoinHandle<io::Result<PathBuf>> {
    let weak: Weak<CachedSource> = Arc::downgrade(layer);
    tracing::info!(
        blob = %layer.describe(),
        path = %job.dest.display(),
        delay_secs = job.delay.as_secs(),
        "background download scheduled"
    );
    tokio::spawn(async move {
        tokio::time::sleep(job.delay).await;
        let _turn = queue
            .acquire_owned()
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::Interrupted, "download queue closed"))?;
        let inner = weak
            .upgrade()
            .map(|l| Arc::clone(l.inner()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::Interrupted, "layer closed"))?;
        let alive = || weak.strong_count() > 0;
        download(inner.as_ref(), &job, &alive).await?;
        let file = std::fs::File::open(&job.dest)?;
        if let Some(layer) = weak.upgrade() {
            layer.use_local_file(file);
            tracing::info!(blob = %layer.describe(), path = %job.dest.display(), "layer now served from its downloaded copy");
        }
        Ok(job.dest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SourceResult, Span};
    use bytes::Bytes;

    struct Mem(Vec<u8>);

    #[async_trait::async_trait]
    impl LayerSource for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
            Ok(Bytes::copy_from_slice(
                &self.0[span.offset() as usize..span.end() as usize],
            ))
        }
        fn describe(&self) -> String {
            "mem".into()
        }
    }

    fn job(dir: &Path, digest: &str, rate: Option<u64>) -> DownloadJob {
        DownloadJob {
            digest: digest.into(),
            dest: dir.join("overlaybd.commit"),
            temp: dir.join(".download"),
            delay: Duration::ZERO,
            bytes_per_sec: rate,
            tries: 2,
            block_size: 4096,
            parallel: 3,
        }
    }

    #[tokio::test]
    async fn verified_copy_is_renamed_into_place() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            &crate::cache::http::push::sha256_digest(&data),
            None,
        );
        download(&Mem(data.clone()), &j, &|| true).await.unwrap();
        assert_eq!(std::fs::read(&j.dest).unwrap(), data);
        assert!(!j.temp.exists());
    }

    #[tokio::test]
    async fn digest_mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            &crate::cache::http::push::sha256_digest(b"other"),
            None,
        );
        let err = download(&Mem(vec![1; 5000]), &j, &|| true)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!j.dest.exists() && !j.temp.exists());
        assert!(download(
            &Mem(vec![1; 10]),
            &job(dir.path(), "md5:abc", None),
            &|| true
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn rate_limit_is_applied() {
        let data = vec![7u8; 20_000];
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            &crate::cache::http::push::sha256_digest(&data),
            Some(100_000),
        );
        let start = Instant::now();
        download(&Mem(data), &j, &|| true).await.unwrap();
        // 20 kB at 100 kB/s cannot finish in less than 0.2 s.
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn closed_layer_stops_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            &crate::cache::http::push::sha256_digest(&[0; 100]),
            None,
        );
        let err = download(&Mem(vec![0; 100]), &j, &|| false)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert!(!j.dest.exists());
    }

    /// A blob source that counts the bytes it serves.
    struct Counting(Vec<u8>, parking_lot::Mutex<Vec<u64>>);

    #[async_trait::async_trait]
    impl LayerSource for Counting {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
            self.1.lock().push(span.offset());
            Ok(Bytes::copy_from_slice(
                &self.0[span.offset() as usize..span.end() as usize],
            ))
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    /// A source whose reads take a while, recording the most reads in flight at once.
    struct Slow {
        data: Vec<u8>,
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl LayerSource for Slow {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            // Later blocks answer sooner, so completion order differs from blob order.
            let wait = 40 - (span.offset() / 4096 % 4) * 10;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.now.fetch_sub(1, SeqCst);
            Ok(Bytes::copy_from_slice(
                &self.data[span.offset() as usize..span.end() as usize],
            ))
        }
        fn describe(&self) -> String {
            "slow".into()
        }
    }

    #[tokio::test]
    async fn blocks_are_fetched_several_at_once_and_hashed_in_order() {
        let data: Vec<u8> = (0..16 * 4096u32)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            &crate::cache::http::push::sha256_digest(&data),
            None,
        );
        let src = Slow {
            data: data.clone(),
            now: Default::default(),
            most: Default::default(),
        };
        download(&src, &j, &|| true).await.expect("verified");
        assert_eq!(std::fs::read(&j.dest).unwrap(), data);
        assert_eq!(
            src.most.load(std::sync::atomic::Ordering::SeqCst),
            j.parallel,
            "reads in flight at once"
        );
    }

    #[tokio::test]
    async fn interrupted_copy_is_resumed_and_still_verified() {
        use std::os::unix::fs::FileExt;
        let data: Vec<u8> = (0..8 * 4096u32).map(|i| (i * 13) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let j = job(
            dir.path(),
            &crate::cache::http::push::sha256_digest(&data),
            None,
        );
        // An earlier attempt wrote blocks 0-2 and 5, then stopped.
        let f = std::fs::File::create(&j.temp).unwrap();
        f.set_len(data.len() as u64).unwrap();
        for b in [0usize, 1, 2, 5] {
            f.write_all_at(&data[b * 4096..(b + 1) * 4096], (b * 4096) as u64)
                .unwrap();
        }
        drop(f);
        let src = Counting(data.clone(), Default::default());
        download(&src, &j, &|| true).await.unwrap();
        assert_eq!(std::fs::read(&j.dest).unwrap(), data);
        // Blocks are fetched several at a time, so in any order.
        src.1.lock().sort();
        assert_eq!(
            *src.1.lock(),
            vec![3 * 4096, 4 * 4096, 6 * 4096, 7 * 4096],
            "only the missing blocks were fetched"
        );

        // A resumed copy with a corrupt block fails its digest and is then fetched whole.
        std::fs::remove_file(&j.dest).unwrap();
        let f = std::fs::File::create(&j.temp).unwrap();
        f.set_len(data.len() as u64).unwrap();
        f.write_all_at(&[0xEE; 4096], 0).unwrap();
        drop(f);
        let src = Counting(data.clone(), Default::default());
        download(&src, &j, &|| true).await.unwrap();
        assert_eq!(std::fs::read(&j.dest).unwrap(), data);
        assert_eq!(
            src.1.lock().len(),
            7 + 8,
            "7 blocks in the first attempt, all 8 in the second"
        );
    }
}

//! The disk cache of remote layers across a crash and under pressure: a child process reading
//! an image through the cache is killed with SIGKILL mid-reads; reopened with the registry
//! gone, everything it had read is served from the cache and the rest fails cleanly. Filling
//! the cache far past its limit keeps the folder's size bounded and the data right.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd_target::block::{BlockDevice, BlockError};
use overlaybd_target::cache::settings::DaemonSettings;
use overlaybd_target::overlaybd::RemoteImages;
use support::fault_proxy::{Fault, FaultProxy, Link};
use support::fixtures::{fixture, require};
use support::http_server::blob_server;
use support::images::{fixture_config, mapped_runs, scattered_ranges, write_config};

const REPO: &str = "/v2/library/base/blobs";
/// Where the parent tells the child process its working folder.
const CHILD_ENV: &str = "OVERLAYBD_CRASH_CHILD_DIR";

fn settings(cache_dir: &Path, capacity: u64) -> DaemonSettings {
    let mut s = DaemonSettings::default();
    s.cache_config.refill_size = 65_536;
    // No memory tier: every unit read goes through the disk tier.
    s.cache_config.memory_size_mb = 0;
    s.override_cache(Some(cache_dir), Some(capacity));
    s.http_config.connect_timeout_ms = 300;
    s.http_config.request_timeout_ms = 2000;
    s.http_config.retries = 1;
    s.http_config.retry_backoff_ms = 1;
    s.http_config.retry_backoff_max_ms = 5;
    s
}

/// The fixture opened from its local file: the expected bytes.
async fn reference(dir: &Path) -> Arc<dyn BlockDevice> {
    let sub = dir.join("reference");
    std::fs::create_dir_all(&sub).unwrap();
    let config = write_config(&sub, "", serde_json::json!({"file": fixture("ext4_64")}));
    RemoteImages::new(settings(&sub.join("cache"), 1 << 20))
        .unwrap()
        .open(&config, true)
        .await
        .unwrap()
}

/// `count` reads spread over the mapped runs of `dev` (whole sectors, up to 64 KiB).
async fn scattered_reads(dev: &dyn BlockDevice, count: usize) -> Vec<(u64, usize)> {
    scattered_ranges(&mapped_runs(dev).await, count, 0x00C0_FFEE, 7)
}

/// The child process: reads the ranges listed in `ranges.txt` through the image, appending
/// the number of each completed read to `progress.txt`, then waits to be killed.
#[tokio::test]
#[ignore = "helper process of cache_survives_sigkill_and_serves_offline"]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("ranges.txt")).unwrap();
    let ranges: Vec<(u64, usize)> = text
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    let luns = RemoteImages::new(settings(&dir.join("cache"), 64 << 20)).unwrap();
    let image = luns.open(&dir.join("config.v1.json"), true).await.unwrap();
    let mut progress = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("progress.txt"))
        .unwrap();
    for (i, &(offset, len)) in ranges.iter().enumerate() {
        image.read(offset, len).await.unwrap();
        writeln!(progress, "{i}").unwrap();
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_survives_sigkill_and_serves_offline() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let server = blob_server(&blob).await;
    // A slow link, so the child is still fetching when it is killed.
    let link = Link {
        latency: Duration::from_millis(15),
        bytes_per_sec: Some(20 << 20),
    };
    let proxy = FaultProxy::start(server.addr, link, |_, _| Fault::Pass).await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference(tmp.path()).await;
    let ranges = scattered_reads(reference.as_ref(), 300).await;
    let list: String = ranges.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    std::fs::write(tmp.path().join("ranges.txt"), list).unwrap();
    let config = fixture_config(tmp.path(), &format!("{}{REPO}", proxy.url()), blob.len());

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let progress = tmp.path().join("progress.txt");
    let done = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let deadline = Instant::now() + Duration::from_secs(120);
    while done(&progress) < 40 {
        assert!(Instant::now() < deadline, "child made no progress");
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let completed = done(&progress);
    assert!(completed < ranges.len(), "killed mid-reads");
    let requests_before = proxy.requests();
    // The registry goes away for good.
    drop(proxy);
    drop(server);

    let luns = RemoteImages::new(settings(&tmp.path().join("cache"), 64 << 20)).unwrap();
    // Writes cut short by the kill (temporary files) were cleared at start-up.
    let mut stack = vec![tmp.path().join("cache")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().map(Result::unwrap) {
            assert!(!e.file_name().to_string_lossy().contains(".tmp-"), "{e:?}");
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    let image = luns
        .open(&config, true)
        .await
        .expect("cached layer opens with the registry down");
    for &(offset, len) in &ranges[..completed] {
        let want = reference.read(offset, len).await.unwrap();
        let got = image.read(offset, len).await.unwrap_or_else(|e| {
            panic!("{offset}+{len}, read before the crash, not served from cache: {e}")
        });
        assert!(got == want, "wrong bytes at {offset}+{len}");
    }
    let (mut served, mut refused) = (0, 0);
    for &(offset, len) in &ranges[completed..] {
        match image.read(offset, len).await {
            Ok(got) => {
                assert!(
                    got == reference.read(offset, len).await.unwrap(),
                    "{offset}+{len}"
                );
                served += 1;
            }
            Err(e) => {
                assert!(matches!(e, BlockError::Remote(_)), "{e}");
                refused += 1;
            }
        }
    }
    eprintln!(
        "killed after {completed} of {} reads ({requests_before} requests); offline: \
         {completed} cached reads served, of the rest {served} cached, {refused} failed cleanly",
        ranges.len()
    );
    assert!(refused > 0, "some reads needed the network");
    let stats = luns.layers().tiers().stats();
    assert!(stats.disk_hits > 0 && stats.source_bytes == 0, "{stats:?}");
}

/// Sum of file lengths and of allocated bytes under `dir`.
fn folder_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total.0 += meta.len();
                total.1 += meta.blocks() * 512;
            }
        }
    }
    total
}

#[tokio::test]
async fn a_full_cache_stays_within_its_limit() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let server = blob_server(&blob).await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference(tmp.path()).await;
    let config = fixture_config(tmp.path(), &format!("{}{REPO}/", server.url()), blob.len());
    let capacity = 256 << 10;
    let cache = tmp.path().join("cache");
    let luns = RemoteImages::new(settings(&cache, capacity)).unwrap();
    let image = luns.open(&config, true).await.unwrap();
    let ranges = scattered_reads(reference.as_ref(), 400).await;
    let mut peak = (0, 0);
    for &(offset, len) in &ranges {
        let got = image.read(offset, len).await.unwrap();
        assert!(
            got == reference.read(offset, len).await.unwrap(),
            "{offset}+{len}"
        );
        let usage = folder_usage(&cache);
        peak = (peak.0.max(usage.0), peak.1.max(usage.1));
    }
    let fetched = luns.layers().tiers().stats().source_bytes;
    eprintln!(
        "fetched {fetched} bytes through a {capacity}-byte cache; peak folder usage {} bytes \
         in files, {} allocated",
        peak.0, peak.1
    );
    assert!(
        fetched > 3 * capacity,
        "the reads overflowed the cache several times"
    );
    assert!(peak.0 <= capacity, "files hold {} bytes", peak.0);
    // Each 64 KiB unit file carries a 32-byte header, so allocation rounds it up by one
    // filesystem block: at most 1/16 over with 4 KiB blocks.
    assert!(
        peak.1 <= capacity + capacity / 16,
        "{} bytes allocated",
        peak.1
    );
    assert!(luns.layers().tiers().disk_used() <= capacity);
    // Reopened, the tier still respects the limit and serves right bytes.
    drop((image, luns));
    let luns = RemoteImages::new(settings(&cache, capacity / 2)).unwrap();
    let image = luns.open(&config, true).await.unwrap();
    assert!(
        folder_usage(&cache).0 <= capacity / 2,
        "a smaller limit evicts at start-up"
    );
    for &(offset, len) in ranges.iter().take(50) {
        let got = image.read(offset, len).await.unwrap();
        assert!(
            got == reference.read(offset, len).await.unwrap(),
            "{offset}+{len}"
        );
    }
}

/// Bytes of `path` actually allocated on disk (a sparse `.download` holds only what was
/// written).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// A target process downloading a layer in the background (overlaybd.json `download`, 1 MB/s)
/// is killed with SIGKILL once 60 % of the blob is in its `.download` file. Started again, it
/// fetches only the rest from the registry, and the verified copy is the blob.
#[test]
fn a_background_download_killed_at_60_percent_resumes_from_there() {
    use support::process::Target;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let content = support::http_server::make_blob(4 << 20, 31);
    let (blob, digest) = support::images::imported_layer(work.path(), &content);
    let size = blob.len() as u64;
    let hex = digest["sha256:".len()..].to_string();
    let server = runtime.block_on(blob_server(&blob));
    let config = write_config(
        work.path(),
        &format!("{}/v2/team/app/blobs", server.url()),
        serde_json::json!({ "digest": digest, "size": size }),
    );
    let daemon = work.path().join("overlaybd.json");
    let settings = serde_json::json!({
        "download": {"enable": true, "delay": 0, "delayExtra": 1, "maxMBps": 1,
                     "blockSize": 65536, "parallel": 2}
    });
    std::fs::write(&daemon, settings.to_string()).unwrap();
    let cache = work.path().join("cache");
    let folder = cache.join("downloads/sha256").join(&hex);
    let (partial, commit) = (folder.join(".download"), folder.join("overlaybd.commit"));
    let start = || {
        let lun = format!("image:{}", config.display());
        let (daemon, cache) = (daemon.display().to_string(), cache.display().to_string());
        Target::start(&[
            "--target",
            "iqn.2026-12.io.overlaybd:dl",
            "--lun",
            &lun,
            "--overlaybd-config",
            &daemon,
            "--cache-dir",
            &cache,
            "--no-api",
            "--no-state",
        ])
    };

    let target = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while allocated(&partial) < size * 6 / 10 {
        assert!(Instant::now() < deadline, "the download never reached 60 %");
        assert!(!commit.exists(), "the download finished before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child's pid; dropping the handle reaps it.
    unsafe { libc::kill(target.pid() as libc::pid_t, libc::SIGKILL) };
    drop(target);
    let written = allocated(&partial);
    assert!(
        written < size * 9 / 10,
        "killed at {written} of {size} bytes"
    );
    assert!(!commit.exists());

    server.clear();
    let target = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !commit.exists() {
        assert!(
            Instant::now() < deadline,
            "the resumed download never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read(&commit).unwrap() == *blob,
        "the copy is not the blob"
    );
    let fetched: u64 = support::http_server::ranges_served(&server)
        .iter()
        .map(|(a, b)| b + 1 - a)
        .sum();
    // What was missing, give or take the blocks in flight at the kill (2 × 64 KiB) and the
    // cache's refill of the bytes the LUN's open reads (a few 256 KiB units).
    let missing = size - written.min(size);
    eprintln!("killed with {written} of {size} bytes written; {fetched} fetched after the restart");
    assert!(
        fetched >= missing.saturating_sub(2 << 16) && fetched <= missing + (1 << 20),
        "fetched {fetched} bytes after the restart; {missing} were missing of {size}"
    );
    drop(target);
}

//! Cold start: the time to read a container's start-up working set from a registry over a
//! slow link, on demand through our cache, versus downloading the whole layer blob and
//! decompressing it first (what a non-lazy pull does). See benches/README.md.
//!
//! Steps: build a ~1 GiB ext4 image of real files (`mkfs.ext4 -d`), import it as one
//! ZFile/LZ4 overlaybd layer with the library, push it to a local `docker-registry`, and put a
//! loopback proxy in front that adds latency per request and caps bandwidth. Then, per run:
//! - on demand: open the image from a `config.v1.json` naming the registry blob, with an
//!   empty cache folder, and read the working set;
//! - full: download the blob through the same proxy, decompress the ZFile to a plain LSMT
//!   file, open that locally and read the working set;
//! - with trace: as on demand, with the trace of the working set's layer reads (recorded once
//!   before the runs by opening the image with an empty `recordTracePath`) replayed in the
//!   background from the open on (`trace-prefetch.md` §5).
//!
//! Options (all optional): `--work DIR` (built layer kept here between runs, default
//! `target/bench-cold-start`), `--source DIR` (files for the image, default `/usr/share`),
//! `--image-mib N` (1024), `--runs N` (3), `--latency-ms N` (5), `--mbps N` (100),
//! `--working-set-pct P` (3), `--sequential-mib N` (64: the sequential read-ahead check).

#[path = "../../tests/support/fault_proxy.rs"]
mod fault_proxy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fault_proxy::{Fault, FaultProxy, Link};
use overlaybd_target::block::{BlockDevice, Provisioning};
use overlaybd_target::cache::file::FileSource;
use overlaybd_target::cache::http::push::push_blob;
use overlaybd_target::cache::settings::DaemonSettings;
use overlaybd_target::overlaybd::commit::{write_commit_file, CommitOptions, CommitSource};
use overlaybd_target::overlaybd::raw::import_raw;
use overlaybd_target::overlaybd::writable::{CreateOptions, WritableLayer};
use overlaybd_target::overlaybd::{LayerStack, RemoteImages};
use overlaybd_target::source::LayerSource;
use overlaybd_target::zfile::{WriterOptions, ZFileReader};
use sha2::{Digest, Sha256};

type Error = Box<dyn std::error::Error>;

const REPO: &str = "bench/coldstart";
const REGISTRY: &str = "/usr/bin/docker-registry";

struct Args {
    work: PathBuf,
    source: PathBuf,
    image_mib: u64,
    runs: usize,
    latency_ms: u64,
    mbps: u64,
    working_set_pct: f64,
    sequential_mib: u64,
}

fn parse_args() -> Result<Args, Error> {
    let mut a = Args {
        work: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-cold-start"),
        source: PathBuf::from("/usr/share"),
        image_mib: 1024,
        runs: 3,
        latency_ms: 5,
        mbps: 100,
        working_set_pct: 3.0,
        sequential_mib: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench`; ignore it and anything else we do not know.
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--work" => a.work = PathBuf::from(value()?),
            "--source" => a.source = PathBuf::from(value()?),
            "--image-mib" => a.image_mib = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--latency-ms" => a.latency_ms = value()?.parse()?,
            "--mbps" => a.mbps = value()?.parse()?,
            "--working-set-pct" => a.working_set_pct = value()?.parse()?,
            "--sequential-mib" => a.sequential_mib = value()?.parse()?,
            _ => {}
        }
    }
    Ok(a)
}

/// Builds (once) the layer blob `work/layer.zfile` from an ext4 image of `source`.
async fn build_layer(args: &Args) -> Result<PathBuf, Error> {
    let out = args.work.join(format!("layer-{}m.zfile", args.image_mib));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&args.work)?;
    let t = Instant::now();
    let raw = args.work.join("raw.img");
    let _ = std::fs::remove_file(&raw);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-N", "200000", "-d"])
        .arg(&args.source)
        .arg(&raw)
        .arg(format!("{}M", args.image_mib))
        .status()?;
    if !status.success() {
        return Err(format!("mkfs.ext4 -d {} failed", args.source.display()).into());
    }
    let (data, index) = (args.work.join("wdata"), args.work.join("windex"));
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(&index);
    let upper = WritableLayer::create(&data, &index, &CreateOptions::new(args.image_mib << 20))?;
    import_raw(&raw, &LayerStack::new(Vec::new())?, &upper, &|_| {}).await?;
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    write_commit_file(
        &CommitSource::from_writable(&upper),
        &CommitOptions::default(),
        &partial,
        Some(WriterOptions::default()),
        &|_| {},
    )
    .await?;
    std::fs::rename(&partial, &out)?;
    for f in [&raw, &data, &index] {
        std::fs::remove_file(f)?;
    }
    eprintln!(
        "built {} ({} bytes) in {:.1} s",
        out.display(),
        std::fs::metadata(&out)?.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// A `docker-registry` on a free loopback port with storage in `dir`; killed on drop.
struct Registry(std::process::Child, String);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_registry(dir: &Path) -> Result<Registry, Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )?;
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{REGISTRY}: {e} (apt-get install docker-registry)"))?;
    let registry = Registry(child, format!("127.0.0.1:{port}"));
    let probe = reqwest::Client::new();
    let start = Instant::now();
    while probe
        .get(format!("http://{}/v2/", registry.1))
        .send()
        .await
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(15) {
            return Err("docker-registry did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(registry)
}

fn write_config(dir: &Path, config: serde_json::Value) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("config.v1.json");
    std::fs::write(&path, config.to_string())?;
    Ok(path)
}

/// Settings with the cache in `dir` (overlaybd's defaults otherwise: 256 KiB refill units;
/// our 4 MiB read-ahead).
fn settings(dir: &Path) -> DaemonSettings {
    let mut s = DaemonSettings::default();
    s.override_cache(Some(dir), Some(4 << 30));
    s
}

/// [`settings`] without read-ahead (`cacheConfig.readAheadKB = 0`).
fn settings_no_read_ahead(dir: &Path) -> DaemonSettings {
    let mut s = settings(dir);
    s.cache_config.read_ahead_kb = 0;
    s
}

/// A fixed, scattered start-up working set: whole "files" of 16 KiB to 1 MiB at
/// pseudo-random places in the image's data (executables, libraries and configs are read
/// whole), each read in 128 KiB requests like kernel readahead, until `pct` percent of the
/// image size is covered.
async fn working_set(dev: &dyn BlockDevice, pct: f64) -> Result<Vec<(u64, usize)>, Error> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < dev.size() {
        let st = dev.block_status(at).await?;
        if st.state == Provisioning::Mapped {
            runs.push((at, st.len));
        }
        at += st.len;
    }
    if runs.is_empty() {
        return Err("the image holds no data".into());
    }
    let target = (dev.size() as f64 * pct / 100.0) as u64;
    let mut x = 0x5EED_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut set, mut total) = (Vec::new(), 0u64);
    while total < target {
        let (start, len) = runs[(next() % runs.len() as u64) as usize];
        let offset = start + (next() % len) / 4096 * 4096;
        let file = (start + len - offset).min(16_384 << (next() % 7));
        let mut done = 0;
        while done < file {
            let n = (file - done).min(128 << 10);
            set.push((offset + done, n as usize));
            done += n;
        }
        total += file;
    }
    Ok(set)
}

/// Reads the working set in order; returns the digest of all bytes read.
async fn read_set(dev: &dyn BlockDevice, set: &[(u64, usize)]) -> Result<String, Error> {
    let mut h = Sha256::new();
    for &(offset, len) in set {
        h.update(dev.read(offset, len).await?);
    }
    Ok(hex::encode(h.finalize()))
}

struct Run {
    on_demand: Measured,
    traced: Measured,
    plain: Measured,
    full: Duration,
    download: Duration,
    decompress: Duration,
}

/// The pushed layer blob as the image configs name it.
struct Blob<'a> {
    repo_blob_url: &'a str,
    digest: &'a str,
    len: u64,
}

/// One open of the registry image plus a read of the working set.
struct Measured {
    time: Duration,
    bytes: u64,
    requests: u64,
    digest: String,
}

/// Opens the registry image from a fresh config and cache in `dir` with `settings` (and
/// `recordTracePath` = `trace` when given), reads the working set in order and closes the
/// device: the time from the open, the bytes and requests that crossed `proxy`, and the
/// digest of what was read.
async fn on_demand(
    dir: &Path,
    blob: &Blob<'_>,
    trace: Option<&Path>,
    settings: DaemonSettings,
    proxy: &FaultProxy,
    set: &[(u64, usize)],
) -> Result<Measured, Error> {
    std::fs::create_dir_all(dir.join("fs"))?;
    let mut config = serde_json::json!({"repoBlobUrl": blob.repo_blob_url,
        "lowers": [{"digest": blob.digest, "size": blob.len, "dir": dir.join("fs")}]});
    if let Some(trace) = trace {
        config["recordTracePath"] = serde_json::json!(trace);
    }
    let cfg = write_config(dir, config)?;
    let (before, requests_before) = (proxy.body_bytes(), proxy.requests());
    let t = Instant::now();
    let luns = RemoteImages::new(settings)?;
    let image = luns.open(&cfg, true).await?;
    let digest = read_set(image.as_ref(), set).await?;
    let time = t.elapsed();
    drop((image, luns));
    Ok(Measured {
        time,
        bytes: proxy.body_bytes() - before,
        requests: proxy.requests() - requests_before,
        digest,
    })
}

/// Opens the image with an empty `recordTracePath`, reads the working set, closes it and
/// returns the trace file once overlaybd's `.ok` marker says it is complete.
async fn record_trace(
    tmp: &Path,
    blob: &Blob<'_>,
    proxy: &FaultProxy,
    set: &[(u64, usize)],
) -> Result<PathBuf, Error> {
    let dir = tmp.join("record");
    std::fs::create_dir_all(&dir)?;
    let trace = dir.join("trace");
    std::fs::write(&trace, b"")?;
    let cache = settings(&dir.join("cache"));
    on_demand(&dir, blob, Some(&trace), cache, proxy, set).await?;
    let ok = dir.join("trace.ok");
    let t = Instant::now();
    while !ok.exists() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("the recorded trace was not written within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let len = std::fs::metadata(&trace)?.len();
    eprintln!(
        "recorded trace: {len} bytes ({} reads)",
        len.saturating_sub(24) / 24
    );
    Ok(trace)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run() -> Result<(), Error> {
    let args = parse_args()?;
    let layer = build_layer(&args).await?;
    let blob = std::fs::read(&layer)?;
    let blob_len = blob.len() as u64;
    let tmp = tempfile::tempdir()?;
    let registry = start_registry(tmp.path()).await?;
    let digest = push_blob(
        &reqwest::Client::new(),
        &format!("http://{}", registry.1),
        REPO,
        blob,
        None,
    )
    .await?;
    let link = Link {
        latency: Duration::from_millis(args.latency_ms),
        bytes_per_sec: Some(args.mbps * 1_000_000),
    };
    let upstream = registry.1.parse()?;
    // The proxy (the emulated network) gets its own thread, so its pacing does not wait for
    // the workers busy decompressing on the client side.
    let net = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let proxy = net
        .spawn(FaultProxy::start(upstream, link, |_, _| Fault::Pass))
        .await?;
    let repo_blob_url = format!("{}/v2/{REPO}/blobs", proxy.url());

    // The working set and its expected digest, from the layer file read locally.
    let local_cfg = write_config(
        &tmp.path().join("local"),
        serde_json::json!({"lowers": [{"file": layer}]}),
    )?;
    let local = RemoteImages::new(settings(&tmp.path().join("local/cache")))?
        .open(&local_cfg, true)
        .await?;
    let set = working_set(local.as_ref(), args.working_set_pct).await?;
    let set_bytes: u64 = set.iter().map(|(_, n)| *n as u64).sum();
    let expected = read_set(local.as_ref(), &set).await?;
    drop(local);

    // A recording start: the trace of the working set's layer reads (trace-prefetch.md §4),
    // written when the device closes.
    let blob = Blob {
        repo_blob_url: &repo_blob_url,
        digest: &digest,
        len: blob_len,
    };
    let trace = record_trace(tmp.path(), &blob, &proxy, &set).await?;

    let mut runs = Vec::new();
    for i in 0..args.runs {
        // On demand with the recorded trace replayed from the open on, cold cache.
        let dir = tmp.path().join(format!("traced{i}"));
        std::fs::create_dir_all(&dir)?;
        let replay = dir.join("trace");
        std::fs::copy(&trace, &replay)?;
        let cache = settings(&dir.join("cache"));
        let traced = on_demand(&dir, &blob, Some(&replay), cache, &proxy, &set).await?;
        // Let the cancelled replay's requests drain before the next measurement.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // On demand without read-ahead, cold cache.
        let dir = tmp.path().join(format!("plain{i}"));
        let cache = settings_no_read_ahead(&dir.join("cache"));
        let plain = on_demand(&dir, &blob, None, cache, &proxy, &set).await?;

        // On demand, cold cache.
        let dir = tmp.path().join(format!("ondemand{i}"));
        let cache = settings(&dir.join("cache"));
        let demand = on_demand(&dir, &blob, None, cache, &proxy, &set).await?;
        for (what, m) in [
            ("with a replayed trace", &traced),
            ("without read-ahead", &plain),
            ("on demand", &demand),
        ] {
            if m.digest != expected {
                return Err(format!("reads {what} returned wrong data").into());
            }
        }

        // Full download, decompress, then read locally.
        let dir = tmp.path().join(format!("full{i}"));
        std::fs::create_dir_all(&dir)?;
        let t = Instant::now();
        let zfile = dir.join("layer.zfile");
        let mut resp = reqwest::Client::new()
            .get(format!("{repo_blob_url}/{digest}"))
            .send()
            .await?
            .error_for_status()?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&zfile)?);
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk)?;
        }
        out.into_inner()?.sync_all()?;
        let download = t.elapsed();
        let lsmt = dir.join("layer.lsmt");
        let reader = ZFileReader::open(Arc::new(FileSource::open(&zfile).await?)).await?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&lsmt)?);
        let mut pos = 0;
        while pos < reader.size() {
            let n = (reader.size() - pos).min(8 << 20) as usize;
            out.write_all(&reader.read_exact_at(pos, n).await?)?;
            pos += n as u64;
        }
        out.into_inner()?.sync_all()?;
        let decompress = t.elapsed() - download;
        let cfg = write_config(&dir, serde_json::json!({"lowers": [{"file": lsmt}]}))?;
        let image = RemoteImages::new(settings(&dir.join("cache")))?
            .open(&cfg, true)
            .await?;
        let got = read_set(image.as_ref(), &set).await?;
        let full = t.elapsed();
        if got != expected {
            return Err("reads after the full download returned wrong data".into());
        }
        std::fs::remove_dir_all(&dir)?;
        let line = |m: &Measured| {
            format!(
                "{:.3} s ({} bytes in {} requests)",
                m.time.as_secs_f64(),
                m.bytes,
                m.requests
            )
        };
        eprintln!(
            "run {i}: with trace {}; no read-ahead {}; on demand {}; full {:.3} s \
             (download {:.3} s, decompress {:.3} s)",
            line(&traced),
            line(&plain),
            line(&demand),
            full.as_secs_f64(),
            download.as_secs_f64(),
            decompress.as_secs_f64()
        );
        runs.push(Run {
            on_demand: demand,
            traced,
            plain,
            full,
            download,
            decompress,
        });
    }
    // A sequential stream (a large file read whole, `dd`): the first `--sequential-mib` MiB
    // of the image in 128 KiB reads, cold cache, without and with read-ahead, alternately.
    let (mut seq_off, mut seq_on) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        for read_ahead in [false, true] {
            let dir = tmp.path().join(format!("seq{i}-{read_ahead}"));
            let cfg = write_config(
                &dir,
                serde_json::json!({"repoBlobUrl": repo_blob_url,
                    "lowers": [{"digest": digest, "size": blob_len, "dir": dir.join("fs")}]}),
            )?;
            std::fs::create_dir_all(dir.join("fs"))?;
            let cache = dir.join("cache");
            let s = match read_ahead {
                true => settings(&cache),
                false => settings_no_read_ahead(&cache),
            };
            let (before, requests_before) = (proxy.body_bytes(), proxy.requests());
            let t = Instant::now();
            let luns = RemoteImages::new(s)?;
            let image = luns.open(&cfg, true).await?;
            let len = (args.sequential_mib << 20).min(image.size());
            let mut at = 0;
            while at < len {
                let n = (len - at).min(128 << 10) as usize;
                image.read(at, n).await?;
                at += n as u64;
            }
            let took = t.elapsed().as_secs_f64();
            let fetched = (
                proxy.body_bytes() - before,
                proxy.requests() - requests_before,
            );
            drop((image, luns));
            tokio::time::sleep(Duration::from_millis(200)).await;
            eprintln!(
                "sequential {} MiB, read-ahead {read_ahead}: {took:.3} s ({} bytes in {} requests)",
                args.sequential_mib, fetched.0, fetched.1
            );
            match read_ahead {
                true => seq_on.push(took),
                false => seq_off.push(took),
            }
        }
    }

    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (od, plain, traced, full) = (
        m(|r| r.on_demand.time.as_secs_f64()),
        m(|r| r.plain.time.as_secs_f64()),
        m(|r| r.traced.time.as_secs_f64()),
        m(|r| r.full.as_secs_f64()),
    );
    println!("cold start, {} runs (medians)", runs.len());
    println!(
        "  image: {} MiB ext4 of {}, layer blob {} bytes (ZFile LZ4)",
        args.image_mib,
        args.source.display(),
        blob_len
    );
    println!(
        "  link: {} ms per request, {} MB/s; working set {} reads, {} bytes ({:.1}% of the image)",
        args.latency_ms,
        args.mbps,
        set.len(),
        set_bytes,
        100.0 * set_bytes as f64 / (args.image_mib << 20) as f64
    );
    println!(
        "  on demand: {od:.3} s, {:.0} bytes fetched in {:.0} requests ({:.1}% of the blob)",
        m(|r| r.on_demand.bytes as f64),
        m(|r| r.on_demand.requests as f64),
        100.0 * m(|r| r.on_demand.bytes as f64) / blob_len as f64
    );
    println!(
        "  full download + decompress + read: {full:.3} s (download {:.3} s, decompress {:.3} s)",
        m(|r| r.download.as_secs_f64()),
        m(|r| r.decompress.as_secs_f64())
    );
    println!(
        "  on demand without read-ahead: {plain:.3} s, {:.0} bytes fetched in {:.0} requests",
        m(|r| r.plain.bytes as f64),
        m(|r| r.plain.requests as f64),
    );
    println!(
        "  on demand with the recorded trace replayed: {traced:.3} s, {:.0} bytes fetched in \
         {:.0} requests",
        m(|r| r.traced.bytes as f64),
        m(|r| r.traced.requests as f64),
    );
    println!("  ratio full / on demand: {:.1}x", full / od);
    println!(
        "  ratio full / on demand without read-ahead: {:.1}x",
        full / plain
    );
    println!("  ratio full / on demand with trace: {:.1}x", full / traced);
    let (off, on) = (median(seq_off), median(seq_on));
    println!(
        "  sequential {} MiB: {off:.3} s without read-ahead, {on:.3} s with ({:.1}x)",
        args.sequential_mib,
        off / on
    );
    drop(proxy);
    drop(registry);
    net.shutdown_background();
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("cold_start: {e}");
        std::process::exit(1);
    }
}

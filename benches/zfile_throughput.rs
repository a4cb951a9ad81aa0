//! ZFile decode throughput beside the plain `lz4` / `zstd` command-line tools, and 1 MiB reads
//! of a one-layer LSMT image stored in a ZFile. Run with `cargo bench --bench zfile_throughput`.
//!
//! Content is real file data (see `common/corpus.rs`), `BENCH_CORPUS_MIB` MiB of it (default
//! 256). Every figure is the median of `BENCH_RUNS` passes (default 5) over the whole content,
//! with 1 MiB sequential reads; ratios compare medians taken in the same run, which is what
//! stays meaningful on a shared, noisy machine. In-process ZFiles keep the reference tools'
//! default per-block CRC32C, which the reader verifies. `BENCH_ONLY=text` runs only the lines
//! whose name contains `text` (e.g. `BENCH_ONLY="LZ4 4K 1"` to profile one case); several
//! comma-separated texts select the lines matching any (`BENCH_ONLY="lz4 -d,LZ4 4K"`).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only smoke-tests the in-process
//! paths on 4 MiB, once, without the command-line tools, so CI checks it works but never times it.

#[path = "common/corpus.rs"]
mod corpus;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use overlaybd_target::cache::file::FileSource;
use overlaybd_target::overlaybd::commit::{write_commit, CommitOptions, CommitSource, SyncSink};
use overlaybd_target::overlaybd::writable::CreateOptions;
use overlaybd_target::overlaybd::{Image, LayerStack, SealedLayer, WritableLayer};
use overlaybd_target::source::BytesSource;
use overlaybd_target::source::LayerSource;
use overlaybd_target::zfile::{Algorithm, WriterOptions, ZFileReader, ZFileWriter};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MIB: usize = 1 << 20;
/// Size of every in-process read.
const READ: usize = MIB;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) used so far by this process and by its waited-for children.
fn cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes the struct it is given; an all-zero rusage is valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a live, writable rusage for the duration of the call.
        if unsafe { libc::getrusage(who, &mut usage) } == 0 {
            for t in [usage.ru_utime, usage.ru_stime] {
                total += t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            }
        }
    }
    total
}

/// Figures of one case: medians over the runs of wall-clock MiB/s and of MiB per CPU-second
/// (all threads of the process plus the command-line tool it ran), and every run's MiB/s.
struct Speed {
    wall: f64,
    cpu: f64,
    runs: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Times `runs` passes of `pass` over `bytes` of output.
///
/// MiB per CPU-second is what one otherwise idle core would deliver for single-threaded work;
/// on this shared machine it moves far less than wall-clock figures when other jobs compete
/// for the cores. For parallel work it shows the total CPU cost instead.
fn measure(bytes: usize, runs: usize, mut pass: impl FnMut() -> Result<()>) -> Result<Speed> {
    let mib = bytes as f64 / MIB as f64;
    let (mut wall, mut cpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let (start, cpu_start) = (Instant::now(), cpu_seconds());
        pass()?;
        wall.push(mib / start.elapsed().as_secs_f64());
        cpu.push(mib / (cpu_seconds() - cpu_start).max(1e-6));
    }
    Ok(Speed {
        wall: median(&wall),
        cpu: median(&cpu),
        runs: wall,
    })
}

/// Prints one result line: name, median MiB/s, median MiB per CPU-second, the individual runs'
/// MiB/s, and ratios of both medians to a same-run base if given.
fn report(name: &str, speed: &Speed, base: Option<(&str, &Speed)>) {
    let runs: Vec<String> = speed.runs.iter().map(|s| format!("{s:.0}")).collect();
    let ratio = base.map_or(String::new(), |(what, b)| {
        format!(
            "  {:.2}x {what} ({:.2}x per CPU-s)",
            speed.wall / b.wall,
            speed.cpu / b.cpu
        )
    });
    println!(
        "{name:<44} {:>6.0} MiB/s {:>6.0} MiB/CPU-s  [{}]{ratio}",
        speed.wall,
        speed.cpu,
        runs.join(" ")
    );
}

/// Checks a piece read at `at` against the expected content, when there is one (smoke test).
fn check(expect: Option<&[u8]>, at: u64, got: &[u8]) -> Result<()> {
    let Some(expect) = expect else { return Ok(()) };
    match expect.get(at as usize..at as usize + got.len()) {
        Some(want) if want == got => Ok(()),
        _ => Err(format!("wrong bytes read at {at}").into()),
    }
}

/// Reads the whole source sequentially in 1 MiB pieces.
async fn read_all(source: &dyn LayerSource, expect: Option<&[u8]>) -> Result<()> {
    let size = source.size();
    let mut at = 0;
    while at < size {
        let len = (size - at).min(READ as u64) as usize;
        let got = source.read_exact_at(at, len).await?;
        check(expect, at, &got)?;
        at += len as u64;
    }
    Ok(())
}

/// Runs `tool args` with stdout to /dev/null (decompression) or to `out`.
fn run_tool(tool: &str, args: &[&str], out: Option<&Path>) -> Result<()> {
    let stdout = match out {
        Some(path) => Stdio::from(File::create(path)?),
        None => Stdio::from(File::create("/dev/null")?),
    };
    let status = Command::new(tool)
        .args(args)
        .stdout(stdout)
        .status()
        .map_err(|e| format!("{tool}: {e} (install the Debian package `{tool}`)"))?;
    if !status.success() {
        return Err(format!("{tool} {args:?} failed: {status}").into());
    }
    Ok(())
}

fn zfile_bytes(data: &[u8], algorithm: Algorithm, block_size: u32) -> Result<Vec<u8>> {
    let options = WriterOptions {
        algorithm,
        block_size,
        verify: true,
    };
    let mut writer = ZFileWriter::new(Vec::new(), options)?;
    writer.write_all(data)?;
    Ok(writer.finish()?.0)
}

/// Builds a sealed one-layer LSMT image holding `data` densely from sector 0, committed straight
/// into a ZFile at `out` (what `overlaybd-commit -z` produces).
async fn lsmt_zfile(data: &[u8], dir: &Path, out: &Path, algorithm: Algorithm) -> Result<()> {
    let (data_path, index_path) = (dir.join("upper.data"), dir.join("upper.index"));
    let _ = std::fs::remove_file(&data_path);
    let _ = std::fs::remove_file(&index_path);
    let layer = WritableLayer::create(
        &data_path,
        &index_path,
        &CreateOptions::new(data.len() as u64),
    )?;
    for (i, chunk) in data.chunks(READ).enumerate() {
        layer
            .write((i * READ) as u64, bytes::Bytes::copy_from_slice(chunk))
            .await?;
    }
    layer.flush().await?;
    let options = WriterOptions {
        algorithm,
        block_size: 4096,
        verify: true,
    };
    let mut sink = SyncSink(ZFileWriter::new(File::create(out)?, options)?);
    write_commit(
        &CommitSource::from_writable(&layer),
        &CommitOptions::default(),
        &mut sink,
    )
    .await?;
    sink.0.finish()?;
    std::fs::remove_file(&data_path)?;
    std::fs::remove_file(&index_path)?;
    Ok(())
}

/// The image of the one-layer ZFile at `path`; `workers` caps the ZFile decode threads.
async fn open_image(path: &Path, workers: Option<usize>) -> Result<Image> {
    let file: Arc<dyn LayerSource> = Arc::new(FileSource::open(path).await?);
    let mut reader = ZFileReader::open(file).await?;
    if let Some(n) = workers {
        reader = reader.with_decode_workers(n);
    }
    let layer = SealedLayer::open(Arc::new(reader)).await?;
    Ok(Image::new(LayerStack::new(vec![layer])?, None).await?)
}

async fn read_image(image: &Image, size: u64, expect: Option<&[u8]>) -> Result<()> {
    let mut at = 0;
    while at < size {
        let len = (size - at).min(READ as u64) as usize;
        check(expect, at, &image.read_at(at, len).await?)?;
        at += len as u64;
    }
    Ok(())
}

fn main() -> Result<()> {
    let timed = std::env::args().any(|a| a == "--bench");
    let (len, runs) = if timed {
        (
            env_usize("BENCH_CORPUS_MIB", 256) * MIB,
            env_usize("BENCH_RUNS", 5).max(1),
        )
    } else {
        (4 * MIB, 1)
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("zfile-throughput");
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let data = corpus::corpus(len);
    // The smoke test also checks every byte read; timed runs do not pay for the comparison.
    let expect = (!timed).then_some(&data[..]);
    let raw = dir.join("corpus.raw");
    std::fs::write(&raw, &data)?;
    if !timed {
        println!("smoke test (no --bench): 4 MiB, every byte checked; the figures mean nothing");
    }
    println!(
        "corpus: {} MiB of /usr/lib + /usr/share files, {runs} runs each, median MiB/s of output",
        len / MIB
    );

    // The command-line tools on the same content, as one stream each, from the page cache.
    let raw_arg = raw.to_str().ok_or("non-UTF-8 temp path")?;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| {
        only.split(',').any(|part| name.contains(part)) && (timed || !name.contains("CLI"))
    };
    // Each tool twice: as run by default (lz4 checks an XXH32 of the whole content, zstd an
    // XXH64), and with that check off. Ratios use the faster, unchecked figure.
    let mut cli = Vec::new();
    for (tool, level, ext, unchecked) in [
        ("lz4", "-1", "lz4", "--no-frame-crc"),
        ("zstd", "-3", "zst", "--no-check"),
    ] {
        let name = format!("{tool} -d CLI");
        if !wanted(&name) {
            cli.push(None);
            continue;
        }
        let packed = dir.join(format!("corpus.{ext}"));
        run_tool(tool, &[level, "-q", "-c", raw_arg], Some(&packed))?;
        let packed_arg = packed.to_str().ok_or("non-UTF-8 temp path")?;
        let ratio = len as f64 / std::fs::metadata(&packed)?.len() as f64;
        run_tool(tool, &["-d", "-q", "-c", packed_arg], None)?; // warm the page cache
        let checked = measure(len, runs, || {
            run_tool(tool, &["-d", "-q", "-c", packed_arg], None)
        })?;
        report(
            &format!("{name} (one stream, ratio {ratio:.2})"),
            &checked,
            None,
        );
        let fast = measure(len, runs, || {
            run_tool(tool, &["-d", "-q", unchecked, "-c", packed_arg], None)
        })?;
        report(&format!("{name} {unchecked}"), &fast, None);
        cli.push(Some(fast));
        std::fs::remove_file(&packed)?;
    }

    let mut cli = cli.into_iter();
    let (lz4_cli, zstd_cli) = (cli.next().flatten(), cli.next().flatten());
    for (algorithm, cli_speed) in [(Algorithm::Lz4, &lz4_cli), (Algorithm::Zstd, &zstd_cli)] {
        // 64 KiB blocks are not measured: real content holds incompressible files (.gz, .png),
        // whose 64 KiB blocks store above the 64 KiB the reference reader accepts, so the
        // writer refuses them.
        for block_size in [4096u32, 32_768] {
            let name = format!("zfile {algorithm} {}K", block_size / 1024);
            let (one_name, many_name) = (format!("{name} 1 thread"), format!("{name} parallel"));
            if !wanted(&one_name) && !wanted(&many_name) {
                continue;
            }
            let file = zfile_bytes(&data, algorithm, block_size)?;
            let ratio = len as f64 / file.len() as f64;
            let file = bytes::Bytes::from(file);
            let source =
                || -> Arc<dyn LayerSource> { Arc::new(BytesSource::new(file.clone(), "zfile")) };
            let single = rt
                .block_on(ZFileReader::open(source()))?
                .with_decode_workers(1);
            let parallel = rt.block_on(ZFileReader::open(source()))?;
            let base = cli_speed.as_ref().map(|s| ("CLI", s));
            if wanted(&one_name) {
                let one = measure(len, runs, || rt.block_on(read_all(&single, expect)))?;
                report(&format!("{one_name} (ratio {ratio:.2})"), &one, base);
            }
            if wanted(&many_name) {
                let many = measure(len, runs, || rt.block_on(read_all(&parallel, expect)))?;
                report(&format!("{many_name} (ratio {ratio:.2})"), &many, base);
            }
        }
    }

    // 1 MiB reads of the virtual disk of a dense one-layer image, through a file.
    for (algorithm, cli_speed) in [(Algorithm::Lz4, &lz4_cli), (Algorithm::Zstd, &zstd_cli)] {
        let name = format!("image (LSMT in ZFile {algorithm} 4K)");
        if !wanted(&format!("{name} 1 thread")) && !wanted(&format!("{name} parallel")) {
            continue;
        }
        let path = dir.join(format!("layer.{algorithm}.zfile"));
        rt.block_on(lsmt_zfile(&data, &dir, &path, algorithm))?;
        for (label, workers) in [("1 thread", Some(1)), ("parallel", None)] {
            let name = format!("{name} {label}");
            if !wanted(&name) {
                continue;
            }
            let image = rt.block_on(open_image(&path, workers))?;
            let size = len as u64 - len as u64 % 512;
            let result = measure(len, runs, || rt.block_on(read_image(&image, size, expect)))?;
            report(&name, &result, cli_speed.as_ref().map(|s| ("CLI", s)));
        }
        std::fs::remove_file(&path)?;
    }
    std::fs::remove_file(&raw)?;
    Ok(())
}

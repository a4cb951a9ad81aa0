//! `loadgen`: an iSCSI load generator for comparing targets (see benches/README.md).
//!
//! It is a minimal initiator built on the project's own PDU codec (the codec is symmetric):
//! each session logs in without authentication, reads the capacity, then keeps `--qd` READ(16)
//! or WRITE(16) commands in flight for the warm-up plus the measured time. Writes send their
//! data as immediate data when the target allows it and answer R2Ts for the rest.
//!
//! One line of `key=value` results goes to stdout: IOPS, MiB/s, mean/p50/p99/max latency in
//! microseconds (of commands completed inside the measured window), and errors.
//!
//! `--tcp-baseline` instead measures one loopback TCP stream (plain blocking read/write of
//! 1 MiB buffers), the ceiling a single-connection target could reach.

mod session;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use self::session::{Pattern, Totals, TIMELINE_STEP};

/// Command line.
#[derive(Parser, Debug, Clone)]
#[command(about = "iSCSI load generator (READ16/WRITE16)")]
struct Args {
    /// Target portal, e.g. 127.0.0.1:3260.
    #[arg(long)]
    portal: Option<SocketAddr>,
    /// Target IQN.
    #[arg(long)]
    target: Option<String>,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// Number of sessions (one connection each).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Commands in flight per session.
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Bytes per command (a multiple of 512).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Percentage of writes (0..=100).
    #[arg(long, default_value_t = 0)]
    write_pct: u8,
    /// Sequential instead of random offsets.
    #[arg(long)]
    seq: bool,
    /// With `--seq`: read the LUN once and stop; the measured time is that pass (no warm-up;
    /// `--duration` is then only a limit). For first reads through a cold cache.
    #[arg(long, requires = "seq")]
    once: bool,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measure one loopback TCP stream instead (no target needed).
    #[arg(long)]
    tcp_baseline: bool,
    /// Also write the measured window's completions per 100 ms to this file, one line per
    /// slot: the slot's start as Unix time in seconds, and IOPS over that slot. For lining
    /// the load up with something else happening meanwhile (benches/control-plane.sh).
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.tcp_baseline {
        return match tcp_baseline(Duration::from_secs_f64(args.duration)) {
            Ok(mibs) => {
                println!("mibs={mibs:.1}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(portal), Some(target)) = (args.portal, args.target.clone()) else {
        eprintln!("loadgen: --portal and --target are required");
        return ExitCode::from(2);
    };
    if args.bs == 0 || args.bs % 512 != 0 || args.qd == 0 || args.sessions == 0 {
        eprintln!("loadgen: --bs must be a positive multiple of 512, --qd and --sessions > 0");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeline = args.timeline.clone();
    let result = runtime.block_on(run(args, portal, target));
    match result {
        Ok(totals) => {
            report(&totals);
            if let Some(path) = timeline {
                if let Err(e) = write_timeline(&path, &totals) {
                    eprintln!("loadgen: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if totals.errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts every session with the same clock and sums their results.
async fn run(args: Args, portal: SocketAddr, target: String) -> std::io::Result<Totals> {
    let warmup = if args.once {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(args.warmup)
    };
    let measured = Duration::from_secs_f64(args.duration);
    let mut logged_in = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        logged_in.push(session::Session::login(portal, &target, args.lun, i).await?);
    }
    // Clock starts once everybody is logged in.
    let start = Instant::now() + warmup;
    let start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + warmup;
    let end = start + measured;
    let mut tasks = tokio::task::JoinSet::new();
    let sessions = args.sessions;
    for (i, s) in logged_in.into_iter().enumerate() {
        let pattern = Pattern {
            qd: args.qd,
            bs: args.bs,
            write_pct: args.write_pct,
            sequential: args.seq,
            once: args.once,
            index: i,
            of: sessions,
        };
        tasks.spawn(s.run(pattern, start, end));
    }
    let mut totals = Totals {
        measured,
        bs: args.bs,
        start_unix,
        ..Totals::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let t = joined.map_err(std::io::Error::other)??;
        totals.ios += t.ios;
        totals.errors += t.errors;
        totals.latencies_ns.extend(t.latencies_ns);
        if totals.timeline.len() < t.timeline.len() {
            totals.timeline.resize(t.timeline.len(), 0);
        }
        for (sum, n) in totals.timeline.iter_mut().zip(t.timeline) {
            *sum += n;
        }
    }
    if args.once {
        // The pass ended when its last session did.
        totals.measured = start.elapsed().min(measured);
    }
    Ok(totals)
}

/// Prints the one result line.
fn report(t: &Totals) {
    let mut lat = t.latencies_ns.clone();
    lat.sort_unstable();
    let secs = t.measured.as_secs_f64();
    let iops = t.ios as f64 / secs;
    let mibs = iops * f64::from(t.bs) / (1024.0 * 1024.0);
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&n| n as f64).sum::<f64>() / lat.len() as f64 / 1000.0
    };
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat.get(i).map_or(0.0, |&n| n as f64 / 1000.0)
    };
    println!(
        "iops={iops:.0} mibs={mibs:.1} mean_us={mean:.1} p50_us={:.1} p99_us={:.1} max_us={:.1} ios={} errors={}",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        t.ios,
        t.errors
    );
}

/// Writes `--timeline`: per slot of the measured window, its start (Unix seconds) and IOPS.
fn write_timeline(path: &std::path::Path, t: &Totals) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let step = TIMELINE_STEP.as_secs_f64();
    let slots = (t.measured.as_secs_f64() / step).ceil() as usize;
    let mut text = String::new();
    for i in 0..slots {
        let n = t.timeline.get(i).copied().unwrap_or(0);
        let at = t.start_unix.as_secs_f64() + i as f64 * step;
        let _ = writeln!(text, "{at:.3} {:.0}", n as f64 / step);
    }
    std::fs::write(path, text)
}

/// MiB/s of one loopback TCP stream: a thread writes 1 MiB buffers, this one reads them.
fn tcp_baseline(duration: Duration) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let buf = vec![0x5au8; 1 << 20];
        // Ends when the reader closes its side.
        while s.write_all(&buf).is_ok() {}
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 1 << 20];
    let warm_end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm_end {
        if s.read(&mut buf)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let start = Instant::now();
    let mut total = 0u64;
    while start.elapsed() < duration {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    let _ = writer.join();
    Ok(total as f64 / secs / (1024.0 * 1024.0))
}

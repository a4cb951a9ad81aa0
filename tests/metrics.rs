//! The metrics endpoint of the real binary (`--metrics`): what initiators do shows in the
//! contract's series, exactly; the text passes `promtool check metrics` when Debian's
//! prometheus is installed.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use overlaybd_target::iscsi::pdu::LoginStatus;
use support::metrics::{get, get_with, scrape, value};
use support::process::Target;
use support::raw_initiator::{read16, text, write10, Dir, RawConn, INITIATOR};

const IQN: &str = "iqn.2026-12.io.overlaybd:metrics";

/// A free port for the metrics listener. Another process could take it before the target
/// binds it; the target then exits at once and `Target::start_with` tries again, calling
/// this again.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts the binary serving a 256 MiB RAM LUN with metrics on a port of their own.
fn start() -> (Target, SocketAddr) {
    let metrics = std::sync::Mutex::new(None);
    let target = Target::start_with(|port| {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        *metrics.lock().unwrap() = Some(addr);
        [
            "--portal",
            &format!("127.0.0.1:{port}"),
            "--metrics",
            &addr.to_string(),
            "--target",
            IQN,
            "--lun",
            "ram:256M",
            "--no-api",
            "--no-state",
        ]
        .map(String::from)
        .to_vec()
    });
    let addr = metrics.lock().unwrap().expect("metrics address chosen");
    (target, addr)
}

fn lun_series(name: &str, extra: &str) -> String {
    format!("overlaybd_target_{name}{{target=\"{IQN}\",lun=\"0\"{extra}}}")
}

/// The value of `series` in a fresh scrape (0 when the series is not there yet).
fn now(addr: SocketAddr, series: &str) -> f64 {
    let (status, body) = scrape(addr);
    assert_eq!(status, 200, "{body}");
    value(&body, series).unwrap_or(0.0)
}

#[test]
fn initiator_work_shows_exactly_in_the_metrics() {
    let (target, addr) = start();
    let read_bytes = lun_series("read_bytes_total", "");
    let reads = lun_series("commands_total", ",kind=\"read\"");
    let sessions = format!("overlaybd_target_sessions{{target=\"{IQN}\"}}");
    assert_eq!(now(addr, &read_bytes), 0.0);
    assert_eq!(now(addr, &sessions), 0.0);

    let mut conn = RawConn::login_to(target.addr(), IQN, &[]);
    conn.clear_unit_attention();
    assert_eq!(now(addr, &sessions), 1.0);
    let logins = format!("overlaybd_target_logins_total{{target=\"{IQN}\",result=\"success\"}}");
    assert_eq!(now(addr, &logins), 1.0);
    let attention = lun_series("check_conditions_total", ",sense_key=\"unit_attention\"");
    assert_eq!(now(addr, &attention), 1.0, "the power-on unit attention");

    // Exactly 128 MiB in READ(16)s of 256 KiB (512 blocks), 16 at a time.
    const CHUNK_BLOCKS: u32 = 512;
    const TOTAL: u64 = 128 << 20;
    let commands = TOTAL / (u64::from(CHUNK_BLOCKS) * 512);
    let mut lba = 0u64;
    let mut received = 0u64;
    while lba * 512 < TOTAL {
        let itts: Vec<u32> = (0..16)
            .map(|_| {
                let cdb = read16(lba, CHUNK_BLOCKS);
                lba += u64::from(CHUNK_BLOCKS);
                conn.queue_command(&cdb, Dir::Read, CHUNK_BLOCKS * 512, Bytes::new(), false)
            })
            .collect();
        conn.flush().unwrap();
        for (_, outcome) in conn.outcomes(&itts) {
            assert_eq!(outcome.status, 0);
            received += outcome.data.len() as u64;
        }
    }
    assert_eq!(received, TOTAL);
    assert_eq!(now(addr, &read_bytes), TOTAL as f64);
    assert_eq!(now(addr, &reads), commands as f64);

    // A 4 KiB write, and a read past the end (ILLEGAL REQUEST).
    let data = Bytes::from(vec![0x5a; 4096]);
    let itt = conn.queue_command(&write10(8, 8), Dir::Write, 4096, data, false);
    conn.flush().unwrap();
    assert_eq!(conn.outcome(itt).status, 0);
    let beyond = (256u64 << 20) / 512;
    let itt = conn.queue_command(&read16(beyond, 1), Dir::Read, 512, Bytes::new(), false);
    conn.flush().unwrap();
    assert_eq!(conn.outcome(itt).status, 2);
    let (status, body) = scrape(addr);
    assert_eq!(status, 200);
    assert_eq!(
        value(&body, &lun_series("write_bytes_total", "")),
        Some(4096.0)
    );
    let illegal = lun_series("check_conditions_total", ",sense_key=\"illegal_request\"");
    assert_eq!(value(&body, &illegal), Some(1.0));
    // The failed read moved nothing: the byte count is unchanged, the command is counted.
    assert_eq!(value(&body, &read_bytes), Some(TOTAL as f64));
    assert_eq!(value(&body, &reads), Some(commands as f64 + 1.0));
    let latency = lun_series("command_duration_seconds_count", ",kind=\"read\"");
    assert_eq!(value(&body, &latency), Some(commands as f64 + 1.0));
    promtool_accepts(&body);

    // A login to a target that is not served is counted without its made-up name.
    let mut stranger = RawConn::connect(target.addr()).unwrap();
    let pairs = [
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2026-12.io.example:made-up"),
        ("SessionType", "Normal"),
    ];
    let rsp = stranger.login_pdus(&[Bytes::from(text(&pairs))]).unwrap();
    assert_eq!(rsp.status, LoginStatus::NOT_FOUND);
    let refused = "overlaybd_target_logins_total{target=\"(unknown)\",result=\"not_found\"}";
    assert_eq!(now(addr, refused), 1.0);
    assert!(!scrape(addr).1.contains("made-up"));

    // The session gauge falls when the connection goes.
    conn.shutdown();
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while now(addr, &sessions) != 0.0 {
        assert!(Instant::now() < deadline, "the session is still counted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Prometheus asks for OpenMetrics first and gets it; the counters keep their names.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
    let (status, body) = get_with(addr, "/metrics", accept);
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(value(&body, &read_bytes), Some(TOTAL as f64));

    // Only GET /metrics is served.
    assert_eq!(get(addr, "/").0, 404);
    target.stop();
}

/// Debian's Prometheus server scrapes the target every second while an initiator reads; its
/// query API then answers with the bytes read, as an operator's dashboard would see them.
#[test]
fn a_prometheus_server_scrapes_the_target_during_a_workload() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipped: Prometheus scrape (prometheus is not installed; Debian package prometheus)"
        );
        return;
    }
    let (target, metrics) = start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: overlaybd-target\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop = KillOnDrop(&mut server);

    // 64 MiB of reads, in READ(16)s of 256 KiB, while Prometheus scrapes.
    let mut conn = RawConn::login_to(target.addr(), IQN, &[]);
    conn.clear_unit_attention();
    const TOTAL: u64 = 64 << 20;
    for lba in (0..TOTAL / 512).step_by(512) {
        let itt = conn.queue_command(&read16(lba, 512), Dir::Read, 512 * 512, Bytes::new(), false);
        conn.flush().unwrap();
        assert_eq!(conn.outcome(itt).status, 0);
    }
    // Prometheus has the total once a scrape after the reads is in (a few seconds).
    let query = format!(
        "/api/v1/query?query=overlaybd_target_read_bytes_total%7Btarget%3D%22{}%22%7D",
        IQN.replace(':', "%3A")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let answer = std::net::TcpStream::connect(web)
            .ok()
            .map(|_| get(web, &query))
            .filter(|(status, body)| *status == 200 && body.contains(&format!("\"{TOTAL}\"")));
        if let Some((_, body)) = answer {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {TOTAL} bytes read"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(answer.contains("\"job\":\"overlaybd-target\""), "{answer}");
    // Its own view of the scrape: the target is up.
    let (_, up) = get(web, "/api/v1/query?query=up");
    assert!(up.contains("\"1\"]"), "{up}");
    target.stop();
}

/// Kills a child process when dropped, so a failing test leaves no server behind.
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `promtool check metrics` on `text` when Debian's prometheus is installed.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: promtool check metrics (promtool is not installed; Debian package prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

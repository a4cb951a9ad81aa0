//! Learned traces (README "Learned traces") against the real binary: a daemon with a state file
//! and `learn_traces = true` serves an `image:` LUN built by the test; the test reads blocks
//! through a raw iSCSI session, ends the recording with the API (and `ctl trace`), and checks
//! the learned trace: it decodes, it names the layer offsets the reads reached, `.ok` is beside
//! it. Another LUN of the same image, and the same LUN after a restart, replay it.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use overlaybd_target::overlaybd::{Image, ImageConfig, LocalOpener};
use overlaybd_target::prefetch::trace::{self, TraceRecord};
use serde_json::Value;
use support::api::http;
use support::images::imported_layer;
use support::process::{binary, run, run_fails, Target};
use support::raw_initiator::{read10, Dir, Outcome, RawConn};
use tempfile::TempDir;

/// The target every daemon serves.
const T: &str = "iqn.2026-11.io.overlaybd:learn";
const BLOCK: u64 = 512;
/// The image's size: 4 MiB of data, every block non-zero.
const IMAGE: usize = 4 << 20;

/// A daemon with its API socket, state file and config in `dir`.
struct Served {
    target: Target,
    dir: TempDir,
}

impl Served {
    /// Serves `dir/targets.toml` (written by the caller) with `--api` and `--state` in `dir`.
    fn start(dir: TempDir) -> Served {
        let api = dir.path().join("api.sock");
        let state = dir.path().join("state.json");
        let config = dir.path().join("targets.toml");
        let target = Target::start_with(|port| {
            [
                "--portal",
                &format!("127.0.0.1:{port}"),
                "--api",
                api.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--nop-interval",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        });
        Served { target, dir }
    }

    /// `kill -9`, then the same command line again.
    fn crash_and_restart(self) -> Served {
        let Served { target, dir } = self;
        // SAFETY: plain kill(2) on our own child's pid; dropping the handle reaps it.
        unsafe { libc::kill(target.pid() as libc::pid_t, libc::SIGKILL) };
        drop(target);
        Served::start(dir)
    }

    fn api(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// `GET …/luns/{lun}/trace`.
    fn trace(&self, lun: u64) -> Value {
        let (code, body) = http(&self.api(), "GET", &trace_path(lun, ""), None);
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits until LUN `lun` is ready (it opens in the background at start).
    fn wait_ready(&self, lun: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, status) = http(&self.api(), "GET", "/v1/status", None);
            let ready = status["targets"][0]["luns"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["lun"] == lun && l["state"] == "ready");
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "LUN {lun} not ready: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `overlaybd-target ctl --api SOCKET args`.
    fn ctl(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = binary();
        cmd.arg("ctl").arg("--api").arg(self.api()).args(args);
        cmd
    }
}

/// The API path of LUN `lun`'s trace, followed by `tail`.
fn trace_path(lun: u64, tail: &str) -> String {
    format!("/v1/targets/{T}/luns/{lun}/trace{tail}")
}

/// The image: a one-layer config (`dir/local.json`) over data without zero blocks, and a
/// `targets.toml` serving it as LUN 0 with learning on and a `learn_seconds` window.
fn image_and_config(dir: &Path, learn_seconds: u64) -> (PathBuf, Bytes) {
    let content = common::pattern(IMAGE, 7);
    // A zero block would be left out of the layer, and never read from it.
    let content: Bytes = content.iter().map(|b| b | 1).collect::<Vec<u8>>().into();
    imported_layer(dir, &content);
    let config = dir.join("local.json");
    let toml = format!(
        "[global]\nlearn_traces = true\nlearn_seconds = {learn_seconds}\n\n\
         [[targets]]\nname = \"{T}\"\nluns = [{{ backing = \"image:{}\" }}]\n",
        config.display()
    );
    std::fs::write(dir.join("targets.toml"), toml).unwrap();
    (config, content)
}

/// READ(10) of `blocks` at `lba` of LUN `lun`, asserting GOOD; the data.
fn read(conn: &mut RawConn, lun: u64, lba: u32, blocks: u16) -> Vec<u8> {
    let len = u32::from(blocks) * BLOCK as u32;
    let itt = conn.queue_command_to(
        lun,
        &read10(lba, blocks),
        Dir::Read,
        len,
        Bytes::new(),
        false,
    );
    conn.flush().unwrap();
    let out: Outcome = conn.outcome(itt);
    assert_eq!(out.status, 0, "READ at {lba}: sense {:02x?}", out.sense);
    out.data
}

/// A session to [`T`] past the power-on UNIT ATTENTION of `lun`.
fn session(served: &Served, lun: u64) -> RawConn {
    let mut conn = RawConn::login_to(served.target.addr(), T, &[]);
    let itt = conn.queue_command_to(lun, &[0; 6], Dir::None, 0, Bytes::new(), false);
    conn.flush().unwrap();
    conn.outcome(itt);
    conn
}

/// Where the device bytes `[lba, lba + blocks)` live in the layer's LSMT blob: byte ranges.
async fn layer_ranges(config: &Path, lba: u64, blocks: u64) -> Vec<(u64, u64)> {
    let loaded = ImageConfig::load(config).unwrap();
    let image = Image::open(&loaded, "local.json", &LocalOpener)
        .await
        .unwrap();
    let mut ranges = Vec::new();
    for r in image.extents(lba, blocks) {
        assert!(!r.zeroed, "the test image has no zero blocks");
        let start = r.offset.max(lba);
        let end = (r.offset + u64::from(r.length)).min(lba + blocks);
        let at = (r.moffset + (start - r.offset)) * BLOCK;
        ranges.push((at, (end - start) * BLOCK));
    }
    ranges
}

/// Whether the records cover every byte of `(at, len)` of layer 0.
fn covered(records: &[TraceRecord], (at, len): (u64, u64)) -> bool {
    let mut sector = at;
    while sector < at + len {
        let hit = records
            .iter()
            .any(|r| r.layer == 0 && r.offset <= sector && sector + BLOCK <= r.offset + r.count);
        if !hit {
            return false;
        }
        sector += BLOCK;
    }
    true
}

/// The whole flow: learn while a host reads, stop through the API, check the trace, replay
/// it on another LUN and after a restart.
#[test]
fn a_lun_learns_its_trace_and_later_opens_replay_it() {
    let dir = tempfile::tempdir().unwrap();
    let (config, content) = image_and_config(dir.path(), 600);
    let served = Served::start(dir);
    served.wait_ready(0);

    // Learning: recording into traces/<64 hex>.trace, the open's reads already in.
    let state = served.trace(0);
    assert_eq!(state["mode"], "recording", "{state}");
    let path = PathBuf::from(state["path"].as_str().unwrap());
    assert_eq!(path.parent().unwrap(), served.dir.path().join("traces"));
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with(".trace") && name.len() == 64 + 6, "{name}");
    let at_open = state["records"].as_u64().unwrap();
    assert!(
        at_open > 0,
        "the header and index reads are recorded: {state}"
    );
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let ok = PathBuf::from(format!("{}.ok", path.display()));
    assert!(lock.exists() && !ok.exists());

    // A host reads three places.
    let reads: [(u32, u16); 3] = [(0, 8), (2048, 16), (8000, 8)];
    let mut conn = session(&served, 0);
    for (lba, blocks) in reads {
        let data = read(&mut conn, 0, lba, blocks);
        let start = lba as usize * BLOCK as usize;
        assert_eq!(data, content[start..start + data.len()], "READ at {lba}");
    }
    let state = served.trace(0);
    assert_eq!(state["mode"], "recording", "{state}");
    assert!(state["records"].as_u64().unwrap() > at_open, "{state}");

    // Stopped through the API: the trace is written when it answers.
    let (code, stopped) = http(&served.api(), "POST", &trace_path(0, "/stop"), None);
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["mode"], "recorded", "{stopped}");
    let records = stopped["records"].as_u64().unwrap();
    assert!(records > at_open, "{stopped}");
    assert!(ok.exists() && !lock.exists());
    let learned = trace::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(learned.len() as u64, records);
    // Every read of the host is in it, at its place in the layer blob.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (lba, blocks) in reads {
        for range in runtime.block_on(layer_ranges(&config, lba.into(), blocks.into())) {
            assert!(
                covered(&learned, range),
                "READ at {lba}: {range:?} not in {learned:?}"
            );
        }
    }
    assert_eq!(served.trace(0)["mode"], "recorded");
    // Not recording any more: 409, also through ctl; an unknown LUN: 404.
    let (code, body) = http(&served.api(), "POST", &trace_path(0, "/stop"), None);
    assert_eq!(code, 409, "{body}");
    let err = run_fails(&mut served.ctl(&["trace", "stop", T, "0"]));
    assert!(err.contains("not recording"), "{err}");
    let (code, body) = http(&served.api(), "POST", &trace_path(9, "/stop"), None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = http(&served.api(), "GET", &trace_path(9, ""), None);
    assert_eq!(code, 404, "{body}");
    drop(conn);

    // Another LUN of the same image replays what was learned.
    let backing = format!("image:{}", config.display());
    let out = run(&mut served.ctl(&["lun", "add", T, &backing, "--lun", "1"]));
    assert_eq!(out.trim(), "1");
    let state = served.trace(1);
    assert_eq!(state["mode"], "replaying", "{state}");
    assert_eq!(state["path"], path.display().to_string());
    assert_eq!(state["records"], records);
    let shown = run(&mut served.ctl(&["trace", "show", T, "1"]));
    assert!(shown.contains("replaying"), "{shown}");
    let mut conn = session(&served, 1);
    assert_eq!(read(&mut conn, 1, 100, 8), content[100 * 512..108 * 512]);
    drop(conn);

    // And so does LUN 0 after a crash and restart; the trace is unchanged.
    let before = std::fs::read(&path).unwrap();
    let served = served.crash_and_restart();
    served.wait_ready(0);
    let state = served.trace(0);
    assert_eq!(state["mode"], "replaying", "{state}");
    assert_eq!(state["path"], path.display().to_string());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// The window opens at the first read after the open, not at the open: a LUN nobody reads
/// keeps recording past `learn_seconds`; once read, it stops by itself after the window. A
/// stale lock of a crashed run does not keep the image from learning.
#[test]
fn the_window_starts_at_the_first_read_and_stale_locks_are_cleared() {
    let dir = tempfile::tempdir().unwrap();
    image_and_config(dir.path(), 1);
    // A lock that a killed daemon left for every image it learned.
    let traces = dir.path().join("traces");
    std::fs::create_dir(&traces).unwrap();
    let stale = traces.join(format!("{}.trace.lock", "0".repeat(64)));
    std::fs::write(&stale, b"").unwrap();
    let served = Served::start(dir);
    served.wait_ready(0);
    assert!(!stale.exists(), "stale locks are removed at start");
    assert_eq!(served.trace(0)["mode"], "recording");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(served.trace(0)["mode"], "recording", "no read yet");

    let mut conn = session(&served, 0);
    read(&mut conn, 0, 64, 8);
    let deadline = Instant::now() + Duration::from_secs(15);
    let state = loop {
        let state = served.trace(0);
        if state["mode"] == "recorded" {
            break state;
        }
        assert!(Instant::now() < deadline, "still {state}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(state["records"].as_u64().unwrap() > 0, "{state}");
    let path = PathBuf::from(state["path"].as_str().unwrap());
    assert!(PathBuf::from(format!("{}.ok", path.display())).exists());
    assert!(!trace::decode(&std::fs::read(&path).unwrap())
        .unwrap()
        .is_empty());
}

/// `learn=` per LUN overrides `learn_traces` both ways: with learning off, the LUN that asks
/// records and its neighbour does nothing; with learning on, the LUN that declines does
/// nothing while its neighbour records. Both LUNs serve the same image.
#[test]
fn the_learn_option_overrides_learn_traces_per_lun() {
    for (global, first, modes) in [
        ("", "learn = true", ["recording", "none"]),
        (
            "learn_traces = true",
            "learn = false",
            ["none", "recording"],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        image_and_config(dir.path(), 600);
        let config = dir.path().join("local.json");
        let toml = format!(
            "[global]\n{global}\n\n[[targets]]\nname = \"{T}\"\nluns = [\n\
             {{ backing = \"image:{0}\", {first} }},\n{{ backing = \"image:{0}\" }},\n]\n",
            config.display()
        );
        std::fs::write(dir.path().join("targets.toml"), toml).unwrap();
        let served = Served::start(dir);
        served.wait_ready(0);
        served.wait_ready(1);
        for (lun, mode) in modes.iter().enumerate() {
            let state = served.trace(lun as u64);
            assert_eq!(state["mode"], *mode, "{global:?}, LUN {lun}: {state}");
        }
    }
}

/// A SIGHUP reload applies the learning settings to LUNs opened from then on: LUN 0, open
/// before with learning off, keeps doing nothing; LUN 1, which the edited file adds along
/// with `learn_traces = true`, records.
#[test]
fn a_reload_turns_learning_on_for_luns_opened_after_it() {
    let dir = tempfile::tempdir().unwrap();
    image_and_config(dir.path(), 600);
    let folder = dir.path().to_path_buf();
    let config = folder.join("local.json");
    let write = |global: &str, luns: usize| {
        let lun = format!("{{ backing = \"image:{}\" }}", config.display());
        let toml = format!(
            "[global]\n{global}\n\n[[targets]]\nname = \"{T}\"\nluns = [{}]\n",
            vec![lun; luns].join(", ")
        );
        std::fs::write(folder.join("targets.toml"), toml).unwrap();
    };
    write("", 1);
    let served = Served::start(dir);
    served.wait_ready(0);
    assert_eq!(served.trace(0)["mode"], "none");
    write("learn_traces = true", 2);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(served.target.pid() as libc::pid_t, libc::SIGHUP) };
    served.wait_ready(1);
    assert_eq!(served.trace(1)["mode"], "recording", "{}", served.trace(1));
    assert_eq!(
        served.trace(0)["mode"],
        "none",
        "an open LUN is not reopened"
    );
}

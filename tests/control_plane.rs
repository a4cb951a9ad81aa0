//! The runtime control plane (README "Runtime changes: `overlaybd-target ctl`") against the
//! real binary. Each test starts `overlaybd-target` with its API socket and state file in a
//! temporary folder, changes targets and LUNs with `overlaybd-target ctl` (or raw HTTP on the
//! socket) while a raw-socket iSCSI session (`support/raw_initiator.rs`) is logged in, and
//! asserts what the session sees (SCSI status and sense, REPORT LUNS, data), what `ctl` prints
//! and how it exits.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::pattern;
use overlaybd_target::iscsi::pdu::{LoginStatus, LunField, Pdu, ASYNC_EVENT_LOGOUT_REQUESTED};
use serde_json::Value;
use support::api::http;
use support::fixtures::require;
use support::images::write_config;
use support::process::{binary, run, run_fails, tool, Target};
use support::raw_initiator::{read10, read16, text, write10, Dir, Outcome, RawConn, INITIATOR};
use tempfile::TempDir;

/// The target every daemon declares (quick form).
const T: &str = "iqn.2026-11.io.overlaybd:cp";
/// A target the tests add with `ctl`.
const T2: &str = "iqn.2026-11.io.overlaybd:second";
/// A well-formed name no daemon serves.
const NOBODY: &str = "iqn.2026-11.io.overlaybd:nobody";

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const BLOCK: usize = 512;

/// (sense key, ASC, ASCQ) of the conditions the tests expect.
type Condition = (u8, u8, u8);
/// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED: a nexus's first command.
const POWER_ON: Condition = (0x6, 0x29, 0x00);
/// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED.
const LUNS_CHANGED: Condition = (0x6, 0x3f, 0x0e);
/// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
const LUN_NOT_SUPPORTED: Condition = (0x5, 0x25, 0x00);
/// NOT READY, MEDIUM NOT PRESENT: what a LUN whose backing file is missing answers.
const MEDIUM_NOT_PRESENT: Condition = (0x2, 0x3a, 0x00);

// ---- The daemon and `ctl` ----

/// A running `overlaybd-target` whose API socket and state file live in `dir`.
struct Served {
    target: Target,
    dir: TempDir,
    /// The arguments after the portal, API and state ones, to restart it the same way.
    args: Vec<String>,
}

/// The quick-form arguments serving target [`T`] with `luns`.
fn quick(luns: &[&str]) -> Vec<String> {
    let mut args = vec!["--target".to_string(), T.to_string()];
    for lun in luns {
        args.extend(["--lun".to_string(), lun.to_string()]);
    }
    args
}

impl Served {
    /// Serves target [`T`] with `luns` from a new temporary folder.
    fn start(luns: &[&str]) -> Served {
        Served::start_in(tempfile::tempdir().unwrap(), quick(luns))
    }

    /// Serves `args` with `--api` and `--state` in `dir`. Pings are off so that the raw
    /// session, which never answers one, sees only what the test asks for.
    fn start_in(dir: TempDir, args: Vec<String>) -> Served {
        let api = dir.path().join("api.sock");
        let state = dir.path().join("state.json");
        let target = Target::start_with(|port| {
            let mut all: Vec<String> = vec![
                "--portal".into(),
                format!("127.0.0.1:{port}"),
                "--api".into(),
                api.to_str().unwrap().into(),
                "--state".into(),
                state.to_str().unwrap().into(),
                "--nop-interval".into(),
                "0".into(),
            ];
            all.extend(args.iter().cloned());
            all
        });
        Served { target, dir, args }
    }

    /// `kill -9`, then the same command line again (on a new port).
    fn crash_and_restart(self) -> Served {
        let Served { target, dir, args } = self;
        // SAFETY: plain kill(2) on our own child's pid; dropping the handle reaps it.
        unsafe { libc::kill(target.pid() as libc::pid_t, libc::SIGKILL) };
        drop(target);
        Served::start_in(dir, args)
    }

    fn api(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    /// `overlaybd-target ctl --api SOCKET args`, not started yet.
    fn ctl(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = binary();
        cmd.arg("ctl").arg("--api").arg(self.api()).args(args);
        cmd
    }

    /// Runs `ctl args`, asserting success; its standard output.
    fn ctl_ok(&self, args: &[&str]) -> String {
        run(&mut self.ctl(args))
    }

    /// Runs `ctl args`, asserting that it fails with exactly one line on standard error;
    /// that line.
    fn ctl_fails(&self, args: &[&str]) -> String {
        let err = run_fails(&mut self.ctl(args));
        assert_eq!(
            err.lines().count(),
            1,
            "ctl {args:?}: not one line: {err:?}"
        );
        err
    }

    /// `ctl lun add iqn backing extra...`, asserting success; the number it printed.
    fn add_lun(&self, iqn: &str, backing: &str, extra: &[&str]) -> u64 {
        let mut args = vec!["lun", "add", iqn, backing];
        args.extend(extra);
        let out = self.ctl_ok(&args);
        out.trim_end()
            .parse()
            .unwrap_or_else(|_| panic!("ctl lun add printed {out:?}, not a number"))
    }

    /// `ctl status --json`.
    fn status(&self) -> Value {
        serde_json::from_str(&self.ctl_ok(&["status", "--json"])).expect("status JSON")
    }

    /// The LUNs of target `iqn` as `ctl status --json` lists them.
    fn luns(&self, iqn: &str) -> Vec<Value> {
        targets(&self.status())
            .into_iter()
            .find(|(name, _)| name == iqn)
            .unwrap_or_else(|| panic!("{iqn} is not in the status"))
            .1
    }

    /// A new session logged in to `iqn`.
    fn login(&self, iqn: &str) -> Session {
        Session(RawConn::login_to(self.target.addr(), iqn, &[]))
    }
}

/// Each target of a status with its LUNs, leaving out what a session changes (counts).
fn targets(status: &Value) -> Vec<(String, Vec<Value>)> {
    status["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            let name = t["name"].as_str().expect("name").to_string();
            (name, t["luns"].as_array().expect("luns").clone())
        })
        .collect()
}

/// The numbers of a LUN list from the status.
fn numbers(luns: &[Value]) -> Vec<u64> {
    luns.iter().map(|l| l["lun"].as_u64().unwrap()).collect()
}

// ---- The session ----

/// A logged-in session; every command waits for its outcome.
struct Session(RawConn);

impl Session {
    /// Sends one command to `lun`, with `data` as immediate data, and waits for its outcome.
    fn command(&mut self, lun: u64, cdb: &[u8], dir: Dir, edtl: u32, data: &[u8]) -> Outcome {
        let data = Bytes::copy_from_slice(data);
        let itt = self.0.queue_command_to(lun, cdb, dir, edtl, data, false);
        self.0.flush().unwrap();
        self.0.outcome(itt)
    }

    /// TEST UNIT READY.
    fn test_unit_ready(&mut self, lun: u64) -> Outcome {
        self.command(lun, &[0; 6], Dir::None, 0, &[])
    }

    /// Takes the power-on UNIT ATTENTION of the session's first command to `lun`.
    fn power_on(&mut self, lun: u64) {
        assert_eq!(condition(&self.test_unit_ready(lun)), POWER_ON, "LUN {lun}");
    }

    /// REPORT LUNS (sent to LUN 0): the LUN numbers.
    fn report_luns(&mut self) -> Vec<u64> {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
        let out = good(self.command(0, &cdb, Dir::Read, 4096, &[]));
        let len = u32::from_be_bytes(out.data[..4].try_into().unwrap()) as usize;
        out.data[8..8 + len]
            .chunks(8)
            .map(|field| {
                LunField::from_bytes(field.try_into().unwrap())
                    .number()
                    .expect("a decodable LUN")
            })
            .collect()
    }

    /// READ(10), whatever its outcome.
    fn read(&mut self, lun: u64, lba: u32, blocks: u16) -> Outcome {
        let len = u32::from(blocks) * BLOCK as u32;
        self.command(lun, &read10(lba, blocks), Dir::Read, len, &[])
    }

    /// The data of a READ(10), asserting GOOD.
    fn read_ok(&mut self, lun: u64, lba: u32, blocks: u16) -> Vec<u8> {
        good(self.read(lun, lba, blocks)).data
    }

    /// WRITE(10) of `data` (whole blocks, all sent as immediate data), asserting GOOD.
    fn write_ok(&mut self, lun: u64, lba: u32, data: &[u8]) {
        let blocks = (data.len() / BLOCK) as u16;
        let len = data.len() as u32;
        good(self.command(lun, &write10(lba, blocks), Dir::Write, len, data));
    }

    /// READ CAPACITY(10): (last LBA, block length).
    fn capacity(&mut self, lun: u64) -> (u32, u32) {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x25;
        let out = good(self.command(lun, &cdb, Dir::Read, 8, &[]));
        let field = |at: usize| u32::from_be_bytes(out.data[at..at + 4].try_into().unwrap());
        (field(0), field(4))
    }
}

/// Status and sense of an outcome, without its data (which may be megabytes).
fn describe(out: &Outcome) -> String {
    format!("status {:#04x}, sense {:02x?}", out.status, out.sense)
}

/// Asserts GOOD.
fn good(out: Outcome) -> Outcome {
    assert_eq!(out.status, GOOD, "expected GOOD: {}", describe(&out));
    out
}

/// The (sense key, ASC, ASCQ) of a CHECK CONDITION (fixed-format sense).
fn condition(out: &Outcome) -> Condition {
    assert_eq!(out.status, CHECK_CONDITION, "{}", describe(out));
    let sense = out.sense.as_deref().expect("CHECK CONDITION carries sense");
    (sense[2] & 0x0f, sense[12], sense[13])
}

// ---- Raw HTTP on the API socket ----

/// Asserts an error answer: `code`, and a body that is exactly `{"error": MESSAGE}`; the
/// message.
fn http_error(answer: (u16, Value), code: u16, what: &str) -> String {
    let (got, body) = answer;
    assert_eq!(got, code, "{what}: {body}");
    let object = body.as_object().expect("a JSON object");
    assert_eq!(object.len(), 1, "{what}: {body}");
    object["error"].as_str().expect("error text").to_string()
}

// ---- Tests ----

/// `ctl lun add` while a session runs: it prints the new number; the session's next command
/// to LUN 0 reports REPORTED LUNS DATA HAS CHANGED exactly once; REPORT LUNS lists the new LUN,
/// which serves READ CAPACITY, WRITE and READ. A REPORT LUNS withdraws the announcement of a
/// later add on every LUN the session uses.
#[test]
fn lun_added_during_a_session_is_announced_once_and_serves() {
    let served = Served::start(&["ram:16M"]);
    let mut s = served.login(T);
    s.power_on(0);
    assert_eq!(s.report_luns(), [0]);

    assert_eq!(served.ctl_ok(&["lun", "add", T, "ram:8M"]), "1\n");
    assert_eq!(condition(&s.test_unit_ready(0)), LUNS_CHANGED);
    good(s.test_unit_ready(0));
    assert_eq!(s.report_luns(), [0, 1]);

    s.power_on(1);
    assert_eq!(
        s.capacity(1),
        (((8 << 20) / BLOCK - 1) as u32, BLOCK as u32)
    );
    let data = pattern(16 * BLOCK, 1);
    s.write_ok(1, 100, &data);
    assert_eq!(s.read_ok(1, 100, 16), data);

    assert_eq!(
        served.ctl_ok(&["lun", "add", T, "ram:1M", "--lun", "5"]),
        "5\n"
    );
    assert_eq!(s.report_luns(), [0, 1, 5]);
    good(s.test_unit_ready(0));
    good(s.test_unit_ready(1));
    let luns = served.luns(T);
    assert_eq!(numbers(&luns), [0, 1, 5]);
    assert!(luns.iter().all(|l| l["state"] == "ready"), "{luns:?}");
    assert_eq!(luns[2]["size_bytes"], 1 << 20);
}

/// `ctl lun add` takes the lowest free number unless `--lun N` names one; a number already
/// taken is refused (HTTP 409's message, non-zero exit, one line), and so are an unknown
/// target ("no target ...") and a number beyond 16383, none adding anything.
#[test]
fn lun_numbers_are_chosen_or_refused() {
    let served = Served::start(&["ram:1M"]);
    assert_eq!(served.add_lun(T, "ram:1M", &["--lun", "5"]), 5);

    let err = served.ctl_fails(&["lun", "add", T, "ram:2M", "--lun", "5"]);
    assert!(
        err.contains(&format!("target {T} already has LUN 5")),
        "{err}"
    );
    let err = served.ctl_fails(&["lun", "add", NOBODY, "ram:1M"]);
    assert!(err.contains(&format!("no target {NOBODY}")), "{err}");
    let err = served.ctl_fails(&["lun", "add", T, "ram:1M", "--lun", "16384"]);
    assert!(err.contains("0 to 16383"), "{err}");

    let luns = served.luns(T);
    assert_eq!(numbers(&luns), [0, 5]);
    assert_eq!(luns[1]["size_bytes"], 1 << 20, "LUN 5 was replaced");
    assert_eq!(served.add_lun(T, "ram:1M", &[]), 1);
    assert_eq!(numbers(&served.luns(T)), [0, 1, 5]);
}

/// A LUN nobody used is removed without `--force`. One a session used is refused without it
/// (the message says `--force`) and keeps serving; forced, the session's commands to it get
/// ILLEGAL REQUEST 25/00, LUN 0 reports REPORTED LUNS DATA HAS CHANGED, REPORT LUNS lists
/// LUN 0 alone. A LUN added at the freed number is a new unit (power-on, its own data).
#[test]
fn lun_in_use_is_removed_only_with_force() {
    let served = Served::start(&["ram:4M", "ram:4M", "ram:4M"]);
    let mut s = served.login(T);
    s.power_on(0);
    s.power_on(1);
    let data = pattern(8 * BLOCK, 2);
    s.write_ok(1, 0, &data);

    assert_eq!(served.ctl_ok(&["lun", "remove", T, "2"]), "");
    assert_eq!(condition(&s.test_unit_ready(0)), LUNS_CHANGED);
    assert_eq!(s.report_luns(), [0, 1]);

    let err = served.ctl_fails(&["lun", "remove", T, "1"]);
    assert!(err.contains("in use") && err.contains("--force"), "{err}");
    assert_eq!(s.read_ok(1, 0, 8), data);
    good(s.test_unit_ready(0));

    assert_eq!(served.ctl_ok(&["lun", "remove", T, "1", "--force"]), "");
    assert_eq!(condition(&s.read(1, 0, 8)), LUN_NOT_SUPPORTED);
    assert_eq!(condition(&s.test_unit_ready(1)), LUN_NOT_SUPPORTED);
    assert_eq!(condition(&s.test_unit_ready(0)), LUNS_CHANGED);
    good(s.test_unit_ready(0));
    assert_eq!(s.report_luns(), [0]);
    assert_eq!(numbers(&served.luns(T)), [0]);

    // The number is free again, for a new unit the session meets as new.
    assert_eq!(served.add_lun(T, "ram:4M", &["--lun", "1"]), 1);
    assert_eq!(s.report_luns(), [0, 1]);
    s.power_on(1);
    assert_eq!(s.read_ok(1, 0, 8), vec![0; 8 * BLOCK]);
}

/// Force-removing a LUN while large READs of it are in flight (sent together, their Data-In
/// not read yet): every READ ends with a status, GOOD with all its data or CHECK CONDITION
/// LOGICAL UNIT NOT SUPPORTED, within the per-PDU wait; the session then goes on with LUN 0.
#[test]
fn force_removal_completes_commands_in_flight() {
    const READS: usize = 8;
    const BLOCKS: u32 = 16384; // 8 MiB each
    let served = Served::start(&["ram:1M", "ram:64M"]);
    let mut s = served.login(T);
    s.power_on(0);
    s.power_on(1);
    let head = pattern(64 * BLOCK, 3);
    s.write_ok(1, 0, &head);

    let len = BLOCKS * BLOCK as u32;
    let itts: Vec<u32> = (0..READS)
        .map(|_| {
            s.0.queue_command_to(1, &read16(0, BLOCKS), Dir::Read, len, Bytes::new(), false)
        })
        .collect();
    s.0.flush().unwrap();
    // Nothing is read from the connection meanwhile: the target is still sending 64 MiB.
    assert_eq!(served.ctl_ok(&["lun", "remove", T, "1", "--force"]), "");

    let outcomes = s.0.outcomes(&itts);
    for itt in &itts {
        let out = &outcomes[itt];
        if out.status == GOOD {
            assert_eq!(out.data.len(), len as usize, "READ {itt} came back short");
            assert!(
                out.data.starts_with(&head),
                "READ {itt} returned wrong data"
            );
        } else {
            assert_eq!(condition(out), LUN_NOT_SUPPORTED, "READ {itt}");
        }
    }
    assert_eq!(condition(&s.test_unit_ready(0)), LUNS_CHANGED);
    assert_eq!(s.report_luns(), [0]);
    assert_eq!(s.read_ok(0, 0, 8).len(), 8 * BLOCK);
}

/// Removing a target with a session is refused without `--force`; forced, the session gets an
/// Async Message asking it to log out (AsyncEvent 1) and its connection is closed within a few
/// seconds, discovery lists the other target only, and a new login to the removed one is
/// refused with status 0x0203 (not found) until a target of that name is added again.
#[test]
fn target_removed_with_force_logs_its_sessions_out() {
    let served = Served::start(&["ram:1M"]);
    assert_eq!(served.ctl_ok(&["target", "add", T2]), "");
    assert_eq!(served.add_lun(T2, "ram:1M", &[]), 0);
    let mut s = served.login(T);
    s.power_on(0);

    let err = served.ctl_fails(&["target", "remove", T]);
    assert!(
        err.contains("1 session") && err.contains("--force"),
        "{err}"
    );
    good(s.test_unit_ready(0));

    // It returns once the session is gone, so it runs while the session reads.
    let remove = served
        .ctl(&["target", "remove", T, "--force"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match s.0.recv(Duration::from_secs(10)) {
        Ok(Some(Pdu::AsyncMessage(m))) => assert_eq!(m.event, ASYNC_EVENT_LOGOUT_REQUESTED),
        other => panic!("expected an Async Message, got {other:?}"),
    }
    assert!(
        s.0.drain_until_closed(Duration::from_secs(10)),
        "the session that did not log out was not dropped"
    );
    let removed = remove.wait_with_output().unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );

    let port = served.target.port;
    let listing = run(tool("iscsi-ls").arg(format!("iscsi://127.0.0.1:{port}")));
    assert!(
        listing.contains(&format!("Target:{T2} Portal:")),
        "{listing}"
    );
    assert!(!listing.contains(&format!("Target:{T} ")), "{listing}");
    let names: Vec<String> = targets(&served.status()).into_iter().map(|t| t.0).collect();
    assert_eq!(names, [T2]);

    let mut late = RawConn::connect(served.target.addr()).unwrap();
    let login = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", T),
        ("SessionType", "Normal"),
    ]);
    let answer = late.login_pdus(&[Bytes::from(login)]).unwrap();
    assert_eq!(answer.status, LoginStatus::NOT_FOUND, "{answer:?}");

    // The name is free again.
    assert_eq!(served.ctl_ok(&["target", "add", T]), "");
    assert_eq!(served.add_lun(T, "ram:1M", &[]), 0);
    let mut again = served.login(T);
    again.power_on(0);
    assert_eq!(again.report_luns(), [0]);
}

/// What `ctl` changed survives `kill -9`: after a restart with the same command line, every
/// LUN is back at its number and ready, a file LUN holds what a session wrote before the
/// kill, LUNs removed before it (one added with `ctl`, one declared on the command line) stay
/// removed, and the state file has mode 0600.
#[test]
fn changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let initial = pattern(1 << 20, 4);
    std::fs::write(&disk, &initial).unwrap();
    let file_lun = format!("file:{}", disk.display());
    let served = Served::start_in(dir, quick(&["ram:16M"]));

    assert_eq!(served.ctl_ok(&["target", "add", T2, "--alias", "kept"]), "");
    assert_eq!(served.add_lun(T2, &file_lun, &[]), 0);
    assert_eq!(served.add_lun(T2, "ram:4M", &[]), 1);
    assert_eq!(served.add_lun(T2, "ram:2M", &["--lun", "7"]), 7);
    assert_eq!(served.ctl_ok(&["lun", "remove", T2, "7"]), "");
    assert_eq!(served.add_lun(T, "ram:1M", &[]), 1);
    assert_eq!(served.ctl_ok(&["lun", "remove", T, "0"]), "");

    let written = pattern(128 * BLOCK, 5);
    let mut s = served.login(T2);
    s.power_on(0);
    s.write_ok(0, 256, &written);
    let before = targets(&served.status());
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&served.state()), 0o600);

    let served = served.crash_and_restart();
    let status = served.status();
    assert_eq!(targets(&status), before);
    let t2 = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == T2)
        .unwrap();
    assert_eq!(t2["alias"], "kept");
    assert_eq!(numbers(&served.luns(T)), [1]);
    let luns = served.luns(T2);
    assert_eq!(numbers(&luns), [0, 1]);
    assert_eq!(luns[0]["backing"], file_lun.as_str());
    assert_eq!(luns[1]["size_bytes"], 4 << 20);
    let all: Vec<Value> = before.into_iter().flat_map(|t| t.1).collect();
    assert!(all.iter().all(|l| l["state"] == "ready"), "{all:?}");

    let mut s = served.login(T2);
    s.power_on(0);
    assert_eq!(s.read_ok(0, 0, 256), initial[..256 * BLOCK]);
    assert_eq!(s.read_ok(0, 256, 128), written);
    assert_eq!(s.read_ok(0, 384, 128), initial[384 * BLOCK..512 * BLOCK]);
    assert_eq!(mode(&served.state()), 0o600);
}

/// A backing that cannot be opened: `ctl lun add` refuses it with one line naming the path
/// and changes nothing (status, and no REPORTED LUNS DATA HAS CHANGED for the session). A LUN
/// declared at start on a missing file shows `failed` with the reason in `ctl status --json`
/// and answers NOT READY, MEDIUM NOT PRESENT while LUN 0 serves I/O. With the shared fixture,
/// an `image:` LUN added at runtime serves the image's ext4 superblock.
#[test]
fn broken_luns_fail_alone() {
    const MISSING: &str = "/nonexistent/overlaybd-cp-declared.img";
    let served = Served::start(&["ram:4M", &format!("file:{MISSING}")]);
    let luns = served.luns(T);
    assert_eq!(luns[0]["state"], "ready");
    assert_eq!(luns[1]["state"], "failed", "{luns:?}");
    let reason = luns[1]["reason"].as_str().expect("a reason");
    assert!(reason.contains(MISSING), "{reason}");

    let mut s = served.login(T);
    s.power_on(0);
    s.power_on(1);
    assert_eq!(condition(&s.test_unit_ready(1)), MEDIUM_NOT_PRESENT);
    assert_eq!(condition(&s.read(1, 0, 1)), MEDIUM_NOT_PRESENT);
    let data = pattern(4 * BLOCK, 6);
    s.write_ok(0, 8, &data);
    assert_eq!(s.read_ok(0, 8, 4), data);

    let before = served.status();
    let err = served.ctl_fails(&["lun", "add", T, "file:/nonexistent/overlaybd-cp-added.img"]);
    assert!(err.contains("/nonexistent/overlaybd-cp-added.img"), "{err}");
    assert_eq!(served.status(), before);
    good(s.test_unit_ready(0));
    assert_eq!(s.report_luns(), [0, 1]);

    // Without the upstream layer the rest (an image LUN) is skipped, and `require` says so.
    let Some(fixture) = require("ext4_64") else {
        return;
    };
    let config = write_config(
        served.dir.path(),
        "",
        serde_json::json!({ "file": fixture }),
    );
    assert_eq!(
        served.add_lun(T, &format!("image:{}", config.display()), &[]),
        2
    );
    assert_eq!(condition(&s.test_unit_ready(0)), LUNS_CHANGED);
    s.power_on(2);
    // The ext4 superblock starts at byte 1024; its magic 0xEF53 at offset 56, little endian.
    let superblock = s.read_ok(2, 2, 2);
    assert_eq!(superblock[56..58], [0x53, 0xef]);
    assert_eq!(served.luns(T)[2]["state"], "ready");
}

/// Bad requests straight on the API socket: each answers its status with a body that is
/// exactly `{"error": MESSAGE}`, and none changes anything.
#[test]
fn bad_api_requests_are_refused_with_their_status() {
    let served = Served::start(&["ram:1M"]);
    let api = served.api();
    let before = served.status();
    let targets_path = "/v1/targets";
    let luns_path = format!("/v1/targets/{T}/luns");

    let msg = http_error(
        http(&api, "POST", targets_path, Some(r#"{"name": "#)),
        400,
        "malformed JSON",
    );
    assert!(msg.contains("invalid request body"), "{msg}");
    let unknown = format!(r#"{{"name": "{T2}", "colour": "blue"}}"#);
    let msg = http_error(
        http(&api, "POST", targets_path, Some(&unknown)),
        400,
        "unknown field",
    );
    assert!(msg.contains("colour"), "{msg}");
    let msg = http_error(
        http(&api, "GET", &format!("/v1/targets/{NOBODY}"), None),
        404,
        "unknown target",
    );
    assert!(msg.contains(NOBODY), "{msg}");
    http_error(
        http(
            &api,
            "POST",
            &format!("/v1/targets/{NOBODY}/luns"),
            Some(r#"{"backing": "ram:1M"}"#),
        ),
        404,
        "LUN of an unknown target",
    );
    let msg = http_error(
        http(
            &api,
            "POST",
            targets_path,
            Some(&format!(r#"{{"name": "{T}"}}"#)),
        ),
        409,
        "duplicate target",
    );
    assert!(msg.contains("already exists"), "{msg}");
    http_error(
        http(
            &api,
            "POST",
            &luns_path,
            Some(r#"{"backing": "ram:1M", "lun": 0}"#),
        ),
        409,
        "duplicate LUN number",
    );
    for lun in ["abc", "-1", "1.5", "99999999999999999999999"] {
        let msg = http_error(
            http(&api, "DELETE", &format!("{luns_path}/{lun}"), None),
            400,
            "bad LUN number",
        );
        assert!(msg.contains("LUN number"), "{lun}: {msg}");
    }
    http_error(
        http(
            &api,
            "POST",
            targets_path,
            Some(r#"{"name": "not an iscsi name"}"#),
        ),
        400,
        "not an iSCSI name",
    );
    let short = format!(r#"{{"name": "{T2}", "chap": {{"user": "u", "secret": "elevenchars"}}}}"#);
    let msg = http_error(
        http(&api, "POST", targets_path, Some(&short)),
        400,
        "short CHAP secret",
    );
    assert!(!msg.contains("elevenchars"), "the secret is echoed: {msg}");

    assert_eq!(served.status(), before);
    // The same socket takes a good request.
    let (code, created) = http(
        &api,
        "POST",
        targets_path,
        Some(&format!(r#"{{"name": "{T2}"}}"#)),
    );
    assert_eq!((code, created["name"].as_str()), (201, Some(T2)));
}

/// Twenty `ctl lun add` processes at once on one target all succeed, with twenty distinct
/// numbers (the lowest free ones); the status lists them all ready, and so it does after a
/// `kill -9` and restart (every add reached the state file).
#[test]
fn concurrent_lun_adds_get_distinct_numbers() {
    const ADDS: u64 = 20;
    let served = Served::start(&["ram:1M"]);
    let children: Vec<_> = (0..ADDS)
        .map(|_| {
            served
                .ctl(&["lun", "add", T, "ram:1M"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut got: Vec<u64> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout.trim_end().parse().expect("a LUN number")
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=ADDS).collect::<Vec<_>>());
    let luns = served.luns(T);
    assert_eq!(numbers(&luns), (0..=ADDS).collect::<Vec<_>>());
    assert!(luns.iter().all(|l| l["state"] == "ready"), "{luns:?}");

    // Every one of them reached the state file.
    let served = served.crash_and_restart();
    assert_eq!(served.luns(T), luns);
}

/// SIGHUP re-reads `--config` and serves what a restart would: targets and LUNs the edit adds
/// or removes change at once, a LUN still in use stays (and the reload says why), changes made
/// through the API stay on top, and a restart serves the same set.
#[test]
fn sighup_applies_the_edited_config_and_keeps_api_changes() {
    const T3: &str = "iqn.2026-11.io.overlaybd:third";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("targets.toml");
    let write = |targets: &[(&str, &[&str])]| {
        let mut text = String::new();
        for (name, luns) in targets {
            let luns: Vec<String> = luns
                .iter()
                .map(|b| format!("{{ backing = \"{b}\" }}"))
                .collect();
            text += &format!(
                "[[targets]]\nname = \"{name}\"\nluns = [{}]\n",
                luns.join(", ")
            );
        }
        std::fs::write(&config, text).unwrap();
    };
    write(&[(T, &["ram:1M", "ram:2M", "ram:3M"]), (T2, &["ram:1M"])]);
    let args = vec!["--config".to_string(), config.display().to_string()];
    let served = Served::start_in(dir, args);
    // A change through the API, and a session using LUN 2 of T.
    assert_eq!(served.add_lun(T, "ram:4M", &["--lun", "5"]), 5);
    let mut s = served.login(T);
    s.power_on(2);

    // The edit: T loses LUNs 1 and 2 (2 is in use), T2 goes, T3 comes.
    write(&[(T, &["ram:1M"]), (T3, &["ram:2M"])]);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(served.target.pid() as libc::pid_t, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let wanted = |status: &Value| {
        let names: Vec<String> = targets(status).into_iter().map(|t| t.0).collect();
        names == [T, T3]
    };
    while !wanted(&served.status()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            served.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // LUN 1 went; LUN 2 is in use and stays; the API's LUN 5 stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while numbers(&served.luns(T)) != [0, 2, 5] {
        assert!(std::time::Instant::now() < deadline, "{:?}", served.luns(T));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(served.luns(T3)[0]["size_bytes"], 2 << 20);
    // The session hears that the LUN inventory changed, and LUN 2 still serves it.
    assert_eq!(condition(&s.test_unit_ready(2)), LUNS_CHANGED);
    good(s.test_unit_ready(2));
    drop(s);

    // Once nobody uses LUN 2, the next SIGHUP removes it.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(served.target.pid() as libc::pid_t, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while numbers(&served.luns(T)) != [0, 5] {
        assert!(std::time::Instant::now() < deadline, "{:?}", served.luns(T));
        std::thread::sleep(Duration::from_millis(100));
    }
    // A restart with the edited file serves the same set.
    let before = targets(&served.status());
    let served = served.crash_and_restart();
    assert_eq!(targets(&served.status()), before);
}

/// `overlaybd-target warm CONFIG --pin`: every unit of the layer is fetched once (the ranges
/// the registry sees tile the blob exactly) and pinned; a second warm fetches nothing. With
/// the registry gone, the image added as a LUN reads every byte right from the cache. `ctl
/// cache` shows it, refuses to purge it while pinned, and after `unpin` purges it.
#[test]
fn warm_fills_the_cache_and_the_image_reads_without_the_registry() {
    use support::http_server::ranges_served;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let content = pattern(3 << 20, 77);
    let (blob, digest) = support::images::imported_layer(work.path(), &content);
    let server = runtime.block_on(support::http_server::blob_server(&blob));
    let config = write_config(
        work.path(),
        &format!("{}/v2/team/app/blobs", server.url()),
        serde_json::json!({ "digest": digest, "size": blob.len() }),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut args = quick(&["ram:1M"]);
    let cache = dir.path().join("cache");
    args.extend(["--cache-dir".to_string(), cache.display().to_string()]);
    let served = Served::start_in(dir, args);
    let warm = |extra: &[&str]| -> Value {
        let mut cmd = binary();
        cmd.arg("warm")
            .arg(&config)
            .arg("--api")
            .arg(served.api())
            .args(extra);
        serde_json::from_str(&run(&mut cmd)).expect("warm --json")
    };

    let units_total = (blob.len() as u64).div_ceil(256 << 10);
    let first = warm(&["--pin", "--json"]);
    let l = &first["layers"][0];
    assert_eq!(l["digest"], digest.as_str(), "{first}");
    assert_eq!(l["units_before"], 0);
    assert_eq!(l["units_after"], units_total);
    assert_eq!(l["units_total"], units_total);
    assert_eq!(l["pinned"], true);
    assert_eq!(l["cached_locally"], true);
    // The ranges asked for tile the blob: every byte fetched, none twice.
    let ranges = ranges_served(&server);
    let mut next = 0;
    for &(a, b) in &ranges {
        assert_eq!(a, next, "ranges {ranges:?}");
        next = b + 1;
    }
    assert_eq!(next, blob.len() as u64);

    server.clear();
    let again = warm(&["--json"]);
    assert_eq!(again["layers"][0]["units_before"], units_total);
    assert_eq!(
        ranges_served(&server),
        vec![],
        "a warm cache fetches nothing"
    );
    let text = {
        let mut cmd = binary();
        cmd.arg("warm").arg(&config).arg("--api").arg(served.api());
        run(&mut cmd)
    };
    assert!(text.starts_with("warmed "), "{text}");
    assert!(
        text.contains(&format!("{units_total} of {units_total}")),
        "{text}"
    );

    let shown: Value = serde_json::from_str(&served.ctl_ok(&["cache", "show", "--json"])).unwrap();
    let layers = shown["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{shown}");
    assert_eq!(layers[0]["units"], units_total);
    assert_eq!(layers[0]["pinned"], true);
    assert_eq!(layers[0]["size_bytes"], blob.len() as u64);
    let table = served.ctl_ok(&["cache", "show"]);
    assert!(
        table.contains(&digest) && table.contains("(100 %)"),
        "{table}"
    );

    // The registry is gone: the image still opens and reads right, from the cache alone.
    drop(server);
    let backing = format!("image:{},remote_failure=fail:2s", config.display());
    let lun = served.add_lun(T, &backing, &[]);
    let mut s = served.login(T);
    s.power_on(lun);
    let per_read = 256u16;
    for (i, chunk) in content.chunks(usize::from(per_read) * BLOCK).enumerate() {
        let lba = u32::try_from(i).unwrap() * u32::from(per_read);
        assert!(
            s.read_ok(lun, lba, per_read) == chunk,
            "blocks at {lba} differ"
        );
    }

    let layer_folder = cache.join("sha256").join(&digest["sha256:".len()..]);
    assert!(
        layer_folder.is_dir(),
        "{} is missing",
        layer_folder.display()
    );
    let err = served.ctl_fails(&["cache", "purge", &digest]);
    assert!(err.contains("pinned"), "{err}");
    assert_eq!(served.ctl_ok(&["cache", "unpin", &digest]), "");
    let purged = served.ctl_ok(&["cache", "purge", &digest]);
    assert_eq!(
        purged.lines().collect::<Vec<_>>().len(),
        1,
        "one line per purged layer: {purged}"
    );
    assert!(
        purged.starts_with(&format!("purged {digest} ({units_total} units")),
        "{purged}"
    );
    let shown: Value = serde_json::from_str(&served.ctl_ok(&["cache", "show", "--json"])).unwrap();
    assert_eq!(shown["layers"], serde_json::json!([]), "{shown}");
    assert!(!layer_folder.exists(), "{} is left", layer_folder.display());
    // Purged with the registry gone, a read of the image now fails within its policy.
    assert_eq!(s.read(lun, 0, 8).status, CHECK_CONDITION);
    drop(runtime);
}

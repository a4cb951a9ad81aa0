//! The `overlaybd-target` binary (quick command-line form and TOML config), probed with
//! libiscsi's tools (`iscsi-ls`, `iscsi-inq`, `iscsi-readcapacity16` from libiscsi-bin).

mod support;

use std::io::Write;

use support::process::{binary, run, run_fails, tool, Target};

const IQN: &str = "iqn.2026-11.io.overlaybd:quick";

#[test]
fn quick_form_serves_luns_in_order_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let ro = dir.path().join("ro.img");
    std::fs::File::create(&ro)
        .unwrap()
        .write_all(&[0u8; 8192])
        .unwrap();
    let target = Target::start(&[
        "--target",
        IQN,
        "--lun",
        &format!("file:{}", file.display()),
        "--lun",
        "ram:2M",
        "--lun",
        &format!("ro:file:{}", ro.display()),
    ]);

    let listing = run(tool("iscsi-ls").args(["-s", &format!("iscsi://127.0.0.1:{}", target.port)]));
    assert!(
        listing.contains(&format!("Target:{IQN} Portal:127.0.0.1:{},1", target.port)),
        "{listing}"
    );
    let luns: Vec<&str> = listing.lines().filter(|l| l.starts_with("Lun:")).collect();
    assert_eq!(luns.len(), 3, "{listing}");
    // iscsi-ls prints the last LBA times the block size, one block short of the capacity, and
    // rounds down: 4 MiB shows as 3M, 8 KiB as 7k.
    assert!(
        luns[0].starts_with("Lun:0") && luns[0].contains("(Size:3M)"),
        "{listing}"
    );
    assert!(
        luns[1].starts_with("Lun:1") && luns[1].contains("(Size:1M)"),
        "{listing}"
    );
    assert!(
        luns[2].starts_with("Lun:2") && luns[2].contains("(Size:7k)"),
        "{listing}"
    );

    let inq = run(tool("iscsi-inq").arg(target.url(IQN, 1)));
    assert!(
        inq.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{inq}"
    );

    let cap = run(tool("iscsi-readcapacity16").arg(target.url(IQN, 2)));
    assert!(cap.contains("RETURNED LOGICAL BLOCK ADDRESS:15"), "{cap}");

    let status = target.stop();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn bad_arguments_exit_with_a_message() {
    // A LUN that cannot be opened stops the start only with --strict (otherwise it is served
    // as NOT READY, see tests/iscsi_target.rs).
    let err = run_fails(binary().args([
        "--portal",
        "127.0.0.1:0",
        "--strict",
        "--lun",
        "ram:1M",
        "--lun",
        "file:/nonexistent/overlaybd-test.img",
    ]));
    assert!(
        err.contains("LUN 1") && err.contains("/nonexistent/overlaybd-test.img"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("targets.toml");
    std::fs::write(
        &config,
        "[[targets]]\nname = \"iqn.x:y\"\nluns = [{ backing = \"tape:1\" }]\n",
    )
    .unwrap();
    let err = run_fails(binary().args(["--config", config.to_str().unwrap()]));
    assert!(
        err.contains("targets.toml") && err.contains("targets[0].luns[0].backing"),
        "{err}"
    );

    // A log level that is not a level word (tracing would take it for a module name and log
    // nothing) is refused before anything starts.
    let err = run_fails(binary().args(["--portal", "127.0.0.1:0", "--log-level", "verbose"]));
    assert!(err.contains("invalid --log-level \"verbose\""), "{err}");
    let err = run_fails(binary().args(["--portal", "127.0.0.1:0", "--metrics", "localhost:9863"]));
    assert!(err.contains("--metrics"), "{err}");
}

#[test]
fn config_file_targets_with_chap_and_access_lists() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("targets.toml");
    let write_config = |port: u16| {
        std::fs::write(
            &config,
            format!(
                r#"
[global]
portals = ["127.0.0.1:{port}"]
queue_depth = 16

[[targets]]
name = "{IQN}"
chap = {{ user = "alice", secret = "alice-secret-1" }}
luns = [{{ backing = "ram:1M" }}, {{ backing = "ram:1M", read_only = true }}]

[[targets]]
name = "iqn.2026-11.io.overlaybd:other"
allowed_initiators = ["iqn.2026-11.io.overlaybd:nobody"]
luns = [{{ backing = "ram:1M" }}]
"#
            ),
        )
        .unwrap()
    };
    let target = Target::start_with(|port| {
        write_config(port);
        vec!["--config".into(), config.to_str().unwrap().into()]
    });
    let port = target.port;
    let with_chap = format!("iscsi://alice%alice-secret-1@127.0.0.1:{port}/{IQN}/0");
    let inq = run(tool("iscsi-inq").arg(&with_chap));
    assert!(inq.contains("DIRECT_ACCESS"), "{inq}");

    let denied = tool("iscsi-inq").arg(target.url(IQN, 0)).output().unwrap();
    assert!(!denied.status.success(), "login without CHAP must fail");
    let wrong = format!("iscsi://alice%not-the-secret@127.0.0.1:{port}/{IQN}/0");
    assert!(!tool("iscsi-inq")
        .arg(&wrong)
        .output()
        .unwrap()
        .status
        .success());

    // Discovery lists only targets this initiator may log in to.
    let listing = tool("iscsi-ls")
        .arg(format!("iscsi://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    assert!(listing.contains(IQN), "{listing}");
    assert!(!listing.contains("overlaybd:other"), "{listing}");
    assert!(target.stop().success());
}

/// Discovery CHAP: `global.discovery_chap` makes SendTargets need CHAP (no credentials or
/// wrong ones are refused); and a discovery that offers CHAP to a target without discovery
/// CHAP logs in with `AuthMethod=None`, as libiscsi's `iscsi-ls` with URL credentials does.
#[test]
fn discovery_chap_from_the_config_and_chap_offered_to_open_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("targets.toml");
    let target = Target::start_with(|port| {
        std::fs::write(
            &config,
            format!(
                r#"
[global]
portals = ["127.0.0.1:{port}"]
discovery_chap = {{ user = "disc", secret = "discovery-secret" }}

[[targets]]
name = "{IQN}"
luns = [{{ backing = "ram:1M" }}]
"#
            ),
        )
        .unwrap();
        vec!["--config".into(), config.to_str().unwrap().into()]
    });
    let port = target.port;
    let ls = |url: String| {
        let out = tool("iscsi-ls").args(["-s", &url]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = ls(format!("iscsi://disc%discovery-secret@127.0.0.1:{port}"));
    assert!(ok && text.contains(IQN) && text.contains("Lun:0"), "{text}");
    for url in [
        format!("iscsi://127.0.0.1:{port}"),
        format!("iscsi://disc%not-the-secret-1@127.0.0.1:{port}"),
    ] {
        let (ok, text) = ls(url.clone());
        assert!(!ok && !text.contains(IQN), "{url}: {text}");
    }
    assert!(target.stop().success());

    // No discovery CHAP configured: an initiator offering CHAP is answered AuthMethod=None.
    let open = Target::start(&["--target", IQN, "--lun", "ram:1M"]);
    let (ok, text) = ls(format!(
        "iscsi://user%secret-secret-1@127.0.0.1:{}",
        open.port
    ));
    assert!(ok && text.contains(IQN) && text.contains("Lun:0"), "{text}");
    assert!(open.stop().success());
}

/// What an operator reads in the log: one line per LUN with its size, refused logins naming
/// who and why without Rust's `Some(..)`, and no colour codes when stderr is a file.
#[test]
fn log_lines_are_plain_and_name_what_an_operator_needs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = binary()
        .args(["--portal", &format!("127.0.0.1:{port}"), "--target", IQN])
        .args([
            "--lun",
            "ram:3M",
            "--no-api",
            "--no-state",
            "--log-level",
            "info",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the target did not listen"
        );
        assert!(child.try_wait().unwrap().is_none(), "the target exited");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A login to a target that is not served.
    let refused = tool("iscsi-inq")
        .arg(format!(
            "iscsi://127.0.0.1:{port}/iqn.2026-12.io.example:absent/0"
        ))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let ready = text
        .lines()
        .find(|l| l.contains("LUN ready"))
        .unwrap_or_else(|| panic!("no LUN line in:\n{text}"));
    for field in [
        &format!("target=\"{IQN}\"") as &str,
        "lun=0",
        "size=3145728",
        "read_only=false",
    ] {
        assert!(ready.contains(field), "{field} missing from: {ready}");
    }
    let failed = text
        .lines()
        .find(|l| l.contains("login failed"))
        .unwrap_or_else(|| panic!("no login failure in:\n{text}"));
    for field in [
        "initiator=\"iqn.",
        "target=\"iqn.2026-12.io.example:absent\"",
        "chap_user=-",
        "reason=",
        "status=0x0203",
    ] {
        assert!(failed.contains(field), "{field} missing from: {failed}");
    }
    assert!(!text.contains("Some("), "{text}");
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file:\n{text}"
    );
}

/// The scripts find the binary where cargo puts it: `scripts/target-dir.sh` follows
/// `CARGO_TARGET_DIR` (relative ones from the repository) instead of assuming `target/`.
#[test]
fn scripts_follow_cargo_target_dir() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/target-dir.sh");
    let dir = |value: Option<&str>| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(script);
        match value {
            Some(v) => cmd.env("CARGO_TARGET_DIR", v),
            None => cmd.env_remove("CARGO_TARGET_DIR"),
        };
        run(&mut cmd).trim().to_string()
    };
    assert_eq!(dir(Some("/tmp/elsewhere")), "/tmp/elsewhere");
    assert_eq!(
        dir(Some("build-out")),
        concat!(env!("CARGO_MANIFEST_DIR"), "/build-out")
    );
    let default = dir(None);
    assert!(
        std::path::Path::new(&default).is_absolute() && default.ends_with("target"),
        "{default}"
    );
    for script in ["conformance/libiscsi.sh", "conformance/linux-vm/ci.sh"] {
        let text =
            std::fs::read_to_string(format!("{}/{script}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(
            text.contains("scripts/target-dir.sh") && !text.contains("target/release/overlaybd"),
            "{script} assumes target/release"
        );
    }
}

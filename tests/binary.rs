//! The `overlaybd-target` binary (quick command-line form and TOML config), probed with
//! libiscsi's tools (`iscsi-ls`, `iscsi-inq`, `iscsi-readcapacity16` from libiscsi-bin).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-11.io.overlaybd:quick";

fn tool(name: &str) -> Command {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install libiscsi-bin (conformance/install-deps.sh does)"
    );
    Command::new(path)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Target {
    child: Child,
    port: u16,
}

impl Target {
    fn start(args: &[&str]) -> Target {
        Self::start_with(|port| {
            let mut all = vec!["--portal".to_string(), format!("127.0.0.1:{port}")];
            all.extend(args.iter().map(|a| a.to_string()));
            all
        })
    }

    /// Starts the binary with the arguments `args_for(port)` on a free port. Another process
    /// may grab the port between our probe and the target's bind (the machine is shared), so
    /// a target that exits at once is retried on another port.
    fn start_with(args_for: impl Fn(u16) -> Vec<String>) -> Target {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(env!("CARGO_BIN_EXE_overlaybd-target"))
                .args(args_for(port))
                .args(["--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).is_err() && Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Something answers; make sure it is our child and not a squatter.
            std::thread::sleep(Duration::from_millis(100));
            if child.try_wait().unwrap().is_none() && TcpStream::connect(addr).is_ok() {
                return Target { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the target did not start listening");
    }

    fn url(&self, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/{lun}", self.port)
    }

    /// Sends SIGTERM and waits for the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the target ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&stdout).to_string();
    assert!(
        status.success(),
        "{cmd:?} failed: {out}{}",
        String::from_utf8_lossy(&stderr)
    );
    out
}

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

    let inq = run(tool("iscsi-inq").arg(target.url(1)));
    assert!(
        inq.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{inq}"
    );

    let cap = run(tool("iscsi-readcapacity16").arg(target.url(2)));
    assert!(cap.contains("RETURNED LOGICAL BLOCK ADDRESS:15"), "{cap}");

    let status = target.stop();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn bad_arguments_exit_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_overlaybd-target"))
        .args([
            "--portal",
            "127.0.0.1:1",
            "--lun",
            "file:/nonexistent/overlaybd-test.img",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/overlaybd-test.img"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("targets.toml");
    std::fs::write(
        &config,
        "[[targets]]\nname = \"iqn.x:y\"\nluns = [{ backing = \"tape:1\" }]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_overlaybd-target"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("targets.toml") && err.contains("targets[0].luns[0].backing"),
        "{err}"
    );
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

    let denied = tool("iscsi-inq").arg(target.url(0)).output().unwrap();
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

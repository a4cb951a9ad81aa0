//! The real `overlaybd-target` binary as a child process on 127.0.0.1 and a free port, and
//! helpers to run the external tools the tests drive it with (libiscsi-bin, qemu-img,
//! e2fsprogs).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A system tool by name; fails clearly when it is not installed.
pub fn tool(name: &str) -> Command {
    let path = ["/usr/bin", "/usr/sbin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is missing: install libiscsi-bin, qemu-utils, qemu-block-extra, e2fsprogs (conformance/install-deps.sh does)")
        });
    Command::new(path)
}

/// The binary under test, to run one of its tool subcommands.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_overlaybd-target"))
}

/// Copies the first MiB of the iSCSI LUN at `url` into the file `out` with `qemu-img dd`,
/// asserting success.
pub fn copy_first_mib(url: &str, out: &str) {
    run(tool("qemu-img").args([
        "dd",
        "-f",
        "raw",
        "-O",
        "raw",
        &format!("if={url}"),
        &format!("of={out}"),
        "bs=1M",
        "count=1",
    ]));
}

/// Runs `cmd`, asserting success; returns its standard output.
pub fn run(cmd: &mut Command) -> String {
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

/// Runs `cmd`, asserting failure; returns its standard error.
pub fn run_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded unexpectedly");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running target process; killed when dropped.
pub struct Target {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl Target {
    /// Starts the binary with `--portal 127.0.0.1:PORT` followed by `args`.
    pub fn start(args: &[&str]) -> Target {
        Self::start_with(|port| {
            let mut all = vec!["--portal".to_string(), format!("127.0.0.1:{port}")];
            all.extend(args.iter().map(|a| a.to_string()));
            all
        })
    }

    /// Starts the binary with the arguments `args_for(port)` on a free port. Another process
    /// may grab the port between our probe and the target's bind (the machine is shared), so
    /// a target that exits at once is retried on another port.
    pub fn start_with(args_for: impl Fn(u16) -> Vec<String>) -> Target {
        Self::start_adjusted(args_for, |_| {})
    }

    /// Like [`Target::start_with`], letting `adjust` change the command before each spawn
    /// (resource limits, environment).
    pub fn start_adjusted(
        args_for: impl Fn(u16) -> Vec<String>,
        adjust: impl Fn(&mut Command),
    ) -> Target {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = binary();
            adjust(&mut cmd);
            let mut child = cmd
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

    /// The process id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The portal address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The libiscsi / qemu URL of LUN `lun` of target `iqn`.
    pub fn url(&self, iqn: &str, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{iqn}/{lun}", self.port)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
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

//! The files a package installs (`packaging/`): the systemd unit passes `systemd-analyze
//! verify`, the default config is valid, and the binary tells systemd it is ready only once its
//! portal listens (the unit's `Type=notify`).

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::process::{binary, run};

fn packaging(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(name)
}

#[test]
fn the_unit_verifies_and_asks_for_what_a_storage_service_needs() {
    let unit = std::fs::read_to_string(packaging("overlaybd-target.service")).unwrap();
    for line in ["Type=notify", "Restart=always", "LimitNOFILE=1048576"] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze verify (systemd-analyze is not installed; Debian package systemd)");
        return;
    }
    // The unit as installed names /usr/bin/overlaybd-target; verify it against this build.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("overlaybd-target.service");
    let here = env!("CARGO_BIN_EXE_overlaybd-target");
    std::fs::write(&copy, unit.replace("/usr/bin/overlaybd-target", here)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("overlaybd-target.service"))
        .collect();
    assert!(about_unit.is_empty(), "{about_unit:?}");
}

#[test]
fn the_default_config_is_valid_and_a_broken_one_is_not() {
    let config = packaging("config.toml");
    let out = run(binary().args(["--config", config.to_str().unwrap(), "--check-config"]));
    assert!(
        out.contains("configuration valid: 1 target(s), 1 LUN(s)"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("config.toml");
    std::fs::write(&broken, "[global]\nportals = [\"localhost\"]\n").unwrap();
    let out = binary()
        .args(["--config", broken.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.toml"));
}

#[test]
fn systemd_hears_ready_once_the_portal_listens_and_stopping_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = binary()
        .args(["--portal", &format!("127.0.0.1:{port}"), "--lun", "ram:1M"])
        .args(["--no-api", "--no-state", "--log-level", "warn"])
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut message = [0u8; 256];
    let n = systemd.recv(&mut message).expect("READY=1 within 20 s");
    assert_eq!(&message[..n], b"READY=1\n");
    // Ready means an initiator can connect now, not soon.
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("the portal listens");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let n = systemd
        .recv(&mut message)
        .expect("STOPPING=1 after SIGTERM");
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert!(child.wait().unwrap().success());
}

/// `cargo deb` (when cargo-deb is installed; run-tests installs it) packs the binary, the unit
/// and the config; the package installs into a scratch root whose binary runs and accepts the
/// installed config.
#[test]
fn the_debian_package_installs_a_runnable_binary_with_unit_and_config() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        eprintln!("skipped: cargo deb (cargo-deb is not installed; `cargo install cargo-deb`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The binary under test is the one cargo built for this run; pack it as it is.
    let out = Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["deb", "--no-build", "--strip", "--output"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/overlaybd-target",
        "./usr/lib/systemd/system/overlaybd-target.service",
        "./etc/overlaybd-target/config.toml",
    ] {
        assert!(listing.contains(path), "{path} not in:\n{listing}");
    }
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/overlaybd-target/config.toml");
    // Install into an empty root with its own dpkg database.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-not-root", "-i"])
        .arg(&deb));
    let installed = root.join("usr/bin/overlaybd-target");
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.starts_with("overlaybd-target "), "{version}");
    let config = root.join("etc/overlaybd-target/config.toml");
    let checked = run(Command::new(&installed).args([
        "--config",
        config.to_str().unwrap(),
        "--check-config",
    ]));
    assert!(checked.contains("configuration valid"), "{checked}");
}

//! The quick form's `--lun image:CONFIG` with a lower that lives only in a registry: the
//! binary reads it over HTTP Range through its disk cache (`--cache-dir`), and an initiator
//! reads the right bytes.

mod support;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use support::fixtures::{fixture, require};
use support::http_server::blob_server;
use support::images::fixture_config;
use support::process::{copy_first_mib, run, tool, Target};

const IQN: &str = "iqn.2026-11.io.overlaybd:registry";

/// Bytes stored under `dir`, recursively.
fn stored_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => stored_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn image_lun_reads_a_registry_layer_through_the_cache_dir() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let server = blob_server(&blob).await;
    let tmp = tempfile::tempdir().unwrap();
    // No `file` and no `dir`: the only copy of the layer is the registry's.
    let config = fixture_config(
        tmp.path(),
        &format!("{}/v2/library/base/blobs", server.url()),
        blob.len(),
    );
    let cache = tmp.path().join("cache");
    let (config_s, cache_s) = (config.display().to_string(), cache.display().to_string());
    let out = tmp.path().join("first-mib.raw");
    let out_s = out.display().to_string();

    let served = tokio::task::spawn_blocking(move || {
        let target = Target::start_with(|port| {
            vec![
                "--portal".into(),
                format!("127.0.0.1:{port}"),
                "--target".into(),
                IQN.into(),
                "--lun".into(),
                format!("image:{config_s}"),
                "--cache-dir".into(),
                cache_s.clone(),
                "--cache-size".into(),
                "64M".into(),
            ]
        });
        let cap = run(tool("iscsi-readcapacity16").arg(target.url(IQN, 0)));
        copy_first_mib(&target.url(IQN, 0), &out_s);
        cap
    })
    .await
    .unwrap();

    // 64 GiB in 512-byte blocks: the last LBA is 134217727.
    assert!(served.contains("134217727"), "{served}");
    let first_mib = std::fs::read(&out).unwrap();
    assert_eq!(first_mib.len(), 1 << 20);
    assert_eq!(
        hex::encode(Sha256::digest(&first_mib)),
        "7afc8295bdfac4e6189e2a10850384e91391d02e0e6d4931e1f7f09f9d54420b",
        "the first MiB read over iSCSI from the registry layer"
    );
    assert!(
        !server.requests().is_empty(),
        "the layer must have been fetched from the registry"
    );
    let cached = stored_bytes(&cache);
    assert!(
        cached > 0 && cached < blob.len() as u64,
        "the cache under --cache-dir holds part of the blob ({cached} bytes)"
    );
}

/// A folder even root cannot write: `chattr +i` as root, mode 0500 otherwise. `None` (the
/// test says it is skipped) where the file system has no immutable flag.
struct UnwritableDir(std::path::PathBuf);

impl UnwritableDir {
    fn new(path: std::path::PathBuf) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(&path).unwrap();
        if nix_is_root() {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("skipped: chattr +i is not supported here, and root writes anywhere");
                return None;
            }
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500)).unwrap();
        }
        Some(UnwritableDir(path))
    }
}

impl Drop for UnwritableDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A cache folder that exists but cannot be written is one clear error when the first registry
/// LUN opens (with `--strict`, the exit status), naming the folder and how to choose another,
/// not a warning per refill later.
#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_cache_folder_is_one_clear_error_at_start() {
    let blob = Arc::new(vec![0u8; 1 << 16]);
    let server = blob_server(&blob).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture_config(
        tmp.path(),
        &format!("{}/v2/library/base/blobs", server.url()),
        blob.len(),
    );
    let Some(cache) = UnwritableDir::new(tmp.path().join("cache")) else {
        return;
    };
    let args = [
        "--portal".to_string(),
        "127.0.0.1:0".into(),
        "--target".into(),
        IQN.into(),
        "--lun".into(),
        format!("image:{}", config.display()),
        "--cache-dir".into(),
        cache.0.display().to_string(),
        "--strict".into(),
        "--no-api".into(),
        "--no-state".into(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        // `timeout`: were the folder accepted, the target would serve instead of exiting.
        tool("timeout")
            .arg("20")
            .arg(env!("CARGO_BIN_EXE_overlaybd-target"))
            .args(&args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cache folder {} cannot be written",
            cache.0.display()
        )) && stderr.contains("--cache-dir"),
        "{stderr}"
    );
    assert!(
        server.requests().is_empty(),
        "nothing is fetched before the cache is known to work"
    );
}

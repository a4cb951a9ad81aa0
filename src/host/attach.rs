//! `attach` and `detach`.
//!
//! ```text
//! overlaybd-target attach [--api PATH] [--portal HOST:PORT] [--rw DIR] [--wait SECS]
//!                         [--device-timeout SECS] [--replacement-timeout SECS]
//!                         [--platform …] [--plain-http HOST[:PORT]]... [--overlaybd-config FILE]
//!                         REFERENCE|CONFIG
//! overlaybd-target detach [--api PATH] DEVICE|REFERENCE|CONFIG|DIR
//! ```
//!
//! `attach` resolves a reference to its manifest digest first, so the LUN is pinned: a tag
//! that moves later does not change a mounted disk, and attaching the same reference again
//! finds the same target and prints the same device. With `--rw DIR`, DIR gets a sparse
//! writable layer and a `config.v1.json` stacking it on the image; attaching with the same
//! DIR later brings the same writable layer back. A registry-backed disk gets a longer SCSI
//! command timeout and session replacement timeout, so a registry that is slow for a while
//! stalls reads instead of failing them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use sha2::{Digest, Sha256};

use super::iscsiadm::{self, Iscsiadm};
use super::{sysfs, HostError};
use crate::block::BlockDevice;
use crate::daemon::api::{ApiClient, ClientError, DEFAULT_API_SOCKET};
use crate::daemon::model::{AddLun, AddTarget};
use crate::overlaybd::config::{LayerLocation, UpperLayer};
use crate::overlaybd::writable::{CreateOptions, WritableLayer};
use crate::overlaybd::ImageConfig;
use crate::registry::{resolve, ImageReference};
use crate::tools::registry_args::{CacheArgs, RegistryArgs};

/// The prefix of the targets attach creates.
pub const TARGET_PREFIX: &str = "iqn.2026-12.io.overlaybd.attach:";

/// The config a writable attach keeps in its DIR.
const RW_CONFIG: &str = "config.v1.json";

/// Arguments of `attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The management API's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api: PathBuf,
    /// The target's portal, as the initiator reaches it (default: the target's first portal,
    /// as its API reports it, with a wildcard address taken as loopback).
    #[arg(long, value_name = "HOST:PORT")]
    pub portal: Option<String>,
    /// Keep a writable layer in DIR (created on first use): the disk is then writable.
    #[arg(long, value_name = "DIR")]
    pub rw: Option<PathBuf>,
    /// Seconds to wait for the LUN to open and the disk to appear.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait: u64,
    /// SCSI command timeout set on a registry-backed disk (the kernel's default is 30).
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub device_timeout: u64,
    /// Seconds open-iscsi holds I/O while it reconnects a registry-backed disk's session
    /// (its default is 120).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub replacement_timeout: u64,
    /// What the disk's reads do while the registry cannot serve them: `hold[:DURATION]`
    /// (wait; the target's default, 10 minutes) or `fail[:DURATION]` (MEDIUM ERROR once the
    /// duration, 20 s by default, has passed). A registry-backed image only.
    #[arg(long, value_name = "POLICY")]
    pub remote_failure: Option<crate::block::RemoteFailurePolicy>,
    /// Platform, plain-HTTP registries and credentials for resolving a reference.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// HOST[:PORT]/REPOSITORY[:TAG|@DIGEST], or a config.v1.json.
    pub image: String,
}

/// Arguments of `detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The management API's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api: PathBuf,
    /// The device attach printed (/dev/sdX), the reference or config it was given, or the
    /// DIR of a writable attach.
    pub what: String,
}

/// What attach serves: the LUN backing and whether its layers come from a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    backing: String,
    remote: bool,
}

/// The target that serves `backing` for attach.
pub fn target_name(backing: &str) -> String {
    let digest = Sha256::digest(backing.as_bytes());
    format!("{TARGET_PREFIX}{}", hex::encode(&digest[..8]))
}

fn absolute(path: &Path) -> Result<PathBuf, HostError> {
    std::path::absolute(path).map_err(|e| HostError::Usage(format!("{}: {e}", path.display())))
}

fn has_remote_lowers(config: &ImageConfig, name: &str) -> bool {
    (0..config.lowers.len())
        .any(|i| matches!(config.locate(i, name), Ok(LayerLocation::Remote { .. })))
}

/// Whether `text` names a local config rather than a reference.
fn is_local(text: &str) -> bool {
    Path::new(text).exists()
}

/// Works out the backing for `a.image`, resolving a reference and preparing `--rw`.
async fn plan(a: &AttachArgs) -> Result<Plan, HostError> {
    let usage = |e: String| HostError::Usage(e);
    let (base, base_name, pinned) = if is_local(&a.image) {
        let path = absolute(Path::new(&a.image))?;
        let config = ImageConfig::load(&path).map_err(|e| usage(e.to_string()))?;
        (config, path.display().to_string(), None)
    } else {
        let reference = ImageReference::parse(&a.image).map_err(|e| usage(e.to_string()))?;
        let platform = a.registry.platform().map_err(|e| usage(e.to_string()))?;
        let client = a.registry.client().map_err(|e| usage(e.to_string()))?;
        let resolved = resolve(&client, &reference, &platform, &a.registry.plain_http)
            .await
            .map_err(|e| usage(e.to_string()))?;
        let name = resolved.pinned.to_string();
        (resolved.image_config(), name, Some(resolved.pinned))
    };
    let remote = has_remote_lowers(&base, &base_name);
    // The LUN option after the backing; another policy is another disk (another target).
    let options = match (&a.remote_failure, remote) {
        (Some(policy), true) => format!(",remote_failure={policy}"),
        (Some(_), false) => {
            return Err(usage(format!(
                "--remote-failure applies to images with registry layers; {} has none",
                a.image
            )))
        }
        (None, _) => String::new(),
    };
    let Some(dir) = &a.rw else {
        let backing = match pinned {
            Some(pinned) => format!("registry:{pinned}{options}"),
            None => format!("image:{base_name}{options}"),
        };
        return Ok(Plan { backing, remote });
    };
    let dir = absolute(dir)?;
    let config_path = dir.join(RW_CONFIG);
    if config_path.exists() {
        let kept = ImageConfig::load(&config_path).map_err(|e| usage(e.to_string()))?;
        if kept.lowers != base.lowers {
            return Err(usage(format!(
                "{} holds the writable layer of another image; give another --rw folder",
                dir.display()
            )));
        }
    } else {
        writable_config(a, &dir, &base).await?;
    }
    Ok(Plan {
        backing: format!("image:{}{options}", config_path.display()),
        remote,
    })
}

/// Creates DIR with a sparse writable layer the size of `base` and the config stacking it.
async fn writable_config(a: &AttachArgs, dir: &Path, base: &ImageConfig) -> Result<(), HostError> {
    let fail = |what: &str, e: String| HostError::Usage(format!("{}: {what}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| fail("create", e.to_string()))?;
    // The size comes from the image's layers; registry ones are read through a scratch cache
    // (headers and indexes only), removed afterwards.
    let base_path = dir.join(".base.json");
    let scratch = dir.join(".size-probe-cache");
    std::fs::write(&base_path, base.to_json()).map_err(|e| fail("write", e.to_string()))?;
    let cache = CacheArgs {
        overlaybd_config: a.registry.overlaybd_config.clone(),
        cache_dir: Some(scratch.clone()),
    };
    let opened = crate::tools::open_image_with(&base_path, &cache).await;
    let _ = std::fs::remove_file(&base_path);
    let _ = std::fs::remove_dir_all(&scratch);
    let size = opened
        .map_err(|e| fail("open the image", e.to_string()))?
        .size();
    let (data, index) = (dir.join("upper.data"), dir.join("upper.index"));
    let mut options = CreateOptions::new(size);
    // Sparse: data in place, so the layer never outgrows the disk whatever the container
    // rewrites (the append layout grows with every overwrite).
    options.sparse = true;
    WritableLayer::create(&data, &index, &options)
        .map_err(|e| fail("create the writable layer", e.to_string()))?;
    let config = ImageConfig {
        upper: Some(UpperLayer {
            data: data.display().to_string(),
            index: index.display().to_string(),
            ..UpperLayer::default()
        }),
        ..base.clone()
    };
    let path = dir.join(RW_CONFIG);
    std::fs::write(&path, config.to_json()).map_err(|e| fail("write", e.to_string()))
}

/// The portal this host reaches the target at: its first listening address, a wildcard
/// (`0.0.0.0`, `::`) read as the loopback address of its family; 127.0.0.1:3260 when the
/// target reports none that parses.
fn reachable_portal(portals: &[String]) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let Some(mut addr) = portals.iter().find_map(|p| p.parse::<SocketAddr>().ok()) else {
        return "127.0.0.1:3260".to_string();
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr.to_string()
}

fn not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, .. })
}

/// Runs `attach`; returns the device path.
pub async fn attach(a: &AttachArgs) -> Result<String, HostError> {
    let started = Instant::now();
    let plan = plan(a).await?;
    let target = target_name(&plan.backing);
    let sys = Path::new("/sys");
    if let Some(disk) = sysfs::find_disk(sys, &target, 0) {
        return Ok(format!("/dev/{}", disk.disk));
    }
    let api = ApiClient::new(&a.api).with_timeout(Duration::from_secs(a.wait.max(5)));
    let served = match api.target(&target).await {
        Ok(info) => info.luns.iter().any(|l| l.lun == 0),
        Err(e) if not_found(&e) => {
            api.add_target(&AddTarget {
                name: target.clone(),
                alias: None,
                allowed_initiators: Vec::new(),
                chap: None,
                mutual_chap: None,
                allow_target_reset: false,
            })
            .await?;
            false
        }
        Err(e) => return Err(e.into()),
    };
    if !served {
        let added = api
            .add_lun(
                &target,
                &AddLun {
                    backing: plan.backing.clone(),
                    lun: Some(0),
                    read_only: false,
                },
            )
            .await;
        if let Err(e) = added {
            let _ = api.remove_target(&target, true).await;
            return Err(e.into());
        }
    }
    let portal = match &a.portal {
        Some(portal) => portal.clone(),
        None => reachable_portal(&api.status().await?.portals),
    };
    let iscsiadm = Iscsiadm::default();
    if sysfs::sessions_of(sys, &target).is_empty() {
        iscsiadm.run(&iscsiadm::new_node(&target, &portal)).await?;
        if plan.remote {
            let seconds = a.replacement_timeout.to_string();
            let name = "node.session.timeo.replacement_timeout";
            iscsiadm
                .run(&iscsiadm::update(&target, &portal, name, &seconds))
                .await?;
        }
        iscsiadm.run(&iscsiadm::login(&target, &portal)).await?;
    }
    let deadline = started + Duration::from_secs(a.wait);
    let disk = loop {
        if let Some(d) = sysfs::find_disk(sys, &target, 0) {
            // The disk is usable once its node exists and sd has read its capacity.
            let dev = PathBuf::from(format!("/dev/{}", d.disk));
            let size = std::fs::read_to_string(sys.join("block").join(&d.disk).join("size"));
            if dev.exists() && size.is_ok_and(|s| s.trim() != "0") {
                break d.disk;
            }
        }
        if Instant::now() >= deadline {
            return Err(HostError::Timeout(format!(
                "logged in to {target} at {}, but no disk for LUN 0 appeared within {} s \
                 (see `iscsiadm -m session -P 3` and the kernel log)",
                portal, a.wait
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if plan.remote {
        let path = format!("/sys/block/{disk}/device/timeout");
        std::fs::write(&path, a.device_timeout.to_string()).map_err(|e| HostError::Command {
            command: format!("write {path}"),
            message: e.to_string(),
        })?;
    }
    Ok(format!("/dev/{disk}"))
}

/// The attach targets `what` names: by device, or by the LUN 0 backing that attach gave
/// for that reference, config or writable folder.
async fn targets_of(api: &ApiClient, what: &str) -> Result<Vec<String>, HostError> {
    if what.starts_with("/dev/") {
        let disk = sysfs::disk_by_name(Path::new("/sys"), what)
            .ok_or_else(|| HostError::Usage(format!("{what} is not a disk of an iSCSI session")))?;
        if !disk.target.starts_with(TARGET_PREFIX) {
            return Err(HostError::Usage(format!(
                "{what} is a disk of {}, which attach did not create",
                disk.target
            )));
        }
        return Ok(vec![disk.target]);
    }
    let mut wanted = Vec::new();
    if is_local(what) {
        let path = absolute(Path::new(what))?;
        let config = if path.is_dir() {
            path.join(RW_CONFIG)
        } else {
            path
        };
        wanted.push(format!("image:{}", config.display()));
    } else {
        let reference = ImageReference::parse(what).map_err(|e| HostError::Usage(e.to_string()))?;
        wanted.push(format!("registry:{reference}"));
    }
    let matches = |backing: &str| {
        // A disk attached with --remote-failure has the option after its backing.
        let backing = crate::config::backing::without_lun_options(backing);
        wanted.iter().any(|w| {
            backing == w || (w.starts_with("registry:") && backing.starts_with(&format!("{w}@")))
        })
    };
    Ok(api
        .targets()
        .await?
        .into_iter()
        .filter(|t| t.name.starts_with(TARGET_PREFIX))
        .filter(|t| t.luns.iter().any(|l| l.lun == 0 && matches(&l.backing)))
        .map(|t| t.name)
        .collect())
}

/// Runs `detach`; returns what was detached, one line each.
pub async fn detach(a: &DetachArgs) -> Result<Vec<String>, HostError> {
    let api = ApiClient::new(&a.api);
    let targets = targets_of(&api, &a.what).await?;
    if targets.is_empty() {
        return Err(HostError::Usage(format!("{} is not attached", a.what)));
    }
    let iscsiadm = Iscsiadm::default();
    let sys = Path::new("/sys");
    let mut done = Vec::new();
    for target in targets {
        let disk = sysfs::find_disk(sys, &target, 0).map(|d| format!("/dev/{}", d.disk));
        if !sysfs::sessions_of(sys, &target).is_empty() {
            iscsiadm.run(&iscsiadm::logout(&target)).await?;
        }
        // The node record may be gone already (logged out by hand); that is fine.
        let _ = iscsiadm.run(&iscsiadm::delete(&target)).await;
        match api.remove_target(&target, true).await {
            Err(e) if !not_found(&e) => return Err(e.into()),
            _ => {}
        }
        done.push(match disk {
            Some(disk) => format!("detached {disk} ({target})"),
            None => format!("detached {target}"),
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_portal_is_the_targets_first_with_wildcards_as_loopback() {
        let p = |list: &[&str]| {
            reachable_portal(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(p(&["0.0.0.0:3261", "10.0.0.5:3260"]), "127.0.0.1:3261");
        assert_eq!(p(&["[::]:3262"]), "[::1]:3262");
        assert_eq!(p(&["10.0.0.5:3263"]), "10.0.0.5:3263");
        assert_eq!(p(&["not an address", "127.0.0.1:4000"]), "127.0.0.1:4000");
        assert_eq!(p(&[]), "127.0.0.1:3260");
    }

    #[test]
    fn target_names_follow_the_backing_and_are_valid_iqns() {
        let a = target_name("registry:127.0.0.1:5000/app:v1@sha256:00");
        assert_eq!(a, target_name("registry:127.0.0.1:5000/app:v1@sha256:00"));
        assert_ne!(a, target_name("registry:127.0.0.1:5000/app:v1@sha256:01"));
        assert!(a.starts_with(TARGET_PREFIX) && a.len() == TARGET_PREFIX.len() + 16);
        assert!(crate::config::check_iscsi_name(&a).is_ok(), "{a}");
    }
}

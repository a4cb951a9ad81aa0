//! Images with remote layers opened the way a LUN `image:/path/config.v1.json` opens them
//! ([`RemoteImages`]): layer resolution local-first, reads through a fault-injecting proxy that
//! never lead to a wrong byte served or kept, and the bytes a mount-like metadata walk of the
//! real ext4_64 layer fetches.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use overlaybd_target::block::{BlockDevice, BlockError};
use overlaybd_target::cache::settings::DaemonSettings;
use overlaybd_target::overlaybd::{open_image_lun, RemoteImages};
use support::fault_proxy::{Fault, FaultProxy, Link};
use support::fixtures::{fixture, require, EXT4_64_DIGEST};
use support::http_server::blob_server;
use support::images::{fixture_config, mapped_runs, scattered_ranges, write_config};

const REPO: &str = "/v2/library/base/blobs";

/// Settings with the cache in `cache_dir`, small refill units and quick, bounded retries.
fn settings(cache_dir: &Path) -> DaemonSettings {
    let mut s = DaemonSettings::default();
    s.cache_config.refill_size = 65_536;
    s.cache_config.memory_size_mb = 4;
    s.override_cache(Some(cache_dir), Some(256 << 20));
    s.http_config.connect_timeout_ms = 500;
    s.http_config.request_timeout_ms = 800;
    s.http_config.retries = 2;
    s.http_config.retry_backoff_ms = 2;
    s.http_config.retry_backoff_max_ms = 20;
    s
}

/// The reference device: the fixture opened from its local file.
async fn local_image(dir: &Path) -> Arc<dyn BlockDevice> {
    let sub = dir.join("local");
    std::fs::create_dir_all(&sub).unwrap();
    let config = write_config(&sub, "", serde_json::json!({"file": fixture("ext4_64")}));
    open_image_lun(&config, &settings(&sub.join("cache")))
        .await
        .unwrap()
}

#[tokio::test]
async fn layer_resolution_prefers_local_copies_and_ro_refuses_writes() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let server = blob_server(&blob).await;
    let tmp = tempfile::tempdir().unwrap();
    let layer_dir = tmp.path().join("fs");
    std::fs::create_dir(&layer_dir).unwrap();
    let layer = serde_json::json!({
        "file": tmp.path().join("missing.commit"),
        "digest": EXT4_64_DIGEST, "size": blob.len(), "dir": layer_dir,
    });
    let config = write_config(tmp.path(), &format!("{}{REPO}", server.url()), layer);
    let luns = RemoteImages::new(settings(&tmp.path().join("cache"))).unwrap();

    // Nothing local: the registry blob is read lazily.
    let remote = luns.open(&config, false).await.unwrap();
    assert_eq!(remote.size(), 64 << 30);
    assert!(remote.read_only(), "no upper: read-only");
    let head = remote.read(1024, 1024).await.unwrap();
    assert_eq!(&head[56..58], &[0x53, 0xEF], "ext4 magic");
    assert!(!server.requests().is_empty());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("init-debug.log")).unwrap(),
        "success"
    );

    // A committed copy in `dir` wins over the registry: no request at all.
    std::os::unix::fs::symlink(fixture("ext4_64"), layer_dir.join("overlaybd.commit")).unwrap();
    server.clear();
    let local = luns.open(&config, false).await.unwrap();
    assert_eq!(local.read(1024, 1024).await.unwrap(), head);
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // `ro:` with a writable upper: reads work, writes and unmaps are refused.
    let (data, index) = (tmp.path().join("wdata"), tmp.path().join("windex"));
    drop(
        overlaybd_target::overlaybd::WritableLayer::create(
            &data,
            &index,
            &overlaybd_target::overlaybd::writable::CreateOptions::new(0),
        )
        .unwrap(),
    );
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg["upper"] = serde_json::json!({"index": index, "data": data});
    std::fs::write(&config, cfg.to_string()).unwrap();
    let rw = luns.open(&config, false).await.unwrap();
    assert!(!rw.read_only());
    drop(rw);
    let ro = luns.open(&config, true).await.unwrap();
    assert!(ro.read_only() && !ro.can_unmap());
    assert_eq!(ro.read(1024, 1024).await.unwrap(), head);
    assert!(matches!(
        ro.write(0, Bytes::from(vec![0; 512]), false).await,
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(ro.unmap(0, 512).await, Err(BlockError::ReadOnly)));

    // A broken config is refused with the file and the field named, and the result file says so.
    std::fs::write(&config, r#"{"lowers": [{"digest": "sha256:12"}]}"#).unwrap();
    let err = luns.open(&config, false).await.err().unwrap().to_string();
    assert!(
        err.contains("config.v1.json") && err.contains("lowers[0].digest"),
        "{err}"
    );
}

/// Deterministic fault schedule for request `n` while faults are on: a bit over a third of
/// the requests misbehave, each kind about equally often except the slow stalls.
fn scheduled_fault(n: u64) -> Fault {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58; // 0..64
    match h {
        0..=3 => Fault::Reset,
        4..=7 => Fault::Status(500),
        8..=11 => Fault::Truncate,
        12..=17 => Fault::Flip(n.wrapping_mul(7919)),
        18..=21 => Fault::IgnoreRange,
        22 => Fault::Stall(Duration::from_millis(1200)),
        _ => Fault::Pass,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_cache_and_registry_never_yield_wrong_bytes() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let server = blob_server(&blob).await;
    let faulty = Arc::new(AtomicBool::new(true));
    let injected = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let proxy = FaultProxy::start(server.addr, Link::default(), {
        let (faulty, injected) = (Arc::clone(&faulty), Arc::clone(&injected));
        move |n, _| {
            if !faulty.load(Ordering::SeqCst) {
                return Fault::Pass;
            }
            let fault = scheduled_fault(n);
            injected.lock().push(std::mem::discriminant(&fault));
            fault
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = local_image(tmp.path()).await;
    let config = fixture_config(tmp.path(), &format!("{}{REPO}", proxy.url()), blob.len());
    let runs = mapped_runs(reference.as_ref()).await;
    let ranges = scattered_ranges(&runs, 200, 0x1234_5678, 8);
    // Small refill units and one retry: many requests, and some reads that fail for good.
    // Each round starts with an empty cache, so it goes to the network again.
    let round_settings = |round: usize| {
        let mut s = settings(&tmp.path().join(format!("cache{round}")));
        s.cache_config.refill_size = 16_384;
        s.cache_config.memory_size_mb = 1;
        s.http_config.retries = 1;
        s
    };
    let (mut good, mut failed) = (0, 0);
    let mut images = Vec::new();
    for round in 0..4 {
        let luns = RemoteImages::new(round_settings(round)).unwrap();
        // Opening may fail under faults, but only cleanly; it succeeds within a few tries.
        let mut image = None;
        for _ in 0..10 {
            match luns.open(&config, false).await {
                Ok(i) => {
                    image = Some(i);
                    break;
                }
                Err(e) => eprintln!("open failed cleanly: {e}"),
            }
        }
        let image = image.expect("image never opened under faults");
        for &(offset, len) in &ranges {
            let want = reference.read(offset, len).await.unwrap();
            match image.read(offset, len).await {
                Ok(got) => {
                    assert!(got == want, "wrong bytes at {offset}+{len}");
                    good += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            BlockError::Io(_) | BlockError::Remote(_) | BlockError::Corrupt(_)
                        ),
                        "{e}"
                    );
                    failed += 1;
                }
            }
        }
        images.push(image);
    }
    eprintln!(
        "under faults: {good} reads right, {failed} failed cleanly; {} requests, {} faults",
        proxy.requests(),
        proxy.faults()
    );
    let kinds: std::collections::HashSet<_> = injected.lock().iter().copied().collect();
    assert_eq!(kinds.len(), 7, "every kind of fault (and passes) occurred");
    assert!(good > 0, "retries got data through");

    // Faults off: everything reads right, through each device and through a fresh process's
    // view of each disk cache (memory tier empty), so nothing wrong was kept anywhere.
    faulty.store(false, Ordering::SeqCst);
    for (round, image) in images.iter().enumerate() {
        let fresh = RemoteImages::new(round_settings(round)).unwrap();
        let reopened = fresh.open(&config, false).await.unwrap();
        for &(offset, len) in &ranges {
            let want = reference.read(offset, len).await.unwrap();
            assert!(
                image.read(offset, len).await.unwrap() == want,
                "{offset}+{len}"
            );
            assert!(
                reopened.read(offset, len).await.unwrap() == want,
                "{offset}+{len}"
            );
        }
    }
}

/// Metadata an ext4 mount reads, found by parsing the filesystem through the device:
/// superblock, all group descriptors, group 0's bitmaps, the inode-table blocks of the root
/// directory and the journal inode, the root directory's blocks and the journal superblock.
async fn ext4_mount_reads(dev: &dyn BlockDevice) -> Vec<(u64, usize)> {
    fn u16_at(b: &[u8], at: usize) -> u64 {
        u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
    }
    fn u32_at(b: &[u8], at: usize) -> u64 {
        u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
    }
    let sb = dev.read(1024, 1024).await.unwrap();
    assert_eq!(u16_at(&sb, 56), 0xEF53, "ext4 magic");
    let block = 1024u64 << u32_at(&sb, 24);
    let blocks = u32_at(&sb, 4) | (u32_at(&sb, 0x150) << 32);
    let per_group = u32_at(&sb, 32);
    let inodes_per_group = u32_at(&sb, 40);
    let inode_size = u16_at(&sb, 88);
    let is64 = u32_at(&sb, 96) & 0x80 != 0;
    let desc_size = if is64 { u16_at(&sb, 254) } else { 32 };
    let groups = blocks.div_ceil(per_group);
    let gdt_block = u32_at(&sb, 20) + 1;
    let gdt_len = (groups * desc_size).div_ceil(block) * block;
    let mut reads = vec![(0, 4096), (gdt_block * block, gdt_len as usize)];
    let gdt = dev.read(gdt_block * block, gdt_len as usize).await.unwrap();
    let field =
        |d: &[u8], lo: usize, hi: usize| u32_at(d, lo) | if is64 { u32_at(d, hi) << 32 } else { 0 };
    let g0 = &gdt[..desc_size as usize];
    let (block_bitmap, inode_bitmap, inode_table) =
        (field(g0, 0, 0x20), field(g0, 4, 0x24), field(g0, 8, 0x28));
    reads.push((block_bitmap * block, block as usize));
    reads.push((inode_bitmap * block, block as usize));
    // Inodes 2 (root) and 8 (journal) are in group 0.
    for ino in [2u64, 8] {
        assert!(ino <= inodes_per_group);
        let at = inode_table * block + (ino - 1) * inode_size;
        let table_block = at / block * block;
        reads.push((table_block, block as usize));
        let sector = dev.read(at / 512 * 512, 512).await.unwrap();
        let inode = &sector[(at % 512) as usize..];
        let i_block = &inode[40..100];
        assert_eq!(u16_at(i_block, 0), 0xF30A, "extent header of inode {ino}");
        let entries = u16_at(i_block, 2).min(4) as usize;
        assert_eq!(u16_at(i_block, 6), 0, "inode {ino}: leaf extents");
        for e in 0..entries.min(1) {
            let x = &i_block[12 + e * 12..24 + e * 12];
            let start = (u16_at(x, 6) << 32) | u32_at(x, 8);
            let len = if ino == 2 { u16_at(x, 4).min(4) } else { 1 };
            reads.push((start * block, (len * block) as usize));
        }
    }
    reads
}

#[tokio::test]
async fn mounting_the_ext4_fetches_a_small_part_of_the_blob() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let server = blob_server(&blob).await;
    let proxy = FaultProxy::start(server.addr, Link::default(), |_, _| Fault::Pass).await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = local_image(tmp.path()).await;
    let ranges = ext4_mount_reads(reference.as_ref()).await;

    let config = fixture_config(tmp.path(), &format!("{}{REPO}", proxy.url()), blob.len());
    let mut s = settings(&tmp.path().join("cache"));
    // overlaybd's default refill unit, as a real deployment would use.
    s.cache_config.refill_size = 262_144;
    let luns = RemoteImages::new(s).unwrap();
    let image = luns.open(&config, true).await.unwrap();
    let opened = proxy.body_bytes();
    for &(offset, len) in &ranges {
        let want = reference.read(offset, len).await.unwrap();
        assert!(
            image.read(offset, len).await.unwrap() == want,
            "{offset}+{len}"
        );
    }
    let fetched = proxy.body_bytes();
    let stats = luns.layers().tiers().stats();
    eprintln!(
        "ext4 mount reads ({} ranges): {} bytes fetched at open, {} in all, of a {}-byte blob \
         ({:.1}%), {} requests; cache source bytes {}",
        ranges.len(),
        opened,
        fetched,
        blob.len(),
        100.0 * fetched as f64 / blob.len() as f64,
        proxy.requests(),
        stats.source_bytes
    );
    assert!(ranges.len() >= 7);
    assert!(
        stats.source_bytes <= fetched,
        "the cache counts what it fetched"
    );
    // Opening reads the ZFile header, its jump table (2 bytes per 4 KiB block of a 541 MB
    // stream) and the LSMT index: a few refill units. The mount's metadata then costs at
    // most two more units.
    assert!(opened <= 5 * 262_144, "open fetched {opened} bytes");
    assert!(
        fetched - opened <= 2 * 262_144,
        "mount reads fetched {} bytes",
        fetched - opened
    );
    assert!(
        fetched * 10 < blob.len() as u64 * 3,
        "a mount fetched {fetched} of {} bytes",
        blob.len()
    );
}

#[tokio::test]
async fn open_fails_cleanly_when_the_registry_denies_or_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = serde_json::json!({"digest": EXT4_64_DIGEST, "size": 4_737_695});
    let luns = RemoteImages::new(settings(&tmp.path().join("cache"))).unwrap();
    // A registry that lacks the blob: no fallback to the cache, whatever the config says.
    let missing =
        support::http_server::TestServer::start(|_| support::http_server::Reply::status(404)).await;
    let config = write_config(
        tmp.path(),
        &format!("{}{REPO}", missing.url()),
        layer.clone(),
    );
    let err = luns.open(&config, true).await.err().unwrap().to_string();
    assert!(err.contains("404"), "{err}");
    // A registry that is down, with an empty cache: the open reads fail, cleanly.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write_config(tmp.path(), &format!("http://127.0.0.1:{port}{REPO}"), layer);
    let err = luns.open(&config, true).await.err().unwrap().to_string();
    assert!(
        err.contains("lowers[0]") || err.contains("127.0.0.1"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(tmp.path().join("init-debug.log"))
            .unwrap()
            .starts_with("failed:"),
        "the result file reports the failure"
    );
}

#[tokio::test]
async fn a_header_damaged_in_transit_is_dropped_from_the_cache_and_refetched() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    // The first ranged answer that holds the ZFile magic gets one magic byte flipped.
    let flipped = Arc::new(AtomicBool::new(false));
    let covering = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = support::http_server::TestServer::start({
        let (blob, flipped, covering) = (
            Arc::clone(&blob),
            Arc::clone(&flipped),
            Arc::clone(&covering),
        );
        move |req| {
            let reply = support::http_server::serve_range(req, &blob);
            let holds_magic = req
                .header("range")
                .is_some_and(|r| r.starts_with("bytes=0-") && r != "bytes=0-0");
            if !holds_magic {
                return reply;
            }
            covering.fetch_add(1, Ordering::SeqCst);
            // Only the first covering answer is damaged (serve_range answers in full).
            if flipped.swap(true, Ordering::SeqCst) {
                return reply;
            }
            reply.map_body(|mut body| {
                body[3] ^= 0x20;
                body
            })
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = local_image(tmp.path()).await;
    let config = fixture_config(tmp.path(), &format!("{}{REPO}", server.url()), blob.len());
    // A memory tier large enough to keep the bad unit, were it not invalidated.
    let luns = RemoteImages::new(settings(&tmp.path().join("cache"))).unwrap();
    let image = luns.open(&config, true).await.unwrap();
    assert!(flipped.load(Ordering::SeqCst), "the fault was injected");
    assert_eq!(
        covering.load(Ordering::SeqCst),
        2,
        "the damaged unit was fetched again, once"
    );
    assert_eq!(
        image.read(0, 1 << 20).await.unwrap(),
        reference.read(0, 1 << 20).await.unwrap()
    );
}

#[tokio::test]
async fn a_block_corrupt_on_every_fetch_is_a_medium_error_after_one_retry() {
    let Some(_) = require("ext4_64") else { return };
    use overlaybd_target::scsi::{DataDirection, LunConfig, Nexus, ScsiRequest, ScsiTarget};
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    let corrupt = Arc::new(AtomicBool::new(false));
    let server = support::http_server::TestServer::start({
        let (blob, corrupt) = (Arc::clone(&blob), Arc::clone(&corrupt));
        move |req| {
            let reply = support::http_server::serve_range(req, &blob);
            if !corrupt.load(Ordering::SeqCst) {
                return reply;
            }
            // Every byte inverted: each stored block in the answer fails its CRC.
            reply.map_body(|body| body.iter().map(|b| !b).collect())
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = local_image(tmp.path()).await;
    let runs = mapped_runs(reference.as_ref()).await;
    // Data in the middle of the image: not in the units fetched at open.
    let (offset, _) = runs[runs.len() / 2];
    let config = fixture_config(tmp.path(), &format!("{}{REPO}", server.url()), blob.len());
    let luns = RemoteImages::new(settings(&tmp.path().join("cache"))).unwrap();
    let device = luns.open(&config, true).await.unwrap();
    let target = ScsiTarget::new(vec![LunConfig {
        device,
        serial: "remote0".into(),
        product: "overlaybd image".into(),
        options: Default::default(),
    }]);
    let nexus = Nexus {
        initiator_name: "iqn.2026-11.test:init".into(),
        isid: [0; 6],
        tpgt: 1,
    };
    let lba = (offset / 512) as u32;
    let mut cdb = vec![0x28, 0];
    cdb.extend_from_slice(&lba.to_be_bytes());
    cdb.extend_from_slice(&[0, 0, 8, 0]); // 8 blocks
    let read = || ScsiRequest {
        lun: 0,
        cdb: Bytes::from(cdb.clone()),
        direction: DataDirection::In,
        expected_len: 4096,
        data_out: Bytes::new(),
    };
    // The first command reports the power-on unit attention; a TEST UNIT READY takes it.
    let tur = ScsiRequest {
        lun: 0,
        cdb: Bytes::from_static(&[0; 6]),
        direction: DataDirection::None,
        expected_len: 0,
        data_out: Bytes::new(),
    };
    let _ = target.execute(&nexus, tur).await;

    corrupt.store(true, Ordering::SeqCst);
    server.clear();
    let resp = target.execute(&nexus, read()).await;
    assert_eq!(resp.status, 0x02, "CHECK CONDITION");
    let sense = resp.sense.expect("sense data");
    assert_eq!(
        (sense[2] & 0x0F, sense[12]),
        (0x03, 0x11),
        "MEDIUM ERROR / UNRECOVERED READ ERROR"
    );
    assert_eq!(
        server.requests().len(),
        2,
        "fetched, then refetched once: no loop"
    );

    // The link heals: nothing bad was kept, the same command now succeeds.
    corrupt.store(false, Ordering::SeqCst);
    let resp = target.execute(&nexus, read()).await;
    assert_eq!(resp.status, 0x00, "GOOD");
    assert_eq!(
        resp.data_in,
        reference.read(u64::from(lba) * 512, 4096).await.unwrap()
    );
}

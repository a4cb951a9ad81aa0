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

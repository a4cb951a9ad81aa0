//! An overlaybd image whose base layer is fetched lazily from a registry: the real ext4_64
//! ZFile served over HTTP with Range requests, opened from a `config.v1.json` through
//! [`RemoteLayers`], with a local writable layer on top.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use overlaybd_target::block::BlockDevice;
use overlaybd_target::cache::settings::DaemonSettings;
use overlaybd_target::cache::RemoteLayers;
use overlaybd_target::overlaybd::writable::{CreateOptions, WritableLayer};
use overlaybd_target::overlaybd::Image;
use sha2::{Digest, Sha256};
use support::fixtures::{fixture, require, EXT4_64_DIGEST as DIGEST};
use support::http_server::blob_server;

const REPO: &str = "/v2/library/base/blobs";

#[tokio::test]
async fn remote_base_layer_with_local_upper() {
    let Some(_) = require("ext4_64") else { return };
    let blob = Arc::new(std::fs::read(fixture("ext4_64")).unwrap());
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&*blob))),
        DIGEST
    );
    let server = blob_server(&blob).await;
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = (
        dir.path().join("writable_data"),
        dir.path().join("writable_index"),
    );
    drop(WritableLayer::create(&data, &index, &CreateOptions::new(0)).unwrap());
    let layer_dir = dir.path().join("fs");
    std::fs::create_dir(&layer_dir).unwrap();
    let config = serde_json::json!({
        "repoBlobUrl": format!("{}{REPO}", server.url()),
        "lowers": [{"digest": DIGEST, "size": blob.len(), "dir": layer_dir}],
        "upper": {"index": index, "data": data},
        "resultFile": dir.path().join("init-debug.log"),
    });
    let config_path = dir.path().join("config.v1.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let mut settings = DaemonSettings::default();
    settings.cache_config.cache_type = "file".into();
    settings.cache_config.cache_dir = Some(dir.path().join("cache").display().to_string());
    let layers = RemoteLayers::new(settings).unwrap();
    let image = Image::open_config_file(&config_path, &layers)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("init-debug.log")).unwrap(),
        "success"
    );
    assert_eq!(image.size(), 64 << 30);
    assert!(!image.read_only());

    let head = image.read(0, 1 << 20).await.unwrap();
    assert_eq!(&head[1080..1082], &[0x53, 0xEF], "ext4 magic");
    assert_eq!(
        hex::encode(Sha256::digest(&head)),
        "7afc8295bdfac4e6189e2a10850384e91391d02e0e6d4931e1f7f09f9d54420b"
    );
    // Reads were ranged: the blob was never fetched whole.
    let requests = server.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.header("range").is_some()),
        "every fetch is a Range request"
    );

    image
        .write(1 << 20, Bytes::from(vec![0xAB; 4096]), true)
        .await
        .unwrap();
    assert_eq!(image.read(1 << 20, 4096).await.unwrap(), vec![0xAB; 4096]);
}

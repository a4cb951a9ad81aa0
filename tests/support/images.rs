//! Image configs and read patterns shared by the remote-image tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use overlaybd_target::block::{BlockDevice, Provisioning};

use super::fixtures::EXT4_64_DIGEST;

/// Writes `dir/config.v1.json` with one lower `layer` (a JSON object), the given
/// `repoBlobUrl` and `resultFile = dir/init-debug.log`; returns its path.
pub fn write_config(dir: &Path, repo_blob_url: &str, layer: serde_json::Value) -> PathBuf {
    let config = serde_json::json!({
        "repoBlobUrl": repo_blob_url,
        "lowers": [layer],
        "resultFile": dir.join("init-debug.log"),
    });
    let path = dir.join("config.v1.json");
    std::fs::write(&path, config.to_string()).expect("write config.v1.json");
    path
}

/// [`write_config`] for the ext4_64 fixture (`size` bytes, digest [`EXT4_64_DIGEST`]) as the
/// one lower layer, under `repo_blob_url`.
pub fn fixture_config(dir: &Path, repo_blob_url: &str, size: usize) -> PathBuf {
    let layer = serde_json::json!({"digest": EXT4_64_DIGEST, "size": size});
    write_config(dir, repo_blob_url, layer)
}

/// The mapped (data-holding) runs of a device, found through its block status.
pub async fn mapped_runs(dev: &dyn BlockDevice) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < dev.size() {
        let st = dev.block_status(at).await.expect("block status");
        if st.state == Provisioning::Mapped {
            runs.push((at, st.len));
        }
        at += st.len;
    }
    runs
}

/// `count` pseudo-random `(offset, len)` reads (from `seed`) inside the mapped runs: whole
/// sectors, up to `512 << max_shift` bytes, so every read decodes stored blocks.
pub fn scattered_ranges(
    runs: &[(u64, u64)],
    count: usize,
    seed: u64,
    max_shift: u64,
) -> Vec<(u64, usize)> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let (start, len) = runs[(next() % runs.len() as u64) as usize];
            let offset = start + (next() % len) / 512 * 512;
            let room = start + len - offset;
            (offset, room.min(512 << (next() % (max_shift + 1))) as usize)
        })
        .collect()
}

/// A registry layer made by the binary: `content` written to `dir/image.raw`, imported with
/// `overlaybd-target import -z` into `dir/layer.obd`. Returns the blob and its digest.
pub fn imported_layer(dir: &Path, content: &[u8]) -> (std::sync::Arc<Vec<u8>>, String) {
    use sha2::{Digest, Sha256};
    let raw = dir.join("image.raw");
    std::fs::write(&raw, content).expect("write image.raw");
    let layer = dir.join("layer.obd");
    super::process::run(
        super::process::binary()
            .arg("import")
            .arg("-z")
            .arg(&raw)
            .arg(&layer)
            .arg(dir.join("local.json")),
    );
    let blob = std::fs::read(&layer).expect("read layer.obd");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    (std::sync::Arc::new(blob), digest)
}

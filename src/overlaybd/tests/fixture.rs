//! The real `ext4_64` base layer made by the original C++ tools (fixtures/README.md,
//! lsmt.md §5.4): layout, index, metadata and the contents of the virtual disk.

use sha2::{Digest, Sha256};

use crate::overlaybd::commit::{write_commit, CommitOptions, CommitSource};
use crate::overlaybd::header::LayerUuid;
use crate::overlaybd::index::Record;
use crate::overlaybd::{LayerStack, LocalOpener, SealedLayer};
pub(super) use crate::test_fixtures::{fixture, require};

const MIB: u64 = 1 << 20;

async fn ext4_64() -> SealedLayer {
    LocalOpener::open_layer(&fixture("ext4_64")).await.unwrap()
}

/// sha256 of virtual bytes `[from, to)`, read in 4 MiB requests.
async fn hash_range(stack: &LayerStack, from: u64, to: u64) -> String {
    let mut h = Sha256::new();
    let mut pos = from;
    while pos < to {
        let len = (to - pos).min(4 * MIB);
        h.update(stack.read(pos, len as usize).await.unwrap());
        pos += len;
    }
    hex::encode(h.finalize())
}

#[tokio::test]
async fn ext4_64_layout_and_index() {
    let Some(_) = require("ext4_64") else { return };
    let layer = ext4_64().await;
    let l = layer.layout();
    assert_eq!(l.size, 541_937_664);
    assert_eq!(
        (l.header.flags, l.header.index_offset, l.header.index_size),
        (0x07, 0, 0)
    );
    assert_eq!(
        (
            l.trailer.flags,
            l.trailer.index_offset,
            l.trailer.index_size
        ),
        (0x06, 541_798_400, 8_448)
    );
    assert_eq!(layer.virtual_size(), 64 << 30);
    assert_eq!((l.trailer.version, l.trailer.sub_version), (1, 1));
    assert!(l.trailer.user_tag.is_empty());
    assert_eq!(
        l.trailer.uuid.to_string(),
        "C02FB491-B4D4-4904-8684-A014D032AF78"
    );
    assert_eq!(l.header.uuid, l.trailer.uuid);
    assert_eq!(l.trailer.parent_uuid, LayerUuid::nil());
    let recs = layer.records();
    // 8,448 stored = 8,323 mappings + 125 padding records.
    assert_eq!(recs.len(), 8_323);
    assert_eq!(
        recs[..7].to_vec(),
        vec![
            Record::data(0, 8272, 8),
            Record::zeroed(8272, 120, 8280),
            Record::data(8392, 8, 8280),
            Record::zeroed(8400, 120, 8288),
            Record::data(8520, 8, 8288),
            Record::zeroed(8528, 7855, 8296),
            Record::zeroed(16383, 16383, 8296),
        ]
    );
    let data: u64 = recs
        .iter()
        .filter(|r| !r.zeroed)
        .map(|r| u64::from(r.length))
        .sum();
    let zeroed: u64 = recs
        .iter()
        .filter(|r| r.zeroed)
        .map(|r| u64::from(r.length))
        .sum();
    assert_eq!((data, zeroed), (1_058_192, 133_159_536));
    assert_eq!(
        recs.iter()
            .filter(|r| !r.zeroed && r.length == 16320)
            .count(),
        64
    );
}

#[tokio::test]
async fn ext4_64_virtual_disk_contents() {
    let Some(_) = require("ext4_64") else { return };
    let stack = LayerStack::new(vec![ext4_64().await]).unwrap();
    assert_eq!(stack.virtual_size(), 64 << 30);
    let sb = stack.read(1024, 512).await.unwrap();
    assert_eq!(&sb[56..58], &[0x53, 0xEF], "ext4 magic 0xEF53 at byte 1080");
    assert_eq!(
        hash_range(&stack, 0, MIB).await,
        "7afc8295bdfac4e6189e2a10850384e91391d02e0e6d4931e1f7f09f9d54420b"
    );
    assert_eq!(
        hash_range(&stack, MIB, 128 * MIB).await,
        "8b05322e515a43e4af81aa27289e2ab61beb76cb307d09267b346848b245f69a"
    );
}

/// Asserts the SHA-256 of the fixture's first `len` bytes (skipped without the fixture).
async fn assert_ext4_64_prefix_hash(len: u64, expected: &str) {
    let Some(_) = require("ext4_64") else { return };
    let stack = LayerStack::new(vec![ext4_64().await]).unwrap();
    assert_eq!(hash_range(&stack, 0, len).await, expected);
}

#[tokio::test]
async fn ext4_64_first_gib_hash() {
    assert_ext4_64_prefix_hash(
        1 << 30,
        "febb945a82f3d9a037dc02bacd7e15c0923dd13823336211886dcbb57da25a25",
    )
    .await;
}

#[tokio::test]
#[ignore = "slow: hashes the whole 64 GiB virtual disk"]
async fn ext4_64_full_disk_hash() {
    assert_ext4_64_prefix_hash(
        64 << 30,
        "e5f5b67aca37084f505d8af3570668fcf098b96ccb409e87caea98d4056a927d",
    )
    .await;
}

/// Re-committing the reference blob (`overlaybd-commit --commit_sealed` with its uuid)
/// reproduces it byte for byte.
#[tokio::test]
async fn ext4_64_recommit_is_byte_identical() {
    let Some(_) = require("ext4_64") else { return };
    let layer = ext4_64().await;
    let opts = CommitOptions {
        uuid: Some(layer.layout().header.uuid),
        ..Default::default()
    };
    let mut out = Vec::new();
    let summary = write_commit(&CommitSource::from_sealed(&layer), &opts, &mut out)
        .await
        .unwrap();
    assert_eq!(summary.index_offset, 541_798_400);
    assert_eq!(summary.index_size, 8_448);
    let original = layer
        .source()
        .read_exact_at(0, layer.layout().size as usize)
        .await
        .unwrap();
    assert_eq!(out.len(), original.len());
    let first_diff = out.iter().zip(original.iter()).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "first differing byte");
}

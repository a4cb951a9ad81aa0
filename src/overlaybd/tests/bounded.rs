//! Writable layers made by our `create` stay within their virtual size plus a bounded overhead
//! on disk under any overwrite pattern (issue 10, finding 8), and read back like a model.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::*;
use crate::overlaybd::LocalOpener;
use crate::tools::create::{run as create_tool, CreateArgs};

const VSIZE: u64 = 8 << 20;
/// Allowance over `VSIZE` + header for file-system metadata counted in `st_blocks` (extent
/// blocks of a fragmented file); the append layout exceeds it many times over.
const SLACK: u64 = 1 << 20;

/// Runs our `create` with its default options.
fn create_default(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (data, index) = (
        dir.join(format!("{name}.data")),
        dir.join(format!("{name}.index")),
    );
    create_tool(CreateArgs {
        data: data.clone(),
        index: index.clone(),
        size: VSIZE.to_string(),
        parent_uuid: None,
        uuid: None,
        sparse: false,
        append: false,
    })
    .unwrap();
    (data, index)
}

/// Asserts the two files together use at most `VSIZE` + header + [`SLACK`], in length and in
/// allocated blocks.
fn assert_bounded(data: &Path, index: &Path, when: &str) {
    let (d, i) = (
        std::fs::metadata(data).unwrap(),
        std::fs::metadata(index).unwrap(),
    );
    let limit = VSIZE + HEADER_SIZE as u64 + SLACK;
    assert!(
        d.len() + i.len() <= limit,
        "{when}: files are {} + {} bytes long, limit {limit}",
        d.len(),
        i.len()
    );
    let used = (d.blocks() + i.blocks()) * 512;
    assert!(
        used <= limit,
        "{when}: {used} bytes allocated, limit {limit}"
    );
}

/// A random `granule`-aligned range of 1..=16 granules inside the disk.
fn random_range(rng: &mut StdRng, granule: u64) -> (u64, u64) {
    let len = rng.gen_range(1..=16u64) * granule;
    let at = rng.gen_range(0..=(VSIZE - len) / granule) * granule;
    (at, len)
}

/// A random write (`Some` bytes) or discard (`None`, when `discard`) of a random 4 KiB-aligned
/// range, applied to `model`; returns `(offset, length, bytes)`.
fn random_op(rng: &mut StdRng, discard: bool, model: &mut [u8]) -> (u64, u64, Option<Bytes>) {
    random_op_of(rng, 4096, discard, model)
}

/// [`random_op`] on `granule`-aligned ranges.
fn random_op_of(
    rng: &mut StdRng,
    granule: u64,
    discard: bool,
    model: &mut [u8],
) -> (u64, u64, Option<Bytes>) {
    let (at, len) = random_range(rng, granule);
    let range = at as usize..(at + len) as usize;
    if discard {
        model[range].fill(0);
        return (at, len, None);
    }
    let bytes = pattern(len / S, rng.gen());
    model[range].copy_from_slice(&bytes);
    (at, len, Some(Bytes::from(bytes)))
}

/// Same-block and random overwrites (several thousand, 4–64 KiB) on a layer made by `create`.
#[tokio::test]
async fn create_default_layer_stays_bounded_under_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (data, index) = create_default(dir.path(), "w");
    let layer = WritableLayer::open(&data, &index).unwrap();
    let mut model = vec![0u8; VSIZE as usize];
    let mut rng = StdRng::seed_from_u64(8);
    // The same 64 KiB, over and over.
    for i in 0..1500u32 {
        let bytes = pattern(128, i as u8);
        layer
            .write(64 << 10, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        model[64 << 10..128 << 10].copy_from_slice(&bytes);
    }
    assert_bounded(&data, &index, "same-block overwrites");
    // Random ranges, with a discard now and then.
    for i in 0..3000u32 {
        match random_op(&mut rng, i % 10 == 9, &mut model) {
            (at, len, None) => layer.discard(at, len).await.unwrap(),
            (at, _, Some(bytes)) => layer.write(at, bytes).await.unwrap(),
        }
    }
    assert_bounded(&data, &index, "random overwrites");
    assert!(layer.read(0, VSIZE as usize).await.unwrap() == model);
    layer.flush().await.unwrap();
    drop(layer);
    let layer = WritableLayer::open(&data, &index).unwrap();
    assert!(layer.read(0, VSIZE as usize).await.unwrap() == model);
}

/// An image config whose `upper` was made by `create`, on a lower with data: writes (some FUA)
/// and unmaps through the block device stay bounded, and unmapped ranges read as zeros also
/// after the image is reopened (the sparse layout alone would show the lower data again).
#[tokio::test]
async fn image_upper_from_create_is_bounded_and_unmaps_stay_zero() {
    image_upper_round_trip(4096, 10).await;
}

/// The same with writes and unmaps of single sectors and runs of them that start and end
/// inside the file system's 4 KiB allocation units (what ext4 with 1 KiB blocks sends): after
/// the reopen, the sectors of a unit that were not written still show the lower layer, not
/// zeros (the sparse layout alone keeps only whole allocated units).
#[tokio::test]
async fn image_upper_sector_writes_keep_the_lower_data_around_them_after_reopen() {
    image_upper_round_trip(512, 11).await;
}

/// `base` committed as the lower of an image config in `d`, with an upper made by `create`;
/// returns the config and the upper's data and index files.
async fn config_over(d: &Path, base: &WritableLayer) -> (PathBuf, PathBuf, PathBuf) {
    let blob = d.join("base.obd");
    std::fs::write(&blob, commit_blob(base).await).unwrap();
    let (data, index) = create_default(d, "upper");
    let config = d.join("config.v1.json");
    let json = serde_json::json!({
        "lowers": [{ "file": blob }],
        "upper": { "data": data, "index": index },
        "resultFile": d.join("result"),
    });
    std::fs::write(&config, json.to_string()).unwrap();
    (config, data, index)
}

/// Asserts `image` reads as `model`, then flushes, reopens it from `config` and asserts the
/// same; returns the reopened image.
async fn reads_as_model_live_and_reopened(image: Image, config: &Path, model: &[u8]) -> Image {
    assert!(
        image.read(0, VSIZE as usize).await.unwrap() == model,
        "live"
    );
    image.flush().await.unwrap();
    drop(image);
    let image = Image::open_config_file(config, &LocalOpener).await.unwrap();
    assert!(
        image.read(0, VSIZE as usize).await.unwrap() == model,
        "reopened"
    );
    image
}

async fn image_upper_round_trip(granule: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = new_layer(d, "base", VSIZE);
    let mut model = vec![0u8; VSIZE as usize];
    for i in 0..8u64 {
        // Data in every other MiB, so unmaps cover lower data, lower holes and both.
        let bytes = pattern(2048, i as u8);
        base.write(i * (1 << 20), Bytes::from(bytes.clone()))
            .await
            .unwrap();
        let at = (i * (1 << 20)) as usize;
        model[at..at + (1 << 20)].copy_from_slice(&bytes);
        base.discard(i * (1 << 20) + (512 << 10), 512 << 10)
            .await
            .unwrap();
        model[at + (512 << 10)..at + (1 << 20)].fill(0);
    }
    let (config, data, index) = config_over(d, &base).await;

    let image = Image::open_config_file(&config, &LocalOpener)
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..3000u32 {
        match random_op_of(&mut rng, granule, i % 8 == 7, &mut model) {
            (at, len, None) => image.unmap(at, len).await.unwrap(),
            (at, _, Some(bytes)) => image.write(at, bytes, i % 5 == 0).await.unwrap(),
        }
    }
    assert_bounded(&data, &index, "image overwrites");
    let image = reads_as_model_live_and_reopened(image, &config, &model).await;
    // Unmapping everything leaves zeros, still bounded.
    image.unmap(0, VSIZE).await.unwrap();
    drop(image);
    let image = Image::open_config_file(&config, &LocalOpener)
        .await
        .unwrap();
    assert!(image
        .read(0, VSIZE as usize)
        .await
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_bounded(&data, &index, "after unmapping everything");
}

/// Single-sector writes to every sector of 64 allocation units, all at once: each fills its
/// unit from the disk before writing it whole, and none may undo another (they are
/// serialised), live and after a reopen.
#[tokio::test]
async fn concurrent_sector_writes_in_one_unit_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = new_layer(d, "base", VSIZE);
    let lower = pattern(VSIZE / S, 3);
    base.write(0, Bytes::from(lower.clone())).await.unwrap();
    let (config, _, _) = config_over(d, &base).await;
    let image = Image::open_config_file(&config, &LocalOpener)
        .await
        .unwrap();
    let mut model = lower;
    let mut writes = Vec::new();
    // Every other sector of each unit, so each unit keeps lower sectors between new ones.
    for unit in 0..64u64 {
        for sector in (0..8u64).step_by(2) {
            let at = unit * 4096 * 3 + sector * S;
            let bytes = pattern(1, (unit * 8 + sector) as u8 ^ 0x5a);
            model[at as usize..(at + S) as usize].copy_from_slice(&bytes);
            writes.push((at, Bytes::from(bytes)));
        }
    }
    let image = Arc::new(image);
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|(at, bytes)| {
            let image = Arc::clone(&image);
            tokio::spawn(async move { image.write(at, bytes, false).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    reads_as_model_live_and_reopened(Arc::try_unwrap(image).ok().unwrap(), &config, &model).await;
}

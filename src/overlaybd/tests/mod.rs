//! Behaviour tests across the overlaybd modules: writable layers against a plain byte model
//! (live, reopened, committed, stacked), the spec's worked examples end to end, corruption
//! handling, and the image block device.

mod fixture;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::commit::{seal_in_place, write_commit, CommitOptions, CommitSource};
use super::header::{flags, Header, LayerUuid, HEADER_SIZE};
use super::image::Image;
use super::index::{decode_records, Record, RECORD_SIZE};
use super::layer::SealedLayer;
use super::stack::LayerStack;
use super::writable::{CreateOptions, WritableLayer};
use super::LsmtError;
use crate::block::{BlockDevice, BlockError, Provisioning};
use crate::cache::bytes_source::BytesSource;
use crate::cache::file::FileSource;
use crate::cache::LayerSource;

const S: u64 = 512;

/// One operation on a writable layer, in sectors.
#[derive(Debug, Clone)]
enum Op {
    Write { sector: u64, len: u64, seed: u8 },
    Discard { sector: u64, len: u64 },
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len * S)
        .map(|i| seed.wrapping_add((i % 251) as u8).wrapping_mul(3) | 1)
        .collect()
}

/// Applies `ops` to a plain byte vector (discards read as zeros).
fn apply_model(model: &mut [u8], ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Write { sector, len, seed } => {
                let at = (sector * S) as usize;
                model[at..at + (len * S) as usize].copy_from_slice(&pattern(len, seed));
            }
            Op::Discard { sector, len } => {
                let at = (sector * S) as usize;
                model[at..at + (len * S) as usize].fill(0);
            }
        }
    }
}

async fn apply_layer(layer: &WritableLayer, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Write { sector, len, seed } => layer
                .write(sector * S, Bytes::from(pattern(len, seed)))
                .await
                .unwrap(),
            Op::Discard { sector, len } => layer.discard(sector * S, len * S).await.unwrap(),
        }
    }
}

fn new_layer(dir: &Path, name: &str, vsize: u64) -> WritableLayer {
    WritableLayer::create(
        &dir.join(format!("{name}.data")),
        &dir.join(format!("{name}.index")),
        &CreateOptions::new(vsize),
    )
    .unwrap()
}

fn reopen(dir: &Path, name: &str) -> WritableLayer {
    WritableLayer::open(
        &dir.join(format!("{name}.data")),
        &dir.join(format!("{name}.index")),
    )
    .unwrap()
}

async fn commit_bytes(src: &CommitSource, opts: &CommitOptions) -> Vec<u8> {
    let mut out = Vec::new();
    write_commit(src, opts, &mut out).await.unwrap();
    out
}

fn mem(bytes: Vec<u8>) -> Arc<dyn LayerSource> {
    Arc::new(BytesSource::new(bytes, "mem"))
}

async fn sealed(bytes: Vec<u8>) -> SealedLayer {
    SealedLayer::open(mem(bytes)).await.unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn op_strategy(sectors: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..sectors, 1..=48u64, any::<u8>())
            .prop_map(move |(s, l, seed)| Op::Write { sector: s, len: l.min(sectors - s), seed }),
        1 => (0..sectors, 1..=64u64).prop_map(move |(s, l)| Op::Discard { sector: s, len: l.min(sectors - s) }),
    ]
}

const VSECTORS: u64 = 256;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A writable layer reads like the model live, after reopen, after commit and after an
    /// in-place seal.
    #[test]
    fn writable_layer_matches_model(ops in prop::collection::vec(op_strategy(VSECTORS), 1..40)) {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let vsize = VSECTORS * S;
            let layer = new_layer(dir.path(), "w", vsize);
            apply_layer(&layer, &ops).await;
            let mut model = vec![0u8; vsize as usize];
            apply_model(&mut model, &ops);
            assert_eq!(layer.read(0, vsize as usize).await.unwrap(), model, "live");
            layer.flush().await.unwrap();
            drop(layer);
            let layer = reopen(dir.path(), "w");
            assert_eq!(layer.read(0, vsize as usize).await.unwrap(), model, "reopened");
            let blob = commit_bytes(&CommitSource::from_writable(&layer), &CommitOptions::default()).await;
            let committed = sealed(blob).await;
            let stack = LayerStack::new(vec![committed]).unwrap();
            assert_eq!(stack.read(0, vsize as usize).await.unwrap(), model, "committed");
            seal_in_place(layer).await.unwrap();
            let s = SealedLayer::open(Arc::new(FileSource::open(dir.path().join("w.data")).await.unwrap())).await.unwrap();
            let stack = LayerStack::new(vec![s]).unwrap();
            assert_eq!(stack.read(0, vsize as usize).await.unwrap(), model, "sealed in place");
        });
    }

    /// Several committed layers stacked (and a writable layer on top) read like the model with
    /// every layer's operations applied bottom to top; the §11 merge of that image does too.
    #[test]
    fn stacked_commits_match_model(
        layers in prop::collection::vec(prop::collection::vec(op_strategy(VSECTORS), 1..12), 1..5),
        top in prop::collection::vec(op_strategy(VSECTORS), 0..12),
    ) {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let vsize = VSECTORS * S;
            let mut model = vec![0u8; vsize as usize];
            let mut sealed_layers = Vec::new();
            for (i, ops) in layers.iter().enumerate() {
                let layer = new_layer(dir.path(), &format!("l{i}"), vsize);
                apply_layer(&layer, ops).await;
                apply_model(&mut model, ops);
                let blob = commit_bytes(&CommitSource::from_writable(&layer), &CommitOptions::default()).await;
                sealed_layers.push(sealed(blob).await);
            }
            let stack = LayerStack::new(sealed_layers).unwrap();
            assert_eq!(stack.read(0, vsize as usize).await.unwrap(), model, "stack");
            let upper = new_layer(dir.path(), "top", vsize);
            apply_layer(&upper, &top).await;
            apply_model(&mut model, &top);
            let image = Image::new(stack, Some(upper.clone())).await.unwrap();
            assert_eq!(image.read(0, vsize as usize).await.unwrap(), model, "image");
            // Unaligned-to-extent partial reads agree too.
            assert_eq!(image.read(7 * S, 100 * S as usize).await.unwrap(), &model[(7 * S) as usize..(107 * S) as usize]);
            let merged = commit_bytes(&CommitSource::from_stack(image.stack(), Some(&upper)).unwrap(), &CommitOptions::default()).await;
            let flat = LayerStack::new(vec![sealed(merged).await]).unwrap();
            assert_eq!(flat.read(0, vsize as usize).await.unwrap(), model, "merged");
        });
    }

    /// Random corruption of a valid blob never panics: open fails cleanly, or reads stay
    /// within the requested size.
    #[test]
    fn corrupted_blobs_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8), cut in 0usize..3) {
        rt().block_on(async {
            let mut blob = sample_blob().await;
            // Flip bits mostly in the structures: header, index area and trailer.
            for (idx, bit) in &flips {
                let len = blob.len();
                let pos = match idx.index(3) {
                    0 => idx.index(400),
                    1 => len - HEADER_SIZE - 4096 + idx.index(4096),
                    _ => len - HEADER_SIZE + idx.index(400),
                };
                blob[pos] ^= 1 << bit;
            }
            if cut > 0 {
                let len = blob.len();
                blob.truncate(len - cut * 100);
            }
            if let Ok(layer) = SealedLayer::open(mem(blob)).await {
                let stack = LayerStack::new(vec![layer]).unwrap();
                let want = 64 * S as usize;
                if let Ok(b) = stack.read(0, want).await {
                    assert_eq!(b.len(), want);
                }
            }
        });
    }
}

/// A small committed blob with data, zeroed and hole ranges.
async fn sample_blob() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let layer = new_layer(dir.path(), "s", 1 << 20);
    apply_layer(
        &layer,
        &[
            Op::Write {
                sector: 0,
                len: 40,
                seed: 1,
            },
            Op::Discard { sector: 10, len: 5 },
            Op::Write {
                sector: 100,
                len: 8,
                seed: 9,
            },
        ],
    )
    .await;
    commit_bytes(
        &CommitSource::from_writable(&layer),
        &CommitOptions::default(),
    )
    .await
}

/// §6.4 worked example: the index log, the replayed index and the commit, byte for byte.
#[tokio::test]
async fn writable_worked_example_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let layer = new_layer(dir.path(), "w", 1 << 30);
    layer.write(0, Bytes::from(vec![1u8; 4096])).await.unwrap();
    assert_eq!(layer.data_size() / S, 16);
    layer
        .write(1024, Bytes::from(vec![2u8; 2048]))
        .await
        .unwrap();
    assert_eq!(layer.data_size() / S, 20);
    layer
        .write(65536, Bytes::from(vec![0u8; 4096]))
        .await
        .unwrap();
    layer.discard(66560, 2048).await.unwrap();
    assert_eq!(layer.data_size() / S, 28);
    layer
        .write(70144, Bytes::from(vec![3u8; 512]))
        .await
        .unwrap();
    assert_eq!(layer.data_size() / S, 29);
    layer.flush().await.unwrap();

    let log = std::fs::read(dir.path().join("w.index")).unwrap();
    assert_eq!(log.len(), HEADER_SIZE + 5 * RECORD_SIZE);
    let ih = Header::decode(&log, "index").unwrap();
    assert_eq!(
        (ih.flags, ih.index_offset, ih.index_size),
        (flags::HEADER, 4096, 0)
    );
    assert_eq!(
        decode_records(&log[HEADER_SIZE..]),
        vec![
            Record::data(0, 8, 8),
            Record::data(2, 4, 16),
            Record::data(128, 8, 20),
            Record::zeroed(130, 4, 28),
            Record::data(137, 1, 28),
        ]
    );
    let dh = Header::decode(&std::fs::read(dir.path().join("w.data")).unwrap(), "data").unwrap();
    assert_eq!(
        (dh.flags, dh.index_offset, dh.uuid, dh.virtual_size),
        (0x03, 0, ih.uuid, 1 << 30)
    );
    assert!(dh.uuid.to_uuid().is_some() && !dh.uuid.is_nil());

    let layer = reopen(dir.path(), "w");
    let expect_index = vec![
        Record::data(0, 2, 8),
        Record::data(2, 4, 16),
        Record::data(6, 2, 14),
        Record::data(128, 2, 20),
        Record::zeroed(130, 4, 28),
        Record::data(134, 2, 26),
        Record::data(137, 1, 28),
    ];
    assert_eq!(layer.records(), expect_index);

    let uuid = LayerUuid::parse("c02fb491-b4d4-4904-8684-a014d032af78").unwrap();
    let opts = CommitOptions {
        uuid: Some(uuid),
        parent_uuid: None,
        user_tag: b"msg".to_vec(),
    };
    let blob = commit_bytes(&CommitSource::from_writable(&layer), &opts).await;
    assert_eq!(blob.len(), HEADER_SIZE + 13 * 512 + 4096 + HEADER_SIZE);
    let h = Header::decode(&blob, "c").unwrap();
    assert_eq!((h.flags, h.index_offset, h.index_size), (0x07, 0, 0));
    assert_eq!(h.uuid.raw(), b"C02FB491-B4D4-4904-8684-A014D032AF78\0");
    let t = Header::decode(&blob[blob.len() - HEADER_SIZE..], "c").unwrap();
    assert_eq!(
        (t.flags, t.index_offset, t.index_size, t.user_tag.as_slice()),
        (0x06, 21 * 512, 256, &b"msg"[..])
    );
    assert_eq!(
        decode_records(&blob[21 * 512..21 * 512 + 4096]),
        vec![
            Record::data(0, 8, 8),
            Record::data(128, 2, 16),
            Record::zeroed(130, 4, 18),
            Record::data(134, 2, 18),
            Record::data(137, 1, 20),
        ]
    );
    // The data area holds the visible bytes in logical order.
    let mut first = vec![1u8; 4096];
    first[1024..3072].fill(2);
    assert_eq!(&blob[4096..8192], &first[..]);
}

#[tokio::test]
async fn large_writes_and_discards_split_into_records() {
    let dir = tempfile::tempdir().unwrap();
    let layer = new_layer(dir.path(), "w", 64 << 20);
    layer
        .write(0, Bytes::from(pattern(9 * 2048, 5)))
        .await
        .unwrap();
    layer.discard(16 << 20, 20000 * S).await.unwrap();
    let log = std::fs::read(dir.path().join("w.index")).unwrap();
    let recs = decode_records(&log[HEADER_SIZE..]);
    let lens: Vec<_> = recs.iter().map(|r| (r.length, r.zeroed)).collect();
    assert_eq!(
        lens,
        vec![
            (8192, false),
            (8192, false),
            (2048, false),
            (16383, true),
            (3617, true)
        ]
    );
    assert_eq!(layer.read(0, 9 << 20).await.unwrap(), pattern(9 * 2048, 5));
}

#[tokio::test]
async fn reopen_ignores_torn_record_and_rejects_dangling_data() {
    let dir = tempfile::tempdir().unwrap();
    let layer = new_layer(dir.path(), "w", 1 << 20);
    layer.write(0, Bytes::from(pattern(4, 1))).await.unwrap();
    layer.flush().await.unwrap();
    drop(layer);
    let ipath = dir.path().join("w.index");
    // A torn final record (crash mid-append) is ignored, and the next append replaces it.
    let mut log = std::fs::read(&ipath).unwrap();
    log.extend_from_slice(&Record::data(8, 4, 8).encode()[..7]);
    std::fs::write(&ipath, &log).unwrap();
    let layer = reopen(dir.path(), "w");
    assert_eq!(layer.records(), vec![Record::data(0, 4, 8)]);
    layer
        .write(4 * S, Bytes::from(pattern(1, 2)))
        .await
        .unwrap();
    drop(layer);
    let layer = reopen(dir.path(), "w");
    assert_eq!(
        layer.records(),
        vec![Record::data(0, 4, 8), Record::data(4, 1, 12)]
    );
    drop(layer);
    // A record pointing past the data file fails the open with a message naming the file.
    let mut log = std::fs::read(&ipath).unwrap();
    log.extend_from_slice(&Record::data(50, 4, 100).encode());
    std::fs::write(&ipath, &log).unwrap();
    let err = WritableLayer::open(&dir.path().join("w.data"), &ipath)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w.index") && err.contains("outside the data file"),
        "{err}"
    );
    // Swapped files are refused by their header flags.
    let err = WritableLayer::open(&ipath, &dir.path().join("w.data"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the header of a writable index file"),
        "{err}"
    );
    // Creating over existing files is refused.
    assert!(matches!(
        WritableLayer::create(
            &dir.path().join("w.data"),
            &dir.path().join("new.index"),
            &CreateOptions::new(1 << 20)
        ),
        Err(LsmtError::Io { .. })
    ));
}

#[tokio::test]
async fn sealed_layer_corruptions_give_clear_errors() {
    let blob = sample_blob().await;
    let open = |b: Vec<u8>| async move { SealedLayer::open(mem(b)).await.unwrap_err().to_string() };
    let n = blob.len();
    let mut b = blob.clone();
    b[3] ^= 0x20;
    assert!(open(b).await.contains("bad LSMT magic"));
    let mut b = blob.clone();
    b[n - HEADER_SIZE + 28] = 0x07; // trailer claims to be a header
    assert!(open(b).await.contains("trailer flags"));
    let mut b = blob.clone();
    b[n - HEADER_SIZE + 40..n - HEADER_SIZE + 48].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open(b).await.contains("index_size"));
    let mut b = blob.clone();
    b[n - HEADER_SIZE + 32..n - HEADER_SIZE + 40].copy_from_slice(&(u64::MAX - 5).to_le_bytes());
    assert!(open(b).await.contains("index_offset"));
    assert!(open(blob[..n - 100].to_vec()).await.contains("trailer"));
    assert!(open(blob[..1000].to_vec()).await.contains("too small"));
    // An index record pointing past the data area.
    let t = Header::decode(&blob[n - HEADER_SIZE..], "t").unwrap();
    let at = t.index_offset as usize;
    let mut b = blob.clone();
    b[at..at + 16].copy_from_slice(&Record::data(0, 40, 1 << 40).encode());
    assert!(open(b).await.contains("outside the data area"));
    // Out-of-order records.
    let mut b = blob.clone();
    let first: [u8; 16] = blob[at..at + 16].try_into().unwrap();
    b[at + 16..at + 32].copy_from_slice(&first);
    assert!(open(b).await.contains("overlap or are out of order"));
}

#[tokio::test]
async fn image_block_device_contract() {
    let dir = tempfile::tempdir().unwrap();
    let base = new_layer(dir.path(), "base", 1 << 20);
    base.write(0, Bytes::from(pattern(16, 3))).await.unwrap();
    let blob = commit_bytes(
        &CommitSource::from_writable(&base),
        &CommitOptions::default(),
    )
    .await;

    // Read-only image: writes and unmaps are refused, flush is a no-op.
    let ro = Image::new(
        LayerStack::new(vec![sealed(blob.clone()).await]).unwrap(),
        None,
    )
    .await
    .unwrap();
    assert!(ro.read_only() && !ro.can_unmap());
    assert_eq!(ro.size(), 1 << 20);
    assert!(matches!(
        ro.write(0, Bytes::from(vec![0u8; 512]), false).await,
        Err(BlockError::ReadOnly)
    ));
    assert!(matches!(ro.unmap(0, 512).await, Err(BlockError::ReadOnly)));
    ro.flush().await.unwrap();
    assert!(matches!(
        ro.read(1 << 20, 512).await,
        Err(BlockError::OutOfRange { .. })
    ));
    let st = ro.block_status(0).await.unwrap();
    assert_eq!((st.state, st.len), (Provisioning::Mapped, 16 * S));
    let st = ro.block_status(16 * S).await.unwrap();
    assert_eq!(
        (st.state, st.len),
        (Provisioning::Deallocated, (1 << 20) - 16 * S)
    );

    // Writable upper with virtual size 0 takes the stack's size and records it in its headers.
    let upper = new_layer(dir.path(), "up", 0);
    let rw = Image::new(
        LayerStack::new(vec![sealed(blob).await]).unwrap(),
        Some(upper),
    )
    .await
    .unwrap();
    assert_eq!(rw.size(), 1 << 20);
    assert!(!rw.read_only() && rw.can_unmap());
    rw.write(8 * S, Bytes::from(pattern(4, 7)), true)
        .await
        .unwrap();
    rw.unmap(2 * S, 2 * S).await.unwrap();
    let mut model = vec![0u8; 32 * S as usize];
    model[..(16 * S) as usize].copy_from_slice(&pattern(16, 3));
    model[(8 * S) as usize..(12 * S) as usize].copy_from_slice(&pattern(4, 7));
    model[(2 * S) as usize..(4 * S) as usize].fill(0);
    assert_eq!(rw.read(0, 32 * S as usize).await.unwrap(), model);
    let st = rw.block_status(2 * S).await.unwrap();
    assert_eq!((st.state, st.len), (Provisioning::Deallocated, 2 * S));
    let st = rw.block_status(4 * S).await.unwrap();
    assert_eq!((st.state, st.len), (Provisioning::Mapped, 12 * S));
    assert!(matches!(
        rw.write((1 << 20) - 512, Bytes::from(vec![0u8; 1024]), false)
            .await,
        Err(BlockError::OutOfRange { .. })
    ));
    rw.flush().await.unwrap();
    drop(rw);
    let up = reopen(dir.path(), "up");
    assert_eq!(up.virtual_size(), 1 << 20);
    assert_eq!(up.header().virtual_size, 1 << 20);
}

#[tokio::test]
async fn merge_stores_source_positions_as_tags() {
    // §11 example: A (bottom) (0,8), B (top) (4,8) → two records, tags 1 and 0.
    let dir = tempfile::tempdir().unwrap();
    let a = new_layer(dir.path(), "a", 1 << 20);
    a.write(0, Bytes::from(pattern(8, 1))).await.unwrap();
    let b = new_layer(dir.path(), "b", 1 << 20);
    b.write(4 * S, Bytes::from(pattern(8, 2))).await.unwrap();
    let la =
        sealed(commit_bytes(&CommitSource::from_writable(&a), &CommitOptions::default()).await)
            .await;
    let lb =
        sealed(commit_bytes(&CommitSource::from_writable(&b), &CommitOptions::default()).await)
            .await;
    let stack = LayerStack::new(vec![la, lb]).unwrap();
    let merged = commit_bytes(
        &CommitSource::from_stack(&stack, None).unwrap(),
        &CommitOptions::default(),
    )
    .await;
    let t = Header::decode(&merged[merged.len() - HEADER_SIZE..], "m").unwrap();
    let at = t.index_offset as usize;
    assert_eq!(
        decode_records(&merged[at..at + 4096]),
        vec![
            Record::data(0, 4, 8).with_tag(1),
            Record::data(4, 8, 12).with_tag(0)
        ]
    );
    // Readers ignore stored tags.
    let flat = LayerStack::new(vec![sealed(merged).await]).unwrap();
    assert_eq!(
        flat.read(0, 12 * S as usize).await.unwrap(),
        stack.read(0, 12 * S as usize).await.unwrap()
    );
}

#[tokio::test]
async fn raw_export_and_import_roundtrip() {
    use super::raw::{export_sparse, import_raw};
    let dir = tempfile::tempdir().unwrap();
    let vsize = 8u64 << 20;
    let base = new_layer(dir.path(), "base", vsize);
    base.write(0, Bytes::from(pattern(64, 1))).await.unwrap();
    base.write(6 << 20, Bytes::from(pattern(16, 2)))
        .await
        .unwrap();
    let stack = LayerStack::new(vec![
        sealed(
            commit_bytes(
                &CommitSource::from_writable(&base),
                &CommitOptions::default(),
            )
            .await,
        )
        .await,
    ])
    .unwrap();
    // The wanted disk: base with one block changed, one block zeroed, and new data elsewhere.
    let mut want = stack.read(0, vsize as usize).await.unwrap().to_vec();
    want[4096..8192].fill(0x55);
    want[8192..12288].fill(0);
    want[(5 << 20)..(5 << 20) + 512].fill(0x66);
    let raw = dir.path().join("want.raw");
    std::fs::write(&raw, &want).unwrap();
    let upper = new_layer(dir.path(), "up", vsize);
    let summary = import_raw(&raw, &stack, &upper).await.unwrap();
    assert_eq!((summary.written, summary.discarded), (8192, 4096));
    let image = Image::new(stack, Some(upper)).await.unwrap();
    assert_eq!(image.read(0, vsize as usize).await.unwrap(), want);
    let out = dir.path().join("out.raw");
    export_sparse(&image, &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want);
}

/// Child half of [`flushed_writes_survive_kill_9`]: writes, flushes, reports, keeps writing.
#[test]
#[ignore = "child process of flushed_writes_survive_kill_9, which runs it"]
fn kill9_child() {
    let Ok(dir) = std::env::var("OVERLAYBD_KILL9_DIR") else {
        return;
    };
    rt().block_on(async {
        let layer = reopen(Path::new(&dir), "w");
        for i in 0..64u64 {
            layer
                .write(i * 8 * S, Bytes::from(pattern(8, i as u8)))
                .await
                .unwrap();
        }
        layer.discard(8 * S, 8 * S).await.unwrap();
        layer.flush().await.unwrap();
        println!("FLUSHED");
        // Unflushed churn until killed.
        let mut i = 0u64;
        loop {
            layer
                .write((i % 64) * 8 * S, Bytes::from(pattern(8, 200)))
                .await
                .unwrap();
            i += 1;
        }
    });
}

/// Kills a process with SIGKILL after its flush returned: reopening finds every flushed write.
#[test]
fn flushed_writes_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    drop(new_layer(dir.path(), "w", 1 << 20));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overlaybd::tests::kill9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OVERLAYBD_KILL9_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let flushed = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("FLUSHED"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(flushed, "child never reported its flush");
    let layer = reopen(dir.path(), "w");
    rt().block_on(async {
        let all = layer.read(0, (64 * 8 * S) as usize).await.unwrap();
        for i in 0..64u64 {
            let got = &all[(i * 8 * S) as usize..((i + 1) * 8 * S) as usize];
            if i == 1 {
                // Discarded, unless a later unflushed overwrite landed; never anything else.
                assert!(
                    got.iter().all(|&b| b == 0) || got == pattern(8, 200),
                    "block {i}"
                );
            } else {
                assert!(
                    got == pattern(8, i as u8) || got == pattern(8, 200),
                    "block {i}"
                );
            }
        }
    });
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Image>();
    check::<Arc<WritableLayer>>();
}

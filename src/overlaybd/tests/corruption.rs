//! Damaged files: clear errors, never a panic.

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

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
    commit_blob(&layer).await
}

#[tokio::test]
async fn reopen_ignores_torn_record_and_drops_dangling_data() {
    let dir = tempfile::tempdir().unwrap();
    let layer = patterned_layer(dir.path(), "w", 4, 1).await;
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
    // A record pointing past the data file is dropped on open (power-loss recovery, see
    // `power_loss.rs`), and the log is cut back to the records before it.
    let mut log = std::fs::read(&ipath).unwrap();
    let kept = log.len() as u64;
    log.extend_from_slice(&Record::data(50, 4, 100).encode());
    std::fs::write(&ipath, &log).unwrap();
    let layer = reopen(dir.path(), "w");
    assert_eq!(layer.records().len(), 2);
    assert_eq!(std::fs::metadata(&ipath).unwrap().len(), kept);
    drop(layer);
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
    let t = LsmtHeader::decode(&blob[n - HEADER_SIZE..], "t").unwrap();
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

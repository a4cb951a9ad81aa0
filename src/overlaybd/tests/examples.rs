//! The spec's worked examples, end to end and byte for byte.

use super::*;
use crate::overlaybd::writable_index::spec_example;

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
    let ih = LsmtHeader::decode(&log, "index").unwrap();
    assert_eq!(
        (ih.flags, ih.index_offset, ih.index_size),
        (flags::HEADER, 4096, 0)
    );
    assert_eq!(decode_records(&log[HEADER_SIZE..]), spec_example::log());
    let dh =
        LsmtHeader::decode(&std::fs::read(dir.path().join("w.data")).unwrap(), "data").unwrap();
    assert_eq!(
        (dh.flags, dh.index_offset, dh.uuid, dh.virtual_size),
        (0x03, 0, ih.uuid, 1 << 30)
    );
    assert!(dh.uuid.to_uuid().is_some() && !dh.uuid.is_nil());

    let layer = reopen(dir.path(), "w");
    assert_eq!(layer.records(), spec_example::replayed());

    let uuid = LayerUuid::parse("c02fb491-b4d4-4904-8684-a014d032af78").unwrap();
    let opts = CommitOptions {
        uuid: Some(uuid),
        parent_uuid: None,
        user_tag: b"msg".to_vec(),
    };
    let blob = commit_bytes(&CommitSource::from_writable(&layer), &opts).await;
    assert_eq!(blob.len(), HEADER_SIZE + 13 * 512 + 4096 + HEADER_SIZE);
    let h = LsmtHeader::decode(&blob, "c").unwrap();
    assert_eq!((h.flags, h.index_offset, h.index_size), (0x07, 0, 0));
    assert_eq!(h.uuid.raw(), b"C02FB491-B4D4-4904-8684-A014D032AF78\0");
    let t = LsmtHeader::decode(&blob[blob.len() - HEADER_SIZE..], "c").unwrap();
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
async fn merge_stores_source_positions_as_tags() {
    // §11 example: A (bottom) (0,8), B (top) (4,8) → two records, tags 1 and 0.
    let dir = tempfile::tempdir().unwrap();
    let a = patterned_layer(dir.path(), "a", 8, 1).await;
    let b = new_layer(dir.path(), "b", 1 << 20);
    b.write(4 * S, Bytes::from(pattern(8, 2))).await.unwrap();
    let la = committed(&a).await;
    let lb = committed(&b).await;
    let stack = LayerStack::new(vec![la, lb]).unwrap();
    let merged = commit_bytes(
        &CommitSource::from_stack(&stack, None).unwrap(),
        &CommitOptions::default(),
    )
    .await;
    let t = LsmtHeader::decode(&merged[merged.len() - HEADER_SIZE..], "m").unwrap();
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

/// Sparse layers (§7): headers and file shapes as `overlaybd-create -s` makes them, data in
/// place, and the reopen quirk: a discard hides lower data only until the layer is reopened.
#[tokio::test]
async fn sparse_layer_files_and_reopen_quirk() {
    let dir = tempfile::tempdir().unwrap();
    let base = patterned_layer(dir.path(), "base", 64, 1).await;
    let lower = committed(&base).await;

    let up = create_layer(
        dir.path(),
        "up",
        &CreateOptions {
            sparse: true,
            ..CreateOptions::new(1 << 20)
        },
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("up.data")).unwrap().len(),
        4096 + (1 << 20)
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("up.index"))
            .unwrap()
            .len(),
        0
    );
    let h = up.header();
    assert_eq!((h.flags, h.virtual_size), (0x13, 1 << 20));
    up.write(8 * S, Bytes::from(pattern(8, 2))).await.unwrap();
    up.discard(32 * S, 16 * S).await.unwrap();
    assert_eq!(
        up.lookup(0, 64),
        vec![Record::data(8, 8, 16), Record::zeroed(32, 16, 40)]
    );
    // Data sits at 4096 + virtual offset.
    let raw = std::fs::read(dir.path().join("up.data")).unwrap();
    assert_eq!(&raw[4096 + 8 * 512..4096 + 16 * 512], &pattern(8, 2)[..]);

    let image = Image::new(LayerStack::new(vec![lower]).unwrap(), Some(up))
        .await
        .unwrap();
    let mut want = pattern(64, 1);
    want[8 * 512..16 * 512].copy_from_slice(&pattern(8, 2));
    let mut live = want.clone();
    live[32 * 512..48 * 512].fill(0);
    assert_eq!(image.read(0, 64 * 512).await.unwrap(), live);
    image.flush().await.unwrap();
    drop(image);

    let up = reopen(dir.path(), "up");
    let lower = committed(&base).await;
    let image = Image::new(LayerStack::new(vec![lower]).unwrap(), Some(up))
        .await
        .unwrap();
    assert_eq!(
        image.read(0, 64 * 512).await.unwrap(),
        want,
        "punched range shows the lower layer again"
    );
}

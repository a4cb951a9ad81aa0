//! Fuzzes LSMT parsing: the input is opened as a sealed layer (header, trailer, index checks)
//! and, when that succeeds, read at a few places through a stack; the same bytes are also
//! replayed as a writable layer's index log and looked up. Input: 8 bytes seeding the read
//! positions, then the blob.

#![no_main]

mod common;

use common::{next, runtime, seeded_blob};
use libfuzzer_sys::fuzz_target;
use overlaybd_target::overlaybd::writable::replay_records;
use overlaybd_target::overlaybd::writable_index::WritableIndex;
use overlaybd_target::overlaybd::{LayerStack, SealedLayer};

/// Largest read tried, in sectors, so a huge virtual size cannot make the fuzzer allocate much.
const MAX_READ_SECTORS: u64 = 256;

fuzz_target!(|data: &[u8]| {
    let Some((mut state, blob, source)) = seeded_blob(data) else {
        return;
    };
    runtime().block_on(async {
        if let Ok(layer) = SealedLayer::open(source).await {
            let sectors = layer.virtual_size() / 512;
            let stack = LayerStack::new(vec![layer]).expect("one layer always stacks");
            for _ in 0..4 {
                let start = if sectors == 0 {
                    0
                } else {
                    next(&mut state) % sectors
                };
                let len = (next(&mut state) % MAX_READ_SECTORS + 1) as usize * 512;
                if let Ok(bytes) = stack.read(start * 512, len).await {
                    assert_eq!(bytes.len(), len);
                }
            }
        }
    });
    let mut index = WritableIndex::new();
    let replay = replay_records(&mut index, blob, next(&mut state));
    assert!(
        replay.applied as usize * 16 <= blob.len(),
        "replay consumed past the input"
    );
    let records = index.records();
    assert!(
        records.windows(2).all(|w| w[0].end() <= w[1].offset),
        "writable index overlaps"
    );
    let start = next(&mut state) % (1 << 50);
    let _ = index.lookup(start, next(&mut state) % (1 << 20));
});

//! Fuzzes ZFile opening (header, trailer, jump table) over in-memory bytes, then random reads
//! and tar/format detection. Input: 8 bytes seeding the read positions, then the blob.

#![no_main]

mod common;

use std::sync::Arc;

use common::{next, runtime, seeded_blob};
use libfuzzer_sys::fuzz_target;
use overlaybd_target::source::LayerSource;
use overlaybd_target::zfile::{open_payload, ZFileReader};

/// Largest read tried, so a huge claimed size cannot make the fuzzer allocate gigabytes.
const MAX_READ: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((mut state, _, source)) = seeded_blob(data) else {
        return;
    };
    runtime().block_on(async {
        if let Ok(reader) = ZFileReader::open(Arc::clone(&source)).await {
            let size = reader.size();
            for _ in 0..4 {
                let r = next(&mut state);
                let offset = if size == 0 { 0 } else { r % size };
                let len = (r >> 32).min(MAX_READ).min(size - offset) as usize;
                if let Ok(bytes) = reader.read_exact_at(offset, len).await {
                    assert_eq!(bytes.len(), len);
                }
            }
        }
        if let Ok(payload) = open_payload(source).await {
            let _ = payload.decompressed().await;
        }
    });
});

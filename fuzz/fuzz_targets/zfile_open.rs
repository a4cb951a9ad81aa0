//! Fuzzes ZFile opening (header, trailer, jump table) over in-memory bytes, then random reads
//! and tar/format detection. Input: 8 bytes seeding the read positions, then the blob.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use overlaybd_target::source::BytesSource;
use overlaybd_target::source::LayerSource;
use overlaybd_target::zfile::{open_payload, ZFileReader};

/// Largest read tried, so a huge claimed size cannot make the fuzzer allocate gigabytes.
const MAX_READ: u64 = 1 << 20;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, blob)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mut state = u64::from_le_bytes(*seed) | 1;
    let source: Arc<dyn LayerSource> = Arc::new(BytesSource::new(blob.to_vec(), "fuzz"));
    runtime().block_on(async {
        if let Ok(reader) = ZFileReader::open(Arc::clone(&source)).await {
            let size = reader.size();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let offset = if size == 0 { 0 } else { state % size };
                let len = (state >> 32).min(MAX_READ).min(size - offset) as usize;
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

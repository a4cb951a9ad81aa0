//! What the blob-opening fuzz targets (`lsmt_open`, `zfile_open`) share: their input layout
//! (an 8-byte seed for the read positions, then the blob), the xorshift that turns the seed into
//! positions, and one async runtime for every input.

use std::sync::{Arc, OnceLock};

use overlaybd_target::source::{BytesSource, LayerSource};

/// A current-thread runtime, built once and reused for every input.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Splits an input into the xorshift state its first 8 bytes seed (never zero, so [`next`]
/// never sticks at zero), the blob after them, and that blob as an in-memory layer source.
/// `None` for an input shorter than the seed.
pub fn seeded_blob(data: &[u8]) -> Option<(u64, &[u8], Arc<dyn LayerSource>)> {
    let (seed, blob) = data.split_first_chunk::<8>()?;
    let source: Arc<dyn LayerSource> = Arc::new(BytesSource::new(blob.to_vec(), "fuzz"));
    Some((u64::from_le_bytes(*seed) | 1, blob, source))
}

/// Steps the xorshift `state` and returns its new value.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

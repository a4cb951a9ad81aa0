//! Tests of the ZFile module as a whole: the real fixture, round trips, corruption.

mod corruption;
mod fixture;
mod round_trip;

use std::io::Cursor;
use std::sync::Arc;

use crate::cache::bytes_source::BytesSource;
use crate::cache::LayerSource;
use crate::zfile::{compress, WriterOptions, ZFileWriter};

/// A blob in memory as a shared source.
fn mem(bytes: Vec<u8>) -> Arc<dyn LayerSource> {
    Arc::new(BytesSource::new(bytes, "test"))
}

/// Deterministic data mixing zero runs, repeated text and pseudo-random bytes, so blocks
/// compress to very different sizes.
fn sample_data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let run = (state as usize % 3000) + 1;
        match state >> 62 {
            0 => out.extend(std::iter::repeat(0u8).take(run)),
            1 => out.extend(b"overlaybd zfile ".iter().cycle().take(run)),
            _ => {
                for _ in 0..run {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    out.push((state >> 56) as u8);
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// Compresses `data` into an in-memory ZFile; with `header` the final header is rewritten.
fn make_zfile(data: &[u8], options: WriterOptions, header: bool) -> Vec<u8> {
    if header {
        let mut w = ZFileWriter::new(Cursor::new(Vec::new()), options).unwrap();
        std::io::Write::write_all(&mut w, data).unwrap();
        w.finish_with_header().unwrap().0.into_inner()
    } else {
        compress(data, Vec::new(), options).unwrap().0
    }
}

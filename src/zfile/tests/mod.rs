//! Tests of the ZFile module as a whole: the real fixture, round trips, corruption.

mod corruption;
mod fixture;
mod parallel;
mod retry;
mod round_trip;

use std::io::Cursor;
use std::sync::Arc;

use crate::source::BytesSource;
use crate::source::LayerSource;
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
                out.extend(noise(run, state));
                state = state.rotate_left(17);
            }
        }
    }
    out.truncate(len);
    out
}

/// Incompressible pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
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

/// Builds a ZFile straight from §9.3 without [`ZFileWriter`] and without its limits (any block
/// size, any stored length), to craft files the writer refuses to make.
fn assemble(
    data: &[u8],
    algorithm: crate::zfile::Algorithm,
    block_size: u32,
    verify: bool,
) -> Vec<u8> {
    use crate::zfile::checksum::crc32c_raw;
    use crate::zfile::codec::BlockEncoder;
    use crate::zfile::header::{flag, ZFileHeader};

    let mut s = ZFileHeader {
        flags: flag::HEADER | flag::DATA | flag::DIGEST,
        digest: 0,
        index_offset: 0,
        index_size: 0,
        original_file_size: 0,
        index_crc: 0,
        block_size,
        algo: algorithm.id(),
        level: 0,
        use_dict: 0,
        dict_size: 0,
        verify: u8::from(verify),
    };
    let mut file = s.encode().to_vec();
    let mut encoder = BlockEncoder::new(algorithm, verify).unwrap();
    let mut table = Vec::new();
    for raw in data.chunks(block_size as usize) {
        let stored = encoder.encode(raw).unwrap();
        table.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        file.extend_from_slice(stored);
    }
    s.flags = flag::DATA | flag::SEALED | flag::DIGEST;
    s.index_offset = file.len() as u64;
    s.index_size = (table.len() / 4) as u64;
    s.original_file_size = data.len() as u64;
    s.index_crc = crc32c_raw(&table);
    file.extend_from_slice(&table);
    file.extend_from_slice(&s.encode());
    file
}

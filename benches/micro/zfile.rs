//! ZFile block decode: `decode_block` on blocks of real file content written by our ZFile
//! writer, for LZ4 and ZSTD, 4 KiB and 64 KiB blocks, with the per-block CRC32C (as every
//! reference tool writes) and without.

use divan::counter::BytesCount;
use divan::Bencher;
use overlaybd_target::zfile::{compress, decode_block, Algorithm, WriterOptions};

use crate::corpus::corpus;

/// Blocks decoded per timed iteration; consecutive blocks of the corpus, so content varies.
const BLOCKS: usize = 64;
const BLOCK_SIZES: [u32; 2] = [4096, 65_536];

/// Stored blocks of one ZFile, split out through the jump table.
struct Blocks {
    algorithm: Algorithm,
    verify: bool,
    stored: Vec<Vec<u8>>,
    raw_len: usize,
}

fn blocks(algorithm: Algorithm, block_size: u32, verify: bool) -> Blocks {
    let raw_len = block_size as usize;
    // Skip the first MiB so both block sizes see mid-corpus content.
    let data = corpus((1 << 20) + BLOCKS * raw_len).split_off(1 << 20);
    let options = WriterOptions {
        algorithm,
        block_size,
        verify,
    };
    let (file, info) = compress(&data[..], Vec::new(), options).expect("corpus compresses");
    let table = &file[info.index_offset as usize..][..BLOCKS * 4];
    let mut at = info.data_offset as usize;
    let stored = table
        .chunks_exact(4)
        .map(|entry| {
            let len = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
            at += len;
            file[at - len..at].to_vec()
        })
        .collect();
    Blocks {
        algorithm,
        verify,
        stored,
        raw_len,
    }
}

fn bench_decode(bencher: Bencher, blocks: Blocks) {
    let mut out = vec![0u8; blocks.raw_len];
    bencher
        .counter(BytesCount::new(BLOCKS * blocks.raw_len))
        .bench_local(|| {
            for stored in &blocks.stored {
                decode_block(blocks.algorithm, blocks.verify, stored, &mut out).expect("decodes");
            }
        });
}

#[divan::bench(args = BLOCK_SIZES)]
fn decode_lz4(bencher: Bencher, block_size: u32) {
    bench_decode(bencher, blocks(Algorithm::Lz4, block_size, false));
}

#[divan::bench(args = BLOCK_SIZES)]
fn decode_lz4_crc(bencher: Bencher, block_size: u32) {
    bench_decode(bencher, blocks(Algorithm::Lz4, block_size, true));
}

#[divan::bench(args = BLOCK_SIZES)]
fn decode_zstd(bencher: Bencher, block_size: u32) {
    bench_decode(bencher, blocks(Algorithm::Zstd, block_size, false));
}

#[divan::bench(args = BLOCK_SIZES)]
fn decode_zstd_crc(bencher: Bencher, block_size: u32) {
    bench_decode(bencher, blocks(Algorithm::Zstd, block_size, true));
}

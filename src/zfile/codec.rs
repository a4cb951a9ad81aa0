//! Block codecs (zfile.md §5, §7): one raw block <-> its stored form (compressed bytes,
//! optionally followed by a CRC32C). Synchronous and allocation-light, so that readers may
//! decode many blocks in parallel on blocking threads and benchmarks can call it directly.

use std::cell::RefCell;
use std::fmt;
use std::io;

use super::checksum::{crc32c_seeded, BLOCK_CRC_SEED};
use super::error::BlockFault;

/// Length of the per-block checksum.
const CRC_LEN: usize = 4;
/// ZSTD level the reference always uses (its level byte stays 0).
const ZSTD_LEVEL: i32 = 3;

/// Compression algorithm of a ZFile (`algo` byte, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Raw LZ4 block format (id 1), the default of every reference tool.
    Lz4,
    /// One Zstandard frame per block (id 2), level 3.
    Zstd,
}

impl Algorithm {
    /// Maps the on-disk id; 0 (MINI_LZO, never implemented) and unknown ids give `None`.
    pub(crate) fn from_id(id: u8) -> Option<Algorithm> {
        match id {
            1 => Some(Algorithm::Lz4),
            2 => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    /// The on-disk id.
    pub(crate) fn id(self) -> u8 {
        match self {
            Algorithm::Lz4 => 1,
            Algorithm::Zstd => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Lz4 => "LZ4",
            Algorithm::Zstd => "ZSTD",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    // A ZSTD decompression context is ~100 KiB; reuse one per thread instead of one per block.
    static ZSTD_DECODER: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decodes one stored block into `out`, whose length must be the block's raw length (the
/// block size, or the remainder for the last block).
///
/// With `verify` the last 4 bytes of `stored` are the CRC32C (seed 100007) of the rest and are
/// checked first. The block must decode to exactly `out.len()` bytes.
pub fn decode_block(
    algorithm: Algorithm,
    verify: bool,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), BlockFault> {
    let payload = if verify {
        let split = stored.len().checked_sub(CRC_LEN).filter(|&n| n > 0);
        let split = split.ok_or(BlockFault::TooShort(stored.len()))?;
        let (payload, crc) = stored.split_at(split);
        let mut crc_bytes = [0u8; CRC_LEN];
        crc_bytes.copy_from_slice(crc);
        let stored_crc = u32::from_le_bytes(crc_bytes);
        let computed = crc32c_seeded(payload, BLOCK_CRC_SEED);
        if computed != stored_crc {
            crate::metrics::global().crc_failure();
            return Err(BlockFault::Crc {
                stored: stored_crc,
                computed,
            });
        }
        payload
    } else {
        stored
    };
    let got = match algorithm {
        // lz4_flex's safe decoder (see Cargo.toml for why not its pointer-based one): a corrupt
        // block is a `Decode` fault, never an out-of-bounds access; `tests::lz4_garbage_*` and
        // the `zfile_open` fuzz target exercise that.
        Algorithm::Lz4 => {
            lz4_flex::block::decompress_into(payload, out).map_err(|e| BlockFault::Decode {
                algorithm: "LZ4",
                reason: e.to_string(),
            })?
        }
        Algorithm::Zstd => decode_zstd(payload, out)?,
    };
    if got != out.len() {
        return Err(BlockFault::SizeMismatch {
            expected: out.len(),
            got,
        });
    }
    Ok(())
}

fn decode_zstd(payload: &[u8], out: &mut [u8]) -> Result<usize, BlockFault> {
    let fault = |reason: String| BlockFault::Decode {
        algorithm: "ZSTD",
        reason,
    };
    // The one-shot decoder would accept concatenated frames; a writer never produces them,
    // so extra bytes after the first frame are corruption.
    let frame = zstd::zstd_safe::find_frame_compressed_size(payload)
        .map_err(|code| fault(zstd::zstd_safe::get_error_name(code).to_string()))?;
    if frame != payload.len() {
        return Err(BlockFault::NotOneFrame {
            payload: payload.len(),
            frame,
        });
    }
    ZSTD_DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decoder = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(|e| fault(e.to_string()))?),
        };
        decoder
            .decompress_to_buffer(payload, out)
            .map_err(|e| fault(e.to_string()))
    })
}

/// Turns raw blocks into their stored form; keeps codec state and a scratch buffer between
/// blocks.
pub(crate) struct BlockEncoder {
    verify: bool,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    buf: Vec<u8>,
}

impl BlockEncoder {
    /// An encoder for `algorithm`, appending checksums if `verify`.
    pub(crate) fn new(algorithm: Algorithm, verify: bool) -> io::Result<BlockEncoder> {
        let zstd = match algorithm {
            Algorithm::Zstd => Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            Algorithm::Lz4 => None,
        };
        Ok(BlockEncoder {
            verify,
            zstd,
            buf: Vec::new(),
        })
    }

    /// Compresses one raw block and returns its stored bytes (valid until the next call).
    pub(crate) fn encode(&mut self, raw: &[u8]) -> io::Result<&[u8]> {
        let len = match self.zstd.as_mut() {
            Some(compressor) => {
                self.buf.clear();
                self.buf
                    .reserve(zstd::zstd_safe::compress_bound(raw.len()) + CRC_LEN);
                compressor.compress_to_buffer(raw, &mut self.buf)?
            }
            None => {
                self.buf.resize(
                    lz4_flex::block::get_maximum_output_size(raw.len()) + CRC_LEN,
                    0,
                );
                lz4_flex::block::compress_into(raw, &mut self.buf)
                    .map_err(|e| io::Error::other(format!("LZ4 compression failed: {e}")))?
            }
        };
        self.buf.truncate(len);
        if self.verify {
            let crc = crc32c_seeded(&self.buf, BLOCK_CRC_SEED);
            self.buf.extend_from_slice(&crc.to_le_bytes());
        }
        Ok(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31) ^ (i >> 7)) as u8).collect()
    }

    #[test]
    fn round_trip_both_codecs_with_and_without_crc() {
        for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
            for verify in [false, true] {
                let raw = sample(4096);
                let mut enc = BlockEncoder::new(algorithm, verify).unwrap();
                let stored = enc.encode(&raw).unwrap().to_vec();
                let mut out = vec![0u8; raw.len()];
                decode_block(algorithm, verify, &stored, &mut out).unwrap();
                assert_eq!(out, raw, "{algorithm} verify={verify}");
            }
        }
    }

    #[test]
    fn zstd_frame_carries_content_size_and_no_checksum() {
        let mut enc = BlockEncoder::new(Algorithm::Zstd, false).unwrap();
        let stored = enc.encode(&sample(4096)).unwrap();
        assert_eq!(&stored[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        // Single_Segment set, 2-byte content size, no checksum, no dictionary id (§7).
        assert_eq!(stored[4], 0x60);
        assert_eq!(u16::from_le_bytes([stored[5], stored[6]]), 4096 - 256);
    }

    #[test]
    fn crc_mismatch_is_reported() {
        let mut enc = BlockEncoder::new(Algorithm::Lz4, true).unwrap();
        let mut stored = enc.encode(&sample(4096)).unwrap().to_vec();
        stored[0] ^= 0x40;
        let mut out = vec![0u8; 4096];
        let err = decode_block(Algorithm::Lz4, true, &stored, &mut out).unwrap_err();
        assert!(matches!(err, BlockFault::Crc { .. }), "{err}");
    }

    #[test]
    fn wrong_raw_length_is_reported() {
        for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
            let mut enc = BlockEncoder::new(algorithm, false).unwrap();
            let stored = enc.encode(&sample(4096)).unwrap().to_vec();
            let mut short = vec![0u8; 2048];
            assert!(decode_block(algorithm, false, &stored, &mut short).is_err());
            let mut long = vec![0u8; 8192];
            let err = decode_block(algorithm, false, &stored, &mut long).unwrap_err();
            assert!(
                matches!(
                    err,
                    BlockFault::SizeMismatch {
                        expected: 8192,
                        got: 4096
                    } | BlockFault::Decode { .. }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn zstd_trailing_bytes_refused() {
        let mut enc = BlockEncoder::new(Algorithm::Zstd, false).unwrap();
        let mut stored = enc.encode(&sample(1000)).unwrap().to_vec();
        let again = stored.clone();
        stored.extend_from_slice(&again);
        let mut out = vec![0u8; 1000];
        let err = decode_block(Algorithm::Zstd, false, &stored, &mut out).unwrap_err();
        assert!(matches!(err, BlockFault::NotOneFrame { .. }), "{err}");
    }

    /// Decodes `stored` as an unchecked LZ4 block into the middle of a guarded buffer and
    /// checks the decoder wrote nothing outside the `raw_len` bytes it was given.
    fn decode_guarded(stored: &[u8], raw_len: usize) -> Result<(), BlockFault> {
        const GUARD: usize = 64;
        let mut buf = vec![0xA5u8; GUARD + raw_len + GUARD];
        let result = decode_block(
            Algorithm::Lz4,
            false,
            stored,
            &mut buf[GUARD..GUARD + raw_len],
        );
        assert!(buf[..GUARD].iter().all(|&b| b == 0xA5), "wrote before");
        assert!(
            buf[GUARD + raw_len..].iter().all(|&b| b == 0xA5),
            "wrote after"
        );
        result
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Damaged LZ4 blocks (bytes changed, cut short or extended) and plain garbage, into
        /// output buffers of any size: an error or a full block, never a write outside it.
        #[test]
        fn lz4_garbage_stays_inside_the_output(
            raw_len in 1usize..9000,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..8),
            cut in proptest::prelude::any::<usize>(),
            extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..600),
        ) {
            let mut enc = BlockEncoder::new(Algorithm::Lz4, false).unwrap();
            let mut stored = enc.encode(&sample(4096)).unwrap().to_vec();
            for (at, value) in edits {
                let at = at % stored.len();
                stored[at] = value;
            }
            stored.truncate(1 + cut % stored.len());
            stored.extend_from_slice(&extra);
            // Only the guards are checked: damaged blocks may still decode (no CRC here).
            let _ = decode_guarded(&stored, raw_len);
            let _ = decode_guarded(&garbage, raw_len);
        }
    }

    #[test]
    fn lz4_garbage_with_long_lengths_is_refused() {
        // A token announcing 15+ literals, continued by 255-bytes runs past the input end,
        // and a match reaching before the output start.
        let long_literals = [0xF0u8, 255, 255, 255, 255];
        assert!(decode_guarded(&long_literals, 4096).is_err());
        let far_match = [0x1Fu8, b'a', 0x00, 0x10];
        assert!(decode_guarded(&far_match, 4096).is_err());
        let zero_offset = [0x10u8, b'a', 0x00, 0x00, 0x00];
        assert!(decode_guarded(&zero_offset, 4096).is_err());
    }

    #[test]
    fn too_short_with_crc() {
        let mut out = vec![0u8; 16];
        for len in 0..=4 {
            let err = decode_block(Algorithm::Lz4, true, &vec![0u8; len], &mut out).unwrap_err();
            assert_eq!(err, BlockFault::TooShort(len));
        }
    }
}

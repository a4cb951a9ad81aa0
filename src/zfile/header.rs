//! The 512-byte ZFile header/trailer structure (zfile.md §2) and the validated file
//! description derived from it (§9.1). Sans-IO: everything here works on byte slices.

use super::checksum::crc32c_raw;
use super::codec::Algorithm;
use super::error::ZFileError;

/// Size of the header and of the trailer.
pub(crate) const STRUCT_SIZE: usize = 512;
/// `magic0`: "ZFile", 0x00, 0x01, 0x00.
pub(crate) const MAGIC0: [u8; 8] = *b"ZFile\x00\x01\x00";
/// `magic1`: "tuji.yyf@Alibaba".
pub(crate) const MAGIC1: [u8; 16] = *b"tuji.yyf@Alibaba";
/// Value of the `size` field: the meaningful prefix of the structure.
const META_SIZE: u32 = 96;
/// The reference refuses larger jump tables (§6.1).
pub(crate) const MAX_INDEX_SIZE: u64 = 1_000_000_000;
/// Smallest and largest block size a reader accepts (§7).
const MIN_READ_BLOCK_SIZE: u32 = 512;
/// The reference reads compressed data through a 64 KiB buffer, so no larger block exists.
pub(crate) const MAX_BLOCK_SIZE: u32 = 65_536;

/// Flag bits (u64 @32, §2.1). Only bits 0–4 carry meaning; legacy files have garbage above.
pub(crate) mod flag {
    /// This structure is a header (clear in trailers).
    pub const HEADER: u64 = 0x01;
    /// Data file; always set by writers.
    pub const DATA: u64 = 0x02;
    /// Set in trailers.
    pub const SEALED: u64 = 0x04;
    /// The header already holds the final index fields.
    pub const HEADER_OVERWRITE: u64 = 0x08;
    /// Digest and index_crc are valid.
    pub const DIGEST: u64 = 0x10;
    /// Reserved for a compressed jump table that no writer produces.
    pub const INDEX_COMPRESSED: u64 = 0x20;
    /// The bits a reader interprets.
    pub const MEANINGFUL: u64 = 0x1F;
}

// Field offsets inside the structure (§2).
const OFF_SIZE: usize = 24;
const OFF_DIGEST: usize = 28;
const OFF_FLAGS: usize = 32;
const OFF_INDEX_OFFSET: usize = 40;
const OFF_INDEX_SIZE: usize = 48;
const OFF_ORIGINAL_SIZE: usize = 56;
const OFF_INDEX_CRC: usize = 64;
const OFF_BLOCK_SIZE: usize = 72;
const OFF_ALGO: usize = 76;
const OFF_LEVEL: usize = 77;
const OFF_USE_DICT: usize = 78;
const OFF_DICT_SIZE: usize = 84;
const OFF_VERIFY: usize = 88;

/// The fields of one header or trailer, exactly as stored (no interpretation yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ZFileHeader {
    /// Raw flags, garbage bits included (see [`ZFileHeader::has`]).
    pub flags: u64,
    /// CRC32C of the structure; meaningful only with [`flag::DIGEST`].
    pub digest: u32,
    /// Offset of the jump table.
    pub index_offset: u64,
    /// Number of jump-table entries (blocks).
    pub index_size: u64,
    /// Length of the uncompressed stream.
    pub original_file_size: u64,
    /// CRC32C of the jump table; meaningful only with [`flag::DIGEST`].
    pub index_crc: u32,
    /// Raw block size.
    pub block_size: u32,
    /// Compression algorithm id.
    pub algo: u8,
    /// Compression level (always written 0, ignored).
    pub level: u8,
    /// Dictionary in use (never; refused by readers).
    pub use_dict: u8,
    /// Dictionary length, shifting the first block.
    pub dict_size: u32,
    /// Non-zero: per-block CRC32C.
    pub verify: u8,
}

/// Reads `N` bytes at `at`; callers pass a slice already checked to be 512 bytes long.
fn field<const N: usize>(buf: &[u8; STRUCT_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

/// CRC32C of the structure with the digest field counted as zero (§4).
fn compute_digest(buf: &[u8; STRUCT_SIZE]) -> u32 {
    let mut copy = *buf;
    copy[OFF_DIGEST..OFF_DIGEST + 4].fill(0);
    crc32c_raw(&copy)
}

impl ZFileHeader {
    /// Parses a structure that carries the ZFile magic; `None` without it.
    fn decode(buf: &[u8; STRUCT_SIZE]) -> Option<ZFileHeader> {
        if field::<8>(buf, 0) != MAGIC0 || field::<16>(buf, 8) != MAGIC1 {
            return None;
        }
        Some(ZFileHeader {
            flags: u64::from_le_bytes(field(buf, OFF_FLAGS)),
            digest: u32::from_le_bytes(field(buf, OFF_DIGEST)),
            index_offset: u64::from_le_bytes(field(buf, OFF_INDEX_OFFSET)),
            index_size: u64::from_le_bytes(field(buf, OFF_INDEX_SIZE)),
            original_file_size: u64::from_le_bytes(field(buf, OFF_ORIGINAL_SIZE)),
            index_crc: u32::from_le_bytes(field(buf, OFF_INDEX_CRC)),
            block_size: u32::from_le_bytes(field(buf, OFF_BLOCK_SIZE)),
            algo: buf[OFF_ALGO],
            level: buf[OFF_LEVEL],
            use_dict: buf[OFF_USE_DICT],
            dict_size: u32::from_le_bytes(field(buf, OFF_DICT_SIZE)),
            verify: buf[OFF_VERIFY],
        })
    }

    /// True if `bit` (one of [`flag`]) is set; bits above 4 never count (legacy garbage).
    pub(crate) fn has(&self, bit: u64) -> bool {
        self.flags & flag::MEANINGFUL & bit != 0
    }

    /// Serialises the structure; every unnamed byte is zero and, when the digest flag is set,
    /// the digest is computed over the result (the `digest` field is ignored).
    pub(crate) fn encode(&self) -> [u8; STRUCT_SIZE] {
        let mut buf = [0u8; STRUCT_SIZE];
        buf[0..8].copy_from_slice(&MAGIC0);
        buf[8..24].copy_from_slice(&MAGIC1);
        buf[OFF_SIZE..OFF_SIZE + 4].copy_from_slice(&META_SIZE.to_le_bytes());
        buf[OFF_FLAGS..OFF_FLAGS + 8].copy_from_slice(&self.flags.to_le_bytes());
        buf[OFF_INDEX_OFFSET..OFF_INDEX_OFFSET + 8]
            .copy_from_slice(&self.index_offset.to_le_bytes());
        buf[OFF_INDEX_SIZE..OFF_INDEX_SIZE + 8].copy_from_slice(&self.index_size.to_le_bytes());
        buf[OFF_ORIGINAL_SIZE..OFF_ORIGINAL_SIZE + 8]
            .copy_from_slice(&self.original_file_size.to_le_bytes());
        buf[OFF_INDEX_CRC..OFF_INDEX_CRC + 4].copy_from_slice(&self.index_crc.to_le_bytes());
        buf[OFF_BLOCK_SIZE..OFF_BLOCK_SIZE + 4].copy_from_slice(&self.block_size.to_le_bytes());
        buf[OFF_ALGO] = self.algo;
        buf[OFF_LEVEL] = self.level;
        buf[OFF_USE_DICT] = self.use_dict;
        buf[OFF_DICT_SIZE..OFF_DICT_SIZE + 4].copy_from_slice(&self.dict_size.to_le_bytes());
        buf[OFF_VERIFY] = self.verify;
        if self.flags & flag::DIGEST != 0 {
            let digest = compute_digest(&buf);
            buf[OFF_DIGEST..OFF_DIGEST + 4].copy_from_slice(&digest.to_le_bytes());
        }
        buf
    }

    /// Checks the digest when the digest flag says it is valid.
    fn check_digest(&self, buf: &[u8; STRUCT_SIZE], which: &'static str) -> Result<(), ZFileError> {
        if !self.has(flag::DIGEST) {
            return Ok(());
        }
        let computed = compute_digest(buf);
        if computed != self.digest {
            return Err(ZFileError::Digest {
                which,
                stored: self.digest,
                computed,
            });
        }
        Ok(())
    }
}

/// Converts a slice to the fixed-size structure, naming what was too short.
fn as_struct<'a>(buf: &'a [u8], what: &'static str) -> Result<&'a [u8; STRUCT_SIZE], ZFileError> {
    buf.get(..STRUCT_SIZE)
        .and_then(|b| b.try_into().ok())
        .ok_or(ZFileError::Truncated {
            what,
            needed: STRUCT_SIZE as u64,
            size: buf.len() as u64,
        })
}

/// Parses and checks the header at offset 0 (§9.1 step 1).
pub(crate) fn parse_header(buf: &[u8]) -> Result<ZFileHeader, ZFileError> {
    let raw = as_struct(buf, "header")?;
    let header = ZFileHeader::decode(raw).ok_or(ZFileError::NotZFile("magic missing"))?;
    if !header.has(flag::HEADER) {
        return Err(ZFileError::NotZFile("header flag clear at offset 0"));
    }
    header.check_digest(raw, "header")?;
    Ok(header)
}

/// Parses and checks the trailer at EOF − 512 (§9.1 step 3).
pub(crate) fn parse_trailer(buf: &[u8]) -> Result<ZFileHeader, ZFileError> {
    let raw = as_struct(buf, "trailer")?;
    let trailer = ZFileHeader::decode(raw)
        .ok_or_else(|| ZFileError::Corrupt("trailer magic missing".into()))?;
    if trailer.has(flag::HEADER) || !trailer.has(flag::DATA) || !trailer.has(flag::SEALED) {
        return Err(ZFileError::Corrupt(format!(
            "trailer flags {:#x} lack data+sealed or claim header",
            trailer.flags & flag::MEANINGFUL
        )));
    }
    // The reference never checks the trailer digest, but every writer sets it correctly,
    // so a mismatch can only mean corruption.
    trailer.check_digest(raw, "trailer")?;
    Ok(trailer)
}

/// The validated description of an open ZFile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZFileInfo {
    /// Codec of every block.
    pub algorithm: Algorithm,
    /// Raw bytes per block (the last block may be shorter).
    pub block_size: u32,
    /// Every stored block ends with a CRC32C of its compressed bytes.
    pub verify: bool,
    /// Number of blocks (jump-table entries).
    pub block_count: u64,
    /// Length of the uncompressed stream.
    pub original_file_size: u64,
    /// Offset of block 0 (512 + dictionary size).
    pub data_offset: u64,
    /// Offset of the jump table.
    pub index_offset: u64,
    /// CRC32C of the jump table, when the structure's digest flag vouches for it.
    pub index_crc: Option<u32>,
    /// A pre-2023 file without digests (garbage may sit in unused fields, §2.3).
    pub legacy: bool,
    /// The index fields came from the header (header_overwrite), not from the trailer.
    pub header_overwrite: bool,
}

impl ZFileInfo {
    /// Validates the structure chosen by §2.2 against a blob of `blob_size` bytes
    /// (§9.1 steps 2–6, all arithmetic checked).
    pub(crate) fn from_structure(
        s: &ZFileHeader,
        blob_size: u64,
        header_overwrite: bool,
    ) -> Result<ZFileInfo, ZFileError> {
        let algorithm = Algorithm::from_id(s.algo).ok_or_else(|| {
            ZFileError::Unsupported(format!("compression algorithm id {}", s.algo))
        })?;
        if s.has(flag::DIGEST) && s.flags & flag::INDEX_COMPRESSED != 0 {
            return Err(ZFileError::Unsupported(
                "compressed jump table (flag bit 5)".into(),
            ));
        }
        if s.use_dict != 0 {
            return Err(ZFileError::Unsupported("dictionary".into()));
        }
        let bs = s.block_size;
        if !bs.is_power_of_two() || !(MIN_READ_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(ZFileError::Unsupported(format!("block size {bs}")));
        }
        let n = s.index_size;
        if n > MAX_INDEX_SIZE {
            return Err(ZFileError::Corrupt(format!(
                "index_size {n} exceeds {MAX_INDEX_SIZE}"
            )));
        }
        if n != s.original_file_size.div_ceil(u64::from(bs)) {
            return Err(ZFileError::Corrupt(format!(
                "index_size {n} does not match original_file_size {} / block size {bs}",
                s.original_file_size
            )));
        }
        // The table must lie inside the blob (before the trailer when one is used).
        let limit = if header_overwrite {
            blob_size
        } else {
            blob_size.saturating_sub(STRUCT_SIZE as u64)
        };
        let table_end = n
            .checked_mul(4)
            .and_then(|len| len.checked_add(s.index_offset))
            .ok_or_else(|| ZFileError::Corrupt("index_offset + table length overflows".into()))?;
        if table_end > limit {
            return Err(ZFileError::Truncated {
                what: "jump table",
                needed: table_end,
                size: limit,
            });
        }
        let data_offset = STRUCT_SIZE as u64 + u64::from(s.dict_size);
        if data_offset > s.index_offset {
            return Err(ZFileError::Corrupt(format!(
                "index_offset {} lies before the data area at {data_offset}",
                s.index_offset
            )));
        }
        Ok(ZFileInfo {
            algorithm,
            block_size: bs,
            verify: s.verify != 0,
            block_count: n,
            original_file_size: s.original_file_size,
            data_offset,
            index_offset: s.index_offset,
            index_crc: s.has(flag::DIGEST).then_some(s.index_crc),
            legacy: !s.has(flag::DIGEST),
            header_overwrite,
        })
    }

    /// Raw length of block `index` (the block size, or less for the last block).
    pub(crate) fn raw_len(&self, index: u64) -> usize {
        let start = index.saturating_mul(u64::from(self.block_size));
        let len = self
            .original_file_size
            .saturating_sub(start)
            .min(u64::from(self.block_size));
        // At most the block size, which is at most 64 KiB.
        len as usize
    }
}

//! The binary trace file, byte for byte (spec `trace-prefetch.md` §3), sans-IO.
//!
//! A 24-byte header (magic `0xC2EF1820`, `data_size`, raw CRC-32C of the records) followed by
//! `data_size / 24` records of 24 bytes: op byte, 3 padding bytes, layer index (u32), byte
//! count (u64) and byte offset (i64) in the layer's uncompressed LSMT blob. All integers are
//! little-endian.
//!
//! Decisions beyond the spec:
//!
//! - **Op bytes other than `'R'` and `'W'`** are kept as [`Op::Other`] rather than failing the
//!   file: the checksum proves the writer meant them, and replay treats them like `'W'`
//!   (skipped), so a file from another writer still replays its reads.
//! - **Padding** (header and records) is not checked: the reference may leave stack contents
//!   in it (§3.2). [`encode`] always writes zeros.
//! - **Offsets** are the on-disk i64 read as u64 bits: a negative offset becomes one at or
//!   above 2⁶³, past the end of any layer, which replay skips.
//! - **Size cap**: a `data_size` above [`MAX_DATA_SIZE`] (64 MiB, about 2.8 million records)
//!   is refused before anything is allocated, so a hostile or damaged trace cannot make us
//!   allocate unbounded memory. The recorder stays well below it.
//! - A `data_size` that is not a multiple of 24 is refused (it cannot be `24 × count`).

use crate::zfile::crc32c_raw;

/// The trace magic, the zlib CRC-32 of `Container Image Trace Format` (§3.1).
pub const MAGIC: u32 = 0xC2EF_1820;
/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 24;
/// Size of one record in bytes.
pub const RECORD_SIZE: usize = 24;
/// Largest `data_size` [`decode`] accepts: 64 MiB of records.
pub const MAX_DATA_SIZE: u64 = 64 << 20;
/// Largest number of records a decodable trace holds.
pub const MAX_RECORDS: usize = (MAX_DATA_SIZE / RECORD_SIZE as u64) as usize;

/// The operation a record describes (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `'R'` (0x52): a read, the only op replay acts on.
    Read,
    /// `'W'` (0x57): a write; defined by the format, never recorded, ignored by replay.
    Write,
    /// Any other op byte, kept as read; ignored by replay like `'W'`.
    Other(u8),
}

impl Op {
    /// The op byte on disk.
    pub fn byte(self) -> u8 {
        match self {
            Op::Read => b'R',
            Op::Write => b'W',
            Op::Other(b) => b,
        }
    }

    /// The op of an on-disk byte.
    pub fn from_byte(b: u8) -> Op {
        match b {
            b'R' => Op::Read,
            b'W' => Op::Write,
            other => Op::Other(other),
        }
    }
}

/// One record: `count` bytes at `offset` of layer `layer` (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceRecord {
    /// Read, write or an op this format does not define.
    pub op: Op,
    /// Index of the layer in `lowers` (acceleration layer removed), bottom = 0.
    pub layer: u32,
    /// Number of bytes.
    pub count: u64,
    /// Byte offset in the layer's uncompressed LSMT blob (an i64 on disk, see the module doc).
    pub offset: u64,
}

impl TraceRecord {
    /// A read of `count` bytes at `offset` of layer `layer`.
    pub fn read(layer: u32, offset: u64, count: u64) -> TraceRecord {
        TraceRecord {
            op: Op::Read,
            layer,
            count,
            offset,
        }
    }

    /// The record's 24 bytes, padding zeroed.
    pub fn to_bytes(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0] = self.op.byte();
        b[4..8].copy_from_slice(&self.layer.to_le_bytes());
        b[8..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    /// The record in `b` (padding ignored).
    pub fn from_bytes(b: &[u8; RECORD_SIZE]) -> TraceRecord {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        TraceRecord {
            op: Op::from_byte(b[0]),
            layer: u32_at(4),
            count: u64_at(8),
            offset: u64_at(16),
        }
    }
}

/// Why a byte string is not a trace [`decode`] accepts (§3.3, plus the size cap).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// Fewer than 24 bytes: no header.
    #[error("{len} bytes, shorter than the {HEADER_SIZE}-byte trace header")]
    Truncated {
        /// Length of the input.
        len: usize,
    },
    /// The first 4 bytes are not the trace magic.
    #[error("magic {found:#010x}, expected {MAGIC:#010x}")]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// `data_size` is not a whole number of records.
    #[error("data_size {data_size} is not a multiple of {RECORD_SIZE}")]
    PartialRecord {
        /// The header's `data_size`.
        data_size: u64,
    },
    /// `data_size` is above [`MAX_DATA_SIZE`].
    #[error("data_size {data_size} exceeds the limit of {MAX_DATA_SIZE} bytes")]
    TooLarge {
        /// The header's `data_size`.
        data_size: u64,
    },
    /// The file is not `24 + data_size` bytes long.
    #[error("file is {len} bytes, the header says {expected}")]
    SizeMismatch {
        /// Length of the input.
        len: u64,
        /// `24 + data_size`.
        expected: u64,
    },
    /// The records' CRC-32C is not the header's.
    #[error("checksum {computed:#010x}, header says {stored:#010x}")]
    BadChecksum {
        /// The header's checksum.
        stored: u32,
        /// The checksum of the record bytes.
        computed: u32,
    },
}

/// What a non-empty prefetch file holds (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// No bytes: nothing to prefetch (and, for `recordTracePath`, the signal to record).
    Empty,
    /// At least 24 bytes starting with the trace magic: a binary trace (§3), to be decoded.
    Binary,
    /// Anything else: a list of paths (Dynamic mode, §6).
    FileList,
}

/// Classifies a prefetch file by its first bytes (at least the first 24 when it has them).
pub fn classify(head: &[u8]) -> FileKind {
    match head {
        [] => FileKind::Empty,
        [a, b, c, d, ..]
            if head.len() >= HEADER_SIZE && u32::from_le_bytes([*a, *b, *c, *d]) == MAGIC =>
        {
            FileKind::Binary
        }
        _ => FileKind::FileList,
    }
}

/// The header of a trace with `records`, whose record bytes have CRC-32C `checksum`.
pub fn header(records: usize, checksum: u32) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    // usize fits in u64 on every supported target.
    let data_size = (records as u64).saturating_mul(RECORD_SIZE as u64);
    h[8..16].copy_from_slice(&data_size.to_le_bytes());
    h[16..20].copy_from_slice(&checksum.to_le_bytes());
    h
}

/// The record bytes of `records`, padding zeroed, without a header.
pub fn encode_records(records: &[TraceRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD_SIZE);
    for r in records {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// The raw CRC-32C (§3.3) of record bytes.
pub fn checksum(record_bytes: &[u8]) -> u32 {
    crc32c_raw(record_bytes)
}

/// A whole trace file holding `records`, with every padding byte zeroed.
pub fn encode(records: &[TraceRecord]) -> Vec<u8> {
    let body = encode_records(records);
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
    out.extend_from_slice(&header(records.len(), checksum(&body)));
    out.extend_from_slice(&body);
    out
}

/// The `data_size` a header declares, after the magic, multiple-of-24 and size-cap checks:
/// how many bytes the whole file must have is `24 + data_size`. Lets a loader refuse a file
/// from its first 24 bytes before reading the rest.
pub fn check_header(head: &[u8]) -> Result<u64, TraceError> {
    let Some(h) = head.get(..HEADER_SIZE) else {
        return Err(TraceError::Truncated { len: head.len() });
    };
    let found = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if found != MAGIC {
        return Err(TraceError::BadMagic { found });
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&h[8..16]);
    let data_size = u64::from_le_bytes(size);
    if data_size > MAX_DATA_SIZE {
        return Err(TraceError::TooLarge { data_size });
    }
    if data_size % RECORD_SIZE as u64 != 0 {
        return Err(TraceError::PartialRecord { data_size });
    }
    Ok(data_size)
}

/// Decodes a whole trace file, refusing it unless the magic matches, its length is
/// `24 + data_size` and the checksum matches (§3.3), and unless `data_size` is a multiple of
/// 24 no larger than [`MAX_DATA_SIZE`]. Records come back in file order.
pub fn decode(bytes: &[u8]) -> Result<Vec<TraceRecord>, TraceError> {
    let data_size = check_header(bytes)?;
    let len = bytes.len() as u64;
    let expected = HEADER_SIZE as u64 + data_size;
    if len != expected {
        return Err(TraceError::SizeMismatch { len, expected });
    }
    let body = &bytes[HEADER_SIZE..];
    let stored = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let computed = checksum(body);
    if stored != computed {
        return Err(TraceError::BadChecksum { stored, computed });
    }
    Ok(body
        .chunks_exact(RECORD_SIZE)
        .map(|c| {
            let mut b = [0u8; RECORD_SIZE];
            b.copy_from_slice(c);
            TraceRecord::from_bytes(&b)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of §3.4, as its hex dump lists it.
    const EXAMPLE: [u8; 72] = [
        0x20, 0x18, 0xEF, 0xC2, 0x00, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10, 0xBF, 0x33, 0xF7, 0x00, 0x00, 0x00, 0x00, // header
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // rec 0
        0x52, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x30, 0x4B, 0x20, 0x00, 0x00, 0x00, 0x00, // rec 1
    ];

    fn example_records() -> Vec<TraceRecord> {
        vec![
            TraceRecord::read(1, 8192, 4096),
            TraceRecord::read(0, 541_798_400, 65536),
        ]
    }

    /// `bytes` with a fresh checksum, after a test changed its records.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc = checksum(&bytes[HEADER_SIZE..]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn the_spec_example_decodes_and_encodes_exactly() {
        assert_eq!(decode(&EXAMPLE).unwrap(), example_records());
        assert_eq!(encode(&example_records()), EXAMPLE.to_vec());
        assert_eq!(checksum(&EXAMPLE[HEADER_SIZE..]), 0xF733_BF10);
        assert_eq!(MAGIC.to_le_bytes(), [0x20, 0x18, 0xEF, 0xC2]);
        assert_eq!(classify(&EXAMPLE), FileKind::Binary);
    }

    #[test]
    fn round_trip_of_every_op_and_extreme_values() {
        let records = vec![
            TraceRecord::read(0, 0, 0),
            TraceRecord {
                op: Op::Write,
                layer: u32::MAX,
                count: u64::MAX,
                offset: u64::MAX,
            },
            TraceRecord {
                op: Op::Other(0),
                layer: 7,
                count: 1,
                offset: 1 << 63,
            },
            TraceRecord::read(254, 4096, 1 << 20),
        ];
        let bytes = encode(&records);
        assert_eq!(bytes.len(), HEADER_SIZE + 4 * RECORD_SIZE);
        assert_eq!(decode(&bytes).unwrap(), records);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        assert_eq!(encode(&[]).len(), HEADER_SIZE);
        // Header padding and record padding are zero.
        assert_eq!(&bytes[4..8], &[0; 4]);
        assert_eq!(&bytes[20..24], &[0; 4]);
        assert_eq!(&bytes[25..28], &[0; 3]);
    }

    #[test]
    fn padding_is_not_checked_but_covered_by_the_checksum() {
        let mut bytes = EXAMPLE.to_vec();
        bytes[HEADER_SIZE + 1] = 0xAA; // the reference may leave stack bytes here
        bytes[5] = 0x55;
        assert!(matches!(
            decode(&bytes),
            Err(TraceError::BadChecksum {
                stored: 0xF733_BF10,
                ..
            })
        ));
        assert_eq!(decode(&reseal(bytes)).unwrap(), example_records());
    }

    #[test]
    fn unknown_ops_are_kept_not_refused() {
        let mut bytes = EXAMPLE.to_vec();
        bytes[HEADER_SIZE] = b'X';
        bytes[HEADER_SIZE + RECORD_SIZE] = b'W';
        let records = decode(&reseal(bytes)).unwrap();
        assert_eq!(records[0].op, Op::Other(b'X'));
        assert_eq!(records[1].op, Op::Write);
        assert_eq!(records[1].count, 65536);
    }

    #[test]
    fn negative_offsets_decode_as_high_u64() {
        let mut bytes = EXAMPLE.to_vec();
        bytes[HEADER_SIZE + 16..HEADER_SIZE + 24].copy_from_slice(&(-1i64).to_le_bytes());
        assert_eq!(decode(&reseal(bytes)).unwrap()[0].offset, u64::MAX);
    }

    #[test]
    fn each_rejection() {
        let mut bad_magic = EXAMPLE.to_vec();
        bad_magic[0] ^= 1;
        assert_eq!(
            decode(&bad_magic),
            Err(TraceError::BadMagic { found: 0xC2EF_1821 })
        );
        assert_eq!(classify(&bad_magic), FileKind::FileList);

        let mut bad_crc = EXAMPLE.to_vec();
        bad_crc[HEADER_SIZE + 8] ^= 0x80; // count 4096 -> 4224
        assert_eq!(
            decode(&bad_crc),
            Err(TraceError::BadChecksum {
                stored: 0xF733_BF10,
                computed: checksum(&bad_crc[HEADER_SIZE..])
            })
        );

        let mut longer = EXAMPLE.to_vec();
        longer.extend_from_slice(&[0; RECORD_SIZE]);
        assert_eq!(
            decode(&longer),
            Err(TraceError::SizeMismatch {
                len: 96,
                expected: 72
            })
        );

        let mut partial = EXAMPLE.to_vec();
        partial[8] = 0x31;
        assert_eq!(
            decode(&partial),
            Err(TraceError::PartialRecord { data_size: 49 })
        );

        let mut huge = EXAMPLE.to_vec();
        huge[8..16].copy_from_slice(&(MAX_DATA_SIZE + 24).to_le_bytes());
        assert_eq!(
            decode(&huge),
            Err(TraceError::TooLarge {
                data_size: MAX_DATA_SIZE + 24
            })
        );
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(TraceError::TooLarge { .. })));
        // The cap itself is a whole number of records away from being accepted.
        assert!(matches!(
            check_header(&header(MAX_RECORDS, 0)),
            Ok(d) if d == (MAX_RECORDS * RECORD_SIZE) as u64
        ));
    }

    #[test]
    fn truncated_files_are_refused_at_every_length() {
        for len in 0..EXAMPLE.len() {
            let err = decode(&EXAMPLE[..len]).unwrap_err();
            if len < HEADER_SIZE {
                assert_eq!(err, TraceError::Truncated { len }, "at {len}");
            } else {
                assert_eq!(
                    err,
                    TraceError::SizeMismatch {
                        len: len as u64,
                        expected: 72
                    },
                    "at {len}"
                );
            }
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(b""), FileKind::Empty);
        assert_eq!(classify(b"/usr/bin/containerd\n"), FileKind::FileList);
        // The magic without a whole header is not a binary trace (§2.1).
        assert_eq!(classify(&EXAMPLE[..HEADER_SIZE - 1]), FileKind::FileList);
        assert_eq!(classify(&EXAMPLE[..HEADER_SIZE]), FileKind::Binary);
    }

    fn record_strategy() -> impl proptest::strategy::Strategy<Value = TraceRecord> {
        use proptest::prelude::*;
        (any::<u8>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(op, layer, count, offset)| TraceRecord {
                op: Op::from_byte(op),
                layer,
                count,
                offset,
            },
        )
    }

    proptest::proptest! {
        #[test]
        fn any_records_round_trip(records in proptest::collection::vec(record_strategy(), 0..50)) {
            let bytes = encode(&records);
            proptest::prop_assert_eq!(decode(&bytes), Ok(records));
            proptest::prop_assert_eq!(classify(&bytes), FileKind::Binary);
        }

        #[test]
        fn damaged_traces_never_panic(
            records in proptest::collection::vec(record_strategy(), 0..8),
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 0..4),
            cut in 0usize..30,
        ) {
            let mut bytes = encode(&records);
            for (at, x) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            if let Ok(decoded) = decode(&bytes) {
                // Only changes to header padding can leave a file valid.
                proptest::prop_assert_eq!(decoded, records);
            }
        }
    }

    #[test]
    fn record_bytes_layout() {
        let b =
            TraceRecord::read(0x0102_0304, 0x1112_1314_1516_1718, 0x2122_2324_2526_2728).to_bytes();
        assert_eq!(
            b,
            [
                b'R', 0, 0, 0, 0x04, 0x03, 0x02, 0x01, 0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22,
                0x21, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11
            ]
        );
        assert_eq!(
            TraceRecord::from_bytes(&b),
            TraceRecord::read(0x0102_0304, 0x1112_1314_1516_1718, 0x2122_2324_2526_2728)
        );
    }
}

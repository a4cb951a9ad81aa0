//! The 16-byte LSMT index record (spec `lsmt.md` §4), its packing, and range lookups on sorted
//! record arrays (§9.5).
//!
//! All offsets and lengths here are in 512-byte sectors.

/// Sector size: every index address and length counts in these.
pub const SECTOR: u64 = 512;
/// Largest logical offset; a record with this offset is a padding record.
pub const MAX_OFFSET: u64 = (1 << 50) - 1;
/// Offset value that marks a padding record.
pub const INVALID_OFFSET: u64 = MAX_OFFSET;
/// Longest record, in sectors.
pub const MAX_LENGTH: u32 = (1 << 14) - 1;
/// Largest mapped offset.
pub const MAX_MOFFSET: u64 = (1 << 55) - 1;
/// Records per 4096-byte index block; committed indexes are padded to a multiple of this.
pub const RECORDS_PER_BLOCK: usize = 256;
/// Size of one encoded record.
pub const RECORD_SIZE: usize = 16;

/// One mapping of consecutive logical sectors to consecutive sectors of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// Logical start sector (< 2^50).
    pub offset: u64,
    /// Number of sectors (1..=16383 for a real mapping).
    pub length: u32,
    /// Mapped start sector in the file selected by `tag` (meaningless when `zeroed`).
    pub moffset: u64,
    /// The range reads as zeros and masks lower layers.
    pub zeroed: bool,
    /// Which layer file the data lives in (assigned by readers, see §4).
    pub tag: u8,
}

impl Record {
    /// The canonical padding record.
    pub const PADDING: Record = Record {
        offset: INVALID_OFFSET,
        length: 0,
        moffset: 0,
        zeroed: false,
        tag: 0,
    };

    /// A data mapping.
    pub fn data(offset: u64, length: u32, moffset: u64) -> Self {
        Record {
            offset,
            length,
            moffset,
            zeroed: false,
            tag: 0,
        }
    }

    /// A zeroed mapping.
    pub fn zeroed(offset: u64, length: u32, moffset: u64) -> Self {
        Record {
            offset,
            length,
            moffset,
            zeroed: true,
            tag: 0,
        }
    }

    /// The same record with another tag.
    pub fn with_tag(mut self, tag: u8) -> Self {
        self.tag = tag;
        self
    }

    /// First logical sector after the record.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }

    /// First mapped sector after the record's data (= `moffset` for zeroed records, §4).
    pub fn mapped_end(&self) -> u64 {
        if self.zeroed {
            self.moffset
        } else {
            self.moffset + u64::from(self.length)
        }
    }

    /// True when the record's mapped range lies in the data area `[lo, hi)` (sectors): data
    /// must fit entirely; a zeroed record only needs `lo ≤ moffset ≤ hi` (§5.2, §6.5).
    pub fn mapped_within(&self, lo: u64, hi: u64) -> bool {
        self.moffset >= lo && self.mapped_end() <= hi
    }

    /// True for a padding record, which readers skip.
    pub fn is_padding(&self) -> bool {
        self.offset == INVALID_OFFSET
    }

    /// Packs the record into its on-disk form. Fields wider than their bit width are masked,
    /// so callers keep them in range (all constructors in this crate do).
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let w0 = (self.offset & MAX_OFFSET) | (u64::from(self.length & MAX_LENGTH) << 50);
        let w1 = (self.moffset & MAX_MOFFSET)
            | (u64::from(self.zeroed) << 55)
            | (u64::from(self.tag) << 56);
        let mut b = [0u8; RECORD_SIZE];
        b[..8].copy_from_slice(&w0.to_le_bytes());
        b[8..].copy_from_slice(&w1.to_le_bytes());
        b
    }

    /// Unpacks a record; every bit pattern decodes.
    pub fn decode(b: &[u8; RECORD_SIZE]) -> Self {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        let w0 = u64::from_le_bytes(w);
        w.copy_from_slice(&b[8..]);
        let w1 = u64::from_le_bytes(w);
        Record {
            offset: w0 & MAX_OFFSET,
            // Lossless: the shifted value has 14 bits.
            length: (w0 >> 50) as u32,
            moffset: w1 & MAX_MOFFSET,
            zeroed: (w1 >> 55) & 1 == 1,
            tag: (w1 >> 56) as u8,
        }
    }

    /// Moves the start to `start` (inside the record), advancing moffset unless zeroed.
    pub(crate) fn advance_to(&mut self, start: u64) {
        debug_assert!(start >= self.offset && start <= self.end());
        let delta = start - self.offset;
        self.offset = start;
        // delta ≤ length, which fits u32.
        self.length -= delta as u32;
        if !self.zeroed {
            self.moffset += delta;
        }
    }

    /// Moves the end back to `end` (inside the record).
    pub(crate) fn truncate_to(&mut self, end: u64) {
        debug_assert!(end >= self.offset && end <= self.end());
        self.length = (end - self.offset) as u32;
    }
}

/// Decodes a run of records, dropping padding records. A trailing partial record is ignored.
pub fn decode_records(bytes: &[u8]) -> Vec<Record> {
    bytes
        .chunks_exact(RECORD_SIZE)
        .map(|c| {
            let mut a = [0u8; RECORD_SIZE];
            a.copy_from_slice(c);
            Record::decode(&a)
        })
        .filter(|r| !r.is_padding())
        .collect()
}

/// Encodes records and pads them with padding records to a multiple of 256 (one 4096-byte block),
/// as committed blobs store their index (§5.3). Returns the bytes and the padded record count.
pub fn encode_padded(records: &[Record]) -> (Vec<u8>, u64) {
    let padded = records.len().div_ceil(RECORDS_PER_BLOCK) * RECORDS_PER_BLOCK;
    let mut out = Vec::with_capacity(padded * RECORD_SIZE);
    for r in records {
        out.extend_from_slice(&r.encode());
    }
    for _ in records.len()..padded {
        out.extend_from_slice(&Record::PADDING.encode());
    }
    (out, padded as u64)
}

/// Index of the first record of a sorted, disjoint array whose end lies after `sector`.
pub fn first_ending_after(records: &[Record], sector: u64) -> usize {
    records.partition_point(|r| r.end() <= sector)
}

/// The records of a sorted, disjoint array that intersect `[start, start + len)`, with the first
/// and last clipped to that range (§9.5). Sectors not covered are holes.
pub fn lookup(records: &[Record], start: u64, len: u64) -> Vec<Record> {
    let end = start.saturating_add(len);
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let from = first_ending_after(records, start);
    for r in records.get(from..).unwrap_or(&[]) {
        if r.offset >= end {
            break;
        }
        out.push(*r);
    }
    clip(&mut out, start, end);
    out
}

/// Clips the first and last record of a sorted list to `[start, end)` (only they can stick out).
pub(crate) fn clip(out: &mut [Record], start: u64, end: u64) {
    if let Some(first) = out.first_mut() {
        if first.offset < start {
            first.advance_to(start);
        }
    }
    if let Some(last) = out.last_mut() {
        if last.end() > end {
            last.truncate_to(end);
        }
    }
}

/// Checks that records are strictly ordered and disjoint: `a.end ≤ b.offset` for neighbours.
/// Returns the position of the first offending pair.
pub fn check_sorted_disjoint(records: &[Record]) -> Result<(), usize> {
    match records.windows(2).position(|w| w[0].end() > w[1].offset) {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 16] {
        let v = hex::decode(s.replace(' ', "")).unwrap();
        v.try_into().unwrap()
    }

    #[test]
    fn worked_encodings_from_spec() {
        let cases = [
            (
                Record::data(0, 8272, 8),
                "00 00 00 00 00 00 40 81 08 00 00 00 00 00 00 00",
            ),
            (
                Record::zeroed(8272, 120, 8280),
                "50 20 00 00 00 00 E0 01 58 20 00 00 00 00 80 00",
            ),
            (
                Record::data(2048, 8, 9),
                "00 08 00 00 00 00 20 00 09 00 00 00 00 00 00 00",
            ),
            (
                Record::zeroed(100, 16, 40),
                "64 00 00 00 00 00 40 00 28 00 00 00 00 00 80 00",
            ),
            (
                Record::PADDING,
                "FF FF FF FF FF FF 03 00 00 00 00 00 00 00 00 00",
            ),
        ];
        for (rec, bytes) in cases {
            assert_eq!(rec.encode(), hex(bytes), "{rec:?}");
            assert_eq!(Record::decode(&hex(bytes)), rec);
        }
        assert!(
            Record::decode(&hex("FF FF FF FF FF FF 03 00 00 00 00 00 00 00 00 00")).is_padding()
        );
    }

    #[test]
    fn tag_and_limits_roundtrip() {
        let r = Record {
            offset: MAX_OFFSET - 1,
            length: MAX_LENGTH,
            moffset: MAX_MOFFSET,
            zeroed: true,
            tag: 0xAB,
        };
        assert_eq!(Record::decode(&r.encode()), r);
    }

    #[test]
    fn padding_to_blocks() {
        let (b, n) = encode_padded(&[Record::data(0, 1, 8)]);
        assert_eq!(n, 256);
        assert_eq!(b.len(), 4096);
        assert_eq!(decode_records(&b), vec![Record::data(0, 1, 8)]);
        let full: Vec<_> = (0..256).map(|i| Record::data(i, 1, 8 + i)).collect();
        assert_eq!(encode_padded(&full).1, 256);
        assert_eq!(encode_padded(&[]).1, 0);
    }

    #[test]
    fn lookup_clips_ends() {
        let recs = [
            Record::data(0, 20, 8),
            Record::zeroed(30, 10, 28),
            Record::data(50, 10, 28),
        ];
        assert_eq!(
            lookup(&recs, 5, 30),
            vec![Record::data(5, 15, 13), Record::zeroed(30, 5, 28)]
        );
        assert_eq!(lookup(&recs, 20, 10), vec![]);
        assert_eq!(lookup(&recs, 55, 100), vec![Record::data(55, 5, 33)]);
        assert_eq!(check_sorted_disjoint(&recs), Ok(()));
        assert_eq!(
            check_sorted_disjoint(&[Record::data(0, 5, 8), Record::data(4, 1, 8)]),
            Err(0)
        );
    }
}

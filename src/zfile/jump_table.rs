//! The jump table (zfile.md §6): stored block lengths turned into block offsets by prefix sums.
//! Built incrementally from pieces so a reader can fetch a large table in bounded chunks.

use super::checksum::RawCrc;
use super::error::ZFileError;

/// Bytes per jump-table entry.
pub(crate) const ENTRY_LEN: u64 = 4;

/// Offsets of every stored block: block i occupies `[offsets[i], offsets[i + 1])` of the file.
#[derive(Debug, Clone)]
pub(crate) struct JumpTable {
    offsets: Vec<u64>,
}

impl JumpTable {
    /// Number of blocks.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.offsets.len().saturating_sub(1) as u64
    }

    /// Start offset of block `index`, or the end of the data area for `index == len()`.
    pub(crate) fn offset(&self, index: u64) -> Option<u64> {
        self.offsets.get(usize::try_from(index).ok()?).copied()
    }

    /// File range `[start, end)` holding blocks `first..=last`.
    pub(crate) fn span(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        Some((self.offset(first)?, self.offset(last.checked_add(1)?)?))
    }
}

/// Accumulates table bytes (any split, as long as the pieces arrive in order).
pub(crate) struct JumpTableBuilder {
    offsets: Vec<u64>,
    expected: u64,
    min_len: u32,
    crc: RawCrc,
    /// Bytes of an entry split across two pieces.
    partial: Vec<u8>,
}

impl JumpTableBuilder {
    /// Starts a table of `expected` entries whose first block begins at `data_offset`.
    /// With per-block checksums a stored block must be longer than the checksum.
    pub(crate) fn new(data_offset: u64, expected: u64, verify: bool) -> JumpTableBuilder {
        JumpTableBuilder {
            offsets: vec![data_offset],
            expected,
            min_len: if verify { 5 } else { 1 },
            crc: RawCrc::new(),
            partial: Vec::with_capacity(4),
        }
    }

    /// Feeds the next piece of table bytes.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) -> Result<(), ZFileError> {
        self.crc.update(bytes);
        // Memory grows with bytes actually received, never with a field from the file.
        self.offsets.reserve(bytes.len() / 4 + 1);
        if !self.partial.is_empty() {
            let take = (4 - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == 4 {
                let entry = [
                    self.partial[0],
                    self.partial[1],
                    self.partial[2],
                    self.partial[3],
                ];
                self.partial.clear();
                self.add(u32::from_le_bytes(entry))?;
            }
        }
        let mut chunks = bytes.chunks_exact(4);
        for c in &mut chunks {
            self.add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))?;
        }
        self.partial.extend_from_slice(chunks.remainder());
        Ok(())
    }

    fn add(&mut self, len: u32) -> Result<(), ZFileError> {
        let index = self.offsets.len() as u64 - 1;
        if index >= self.expected {
            return Err(ZFileError::Corrupt(format!(
                "jump table longer than {} entries",
                self.expected
            )));
        }
        if len < self.min_len {
            return Err(ZFileError::Corrupt(format!(
                "block {index}: stored length {len} is too small"
            )));
        }
        let last = self.offsets.last().copied().unwrap_or(0);
        let next = last
            .checked_add(u64::from(len))
            .ok_or_else(|| ZFileError::Corrupt(format!("block {index}: offset overflows")))?;
        self.offsets.push(next);
        Ok(())
    }

    /// Completes the table: every entry present, CRC matching `index_crc` when the file vouches
    /// for one, and the data area ending no later than `index_offset`.
    pub(crate) fn finish(
        self,
        index_crc: Option<u32>,
        index_offset: u64,
    ) -> Result<JumpTable, ZFileError> {
        let got = self.offsets.len() as u64 - 1;
        if got != self.expected || !self.partial.is_empty() {
            return Err(ZFileError::Corrupt(format!(
                "jump table holds {got} whole entries, expected {}",
                self.expected
            )));
        }
        if let Some(stored) = index_crc {
            let computed = self.crc.value();
            if computed != stored {
                return Err(ZFileError::IndexCrc { stored, computed });
            }
        }
        let end = self.offsets.last().copied().unwrap_or(0);
        if end > index_offset {
            return Err(ZFileError::Corrupt(format!(
                "blocks end at {end}, past the jump table at {index_offset}"
            )));
        }
        Ok(JumpTable {
            offsets: self.offsets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfile::checksum::crc32c_raw;

    fn table(lens: &[u32]) -> Vec<u8> {
        lens.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    #[test]
    fn prefix_sums_with_any_piece_split() {
        let lens = [129u32, 236, 1369, 1340, 1331];
        let bytes = table(&lens);
        for split in 0..bytes.len() {
            let mut b = JumpTableBuilder::new(512, 5, true);
            b.push(&bytes[..split]).unwrap();
            b.push(&bytes[split..]).unwrap();
            let t = b.finish(Some(crc32c_raw(&bytes)), 10_000).unwrap();
            assert_eq!(t.len(), 5);
            assert_eq!(t.offset(0), Some(512));
            assert_eq!(t.offset(4), Some(3586));
            assert_eq!(t.span(1, 2), Some((641, 2246)));
            assert_eq!(t.offset(6), None);
        }
    }

    #[test]
    fn rejects_bad_tables() {
        let bytes = table(&[10, 4, 10]);
        let mut b = JumpTableBuilder::new(512, 3, true);
        assert!(
            b.push(&bytes).is_err(),
            "length 4 with verify must be refused"
        );

        let mut b = JumpTableBuilder::new(512, 2, false);
        assert!(b.push(&table(&[1, 0])).is_err(), "length 0 must be refused");

        let mut b = JumpTableBuilder::new(512, 2, false);
        b.push(&table(&[100, 100])).unwrap();
        assert!(matches!(
            b.finish(Some(0xDEAD), 1000),
            Err(ZFileError::IndexCrc { .. })
        ));

        let mut b = JumpTableBuilder::new(512, 2, false);
        b.push(&table(&[100, 100])).unwrap();
        assert!(b.finish(None, 700).is_err(), "blocks overlapping the table");

        let mut b = JumpTableBuilder::new(512, 3, false);
        b.push(&table(&[100, 100])).unwrap();
        assert!(b.finish(None, 10_000).is_err(), "missing entries");

        let mut b = JumpTableBuilder::new(512, 1, false);
        assert!(b.push(&table(&[100, 100])).is_err(), "extra entries");

        let mut b = JumpTableBuilder::new(u64::MAX - 10, 1, false);
        assert!(b.push(&table(&[100])).is_err(), "overflow");
    }
}

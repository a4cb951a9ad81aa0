//! How a command's Data-In bytes are cut into PDUs (RFC 7143 §4.2.4, §11.7): no PDU carries more
//! than the initiator's MaxRecvDataSegmentLength, no sequence (run of PDUs ending with the F bit)
//! more than MaxBurstLength, and DataSN counts the PDUs of the command from 0.

/// One Data-In PDU's share of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInPiece {
    /// Buffer Offset of the first byte.
    pub offset: u32,
    /// Number of bytes.
    pub len: u32,
    /// DataSN.
    pub data_sn: u32,
    /// F bit: the last PDU of a sequence (burst).
    pub ends_sequence: bool,
    /// The last PDU of the command.
    pub last: bool,
}

/// Iterator over the pieces of a Data-In transfer; see [`pieces`].
#[derive(Debug, Clone)]
pub struct Pieces {
    total: u32,
    max_segment: u32,
    max_burst: u32,
    offset: u32,
    burst_end: u32,
    data_sn: u32,
}

/// Cuts `total` bytes into Data-In pieces of at most `max_segment` bytes, with sequences of at
/// most `max_burst` bytes. Limits below 1 are treated as 1 (the negotiation never yields them).
pub fn pieces(total: u32, max_segment: u32, max_burst: u32) -> Pieces {
    let max_burst = max_burst.max(1);
    Pieces {
        total,
        max_segment: max_segment.max(1),
        max_burst,
        offset: 0,
        burst_end: max_burst.min(total),
        data_sn: 0,
    }
}

impl Iterator for Pieces {
    type Item = DataInPiece;

    fn next(&mut self) -> Option<DataInPiece> {
        if self.offset >= self.total {
            return None;
        }
        let len = self.max_segment.min(self.burst_end - self.offset);
        let piece = DataInPiece {
            offset: self.offset,
            len,
            data_sn: self.data_sn,
            ends_sequence: self.offset + len == self.burst_end,
            last: self.offset + len == self.total,
        };
        self.offset += len;
        self.data_sn = self.data_sn.wrapping_add(1);
        if piece.ends_sequence {
            self.burst_end = self.offset.saturating_add(self.max_burst).min(self.total);
        }
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(total: u32, seg: u32, burst: u32) -> Vec<(u32, u32, u32, bool, bool)> {
        pieces(total, seg, burst)
            .map(|p| (p.offset, p.len, p.data_sn, p.ends_sequence, p.last))
            .collect()
    }

    #[test]
    fn one_mebibyte_read_at_256k_segments() {
        let k = 1024;
        assert_eq!(
            summary(1024 * k, 256 * k, 16 * 1024 * k),
            vec![
                (0, 256 * k, 0, false, false),
                (256 * k, 256 * k, 1, false, false),
                (512 * k, 256 * k, 2, false, false),
                (768 * k, 256 * k, 3, true, true),
            ]
        );
    }

    #[test]
    fn bursts_cut_segments_and_set_f() {
        // 10 bytes, segments of 4, bursts of 6: [0..4][4..6]F [6..10]F
        assert_eq!(
            summary(10, 4, 6),
            vec![
                (0, 4, 0, false, false),
                (4, 2, 1, true, false),
                (6, 4, 2, true, true)
            ]
        );
    }

    #[test]
    fn short_and_empty_transfers() {
        assert_eq!(summary(10, 8192, 262144), vec![(0, 10, 0, true, true)]);
        assert!(summary(0, 8192, 262144).is_empty());
    }

    #[test]
    fn pieces_tile_the_buffer() {
        for (total, seg, burst) in [(100_000, 8192, 65536), (65536, 65536, 65536), (7, 1, 3)] {
            let ps: Vec<_> = pieces(total, seg, burst).collect();
            let mut next = 0;
            for (i, p) in ps.iter().enumerate() {
                assert_eq!(p.offset, next);
                assert_eq!(p.data_sn as usize, i);
                assert!(p.len >= 1 && p.len <= seg);
                next += p.len;
            }
            assert_eq!(next, total);
            assert!(ps.last().unwrap().last && ps.last().unwrap().ends_sequence);
        }
    }
}

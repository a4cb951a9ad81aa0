//! The one range check for byte ranges of sized things (layer blobs and block devices).
//!
//! A layer read and a device request obey the same rule: `[offset, offset + len)` must lie
//! inside `size` bytes, computed without overflow. [`range_end`] is that rule, once; a layer
//! read turns it into a [`Span`] (with [`SourceError::OutOfRange`]), a block device into
//! `BlockError::OutOfRange` (`crate::block::check_range`). They differ only in the error: a
//! layer read past its blob's end means a damaged index or a truncated blob (a medium error),
//! a device request past the end is the initiator's mistake (LBA OUT OF RANGE).

use super::SourceError;

/// The end of `[offset, offset + len)` when the range lies inside `size` bytes; `None` when it
/// overflows u64 or passes the end. An empty range at `size` is inside.
pub fn range_end(size: u64, offset: u64, len: u64) -> Option<u64> {
    offset.checked_add(len).filter(|&end| end <= size)
}

/// A byte range proven to lie inside a source of a known size: the only way to build one is
/// [`Span::within`], so a [`LayerSource::read_span`](super::LayerSource::read_span)
/// implementation may slice by it without checking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    offset: u64,
    len: usize,
}

impl Span {
    /// `[offset, offset + len)` of a source of `size` bytes, or
    /// [`SourceError::OutOfRange`] when it does not fit (or overflows).
    pub fn within(size: u64, offset: u64, len: usize) -> Result<Span, SourceError> {
        let out_of_range = || SourceError::OutOfRange {
            offset,
            len: len as u64,
            size,
        };
        let len64 = u64::try_from(len).map_err(|_| out_of_range())?;
        range_end(size, offset, len64).ok_or_else(out_of_range)?;
        Ok(Span { offset, len })
    }

    /// First byte of the range.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length of the range in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty range (never passed to `read_span`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last byte; cannot overflow (checked when built).
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_inside_at_the_edge_past_and_overflowing() {
        assert_eq!(range_end(10, 0, 10), Some(10));
        assert_eq!(range_end(10, 10, 0), Some(10), "empty at the end is inside");
        assert_eq!(range_end(10, 9, 2), None);
        assert_eq!(range_end(10, 11, 0), None);
        assert_eq!(range_end(u64::MAX, u64::MAX, 1), None, "overflow");
        let s = Span::within(100, 40, 60).unwrap();
        assert_eq!((s.offset(), s.len(), s.end()), (40, 60, 100));
        assert!(matches!(
            Span::within(100, 41, 60),
            Err(SourceError::OutOfRange {
                offset: 41,
                len: 60,
                size: 100
            })
        ));
        assert!(matches!(
            Span::within(u64::MAX, u64::MAX, 2),
            Err(SourceError::OutOfRange { .. })
        ));
    }
}

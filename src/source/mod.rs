//! The layer-bytes contract: random-access reads of one immutable blob, and why they fail.
//!
//! This is the ground floor of the storage side: it depends on nothing else in the crate, so
//! `zfile`, `overlaybd` and `cache` can all build on it without depending on one another.
//!
//! - [`LayerSource`]: what a blob offers. Implementations provide [`LayerSource::read_span`]
//!   for a range already proven to fit ([`Span`]); everyone reads through the provided
//!   [`LayerSource::read_exact_at`], which checks the range once and the answer's length once,
//!   so no caller needs to check either again.
//! - [`SourceError`]: the failure by kind (not found, denied, unavailable, corrupt, out of
//!   range, wrong length, local I/O). A ZFile CRC mismatch is `Corrupt` from the reader that
//!   found it to the SCSI layer (`BlockError::Corrupt`, MEDIUM ERROR), with no message or
//!   `io::ErrorKind` inspected on the way.
//! - [`range_end`]: the one overflow-safe range rule, shared with block devices.
//! - [`BytesSource`]: bytes in memory as a source (tests, fuzzing, embedded images).

mod error;
mod in_memory;
mod span;

pub use error::{SourceError, SourceResult};
pub use in_memory::BytesSource;
pub use span::{range_end, Span};

use async_trait::async_trait;
use bytes::Bytes;

/// Random-access bytes of one immutable blob (a layer file, a registry blob, a ZFile's
/// decompressed view). ZFile and LSMT read through this trait, whatever stores the bytes.
#[async_trait]
pub trait LayerSource: Send + Sync + 'static {
    /// Total size of the blob in bytes.
    fn size(&self) -> u64;

    /// Returns the bytes of `span`, which lies inside [`LayerSource::size`] and is not empty.
    /// Only [`LayerSource::read_exact_at`] calls this; implementations neither re-check the
    /// range nor need to guard against a length of 0. Returning another number of bytes than
    /// `span.len()` is a [`SourceError::WrongLength`] for the caller.
    async fn read_span(&self, span: Span) -> SourceResult<Bytes>;

    /// A short human-readable name for errors and logs (a path or a digest).
    fn describe(&self) -> String;

    /// Drops any cached copy of `[offset, offset + len)` so the next read fetches it again
    /// (called once when a block read through this source fails its checksum). Sources
    /// without a cache have nothing to drop.
    async fn invalidate(&self, _offset: u64, _len: u64) {}

    /// Reads exactly `len` bytes at `offset`: [`SourceError::OutOfRange`] when the range does
    /// not fit the blob, an empty buffer for `len == 0`, and [`SourceError::WrongLength`] when
    /// the implementation answers with another length. The one place both rules are checked.
    async fn read_exact_at(&self, offset: u64, len: usize) -> SourceResult<Bytes> {
        let span = Span::within(self.size(), offset, len)?;
        if span.is_empty() {
            return Ok(Bytes::new());
        }
        let bytes = self.read_span(span).await?;
        if bytes.len() != len {
            return Err(SourceError::WrongLength {
                source_name: self.describe(),
                expected: len,
                got: bytes.len(),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers every read with `answer` bytes, counting the calls that reach it.
    struct Liar {
        size: u64,
        answer: usize,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl LayerSource for Liar {
        fn size(&self) -> u64 {
            self.size
        }
        async fn read_span(&self, _span: Span) -> SourceResult<Bytes> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Bytes::from(vec![0; self.answer]))
        }
        fn describe(&self) -> String {
            "liar".into()
        }
    }

    #[tokio::test]
    async fn read_exact_at_checks_the_range_before_and_the_length_after() {
        let src = Liar {
            size: 100,
            answer: 10,
            calls: AtomicUsize::new(0),
        };
        assert_eq!(src.read_exact_at(90, 10).await.unwrap().len(), 10);
        assert!(src.read_exact_at(100, 0).await.unwrap().is_empty());
        assert!(matches!(
            src.read_exact_at(95, 10).await,
            Err(SourceError::OutOfRange {
                offset: 95,
                len: 10,
                size: 100
            })
        ));
        assert!(matches!(
            src.read_exact_at(u64::MAX, 1).await,
            Err(SourceError::OutOfRange { .. })
        ));
        assert_eq!(
            src.calls.load(Ordering::SeqCst),
            1,
            "refused and empty reads stay above"
        );
        let short = src.read_exact_at(0, 11).await.unwrap_err();
        assert!(matches!(
            short,
            SourceError::WrongLength {
                expected: 11,
                got: 10,
                ..
            }
        ));
        assert_eq!(short.to_string(), "liar: returned 10 of 11 bytes");
        let long = src.read_exact_at(0, 9).await.unwrap_err();
        assert!(matches!(
            long,
            SourceError::WrongLength {
                expected: 9,
                got: 10,
                ..
            }
        ));
    }
}

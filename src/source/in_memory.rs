//! Bytes in memory as a [`LayerSource`] (tests, fuzzing, small blobs already fetched).

use async_trait::async_trait;
use bytes::Bytes;

use super::{LayerSource, SourceResult, Span};

/// An immutable in-memory blob; reads are zero-copy slices.
#[derive(Debug, Clone)]
pub struct BytesSource {
    bytes: Bytes,
    name: String,
}

impl BytesSource {
    /// Wraps `bytes`; `name` appears in errors and logs.
    pub fn new(bytes: impl Into<Bytes>, name: impl Into<String>) -> BytesSource {
        BytesSource {
            bytes: bytes.into(),
            name: name.into(),
        }
    }
}

#[async_trait]
impl LayerSource for BytesSource {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        // Both bounds are <= bytes.len() (the span is inside), which fits usize.
        Ok(self
            .bytes
            .slice(span.offset() as usize..span.end() as usize))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slices_and_bounds() {
        let src = BytesSource::new(vec![1u8, 2, 3, 4, 5], "mem");
        assert_eq!(&src.read_exact_at(1, 3).await.unwrap()[..], &[2, 3, 4]);
        assert_eq!(src.read_exact_at(5, 0).await.unwrap().len(), 0);
        for (offset, len) in [(4, 2), (u64::MAX, 2)] {
            assert!(matches!(
                src.read_exact_at(offset, len).await,
                Err(super::super::SourceError::OutOfRange { .. })
            ));
        }
        assert_eq!(src.describe(), "mem");
    }
}

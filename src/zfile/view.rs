//! A window of another [`LayerSource`]: the payload of a tar-wrapped blob, read as if it were
//! the whole blob (so ZFile and LSMT trailers are found at the payload's end).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::source::{range_end, LayerSource, SourceError, SourceResult, Span};

/// Bytes `[offset, offset + size)` of `inner`, addressed from 0.
pub struct RangeView {
    inner: Arc<dyn LayerSource>,
    offset: u64,
    size: u64,
}

impl RangeView {
    /// A view of `size` bytes at `offset`; fails if the window does not fit inside `inner`.
    pub fn new(inner: Arc<dyn LayerSource>, offset: u64, size: u64) -> SourceResult<RangeView> {
        if range_end(inner.size(), offset, size).is_none() {
            return Err(SourceError::OutOfRange {
                offset,
                len: size,
                size: inner.size(),
            });
        }
        Ok(RangeView {
            inner,
            offset,
            size,
        })
    }
}

#[async_trait]
impl LayerSource for RangeView {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        // span.end() <= size and offset_of_view + size <= inner size: no overflow.
        self.inner
            .read_exact_at(self.offset + span.offset(), span.len())
            .await
    }

    fn describe(&self) -> String {
        format!("{}@{}", self.inner.describe(), self.offset)
    }

    async fn invalidate(&self, offset: u64, len: u64) {
        // Clamp to the window so a caller can never drop bytes outside it.
        let end = offset.saturating_add(len).min(self.size);
        if offset < end {
            self.inner
                .invalidate(self.offset + offset, end - offset)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::BytesSource;

    #[tokio::test]
    async fn window_is_shifted_and_bounded() {
        let inner: Arc<dyn LayerSource> =
            Arc::new(BytesSource::new((0u8..100).collect::<Vec<_>>(), "blob"));
        let view = RangeView::new(Arc::clone(&inner), 10, 50).unwrap();
        assert_eq!(view.size(), 50);
        assert_eq!(&view.read_exact_at(0, 3).await.unwrap()[..], &[10, 11, 12]);
        assert_eq!(&view.read_exact_at(47, 3).await.unwrap()[..], &[57, 58, 59]);
        assert!(matches!(
            view.read_exact_at(48, 3).await,
            Err(SourceError::OutOfRange { .. })
        ));
        assert_eq!(view.describe(), "blob@10");
        assert!(RangeView::new(Arc::clone(&inner), 60, 41).is_err());
        assert!(RangeView::new(inner, u64::MAX, 2).is_err());
    }
}

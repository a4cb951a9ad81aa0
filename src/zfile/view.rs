//! A window of another [`LayerSource`]: the payload of a tar-wrapped blob, read as if it were
//! the whole blob (so ZFile and LSMT trailers are found at the payload's end).

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::{check_range, LayerSource};

/// Bytes `[offset, offset + size)` of `inner`, addressed from 0.
pub struct RangeView {
    inner: Arc<dyn LayerSource>,
    offset: u64,
    size: u64,
}

impl RangeView {
    /// A view of `size` bytes at `offset`; fails if the window does not fit inside `inner`.
    pub fn new(inner: Arc<dyn LayerSource>, offset: u64, size: u64) -> io::Result<RangeView> {
        let len = usize::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "view too large"))?;
        check_range(inner.size(), offset, len)?;
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

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        check_range(self.size, offset, len)?;
        // offset + len <= size and offset_of_view + size <= inner size: no overflow.
        self.inner.read_at(self.offset + offset, len).await
    }

    fn describe(&self) -> String {
        format!("{}@{}", self.inner.describe(), self.offset)
    }
}

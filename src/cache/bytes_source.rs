//! Bytes in memory as a [`LayerSource`] (tests, fuzzing, small blobs already fetched).

use std::io;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_range, LayerSource};

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

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = check_range(self.size(), offset, len)?;
        // Both bounds are <= bytes.len(), which fits usize.
        Ok(self.bytes.slice(offset as usize..end as usize))
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
        assert_eq!(&src.read_at(1, 3).await.unwrap()[..], &[2, 3, 4]);
        assert_eq!(src.read_at(5, 0).await.unwrap().len(), 0);
        assert_eq!(
            src.read_at(4, 2).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            src.read_at(u64::MAX, 2).await.unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(src.describe(), "mem");
    }
}

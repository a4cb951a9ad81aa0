//! Test helpers: in-memory and file-backed layer sources, and blob builders.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::LayerSource;

/// A blob held in memory.
pub struct MemSource(pub Bytes, pub String);

impl MemSource {
    pub fn arc(bytes: impl Into<Bytes>) -> Arc<dyn LayerSource> {
        Arc::new(MemSource(bytes.into(), "mem".into()))
    }
}

#[async_trait]
impl LayerSource for MemSource {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        match start.checked_add(len) {
            Some(end) if end <= self.0.len() => Ok(self.0.slice(start..end)),
            _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn describe(&self) -> String {
        self.1.clone()
    }
}

/// A local file read with positional reads (a stand-in for the cache's file source).
pub struct FileSource(pub std::fs::File, pub PathBuf, pub u64);

impl FileSource {
    pub fn open(path: impl Into<PathBuf>) -> Arc<dyn LayerSource> {
        let path = path.into();
        let f = std::fs::File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        Arc::new(FileSource(f, path, len))
    }
}

#[async_trait]
impl LayerSource for FileSource {
    fn size(&self) -> u64 {
        self.2
    }

    async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.0.read_exact_at(&mut buf, offset)?;
        Ok(buf.into())
    }

    fn describe(&self) -> String {
        self.1.display().to_string()
    }
}

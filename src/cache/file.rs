//! A local file as a [`LayerSource`]: positioned reads on tokio's blocking pool, so a slow disk
//! never stalls the async workers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{check_range, LayerSource};

/// A read-only local file (a layer blob on disk). Its size is fixed when opened: layer files
/// are immutable.
#[derive(Debug, Clone)]
pub struct FileSource {
    file: Arc<File>,
    size: u64,
    path: PathBuf,
}

impl FileSource {
    /// Opens `path` read-only and records its size.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (file, size) = tokio::task::spawn_blocking(move || -> io::Result<(File, u64)> {
            let file = File::open(&p)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await
        .map_err(io::Error::other)??;
        Ok(FileSource {
            file: Arc::new(file),
            size,
            path,
        })
    }
}

#[async_trait]
impl LayerSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        check_range(self.size, offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            // read_exact_at retries short reads; a file shrunk under us yields UnexpectedEof.
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn reads_ranges_and_refuses_past_end() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        tmp.write_all(&data).unwrap();
        let src = FileSource::open(tmp.path()).await.unwrap();
        assert_eq!(src.size(), 10_000);
        assert_eq!(
            &src.read_at(1234, 500).await.unwrap()[..],
            &data[1234..1734]
        );
        assert_eq!(src.read_at(10_000, 0).await.unwrap().len(), 0);
        let err = src.read_at(9_990, 11).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(src
            .describe()
            .contains(tmp.path().file_name().unwrap().to_str().unwrap()));
    }
}

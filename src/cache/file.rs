//! A local file as a [`LayerSource`]. Reads are first tried on the calling thread from the page
//! cache (`preadv2(RWF_NOWAIT)`), and go to tokio's blocking pool only for what is not cached,
//! so a slow disk never stalls the async workers while a cached read costs no thread hand-off.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::block::file::{read_cached, read_rest};
use crate::source::{LayerSource, SourceError, SourceResult, Span};
use crate::sys::blocking;

/// Largest read tried inline. Above the block device's 128 KiB: a layer file is read by a
/// decoder (ZFile, LSMT) that then spends longer on the same bytes on the same thread, so
/// copying up to 1 MiB from the page cache (some 100 µs) first adds little, while handing
/// the read to another thread and back cost about a fifth of a 1 MiB ZFile read.
const INLINE_READ_MAX: usize = 1 << 20;

/// A read-only local file (a layer blob on disk). Its size is fixed when opened: layer files
/// are immutable.
#[derive(Debug, Clone)]
pub struct FileSource {
    file: Arc<File>,
    size: u64,
    path: PathBuf,
    /// Cleared when the kernel or file system refuses `RWF_NOWAIT` reads, to stop trying.
    nowait: Arc<AtomicBool>,
}

impl FileSource {
    /// Opens `path` read-only and records its size.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (file, size) = blocking(move || -> io::Result<(File, u64)> {
            let file = File::open(&p)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await?;
        Ok(FileSource {
            file: Arc::new(file),
            size,
            path,
            nowait: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Stops trying reads inline, as if the file system refused them (tests).
    #[cfg(test)]
    fn without_inline_reads(self) -> FileSource {
        self.nowait
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }
}

#[async_trait]
impl LayerSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let (offset, len) = (span.offset(), span.len());
        // Not zeroed first: the reads fill it, and only what they filled is ever exposed.
        let mut buf = BytesMut::with_capacity(len);
        if len <= INLINE_READ_MAX && read_cached(&self.file, &mut buf, len, offset, &self.nowait) {
            return Ok(buf.freeze());
        }
        let file = Arc::clone(&self.file);
        blocking(move || {
            // Continues after what the inline attempt got; retries short reads; a file shrunk
            // under us yields UnexpectedEof.
            read_rest(&file, &mut buf, len, offset)?;
            Ok::<_, io::Error>(buf.freeze())
        })
        .await
        .map_err(SourceError::from)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(data: &[u8]) -> tempfile::NamedTempFile {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(data).unwrap();
        tmp.flush().unwrap();
        tmp
    }

    #[tokio::test]
    async fn reads_ranges_and_refuses_past_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let tmp = temp_file(&data);
        let src = FileSource::open(tmp.path()).await.unwrap();
        assert_eq!(src.size(), 10_000);
        assert_eq!(
            &src.read_exact_at(1234, 500).await.unwrap()[..],
            &data[1234..1734]
        );
        assert_eq!(src.read_exact_at(10_000, 0).await.unwrap().len(), 0);
        let err = src.read_exact_at(9_990, 11).await.unwrap_err();
        assert!(matches!(err, SourceError::OutOfRange { .. }), "{err}");
        assert!(src
            .describe()
            .contains(tmp.path().file_name().unwrap().to_str().unwrap()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_blocking_and_oversized_reads_return_the_same_bytes() {
        // 3 MiB: reads below and above the inline limit, with inline reads on and off.
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let tmp = temp_file(&data);
        let inline = FileSource::open(tmp.path()).await.unwrap();
        let pool = FileSource::open(tmp.path())
            .await
            .unwrap()
            .without_inline_reads();
        for (offset, len) in [
            (0, 1),
            (4095, 8193),
            (777, INLINE_READ_MAX),
            (1, 2 << 20),
            (0, 3 << 20),
        ] {
            for src in [&inline, &pool] {
                let got = src.read_exact_at(offset as u64, len).await.unwrap();
                assert!(
                    got[..] == data[offset..offset + len],
                    "{len} bytes at {offset}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_file_shrunk_after_open_gives_eof_not_stale_bytes() {
        let tmp = temp_file(&[7u8; 50_000]);
        let src = FileSource::open(tmp.path()).await.unwrap();
        tmp.as_file().set_len(20_000).unwrap();
        for src in [src.clone(), src.without_inline_reads()] {
            let err = src.read_exact_at(10_000, 30_000).await.unwrap_err();
            assert!(
                matches!(&err, SourceError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "{err}"
            );
            assert_eq!(
                &src.read_exact_at(0, 20_000).await.unwrap()[..],
                &[7u8; 20_000][..]
            );
        }
    }
}

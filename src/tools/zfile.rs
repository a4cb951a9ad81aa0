//! `zfile`: compress any file as ZFile, or decompress one, like `overlaybd-zfile`.
//!
//! ```text
//! overlaybd-target zfile [--algorithm lz4|zstd] [--bs KB] [-f] SOURCE TARGET
//! overlaybd-target zfile -d [-f] SOURCE TARGET
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::progress::Progress;
use super::{remove_existing, removing_partial_output, CodecArgs, ToolError};
use crate::cache::file::FileSource;
use crate::source::LayerSource;
use crate::zfile::{compress, open_payload, BlobFormat, ZFileError, ZFileReader};

/// Bytes decompressed per step.
const CHUNK: u64 = 1 << 20;

/// Arguments of `zfile`.
#[derive(Debug, Args)]
pub struct ZfileArgs {
    /// The input file.
    pub source: PathBuf,
    /// The output file (must not exist unless -f).
    pub target: PathBuf,
    /// Decompress SOURCE (a ZFile, optionally tar-wrapped) instead of compressing it.
    #[arg(short = 'd', long = "decompress")]
    pub decompress: bool,
    /// Codec and block size of the output (compression only).
    #[command(flatten)]
    pub codec: CodecArgs,
    /// Replace an existing TARGET.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Runs `zfile`.
pub async fn run(a: ZfileArgs) -> Result<(), ToolError> {
    if a.force {
        remove_existing(&a.target)?;
    }
    if a.decompress {
        removing_partial_output(&a.target, decompress(&a.source, &a.target)).await
    } else {
        removing_partial_output(&a.target, compress_file(&a)).await
    }
}

async fn compress_file(a: &ZfileArgs) -> Result<(), ToolError> {
    let options = a.codec.writer_options()?;
    let input = File::open(&a.source).map_err(|e| ToolError::io(&a.source, e))?;
    let len = input
        .metadata()
        .map_err(|e| ToolError::io(&a.source, e))?
        .len();
    let out = create(&a.target)?;
    let zerr = |source| ToolError::ZFile {
        path: a.target.clone(),
        source,
    };
    let progress = Arc::new(Progress::new(format!("zfile {}", a.target.display()), len));
    let input = CountingReader {
        inner: BufReader::new(input),
        read: 0,
        progress: Arc::clone(&progress),
    };
    // On a blocking thread, so that the tool's task stays free to act on SIGINT.
    let (out, info) =
        tokio::task::spawn_blocking(move || compress(input, BufWriter::new(out), options))
            .await
            .map_err(|e| ToolError::io(&a.target, std::io::Error::other(e)))?
            .map_err(zerr)?;
    progress.finish();
    finish(out, &a.target)?;
    println!(
        "compressed {} bytes into {} blocks: {}",
        info.original_file_size,
        info.block_count,
        a.target.display()
    );
    Ok(())
}

async fn decompress(source: &Path, target: &Path) -> Result<(), ToolError> {
    let zerr = |source_err| ToolError::ZFile {
        path: source.to_path_buf(),
        source: source_err,
    };
    let file = FileSource::open(source)
        .await
        .map_err(|e| ToolError::io(source, e))?;
    let payload = open_payload(Arc::new(file)).await.map_err(zerr)?;
    if payload.format != BlobFormat::ZFile {
        return Err(zerr(ZFileError::NotZFile("no ZFile header")));
    }
    let reader = ZFileReader::open(payload.source).await.map_err(zerr)?;
    let mut out = BufWriter::new(create(target)?);
    let size = reader.size();
    let progress = Progress::new(format!("zfile -d {}", target.display()), size);
    let mut pos = 0;
    while pos < size {
        // CHUNK fits in usize.
        let len = (size - pos).min(CHUNK) as usize;
        let bytes = reader
            .read_exact_at(pos, len)
            .await
            .map_err(|e| ToolError::io(source, e.into()))?;
        out.write_all(&bytes)
            .map_err(|e| ToolError::io(target, e))?;
        pos += len as u64;
        progress.set(pos);
    }
    progress.finish();
    finish(out, target)?;
    println!("decompressed {size} bytes into {}", target.display());
    Ok(())
}

/// A reader that reports how much was read to a [`Progress`].
struct CountingReader<R> {
    inner: R,
    read: u64,
    progress: Arc<Progress>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.set(self.read);
        Ok(n)
    }
}

fn create(path: &Path) -> Result<File, ToolError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ToolError::io(path, e))
}

fn finish(out: BufWriter<File>, path: &Path) -> Result<(), ToolError> {
    let file = out
        .into_inner()
        .map_err(|e| ToolError::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| ToolError::io(path, e))
}

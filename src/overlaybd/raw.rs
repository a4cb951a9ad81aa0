//! Conversions between overlaybd images and raw disk images, for the image tools: export the
//! virtual disk as a sparse raw file, and build a layer from a raw file that stores only the
//! blocks differing from the stack below.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::error::{LsmtError, LsmtResult};
use super::image::Image;
use super::index::SECTOR;
use super::stack::LayerStack;
use super::writable::WritableLayer;
use crate::block::BlockDevice;

/// Bytes processed per step.
const WINDOW: u64 = 4 << 20;
/// Granularity of zero detection and of differences.
const BLOCK: usize = 4096;

/// Counts of what a conversion wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawSummary {
    /// Bytes of data written.
    pub written: u64,
    /// Bytes discarded (import only: ranges that became zeros).
    pub discarded: u64,
}

/// Writes the whole virtual disk of `image` to a new file at `out` (it must not exist). Holes,
/// zeroed extents and all-zero 4 KiB blocks are left unwritten, so the file stays sparse.
pub async fn export_sparse(
    image: &Image,
    out: &Path,
    progress: super::OnProgress<'_>,
) -> LsmtResult<RawSummary> {
    let name = out.display().to_string();
    let file = Arc::new(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| LsmtError::io(&name, e))?,
    );
    let size = image.size();
    let mut summary = RawSummary::default();
    let mut pos = 0;
    while pos < size {
        let len = (size - pos).min(WINDOW);
        let has_data = image
            .extents(pos / SECTOR, len / SECTOR)
            .iter()
            .any(|r| !r.zeroed);
        if has_data {
            // len ≤ 4 MiB.
            let bytes = image.read_at(pos, len as usize).await?;
            summary.written += write_nonzero(&file, &name, pos, bytes).await?;
        }
        pos += len;
        progress(pos);
    }
    let f = Arc::clone(&file);
    blocking(&name, move || {
        f.set_len(size)?;
        f.sync_all()
    })
    .await?;
    Ok(summary)
}

/// Makes `upper` hold exactly the differences between the raw disk image at `raw` and `base`,
/// compared in 4 KiB blocks: changed data is written, blocks that became all zeros are
/// discarded. Afterwards `base` + `upper` reads like `raw` over the raw file's length (a
/// multiple of 512, at most the upper layer's virtual size). The upper layer is flushed.
pub async fn import_raw(
    raw: &Path,
    base: &LayerStack,
    upper: &WritableLayer,
    progress: super::OnProgress<'_>,
) -> LsmtResult<RawSummary> {
    let name = raw.display().to_string();
    let file = Arc::new(File::open(raw).map_err(|e| LsmtError::io(&name, e))?);
    let size = file.metadata().map_err(|e| LsmtError::io(&name, e))?.len();
    if size % SECTOR != 0 {
        return Err(LsmtError::Invalid(format!(
            "{name}: size {size} is not a multiple of 512"
        )));
    }
    if size > upper.virtual_size() {
        return Err(LsmtError::Invalid(format!(
            "{name}: size {size} exceeds the layer's virtual size {}",
            upper.virtual_size()
        )));
    }
    let mut summary = RawSummary::default();
    let mut pos = 0;
    while pos < size {
        // len ≤ 4 MiB.
        let len = (size - pos).min(WINDOW) as usize;
        let f = Arc::clone(&file);
        let new = blocking(&name, move || {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, pos)?;
            Ok(buf)
        })
        .await?;
        let old = if pos < base.virtual_size() {
            let avail = (base.virtual_size() - pos).min(len as u64) as usize;
            let avail = avail - avail % SECTOR as usize;
            let mut b = base.read(pos, avail).await?.to_vec();
            b.resize(len, 0);
            b
        } else {
            vec![0u8; len]
        };
        let new = Bytes::from(new);
        for (at, run) in differing_runs(&new, &old) {
            let off = pos + at as u64;
            let piece = new.slice(at..at + run);
            if piece.iter().all(|&b| b == 0) {
                upper.discard(off, run as u64).await?;
                summary.discarded += run as u64;
            } else {
                upper.write(off, piece).await?;
                summary.written += run as u64;
            }
        }
        pos += len as u64;
        progress(pos);
    }
    upper.flush().await?;
    Ok(summary)
}

/// Maximal runs of 4 KiB blocks (the last one may be shorter) where `a` and `b` differ, split
/// further so each run is uniformly zero or uniformly non-zero in `a` at block granularity.
fn differing_runs(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, (x, y)) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).enumerate() {
        if x == y {
            continue;
        }
        let zero = x.iter().all(|&c| c == 0);
        let at = i * BLOCK;
        match runs.last_mut() {
            Some((s, l, z)) if *s + *l == at && *z == zero => *l += x.len(),
            _ => runs.push((at, x.len(), zero)),
        }
    }
    runs.into_iter().map(|(s, l, _)| (s, l)).collect()
}

async fn write_nonzero(file: &Arc<File>, name: &str, pos: u64, bytes: Bytes) -> LsmtResult<u64> {
    let f = Arc::clone(file);
    blocking(name, move || {
        let mut written = 0;
        for (i, block) in bytes.chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                f.write_all_at(block, pos + (i * BLOCK) as u64)?;
                written += block.len() as u64;
            }
        }
        Ok(written)
    })
    .await
}

/// Runs file I/O off the async executor; its error (or a task that died) is an error of `name`.
async fn blocking<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> LsmtResult<T> {
    crate::sys::blocking(f)
        .await
        .map_err(|e| LsmtError::io(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_by_zeroness() {
        let mut a = vec![0u8; 5 * BLOCK];
        let b = vec![1u8; 5 * BLOCK];
        a[2 * BLOCK..4 * BLOCK].fill(7);
        assert_eq!(
            differing_runs(&a, &b),
            vec![(0, 2 * BLOCK), (2 * BLOCK, 2 * BLOCK), (4 * BLOCK, BLOCK)]
        );
        assert_eq!(differing_runs(&b, &b), vec![]);
    }
}

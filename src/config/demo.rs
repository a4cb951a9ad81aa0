//! The demo image served when the command line names no LUN: a small read-only ext4 filesystem
//! with a README, kept in the repository as one ZFile-compressed overlaybd layer
//! (`assets/demo.obd`, rebuilt by `scripts/make-demo-image.sh`).

use std::sync::Arc;

use crate::overlaybd::{Image, LayerStack, LsmtError, SealedLayer};
use crate::source::BytesSource;
use crate::zfile::open_payload;

/// The layer blob, embedded in the binary.
pub static DEMO_IMAGE: &[u8] = include_bytes!("../../assets/demo.obd");

/// Opens the embedded demo image (read-only: it has no writable layer).
pub async fn open_demo() -> Result<Image, LsmtError> {
    let name = "embedded demo image";
    let blob = Arc::new(BytesSource::new(DEMO_IMAGE, name));
    let corrupt = |e: crate::zfile::ZFileError| LsmtError::corrupt(name, e.to_string());
    let payload = open_payload(blob).await.map_err(corrupt)?;
    let source = payload.decompressed().await.map_err(corrupt)?;
    let layer = SealedLayer::open(source).await?;
    Image::new(LayerStack::new(vec![layer])?, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockDevice;

    #[tokio::test]
    async fn demo_is_a_read_only_ext4_disk() {
        let image = open_demo().await.unwrap();
        assert!(image.read_only());
        assert_eq!(image.size(), 8 << 20);
        // The ext4 superblock magic 0xEF53 at byte 1080.
        let sb = image.read(1024, 512).await.unwrap();
        assert_eq!(&sb[56..58], &[0x53, 0xEF]);
        assert!(DEMO_IMAGE.len() < 200 << 10);
    }
}

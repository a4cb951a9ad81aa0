//! The documents `push` writes, free of I/O: the tar wrapping of a sealed layer, the image
//! config and the image manifest with the overlaybd annotations (`../shared/spec/tools.md`
//! §8.1), so that the overlaybd snapshotter, and our own `pull` and `registry:` LUNs, accept
//! what we push.
//!
//! Every document is deterministic (no timestamps, keys in a fixed order): pushing the same
//! layers twice gives the same manifest digest, so a re-push changes nothing in the registry.

use serde_json::{json, Value};

use super::manifest::{
    ANNOTATION_ACCELERATION, ANNOTATION_BLOB_DIGEST, ANNOTATION_BLOB_SIZE, ANNOTATION_VERSION,
    DOCKER_MANIFEST, OCI_MANIFEST,
};
use super::Platform;

/// Tar block size.
const BLOCK: u64 = 512;

/// The name of the one file in an overlaybd layer tar.
pub const LAYER_FILE_NAME: &str = "overlaybd.commit";

/// The `…/overlaybd/version` annotation value of native overlaybd layers.
pub const OVERLAYBD_VERSION: &str = "0.1.0";

/// A sealed layer of `payload_len` bytes as a tar holding it as `overlaybd.commit`: one USTAR
/// header block, the payload, zeros to the next block boundary and the two zero blocks that
/// end an archive, the layout of Go's `archive/tar` that the convertor uses (payload at 512).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarWrap {
    /// Bytes of the payload.
    pub payload_len: u64,
}

impl TarWrap {
    /// The wrapping of a `payload_len`-byte layer.
    pub fn new(payload_len: u64) -> Self {
        TarWrap { payload_len }
    }

    /// The header block.
    pub fn header(&self) -> [u8; BLOCK as usize] {
        let mut h = tar::Header::new_ustar();
        // The name is a short constant, so setting it cannot fail; the rest are plain numbers.
        let _ = h.set_path(LAYER_FILE_NAME);
        h.set_size(self.payload_len);
        h.set_mode(0o444);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut header = [0u8; BLOCK as usize];
        header.copy_from_slice(h.as_bytes());
        header
    }

    /// Zero bytes after the payload: padding to a block, then two end blocks.
    pub fn trailer_len(&self) -> u64 {
        self.payload_len.next_multiple_of(BLOCK) - self.payload_len + 2 * BLOCK
    }

    /// The size of the whole tar blob.
    pub fn total_len(&self) -> u64 {
        BLOCK + self.payload_len + self.trailer_len()
    }
}

/// A blob the manifest names: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// The manifest flavour: Docker schema 2 (the convertor's default) or OCI (`--oci`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    Docker,
    /// `application/vnd.oci.image.manifest.v1+json`.
    Oci,
}

impl ManifestKind {
    /// The manifest's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::Docker => DOCKER_MANIFEST,
            ManifestKind::Oci => OCI_MANIFEST,
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            ManifestKind::Docker => "application/vnd.docker.container.image.v1+json",
            ManifestKind::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }

    /// The media type of an overlaybd layer: an uncompressed tar.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            ManifestKind::Docker => "application/vnd.docker.image.rootfs.diff.tar",
            ManifestKind::Oci => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

/// The image config blob: the platform and `rootfs.diff_ids`, which for an uncompressed tar
/// layer are the layer digests themselves.
pub fn image_config(platform: &Platform, layers: &[BlobRef]) -> Vec<u8> {
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.as_str()).collect::<Vec<_>>(),
        },
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = Value::from(variant.as_str());
    }
    config.to_string().into_bytes()
}

/// The image manifest naming `config` and `layers` (bottom first), each layer annotated as
/// native overlaybd (version, blob digest and size); with `acceleration`, the last layer is
/// marked as the trace layer.
pub fn image_manifest(
    kind: ManifestKind,
    config: &BlobRef,
    layers: &[BlobRef],
    acceleration: bool,
) -> Vec<u8> {
    let last = layers.len().saturating_sub(1);
    let layers: Vec<Value> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut annotations = json!({
                ANNOTATION_VERSION: OVERLAYBD_VERSION,
                ANNOTATION_BLOB_DIGEST: l.digest,
                ANNOTATION_BLOB_SIZE: l.size.to_string(),
            });
            if acceleration && i == last {
                annotations[ANNOTATION_ACCELERATION] = Value::from("yes");
            }
            json!({
                "mediaType": kind.layer_media_type(),
                "digest": l.digest,
                "size": l.size,
                "annotations": annotations,
            })
        })
        .collect();
    json!({
        "schemaVersion": 2,
        "mediaType": kind.media_type(),
        "config": {
            "mediaType": kind.config_media_type(),
            "digest": config.digest,
            "size": config.size,
        },
        "layers": layers,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Manifest;

    fn blob(n: u8, size: u64) -> BlobRef {
        BlobRef {
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size,
        }
    }

    /// The header our reader (and the reference, which wants USTAR with the payload at 512)
    /// finds, the octal size, and the exact sizes of the padding for lengths around a block.
    #[test]
    fn tar_wrap_is_a_ustar_header_then_padding_and_two_end_blocks() {
        for (len, trailer) in [
            (0u64, 1024u64),
            (1, 1535),
            (511, 1025),
            (512, 1024),
            (513, 1535),
        ] {
            let w = TarWrap::new(len);
            assert_eq!(w.trailer_len(), trailer, "{len}");
            assert_eq!(w.total_len(), 512 + len + trailer, "{len}");
            assert_eq!(w.total_len() % 512, 0);
        }
        let w = TarWrap::new(4_737_695);
        let header = w.header();
        assert_eq!(&header[..16], b"overlaybd.commit");
        assert_eq!(&header[257..263], b"ustar\0");
        assert_eq!(&header[263..265], b"00");
        assert_eq!(&header[124..136], b"00022045237\0");
        assert!(crate::zfile::tar::is_tar_header(&header));
        let mut blob = header.to_vec();
        blob.extend(std::iter::repeat_n(7u8, 4_737_695));
        blob.resize(w.total_len() as usize, 0);
        let payload = crate::zfile::tar::locate_payload(&blob[..1536], blob.len() as u64)
            .unwrap()
            .unwrap();
        assert_eq!((payload.offset, payload.size), (512, 4_737_695));
    }

    /// The manifest our own parser reads back as an overlaybd image: every layer by the
    /// annotated digest and size, the trace layer apart; the media types of each flavour.
    #[test]
    fn manifest_reads_back_as_the_overlaybd_image_it_describes() {
        let layers = [blob(1, 1536), blob(2, 99_840), blob(3, 2048)];
        let config = blob(9, 321);
        for kind in [ManifestKind::Docker, ManifestKind::Oci] {
            let body = image_manifest(kind, &config, &layers, true);
            let Manifest::Image(m) = Manifest::parse(Some(kind.media_type()), &body).unwrap()
            else {
                panic!("{kind:?}: not an image manifest");
            };
            assert_eq!(m.media_type, kind.media_type());
            assert_eq!(m.config.digest, config.digest);
            assert_eq!(m.config.size, 321);
            assert!(m
                .layers
                .iter()
                .all(|l| l.media_type == kind.layer_media_type()));
            assert_eq!(m.layers[1].annotations[ANNOTATION_VERSION], "0.1.0");
            let image = m.overlaybd().unwrap();
            let got: Vec<(String, u64)> = image
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect();
            assert_eq!(
                got,
                vec![
                    (layers[0].digest.clone(), 1536),
                    (layers[1].digest.clone(), 99_840)
                ]
            );
            assert_eq!(image.acceleration.unwrap().digest, layers[2].digest);
        }
        let plain = image_manifest(ManifestKind::Docker, &config, &layers, false);
        let Manifest::Image(m) = Manifest::parse(Some(DOCKER_MANIFEST), &plain).unwrap() else {
            panic!("not an image manifest");
        };
        assert_eq!(m.overlaybd().unwrap().layers.len(), 3);
        // Deterministic: the same inputs give the same bytes (and so the same digest).
        assert_eq!(
            plain,
            image_manifest(ManifestKind::Docker, &config, &layers, false)
        );
    }

    #[test]
    fn image_config_lists_the_layer_digests_as_diff_ids() {
        let platform = Platform::parse("linux/arm/v7").unwrap();
        let body = image_config(&platform, &[blob(1, 1), blob(2, 2)]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["os"], "linux");
        assert_eq!(v["architecture"], "arm");
        assert_eq!(v["variant"], "v7");
        assert_eq!(v["rootfs"]["type"], "layers");
        assert_eq!(
            v["rootfs"]["diff_ids"],
            json!([blob(1, 1).digest, blob(2, 2).digest])
        );
    }
}

//! The acceleration layer of an overlaybd image (spec `trace-prefetch.md` §7), free of I/O:
//! the layer blob (a plain tar holding one regular file `trace`), reading the trace back out
//! of such a blob, and the rewrite of an image manifest and image config that attaches the
//! layer on top of an image.
//!
//! Decisions beyond the spec:
//!
//! - **Deterministic tar**: one USTAR header (`trace`, mode 0444, uid/gid 0, no owner names,
//!   mtime 0), the payload padded to 512 and two zero blocks, the layout of Go's
//!   `archive/tar` for a small file. The same trace always gives the same blob digest, so
//!   attaching a trace twice changes nothing in the registry.
//! - **Replacing**: an image may carry at most one acceleration layer, so attaching to an
//!   image that has one *replaces* it: its descriptor, its `diff_ids` entry and its
//!   `Acceleration Layer` history entry are removed before the new ones are added.
//! - **Unknown fields** of the manifest and the config (labels, history, annotations of other
//!   layers, `subject`...) are kept: both documents are edited as JSON values.
//! - **Reading**: the blob is bounded ([`MAX_LAYER_BLOB`]) before it is read; in the tar, the
//!   last regular file named `trace` or `./trace` is the trace (a later entry overwrites an
//!   earlier one when the snapshotter unpacks the layer, so the last one is what it sees).

use std::io::Read;

use serde_json::{json, Map, Value};

use super::compose::{BlobRef, OVERLAYBD_VERSION};
use super::manifest::{
    Manifest, ANNOTATION_ACCELERATION, ANNOTATION_BLOB_DIGEST, ANNOTATION_BLOB_SIZE,
    ANNOTATION_VERSION,
};
use crate::prefetch::trace::{HEADER_SIZE, MAX_DATA_SIZE};

/// The name of the one file in an acceleration layer.
pub const TRACE_FILE_NAME: &str = "trace";

/// The media type of the acceleration layer's descriptor, whatever the manifest's flavour.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// The annotation naming the file system of an overlaybd layer, copied from the layer below.
pub const ANNOTATION_FS_TYPE: &str = "containerd.io/snapshot/overlaybd/blob-fs-type";

/// `created_by` of the history entry of the acceleration layer.
pub const HISTORY_CREATED_BY: &str = "Acceleration Layer";

/// Tar block size.
const BLOCK: usize = 512;

/// Largest acceleration layer blob read: the largest decodable trace plus room for tar
/// headers (extension headers included), so a hostile registry cannot make us allocate more.
pub const MAX_LAYER_BLOB: u64 = HEADER_SIZE as u64 + MAX_DATA_SIZE + (1 << 20);

/// The acceleration layer blob holding `trace`: a plain tar with the one regular file
/// `trace` (mode 0444), byte-identical for identical traces.
pub fn layer_tar(trace: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    // A short constant name, so setting it cannot fail; the rest are plain numbers.
    let _ = h.set_path(TRACE_FILE_NAME);
    h.set_size(trace.len() as u64);
    h.set_mode(0o444);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let padded = trace.len().next_multiple_of(BLOCK);
    let mut out = Vec::with_capacity(BLOCK + padded + 2 * BLOCK);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(trace);
    out.resize(BLOCK + padded + 2 * BLOCK, 0);
    out
}

/// Why no trace could be read from an acceleration layer blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The blob is larger than [`MAX_LAYER_BLOB`].
    #[error("the acceleration layer blob has {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// The blob's size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// The blob is not a readable tar.
    #[error("the acceleration layer is not a readable tar: {0}")]
    BadTar(String),
    /// The tar holds no regular file `trace`.
    #[error("the acceleration layer holds no regular file `trace`")]
    NoTrace,
}

/// The content of the file `trace` (or `./trace`) in the acceleration layer tar `blob`.
pub fn extract_trace(blob: &[u8]) -> Result<Vec<u8>, ExtractError> {
    if blob.len() as u64 > MAX_LAYER_BLOB {
        return Err(ExtractError::TooLarge {
            size: blob.len() as u64,
            max: MAX_LAYER_BLOB,
        });
    }
    let bad = |e: std::io::Error| ExtractError::BadTar(e.to_string());
    let mut archive = tar::Archive::new(blob);
    let mut found = None;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path_bytes();
        let named = matches!(name.as_ref(), b"trace" | b"./trace");
        if !named || !entry.header().entry_type().is_file() {
            continue;
        }
        // The entry's bytes are a slice of `blob`, so this is bounded by its size; a header
        // that claims more than the blob holds is an error, not an allocation.
        let mut content = Vec::new();
        (&mut entry)
            .take(MAX_LAYER_BLOB)
            .read_to_end(&mut content)
            .map_err(bad)?;
        if content.len() as u64 != entry.size() {
            return Err(ExtractError::BadTar(format!(
                "`trace` claims {} bytes, the blob holds {}",
                entry.size(),
                content.len()
            )));
        }
        found = Some(content);
    }
    found.ok_or(ExtractError::NoTrace)
}

/// Why an image cannot take an acceleration layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The image manifest is unusable (not an overlaybd image manifest, malformed).
    #[error("image manifest: {0}")]
    Manifest(String),
    /// The image config is unusable.
    #[error("image config: {0}")]
    Config(String),
}

/// The documents of an image with an acceleration layer attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The new image manifest, same media type as before.
    pub manifest: Vec<u8>,
    /// The new image config blob.
    pub config: Vec<u8>,
    /// Digest and size of [`Attached::config`].
    pub config_blob: BlobRef,
    /// The acceleration layer that was replaced, when the image had one.
    pub replaced: Option<BlobRef>,
}

/// Attaches the acceleration layer `layer` (digest and size of a [`layer_tar`] blob) to the
/// image whose manifest and config are `manifest` and `config`: the layer goes last in the
/// manifest with the §7 media type and annotations (the file system type copied from the
/// layer below when it has one), its digest is appended to `rootfs.diff_ids` (a plain tar's
/// diff ID is its digest), a history entry is prepended, and the manifest names the new
/// config. An existing acceleration layer is replaced. `manifest` must be an overlaybd image
/// manifest (OCI or Docker schema 2; the flavour is kept).
pub fn attach(manifest: &[u8], config: &[u8], layer: &BlobRef) -> Result<Attached, AttachError> {
    let bad_manifest = |why: String| AttachError::Manifest(why);
    let bad_config = |why: String| AttachError::Config(why);
    let parsed = match Manifest::parse(None, manifest) {
        Ok(Manifest::Image(m)) => m,
        Ok(Manifest::Index(_)) => {
            return Err(bad_manifest(
                "an index, not an image manifest (name one platform's manifest by digest)".into(),
            ))
        }
        Err(e) => return Err(bad_manifest(e.to_string())),
    };
    let image = parsed
        .overlaybd()
        .map_err(|e| bad_manifest(e.to_string()))?;
    let mut manifest: Value =
        serde_json::from_slice(manifest).map_err(|e| bad_manifest(e.to_string()))?;
    let mut config: Value =
        serde_json::from_slice(config).map_err(|e| bad_config(e.to_string()))?;
    let Some(config_obj) = config.as_object_mut() else {
        return Err(bad_config("not a JSON object".into()));
    };

    let layers = manifest
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad_manifest("no `layers` array".into()))?;
    let diff_ids = config_obj
        .get_mut("rootfs")
        .and_then(|r| r.get_mut("diff_ids"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad_config("no `rootfs.diff_ids` array".into()))?;
    let replaced = image.acceleration.map(|old| BlobRef {
        digest: old.digest,
        size: old.size,
    });
    if let Some(old) = &replaced {
        // `overlaybd()` checked that the acceleration layer is the last one.
        layers.pop();
        if diff_ids.last().and_then(Value::as_str) != Some(old.digest.as_str()) {
            return Err(bad_config(format!(
                "`rootfs.diff_ids` does not end with the digest of the acceleration layer \
                 being replaced ({})",
                old.digest
            )));
        }
        diff_ids.pop();
    }
    let fs_type = layers
        .last()
        .and_then(|l| l.get("annotations"))
        .and_then(|a| a.get(ANNOTATION_FS_TYPE))
        .cloned();
    let mut annotations = Map::new();
    annotations.insert(ANNOTATION_VERSION.into(), OVERLAYBD_VERSION.into());
    annotations.insert(ANNOTATION_BLOB_DIGEST.into(), layer.digest.clone().into());
    annotations.insert(ANNOTATION_BLOB_SIZE.into(), layer.size.to_string().into());
    annotations.insert(ANNOTATION_ACCELERATION.into(), "yes".into());
    if let Some(fs_type) = fs_type {
        annotations.insert(ANNOTATION_FS_TYPE.into(), fs_type);
    }
    layers.push(json!({
        "mediaType": LAYER_MEDIA_TYPE,
        "digest": layer.digest,
        "size": layer.size,
        "annotations": annotations,
    }));
    diff_ids.push(layer.digest.clone().into());

    let history = config_obj
        .entry("history")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(history) = history.as_array_mut() else {
        return Err(bad_config("`history` is not an array".into()));
    };
    if replaced.is_some() {
        let ours =
            |h: &Value| h.get("created_by").and_then(Value::as_str) == Some(HISTORY_CREATED_BY);
        if let Some(at) = history.iter().position(ours) {
            history.remove(at);
        }
    }
    history.insert(0, json!({ "created_by": HISTORY_CREATED_BY }));

    let config = serde_json::to_vec(&config).map_err(|e| bad_config(e.to_string()))?;
    let config_blob = BlobRef {
        digest: crate::cache::http::push::sha256_digest(&config),
        size: config.len() as u64,
    };
    let descriptor = manifest
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad_manifest("no `config` descriptor".into()))?;
    descriptor.insert("digest".into(), config_blob.digest.clone().into());
    descriptor.insert("size".into(), config_blob.size.into());
    let manifest = serde_json::to_vec(&manifest).map_err(|e| bad_manifest(e.to_string()))?;
    Ok(Attached {
        manifest,
        config,
        config_blob,
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::trace::{decode, encode};
    use crate::prefetch::TraceRecord;
    use crate::registry::compose::{image_config, image_manifest, ManifestKind};
    use crate::registry::manifest::DOCKER_MANIFEST;
    use crate::registry::Platform;

    fn blob(n: u8, size: u64) -> BlobRef {
        BlobRef {
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size,
        }
    }

    fn digest_of(data: &[u8]) -> BlobRef {
        BlobRef {
            digest: crate::cache::http::push::sha256_digest(data),
            size: data.len() as u64,
        }
    }

    /// A two-layer overlaybd image (manifest, config) of `kind`, the top layer with an fs type.
    fn image(kind: ManifestKind) -> (Vec<u8>, Vec<u8>) {
        let layers = [blob(1, 1536), blob(2, 99_840)];
        let config = image_config(&Platform::parse("linux/amd64").unwrap(), &layers);
        let manifest = image_manifest(kind, &digest_of(&config), &layers, false);
        let mut v: Value = serde_json::from_slice(&manifest).unwrap();
        v["layers"][1]["annotations"][ANNOTATION_FS_TYPE] = "ext4".into();
        v["annotations"] = json!({"org.example": "kept"});
        (serde_json::to_vec(&v).unwrap(), config)
    }

    fn trace_bytes(n: u64) -> Vec<u8> {
        encode(&[
            TraceRecord::read(0, 4096 * n, 4096),
            TraceRecord::read(1, 0, 512),
        ])
    }

    #[test]
    fn the_tar_holds_exactly_one_read_only_file_trace() {
        let trace = trace_bytes(1);
        let tar_blob = layer_tar(&trace);
        assert_eq!(tar_blob.len() % 512, 0);
        assert_eq!(
            tar_blob.len(),
            512 + trace.len().next_multiple_of(512) + 1024
        );
        let mut archive = tar::Archive::new(&tar_blob[..]);
        let mut entries = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            entries.push((e.path().unwrap().display().to_string(), h, content));
        }
        assert_eq!(entries.len(), 1);
        let (name, header, content) = &entries[0];
        assert_eq!(name, "trace");
        assert_eq!(header.mode().unwrap(), 0o444);
        assert_eq!(header.entry_type(), tar::EntryType::Regular);
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
        assert_eq!(header.mtime().unwrap(), 0);
        assert_eq!(content, &trace);
        // Deterministic, and readable by our own extraction.
        assert_eq!(layer_tar(&trace), tar_blob);
        assert_eq!(extract_trace(&tar_blob).unwrap(), trace);
        assert_ne!(layer_tar(&trace_bytes(2)), tar_blob);
    }

    #[test]
    fn extraction_accepts_dot_slash_and_refuses_what_is_not_a_trace_layer() {
        let tar_of = |entries: &[(&str, tar::EntryType, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, kind, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_path(name).unwrap();
                h.set_entry_type(*kind);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let t = trace_bytes(3);
        let dotted = tar_of(&[
            ("./other", tar::EntryType::Regular, b"x"),
            ("./trace", tar::EntryType::Regular, &t),
        ]);
        assert_eq!(extract_trace(&dotted).unwrap(), t);
        // A directory or another name is not the trace.
        let none = tar_of(&[
            ("trace", tar::EntryType::Directory, b""),
            ("sub/trace", tar::EntryType::Regular, &t),
        ]);
        assert_eq!(extract_trace(&none), Err(ExtractError::NoTrace));
        assert_eq!(extract_trace(&[0u8; 1024]), Err(ExtractError::NoTrace));
        assert!(matches!(
            extract_trace(&[7u8; 2048]),
            Err(ExtractError::BadTar(_))
        ));
        // A header that claims more bytes than the blob holds.
        let mut cut = layer_tar(&vec![1u8; 4096]);
        cut.truncate(1024);
        assert!(matches!(extract_trace(&cut), Err(ExtractError::BadTar(_))));
    }

    #[test]
    fn attach_appends_the_layer_that_our_parser_takes_for_the_acceleration_layer() {
        for kind in [ManifestKind::Docker, ManifestKind::Oci] {
            let (manifest, config) = image(kind);
            let tar_blob = layer_tar(&trace_bytes(1));
            let layer = digest_of(&tar_blob);
            let a = attach(&manifest, &config, &layer).unwrap();
            assert_eq!(a.replaced, None);
            assert_eq!(a.config_blob, digest_of(&a.config));
            let Manifest::Image(m) = Manifest::parse(None, &a.manifest).unwrap() else {
                panic!("not an image manifest");
            };
            assert_eq!(m.media_type, kind.media_type(), "the flavour is kept");
            assert_eq!(m.config.digest, a.config_blob.digest);
            assert_eq!(m.config.size, a.config_blob.size);
            assert_eq!(m.layers.len(), 3);
            let top = &m.layers[2];
            assert_eq!(top.media_type, LAYER_MEDIA_TYPE);
            assert_eq!(
                (top.digest.as_str(), top.size),
                (layer.digest.as_str(), layer.size)
            );
            let want: std::collections::BTreeMap<String, String> = [
                (ANNOTATION_VERSION, "0.1.0".to_string()),
                (ANNOTATION_BLOB_DIGEST, layer.digest.clone()),
                (ANNOTATION_BLOB_SIZE, layer.size.to_string()),
                (ANNOTATION_ACCELERATION, "yes".to_string()),
                (ANNOTATION_FS_TYPE, "ext4".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            assert_eq!(top.annotations, want);
            let image = m.overlaybd().unwrap();
            assert_eq!(image.layers.len(), 2, "the old layers keep their place");
            assert_eq!(image.layers[0].digest, blob(1, 0).digest);
            assert_eq!(image.acceleration.as_ref().unwrap().digest, layer.digest);
            let cfg = image.image_config("http://r/v2/x/blobs");
            assert!(cfg.acceleration_layer);
            assert_eq!(cfg.lowers.last().unwrap().digest, layer.digest);
            let v: Value = serde_json::from_slice(&a.manifest).unwrap();
            assert_eq!(v["annotations"]["org.example"], "kept");
            let c: Value = serde_json::from_slice(&a.config).unwrap();
            assert_eq!(
                c["rootfs"]["diff_ids"],
                json!([blob(1, 0).digest, blob(2, 0).digest, layer.digest])
            );
            assert_eq!(c["history"], json!([{"created_by": "Acceleration Layer"}]));
            assert_eq!(c["os"], "linux");
        }
    }

    #[test]
    fn a_second_attach_replaces_the_first() {
        let (manifest, config) = image(ManifestKind::Docker);
        let mut c: Value = serde_json::from_slice(&config).unwrap();
        c["history"] = json!([{"created_by": "build"}, {"created_by": "build 2"}]);
        let config = serde_json::to_vec(&c).unwrap();
        let first = digest_of(&layer_tar(&trace_bytes(1)));
        let second = digest_of(&layer_tar(&trace_bytes(2)));
        let a = attach(&manifest, &config, &first).unwrap();
        let b = attach(&a.manifest, &a.config, &second).unwrap();
        assert_eq!(b.replaced, Some(first.clone()));
        let Manifest::Image(m) = Manifest::parse(Some(DOCKER_MANIFEST), &b.manifest).unwrap()
        else {
            panic!("not an image manifest");
        };
        assert_eq!(m.layers.len(), 3);
        assert_eq!(m.overlaybd().unwrap().acceleration.unwrap(), {
            crate::registry::LayerRef {
                digest: second.digest.clone(),
                size: second.size,
            }
        });
        assert_eq!(
            m.layers[2].annotations[ANNOTATION_FS_TYPE], "ext4",
            "still copied from the top data layer"
        );
        let c: Value = serde_json::from_slice(&b.config).unwrap();
        assert_eq!(
            c["rootfs"]["diff_ids"],
            json!([blob(1, 0).digest, blob(2, 0).digest, second.digest])
        );
        assert_eq!(
            c["history"],
            json!([
                {"created_by": "Acceleration Layer"},
                {"created_by": "build"},
                {"created_by": "build 2"}
            ])
        );
        // Attaching the same trace again gives the same documents (same digests).
        assert_eq!(
            attach(&b.manifest, &b.config, &second).unwrap().manifest,
            b.manifest
        );
        // The decoded trace of the blob is what was attached.
        assert_eq!(
            decode(&extract_trace(&layer_tar(&trace_bytes(2))).unwrap()).unwrap()[0].offset,
            8192
        );
    }

    #[test]
    fn attach_refuses_what_is_not_an_overlaybd_image() {
        let (manifest, config) = image(ManifestKind::Oci);
        let layer = blob(7, 2048);
        let index = br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}"#;
        assert!(matches!(
            attach(index, &config, &layer),
            Err(AttachError::Manifest(_))
        ));
        let mut plain: Value = serde_json::from_slice(&manifest).unwrap();
        for l in plain["layers"].as_array_mut().unwrap() {
            l["annotations"] = json!({});
        }
        let e = attach(&serde_json::to_vec(&plain).unwrap(), &config, &layer).unwrap_err();
        assert!(e.to_string().contains("not an overlaybd image"), "{e}");
        assert!(matches!(
            attach(&manifest, b"[1, 2]", &layer),
            Err(AttachError::Config(_))
        ));
        assert!(matches!(
            attach(&manifest, br#"{"rootfs": {}}"#, &layer),
            Err(AttachError::Config(_))
        ));
        // A config whose diff_ids do not end with the acceleration layer being replaced.
        let a = attach(&manifest, &config, &layer).unwrap();
        let mut c: Value = serde_json::from_slice(&a.config).unwrap();
        c["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
        let e = attach(&a.manifest, &serde_json::to_vec(&c).unwrap(), &layer).unwrap_err();
        assert!(e.to_string().contains("diff_ids"), "{e}");
    }
}

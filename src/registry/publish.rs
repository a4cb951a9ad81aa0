//! Publishing a prefetch trace as an image's acceleration layer (spec `trace-prefetch.md` §7):
//! the I/O around [`super::acceleration`], shared by `overlaybd-target trace attach` and the
//! daemon's `POST …/trace/publish` (a learned trace, published with the daemon's registry
//! credentials).
//!
//! Steps, in order, nothing pushed before every check passed:
//! 1. the image manifest of `source` for the platform is fetched; a multi-platform index may
//!    only be published to another tag (the new manifest must not replace the index);
//! 2. every read record must name a data layer the image has (a trace of another image is
//!    refused);
//! 3. the config blob is fetched (at most [`MAX_CONFIG`], checked against its digest);
//! 4. the layer tar, config and manifest are built ([`super::acceleration::attach`]: an old
//!    acceleration layer is replaced);
//! 5. the layers, the trace layer and the config are pushed to `dest` (mounted from
//!    `source`'s repository when it is another one in the same registry), then the manifest.

use std::sync::Arc;

use bytes::Bytes;

use super::acceleration;
use super::compose::{BlobRef, ManifestKind};
use super::manifest::{Descriptor, DOCKER_MANIFEST};
use super::push::{push_manifest, PushProgress, PushedBlob};
use super::{fetch_image_manifest, ImageReference, Platform};
use crate::cache::http::RegistryClient;
use crate::prefetch::trace::{self, Op, TraceRecord};
use crate::source::LayerSource;

/// Largest image config blob read (configs with a long history are a few hundred KiB).
pub const MAX_CONFIG: u64 = 16 << 20;

/// Why a trace was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request cannot be carried out as asked (names the fix).
    #[error("{0}")]
    Refused(String),
    /// The registry failed or sent something unusable.
    #[error("{0}")]
    Registry(String),
}

/// What [`publish`] pushed.
#[derive(Debug)]
pub struct Published {
    /// The reference pushed, pinned to the new manifest's digest.
    pub pinned: ImageReference,
    /// The trace layer.
    pub layer: BlobRef,
    /// The acceleration layer it replaced, if the image had one.
    pub replaced: Option<BlobRef>,
    /// The new config blob.
    pub config: BlobRef,
    /// What happened to each blob (present, mounted or uploaded).
    pub blobs: Vec<PushedBlob>,
}

/// Where to publish: `to`, else `source`'s tag. Pushing creates a new manifest, so a
/// destination naming a digest could only be refused by the registry.
pub fn destination(
    source: &ImageReference,
    to: Option<ImageReference>,
) -> Result<ImageReference, PublishError> {
    let dest = match to {
        Some(dest) => dest,
        None if source.tag.is_none() && source.digest.is_some() => {
            return Err(PublishError::Refused(format!(
                "{source} names no tag to update; give another reference to push to (--to HOST/REPOSITORY:TAG)"
            )))
        }
        None => ImageReference {
            digest: None,
            ..source.clone()
        },
    };
    if dest.digest.is_some() {
        return Err(PublishError::Refused(format!(
            "{dest}: the new manifest has a new digest; name a tag, not a digest"
        )));
    }
    Ok(dest)
}

/// Publishes `records` as the acceleration layer of `source` (its `platform` manifest) at
/// `dest` (see [`destination`]); `to_given` says whether `dest` was asked for rather than
/// defaulted (an index may only be published to a tag asked for). Steps in the module doc.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    client: &Arc<RegistryClient>,
    records: &[TraceRecord],
    source: &ImageReference,
    dest: &ImageReference,
    to_given: bool,
    platform: &Platform,
    plain_http: &[String],
    progress: PushProgress,
) -> Result<Published, PublishError> {
    let registry = |e: &dyn std::fmt::Display| PublishError::Registry(e.to_string());
    let fetched = fetch_image_manifest(client, source, platform, plain_http)
        .await
        .map_err(|e| registry(&e))?;
    if fetched.via_index && !to_given {
        return Err(PublishError::Refused(format!(
            "{source} is a multi-platform index: publishing makes a new image of the {platform} \
             manifest alone, which must not replace the index; give another tag to push to \
             (--to HOST/REPOSITORY:TAG)"
        )));
    }
    let manifest = &fetched.manifest;
    let image = manifest
        .overlaybd()
        .map_err(|e| PublishError::Refused(format!("{source}: {e}")))?;
    if let Some(r) = records
        .iter()
        .find(|r| r.op == Op::Read && r.layer as usize >= image.layers.len())
    {
        return Err(PublishError::Refused(format!(
            "a record reads layer {}, but {source} has {} data layer(s): a trace of another image?",
            r.layer,
            image.layers.len()
        )));
    }
    let source_blobs = source.repo_blob_url(plain_http);
    let config = fetch_small_blob(client, &source_blobs, &manifest.config, MAX_CONFIG).await?;

    // The trace as validated, re-encoded: the same bytes for a valid trace whose padding is
    // zero, and zeroed padding otherwise (writers should zero it, §3.3).
    let layer_tar = Bytes::from(acceleration::layer_tar(&trace::encode(records)));
    let layer = super::push::BlobToPush::memory(layer_tar);
    let layer_ref: BlobRef = layer.blob().clone();
    let attached = acceleration::attach(&fetched.raw.body, &config, &layer_ref)
        .map_err(|e| PublishError::Refused(format!("{source}: {e}")))?;
    let kind = if manifest.media_type == DOCKER_MANIFEST {
        ManifestKind::Docker
    } else {
        ManifestKind::Oci
    };
    let mut blobs: Vec<super::push::BlobToPush> = image
        .layers
        .iter()
        .map(|l| {
            let blob = BlobRef {
                digest: l.digest.clone(),
                size: l.size,
            };
            super::push::BlobToPush::from_registry(&source_blobs, blob)
        })
        .collect();
    blobs.push(layer);
    blobs.push(super::push::BlobToPush::memory(Bytes::from(
        attached.config,
    )));
    let (pinned, pushed) = push_manifest(
        client,
        dest,
        plain_http,
        blobs,
        kind,
        attached.manifest,
        progress,
    )
    .await
    .map_err(|e| registry(&e))?;
    Ok(Published {
        pinned,
        layer: layer_ref,
        replaced: attached.replaced,
        config: attached.config_blob,
        blobs: pushed,
    })
}

/// Fetches the blob `descriptor` of the repository `repo_blob_url`, at most `max` bytes,
/// checked against its digest.
async fn fetch_small_blob(
    client: &Arc<RegistryClient>,
    repo_blob_url: &str,
    descriptor: &Descriptor,
    max: u64,
) -> Result<Bytes, PublishError> {
    let what = format!("blob {}", descriptor.digest);
    if descriptor.size > max {
        return Err(PublishError::Registry(format!(
            "{what}: {} bytes, more than the {max} accepted",
            descriptor.size
        )));
    }
    let source = client
        .blob_of_size(repo_blob_url, &descriptor.digest, descriptor.size, None)
        .map_err(|e| PublishError::Registry(format!("{what}: {e}")))?;
    // At most `max` (16 MiB), so the cast is lossless.
    let bytes = source
        .read_exact_at(0, descriptor.size as usize)
        .await
        .map_err(|e| PublishError::Registry(format!("{what}: {e}")))?;
    let digest = crate::cache::http::push::sha256_digest(&bytes);
    if digest != descriptor.digest {
        return Err(PublishError::Registry(format!(
            "{what}: the registry sent bytes whose digest is {digest}"
        )));
    }
    Ok(bytes)
}

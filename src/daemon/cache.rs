//! The cache operations of the management API (`GET /v1/cache`, purge, pins, warm) on the
//! daemon's shared registry caches: the model's shapes in, the cache's operations out.
//!
//! The cache folder is opened by the first of these calls if no image with registry layers
//! has been yet, so `ctl cache` works on a freshly started daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::control::ControlError;
use super::model::{CacheReport, CachedLayer, WarmReport, WarmRequest, WarmedLayer};
use crate::cache::disk::LayerUsage;
use crate::cache::key::BlobId;
use crate::cache::RemoteLayers;
use crate::config::backing::ImageOpener;
use crate::overlaybd::config::LayerLocation;
use crate::overlaybd::{ImageConfig, RemoteImages};
use crate::registry::{ImageReference, Platform};

/// The shared remote caches, opened if needed.
fn remote(images: &ImageOpener) -> Result<Arc<RemoteImages>, ControlError> {
    images
        .remote_images()
        .map_err(|e| ControlError::Unavailable(format!("the layer cache cannot be opened: {e}")))
}

/// A digest from a request, as the cache names it; `Invalid` for anything else.
fn blob_id(digest: &str) -> Result<BlobId, ControlError> {
    match BlobId::parse(digest) {
        Some(_) => Ok(BlobId::from_digest(digest)),
        None => Err(ControlError::Invalid(format!(
            "{digest:?} is not a layer digest (algorithm:hex, e.g. sha256:…)"
        ))),
    }
}

/// The API's view of a layer: what the disk tier holds of it, `memory_bytes` in memory.
fn layer_info(layers: &RemoteLayers, usage: LayerUsage, memory_bytes: u64) -> CachedLayer {
    CachedLayer {
        size_bytes: layers.known_size(&usage.blob),
        memory_bytes,
        digest: usage.blob.as_str().to_string(),
        units: usage.units,
        bytes: usage.bytes,
        pinned: usage.pinned,
    }
}

/// `GET /v1/cache`.
pub(super) fn report(images: &ImageOpener) -> Result<CacheReport, ControlError> {
    let remote = remote(images)?;
    let layers = remote.layers();
    let tiers = layers.tiers();
    let cache = layers.settings().cache();
    let memory = tiers.memory_by_layer();
    Ok(CacheReport {
        folder: cache.dir.display().to_string(),
        unit_bytes: tiers.unit_size(),
        memory_bytes: tiers.memory_used(),
        memory_capacity_bytes: cache.memory_bytes,
        disk_bytes: tiers.disk_used(),
        disk_capacity_bytes: cache.disk_bytes,
        min_free_bytes: cache.min_free_bytes,
        layers: tiers
            .layers()
            .into_iter()
            .map(|usage| {
                let in_memory = memory.get(&usage.blob).copied().unwrap_or(0);
                layer_info(layers, usage, in_memory)
            })
            .collect(),
    })
}

/// Purges one layer, or every unpinned one (see [`super::control::ControlPlane::purge_cache`]).
pub(super) async fn purge(
    images: &ImageOpener,
    digest: Option<&str>,
    force: bool,
) -> Result<Vec<CachedLayer>, ControlError> {
    let remote = remote(images)?;
    let layers = remote.layers();
    let tiers = layers.tiers();
    let targets: Vec<BlobId> = match digest {
        Some(digest) => {
            let blob = blob_id(digest)?;
            if tiers.layer(&blob).pinned && !force {
                return Err(ControlError::Conflict(format!(
                    "layer {digest} is pinned: unpin it first, or force the purge (its pin \
                     stays)"
                )));
            }
            vec![blob]
        }
        None => tiers
            .layers()
            .into_iter()
            .filter(|l| !l.pinned)
            .map(|l| l.blob)
            .collect(),
    };
    let memory = tiers.memory_by_layer();
    let mut purged = Vec::new();
    for blob in targets {
        let in_memory = memory.get(&blob).copied().unwrap_or(0);
        let gone = tiers.purge(&blob).await;
        tracing::info!(
            digest = %blob.as_str(),
            units = gone.units,
            bytes = gone.bytes,
            memory_bytes = in_memory,
            "purged a layer from the cache"
        );
        purged.push(layer_info(layers, gone, in_memory));
    }
    Ok(purged)
}

/// Pins or unpins a layer.
pub(super) async fn pin(
    images: &ImageOpener,
    digest: &str,
    pinned: bool,
) -> Result<CachedLayer, ControlError> {
    let blob = blob_id(digest)?;
    let remote = remote(images)?;
    let layers = remote.layers();
    set_pinned(layers, &blob, pinned).await?;
    let in_memory = layers
        .tiers()
        .memory_by_layer()
        .get(&blob)
        .copied()
        .unwrap_or(0);
    Ok(layer_info(layers, layers.tiers().layer(&blob), in_memory))
}

async fn set_pinned(
    layers: &RemoteLayers,
    blob: &BlobId,
    pinned: bool,
) -> Result<(), ControlError> {
    match layers.tiers().set_pinned(blob, pinned).await {
        Ok(changed) => {
            if changed {
                tracing::info!(digest = %blob.as_str(), pinned, "layer pin changed");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            Err(ControlError::Conflict(e.to_string()))
        }
        Err(e) => Err(ControlError::Unavailable(format!(
            "cannot save the pin list: {e}"
        ))),
    }
}

/// The image a warm names: its layer config and the name to report it by.
async fn image_of(
    layers: &RemoteLayers,
    image: &str,
) -> Result<(ImageConfig, String), ControlError> {
    if image.starts_with('/') {
        let path = Path::new(image).to_path_buf();
        let load = path.clone();
        let config = crate::sys::run_blocking(move || ImageConfig::load(&load))
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?
            .map_err(|e| ControlError::Invalid(format!("{}: {e}", path.display())))?;
        return Ok((config, image.to_string()));
    }
    let reference = ImageReference::parse(image).map_err(|e| {
        ControlError::Invalid(format!(
            "{image:?} is neither an absolute config.v1.json path nor an image reference: {e}"
        ))
    })?;
    let resolved = crate::registry::resolve(
        layers.client(),
        &reference,
        &Platform::host(),
        &layers.settings().plain_http,
    )
    .await
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => {
            ControlError::Invalid(format!("{reference}: {e}"))
        }
        _ => ControlError::Unavailable(format!("{reference}: {e}")),
    })?;
    Ok((resolved.image_config(), resolved.pinned.to_string()))
}

/// `POST /v1/cache/warm`.
pub(super) async fn warm(
    images: &ImageOpener,
    request: WarmRequest,
) -> Result<WarmReport, ControlError> {
    let started = Instant::now();
    let remote = remote(images)?;
    let layers = remote.layers();
    let (config, name) = image_of(layers, &request.image).await?;
    let mut report = WarmReport {
        image: name.clone(),
        layers: Vec::new(),
        local_layers: 0,
        seconds: 0.0,
    };
    for index in 0..config.lowers.len() {
        let location = config
            .locate(index, &name)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let (digest, size) = match &location {
            LayerLocation::Local(_) => {
                report.local_layers += 1;
                continue;
            }
            LayerLocation::Remote { digest, size, .. } => (digest.as_str(), *size),
        };
        if request.pin {
            set_pinned(layers, &blob_id(digest)?, true).await?;
        }
        let layer = crate::cache::RemoteLayer {
            size: Some(size).filter(|&s| s != 0),
            ..crate::cache::RemoteLayer::new(&config.repo_blob_url, digest)
        };
        let warmed = crate::cache::warm::warm_layer(layers, &layer)
            .await
            .map_err(|e| {
                tracing::warn!(image = %name, digest, error = %e, "warming a layer failed");
                ControlError::Unavailable(format!("warming layer {digest}: {e}"))
            })?;
        tracing::info!(
            image = %name,
            digest,
            units_before = warmed.units_before,
            units_after = warmed.units_after,
            units_total = warmed.units_total,
            "layer warmed"
        );
        report.layers.push(WarmedLayer {
            pinned: layers.tiers().layer(&blob_id(digest)?).pinned,
            digest: warmed.digest,
            size_bytes: warmed.size,
            units_before: warmed.units_before,
            units_after: warmed.units_after,
            units_total: warmed.units_total,
            cached_locally: warmed.cached_locally,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

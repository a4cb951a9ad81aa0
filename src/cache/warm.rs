//! Warming: every byte of a registry layer fetched into the cache ahead of use, so a host's
//! first start reads nothing from the network (`overlaybd-target warm`, `POST /v1/cache/warm`).
//!
//! A layer is read through the same path a LUN reads it ([`RemoteLayers::open`], then the
//! cache tiers), in pieces of a few refill units, `download.parallel` pieces at a time: what is
//! cached already costs a local read, what is missing is fetched (adjacent units in one
//! request) and stored in the disk tier. Nothing is downloaded in the background meanwhile:
//! warming is the download. With P2P enabled (and not `p2pConfig.cacheLocally`) reads go
//! through the proxy and bypass the local cache, as every P2P read then does, so warming fills
//! the proxy's cache, not ours; the result says so.

use std::io;

use futures_util::{StreamExt, TryStreamExt};

use super::key::BlobId;
use super::remote::{RemoteLayer, RemoteLayers};
use super::settings::DownloadConfig;

/// The bytes each read of a warm asks for: enough units that adjacent missing ones share a
/// request, few enough that `download.parallel` of them stay small in memory.
const PIECE: u64 = 4 << 20;

/// What warming one layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmedLayer {
    /// The layer's digest.
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// Refill units the disk tier held before.
    pub units_before: u64,
    /// Refill units it holds now.
    pub units_after: u64,
    /// Refill units the whole blob spans.
    pub units_total: u64,
    /// False when the reads went through the P2P proxy, which bypasses the local cache.
    pub cached_locally: bool,
}

/// Reads every byte of `layer` through the cache, so its units are stored (see the module
/// doc). Fails on the first read that fails (the registry's error).
pub async fn warm_layer(layers: &RemoteLayers, layer: &RemoteLayer<'_>) -> io::Result<WarmedLayer> {
    // Warming is the download: no background copy of the same blob beside it.
    let no_download = DownloadConfig {
        enable: false,
        ..layers.settings().download.clone()
    };
    let layer = RemoteLayer {
        dir: None,
        download: Some(&no_download),
        ..*layer
    };
    let tiers = layers.tiers();
    let p2p = &layers.settings().p2p_config;
    let blob = BlobId::from_digest(layer.digest);
    let units_before = tiers.layer(&blob).units;
    let source = layers.open(&layer).await?;
    let size = source.size();
    let unit = tiers.unit_size();
    let piece = (PIECE / unit).max(1) * unit;
    let parallel = usize::try_from(layers.settings().download.parallel)
        .unwrap_or(1)
        .max(1);
    let offsets = (0..size.div_ceil(piece)).map(|i| i * piece);
    futures_util::stream::iter(offsets)
        .map(|offset| {
            let source = &source;
            async move {
                let len = usize::try_from(piece.min(size - offset)).unwrap_or(usize::MAX);
                source.read_exact_at(offset, len).await.map(drop)
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await
        .map_err(io::Error::from)?;
    Ok(WarmedLayer {
        digest: layer.digest.to_string(),
        size,
        units_before,
        units_after: tiers.layer(&blob).units,
        units_total: size.div_ceil(unit),
        cached_locally: !p2p.enable || p2p.cache_locally,
    })
}

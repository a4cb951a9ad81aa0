//! Opening remote layers: the one place that combines the registry client, the cache tiers,
//! the P2P proxy and background download according to the daemon settings. The image side
//! (LSMT) calls [`RemoteLayers::open`] for a layer it cannot find locally.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::download::{spawn_background_download, DownloadJob};
use super::http::{RegistryClient, Route, RouteKind, RoutedBlob};
use super::key::BlobId;
use super::read_path::{CacheTiers, CachedSource};
use super::settings::{DaemonSettings, DownloadConfig};
use crate::source::LayerSource;

/// A remote layer as a layer config (`config.v1.json`) describes it.
#[derive(Debug, Clone, Copy)]
pub struct RemoteLayer<'a> {
    /// `repoBlobUrl` of the image.
    pub repo_blob_url: &'a str,
    /// The layer's `digest`.
    pub digest: &'a str,
    /// The layer's `size`, when given (checked against the registry's answer).
    pub size: Option<u64>,
    /// The layer's `dir`, where background download stores the blob.
    pub dir: Option<&'a Path>,
    /// The device's `download` settings; the daemon's when `None`.
    pub download: Option<&'a DownloadConfig>,
}

impl<'a> RemoteLayer<'a> {
    /// The layer `digest` under `repo_blob_url` with no size to check, no `dir` (so no
    /// background download) and the daemon's download settings.
    pub fn new(repo_blob_url: &'a str, digest: &'a str) -> Self {
        RemoteLayer {
            repo_blob_url,
            digest,
            size: None,
            dir: None,
            download: None,
        }
    }
}

/// Opens remote layers with shared client and cache tiers.
pub struct RemoteLayers {
    settings: DaemonSettings,
    client: Arc<RegistryClient>,
    tiers: Arc<CacheTiers>,
    /// One background download at a time, as in overlaybd.
    download_queue: Arc<tokio::sync::Semaphore>,
    /// The size of every blob opened so far, for reports of what the cache holds.
    sizes: parking_lot::Mutex<BTreeMap<BlobId, u64>>,
}

impl RemoteLayers {
    /// Builds the client and opens the cache tiers (creating the cache folder) from settings.
    pub fn new(settings: DaemonSettings) -> io::Result<Self> {
        let client = RegistryClient::from_settings(&settings)?;
        let tiers = CacheTiers::from_settings(&settings.cache())?;
        Ok(Self::with_parts(settings, client, tiers))
    }

    /// Uses an existing client and tiers (tests, or several settings sharing one cache).
    pub fn with_parts(
        settings: DaemonSettings,
        client: Arc<RegistryClient>,
        tiers: Arc<CacheTiers>,
    ) -> Self {
        Self {
            settings,
            client,
            tiers,
            download_queue: Arc::new(tokio::sync::Semaphore::new(1)),
            sizes: Default::default(),
        }
    }

    /// The settings the layers are opened with.
    pub fn settings(&self) -> &DaemonSettings {
        &self.settings
    }

    /// The size of `blob`, when a layer of it was opened since the start.
    pub fn known_size(&self, blob: &BlobId) -> Option<u64> {
        self.sizes.lock().get(blob).copied()
    }

    /// The shared cache tiers.
    pub fn tiers(&self) -> &Arc<CacheTiers> {
        &self.tiers
    }

    /// The registry client (its credentials and tokens), for manifest requests.
    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    /// Opens a remote layer, read through its routes ([`RoutedBlob`]): the P2P proxy when
    /// enabled, the registry's mirrors, then the registry, falling over per read. With P2P
    /// the local cache is bypassed (the proxy caches, as in overlaybd) unless
    /// `p2pConfig.cacheLocally`; otherwise reads go
    /// through the cache tiers, and, when download is enabled, the blob is fully downloaded
    /// in the background (into the layer's `dir`, or the cache folder without one). The size
    /// comes from the first route that answers; authorization and size errors surface here.
    pub async fn open(&self, layer: &RemoteLayer<'_>) -> io::Result<Arc<dyn LayerSource>> {
        let p2p = &self.settings.p2p_config;
        let mut routes: Vec<(RouteKind, String, Option<&str>)> = Vec::new();
        if p2p.enable {
            let prefix = Some(p2p.address.as_str());
            routes.push((RouteKind::P2p, layer.repo_blob_url.to_string(), prefix));
        }
        for mirror in self.settings.mirror_urls(layer.repo_blob_url) {
            routes.push((RouteKind::Mirror, mirror, None));
        }
        routes.push((RouteKind::Origin, layer.repo_blob_url.to_string(), None));
        let (mut size, mut opened) = (None, None);
        let mut errors = Vec::new();
        for (i, (kind, url, prefix)) in routes.iter().enumerate() {
            match self.client.open_blob(url, layer.digest, *prefix).await {
                Ok(blob) => {
                    size = Some(blob.known_size());
                    opened = Some((i, blob));
                    break;
                }
                Err(e) if *kind == RouteKind::Origin => errors.push(e),
                Err(e) => {
                    tracing::warn!(route = ?kind, url, error = %e, "route failed at open; trying the next one");
                }
            }
        }
        let size = match (size, errors.pop()) {
            (Some(size), _) => size,
            // The registry is down or failing, but the config tells the size: open anyway, so
            // what the disk cache holds stays readable (a daemon restarted during an outage);
            // reads of uncached bytes wait or fail as the LUN's policy says.
            (None, Some(e)) => match layer.size.filter(|s| *s != 0 && registry_unavailable(&e)) {
                Some(size) => {
                    tracing::warn!(error = %e, digest = layer.digest, "registry unavailable; serving from the cache");
                    size
                }
                None => return Err(e),
            },
            // Not reached: the registry is always the last route, and its failure is kept.
            (None, None) => return Err(io::Error::other("no route to the blob answered")),
        };
        if let Some(expected) = layer.size.filter(|s| *s != 0) {
            if expected != size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}/{}: layer config says {expected} bytes, registry says {size}",
                        layer.repo_blob_url.trim_end_matches('/'),
                        layer.digest
                    ),
                ));
            }
        }
        let routes = routes
            .iter()
            .enumerate()
            .map(|(i, (kind, url, prefix))| {
                // The route that answered at open keeps its resolved authorization.
                let blob = match opened.take_if(|(at, _)| *at == i) {
                    Some((_, blob)) => blob,
                    None => self.client.blob_of_size(url, layer.digest, size, *prefix)?,
                };
                Ok(Route::new(*kind, blob))
            })
            .collect::<io::Result<Vec<_>>>()?;
        self.sizes
            .lock()
            .insert(BlobId::from_digest(layer.digest), size);
        let backoff = Duration::from_millis(self.settings.http_config.failover_backoff_ms);
        let blob: Arc<dyn LayerSource> = Arc::new(RoutedBlob::new(routes, size, backoff));
        if p2p.enable && !p2p.cache_locally {
            return Ok(blob);
        }
        let cached = CachedSource::shared(blob, layer.digest, Arc::clone(&self.tiers));
        let download = layer.download.unwrap_or(&self.settings.download);
        let job = match (download.enable, layer.dir) {
            (false, _) => None,
            (true, Some(dir)) => Some(DownloadJob::for_layer_dir(dir, layer.digest, download)),
            (true, None) => {
                let cache_dir = self.settings.cache().dir;
                let job = DownloadJob::in_cache_folder(&cache_dir, layer.digest, download);
                if job.is_none() {
                    tracing::warn!(
                        digest = layer.digest,
                        "no background download: the digest is not algorithm:hex"
                    );
                }
                job
            }
        };
        if let Some(job) = job {
            // Detached: the task holds a weak reference and ends when the layer is closed.
            drop(spawn_background_download(
                &cached,
                job,
                Arc::clone(&self.download_queue),
            ));
        }
        Ok(cached)
    }
}

/// Whether an open failed because the registry could not be reached or answered with a
/// server error, rather than because it denied access, lacks the blob or sent nonsense.
fn registry_unavailable(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
    )
}

//! Opening remote layers: the one place that combines the registry client, the cache tiers,
//! the P2P proxy and background download according to the daemon settings. The image side
//! (LSMT) calls [`RemoteLayers::open`] for a layer it cannot find locally.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::download::{spawn_background_download, DownloadJob};
use super::http::RegistryClient;
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
}

/// How long the P2P proxy's TCP port may take to accept before we read directly.
const P2P_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
        }
    }

    /// The shared cache tiers.
    pub fn tiers(&self) -> &Arc<CacheTiers> {
        &self.tiers
    }

    /// The registry client (its credentials and tokens), for manifest requests.
    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    /// Opens a remote layer. With a reachable P2P proxy the blob is read through it and the
    /// local cache is bypassed (the proxy caches); otherwise it is read through the cache tiers,
    /// and, when download is enabled, fully downloaded in the background (into the layer's
    /// `dir`, or the cache folder without one). Authorization and size errors surface here, at
    /// open time.
    pub async fn open(&self, layer: &RemoteLayer<'_>) -> io::Result<Arc<dyn LayerSource>> {
        let p2p = &self.settings.p2p_config;
        let prefix = if p2p.enable && proxy_reachable(&p2p.address).await {
            Some(p2p.address.as_str())
        } else {
            None
        };
        let blob = match self
            .client
            .open_blob(layer.repo_blob_url, layer.digest, prefix)
            .await
        {
            Ok(blob) => blob,
            // The registry is down or failing, but the config tells the size: open anyway, so
            // what the disk cache holds stays readable (a daemon restarted during an outage);
            // reads of uncached bytes fail cleanly until the registry is back.
            Err(e) => match layer.size.filter(|s| *s != 0 && registry_unavailable(&e)) {
                Some(size) => {
                    tracing::warn!(error = %e, digest = layer.digest, "registry unavailable; serving from the cache");
                    self.client
                        .blob_of_size(layer.repo_blob_url, layer.digest, size, prefix)?
                }
                None => return Err(e),
            },
        };
        if let Some(expected) = layer.size.filter(|s| *s != 0) {
            if expected != blob.size() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: layer config says {expected} bytes, registry says {}",
                        blob.describe(),
                        blob.size()
                    ),
                ));
            }
        }
        if prefix.is_some() {
            return Ok(Arc::new(blob));
        }
        let cached = Arc::new(CachedSource::new(
            Arc::new(blob),
            layer.digest,
            Arc::clone(&self.tiers),
        ));
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

/// Whether a TCP connection to the proxy's host and port succeeds (overlaybd's check at
/// device-open time).
async fn proxy_reachable(address: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(address) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            P2P_PROBE_TIMEOUT,
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

//! Serving an image config (`config.v1.json`) as a LUN: the entry point of the CLI's
//! `--lun [ro:]image:/path/config.v1.json`.
//!
//! Lower layers resolve as the snapshotter lays them out (spec `image-config.md` §2.2):
//! `file`, then `dir/overlaybd.commit`, `dir/.commit`, `dir/overlaybd.sealed`, then the
//! registry blob `repoBlobUrl/digest`, read through the daemon's cache tiers. All LUNs of a
//! process should share one [`RemoteImages`], so they share the cache folder (one disk tier per
//! folder), the single-flight table and the background download queue.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use overlaybd_target::cache::DaemonSettings;
//! use overlaybd_target::overlaybd::RemoteImages;
//!
//! // overlaybd.json, then the command line's --cache-dir / --cache-size (bytes).
//! let mut settings = DaemonSettings::from_file(Path::new("/etc/overlaybd/overlaybd.json"))?;
//! settings.override_cache(Some(Path::new("/var/cache/obd")), Some(8 << 30));
//! let images = RemoteImages::new(settings)?;
//! let config = Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd/snapshots/12/block/config.v1.json");
//! let writable = images.open(config, false).await?; // image:PATH
//! let read_only = images.open(config, true).await?; // ro:image:PATH
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use super::error::{LsmtError, LsmtResult};
use super::image::Image;
use crate::block::{BlockDevice, ReadOnlyDevice};
use crate::cache::{DaemonSettings, RemoteLayers};

/// Opens image configs as block devices, with one set of remote-layer caches for all of them.
pub struct RemoteImages {
    layers: RemoteLayers,
}

impl RemoteImages {
    /// Builds the registry client and opens the cache folder named by `settings` (after any
    /// command-line override, see [`DaemonSettings::override_cache`]).
    pub fn new(settings: DaemonSettings) -> LsmtResult<Self> {
        let dir = settings.cache().dir.display().to_string();
        let layers = RemoteLayers::new(settings)
            .map_err(|e| LsmtError::io(format!("cache folder {dir}"), e))?;
        Ok(Self { layers })
    }

    /// The remote-layer machinery (cache statistics, tiers).
    pub fn layers(&self) -> &RemoteLayers {
        &self.layers
    }

    /// Opens the image `config_path` describes, writing its `resultFile` like overlaybd. The
    /// device is writable when the config has an `upper` and `read_only` is false; with
    /// `read_only` every write is refused even if it has one.
    pub async fn open(
        &self,
        config_path: &Path,
        read_only: bool,
    ) -> LsmtResult<Arc<dyn BlockDevice>> {
        let image = Image::open_config_file(config_path, &self.layers).await?;
        Ok(if read_only && !image.read_only() {
            Arc::new(ReadOnlyDevice::new(Arc::new(image)))
        } else {
            Arc::new(image)
        })
    }
}

/// Opens one image config as a writable-if-possible block device with caches of its own.
/// For a single LUN; several LUNs must share one [`RemoteImages`] instead, since two cache
/// instances over one folder would each enforce the size limit on their own.
pub async fn open_image_lun(
    config_path: &Path,
    settings: &DaemonSettings,
) -> LsmtResult<Arc<dyn BlockDevice>> {
    RemoteImages::new(settings.clone())?
        .open(config_path, false)
        .await
}

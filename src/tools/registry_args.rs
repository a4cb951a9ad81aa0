//! The options `pull` and `push` share: which platform, which registries speak plain HTTP,
//! and the overlaybd.json whose credentials, certificates and HTTP settings to use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::ToolError;
use crate::cache::http::RegistryClient;
use crate::cache::DaemonSettings;
use crate::registry::{ImageReference, Platform};

/// Registry options of the image-reference tools.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Platform to pick from a multi-platform index, or to write in a pushed image's config
    /// (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// A registry spoken to over plain HTTP (repeatable); loopback registries always are.
    #[arg(long = "plain-http", value_name = "HOST[:PORT]")]
    pub plain_http: Vec<String>,
    /// overlaybd.json with the credentials, certificates and HTTP settings to use
    /// (credentials default to /opt/overlaybd/cred.json and docker's config.json).
    #[arg(long, value_name = "FILE")]
    pub overlaybd_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The platform asked for, or this machine's.
    pub fn platform(&self) -> Result<Platform, ToolError> {
        match &self.platform {
            Some(text) => {
                Platform::parse(text).map_err(|e| ToolError::Usage(format!("--platform: {e}")))
            }
            None => Ok(Platform::host()),
        }
    }

    /// The settings of `--overlaybd-config` (or the defaults).
    pub fn settings(&self) -> Result<DaemonSettings, ToolError> {
        load_settings(self.overlaybd_config.as_deref())
    }

    /// A registry client with the settings of `--overlaybd-config` (or the defaults).
    pub fn client(&self) -> Result<Arc<RegistryClient>, ToolError> {
        RegistryClient::from_settings(&self.settings()?)
            .map_err(|e| ToolError::Usage(e.to_string()))
    }
}

/// Where a tool that reads registry layers keeps them, as the target's own options.
#[derive(Debug, Default, Args)]
pub struct CacheArgs {
    /// overlaybd.json with the credentials, HTTP and cache settings for registry layers.
    #[arg(long = "overlaybd-config", value_name = "FILE")]
    pub overlaybd_config: Option<PathBuf>,
    /// The layer cache folder (default: overlaybd.json's, else /opt/overlaybd/registry_cache).
    #[arg(long = "cache-dir", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    /// The daemon settings these name.
    pub fn settings(&self) -> Result<DaemonSettings, ToolError> {
        let mut settings = load_settings(self.overlaybd_config.as_deref())?;
        settings.override_cache(self.cache_dir.as_deref(), None);
        Ok(settings)
    }
}

/// overlaybd.json at `path`, or the defaults.
fn load_settings(path: Option<&Path>) -> Result<DaemonSettings, ToolError> {
    match path {
        Some(path) => DaemonSettings::from_file(path).map_err(|e| ToolError::Usage(e.to_string())),
        None => Ok(DaemonSettings::default()),
    }
}

/// Parses an image reference argument.
pub fn reference(text: &str) -> Result<ImageReference, ToolError> {
    ImageReference::parse(text).map_err(|e| ToolError::Usage(e.to_string()))
}

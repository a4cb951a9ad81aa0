//! `pull`: the `config.v1.json` of an image in a registry, by reference.
//!
//! ```text
//! overlaybd-target pull [--platform OS/ARCH[/VARIANT]] [--plain-http HOST[:PORT]]...
//!                       [--overlaybd-config FILE] [-f] REFERENCE DIR
//! ```
//!
//! The manifest is resolved once (an index by platform, default this machine's) and the config
//! names the layers by digest and size with `repoBlobUrl`, so `--lun image:DIR/config.v1.json`
//! reads them lazily through the cache. Credentials come from overlaybd.json's
//! `credentialConfig` (default `/opt/overlaybd/cred.json`) and docker's `config.json`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::ToolError;
use crate::cache::http::RegistryClient;
use crate::cache::DaemonSettings;
use crate::registry::{resolve, ImageReference, Platform};

/// Arguments of `pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pick from a multi-platform index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// A registry spoken to over plain HTTP (repeatable); loopback registries always are.
    #[arg(long = "plain-http", value_name = "HOST[:PORT]")]
    pub plain_http: Vec<String>,
    /// overlaybd.json with the credentials, certificates and HTTP settings to use.
    #[arg(long, value_name = "FILE")]
    pub overlaybd_config: Option<PathBuf>,
    /// Replace an existing DIR/config.v1.json.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// The image: HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].
    pub reference: String,
    /// The folder that gets config.v1.json (created if missing).
    pub dir: PathBuf,
}

/// Runs `pull`.
pub async fn run(a: PullArgs) -> Result<(), ToolError> {
    let reference =
        ImageReference::parse(&a.reference).map_err(|e| ToolError::Usage(e.to_string()))?;
    let platform = match &a.platform {
        Some(text) => {
            Platform::parse(text).map_err(|e| ToolError::Usage(format!("--platform: {e}")))?
        }
        None => Platform::host(),
    };
    let settings = match &a.overlaybd_config {
        Some(path) => {
            DaemonSettings::from_file(path).map_err(|e| ToolError::Usage(e.to_string()))?
        }
        None => DaemonSettings::default(),
    };
    let client =
        RegistryClient::from_settings(&settings).map_err(|e| ToolError::Usage(e.to_string()))?;
    let resolved = resolve(&client, &reference, &platform, &a.plain_http)
        .await
        .map_err(|e| ToolError::Usage(e.to_string()))?;
    std::fs::create_dir_all(&a.dir).map_err(|e| ToolError::io(&a.dir, e))?;
    let path = a.dir.join("config.v1.json");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!a.force)
        .open(&path)
        .map_err(|e| ToolError::io(&path, e))?;
    let config = resolved.image_config();
    file.write_all(config.to_json().as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| ToolError::io(&path, e))?;
    println!(
        "{}: {} layer(s){} of {}",
        path.display(),
        resolved.image.layers.len(),
        if resolved.image.acceleration.is_some() {
            " and a trace layer"
        } else {
            ""
        },
        resolved.pinned
    );
    Ok(())
}

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

use super::registry_args::{reference, RegistryArgs};
use super::ToolError;
use crate::registry::resolve;

/// Arguments of `pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform, plain-HTTP registries and settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
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
    let reference = reference(&a.reference)?;
    let platform = a.registry.platform()?;
    let client = a.registry.client()?;
    let resolved = resolve(&client, &reference, &platform, &a.registry.plain_http)
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

//! `pull`: the `config.v1.json` of an image in a registry, by reference.
//!
//! ```text
//! overlaybd-target pull [--platform OS/ARCH[/VARIANT]] [--plain-http HOST[:PORT]]...
//!                       [--overlaybd-config FILE] [-f] [--download] REFERENCE DIR
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
    /// Also fetch every layer in full into DIR/layers/ALGORITHM-HEX/overlaybd.commit, checked
    /// by digest, and name those folders in the config: the image then needs no registry.
    /// Copies already there with the right digest are kept.
    #[arg(long)]
    pub download: bool,
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
    if !a.force && path.exists() {
        // Said before a download that could take long, not after it.
        let exists = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
        return Err(ToolError::io(&path, exists));
    }
    let mut config = resolved.image_config();
    if a.download {
        download_layers(&a, &client, &mut config).await?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!a.force)
        .open(&path)
        .map_err(|e| ToolError::io(&path, e))?;
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

/// Fetches every layer of `config` into its folder under `DIR/layers/` (a copy already there
/// with the right digest is kept) and records the folder as the layer's `dir`, where the
/// config's readers look before the registry. Rate and attempts follow overlaybd.json's
/// `download` settings.
async fn download_layers(
    a: &PullArgs,
    client: &std::sync::Arc<crate::cache::http::RegistryClient>,
    config: &mut crate::overlaybd::ImageConfig,
) -> Result<(), ToolError> {
    use crate::cache::download::{download, DownloadJob};
    let settings = a.registry.settings()?;
    let root = std::path::absolute(a.dir.join("layers")).map_err(|e| ToolError::io(&a.dir, e))?;
    let repo_blob_url = config.repo_blob_url.clone();
    for lower in &mut config.lowers {
        let Some((algorithm, hex)) = crate::cache::key::BlobId::parse(&lower.digest) else {
            return Err(ToolError::Usage(format!(
                "layer digest {:?} is not ALGORITHM:HEX",
                lower.digest
            )));
        };
        let dir = root.join(format!("{algorithm}-{hex}"));
        std::fs::create_dir_all(&dir).map_err(|e| ToolError::io(&dir, e))?;
        let source = client
            .blob_of_size(&repo_blob_url, &lower.digest, lower.size, None)
            .map_err(|e| ToolError::Usage(e.to_string()))?;
        let job = DownloadJob::for_layer_dir(&dir, &lower.digest, &settings.download);
        download(&source, &job, &|| true)
            .await
            .map_err(|e| ToolError::Usage(format!("download {}: {e}", lower.digest)))?;
        println!(
            "{}: {} bytes in {}",
            lower.digest,
            lower.size,
            job.dest.display()
        );
        lower.dir = dir.display().to_string();
    }
    Ok(())
}

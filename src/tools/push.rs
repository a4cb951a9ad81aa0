//! `push`: an image we built, into a registry, as the overlaybd snapshotter expects it.
//!
//! ```text
//! overlaybd-target push [--oci] [--platform OS/ARCH[/VARIANT]] [--plain-http HOST[:PORT]]...
//!                       [--overlaybd-config FILE] CONFIG|LAYER REFERENCE
//! ```
//!
//! Each sealed lower of CONFIG (or the one LAYER blob) is uploaded tar-wrapped as
//! `overlaybd.commit`, unless the repository has it or it can be mounted from another
//! repository of the registry; then an image config and a Docker schema-2 (or, with `--oci`,
//! OCI) manifest with the overlaybd annotations. One line per blob and the pinned reference go
//! to standard output, progress to standard error.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use clap::Args;

use super::progress::Progress;
use super::registry_args::{reference, RegistryArgs};
use super::{is_config, ToolError};
use crate::overlaybd::config::LowerLayer;
use crate::overlaybd::ImageConfig;
use crate::registry::compose::ManifestKind;
use crate::registry::push::{push_image, BlobOutcome, PushOptions, PushedBlob};

/// Arguments of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Write an OCI manifest instead of a Docker schema-2 one.
    #[arg(long)]
    pub oci: bool,
    /// Platform, plain-HTTP registries and settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The image: a config.v1.json whose lowers are sealed layers, or one sealed layer blob.
    pub image: PathBuf,
    /// Where to push it: HOST[:PORT]/REPOSITORY[:TAG] (default tag `latest`).
    pub reference: String,
}

/// Runs `push`.
pub async fn run(a: PushArgs) -> Result<(), ToolError> {
    let reference = reference(&a.reference)?;
    let name = a.image.display().to_string();
    let config = if is_config(&a.image)? {
        ImageConfig::load(&a.image)?
    } else {
        // A layer blob alone is a one-layer image.
        ImageConfig {
            lowers: vec![LowerLayer {
                file: name.clone(),
                ..LowerLayer::default()
            }],
            ..ImageConfig::default()
        }
    };
    let options = PushOptions {
        kind: if a.oci {
            ManifestKind::Oci
        } else {
            ManifestKind::Docker
        },
        platform: a.registry.platform()?,
        plain_http: a.registry.plain_http.clone(),
    };
    let client = a.registry.client()?;
    // The total is known once the layers are read, so the display starts at the first call.
    let progress: Arc<OnceLock<Progress>> = Arc::default();
    let shown = Arc::clone(&progress);
    let what = format!("push {reference}");
    let pushed = push_image(
        &client,
        &config,
        &name,
        &reference,
        &options,
        Arc::new(move |done, total| {
            shown
                .get_or_init(|| Progress::new(what.clone(), total))
                .set(done)
        }),
    )
    .await
    .map_err(|e| ToolError::Usage(e.to_string()))?;
    if let Some(p) = progress.get() {
        p.finish();
    }
    let count = pushed.layers.len();
    for (i, layer) in pushed.layers.iter().enumerate() {
        println!("layer {}/{count} {}", i + 1, describe(layer));
    }
    println!("config {}", describe(&pushed.config));
    println!("pushed {}", pushed.pinned);
    Ok(())
}

fn describe(b: &PushedBlob) -> String {
    let what = match &b.outcome {
        BlobOutcome::Present => "already present".to_string(),
        BlobOutcome::Mounted { from } => format!("mounted from {from}"),
        BlobOutcome::Uploaded => "uploaded".to_string(),
    };
    format!("{} ({} bytes): {what}", b.blob.digest, b.blob.size)
}

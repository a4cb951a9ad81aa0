//! `import`: a raw disk image becomes a new sealed layer on top of an image, holding only the
//! 4 KiB blocks that differ from it, plus a config.v1.json that adds the layer.
//!
//! ```text
//! overlaybd-target import [-z [--algorithm lz4|zstd] [--bs KB]] [--base CONFIG] [-m TAG]
//!                         [-f] RAW LAYER_OUT CONFIG_OUT
//! ```
//!
//! Without `--base` the raw image becomes a base layer of its own size.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{remove_existing, write_layer, OutputArgs, ToolError};
use crate::overlaybd::commit::{CommitOptions, CommitSource};
use crate::overlaybd::config::LowerLayer;
use crate::overlaybd::header::LayerUuid;
use crate::overlaybd::raw::{import_raw, RawSummary};
use crate::overlaybd::writable::{CreateOptions, WritableLayer};
use crate::overlaybd::{Image, ImageConfig, LayerStack, LocalOpener};

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The raw disk image (size a multiple of 512, at most the base image's size).
    pub raw: PathBuf,
    /// The sealed layer to write.
    pub layer: PathBuf,
    /// The config.v1.json to write: the base's lowers plus the new layer.
    pub config: PathBuf,
    /// Base image, format and metadata of the new layer.
    #[command(flatten)]
    pub layer_opts: NewLayerArgs,
}

/// Options of a tool that adds a layer on top of an image (`import`, `build`).
#[derive(Debug, Clone, Args)]
pub struct NewLayerArgs {
    /// The image (config.v1.json, no writable layer) the new layer goes on top of.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Output format options.
    #[command(flatten)]
    pub out: OutputArgs,
    /// Commit message stored as the layer's user tag.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// Replace existing output files.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Runs `import`.
pub async fn run(a: ImportArgs) -> Result<(), ToolError> {
    let summary = import(&a).await?;
    println!(
        "{}: {} bytes written, {} bytes discarded relative to the base; config {}",
        a.layer.display(),
        summary.written,
        summary.discarded,
        a.config.display()
    );
    Ok(())
}

/// The image a new layer goes on top of.
struct Base {
    config: ImageConfig,
    image: Image,
}

impl Base {
    async fn open(path: Option<&Path>) -> Result<Base, ToolError> {
        let Some(path) = path else {
            return Ok(Base {
                config: ImageConfig::default(),
                image: Image::new(LayerStack::new(Vec::new())?, None).await?,
            });
        };
        let config = ImageConfig::load(path)?;
        if config.writable().is_some() {
            return Err(ToolError::Usage(format!(
                "{}: the base has a writable layer; commit it first",
                path.display()
            )));
        }
        let image = Image::open(&config, &path.display().to_string(), &LocalOpener).await?;
        Ok(Base { config, image })
    }
}

/// Deletes the scratch writable layer however the import ends.
struct Scratch {
    data: PathBuf,
    index: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(&self.index);
    }
}

/// Imports `a.raw` as described by `a`; shared with `build`.
pub(super) async fn import(a: &ImportArgs) -> Result<RawSummary, ToolError> {
    let o = &a.layer_opts;
    let zfile = o.out.zfile_options()?;
    let raw_size = std::fs::metadata(&a.raw)
        .map_err(|e| ToolError::io(&a.raw, e))?
        .len();
    if raw_size == 0 || raw_size % 512 != 0 {
        return Err(ToolError::Usage(format!(
            "{}: size {raw_size} is not a non-zero multiple of 512",
            a.raw.display()
        )));
    }
    let base = Base::open(o.base.as_deref()).await?;
    let stack = base.image.stack();
    let vsize = match stack.virtual_size() {
        0 => raw_size,
        v if raw_size <= v => v,
        v => {
            return Err(ToolError::Usage(format!(
                "{}: size {raw_size} exceeds the base image's virtual size {v}",
                a.raw.display()
            )))
        }
    };
    let parent = stack
        .layers_top_first()
        .first()
        .map(|l| l.layout().header.uuid)
        .unwrap_or_else(LayerUuid::nil);
    if o.force {
        remove_existing(&a.layer)?;
        remove_existing(&a.config)?;
    } else if a.config.exists() {
        return Err(ToolError::io(
            &a.config,
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    let scratch = Scratch {
        data: with_suffix(&a.layer, ".import-data"),
        index: with_suffix(&a.layer, ".import-index"),
    };
    remove_existing(&scratch.data)?;
    remove_existing(&scratch.index)?;
    let _tracked = [
        super::interrupt::Partial::track(&scratch.data),
        super::interrupt::Partial::track(&scratch.index),
    ];
    let mut create = CreateOptions::new(vsize);
    create.parent_uuid = parent;
    let upper = WritableLayer::create(&scratch.data, &scratch.index, &create)?;
    let progress = super::progress::Progress::new(format!("import {}", a.raw.display()), raw_size);
    let summary = import_raw(&a.raw, stack, &upper, &|n| progress.set(n)).await?;
    progress.finish();
    let uuid = uuid::Uuid::new_v4();
    let opts = CommitOptions {
        uuid: Some(LayerUuid::from_uuid(&uuid)),
        parent_uuid: Some(parent),
        user_tag: o.message.clone().unwrap_or_default().into_bytes(),
    };
    write_layer(&CommitSource::from_writable(&upper), &opts, &a.layer, zfile).await?;
    drop(scratch);

    let mut config = base.config;
    let file = std::path::absolute(&a.layer).map_err(|e| ToolError::io(&a.layer, e))?;
    config.lowers.push(LowerLayer {
        file: file.display().to_string(),
        ..LowerLayer::default()
    });
    config.upper = None;
    config.result_file = String::new();
    std::fs::write(&a.config, config.to_json()).map_err(|e| ToolError::io(&a.config, e))?;
    Ok(summary)
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

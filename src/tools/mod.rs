//! Image tools, run as subcommands of the `overlaybd-target` binary
//! (`overlaybd-target TOOL ARGS…`): the counterparts of the reference `overlaybd-create`,
//! `overlaybd-commit`, `overlaybd-zfile` and `overlaybd-merge`, plus `inspect`, the raw-disk
//! conversions `export`, `import` and `build` that make images from `mkfs.ext4 -d` trees,
//! `pull` and `push`, which move images between a registry and local configs, and `trace`,
//! which inspects prefetch traces and attaches them to registry images.
//!
//! Each tool lives in its own file; this module holds the subcommand enum, the error type and
//! the helpers several tools share (ZFile options, opening an image from a config or a blob).

pub mod build;
pub mod commit;
pub mod create;
pub mod export;
pub mod import;
pub mod inspect;
pub mod interrupt;
pub mod merge;
pub mod progress;
pub mod pull;
pub mod push;
pub mod registry_args;
pub mod trace;
pub mod zfile;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use crate::overlaybd::commit::{write_commit_file, CommitOptions, CommitSource, CommitSummary};
use crate::overlaybd::header::LayerUuid;
use crate::overlaybd::{Image, ImageConfig, LocalOpener, LsmtError};
use crate::zfile::{Algorithm, WriterOptions, ZFileError};

/// The image tools.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Create a writable layer (data and index files) of a given virtual size.
    Create(create::CreateArgs),
    /// Commit a writable layer into a sealed layer blob, optionally ZFile-compressed.
    Commit(commit::CommitArgs),
    /// Compress a file as ZFile, or decompress one (-d).
    Zfile(zfile::ZfileArgs),
    /// Merge the layers of an image (config.v1.json) into one sealed layer.
    Merge(merge::MergeArgs),
    /// Describe a layer blob, a writable layer or an image config.
    Inspect(inspect::InspectArgs),
    /// Write the virtual disk of an image (config.v1.json or layer blob) to a sparse raw file.
    Export(export::ExportArgs),
    /// Turn a raw disk image into a new layer on top of an image, storing only changed blocks.
    Import(import::ImportArgs),
    /// Make an ext4 image of a directory (mkfs.ext4 -d) and import it as a new layer.
    Build(build::BuildArgs),
    /// Write the config.v1.json of an image in a registry, by reference (HOST/REPO:TAG).
    Pull(pull::PullArgs),
    /// Push an image (config.v1.json or layer blob) to a registry as an overlaybd image.
    Push(push::PushArgs),
    /// Inspect a prefetch trace, or attach one to a registry image as its acceleration layer.
    Trace(trace::TraceArgs),
}

impl Tool {
    /// Runs the tool: results go to standard output, progress to standard error. SIGINT or
    /// SIGTERM removes the outputs and scratch files still being written and ends the
    /// process (status 128 + signal).
    pub async fn run(self) -> Result<(), ToolError> {
        let work = async {
            match self {
                Tool::Create(a) => create::run(a),
                Tool::Commit(a) => commit::run(a).await,
                Tool::Zfile(a) => zfile::run(a).await,
                Tool::Merge(a) => merge::run(a).await,
                Tool::Inspect(a) => inspect::run(a).await,
                Tool::Export(a) => export::run(a).await,
                Tool::Import(a) => import::run(a).await,
                Tool::Build(a) => build::run(a).await,
                Tool::Pull(a) => pull::run(a).await,
                Tool::Push(a) => push::run(a).await,
                Tool::Trace(a) => trace::run(a).await,
            }
        };
        tokio::select! {
            result = work => result.map_err(name_force_flag),
            // The files go inside this branch's future: once a branch wins, select! drops the
            // other one, and with it the guards that track the partial files.
            (signal, removed) = async {
                let signal = interrupt::interrupted().await;
                (signal, interrupt::remove_partial_files())
            } => {
                eprintln!(
                    "\ninterrupted: removed {} partial file(s){}",
                    removed.len(),
                    removed
                        .iter()
                        .map(|p| format!(" {}", p.display()))
                        .collect::<String>()
                );
                // Exit at once: blocking threads still writing must not outlive the cleanup.
                std::process::exit(128 + signal);
            }
        }
    }
}

/// An output that exists is refused by opening it with `create_new`; the OS error alone
/// ("File exists (os error 17)") does not say what to do.
fn name_force_flag(e: ToolError) -> ToolError {
    let exists = |source: &std::io::Error| source.kind() == std::io::ErrorKind::AlreadyExists;
    let path = match &e {
        ToolError::Io { path, source } if exists(source) => path.display().to_string(),
        ToolError::Lsmt(LsmtError::Io { file, source }) if exists(source) => file.clone(),
        _ => return e,
    };
    ToolError::Usage(format!("{path}: the output exists; -f replaces it"))
}

/// Why a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A layer, image or config problem (names the file).
    #[error(transparent)]
    Lsmt(#[from] LsmtError),
    /// A ZFile problem.
    #[error("{path}: {source}")]
    ZFile {
        /// The ZFile concerned.
        path: PathBuf,
        /// What is wrong with it.
        source: ZFileError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The arguments do not make sense together, or an external program failed.
    #[error("{0}")]
    Usage(String),
}

impl ToolError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ToolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// ZFile codec command-line choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// LZ4 (the reference default).
    Lz4,
    /// Zstandard.
    Zstd,
}

/// `--algorithm` and `--bs`, shared by every tool that writes ZFiles.
#[derive(Debug, Clone, Args)]
pub struct CodecArgs {
    /// ZFile compression algorithm.
    #[arg(long, value_enum, default_value = "lz4")]
    pub algorithm: AlgorithmArg,
    /// ZFile block size in KiB: a power of two from 4 to 32. (64, which the reference tools
    /// accept, is refused: an incompressible 64 KiB block stores above the 64 KiB the
    /// reference reader can read, and no codec has a stored-raw escape.)
    #[arg(long = "bs", value_name = "KB", default_value_t = 4)]
    pub block_size_kb: u32,
}

impl CodecArgs {
    /// The writer options: per-block CRC32C always on, like the reference tools.
    pub fn writer_options(&self) -> Result<WriterOptions, ToolError> {
        let kb = self.block_size_kb;
        if kb == 64 {
            return Err(ToolError::Usage(
                "--bs 64: incompressible 64 KiB blocks store above the 64 KiB overlaybd's \
                 reader can read (the reference tools write them and then cannot read them); \
                 use --bs 32 or less"
                    .into(),
            ));
        }
        if !kb.is_power_of_two() || !(4..=32).contains(&kb) {
            return Err(ToolError::Usage(format!(
                "--bs {kb}: the block size must be a power of two from 4 to 32 (KiB)"
            )));
        }
        Ok(WriterOptions {
            algorithm: match self.algorithm {
                AlgorithmArg::Lz4 => Algorithm::Lz4,
                AlgorithmArg::Zstd => Algorithm::Zstd,
            },
            block_size: kb * 1024,
            verify: true,
        })
    }
}

/// `-z` plus the codec options, for tools whose output may be a plain LSMT blob or a ZFile.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Compress the output layer as a ZFile.
    #[arg(short = 'z', long = "zfile")]
    pub zfile: bool,
    /// ZFile codec and block size (only with -z).
    #[command(flatten)]
    pub codec: CodecArgs,
}

impl OutputArgs {
    /// The ZFile options when `-z` was given.
    pub fn zfile_options(&self) -> Result<Option<WriterOptions>, ToolError> {
        if self.zfile {
            self.codec.writer_options().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Parses a UUID argument (36 characters, either case).
pub fn parse_uuid(text: &str) -> Result<LayerUuid, String> {
    LayerUuid::parse(text).ok_or_else(|| format!("{text:?} is not a UUID (8-4-4-4-12 hex digits)"))
}

/// True when `path` names an image config rather than a layer blob (see
/// [`ImageConfig::is_config_file`]).
pub fn is_config(path: &Path) -> Result<bool, ToolError> {
    ImageConfig::is_config_file(path).map_err(|e| ToolError::io(path, e))
}

/// Opens the image a `config.v1.json` with local layers describes. Unlike the daemon, tools
/// leave the config's `resultFile` alone: they are not the device's owner.
pub async fn open_config(path: &Path) -> Result<Image, ToolError> {
    let config = ImageConfig::load(path)?;
    Ok(Image::open(&config, &path.display().to_string(), &LocalOpener).await?)
}

/// Opens what `path` names as an image: a `config.v1.json` with local layers, or a single
/// sealed layer blob (plain, ZFile or tar-wrapped).
pub async fn open_image(path: &Path) -> Result<Image, ToolError> {
    open_image_with(path, &registry_args::CacheArgs::default()).await
}

/// [`open_image`], where a config's lowers may also be registry blobs: those are read through
/// a cache with the settings and folder `cache` names, as a LUN would read them.
pub async fn open_image_with(
    path: &Path,
    cache: &registry_args::CacheArgs,
) -> Result<Image, ToolError> {
    if !is_config(path)? {
        return Ok(LocalOpener::open_blob_image(path).await?);
    }
    let config = ImageConfig::load(path)?;
    let name = path.display().to_string();
    let remote = (0..config.lowers.len()).any(|i| {
        matches!(
            config.locate(i, &name),
            Ok(crate::overlaybd::config::LayerLocation::Remote { .. })
        )
    });
    if !remote {
        return Ok(Image::open(&config, &name, &LocalOpener).await?);
    }
    let layers = crate::cache::RemoteLayers::new(cache.settings()?)
        .map_err(|e| ToolError::Usage(format!("cache: {e}")))?;
    Ok(Image::open(&config, &name, &layers).await?)
}

/// Runs `work`, which creates the file `output`; when it fails, a partial `output` it left is
/// removed (a file that existed before is never touched).
pub async fn removing_partial_output<T>(
    output: &Path,
    work: impl std::future::Future<Output = Result<T, ToolError>>,
) -> Result<T, ToolError> {
    let existed = output.exists();
    let _tracked = (!existed).then(|| interrupt::Partial::track(output));
    let result = work.await;
    if result.is_err() && !existed {
        let _ = std::fs::remove_file(output);
    }
    result
}

/// Writes a committed layer to the new file `output` (see
/// [`crate::overlaybd::commit::write_commit_file`]), removing it again if the commit fails.
pub async fn write_layer(
    source: &CommitSource,
    opts: &CommitOptions,
    output: &Path,
    zfile: Option<WriterOptions>,
) -> Result<CommitSummary, ToolError> {
    let progress =
        progress::Progress::new(format!("writing {}", output.display()), source.data_bytes());
    let writing =
        async { Ok(write_commit_file(source, opts, output, zfile, &|n| progress.set(n)).await?) };
    let result = removing_partial_output(output, writing).await;
    progress.finish();
    result
}

/// Removes `path` when it exists (`-f`).
pub fn remove_existing(path: &Path) -> Result<(), ToolError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ToolError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_options_are_checked() {
        let ok = CodecArgs {
            algorithm: AlgorithmArg::Zstd,
            block_size_kb: 16,
        }
        .writer_options()
        .unwrap();
        assert_eq!((ok.algorithm, ok.block_size), (Algorithm::Zstd, 16384));
        for bad in [0, 2, 6, 64, 128] {
            let e = CodecArgs {
                algorithm: AlgorithmArg::Lz4,
                block_size_kb: bad,
            }
            .writer_options()
            .unwrap_err();
            assert!(e.to_string().contains("--bs"), "{e}");
        }
    }

    #[test]
    fn configs_are_told_from_blobs_by_name_or_content() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("image.JSON");
        std::fs::write(&named, b"whatever").unwrap();
        assert!(is_config(&named).unwrap());
        let by_content = dir.path().join("config");
        std::fs::write(&by_content, b"  \n{\"lowers\": []}").unwrap();
        assert!(is_config(&by_content).unwrap());
        let blob = dir.path().join("layer.obd");
        std::fs::write(&blob, b"LSMT\0\x01\x02").unwrap();
        assert!(!is_config(&blob).unwrap());
        let e = is_config(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_write_removes_only_a_new_output() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        let r: Result<(), _> = removing_partial_output(&new, async {
            std::fs::write(&new, b"partial").unwrap();
            Err(ToolError::Usage("boom".into()))
        })
        .await;
        assert!(r.is_err() && !new.exists());
        let old = dir.path().join("old");
        std::fs::write(&old, b"keep").unwrap();
        let r: Result<(), _> =
            removing_partial_output(&old, async { Err(ToolError::Usage("boom".into())) }).await;
        assert!(r.is_err());
        assert_eq!(std::fs::read(&old).unwrap(), b"keep");
    }

    #[test]
    fn uuids_parse_in_either_case() {
        let u = parse_uuid("c02fb491-b4d4-4904-8684-a014d032af78").unwrap();
        assert_eq!(u.to_string(), "C02FB491-B4D4-4904-8684-A014D032AF78");
        assert!(parse_uuid("c02fb491").is_err());
    }
}

//! LUN backing strings: the one place that turns `file:PATH`, `ram:SIZE`, `image:CONFIG.json`
//! (each optionally prefixed by `ro:`) into a block device. New backends are added here only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::block::{
    parse_size, BlockDevice, FileDevice, HeldDevice, RamDevice, ReadOnlyDevice,
    RemoteFailurePolicy, Unavailable, UnavailableDevice,
};
use crate::cache::DaemonSettings;
use crate::overlaybd::config::LayerLocation;
use crate::overlaybd::{
    Image, ImageConfig, LocalOpener, LsmtError, RemoteImages, WithPrefetchWorkers,
};
use crate::prefetch::learn::{Learn, LearnStore};
use crate::prefetch::{PrefetchHandle, RecordOptions};
use crate::scsi::{LunConfig, UnitOptions};
use crate::source::SourceError;

/// Why a backing string could not be parsed or its device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// The string has no known `KIND:` prefix.
    #[error(
        "unknown LUN backing {0:?}: expected file:PATH, ram:SIZE, image:CONFIG.json, registry:REF or demo:, optionally prefixed by ro: and followed by ,remote_failure=POLICY"
    )]
    UnknownKind(String),
    /// `file:` or `image:` with an empty path.
    #[error("LUN backing {0:?} has an empty path")]
    EmptyPath(String),
    /// `ram:` with a size that does not parse.
    #[error("LUN backing {text:?}: {source}")]
    BadSize {
        /// The whole backing string.
        text: String,
        /// What was wrong with the size.
        source: crate::block::SizeError,
    },
    /// `ram:` with a size of zero or not a multiple of 512 bytes.
    #[error("LUN backing {0:?}: the size must be a non-zero multiple of 512 bytes")]
    BadRamSize(String),
    /// `ram:` with a bare number under 1 MiB: almost surely a unit left out.
    #[error(
        "LUN backing {0:?}: a size without a unit is in bytes, and that is less than 1 MiB; \
         give a unit (ram:64M, ram:1G) or, for bytes, a B (ram:4096B)"
    )]
    RamSizeWithoutUnit(String),
    /// `ram:` larger than the machine's memory: the first writes past it would end the process.
    #[error(
        "LUN backing {text:?}: more than this machine's memory ({} MiB); a RAM LUN keeps \
         what is written in memory",
        memory >> 20
    )]
    RamLargerThanMemory {
        /// The whole backing string.
        text: String,
        /// The machine's physical memory in bytes.
        memory: u64,
    },
    /// `registry:` with a reference that does not parse (the message shows the form).
    #[error("LUN backing registry: {0}")]
    BadReference(String),
    /// A `,key=value` option that is unknown, repeated or has a bad value.
    #[error("LUN backing {0}")]
    BadOption(String),
    /// The backing file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file named by the backing string.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The backing file is smaller than one block.
    #[error("{0} is smaller than one 512-byte block")]
    Empty(PathBuf),
    /// The overlaybd image could not be opened (config, layer or upper files).
    #[error("cannot open image {path}: {source}")]
    Image {
        /// The image config named by the backing string.
        path: PathBuf,
        /// What failed (boxed: keeps `BackingError` small).
        source: Box<LsmtError>,
    },
    /// An overlaybd image with registry layers could not be opened (config, registry, cache).
    #[error("cannot open image {path} (registry layers): {source}")]
    Registry {
        /// The image config named by the backing string.
        path: PathBuf,
        /// What failed (boxed: keeps `BackingError` small).
        source: Box<LsmtError>,
    },
}

impl BackingError {
    /// What kind of failure this is, for the NOT READY code a LUN that failed to open answers
    /// with (README "Broken LUNs").
    pub fn unavailable(&self) -> Unavailable {
        use std::io::ErrorKind;
        let lsmt = |e: &LsmtError, remote: bool| match e {
            LsmtError::Io { source, .. } if source.kind() == ErrorKind::NotFound => {
                Unavailable::Missing
            }
            LsmtError::Io { source, .. }
                if remote && source.kind() != ErrorKind::PermissionDenied =>
            {
                Unavailable::Unreachable
            }
            LsmtError::Io { .. } => Unavailable::Failed,
            LsmtError::Source { source, .. } => match source {
                SourceError::NotFound(_) => Unavailable::Missing,
                SourceError::Unavailable(_) => Unavailable::Unreachable,
                SourceError::Io(_) if remote => Unavailable::Unreachable,
                SourceError::Denied(_) | SourceError::Io(_) => Unavailable::Failed,
                SourceError::Corrupt(_)
                | SourceError::OutOfRange { .. }
                | SourceError::WrongLength { .. } => Unavailable::Corrupt,
            },
            _ => Unavailable::Corrupt,
        };
        match self {
            BackingError::Open { source, .. } if source.kind() == ErrorKind::NotFound => {
                Unavailable::Missing
            }
            BackingError::Open { .. } => Unavailable::Failed,
            BackingError::Image { source, .. } => lsmt(source, false),
            BackingError::Registry { source, .. } => lsmt(source, true),
            // Unparsable strings never reach a LUN; an empty file is not a usable medium.
            _ => Unavailable::Corrupt,
        }
    }
}

/// What backs one logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A regular file or a host block device.
    File(PathBuf),
    /// A zero-filled RAM disk of this many bytes.
    Ram(u64),
    /// An overlaybd image described by a `config.v1.json` with local layers; writable when the
    /// config has an `upper` and the LUN is not `ro:`.
    Image(PathBuf),
    /// The demo image embedded in the binary (`demo:`), always read-only.
    Demo,
    /// An overlaybd image in a registry, by reference (`registry:HOST/REPO:TAG`): the
    /// manifest is resolved when the LUN opens (pinned by digest from then on) and the layers
    /// are read lazily through the cache. Always read-only.
    Registry(crate::registry::ImageReference),
}

/// A parsed LUN: its backing, whether writes are refused, and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// What holds the data.
    pub backing: Backing,
    /// True when the LUN is exported read-only.
    pub read_only: bool,
    /// What commands do when the image's registry cannot serve them (`remote_failure=`);
    /// `None` takes the daemon's `remoteFailure` setting.
    pub remote_failure: Option<RemoteFailurePolicy>,
    /// What the SCSI unit says about its medium (`physical_block_size=`, `removable=`,
    /// `thin=`).
    pub unit: UnitSpec,
    /// `learn=`: whether this `image:` or `registry:` LUN learns its start's trace and
    /// replays what was learned (`crate::prefetch::learn`); `None` takes `learn_traces`.
    pub learn: Option<bool>,
}

/// The SCSI options of a LUN as written; what is not set takes the backing's default when
/// the LUN is described ([`LunSpec::lun_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitSpec {
    /// Physical block size in bytes (`physical_block_size=4096`); `None`: 4096 for overlaybd
    /// images, whose blocks are 4 KiB, and the logical block size for files and RAM.
    pub physical_block_size: Option<u32>,
    /// A removable medium (`removable=true`).
    pub removable: bool,
    /// Thin provisioning not advertised although the device could deallocate (`thin=false`).
    pub thick: bool,
}

/// Largest physical block size a LUN may declare (a 4-bit exponent allows more; no real
/// medium has blocks this large).
const MAX_PHYSICAL_BLOCK: u32 = 64 << 10;

/// The options a LUN text may carry after its backing, each as `,key=value`.
const LUN_OPTIONS: &[&str] = &[
    "remote_failure",
    "physical_block_size",
    "removable",
    "thin",
    "learn",
];

/// A LUN text cut in two: the backing, and its options as (key, value) pairs.
type SplitLun<'a> = (&'a str, Vec<(&'a str, &'a str)>);

/// The backing part of a LUN text, without its `,key=value` options (as `ctl status` shows
/// a LUN, to compare it with a backing given without them).
pub fn without_lun_options(text: &str) -> &str {
    split_options(text).map_or(text, |(backing, _)| backing)
}

/// Splits `text` into the backing and its options: these start at the first `,` followed by
/// `key=` with a key of lower-case letters and underscores (so a path may hold commas, just
/// not `,key=`). Unknown keys and repeated keys are refused.
fn split_options(text: &str) -> Result<SplitLun<'_>, BackingError> {
    let is_option = |rest: &str| {
        rest.split_once('=').is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    };
    let start = text
        .match_indices(',')
        .map(|(i, _)| i)
        .find(|&i| is_option(&text[i + 1..]));
    let Some(start) = start else {
        return Ok((text, Vec::new()));
    };
    let mut options: Vec<(&str, &str)> = Vec::new();
    for item in text[start + 1..].split(',') {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        if !LUN_OPTIONS.contains(&key) {
            return Err(BackingError::BadOption(format!(
                "{text}: unknown LUN option {key:?} (known: {})",
                LUN_OPTIONS.join(", ")
            )));
        }
        if options.iter().any(|(k, _)| *k == key) {
            return Err(BackingError::BadOption(format!(
                "{text}: option {key} given twice"
            )));
        }
        options.push((key, value));
    }
    Ok((&text[..start], options))
}

impl LunSpec {
    /// Parses `[ro:]file:PATH`, `[ro:]ram:SIZE` (SIZE like `1G`, `512M`, `4096`),
    /// `[ro:]image:CONFIG.json`, `registry:REF` or `demo:`, then options as `,key=value`:
    /// `remote_failure=hold|hold:DURATION|hold:forever|fail|fail:DURATION`.
    pub fn parse(text: &str) -> Result<LunSpec, BackingError> {
        let (backing_text, options) = split_options(text)?;
        let mut spec = Self::parse_backing(backing_text)?;
        for (key, value) in options {
            spec.set_option(key, value)
                .map_err(|e| BackingError::BadOption(format!("{text}: {e}")))?;
        }
        Ok(spec)
    }

    /// Sets option `key` (one of the LUN options, as in the quick form and TOML) from its
    /// text; the error says what the value should be.
    pub fn set_option(&mut self, key: &str, value: &str) -> Result<(), String> {
        let boolean = |value: &str| match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("{key}={value:?}: expected true or false")),
        };
        match key {
            "remote_failure" => {
                self.remote_failure = Some(value.parse().map_err(|e| format!("{e}"))?);
            }
            "physical_block_size" => {
                let size = parse_size(value)
                    .ok()
                    .and_then(|b| u32::try_from(b).ok())
                    .filter(|b| b.is_power_of_two() && (512..=MAX_PHYSICAL_BLOCK).contains(b))
                    .ok_or_else(|| {
                        format!(
                            "physical_block_size={value:?}: expected a power of two from 512 \
                             to {MAX_PHYSICAL_BLOCK} bytes (e.g. 4096 or 4K)"
                        )
                    })?;
                self.unit.physical_block_size = Some(size);
            }
            "removable" => self.unit.removable = boolean(value)?,
            "thin" => self.unit.thick = !boolean(value)?,
            "learn" => {
                if !matches!(self.backing, Backing::Image(_) | Backing::Registry(_)) {
                    return Err(format!(
                        "learn={value}: only image: and registry: LUNs learn a prefetch trace"
                    ));
                }
                self.learn = Some(boolean(value)?);
            }
            _ => {
                return Err(format!(
                    "unknown LUN option {key:?} (known: {})",
                    LUN_OPTIONS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Parses the backing part of a LUN text (no options).
    fn parse_backing(text: &str) -> Result<LunSpec, BackingError> {
        let (read_only, rest) = match text.strip_prefix("ro:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let backing = if let Some(path) = rest.strip_prefix("file:") {
            if path.is_empty() {
                return Err(BackingError::EmptyPath(text.to_string()));
            }
            Backing::File(PathBuf::from(path))
        } else if let Some(path) = rest.strip_prefix("image:") {
            if path.is_empty() {
                return Err(BackingError::EmptyPath(text.to_string()));
            }
            Backing::Image(PathBuf::from(path))
        } else if let Some(reference) = rest.strip_prefix("registry:") {
            let reference = crate::registry::ImageReference::parse(reference)
                .map_err(|e| BackingError::BadReference(e.to_string()))?;
            return Ok(LunSpec {
                backing: Backing::Registry(reference),
                read_only: true,
                remote_failure: None,
                unit: UnitSpec::default(),
                learn: None,
            });
        } else if rest == "demo:" {
            return Ok(LunSpec {
                backing: Backing::Demo,
                read_only: true,
                remote_failure: None,
                unit: UnitSpec::default(),
                learn: None,
            });
        } else if let Some(size) = rest.strip_prefix("ram:") {
            let bytes = parse_size(size).map_err(|source| BackingError::BadSize {
                text: text.to_string(),
                source,
            })?;
            if bytes == 0 || bytes % 512 != 0 {
                return Err(BackingError::BadRamSize(text.to_string()));
            }
            // `ram:1024` is 1 KiB, which nobody means: a bare number is bytes only from 1 MiB
            // on (state files and `ctl status` before units were written hold such numbers).
            if size.trim().ends_with(|c: char| c.is_ascii_digit()) && bytes < 1 << 20 {
                return Err(BackingError::RamSizeWithoutUnit(text.to_string()));
            }
            if let Some(memory) = crate::sys::physical_memory().filter(|m| bytes > *m) {
                return Err(BackingError::RamLargerThanMemory {
                    text: text.to_string(),
                    memory,
                });
            }
            Backing::Ram(bytes)
        } else {
            return Err(BackingError::UnknownKind(text.to_string()));
        };
        Ok(LunSpec {
            backing,
            read_only,
            remote_failure: None,
            unit: UnitSpec::default(),
            learn: None,
        })
    }

    /// Opens the device with registry layers read through a cache of its own (tests and
    /// single-LUN tools; a server shares one [`ImageOpener`] between its LUNs).
    pub async fn open(&self) -> Result<Arc<dyn BlockDevice>, BackingError> {
        self.open_with(&ImageOpener::new(DaemonSettings::default()))
            .await
    }

    /// Opens the device, reading registry layers of `image:` LUNs through `images`. Files are
    /// opened now, so a missing file fails here rather than at the first SCSI command. File
    /// opens and config reads run on blocking threads; building an image's tables and writing
    /// its `resultFile` still run on the async workers, so a burst of opens takes CPU from I/O
    /// on other LUNs (no lock is shared; measured in benches/README.md, control plane).
    pub async fn open_with(
        &self,
        images: &ImageOpener,
    ) -> Result<Arc<dyn BlockDevice>, BackingError> {
        Ok(self.open_identified(images).await?.0)
    }

    /// [`LunSpec::open_with`], also returning the manifest digest a `registry:` reference
    /// resolved to (the LUN's content identity) and, for an image, a handle on its trace
    /// prefetch.
    async fn open_identified(
        &self,
        images: &ImageOpener,
    ) -> Result<(Arc<dyn BlockDevice>, Option<String>, Option<PrefetchHandle>), BackingError> {
        let mut resolved = None;
        let mut prefetch = None;
        let device: Result<Arc<dyn BlockDevice>, BackingError> = match &self.backing {
            Backing::File(path) => {
                let (path, read_only) = (path.clone(), self.read_only);
                let opened = crate::sys::run_blocking(move || {
                    let device = FileDevice::open(&path, read_only).map_err(|source| {
                        BackingError::Open {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    if device.size() == 0 {
                        return Err(BackingError::Empty(path));
                    }
                    Ok(Arc::new(device) as Arc<dyn BlockDevice>)
                })
                .await;
                opened.unwrap_or_else(|source| {
                    Err(BackingError::Open {
                        path: PathBuf::new(),
                        source,
                    })
                })
            }
            Backing::Ram(size) if self.read_only => Ok(Arc::new(RamDevice::new_read_only(*size))),
            Backing::Ram(size) => Ok(Arc::new(RamDevice::new(*size))),
            Backing::Demo => {
                let image =
                    super::demo::open_demo()
                        .await
                        .map_err(|source| BackingError::Image {
                            path: PathBuf::from("demo:"),
                            source: Box::new(source),
                        })?;
                Ok(Arc::new(image))
            }
            Backing::Registry(reference) => {
                let (device, digest, handle) = images.open_reference(reference, self.learn).await?;
                resolved = Some(digest);
                prefetch = handle;
                Ok(self.held(device, images))
            }
            Backing::Image(path) => {
                let (device, handle) = images.open(path, self.read_only, self.learn).await?;
                prefetch = handle;
                if device.size() == 0 {
                    return Err(BackingError::Empty(path.clone()));
                }
                Ok(self.held(device, images))
            }
        };
        Ok((device?, resolved, prefetch))
    }

    /// An image's device under the LUN's remote-failure policy (the daemon's when the LUN
    /// names none). Images whose layers are all local never meet a remote failure, so the
    /// wrapper only passes their answers through.
    fn held(&self, device: Arc<dyn BlockDevice>, images: &ImageOpener) -> Arc<dyn BlockDevice> {
        let policy = self
            .remote_failure
            .unwrap_or(images.settings.remote_failure);
        Arc::new(HeldDevice::new(device, policy, self.without_options()))
    }

    /// The LUN's text without its options: what names the LUN in logs and, for LUNs without a
    /// content identity, goes into the serial (options must not change a LUN's WWN).
    fn without_options(&self) -> String {
        LunSpec {
            remote_failure: None,
            unit: UnitSpec::default(),
            learn: None,
            ..self.clone()
        }
        .to_string()
    }

    /// Opens the device and describes it as LUN `number` of target `target_name`. The serial
    /// number is derived from both, so it stays stable across restarts.
    pub async fn lun_config(
        &self,
        target_name: &str,
        number: u64,
        images: &ImageOpener,
    ) -> Result<LunConfig, BackingError> {
        // A failed open must not leave the handle of a previous device at this number.
        images.set_prefetch(target_name, number, None);
        let (device, resolved, prefetch) = self.open_identified(images).await?;
        images.set_prefetch(target_name, number, prefetch);
        let identity = self.content_identity(resolved.as_deref());
        Ok(self.describe(target_name, number, device, identity))
    }

    /// LUN `number` of target `target_name` whose backing is not open (still opening, or it
    /// failed): the same serial and product as when it works, over a device that answers NOT
    /// READY for `reason`.
    pub fn unavailable_lun(
        &self,
        target_name: &str,
        number: u64,
        reason: Unavailable,
    ) -> LunConfig {
        self.describe(
            target_name,
            number,
            Arc::new(UnavailableDevice::new(reason)),
            self.content_identity(None),
        )
    }

    /// What the LUN's content is named by, when it is known without opening it: a
    /// `registry:` reference's manifest digest (`resolved` at open, or the one the reference
    /// pins), or an image config's chain of layer digests ([`ImageConfig::content_identity`]).
    fn content_identity(&self, resolved: Option<&str>) -> Option<String> {
        match &self.backing {
            Backing::Registry(reference) => resolved
                .or(reference.digest.as_deref())
                .map(|digest| format!("manifest {digest}")),
            Backing::Image(path) => ImageConfig::load(path).ok()?.content_identity(),
            Backing::File(_) | Backing::Ram(_) | Backing::Demo => None,
        }
    }

    /// Describes `device` as LUN `number` of target `target_name`. An image whose content
    /// `identity` is known gets a serial (and so an NAA WWN) from it alone, the same on every
    /// target and LUN number, so `/dev/disk/by-id/wwn-0x…` names the image on any host;
    /// other LUNs get one from the target, the number and the backing text.
    fn describe(
        &self,
        target_name: &str,
        number: u64,
        device: Arc<dyn BlockDevice>,
        identity: Option<String>,
    ) -> LunConfig {
        let named = match identity {
            Some(identity) => format!("overlaybd image {identity}"),
            None => {
                // RAM sizes went into the serial as bytes before they printed with units;
                // keep that text, so a RAM LUN's serial and WWN do not change across versions.
                let text = match self.backing {
                    Backing::Ram(size) => {
                        format!("{}ram:{size}", if self.read_only { "ro:" } else { "" })
                    }
                    _ => self.without_options(),
                };
                format!("{target_name}/{number}/{text}")
            }
        };
        let digest = Sha256::digest(named.as_bytes());
        let serial = hex::encode(&digest[..8]);
        let product = match self.backing {
            Backing::File(_) => "overlaybd file",
            Backing::Ram(_) => "overlaybd ram",
            Backing::Image(_) | Backing::Registry(_) => "overlaybd image",
            Backing::Demo => "overlaybd demo",
        };
        let logical = device.block_size().max(1);
        let physical = self.unit.physical_block_size.unwrap_or(match self.backing {
            Backing::Image(_) | Backing::Registry(_) | Backing::Demo => 4096,
            Backing::File(_) | Backing::Ram(_) => logical,
        });
        let options = UnitOptions {
            // Both are powers of two; a physical block below the logical one is one block.
            physical_block_exponent: (physical.max(logical) / logical).trailing_zeros() as u8,
            removable: self.unit.removable,
            thin: !self.unit.thick,
        };
        LunConfig {
            device,
            serial,
            product: product.to_string(),
            options,
        }
    }
}

/// A size in the largest unit that divides it (`1G`, `64M`, `4K`, or `4608B`), as
/// [`parse_size`] reads it back.
fn size_with_unit(bytes: u64) -> String {
    for (shift, unit) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
        if bytes != 0 && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

impl fmt::Display for LunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `registry:` is read-only whatever the prefix; printing none keeps the text the user
        // wrote. (`demo:` keeps its `ro:`: the text feeds the unit serial, which must not
        // change across versions.)
        let always_read_only = matches!(self.backing, Backing::Registry(_));
        if self.read_only && !always_read_only {
            f.write_str("ro:")?;
        }
        match &self.backing {
            Backing::File(path) => write!(f, "file:{}", path.display()),
            Backing::Ram(size) => write!(f, "ram:{}", size_with_unit(*size)),
            Backing::Image(path) => write!(f, "image:{}", path.display()),
            Backing::Registry(reference) => write!(f, "registry:{reference}"),
            Backing::Demo => f.write_str("demo:"),
        }?;
        if let Some(policy) = self.remote_failure {
            write!(f, ",remote_failure={policy}")?;
        }
        if let Some(size) = self.unit.physical_block_size {
            write!(f, ",physical_block_size={size}")?;
        }
        if self.unit.removable {
            f.write_str(",removable=true")?;
        }
        if self.unit.thick {
            f.write_str(",thin=false")?;
        }
        if let Some(on) = self.learn {
            write!(f, ",learn={on}")?;
        }
        Ok(())
    }
}

/// Publishes the trace at `trace` as the acceleration layer of `reference` (to `to`, else
/// its tag) through the registry client of `luns`.
async fn publish_trace(
    luns: &RemoteImages,
    plain_http: &[String],
    trace: &Path,
    reference: &crate::registry::ImageReference,
    to: Option<crate::registry::ImageReference>,
) -> Result<crate::registry::publish::Published, crate::registry::publish::PublishError> {
    use crate::registry::publish::{self, PublishError};
    let records = match crate::prefetch::load(trace).await {
        Ok(crate::prefetch::TraceFile::Binary(records)) if !records.is_empty() => records,
        Ok(_) => {
            return Err(PublishError::Refused(format!(
                "{}: no recorded reads to publish",
                trace.display()
            )))
        }
        Err(e) => return Err(PublishError::Refused(format!("{}: {e}", trace.display()))),
    };
    let to_given = to.is_some();
    let dest = publish::destination(reference, to)?;
    publish::publish(
        luns.layers().client(),
        &records,
        reference,
        &dest,
        to_given,
        &crate::registry::Platform::host(),
        plain_http,
        Arc::new(|_, _| {}),
    )
    .await
}

/// Who learns traces ([`ImageOpener`]): the store (none without a state file), whether LUNs
/// without `learn=` learn, and whether learned traces are published.
#[derive(Default)]
struct LearnMode {
    store: Option<LearnStore>,
    by_default: bool,
    publish: bool,
}

/// Opens `image:` LUNs. Images whose layers are all local files are opened directly; images
/// with registry layers share one set of remote-layer caches ([`RemoteImages`]), built on first
/// need, so a server that serves only local images never touches the cache folder.
pub struct ImageOpener {
    settings: DaemonSettings,
    remote: Mutex<Option<Arc<RemoteImages>>>,
    /// Who learns, where and for how long; a SIGHUP reload may change it
    /// ([`ImageOpener::relearn`]).
    learn: Mutex<LearnMode>,
    /// The trace prefetch of the image opened last for each (target, LUN number), for the
    /// management API. Weak handles: a device that is gone reports no prefetch.
    prefetch: Mutex<std::collections::HashMap<(String, u64), PrefetchHandle>>,
}

impl ImageOpener {
    /// An opener that builds its caches from `settings` (overlaybd.json plus command-line
    /// overrides) when the first registry layer is met.
    pub fn new(settings: DaemonSettings) -> Self {
        ImageOpener {
            settings,
            remote: Mutex::new(None),
            learn: Mutex::new(LearnMode::default()),
            prefetch: Mutex::new(Default::default()),
        }
    }

    /// This opener, with images that have no trace of their own learning one in `store`
    /// ([`crate::prefetch::learn`]), unless their LUN says `learn=false`.
    pub fn with_learning(self, store: LearnStore) -> Self {
        {
            let mut mode = self.learn_mode();
            mode.store = Some(store);
            mode.by_default = true;
        }
        self
    }

    /// This opener, with only LUNs that ask for it (`learn=true`) learning in `store`.
    pub fn with_learning_when_asked(self, store: LearnStore) -> Self {
        {
            let mut mode = self.learn_mode();
            mode.store = Some(store);
            mode.by_default = false;
        }
        self
    }

    /// This opener, publishing each learned trace of a `registry:` LUN as the image's
    /// acceleration layer, to the reference's tag, once written ([`ImageOpener::publish_trace`]).
    pub fn publishing_learned(self) -> Self {
        self.learn_mode().publish = true;
        self
    }

    /// Applies reloaded learning settings to LUNs opened from now on (those already open
    /// keep what they do); `None` when nothing changed, else what changed, for the reload's
    /// report. Without a store (no state file) learning stays off whatever is asked.
    pub fn relearn(&self, settings: &crate::config::LearnSettings) -> Option<String> {
        let mut mode = self.learn_mode();
        let Some(store) = mode.store.clone() else {
            return (settings.enabled || settings.publish).then(|| {
                "learn_traces: needs a state file (--state), beside which traces are kept; learning stays off".to_string()
            });
        };
        let store = LearnStore::new(store.dir(), settings.window);
        let before = (
            mode.by_default,
            mode.publish,
            mode.store.as_ref().map(LearnStore::window),
        );
        mode.store = Some(store);
        mode.by_default = settings.enabled;
        mode.publish = settings.publish;
        let after = (mode.by_default, mode.publish, Some(settings.window));
        (before != after).then(|| {
            format!(
                "learning for LUNs opened from now on: learn_traces {}, learn_seconds {}, publish_learned_traces {}",
                settings.enabled,
                settings.window.as_secs(),
                settings.publish
            )
        })
    }

    fn learn_mode(&self) -> std::sync::MutexGuard<'_, LearnMode> {
        self.learn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the trace at `trace` as the acceleration layer of the image `reference`, to
    /// `to` or else the reference's tag ([`crate::registry::publish`]), with the daemon's
    /// registry client (its credentials) and settings.
    pub async fn publish_trace(
        &self,
        trace: &Path,
        reference: &crate::registry::ImageReference,
        to: Option<crate::registry::ImageReference>,
    ) -> Result<crate::registry::publish::Published, crate::registry::publish::PublishError> {
        let luns = self
            .remote_images()
            .map_err(|e| crate::registry::publish::PublishError::Registry(e.to_string()))?;
        publish_trace(&luns, &self.settings.plain_http, trace, reference, to).await
    }

    /// The store of learned traces, when there is one (a state file): every LUN learns with
    /// `learn_traces`, else only those with `learn=true`.
    pub fn learning(&self) -> Option<LearnStore> {
        self.learn_mode().store.clone()
    }

    /// The trace prefetch of LUN `number` of `target` as last opened (an image's), if any.
    pub fn prefetch_of(&self, target: &str, number: u64) -> Option<PrefetchHandle> {
        let map = self.prefetch.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(target.to_string(), number)).cloned()
    }

    /// Records (or with `None` forgets) the trace prefetch of LUN `number` of `target`.
    fn set_prefetch(&self, target: &str, number: u64, handle: Option<PrefetchHandle>) {
        let mut map = self.prefetch.lock().unwrap_or_else(|e| e.into_inner());
        let key = (target.to_string(), number);
        match handle {
            Some(h) => map.insert(key, h),
            None => map.remove(&key),
        };
    }

    /// What learning makes of `config` (named `name` in logs): the config to open (with
    /// `recordTracePath` naming the learned trace to replay or record) and the recording's
    /// limits. Without learning, or for an image that does not learn, the config as it is.
    /// `lun` is the LUN's `learn=` option.
    async fn learned(
        &self,
        config: ImageConfig,
        name: &str,
        lun: Option<bool>,
    ) -> (ImageConfig, RecordOptions, Option<Learn>) {
        let (store, by_default) = {
            let mode = self.learn_mode();
            (mode.store.clone(), mode.by_default)
        };
        let Some(store) = store else {
            if lun == Some(true) {
                tracing::warn!(image = name, "learn=true needs a state file (--state), beside which traces are kept; this LUN does not learn");
            }
            return (config, RecordOptions::default(), None);
        };
        if !lun.unwrap_or(by_default) {
            return (config, RecordOptions::default(), None);
        }
        let plan = store.plan(&config, name).await;
        match &plan {
            Some(Learn::Replay(path) | Learn::Record(path)) => {
                let config = ImageConfig {
                    record_trace_path: path.display().to_string(),
                    ..config
                };
                (config, store.record_options(), plan)
            }
            Some(Learn::Busy(path)) => {
                tracing::info!(image = name, trace = %path.display(), "another LUN is learning this image's trace; this one neither records nor replays it");
                (config, RecordOptions::default(), plan)
            }
            None => (config, RecordOptions::default(), None),
        }
    }

    /// Logs what learning does for the open `image` (named `name`), and once a learning
    /// recording has written its trace, what it holds. A learned trace that could not be
    /// replayed loses its `.ok`, so the next open learns it again.
    /// With `publish_learned`, a trace learned from a `registry:` LUN (`reference`) is then
    /// published to the reference's tag.
    async fn report_learning(
        &self,
        learn: Option<Learn>,
        image: &Image,
        name: &str,
        reference: Option<&crate::registry::ImageReference>,
    ) {
        let (window, publish_learned) = {
            let mode = self.learn_mode();
            (
                mode.store
                    .as_ref()
                    .map(LearnStore::window)
                    .unwrap_or_default(),
                mode.publish,
            )
        };
        match learn {
            Some(Learn::Record(path)) => {
                let Some(recorder) = image.prefetch().and_then(|p| p.recorder()).cloned() else {
                    return;
                };
                tracing::info!(image = name, trace = %path.display(), window_secs = window.as_secs(), "learning the image's prefetch trace from its first start");
                let name = name.to_string();
                let publish = reference.filter(|_| publish_learned).and_then(|r| {
                    let luns = self.remote_images().ok()?;
                    Some((luns, self.settings.plain_http.clone(), r.clone()))
                });
                // Detached: ends when the recording does (at the latest when the device closes).
                drop(tokio::spawn(async move {
                    let outcome = recorder.outcome().await;
                    match outcome.error {
                        None if outcome.reason == crate::prefetch::StopReason::Abandoned => {
                            tracing::info!(image = name, trace = %path.display(), "the LUN closed before it was read; nothing learned, the next open learns again");
                        }
                        None => {
                            let bytes = crate::prefetch::trace::HEADER_SIZE
                                + outcome.records * crate::prefetch::trace::RECORD_SIZE;
                            tracing::info!(image = name, trace = %path.display(), records = outcome.records, bytes, reason = ?outcome.reason, "learned prefetch trace written");
                            if let Some((luns, plain_http, reference)) =
                                publish.filter(|_| outcome.records > 0)
                            {
                                match publish_trace(&luns, &plain_http, &path, &reference, None)
                                    .await
                                {
                                    Ok(p) => {
                                        tracing::info!(image = name, pushed = %p.pinned, layer = %p.layer.digest, "learned prefetch trace published as the image's acceleration layer")
                                    }
                                    Err(e) => {
                                        tracing::warn!(image = name, error = %e, "could not publish the learned prefetch trace")
                                    }
                                }
                            }
                        }
                        Some(e) => {
                            tracing::warn!(image = name, trace = %path.display(), error = e, "could not write the learned prefetch trace")
                        }
                    }
                }));
            }
            Some(Learn::Replay(path)) => {
                if image.prefetch().is_some_and(|p| p.is_replaying()) {
                    tracing::info!(image = name, trace = %path.display(), "replaying the image's learned prefetch trace");
                } else if crate::prefetch::load(&path).await.is_err() {
                    let ok = crate::prefetch::record::companion(&path, ".ok");
                    if let Err(e) = std::fs::remove_file(&ok) {
                        tracing::warn!(trace = %path.display(), error = %e, "cannot discard an unusable learned trace");
                    } else {
                        tracing::info!(trace = %path.display(), "the learned trace is unusable; the next open learns it again");
                    }
                }
            }
            Some(Learn::Busy(_)) | None => {}
        }
    }

    /// Opens the image whose `config.v1.json` is at `path`: the config is read once, and the
    /// image goes through the shared registry caches only when some lower layer lives in a
    /// registry. Writes the config's `resultFile` either way.
    async fn open(
        &self,
        path: &Path,
        read_only: bool,
        learn: Option<bool>,
    ) -> Result<(Arc<dyn BlockDevice>, Option<PrefetchHandle>), BackingError> {
        let image_err = |source: LsmtError| BackingError::Image {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let probe = path.to_path_buf();
        let is_config = crate::sys::run_blocking(move || ImageConfig::is_config_file(&probe))
            .await
            .and_then(|r| r)
            .map_err(|e| image_err(LsmtError::io(path.display().to_string(), e)))?;
        if !is_config {
            // `image:layer.obd`: a sealed layer blob is served as a one-layer image.
            let image = LocalOpener::open_blob_image(path)
                .await
                .map_err(image_err)?;
            return Ok((Arc::new(image), None));
        }
        let load = path.to_path_buf();
        let config = crate::sys::run_blocking(move || ImageConfig::load(&load))
            .await
            .map_err(|e| image_err(LsmtError::Invalid(format!("reading the config: {e}"))))?
            .map_err(image_err)?;
        let name = path.display().to_string();
        let (config, record, learn) = self.learned(config, &name, learn).await;
        let remote = (0..config.lowers.len())
            .any(|i| matches!(config.locate(i, &name), Ok(LayerLocation::Remote { .. })));
        let image = if remote {
            let registry_err = |source: LsmtError| BackingError::Registry {
                path: path.to_path_buf(),
                source: Box::new(source),
            };
            let luns = self.remote_images().map_err(registry_err)?;
            Image::open_owned(&config, &name, luns.layers(), record)
                .await
                .map_err(registry_err)?
        } else {
            // The daemon's `prefetchConfig.concurrency` for replay, as registry images get.
            let opener = WithPrefetchWorkers {
                opener: LocalOpener,
                workers: self.settings.prefetch_config.workers(),
            };
            Image::open_owned(&config, &name, &opener, record)
                .await
                .map_err(image_err)?
        };
        self.report_learning(learn, &image, &name, None).await;
        let handle = image.prefetch().map(|p| p.handle());
        if let Some(why) = image.stack().uuid_chain_break() {
            // overlaybd serves such a stack without a word; refusing it would break images
            // the reference serves, so it is served, with the reason in the log.
            tracing::warn!(
                config = %path.display(),
                "layer UUID chain {why}: the layers may come from different images, and \
                 blocks an upper layer did not write read as the wrong image's data \
                 (serving anyway, as overlaybd does; `overlaybd-target inspect` shows the chain)"
            );
        }
        let device: Arc<dyn BlockDevice> = Arc::new(image);
        let device = if read_only && !device.read_only() {
            Arc::new(ReadOnlyDevice::new(device))
        } else {
            device
        };
        Ok((device, handle))
    }

    /// Opens the image `reference` names: resolves its manifest for this machine's platform
    /// through the shared registry client (loopback registries over HTTP, others over HTTPS)
    /// and reads its layers through the shared caches.
    async fn open_reference(
        &self,
        reference: &crate::registry::ImageReference,
        learn: Option<bool>,
    ) -> Result<(Arc<dyn BlockDevice>, String, Option<PrefetchHandle>), BackingError> {
        let name = format!("registry:{reference}");
        let registry_err = |source: LsmtError| BackingError::Registry {
            path: PathBuf::from(&name),
            source: Box::new(source),
        };
        let luns = self.remote_images().map_err(registry_err)?;
        let platform = crate::registry::Platform::host();
        let plain_http = &self.settings.plain_http;
        let resolved =
            crate::registry::resolve(luns.layers().client(), reference, &platform, plain_http)
                .await
                .map_err(|e| {
                    let source = match e.kind() {
                        std::io::ErrorKind::NotFound => SourceError::NotFound(e.to_string()),
                        std::io::ErrorKind::PermissionDenied => SourceError::Denied(e.to_string()),
                        std::io::ErrorKind::InvalidData => SourceError::Corrupt(Arc::new(e)),
                        _ => SourceError::Unavailable(e.to_string()),
                    };
                    registry_err(LsmtError::Source {
                        file: name.clone(),
                        source,
                    })
                })?;
        tracing::info!(
            reference = %reference,
            pinned = %resolved.pinned,
            layers = resolved.image.layers.len(),
            "image reference resolved"
        );
        let (config, record, learn) = self.learned(resolved.image_config(), &name, learn).await;
        // As the device's owner, so an acceleration layer's trace is replayed; the config has
        // no `resultFile`, so nothing is written.
        let image = Image::open_owned(&config, &name, luns.layers(), record)
            .await
            .map_err(registry_err)?;
        if image.size() == 0 {
            return Err(BackingError::Empty(PathBuf::from(name)));
        }
        self.report_learning(learn, &image, &name, Some(reference))
            .await;
        let handle = image.prefetch().map(|p| p.handle());
        let digest = resolved.pinned.digest.unwrap_or_default();
        Ok((Arc::new(image), digest, handle))
    }

    /// The shared remote-layer caches (the cache folder, the registry client), built on
    /// first use: by the first image with registry layers, or a cache request of the API.
    pub fn remote_images(&self) -> Result<Arc<RemoteImages>, LsmtError> {
        let mut slot = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(luns) = slot.as_ref() {
            return Ok(luns.clone());
        }
        let luns = Arc::new(RemoteImages::new(self.settings.clone())?);
        let cache = self.settings.cache();
        tracing::info!(
            folder = %cache.dir.display(),
            disk_bytes = cache.disk_bytes,
            memory_bytes = cache.memory_bytes,
            cache_type = %cache.cache_type,
            "registry layer cache in use"
        );
        *slot = Some(luns.clone());
        Ok(luns)
    }

    /// Counters and sizes of the registry layer cache; `None` until an image with registry
    /// layers was opened.
    pub fn cache_stats(&self) -> Option<(crate::cache::CacheStats, u64, u64)> {
        let slot = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let tiers = slot.as_ref()?.layers().tiers().clone();
        Some((tiers.stats(), tiers.memory_used(), tiers.disk_used()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs an async open to completion from a plain test.
    fn now<T>(open: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(open)
    }

    #[test]
    fn parses_file_ram_and_read_only_prefix() {
        assert_eq!(
            LunSpec::parse("file:/tmp/x.img").unwrap(),
            LunSpec {
                backing: Backing::File("/tmp/x.img".into()),
                read_only: false,
                remote_failure: None,
                unit: UnitSpec::default(),
                learn: None,
            }
        );
        assert_eq!(
            LunSpec::parse("ram:1G").unwrap(),
            LunSpec {
                backing: Backing::Ram(1 << 30),
                read_only: false,
                remote_failure: None,
                unit: UnitSpec::default(),
                learn: None,
            }
        );
        assert_eq!(
            LunSpec::parse("ro:file:/a:b").unwrap(),
            LunSpec {
                backing: Backing::File("/a:b".into()),
                read_only: true,
                remote_failure: None,
                unit: UnitSpec::default(),
                learn: None,
            }
        );
    }

    #[test]
    fn parses_image_and_demo() {
        let spec = LunSpec::parse("ro:image:/img/config.v1.json").unwrap();
        assert_eq!(spec.backing, Backing::Image("/img/config.v1.json".into()));
        assert!(spec.read_only);
        assert_eq!(spec.to_string(), "ro:image:/img/config.v1.json");
        let demo = LunSpec::parse("demo:").unwrap();
        assert_eq!(
            (demo.backing.clone(), demo.read_only),
            (Backing::Demo, true)
        );
        assert_eq!(LunSpec::parse(&demo.to_string()).unwrap(), demo);
        assert!(matches!(
            LunSpec::parse("image:"),
            Err(BackingError::EmptyPath(_))
        ));
    }

    #[test]
    fn opens_image_configs_writable_or_read_only() {
        use crate::overlaybd::writable::{CreateOptions, WritableLayer};
        let dir = tempfile::tempdir().unwrap();
        let (data, index) = (dir.path().join("u.data"), dir.path().join("u.index"));
        WritableLayer::create(&data, &index, &CreateOptions::new(1 << 20)).unwrap();
        let config = dir.path().join("config.v1.json");
        let json = serde_json::json!({
            "lowers": [],
            "upper": { "data": data, "index": index },
        });
        std::fs::write(&config, json.to_string()).unwrap();

        let rw = LunSpec::parse(&format!("image:{}", config.display())).unwrap();
        let lun =
            now(rw.lun_config("iqn.x", 0, &ImageOpener::new(DaemonSettings::default()))).unwrap();
        assert_eq!(lun.device.size(), 1 << 20);
        assert!(!lun.device.read_only());
        assert_eq!(lun.product, "overlaybd image");
        let ro = LunSpec::parse(&format!("ro:image:{}", config.display())).unwrap();
        assert!(now(ro.open()).unwrap().read_only());

        let missing = LunSpec::parse("image:/nonexistent/config.v1.json").unwrap();
        let e = now(missing.open()).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/config.v1.json"), "{e}");
        std::fs::write(&config, b"{ not json").unwrap();
        assert!(matches!(now(rw.open()), Err(BackingError::Image { .. })));
    }

    #[tokio::test]
    async fn opens_the_demo_inside_a_runtime() {
        let demo = LunSpec::parse("demo:").unwrap().open().await.unwrap();
        assert!(demo.read_only());
        assert_eq!(demo.size(), 8 << 20);
    }

    #[test]
    fn open_failures_are_classified_for_the_not_ready_code() {
        let missing = LunSpec::parse("file:/nonexistent/disk.img").unwrap();
        assert_eq!(
            now(missing.open()).err().unwrap().unavailable(),
            Unavailable::Missing
        );
        let missing = LunSpec::parse("image:/nonexistent/config.v1.json").unwrap();
        assert_eq!(
            now(missing.open()).err().unwrap().unavailable(),
            Unavailable::Missing
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.v1.json");
        std::fs::write(&config, b"{ not json").unwrap();
        let corrupt = LunSpec::parse(&format!("image:{}", config.display())).unwrap();
        assert_eq!(
            now(corrupt.open()).err().unwrap().unavailable(),
            Unavailable::Corrupt
        );
        let registry = BackingError::Registry {
            path: config.clone(),
            source: Box::new(LsmtError::io(
                "registry",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            )),
        };
        assert_eq!(registry.unavailable(), Unavailable::Unreachable);
        let lun = corrupt.unavailable_lun("iqn.x", 0, Unavailable::Corrupt);
        let good = corrupt.describe(
            "iqn.x",
            0,
            Arc::new(RamDevice::new(512)),
            corrupt.content_identity(None),
        );
        assert_eq!((lun.serial, lun.product), (good.serial, good.product));
        assert_eq!(lun.device.unavailable(), Some(Unavailable::Corrupt));
    }

    #[test]
    fn rejects_bad_strings() {
        assert!(matches!(
            LunSpec::parse("disk:/x"),
            Err(BackingError::UnknownKind(_))
        ));
        assert!(matches!(
            LunSpec::parse("file:"),
            Err(BackingError::EmptyPath(_))
        ));
        assert!(matches!(
            LunSpec::parse("ram:lots"),
            Err(BackingError::BadSize { .. })
        ));
        assert!(matches!(
            LunSpec::parse("ram:0"),
            Err(BackingError::BadRamSize(_))
        ));
        assert!(matches!(
            LunSpec::parse("ram:1000"),
            Err(BackingError::BadRamSize(_))
        ));
        // A bare number is bytes; under 1 MiB it is refused as a unit left out.
        let e = LunSpec::parse("ram:1024").unwrap_err();
        assert!(matches!(e, BackingError::RamSizeWithoutUnit(_)), "{e}");
        assert!(e.to_string().contains("ram:64M"), "{e}");
        assert_eq!(
            LunSpec::parse("ram:4096B").unwrap().backing,
            Backing::Ram(4096)
        );
        assert_eq!(
            LunSpec::parse("ram:1073741824").unwrap().backing,
            Backing::Ram(1 << 30),
            "a bare byte count from an older state file"
        );
        // More than the machine has.
        let memory = crate::sys::physical_memory().expect("/proc/meminfo or sysconf");
        let too_big = format!("ram:{}K", (memory >> 10) + 1024);
        let e = LunSpec::parse(&too_big).unwrap_err();
        assert!(
            matches!(e, BackingError::RamLargerThanMemory { .. })
                && e.to_string().contains(&format!("{} MiB", memory >> 20)),
            "{e}"
        );
    }

    #[test]
    fn registry_references_parse_read_only_and_print_back() {
        let text = "registry:127.0.0.1:5000/team/app:v1";
        let spec = LunSpec::parse(text).unwrap();
        assert!(
            spec.read_only,
            "an image by reference has no writable layer"
        );
        assert_eq!(spec.to_string(), text);
        assert_eq!(LunSpec::parse(&spec.to_string()).unwrap(), spec);
        let e = LunSpec::parse("registry:ubuntu:22.04")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registry:") && e.contains("HOST[:PORT]/REPOSITORY"),
            "{e}"
        );
    }

    #[test]
    fn options_follow_the_backing_and_print_back() {
        let spec = LunSpec::parse("ro:file:/a,b/disk.img,remote_failure=fail:5s").unwrap();
        assert_eq!(
            spec.backing,
            Backing::File("/a,b/disk.img".into()),
            "a comma in a path"
        );
        assert!(spec.read_only);
        assert_eq!(
            spec.remote_failure,
            Some(RemoteFailurePolicy::Fail {
                deadline: std::time::Duration::from_secs(5)
            })
        );
        assert_eq!(
            spec.to_string(),
            "ro:file:/a,b/disk.img,remote_failure=fail:5s"
        );
        let reg =
            LunSpec::parse("registry:127.0.0.1:5000/app:v1,remote_failure=hold:forever").unwrap();
        assert_eq!(
            reg.remote_failure,
            Some(RemoteFailurePolicy::Hold { deadline: None })
        );
        assert_eq!(LunSpec::parse(&reg.to_string()).unwrap(), reg);
        assert_eq!(
            without_lun_options("ro:file:/a,b/disk.img,remote_failure=fail:5s"),
            "ro:file:/a,b/disk.img"
        );
        assert_eq!(without_lun_options("file:/a,b/c.img"), "file:/a,b/c.img");
        // Options do not change the serial (and so the WWN) of a LUN named by its text.
        let plain = LunSpec::parse("file:/x.img").unwrap();
        let with = LunSpec::parse("file:/x.img,remote_failure=fail").unwrap();
        assert_eq!(
            plain
                .unavailable_lun("iqn.x", 0, Unavailable::Failed)
                .serial,
            with.unavailable_lun("iqn.x", 0, Unavailable::Failed).serial
        );
        for (bad, says) in [
            (
                "file:/x.img,remote_falure=hold",
                "unknown LUN option \"remote_falure\"",
            ),
            (
                "file:/x.img,remote_failure=hold,remote_failure=fail",
                "given twice",
            ),
            (
                "file:/x.img,remote_failure=wait",
                "remote failure policy \"wait\"",
            ),
            (
                "file:/x.img,remote_failure=hold,junk",
                "unknown LUN option \"junk\"",
            ),
        ] {
            let e = LunSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("file:/x.img"), "{bad}: {e}");
        }
    }

    #[test]
    fn learn_is_an_option_of_image_and_registry_luns() {
        let reg = LunSpec::parse("registry:127.0.0.1:5000/app:v1,learn=false").unwrap();
        assert_eq!(reg.learn, Some(false));
        assert_eq!(LunSpec::parse(&reg.to_string()).unwrap(), reg);
        let image = LunSpec::parse("image:/c.json,learn=true").unwrap();
        assert_eq!(
            (image.learn, image.to_string().as_str()),
            (Some(true), "image:/c.json,learn=true")
        );
        assert_eq!(LunSpec::parse("image:/c.json").unwrap().learn, None);
        for bad in [
            "file:/x.img,learn=true",
            "ram:1M,learn=false",
            "demo:,learn=true",
        ] {
            let e = LunSpec::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("only image: and registry: LUNs learn"),
                "{bad}: {e}"
            );
        }
        let e = LunSpec::parse("image:/c.json,learn=yes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected true or false"), "{e}");
    }

    #[test]
    fn unit_options_set_the_scsi_view_but_not_the_serial() {
        let text = "file:/x.img,physical_block_size=4K,removable=true,thin=false";
        let spec = LunSpec::parse(text).unwrap();
        assert_eq!(
            spec.unit,
            UnitSpec {
                physical_block_size: Some(4096),
                removable: true,
                thick: true,
            }
        );
        assert_eq!(
            spec.to_string(),
            "file:/x.img,physical_block_size=4096,removable=true,thin=false"
        );
        assert_eq!(LunSpec::parse(&spec.to_string()).unwrap(), spec);
        let lun = spec.unavailable_lun("iqn.x", 0, Unavailable::Failed);
        assert_eq!(
            lun.options,
            UnitOptions {
                physical_block_exponent: 3,
                removable: true,
                thin: false,
            }
        );
        let plain = LunSpec::parse("file:/x.img").unwrap();
        let plain_lun = plain.unavailable_lun("iqn.x", 0, Unavailable::Failed);
        assert_eq!(lun.serial, plain_lun.serial);
        assert_eq!(plain_lun.options, UnitOptions::default());
        // Images default to their 4 KiB blocks; an explicit size wins.
        let image = LunSpec::parse("image:/i/config.v1.json").unwrap();
        let exponent = |spec: &LunSpec| {
            spec.unavailable_lun("iqn.x", 0, Unavailable::Failed)
                .options
                .physical_block_exponent
        };
        assert_eq!(exponent(&image), 3);
        let image = LunSpec::parse("image:/i/config.v1.json,physical_block_size=512").unwrap();
        assert_eq!(exponent(&image), 0);
        for (bad, says) in [
            ("file:/x.img,physical_block_size=3000", "a power of two"),
            ("file:/x.img,physical_block_size=256", "a power of two"),
            ("file:/x.img,physical_block_size=1M", "a power of two"),
            ("file:/x.img,removable=yes", "expected true or false"),
            ("file:/x.img,thin=", "expected true or false"),
        ] {
            let e = LunSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("file:/x.img"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_ram_luns_serial_is_the_one_it_had_before_sizes_printed_with_units() {
        let lun =
            LunSpec::parse("ram:1M")
                .unwrap()
                .unavailable_lun("iqn.x", 0, Unavailable::Failed);
        let before = hex::encode(&Sha256::digest(b"iqn.x/0/ram:1048576")[..8]);
        assert_eq!(lun.serial, before);
    }

    /// The serial of an image follows its content: the same layers (or manifest digest) give
    /// the same serial on any target and LUN number, while it is NOT READY as once it opens
    /// (the identity needs no open); other layers, another writable layer, or a config with a
    /// local blob (named by path: target, number and text as before) give others.
    #[test]
    fn an_images_serial_follows_its_content_not_where_it_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let digest = |n: u8| format!("sha256:{}", hex::encode([n; 32]));
        let config = |name: &str, body: serde_json::Value| {
            let path = dir.path().join(name);
            std::fs::write(&path, body.to_string()).unwrap();
            LunSpec::parse(&format!("image:{}", path.display())).unwrap()
        };
        let lowers = |ds: &[u8]| {
            serde_json::json!(ds
                .iter()
                .map(|&n| serde_json::json!({"digest": digest(n), "size": 1}))
                .collect::<Vec<_>>())
        };
        let url = "http://127.0.0.1:1/v2/a/blobs";
        let a = config(
            "a.json",
            serde_json::json!({"repoBlobUrl": url, "lowers": lowers(&[1, 2])}),
        );
        let same = config(
            "same.json",
            serde_json::json!({"repoBlobUrl": "http://elsewhere/v2/b/blobs", "lowers": lowers(&[1, 2])}),
        );
        let other = config(
            "o.json",
            serde_json::json!({"repoBlobUrl": url, "lowers": lowers(&[2, 1])}),
        );
        let local = config(
            "l.json",
            serde_json::json!({"lowers": [{"file": "/x.obd"}]}),
        );
        let serial = |spec: &LunSpec, target: &str, n: u64| {
            spec.unavailable_lun(target, n, Unavailable::Opening).serial
        };
        assert_eq!(serial(&a, "iqn.a", 0), serial(&same, "iqn.b", 7));
        assert_ne!(serial(&a, "iqn.a", 0), serial(&other, "iqn.a", 0));
        assert_ne!(serial(&local, "iqn.a", 0), serial(&local, "iqn.a", 1));

        let pinned = |text: &str| LunSpec::parse(&format!("registry:{text}")).unwrap();
        let d = digest(9);
        let by_digest = pinned(&format!("127.0.0.1:5000/app@{d}"));
        let tagged_and_pinned = pinned(&format!("mirror.example/team/app:v1@{d}"));
        assert_eq!(
            serial(&by_digest, "iqn.a", 0),
            serial(&tagged_and_pinned, "iqn.b", 3)
        );
        // Once a tag is resolved at open, the serial is the one its digest gives.
        let tag = pinned("127.0.0.1:5000/app:v1");
        let opened = tag.describe(
            "iqn.c",
            2,
            Arc::new(RamDevice::new(512)),
            tag.content_identity(Some(&d)),
        );
        assert_eq!(opened.serial, serial(&by_digest, "iqn.a", 0));
        assert_ne!(
            serial(&tag, "iqn.c", 2),
            opened.serial,
            "not known before open"
        );
    }

    #[test]
    fn ram_sizes_print_in_units_that_parse_back() {
        for (text, shown) in [
            ("ram:1G", "ram:1G"),
            ("ram:1024M", "ram:1G"),
            ("ram:1048576", "ram:1M"),
            ("ram:4608B", "ram:4608B"),
            ("ro:ram:6K", "ro:ram:6K"),
        ] {
            let spec = LunSpec::parse(text).unwrap();
            assert_eq!(spec.to_string(), shown);
            assert_eq!(LunSpec::parse(shown).unwrap(), spec);
        }
    }

    #[test]
    fn opens_ram_and_file_devices() {
        let ram = now(LunSpec::parse("ro:ram:1M").unwrap().open()).unwrap();
        assert_eq!(ram.size(), 1 << 20);
        assert!(ram.read_only());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let spec = LunSpec::parse(&format!("file:{}", path.display())).unwrap();
        let lun =
            now(spec.lun_config("iqn.x", 0, &ImageOpener::new(DaemonSettings::default()))).unwrap();
        assert_eq!(lun.device.size(), 4096);
        assert!(!lun.device.read_only());
        assert_eq!(lun.serial.len(), 16);

        let missing = LunSpec::parse("file:/nonexistent/disk.img").unwrap();
        assert!(matches!(
            now(missing.open()),
            Err(BackingError::Open { .. })
        ));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(now(spec.open()), Err(BackingError::Empty(_))));
    }
}

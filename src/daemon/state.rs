//! The state file: what the management API changed, kept across restarts, so that a target that
//! crashes (even `kill -9`) comes back with every LUN its hosts had.
//!
//! # Design: the state file holds a diff, not a snapshot
//!
//! The configuration (`--config`, or the quick command-line form) stays the declarative
//! starting point; the management API adds and removes targets and LUNs while the target runs.
//! The state file (`--state FILE`, default `/var/lib/overlaybd-target/state.json`) holds **only
//! what the management API changed relative to the declared configuration**:
//!
//! - at start the daemon serves `served = apply(declared, state)` ([`apply`]);
//! - after each change through the API it saves `diff(declared, served_now)` ([`diff`],
//!   [`StateFile::save`]).
//!
//! So:
//!
//! 1. a target or LUN added through the API survives restarts;
//! 2. a target or LUN removed through the API stays removed, even though the configuration
//!    still declares it;
//! 3. anything the API never touched follows the configuration: edit the configuration,
//!    restart, and the edit takes effect;
//! 4. when the configuration later changes an item that the API also changed, the API's change
//!    wins for that item, and the daemon logs a notice saying so.
//!
//! For any declared and served sets, `apply(declared, diff(declared, served)) == served`: a
//! restart with an unchanged configuration serves exactly what was served before. When nothing
//! was changed through the API the diff is empty (and the file may be absent).
//!
//! ## What the diff holds
//!
//! For each target name, declared or served:
//!
//! - declared only: the name is in `removed_targets`;
//! - served only: the whole definition, LUNs included, is in `added_targets`;
//! - both, with other settings (alias, CHAP, allowed initiators, target reset; e.g. CHAP changed
//!   by removing and re-adding the target through the API): in both, i.e. replaced whole;
//! - both, with the same settings: the LUN changes are in `changed_luns`. `removed` holds the
//!   declared LUNs that are not served, `added` the served LUNs that are not declared. A LUN
//!   whose backing was changed at the same number is in both. A removed LUN keeps the backing
//!   the configuration declared it with, so that a later edit of that LUN in the configuration
//!   is noticed rather than silently overridden.
//!
//! LUN backings are stored as the backing strings `--lun` takes (`ro:image:CONFIG.json`, …).
//! CHAP secrets of added targets are stored too, which is why the file is private (0600).
//!
//! ```json
//! {
//!   "version": 1,
//!   "removed_targets": ["iqn.2024-01.com.example:old"],
//!   "added_targets": [
//!     {
//!       "name": "iqn.2024-01.com.example:scratch",
//!       "luns": { "0": { "backing": "ram:1073741824" } },
//!       "chap": { "user": "host", "secret": "a-long-secret" },
//!       "allowed_initiators": [],
//!       "allow_target_reset": false
//!     }
//!   ],
//!   "changed_luns": {
//!     "iqn.2024-01.com.example:db": {
//!       "removed": { "0": { "backing": "ro:image:/images/db-v1/config.v1.json" } },
//!       "added": {
//!         "0": { "backing": "ro:image:/images/db-v2/config.v1.json" },
//!         "4": { "backing": "file:/srv/scratch.img" }
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! Here the API removed the target `old`, added `scratch`, and on `db` replaced LUN 0's image
//! and added LUN 4; every other target and LUN follows the configuration.
//!
//! ## Conflicts and stale entries
//!
//! [`apply`] accepts any state against any configuration and never fails; what the state says
//! wins, and each of these cases yields a notice for the log:
//!
//! - a target or LUN the API removed that the configuration no longer declares: nothing to do;
//! - a target or LUN the API added that the configuration now declares differently: the API's
//!   definition is served;
//! - a LUN the API removed or replaced whose backing the configuration has since changed: it
//!   stays removed or replaced;
//! - a target or LUN the API replaced that the configuration no longer declares: the API's
//!   definition is served;
//! - LUN changes for a target the configuration no longer declares: ignored.
//!
//! Not noticed: an edit in the configuration to a target that the API removed or replaced
//! whole (the state keeps only the name of a removed target); the API's change still wins.
//! The next save after such a start writes the diff against the configuration as it is now,
//! which drops the stale entries.
//!
//! ## The file
//!
//! JSON with a `version` (this build reads and writes [`STATE_VERSION`]). [`StateFile::save`]
//! replaces it atomically: the new content goes to a temporary file in the same directory, is
//! flushed to disk, renamed over the old file, and the directory is flushed, so a crash at any
//! moment leaves either the old or the new state, never a mix. The file is created with mode
//! 0600, and a missing directory with 0700. Loading and saving block (they fsync): call them
//! from `spawn_blocking`.
//!
//! The examples above are the tests `added_lun_survives`, `removed_config_lun_stays_removed`,
//! `config_edits_of_untouched_items_apply`, `ctl_wins_on_conflicts`,
//! `replaced_target_is_removed_and_added` and `nothing_changed_is_an_empty_diff`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::definition::TargetDef;
use crate::config::{ChapCredentials, LunSpec};

/// Where the state file lives unless `--state` says otherwise.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/overlaybd-target/state.json";

/// The format version this build reads and writes.
pub const STATE_VERSION: u64 = 1;

/// Targets by name: what is declared, and what is served.
pub type Targets = BTreeMap<String, TargetDef>;

/// What the management API changed relative to the declared configuration (see the module
/// documentation for its meaning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// Declared targets that are not served (also those replaced whole).
    pub removed_targets: BTreeSet<String>,
    /// Served targets that are not declared, or replaced whole, keyed by name.
    pub added_targets: Targets,
    /// LUN changes of targets that are declared and served with the same settings.
    pub changed_luns: BTreeMap<String, LunChanges>,
}

impl StateDiff {
    /// True when the API changed nothing: the configuration is served as declared.
    pub fn is_empty(&self) -> bool {
        self.removed_targets.is_empty()
            && self.added_targets.is_empty()
            && self.changed_luns.is_empty()
    }
}

/// The LUN changes of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LunChanges {
    /// Declared LUNs that are not served, with the backing the configuration declared them
    /// with when they were removed (to notice later edits of the configuration).
    pub removed: BTreeMap<u64, LunSpec>,
    /// Served LUNs that are not declared, or declared with another backing.
    pub added: BTreeMap<u64, LunSpec>,
}

impl LunChanges {
    /// True when the LUNs are served as declared.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// What the daemon must persist so that `apply(declared, diff(declared, current)) == current`.
pub fn diff(declared: &Targets, current: &Targets) -> StateDiff {
    let mut out = StateDiff::default();
    for (name, old) in declared {
        match current.get(name) {
            None => {
                out.removed_targets.insert(name.clone());
            }
            Some(new) if !old.same_settings(new) => {
                out.removed_targets.insert(name.clone());
                out.added_targets.insert(name.clone(), new.clone());
            }
            Some(new) => {
                let changes = lun_changes(&old.luns, &new.luns);
                if !changes.is_empty() {
                    out.changed_luns.insert(name.clone(), changes);
                }
            }
        }
    }
    for (name, new) in current {
        if !declared.contains_key(name) {
            out.added_targets.insert(name.clone(), new.clone());
        }
    }
    out
}

fn lun_changes(old: &BTreeMap<u64, LunSpec>, new: &BTreeMap<u64, LunSpec>) -> LunChanges {
    // Entries of `from` that `other` lacks or holds with another backing.
    let differing = |from: &BTreeMap<u64, LunSpec>, other: &BTreeMap<u64, LunSpec>| {
        from.iter()
            .filter(|(n, spec)| other.get(n) != Some(spec))
            .map(|(n, spec)| (*n, spec.clone()))
            .collect()
    };
    LunChanges {
        removed: differing(old, new),
        added: differing(new, old),
    }
}

/// What to serve: the declared targets with the state's changes applied, and a notice for the
/// log for each conflict or stale entry (see the module documentation). Never fails: where the
/// configuration and the state disagree, the state wins.
pub fn apply(declared: &Targets, state: &StateDiff) -> (Targets, Vec<String>) {
    let mut served = declared.clone();
    let mut notices = Vec::new();
    for name in &state.removed_targets {
        if served.remove(name).is_none() && !state.added_targets.contains_key(name) {
            notices.push(format!(
                "target {name}: removed through the management API and no longer declared by \
                 the configuration; nothing to do"
            ));
        }
    }
    for (name, def) in &state.added_targets {
        let replaced = state.removed_targets.contains(name);
        match declared.get(name) {
            Some(now) if !replaced && now != def => notices.push(format!(
                "target {name}: added through the management API and now also declared by the \
                 configuration, differently; the management API's definition is served"
            )),
            None if replaced => notices.push(format!(
                "target {name}: replaced through the management API and no longer declared by \
                 the configuration; the management API's definition is served"
            )),
            _ => {}
        }
        served.insert(name.clone(), def.clone());
    }
    for (name, changes) in &state.changed_luns {
        let target = match served.get_mut(name) {
            Some(_) if state.added_targets.contains_key(name) => {
                notices.push(format!(
                    "target {name}: LUN changes in the state file ignored: the management API \
                     defines the whole target"
                ));
                continue;
            }
            Some(target) => target,
            None => {
                notices.push(format!(
                    "target {name}: LUN changes made through the management API ignored: the \
                     configuration no longer declares the target"
                ));
                continue;
            }
        };
        apply_luns(name, target, changes, &mut notices);
    }
    (served, notices)
}

fn apply_luns(name: &str, target: &mut TargetDef, changes: &LunChanges, notices: &mut Vec<String>) {
    for (n, was) in &changes.removed {
        let replaced = changes.added.contains_key(n);
        let what = if replaced { "replaced" } else { "removed" };
        match target.luns.get(n) {
            None if replaced => notices.push(format!(
                "target {name}: LUN {n} was replaced through the management API and is no \
                 longer declared by the configuration; the management API's LUN is served"
            )),
            None => notices.push(format!(
                "target {name}: LUN {n} was removed through the management API and is no longer \
                 declared by the configuration; nothing to do"
            )),
            Some(now) => {
                if now != was {
                    notices.push(format!(
                        "target {name}: LUN {n} was {what} through the management API when the \
                         configuration declared {was}; the configuration now declares {now}, \
                         and it stays {what}"
                    ));
                }
                target.luns.remove(n);
            }
        }
    }
    for (n, spec) in &changes.added {
        // Still present here only when the configuration declares it and the state did not
        // remove it: the configuration added it since.
        match target.luns.get(n) {
            Some(now) if now != spec => notices.push(format!(
                "target {name}: LUN {n} was added through the management API as {spec}; the \
                 configuration now declares {now}; the management API's LUN is served"
            )),
            _ => {}
        }
        target.luns.insert(*n, spec.clone());
    }
}

/// Why the state file could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("state file {}: cannot read: {source}", .path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file is not valid JSON, or a field has the wrong type or an unusable value (such as
    /// a backing string that does not parse).
    #[error("state file {}: {}", .path.display(), located(.field, .message))]
    Parse {
        /// The state file.
        path: PathBuf,
        /// Path of the offending field (`.` when the document itself is wrong).
        field: String,
        /// What is wrong, with the line and column.
        message: String,
    },
    /// The file was written by a build with another format.
    #[error(
        "state file {}: version {found} is not supported (this build reads version {})",
        .path.display(),
        STATE_VERSION
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version the file declares.
        found: u64,
    },
    /// The file parsed but contradicts itself.
    #[error("state file {}: {message}", .path.display())]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state holds something that would not read back the same (a LUN whose backing
    /// string does not parse to it, e.g. a path that is not UTF-8); nothing was written.
    #[error("state file {}: cannot store: {message}", .path.display())]
    Unstorable {
        /// The state file.
        path: PathBuf,
        /// What cannot be stored.
        message: String,
    },
    /// A step of saving failed. Before the rename the old state is intact; when flushing the
    /// directory fails the new state is in place but may not survive a power loss.
    #[error("state file {}: cannot save: {step}: {source}", .path.display())]
    Write {
        /// The state file.
        path: PathBuf,
        /// The step that failed, naming the file or directory it worked on.
        step: String,
        /// The operating-system error.
        source: std::io::Error,
    },
}

/// `message` prefixed by the field it is about, unless it is about the whole document.
fn located(field: &str, message: &str) -> String {
    if field.is_empty() || field == "." {
        message.to_string()
    } else {
        format!("field `{field}`: {message}")
    }
}

/// The state file on disk.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// Tells apart the temporary files of saves running at once in this process.
static SAVE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl StateFile {
    /// The state file at `path` (not touched until loaded or saved).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into() }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved diff, or `None` when there is no file (first start). Temporary files of an
    /// interrupted save are ignored. Blocks.
    pub fn load(&self) -> Result<Option<StateDiff>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        decode(&text)
            .map(Some)
            .map_err(|e| e.into_error(self.path.clone()))
    }

    /// Replaces the file with `diff`, atomically and durably (see the module documentation),
    /// creating its directory (0700) when missing. Saves running at once each write their own
    /// temporary file; the last rename wins. Blocks.
    pub fn save(&self, diff: &StateDiff) -> Result<(), StateError> {
        let bytes = encode(diff).map_err(|message| StateError::Unstorable {
            path: self.path.clone(),
            message,
        })?;
        let write_err = |step: String, source| StateError::Write {
            path: self.path.clone(),
            step,
            source,
        };
        let Some(file_name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Err(write_err(
                "name a file".to_string(),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path does not end in a UTF-8 file name",
                ),
            ));
        };
        let dir = parent_dir(&self.path);
        ensure_dir(dir)
            .map_err(|(d, e)| write_err(format!("create directory {}", d.display()), e))?;
        let temp = dir.join(format!(
            ".{file_name}.{}.{}.{:016x}.tmp",
            std::process::id(),
            SAVE_SEQUENCE.fetch_add(1, Ordering::Relaxed),
            rand::random::<u64>()
        ));
        let written = write_private(&temp, &bytes)
            .map_err(|e| write_err(format!("write {}", temp.display()), e))
            .and_then(|()| {
                std::fs::rename(&temp, &self.path).map_err(|e| {
                    write_err(
                        format!("rename {} to {}", temp.display(), self.path.display()),
                        e,
                    )
                })
            });
        if let Err(e) = written {
            // Best effort: the error above is what matters; a leftover is ignored by `load`
            // and removed by `remove_leftovers`.
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(dir).map_err(|e| write_err(format!("flush directory {}", dir.display()), e))
    }

    /// Removes the temporary files that saves interrupted by a crash left next to the file
    /// (they hold CHAP secrets). Those of this process are kept, in case a save is running.
    /// Returns the files removed. Blocks.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, StateError> {
        let Some(file_name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(Vec::new());
        };
        let dir = parent_dir(&self.path);
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| temp_pid(n, file_name)) else {
                continue;
            };
            if pid != std::process::id() && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
        Ok(removed)
    }
}

/// The process id in the name of a temporary file of `save` for `file_name`, or `None` when
/// `name` is not one.
fn temp_pid(name: &str, file_name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix('.')?
        .strip_prefix(file_name)?
        .strip_prefix('.')?
        .strip_suffix(".tmp")?;
    let mut parts = rest.split('.');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    let random = parts.next()?;
    let hex = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && parts.next().is_none()).then_some(pid)
}

/// The folder `path` is in (`.` for a bare file name).
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors with mode 0700 and makes their entries durable;
/// on failure, returns the directory that failed.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    if dir.is_dir() {
        return Ok(());
    }
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| (dir.to_path_buf(), e))?;
    for created in missing.into_iter().rev() {
        // The umask may have taken bits from 0700 that saving needs.
        std::fs::set_permissions(created, Permissions::from_mode(0o700))
            .and_then(|()| sync_dir(parent_dir(created)))
            .map_err(|e| (created.to_path_buf(), e))?;
    }
    Ok(())
}

/// Writes a new file readable by its owner only and flushes it to disk.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // Exactly 0600 whatever the umask.
    file.set_permissions(Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes the entries of `dir` (a rename or removal in it) to disk.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why the text of a state file was refused, before the file's path is attached.
enum DecodeError {
    Parse { field: String, message: String },
    Version(u64),
    Invalid(String),
}

impl DecodeError {
    fn into_error(self, path: PathBuf) -> StateError {
        match self {
            DecodeError::Parse { field, message } => StateError::Parse {
                path,
                field,
                message,
            },
            DecodeError::Version(found) => StateError::Version { path, found },
            DecodeError::Invalid(message) => StateError::Invalid { path, message },
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| DecodeError::Parse {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    de.end().map_err(|e| DecodeError::Parse {
        field: ".".to_string(),
        message: e.to_string(),
    })?;
    Ok(value)
}

fn decode(text: &str) -> Result<StateDiff, DecodeError> {
    if text.trim().is_empty() {
        // Saves never leave an empty file; say so plainly rather than "EOF at line 1".
        return Err(DecodeError::Invalid("the file is empty".to_string()));
    }
    // The version first, so that a file of another format is reported as such rather than by
    // the first field this build does not know.
    let probe: VersionProbe = parse(text)?;
    if probe.version != STATE_VERSION {
        return Err(DecodeError::Version(probe.version));
    }
    let file: FileV1 = parse(text)?;
    let mut added_targets = Targets::new();
    for (i, target) in file.added_targets.into_iter().enumerate() {
        let def = target.into_def();
        if added_targets.contains_key(&def.name) {
            return Err(DecodeError::Invalid(format!(
                "added_targets[{i}]: target {} is listed twice",
                def.name
            )));
        }
        added_targets.insert(def.name.clone(), def);
    }
    Ok(StateDiff {
        removed_targets: file.removed_targets,
        added_targets,
        changed_luns: file
            .changed_luns
            .into_iter()
            .map(|(name, c)| {
                let changes = LunChanges {
                    removed: unwrap_luns(c.removed),
                    added: unwrap_luns(c.added),
                };
                (name, changes)
            })
            .collect(),
    })
}

fn encode(diff: &StateDiff) -> Result<Vec<u8>, String> {
    let file = FileV1 {
        version: STATE_VERSION,
        removed_targets: diff.removed_targets.clone(),
        added_targets: diff
            .added_targets
            .values()
            .map(TargetEntry::from_def)
            .collect(),
        changed_luns: diff
            .changed_luns
            .iter()
            .map(|(name, c)| {
                let entry = LunChangesEntry {
                    removed: wrap_luns(&c.removed),
                    added: wrap_luns(&c.added),
                };
                (name.clone(), entry)
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn wrap_luns(luns: &BTreeMap<u64, LunSpec>) -> BTreeMap<u64, LunEntry> {
    luns.iter()
        .map(|(n, spec)| {
            (
                *n,
                LunEntry {
                    backing: spec.clone(),
                },
            )
        })
        .collect()
}

fn unwrap_luns(luns: BTreeMap<u64, LunEntry>) -> BTreeMap<u64, LunSpec> {
    luns.into_iter().map(|(n, e)| (n, e.backing)).collect()
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

/// The file, version 1. Unknown fields are refused: a hand edit with a typo must not be
/// silently dropped by the next save.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u64,
    #[serde(default)]
    removed_targets: BTreeSet<String>,
    #[serde(default)]
    added_targets: Vec<TargetEntry>,
    #[serde(default)]
    changed_luns: BTreeMap<String, LunChangesEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetEntry {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    #[serde(default)]
    luns: BTreeMap<u64, LunEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chap: Option<ChapCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mutual_chap: Option<ChapCredentials>,
    #[serde(default)]
    allowed_initiators: Vec<String>,
    #[serde(default)]
    allow_target_reset: bool,
}

impl TargetEntry {
    fn from_def(def: &TargetDef) -> Self {
        TargetEntry {
            name: def.name.clone(),
            alias: def.alias.clone(),
            luns: wrap_luns(&def.luns),
            chap: def.chap.clone(),
            mutual_chap: def.mutual_chap.clone(),
            allowed_initiators: def.allowed_initiators.clone(),
            allow_target_reset: def.allow_target_reset,
        }
    }

    fn into_def(self) -> TargetDef {
        TargetDef {
            name: self.name,
            alias: self.alias,
            luns: unwrap_luns(self.luns),
            chap: self.chap,
            mutual_chap: self.mutual_chap,
            allowed_initiators: self.allowed_initiators,
            allow_target_reset: self.allow_target_reset,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LunChangesEntry {
    #[serde(default)]
    removed: BTreeMap<u64, LunEntry>,
    #[serde(default)]
    added: BTreeMap<u64, LunEntry>,
}

/// One LUN, an object so that fields can be added later.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LunEntry {
    #[serde(with = "backing_string")]
    backing: LunSpec,
}

/// A LUN as its backing string, refusing on save what would not parse back the same.
mod backing_string {
    use serde::{de, ser, Deserialize, Deserializer, Serializer};

    use crate::config::LunSpec;

    pub fn serialize<S: Serializer>(spec: &LunSpec, s: S) -> Result<S::Ok, S::Error> {
        let text = spec.to_string();
        match LunSpec::parse(&text) {
            Ok(back) if back == *spec => s.serialize_str(&text),
            _ => Err(ser::Error::custom(format!(
                "LUN backing {text:?} would not read back as the same LUN"
            ))),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LunSpec, D::Error> {
        let text = String::deserialize(d)?;
        LunSpec::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;
    use crate::config::Backing;

    fn spec(text: &str) -> LunSpec {
        LunSpec::parse(text).expect("test backing parses")
    }

    fn target(name: &str, luns: &[(u64, &str)]) -> TargetDef {
        TargetDef {
            name: name.to_string(),
            alias: None,
            luns: luns.iter().map(|(n, s)| (*n, spec(s))).collect(),
            chap: None,
            mutual_chap: None,
            allowed_initiators: Vec::new(),
            allow_target_reset: false,
        }
    }

    fn targets(defs: &[TargetDef]) -> Targets {
        defs.iter().map(|d| (d.name.clone(), d.clone())).collect()
    }

    fn creds(user: &str) -> Option<ChapCredentials> {
        Some(ChapCredentials {
            user: user.to_string(),
            secret: format!("{user}-secret-0123456789"),
        })
    }

    /// `apply` of what the daemon would have saved after changing `declared` into `current`
    /// through the API, against the configuration as it is at the next start.
    fn restart(
        declared: &Targets,
        current: &Targets,
        config_now: &Targets,
    ) -> (Targets, Vec<String>) {
        apply(config_now, &diff(declared, current))
    }

    #[test]
    fn added_lun_survives() {
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M")])]);
        let mut current = declared.clone();
        if let Some(t) = current.get_mut("iqn.a") {
            t.luns.insert(4, spec("ro:image:/x/config.v1.json"));
        }
        let state = diff(&declared, &current);
        assert_eq!(
            state.changed_luns["iqn.a"].added,
            BTreeMap::from([(4, spec("ro:image:/x/config.v1.json"))])
        );
        assert!(state.changed_luns["iqn.a"].removed.is_empty());
        let (served, notices) = apply(&declared, &state);
        assert_eq!(served, current);
        assert!(notices.is_empty());
    }

    #[test]
    fn added_target_survives() {
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M")])]);
        let mut current = declared.clone();
        let mut added = target("iqn.b", &[(0, "file:/srv/b.img")]);
        added.chap = creds("host");
        current.insert(added.name.clone(), added.clone());
        let state = diff(&declared, &current);
        assert_eq!(state.added_targets, targets(&[added]));
        assert_eq!(restart(&declared, &current, &declared), (current, vec![]));
    }

    #[test]
    fn removed_config_lun_stays_removed() {
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M"), (1, "ram:2M")])]);
        let current = targets(&[target("iqn.a", &[(0, "ram:1M")])]);
        let state = diff(&declared, &current);
        assert_eq!(
            state.changed_luns["iqn.a"].removed,
            BTreeMap::from([(1, spec("ram:2M"))])
        );
        assert_eq!(restart(&declared, &current, &declared), (current, vec![]));
    }

    #[test]
    fn removed_config_target_stays_removed() {
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M")]), target("iqn.b", &[])]);
        let current = targets(&[target("iqn.b", &[])]);
        let state = diff(&declared, &current);
        assert_eq!(state.removed_targets, BTreeSet::from(["iqn.a".to_string()]));
        assert_eq!(restart(&declared, &current, &declared), (current, vec![]));
    }

    #[test]
    fn config_edits_of_untouched_items_apply() {
        // The API added LUN 1 to iqn.a; the configuration then changed LUN 0 of iqn.a, the
        // alias of iqn.b, and declared a new iqn.c.
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M")]), target("iqn.b", &[])]);
        let mut current = declared.clone();
        if let Some(t) = current.get_mut("iqn.a") {
            t.luns.insert(1, spec("file:/srv/one.img"));
        }
        let mut b = target("iqn.b", &[(0, "ram:4M")]);
        b.alias = Some("bee".to_string());
        let config_now = targets(&[
            target("iqn.a", &[(0, "ro:image:/x/config.v1.json")]),
            b.clone(),
            target("iqn.c", &[(0, "demo:")]),
        ]);
        let (served, notices) = restart(&declared, &current, &config_now);
        let expected = targets(&[
            target(
                "iqn.a",
                &[(0, "ro:image:/x/config.v1.json"), (1, "file:/srv/one.img")],
            ),
            b,
            target("iqn.c", &[(0, "demo:")]),
        ]);
        assert_eq!(served, expected);
        assert!(notices.is_empty(), "{notices:?}");
    }

    #[test]
    fn ctl_wins_on_conflicts() {
        // Through the API: LUN 0 of iqn.a replaced, LUN 1 removed, LUN 2 added; target iqn.b
        // added; target iqn.d removed.
        let declared = targets(&[
            target("iqn.a", &[(0, "ram:1M"), (1, "ram:2M")]),
            target("iqn.d", &[]),
        ]);
        let current = targets(&[
            target("iqn.a", &[(0, "ram:8M"), (2, "ram:3M")]),
            target("iqn.b", &[(0, "ram:1M")]),
        ]);
        // Then the configuration changed LUNs 0 and 1, declared LUN 2 and iqn.b differently,
        // and changed iqn.d (not noticed: only its name is kept).
        let config_now = targets(&[
            target("iqn.a", &[(0, "ram:16M"), (1, "ram:32M"), (2, "ram:64M")]),
            target("iqn.b", &[(0, "file:/srv/b.img")]),
            target("iqn.d", &[(0, "ram:1M")]),
        ]);
        let (served, notices) = restart(&declared, &current, &config_now);
        assert_eq!(served, current);
        assert_eq!(notices.len(), 4, "{notices:#?}");
        for text in [
            "LUN 0 was replaced",
            "LUN 1 was removed",
            "LUN 2 was added",
            "iqn.b",
        ] {
            assert!(
                notices.iter().any(|n| n.contains(text)),
                "{text}: {notices:#?}"
            );
        }
    }

    #[test]
    fn stale_entries_are_ignored_with_notices() {
        let declared = targets(&[
            target("iqn.a", &[(0, "ram:1M"), (1, "ram:2M"), (2, "ram:3M")]),
            target("iqn.b", &[]),
            target("iqn.r", &[]),
        ]);
        let mut replaced = target("iqn.r", &[]);
        replaced.chap = creds("r");
        let current = targets(&[
            target("iqn.a", &[(0, "ram:1M"), (2, "ram:5M")]),
            replaced.clone(),
        ]);
        // The configuration dropped LUNs 1 and 2 of iqn.a and the targets iqn.b and iqn.r.
        let config_now = targets(&[target("iqn.a", &[(0, "ram:1M")])]);
        let (served, notices) = restart(&declared, &current, &config_now);
        assert_eq!(served, current);
        assert_eq!(notices.len(), 4, "{notices:#?}");

        // LUN changes of a target the configuration no longer declares.
        let (served, notices) = restart(&declared, &current, &Targets::new());
        assert_eq!(served, targets(&[replaced]));
        assert!(
            notices.iter().any(|n| n.contains("iqn.a: LUN changes")),
            "{notices:#?}"
        );
    }

    #[test]
    fn replaced_target_is_removed_and_added() {
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M")])]);
        let mut again = target("iqn.a", &[(0, "ram:1M")]);
        again.chap = creds("new");
        let current = targets(&[again.clone()]);
        let state = diff(&declared, &current);
        assert_eq!(state.removed_targets, BTreeSet::from(["iqn.a".to_string()]));
        assert_eq!(state.added_targets, current);
        assert!(state.changed_luns.is_empty());
        assert_eq!(restart(&declared, &current, &declared), (current, vec![]));
    }

    #[test]
    fn nothing_changed_is_an_empty_diff() {
        let declared = targets(&[target("iqn.a", &[(0, "ram:1M")]), target("iqn.b", &[])]);
        assert!(diff(&declared, &declared).is_empty());
        assert_eq!(apply(&declared, &StateDiff::default()), (declared, vec![]));
    }

    #[test]
    fn lun_changes_for_a_target_added_whole_are_ignored() {
        let declared = Targets::new();
        let added = target("iqn.a", &[(0, "ram:1M")]);
        let mut state = StateDiff::default();
        state
            .added_targets
            .insert(added.name.clone(), added.clone());
        state.changed_luns.insert(
            added.name.clone(),
            LunChanges {
                removed: BTreeMap::new(),
                added: BTreeMap::from([(1, spec("ram:2M"))]),
            },
        );
        let (served, notices) = apply(&declared, &state);
        assert_eq!(served, targets(&[added]));
        assert_eq!(notices.len(), 1);
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temporary directory")
    }

    fn sample() -> StateDiff {
        let declared = targets(&[
            target("iqn.a", &[(0, "ram:1M"), (1, "ro:file:/srv/a.img")]),
            target("iqn.gone", &[(0, "demo:")]),
        ]);
        let mut added = target("iqn.new", &[(0, "ram:1G"), (7, "image:/i/config.v1.json")]);
        added.alias = Some("scratch".to_string());
        added.chap = creds("host");
        added.mutual_chap = creds("target");
        added.allowed_initiators = vec!["iqn.host:1".to_string()];
        added.allow_target_reset = true;
        let current = targets(&[
            target("iqn.a", &[(0, "ram:2M"), (4, "ro:image:/x/config.v1.json")]),
            added,
        ]);
        diff(&declared, &current)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn save_then_load_round_trips() {
        let d = dir();
        let file = StateFile::new(d.path().join("state.json"));
        assert!(file.load().expect("missing file").is_none());
        let state = sample();
        file.save(&state).expect("save");
        assert_eq!(file.load().expect("load"), Some(state));
        file.save(&StateDiff::default()).expect("save empty");
        assert_eq!(file.load().expect("load"), Some(StateDiff::default()));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("dir")
            .flatten()
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn file_shape_is_as_documented() {
        let text = String::from_utf8(encode(&sample()).expect("encode")).expect("utf-8");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["version"], 1);
        assert_eq!(json["removed_targets"], serde_json::json!(["iqn.gone"]));
        assert_eq!(json["added_targets"][0]["name"], "iqn.new");
        assert_eq!(
            json["added_targets"][0]["luns"]["7"]["backing"],
            "image:/i/config.v1.json"
        );
        assert_eq!(json["added_targets"][0]["chap"]["user"], "host");
        let a = &json["changed_luns"]["iqn.a"];
        assert_eq!(a["removed"]["0"]["backing"], "ram:1M");
        assert_eq!(a["removed"]["1"]["backing"], "ro:file:/srv/a.img");
        assert_eq!(a["added"]["0"]["backing"], "ram:2M");
        assert_eq!(a["added"]["4"]["backing"], "ro:image:/x/config.v1.json");
        // The example of the module documentation parses.
        let doc = r#"{
          "version": 1,
          "removed_targets": ["iqn.2024-01.com.example:old"],
          "added_targets": [{
              "name": "iqn.2024-01.com.example:scratch",
              "luns": { "0": { "backing": "ram:1073741824" } },
              "chap": { "user": "host", "secret": "a-long-secret" },
              "allowed_initiators": [],
              "allow_target_reset": false
          }],
          "changed_luns": { "iqn.2024-01.com.example:db": {
              "removed": { "0": { "backing": "ro:image:/images/db-v1/config.v1.json" } },
              "added": { "0": { "backing": "ro:image:/images/db-v2/config.v1.json" },
                         "4": { "backing": "file:/srv/scratch.img" } } } }
        }"#;
        let state = decode(doc).ok().expect("documented example decodes");
        assert_eq!(state.added_targets.len(), 1);
        assert_eq!(
            state.changed_luns["iqn.2024-01.com.example:db"].added.len(),
            2
        );
    }

    fn load_error(text: &str) -> (PathBuf, String) {
        let d = dir();
        let path = d.path().join("state.json");
        std::fs::write(&path, text).expect("write");
        let err = StateFile::new(&path).load().expect_err("must fail");
        (path, err.to_string())
    }

    #[test]
    fn corrupt_file_error_names_the_file_and_place() {
        let (path, message) = load_error("{\"version\": 1,\n \"removed_targets\": [\"x\",\n");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 3"), "{message}");

        let (_, message) = load_error(
            r#"{"version": 1, "changed_luns": {"t": {"added": {"2": {"backing": "tape:x"}}}}}"#,
        );
        assert!(
            message.contains("changed_luns.t.added.2.backing"),
            "{message}"
        );
        assert!(message.contains("tape:x"), "{message}");

        let (_, message) = load_error(r#"{"version": 1, "removed_target": []}"#);
        assert!(message.contains("removed_target"), "{message}");

        let (_, message) = load_error("");
        assert!(message.contains("empty"), "{message}");

        let (_, message) =
            load_error(r#"{"version": 1, "added_targets": [{"name": "t"}, {"name": "t"}]}"#);
        assert!(message.contains("listed twice"), "{message}");
    }

    #[test]
    fn wrong_version_is_refused() {
        let (path, message) = load_error(r#"{"version": 2, "something": "new"}"#);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("version 2 is not supported"), "{message}");
        let (_, message) = load_error(r#"{"removed_targets": []}"#);
        assert!(message.contains("version"), "{message}");
    }

    #[test]
    fn leftover_temp_file_is_ignored_and_removed() {
        let d = dir();
        let path = d.path().join("state.json");
        let file = StateFile::new(&path);
        file.save(&sample()).expect("save");
        // A save interrupted by kill -9 of another process, before its rename.
        let leftover = d
            .path()
            .join(format!(".state.json.{}.0.00000000deadbeef.tmp", u32::MAX));
        std::fs::write(&leftover, b"{\"version\": 1, \"removed_tar").expect("write");
        let unrelated = d.path().join(".state.json.bak");
        std::fs::write(&unrelated, b"keep").expect("write");
        assert_eq!(file.load().expect("load"), Some(sample()));
        assert_eq!(
            file.remove_leftovers().expect("clean"),
            vec![leftover.clone()]
        );
        assert!(!leftover.exists());
        assert!(unrelated.exists());
        assert_eq!(file.load().expect("load"), Some(sample()));
    }

    #[test]
    fn file_is_private_and_directory_created() {
        let d = dir();
        let path = d.path().join("var/lib/overlaybd-target/state.json");
        let file = StateFile::new(&path);
        file.save(&sample()).expect("save");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&d.path().join("var/lib/overlaybd-target")), 0o700);
        assert_eq!(mode(&d.path().join("var")), 0o700);
        // Replacing a file someone made readable leaves it private again.
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        file.save(&StateDiff::default()).expect("save");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn unstorable_lun_is_refused_and_old_state_kept() {
        let d = dir();
        let file = StateFile::new(d.path().join("state.json"));
        file.save(&sample()).expect("save");
        let mut bad = StateDiff::default();
        let mut t = target("iqn.a", &[]);
        t.luns.insert(
            0,
            LunSpec {
                backing: Backing::Ram(3),
                read_only: false,
                remote_failure: None,
                unit: Default::default(),
                learn: None,
            },
        );
        bad.added_targets.insert(t.name.clone(), t);
        let err = file.save(&bad).expect_err("must refuse");
        assert!(matches!(err, StateError::Unstorable { .. }), "{err}");
        assert_eq!(file.load().expect("load"), Some(sample()));
    }

    #[test]
    fn concurrent_saves_leave_one_whole_state() {
        let d = dir();
        let file = StateFile::new(d.path().join("state.json"));
        let diffs: Vec<StateDiff> = (0..4)
            .map(|i| {
                let mut s = sample();
                s.removed_targets.insert(format!("iqn.writer{i}"));
                s
            })
            .collect();
        std::thread::scope(|scope| {
            for s in &diffs {
                let file = file.clone();
                scope.spawn(move || {
                    for _ in 0..10 {
                        file.save(s).expect("save");
                    }
                });
            }
        });
        let loaded = file.load().expect("load").expect("present");
        assert!(diffs.contains(&loaded));
        let entries = std::fs::read_dir(d.path()).expect("dir").count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn save_errors_name_the_file() {
        let d = dir();
        // The parent "directory" is a regular file.
        let blocker = d.path().join("blocker");
        std::fs::write(&blocker, b"").expect("write");
        let path = blocker.join("state.json");
        let err = StateFile::new(&path)
            .save(&sample())
            .expect_err("must fail");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    fn arb_spec() -> impl Strategy<Value = LunSpec> {
        prop::sample::select(vec![
            "ram:512B",
            "ram:1M",
            "ro:ram:1M",
            "file:/srv/a.img",
            "ro:file:/srv/a.img",
            "image:/i/config.v1.json",
            "ro:image:/i/config.v1.json",
            "demo:",
        ])
        .prop_map(spec)
    }

    fn arb_target(name: String) -> impl Strategy<Value = TargetDef> {
        (
            prop::collection::btree_map(0u64..6, arb_spec(), 0..5),
            prop::option::of(prop::sample::select(vec!["one", "two"])),
            prop::option::of(prop::sample::select(vec!["u1", "u2"])),
            prop::option::of(prop::sample::select(vec!["m1", "m2"])),
            prop::collection::vec(prop::sample::select(vec!["iqn.h:1", "iqn.h:2"]), 0..2),
            any::<bool>(),
        )
            .prop_map(
                move |(luns, alias, chap, mutual, allowed, reset)| TargetDef {
                    name: name.clone(),
                    alias: alias.map(str::to_string),
                    luns,
                    chap: chap.and_then(creds),
                    mutual_chap: mutual.and_then(creds),
                    allowed_initiators: allowed.into_iter().map(str::to_string).collect(),
                    allow_target_reset: reset,
                },
            )
    }

    fn arb_targets() -> impl Strategy<Value = Targets> {
        prop::collection::btree_set(
            prop::sample::select(vec!["iqn.a", "iqn.b", "iqn.c", "iqn.d"]),
            0..4,
        )
        .prop_flat_map(|names| {
            names
                .into_iter()
                .map(|n| arb_target(n.to_string()))
                .collect::<Vec<_>>()
        })
        .prop_map(|defs| defs.into_iter().map(|d| (d.name.clone(), d)).collect())
    }

    /// Targets close to `base`: most of the time a few API-style edits of it, so that the
    /// same-settings LUN diff is exercised as much as whole replacement.
    fn arb_pair() -> impl Strategy<Value = (Targets, Targets)> {
        (
            arb_targets(),
            arb_targets(),
            prop::collection::vec(any::<u8>(), 8),
        )
            .prop_map(|(declared, other, picks)| {
                let mut current = declared.clone();
                for (i, (name, t)) in other.into_iter().enumerate() {
                    match picks.get(i).copied().unwrap_or(0) % 4 {
                        0 => {
                            current.insert(name, t);
                        }
                        1 => {
                            current.remove(&name);
                        }
                        _ => {
                            if let Some(c) = current.get_mut(&name) {
                                c.luns = t.luns;
                            } else {
                                current.insert(name, t);
                            }
                        }
                    }
                }
                (declared, current)
            })
    }

    proptest! {
        #[test]
        fn apply_of_diff_is_current((declared, current) in arb_pair()) {
            let state = diff(&declared, &current);
            let (served, notices) = apply(&declared, &state);
            prop_assert_eq!(&served, &current);
            prop_assert!(notices.is_empty(), "{:?}", notices);
            prop_assert_eq!(state.is_empty(), declared == current);
        }

        #[test]
        fn apply_of_unrelated_state_is_total(
            (declared, current) in arb_pair(),
            config_now in arb_targets(),
        ) {
            // Any configuration at the next start: the state's changes are what is served.
            let state = diff(&declared, &current);
            let (served, _) = apply(&config_now, &state);
            for name in &state.removed_targets {
                prop_assert!(served.get(name) == state.added_targets.get(name));
            }
            for (name, t) in &state.added_targets {
                prop_assert_eq!(served.get(name), Some(t));
            }
        }

        #[test]
        fn encode_decode_round_trips((declared, current) in arb_pair()) {
            let state = diff(&declared, &current);
            let bytes = encode(&state).expect("encodes");
            let text = String::from_utf8(bytes).expect("utf-8");
            let back = decode(&text).ok();
            prop_assert_eq!(back, Some(state));
        }
    }
}

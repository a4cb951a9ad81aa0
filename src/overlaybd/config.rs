//! The per-device image config `config.v1.json`, as the overlaybd snapshotter writes it
//! (spec `image-config.md` §2), and where its layers live (§2.2, §8).
//!
//! Parsing is lenient like the reference (unknown keys ignored, missing keys take defaults) but
//! strict about types: a wrong JSON type is an error that names the field and the file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{LsmtError, LsmtResult};
use super::stack::MAX_LAYERS;
use crate::cache::settings::DownloadConfig;

/// A read-only layer entry of `lowers` (§2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LowerLayer {
    /// Local blob path, used first when it exists.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// Layer directory: holds `overlaybd.commit` (or `.commit`, `overlaybd.sealed`) and downloads.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `sha256:<64 hex>` of the registry blob.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Byte size of the registry blob (0 = unknown).
    #[serde(skip_serializing_if = "is_zero")]
    pub size: u64,
    /// TurboOCI: local path of the original OCI layer.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_file: String,
    /// TurboOCI: digest of the original OCI layer.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_digest: String,
    /// TurboOCI: gzip index making a gzip target seekable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gzip_index: String,
}

impl LowerLayer {
    /// True for a warp / TurboOCI layer (data in an external target file).
    pub fn is_turbo_oci(&self) -> bool {
        !self.target_file.is_empty() || !self.target_digest.is_empty()
    }
}

/// The writable layer entry `upper` (§2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpperLayer {
    /// The writable index file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub index: String,
    /// The writable data file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// TurboOCI build only: target file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// TurboOCI build only: gzip index of the target.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gzip_index: String,
    /// Size in GB as written by the snapshotter; informational (sizes come from LSMT headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsize: Option<i64>,
}

/// A parsed `config.v1.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Blob URL prefix `<scheme>://<host>/v2/<repository>/blobs`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repo_blob_url: String,
    /// Read-only layers, bottom first.
    pub lowers: Vec<LowerLayer>,
    /// Writable layer; see [`ImageConfig::writable`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<UpperLayer>,
    /// File receiving `success` or `failed:<reason>` after an open attempt.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub result_file: String,
    /// Per-device download policy; `None` = use the daemon-wide one.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_download"
    )]
    pub download: Option<DownloadConfig>,
    /// The last lower is an acceleration (trace) layer, not data.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub acceleration_layer: bool,
    /// Trace file for recording or replaying prefetch.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub record_trace_path: String,
}

/// Where a lower layer's blob is found (§2.2 resolution order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerLocation {
    /// A local file (`file`, or a blob inside `dir`).
    Local(PathBuf),
    /// A registry blob.
    Remote {
        /// Full blob URL: `repoBlobUrl/digest`.
        url: String,
        /// The blob digest (`sha256:…`).
        digest: String,
        /// Blob size when known (0 otherwise).
        size: u64,
        /// Directory for downloads, when given.
        dir: Option<PathBuf>,
    },
}

/// The top-level keys of `config.v1.json` (`image-config.md` §2.1).
const TOP_LEVEL_KEYS: [&str; 7] = [
    "repoBlobUrl",
    "lowers",
    "upper",
    "resultFile",
    "download",
    "accelerationLayer",
    "recordTracePath",
];

/// Names of a committed blob inside a layer directory, in the order they are tried.
pub const LAYER_DIR_CANDIDATES: [&str; 3] = ["overlaybd.commit", ".commit", "overlaybd.sealed"];

impl ImageConfig {
    /// True when `path` names an image config rather than a layer blob: it ends in `.json`
    /// or its first non-blank byte is `{`.
    pub fn is_config_file(path: &Path) -> std::io::Result<bool> {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            return Ok(true);
        }
        use std::io::Read;
        let mut head = [0u8; 64];
        let n = std::fs::File::open(path)?.read(&mut head)?;
        Ok(head[..n]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'{'))
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> LsmtResult<Self> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LsmtError::io(&name, e))?;
        Self::from_json(&text, &name)
    }

    /// Parses config text; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> LsmtResult<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| cfg_err(file, "(document)", format!("invalid JSON: {e}")))?;
        let p = Fields {
            file,
            obj: as_object(&root, file, "(document)")?,
            path: String::new(),
        };
        let mut lowers = Vec::new();
        if let Some(v) = p.obj.get("lowers") {
            let arr = v
                .as_array()
                .ok_or_else(|| cfg_err(file, "lowers", "expected an array"))?;
            for (i, item) in arr.iter().enumerate() {
                let path = format!("lowers[{i}]");
                let l = Fields {
                    file,
                    obj: as_object(item, file, &path)?,
                    path,
                };
                lowers.push(LowerLayer {
                    file: l.string("file")?,
                    dir: l.string("dir")?,
                    digest: l.string("digest")?,
                    size: l.u64("size")?,
                    target_file: l.string("targetFile")?,
                    target_digest: l.string("targetDigest")?,
                    gzip_index: l.string("gzipIndex")?,
                });
            }
        }
        let upper = match p.obj.get("upper") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let u = Fields {
                    file,
                    obj: as_object(v, file, "upper")?,
                    path: "upper".into(),
                };
                Some(UpperLayer {
                    index: u.string("index")?,
                    data: u.string("data")?,
                    target: u.string("target")?,
                    gzip_index: u.string("gzipIndex")?,
                    vsize: u.opt_i64("vsize")?,
                })
            }
        };
        let download = match p.obj.get("download") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let d = Fields {
                    file,
                    obj: as_object(v, file, "download")?,
                    path: "download".into(),
                };
                let def = DownloadConfig::default();
                Some(DownloadConfig {
                    enable: d.bool("enable")?,
                    delay: d.opt_i64("delay")?.unwrap_or(def.delay),
                    delay_extra: d.opt_i64("delayExtra")?.unwrap_or(def.delay_extra),
                    max_mbps: d.opt_i64("maxMBps")?.unwrap_or(def.max_mbps),
                    try_cnt: d.opt_i64("tryCnt")?.unwrap_or(def.try_cnt),
                    block_size: match d.opt_u64("blockSize")? {
                        None => def.block_size,
                        Some(v) => u32::try_from(v).map_err(|_| {
                            cfg_err(file, "download.blockSize", format!("{v} is too large"))
                        })?,
                    },
                    parallel: match d.opt_u64("parallel")? {
                        None => def.parallel,
                        Some(v) => u32::try_from(v).map_err(|_| {
                            cfg_err(file, "download.parallel", format!("{v} is too large"))
                        })?,
                    },
                })
            }
        };
        let cfg = ImageConfig {
            repo_blob_url: p.string("repoBlobUrl")?,
            lowers,
            upper,
            result_file: p.string("resultFile")?,
            download,
            acceleration_layer: p.bool("accelerationLayer")?,
            record_trace_path: p.string("recordTracePath")?,
        };
        cfg.validate(file)?;
        if cfg.lowers.is_empty() && cfg.writable().is_none() {
            // Without this, a typo such as `lower` gave an image of size 0 and the error
            // "smaller than one 512-byte block" far from its cause.
            let unread: Vec<String> = p
                .obj
                .keys()
                .filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()))
                .map(|k| format!("`{k}`"))
                .collect();
            let hint = if unread.is_empty() {
                String::new()
            } else {
                format!(" (not read: {}; layers go in `lowers`)", unread.join(", "))
            };
            return Err(cfg_err(
                file,
                "lowers",
                format!("missing or empty, and no `upper`: the image has no layer{hint}"),
            ));
        }
        Ok(cfg)
    }

    /// Checks the rules the reference enforces at open time.
    fn validate(&self, file: &str) -> LsmtResult<()> {
        if self.acceleration_layer && !self.record_trace_path.is_empty() {
            return Err(cfg_err(
                file,
                "recordTracePath",
                "cannot be combined with accelerationLayer",
            ));
        }
        if self.acceleration_layer && self.lowers.is_empty() {
            return Err(cfg_err(
                file,
                "accelerationLayer",
                "set, but `lowers` is empty",
            ));
        }
        if self.data_lowers().len() > MAX_LAYERS {
            return Err(cfg_err(
                file,
                "lowers",
                format!("{} layers, at most {MAX_LAYERS}", self.data_lowers().len()),
            ));
        }
        for (i, l) in self.lowers.iter().enumerate() {
            if l.file.is_empty() && l.dir.is_empty() && l.digest.is_empty() {
                return Err(cfg_err(
                    file,
                    &format!("lowers[{i}]"),
                    "names no `file`, `dir` or `digest`",
                ));
            }
            if !l.digest.is_empty() && !is_sha256_digest(&l.digest) {
                return Err(cfg_err(
                    file,
                    &format!("lowers[{i}].digest"),
                    format!("{:?} is not sha256:<64 hex digits>", l.digest),
                ));
            }
        }
        if let Some(u) = &self.upper {
            if u.index.is_empty() != u.data.is_empty() {
                let field = if u.index.is_empty() {
                    "upper.index"
                } else {
                    "upper.data"
                };
                return Err(cfg_err(
                    file,
                    field,
                    "empty while the other upper file is set",
                ));
            }
        }
        Ok(())
    }

    /// The data layers of `lowers` (bottom first), without a trailing acceleration layer.
    pub fn data_lowers(&self) -> &[LowerLayer] {
        match (self.acceleration_layer, self.lowers.split_last()) {
            (true, Some((_, rest))) => rest,
            _ => &self.lowers,
        }
    }

    /// The writable layer, when `upper` names both files.
    pub fn writable(&self) -> Option<&UpperLayer> {
        self.upper
            .as_ref()
            .filter(|u| !u.index.is_empty() && !u.data.is_empty())
    }

    /// Where lower layer `i` lives: `file` → `dir/overlaybd.commit` → `dir/.commit` →
    /// `dir/overlaybd.sealed` → the registry. `file` names the config in errors.
    pub fn locate(&self, i: usize, file: &str) -> LsmtResult<LayerLocation> {
        let field = format!("lowers[{i}]");
        let l = self
            .lowers
            .get(i)
            .ok_or_else(|| cfg_err(file, &field, "no such layer"))?;
        if !l.file.is_empty() && Path::new(&l.file).exists() {
            return Ok(LayerLocation::Local(PathBuf::from(&l.file)));
        }
        if !l.dir.is_empty() {
            for name in LAYER_DIR_CANDIDATES {
                let p = Path::new(&l.dir).join(name);
                if p.exists() {
                    return Ok(LayerLocation::Local(p));
                }
            }
        }
        if l.digest.is_empty() {
            let what = if l.file.is_empty() {
                format!("no blob in dir {:?}", l.dir)
            } else {
                format!("file {:?} does not exist", l.file)
            };
            return Err(cfg_err(
                file,
                &field,
                format!("{what} and no `digest` to fetch it"),
            ));
        }
        if self.repo_blob_url.is_empty() {
            return Err(cfg_err(
                file,
                "repoBlobUrl",
                format!("empty, but {field} must be fetched from the registry"),
            ));
        }
        Ok(LayerLocation::Remote {
            url: blob_url(&self.repo_blob_url, &l.digest),
            digest: l.digest.clone(),
            size: l.size,
            dir: (!l.dir.is_empty()).then(|| PathBuf::from(&l.dir)),
        })
    }

    /// What the image's content is named by, when the config alone tells it: the chain of
    /// its data lowers' registry digests (bottom first), and for a writable image also the
    /// upper's identity, the UUID in its data file's LSMT header (or, when that cannot be
    /// read, the data file's absolute path). `None` when a data lower has no digest (a local
    /// blob is known only by its path) or there are no lowers. The trace layer is not data
    /// and is left out. LUN serials and WWNs derive from this, so that one image has one
    /// WWN wherever it is served.
    pub fn content_identity(&self) -> Option<String> {
        let lowers = self.data_lowers();
        if lowers.is_empty() || lowers.iter().any(|l| l.digest.is_empty()) {
            return None;
        }
        let mut identity = String::from("lowers");
        for l in lowers {
            identity.push(' ');
            identity.push_str(&l.digest);
        }
        if let Some(upper) = self.writable() {
            let uuid = read_layer_uuid(Path::new(&upper.data));
            match uuid {
                Some(uuid) => identity.push_str(&format!(" upper {uuid}")),
                None => {
                    let path = std::path::absolute(&upper.data)
                        .unwrap_or_else(|_| PathBuf::from(&upper.data));
                    identity.push_str(&format!(" upper-path {}", path.display()));
                }
            }
        }
        Some(identity)
    }

    /// Compact JSON, as the snapshotter writes it.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and bools cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Writes the result file (if configured): `success`, or `failed:<reason>`.
    pub fn write_result(&self, outcome: Result<(), &str>) -> std::io::Result<()> {
        if self.result_file.is_empty() {
            return Ok(());
        }
        let text = match outcome {
            Ok(()) => "success".to_string(),
            Err(reason) => format!("failed:{reason}"),
        };
        std::fs::write(&self.result_file, text)
    }
}

/// `repoBlobUrl` + `/` (unless present) + digest (§4.1).
pub fn blob_url(repo_blob_url: &str, digest: &str) -> String {
    if repo_blob_url.ends_with('/') {
        format!("{repo_blob_url}{digest}")
    } else {
        format!("{repo_blob_url}/{digest}")
    }
}

/// Writes the per-device `download` object with the keys overlaybd reads.
fn serialize_download<S: serde::Serializer>(
    d: &Option<DownloadConfig>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        None => s.serialize_none(),
        Some(d) => serde_json::json!({
            "enable": d.enable,
            "delay": d.delay,
            "delayExtra": d.delay_extra,
            "maxMBps": d.max_mbps,
            "tryCnt": d.try_cnt,
            "blockSize": d.block_size,
        })
        .serialize(s),
    }
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn cfg_err(file: &str, field: &str, reason: impl Into<String>) -> LsmtError {
    LsmtError::Config {
        file: file.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn as_object<'a>(v: &'a Value, file: &str, path: &str) -> LsmtResult<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| cfg_err(file, path, "expected an object"))
}

/// Typed access to the keys of one JSON object, naming `path.key` in errors.
struct Fields<'a> {
    file: &'a str,
    obj: &'a Map<String, Value>,
    path: String,
}

impl Fields<'_> {
    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> LsmtResult<String> {
        match self.get(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(cfg_err(self.file, &self.name(key), "expected a string")),
        }
    }

    fn bool(&self, key: &str) -> LsmtResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(cfg_err(
                self.file,
                &self.name(key),
                "expected true or false",
            )),
        }
    }

    fn u64(&self, key: &str) -> LsmtResult<u64> {
        Ok(self.opt_u64(key)?.unwrap_or(0))
    }

    fn opt_u64(&self, key: &str) -> LsmtResult<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                cfg_err(
                    self.file,
                    &self.name(key),
                    "expected a non-negative integer",
                )
            }),
        }
    }

    fn opt_i64(&self, key: &str) -> LsmtResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| cfg_err(self.file, &self.name(key), "expected an integer")),
        }
    }
}

/// The UUID in the LSMT header at the start of `path`, unless it is missing, unreadable or
/// nil.
fn read_layer_uuid(path: &Path) -> Option<super::header::LayerUuid> {
    use std::io::Read;
    let mut buf = vec![0u8; super::header::HEADER_SIZE];
    std::fs::File::open(path).ok()?.read_exact(&mut buf).ok()?;
    let header = super::header::LsmtHeader::decode(&buf, &path.display().to_string()).ok()?;
    (!header.uuid.is_nil()).then_some(header.uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOTTER: &str = r#"{"repoBlobUrl":"https://registry-1.docker.io/v2/overlaybd/redis/blobs","lowers":[{"file":"/opt/overlaybd/baselayers/ext4_64"},{"digest":"sha256:a8b5fa1b0e2d0a4b4f1b7e8e2c4a6c1d3e5f7a9b0c2d4e6f8a0b2c4d6e8f0a21","size":4739584,"dir":"/var/lib/x/snapshots/1/fs"}],"upper":{"index":"/b/writable_index","data":"/b/writable_data","vsize":64},"resultFile":"/b/init-debug.log","unknownKey":{"x":1}}"#;

    #[test]
    fn parses_snapshotter_config_and_roundtrips() {
        let c = ImageConfig::from_json(SNAPSHOTTER, "cfg.json").unwrap();
        assert_eq!(c.lowers.len(), 2);
        assert_eq!(c.lowers[1].size, 4_739_584);
        assert_eq!(c.writable().unwrap().data, "/b/writable_data");
        assert_eq!(c.upper.as_ref().unwrap().vsize, Some(64));
        assert_eq!(c.result_file, "/b/init-debug.log");
        let again = ImageConfig::from_json(&c.to_json(), "again").unwrap();
        assert_eq!(again, c);
        let d = ImageConfig::from_json(
            r#"{"lowers":[{"file":"/a"}],"download":{"enable":true,"maxMBps":7}}"#,
            "d",
        )
        .unwrap();
        let dl = d.download.as_ref().unwrap();
        assert!(dl.enable && dl.max_mbps == 7 && dl.delay == 300 && dl.block_size == 262_144);
        assert_eq!(ImageConfig::from_json(&d.to_json(), "again").unwrap(), d);
    }

    #[test]
    fn an_image_without_layers_is_refused_naming_keys_not_read() {
        for (text, names) in [
            (r#"{"lower":[{"file":"/a"}]}"#, Some("`lower`")),
            (r#"{"lowers":[]}"#, None),
            (r#"{"lowers":[],"upper":{}}"#, None),
        ] {
            let e = ImageConfig::from_json(text, "c.json")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("c.json") && e.contains("lowers") && e.contains("no layer"),
                "{text}: {e}"
            );
            match names {
                Some(n) => assert!(e.contains(&format!("not read: {n}")), "{e}"),
                None => assert!(!e.contains("not read"), "{e}"),
            }
        }
        // An upper alone is an image (a writable disk with nothing below).
        ImageConfig::from_json(r#"{"upper":{"index":"/i","data":"/d"}}"#, "c.json").unwrap();
    }

    #[test]
    fn wrong_types_name_field_and_file() {
        let e = ImageConfig::from_json(
            r#"{"lowers":[{"file":"/a"},{"size":"12","digest":"sha256:00"}]}"#,
            "/x/config.v1.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/x/config.v1.json") && e.contains("lowers[1].size"),
            "{e}"
        );
        let e = ImageConfig::from_json(r#"{"lowers":[{"digest":"sha256:00"}]}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lowers[0].digest"), "{e}");
        let e = ImageConfig::from_json(r#"{"lowers":{}}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lowers`"), "{e}");
        let e = ImageConfig::from_json("{", "c").unwrap_err().to_string();
        assert!(e.contains("invalid JSON"), "{e}");
        let e = ImageConfig::from_json(r#"{"upper":{"index":"/i"}}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upper.data"), "{e}");
        let e = ImageConfig::from_json(r#"{"lowers":[{}]}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lowers[0]"), "{e}");
    }

    #[test]
    fn empty_upper_means_read_only_and_acceleration_layer_is_dropped() {
        let c = ImageConfig::from_json(
            r#"{"lowers":[{"file":"/a"},{"dir":"/trace"}],"upper":{},"accelerationLayer":true}"#,
            "c",
        )
        .unwrap();
        assert!(c.writable().is_none());
        assert_eq!(c.data_lowers().len(), 1);
        assert!(ImageConfig::from_json(
            r#"{"lowers":[{"file":"/a"}],"accelerationLayer":true,"recordTracePath":"/t"}"#,
            "c"
        )
        .is_err());
    }

    #[test]
    fn layer_resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let mut c = ImageConfig::from_json(
            &format!(r#"{{"repoBlobUrl":"https://r/v2/a/blobs/","lowers":[{{"file":"{d}/missing","dir":"{d}","digest":"sha256:{}"}}]}}"#, "ab".repeat(32)),
            "c",
        )
        .unwrap();
        let remote = c.locate(0, "c").unwrap();
        assert_eq!(
            remote,
            LayerLocation::Remote {
                url: format!("https://r/v2/a/blobs/sha256:{}", "ab".repeat(32)),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 0,
                dir: Some(dir.path().to_path_buf())
            }
        );
        std::fs::write(dir.path().join("overlaybd.sealed"), b"x").unwrap();
        assert_eq!(
            c.locate(0, "c").unwrap(),
            LayerLocation::Local(dir.path().join("overlaybd.sealed"))
        );
        std::fs::write(dir.path().join("overlaybd.commit"), b"x").unwrap();
        assert_eq!(
            c.locate(0, "c").unwrap(),
            LayerLocation::Local(dir.path().join("overlaybd.commit"))
        );
        c.repo_blob_url.clear();
        c.lowers[0].dir.clear();
        let e = c.locate(0, "c").unwrap_err().to_string();
        assert!(e.contains("repoBlobUrl"), "{e}");
        assert_eq!(
            blob_url("https://h/v2/r/blobs", "sha256:1"),
            "https://h/v2/r/blobs/sha256:1"
        );
    }

    #[test]
    fn result_file_text() {
        let dir = tempfile::tempdir().unwrap();
        let c = ImageConfig {
            result_file: dir.path().join("r").display().to_string(),
            ..Default::default()
        };
        c.write_result(Err("boom")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&c.result_file).unwrap(),
            "failed:boom"
        );
        c.write_result(Ok(())).unwrap();
        assert_eq!(std::fs::read_to_string(&c.result_file).unwrap(), "success");
    }

    /// The identity is the chain of data-lower digests (order matters, the trace layer does
    /// not), plus the writable layer's UUID from its header, or its absolute path when the
    /// header has none; a lower without a digest leaves the image without one.
    #[test]
    fn content_identity_is_the_layer_chain_and_the_upper() {
        let digest = |n: u8| format!("sha256:{}", hex::encode([n; 32]));
        let lower = |n: u8| LowerLayer {
            digest: digest(n),
            size: 10,
            ..LowerLayer::default()
        };
        let mut c = ImageConfig {
            lowers: vec![lower(1), lower(2)],
            ..ImageConfig::default()
        };
        let base = c.content_identity().unwrap();
        assert_eq!(base, format!("lowers {} {}", digest(1), digest(2)));
        c.lowers.push(lower(3));
        c.acceleration_layer = true;
        assert_eq!(
            c.content_identity().unwrap(),
            base,
            "the trace layer is not data"
        );
        c.lowers.swap(0, 1);
        assert_ne!(c.content_identity().unwrap(), base);
        c.lowers.swap(0, 1);

        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut header = super::super::header::LsmtHeader::new(1, 1 << 20);
        header.uuid =
            super::super::header::LayerUuid::parse("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        std::fs::write(&data, header.encode()).unwrap();
        c.upper = Some(UpperLayer {
            data: data.display().to_string(),
            index: dir.path().join("index").display().to_string(),
            ..UpperLayer::default()
        });
        assert_eq!(
            c.content_identity().unwrap(),
            format!("{base} upper 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0")
        );
        std::fs::write(&data, b"no header").unwrap();
        assert_eq!(
            c.content_identity().unwrap(),
            format!("{base} upper-path {}", data.display())
        );
        c.lowers[1].digest.clear();
        c.lowers[1].file = "/layer.obd".into();
        assert_eq!(c.content_identity(), None);
    }
}

//! Daemon-wide settings of the remote-layer machinery, read from an `overlaybd.json`-style file.
//!
//! Key names and defaults follow overlaybd's own `overlaybd.json` where a key exists there
//! (`cacheConfig`, `credentialConfig`, `download`, `p2pConfig`, `userAgent` and the legacy
//! top-level cache and credential keys), so an operator who knows overlaybd knows this file.
//! Keys we add (`cacheConfig.memorySizeMB`, the `httpConfig` block) use the same camelCase
//! style. Like the reference, parsing is lenient: unknown keys are ignored and a missing key
//! takes its default; a key of the wrong type is an error naming the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A settings file that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file that was being read.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or a key has the wrong type.
    #[error("{file}: field `{field}`: {message}")]
    Parse {
        /// The file (or other origin) of the JSON text.
        file: String,
        /// Dotted path of the offending key (`.` when the document itself is wrong).
        field: String,
        /// What serde reported.
        message: String,
    },
    /// A key parsed but holds a value we cannot use.
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        /// The file (or other origin) of the JSON text.
        file: String,
        /// Dotted path of the offending key.
        field: String,
        /// Why the value is refused.
        message: String,
    },
}

/// The settings this module reads from `overlaybd.json`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DaemonSettings {
    /// `cacheConfig`: the local cache of remote blobs.
    pub cache_config: CacheConfig,
    /// Legacy `cacheType`, used when `cacheConfig.cacheType` is empty.
    pub cache_type: String,
    /// Legacy `registryCacheDir`, used when `cacheConfig.cacheType` is empty.
    pub registry_cache_dir: String,
    /// Legacy `registryCacheSizeGB`, used when `cacheConfig.cacheType` is empty.
    #[serde(rename = "registryCacheSizeGB")]
    pub registry_cache_size_gb: u32,
    /// `credentialConfig`: where registry credentials come from.
    pub credential_config: CredentialConfig,
    /// Legacy `credentialFilePath`, used when `credentialConfig.mode` is empty.
    pub credential_file_path: String,
    /// `download`: background full download of remote layers.
    pub download: DownloadConfig,
    /// `p2pConfig`: route blob reads through a P2P proxy (e.g. Dragonfly's).
    pub p2p_config: P2pConfig,
    /// `prefetchConfig`: replay of recorded traces (`trace-prefetch.md` §5).
    pub prefetch_config: PrefetchConfig,
    /// `userAgent` sent with every registry request.
    pub user_agent: String,
    /// `httpConfig` (ours): timeouts, retries and proxy of the registry client.
    pub http_config: HttpConfig,
    /// `certConfig`: TLS client certificate presented to registries.
    pub cert_config: CertConfig,
    /// `enableAudit`: write the audit log. overlaybd's default, true, applies to an
    /// overlaybd.json that leaves the key out; with no overlaybd.json there is no audit log.
    #[serde(default = "enabled")]
    pub enable_audit: bool,
    /// `auditPath`: the audit log file; empty disables it.
    pub audit_path: String,
    /// `auditSlowCommandMs` (ours): a SCSI command that takes at least this long gets an audit
    /// line.
    pub audit_slow_command_ms: u64,
    /// Registries (`HOST[:PORT]` as references name them) that `registry:` LUNs speak to over
    /// plain HTTP, besides loopback ones. Set by `--plain-http`; not an overlaybd.json key
    /// (overlaybd's configs carry the scheme in `repoBlobUrl`).
    #[serde(skip)]
    pub plain_http: Vec<String>,
    /// `mirrors` (ours): per registry host (`HOST[:PORT]` as in `repoBlobUrl`, or `*` for
    /// any), base URLs of mirrors tried in order before the registry itself, e.g.
    /// `{"registry.example.com": ["http://10.0.0.5:8080"]}`. A mirror serves the registry's
    /// paths (`/v2/REPO/blobs/DIGEST`); credentials are looked up for the mirror's own host.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// `remoteFailure` (ours): what a LUN's commands do when its registry cannot serve them,
    /// for LUNs that do not say (`hold`, `hold:10m`, `hold:forever`, `fail`, `fail:20s`).
    pub remote_failure: crate::block::RemoteFailurePolicy,
}

/// The default of `enableAudit` in an overlaybd.json.
fn enabled() -> bool {
    true
}

/// `certConfig`: a TLS client certificate (both files are needed).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CertConfig {
    /// PEM certificate (chain) file.
    pub cert_file: String,
    /// PEM private key file.
    pub key_file: String,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            cache_config: CacheConfig::default(),
            cache_type: "file".into(),
            registry_cache_dir: DEFAULT_CACHE_DIR.into(),
            registry_cache_size_gb: 4,
            credential_config: CredentialConfig::default(),
            credential_file_path: "/opt/overlaybd/cred.json".into(),
            download: DownloadConfig::default(),
            p2p_config: P2pConfig::default(),
            prefetch_config: PrefetchConfig::default(),
            user_agent: concat!("overlaybd-target/", env!("CARGO_PKG_VERSION")).into(),
            http_config: HttpConfig::default(),
            cert_config: CertConfig::default(),
            enable_audit: false,
            audit_path: "/var/log/overlaybd-audit.log".into(),
            audit_slow_command_ms: 1000,
            plain_http: Vec::new(),
            mirrors: Default::default(),
            remote_failure: crate::block::RemoteFailurePolicy::default(),
        }
    }
}

const DEFAULT_CACHE_DIR: &str = "/opt/overlaybd/registry_cache";

/// `cacheConfig`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// `file`, `download` or `ocf`; empty selects the legacy top-level `cacheType`.
    pub cache_type: String,
    /// Folder of the disk tier (created if missing); default `/opt/overlaybd/registry_cache`.
    ///
    /// Unlike overlaybd, which ignores `cacheDir` and `cacheSizeGB` unless `cacheType` is set
    /// (and silently uses the legacy `registryCacheDir`), a `cacheDir` or `cacheSizeGB` that
    /// the file gives is always used: an operator who wrote it meant it.
    pub cache_dir: Option<String>,
    /// Capacity of the disk tier in GiB (default 4); 0 disables the disk tier.
    #[serde(rename = "cacheSizeGB")]
    pub cache_size_gb: Option<u32>,
    /// Refill unit in bytes: a power of two, at least 4096.
    pub refill_size: u32,
    /// OCF block size (accepted for compatibility; unused).
    pub block_size: u32,
    /// Capacity of the memory tier in MiB (ours); 0 disables the memory tier.
    #[serde(rename = "memorySizeMB")]
    pub memory_size_mb: u32,
    /// Free space in MiB the disk tier leaves on its file system (ours; overlaybd keeps 1 GiB
    /// free); the tier evicts rather than go below it. 0 disables the floor.
    #[serde(rename = "minFreeMB")]
    pub min_free_mb: u32,
    /// Read-ahead bound per remote layer in KiB (ours, default 4096): how far ahead of a
    /// stream of sequential misses units are fetched. 0 turns read-ahead off.
    #[serde(rename = "readAheadKB")]
    pub read_ahead_kb: u32,
    /// Capacity of the disk tier in bytes, overriding `cacheSizeGB` when set. Not read from
    /// JSON: set by [`DaemonSettings::override_cache`] from command-line options, which may
    /// give sizes that are not whole GiB.
    #[serde(skip)]
    pub cache_size_bytes: Option<u64>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            cache_type: String::new(),
            cache_dir: None,
            cache_size_gb: None,
            refill_size: 262_144,
            block_size: 65_536,
            memory_size_mb: 64,
            min_free_mb: 1024,
            read_ahead_kb: 4096,
            cache_size_bytes: None,
        }
    }
}

/// `credentialConfig`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CredentialConfig {
    /// `file`, `http`, `https` or `uds`; empty selects the legacy `credentialFilePath`.
    pub mode: String,
    /// File path, URL or socket path, depending on `mode`.
    pub path: String,
    /// Timeout in seconds of the http/https/uds modes.
    pub timeout: i64,
}

impl Default for CredentialConfig {
    fn default() -> Self {
        Self {
            mode: String::new(),
            path: String::new(),
            timeout: 1,
        }
    }
}

/// `prefetchConfig`: how a device replays its prefetch trace (`trace-prefetch.md` §5).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PrefetchConfig {
    /// Replay workers per device (16 by default). A value ≤ 0 starts none, so no trace is
    /// replayed; at most [`crate::prefetch::replay::MAX_CONCURRENCY`] are used.
    pub concurrency: i64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            concurrency: crate::prefetch::replay::DEFAULT_CONCURRENCY as i64,
        }
    }
}

impl PrefetchConfig {
    /// The number of replay workers: 0 when replay is off, else `concurrency` capped.
    pub fn workers(&self) -> usize {
        let max = crate::prefetch::replay::MAX_CONCURRENCY;
        usize::try_from(self.concurrency.max(0)).map_or(max, |n| n.min(max))
    }
}

/// `download`: background full download of each remote layer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DownloadConfig {
    /// Whether background download runs at all.
    pub enable: bool,
    /// Seconds to wait after the device is up before starting.
    pub delay: i64,
    /// Range of the random extra delay in seconds (30 when ≤ 0, as in overlaybd).
    pub delay_extra: i64,
    /// Throughput limit per download in MB/s (≤ 0 = unlimited).
    #[serde(rename = "maxMBps")]
    pub max_mbps: i64,
    /// Attempts per layer.
    pub try_cnt: i64,
    /// Bytes per request.
    pub block_size: u32,
    /// Requests in flight at once (ours; overlaybd reads one block at a time).
    pub parallel: u32,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            enable: false,
            delay: 300,
            delay_extra: 30,
            max_mbps: 100,
            try_cnt: 5,
            block_size: 262_144,
            parallel: 4,
        }
    }
}

impl DownloadConfig {
    /// The wait before starting: `delay` plus a random extra in `[0, delayExtra)` seconds.
    pub fn start_delay(&self) -> Duration {
        let extra_range = if self.delay_extra <= 0 {
            30
        } else {
            self.delay_extra as u64
        };
        let extra = rand::random::<u64>() % extra_range;
        Duration::from_secs(self.delay.max(0) as u64 + extra)
    }

    /// The rate limit in bytes per second, `None` when unlimited.
    pub fn bytes_per_sec(&self) -> Option<u64> {
        (self.max_mbps > 0).then(|| (self.max_mbps as u64).saturating_mul(1_000_000))
    }
}

/// `p2pConfig`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct P2pConfig {
    /// Whether blob reads go through the proxy.
    pub enable: bool,
    /// Proxy prefix; the full blob URL is appended after a `/`.
    pub address: String,
    /// Ours: read P2P blobs through the local cache tiers too (overlaybd bypasses them, as
    /// the proxy caches). Off by default, as in overlaybd.
    #[serde(rename = "cacheLocally")]
    pub cache_locally: bool,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            enable: false,
            address: "http://localhost:9731/accelerator".into(),
            cache_locally: false,
        }
    }
}

/// `httpConfig` (ours): how the registry client talks HTTP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpConfig {
    /// TCP/TLS connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Timeout of one whole request (headers and body) in milliseconds.
    pub request_timeout_ms: u64,
    /// A blob body that sends nothing for this many milliseconds is abandoned and the range
    /// asked for again (a connection stalled mid-body).
    pub stall_timeout_ms: u64,
    /// How long a failing mirror or P2P proxy is passed over before a read tries it again (in
    /// milliseconds; doubles with each failure in a row, up to 64 times this).
    pub failover_backoff_ms: u64,
    /// Retries after a failed attempt (so `retries + 1` attempts in all).
    pub retries: u32,
    /// First back-off pause in milliseconds; it doubles after each retry.
    pub retry_backoff_ms: u64,
    /// Upper bound of one back-off pause in milliseconds.
    pub retry_backoff_max_ms: u64,
    /// HTTP(S) proxy URL for every registry request; empty = the environment's proxy settings.
    pub proxy: String,
    /// Seconds a resolved blob location (redirect target, auth header) is reused.
    pub resolve_ttl_sec: u64,
    /// PEM file of extra CA certificates to trust for registries (besides the system's).
    pub ca_file: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            stall_timeout_ms: 10_000,
            failover_backoff_ms: 5_000,
            retries: 3,
            retry_backoff_ms: 50,
            retry_backoff_max_ms: 2_000,
            proxy: String::new(),
            resolve_ttl_sec: 300,
            ca_file: String::new(),
        }
    }
}

/// The cache settings in force after applying the legacy fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveCache {
    /// `file`, `download` or `ocf`.
    pub cache_type: String,
    /// Folder of the disk tier.
    pub dir: PathBuf,
    /// Capacity of the disk tier in bytes.
    pub disk_bytes: u64,
    /// Capacity of the memory tier in bytes.
    pub memory_bytes: u64,
    /// Refill unit in bytes.
    pub refill_size: u64,
    /// Free bytes the disk tier leaves on its file system.
    pub min_free_bytes: u64,
    /// Read-ahead bound per remote layer in bytes (0: off).
    pub read_ahead_bytes: u64,
}

/// Where credentials are looked up, after applying the legacy fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A `cred.json` file, re-read on every lookup.
    File(PathBuf),
    /// An HTTP(S) service answering `GET <url>?remote_url=<blob URL>`.
    Http {
        /// The service URL.
        url: String,
        /// Request timeout.
        timeout: Duration,
    },
    /// The same service over the Unix socket `socket` (`GET /auth?remote_url=<blob URL>`).
    Uds {
        /// The socket path.
        socket: PathBuf,
        /// Request timeout.
        timeout: Duration,
    },
}

impl DaemonSettings {
    /// Reads and validates a settings file.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_json(&text, &file)
    }

    /// Parses and validates settings from JSON text; `origin` names the text in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, SettingsError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let settings: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| SettingsError::Parse {
                file: origin.to_string(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        settings.validate(origin)?;
        Ok(settings)
    }

    fn validate(&self, origin: &str) -> Result<(), SettingsError> {
        let invalid = |field: &str, message: String| SettingsError::Invalid {
            file: origin.to_string(),
            field: field.to_string(),
            message,
        };
        let refill = self.cache_config.refill_size;
        if refill < 4096 || !refill.is_power_of_two() {
            return Err(invalid(
                "cacheConfig.refillSize",
                format!("{refill} is not a power of two >= 4096"),
            ));
        }
        let ty = &self.cache().cache_type;
        if !matches!(ty.as_str(), "file" | "download" | "ocf") {
            return Err(invalid(
                "cacheConfig.cacheType",
                format!("unknown cache type {ty:?}"),
            ));
        }
        for (host, urls) in &self.mirrors {
            for url in urls {
                let bad = match reqwest::Url::parse(url) {
                    Ok(u) if !matches!(u.scheme(), "http" | "https") => Some("not http or https"),
                    Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                        Some("has a query or fragment")
                    }
                    Ok(u) if !u.has_host() => Some("has no host"),
                    Ok(_) => None,
                    Err(_) => Some("not a URL"),
                };
                if let Some(why) = bad {
                    return Err(invalid(
                        &format!("mirrors.{host}"),
                        format!("{url:?} is {why}"),
                    ));
                }
            }
        }
        if self.http_config.stall_timeout_ms == 0 {
            return Err(invalid("httpConfig.stallTimeoutMs", "must be > 0".into()));
        }
        if self.download.block_size == 0 {
            return Err(invalid("download.blockSize", "must be > 0".into()));
        }
        match self.credential_config.mode.as_str() {
            "" | "file" | "http" | "https" | "uds" => {}
            other => {
                return Err(invalid(
                    "credentialConfig.mode",
                    format!("unsupported mode {other:?}"),
                ))
            }
        }
        if !self.credential_config.mode.is_empty() && self.credential_config.path.is_empty() {
            return Err(invalid(
                "credentialConfig.path",
                "must be set when mode is set".into(),
            ));
        }
        if self.p2p_config.enable && reqwest::Url::parse(&self.p2p_config.address).is_err() {
            return Err(invalid(
                "p2pConfig.address",
                format!("not a URL: {:?}", self.p2p_config.address),
            ));
        }
        if !self.http_config.proxy.is_empty()
            && reqwest::Url::parse(&self.http_config.proxy).is_err()
        {
            return Err(invalid(
                "httpConfig.proxy",
                format!("not a URL: {:?}", self.http_config.proxy),
            ));
        }
        if self.cert_config.cert_file.is_empty() != self.cert_config.key_file.is_empty() {
            return Err(invalid(
                "certConfig",
                "certFile and keyFile must be given together".into(),
            ));
        }
        Ok(())
    }

    /// The mirrors to try, in order, before the registry of `repo_blob_url`: the blob URL
    /// with its scheme and authority replaced by each mirror's (a mirror's own path, if any,
    /// is put in front of the registry's).
    pub fn mirror_urls(&self, repo_blob_url: &str) -> Vec<String> {
        let Ok(url) = reqwest::Url::parse(repo_blob_url) else {
            return Vec::new();
        };
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Vec::new(),
        };
        let mirrors = self.mirrors.get(&host).or_else(|| self.mirrors.get("*"));
        mirrors
            .into_iter()
            .flatten()
            .map(|base| format!("{}{}", base.trim_end_matches('/'), url.path()))
            .collect()
    }

    /// The TLS client certificate and key files, when configured.
    pub fn client_cert(&self) -> Option<(PathBuf, PathBuf)> {
        let c = &self.cert_config;
        (!c.cert_file.is_empty() && !c.key_file.is_empty())
            .then(|| (PathBuf::from(&c.cert_file), PathBuf::from(&c.key_file)))
    }

    /// The cache settings in force: `cacheConfig`'s keys where the file gives them; with an
    /// empty `cacheConfig.cacheType`, the legacy top-level keys for the rest.
    pub fn cache(&self) -> EffectiveCache {
        let c = &self.cache_config;
        let (cache_type, dir, gb) = if c.cache_type.is_empty() {
            (
                self.cache_type.clone(),
                c.cache_dir
                    .clone()
                    .unwrap_or(self.registry_cache_dir.clone()),
                c.cache_size_gb.unwrap_or(self.registry_cache_size_gb),
            )
        } else {
            (
                c.cache_type.clone(),
                c.cache_dir.clone().unwrap_or(DEFAULT_CACHE_DIR.into()),
                c.cache_size_gb.unwrap_or(4),
            )
        };
        EffectiveCache {
            cache_type,
            dir: PathBuf::from(dir),
            disk_bytes: c.cache_size_bytes.unwrap_or(u64::from(gb) << 30),
            memory_bytes: u64::from(c.memory_size_mb) << 20,
            refill_size: u64::from(c.refill_size),
            min_free_bytes: u64::from(c.min_free_mb) << 20,
            read_ahead_bytes: u64::from(c.read_ahead_kb) << 10,
        }
    }

    /// Applies command-line overrides of the cache folder and the disk tier's capacity in bytes
    /// (`--cache-dir`, `--cache-size`; 0 disables the disk tier). The settings in force are
    /// first copied into `cacheConfig`, so an override also applies to a file that uses the
    /// legacy top-level cache keys.
    pub fn override_cache(&mut self, dir: Option<&Path>, size_bytes: Option<u64>) {
        if dir.is_none() && size_bytes.is_none() {
            return;
        }
        let current = self.cache();
        let c = &mut self.cache_config;
        c.cache_type = current.cache_type;
        c.cache_dir = Some(current.dir.display().to_string());
        c.cache_size_bytes = Some(current.disk_bytes);
        if let Some(dir) = dir {
            c.cache_dir = Some(dir.display().to_string());
        }
        if let Some(bytes) = size_bytes {
            c.cache_size_bytes = Some(bytes);
        }
    }

    /// Where credentials come from: `credentialConfig`, or the legacy `credentialFilePath`.
    pub fn credentials(&self) -> CredentialSource {
        let c = &self.credential_config;
        match c.mode.as_str() {
            "http" | "https" => CredentialSource::Http {
                url: c.path.clone(),
                timeout: Duration::from_secs(c.timeout.max(1) as u64),
            },
            "uds" => CredentialSource::Uds {
                socket: PathBuf::from(&c.path),
                timeout: Duration::from_secs(c.timeout.max(1) as u64),
            },
            "file" => CredentialSource::File(PathBuf::from(&c.path)),
            _ => CredentialSource::File(PathBuf::from(&self.credential_file_path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_overrides_replace_cache_folder_and_size() {
        // Legacy keys in force: the override keeps their type and size, changes the folder.
        let mut s = DaemonSettings::from_json(
            r#"{"registryCacheDir": "/legacy", "registryCacheSizeGB": 3}"#,
            "t.json",
        )
        .unwrap();
        s.override_cache(Some(Path::new("/tmp/c")), None);
        let cache = s.cache();
        assert_eq!(
            (cache.cache_type.as_str(), cache.dir, cache.disk_bytes),
            ("file", PathBuf::from("/tmp/c"), 3 << 30)
        );
        s.override_cache(None, Some(300 << 20));
        assert_eq!(s.cache().disk_bytes, 300 << 20);
        assert_eq!(s.cache().dir, PathBuf::from("/tmp/c"));
        let before = s.clone();
        s.override_cache(None, None);
        assert_eq!(s, before);
    }

    #[test]
    fn empty_object_gives_overlaybd_defaults() {
        let s = DaemonSettings::from_json("{}", "t.json").unwrap();
        let cache = s.cache();
        assert_eq!(cache.cache_type, "file");
        assert_eq!(cache.dir, PathBuf::from("/opt/overlaybd/registry_cache"));
        assert_eq!(cache.disk_bytes, 4 << 30);
        assert_eq!(cache.refill_size, 262_144);
        assert_eq!(
            cache.min_free_bytes,
            1 << 30,
            "overlaybd's 1 GiB of free space"
        );
        assert_eq!(s.download, DownloadConfig::default());
        assert_eq!(s.download.delay, 300);
        assert_eq!(s.download.try_cnt, 5);
        assert!(!s.p2p_config.enable);
        assert_eq!(s.p2p_config.address, "http://localhost:9731/accelerator");
        assert_eq!(s.prefetch_config.workers(), 16);
        assert_eq!(
            s.credentials(),
            CredentialSource::File("/opt/overlaybd/cred.json".into())
        );
    }

    #[test]
    fn reference_example_config_parses_and_unknown_keys_are_ignored() {
        let text = r#"{
            "logConfig": {"logLevel": 1, "logPath": "/var/log/overlaybd.log"},
            "cacheConfig": {"cacheType": "file", "cacheDir": "/var/cache/obd", "cacheSizeGB": 2,
                            "refillSize": 1048576, "memorySizeMB": 8},
            "gzipCacheConfig": {"enable": true},
            "credentialConfig": {"mode": "file", "path": "/etc/cred.json"},
            "download": {"enable": true, "delay": 600, "delayExtra": 30, "maxMBps": 100},
            "p2pConfig": {"enable": true, "address": "http://127.0.0.1:65001/accelerator"},
            "enableAudit": true, "registryFsVersion": "v2",
            "prefetchConfig": {"concurrency": 4}
        }"#;
        let s = DaemonSettings::from_json(text, "overlaybd.json").unwrap();
        assert_eq!(s.prefetch_config.workers(), 4);
        let cache = s.cache();
        assert_eq!(cache.dir, PathBuf::from("/var/cache/obd"));
        assert_eq!(cache.disk_bytes, 2 << 30);
        assert_eq!(cache.memory_bytes, 8 << 20);
        assert_eq!(cache.refill_size, 1 << 20);
        assert!(s.download.enable);
        assert_eq!(s.download.delay, 600);
        assert_eq!(s.download.bytes_per_sec(), Some(100_000_000));
        assert_eq!(s.download.try_cnt, 5, "missing key keeps its default");
        assert_eq!(
            s.credentials(),
            CredentialSource::File("/etc/cred.json".into())
        );
        assert!(s.p2p_config.enable);
    }

    #[test]
    fn prefetch_workers_are_off_below_one_and_capped() {
        let workers = |n: i64| PrefetchConfig { concurrency: n }.workers();
        assert_eq!((workers(0), workers(-3), workers(1)), (0, 0, 1));
        assert_eq!(workers(i64::MAX), crate::prefetch::replay::MAX_CONCURRENCY);
    }

    #[test]
    fn legacy_cache_keys_apply_when_cache_type_empty() {
        let text =
            r#"{"cacheType": "download", "registryCacheDir": "/x", "registryCacheSizeGB": 1}"#;
        let cache = DaemonSettings::from_json(text, "o.json").unwrap().cache();
        assert_eq!(
            (
                cache.cache_type.as_str(),
                cache.dir.as_path(),
                cache.disk_bytes
            ),
            ("download", Path::new("/x"), 1 << 30)
        );
    }

    #[test]
    fn cache_config_folder_and_size_apply_without_cache_type() {
        // The newcomer's file: overlaybd would ignore both keys and fill
        // /opt/overlaybd/registry_cache; here they are used.
        let text = r#"{"cacheConfig": {"cacheDir": "/srv/obd-cache", "cacheSizeGB": 1}}"#;
        let cache = DaemonSettings::from_json(text, "o.json").unwrap().cache();
        assert_eq!(
            (
                cache.cache_type.as_str(),
                cache.dir.as_path(),
                cache.disk_bytes
            ),
            ("file", Path::new("/srv/obd-cache"), 1 << 30)
        );
        // One key given: the other still comes from the legacy key.
        let text = r#"{"cacheConfig": {"cacheSizeGB": 2}, "registryCacheDir": "/legacy"}"#;
        let cache = DaemonSettings::from_json(text, "o.json").unwrap().cache();
        assert_eq!(
            (cache.dir.as_path(), cache.disk_bytes),
            (Path::new("/legacy"), 2 << 30)
        );
        // With cacheType, absent keys take overlaybd's defaults, not the legacy keys.
        let text = r#"{"cacheConfig": {"cacheType": "file"}, "registryCacheDir": "/legacy"}"#;
        let cache = DaemonSettings::from_json(text, "o.json").unwrap().cache();
        assert_eq!(
            (cache.dir.as_path(), cache.disk_bytes),
            (Path::new(DEFAULT_CACHE_DIR), 4 << 30)
        );
    }

    #[test]
    fn wrong_type_names_field_and_file() {
        let err =
            DaemonSettings::from_json(r#"{"cacheConfig": {"cacheSizeGB": "four"}}"#, "/etc/o.json")
                .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/o.json") && msg.contains("cacheConfig.cacheSizeGB"),
            "{msg}"
        );
        let err =
            DaemonSettings::from_json(r#"{"download": {"enable": 1}}"#, "d.json").unwrap_err();
        assert!(err.to_string().contains("download.enable"), "{err}");
        let err = DaemonSettings::from_json(r#"{"remoteFailure": "wait"}"#, "r.json").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("r.json: field `remoteFailure`: remote failure policy \"wait\""),
            "{msg}"
        );
    }

    #[test]
    fn mirrors_replace_the_registrys_origin_in_order() {
        let s = DaemonSettings::from_json(
            r#"{"mirrors": {"reg.example.com": ["http://10.0.0.5:8080", "https://m.corp/cache/"],
                            "*": ["http://any:1"]}}"#,
            "m.json",
        )
        .unwrap();
        assert_eq!(
            s.mirror_urls("https://reg.example.com/v2/team/app/blobs"),
            [
                "http://10.0.0.5:8080/v2/team/app/blobs",
                "https://m.corp/cache/v2/team/app/blobs"
            ]
        );
        assert_eq!(
            s.mirror_urls("http://127.0.0.1:5000/v2/x/blobs"),
            ["http://any:1/v2/x/blobs"],
            "the wildcard, for a host:port with no entry"
        );
        assert!(DaemonSettings::default()
            .mirror_urls("https://r/v2/x/blobs")
            .is_empty());
        for (bad, why) in [
            ("ftp://m", "not http or https"),
            ("http://m/?a=1", "has a query or fragment"),
            ("m:8080", "not http or https"),
            ("no url", "not a URL"),
        ] {
            let text = format!(r#"{{"mirrors": {{"r": ["{bad}"]}}}}"#);
            match DaemonSettings::from_json(&text, "m.json") {
                Err(SettingsError::Invalid { field, message, .. }) => {
                    assert_eq!(field, "mirrors.r");
                    assert!(message.ends_with(why), "{bad}: {message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn remote_failure_defaults_to_hold_and_is_read() {
        let s = DaemonSettings::from_json("{}", "t.json").unwrap();
        assert_eq!(s.remote_failure.to_string(), "hold:10m");
        let s = DaemonSettings::from_json(r#"{"remoteFailure": "fail:15s"}"#, "t.json").unwrap();
        assert_eq!(s.remote_failure.to_string(), "fail:15s");
    }

    #[test]
    fn invalid_values_are_refused_with_field() {
        for (text, field) in [
            (
                r#"{"cacheConfig": {"refillSize": 5000}}"#,
                "cacheConfig.refillSize",
            ),
            (
                r#"{"cacheConfig": {"refillSize": 2048}}"#,
                "cacheConfig.refillSize",
            ),
            (
                r#"{"cacheConfig": {"cacheType": "ram"}}"#,
                "cacheConfig.cacheType",
            ),
            (
                r#"{"credentialConfig": {"mode": "file"}}"#,
                "credentialConfig.path",
            ),
            (
                r#"{"p2pConfig": {"enable": true, "address": "not a url"}}"#,
                "p2pConfig.address",
            ),
            (r#"{"certConfig": {"certFile": "/c.pem"}}"#, "certConfig"),
            (
                r#"{"httpConfig": {"stallTimeoutMs": 0}}"#,
                "httpConfig.stallTimeoutMs",
            ),
        ] {
            match DaemonSettings::from_json(text, "x.json") {
                Err(SettingsError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn uds_credential_mode_is_a_socket() {
        let s = DaemonSettings::from_json(
            r#"{"credentialConfig": {"mode": "uds", "path": "/run/cred.sock", "timeout": 3}}"#,
            "u.json",
        )
        .unwrap();
        assert_eq!(
            s.credentials(),
            CredentialSource::Uds {
                socket: "/run/cred.sock".into(),
                timeout: Duration::from_secs(3)
            }
        );
        for text in [
            r#"{"credentialConfig": {"mode": "uds"}}"#,
            r#"{"credentialConfig": {"mode": "ftp", "path": "x"}}"#,
        ] {
            assert!(
                matches!(
                    DaemonSettings::from_json(text, "u.json"),
                    Err(SettingsError::Invalid { .. })
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(matches!(
            DaemonSettings::from_json("{\"cacheConfig\": ", "m.json"),
            Err(SettingsError::Parse { .. })
        ));
    }

    #[test]
    fn start_delay_stays_in_range() {
        let d = DownloadConfig {
            delay: 2,
            delay_extra: 3,
            ..Default::default()
        };
        for _ in 0..50 {
            let s = d.start_delay().as_secs();
            assert!((2..5).contains(&s), "{s}");
        }
    }
}

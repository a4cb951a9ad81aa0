//! Registry credentials: overlaybd's `cred.json` (Docker-config style `auths`), overlaybd's
//! credential service (over HTTP(S) or a Unix socket), Docker's own `config.json` with its
//! credential helpers, and the key matching overlaybd applies to them.
//!
//! Sources are tried in this order, and the first one that has credentials for the blob wins:
//! 1. overlaybd's credential service (`credentialConfig.mode` `http`, `https` or `uds`):
//!    `GET <path>?remote_url=<blob URL>`, or `GET http://localhost/auth?remote_url=<blob URL>`
//!    over the Unix socket at the `uds` path, answering `{"success": true, "data": {"auths":
//!    …}}`;
//! 2. `cred.json`-style files (`credentialConfig.mode` `file`, or the legacy
//!    `credentialFilePath`);
//! 3. Docker's `config.json` ([`DockerConfig`]): a `credHelpers` entry for the registry host
//!    runs that helper; otherwise an `auths` entry with credentials is used; otherwise, when
//!    `credsStore` is set, that helper is asked (see the `cred_helper` module for how helpers
//!    run).
//!
//! An `auths` entry with `identitytoken`, or a helper answering the user name `<token>`, gives
//! an identity token: the client then obtains Bearer tokens with the OAuth2 refresh-token flow
//! (see [`RegistryCredentials::identity_token`]).
//!
//! Parsing and matching are pure; [`CredentialStore`] reads its sources again on every lookup
//! (files, service, helpers alike), so rotated credentials are picked up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A username and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// User name; `<token>` when `password` is an identity token.
    pub username: String,
    /// Password or identity token.
    pub password: String,
}

/// The user name Docker and its credential helpers give identity tokens.
const IDENTITY_TOKEN_USER: &str = "<token>";

impl RegistryCredentials {
    /// The identity token (an OAuth2 refresh token), when these credentials are one: the user
    /// name is `<token>`, as credential helpers answer and as an `auths` entry's
    /// `identitytoken` is read. Such a token is exchanged for Bearer tokens with the
    /// refresh-token flow, and never sent to another host than the registry's.
    pub fn identity_token(&self) -> Option<&str> {
        (self.username == IDENTITY_TOKEN_USER && !self.password.is_empty())
            .then_some(self.password.as_str())
    }
}

impl fmt::Debug for RegistryCredentials {
    // Never print the password, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One `auths` entry as written in the file.
#[derive(Debug, Clone, Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    fn credentials(&self) -> Option<RegistryCredentials> {
        // Docker's `docker login` against an OAuth2 registry stores an identity token (with an
        // `auth` of `<token>:`); the token is what authenticates.
        if let Some(token) = self.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Some(RegistryCredentials {
                username: IDENTITY_TOKEN_USER.into(),
                password: token.into(),
            });
        }
        if let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            // overlaybd splits at the first `:`; a trailing newline (as `base64` of `echo`
            // output gives) is not part of the password.
            let (user, pass) = text.split_once(':')?;
            return Some(RegistryCredentials {
                username: user.into(),
                password: pass.trim_end_matches(['\n', '\r']).into(),
            });
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(RegistryCredentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        }
    }
}

/// The `auths` map of a credential file, in file order (order decides which key wins), and
/// the credential helpers a Docker `config.json` names.
#[derive(Debug, Default)]
pub struct AuthFile {
    entries: Vec<(String, AuthEntry)>,
    /// `credHelpers`: registry key → helper name.
    helpers: Vec<(String, String)>,
    /// `credsStore`: the helper for every registry without a `credHelpers` entry.
    store: Option<String>,
}

struct OrderedEntries;

impl<'de> Visitor<'de> for OrderedEntries {
    type Value = Vec<(String, AuthEntry)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of registry keys")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, AuthEntry>()? {
            out.push((k, v));
        }
        Ok(out)
    }
}

fn ordered<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, AuthEntry)>, D::Error> {
    d.deserialize_map(OrderedEntries)
}

/// The document shape shared by credential files and the service's `data` object.
#[derive(Deserialize)]
struct AuthDoc {
    #[serde(default, deserialize_with = "ordered")]
    auths: Vec<(String, AuthEntry)>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

impl AuthDoc {
    fn into_file(self) -> AuthFile {
        AuthFile {
            entries: self.auths,
            helpers: self
                .cred_helpers
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, name)| !name.is_empty())
                .collect(),
            store: self.creds_store.filter(|s| !s.is_empty()),
        }
    }
}

/// Docker's key for Docker Hub, and the server URL its helpers are asked for.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The registry host as Docker's `config.json` names it: Docker Hub's hosts are all
/// `index.docker.io` there.
fn docker_host(host: &str) -> &str {
    match host {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "index.docker.io",
        other => other,
    }
}

/// Where Docker's `config.json` sends a lookup for one registry.
#[derive(Debug, PartialEq, Eq)]
enum DockerChoice {
    /// Run helper `name` for `server_url`.
    Helper { name: String, server_url: String },
    /// Credentials written in `auths`.
    Credentials(RegistryCredentials),
    /// Nothing for this registry.
    Anonymous,
}

impl AuthFile {
    /// Parses a `cred.json` / Docker `config.json` document (`auths`, and for Docker's file
    /// `credHelpers` and `credsStore`).
    pub fn parse(json: &[u8]) -> Result<Self, serde_json::Error> {
        let doc: AuthDoc = serde_json::from_slice(json)?;
        Ok(doc.into_file())
    }

    /// What Docker's `config.json` says for `blob_url`: a `credHelpers` entry for its host
    /// first, then `auths` credentials, then `credsStore`.
    fn docker_choice(&self, blob_url: &str) -> DockerChoice {
        let mut candidates = candidate_keys(blob_url);
        let Some(host) = candidates.first().cloned() else {
            return DockerChoice::Anonymous;
        };
        let host = docker_host(&host).to_string();
        let hub = host == "index.docker.io";
        let helper = self
            .helpers
            .iter()
            .find(|(key, _)| docker_host(normalize_key(key)) == host);
        if let Some((key, name)) = helper {
            return DockerChoice::Helper {
                name: name.clone(),
                server_url: if hub { DOCKER_HUB_SERVER } else { key }.to_string(),
            };
        }
        if hub {
            candidates.push(host.clone());
        }
        if let Some(c) = self.lookup(&candidates) {
            return DockerChoice::Credentials(c);
        }
        match &self.store {
            Some(name) => DockerChoice::Helper {
                name: name.clone(),
                server_url: if hub {
                    DOCKER_HUB_SERVER.to_string()
                } else {
                    host
                },
            },
            None => DockerChoice::Anonymous,
        }
    }

    /// Parses the `{"success": true, "data": {"auths": ...}}` answer of a credential service.
    pub fn parse_service_answer(json: &[u8]) -> Result<Self, String> {
        // `data` is deserialised straight into the ordered form: going through
        // `serde_json::Value` would sort the keys and change which entry matches first.
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            success: bool,
            data: Option<AuthDoc>,
        }
        let a: Answer = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if !a.success {
            return Err("credential service answered success=false".into());
        }
        let data = a.data.ok_or("credential service answer without `data`")?;
        // Helpers named by a service are not run: only the local Docker config may do that.
        Ok(Self {
            entries: data.auths,
            ..Self::default()
        })
    }

    /// The credentials of the first entry (in file order) whose key is one of `candidates`.
    /// Keys are compared without a scheme and trailing `/` (Docker writes
    /// `https://index.docker.io/v1/`, overlaybd writes bare hosts).
    pub fn lookup(&self, candidates: &[String]) -> Option<RegistryCredentials> {
        self.entries
            .iter()
            .find(|(key, _)| {
                let key = normalize_key(key);
                candidates.iter().any(|c| c == key)
            })
            .and_then(|(_, e)| e.credentials())
    }
}

fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    key.strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key)
}

/// The keys overlaybd matches for a blob URL: the host, then each repository prefix.
/// `https://reg.example.com/v2/team/app/blobs/sha256:…` gives `reg.example.com`,
/// `reg.example.com/team`, `reg.example.com/team/app`.
pub fn candidate_keys(blob_url: &str) -> Vec<String> {
    let rest = blob_url.split_once("://").map_or(blob_url, |(_, r)| r);
    let mut parts = rest.split('/').filter(|p| !p.is_empty());
    let Some(host) = parts.next() else {
        return Vec::new();
    };
    let mut segments: Vec<&str> = parts.collect();
    if segments.first() == Some(&"v2") {
        segments.remove(0);
    }
    // Drop `blobs/<digest>` (or a bare trailing `blobs` of a repoBlobUrl).
    if let Some(i) = segments.iter().rposition(|s| *s == "blobs") {
        segments.truncate(i);
    }
    let mut keys = vec![host.to_string()];
    let mut prefix = host.to_string();
    for s in segments {
        prefix.push('/');
        prefix.push_str(s);
        keys.push(prefix.clone());
    }
    keys
}

/// How long a credential helper may run by default before it is killed.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Docker's client configuration: the folder of its `config.json` (for `auths`,
/// `credHelpers` and `credsStore`) and where `docker-credential-<name>` programs are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The folder holding `config.json`.
    pub dir: PathBuf,
    /// Folders searched, in order, for helper programs.
    pub helper_path: Vec<PathBuf>,
    /// How long one helper run may take before it is killed.
    pub helper_timeout: Duration,
}

impl DockerConfig {
    /// `config.json` in `dir`, helpers searched in `helper_path`, with
    /// [`DEFAULT_HELPER_TIMEOUT`].
    pub fn new(dir: impl Into<PathBuf>, helper_path: Vec<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            helper_path,
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
        }
    }

    /// Where Docker itself looks: `$DOCKER_CONFIG`, else `$HOME/.docker`, with helpers searched
    /// in `$PATH`. `None` when neither `DOCKER_CONFIG` nor `HOME` is set.
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Some(Self::new(dir, path))
    }
}

/// overlaybd's credential service.
#[derive(Debug, Clone)]
enum Service {
    /// `GET <url>?remote_url=<blob URL>`.
    Http { url: String, timeout: Duration },
    /// `GET /auth?remote_url=<blob URL>` over the Unix socket.
    Uds { socket: PathBuf, timeout: Duration },
}

/// Where credentials are looked up; every lookup re-reads its sources.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    files: Vec<PathBuf>,
    service: Option<Service>,
    docker: Option<DockerConfig>,
}

fn invalid_data(what: impl fmt::Display, e: impl fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

impl CredentialStore {
    /// No credentials at all: every registry is accessed anonymously.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Credentials from `cred.json`-style files, tried in order; missing files are skipped.
    pub fn from_files(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            ..Self::default()
        }
    }

    /// The same store, also consulting Docker's `config.json` and credential helpers as
    /// `docker` says (after the other sources).
    pub fn with_docker_config(mut self, docker: DockerConfig) -> Self {
        self.docker = Some(docker);
        self
    }

    /// Credentials from overlaybd's settings: its credential source, then Docker's
    /// configuration as [`DockerConfig::from_env`] finds it.
    pub fn from_settings(source: &crate::cache::settings::CredentialSource) -> Self {
        use crate::cache::settings::CredentialSource;
        let mut store = Self::default();
        match source {
            CredentialSource::File(p) => store.files.push(p.clone()),
            CredentialSource::Http { url, timeout } => {
                store.service = Some(Service::Http {
                    url: url.clone(),
                    timeout: *timeout,
                })
            }
            CredentialSource::Uds { socket, timeout } => {
                store.service = Some(Service::Uds {
                    socket: socket.clone(),
                    timeout: *timeout,
                })
            }
        }
        store.docker = DockerConfig::from_env();
        store
    }

    /// The credentials for a blob URL, or `None` for anonymous access. A file that exists but
    /// cannot be parsed is an error (silently going anonymous would hide a typo), and so is a
    /// credential helper that fails other than by having no credentials.
    pub async fn lookup(
        &self,
        client: &reqwest::Client,
        blob_url: &str,
    ) -> std::io::Result<Option<RegistryCredentials>> {
        let candidates = candidate_keys(blob_url);
        if let Some(service) = &self.service {
            let file = match service {
                Service::Http { url, timeout } => {
                    ask_http_service(client, url, *timeout, blob_url).await
                }
                Service::Uds { socket, timeout } => {
                    ask_uds_service(socket, *timeout, blob_url).await
                }
            }?;
            if let Some(c) = file.lookup(&candidates) {
                return Ok(Some(c));
            }
        }
        for path in &self.files {
            let Some(file) = read_auth_file(path).await? else {
                continue;
            };
            if let Some(c) = file.lookup(&candidates) {
                return Ok(Some(c));
            }
        }
        if let Some(docker) = &self.docker {
            let path = docker.dir.join("config.json");
            if let Some(file) = read_auth_file(&path).await? {
                return match file.docker_choice(blob_url) {
                    DockerChoice::Credentials(c) => Ok(Some(c)),
                    DockerChoice::Anonymous => Ok(None),
                    DockerChoice::Helper { name, server_url } => {
                        super::cred_helper::get(
                            &name,
                            &server_url,
                            &docker.helper_path,
                            docker.helper_timeout,
                        )
                        .await
                    }
                };
            }
        }
        Ok(None)
    }
}

/// A credential file, or `None` when it does not exist.
async fn read_auth_file(path: &std::path::Path) -> std::io::Result<Option<AuthFile>> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    };
    AuthFile::parse(&bytes)
        .map(Some)
        .map_err(|e| invalid_data(path.display(), e))
}

/// overlaybd's http/https credential service.
async fn ask_http_service(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    blob_url: &str,
) -> std::io::Result<AuthFile> {
    let what = format!("credential service {url}");
    let answer = client
        .get(format!("{url}?remote_url={blob_url}"))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| std::io::Error::other(format!("{what}: {e}")))?;
    if answer.status() != reqwest::StatusCode::OK {
        return Err(std::io::Error::other(format!(
            "{what}: status {}",
            answer.status()
        )));
    }
    let body = super::read_limited(answer, super::MAX_JSON_BODY)
        .await
        .map_err(|e| std::io::Error::other(format!("{what}: {e}")))?;
    AuthFile::parse_service_answer(&body).map_err(|e| std::io::Error::other(format!("{what}: {e}")))
}

/// overlaybd's `uds` credential service: the http request and answer, over a Unix socket,
/// through the management API's client (one HTTP/1.1 exchange per connection, bounded).
async fn ask_uds_service(
    socket: &std::path::Path,
    timeout: Duration,
    blob_url: &str,
) -> std::io::Result<AuthFile> {
    use crate::daemon::api::client::{ApiClient, ClientError};
    let what = format!("credential service unix:{}", socket.display());
    let client = ApiClient::new(socket)
        .with_timeout(timeout)
        .with_answer_limit(super::MAX_JSON_BODY);
    let answer = client
        .exchange(
            hyper::Method::GET,
            &format!("/auth?remote_url={blob_url}"),
            None,
        )
        .await
        .map_err(|e| {
            // The client's own messages name "the API"; say which service this is instead.
            let (kind, why) = match e {
                ClientError::Unreachable { reason, .. } => (
                    std::io::ErrorKind::NotConnected,
                    format!("cannot connect: {reason}"),
                ),
                ClientError::Timeout { timeout, .. } => (
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", timeout.as_secs_f64()),
                ),
                ClientError::Protocol { reason, .. } => (std::io::ErrorKind::InvalidData, reason),
                ClientError::Api { message, .. } => (std::io::ErrorKind::Other, message),
            };
            std::io::Error::new(kind, format!("{what}: {why}"))
        })?;
    if answer.status() != hyper::StatusCode::OK {
        return Err(std::io::Error::other(format!(
            "{what}: status {}",
            answer.status()
        )));
    }
    AuthFile::parse_service_answer(answer.body())
        .map_err(|e| std::io::Error::other(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_repository_prefixes() {
        assert_eq!(
            candidate_keys("https://reg.example.com/v2/team/app/blobs/sha256:00"),
            [
                "reg.example.com",
                "reg.example.com/team",
                "reg.example.com/team/app"
            ]
        );
        assert_eq!(
            candidate_keys("http://127.0.0.1:5000/v2/x/blobs/"),
            ["127.0.0.1:5000", "127.0.0.1:5000/x"]
        );
        assert!(candidate_keys("").is_empty());
    }

    #[test]
    fn first_matching_entry_in_file_order_wins() {
        // The more specific key comes second, so the host entry wins (not the longest match).
        let json = br#"{"auths": {
            "zzz.other": {"username": "no", "password": "no"},
            "hub.docker.com": {"username": "username", "password": "password"},
            "hub.docker.com/hello/world": {"auth": "dXNlcm5hbWU6cGFzc3dvcmQK"}
        }}"#;
        let f = AuthFile::parse(json).unwrap();
        let c = f
            .lookup(&candidate_keys(
                "https://hub.docker.com/v2/hello/world/blobs/sha256:1",
            ))
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("username", "password")
        );
        assert_eq!(
            f.lookup(&candidate_keys("https://elsewhere/v2/a/blobs/x")),
            None
        );
    }

    #[test]
    fn auth_field_is_split_at_first_colon_and_newline_dropped() {
        let f = AuthFile::parse(br#"{"auths": {"r": {"auth": "dXNlcm5hbWU6cGFzczp3b3JkCg=="}}}"#)
            .unwrap();
        let c = f.lookup(&["r".to_string()]).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("username", "pass:word")
        );
        let bad = AuthFile::parse(br#"{"auths": {"r": {"auth": "!!!"}}}"#).unwrap();
        assert_eq!(bad.lookup(&["r".to_string()]), None);
    }

    #[test]
    fn docker_config_keys_with_scheme_match() {
        let f = AuthFile::parse(
            br#"{"auths": {"https://127.0.0.1:5000/v1/": {"auth": "dTpw"}}, "credsStore": "x"}"#,
        )
        .unwrap();
        let c = f
            .lookup(&candidate_keys("http://127.0.0.1:5000/v2/r/blobs/sha256:1"))
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
    }

    #[test]
    fn service_answer_and_malformed_files() {
        let a = AuthFile::parse_service_answer(br#"{"traceId":"t","success":true,"data":{"auths":{"h":{"username":"a","password":"b"}}}}"#).unwrap();
        assert_eq!(a.lookup(&["h".into()]).unwrap().username, "a");
        assert!(AuthFile::parse_service_answer(br#"{"success":false}"#).is_err());
        assert!(AuthFile::parse_service_answer(br#"{"success":true}"#).is_err());
        // File order decides between keys naming the same registry, as in cred.json; "reg"
        // sorts after "https://reg/", so a sorted map would pick the second entry.
        let ordered = AuthFile::parse_service_answer(
            br#"{"success":true,"data":{"auths":{"reg":{"username":"first","password":"p"},"https://reg/":{"username":"second","password":"p"}}}}"#,
        )
        .unwrap();
        assert_eq!(ordered.lookup(&["reg".into()]).unwrap().username, "first");
        assert!(AuthFile::parse(b"{\"auths\": [1]}").is_err());
        assert!(AuthFile::parse(b"{}")
            .unwrap()
            .lookup(&["h".into()])
            .is_none());
    }

    #[test]
    fn docker_config_helpers_store_and_identity_tokens() {
        let f = AuthFile::parse(
            br#"{
            "auths": {
                "placeholder.example": {},
                "plain.example": {"auth": "dTpw"},
                "acr.example": {"auth": "PHRva2VuPjo=", "identitytoken": "refresh-1"},
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"}
            },
            "credHelpers": {"gcr.io": "gcloud", "https://helped.example:5000": "test", "empty.example": ""},
            "credsStore": "desktop"
        }"#,
        )
        .unwrap();
        let choice = |url: &str| f.docker_choice(url);
        let helper = |name: &str, server: &str| DockerChoice::Helper {
            name: name.into(),
            server_url: server.into(),
        };
        // credHelpers: the server URL is the key as config.json writes it.
        assert_eq!(
            choice("https://gcr.io/v2/p/app/blobs/sha256:1"),
            helper("gcloud", "gcr.io")
        );
        assert_eq!(
            choice("http://helped.example:5000/v2/a/blobs/sha256:1"),
            helper("test", "https://helped.example:5000")
        );
        // No helper for another port of the same host.
        assert_eq!(
            choice("http://helped.example:5001/v2/a/blobs/sha256:1"),
            helper("desktop", "helped.example:5001")
        );
        // auths with credentials beat credsStore; an empty placeholder does not.
        let DockerChoice::Credentials(c) = choice("https://plain.example/v2/a/blobs/sha256:1")
        else {
            panic!("plain.example")
        };
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert_eq!(c.identity_token(), None);
        assert_eq!(
            choice("https://placeholder.example/v2/a/blobs/sha256:1"),
            helper("desktop", "placeholder.example")
        );
        assert_eq!(
            choice("https://empty.example/v2/a/blobs/sha256:1"),
            helper("desktop", "empty.example")
        );
        // identitytoken wins over `auth` and is marked as such.
        let DockerChoice::Credentials(c) = choice("https://acr.example/v2/a/blobs/sha256:1") else {
            panic!("acr.example")
        };
        assert_eq!(c.identity_token(), Some("refresh-1"));
        // Docker Hub's hosts all match Docker's Hub key.
        let DockerChoice::Credentials(c) =
            choice("https://registry-1.docker.io/v2/library/x/blobs/sha256:1")
        else {
            panic!("hub")
        };
        assert_eq!(c.username, "hub");

        let hub_helper = AuthFile::parse(
            br#"{"credHelpers": {"https://index.docker.io/v1/": "hubhelper"}, "credsStore": "s"}"#,
        )
        .unwrap();
        assert_eq!(
            hub_helper.docker_choice("https://registry-1.docker.io/v2/library/x/blobs/sha256:1"),
            helper("hubhelper", "https://index.docker.io/v1/")
        );
        let store_only = AuthFile::parse(br#"{"credsStore": "osxkeychain"}"#).unwrap();
        assert_eq!(
            store_only.docker_choice("https://docker.io/v2/library/x/blobs/sha256:1"),
            helper("osxkeychain", "https://index.docker.io/v1/")
        );
        assert_eq!(
            AuthFile::parse(br#"{"credsStore": ""}"#)
                .unwrap()
                .docker_choice("https://r/v2/a/blobs/sha256:1"),
            DockerChoice::Anonymous
        );
        // Malformed helper sections are parse errors, not silently anonymous.
        assert!(AuthFile::parse(br#"{"credHelpers": {"r": 1}}"#).is_err());
        assert!(AuthFile::parse(br#"{"credsStore": ["x"]}"#).is_err());
        // `null` (as Go writes an empty map) is no helper at all.
        let null = AuthFile::parse(br#"{"auths": {}, "credHelpers": null, "credsStore": null}"#);
        assert_eq!(
            null.unwrap().docker_choice("https://r/v2/a/blobs/sha256:1"),
            DockerChoice::Anonymous
        );
        // A credential service cannot make us run programs.
        let served = AuthFile::parse_service_answer(
            br#"{"success":true,"data":{"auths":{},"credsStore":"evil"}}"#,
        )
        .unwrap();
        assert_eq!(
            served.docker_choice("https://r/v2/a/blobs/sha256:1"),
            DockerChoice::Anonymous
        );
    }

    /// A Docker config folder with `config.json` and helpers in a `bin` folder under it.
    fn docker_dir(config: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let docker = DockerConfig::new(dir.path(), vec![bin]);
        (dir, docker)
    }

    fn helper_script(docker: &DockerConfig, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = docker.helper_path[0].join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn store_runs_helpers_each_lookup_and_reports_their_errors() {
        let (dir, docker) = docker_dir(
            r#"{"credHelpers": {"reg.example": "test", "bad.example": "bad", "gone.example": "gone"},
                "credsStore": "store"}"#,
        );
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "one").unwrap();
        helper_script(
            &docker,
            "test",
            &format!(
                r#"read -r s; printf '{{"ServerURL":"%s","Username":"u-%s","Secret":"%s"}}' "$s" "$s" "$(cat {})""#,
                secret.display()
            ),
        );
        helper_script(
            &docker,
            "store",
            "echo credentials not found in native keychain; exit 1",
        );
        helper_script(&docker, "bad", "echo '{\"Username\": 1'");
        let store = CredentialStore::anonymous().with_docker_config(docker);
        let http = reqwest::Client::new();
        let url = "https://reg.example/v2/team/app/blobs/sha256:1";
        let c = store.lookup(&http, url).await.unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("u-reg.example", "one")
        );
        // Not cached: a rotated secret is seen by the next lookup.
        std::fs::write(&secret, "two").unwrap();
        assert_eq!(
            store.lookup(&http, url).await.unwrap().unwrap().password,
            "two"
        );
        // The store has nothing for other registries: anonymous.
        assert_eq!(
            store
                .lookup(&http, "https://other.example/v2/a/blobs/sha256:1")
                .await
                .unwrap(),
            None
        );
        let e = store
            .lookup(&http, "https://bad.example/v2/a/blobs/sha256:1")
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-bad: malformed answer"),
            "{e}"
        );
        let e = store
            .lookup(&http, "https://gone.example/v2/a/blobs/sha256:1")
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-gone: no such executable"),
            "{e}"
        );

        // A broken config.json names itself; a missing one means anonymous.
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let e = store.lookup(&http, url).await.unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        assert_eq!(store.lookup(&http, url).await.unwrap(), None);
    }

    #[tokio::test]
    async fn cred_json_comes_before_docker_config() {
        let (dir, docker) = docker_dir(r#"{"credHelpers": {"reg.example": "never"}}"#);
        let cred = dir.path().join("cred.json");
        std::fs::write(
            &cred,
            r#"{"auths": {"reg.example/team": {"auth": "YTpi"}}}"#,
        )
        .unwrap();
        let store = CredentialStore::from_files(vec![cred]).with_docker_config(docker);
        let http = reqwest::Client::new();
        let c = store
            .lookup(&http, "https://reg.example/v2/team/app/blobs/sha256:1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "a");
        // Without a cred.json match, the helper is asked (and is missing here).
        let e = store
            .lookup(&http, "https://reg.example/v2/other/blobs/sha256:1")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("docker-credential-never"), "{e}");
    }

    #[test]
    fn docker_config_from_env_follows_docker() {
        // Reads the variables as they are (not set here: other tests run in parallel).
        let found = DockerConfig::from_env();
        if let Some(found) = &found {
            let path: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default();
            assert_eq!(found.helper_path, path);
            assert_eq!(found.helper_timeout, DEFAULT_HELPER_TIMEOUT);
        }
        match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => assert_eq!(found.unwrap().dir, PathBuf::from(d)),
            None => {
                if let Some(h) = std::env::var_os("HOME") {
                    assert_eq!(found.unwrap().dir, PathBuf::from(h).join(".docker"));
                }
            }
        }
    }

    #[test]
    fn debug_hides_password() {
        let c = RegistryCredentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}

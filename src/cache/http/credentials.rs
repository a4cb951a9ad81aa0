//! Registry credentials: overlaybd's `cred.json` (Docker-config style `auths`), Docker's own
//! `config.json`, and the key matching overlaybd applies to them. Parsing and matching are pure;
//! [`CredentialStore`] re-reads the files on every lookup so rotated credentials are picked up.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A username and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// User name.
    pub username: String,
    /// Password or identity token.
    pub password: String,
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
}

impl AuthEntry {
    fn credentials(&self) -> Option<RegistryCredentials> {
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

/// The `auths` map of a credential file, in file order (order decides which key wins).
#[derive(Debug, Default)]
pub struct AuthFile {
    entries: Vec<(String, AuthEntry)>,
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
}

impl AuthFile {
    /// Parses a `cred.json` / Docker `config.json` document (only `auths` is used).
    pub fn parse(json: &[u8]) -> Result<Self, serde_json::Error> {
        let doc: AuthDoc = serde_json::from_slice(json)?;
        Ok(Self { entries: doc.auths })
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
        Ok(Self {
            entries: data.auths,
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

/// Where credentials are looked up; every lookup re-reads its sources.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    files: Vec<PathBuf>,
    service: Option<(String, std::time::Duration)>,
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
            service: None,
        }
    }

    /// Credentials from overlaybd's settings: its credential source, then Docker's
    /// `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`) if present.
    pub fn from_settings(source: &crate::cache::settings::CredentialSource) -> Self {
        use crate::cache::settings::CredentialSource;
        let mut store = Self::default();
        match source {
            CredentialSource::File(p) => store.files.push(p.clone()),
            CredentialSource::Http { url, timeout } => {
                store.service = Some((url.clone(), *timeout))
            }
        }
        let docker = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        if let Some(dir) = docker {
            store.files.push(dir.join("config.json"));
        }
        store
    }

    /// The credentials for a blob URL, or `None` for anonymous access. A file that exists but
    /// cannot be parsed is an error (silently going anonymous would hide a typo).
    pub async fn lookup(
        &self,
        client: &reqwest::Client,
        blob_url: &str,
    ) -> std::io::Result<Option<RegistryCredentials>> {
        let candidates = candidate_keys(blob_url);
        if let Some((url, timeout)) = &self.service {
            let answer = client
                .get(format!("{url}?remote_url={blob_url}"))
                .timeout(*timeout)
                .send()
                .await
                .map_err(|e| std::io::Error::other(format!("credential service {url}: {e}")))?;
            if answer.status() != reqwest::StatusCode::OK {
                return Err(std::io::Error::other(format!(
                    "credential service {url}: status {}",
                    answer.status()
                )));
            }
            let body = super::read_limited(answer, super::MAX_JSON_BODY)
                .await
                .map_err(|e| std::io::Error::other(format!("credential service {url}: {e}")))?;
            let file = AuthFile::parse_service_answer(&body)
                .map_err(|e| std::io::Error::other(format!("credential service {url}: {e}")))?;
            if let Some(c) = file.lookup(&candidates) {
                return Ok(Some(c));
            }
        }
        for path in &self.files {
            let bytes = match tokio::fs::read(path).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", path.display()),
                    ))
                }
            };
            let file = AuthFile::parse(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            if let Some(c) = file.lookup(&candidates) {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
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
    fn debug_hides_password() {
        let c = RegistryCredentials {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}

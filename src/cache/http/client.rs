//! The registry client: ranged blob reads with registry authorization (anonymous, Basic,
//! Bearer tokens), manual redirects, an optional HTTP(S) proxy and P2P prefix, timeouts and
//! bounded retries. The decisions live in the sans-IO modules `auth`, `credentials` and `range`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{StatusCode, Url};

use super::auth::{
    basic_header, parse_challenge, parse_token_response, BearerChallenge, Challenge,
};
use super::credentials::CredentialStore;
use super::range::{plan_body, probe_total, range_header, RangeError};
use crate::cache::settings::{DaemonSettings, HttpConfig};
use crate::source::{LayerSource, SourceError, SourceResult, Span};
use crate::{audit, metrics};

/// Largest manifest body read (the distribution spec's registries cap manifests at 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// A manifest as the registry answered it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The `Content-Type` header, which names the manifest's media type.
    pub content_type: Option<String>,
    /// The body, exactly as served (its digest is the manifest's digest).
    pub body: Bytes,
    /// `sha256:…` of the body.
    pub digest: String,
}

/// How many redirects one data request may follow before giving up.
const MAX_REDIRECTS: usize = 5;

/// Shared state of all registry blobs: the HTTP client, credentials and the token cache.
pub struct RegistryClient {
    http: reqwest::Client,
    credentials: CredentialStore,
    config: HttpConfig,
    /// Bearer tokens per challenge (realm, service, scope), with their expiry.
    tokens: Mutex<HashMap<BearerChallenge, (String, Instant)>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One failed attempt: what to report and whether another attempt may help.
struct Failure {
    kind: io::ErrorKind,
    message: String,
    retry: bool,
}

impl Failure {
    fn new(kind: io::ErrorKind, message: impl Into<String>, retry: bool) -> Self {
        Self {
            kind,
            message: message.into(),
            retry,
        }
    }

    fn status(status: StatusCode) -> Self {
        let code = status.as_u16();
        match code {
            401 | 403 => Self::new(
                io::ErrorKind::PermissionDenied,
                format!("Authentication failed (HTTP {code})"),
                true,
            ),
            404 => Self::new(io::ErrorKind::NotFound, "blob not found (HTTP 404)", false),
            429 => Self::new(io::ErrorKind::Other, "Too many requests (HTTP 429)", true),
            408 | 500..=599 => Self::new(
                io::ErrorKind::Other,
                format!("server error (HTTP {code})"),
                true,
            ),
            _ => Self::new(
                io::ErrorKind::Other,
                format!("unexpected HTTP status {code}"),
                false,
            ),
        }
    }

    fn transport(e: reqwest::Error) -> Self {
        // Print the whole chain: reqwest's top-level message alone hides the cause.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::Other
        };
        Self::new(kind, message, true)
    }

    fn range(e: RangeError) -> Self {
        let retry = !matches!(
            e,
            RangeError::RangeIgnored(_) | RangeError::InvalidRequest { .. }
        );
        Self::new(io::ErrorKind::InvalidData, e.to_string(), retry)
    }
}

/// The typed form of a ranged read that failed for good. The kinds are the ones [`Failure`]
/// gives (its constructors above are the only source of them), so this is the one place where
/// a registry answer becomes a [`SourceError`]: 404 is not found, 401/403 denied, a request
/// that could not be built (P2P URL, size) a local error, and everything else (transport
/// errors, timeouts, 5xx and 429, truncated or malformed answers) unavailable: it may work on
/// a later try.
fn source_error(e: io::Error) -> SourceError {
    match e.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound(e.to_string()),
        io::ErrorKind::PermissionDenied => SourceError::Denied(e.to_string()),
        io::ErrorKind::InvalidInput => SourceError::from(e),
        _ => SourceError::Unavailable(e.to_string()),
    }
}

impl RegistryClient {
    /// A client following `config`, sending `user_agent`, authenticating with `credentials`.
    pub fn new(
        config: HttpConfig,
        user_agent: &str,
        credentials: CredentialStore,
    ) -> io::Result<Arc<Self>> {
        Self::with_client_cert(config, user_agent, credentials, None)
    }

    /// Like [`RegistryClient::new`], also presenting a TLS client certificate
    /// (`(certificate PEM file, key PEM file)`, overlaybd's `certConfig`).
    pub fn with_client_cert(
        config: HttpConfig,
        user_agent: &str,
        credentials: CredentialStore,
        client_cert: Option<(PathBuf, PathBuf)>,
    ) -> io::Result<Arc<Self>> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let bad_pem = |p: &Path, e: reqwest::Error| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display()))
        };
        let mut builder = reqwest::Client::builder()
            // Redirects are followed by hand: the target is cached per blob and must not get
            // the registry's Authorization header.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .user_agent(user_agent);
        if !config.proxy.is_empty() {
            let proxy = reqwest::Proxy::all(&config.proxy).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("proxy {:?}: {e}", config.proxy),
                )
            })?;
            builder = builder.proxy(proxy);
        }
        if !config.ca_file.is_empty() {
            let path = Path::new(&config.ca_file);
            for cert in
                reqwest::Certificate::from_pem_bundle(&read(path)?).map_err(|e| bad_pem(path, e))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &client_cert {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend_from_slice(&read(key)?);
            builder =
                builder.identity(reqwest::Identity::from_pem(&pem).map_err(|e| bad_pem(cert, e))?);
        }
        let http = builder
            .build()
            .map_err(|e| io::Error::other(format!("HTTP client: {e}")))?;
        Ok(Arc::new(Self {
            http,
            credentials,
            config,
            tokens: Mutex::new(HashMap::new()),
        }))
    }

    /// A client for the daemon settings (`httpConfig`, `userAgent`, credential source).
    pub fn from_settings(settings: &DaemonSettings) -> io::Result<Arc<Self>> {
        let creds = CredentialStore::from_settings(&settings.credentials());
        Self::with_client_cert(
            settings.http_config.clone(),
            &settings.user_agent,
            creds,
            settings.client_cert(),
        )
    }

    /// The underlying HTTP client (redirects off, same timeouts and proxy).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Opens `<repo_blob_url>/<digest>`: resolves authorization and redirects and learns the
    /// size with a one-byte ranged read. `p2p_prefix`, when set, routes data requests through
    /// a P2P proxy as `<prefix>/<actual URL>`.
    pub async fn open_blob(
        self: &Arc<Self>,
        repo_blob_url: &str,
        digest: &str,
        p2p_prefix: Option<&str>,
    ) -> io::Result<HttpBlobSource> {
        let mut blob = self.blob_of_size(repo_blob_url, digest, 0, p2p_prefix)?;
        blob.retrying("open", || blob.location()).await?;
        let probed = blob.probed_total.lock().take();
        let total = match probed {
            Some(t) => Some(t),
            None => blob.fetch(0, 1, None).await?.1,
        };
        blob.size = total.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: the server did not tell the blob size", blob.describe()),
            )
        })?;
        Ok(blob)
    }

    /// A blob whose size is already known (from the layer config), without contacting the
    /// registry: authorization is resolved by the first read that needs the network. Used to
    /// serve cached bytes while the registry is unreachable.
    pub fn blob_of_size(
        self: &Arc<Self>,
        repo_blob_url: &str,
        digest: &str,
        size: u64,
        p2p_prefix: Option<&str>,
    ) -> io::Result<HttpBlobSource> {
        Ok(HttpBlobSource {
            client: Arc::clone(self),
            blob_url: blob_url(repo_blob_url, digest)?,
            digest: digest.to_string(),
            size,
            p2p_prefix: p2p_prefix.map(|p| p.trim_end_matches('/').to_string()),
            retries: self.config.retries,
            location: Mutex::new(None),
            probed_total: Mutex::new(None),
        })
    }

    /// A token for the challenge, from the cache or the token service, with its expiry.
    async fn token(
        &self,
        challenge: &BearerChallenge,
        blob_url: &Url,
    ) -> Result<(String, Instant), Failure> {
        if let Some((token, expiry)) = self.tokens.lock().get(challenge) {
            if Instant::now() < *expiry {
                return Ok((token.clone(), *expiry));
            }
        }
        let resp = self.token_request(challenge, blob_url).await?;
        if resp.status() != StatusCode::OK {
            let mut f = Failure::status(resp.status());
            f.message = format!("token service {}: {}", challenge.realm, f.message);
            return Err(f);
        }
        let body = super::read_limited(resp, super::MAX_JSON_BODY)
            .await
            .map_err(|e| {
                Failure::new(
                    io::ErrorKind::InvalidData,
                    format!("token service {}: {e}", challenge.realm),
                    true,
                )
            })?;
        let token = parse_token_response(&body)
            .map_err(|e| Failure::new(io::ErrorKind::InvalidData, e.to_string(), true))?;
        let expiry = Instant::now() + token.lifetime;
        self.tokens
            .lock()
            .insert(challenge.clone(), (token.token.clone(), expiry));
        Ok((token.token, expiry))
    }

    /// Asks the token service for a token: with an identity token, the OAuth2 refresh-token
    /// flow (`POST <realm>`, falling back to the GET below when that answers 404, as
    /// containerd does); otherwise `GET <realm>?service&scope`, with Basic credentials when
    /// there are any. Credentials are looked up again for every token, so rotated secrets
    /// and helpers' fresh answers are used.
    async fn token_request(
        &self,
        challenge: &BearerChallenge,
        blob_url: &Url,
    ) -> Result<reqwest::Response, Failure> {
        let bad_realm = |e: String| Failure::new(io::ErrorKind::InvalidData, e, false);
        let token_url = challenge
            .token_url()
            .map_err(|e| bad_realm(e.to_string()))?;
        let creds = self.lookup_credentials(blob_url).await?;
        if let Some(refresh) = creds.as_ref().and_then(|c| c.identity_token()) {
            // An identity token is the registry's own: it goes to a token service on the
            // registry's host only, and never from https down to http.
            let same_host = token_url
                .host_str()
                .zip(blob_url.host_str())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
            if !same_host || (blob_url.scheme() == "https" && token_url.scheme() != "https") {
                return Err(Failure::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "Authentication failed: the identity token for {} is not sent to the \
                         token service {} (another host or plain http)",
                        host_label(blob_url),
                        challenge.realm
                    ),
                    false,
                ));
            }
            let realm = Url::parse(&challenge.realm).map_err(|e| bad_realm(e.to_string()))?;
            let req = self
                .http
                .post(realm.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(challenge.refresh_token_form(refresh));
            let resp = send_counted(req, &realm)
                .await
                .map_err(Failure::transport)?;
            if resp.status() != StatusCode::NOT_FOUND {
                return Ok(resp);
            }
            tracing::debug!(realm = %challenge.realm, "no OAuth2 POST at the token service; asking with GET");
        }
        let mut req = self.http.get(token_url.clone());
        if let Some(c) = &creds {
            req = req.header(AUTHORIZATION, basic_header(&c.username, &c.password));
        }
        send_counted(req, &token_url)
            .await
            .map_err(Failure::transport)
    }

    /// Fetches the manifest at `url` (a registry `/v2/REPO/manifests/REF` URL), asking for
    /// the media types in `accept`, with the same authorization as blob reads: anonymous
    /// first, then Basic or a Bearer token as the registry's challenge asks. A body over
    /// [`MAX_MANIFEST`] bytes is refused, and one whose sha256 contradicts the registry's
    /// `Docker-Content-Digest` (or the digest the URL asked for) is an error.
    pub async fn get_manifest(&self, url: &str, accept: &str) -> io::Result<FetchedManifest> {
        let fail =
            |kind: io::ErrorKind, what: String| io::Error::new(kind, format!("{url}: {what}"));
        let url_parsed =
            Url::parse(url).map_err(|e| fail(io::ErrorKind::InvalidInput, e.to_string()))?;
        let resp = self
            .send_authorized(&url_parsed, &mut None, |http| {
                Ok(http
                    .get(url_parsed.clone())
                    .header(reqwest::header::ACCEPT, accept))
            })
            .await
            .map_err(|e| fail(e.kind(), e.to_string()))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(fail(
                io::ErrorKind::NotFound,
                "manifest unknown (HTTP 404): no such tag, digest or repository".into(),
            ));
        }
        if status != StatusCode::OK {
            let f = Failure::status(status);
            return Err(fail(f.kind, f.message));
        }
        let content_type =
            header_str(resp.headers(), reqwest::header::CONTENT_TYPE).map(str::to_string);
        let announced = header_str(
            resp.headers(),
            reqwest::header::HeaderName::from_static("docker-content-digest"),
        )
        .map(str::to_string);
        let body = super::read_limited(resp, MAX_MANIFEST)
            .await
            .map_err(|e| fail(io::ErrorKind::InvalidData, e))?;
        let digest = super::push::sha256_digest(&body);
        let asked = url.rsplit('/').next().filter(|r| r.starts_with("sha256:"));
        for expected in announced.iter().map(String::as_str).chain(asked) {
            if expected.starts_with("sha256:") && expected != digest {
                return Err(fail(
                    io::ErrorKind::InvalidData,
                    format!("the manifest's sha256 is {digest}, not {expected}"),
                ));
            }
        }
        Ok(FetchedManifest {
            content_type,
            body,
            digest,
        })
    }

    /// Sends the request `make` builds to the registry at `url` with its authorization, for
    /// requests other than ranged blob reads (manifests, uploads). `auth` is the
    /// `Authorization` value to try first (learned by an earlier request of the same job);
    /// when the registry answers 401 or 403, its challenge is answered (Basic from the
    /// credentials, or a Bearer token for the scope it names) and the request is built and
    /// sent once more, so `make` must be able to build it twice (a body is reopened). `auth`
    /// keeps the value that was sent last. Any other answer is returned as it is.
    pub async fn send_authorized(
        &self,
        url: &Url,
        auth: &mut Option<String>,
        make: impl Fn(&reqwest::Client) -> io::Result<reqwest::RequestBuilder>,
    ) -> io::Result<reqwest::Response> {
        let mut challenged = false;
        loop {
            let mut req = make(&self.http)?;
            if let Some(a) = auth.as_deref() {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = send_counted(req, url).await.map_err(|e| {
                let f = Failure::transport(e);
                io::Error::new(f.kind, f.message)
            })?;
            let status = resp.status();
            if challenged || (status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN)
            {
                return Ok(resp);
            }
            challenged = true;
            let header = header_str(resp.headers(), WWW_AUTHENTICATE)
                .unwrap_or("")
                .to_string();
            let challenge = parse_challenge(&header).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("Authentication failed: {e}"),
                )
            })?;
            let value = match challenge {
                Challenge::Basic => {
                    let creds = self
                        .lookup_credentials(url)
                        .await
                        .map_err(|f| io::Error::new(f.kind, f.message))?
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                "Authentication failed: the registry wants Basic auth and no \
                                 credentials match",
                            )
                        })?;
                    basic_header(&creds.username, &creds.password)
                }
                Challenge::Bearer(b) => {
                    let rejected = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
                    let (mut token, _) = self
                        .token(&b, url)
                        .await
                        .map_err(|f| io::Error::new(f.kind, f.message))?;
                    if rejected == Some(token.as_str()) {
                        // The cached token for this scope was just refused (revoked or
                        // expired early): ask the token service again.
                        self.forget_token(&b);
                        token = self
                            .token(&b, url)
                            .await
                            .map_err(|f| io::Error::new(f.kind, f.message))?
                            .0;
                    }
                    format!("Bearer {token}")
                }
            };
            *auth = Some(value);
        }
    }

    fn forget_token(&self, challenge: &BearerChallenge) {
        self.tokens.lock().remove(challenge);
    }

    async fn lookup_credentials(
        &self,
        blob_url: &Url,
    ) -> Result<Option<super::RegistryCredentials>, Failure> {
        self.credentials
            .lookup(&self.http, blob_url.as_str())
            .await
            .map_err(|e| Failure::new(e.kind(), format!("credentials: {e}"), false))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .config
            .retry_backoff_ms
            .saturating_mul(1u64 << attempt.min(20));
        Duration::from_millis(base.min(self.config.retry_backoff_max_ms))
    }
}

/// `repoBlobUrl` + `/` (unless present) + digest, as overlaybd builds it.
pub fn blob_url(repo_blob_url: &str, digest: &str) -> io::Result<Url> {
    let sep = if repo_blob_url.ends_with('/') {
        ""
    } else {
        "/"
    };
    let text = format!("{repo_blob_url}{sep}{digest}");
    let url = Url::parse(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("blob URL {text:?}: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("blob URL {text:?}: not http(s)"),
        ));
    }
    Ok(url)
}

/// Where and how data requests for one blob go, once authorization and redirects are resolved.
#[derive(Clone)]
struct Location {
    url: Url,
    auth: Option<HeaderValue>,
    /// The challenge whose token `auth` carries, so a 401 can drop exactly that token.
    bearer: Option<BearerChallenge>,
    expires: Instant,
}

/// One registry blob read over HTTP Range requests, without any cache.
pub struct HttpBlobSource {
    client: Arc<RegistryClient>,
    blob_url: Url,
    digest: String,
    size: u64,
    p2p_prefix: Option<String>,
    /// Retries after a failed attempt; the client's setting unless a route asks for fewer.
    retries: u32,
    location: Mutex<Option<Location>>,
    /// The size revealed by an anonymous probe that needed no authorization (saves a request
    /// at open).
    probed_total: Mutex<Option<u64>>,
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl std::fmt::Debug for HttpBlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBlobSource")
            .field("url", &self.blob_url.as_str())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl HttpBlobSource {
    /// The blob digest (`sha256:<hex>`), as named in the layer config.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The registry URL of the blob (before any redirect).
    pub fn url(&self) -> &Url {
        &self.blob_url
    }

    /// The same blob with at most `retries` retries per read: a route that another one backs
    /// (a mirror, the P2P proxy) gives up early, so a read moves on instead of waiting.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The size of the blob (from the open, or as given).
    pub fn known_size(&self) -> u64 {
        self.size
    }

    /// Reads `len` bytes at `offset` with retries; also returns the blob size if the answer
    /// told it. `len` must be > 0.
    async fn fetch(
        &self,
        offset: u64,
        len: u64,
        known_total: Option<u64>,
    ) -> io::Result<(Bytes, Option<u64>)> {
        let last = offset.saturating_add(len.saturating_sub(1));
        self.retrying(&format!("bytes {offset}-{last}"), || async move {
            let started = Instant::now();
            let result = self.fetch_once(offset, len, known_total).await;
            let outcome = match &result {
                Ok((data, _)) => Ok(data.len() as u64),
                Err(f) => Err(f.message.as_str()),
            };
            audit::fetch(self.digest(), offset, len, started.elapsed(), outcome);
            result
        })
        .await
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are used up (with
    /// exponential back-off between attempts); the final error names the blob and `what`.
    async fn retrying<T, Fut>(&self, what: &str, mut op: impl FnMut() -> Fut) -> io::Result<T>
    where
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let retries = self.retries;
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(ok) => return Ok(ok),
                Err(f) if f.retry && attempt < retries => {
                    tracing::debug!(blob = %self.describe(), what, attempt, error = %f.message, "retrying");
                    metrics::global().registry_retry(&host_label(&self.blob_url));
                    tokio::time::sleep(self.client.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(f) => {
                    return Err(io::Error::new(
                        f.kind,
                        format!(
                            "{}: {what}: {} (after {} attempts)",
                            self.describe(),
                            f.message,
                            attempt + 1
                        ),
                    ));
                }
            }
        }
    }

    /// The cached location, or a freshly resolved one.
    async fn location(&self) -> Result<Location, Failure> {
        if let Some(loc) = self.location.lock().as_ref() {
            if Instant::now() < loc.expires {
                return Ok(loc.clone());
            }
        }
        let loc = self.resolve().await?;
        *self.location.lock() = Some(loc.clone());
        Ok(loc)
    }

    fn forget_location(&self) {
        *self.location.lock() = None;
    }

    fn new_location(
        &self,
        url: Url,
        auth: Option<HeaderValue>,
        bearer: Option<BearerChallenge>,
    ) -> Location {
        let expires = Instant::now() + Duration::from_secs(self.client.config.resolve_ttl_sec);
        Location {
            url,
            auth,
            bearer,
            expires,
        }
    }

    /// The authorization handshake: an anonymous probe; on 401/403 the challenge decides
    /// between Basic and a Bearer token. Redirects found here are handled by the data request.
    async fn resolve(&self) -> Result<Location, Failure> {
        let probe = self
            .client
            .http
            .get(self.blob_url.clone())
            .header(RANGE, "bytes=0-0");
        let probe = send_counted(probe, &self.blob_url)
            .await
            .map_err(Failure::transport)?;
        let status = probe.status();
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            if status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT {
                let headers = probe.headers();
                let length = header_str(headers, CONTENT_LENGTH).and_then(|v| v.parse().ok());
                *self.probed_total.lock() =
                    probe_total(status.as_u16(), header_str(headers, CONTENT_RANGE), length).ok();
            }
            return Ok(self.new_location(self.blob_url.clone(), None, None));
        }
        let header = header_str(probe.headers(), WWW_AUTHENTICATE)
            .unwrap_or("")
            .to_string();
        drop(probe);
        let challenge = parse_challenge(&header).map_err(|e| {
            Failure::new(
                io::ErrorKind::PermissionDenied,
                format!("Authentication failed: {e}"),
                false,
            )
        })?;
        let (value, bearer, expiry) = match challenge {
            Challenge::Basic => {
                let creds = self.client.lookup_credentials(&self.blob_url).await?.ok_or_else(|| {
                    Failure::new(io::ErrorKind::PermissionDenied, "Authentication failed: registry wants Basic auth and no credentials match", false)
                })?;
                (basic_header(&creds.username, &creds.password), None, None)
            }
            Challenge::Bearer(b) => {
                let (token, expiry) = self.client.token(&b, &self.blob_url).await?;
                (format!("Bearer {token}"), Some(b), Some(expiry))
            }
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            Failure::new(
                io::ErrorKind::InvalidData,
                "credentials are not a valid header value",
                false,
            )
        })?;
        let mut loc = self.new_location(self.blob_url.clone(), Some(value), bearer);
        // Re-resolve when the token lapses, rather than waiting for a 401.
        if let Some(expiry) = expiry {
            loc.expires = loc.expires.min(expiry);
        }
        Ok(loc)
    }

    /// One attempt: a ranged GET at the resolved location, following redirects by hand.
    async fn fetch_once(
        &self,
        offset: u64,
        len: u64,
        known_total: Option<u64>,
    ) -> Result<(Bytes, Option<u64>), Failure> {
        let range = range_header(offset, len).map_err(Failure::range)?;
        let mut loc = self.location().await?;
        for _ in 0..=MAX_REDIRECTS {
            let target = match &self.p2p_prefix {
                Some(prefix) => Url::parse(&format!("{prefix}/{}", loc.url)).map_err(|e| {
                    Failure::new(io::ErrorKind::InvalidInput, format!("P2P URL: {e}"), false)
                })?,
                None => loc.url.clone(),
            };
            let host = host_label(&target);
            let mut req = self.client.http.get(target.clone()).header(RANGE, &range);
            if let Some(auth) = &loc.auth {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let resp = send_counted(req, &target).await.map_err(|e| {
                self.forget_location();
                Failure::transport(e)
            })?;
            let status = resp.status();
            if status.is_redirection() && self.p2p_prefix.is_some() {
                // The proxy is sent the registry's URL and fetches (and follows redirects)
                // itself; following its redirect would send the next request through it to a
                // pre-signed URL that every node gets differently (overlaybd's #326, #361).
                return Err(Failure::new(
                    io::ErrorKind::Other,
                    format!("the P2P proxy answered HTTP {status} instead of the bytes"),
                    false,
                ));
            }
            if status.is_redirection() {
                let next = header_str(resp.headers(), LOCATION)
                    .and_then(|l| loc.url.join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| {
                        Failure::new(
                            io::ErrorKind::InvalidData,
                            format!("HTTP {status} without a usable Location"),
                            false,
                        )
                    })?;
                // Authorization stays with the registry: a redirect to another origin (object
                // storage, CDN) carries its own pre-signed credentials.
                let keep_auth = same_origin(&loc.url, &next);
                let token_expiry = loc.expires;
                loc = self.new_location(
                    next,
                    loc.auth.filter(|_| keep_auth),
                    loc.bearer.filter(|_| keep_auth),
                );
                if keep_auth {
                    loc.expires = loc.expires.min(token_expiry);
                }
                *self.location.lock() = Some(loc.clone());
                continue;
            }
            if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
                self.forget_location();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    // An expired or revoked token: drop it so the next attempt gets a new one.
                    if let Some(b) = &loc.bearer {
                        self.client.forget_token(b);
                    }
                }
                return Err(Failure::status(status));
            }
            let content_length =
                header_str(resp.headers(), CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
            let plan = plan_body(
                status.as_u16(),
                header_str(resp.headers(), CONTENT_RANGE),
                content_length,
                offset,
                len,
                known_total,
            )
            .map_err(Failure::range)?;
            if status == StatusCode::PARTIAL_CONTENT && content_length.is_some_and(|l| l != len) {
                return Err(Failure::range(RangeError::BadContentRange(format!(
                    "Content-Length {content_length:?} for {len} bytes"
                ))));
            }
            if status == StatusCode::OK && offset > 0 {
                tracing::debug!(blob = %self.describe(), "server ignores Range; slicing a full answer");
            }
            let stall = Duration::from_millis(self.client.config.stall_timeout_ms);
            let data = read_body(resp, plan.skip, len, stall).await?;
            metrics::global().registry_bytes(&host, data.len() as u64);
            return Ok((data, plan.total));
        }
        self.forget_location();
        Err(Failure::new(
            io::ErrorKind::Other,
            format!("more than {MAX_REDIRECTS} redirects"),
            false,
        ))
    }
}

/// Sends `req` to `url`, counted in the registry metrics by host and status (`error` when no
/// answer came) with the time to the answer's headers.
async fn send_counted(
    req: reqwest::RequestBuilder,
    url: &Url,
) -> reqwest::Result<reqwest::Response> {
    let started = Instant::now();
    let result = req.send().await;
    let status = result.as_ref().ok().map(|r| r.status().as_u16());
    metrics::global().registry_request(&host_label(url), status, started.elapsed());
    result
}

/// The `host` label of a URL: host, and port when the URL names one.
fn host_label(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Reads `len` bytes after discarding `skip`, from a streamed body; a body that ends early is
/// a (retryable) truncation, never a short read handed upward. A body that sends nothing for
/// `stall` is abandoned (retryable): a connection stuck mid-body is not waited on until the
/// whole request's timeout.
async fn read_body(
    mut resp: reqwest::Response,
    mut skip: u64,
    len: u64,
    stall: Duration,
) -> Result<Bytes, Failure> {
    let want = usize::try_from(len)
        .map_err(|_| Failure::new(io::ErrorKind::InvalidInput, "read too large", false))?;
    let mut out = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| {
                Failure::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the body stalled: nothing for {} ms after {} of {want} bytes",
                        stall.as_millis(),
                        out.len()
                    ),
                    true,
                )
            })?
            .map_err(Failure::transport)?;
        let Some(mut chunk) = chunk else {
            return Err(Failure::new(
                io::ErrorKind::UnexpectedEof,
                format!("truncated body: got {} of {want} bytes", out.len()),
                true,
            ));
        };
        if skip > 0 {
            let s = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
            chunk.advance(s);
            skip -= s as u64;
        }
        let need = want - out.len();
        if out.is_empty() && chunk.len() >= need {
            // Common case: one chunk holds the whole range; hand it on without copying.
            return Ok(chunk.slice(..need));
        }
        out.extend_from_slice(&chunk[..chunk.len().min(need)]);
        if out.len() == want {
            return Ok(out.freeze());
        }
    }
}

#[async_trait]
impl LayerSource for HttpBlobSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let (data, _) = self
            .fetch(span.offset(), span.len() as u64, Some(self.size))
            .await
            .map_err(source_error)?;
        Ok(data)
    }

    fn describe(&self) -> String {
        match &self.p2p_prefix {
            Some(prefix) => format!("{} via {prefix}", self.blob_url),
            None => self.blob_url.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_url_joins_like_overlaybd() {
        assert_eq!(
            blob_url("https://r/v2/a/blobs", "sha256:1")
                .unwrap()
                .as_str(),
            "https://r/v2/a/blobs/sha256:1"
        );
        assert_eq!(
            blob_url("https://r/v2/a/blobs/", "sha256:1")
                .unwrap()
                .as_str(),
            "https://r/v2/a/blobs/sha256:1"
        );
        assert!(blob_url("ftp://r/v2/a/blobs", "sha256:1").is_err());
        assert!(blob_url("not a url", "sha256:1").is_err());
    }

    #[test]
    fn origin_comparison_includes_port() {
        let a = Url::parse("http://127.0.0.1:5000/v2/x").unwrap();
        assert!(same_origin(
            &a,
            &Url::parse("http://127.0.0.1:5000/other").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("http://127.0.0.1:5001/v2/x").unwrap()
        ));
        assert!(!same_origin(
            &a,
            &Url::parse("https://127.0.0.1:5000/v2/x").unwrap()
        ));
    }
}

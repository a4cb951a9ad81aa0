//! Registry blob reads against an in-test HTTP server on 127.0.0.1: Range and non-Range
//! servers, Basic and Bearer auth, redirects to another host, proxies, and injected faults.
//! Every read must return the right bytes or a clean error, and nothing wrong may be cached.

mod support;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd_target::cache::http::push::sha256_digest;
use overlaybd_target::cache::http::{CredentialStore, DockerConfig, RegistryClient};
use overlaybd_target::cache::settings::{DaemonSettings, DownloadConfig, HttpConfig};
use overlaybd_target::cache::{CacheTiers, RemoteLayer, RemoteLayers};
use overlaybd_target::source::{LayerSource, SourceError};
use support::http_server::{blob_server, make_blob, serve_range, Reply, Request, TestServer};

const REPO: &str = "/v2/team/app/blobs";

fn http_config() -> HttpConfig {
    HttpConfig {
        connect_timeout_ms: 1000,
        request_timeout_ms: 1500,
        retries: 2,
        retry_backoff_ms: 5,
        retry_backoff_max_ms: 50,
        ..HttpConfig::default()
    }
}

fn client(creds: CredentialStore) -> Arc<RegistryClient> {
    RegistryClient::new(http_config(), "overlaybd-target-test", creds).unwrap()
}

fn is_blob_path(req: &Request, digest: &str) -> bool {
    req.target == format!("{REPO}/{digest}")
}

/// A cred.json in a temp folder with one entry for `key`.
fn cred_file(dir: &tempfile::TempDir, key: &str, user: &str, pass: &str) -> CredentialStore {
    let path = dir.path().join("cred.json");
    let json = format!(
        r#"{{"auths": {{"other.example": {{"username": "x", "password": "y"}}, "{key}": {{"username": "{user}", "password": "{pass}"}}}}}}"#
    );
    std::fs::write(&path, json).unwrap();
    CredentialStore::from_files(vec![path])
}

async fn check_reads(src: &dyn LayerSource, blob: &[u8]) {
    for (off, len) in [
        (0usize, 1usize),
        (1, 4095),
        (4096, 4096),
        (blob.len() - 10, 10),
        (blob.len() / 3, blob.len() / 2),
        (0, blob.len()),
    ] {
        let got = src
            .read_exact_at(off as u64, len)
            .await
            .unwrap_or_else(|e| panic!("read {off}+{len}: {e}"));
        assert_eq!(&got[..], &blob[off..off + len], "read {off}+{len}");
    }
    let err = src
        .read_exact_at(blob.len() as u64 - 1, 2)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::OutOfRange { .. }), "{err}");
}

#[tokio::test]
async fn range_server_reads_match_blob() {
    let blob = Arc::new(make_blob(100_000, 1));
    let digest = sha256_digest(&blob);
    let server = TestServer::start({
        let (blob, digest) = (Arc::clone(&blob), digest.clone());
        move |req| {
            if is_blob_path(req, &digest) {
                serve_range(req, &blob)
            } else {
                Reply::status(404)
            }
        }
    })
    .await;
    let src = client(CredentialStore::anonymous())
        .open_blob(&format!("{}{REPO}", server.url()), &digest, None)
        .await
        .unwrap();
    assert_eq!(src.size(), blob.len() as u64);
    check_reads(&src, &blob).await;
    let reqs = server.requests();
    assert!(reqs
        .iter()
        .all(|r| r.header("range").is_some() && r.header("authorization").is_none()));
    assert!(reqs
        .iter()
        .all(|r| r.header("user-agent") == Some("overlaybd-target-test")));
    assert!(reqs
        .iter()
        .any(|r| r.header("range") == Some("bytes=33333-83332")));
}

#[tokio::test]
async fn missing_blob_is_not_found_without_retries() {
    let server = TestServer::start(|_| Reply::status(404)).await;
    let err = client(CredentialStore::anonymous())
        .open_blob(&format!("{}{REPO}/", server.url()), "sha256:00", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert_eq!(server.requests().len(), 2, "one probe, one data request");
    assert_eq!(server.requests()[1].target, format!("{REPO}/sha256:00"));
}

#[tokio::test]
async fn server_without_range_support_is_sliced_correctly() {
    let blob = Arc::new(make_blob(70_000, 2));
    let server = TestServer::start({
        let blob = Arc::clone(&blob);
        move |_| Reply::new(200, &[], blob.to_vec())
    })
    .await;
    let src = client(CredentialStore::anonymous())
        .open_blob(
            &format!("{}{REPO}", server.url()),
            &sha256_digest(&blob),
            None,
        )
        .await
        .unwrap();
    assert_eq!(src.size(), 70_000);
    check_reads(&src, &blob).await;
}

#[tokio::test]
async fn wrong_partial_range_is_refused_not_misread() {
    let blob = Arc::new(make_blob(10_000, 3));
    let server = TestServer::start({
        let blob = Arc::clone(&blob);
        // Always answers bytes 0.. of the requested length, whatever was asked.
        move |req| {
            let range = req.header("range").unwrap_or("bytes=0-0");
            let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
            let n = b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap();
            Reply::new(
                206,
                &[("Content-Range", &format!("bytes 0-{n}/10000"))],
                blob[..=n].to_vec(),
            )
        }
    })
    .await;
    let src = client(CredentialStore::anonymous())
        .open_blob(&format!("{}{REPO}", server.url()), "sha256:aa", None)
        .await
        .unwrap();
    assert_eq!(&src.read_exact_at(0, 100).await.unwrap()[..], &blob[..100]);
    let err = src.read_exact_at(100, 100).await.unwrap_err();
    assert!(matches!(err, SourceError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("asked for bytes 100-199"), "{err}");
}

fn basic_registry(
    blob: Arc<Vec<u8>>,
    user_pass_b64: &'static str,
) -> impl Fn(&Request) -> Reply + Send + Sync {
    move |req| {
        if req.header("authorization") != Some(&format!("Basic {user_pass_b64}")) {
            return Reply::new(401, &[("WWW-Authenticate", r#"Basic realm="test""#)], "");
        }
        serve_range(req, &blob)
    }
}

#[tokio::test]
async fn basic_auth_uses_cred_json() {
    let blob = Arc::new(make_blob(50_000, 4));
    // base64("alice:s3cret")
    let server = TestServer::start(basic_registry(Arc::clone(&blob), "YWxpY2U6czNjcmV0")).await;
    let url = format!("{}{REPO}", server.url());
    let dir = tempfile::tempdir().unwrap();

    let key = format!("{}/team", server.addr);
    let src = client(cred_file(&dir, &key, "alice", "s3cret"))
        .open_blob(&url, "sha256:bb", None)
        .await
        .unwrap();
    check_reads(&src, &blob).await;

    let err = client(CredentialStore::anonymous())
        .open_blob(&url, "sha256:bb", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    let err = client(cred_file(&dir, &key, "alice", "wrong"))
        .open_blob(&url, "sha256:bb", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("Authentication failed"), "{err}");
}

/// A registry taking Bearer tokens of the current generation, and its token service.
struct BearerRegistry {
    generation: AtomicUsize,
    tokens_issued: AtomicUsize,
    unauthorized: AtomicUsize,
    expires_in: u64,
}

fn bearer_handler(
    state: Arc<BearerRegistry>,
    blob: Arc<Vec<u8>>,
    realm: String,
) -> impl Fn(&Request) -> Reply + Send + Sync {
    move |req| {
        if req.target.starts_with("/token?") {
            // Token requests must carry the user's Basic credentials (bob:pw).
            if req.header("authorization") != Some("Basic Ym9iOnB3") {
                return Reply::status(401);
            }
            assert!(
                req.target.contains("scope=repository%3Ateam%2Fapp%3Apull"),
                "{}",
                req.target
            );
            state.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let g = state.generation.load(Ordering::SeqCst);
            return Reply::new(
                200,
                &[],
                format!(
                    r#"{{"token": "tok-{g}", "expires_in": {}}}"#,
                    state.expires_in
                ),
            );
        }
        let current = format!("Bearer tok-{}", state.generation.load(Ordering::SeqCst));
        if req.header("authorization") != Some(current.as_str()) {
            state.unauthorized.fetch_add(1, Ordering::SeqCst);
            let challenge = format!(
                r#"Bearer realm="{realm}",service="test-registry",scope="repository:team/app:pull""#
            );
            return Reply::new(401, &[("WWW-Authenticate", &challenge)], "");
        }
        serve_range(req, &blob)
    }
}

async fn start_bearer(expires_in: u64) -> (TestServer, Arc<BearerRegistry>, Arc<Vec<u8>>) {
    let blob = Arc::new(make_blob(40_000, 5));
    let state = Arc::new(BearerRegistry {
        generation: AtomicUsize::new(1),
        tokens_issued: AtomicUsize::new(0),
        unauthorized: AtomicUsize::new(0),
        expires_in,
    });
    // The realm needs the port, known only after binding: bind, then serve through a cell.
    let realm = Arc::new(parking_lot::Mutex::new(String::new()));
    let server = TestServer::start({
        let (state, blob, realm) = (Arc::clone(&state), Arc::clone(&blob), Arc::clone(&realm));
        move |req| bearer_handler(Arc::clone(&state), Arc::clone(&blob), realm.lock().clone())(req)
    })
    .await;
    *realm.lock() = format!("{}/token", server.url());
    (server, state, blob)
}

#[tokio::test]
async fn bearer_token_is_fetched_cached_and_refreshed_on_401() {
    let (server, state, blob) = start_bearer(300).await;
    let dir = tempfile::tempdir().unwrap();
    let src = client(cred_file(&dir, &server.addr.to_string(), "bob", "pw"))
        .open_blob(&format!("{}{REPO}", server.url()), "sha256:cc", None)
        .await
        .unwrap();
    check_reads(&src, &blob).await;
    assert_eq!(
        state.tokens_issued.load(Ordering::SeqCst),
        1,
        "one token for all reads"
    );

    // The registry revokes the token: the next read gets a 401, fetches a new token, succeeds.
    state.generation.store(2, Ordering::SeqCst);
    assert_eq!(
        &src.read_exact_at(7, 1000).await.unwrap()[..],
        &blob[7..1007]
    );
    assert_eq!(state.tokens_issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bearer_token_is_renewed_before_it_expires() {
    let (server, state, blob) = start_bearer(1).await;
    let dir = tempfile::tempdir().unwrap();
    let src = client(cred_file(&dir, &server.addr.to_string(), "bob", "pw"))
        .open_blob(&format!("{}{REPO}", server.url()), "sha256:cc", None)
        .await
        .unwrap();
    let rejected = state.unauthorized.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(&src.read_exact_at(0, 10).await.unwrap()[..], &blob[..10]);
    assert_eq!(
        state.tokens_issued.load(Ordering::SeqCst),
        2,
        "a fresh token after expiry"
    );
    // Only the anonymous probe of the re-resolution is rejected, no data request with a stale token.
    assert_eq!(state.unauthorized.load(Ordering::SeqCst), rejected + 1);
}

#[tokio::test]
async fn redirect_to_other_host_drops_authorization_and_is_cached() {
    let blob = Arc::new(make_blob(60_000, 6));
    let expired = Arc::new(AtomicUsize::new(0));
    let storage = TestServer::start({
        let (blob, expired) = (Arc::clone(&blob), Arc::clone(&expired));
        move |req| {
            if !req.target.starts_with("/bucket/blob?sig=") {
                return Reply::status(404);
            }
            // One 403, as from an expired pre-signed URL.
            if expired.swap(0, Ordering::SeqCst) == 1 {
                return Reply::status(403);
            }
            serve_range(req, &blob)
        }
    })
    .await;
    let location = format!("{}/bucket/blob?sig=abc", storage.url());
    let registry = TestServer::start(move |req| {
        if req.header("authorization") != Some("Basic YWxpY2U6czNjcmV0") {
            return Reply::new(401, &[("WWW-Authenticate", r#"Basic realm="r""#)], "");
        }
        Reply::new(307, &[("Location", &location)], "")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let src = client(cred_file(
        &dir,
        &registry.addr.to_string(),
        "alice",
        "s3cret",
    ))
    .open_blob(&format!("{}{REPO}", registry.url()), "sha256:dd", None)
    .await
    .unwrap();
    assert_eq!(src.size(), 60_000);
    let before = registry.requests().len();
    check_reads(&src, &blob).await;
    assert_eq!(
        registry.requests().len(),
        before,
        "redirect target reused for later reads"
    );
    assert!(
        storage
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "Authorization leaked to storage"
    );

    // The signed URL expires: the client asks the registry again and carries on.
    expired.store(1, Ordering::SeqCst);
    assert_eq!(&src.read_exact_at(5, 50).await.unwrap()[..], &blob[5..55]);
    assert!(registry.requests().len() > before);
    assert!(storage
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
}

/// Which reply (if any) replaces the normal answer to the n-th data request.
type Script = Box<dyn Fn(usize) -> Option<Reply> + Send + Sync>;

/// A blob server whose data answers (not the size probe) are scripted per request number.
async fn faulty(
    blob: Arc<Vec<u8>>,
    script: impl Fn(usize) -> Option<Reply> + Send + Sync + 'static,
) -> (TestServer, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start({
        let n = Arc::clone(&n);
        move |req| {
            let probe = req.header("range") == Some("bytes=0-0");
            if !probe {
                if let Some(reply) = script(n.fetch_add(1, Ordering::SeqCst)) {
                    return reply;
                }
            }
            serve_range(req, &blob)
        }
    })
    .await;
    (server, n)
}

#[tokio::test]
async fn transient_faults_are_retried() {
    let blob = Arc::new(make_blob(20_000, 7));
    let scripts: Vec<(&str, Script)> = vec![
        ("reset", Box::new(|i| (i == 0).then_some(Reply::Reset))),
        ("500", Box::new(|i| (i == 0).then(|| Reply::status(500)))),
        ("429", Box::new(|i| (i == 0).then(|| Reply::status(429)))),
        (
            "truncated",
            Box::new(|i| {
                (i == 0).then(|| Reply::Truncated {
                    status: 206,
                    headers: vec![("Content-Range".into(), "bytes 100-1099/20000".into())],
                    declared: 1000,
                    body: vec![0; 10],
                })
            }),
        ),
    ];
    for (name, script) in scripts {
        let (server, data_requests) = faulty(Arc::clone(&blob), script).await;
        let src = client(CredentialStore::anonymous())
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ee", None)
            .await
            .unwrap();
        let got = src
            .read_exact_at(100, 1000)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got[..], &blob[100..1100], "{name}");
        assert_eq!(
            data_requests.load(Ordering::SeqCst),
            2,
            "{name}: one failure, one retry"
        );
    }
}

/// A connection that stops sending in the middle of a body is given up after the stall
/// timeout and the range asked for again, long before the whole request's timeout.
#[tokio::test]
async fn a_body_stalled_midway_is_abandoned_and_fetched_again() {
    let blob = Arc::new(make_blob(20_000, 6));
    let half = blob[100..600].to_vec();
    let (server, data_requests) = faulty(Arc::clone(&blob), move |i| {
        (i == 0).then(|| Reply::StalledBody {
            status: 206,
            headers: vec![("Content-Range".into(), "bytes 100-1099/20000".into())],
            declared: 1000,
            body: half.clone(),
            stall: Duration::from_secs(60),
        })
    })
    .await;
    let config = HttpConfig {
        request_timeout_ms: 120_000,
        stall_timeout_ms: 300,
        ..http_config()
    };
    let client = RegistryClient::new(config, "t", CredentialStore::anonymous()).unwrap();
    let src = client
        .open_blob(&format!("{}{REPO}", server.url()), "sha256:ee", None)
        .await
        .unwrap();
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), src.read_exact_at(100, 1000))
        .await
        .expect("not held until the stall ends")
        .expect("fetched again");
    assert_eq!(&got[..], &blob[100..1100]);
    assert_eq!(
        data_requests.load(Ordering::SeqCst),
        2,
        "stalled, then again"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "waited for the stall timeout"
    );
}

#[tokio::test]
async fn persistent_faults_give_a_clean_bounded_error() {
    let blob = Arc::new(make_blob(20_000, 8));
    // Every persistent fault is the registry being unavailable (transient), by type.
    let cases: Vec<(&str, Script)> = vec![
        ("500", Box::new(|_| Some(Reply::status(500)))),
        ("reset", Box::new(|_| Some(Reply::Reset))),
        (
            "truncated",
            Box::new(|_| {
                Some(Reply::Truncated {
                    status: 200,
                    headers: vec![],
                    declared: 20_000,
                    body: vec![1; 100],
                })
            }),
        ),
        (
            "stall",
            Box::new(|_| Some(Reply::Stall(Duration::from_secs(10)))),
        ),
    ];
    for (name, script) in cases {
        let (server, data_requests) = faulty(Arc::clone(&blob), script).await;
        let src = client(CredentialStore::anonymous())
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ee", None)
            .await
            .unwrap();
        let start = Instant::now();
        let err = src.read_exact_at(0, 5000).await.unwrap_err();
        assert!(matches!(err, SourceError::Unavailable(_)), "{name}: {err}");
        assert!(
            err.to_string().contains("after 3 attempts"),
            "{name}: {err}"
        );
        assert_eq!(
            data_requests.load(Ordering::SeqCst),
            3,
            "{name}: retries are bounded"
        );
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{name}: took {:?}",
            start.elapsed()
        );
    }
}

fn settings_for(cache_dir: &std::path::Path) -> DaemonSettings {
    let mut s = DaemonSettings::default();
    s.cache_config.cache_type = "file".into();
    s.cache_config.cache_dir = Some(cache_dir.display().to_string());
    s.cache_config.refill_size = 4096;
    s.http_config = http_config();
    s
}

#[tokio::test]
async fn cached_layer_caches_only_good_data_and_shares_by_digest() {
    let blob = Arc::new(make_blob(50_000, 9));
    let digest = sha256_digest(&blob);
    // Unit 2 (bytes 8192..12288) fails twice in a row (all attempts of one read), then works.
    let fails = Arc::new(AtomicUsize::new(3));
    let server = TestServer::start({
        let (blob, fails) = (Arc::clone(&blob), Arc::clone(&fails));
        move |req| {
            if req.header("range") == Some("bytes=8192-12287") && fails.load(Ordering::SeqCst) > 0 {
                fails.fetch_sub(1, Ordering::SeqCst);
                return Reply::status(500);
            }
            serve_range(req, &blob)
        }
    })
    .await;
    let cache_dir = tempfile::tempdir().unwrap();
    let layers = RemoteLayers::new(settings_for(cache_dir.path())).unwrap();
    let url = format!("{}{REPO}", server.url());
    let layer = RemoteLayer {
        size: Some(50_000),
        ..RemoteLayer::new(&url, &digest)
    };
    let src = layers.open(&layer).await.unwrap();
    assert!(src.read_exact_at(9000, 10).await.is_err());
    assert_eq!(
        layers.tiers().memory_used(),
        0,
        "a failed read caches nothing"
    );
    assert_eq!(
        &src.read_exact_at(9000, 10).await.unwrap()[..],
        &blob[9000..9010]
    );

    // A second image with the same layer, in another repository, reads from the cache.
    server.clear();
    let other = RemoteLayer {
        repo_blob_url: &format!("{}/v2/other/blobs", server.url()),
        ..layer
    };
    let src2 = layers.open(&other).await.unwrap();
    assert_eq!(
        &src2.read_exact_at(8200, 4000).await.unwrap()[..],
        &blob[8200..12200]
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("range") == Some("bytes=0-0")),
        "only the open probes went out"
    );

    // The layer config's size must match the registry's.
    let wrong = RemoteLayer {
        size: Some(49_999),
        ..layer
    };
    assert_eq!(
        layers.open(&wrong).await.err().map(|e| e.kind()),
        Some(io::ErrorKind::InvalidData)
    );
}

#[tokio::test]
async fn p2p_proxy_gets_the_full_blob_url() {
    let blob = Arc::new(make_blob(30_000, 10));
    let digest = sha256_digest(&blob);
    let registry = blob_server(&blob).await;
    let registry_url = format!("{}{REPO}", registry.url());
    let expected_target = format!("/accelerator/{registry_url}/{digest}");
    let proxy = TestServer::start({
        let (blob, expected) = (Arc::clone(&blob), expected_target.clone());
        move |req| {
            if req.target == expected {
                serve_range(req, &blob)
            } else {
                Reply::status(404)
            }
        }
    })
    .await;
    let cache_dir = tempfile::tempdir().unwrap();
    // The blob through the proxy, its reads cached here or not.
    let through_proxy = |cache_locally: bool| {
        let mut settings = settings_for(cache_dir.path());
        settings.p2p_config.enable = true;
        settings.p2p_config.cache_locally = cache_locally;
        settings.p2p_config.address = format!("{}/accelerator", proxy.url());
        let layers = RemoteLayers::new(settings).unwrap();
        let (url, digest) = (registry_url.clone(), digest.clone());
        async move {
            let src = layers.open(&RemoteLayer::new(&url, &digest)).await.unwrap();
            (layers, src)
        }
    };
    let (layers, src) = through_proxy(false).await;
    check_reads(src.as_ref(), &blob).await;
    assert!(
        proxy.requests().len() >= 6 && proxy.requests().iter().all(|r| r.target == expected_target)
    );
    assert_eq!(
        registry.requests().len(),
        1,
        "only the authorization probe goes to the registry"
    );
    assert_eq!(
        layers.tiers().memory_used(),
        0,
        "P2P reads bypass the local cache"
    );

    // With `cacheLocally` the proxy's bytes go through the tiers: read twice, asked once.
    let (layers, src) = through_proxy(true).await;
    proxy.clear();
    check_reads(src.as_ref(), &blob).await;
    let asked = proxy.requests().len();
    assert!(asked >= 1, "the proxy serves the first reads");
    check_reads(src.as_ref(), &blob).await;
    assert_eq!(
        proxy.requests().len(),
        asked,
        "the second reads come from the cache"
    );
    assert!(layers.tiers().memory_used() > 0);

    // An unreachable proxy (nothing listens): every read falls back to the registry.
    let dead = TcpListenerGone::port().await;
    let mut settings = settings_for(cache_dir.path());
    settings.p2p_config.enable = true;
    settings.p2p_config.address = format!("http://127.0.0.1:{dead}/accelerator");
    let layers = RemoteLayers::new(settings).unwrap();
    let src = layers
        .open(&RemoteLayer::new(&registry_url, &digest))
        .await
        .unwrap();
    assert_eq!(&src.read_exact_at(0, 100).await.unwrap()[..], &blob[..100]);
}

/// A loopback port with nothing listening (bound, then released).
struct TcpListenerGone;

impl TcpListenerGone {
    async fn port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }
}

#[tokio::test]
async fn http_proxy_setting_routes_requests() {
    let blob = Arc::new(make_blob(10_000, 11));
    // The proxy answers itself; a request through a proxy carries the absolute URL.
    let proxy = blob_server(&blob).await;
    let mut cfg = http_config();
    cfg.proxy = proxy.url();
    let c = RegistryClient::new(cfg, "t", CredentialStore::anonymous()).unwrap();
    let src = c
        .open_blob(
            "http://registry.invalid:5000/v2/team/app/blobs",
            "sha256:ff",
            None,
        )
        .await
        .unwrap();
    assert_eq!(&src.read_exact_at(10, 10).await.unwrap()[..], &blob[10..20]);
    assert!(proxy
        .requests()
        .iter()
        .all(|r| r.target == "http://registry.invalid:5000/v2/team/app/blobs/sha256:ff"));
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Background download without delay or rate limit, 2 attempts, 16 KiB reads, 4 at a time.
fn quick_download() -> DownloadConfig {
    DownloadConfig {
        enable: true,
        delay: 0,
        delay_extra: 1,
        max_mbps: 0,
        try_cnt: 2,
        block_size: 16384,
        parallel: 4,
    }
}

/// How many of the server's requests read data: all but the `bytes=0-0` open probes.
fn data_reads(s: &TestServer) -> usize {
    s.requests()
        .iter()
        .filter(|r| r.header("range") != Some("bytes=0-0"))
        .count()
}

/// Opens the server's blob with background download ([`quick_download`]) into a fresh layer
/// folder; the folders live as long as the returned guards.
async fn open_with_download(
    server: &TestServer,
    digest: &str,
) -> (Arc<dyn LayerSource>, tempfile::TempDir, tempfile::TempDir) {
    let cache_dir = tempfile::tempdir().unwrap();
    let layer_dir = tempfile::tempdir().unwrap();
    let layers = RemoteLayers::new(settings_for(cache_dir.path())).unwrap();
    let download = quick_download();
    let url = format!("{}{REPO}", server.url());
    let layer = RemoteLayer {
        dir: Some(layer_dir.path()),
        download: Some(&download),
        ..RemoteLayer::new(&url, digest)
    };
    (layers.open(&layer).await.unwrap(), layer_dir, cache_dir)
}

#[tokio::test]
async fn background_download_switches_to_local_copy() {
    let blob = Arc::new(make_blob(100_000, 12));
    let digest = sha256_digest(&blob);
    let server = blob_server(&blob).await;
    let (src, layer_dir, _cache_dir) = open_with_download(&server, &digest).await;
    let commit = layer_dir.path().join("overlaybd.commit");
    wait_for(|| commit.exists(), "overlaybd.commit").await;
    assert_eq!(std::fs::read(&commit).unwrap(), *blob);
    // The switch follows the rename closely; give a loaded machine some slack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.clear();
    check_reads(src.as_ref(), &blob).await;
    assert!(
        server.requests().is_empty(),
        "reads are served locally after the download"
    );
}

/// Log lines gathered in memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Without a layer `dir` (overlaybd then does nothing, silently), the download goes into the
/// cache folder under `downloads/ALGO/HEX/`, reads switch to it, and the log shows it was
/// scheduled, started, progressed and finished.
#[tokio::test]
async fn background_download_without_dir_goes_to_the_cache_folder_and_is_logged() {
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let blob = Arc::new(make_blob(200_000, 17));
    let digest = sha256_digest(&blob);
    let server = blob_server(&blob).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let layers = RemoteLayers::new(settings_for(cache_dir.path())).unwrap();
    let download = quick_download();
    let url = format!("{}{REPO}", server.url());
    let layer = RemoteLayer {
        download: Some(&download),
        ..RemoteLayer::new(&url, &digest)
    };
    let src = layers.open(&layer).await.unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let commit = cache_dir
        .path()
        .join("downloads/sha256")
        .join(hex)
        .join("overlaybd.commit");
    wait_for(|| commit.exists(), "downloads/sha256/HEX/overlaybd.commit").await;
    assert_eq!(std::fs::read(&commit).unwrap(), *blob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.clear();
    check_reads(src.as_ref(), &blob).await;
    assert!(
        server.requests().is_empty(),
        "reads are served from the copy in the cache folder"
    );
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    for what in [
        "background download scheduled",
        "background download started",
        "background download progress",
        "background download finished and verified",
        "layer now served from its downloaded copy",
    ] {
        assert!(text.contains(what), "no {what:?} in the log:\n{text}");
    }
    // 200 000 bytes in 16 KiB reads: a line at each tenth, 10 % to 90 %, none at 100 %.
    let progress: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("background download progress"))
        .collect();
    assert_eq!(progress.len(), 9, "{progress:#?}");
    assert!(progress[0].contains("percent=1"), "{}", progress[0]);
}

#[tokio::test]
async fn background_download_rejects_flipped_bytes() {
    let blob = Arc::new(make_blob(50_000, 13));
    let digest = sha256_digest(&blob);
    let mut bad = (*blob).clone();
    bad[33_333] ^= 0x40;
    let bad = Arc::new(bad);
    let server = blob_server(&bad).await;
    let (src, layer_dir, _cache_dir) = open_with_download(&server, &digest).await;
    // Two full downloads (4 blocks each) after the open probe.
    wait_for(
        || data_reads(&server) >= 8 && !layer_dir.path().join(".download").exists(),
        "two download attempts",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !layer_dir.path().join("overlaybd.commit").exists(),
        "a blob that fails its digest is never committed"
    );
    assert!(!layer_dir.path().join(".download").exists());
    // Reads stay remote (and return what the server has; the ZFile CRC layer above catches it).
    server.clear();
    src.read_exact_at(0, 10).await.unwrap();
    assert!(!server.requests().is_empty());
}

#[tokio::test]
async fn disk_cache_survives_restart_over_http() {
    let blob = Arc::new(make_blob(40_000, 14));
    let digest = sha256_digest(&blob);
    let server = blob_server(&blob).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let url = format!("{}{REPO}", server.url());
    let layer = RemoteLayer::new(&url, &digest);
    {
        let layers = RemoteLayers::new(settings_for(cache_dir.path())).unwrap();
        layers
            .open(&layer)
            .await
            .unwrap()
            .read_exact_at(0, 40_000)
            .await
            .unwrap();
    }
    server.clear();
    let tiers = CacheTiers::from_settings(&settings_for(cache_dir.path()).cache()).unwrap();
    assert!(tiers.disk_used() >= 40_000);
    let layers = RemoteLayers::with_parts(
        settings_for(cache_dir.path()),
        client(CredentialStore::anonymous()),
        tiers,
    );
    let src = layers.open(&layer).await.unwrap();
    check_reads(src.as_ref(), &blob).await;
    assert_eq!(
        server.requests().len(),
        1,
        "only the open probe after a restart"
    );
}

#[tokio::test]
async fn two_devices_sharing_a_layer_download_it_once() {
    let blob = Arc::new(make_blob(64 * 1024, 15));
    let digest = sha256_digest(&blob);
    let server = blob_server(&blob).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let layer_dir = tempfile::tempdir().unwrap();
    let layers = RemoteLayers::new(settings_for(cache_dir.path())).unwrap();
    let download = quick_download();
    let url = format!("{}{REPO}", server.url());
    let layer = RemoteLayer {
        dir: Some(layer_dir.path()),
        download: Some(&download),
        ..RemoteLayer::new(&url, &digest)
    };
    let (a, b) = (
        layers.open(&layer).await.unwrap(),
        layers.open(&layer).await.unwrap(),
    );
    wait_for(
        || layer_dir.path().join("overlaybd.commit").exists(),
        "overlaybd.commit",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(data_reads(&server), 4, "one download of 4 blocks");
    server.clear();
    check_reads(a.as_ref(), &blob).await;
    check_reads(b.as_ref(), &blob).await;
    assert!(
        server.requests().is_empty(),
        "both devices read the local copy"
    );
}

#[tokio::test]
async fn credential_service_mode_supplies_basic_credentials() {
    let blob = Arc::new(make_blob(20_000, 16));
    let registry = TestServer::start(basic_registry(Arc::clone(&blob), "YWxpY2U6czNjcmV0")).await;
    let host = registry.addr.to_string();
    let creds = TestServer::start(move |req| {
        if req.target.contains("refuse") {
            return Reply::new(200, &[], r#"{"success": false}"#);
        }
        let body = format!(r#"{{"traceId": "t1", "success": true, "data": {{"auths": {{"{host}": {{"username": "alice", "password": "s3cret"}}}}}}}}"#);
        Reply::new(200, &[], body)
    })
    .await;
    let mut settings = DaemonSettings::default();
    settings.credential_config.mode = "http".into();
    settings.credential_config.path = format!("{}/auth", creds.url());
    settings.http_config = http_config();
    let src = RegistryClient::from_settings(&settings)
        .unwrap()
        .open_blob(&format!("{}{REPO}", registry.url()), "sha256:ab", None)
        .await
        .unwrap();
    check_reads(&src, &blob).await;
    let asked = creds.requests();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|r| r.target == format!("/auth?remote_url={}{REPO}/sha256:ab", registry.url())),
        "{:?}",
        asked[0].target
    );

    settings.credential_config.path = format!("{}/refuse", creds.url());
    let err = RegistryClient::from_settings(&settings)
        .unwrap()
        .open_blob(&format!("{}{REPO}", registry.url()), "sha256:ab", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("success=false"), "{err}");
}

#[tokio::test]
async fn oversized_or_malformed_token_answers_are_clean_errors() {
    for (name, body) in [
        ("huge", vec![b'x'; 2 << 20]),
        ("not json", b"<html>".to_vec()),
        ("no token", br#"{"expires_in": 5}"#.to_vec()),
    ] {
        let realm = Arc::new(parking_lot::Mutex::new(String::new()));
        let server = TestServer::start({
            let (realm, body) = (Arc::clone(&realm), body.clone());
            move |req| {
                if req.target.starts_with("/token") {
                    return Reply::new(200, &[], body.clone());
                }
                let challenge = format!(
                    r#"Bearer realm="{}",service="s",scope="repository:team/app:pull""#,
                    realm.lock()
                );
                Reply::new(401, &[("WWW-Authenticate", &challenge)], "")
            }
        })
        .await;
        *realm.lock() = format!("{}/token", server.url());
        let err = client(CredentialStore::anonymous())
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ab", None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
        assert!(err.to_string().contains("token"), "{name}: {err}");
    }
}

#[tokio::test]
async fn redirect_loops_and_odd_locations_are_clean_errors() {
    let looping =
        TestServer::start(|req| Reply::new(302, &[("Location", req.target.as_str())], "")).await;
    let err = client(CredentialStore::anonymous())
        .open_blob(&format!("{}{REPO}", looping.url()), "sha256:ab", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("more than 5 redirects (after 1 attempts)"),
        "not retried: {err}"
    );
    for location in ["file:///etc/passwd", "http://[::1"] {
        let server =
            TestServer::start(move |_| Reply::new(307, &[("Location", location)], "")).await;
        let err = client(CredentialStore::anonymous())
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ab", None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{location}: {err}");
    }
}

/// Every registry answer is counted by host and status, retries by host, and data bytes by
/// host (the metrics an operator alerts on: README "Metrics").
#[tokio::test]
async fn registry_answers_are_counted_by_host_and_status() {
    let blob = Arc::new(make_blob(20_000, 11));
    let count = |host: &str, status: &str| {
        let text = overlaybd_target::metrics::global().render();
        let series = format!(
            "overlaybd_target_registry_requests_total{{host=\"{host}\",status=\"{status}\"}}"
        );
        support::metrics::value(&text, &series)
    };
    let host_value = |name: &str, host: &str| {
        let text = overlaybd_target::metrics::global().render();
        support::metrics::value(
            &text,
            &format!("overlaybd_target_{name}{{host=\"{host}\"}}"),
        )
    };
    for (code, retried) in [(500, true), (401, true), (404, false)] {
        let (server, _) = faulty(Arc::clone(&blob), move |i| {
            (i == 0).then(|| Reply::status(code))
        })
        .await;
        let host = server.url().trim_start_matches("http://").to_string();
        let src = client(CredentialStore::anonymous())
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ee", None)
            .await
            .unwrap();
        let read = src.read_exact_at(0, 5000).await;
        assert_eq!(read.is_ok(), retried, "{code}: {read:?}");
        assert_eq!(count(&host, &code.to_string()), Some(1.0), "{code}");
        if retried {
            assert_eq!(
                host_value("registry_retries_total", &host),
                Some(1.0),
                "{code}"
            );
            assert_eq!(
                host_value("registry_bytes_total", &host),
                Some(5000.0),
                "{code}"
            );
            // The size probe, the probe again after the failure (it forgets the location) and
            // the retried read were answered with 206.
            assert_eq!(count(&host, "206"), Some(3.0), "{code}");
        } else {
            assert_eq!(host_value("registry_retries_total", &host), None, "{code}");
            assert_eq!(count(&host, "206"), Some(1.0), "{code}: only the probe");
        }
        let text = overlaybd_target::metrics::global().render();
        let latency =
            format!("overlaybd_target_registry_request_duration_seconds_count{{host=\"{host}\"}}");
        let requests = if retried { 4.0 } else { 2.0 };
        assert_eq!(
            support::metrics::value(&text, &latency),
            Some(requests),
            "{code}"
        );
    }
    // A registry that does not answer at all is counted as `error`.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = closed.local_addr().unwrap().to_string();
    drop(closed);
    let opened = client(CredentialStore::anonymous())
        .open_blob(&format!("http://{host}{REPO}"), "sha256:ee", None)
        .await;
    assert!(opened.is_err());
    assert!(count(&host, "error").is_some_and(|n| n >= 1.0));
}

/// What the push fake registry stored, and what it saw.
#[derive(Default)]
struct PushStore {
    blobs: std::collections::HashMap<String, Vec<u8>>,
    manifests: std::collections::HashMap<String, (String, Vec<u8>)>,
    token_scopes: Vec<String>,
    /// Requests with a body that were refused for want of a valid token.
    bodies_refused: usize,
    generation: usize,
}

/// `push` to a registry that takes only Bearer tokens scoped `pull,push` (its token service
/// wants Basic credentials), and revokes the token after the first upload: every blob and the
/// manifest arrive intact (digests checked as the registry does), the token request names the
/// push scope, a revoked token is replaced once, and no body is sent more than needed.
#[tokio::test(flavor = "multi_thread")]
async fn push_with_bearer_tokens_scoped_for_push() {
    use overlaybd_target::overlaybd::config::LowerLayer;
    use overlaybd_target::overlaybd::ImageConfig;
    use overlaybd_target::registry::compose::ManifestKind;
    use overlaybd_target::registry::push::{push_image, BlobOutcome, PushOptions};
    use overlaybd_target::registry::{ImageReference, Manifest, Platform};

    let store = Arc::new(parking_lot::Mutex::new(PushStore {
        generation: 1,
        ..PushStore::default()
    }));
    let realm = Arc::new(parking_lot::Mutex::new(String::new()));
    let server = TestServer::start({
        let (store, realm) = (Arc::clone(&store), Arc::clone(&realm));
        move |req: &Request| {
            let mut s = store.lock();
            if let Some(query) = req.target.strip_prefix("/token?") {
                if req.header("authorization") != Some("Basic Ym9iOnB3") {
                    return Reply::status(401);
                }
                s.token_scopes.push(query.to_string());
                return Reply::new(200, &[], format!(r#"{{"token": "t{}"}}"#, s.generation));
            }
            if req.header("authorization") != Some(format!("Bearer t{}", s.generation).as_str()) {
                if !req.body.is_empty() {
                    s.bodies_refused += 1;
                }
                let challenge = format!(
                    r#"Bearer realm="{}",service="fake",scope="repository:team/app:pull,push""#,
                    realm.lock()
                );
                return Reply::new(401, &[("WWW-Authenticate", &challenge)], "");
            }
            let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
            match (req.method.as_str(), path) {
                ("HEAD", p) if p.starts_with("/v2/team/app/blobs/sha256:") => {
                    let digest = p.rsplit('/').next().unwrap();
                    Reply::status(if s.blobs.contains_key(digest) { 200 } else { 404 })
                }
                ("POST", "/v2/team/app/blobs/uploads/") => {
                    Reply::new(202, &[("Location", "/uploads/x1?state=abc")], "")
                }
                ("PUT", "/uploads/x1") => {
                    let digest = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("digest="))
                        .unwrap()
                        .replace("%3A", ":");
                    if sha256_digest(&req.body) != digest {
                        return Reply::new(
                            400,
                            &[],
                            r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
                        );
                    }
                    s.blobs.insert(digest, req.body.clone());
                    // The token is revoked after the first upload.
                    if s.blobs.len() == 1 {
                        s.generation += 1;
                    }
                    Reply::status(201)
                }
                ("PUT", "/v2/team/app/manifests/v1") => {
                    let media = req.header("content-type").unwrap_or("").to_string();
                    s.manifests.insert("v1".into(), (media, req.body.clone()));
                    Reply::status(201)
                }
                _ => Reply::status(404),
            }
        }
    })
    .await;
    *realm.lock() = format!("{}/token", server.url());

    let dir = tempfile::tempdir().unwrap();
    let layer_path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.obd");
    let layer = std::fs::read(layer_path).unwrap();
    let config = ImageConfig {
        lowers: vec![LowerLayer {
            file: layer_path.into(),
            ..LowerLayer::default()
        }],
        ..ImageConfig::default()
    };
    let reference = ImageReference::parse(&format!("{}/team/app:v1", server.addr)).unwrap();
    let progress = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&progress);
    let pushed = push_image(
        &client(cred_file(&dir, &server.addr.to_string(), "bob", "pw")),
        &config,
        "demo.json",
        &reference,
        &PushOptions {
            kind: ManifestKind::Oci,
            platform: Platform::parse("linux/arm64").unwrap(),
            plain_http: vec![],
        },
        Arc::new(move |done, total| seen.lock().push((done, total))),
    )
    .await
    .unwrap();

    let s = store.lock();
    assert_eq!(pushed.layers.len(), 1);
    assert_eq!(pushed.layers[0].outcome, BlobOutcome::Uploaded);
    assert_eq!(pushed.config.outcome, BlobOutcome::Uploaded);
    let blob = &s.blobs[&pushed.layers[0].blob.digest];
    assert_eq!(&blob[..16], b"overlaybd.commit");
    assert_eq!(&blob[512..512 + layer.len()], &layer[..], "payload at 512");
    assert_eq!(blob.len() as u64, pushed.layers[0].blob.size);
    assert!(blob[512 + layer.len()..].iter().all(|&b| b == 0));
    let (media, body) = &s.manifests["v1"];
    assert_eq!(media, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        pushed.pinned.to_string(),
        format!("{reference}@{}", sha256_digest(body))
    );
    let Manifest::Image(m) = Manifest::parse(Some(media), body).unwrap() else {
        panic!("not an image manifest");
    };
    assert_eq!(
        m.overlaybd().unwrap().layers[0].digest,
        pushed.layers[0].blob.digest
    );
    let config_blob: serde_json::Value =
        serde_json::from_slice(&s.blobs[&m.config.digest]).unwrap();
    assert_eq!(config_blob["architecture"], "arm64");
    // Two tokens: the first, and one after the revocation; each asked for the push scope.
    assert_eq!(s.token_scopes.len(), 2, "{:?}", s.token_scopes);
    assert!(s
        .token_scopes
        .iter()
        .all(|q| q.contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush")));
    // Bodies are sent with a token learned before: none was refused.
    assert_eq!(s.bodies_refused, 0);
    // Progress ends at the total of the blobs.
    let last = *progress.lock().last().unwrap();
    assert_eq!(last.0, last.1);
    assert_eq!(last.1, pushed.layers[0].blob.size + pushed.config.blob.size);
}

/// A Docker config folder naming helper `test` for `host` in `credHelpers`, and a `bin`
/// folder for helper scripts; the store searches only that folder (no process-global PATH or
/// DOCKER_CONFIG, so tests running in parallel cannot disturb each other).
fn docker_with_helper(host: &str) -> (tempfile::TempDir, CredentialStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(r#"{{"auths": {{}}, "credHelpers": {{"{host}": "test"}}}}"#);
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let store =
        CredentialStore::anonymous().with_docker_config(DockerConfig::new(dir.path(), vec![bin]));
    (dir, store)
}

/// Writes the helper script `docker-credential-test` into the config folder's `bin`.
fn write_helper(dir: &tempfile::TempDir, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("bin/docker-credential-test");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn basic_value(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A registry whose token service takes `helper-user` with the current secret only and issues
/// tokens the registry honours for `TOKEN_LIFE` (and says so in `expires_in`).
struct RotatingRegistry {
    secret: parking_lot::Mutex<String>,
    issued: parking_lot::Mutex<Vec<(String, Instant)>>,
    /// Basic values of the token requests refused.
    refused: parking_lot::Mutex<Vec<String>>,
}

const TOKEN_LIFE: Duration = Duration::from_secs(2);

impl RotatingRegistry {
    fn handle(&self, req: &Request, blob: &[u8], realm: &str) -> Reply {
        if req.target.starts_with("/token?") {
            let auth = req.header("authorization").unwrap_or("").to_string();
            if auth != basic_value("helper-user", &self.secret.lock()) {
                self.refused.lock().push(auth);
                return Reply::status(401);
            }
            let mut issued = self.issued.lock();
            let token = format!("tok-{}", issued.len());
            issued.push((token.clone(), Instant::now()));
            let body = format!(
                r#"{{"token": "{token}", "expires_in": {}}}"#,
                TOKEN_LIFE.as_secs()
            );
            return Reply::new(200, &[], body);
        }
        let live = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| {
                self.issued
                    .lock()
                    .iter()
                    .any(|(tok, at)| tok == t && at.elapsed() < TOKEN_LIFE)
            });
        if !live {
            let challenge = format!(
                r#"Bearer realm="{realm}",service="test-registry",scope="repository:team/app:pull""#
            );
            return Reply::new(401, &[("WWW-Authenticate", &challenge)], "");
        }
        serve_range(req, blob)
    }
}

/// Credentials from a `credHelpers` helper whose secret rotates, with tokens lapsing every 2 s:
/// reads keep working, the helper is run again for each token, and once the registry has moved
/// on the old secret is refused until the helper hands out the new one.
#[tokio::test(flavor = "multi_thread")]
async fn credential_helper_secrets_rotate_across_token_expiries() {
    let blob = Arc::new(make_blob(30_000, 21));
    let state = Arc::new(RotatingRegistry {
        secret: parking_lot::Mutex::new("s1".into()),
        issued: parking_lot::Mutex::new(Vec::new()),
        refused: parking_lot::Mutex::new(Vec::new()),
    });
    let realm = Arc::new(parking_lot::Mutex::new(String::new()));
    let server = TestServer::start({
        let (state, blob, realm) = (Arc::clone(&state), Arc::clone(&blob), Arc::clone(&realm));
        move |req| state.handle(req, &blob, &realm.lock())
    })
    .await;
    *realm.lock() = format!("{}/token", server.url());
    let host = server.addr.to_string();
    let (dir, store) = docker_with_helper(&host);
    let (secret, calls) = (dir.path().join("secret"), dir.path().join("calls"));
    std::fs::write(&secret, "s1").unwrap();
    // Logs the server URL it was asked for, one line per run, and answers the current secret.
    write_helper(
        &dir,
        &format!(
            r#"[ "$1" = get ] || exit 3
read -r server
echo "$server" >> {calls}
printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"%s"}}' "$server" "$(cat {secret})""#,
            calls = calls.display(),
            secret = secret.display()
        ),
    );
    let runs = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .inspect(|l| assert_eq!(*l, host, "the helper gets the host as config.json keys it"))
            .count()
    };
    let src = client(store)
        .open_blob(&format!("{}{REPO}", server.url()), "sha256:dd", None)
        .await
        .unwrap();
    check_reads(&src, &blob).await;
    let first_runs = runs();
    assert!(first_runs >= 1);

    // Rotation on both sides, then the token lapses: the next read asks the helper again.
    *state.secret.lock() = "s2".into();
    std::fs::write(&secret, "s2").unwrap();
    tokio::time::sleep(TOKEN_LIFE + Duration::from_millis(100)).await;
    assert_eq!(
        &src.read_exact_at(100, 5000).await.unwrap()[..],
        &blob[100..5100]
    );
    assert!(runs() > first_runs, "the helper was not run again");
    let tokens_after_rotation = state.issued.lock().len();
    assert!(tokens_after_rotation >= 2);

    // Tokens keep lapsing; reads across several expiries all succeed.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let off = 1000 * round;
        assert_eq!(
            &src.read_exact_at(off as u64, 20_000).await.unwrap()[..],
            &blob[off..off + 20_000]
        );
    }
    assert!(
        state.issued.lock().len() > tokens_after_rotation,
        "tokens were renewed"
    );

    // The registry moves to s3 while the helper still says s2: the old secret is refused and
    // the read fails cleanly; once the helper has the new secret, reads work again.
    *state.secret.lock() = "s3".into();
    tokio::time::sleep(TOKEN_LIFE + Duration::from_millis(100)).await;
    let before = runs();
    let err = src.read_exact_at(0, 10).await.unwrap_err();
    assert!(matches!(err, SourceError::Denied(_)), "{err}");
    assert!(
        state
            .refused
            .lock()
            .contains(&basic_value("helper-user", "s2")),
        "the old secret was not the one refused"
    );
    assert!(runs() > before);
    std::fs::write(&secret, "s3").unwrap();
    assert_eq!(&src.read_exact_at(0, 10).await.unwrap()[..], &blob[..10]);
    assert!(
        !state
            .refused
            .lock()
            .contains(&basic_value("helper-user", "s1")),
        "a secret from before the first rotation came back"
    );
}

/// The token service of an OAuth2 registry: POST `/token` with the refresh-token form, or (when
/// `post` is false, like a registry without OAuth2) 404 there and GET with Basic.
fn oauth_registry(
    blob: Arc<Vec<u8>>,
    realm: Arc<parking_lot::Mutex<String>>,
    post: bool,
) -> impl Fn(&Request) -> Reply + Send + Sync {
    move |req| {
        if req.target == "/token" && req.method == "POST" {
            if !post {
                return Reply::status(404);
            }
            let expected = "grant_type=refresh_token&refresh_token=refresh-1\
                            &service=test-registry&scope=repository%3Ateam%2Fapp%3Apull\
                            &client_id=overlaybd-target";
            if req.body != expected.as_bytes()
                || req.header("content-type") != Some("application/x-www-form-urlencoded")
            {
                return Reply::status(400);
            }
            return Reply::new(200, &[], r#"{"access_token": "acc-1", "expires_in": 300}"#);
        }
        if req.target.starts_with("/token?") {
            if post || req.header("authorization") != Some(&basic_value("<token>", "refresh-1")) {
                return Reply::status(401);
            }
            return Reply::new(200, &[], r#"{"token": "acc-1"}"#);
        }
        if req.header("authorization") != Some("Bearer acc-1") {
            let challenge = format!(
                r#"Bearer realm="{}",service="test-registry",scope="repository:team/app:pull""#,
                realm.lock()
            );
            return Reply::new(401, &[("WWW-Authenticate", &challenge)], "");
        }
        serve_range(req, &blob)
    }
}

/// A helper answering `<token>` gives an identity token: it is exchanged with the OAuth2
/// refresh-token POST (or GET with Basic when the POST is 404), never sent to the registry's
/// data endpoints, and never to a token service on another host.
#[tokio::test]
async fn identity_token_uses_the_refresh_token_flow_on_the_registry_host_only() {
    let blob = Arc::new(make_blob(10_000, 22));
    for post in [true, false] {
        let realm = Arc::new(parking_lot::Mutex::new(String::new()));
        let server =
            TestServer::start(oauth_registry(Arc::clone(&blob), Arc::clone(&realm), post)).await;
        *realm.lock() = format!("{}/token", server.url());
        // A helper that hands out an identity token (the `<token>` user).
        let token_helper = || {
            let (dir, store) = docker_with_helper(&server.addr.to_string());
            write_helper(
                &dir,
                r#"printf '{"ServerURL":"x","Username":"<token>","Secret":"refresh-1"}'"#,
            );
            (dir, store)
        };
        let (_dir, store) = token_helper();
        let src = client(store)
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ee", None)
            .await
            .unwrap_or_else(|e| panic!("post={post}: {e}"));
        check_reads(&src, &blob).await;
        let reqs = server.requests();
        let token_posts = reqs.iter().filter(|r| r.method == "POST").count();
        let token_gets = reqs
            .iter()
            .filter(|r| r.target.starts_with("/token?"))
            .count();
        assert_eq!(
            (token_posts, token_gets),
            if post { (1, 0) } else { (1, 1) },
            "post={post}"
        );
        assert!(reqs
            .iter()
            .filter(|r| r.target.starts_with(REPO))
            .all(|r| !r.header("authorization").unwrap_or("").starts_with("Basic")));

        // The same registry named `localhost` in its realm: another host, so the token is
        // not sent there.
        *realm.lock() = format!("http://localhost:{}/token", server.addr.port());
        server.clear();
        let (_dir, store) = token_helper();
        let err = client(store)
            .open_blob(&format!("{}{REPO}", server.url()), "sha256:ee", None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(
            err.to_string().contains("identity token for 127.0.0.1"),
            "{err}"
        );
        assert!(server
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/token")));
    }
}

/// A one-request-per-connection HTTP server on a Unix socket, answering every request with
/// `answer` (`None`: never answer), and logging each request's head.
async fn unix_http_server(
    path: std::path::PathBuf,
    answer: Option<String>,
) -> (
    Arc<parking_lot::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let log = Arc::clone(&log);
        async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (log, answer) = (Arc::clone(&log), answer.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    log.lock().push(String::from_utf8_lossy(&head).into_owned());
                    let Some(body) = answer else {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        }
    });
    (log, task)
}

/// overlaybd's `uds` credential mode: the http mode's request and answer over a Unix socket,
/// with the configured timeout; failures (refusal, oversized answer, no server, no answer)
/// name the socket.
#[tokio::test]
async fn uds_credential_mode_supplies_basic_credentials() {
    let blob = Arc::new(make_blob(20_000, 23));
    let registry = TestServer::start(basic_registry(Arc::clone(&blob), "YWxpY2U6czNjcmV0")).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cred.sock");
    let answer = format!(
        r#"{{"traceId": "t1", "success": true, "data": {{"auths": {{"{}": {{"username": "alice", "password": "s3cret"}}}}}}}}"#,
        registry.addr
    );
    let (log, task) = unix_http_server(socket.clone(), Some(answer)).await;
    let mut settings = DaemonSettings::default();
    settings.credential_config.mode = "uds".into();
    settings.credential_config.path = socket.display().to_string();
    settings.http_config = http_config();
    let blob_url = format!("{}{REPO}", registry.url());
    let src = RegistryClient::from_settings(&settings)
        .unwrap()
        .open_blob(&blob_url, "sha256:ab", None)
        .await
        .unwrap();
    check_reads(&src, &blob).await;
    let heads = log.lock().clone();
    assert!(!heads.is_empty());
    for head in &heads {
        assert!(
            head.starts_with(&format!(
                "GET /auth?remote_url={blob_url}/sha256:ab HTTP/1.1\r\n"
            )),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nhost: localhost\r\n"),
            "{head}"
        );
    }
    task.abort();

    // A service that refuses, one that is not there, one that never answers.
    let refusing = dir.path().join("refuse.sock");
    let (_, refuse_task) =
        unix_http_server(refusing.clone(), Some(r#"{"success": false}"#.into())).await;
    let silent = dir.path().join("silent.sock");
    let (_, silent_task) = unix_http_server(silent.clone(), None).await;
    let huge = dir.path().join("huge.sock");
    let (_, huge_task) = unix_http_server(huge.clone(), Some(" ".repeat(2 << 20))).await;
    for (path, expected) in [
        (refusing, "success=false"),
        (huge, "cannot read the answer"),
        (dir.path().join("absent.sock"), "cannot connect"),
        (silent, "no answer within 1 s"),
    ] {
        settings.credential_config.path = path.display().to_string();
        let started = Instant::now();
        let err = RegistryClient::from_settings(&settings)
            .unwrap()
            .open_blob(&blob_url, "sha256:ab", None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("credential service unix:{}", path.display()))
                && text.contains(expected),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    refuse_task.abort();
    silent_task.abort();
    huge_task.abort();
}

//! Reading a layer through its routes (`src/cache/http/routes.rs`): a registry mirror and a
//! P2P proxy in front of an in-test registry on 127.0.0.1. The design note's claims, attacked:
//! reads go to the mirror or proxy first; when it fails the same read is served by the
//! registry without an error; it is passed over while out of service and used again once it
//! answers; a mirror lacking the blob passes reads on; credentials stay with their host; the
//! P2P proxy is always sent the registry's URL with the registry's authorization, even when
//! the registry redirects blob reads elsewhere.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use overlaybd_target::cache::http::push::sha256_digest;
use overlaybd_target::cache::settings::{DaemonSettings, HttpConfig};
use overlaybd_target::cache::{RemoteLayer, RemoteLayers};
use overlaybd_target::source::LayerSource;
use support::fault_proxy::{Fault, FaultProxy, Link};
use support::http_server::{blob_server, make_blob, serve_range, Reply, Request, TestServer};

const REPO: &str = "/v2/team/app/blobs";
/// How long a failed route is passed over in these tests.
const BACKOFF: Duration = Duration::from_millis(300);

fn settings(cache_dir: &std::path::Path) -> DaemonSettings {
    let mut s = DaemonSettings::default();
    s.cache_config.cache_type = "file".into();
    s.cache_config.cache_dir = Some(cache_dir.display().to_string());
    s.cache_config.refill_size = 4096;
    s.http_config = HttpConfig {
        connect_timeout_ms: 1000,
        request_timeout_ms: 2000,
        retries: 1,
        retry_backoff_ms: 5,
        retry_backoff_max_ms: 20,
        failover_backoff_ms: BACKOFF.as_millis() as u64,
        ..HttpConfig::default()
    };
    s
}

/// [`settings`] with a `cred.json` that holds `user`/`password` for the registry `key`.
fn settings_with_login(
    dir: &std::path::Path,
    key: &str,
    user: &str,
    password: &str,
) -> DaemonSettings {
    let cred = dir.join("cred.json");
    let entry = serde_json::json!({ "auths": { key: { "username": user, "password": password } } });
    std::fs::write(&cred, entry.to_string()).unwrap();
    let mut s = settings(dir);
    s.credential_config.mode = "file".into();
    s.credential_config.path = cred.display().to_string();
    s
}

/// Opens the layer `blob` of the registry at `registry_url` with `s` and checks 4 KiB reads at
/// each of `offsets`; returns the layers (kept alive), the layer and its repository URL.
async fn open_checked(
    s: DaemonSettings,
    registry_url: &str,
    blob: &[u8],
    offsets: &[u64],
) -> (RemoteLayers, Arc<dyn LayerSource>, String) {
    let layers = RemoteLayers::new(s).unwrap();
    let repo = format!("{registry_url}{REPO}");
    let digest = sha256_digest(blob);
    let src = layers
        .open(&RemoteLayer::new(&repo, &digest))
        .await
        .unwrap();
    for &at in offsets {
        check(&src, blob, at).await;
    }
    (layers, src, repo)
}

/// Reads 4 KiB at `at` and compares it with the blob.
async fn check(src: &Arc<dyn LayerSource>, blob: &[u8], at: u64) {
    let got = src.read_exact_at(at, 4096).await.unwrap();
    assert!(
        got[..] == blob[at as usize..at as usize + 4096],
        "wrong bytes at {at}"
    );
}

/// Ranged data requests (not the one-byte probes of an open) a server answered.
fn data_reads(requests: &[Request]) -> usize {
    requests
        .iter()
        .filter(|r| r.header("range").is_some_and(|v| v != "bytes=0-0"))
        .count()
}

/// A fault proxy in front of `upstream` that resets every connection while `down` is set.
async fn switchable(upstream: std::net::SocketAddr, down: &Arc<AtomicBool>) -> FaultProxy {
    let down = Arc::clone(down);
    FaultProxy::start(upstream, Link::default(), move |_, _| {
        if down.load(Ordering::SeqCst) {
            Fault::Reset
        } else {
            Fault::Pass
        }
    })
    .await
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_serves_reads_and_the_registry_takes_over_while_it_is_down() {
    let blob = Arc::new(make_blob(200_000, 21));
    let digest = sha256_digest(&blob);
    let registry = blob_server(&blob).await;
    let mirror_store = blob_server(&blob).await;
    let down = Arc::new(AtomicBool::new(false));
    let mirror = switchable(mirror_store.addr, &down).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path());
    s.mirrors
        .insert(host_port(&registry.url()), vec![mirror.url()]);
    let layers = RemoteLayers::new(s).unwrap();
    let repo = format!("{}{REPO}", registry.url());
    let src = layers
        .open(&RemoteLayer::new(&repo, &digest))
        .await
        .unwrap();

    let read = |at: usize| {
        let src = Arc::clone(&src);
        async move { src.read_exact_at(at as u64, 4096).await }
    };
    assert_eq!(&read(0).await.unwrap()[..], &blob[..4096]);
    assert!(
        registry.requests().is_empty(),
        "the registry is not asked at all while the mirror serves"
    );
    let mirror_reads = data_reads(&mirror_store.requests());
    assert!(mirror_reads >= 1);

    // The mirror goes down: the same kind of read is served by the registry, no error.
    down.store(true, Ordering::SeqCst);
    assert_eq!(&read(40_960).await.unwrap()[..], &blob[40_960..45_056]);
    assert_eq!(data_reads(&registry.requests()), 1);
    let refused = mirror.faults();
    assert!(refused >= 1, "the read tried the mirror first");
    // While out of service the mirror is not tried: reads go straight to the registry.
    assert_eq!(&read(81_920).await.unwrap()[..], &blob[81_920..86_016]);
    assert_eq!(mirror.faults(), refused, "passed over while out of service");
    assert_eq!(data_reads(&registry.requests()), 2);

    // Back up, and after the pause the next read probes it: the mirror serves again.
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(BACKOFF + Duration::from_millis(100)).await;
    assert_eq!(&read(122_880).await.unwrap()[..], &blob[122_880..126_976]);
    assert_eq!(data_reads(&mirror_store.requests()), mirror_reads + 1);
    assert_eq!(&read(163_840).await.unwrap()[..], &blob[163_840..167_936]);
    assert_eq!(data_reads(&mirror_store.requests()), mirror_reads + 2);
    assert_eq!(
        data_reads(&registry.requests()),
        2,
        "the registry is left alone again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_without_the_blob_passes_reads_on_and_never_gets_the_registrys_credentials() {
    let blob = Arc::new(make_blob(50_000, 22));
    // The registry wants Basic alice:s3cret; the mirror has no such blob.
    let registry = TestServer::start({
        let blob = Arc::clone(&blob);
        move |req| {
            if req.header("authorization") != Some("Basic YWxpY2U6czNjcmV0") {
                return Reply::new(401, &[("WWW-Authenticate", r#"Basic realm="r""#)], "");
            }
            serve_range(req, &blob)
        }
    })
    .await;
    let mirror = TestServer::start(|_| Reply::status(404)).await;
    let tmp = tempfile::tempdir().unwrap();
    let key = host_port(&registry.url());
    let mut s = settings_with_login(tmp.path(), &key, "alice", "s3cret");
    s.mirrors.insert(key, vec![mirror.url()]);
    let _routes = open_checked(s, &registry.url(), &blob, &[0, 12_288, 40_960]).await;
    let asked = mirror.requests();
    assert!(
        data_reads(&asked) >= 3,
        "a 404 does not take the mirror out: each read asks it first"
    );
    assert!(
        asked.iter().all(|r| r.header("authorization").is_none()),
        "the registry's credentials went to the mirror"
    );
}

/// A P2P proxy stand-in: serves the blob for `/accelerator/<registry blob URL>` and records
/// each request's target and Authorization header.
async fn p2p_server(blob: &Arc<Vec<u8>>) -> TestServer {
    let blob = Arc::clone(blob);
    TestServer::start(move |req| {
        if req.target.starts_with("/accelerator/") {
            serve_range(req, &blob)
        } else {
            Reply::status(404)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_p2p_proxy_gets_the_registry_url_and_reads_fall_back_per_read() {
    let blob = Arc::new(make_blob(120_000, 23));
    let digest = sha256_digest(&blob);
    // A registry that wants a Bearer-less Basic login and redirects blob reads to storage.
    let storage = blob_server(&blob).await;
    let storage_url = storage.url();
    let registry = TestServer::start({
        let blob = Arc::clone(&blob);
        move |req| {
            if req.header("authorization") != Some("Basic Ym9iOnB3") {
                return Reply::new(401, &[("WWW-Authenticate", r#"Basic realm="r""#)], "");
            }
            if req.header("range") == Some("bytes=0-0") {
                return serve_range(req, &blob);
            }
            let to = format!("{storage_url}/signed/{}?sig=1", req.target.len());
            Reply::new(307, &[("Location", to.as_str())], "")
        }
    })
    .await;
    let p2p = p2p_server(&blob).await;
    let down = Arc::new(AtomicBool::new(false));
    let p2p_front = switchable(p2p.addr, &down).await;
    let tmp = tempfile::tempdir().unwrap();
    let key = host_port(&registry.url());
    let mut s = settings_with_login(tmp.path(), &key, "bob", "pw");
    s.p2p_config.enable = true;
    s.p2p_config.address = format!("{}/accelerator", p2p_front.url());
    let (_layers, src, repo) = open_checked(s, &registry.url(), &blob, &[0, 8192, 16_384]).await;
    let expected = format!("/accelerator/{repo}/{digest}");
    let seen = p2p.requests();
    assert!(data_reads(&seen) >= 3);
    for r in &seen {
        assert_eq!(
            r.target, expected,
            "the proxy got another URL than the registry's"
        );
        assert_eq!(r.header("authorization"), Some("Basic Ym9iOnB3"));
    }
    assert_eq!(
        data_reads(&storage.requests()),
        0,
        "nothing read around the proxy"
    );

    // The proxy dies: the next read goes to the registry (redirected to storage), no error.
    down.store(true, Ordering::SeqCst);
    let got = src.read_exact_at(40_960, 4096).await.unwrap();
    assert_eq!(&got[..], &blob[40_960..45_056]);
    let direct = storage.requests();
    assert_eq!(
        data_reads(&direct),
        1,
        "read from storage through the registry's redirect"
    );
    assert!(
        direct.iter().all(|r| r.header("authorization").is_none()),
        "credentials followed the redirect to another host"
    );
    // The proxy returns: after the pause reads go through it again.
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(BACKOFF + Duration::from_millis(100)).await;
    let before = data_reads(&p2p.requests());
    let got = src.read_exact_at(81_920, 4096).await.unwrap();
    assert_eq!(&got[..], &blob[81_920..86_016]);
    assert_eq!(data_reads(&p2p.requests()), before + 1);
    assert_eq!(data_reads(&storage.requests()), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_p2p_proxy_answering_a_redirect_is_not_followed_through_itself() {
    let blob = Arc::new(make_blob(40_000, 24));
    let digest = sha256_digest(&blob);
    let registry = blob_server(&blob).await;
    let elsewhere = blob_server(&blob).await;
    let elsewhere_url = elsewhere.url();
    let p2p = TestServer::start(move |_| {
        let to = format!("{elsewhere_url}/presigned?x=1");
        Reply::new(302, &[("Location", to.as_str())], "")
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path());
    s.p2p_config.enable = true;
    s.p2p_config.address = format!("{}/accelerator", p2p.url());
    let (_layers, _src, repo) = open_checked(s, &registry.url(), &blob, &[0, 4096, 20_480]).await;
    assert!(
        elsewhere.requests().is_empty(),
        "the proxy's redirect target was read"
    );
    assert!(p2p
        .requests()
        .iter()
        .all(|r| r.target == format!("/accelerator/{repo}/{digest}")));
    assert!(
        data_reads(&registry.requests()) >= 3,
        "the registry served the reads"
    );
}

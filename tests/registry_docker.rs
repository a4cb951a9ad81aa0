//! Interoperability with a real OCI registry: Debian's `docker-registry` (CNCF distribution),
//! started on 127.0.0.1 with a temporary storage folder. A blob is pushed through the HTTP API
//! and read back through our registry client and cache, anonymously and with htpasswd Basic
//! auth. Fails (does not skip) when the registry is not installed: `conformance/install-deps.sh`
//! installs it.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlaybd_target::cache::http::push::push_blob;
use overlaybd_target::cache::http::{CredentialStore, RegistryClient, RegistryCredentials};
use overlaybd_target::cache::settings::{DaemonSettings, HttpConfig};
use overlaybd_target::cache::{RemoteLayer, RemoteLayers};
use overlaybd_target::source::LayerSource;

const BINARY: &str = "/usr/bin/docker-registry";

/// A registry process that is killed when dropped.
struct Registry {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key_pem) = leaf(
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_pem, client_key_pem) = leaf(
        vec!["overlaybd-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server.key", &server_key_pem),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client.key", &client_key_pem),
    }
}

/// How to run the registry: optional htpasswd user, optional TLS with client certificates.
#[derive(Default)]
struct Options<'a> {
    htpasswd: Option<(&'a str, &'a str)>,
    tls: Option<&'a Pki>,
}

async fn start_registry(opts: Options<'_>, probe: &reqwest::Client) -> Registry {
    assert!(
        Path::new(BINARY).exists(),
        "{BINARY} is missing: install Debian's docker-registry (`apt-get install -y docker-registry`, done by conformance/install-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("storage").display()
    );
    if let Some(pki) = opts.tls {
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ));
    }
    if let Some((user, pass)) = opts.htpasswd {
        let hash = bcrypt::hash(pass, 5).unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
            file.display()
        ));
    }
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = tokio::process::Command::new(BINARY)
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start docker-registry");
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        // Any answer (200, or 401 with auth) means it is up.
        if probe.get(format!("{url}/v2/")).send().await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "docker-registry did not start on {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Registry {
        child,
        url,
        _dir: dir,
    }
}

/// A registry with htpasswd auth for the user carol, and her credentials.
async fn registry_with_carol() -> (Registry, RegistryCredentials) {
    let reg = start_registry(
        Options {
            htpasswd: Some(("carol", "pa55word")),
            ..Options::default()
        },
        &reqwest::Client::new(),
    )
    .await;
    let creds = RegistryCredentials {
        username: "carol".into(),
        password: "pa55word".into(),
    };
    (reg, creds)
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31) ^ (i >> 9)) as u8).collect()
}

fn settings(cache_dir: &Path) -> DaemonSettings {
    let mut s = DaemonSettings::default();
    s.cache_config.cache_type = "file".into();
    s.cache_config.cache_dir = Some(cache_dir.display().to_string());
    s.http_config = HttpConfig {
        retries: 1,
        request_timeout_ms: 10_000,
        ..HttpConfig::default()
    };
    s
}

async fn check_reads(src: &dyn LayerSource, data: &[u8]) {
    assert_eq!(src.size(), data.len() as u64);
    for (off, len) in [
        (0usize, 1usize),
        (100, 5000),
        (262_143, 2),
        (data.len() - 7, 7),
        (0, data.len()),
    ] {
        let got = src
            .read_exact_at(off as u64, len)
            .await
            .unwrap_or_else(|e| panic!("read {off}+{len}: {e}"));
        assert_eq!(&got[..], &data[off..off + len], "read {off}+{len}");
    }
}

/// An anonymous docker-registry holding a `len`-byte blob in team/app; the blob and its digest.
async fn anonymous_registry_with_blob(len: usize) -> (Registry, Vec<u8>, String) {
    let reg = start_registry(Options::default(), &reqwest::Client::new()).await;
    let data = blob(len);
    let digest = push_blob(
        &reqwest::Client::new(),
        &reg.url,
        "team/app",
        data.clone(),
        None,
    )
    .await
    .unwrap();
    (reg, data, digest)
}

#[tokio::test]
async fn docker_registry_anonymous_push_and_ranged_reads() {
    let (reg, data, digest) = anonymous_registry_with_blob(700_000).await;

    // Uncached source: every read is a ranged GET against the registry.
    let client =
        RegistryClient::new(HttpConfig::default(), "test", CredentialStore::anonymous()).unwrap();
    let direct = client
        .open_blob(&format!("{}/v2/team/app/blobs", reg.url), &digest, None)
        .await
        .unwrap();
    check_reads(&direct, &data).await;

    // Through the cache tiers, as the image side opens it.
    let cache_dir = tempfile::tempdir().unwrap();
    let layers = RemoteLayers::new(settings(cache_dir.path())).unwrap();
    let url = format!("{}/v2/team/app/blobs/", reg.url);
    let layer = RemoteLayer {
        size: Some(700_000),
        ..RemoteLayer::new(&url, &digest)
    };
    check_reads(layers.open(&layer).await.unwrap().as_ref(), &data).await;
    assert!(layers.tiers().disk_used() >= 700_000);

    let missing = RemoteLayer {
        digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        size: None,
        ..layer
    };
    assert_eq!(
        layers.open(&missing).await.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn docker_registry_htpasswd_basic_auth() {
    let (reg, creds) = registry_with_carol().await;
    let data = blob(300_000);
    let http = reqwest::Client::new();
    assert!(
        push_blob(&http, &reg.url, "private/app", data.clone(), None)
            .await
            .is_err(),
        "anonymous push refused"
    );
    let digest = push_blob(&http, &reg.url, "private/app", data.clone(), Some(&creds))
        .await
        .unwrap();

    let host = reg.url.trim_start_matches("http://");
    let dir = tempfile::tempdir().unwrap();
    let cred_json = dir.path().join("cred.json");
    std::fs::write(
        &cred_json,
        format!(
            r#"{{"auths": {{"{host}/private": {{"username": "carol", "password": "pa55word"}}}}}}"#
        ),
    )
    .unwrap();
    let repo_url = format!("{}/v2/private/app/blobs", reg.url);

    let client = RegistryClient::new(
        HttpConfig::default(),
        "test",
        CredentialStore::from_files(vec![cred_json.clone()]),
    )
    .unwrap();
    let src = Arc::new(client.open_blob(&repo_url, &digest, None).await.unwrap());
    check_reads(src.as_ref(), &data).await;

    let anonymous =
        RegistryClient::new(HttpConfig::default(), "test", CredentialStore::anonymous()).unwrap();
    let err = anonymous
        .open_blob(&repo_url, &digest, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    std::fs::write(
        &cred_json,
        format!(r#"{{"auths": {{"{host}": {{"username": "carol", "password": "wrong"}}}}}}"#),
    )
    .unwrap();
    let err = client
        .open_blob(&repo_url, &digest, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::PermissionDenied,
        "re-read credentials are used: {err}"
    );
}

#[tokio::test]
async fn docker_registry_over_tls_with_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let cache_dir = tempfile::tempdir().unwrap();
    let mut settings = settings(cache_dir.path());
    settings.http_config.ca_file = pki.ca.display().to_string();
    settings.cert_config.cert_file = pki.client_cert.display().to_string();
    settings.cert_config.key_file = pki.client_key.display().to_string();
    let client = RegistryClient::from_settings(&settings).unwrap();
    let reg = start_registry(
        Options {
            tls: Some(&pki),
            ..Options::default()
        },
        client.http(),
    )
    .await;
    let data = blob(300_000);
    let digest = push_blob(client.http(), &reg.url, "secure/app", data.clone(), None)
        .await
        .unwrap();

    let layers = RemoteLayers::new(settings.clone()).unwrap();
    let url = format!("{}/v2/secure/app/blobs", reg.url);
    let layer = RemoteLayer::new(&url, &digest);
    check_reads(layers.open(&layer).await.unwrap().as_ref(), &data).await;

    // Without the client certificate the TLS handshake is refused; without our CA the
    // server is not trusted. Both are clean errors at open.
    let mut no_cert = settings.clone();
    no_cert.cert_config = Default::default();
    assert!(RemoteLayers::new(no_cert)
        .unwrap()
        .open(&layer)
        .await
        .is_err());
    let mut no_ca = settings;
    no_ca.http_config.ca_file.clear();
    assert!(RemoteLayers::new(no_ca)
        .unwrap()
        .open(&layer)
        .await
        .is_err());
}

/// The whole path: a layer pushed to a Basic-auth registry, named in a config.v1.json only by
/// digest and size, served by the binary (`--lun image:`, `--overlaybd-config` with a
/// cred.json, `--cache-dir`) and read by an initiator.
#[tokio::test(flavor = "multi_thread")]
async fn docker_registry_layer_served_as_a_lun_by_the_binary() {
    let Some(_) = support::fixtures::require("ext4_64") else {
        return;
    };
    use sha2::Digest as _;
    use support::process::{copy_first_mib, Target};

    let reg = start_registry(
        Options {
            htpasswd: Some(("dave", "s3cret-pass")),
            ..Options::default()
        },
        &reqwest::Client::new(),
    )
    .await;
    let layer = std::fs::read(support::fixtures::fixture("ext4_64")).unwrap();
    let creds = RegistryCredentials {
        username: "dave".into(),
        password: "s3cret-pass".into(),
    };
    let digest = push_blob(
        &reqwest::Client::new(),
        &reg.url,
        "base/ext4",
        layer.clone(),
        Some(&creds),
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let host = reg.url.trim_start_matches("http://");
    let cred_json = dir.path().join("cred.json");
    std::fs::write(
        &cred_json,
        format!(r#"{{"auths": {{"{host}": {{"username": "dave", "password": "s3cret-pass"}}}}}}"#),
    )
    .unwrap();
    let daemon = dir.path().join("overlaybd.json");
    let audit = dir.path().join("audit.log");
    std::fs::write(
        &daemon,
        serde_json::json!({
            "credentialConfig": {"mode": "file", "path": cred_json},
            "auditPath": audit,
            // Every command is "slow", so each read gets its line.
            "auditSlowCommandMs": 0,
        })
        .to_string(),
    )
    .unwrap();
    let config = dir.path().join("config.v1.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "repoBlobUrl": format!("{}/v2/base/ext4/blobs", reg.url),
            "lowers": [{"digest": digest, "size": layer.len()}],
        })
        .to_string(),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("first-mib.raw");
    let args = [
        "--target".to_string(),
        "iqn.2026-11.io.overlaybd:registry".into(),
        "--lun".into(),
        format!("image:{}", config.display()),
        "--overlaybd-config".into(),
        daemon.display().to_string(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    let out_s = out.display().to_string();
    tokio::task::spawn_blocking(move || {
        let target = Target::start_with(|port| {
            let mut all = vec!["--portal".to_string(), format!("127.0.0.1:{port}")];
            all.extend(args.iter().cloned());
            all
        });
        let url = target.url("iqn.2026-11.io.overlaybd:registry", 0);
        copy_first_mib(&url, &out_s);
    })
    .await
    .unwrap();
    let first_mib = std::fs::read(&out).unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&first_mib)),
        "7afc8295bdfac4e6189e2a10850384e91391d02e0e6d4931e1f7f09f9d54420b",
        "the first MiB of the ext4_64 virtual disk, read over iSCSI from the registry"
    );
    assert!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) > 0,
        "the layer's blocks are kept under --cache-dir"
    );
    // overlaybd.json's audit log (enableAudit defaults to true): a line per registry fetch of
    // the layer, and per command (the threshold is 0 here), reads with their LBA.
    let audit = std::fs::read_to_string(&audit).unwrap();
    let fetches: Vec<&str> = audit.lines().filter(|l| l.contains(" fetch ")).collect();
    assert!(!fetches.is_empty(), "{audit}");
    for line in &fetches {
        assert!(line.contains(&format!("layer={digest} ")), "{line}");
        assert!(line.ends_with("status=ok"), "{line}");
    }
    assert!(
        audit.lines().any(|l| l.contains(
            "slow_command target=iqn.2026-11.io.overlaybd:registry lun=0 kind=read lba=0 "
        )),
        "{audit}"
    );
}

/// `pull HOST/REPO:TAG DIR` against `docker-registry` with htpasswd: a Docker manifest with
/// the overlaybd annotations gives a config whose LUN reads the layer byte-exactly; a Docker
/// manifest list and an OCI index pick the platform asked for; a plain image, an unknown tag,
/// a platform the index lacks and wrong credentials are each refused with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn pull_writes_the_config_of_an_image_by_reference() {
    use overlaybd_target::cache::http::push::push_manifest;
    use overlaybd_target::registry::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX};
    use support::process::{binary, copy_first_mib, run, run_fails, Target};

    let (reg, creds) = registry_with_carol().await;
    let http = reqwest::Client::new();
    let layer = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.obd")).unwrap();
    let repo = "demo/app";
    let layer_digest = push_blob(&http, &reg.url, repo, layer.clone(), Some(&creds))
        .await
        .unwrap();
    let config_json = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = push_blob(
        &http,
        &reg.url,
        repo,
        config_json.clone().into_bytes(),
        Some(&creds),
    )
    .await
    .unwrap();
    let manifest = |annotated: bool| {
        let annotations = if annotated {
            format!(
                r#", "annotations": {{"containerd.io/snapshot/overlaybd/blob-digest": "{layer_digest}",
                   "containerd.io/snapshot/overlaybd/blob-size": "{}",
                   "containerd.io/snapshot/overlaybd/version": "0.1.0"}}"#,
                layer.len()
            )
        } else {
            String::new()
        };
        format!(
            r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_MANIFEST}",
                "config": {{"mediaType": "application/vnd.docker.container.image.v1+json",
                            "digest": "{config_digest}", "size": {}}},
                "layers": [{{"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                             "digest": "{layer_digest}", "size": {}{annotations}}}]}}"#,
            config_json.len(),
            layer.len()
        )
    };
    let put = |tag: &'static str, media: &'static str, body: String| {
        let (http, url, creds) = (http.clone(), reg.url.clone(), creds.clone());
        async move {
            let len = body.len();
            let digest = push_manifest(
                &http,
                &url,
                repo,
                tag,
                media,
                body.into_bytes(),
                Some(&creds),
            )
            .await
            .unwrap();
            (digest, len)
        }
    };
    let (v1, v1_len) = put("v1", DOCKER_MANIFEST, manifest(true)).await;
    let (plain, plain_len) = put("plain", DOCKER_MANIFEST, manifest(false)).await;
    let index = |media: &str| {
        format!(
            r#"{{"schemaVersion": 2, "mediaType": "{media}", "manifests": [
                {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{plain}", "size": {plain_len},
                  "platform": {{"architecture": "arm64", "os": "linux"}}}},
                {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{v1}", "size": {v1_len},
                  "platform": {{"architecture": "amd64", "os": "linux"}}}}]}}"#
        )
    };
    put("list", DOCKER_LIST, index(DOCKER_LIST)).await;
    put("oci", OCI_INDEX, index(OCI_INDEX)).await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = reg.url.trim_start_matches("http://").to_string();
    let write_creds = |password: &str| carol_overlaybd_json(d, &host, password);
    let obd = write_creds("pa55word");
    let obd_json = Path::new(&obd).to_path_buf();
    let pull = |reference: String, out: &str, platform: Option<&str>| {
        let mut cmd = binary();
        cmd.arg("pull").args(["--overlaybd-config", &obd]);
        if let Some(p) = platform {
            cmd.args(["--platform", p]);
        }
        cmd.arg(reference).arg(d.join(out));
        cmd
    };

    let said = run(&mut pull(format!("{host}/{repo}:v1"), "v1", None));
    assert!(
        said.contains(&format!("1 layer(s) of {host}/{repo}:v1@{v1}")),
        "{said}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("v1/config.v1.json")).unwrap()).unwrap();
    assert_eq!(
        config["repoBlobUrl"],
        format!("{}/v2/{repo}/blobs", reg.url)
    );
    assert_eq!(config["lowers"][0]["digest"], layer_digest.as_str());
    assert_eq!(config["lowers"][0]["size"], layer.len() as u64);

    for (tag, out) in [("list", "list"), ("oci", "oci")] {
        run(&mut pull(
            format!("{host}/{repo}:{tag}"),
            out,
            Some("linux/amd64"),
        ));
        assert_eq!(
            std::fs::read(d.join(out).join("config.v1.json")).unwrap(),
            std::fs::read(d.join("v1/config.v1.json")).unwrap(),
            "{tag}: the amd64 entry is v1"
        );
    }
    let err = run_fails(&mut pull(
        format!("{host}/{repo}:oci"),
        "x",
        Some("linux/s390x"),
    ));
    assert!(
        err.contains("no linux/s390x image in the index (it has linux/arm64, linux/amd64)"),
        "{err}"
    );
    let err = run_fails(&mut pull(
        format!("{host}/{repo}:list"),
        "x",
        Some("linux/arm64"),
    ));
    assert!(err.contains("not an overlaybd image"), "{err}");
    let err = run_fails(&mut pull(format!("{host}/{repo}:plain"), "x", None));
    assert!(err.contains("not an overlaybd image"), "{err}");
    let err = run_fails(&mut pull(format!("{host}/{repo}:nope"), "x", None));
    assert!(
        err.contains(":nope") && err.contains("manifest unknown"),
        "{err}"
    );
    let err = run_fails(&mut pull(format!("{host}/{repo}:v1"), "v1", None));
    assert!(err.contains("-f replaces it"), "{err}");
    write_creds("wrong");
    let err = run_fails(&mut pull(format!("{host}/{repo}:v1"), "y", None));
    assert!(err.contains("Authentication failed"), "{err}");
    write_creds("pa55word");

    // The pulled config serves the layer: the LUN reads what `export` of the blob writes.
    let raw = d.join("demo.raw");
    run(binary()
        .arg("export")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.obd"))
        .arg(&raw));
    // So does `registry:REF` as a LUN, resolved when the LUN opens (LUN 1).
    let config = d.join("v1/config.v1.json").display().to_string();
    let cache = d.join("cache").display().to_string();
    let outs = [d.join("first-mib-0.raw"), d.join("first-mib-1.raw")];
    let out_paths: Vec<String> = outs.iter().map(|p| p.display().to_string()).collect();
    let by_reference = format!("registry:{host}/{repo}:oci");
    tokio::task::spawn_blocking(move || {
        let iqn = "iqn.2026-12.io.overlaybd:pulled";
        let target = Target::start(&[
            "--target",
            iqn,
            "--lun",
            &format!("image:{config}"),
            "--lun",
            &by_reference,
            "--overlaybd-config",
            &obd,
            "--cache-dir",
            &cache,
            "--strict",
        ]);
        for (lun, out) in out_paths.iter().enumerate() {
            copy_first_mib(&target.url(iqn, lun as u32), out);
        }
    })
    .await
    .unwrap();
    let expected = &std::fs::read(&raw).unwrap()[..1 << 20];
    for out in &outs {
        assert!(
            std::fs::read(out).unwrap() == expected,
            "{}: the first MiB read through the pulled config and by reference is the layer's",
            out.display()
        );
    }
    // A reference with no such tag fails the LUN at start (with --strict), naming it.
    let err = run_fails(
        binary()
            .args([
                "--portal",
                "127.0.0.1:0",
                "--no-api",
                "--no-state",
                "--strict",
            ])
            .args(["--overlaybd-config", &obd_json.display().to_string()])
            .arg("--lun")
            .arg(format!("registry:{host}/{repo}:gone")),
    );
    assert!(
        err.contains(&format!("registry:{host}/{repo}:gone")) && err.contains("manifest unknown"),
        "{err}"
    );
}

/// Writes `DIR/cred.json` with carol's `password` for `host` and `DIR/overlaybd.json` naming
/// it; returns the overlaybd.json path.
fn carol_overlaybd_json(d: &Path, host: &str, password: &str) -> String {
    let cred_json = d.join("cred.json");
    std::fs::write(
        &cred_json,
        format!(r#"{{"auths": {{"{host}": {{"username": "carol", "password": "{password}"}}}}}}"#),
    )
    .unwrap();
    let obd_json = d.join("overlaybd.json");
    std::fs::write(
        &obd_json,
        format!(
            r#"{{"credentialConfig": {{"mode": "file", "path": "{}"}}, "enableAudit": false}}"#,
            cred_json.display()
        ),
    )
    .unwrap();
    obd_json.display().to_string()
}

/// `build` two layers from directories, `push` them to `docker-registry` with htpasswd, and
/// get the same disk back three ways: `pull` + `export`, and `registry:REF` as a LUN read in
/// full by qemu-img over iSCSI. A second push sends nothing; pushing the pulled config to
/// another repository mounts the layers; `--oci` gives an OCI manifest `pull` reads alike;
/// wrong credentials and an image with a writable layer are refused with clear messages.
#[tokio::test(flavor = "multi_thread")]
async fn build_push_then_serve_and_pull_by_reference() {
    use support::process::{binary, run, run_fails, tool, Target};

    let (reg, _creds) = registry_with_carol().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let host = reg.url.trim_start_matches("http://").to_string();
    let obd = carol_overlaybd_json(&d, &host, "pa55word");
    let s = |p: &str| d.join(p).display().to_string();
    for (tree, files) in [
        (
            "a",
            &[("etc/hostname", "a\n"), ("app/run.sh", "echo one\n")][..],
        ),
        (
            "b",
            &[("etc/hostname", "b\n"), ("app/data.txt", "two\n")][..],
        ),
    ] {
        for (name, text) in files {
            let path = d.join(tree).join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text.repeat(5000)).unwrap();
        }
    }
    run(binary()
        .args(["build", "-z", "--size", "64M"])
        .args([s("a"), s("l0.obd"), s("c0.json")]));
    run(binary()
        .args(["build", "-z", "--base", &s("c0.json")])
        .args([s("b"), s("l1.obd"), s("c1.json")]));
    let push = |args: &[&str]| {
        let mut cmd = binary();
        cmd.args(["push", "--overlaybd-config", &obd]).args(args);
        cmd
    };

    let v1 = format!("{host}/team/app:v1");
    let said = run(&mut push(&[&s("c1.json"), &v1]));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert!(line.ends_with(": uploaded"), "blob {i}: {said}");
    }
    assert!(lines[0].starts_with("layer 1/2 sha256:"), "{said}");
    let pinned = lines[3].strip_prefix("pushed ").unwrap().to_string();
    assert!(pinned.starts_with(&format!("{v1}@sha256:")), "{said}");
    // The layer blob is the sealed layer tar-wrapped: 512-byte header, padding, end blocks.
    let l0_len = std::fs::metadata(d.join("l0.obd")).unwrap().len();
    let wrapped = 512 + l0_len.next_multiple_of(512) + 1024;
    assert!(lines[0].contains(&format!("({wrapped} bytes)")), "{said}");

    let again = run(&mut push(&[&s("c1.json"), &v1]));
    assert_eq!(again.matches(": already present").count(), 3, "{again}");
    assert!(
        again.contains(&format!("pushed {pinned}")),
        "same manifest: {again}"
    );

    // pull + export reads the pushed image as the local one.
    run(binary().args(["pull", "--overlaybd-config", &obd, &v1, &s("pulled")]));
    run(binary().args(["export", &s("c1.json"), &s("local.raw")]));
    run(binary()
        .args([
            "export",
            "--overlaybd-config",
            &obd,
            "--cache-dir",
            &s("export-cache"),
        ])
        .args([s("pulled/config.v1.json"), s("pulled.raw")]));
    let local = std::fs::read(d.join("local.raw")).unwrap();
    assert!(
        std::fs::read(d.join("pulled.raw")).unwrap() == local,
        "pull + export"
    );

    // The pulled config's lowers are registry blobs: pushed to another repository of the
    // same registry they are mounted, not sent again; the manifest is the same.
    let other = format!("{host}/other/app:v1");
    let mounted = run(&mut push(&[&s("pulled/config.v1.json"), &other]));
    assert_eq!(
        mounted.matches(": mounted from team/app").count(),
        2,
        "{mounted}"
    );
    let digest = pinned.rsplit('@').next().unwrap();
    assert!(
        mounted.contains(&format!("pushed {other}@{digest}")),
        "{mounted}"
    );

    // An OCI manifest of the same layers; `pull` gives the same lowers.
    let oci = run(&mut push(&[
        "--oci",
        &s("c1.json"),
        &format!("{host}/team/app:oci"),
    ]));
    assert!(!oci.contains(digest), "a different manifest: {oci}");
    run(binary()
        .args(["pull", "--overlaybd-config", &obd])
        .args([format!("{host}/team/app:oci"), s("pulled-oci")]));
    let lowers = |p: &str| {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(p)).unwrap()).unwrap();
        v["lowers"].clone()
    };
    assert_eq!(
        lowers("pulled/config.v1.json"),
        lowers("pulled-oci/config.v1.json")
    );

    // Served by reference, the whole disk reads back byte-exactly over iSCSI. The unit serial
    // (and so the WWN) comes from the content: the tag and the digest it names give one
    // serial on any target and LUN number; the pulled config (named by its layer chain) and
    // a RAM LUN get others.
    let (cache, out) = (s("cache"), s("by-ref.raw"));
    let (by_tag, by_digest) = (format!("registry:{v1}"), format!("registry:{pinned}"));
    let by_config = format!("image:{}", s("pulled/config.v1.json"));
    let obd2 = obd.clone();
    let serials = tokio::task::spawn_blocking(move || {
        let common = [
            "--overlaybd-config",
            &obd2,
            "--cache-dir",
            &cache,
            "--strict",
        ];
        let (a, b) = (
            "iqn.2026-12.io.overlaybd:pushed",
            "iqn.2026-12.io.overlaybd:other",
        );
        let mut args = vec!["--target", a, "--lun", &by_tag, "--lun", &by_digest];
        args.extend(["--lun", &by_config, "--lun", "ram:64M"]);
        args.extend(common);
        let first = Target::start(&args);
        run(tool("qemu-img").args(["convert", "-f", "raw", "-O", "raw", &first.url(a, 0), &out]));
        let mut args = vec!["--target", b, "--lun", "ram:1G", "--lun", &by_digest];
        args.extend(common);
        let second = Target::start(&args);
        let serial = |url: String| {
            let said = run(tool("iscsi-inq").args(["-e", "1", "-c", "128", &url]));
            said.split_once("Unit Serial Number:[")
                .unwrap()
                .1
                .split(']')
                .next()
                .unwrap()
                .to_string()
        };
        let mut serials: Vec<String> = (0..4).map(|lun| serial(first.url(a, lun))).collect();
        serials.push(serial(second.url(b, 1)));
        serials
    })
    .await
    .unwrap();
    assert_eq!(serials[0], serials[1], "tag and digest: {serials:?}");
    assert_eq!(
        serials[0], serials[4],
        "another target and LUN number: {serials:?}"
    );
    assert_ne!(serials[0], serials[2], "{serials:?}");
    assert_ne!(serials[2], serials[3], "{serials:?}");
    assert!(
        std::fs::read(d.join("by-ref.raw")).unwrap() == local,
        "registry: LUN"
    );

    // One layer blob is a one-layer image, its blob the same as the first layer of v1's.
    let single = run(&mut push(&[&s("l0.obd"), &format!("{host}/team/base:v1")]));
    let l0_blob = lines[0].strip_prefix("layer 1/2 ").unwrap();
    assert!(
        single.contains(&format!("layer 1/1 {l0_blob}")),
        "{single}\n{said}"
    );

    // Refusals: wrong credentials, and an image with a writable upper.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let wrong_obd = carol_overlaybd_json(&wrong, &host, "nope");
    let err =
        run_fails(binary().args(["push", "--overlaybd-config", &wrong_obd, &s("c1.json"), &v1]));
    assert!(
        err.contains("HTTP 401") || err.contains("Authentication failed"),
        "{err}"
    );
    run(binary().args(["create", &s("up.data"), &s("up.index"), "64M"]));
    let mut upper: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("c1.json")).unwrap()).unwrap();
    upper["upper"] = serde_json::json!({"data": s("up.data"), "index": s("up.index")});
    std::fs::write(d.join("rw.json"), upper.to_string()).unwrap();
    let err = run_fails(&mut push(&[&s("rw.json"), &v1]));
    assert!(err.contains("writable upper layer; seal it first"), "{err}");
    // pull --download: every layer fetched, checked and named by folder; the image then reads
    // without the registry (stopped here), byte-exactly.
    let said = run(binary().args([
        "pull",
        "--download",
        "--overlaybd-config",
        &obd,
        &v1,
        &s("dl"),
    ]));
    assert_eq!(said.lines().count(), 3, "two layers and the config: {said}");
    let dl: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("dl/config.v1.json")).unwrap()).unwrap();
    for lower in dl["lowers"].as_array().unwrap() {
        let folder = Path::new(lower["dir"].as_str().unwrap());
        let digest = lower["digest"].as_str().unwrap();
        assert_eq!(
            folder.file_name().unwrap().to_str().unwrap(),
            digest.replace(':', "-")
        );
        let blob = std::fs::read(folder.join("overlaybd.commit")).unwrap();
        assert_eq!(
            overlaybd_target::cache::http::push::sha256_digest(&blob),
            digest
        );
    }
    drop(reg);
    run(binary().args(["export", &s("dl/config.v1.json"), &s("dl.raw")]));
    assert!(
        std::fs::read(d.join("dl.raw")).unwrap() == local,
        "downloaded layers"
    );

    // A file that is not a sealed layer is refused before anything is sent.
    std::fs::write(d.join("junk.obd"), vec![7u8; 5000]).unwrap();
    let err = run_fails(&mut push(&[
        &s("junk.obd"),
        &format!("{host}/team/junk:v1"),
    ]));
    assert!(err.contains("not an image push can publish"), "{err}");
}

/// `attach` and `detach` up to the kernel, with a stand-in `iscsiadm` that records its
/// arguments (the Linux VM suite runs the real one): a reference is pinned to its digest
/// before it becomes LUN 0 of a target of its own; the node is created, given the longer
/// replacement timeout of a registry-backed disk and logged in to; a disk that never appears
/// is a clear error within `--wait`. Attaching again reuses the target; `--rw DIR` stacks a
/// writable layer kept in DIR and refuses a DIR of another image; `detach` by reference
/// forgets the node and removes the target.
#[tokio::test(flavor = "multi_thread")]
async fn attach_pins_the_reference_and_detach_removes_it() {
    use std::os::unix::fs::PermissionsExt;
    use support::process::{binary, run, run_fails, Target};

    let (reg, _creds) = registry_with_carol().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let s = |p: &str| d.join(p).display().to_string();
    let host = reg.url.trim_start_matches("http://").to_string();
    let obd = carol_overlaybd_json(&d, &host, "pa55word");
    // Two images with different files, each built and pushed; returns the pinned reference.
    let build_and_push = |name: &str| {
        std::fs::create_dir_all(d.join(name).join("etc")).unwrap();
        std::fs::write(d.join(name).join("etc/hostname"), format!("{name}\n")).unwrap();
        let (layer, config) = (s(&format!("{name}.obd")), s(&format!("{name}.json")));
        run(binary().args(["build", "-z", "--size", "16M", &s(name), &layer, &config]));
        let pushed = run(binary()
            .args(["push", "--overlaybd-config", &obd, &config])
            .arg(format!("{host}/team/{name}:v1")));
        let last = pushed.lines().last().unwrap().to_string();
        last.strip_prefix("pushed ").unwrap().to_string()
    };
    let pinned = build_and_push("app");
    build_and_push("other");

    std::fs::create_dir(d.join("bin")).unwrap();
    let fake = d.join("bin/iscsiadm");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", s("iscsiadm.log")),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", s("bin"), std::env::var("PATH").unwrap());
    let sock = s("api.sock");
    let (obd2, cache, sock2) = (obd.clone(), s("cache"), sock.clone());
    let target = tokio::task::spawn_blocking(move || {
        Target::start(&[
            "--api",
            &sock2,
            "--no-state",
            "--overlaybd-config",
            &obd2,
            "--cache-dir",
            &cache,
        ])
    })
    .await
    .unwrap();
    let portal = target.addr().to_string();
    let host_cmd = |verb: &str, args: &[&str]| {
        let mut cmd = binary();
        cmd.env("PATH", &path)
            .args([verb, "--api", &sock])
            .args(args);
        cmd
    };
    let attach = |args: &[&str]| {
        // No --portal: attach asks the target where it listens.
        let mut cmd = host_cmd("attach", &["--wait", "2"]);
        cmd.args(["--overlaybd-config", &obd]).args(args);
        cmd
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&run(
            binary().args(["ctl", "--api", &sock, "status", "--json"])
        ))
        .unwrap()
    };
    let attached = || -> Vec<(String, String, bool)> {
        let st = status();
        st["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] != "iqn.2026-11.io.overlaybd:demo")
            .map(|t| {
                let lun = &t["luns"][0];
                (
                    t["name"].as_str().unwrap().to_string(),
                    lun["backing"].as_str().unwrap().to_string(),
                    lun["read_only"].as_bool().unwrap(),
                )
            })
            .collect()
    };

    let reference = format!("{host}/team/app:v1");
    let err = run_fails(&mut attach(&[&reference]));
    assert!(
        err.contains("no disk for LUN 0 appeared within 2 s"),
        "{err}"
    );
    let targets = attached();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let (iqn, backing, read_only) = &targets[0];
    assert!(iqn.starts_with("iqn.2026-12.io.overlaybd.attach:"), "{iqn}");
    assert_eq!(
        backing,
        &format!("registry:{pinned}"),
        "pinned to the digest"
    );
    assert!(read_only);
    let log = std::fs::read_to_string(d.join("iscsiadm.log")).unwrap();
    let expected = [
        format!("-m node -o new -T {iqn} -p {portal}"),
        format!(
            "-m node -T {iqn} -p {portal} -o update -n node.session.timeo.replacement_timeout -v 600"
        ),
        format!("-m node -T {iqn} -p {portal} --login"),
    ];
    assert_eq!(log.lines().collect::<Vec<_>>(), expected, "{log}");

    // Again: the same target, nothing added.
    run_fails(&mut attach(&[&reference]));
    assert_eq!(attached().len(), 1);

    // --rw DIR: a writable layer the size of the image, stacked in DIR/config.v1.json.
    let err = run_fails(&mut attach(&["--rw", &s("rw"), &reference]));
    assert!(err.contains("no disk for LUN 0"), "{err}");
    let rw_config = s("rw/config.v1.json");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rw_config).unwrap()).unwrap();
    assert_eq!(config["upper"]["data"], s("rw/upper.data"));
    assert!(d.join("rw/upper.index").exists());
    assert!(
        !d.join("rw/.size-probe-cache").exists(),
        "scratch cache removed"
    );
    let inspect = run(binary().args(["inspect", &s("rw/upper.data")]));
    assert!(inspect.contains("16777216"), "the image's size: {inspect}");
    assert!(inspect.contains("writable data (sparse)"), "{inspect}");
    let targets = attached();
    assert!(
        targets.contains(&(
            overlaybd_target::host::attach::target_name(&format!("image:{rw_config}")),
            format!("image:{rw_config}"),
            false
        )),
        "{targets:?}"
    );
    let err = run_fails(&mut attach(&[
        "--rw",
        &s("rw"),
        &format!("{host}/team/other:v1"),
    ]));
    assert!(
        err.contains("holds the writable layer of another image"),
        "{err}"
    );

    // detach by reference: no session to log out of; the node is forgotten, the target gone.
    let said = run(&mut host_cmd("detach", &[&reference]));
    assert_eq!(said.trim(), format!("detached {iqn}"));
    let log = std::fs::read_to_string(d.join("iscsiadm.log")).unwrap();
    assert_eq!(
        log.lines().last().unwrap(),
        format!("-m node -T {iqn} -o delete")
    );
    assert_eq!(attached().len(), 1, "the --rw attach stays");
    run(&mut host_cmd("detach", &[&s("rw")]));
    assert!(attached().is_empty());
    let err = run_fails(&mut host_cmd("detach", &[&reference]));
    assert!(err.contains("is not attached"), "{err}");
    let err = run_fails(&mut host_cmd("detach", &["/dev/sdzz"]));
    assert!(err.contains("not a disk of an iSCSI session"), "{err}");
    drop(target);
}

/// nginx as a caching mirror (proxy_cache with the slice module), as a fleet would run one.
struct Nginx {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts Debian's nginx on a free loopback port, caching 256 KiB slices of what it proxies
/// from `upstream` (`127.0.0.1:PORT`).
async fn start_nginx(upstream: &str) -> Nginx {
    let nginx = tool_path("nginx", "nginx");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port().await;
    let config = format!(
        "user root;\nworker_processes 1;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           proxy_cache_path {d}/cache levels=1:2 keys_zone=blobs:4m max_size=256m inactive=1h use_temp_path=off;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location /v2/ {{\n      slice 262144;\n\
               proxy_cache blobs;\n      proxy_cache_key $uri$slice_range;\n\
               proxy_set_header Range $slice_range;\n      proxy_http_version 1.1;\n\
               proxy_cache_valid 200 206 1h;\n      proxy_pass http://{upstream};\n    }}\n  }}\n}}\n"
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let child = tokio::process::Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start nginx");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Nginx {
        child,
        url,
        _dir: dir,
    }
}

/// The path of a Debian tool, or a failure that says which package installs it.
fn tool_path(name: &str, package: &str) -> std::path::PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: install Debian's {package} (conformance/install-deps.sh does)")
}

/// Debian's nginx caching 256 KiB slices in front of docker-registry, as the layer's mirror for
/// two nodes (two caches): both read through it and the registry sees each range once; when
/// nginx is stopped in the middle of a third node's reads, they go on from the registry
/// without an error.
#[tokio::test(flavor = "multi_thread")]
async fn an_nginx_caching_mirror_serves_two_nodes_and_its_loss_falls_back_to_the_registry() {
    use support::fault_proxy::{Fault, FaultProxy, Link};
    let (reg, data, digest) = anonymous_registry_with_blob(3 << 20).await;
    // The registry as the nodes name it: a counting pass-through, so what reaches the
    // registry is seen request by request.
    let heads = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let reg_addr: std::net::SocketAddr = reg.url.trim_start_matches("http://").parse().unwrap();
    let origin = FaultProxy::start(reg_addr, Link::default(), {
        let heads = Arc::clone(&heads);
        move |_, head| {
            heads.lock().push(head.to_string());
            Fault::Pass
        }
    })
    .await;
    let origin_host = origin.url().trim_start_matches("http://").to_string();
    let nginx = start_nginx(&origin_host).await;
    let repo = format!("{}/v2/team/app/blobs", origin.url());
    let node = |cache: &Path| {
        let mut s = settings(cache);
        s.mirrors
            .insert(origin_host.clone(), vec![nginx.url.clone()]);
        s.http_config.failover_backoff_ms = 60_000;
        RemoteLayers::new(s).unwrap()
    };
    // Blob ranges the registry answered: (path, Range header) of each GET.
    let ranges_at_origin = || -> Vec<String> {
        heads
            .lock()
            .iter()
            .filter(|h| h.starts_with("GET ") && h.contains("/blobs/"))
            .map(|h| {
                let range = h
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("range:")
                            .map(|v| v.trim().to_string())
                    })
                    .unwrap_or_else(|| "(whole)".into());
                format!("{} {range}", h.split_whitespace().nth(1).unwrap_or(""))
            })
            .collect()
    };
    let pieces: Vec<(u64, usize)> = (0..data.len() / 65_536)
        .map(|i| ((i * 65_536) as u64, 65_536))
        .collect();
    let read_all = |src: Arc<dyn LayerSource>, pieces: Vec<(u64, usize)>| {
        let data = &data;
        async move {
            for (at, len) in pieces {
                let got = src
                    .read_exact_at(at, len)
                    .await
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                assert!(
                    got[..] == data[at as usize..at as usize + len],
                    "wrong bytes at {at}"
                );
            }
        }
    };

    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node_a = node(a.path());
    let src_a = node_a
        .open(&RemoteLayer::new(&repo, &digest))
        .await
        .unwrap();
    read_all(src_a, pieces.clone()).await;
    let after_a = ranges_at_origin();
    let node_b = node(b.path());
    let src_b = node_b
        .open(&RemoteLayer::new(&repo, &digest))
        .await
        .unwrap();
    read_all(src_b, pieces.clone()).await;
    let after_b = ranges_at_origin();
    assert!(!after_a.is_empty(), "nginx fetched from the registry");
    assert_eq!(
        after_b, after_a,
        "the second node was served by nginx's cache alone"
    );
    let mut unique = after_b.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        after_b.len(),
        "a range was fetched twice: {after_b:?}"
    );

    // A third node: nginx is stopped halfway through its reads.
    let c = tempfile::tempdir().unwrap();
    let node_c = node(c.path());
    let src_c = node_c
        .open(&RemoteLayer::new(&repo, &digest))
        .await
        .unwrap();
    let (first, second) = pieces.split_at(pieces.len() / 2);
    read_all(Arc::clone(&src_c), first.to_vec()).await;
    assert_eq!(
        ranges_at_origin(),
        after_b,
        "the first half came from nginx's cache"
    );
    drop(nginx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    read_all(src_c, second.to_vec()).await;
    assert!(
        ranges_at_origin().len() > after_b.len(),
        "the second half came from the registry itself"
    );
}

/// `trace attach` on an image pushed to `docker-registry`, then the image opened by reference
/// as the device's owner (what a `registry:` LUN does) with a disk cache: the acceleration
/// layer is found last in the manifest, its trace fetched from the registry and replayed, so
/// every byte of both layers is in the cache before any read of the disk, and reading the whole
/// disk afterwards fetches nothing and gives the local image's bytes. A plain open (tools)
/// fetches only headers and indexes. `trace inspect` summarises the trace; damaged traces and
/// traces of another image are refused before anything is pushed; a second attach replaces
/// the acceleration layer.
#[tokio::test(flavor = "multi_thread")]
async fn an_attached_trace_is_replayed_from_the_registry_by_reference() {
    use overlaybd_target::block::BlockDevice;
    use overlaybd_target::overlaybd::{Image, ImageConfig, LocalOpener};
    use overlaybd_target::prefetch::trace::{decode, encode};
    use overlaybd_target::prefetch::TraceRecord;
    use overlaybd_target::registry::acceleration::extract_trace;
    use overlaybd_target::registry::{resolve, ImageReference, Platform};
    use support::process::{binary, run, run_fails};

    let reg = start_registry(Options::default(), &reqwest::Client::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let host = reg.url.trim_start_matches("http://").to_string();
    let s = |p: &str| d.join(p).display().to_string();
    // Incompressible files of a few MiB: layers of many cache units, of which an open reads
    // only the few holding headers and indexes.
    for (tree, name, seed) in [("a", "etc/a.bin", 1u64), ("b", "srv/b.bin", 2)] {
        let path = d.join(tree).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut x = seed;
        let bytes: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        std::fs::write(path, bytes).unwrap();
    }
    run(binary()
        .args(["build", "-z", "--size", "64M"])
        .args([s("a"), s("l0.obd"), s("c0.json")]));
    run(binary()
        .args(["build", "-z", "--base", &s("c0.json")])
        .args([s("b"), s("l1.obd"), s("c1.json")]));
    let v1 = format!("{host}/team/app:v1");
    run(binary().args(["push", &s("c1.json"), &v1]));

    // A trace reading every byte of both layers' uncompressed LSMT blobs.
    let mut records = Vec::new();
    for (i, blob) in ["l0.obd", "l1.obd"].iter().enumerate() {
        let layer = LocalOpener::open_path(&d.join(blob)).await.unwrap();
        records.push(TraceRecord::read(i as u32, 0, layer.size()));
    }
    let trace = encode(&records);
    std::fs::write(d.join("trace"), &trace).unwrap();
    let said = run(binary().args(["trace", "inspect", &s("trace")]));
    assert!(said.contains("binary trace, 2 records: 2 reads"), "{said}");
    assert!(
        said.contains(&format!("layer 1: 1 reads, {} bytes", records[1].count)),
        "{said}"
    );
    let said = run(binary().args(["trace", "inspect", "--records", &s("trace")]));
    assert!(said.contains("#1 R layer 1 offset 0 count"), "{said}");

    // Refused before anything is pushed: a damaged trace, one naming a third layer.
    let mut damaged = trace.clone();
    damaged[30] ^= 1;
    std::fs::write(d.join("damaged"), &damaged).unwrap();
    let err = run_fails(binary().args(["trace", "inspect", &s("damaged")]));
    assert!(err.contains("not a valid trace"), "{err}");
    let err = run_fails(binary().args(["trace", "attach", &s("damaged"), &v1]));
    assert!(err.contains("not a valid trace"), "{err}");
    std::fs::write(d.join("other"), encode(&[TraceRecord::read(2, 0, 512)])).unwrap();
    let err = run_fails(binary().args(["trace", "attach", &s("other"), &v1]));
    assert!(err.contains("a trace of another image"), "{err}");

    let said = run(binary().args(["trace", "attach", &s("trace"), &v1]));
    assert!(said.contains(": uploaded"), "{said}");
    assert!(!said.contains("replaced"), "{said}");
    assert!(said.contains(&format!("pushed {v1}@sha256:")), "{said}");

    // resolve finds two data layers and the acceleration layer, whose tar holds the trace.
    let cache = d.join("cache");
    let mut cfg = settings(&cache);
    cfg.download.enable = false;
    let client = RegistryClient::from_settings(&cfg).unwrap();
    let reference = ImageReference::parse(&v1).unwrap();
    let resolved = resolve(&client, &reference, &Platform::host(), &[])
        .await
        .unwrap();
    assert_eq!(resolved.image.layers.len(), 2);
    let accel = resolved.image.acceleration.clone().unwrap();
    let blob = client
        .open_blob(&resolved.repo_blob_url, &accel.digest, None)
        .await
        .unwrap();
    let tar = blob.read_exact_at(0, accel.size as usize).await.unwrap();
    assert_eq!(decode(&extract_trace(&tar).unwrap()).unwrap(), records);

    // The local image, for the bytes the disk must show.
    let local_config = ImageConfig::load(&d.join("c1.json")).unwrap();
    let local = Image::open(&local_config, "c1.json", &LocalOpener)
        .await
        .unwrap();
    let layer_bytes: u64 = resolved.image.layers.iter().map(|l| l.size).sum();
    let config = resolved.image_config();
    assert!(config.acceleration_layer);

    // Baseline: a plain open (no prefetch) fetches only headers and indexes.
    let mut plain_cfg = settings(&d.join("plain-cache"));
    plain_cfg.download.enable = false;
    let plain_layers = RemoteLayers::new(plain_cfg).unwrap();
    let plain = Image::open(&config, "registry", &plain_layers)
        .await
        .unwrap();
    assert!(plain.prefetch().is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetched = plain_layers.tiers().stats().source_bytes;
    assert!(fetched < layer_bytes, "{fetched} of {layer_bytes}");
    drop(plain);

    // The owner's open replays the trace: every layer byte arrives without a disk read.
    let layers = RemoteLayers::new(cfg).unwrap();
    let image = Image::open_loaded(&config, "registry", &layers)
        .await
        .unwrap();
    assert!(image.prefetch().unwrap().is_replaying());
    assert_eq!(
        image.stack().len(),
        2,
        "the acceleration layer is no data layer"
    );
    let start = Instant::now();
    while layers.tiers().stats().source_bytes < layer_bytes {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replay fetched {:?} of {layer_bytes}",
            layers.tiers().stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = layers.tiers().stats().source_bytes;
    let size = local.size();
    assert_eq!(image.size(), size);
    let chunk = 4 << 20;
    let mut offset = 0;
    while offset < size {
        let len = chunk.min(size - offset) as usize;
        let got = image.read_at(offset, len).await.unwrap();
        assert!(
            got == local.read_at(offset, len).await.unwrap(),
            "disk bytes at {offset}"
        );
        offset += len as u64;
    }
    assert_eq!(
        layers.tiers().stats().source_bytes,
        before,
        "the disk read fetched what replay should have"
    );
    drop(image);

    // A second attach replaces the acceleration layer: still two data layers, one trace.
    std::fs::write(d.join("trace2"), encode(&records[1..])).unwrap();
    let said = run(binary().args(["trace", "attach", &s("trace2"), &v1]));
    assert!(
        said.contains(&format!("replaced trace layer {}", accel.digest)),
        "{said}"
    );
    let again = resolve(&client, &reference, &Platform::host(), &[])
        .await
        .unwrap();
    assert_eq!(again.image.layers, resolved.image.layers);
    let accel2 = again.image.acceleration.unwrap();
    assert_ne!(accel2.digest, accel.digest);
    // Pushed elsewhere with --to: the layers are mounted, the manifest is the same kind.
    let said = run(binary().args([
        "trace",
        "attach",
        "--to",
        &format!("{host}/other/app:fast"),
        &s("trace"),
        &v1,
    ]));
    assert!(said.contains("replaced trace layer"), "{said}");
    let other = ImageReference::parse(&format!("{host}/other/app:fast")).unwrap();
    let moved = resolve(&client, &other, &Platform::host(), &[])
        .await
        .unwrap();
    assert_eq!(moved.image.acceleration.unwrap().digest, accel.digest);
    assert_eq!(moved.image.layers, resolved.image.layers);
}

/// A node (daemon) serving `registry:REFERENCE` as LUN 0 of [`LEARN_T`], with `global` in
/// its `[global]` table, its API socket, state file and cache in `dir`.
fn learning_node(dir: &Path, reference: &str, global: &str) -> support::process::Target {
    std::fs::create_dir_all(dir).unwrap();
    let toml = format!(
        "[global]\n{global}\n[[targets]]\nname = \"{LEARN_T}\"\nluns = [{{ backing = \"registry:{reference}\" }}]\n"
    );
    std::fs::write(dir.join("targets.toml"), toml).unwrap();
    let dir = dir.to_path_buf();
    support::process::Target::start_with(move |port| {
        let p = |name: &str| dir.join(name).display().to_string();
        [
            "--portal".to_string(),
            format!("127.0.0.1:{port}"),
            "--api".to_string(),
            p("api.sock"),
            "--state".to_string(),
            p("state.json"),
            "--config".to_string(),
            p("targets.toml"),
            "--cache-dir".to_string(),
            p("cache"),
            "--nop-interval".to_string(),
            "0".to_string(),
        ]
        .to_vec()
    })
}

const LEARN_T: &str = "iqn.2026-12.io.overlaybd:publish";

/// The node's LUN 0 trace state once the LUN is ready (it opens in the background).
fn ready_trace(api: &Path) -> serde_json::Value {
    use support::api::http;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = http(api, "GET", "/v1/status", None);
        let ready = status["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["luns"].as_array().into_iter().flatten())
            .any(|l| l["state"] == "ready");
        if ready {
            let (code, trace) = http(api, "GET", &learn_path(""), None);
            assert_eq!(code, 200, "{trace}");
            return trace;
        }
        assert!(Instant::now() < deadline, "LUN 0 not ready: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn learn_path(tail: &str) -> String {
    format!("/v1/targets/{LEARN_T}/luns/0/trace{tail}")
}

/// Reads `blocks` 512-byte blocks at each LBA of `lbas` from LUN 0 through a raw session.
fn read_lun0(target: &support::process::Target, lbas: &[u32], blocks: u16) {
    use bytes::Bytes;
    use support::raw_initiator::{read10, Dir, RawConn};
    let mut conn = RawConn::login_to(target.addr(), LEARN_T, &[]);
    // The first command meets the power-on UNIT ATTENTION.
    let itt = conn.queue_command_to(0, &[0; 6], Dir::None, 0, Bytes::new(), false);
    conn.flush().unwrap();
    conn.outcome(itt);
    for &lba in lbas {
        let len = u32::from(blocks) * 512;
        let cdb = read10(lba, blocks);
        let itt = conn.queue_command_to(0, &cdb, Dir::Read, len, Bytes::new(), false);
        conn.flush().unwrap();
        let out = conn.outcome(itt);
        assert_eq!(out.status, 0, "READ at {lba}: sense {:02x?}", out.sense);
    }
}

/// Self-learning, published: a node with `learn_traces` learns a `registry:` LUN's start and,
/// asked through the API, pushes that trace as the image's acceleration layer (refusing while
/// it still records, or a bad destination); the registry's manifest then carries it, and a
/// node without learning replays it from there. A node with `publish_learned_traces` pushes
/// by itself once its recording ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_learned_trace_is_published_and_the_next_node_replays_it() {
    use overlaybd_target::prefetch::trace::decode;
    use overlaybd_target::registry::acceleration::extract_trace;
    use overlaybd_target::registry::{resolve, ImageReference, Platform};
    use support::api::http;
    use support::process::{binary, run};

    let reg = start_registry(Options::default(), &reqwest::Client::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let host = reg.url.trim_start_matches("http://").to_string();
    let s = |p: &str| d.join(p).display().to_string();
    std::fs::create_dir_all(d.join("tree/srv")).unwrap();
    std::fs::write(d.join("tree/srv/data.bin"), blob(3 << 20)).unwrap();
    run(binary().args(["build", "-z", "--size", "64M"]).args([
        s("tree"),
        s("l0.obd"),
        s("c0.json"),
    ]));
    let (v1, v2) = (
        format!("{host}/team/learn:v1"),
        format!("{host}/team/learn:v2"),
    );
    run(binary().args(["push", &s("c0.json"), &v1]));
    run(binary().args(["push", &s("c0.json"), &v2]));
    let client = RegistryClient::from_settings(&settings(&d.join("probe-cache"))).unwrap();
    let accel_of = |reference: &str| {
        let reference = ImageReference::parse(reference).unwrap();
        let client = client.clone();
        async move {
            resolve(&client, &reference, &Platform::host(), &[])
                .await
                .unwrap()
                .image
                .acceleration
        }
    };
    assert!(accel_of(&v1).await.is_none());

    // Node A learns the start of v1; publishing waits for the recording to end.
    let a_dir = d.join("a");
    let a = learning_node(&a_dir, &v1, "learn_traces = true");
    let api = a_dir.join("api.sock");
    let state = ready_trace(&api);
    assert_eq!(state["mode"], "recording", "{state}");
    let (code, body) = http(&api, "POST", &learn_path("/publish"), Some("{}"));
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("still recording"), "{body}");
    read_lun0(&a, &[0, 2048, 40_000], 64);
    let (code, stopped) = http(&api, "POST", &learn_path("/stop"), None);
    assert_eq!(code, 200, "{stopped}");
    assert!(stopped["records"].as_u64().unwrap() > 0, "{stopped}");
    let learned = std::fs::read(stopped["path"].as_str().unwrap()).unwrap();
    let (code, body) = http(
        &api,
        "POST",
        &learn_path("/publish"),
        Some(r#"{"to": "not a reference"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, published) = http(&api, "POST", &learn_path("/publish"), Some("{}"));
    assert_eq!(code, 200, "{published}");
    assert!(
        published["pushed"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{v1}@sha256:")),
        "{published}"
    );
    let accel = accel_of(&v1)
        .await
        .expect("the manifest has the trace layer");
    assert_eq!(published["layer"], accel.digest.as_str());
    let tar = client
        .open_blob(
            &ImageReference::parse(&v1).unwrap().repo_blob_url(&[]),
            &accel.digest,
            None,
        )
        .await
        .unwrap()
        .read_exact_at(0, accel.size as usize)
        .await
        .unwrap();
    assert_eq!(
        decode(&extract_trace(&tar).unwrap()).unwrap(),
        decode(&learned).unwrap(),
        "the layer holds the learned trace"
    );
    drop(a);

    // Node B does not learn: its cold open of v1 replays the published trace.
    let b_dir = d.join("b");
    let _b = learning_node(&b_dir, &v1, "");
    let state = ready_trace(&b_dir.join("api.sock"));
    assert_eq!(state["mode"], "replaying", "{state}");
    assert_eq!(state["records"], stopped["records"], "{state}");

    // Node C publishes by itself once its recording of v2 ends.
    let c_dir = d.join("c");
    let c = learning_node(
        &c_dir,
        &v2,
        "learn_traces = true\npublish_learned_traces = true",
    );
    let api = c_dir.join("api.sock");
    assert_eq!(ready_trace(&api)["mode"], "recording");
    read_lun0(&c, &[0, 4096], 32);
    let (code, body) = http(&api, "POST", &learn_path("/stop"), None);
    assert_eq!(code, 200, "{body}");
    let start = Instant::now();
    while accel_of(&v2).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "v2 got no acceleration layer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

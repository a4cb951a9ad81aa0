//! Manifests in the shapes registries serve them: an index with two platforms, the
//! convertor's Docker manifest with the overlaybd annotations, a plain OCI image.

use super::*;

const BASE: &str = "sha256:c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9";
const APP: &str = "sha256:a8b5fa1b0e2d0a4b4f1b7e8e2c4a6c1d3e5f7a9b0c2d4e6f8a0b2c4d6e8f0a21";
const TRACE: &str = "sha256:00b5fa1b0e2d0a4b4f1b7e8e2c4a6c1d3e5f7a9b0c2d4e6f8a0b2c4d6e8f0a00";

fn layer(digest: &str, size: u64, extra: &str) -> String {
    format!(
        r#"{{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": "{digest}",
            "size": {size}, "annotations": {{
              "containerd.io/snapshot/overlaybd/blob-digest": "{digest}",
              "containerd.io/snapshot/overlaybd/blob-size": "{size}",
              "containerd.io/snapshot/overlaybd/version": "0.1.0"{extra}}}}}"#
    )
}

fn docker_manifest(layers: &[String]) -> String {
    format!(
        r#"{{"schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {{"mediaType": "application/vnd.docker.container.image.v1+json",
                        "digest": "{APP}", "size": 1469}},
            "layers": [{}]}}"#,
        layers.join(",")
    )
}

fn image(text: &str) -> ImageManifest {
    match Manifest::parse(None, text.as_bytes()).unwrap() {
        Manifest::Image(m) => m,
        other => panic!("not an image manifest: {other:?}"),
    }
}

#[test]
fn the_convertors_docker_manifest_gives_the_lowers_of_a_config() {
    let m = image(&docker_manifest(&[
        layer(BASE, 4_737_695, ""),
        layer(APP, 1_234_567, ""),
    ]));
    assert_eq!(m.media_type, DOCKER_MANIFEST);
    let obd = m.overlaybd().unwrap();
    assert_eq!(
        obd.layers,
        vec![
            LayerRef {
                digest: BASE.into(),
                size: 4_737_695
            },
            LayerRef {
                digest: APP.into(),
                size: 1_234_567
            }
        ]
    );
    assert_eq!(obd.acceleration, None);
    let config = obd.image_config("http://127.0.0.1:5000/v2/demo/app/blobs");
    // The config round-trips through the parser the LUN uses.
    let again = ImageConfig::from_json(&config.to_json(), "pulled").unwrap();
    assert_eq!(again.lowers.len(), 2);
    assert_eq!(again.lowers[1].digest, APP);
    assert_eq!(again.lowers[1].size, 1_234_567);
    assert_eq!(
        again.repo_blob_url,
        "http://127.0.0.1:5000/v2/demo/app/blobs"
    );
    assert!(!again.acceleration_layer);
}

#[test]
fn a_trace_layer_is_kept_apart_and_goes_last() {
    let yes = r#", "containerd.io/snapshot/overlaybd/acceleration-layer": "yes""#;
    let m = image(&docker_manifest(&[
        layer(BASE, 10, ""),
        layer(TRACE, 3, yes),
    ]));
    let obd = m.overlaybd().unwrap();
    assert_eq!(obd.layers.len(), 1);
    assert_eq!(obd.acceleration.as_ref().unwrap().digest, TRACE);
    let config = obd.image_config("http://r/v2/a/blobs");
    assert!(config.acceleration_layer);
    assert_eq!(config.lowers.last().unwrap().digest, TRACE);
    assert_eq!(config.data_lowers().len(), 1);

    let m = image(&docker_manifest(&[
        layer(TRACE, 3, yes),
        layer(BASE, 10, ""),
    ]));
    let e = m.overlaybd().unwrap_err().to_string();
    assert!(e.contains("layer 0") && e.contains("not the last"), "{e}");
}

#[test]
fn a_plain_oci_image_is_refused_saying_why() {
    let plain = format!(
        r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {{"mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "{APP}", "size": 10}},
            "layers": [{{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                         "digest": "{BASE}", "size": 100}}]}}"#
    );
    let e = image(&plain).overlaybd().unwrap_err();
    assert_eq!(e, ManifestError::NotOverlaybd);
    assert!(e.to_string().contains("not an overlaybd image"), "{e}");
}

#[test]
fn inconsistent_layers_are_named() {
    let mut wrong_size = layer(APP, 7, "");
    wrong_size = wrong_size.replace("\"size\": 7", "\"size\": 8");
    let turbo = layer(BASE, 5, "").replace("\"0.1.0\"", "\"0.1.0-turbo.ociv1\"");
    let other_digest = layer(APP, 5, "").replacen(APP, BASE, 1);
    let unannotated = format!(r#"{{"mediaType": "x", "digest": "{APP}", "size": 1}}"#);
    for (layers, part) in [
        (vec![layer(BASE, 1, ""), wrong_size], "blob-size is \"7\""),
        (vec![turbo], "TurboOCI"),
        (vec![other_digest], "not the layer's digest"),
        (
            vec![layer(BASE, 1, ""), unannotated],
            "unlike the other layers",
        ),
    ] {
        let e = image(&docker_manifest(&layers)).overlaybd().unwrap_err();
        assert!(
            matches!(e, ManifestError::BadLayer { .. }) && e.to_string().contains(part),
            "{part}: {e}"
        );
    }
}

const LIST: &str = r#"{"schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
  "manifests": [
    {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
     "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
     "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
     "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}
  ]}"#;

#[test]
fn an_index_picks_the_platform_asked_for() {
    for (content_type, body) in [
        (None, LIST.to_string()),
        // An OCI index without mediaType in the body, named by the response header only.
        (
            Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
            LIST.replace(
                r#""mediaType": "application/vnd.docker.distribution.manifest.list.v2+json","#,
                "",
            ),
        ),
    ] {
        let Manifest::Index(entries) = Manifest::parse(content_type, body.as_bytes()).unwrap()
        else {
            panic!("not an index")
        };
        let pick = |p: &str| select_platform(&entries, &Platform::parse(p).unwrap());
        assert!(pick("linux/amd64")
            .unwrap()
            .digest
            .starts_with("sha256:1111"));
        assert!(pick("linux/arm").unwrap().digest.starts_with("sha256:2222"));
        assert!(pick("linux/arm/v7")
            .unwrap()
            .digest
            .starts_with("sha256:2222"));
        let e = pick("linux/arm64").unwrap_err().to_string();
        assert_eq!(
            e,
            "no linux/arm64 image in the index (it has linux/amd64, linux/arm/v7)"
        );
        assert!(pick("linux/arm/v6").is_err());
    }
}

#[test]
fn shapes_and_types_we_do_not_read_are_refused() {
    let schema1 = br#"{"schemaVersion": 1, "name": "a", "tag": "b", "fsLayers": []}"#;
    assert!(matches!(
        Manifest::parse(None, schema1),
        Err(ManifestError::Malformed(_)) | Err(ManifestError::UnknownMediaType(_))
    ));
    let v1 = br#"{"schemaVersion": 1, "layers": []}"#;
    assert!(matches!(
        Manifest::parse(None, v1),
        Err(ManifestError::UnknownMediaType(_))
    ));
    let odd = br#"{"schemaVersion": 2, "mediaType": "application/vnd.example+json", "layers": []}"#;
    assert_eq!(
        Manifest::parse(None, odd).unwrap_err(),
        ManifestError::UnknownMediaType("application/vnd.example+json".into())
    );
    assert!(matches!(
        Manifest::parse(None, b"not json"),
        Err(ManifestError::Malformed(_))
    ));
    assert!(matches!(
        Manifest::parse(Some(OCI_MANIFEST), br#"{"layers": []}"#),
        Err(ManifestError::Malformed(m)) if m.contains("config")
    ));
}

#[test]
fn platforms_parse_and_the_host_has_one() {
    assert_eq!(
        Platform::parse("linux/arm64/v8").unwrap().to_string(),
        "linux/arm64/v8"
    );
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
        assert!(Platform::parse(bad).is_err(), "{bad}");
    }
    let host = Platform::host();
    assert_eq!(host.os, "linux");
    assert!(!host.architecture.is_empty() && host.architecture != "x86_64");
}

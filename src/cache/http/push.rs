//! Uploading a blob to an OCI registry (monolithic upload: `POST /v2/<repo>/blobs/uploads/`,
//! then `PUT <Location>&digest=...` with the bytes). Used by tests and tools to seed a registry.

use std::io;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};

use super::auth::basic_header;
use super::credentials::RegistryCredentials;

/// `sha256:<hex>` of `data`, the form registries and layer configs use.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Pushes `data` as a blob of `repo` on the registry at `registry` (e.g. `http://127.0.0.1:5000`),
/// with HTTP Basic credentials if given. Returns the blob digest. Only registries that accept
/// Basic auth (or none) are supported; a Bearer challenge is reported as an error.
pub async fn push_blob(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    data: Vec<u8>,
    creds: Option<&RegistryCredentials>,
) -> io::Result<String> {
    let digest = sha256_digest(&data);
    let err =
        |what: &str, e: String| io::Error::other(format!("push {repo}@{digest}: {what}: {e}"));
    let base = Url::parse(registry).map_err(|e| err("registry URL", e.to_string()))?;
    let start = base
        .join(&format!("/v2/{repo}/blobs/uploads/"))
        .map_err(|e| err("upload URL", e.to_string()))?;
    let auth = creds.map(|c| basic_header(&c.username, &c.password));

    let mut post = http.post(start.clone());
    if let Some(a) = &auth {
        post = post.header(AUTHORIZATION, a);
    }
    let resp = post.send().await.map_err(|e| err("POST", e.to_string()))?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(err("POST", format!("status {}", resp.status())));
    }
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| err("POST", "no Location".into()))?;
    let mut put_url = start
        .join(location)
        .map_err(|e| err("Location", e.to_string()))?;
    put_url.query_pairs_mut().append_pair("digest", &digest);

    let mut put = http
        .put(put_url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(data);
    if let Some(a) = &auth {
        put = put.header(AUTHORIZATION, a);
    }
    let resp = put.send().await.map_err(|e| err("PUT", e.to_string()))?;
    if resp.status() != StatusCode::CREATED {
        return Err(err("PUT", format!("status {}", resp.status())));
    }
    Ok(digest)
}

/// Puts `body` as the manifest `reference` (a tag or digest) of `repo`, with its media type
/// and optional Basic credentials. Returns the manifest's digest.
pub async fn push_manifest(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Vec<u8>,
    creds: Option<&RegistryCredentials>,
) -> io::Result<String> {
    let digest = sha256_digest(&body);
    let err = |e: String| io::Error::other(format!("push manifest {repo}:{reference}: {e}"));
    let url = Url::parse(registry)
        .and_then(|base| base.join(&format!("/v2/{repo}/manifests/{reference}")))
        .map_err(|e| err(e.to_string()))?;
    let mut put = http.put(url).header(CONTENT_TYPE, media_type).body(body);
    if let Some(c) = creds {
        put = put.header(AUTHORIZATION, basic_header(&c.username, &c.password));
    }
    let resp = put.send().await.map_err(|e| err(e.to_string()))?;
    if resp.status() != StatusCode::CREATED {
        return Err(err(format!("status {}", resp.status())));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_of_empty_blob() {
        assert_eq!(
            super::sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

//! Registry blobs over HTTP: Range reads, registry authorization, redirects, proxies, retries.
//!
//! `auth`, `credentials` and `range` are sans-IO (byte and string literals in, decisions out),
//! apart from [`CredentialStore`]'s reading of its sources; `client` does the requests;
//! `routes` reads a blob through the P2P proxy, mirrors and the registry, falling over per
//! read; `cred_helper` runs Docker credential helpers; `push` uploads a blob (used by tests and
//! tools).

pub mod auth;
pub mod client;
mod cred_helper;
pub mod credentials;
pub mod push;
pub mod range;
pub mod routes;

pub use client::{HttpBlobSource, RegistryClient};
pub use credentials::{CredentialStore, DockerConfig, RegistryCredentials};
pub use routes::{Route, RouteKind, RoutedBlob};

/// Largest JSON answer (token, credential service) we read: these are small documents, and
/// an endless body from a broken or hostile server must not exhaust memory.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// Reads a whole answer body of at most `limit` bytes; a longer one is an error.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(format!("answer larger than {limit} bytes"));
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

//! Registry blobs over HTTP: Range reads, registry authorization, redirects, proxies, retries.
//!
//! `auth`, `credentials` and `range` are sans-IO (byte and string literals in, decisions out);
//! `client` does the requests; `push` uploads a blob (used by tests and tools).

pub mod auth;
pub mod client;
pub mod credentials;
pub mod push;
pub mod range;

pub use client::{HttpBlobSource, RegistryClient};
pub use credentials::{CredentialStore, Credentials};

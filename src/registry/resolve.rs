//! From a reference to an image's layers over the network: fetch the manifest the reference
//! names through the registry client (same credentials and tokens as blob reads); when it is
//! an index, pick the platform and fetch that manifest by digest; then read the overlaybd
//! layers. The result is pinned by digest, so a tag that moves later does not change it.

use std::io;

use super::manifest::{select_platform, ImageManifest, Manifest, ACCEPT};
use super::{ImageReference, OverlaybdImage, Platform};
use crate::cache::http::client::FetchedManifest;
use crate::cache::http::RegistryClient;
use crate::overlaybd::ImageConfig;

/// An image resolved from a reference.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference pinned to the image manifest's digest.
    pub pinned: ImageReference,
    /// `repoBlobUrl` of the image's repository.
    pub repo_blob_url: String,
    /// Its overlaybd layers.
    pub image: OverlaybdImage,
}

impl ResolvedImage {
    /// The `config.v1.json` that serves this image from its registry.
    pub fn image_config(&self) -> ImageConfig {
        self.image.image_config(&self.repo_blob_url)
    }
}

/// Resolves `reference` for `platform`; `plain_http` lists `HOST[:PORT]`s spoken to over
/// HTTP besides loopback ones. Errors name the reference and what was wrong (no such tag, no
/// such platform, not an overlaybd image, credentials refused).
pub async fn resolve(
    client: &RegistryClient,
    reference: &ImageReference,
    platform: &Platform,
    plain_http: &[String],
) -> io::Result<ResolvedImage> {
    let named = |e: String| format!("{reference}: {e}");
    let fetched = fetch_image_manifest(client, reference, platform, plain_http).await?;
    let image = fetched
        .manifest
        .overlaybd()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, named(e.to_string())))?;
    Ok(ResolvedImage {
        pinned: reference.pinned(&fetched.raw.digest),
        repo_blob_url: reference.repo_blob_url(plain_http),
        image,
    })
}

/// An image manifest fetched by reference.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// The manifest, parsed.
    pub manifest: ImageManifest,
    /// The manifest as served: its bytes, media type and digest.
    pub raw: FetchedManifest,
    /// True when the reference named an index, of which the platform's entry was taken.
    pub via_index: bool,
}

/// Fetches the image manifest `reference` names for `platform` (through an index when it
/// names one), as [`resolve`] does, without reading its layers.
pub async fn fetch_image_manifest(
    client: &RegistryClient,
    reference: &ImageReference,
    platform: &Platform,
    plain_http: &[String],
) -> io::Result<FetchedImage> {
    let named = |e: String| format!("{reference}: {e}");
    let url = reference.manifest_url(plain_http, reference.manifest_ref());
    let first = client
        .get_manifest(&url, ACCEPT)
        .await
        .map_err(|e| io::Error::new(e.kind(), named(e.to_string())))?;
    let parse = |fetched: &crate::cache::http::client::FetchedManifest| {
        Manifest::parse(fetched.content_type.as_deref(), &fetched.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, named(e.to_string())))
    };
    let (manifest, raw, via_index) = match parse(&first)? {
        Manifest::Image(m) => (m, first, false),
        Manifest::Index(entries) => {
            let entry = select_platform(&entries, platform)
                .map_err(|e| io::Error::new(io::ErrorKind::NotFound, named(e.to_string())))?;
            let url = reference.manifest_url(plain_http, &entry.digest);
            let second = client
                .get_manifest(&url, ACCEPT)
                .await
                .map_err(|e| io::Error::new(e.kind(), named(e.to_string())))?;
            match parse(&second)? {
                Manifest::Image(m) => (m, second, true),
                Manifest::Index(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        named(format!("the {platform} entry is an index, not an image")),
                    ))
                }
            }
        }
    };
    Ok(FetchedImage {
        manifest,
        raw,
        via_index,
    })
}

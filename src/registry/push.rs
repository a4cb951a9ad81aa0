//! Pushing an image to a registry: each sealed layer of a `config.v1.json` as a tar-wrapped
//! blob, then an image config and a manifest with the overlaybd annotations
//! ([`super::compose`] writes those documents).
//!
//! A blob the repository already has is not sent again (`HEAD` first). A layer that lives in
//! another repository of the same registry (a lower given by digest) is mounted from there
//! (`POST …/blobs/uploads/?mount=…&from=…`); a registry that declines the mount starts an
//! upload instead, and the bytes are then streamed from the source. Uploads are monolithic
//! `PUT`s whose body is streamed from the file (or the source registry) in chunks, so memory
//! stays bounded whatever the layer size; the registry checks the digest we send with them.
//! Authorization is the registry client's: Basic or Bearer tokens per the registry's
//! challenge, with the credentials blob reads use.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, Stream, TryStreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Body, StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::compose::{image_config, image_manifest, BlobRef, ManifestKind, TarWrap};
use super::{ImageReference, Platform};
use crate::cache::http::RegistryClient;
use crate::overlaybd::config::LayerLocation;
use crate::overlaybd::{Image, ImageConfig, LocalOpener};
use crate::source::LayerSource;

/// Bytes per chunk of a streamed upload body.
const CHUNK: usize = 1 << 20;

/// Longest error answer body read from the registry (its JSON `errors` list).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Called with the bytes of the image's blobs handled so far (sent, or found in the
/// registry) and their total.
pub type PushProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Docker schema 2 or OCI manifest.
    pub kind: ManifestKind,
    /// The platform written in the image config.
    pub platform: Platform,
    /// Registries spoken to over plain HTTP besides loopback ones (`HOST[:PORT]`).
    pub plain_http: Vec<String>,
}

/// What happened to one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The repository had it already; nothing was sent.
    Present,
    /// Mounted from another repository of the same registry; nothing was sent.
    Mounted {
        /// The repository it came from.
        from: String,
    },
    /// Its bytes were uploaded.
    Uploaded,
}

/// One pushed blob.
#[derive(Debug, Clone)]
pub struct PushedBlob {
    /// Its digest and size.
    pub blob: BlobRef,
    /// Whether it was sent.
    pub outcome: BlobOutcome,
}

/// The result of a push.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The reference pinned to the manifest's digest.
    pub pinned: ImageReference,
    /// The layers, bottom first.
    pub layers: Vec<PushedBlob>,
    /// The image config blob.
    pub config: PushedBlob,
}

/// Where a layer's bytes come from.
enum LayerBytes {
    /// A local sealed layer, wrapped in a tar on the way unless it is one already.
    Local {
        path: PathBuf,
        wrap: Option<TarWrap>,
    },
    /// A blob in a registry, streamed from there unless it can be mounted.
    Remote { repo_blob_url: String },
    /// Bytes in memory (the image config).
    Memory(Bytes),
}

/// A layer to push: its bytes and their digest and size.
struct Layer {
    bytes: LayerBytes,
    blob: BlobRef,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Pushes the image of `config` (its path `config_file` names it in errors) as `reference`.
/// Every lower is pushed in order; an image with a writable upper is refused (commit it
/// first). `progress` sees the bytes handled out of the blobs' total.
pub async fn push_image(
    client: &Arc<RegistryClient>,
    config: &ImageConfig,
    config_file: &str,
    reference: &ImageReference,
    options: &PushOptions,
    progress: PushProgress,
) -> io::Result<PushedImage> {
    if config.writable().is_some() {
        return Err(invalid(format!(
            "{config_file}: the image has a writable upper layer; seal it first \
             (overlaybd-target commit) and list the sealed layer as a lower"
        )));
    }
    let local = (0..config.lowers.len())
        .all(|i| matches!(config.locate(i, config_file), Ok(LayerLocation::Local(_))));
    if local {
        // Every layer is here: open the image as a LUN would, so a file that is not a sealed
        // layer, or a stack that does not fit together, is refused before anything is sent.
        Image::open(config, config_file, &LocalOpener)
            .await
            .map_err(|e| invalid(format!("not an image push can publish: {e}")))?;
    }
    let mut layers = Vec::with_capacity(config.lowers.len());
    for i in 0..config.lowers.len() {
        layers.push(prepare_layer(client, config, config_file, i).await?);
    }
    let refs: Vec<BlobRef> = layers.iter().map(|l| l.blob.clone()).collect();
    let config_body = Bytes::from(image_config(&options.platform, &refs));
    let manifest = image_manifest(
        options.kind,
        &BlobRef {
            digest: sha256(&config_body),
            size: config_body.len() as u64,
        },
        &refs,
        config.acceleration_layer,
    );
    // The config goes after the layers: the registry sees the blobs in order.
    let mut blobs: Vec<BlobToPush> = layers.into_iter().map(BlobToPush).collect();
    blobs.push(BlobToPush::memory(config_body));
    let (pinned, mut pushed) = push_manifest(
        client,
        reference,
        &options.plain_http,
        blobs,
        options.kind,
        manifest,
        progress,
    )
    .await?;
    // `push_manifest` returns one entry per blob given, the config last.
    let config = pushed
        .pop()
        .ok_or_else(|| io::Error::other("push_manifest lost the config blob"))?;
    Ok(PushedImage {
        pinned,
        layers: pushed,
        config,
    })
}

/// A blob [`push_manifest`] makes sure the destination repository has.
pub struct BlobToPush(Layer);

impl BlobToPush {
    /// Bytes in memory (an image config, an acceleration layer).
    pub fn memory(bytes: Bytes) -> Self {
        BlobToPush(Layer {
            blob: BlobRef {
                digest: sha256(&bytes),
                size: bytes.len() as u64,
            },
            bytes: LayerBytes::Memory(bytes),
        })
    }

    /// The blob `blob` of the repository whose blob URL prefix is `repo_blob_url`: nothing
    /// is sent when the destination has it, it is mounted when that repository is on the
    /// destination's registry, else streamed from there.
    pub fn from_registry(repo_blob_url: &str, blob: BlobRef) -> Self {
        BlobToPush(Layer {
            blob,
            bytes: LayerBytes::Remote {
                repo_blob_url: repo_blob_url.to_string(),
            },
        })
    }

    /// Its digest and size.
    pub fn blob(&self) -> &BlobRef {
        &self.0.blob
    }
}

/// Pushes `blobs` in order to the repository of `reference`, then `manifest` (of `kind`) as
/// its tag or digest: the manifest goes last, since a registry may refuse one naming blobs it
/// does not have. A reference naming a digest other than the manifest's is refused before
/// anything is sent. Returns the reference pinned to the manifest's digest and what happened
/// to each blob, in the order given. `progress` sees the bytes handled out of the blobs'
/// total.
pub async fn push_manifest(
    client: &Arc<RegistryClient>,
    reference: &ImageReference,
    plain_http: &[String],
    blobs: Vec<BlobToPush>,
    kind: ManifestKind,
    manifest: Vec<u8>,
    progress: PushProgress,
) -> io::Result<(ImageReference, Vec<PushedBlob>)> {
    let manifest_digest = sha256(&manifest);
    if let Some(wanted) = &reference.digest {
        if *wanted != manifest_digest {
            return Err(invalid(format!(
                "{reference}: the manifest pushed would be {manifest_digest}, not the digest \
                 the reference names"
            )));
        }
    }
    let total: u64 = blobs.iter().map(|b| b.0.blob.size).sum();
    let mut session = Session {
        client: Arc::clone(client),
        repository_url: reference.repository_url(plain_http),
        repository: reference.repository.clone(),
        auth: None,
        progress,
        done: 0,
        total,
    };
    (session.progress)(0, total);
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{reference}: {e}"));
    let mut pushed = Vec::with_capacity(blobs.len());
    for BlobToPush(layer) in blobs {
        let outcome = session.push_blob(&layer).await.map_err(named)?;
        pushed.push(PushedBlob {
            blob: layer.blob,
            outcome,
        });
    }
    session
        .put_manifest(reference.manifest_ref(), kind, manifest)
        .await
        .map_err(named)?;
    Ok((reference.pinned(&manifest_digest), pushed))
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    crate::cache::http::push::sha256_digest(data)
}

/// Finds lower `i`'s bytes and learns their digest and size: a local file is read once
/// (through its tar wrapping when it has none); a registry blob keeps the config's digest.
async fn prepare_layer(
    client: &Arc<RegistryClient>,
    config: &ImageConfig,
    config_file: &str,
    i: usize,
) -> io::Result<Layer> {
    if config.lowers[i].is_turbo_oci() {
        return Err(invalid(format!(
            "{config_file}: lowers[{i}] is a TurboOCI layer, which push does not upload"
        )));
    }
    let location = config
        .locate(i, config_file)
        .map_err(|e| invalid(e.to_string()))?;
    match location {
        LayerLocation::Local(path) => {
            let task_path = path.clone();
            let (wrap, blob) = tokio::task::spawn_blocking(move || digest_local(&task_path))
                .await
                .map_err(io::Error::other)?
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(Layer {
                bytes: LayerBytes::Local { path, wrap },
                blob,
            })
        }
        LayerLocation::Remote { digest, size, .. } => {
            let size = if size > 0 {
                size
            } else {
                client
                    .open_blob(&config.repo_blob_url, &digest, None)
                    .await?
                    .size()
            };
            Ok(Layer {
                bytes: LayerBytes::Remote {
                    repo_blob_url: config.repo_blob_url.clone(),
                },
                blob: BlobRef { digest, size },
            })
        }
    }
}

/// Reads a local sealed layer once: whether it needs a tar wrapping, and the digest and size
/// of the blob as pushed.
fn digest_local(path: &Path) -> io::Result<(Option<TarWrap>, BlobRef)> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut prefix = vec![0u8; crate::zfile::tar::PREFIX_LEN.min(len as usize)];
    file.read_exact(&mut prefix)?;
    let wrapped = crate::zfile::tar::locate_payload(&prefix, len)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        .is_some();
    let wrap = (!wrapped).then(|| TarWrap::new(len));
    let mut hash = Sha256::new();
    if let Some(w) = &wrap {
        hash.update(w.header());
    }
    hash.update(&prefix);
    let mut buf = vec![0u8; CHUNK];
    let mut read = prefix.len() as u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        read += n as u64;
    }
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("changed while read ({len} bytes, then {read})"),
        ));
    }
    let size = match &wrap {
        Some(w) => {
            hash.update(vec![0u8; w.trailer_len() as usize]);
            w.total_len()
        }
        None => len,
    };
    Ok((
        wrap,
        BlobRef {
            digest: format!("sha256:{}", hex::encode(hash.finalize())),
            size,
        },
    ))
}

/// One push's state: the destination repository and the authorization learned on the way.
struct Session {
    client: Arc<RegistryClient>,
    /// `SCHEME://HOST/v2/REPOSITORY`.
    repository_url: String,
    repository: String,
    auth: Option<String>,
    progress: PushProgress,
    /// Bytes handled so far.
    done: u64,
    /// Bytes of all blobs.
    total: u64,
}

impl Session {
    fn url(&self, tail: &str) -> io::Result<Url> {
        Url::parse(&format!("{}{tail}", self.repository_url))
            .map_err(|e| invalid(format!("{}{tail}: {e}", self.repository_url)))
    }

    async fn push_blob(&mut self, layer: &Layer) -> io::Result<BlobOutcome> {
        let digest = &layer.blob.digest;
        let head = self.url(&format!("/blobs/{digest}"))?;
        let resp = self
            .client
            .send_authorized(&head, &mut self.auth, |http| Ok(http.head(head.clone())))
            .await?;
        if resp.status() == StatusCode::OK {
            self.advance(layer.blob.size);
            return Ok(BlobOutcome::Present);
        }
        let mount_from = match &layer.bytes {
            LayerBytes::Remote { repo_blob_url } => self.same_registry_repository(repo_blob_url),
            _ => None,
        };
        let start = match &mount_from {
            Some(from) => {
                let mut url = self.url("/blobs/uploads/")?;
                url.query_pairs_mut()
                    .append_pair("mount", digest)
                    .append_pair("from", from);
                url
            }
            None => self.url("/blobs/uploads/")?,
        };
        let resp = self
            .client
            .send_authorized(&start, &mut self.auth, |http| {
                Ok(http.post(start.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        match (resp.status(), mount_from) {
            (StatusCode::CREATED, Some(from)) => {
                self.advance(layer.blob.size);
                return Ok(BlobOutcome::Mounted { from });
            }
            (StatusCode::ACCEPTED, _) => {}
            (_, _) => return Err(registry_error("starting an upload", resp).await),
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the registry started an upload without a Location",
                )
            })?;
        let mut put = start
            .join(location)
            .map_err(|e| invalid(format!("upload Location {location:?}: {e}")))?;
        put.query_pairs_mut().append_pair("digest", digest);

        // A body sent twice (a new token after a 401) counts from zero again.
        let base = self.done;
        let (client, progress) = (Arc::clone(&self.client), Arc::clone(&self.progress));
        let total = self.total;
        let resp = client
            .send_authorized(&put, &mut self.auth, |http| {
                let progress = Arc::clone(&progress);
                let mut sent = 0u64;
                let body = body_stream(&client, layer)?.inspect_ok(move |chunk| {
                    sent += chunk.len() as u64;
                    progress(base + sent, total);
                });
                Ok(http
                    .put(put.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, layer.blob.size)
                    .body(Body::wrap_stream(body)))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(registry_error("uploading", resp).await);
        }
        self.done = base;
        self.advance(layer.blob.size);
        Ok(BlobOutcome::Uploaded)
    }

    async fn put_manifest(
        &mut self,
        tag_or_digest: &str,
        kind: ManifestKind,
        body: Vec<u8>,
    ) -> io::Result<()> {
        let url = self.url(&format!("/manifests/{tag_or_digest}"))?;
        let body = Bytes::from(body);
        let resp = self
            .client
            .send_authorized(&url, &mut self.auth, |http| {
                Ok(http
                    .put(url.clone())
                    .header(CONTENT_TYPE, kind.media_type())
                    .body(body.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(registry_error("putting the manifest", resp).await);
        }
        Ok(())
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        (self.progress)(self.done, self.total);
    }

    /// The repository of `repo_blob_url` when it is on this registry (same scheme, host and
    /// port) but another repository: a blob there can be mounted rather than copied.
    fn same_registry_repository(&self, repo_blob_url: &str) -> Option<String> {
        let (ours, theirs) = (
            Url::parse(&self.repository_url).ok()?,
            Url::parse(repo_blob_url).ok()?,
        );
        let origin = |u: &Url| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        };
        if origin(&ours) != origin(&theirs) {
            return None;
        }
        let repo = theirs
            .path()
            .strip_prefix("/v2/")?
            .trim_end_matches('/')
            .strip_suffix("/blobs")?;
        (repo != self.repository && !repo.is_empty()).then(|| repo.to_string())
    }
}

/// The body of `layer` as a stream of chunks: a local file between its tar header and
/// trailer, a registry blob read in ranges, or bytes in memory.
fn body_stream(
    client: &Arc<RegistryClient>,
    layer: &Layer,
) -> io::Result<std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>> {
    Ok(match &layer.bytes {
        LayerBytes::Memory(bytes) => Box::pin(stream::iter([Ok(bytes.clone())])),
        LayerBytes::Local { path, wrap } => {
            let file = tokio::fs::File::from_std(std::fs::File::open(path)?);
            let (header, trailer) = match wrap {
                Some(w) => (w.header().to_vec(), vec![0u8; w.trailer_len() as usize]),
                None => (Vec::new(), Vec::new()),
            };
            let reader = AsyncReadExt::chain(
                AsyncReadExt::chain(std::io::Cursor::new(header), file),
                std::io::Cursor::new(trailer),
            );
            Box::pin(tokio_util::io::ReaderStream::with_capacity(reader, CHUNK))
        }
        LayerBytes::Remote { repo_blob_url } => {
            let source: Arc<dyn LayerSource> = Arc::new(client.blob_of_size(
                repo_blob_url,
                &layer.blob.digest,
                layer.blob.size,
                None,
            )?);
            let size = layer.blob.size;
            Box::pin(stream::try_unfold(0u64, move |offset| {
                let source = Arc::clone(&source);
                async move {
                    if offset >= size {
                        return Ok(None);
                    }
                    let len = (size - offset).min(CHUNK as u64) as usize;
                    let chunk = source
                        .read_exact_at(offset, len)
                        .await
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    Ok(Some((chunk, offset + len as u64)))
                }
            }))
        }
    })
}

/// An error for an unexpected registry answer: the status and the registry's own error
/// codes and messages (`{"errors": [{"code", "message"}]}`) when it sent them.
async fn registry_error(what: &str, resp: reqwest::Response) -> io::Error {
    let status = resp.status();
    let kind = match status.as_u16() {
        401 | 403 => io::ErrorKind::PermissionDenied,
        404 => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    let body = crate::cache::http::read_limited(resp, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let errors = v.get("errors")?.as_array()?.clone();
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let field = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("");
                    format!("{} {}", field("code"), field("message"))
                        .trim()
                        .to_string()
                })
                .collect();
            Some(parts.join("; "))
        })
        .filter(|d| !d.is_empty())
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    let hint = if kind == io::ErrorKind::PermissionDenied {
        " (are push credentials for this registry configured?)"
    } else {
        ""
    };
    io::Error::new(
        kind,
        format!("{what}: HTTP {}{detail}{hint}", status.as_u16()),
    )
}

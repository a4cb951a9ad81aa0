//! Registry manifests: an OCI image index or Docker manifest list (one entry per platform),
//! and the OCI or Docker schema-2 image manifest it leads to, whose layer descriptors carry
//! the overlaybd annotations (`../shared/spec/tools.md` §8.1).
//!
//! A layer is an overlaybd layer when its descriptor has the blob-digest annotation; an image
//! whose layers have none is an ordinary OCI image and is refused with a message that says
//! so. A trace layer (acceleration-layer `yes`) must come last and is kept apart from the data
//! layers. TurboOCI layers are refused (the image config cannot serve them either).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::overlaybd::config::LowerLayer;
use crate::overlaybd::ImageConfig;

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema-2 image manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `Accept` header value asking for any of the four.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The layer's blob digest (equal to the descriptor's own digest).
pub const ANNOTATION_BLOB_DIGEST: &str = "containerd.io/snapshot/overlaybd/blob-digest";
/// The layer's blob size in bytes, decimal.
pub const ANNOTATION_BLOB_SIZE: &str = "containerd.io/snapshot/overlaybd/blob-size";
/// `yes` on a trace (acceleration) layer.
pub const ANNOTATION_ACCELERATION: &str = "containerd.io/snapshot/overlaybd/acceleration-layer";
/// The overlaybd format version (`0.1.0`; `0.1.0-turbo.ociv1` for TurboOCI).
pub const ANNOTATION_VERSION: &str = "containerd.io/snapshot/overlaybd/version";

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest: {0}")]
    Malformed(String),
    /// A media type we do not read (e.g. Docker schema 1).
    #[error("manifest media type {0:?} is not an OCI or Docker schema-2 manifest or index")]
    UnknownMediaType(String),
    /// The index has no entry for the platform asked for.
    #[error("no {want} image in the index (it has {have})")]
    NoPlatform {
        /// The platform asked for.
        want: String,
        /// The platforms the index lists.
        have: String,
    },
    /// The image's layers carry no overlaybd annotations.
    #[error(
        "not an overlaybd image: no layer has the {ANNOTATION_BLOB_DIGEST} annotation (a plain \
         OCI image; convert it with overlaybd's convertor, or build and push one with this tool)"
    )]
    NotOverlaybd,
    /// A layer is unusable; the message names it.
    #[error("layer {index} ({digest}): {why}")]
    BadLayer {
        /// Position in the manifest's `layers`.
        index: usize,
        /// The descriptor's digest.
        digest: String,
        /// What is wrong.
        why: String,
    },
}

/// A content descriptor as both formats write it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Descriptor {
    /// The content's media type.
    pub media_type: String,
    /// `sha256:…` of the content.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Annotations (where the overlaybd keys live).
    pub annotations: BTreeMap<String, String>,
    /// In an index: the platform of the image it points at.
    pub platform: Option<Platform>,
}

/// An OS and CPU pair (and variant), as indexes list them and `--platform` names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Platform {
    /// `linux`, …
    pub os: String,
    /// `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7`, `v8`, … when the architecture has variants.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine we run on, in the OCI names (`linux/amd64`, …).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Parses `OS/ARCH[/VARIANT]` (`--platform linux/arm64`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!(
                "platform {text:?} is not OS/ARCH[/VARIANT], e.g. linux/arm64"
            )),
        }
    }

    /// Whether an index entry for `self` serves a request for `want`: same OS and
    /// architecture, and the same variant when `want` names one.
    fn serves(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.architecture == want.architecture
            && (want.variant.is_none() || self.variant == want.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest URL answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An OCI index or Docker manifest list: one image manifest per platform.
    Index(Vec<Descriptor>),
    /// An image manifest.
    Image(ImageManifest),
}

/// An OCI or Docker schema-2 image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// [`OCI_MANIFEST`] or [`DOCKER_MANIFEST`].
    pub media_type: String,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses a manifest body. `content_type` is the response's `Content-Type` (its
    /// parameters ignored); when it is not a manifest type, the body's `mediaType` decides,
    /// and without one its shape (`manifests` or `layers`), as OCI allows.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(body).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let header = content_type
            .map(|t| t.split(';').next().unwrap_or("").trim())
            .filter(|t| [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].contains(t));
        let media_type = match (header, raw.media_type.as_deref()) {
            (Some(t), _) => t.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
            (None, None) if raw.layers.is_some() => OCI_MANIFEST.to_string(),
            (None, None) => {
                return Err(ManifestError::Malformed(
                    "neither `manifests` nor `layers`".into(),
                ))
            }
        };
        if raw.schema_version.is_some_and(|v| v != 2) {
            return Err(ManifestError::UnknownMediaType(format!(
                "schemaVersion {}",
                raw.schema_version.unwrap_or_default()
            )));
        }
        match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => {
                Ok(Manifest::Index(raw.manifests.ok_or_else(|| {
                    ManifestError::Malformed("an index without `manifests`".into())
                })?))
            }
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Manifest::Image(ImageManifest {
                media_type,
                config: raw.config.ok_or_else(|| {
                    ManifestError::Malformed("an image manifest without `config`".into())
                })?,
                layers: raw.layers.ok_or_else(|| {
                    ManifestError::Malformed("an image manifest without `layers`".into())
                })?,
            })),
            other => Err(ManifestError::UnknownMediaType(other.to_string())),
        }
    }
}

/// The index entry for `want`; the error lists the platforms the index has.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.serves(want)))
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref().map(Platform::to_string))
                .collect();
            ManifestError::NoPlatform {
                want: want.to_string(),
                have: if have.is_empty() {
                    "no platforms".into()
                } else {
                    have.join(", ")
                },
            }
        })
}

/// A layer blob by digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// The overlaybd view of an image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaybdImage {
    /// Data layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// The trace layer, when the image has one.
    pub acceleration: Option<LayerRef>,
}

impl ImageManifest {
    /// The overlaybd layers this manifest describes.
    pub fn overlaybd(&self) -> Result<OverlaybdImage, ManifestError> {
        if !self
            .layers
            .iter()
            .any(|l| l.annotations.contains_key(ANNOTATION_BLOB_DIGEST))
        {
            return Err(ManifestError::NotOverlaybd);
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut acceleration = None;
        for (index, l) in self.layers.iter().enumerate() {
            let bad = |why: String| ManifestError::BadLayer {
                index,
                digest: l.digest.chars().take(80).collect(),
                why,
            };
            if !is_sha256(&l.digest) {
                return Err(bad("the digest is not sha256:<64 hex>".into()));
            }
            let annotated = l.annotations.get(ANNOTATION_BLOB_DIGEST).ok_or_else(|| {
                bad(format!(
                    "no {ANNOTATION_BLOB_DIGEST} annotation, unlike the other layers"
                ))
            })?;
            if *annotated != l.digest {
                return Err(bad(format!(
                    "{ANNOTATION_BLOB_DIGEST} is {annotated}, not the layer's digest"
                )));
            }
            if let Some(size) = l.annotations.get(ANNOTATION_BLOB_SIZE) {
                if size.parse::<u64>().ok() != Some(l.size) {
                    return Err(bad(format!(
                        "{ANNOTATION_BLOB_SIZE} is {size:?}, the descriptor says {}",
                        l.size
                    )));
                }
            }
            if l.annotations
                .get(ANNOTATION_VERSION)
                .is_some_and(|v| v.contains("turbo") || v.contains("fastoci"))
            {
                return Err(bad("a TurboOCI layer, which is not supported".into()));
            }
            let layer = LayerRef {
                digest: l.digest.clone(),
                size: l.size,
            };
            if l.annotations
                .get(ANNOTATION_ACCELERATION)
                .map(String::as_str)
                == Some("yes")
            {
                if index + 1 != self.layers.len() {
                    return Err(bad("an acceleration layer that is not the last".into()));
                }
                acceleration = Some(layer);
            } else {
                layers.push(layer);
            }
        }
        if layers.is_empty() {
            return Err(ManifestError::BadLayer {
                index: 0,
                digest: String::new(),
                why: "no data layer (only a trace layer)".into(),
            });
        }
        Ok(OverlaybdImage {
            layers,
            acceleration,
        })
    }
}

impl OverlaybdImage {
    /// The `config.v1.json` that reads this image's layers from `repo_blob_url` (the trace
    /// layer, if any, last with `accelerationLayer`).
    pub fn image_config(&self, repo_blob_url: &str) -> ImageConfig {
        let lower = |l: &LayerRef| LowerLayer {
            digest: l.digest.clone(),
            size: l.size,
            ..LowerLayer::default()
        };
        let mut lowers: Vec<LowerLayer> = self.layers.iter().map(lower).collect();
        lowers.extend(self.acceleration.iter().map(lower));
        ImageConfig {
            repo_blob_url: repo_blob_url.to_string(),
            lowers,
            acceleration_layer: self.acceleration.is_some(),
            ..ImageConfig::default()
        }
    }
}

fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests;

//! Images by reference: what a user types (`HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]`), the
//! registry documents it names (an OCI index or Docker manifest list, then an OCI or Docker
//! image manifest), and the overlaybd layers those describe (`../shared/spec/tools.md` §8.1).
//!
//! [`reference`] and [`manifest`] are free of I/O: one turns text into the URLs to fetch,
//! the other turns fetched bytes into a platform choice and then into the lowers of a
//! `config.v1.json`. [`resolve`] does the fetching, through the registry client and its
//! authentication.

pub mod acceleration;
pub mod compose;
pub mod manifest;
pub mod publish;
pub mod push;
pub mod reference;
pub mod resolve;

pub use manifest::{
    LayerRef, Manifest, ManifestError, OverlaybdImage, Platform, ANNOTATION_ACCELERATION,
    ANNOTATION_BLOB_DIGEST, ANNOTATION_BLOB_SIZE,
};
pub use reference::{ImageReference, ReferenceError};
pub use resolve::{fetch_image_manifest, resolve, FetchedImage, ResolvedImage};

//! overlaybd images: the LSMT layer format (sealed and writable layers), the merged layer stack,
//! commits, and the `config.v1.json` image config, exposed as a block device.
//!
//! Layout: [`header`] and [`index`] are the on-disk structures (sans-IO); [`layer`] opens sealed
//! layers; [`stack`] merges them; [`writable`] is the upper layer (append-only, or sparse) whose in-memory
//! map is [`writable_index`]; [`commit`] writes sealed blobs; [`config`] parses image configs;
//! [`image`] ties it together as a [`crate::block::BlockDevice`]; [`remote_images`] opens a config as a
//! LUN with the daemon's remote-layer caches; [`raw`] converts to and from
//! raw disk images. Layer bytes are always read through [`crate::source::LayerSource`].

#![warn(missing_docs)]

pub mod commit;
pub mod config;
pub mod error;
pub mod header;
pub mod image;
pub mod index;
pub mod layer;
pub mod raw;
pub mod remote_images;
mod sparse;
pub mod stack;
pub mod writable;
pub mod writable_index;

#[cfg(test)]
mod tests;

/// Called with the bytes done so far by the long operations (export, import, commit), for a
/// progress display; `&|_| {}` when nobody watches.
pub type OnProgress<'a> = &'a (dyn Fn(u64) + Sync);

pub use config::ImageConfig;
pub use error::{LsmtError, LsmtResult};
pub use image::{Image, LayerOpener, LocalOpener, WithPrefetchWorkers};
pub use layer::SealedLayer;
pub use remote_images::{open_image_lun, RemoteImages};
pub use stack::LayerStack;
pub use writable::WritableLayer;

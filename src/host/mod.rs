//! The host side of a node's image service: `attach` turns an image (a reference or a
//! `config.v1.json`) into a block device through the local target's management API and
//! open-iscsi; `detach` undoes it.
//!
//! Each attached image is a target of its own (`iqn.2026-12.io.overlaybd.attach:` and a hash
//! of its backing) with the image as LUN 0, so one session is one image: logging out detaches
//! exactly it, and the session's timeouts can suit a registry-backed disk without touching
//! other disks. [`sysfs`] finds the disk of a session; [`iscsiadm`] builds and runs the
//! open-iscsi commands.

pub mod attach;
pub mod iscsiadm;
pub mod sysfs;

pub use attach::{AttachArgs, DetachArgs};

/// Why attach or detach failed; one line.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The arguments or the image are not usable.
    #[error("{0}")]
    Usage(String),
    /// The management API failed or refused.
    #[error(transparent)]
    Api(#[from] crate::daemon::api::ClientError),
    /// An external command failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What went wrong.
        message: String,
    },
    /// The disk did not appear in time.
    #[error("{0}")]
    Timeout(String),
}

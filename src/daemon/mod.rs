//! The daemon: the composition root of a running target. It turns the declared configuration
//! (`--config` or the quick form) and the persisted state file into a live catalog of targets
//! and LUNs, hands that catalog to the iSCSI transport, and serves the management API through
//! which targets and LUNs are added and removed while hosts stay connected.
//!
//! - [`model`]: the resources the management API speaks about (JSON shapes);
//! - [`definition`]: targets and LUNs as declared (config, API, state file);
//! - [`control`]: the operations on them ([`control::ControlPlane`]) and their errors, which the
//!   HTTP layer maps to status codes;
//! - [`api`]: the management API over a Unix socket, its server and its client;
//! - [`ctl`]: `overlaybd-target ctl`, the command-line client of the API.

pub mod api;
pub mod control;
pub mod ctl;
pub mod definition;
pub mod model;

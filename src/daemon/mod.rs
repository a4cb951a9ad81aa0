//! The daemon: the composition root of a running target. It turns the declared configuration
//! (`--config` or the quick form) and the persisted state file into a live catalog of targets
//! and LUNs, hands that catalog to the iSCSI transport, and serves the management API through
//! which targets and LUNs are added and removed while hosts stay connected.
//!
//! - [`model`]: the resources the management API speaks about (JSON shapes);
//! - [`definition`]: targets and LUNs as declared (config, API, state file);
//! - `service.rs`: [`Daemon`], which starts everything and implements the control plane;
//!   `inventory.rs` its record of targets and LUN states; `settings.rs` the translation of
//!   the configuration for the protocol layers;
//! - [`control`]: the operations on them ([`control::ControlPlane`]) and their errors, which the
//!   HTTP layer maps to status codes;
//! - [`state`]: the state file, which keeps what the management API changed across restarts;
//!   `reservations.rs` keeps persistent reservations with APTPL beside it;
//! - [`api`]: the management API over a Unix socket, its server and its client;
//! - [`ctl`]: `overlaybd-target ctl`, the command-line client of the API.

pub mod api;
mod cache;
pub mod control;
pub mod ctl;
pub mod definition;
mod inventory;
pub mod model;
mod reservations;
mod service;
mod settings;
pub mod state;

pub use service::{Daemon, DaemonOptions, Reloader, StartError, MAX_LUN};

#[cfg(test)]
mod tests;

//! Helpers shared by integration tests.

pub mod http_server;
pub mod process;

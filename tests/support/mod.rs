//! Helpers shared by integration tests.

#![allow(dead_code)]

pub mod api;
pub mod fault_proxy;
pub mod fixtures;
pub mod http_server;
pub mod images;
pub mod metrics;
pub mod proc_stats;
pub mod process;
pub mod raw_initiator;

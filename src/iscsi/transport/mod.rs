//! The tokio transport: listeners, connections, and the drivers of the sans-IO protocol state.
pub mod driver;
pub mod wire;

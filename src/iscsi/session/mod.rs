//! Full-feature phase of a normal session, sans-IO.
pub mod data_in;
pub mod data_out;
pub mod window;

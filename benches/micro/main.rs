//! In-process micro-benchmarks (divan). Run with `cargo bench --bench micro`; filter with a
//! substring, e.g. `cargo bench --bench micro -- lsmt`. One module per subsystem: adding a
//! subsystem is one `mod` line and one file beside this one.

#[path = "../common/corpus.rs"]
mod corpus;

mod cache;
mod cdb;
mod lsmt;
mod pdu;
mod zfile;

fn main() {
    divan::main();
}

//! Behaviour tests across the overlaybd modules, with shared helpers: writable layers against a
//! plain byte model (live, reopened, committed, stacked), the spec's worked examples end to end,
//! corruption handling, durability, the image block device, and the real ext4_64 fixture.

mod bounded;
mod corruption;
mod device;
mod durability;
mod examples;
mod fixture;
mod model;
mod power_loss;
mod prefetch;
mod read_errors;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::commit::{seal_in_place, write_commit, CommitOptions, CommitSource};
use super::header::{flags, LayerUuid, LsmtHeader, HEADER_SIZE};
use super::image::Image;
use super::index::{decode_records, Record, RECORD_SIZE};
use super::layer::SealedLayer;
use super::stack::LayerStack;
use super::writable::{CreateOptions, WritableLayer};
use super::LsmtError;
use crate::block::{BlockDevice, BlockError, Provisioning};
use crate::cache::file::FileSource;
use crate::source::BytesSource;
use crate::source::LayerSource;

const S: u64 = 512;

/// One operation on a writable layer, in sectors.
#[derive(Debug, Clone)]
enum Op {
    Write { sector: u64, len: u64, seed: u8 },
    Discard { sector: u64, len: u64 },
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len * S)
        .map(|i| seed.wrapping_add((i % 251) as u8).wrapping_mul(3) | 1)
        .collect()
}

/// Applies `ops` to a plain byte vector (discards read as zeros).
fn apply_model(model: &mut [u8], ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Write { sector, len, seed } => {
                let at = (sector * S) as usize;
                model[at..at + (len * S) as usize].copy_from_slice(&pattern(len, seed));
            }
            Op::Discard { sector, len } => {
                let at = (sector * S) as usize;
                model[at..at + (len * S) as usize].fill(0);
            }
        }
    }
}

async fn apply_layer(layer: &WritableLayer, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Write { sector, len, seed } => layer
                .write(sector * S, Bytes::from(pattern(len, seed)))
                .await
                .unwrap(),
            Op::Discard { sector, len } => layer.discard(sector * S, len * S).await.unwrap(),
        }
    }
}

fn new_layer(dir: &Path, name: &str, vsize: u64) -> WritableLayer {
    create_layer(dir, name, &CreateOptions::new(vsize))
}

/// A 1 MiB writable layer holding `pattern(sectors, seed)` from offset 0.
async fn patterned_layer(dir: &Path, name: &str, sectors: u64, seed: u8) -> WritableLayer {
    let layer = new_layer(dir, name, 1 << 20);
    layer
        .write(0, Bytes::from(pattern(sectors, seed)))
        .await
        .unwrap();
    layer
}

fn create_layer(dir: &Path, name: &str, opts: &CreateOptions) -> WritableLayer {
    WritableLayer::create(
        &dir.join(format!("{name}.data")),
        &dir.join(format!("{name}.index")),
        opts,
    )
    .unwrap()
}

fn reopen(dir: &Path, name: &str) -> WritableLayer {
    WritableLayer::open(
        &dir.join(format!("{name}.data")),
        &dir.join(format!("{name}.index")),
    )
    .unwrap()
}

async fn commit_bytes(src: &CommitSource, opts: &CommitOptions) -> Vec<u8> {
    let mut out = Vec::new();
    write_commit(src, opts, &mut out).await.unwrap();
    out
}

fn mem(bytes: Vec<u8>) -> Arc<dyn LayerSource> {
    Arc::new(BytesSource::new(bytes, "mem"))
}

async fn sealed(bytes: Vec<u8>) -> SealedLayer {
    SealedLayer::open(mem(bytes)).await.unwrap()
}

/// The blob `layer` commits to (§8.2) with default options.
async fn commit_blob(layer: &WritableLayer) -> Vec<u8> {
    commit_bytes(
        &CommitSource::from_writable(layer),
        &CommitOptions::default(),
    )
    .await
}

/// `layer` committed (§8.2) and reopened as a sealed layer.
async fn committed(layer: &WritableLayer) -> SealedLayer {
    sealed(commit_blob(layer).await).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn op_strategy(sectors: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..sectors, 1..=48u64, any::<u8>())
            .prop_map(move |(s, l, seed)| Op::Write { sector: s, len: l.min(sectors - s), seed }),
        1 => (0..sectors, 1..=64u64).prop_map(move |(s, l)| Op::Discard { sector: s, len: l.min(sectors - s) }),
    ]
}

const VSECTORS: u64 = 256;

//! End-to-end tests of [`ScsiTarget::execute`] with literal CDBs and expected bytes; this file
//! holds the shared helpers (targets, command builders, test devices), one file per area below.

mod luns;
mod model;
mod not_ready;
mod provisioning;
mod reservations;
mod sanitize;
mod sbc;
mod spc;
mod unit_options;
mod xcopy;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::block::{BlockError, BlockResult, BlockStatus, RamDevice};

const BLOCKS: u64 = 2048; // 1 MiB of 512-byte blocks

/// TEST UNIT READY.
const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];

fn nexus(name: &str) -> Nexus {
    Nexus {
        initiator_name: format!("iqn.2026-11.test:{name}"),
        isid: [0x40, 0, 0, 0, 0, 1],
        tpgt: 1,
    }
}

fn lun_config(device: Arc<dyn BlockDevice>) -> LunConfig {
    LunConfig {
        device,
        serial: "SERIAL0001".to_string(),
        product: "TESTDISK".to_string(),
        options: Default::default(),
    }
}

fn ram_target() -> ScsiTarget {
    ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new(BLOCKS * 512)))])
}

fn ro_target() -> ScsiTarget {
    ScsiTarget::new(vec![lun_config(Arc::new(RamDevice::new_read_only(
        BLOCKS * 512,
    )))])
}

/// Runs one command on LUN 0; the CDB is padded to 16 bytes like iSCSI does.
async fn exec(
    t: &ScsiTarget,
    n: &Nexus,
    cdb: &[u8],
    expected_len: u32,
    out: &[u8],
) -> CommandOutcome {
    exec_lun(t, n, 0, cdb, expected_len, out).await
}

async fn exec_lun(
    t: &ScsiTarget,
    n: &Nexus,
    lun: u64,
    cdb: &[u8],
    expected_len: u32,
    out: &[u8],
) -> CommandOutcome {
    let mut padded = cdb.to_vec();
    padded.resize(16.max(cdb.len()), 0);
    let direction = if out.is_empty() {
        DataDirection::In
    } else {
        DataDirection::Out
    };
    t.execute(
        n,
        ScsiRequest {
            lun,
            cdb: Bytes::from(padded),
            direction,
            expected_len,
            data_out: Bytes::copy_from_slice(out),
        },
    )
    .await
}

/// A nexus that has already consumed its power-on unit attention.
async fn ready(t: &ScsiTarget, name: &str) -> Nexus {
    let n = nexus(name);
    let first = exec(t, &n, &[0x00, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_sense(&first, sense::key::UNIT_ATTENTION, 0x29, 0x00);
    let second = exec(t, &n, &[0x00, 0, 0, 0, 0, 0], 0, &[]).await;
    assert_eq!(second.status, status::GOOD);
    n
}

fn assert_sense(r: &CommandOutcome, key: u8, asc: u8, ascq: u8) {
    assert_eq!(
        r.status,
        status::CHECK_CONDITION,
        "expected CHECK CONDITION, got status {:#x}",
        r.status
    );
    let s = r.sense.as_ref().expect("sense data");
    assert_eq!(
        (s[2] & 0x0f, s[12], s[13]),
        (key, asc, ascq),
        "sense {s:02x?}"
    );
}

fn assert_field(r: &CommandOutcome, byte: u16, bit: Option<u8>) {
    let s = r.sense.as_ref().expect("sense data");
    assert_eq!(s[15] & 0x80, 0x80, "SKSV");
    assert_eq!(u16::from_be_bytes([s[16], s[17]]), byte);
    match bit {
        Some(b) => assert_eq!(s[15] & 0x0f, 0x08 | b),
        None => assert_eq!(s[15] & 0x08, 0),
    }
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    vec![0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

/// A device whose every operation fails: writes with `write()`, the rest with I/O errors.
struct BrokenDevice {
    write: fn() -> BlockError,
}

impl BrokenDevice {
    /// Every operation fails with an I/O error.
    const ON_FIRE: BrokenDevice = BrokenDevice {
        write: || BlockError::Io(std::io::Error::other("disk on fire")),
    };
}

#[async_trait]
impl BlockDevice for BrokenDevice {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_unmap(&self) -> bool {
        false
    }
    fn erasable(&self) -> bool {
        true
    }
    async fn read(&self, _: u64, _: usize) -> BlockResult<Bytes> {
        Err(BlockError::Io(std::io::Error::other("disk on fire")))
    }
    async fn write(&self, _: u64, _: Bytes, _: bool) -> BlockResult<()> {
        Err((self.write)())
    }
    async fn flush(&self) -> BlockResult<()> {
        Err(BlockError::Corrupt("flush".into()))
    }
    async fn unmap(&self, _: u64, _: u64) -> BlockResult<()> {
        Err(BlockError::Unsupported("unmap"))
    }
    async fn block_status(&self, _: u64) -> BlockResult<BlockStatus> {
        Err(BlockError::Io(std::io::Error::other("disk on fire")))
    }
}

fn unmap_params(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
    p.extend_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    for (lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

fn unmap_cdb(len: u16) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

fn get_lba_status_cdb(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0x9e, 0x12];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn write_same16(lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    let mut c = vec![0x93, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn prout(action: u8, pr_type: u8) -> Vec<u8> {
    vec![0x5f, action, pr_type, 0, 0, 0, 0, 0, 24, 0]
}

fn pr_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p
}

/// What a [`HookedRam`] adds to a RAM disk: the size it reports and a step before each read,
/// so tests can change the size, count reads or hold them.
#[async_trait]
trait RamHook: Send + Sync + 'static {
    /// The size the device reports; the RAM disk's own unless overridden.
    fn size(&self, ram: &RamDevice) -> u64 {
        ram.size()
    }
    /// Runs before each read of `len` bytes.
    async fn before_read(&self, _len: usize) {}
}

/// A writable RAM disk without unmap whose size and reads its `hook` sees or changes.
struct HookedRam<H> {
    ram: RamDevice,
    hook: H,
}

impl<H> HookedRam<H> {
    fn new(bytes: u64, hook: H) -> Arc<Self> {
        Arc::new(HookedRam {
            ram: RamDevice::new(bytes),
            hook,
        })
    }
}

#[async_trait]
impl<H: RamHook> BlockDevice for HookedRam<H> {
    fn size(&self) -> u64 {
        self.hook.size(&self.ram)
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_unmap(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, len: usize) -> BlockResult<Bytes> {
        self.hook.before_read(len).await;
        self.ram.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> BlockResult<()> {
        self.ram.write(offset, data, fua).await
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn unmap(&self, _: u64, _: u64) -> BlockResult<()> {
        Err(BlockError::Unsupported("unmap"))
    }
    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        self.ram.block_status(offset).await
    }
}

/// Reads announce themselves, then wait for a permit.
struct HoldReads {
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

impl Default for HoldReads {
    /// Every read waits until the test adds a permit.
    fn default() -> Self {
        HoldReads {
            entered: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

#[async_trait]
impl RamHook for HoldReads {
    async fn before_read(&self, _: usize) {
        self.entered.notify_one();
        // The gate is never closed, so acquiring only fails if it were; either way, go on.
        let _permit = self.gate.acquire().await;
    }
}

/// A reported size that can change under the target.
struct Resize(std::sync::atomic::AtomicU64);

impl RamHook for Resize {
    fn size(&self, _: &RamDevice) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn execute_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let t = ram_target();
    let n = nexus("a");
    let req = ScsiRequest {
        lun: 0,
        cdb: Bytes::from_static(&[0; 16]),
        direction: DataDirection::None,
        expected_len: 0,
        data_out: Bytes::new(),
    };
    let fut = t.execute(&n, req);
    assert_send(&fut);
}

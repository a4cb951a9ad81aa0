//! One logical unit: its backing device, identity and the state commands share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::cdb::service_action::sanitize;
use super::cdb::{opcode, OpInfo};
use super::identity::{ascii_field, naa_from_serial};
use super::io_log::{LogLimiter, IO_LOG_INTERVAL};
use super::medium::Medium;
use super::reservations::{ReservationStore, Reservations};
use super::sanitize::SanitizeState;
use super::sense::{asc, key, Sense};
use super::unit_attention::UnitAttentions;
use super::xcopy::CopyResults;
use super::{LunConfig, UnitOptions};
use crate::block::{BlockDevice, Unavailable};
use crate::metrics::LunMetrics;

/// Largest READ/WRITE/VERIFY transfer in blocks (VPD b0 MAXIMUM TRANSFER LENGTH, 32 MiB of
/// 512-byte blocks); bounds the buffers a single command can make us allocate.
pub const MAX_TRANSFER_BLOCKS: u32 = 65536;
/// Largest COMPARE AND WRITE in blocks (VPD b0).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;
/// Largest WRITE SAME in blocks (VPD b0 MAXIMUM WRITE SAME LENGTH).
pub const MAX_WRITE_SAME_BLOCKS: u64 = 65536;
/// Most block descriptors in one UNMAP (VPD b0).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE ATOMIC(16) in blocks (VPD b0 MAXIMUM ATOMIC TRANSFER LENGTH, 1 MiB of
/// 512-byte blocks): it holds back every other data command of the LUN while it runs.
pub const MAX_ATOMIC_BLOCKS: u32 = 2048;
/// Preferred granularity for transfers and unmaps, in 512-byte blocks (4 KiB).
pub const OPTIMAL_GRANULARITY_BLOCKS: u32 = 8;

/// Mutable per-LUN state, guarded by one short-held lock (never held across an await).
#[derive(Debug, Default)]
pub struct LunState {
    /// Pending unit attentions per nexus.
    pub ua: UnitAttentions,
    /// RESERVE(6) and persistent reservations.
    pub reservations: Reservations,
    /// Capacity last reported, to raise CAPACITY DATA HAS CHANGED when it moves.
    pub last_size: u64,
    /// Load state and prevents of a removable medium (unused on fixed ones).
    pub medium: Medium,
    /// A sanitize in progress, or the failure mode a failed one left.
    pub sanitize: SanitizeState,
    /// EXTENDED COPY operations running or held for RECEIVE COPY RESULTS.
    pub copies: CopyResults,
}

/// A logical unit of the target.
pub struct LogicalUnit {
    /// Name of the target the LUN belongs to (for log lines).
    pub target_name: Arc<str>,
    /// The LUN number.
    pub number: u64,
    /// Limits I/O error warnings to one per interval.
    pub io_log: parking_lot::Mutex<LogLimiter>,
    /// Set when the device reported itself unavailable after it was opened.
    failed: parking_lot::Mutex<Option<Unavailable>>,
    /// The backing device.
    pub device: Arc<dyn BlockDevice>,
    /// This LUN's series of the process metrics.
    pub metrics: LunMetrics,
    /// Unit serial number.
    pub serial: String,
    /// INQUIRY product identification (16 bytes, space padded).
    pub product: [u8; 16],
    /// NAA locally-assigned identifier (VPD 0x83), derived from the serial.
    pub naa: [u8; 8],
    /// Physical block size, removable medium, thin or thick.
    pub options: UnitOptions,
    /// Unit attentions and reservations; shared with the LUN's successor when
    /// [`super::ScsiTarget::replace_lun`] swaps the device, so commands still running on this
    /// one and new ones on the successor see the same state.
    pub state: Arc<parking_lot::Mutex<LunState>>,
    /// Serialises COMPARE AND WRITE and ORWRITE (read-modify-write) on this LUN.
    pub rmw_lock: tokio::sync::Mutex<()>,
    /// Data commands hold it shared, WRITE ATOMIC(16) exclusively.
    pub atomic_gate: tokio::sync::RwLock<()>,
    /// Where persistent reservations with APTPL are saved; `None`: they cannot be (PTPL_C 0).
    pr_store: Option<Arc<dyn ReservationStore>>,
    /// Caching mode page WCE: when clear every write is forced to media (FUA).
    write_cache: AtomicBool,
    /// Control mode page SWP: software write protection set by MODE SELECT.
    software_write_protect: AtomicBool,
    /// Control mode page D_SENSE: sense data in descriptor format.
    descriptor_sense: AtomicBool,
}

impl LogicalUnit {
    /// Builds LUN `number` of target `target_name` from its configuration. With `pr_store`,
    /// persistent reservations that an earlier LUN with this serial saved (APTPL) come back.
    pub fn new(
        config: LunConfig,
        target_name: Arc<str>,
        number: u64,
        pr_store: Option<Arc<dyn ReservationStore>>,
    ) -> Self {
        let naa = naa_from_serial(&config.serial);
        let reservations = match &pr_store {
            Some(store) => restore_reservations(&**store, &config.serial, &target_name, number),
            None => Reservations::default(),
        };
        let size = config.device.size();
        let metrics = crate::metrics::global().lun(&target_name, number);
        LogicalUnit {
            target_name,
            number,
            io_log: parking_lot::Mutex::new(LogLimiter::new(IO_LOG_INTERVAL)),
            failed: parking_lot::Mutex::new(None),
            product: ascii_field(&config.product),
            serial: config.serial,
            naa,
            options: config.options,
            state: Arc::new(parking_lot::Mutex::new(LunState {
                last_size: size,
                reservations,
                ..LunState::default()
            })),
            rmw_lock: tokio::sync::Mutex::new(()),
            atomic_gate: tokio::sync::RwLock::new(()),
            pr_store,
            write_cache: AtomicBool::new(true),
            software_write_protect: AtomicBool::new(false),
            descriptor_sense: AtomicBool::new(false),
            device: config.device,
            metrics,
        }
    }

    /// The same LUN on the device of `config`: it shares this LUN's unit attentions,
    /// reservations and last reported capacity (so a different size raises CAPACITY DATA HAS
    /// CHANGED on the next command) and keeps the mode parameters initiators set, so nothing
    /// an initiator knew is lost.
    pub fn successor(&self, config: LunConfig) -> Self {
        let mut next = LogicalUnit::new(config, self.target_name.clone(), self.number, None);
        next.state = self.state.clone();
        next.pr_store = self.pr_store.clone();
        next.set_write_cache(self.write_cache_enabled());
        next.set_software_write_protect(self.software_write_protected());
        next.set_descriptor_sense(self.descriptor_sense());
        next
    }

    /// Saves the persistent reservations after a PERSISTENT RESERVE OUT changed them, while
    /// APTPL asks for it (or drops the saved copy once it no longer does). Called with the LUN
    /// state locked, so saves happen in the order of the changes; it blocks on the store, which
    /// only PERSISTENT RESERVE OUT pays for. HARDWARE ERROR when the store fails.
    pub fn persist_reservations(&self, reservations: &mut Reservations) -> Result<(), Sense> {
        let (Some(store), Some(document)) = (&self.pr_store, reservations.snapshot()) else {
            return Ok(());
        };
        match store.save(&self.serial, document.as_deref()) {
            Ok(()) => {
                reservations.saved(document.is_some());
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    target = %self.target_name,
                    lun = self.number,
                    error = %e,
                    "cannot save the persistent reservations (APTPL)"
                );
                Err(Sense::new(
                    key::HARDWARE_ERROR,
                    asc::INTERNAL_TARGET_FAILURE,
                ))
            }
        }
    }

    /// Why media commands answer NOT READY: the backing failed to open, or the device later
    /// reported itself unavailable. `None` for a working LUN.
    pub fn not_ready(&self) -> Option<Unavailable> {
        self.device.unavailable().or(*self.failed.lock())
    }

    /// The device reported itself unavailable during a command: from now on the LUN answers
    /// NOT READY, and the change is logged once.
    pub fn mark_unavailable(&self, reason: Unavailable) {
        let mut failed = self.failed.lock();
        if failed.is_none() && self.device.unavailable().is_none() {
            tracing::error!(
                target = %self.target_name,
                lun = self.number,
                cause = %reason,
                "LUN failed; it answers NOT READY from now on"
            );
        }
        *failed = Some(reason);
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.device.block_size()
    }

    /// Logical blocks per physical block (a power of two).
    pub fn blocks_per_physical(&self) -> u32 {
        1 << self.options.physical_block_exponent
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.device.size() / u64::from(self.block_size().max(1))
    }

    /// True when the LUN is write protected (by its device or by SWP).
    pub fn read_only(&self) -> bool {
        self.device.read_only() || self.software_write_protected()
    }

    /// DATA PROTECT sense when the LUN is write protected, saying by what.
    pub fn check_writable(&self) -> Result<(), Sense> {
        if self.device.read_only() {
            Err(Sense::write_protected())
        } else if self.software_write_protected() {
            Err(Sense::new(key::DATA_PROTECT, asc::SOFTWARE_WRITE_PROTECTED))
        } else {
            Ok(())
        }
    }

    /// Current SWP bit of the Control mode page.
    pub fn software_write_protected(&self) -> bool {
        self.software_write_protect.load(Ordering::Relaxed)
    }

    /// Sets SWP (MODE SELECT).
    pub fn set_software_write_protect(&self, on: bool) {
        self.software_write_protect.store(on, Ordering::Relaxed);
    }

    /// True when UNMAP and WRITE SAME with UNMAP really deallocate (thin provisioning). SWP does
    /// not change this, so what the LUN advertises stays stable.
    pub fn can_unmap(&self) -> bool {
        self.options.thin && !self.device.read_only() && self.device.can_unmap()
    }

    /// True when the command `info` is one this LUN offers: REPORT SUPPORTED OPERATION CODES
    /// lists only these, and the others are refused as unsupported.
    pub fn offers(&self, info: &OpInfo) -> bool {
        match (info.opcode, info.service_action) {
            (opcode::UNMAP, _) => self.offers_unmap(),
            (opcode::SANITIZE, Some(sa))
                if sa == u16::from(sanitize::BLOCK_ERASE)
                    || sa == u16::from(sanitize::CRYPTO_ERASE) =>
            {
                self.device.erasable() && self.can_unmap()
            }
            (opcode::SANITIZE, _) => self.device.erasable(),
            _ => true,
        }
    }

    /// True when UNMAP is a supported command here: it deallocates, or the device is read-only
    /// and UNMAP answers WRITE PROTECTED (REPORT SUPPORTED OPERATION CODES lists it then).
    pub fn offers_unmap(&self) -> bool {
        self.device.read_only() || self.can_unmap()
    }

    /// Current D_SENSE bit of the Control mode page: CHECK CONDITION carries descriptor-format
    /// sense data.
    pub fn descriptor_sense(&self) -> bool {
        self.descriptor_sense.load(Ordering::Relaxed)
    }

    /// Sets D_SENSE (MODE SELECT).
    pub fn set_descriptor_sense(&self, on: bool) {
        self.descriptor_sense.store(on, Ordering::Relaxed);
    }

    /// Current WCE bit of the caching mode page.
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    /// Sets WCE (MODE SELECT).
    pub fn set_write_cache(&self, on: bool) {
        self.write_cache.store(on, Ordering::Relaxed);
    }
}

/// The persistent reservations `store` holds for the unit with `serial` (APTPL), or none; a
/// document that cannot be read is reported and left for the next change to replace.
fn restore_reservations(
    store: &dyn ReservationStore,
    serial: &str,
    target: &str,
    lun: u64,
) -> Reservations {
    let problem = match store.load(serial) {
        Ok(None) => return Reservations::persistable(),
        Ok(Some(document)) => match Reservations::restore(&document) {
            Ok(restored) => {
                tracing::info!(target, lun, "persistent reservations restored (APTPL)");
                return restored;
            }
            Err(e) => e,
        },
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        target,
        lun,
        problem = %problem,
        "saved persistent reservations ignored; the LUN starts without them"
    );
    Reservations::persistable()
}

//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.20): a copy manager that copies
//! blocks between this target's logical units without the data crossing the network (what
//! VMware's "full copy" and `sg_xcopy` offload).
//!
//! How it works, and the claims the tests check:
//! - The whole parameter list is parsed into a [`CopyPlan`] first ([`parse`], no I/O), then
//!   every target descriptor is resolved to a LUN and every segment is checked against its
//!   LUNs, before a byte moves: a list with any bad descriptor changes nothing.
//! - Target descriptors name a LUN the way VPD 0x83 does: the identification descriptor
//!   (type E4h) carries one of its designators (the NAA or the T10 vendor ID, associated with
//!   the logical unit). Only LUNs of this target can be named.
//! - Segments are block to block (02h, a count of blocks) or block to block with byte offsets
//!   (0Ah, a count of bytes from a byte offset in a block). A segment is copied in chunks of
//!   [`CHUNK_BYTES`], so one command holds one chunk of memory whatever the segment's length;
//!   a chunk that does not start or end on a destination block boundary is read, patched and
//!   written under the destination's read-modify-write lock, like COMPARE AND WRITE. Where
//!   source and destination overlap on one LUN the chunks go backwards when needed, so the
//!   result is that of a copy through a buffer (no smearing).
//! - A target moves at most [`MAX_CHUNKS_IN_FLIGHT`] chunks at once across all its copies, so
//!   copies an initiator piles up wait for a slot rather than each holding a buffer.
//! - Each chunk holds the LUN's atomic gate shared while it reads or writes, so a WRITE ATOMIC
//!   never sees half of a chunk; gates are taken one at a time, never nested.
//! - The copy runs as the issuing I_T nexus: reservations of the source and destination LUNs
//!   apply to it as to a READ and a WRITE of that nexus.
//! - The status of a copy whose LIST ID USAGE says "hold" is kept for RECEIVE COPY RESULTS
//!   (COPY STATUS) per I_T nexus, at most [`MAX_TRACKED`] per LUN (the oldest finished one is
//!   dropped first), until it has been read once or the nexus ends.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::{be16, be32, be64};
use super::lun::{LogicalUnit, MAX_TRANSFER_BLOCKS};
use super::reservations::Access;
use super::sbc::{read_error, write_error};
use super::sense::{asc, key, Asc, FieldPointer, Sense};
use super::{CommandFailure, Nexus, ScsiTarget};

/// Most target (CSCD) descriptors in one list (OPERATING PARAMETERS).
pub const MAX_TARGET_DESCRIPTORS: u16 = 8;
/// Most segment descriptors in one list.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// Most bytes of target plus segment descriptors in one list.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 4096;
/// Largest segment in bytes: what one READ may move (32 MiB of 512-byte blocks).
pub const MAX_SEGMENT_BYTES: u32 = MAX_TRANSFER_BLOCKS * 512;
/// Copies whose status one LUN keeps at a time, running or held for RECEIVE COPY RESULTS.
pub const MAX_TRACKED: usize = 64;
/// Bytes moved per read and write of a segment.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Chunks the copy manager of one target moves at once, whatever the number of EXTENDED COPY
/// commands running: bounds its buffers to this many [`CHUNK_BYTES`] (the session budgets do
/// not see them, since a copy sends no Data-In).
pub const MAX_CHUNKS_IN_FLIGHT: usize = 4;

/// Length of the parameter list header.
const HEADER_LEN: usize = 16;
/// Segment descriptor type codes this copy manager implements: block to block, and block to
/// block with byte offsets.
const BLOCK_TO_BLOCK: u8 = 0x02;
const BLOCK_TO_BLOCK_BYTES: u8 = 0x0a;
/// The identification descriptor target descriptor type code.
const IDENTIFICATION_TARGET: u8 = 0xe4;
/// Descriptor type codes listed in OPERATING PARAMETERS and VPD 0x8F.
const IMPLEMENTED_DESCRIPTORS: [u8; 3] =
    [BLOCK_TO_BLOCK, BLOCK_TO_BLOCK_BYTES, IDENTIFICATION_TARGET];

/// What happens to a copy's status once it ends (LIST ID USAGE, SPC-4 table 110).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: held for RECEIVE COPY RESULTS.
    Hold,
    /// 10b: not held, but the list identifier is in use while the copy runs.
    Discard,
    /// 11b: no list identifier at all.
    None,
}

/// A parsed and self-consistent EXTENDED COPY parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// LIST IDENTIFIER.
    pub list_id: u8,
    /// LIST ID USAGE.
    pub usage: ListIdUsage,
    /// Target descriptors, in list order (segments refer to them by index).
    pub targets: Vec<TargetDescriptor>,
    /// Segment descriptors, in list order.
    pub segments: Vec<Segment>,
}

/// An identification descriptor target descriptor: a LUN named by a designator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDescriptor {
    /// Offset of the descriptor in the parameter list (for field pointers).
    pub offset: usize,
    /// DESIGNATOR TYPE (VPD 0x83: 1 T10 vendor ID, 3 NAA, ...).
    pub designator_type: u8,
    /// ASSOCIATION (0: the logical unit).
    pub association: u8,
    /// The designator's bytes.
    pub designator: Vec<u8>,
    /// DISK BLOCK LENGTH the initiator assumes for the LUN.
    pub block_len: u32,
}

/// One segment descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the descriptor in the parameter list (for field pointers).
    pub offset: usize,
    /// SOURCE TARGET DESCRIPTOR INDEX.
    pub src: u16,
    /// DESTINATION TARGET DESCRIPTOR INDEX.
    pub dst: u16,
    /// How much to copy.
    pub length: SegmentLength,
    /// SOURCE LOGICAL BLOCK ADDRESS.
    pub src_lba: u64,
    /// DESTINATION LOGICAL BLOCK ADDRESS.
    pub dst_lba: u64,
}

/// The amount a segment copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentLength {
    /// Block to block (02h): `count` blocks of the source (or of the destination when
    /// `destination_blocks`, the DC bit).
    Blocks {
        /// BLOCK DEVICE NUMBER OF BLOCKS.
        count: u16,
        /// DC: the count is in destination blocks.
        destination_blocks: bool,
    },
    /// Block to block with offsets (0Ah): `count` bytes from byte `src_offset` of the source
    /// block to byte `dst_offset` of the destination block.
    Bytes {
        /// NUMBER OF BYTES.
        count: u32,
        /// SOURCE BYTE OFFSET.
        src_offset: u16,
        /// DESTINATION BYTE OFFSET.
        dst_offset: u16,
    },
}

/// COPY ABORTED with `code`, pointing at byte `at` of the parameter list.
fn aborted(code: Asc, at: usize) -> Sense {
    Sense {
        field: Some(param_pointer(at)),
        ..Sense::new(key::COPY_ABORTED, code)
    }
}

/// ILLEGAL REQUEST with `code`, pointing at byte `at` of the parameter list.
fn illegal_at(code: Asc, at: usize) -> Sense {
    Sense {
        field: Some(param_pointer(at)),
        ..Sense::illegal(code)
    }
}

/// A field pointer into the parameter list.
fn param_pointer(at: usize) -> FieldPointer {
    FieldPointer {
        in_cdb: false,
        byte: u16::try_from(at).unwrap_or(u16::MAX),
        bit: None,
    }
}

/// Parses an EXTENDED COPY parameter list (the Data-Out bytes). `Ok(None)` for an empty list,
/// which SPC-4 says copies nothing and is no error. Never panics on any input.
pub fn parse(list: &[u8]) -> Result<Option<CopyPlan>, Sense> {
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() < HEADER_LEN {
        return Err(Sense::parameter_list_length());
    }
    let list_id = list[0];
    let usage = match (list[1] >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::Discard,
        0b11 => ListIdUsage::None,
        _ => return Err(Sense::invalid_param_field(1, Some(4))),
    };
    if usage == ListIdUsage::None && list_id != 0 {
        return Err(Sense::invalid_param_field(0, None));
    }
    let target_len = usize::from(be16(list, 2));
    let segment_len = be32(list, 8) as usize;
    let inline_len = be32(list, 12);
    if target_len as u64 + segment_len as u64 > u64::from(MAX_DESCRIPTOR_LIST_LENGTH) {
        return Err(Sense::parameter_list_length());
    }
    if inline_len != 0 {
        // No segment type that uses inline data is implemented (MAXIMUM INLINE DATA LENGTH 0).
        return Err(Sense::invalid_param_field(12, None));
    }
    let end = HEADER_LEN + target_len + segment_len;
    if end > list.len() {
        return Err(Sense::parameter_list_length());
    }
    let targets = parse_targets(list, HEADER_LEN, HEADER_LEN + target_len)?;
    let segments = parse_segments(list, HEADER_LEN + target_len, end)?;
    Ok(Some(CopyPlan {
        list_id,
        usage,
        targets,
        segments,
    }))
}

/// Target descriptors in `list[start..end]`: counted first (TOO MANY before anything else),
/// then each checked.
fn parse_targets(list: &[u8], start: usize, end: usize) -> Result<Vec<TargetDescriptor>, Sense> {
    let mut offsets = Vec::new();
    let mut at = start;
    while at < end {
        // IPv6 and IP copy service descriptors are 64 bytes; every other type is 32.
        let len = if matches!(list[at], 0xea | 0xeb) {
            64
        } else {
            32
        };
        if at + len > end {
            return Err(Sense::invalid_param_field(2, None));
        }
        offsets.push(at);
        at += len;
        if offsets.len() > usize::from(MAX_TARGET_DESCRIPTORS) {
            return Err(illegal_at(asc::TOO_MANY_TARGET_DESCRIPTORS, at - len));
        }
    }
    offsets
        .into_iter()
        .map(|at| {
            let d = &list[at..at + 32];
            if d[0] != IDENTIFICATION_TARGET {
                return Err(illegal_at(asc::UNSUPPORTED_TARGET_DESCRIPTOR, at));
            }
            // LU ID TYPE and NUL are ignored (SPC-4 made them obsolete); the peripheral device
            // type must be a block device.
            if d[1] & 0x1f != 0 {
                return Err(Sense::invalid_param_field((at + 1) as u16, Some(4)));
            }
            let designator_len = usize::from(d[7]);
            if designator_len > 20 {
                return Err(Sense::invalid_param_field((at + 7) as u16, None));
            }
            Ok(TargetDescriptor {
                offset: at,
                designator_type: d[5] & 0x0f,
                association: (d[5] >> 4) & 0x03,
                designator: d[8..8 + designator_len].to_vec(),
                block_len: u32::from_be_bytes([0, d[29], d[30], d[31]]),
            })
        })
        .collect()
}

/// Segment descriptors in `list[start..end]`: walked by their own lengths and counted first,
/// then each decoded.
fn parse_segments(list: &[u8], start: usize, end: usize) -> Result<Vec<Segment>, Sense> {
    let mut found = Vec::new();
    let mut at = start;
    while at < end {
        if at + 4 > end {
            return Err(Sense::invalid_param_field(8, None));
        }
        let next = at + 4 + usize::from(be16(list, at + 2));
        if next > end {
            return Err(Sense::invalid_param_field((at + 2) as u16, None));
        }
        found.push(at);
        if found.len() > usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(illegal_at(asc::TOO_MANY_SEGMENT_DESCRIPTORS, at));
        }
        at = next;
    }
    found
        .into_iter()
        .map(|at| {
            let d = &list[at..];
            let (kind, body) = (d[0], usize::from(be16(d, 2)));
            let wanted = match kind {
                BLOCK_TO_BLOCK => 0x18,
                BLOCK_TO_BLOCK_BYTES => 0x1c,
                _ => return Err(illegal_at(asc::UNSUPPORTED_SEGMENT_DESCRIPTOR, at)),
            };
            if body != wanted {
                return Err(Sense::invalid_param_field((at + 2) as u16, None));
            }
            let length = if kind == BLOCK_TO_BLOCK {
                SegmentLength::Blocks {
                    count: be16(d, 10),
                    destination_blocks: d[1] & 0x02 != 0,
                }
            } else {
                SegmentLength::Bytes {
                    count: be32(d, 8),
                    src_offset: be16(d, 28),
                    dst_offset: be16(d, 30),
                }
            };
            Ok(Segment {
                offset: at,
                src: be16(d, 4),
                dst: be16(d, 6),
                length,
                src_lba: be64(d, 12),
                dst_lba: be64(d, 20),
            })
        })
        .collect()
}

/// Where one checked segment copies: byte ranges on resolved LUNs.
struct Move {
    src: Arc<LogicalUnit>,
    from: u64,
    dst: Arc<LogicalUnit>,
    to: u64,
    len: u64,
    /// Offset of the segment descriptor (for the sense of a failure while copying).
    offset: usize,
}

/// How far a copy got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    segments: u16,
    bytes: u64,
}

/// The state of one tracked copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    Running,
    Done { ok: bool, progress: Progress },
}

#[derive(Debug, Clone)]
struct Tracked {
    nexus: Nexus,
    list_id: u8,
    hold: bool,
    state: CopyState,
}

/// The copies a LUN's copy manager runs or holds the status of, per I_T nexus and list id.
#[derive(Debug, Default)]
pub struct CopyResults {
    tracked: Vec<Tracked>,
}

impl CopyResults {
    /// Notes that `nexus` starts copy `list_id`: OPERATION IN PROGRESS when that nexus runs a
    /// copy with this id already, INSUFFICIENT RESOURCES when [`MAX_TRACKED`] copies run. A
    /// held status of an earlier copy with the same id is replaced.
    fn begin(&mut self, nexus: &Nexus, list_id: u8, hold: bool) -> Result<(), Sense> {
        if let Some(i) = self.position(nexus, list_id) {
            if self.tracked[i].state == CopyState::Running {
                return Err(Sense::illegal(asc::OPERATION_IN_PROGRESS));
            }
            self.tracked.remove(i);
        }
        if self.tracked.len() >= MAX_TRACKED {
            let Some(oldest_done) = self
                .tracked
                .iter()
                .position(|t| t.state != CopyState::Running)
            else {
                return Err(Sense::illegal(asc::INSUFFICIENT_RESOURCES));
            };
            self.tracked.remove(oldest_done);
        }
        self.tracked.push(Tracked {
            nexus: nexus.clone(),
            list_id,
            hold,
            state: CopyState::Running,
        });
        Ok(())
    }

    /// Copy `list_id` of `nexus` ended: kept if its status is to be held, else forgotten.
    fn finish(&mut self, nexus: &Nexus, list_id: u8, ok: bool, progress: Progress) {
        if let Some(i) = self.position(nexus, list_id) {
            if self.tracked[i].hold {
                self.tracked[i].state = CopyState::Done { ok, progress };
            } else {
                self.tracked.remove(i);
            }
        }
    }

    /// The nexus has ended: its copies' statuses go with it.
    pub fn nexus_gone(&mut self, nexus: &Nexus) {
        self.tracked.retain(|t| &t.nexus != nexus);
    }

    fn position(&self, nexus: &Nexus, list_id: u8) -> Option<usize> {
        self.tracked
            .iter()
            .position(|t| &t.nexus == nexus && t.list_id == list_id)
    }

    /// RECEIVE COPY RESULTS, COPY STATUS (SPC-4 6.20.2) of copy `list_id` of `nexus`; INVALID
    /// FIELD IN CDB when there is no such copy. A finished copy's status is reported once.
    pub fn copy_status(&mut self, nexus: &Nexus, list_id: u8) -> Result<Bytes, Sense> {
        let Some(i) = self
            .position(nexus, list_id)
            .filter(|&i| self.tracked[i].hold)
        else {
            return Err(Sense::invalid_cdb_field(2, None));
        };
        let (status, progress) = match self.tracked[i].state {
            CopyState::Running => (0x00, Progress::default()),
            CopyState::Done { ok, progress } => {
                self.tracked.remove(i);
                (if ok { 0x01 } else { 0x02 }, progress)
            }
        };
        // The transfer count in the smallest unit (bytes, KiB, MiB, ...) that fits 32 bits.
        let (mut units, mut count) = (0u8, progress.bytes);
        while count > u64::from(u32::MAX) {
            units = if units == 0 { 0xf1 } else { units + 1 };
            count >>= 10;
        }
        let mut d = BytesMut::with_capacity(12);
        d.put_u32(8);
        d.put_u8(status);
        d.put_u16(progress.segments);
        d.put_u8(units);
        d.put_u32(count as u32);
        Ok(d.freeze())
    }
}

/// RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 6.20.4): this copy manager's limits.
pub fn operating_parameters() -> Bytes {
    let mut d = BytesMut::zeroed(44);
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
    d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    // Maximum inline data, held data limit and stream transfer size stay 0.
    d[34..36].copy_from_slice(&(MAX_TRACKED as u16).to_be_bytes());
    d[36] = MAX_TRACKED as u8;
    // Data, inline and held data granularity 2^0: byte offsets are allowed (segment 0Ah).
    d[43] = IMPLEMENTED_DESCRIPTORS.len() as u8;
    d.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    let available = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&available.to_be_bytes());
    d.freeze()
}

/// VPD 0x8F, third-party copy (SPC-4 7.8.17), without its 4-byte page header: the supported
/// commands, the parameter data, the supported descriptors and the general copy operations
/// descriptors.
pub fn third_party_copy_vpd() -> Bytes {
    use super::cdb::{opcode, service_action};
    let mut page = BytesMut::new();
    // Supported commands: EXTENDED COPY (LID1), RECEIVE COPY RESULTS (two service actions).
    let commands: [(u8, &[u8]); 2] = [
        (opcode::EXTENDED_COPY, &[service_action::EXTENDED_COPY_LID1]),
        (
            opcode::RECEIVE_COPY_RESULTS,
            &[
                service_action::copy_results::COPY_STATUS,
                service_action::copy_results::OPERATING_PARAMETERS,
            ],
        ),
    ];
    let mut list = Vec::new();
    for (code, actions) in commands {
        list.push(code);
        list.push(actions.len() as u8);
        list.extend_from_slice(actions);
    }
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    push_descriptor(&mut page, 0x0001, &body);
    // Parameter data.
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    body[6..8].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    push_descriptor(&mut page, 0x0004, &body);
    // Supported descriptors.
    let mut body = vec![IMPLEMENTED_DESCRIPTORS.len() as u8];
    body.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    push_descriptor(&mut page, 0x0008, &body);
    // General copy operations.
    let mut body = vec![0u8; 28];
    body[0..4].copy_from_slice(&(MAX_TRACKED as u32).to_be_bytes());
    body[4..8].copy_from_slice(&(MAX_TRACKED as u32).to_be_bytes());
    body[8..12].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    push_descriptor(&mut page, 0x8001, &body);
    page.freeze()
}

/// Appends one third-party copy descriptor: type, length, `body` padded to a multiple of 4.
fn push_descriptor(page: &mut BytesMut, kind: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    page.put_u16(kind);
    page.put_u16(padded as u16);
    page.put_slice(body);
    page.put_bytes(0, padded - body.len());
}

impl ScsiTarget {
    /// EXTENDED COPY received by `lun` from `nexus`, with parameter list `list`.
    pub(super) async fn extended_copy(
        &self,
        lun: &LogicalUnit,
        nexus: &Nexus,
        list: &[u8],
    ) -> Result<(), CommandFailure> {
        let Some(plan) = parse(list)? else {
            return Ok(());
        };
        let tracked = plan.usage != ListIdUsage::None;
        if tracked {
            let hold = plan.usage == ListIdUsage::Hold;
            lun.state.lock().copies.begin(nexus, plan.list_id, hold)?;
        }
        let mut progress = Progress::default();
        let result = self.run_copy(nexus, &plan, &mut progress).await;
        if tracked {
            lun.state
                .lock()
                .copies
                .finish(nexus, plan.list_id, result.is_ok(), progress);
        }
        if let Err(CommandFailure::Check(sense)) = &result {
            tracing::debug!(
                target = %lun.target_name,
                lun = lun.number,
                initiator = %nexus.initiator_name,
                key = sense.key,
                asc = sense.asc.0,
                ascq = sense.asc.1,
                segments_done = progress.segments,
                "EXTENDED COPY failed"
            );
        }
        result
    }

    /// Resolves, checks and copies `plan`'s segments in order, counting them in `progress`.
    async fn run_copy(
        &self,
        nexus: &Nexus,
        plan: &CopyPlan,
        progress: &mut Progress,
    ) -> Result<(), CommandFailure> {
        let luns = plan
            .targets
            .iter()
            .map(|t| self.resolve(t))
            .collect::<Result<Vec<_>, Sense>>()?;
        let moves = plan
            .segments
            .iter()
            .map(|s| check_segment(nexus, s, &luns))
            .collect::<Result<Vec<_>, CommandFailure>>()?;
        for m in moves {
            copy_range(&m, &self.copy_slots).await.map_err(|sense| {
                // A copy target failed under way: the copy manager reports it as its own
                // failure, pointing at the segment.
                tracing::debug!(asc = sense.asc.0, ascq = sense.asc.1, "copy target failed");
                aborted(asc::THIRD_PARTY_DEVICE_FAILURE, m.offset)
            })?;
            progress.segments += 1;
            progress.bytes += m.len;
        }
        Ok(())
    }

    /// The LUN of this target a target descriptor names, with the block size it assumes.
    fn resolve(&self, t: &TargetDescriptor) -> Result<Arc<LogicalUnit>, Sense> {
        let luns = self.luns.read();
        let lun = luns
            .values()
            .find(|lun| t.association == 0 && designates(lun, t.designator_type, &t.designator))
            .cloned()
            .ok_or_else(|| aborted(asc::UNREACHABLE_COPY_TARGET, t.offset + 4))?;
        if lun.block_size() != t.block_len {
            return Err(Sense::invalid_param_field((t.offset + 29) as u16, None));
        }
        Ok(lun)
    }
}

/// True when `designator` of type `kind` is one of `lun`'s VPD 0x83 logical unit designators.
fn designates(lun: &LogicalUnit, kind: u8, designator: &[u8]) -> bool {
    match kind {
        0x3 => designator == lun.naa,
        0x1 => {
            let serial = lun.serial.as_bytes();
            let serial = &serial[..serial.len().min(200)];
            designator.len() == 8 + serial.len()
                && designator[..8] == super::identity::VENDOR[..]
                && &designator[8..] == serial
        }
        _ => false,
    }
}

/// Checks one segment against its LUNs: indexes, lengths, ranges, readiness, write protection
/// and reservations; the byte ranges it copies.
fn check_segment(
    nexus: &Nexus,
    s: &Segment,
    luns: &[Arc<LogicalUnit>],
) -> Result<Move, CommandFailure> {
    let lun_at = |index: u16, field: usize| {
        luns.get(usize::from(index))
            .cloned()
            .ok_or_else(|| aborted(asc::UNREACHABLE_COPY_TARGET, s.offset + field))
    };
    let src = lun_at(s.src, 4)?;
    let dst = lun_at(s.dst, 6)?;
    let (src_bs, dst_bs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
    let (len, src_skip, dst_skip) = match s.length {
        SegmentLength::Blocks {
            count,
            destination_blocks,
        } => {
            let unit = if destination_blocks { dst_bs } else { src_bs };
            (u64::from(count) * unit, 0, 0)
        }
        SegmentLength::Bytes {
            count,
            src_offset,
            dst_offset,
        } => (
            u64::from(count),
            u64::from(src_offset),
            u64::from(dst_offset),
        ),
    };
    if len > u64::from(MAX_SEGMENT_BYTES) {
        return Err(Sense::invalid_param_field((s.offset + 8) as u16, None).into());
    }
    if matches!(s.length, SegmentLength::Blocks { .. }) && (len % src_bs != 0 || len % dst_bs != 0)
    {
        // Whole blocks at both ends, or there would be residue (CAT handling not offered).
        return Err(aborted(asc::NO_ADDITIONAL_SENSE, s.offset + 10).into());
    }
    let from = byte_span(&src, s.src_lba, src_skip, len)
        .ok_or(aborted(asc::NO_ADDITIONAL_SENSE, s.offset + 12))?;
    let to = byte_span(&dst, s.dst_lba, dst_skip, len)
        .ok_or(aborted(asc::NO_ADDITIONAL_SENSE, s.offset + 20))?;
    for (lun, access, field) in [(&src, Access::Read, 4), (&dst, Access::Write, 6)] {
        ready(lun).map_err(|_| aborted(asc::COPY_TARGET_NOT_REACHABLE, s.offset + field))?;
        if lun.state.lock().reservations.conflicts(nexus, access) {
            return Err(CommandFailure::Conflict);
        }
    }
    if len > 0 {
        dst.check_writable()
            .map_err(|sense| aborted(sense.asc, s.offset + 6))?;
    }
    Ok(Move {
        src,
        from,
        dst,
        to,
        len,
        offset: s.offset,
    })
}

/// The byte offset of `len` bytes from byte `skip` of block `lba`, when they lie in `lun`.
fn byte_span(lun: &LogicalUnit, lba: u64, skip: u64, len: u64) -> Option<u64> {
    let bs = u64::from(lun.block_size());
    let start = lba.checked_mul(bs)?.checked_add(skip)?;
    let end = start.checked_add(len)?;
    (end <= lun.blocks() * bs).then_some(start)
}

/// NOT READY conditions of a LUN the copy reads or writes: a backing that is unavailable, an
/// ejected medium, a sanitize running or failed.
fn ready(lun: &LogicalUnit) -> Result<(), Sense> {
    if let Some(reason) = lun.not_ready() {
        return Err(Sense::not_ready(reason));
    }
    let state = lun.state.lock();
    if lun.options.removable {
        state.medium.check_present()?;
    }
    state.sanitize.check_idle()?;
    state.sanitize.check_not_failed()
}

/// Copies one checked segment in chunks; backwards when it overlaps itself on one LUN with the
/// destination after the source, so every byte is read before it is overwritten.
async fn copy_range(m: &Move, slots: &tokio::sync::Semaphore) -> Result<(), Sense> {
    let chunks = m.len.div_ceil(CHUNK_BYTES);
    let backwards = Arc::ptr_eq(&m.src, &m.dst) && m.to > m.from && m.to < m.from + m.len;
    for i in 0..chunks {
        let i = if backwards { chunks - 1 - i } else { i };
        let at = i * CHUNK_BYTES;
        let n = (m.len - at).min(CHUNK_BYTES);
        // The semaphore is never closed; a slot is held until the chunk is written.
        let _slot = slots.acquire().await.ok();
        let data = read_bytes(&m.src, m.from + at, n).await?;
        write_bytes(&m.dst, m.to + at, data).await?;
    }
    Ok(())
}

/// `len` bytes at byte `at` of `lun`, read as the whole blocks that hold them.
async fn read_bytes(lun: &LogicalUnit, at: u64, len: u64) -> Result<Bytes, Sense> {
    let _gate = lun.atomic_gate.read().await;
    let (start, blocks) = read_covering(lun, at, len).await?;
    let skip = (at - start) as usize;
    Ok(blocks.slice(skip..skip + len as usize))
}

/// The whole blocks of `lun` that hold `len` bytes at byte `at`, and the byte offset of the
/// first. The caller holds the atomic gate.
async fn read_covering(lun: &LogicalUnit, at: u64, len: u64) -> Result<(u64, Bytes), Sense> {
    let bs = u64::from(lun.block_size());
    let start = at / bs * bs;
    let span = (at + len).div_ceil(bs) * bs - start;
    let blocks = lun
        .device
        .read(start, span as usize)
        .await
        .map_err(|e| read_error(lun, start, span, e))?;
    Ok((start, blocks))
}

/// Writes `data` at byte `at` of `lun`: directly when it covers whole blocks, else by reading
/// the blocks it touches, patching them and writing them back, under the LUN's
/// read-modify-write lock.
async fn write_bytes(lun: &LogicalUnit, at: u64, data: Bytes) -> Result<(), Sense> {
    let bs = u64::from(lun.block_size());
    let len = data.len() as u64;
    let fua = !lun.write_cache_enabled();
    let write = |offset: u64, data: Bytes| async move {
        let n = data.len() as u64;
        lun.device
            .write(offset, data, fua)
            .await
            .map_err(|e| write_error(lun, "write", offset, n, e))
    };
    if at % bs == 0 && len % bs == 0 {
        let _gate = lun.atomic_gate.read().await;
        return write(at, data).await;
    }
    let _rmw = lun.rmw_lock.lock().await;
    let _gate = lun.atomic_gate.read().await;
    let (start, old) = read_covering(lun, at, len).await?;
    let mut blocks = BytesMut::from(&old[..]);
    let skip = (at - start) as usize;
    blocks[skip..skip + data.len()].copy_from_slice(&data);
    write(start, blocks.freeze()).await
}

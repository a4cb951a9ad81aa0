//! Parsing a CDB into a closed [`Command`] enum.
//!
//! Every supported command has one entry in [`SUPPORTED`] with its CDB usage bitmap (the bits a
//! client may set). Parsing rejects any other set bit with INVALID FIELD IN CDB pointing at it,
//! and REPORT SUPPORTED OPERATION CODES reports the same table, so what we advertise is exactly
//! what we accept.

use super::sense::Sense;

/// One supported operation code (and service action) with its CDB usage bitmap.
#[derive(Debug)]
pub struct OpInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that carry one in byte 1 bits 4..0.
    pub service_action: Option<u16>,
    /// CDB usage data (SPC-4 6.35.3): byte 0 is the opcode, then a mask per CDB byte.
    pub usage: &'static [u8],
}

const fn op(opcode: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action: None,
        usage,
    }
}

const fn op_sa(opcode: u8, sa: u16, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action: Some(sa),
        usage,
    }
}

/// Opcodes whose byte 1 bits 4..0 hold a service action.
const SERVICE_ACTION_OPCODES: [u8; 4] = [0x5e, 0x5f, 0x9e, 0xa3];

/// Every command this target implements, sorted by opcode then service action.
pub static SUPPORTED: &[OpInfo] = &[
    op(0x00, &[0x00, 0, 0, 0, 0, 0]),             // TEST UNIT READY
    op(0x03, &[0x03, 0x00, 0, 0, 0xff, 0]),       // REQUEST SENSE (fixed format only)
    op(0x08, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0]), // READ(6)
    op(0x0a, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0]), // WRITE(6)
    op(0x12, &[0x12, 0x01, 0xff, 0xff, 0xff, 0]), // INQUIRY
    op(0x15, &[0x15, 0x10, 0, 0, 0xff, 0]),       // MODE SELECT(6)
    op(0x16, &[0x16, 0, 0, 0, 0, 0]),             // RESERVE(6)
    op(0x17, &[0x17, 0, 0, 0, 0, 0]),             // RELEASE(6)
    op(0x1a, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0]), // MODE SENSE(6)
    op(0x1b, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),    // START STOP UNIT
    op(0x1e, &[0x1e, 0, 0, 0, 0x03, 0]),          // PREVENT ALLOW MEDIUM REMOVAL
    op(0x25, &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0]), // READ CAPACITY(10)
    op(
        0x28,
        &[0x28, 0x1e, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // READ(10)
    op(
        0x2a,
        &[0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // WRITE(10)
    op(
        0x2e,
        &[0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // WRITE AND VERIFY(10)
    op(
        0x2f,
        &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // VERIFY(10)
    op(
        0x34,
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // PRE-FETCH(10)
    op(
        0x35,
        &[0x35, 0x06, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // SYNCHRONIZE CACHE(10)
    op(
        0x41,
        &[0x41, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
    ), // WRITE SAME(10)
    op(0x42, &[0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0]), // UNMAP
    op(0x55, &[0x55, 0x10, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), // MODE SELECT(10)
    op(0x56, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // RESERVE(10)
    op(0x57, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // RELEASE(10)
    op(0x5a, &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0]), // MODE SENSE(10)
    op_sa(0x5e, 0x00, &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), // PR IN: READ KEYS
    op_sa(0x5e, 0x01, &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), // PR IN: READ RESERVATION
    op_sa(0x5e, 0x02, &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), // PR IN: REPORT CAPABILITIES
    op_sa(0x5e, 0x03, &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0]), // PR IN: READ FULL STATUS
    op_sa(
        0x5f,
        0x00,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: REGISTER
    op_sa(
        0x5f,
        0x01,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: RESERVE
    op_sa(
        0x5f,
        0x02,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: RELEASE
    op_sa(
        0x5f,
        0x03,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: CLEAR
    op_sa(
        0x5f,
        0x04,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: PREEMPT
    op_sa(
        0x5f,
        0x05,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: PREEMPT AND ABORT
    op_sa(
        0x5f,
        0x06,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ), // PR OUT: REGISTER AND IGNORE
    op(
        0x88,
        &[
            0x88, 0x1e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // READ(16)
    op(
        0x89,
        &[
            0x89, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0,
        ],
    ), // COMPARE AND WRITE
    op(
        0x8a,
        &[
            0x8a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // WRITE(16)
    op(
        0x8b,
        &[
            0x8b, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // ORWRITE(16)
    op(
        0x8e,
        &[
            0x8e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // WRITE AND VERIFY(16)
    op(
        0x8f,
        &[
            0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // VERIFY(16)
    op(
        0x90,
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // PRE-FETCH(16)
    op(
        0x91,
        &[
            0x91, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // SYNCHRONIZE CACHE(16)
    op(
        0x93,
        &[
            0x93, 0x19, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0,
        ],
    ), // WRITE SAME(16)
    op_sa(
        0x9e,
        0x10,
        &[
            0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x01, 0,
        ],
    ), // READ CAPACITY(16)
    op_sa(
        0x9e,
        0x12,
        &[
            0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0,
        ],
    ), // GET LBA STATUS
    op(
        0xa0,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ), // REPORT LUNS
    op_sa(
        0xa3,
        0x0c,
        &[
            0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ), // REPORT SUPPORTED OPCODES
    op(
        0xa8,
        &[
            0xa8, 0x1e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    ), // READ(12)
    op(
        0xaa,
        &[
            0xaa, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    ), // WRITE(12)
    op(
        0xae,
        &[
            0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    ), // WRITE AND VERIFY(12)
    op(
        0xaf,
        &[
            0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0,
        ],
    ), // VERIFY(12)
];

/// Finds the table entry for `opcode` (and `service_action` when the opcode has one).
pub fn lookup(opcode: u8, service_action: u16) -> Option<&'static OpInfo> {
    SUPPORTED.iter().find(|info| {
        info.opcode == opcode && info.service_action.map_or(true, |sa| sa == service_action)
    })
}

/// True when `opcode` carries a service action in byte 1.
pub fn has_service_action(opcode: u8) -> bool {
    SERVICE_ACTION_OPCODES.contains(&opcode)
}

/// Address, length and cache hints shared by the block data commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks.
    pub blocks: u32,
    /// Disable page out (a cache hint we accept and ignore).
    pub dpo: bool,
    /// Force unit access: the data must be durable before status.
    pub fua: bool,
    /// CDB byte of the transfer length field (for INVALID FIELD IN CDB pointers).
    pub length_byte: u16,
}

/// A parsed CDB. Only commands in [`SUPPORTED`] parse to anything but `Unsupported`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor-format sense requested.
        desc: bool,
        /// Allocation length.
        alloc_len: u32,
    },
    /// INQUIRY.
    Inquiry {
        /// Vital product data requested.
        evpd: bool,
        /// VPD page code.
        page: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MODE SENSE(6) / MODE SENSE(10).
    ModeSense {
        /// The 10-byte form (8-byte header, LLBAA allowed).
        long: bool,
        /// Disable block descriptors.
        dbd: bool,
        /// Long LBA block descriptors accepted.
        llbaa: bool,
        /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
        pc: u8,
        /// Page code (0x3f = all).
        page: u8,
        /// Subpage code (0xff = all).
        subpage: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MODE SELECT(6) / MODE SELECT(10).
    ModeSelect {
        /// The 10-byte form.
        long: bool,
        /// Page format.
        pf: bool,
        /// Save pages.
        sp: bool,
        /// Parameter list length.
        param_len: u32,
    },
    /// RESERVE(6) / RESERVE(10).
    Reserve,
    /// RELEASE(6) / RELEASE(10).
    Release,
    /// START STOP UNIT.
    StartStopUnit {
        /// Load/eject.
        loej: bool,
        /// Start.
        start: bool,
        /// Power condition field.
        power_condition: u8,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow {
        /// The PREVENT field.
        prevent: u8,
    },
    /// READ CAPACITY(10).
    ReadCapacity10 {
        /// Logical block address field (must be 0 unless PMI).
        lba: u32,
        /// Partial medium indicator.
        pmi: bool,
    },
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ(6/10/12/16).
    Read(Extent),
    /// WRITE(6/10/12/16).
    Write(Extent),
    /// WRITE AND VERIFY(10/12/16).
    WriteAndVerify(Extent),
    /// VERIFY(10/12/16).
    Verify {
        /// The range to verify.
        extent: Extent,
        /// BYTCHK: 0 medium check only, 1 compare, 3 compare one block against each.
        bytchk: u8,
    },
    /// ORWRITE(16).
    OrWrite(Extent),
    /// COMPARE AND WRITE.
    CompareAndWrite(Extent),
    /// SYNCHRONIZE CACHE(10/16).
    SyncCache {
        /// First block (range checked only).
        lba: u64,
        /// Number of blocks (0 = to the end).
        blocks: u32,
    },
    /// PRE-FETCH(10/16).
    PreFetch {
        /// First block.
        lba: u64,
        /// Number of blocks (0 = to the end).
        blocks: u32,
    },
    /// WRITE SAME(10/16).
    WriteSame {
        /// The range written.
        extent: Extent,
        /// Deallocate instead of writing when possible.
        unmap: bool,
        /// Anchor (not supported; rejected).
        anchor: bool,
        /// No data-out buffer: write zeros.
        ndob: bool,
    },
    /// UNMAP.
    Unmap {
        /// ANCHOR (not supported; rejected).
        anchor: bool,
        /// Parameter list length.
        param_len: u32,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting block.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action.
        action: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action.
        action: u8,
        /// Scope (byte 2 bits 7..4).
        scope: u8,
        /// Reservation type (byte 2 bits 3..0).
        pr_type: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT.
        select: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// Return command timeouts descriptors.
        rctd: bool,
        /// Reporting options.
        options: u8,
        /// Requested operation code.
        opcode: u8,
        /// Requested service action.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// Anything else: answered with INVALID COMMAND OPERATION CODE.
    Unsupported {
        /// The operation code.
        opcode: u8,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Block address and length from a 10-, 12- or 16-byte data CDB, with DPO/FUA from byte 1.
fn extent(c: &[u8]) -> Extent {
    let (lba, blocks, length_byte) = match c.len() {
        10 => (u64::from(be32(c, 2)), u32::from(be16(c, 7)), 7),
        12 => (u64::from(be32(c, 2)), be32(c, 6), 6),
        _ => (be64(c, 2), be32(c, 10), 10),
    };
    Extent {
        lba,
        blocks,
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
        length_byte,
    }
}

/// Parses a CDB. `Ok(Command::Unsupported)` for unknown opcodes; `Err` (ILLEGAL REQUEST with a
/// field pointer) for a known opcode with a bad field, or an unknown service action.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let sa = if has_service_action(opcode) {
        match cdb.get(1) {
            Some(b) => u16::from(b & 0x1f),
            None => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
    } else {
        0
    };
    let Some(info) = lookup(opcode, sa) else {
        if has_service_action(opcode) && SUPPORTED.iter().any(|i| i.opcode == opcode) {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        return Ok(Command::Unsupported { opcode });
    };
    let Some(c) = cdb.get(..info.usage.len()) else {
        // Shorter than the command's CDB length: the transport lost bytes.
        return Err(Sense::invalid_cdb_field(0, None));
    };
    check_usage(c, info.usage)?;
    Ok(decode(c, sa))
}

/// Rejects any bit outside the usage bitmap, pointing at the highest offending bit.
fn check_usage(cdb: &[u8], usage: &[u8]) -> Result<(), Sense> {
    for (index, (&byte, &mask)) in cdb.iter().zip(usage).enumerate().skip(1) {
        let bad = byte & !mask;
        if bad != 0 {
            let bit = 7 - bad.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(index as u16, Some(bit)));
        }
    }
    Ok(())
}

/// Decodes a CDB that has the right length and passed the usage check.
fn decode(c: &[u8], sa: u16) -> Command {
    match c[0] {
        0x00 => Command::TestUnitReady,
        0x03 => Command::RequestSense {
            desc: c[1] & 1 != 0,
            alloc_len: u32::from(c[4]),
        },
        0x08 | 0x0a => {
            // READ(6)/WRITE(6): a transfer length of 0 means 256 blocks.
            let blocks = match c[4] {
                0 => 256,
                n => u32::from(n),
            };
            let e = Extent {
                lba: u64::from(be32(c, 0) & 0x001f_ffff),
                blocks,
                dpo: false,
                fua: false,
                length_byte: 4,
            };
            if c[0] == 0x08 {
                Command::Read(e)
            } else {
                Command::Write(e)
            }
        }
        0x12 => Command::Inquiry {
            evpd: c[1] & 1 != 0,
            page: c[2],
            alloc_len: u32::from(be16(c, 3)),
        },
        0x15 | 0x55 => Command::ModeSelect {
            long: c[0] == 0x55,
            pf: c[1] & 0x10 != 0,
            sp: c[1] & 0x01 != 0,
            param_len: if c[0] == 0x55 {
                u32::from(be16(c, 7))
            } else {
                u32::from(c[4])
            },
        },
        0x16 | 0x56 => Command::Reserve,
        0x17 | 0x57 => Command::Release,
        0x1a | 0x5a => Command::ModeSense {
            long: c[0] == 0x5a,
            dbd: c[1] & 0x08 != 0,
            llbaa: c[1] & 0x10 != 0,
            pc: c[2] >> 6,
            page: c[2] & 0x3f,
            subpage: c[3],
            alloc_len: if c[0] == 0x5a {
                u32::from(be16(c, 7))
            } else {
                u32::from(c[4])
            },
        },
        0x1b => Command::StartStopUnit {
            loej: c[4] & 0x02 != 0,
            start: c[4] & 0x01 != 0,
            power_condition: c[4] >> 4,
        },
        0x1e => Command::PreventAllow { prevent: c[4] & 3 },
        0x25 => Command::ReadCapacity10 {
            lba: be32(c, 2),
            pmi: c[8] & 1 != 0,
        },
        0x28 | 0x88 | 0xa8 => Command::Read(extent(c)),
        0x2a | 0x8a | 0xaa => Command::Write(extent(c)),
        0x2e | 0x8e | 0xae => Command::WriteAndVerify(extent(c)),
        0x2f | 0x8f | 0xaf => Command::Verify {
            extent: extent(c),
            bytchk: (c[1] >> 1) & 3,
        },
        0x34 | 0x90 => {
            let e = extent(c);
            Command::PreFetch {
                lba: e.lba,
                blocks: e.blocks,
            }
        }
        0x35 | 0x91 => {
            let e = extent(c);
            Command::SyncCache {
                lba: e.lba,
                blocks: e.blocks,
            }
        }
        0x41 | 0x93 => Command::WriteSame {
            extent: Extent {
                dpo: false,
                fua: false,
                ..extent(c)
            },
            unmap: c[1] & 0x08 != 0,
            anchor: c[1] & 0x10 != 0,
            ndob: c[0] == 0x93 && c[1] & 0x01 != 0,
        },
        0x42 => Command::Unmap {
            anchor: c[1] & 0x01 != 0,
            param_len: u32::from(be16(c, 7)),
        },
        0x5e => Command::PersistentReserveIn {
            action: sa as u8,
            alloc_len: u32::from(be16(c, 7)),
        },
        0x5f => Command::PersistentReserveOut {
            action: sa as u8,
            scope: c[2] >> 4,
            pr_type: c[2] & 0x0f,
            param_len: be32(c, 5),
        },
        0x89 => Command::CompareAndWrite(Extent {
            blocks: u32::from(c[13]),
            length_byte: 13,
            ..extent(c)
        }),
        0x8b => Command::OrWrite(extent(c)),
        0x9e if sa == 0x10 => Command::ReadCapacity16 {
            alloc_len: be32(c, 10),
        },
        0x9e => Command::GetLbaStatus {
            lba: be64(c, 2),
            alloc_len: be32(c, 10),
        },
        0xa0 => Command::ReportLuns {
            select: c[2],
            alloc_len: be32(c, 6),
        },
        0xa3 => Command::ReportSupportedOpcodes {
            rctd: c[2] & 0x80 != 0,
            options: c[2] & 0x07,
            opcode: c[3],
            service_action: be16(c, 4),
            alloc_len: be32(c, 6),
        },
        opcode => Command::Unsupported { opcode },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::asc;

    fn pad16(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(16, 0);
        v
    }

    #[test]
    fn table_is_sorted_and_masks_match_opcodes() {
        for pair in SUPPORTED.windows(2) {
            let a = (pair[0].opcode, pair[0].service_action);
            let b = (pair[1].opcode, pair[1].service_action);
            assert!(a < b, "{a:?} !< {b:?}");
        }
        for info in SUPPORTED {
            assert_eq!(info.usage[0], info.opcode);
            let expected_len = match info.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => 0,
            };
            assert_eq!(info.usage.len(), expected_len, "opcode {:#x}", info.opcode);
        }
    }

    #[test]
    fn parses_read10_with_padding() {
        let cdb = pad16(&[0x28, 0x18, 0, 0, 0x12, 0x34, 0, 0, 8, 0]);
        assert_eq!(
            parse(&cdb),
            Ok(Command::Read(Extent {
                lba: 0x1234,
                blocks: 8,
                dpo: true,
                fua: true,
                length_byte: 7
            }))
        );
    }

    #[test]
    fn read6_zero_length_means_256() {
        let cdb = [0x08, 0x01, 0x02, 0x03, 0, 0];
        assert_eq!(
            parse(&cdb),
            Ok(Command::Read(Extent {
                lba: 0x010203,
                blocks: 256,
                dpo: false,
                fua: false,
                length_byte: 4
            }))
        );
    }

    #[test]
    fn parses_write16_and_caw() {
        let cdb = [0x8a, 0x08, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0];
        assert_eq!(
            parse(&cdb),
            Ok(Command::Write(Extent {
                lba: (1 << 32) + 2,
                blocks: 4,
                dpo: false,
                fua: true,
                length_byte: 10
            }))
        );
        let caw = [0x89, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0];
        assert_eq!(
            parse(&caw),
            Ok(Command::CompareAndWrite(Extent {
                lba: 9,
                blocks: 1,
                dpo: false,
                fua: false,
                length_byte: 13
            }))
        );
    }

    #[test]
    fn rdprotect_is_rejected_with_bit_pointer() {
        let cdb = pad16(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]);
        let err = parse(&cdb).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
        let field = err.field.unwrap();
        assert_eq!((field.in_cdb, field.byte, field.bit), (true, 1, Some(5)));
    }

    #[test]
    fn naca_in_control_byte_is_rejected() {
        let err = parse(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err();
        let field = err.field.unwrap();
        assert_eq!((field.byte, field.bit), (5, Some(2)));
    }

    #[test]
    fn unknown_opcode_and_service_action() {
        assert_eq!(
            parse(&[0x04, 0, 0, 0, 0, 0]),
            Ok(Command::Unsupported { opcode: 0x04 })
        );
        assert_eq!(parse(&[]), Err(Sense::invalid_opcode()));
        // READ CAPACITY(16) family with an unknown service action.
        let err = parse(&pad16(&[0x9e, 0x11])).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(err.field.unwrap().byte, 1);
    }

    #[test]
    fn short_cdb_is_rejected() {
        let err = parse(&[0x28, 0, 0]).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn parses_service_action_commands() {
        let rc16 = pad16(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32]);
        assert_eq!(parse(&rc16), Ok(Command::ReadCapacity16 { alloc_len: 32 }));
        let prout = [0x5f, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(
            parse(&pad16(&prout)),
            Ok(Command::PersistentReserveOut {
                action: 1,
                scope: 0,
                pr_type: 3,
                param_len: 24
            })
        );
        let rsoc = [0xa3, 0x0c, 0x81, 0x28, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(
            parse(&pad16(&rsoc)),
            Ok(Command::ReportSupportedOpcodes {
                rctd: true,
                options: 1,
                opcode: 0x28,
                service_action: 0,
                alloc_len: 256
            })
        );
    }

    #[test]
    fn every_bit_outside_the_usage_map_is_rejected_with_its_pointer() {
        for info in SUPPORTED {
            let mut base = vec![0u8; info.usage.len()];
            base[0] = info.opcode;
            if let Some(sa) = info.service_action {
                base[1] = sa as u8;
            }
            for byte in 1..info.usage.len() {
                for bit in 0..8u8 {
                    if info.usage[byte] & (1 << bit) != 0 {
                        continue;
                    }
                    let mut cdb = base.clone();
                    cdb[byte] |= 1 << bit;
                    let err = parse(&cdb).unwrap_err();
                    assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB, "{cdb:02x?}");
                    let field = err.field.unwrap();
                    assert_eq!(
                        (field.byte, field.bit),
                        (byte as u16, Some(bit)),
                        "{cdb:02x?}"
                    );
                }
            }
            // With only the service action set the command parses.
            assert!(parse(&base).is_ok(), "{base:02x?}");
        }
    }
}

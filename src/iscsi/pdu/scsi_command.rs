//! SCSI Command (opcode 0x01, RFC 7143 §11.3), with its two AHS kinds (§11.2.2): the
//! Extended CDB AHS (type 1) and the Bidirectional Read Expected Data Transfer Length AHS
//! (type 2).

use bytes::Bytes;

use super::bhs::{Bhs, Invalid, WirePdu};
use super::fields::TaskAttribute;
use super::{opcode, LunField};

const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LENGTH: u8 = 2;
/// Bytes of CDB that fit in the BHS.
const BHS_CDB_LEN: usize = 16;
/// Largest CDB an Extended CDB AHS can carry (SPC allows up to 260 bytes).
pub const MAX_CDB_LEN: usize = 260;

/// A SCSI Command PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    /// I bit: immediate delivery.
    pub immediate: bool,
    /// F bit: no unsolicited Data-Out PDUs follow.
    pub is_final: bool,
    /// R bit: data is expected from the target.
    pub read: bool,
    /// W bit: data is expected from the initiator.
    pub write: bool,
    /// Task attribute.
    pub attr: TaskAttribute,
    /// LUN.
    pub lun: LunField,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length (the write length for bidirectional commands).
    pub expected_data_transfer_length: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The whole CDB: 16 bytes from the BHS (zero padded as on the wire), followed by the bytes
    /// of an Extended CDB AHS if there was one. When encoding, a shorter CDB is zero padded and
    /// bytes beyond 16 go into an Extended CDB AHS.
    pub cdb: Bytes,
    /// From the Bidirectional Read Expected Data Transfer Length AHS, if present.
    pub bidi_read_length: Option<u32>,
    /// Immediate data.
    pub data: Bytes,
}

impl ScsiCommand {
    /// A final, non-immediate SIMPLE command to `lun` that moves no data and carries zero
    /// tags and sequence numbers; callers fill in the rest with struct update syntax.
    /// `cdb` is zero padded to the 16 bytes the BHS holds, so the command equals what
    /// decoding it off the wire gives back.
    pub fn new(lun: LunField, cdb: &[u8], expected_data_transfer_length: u32) -> Self {
        let mut padded = cdb.to_vec();
        padded.resize(BHS_CDB_LEN.max(cdb.len()), 0);
        ScsiCommand {
            immediate: false,
            is_final: true,
            read: false,
            write: false,
            attr: TaskAttribute::Simple,
            lun,
            itt: 0,
            expected_data_transfer_length,
            cmd_sn: 0,
            exp_stat_sn: 0,
            cdb: Bytes::from(padded),
            bidi_read_length: None,
            data: Bytes::new(),
        }
    }
}

/// Splits the AHS area into (type, AHS-specific bytes) records; each record is 3 header bytes
/// plus AHSLength bytes, padded to a 4-byte boundary.
fn ahs_records(mut ahs: &[u8]) -> Result<Vec<(u8, &[u8])>, Invalid> {
    let mut out = Vec::new();
    while !ahs.is_empty() {
        let [l0, l1, ty, ..] = *ahs else {
            return Err(Invalid::Ahs("truncated AHS header"));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let end = 3 + len;
        let padded = end.div_ceil(4) * 4;
        let (Some(body), Some(rest)) = (ahs.get(3..end), ahs.get(padded..)) else {
            return Err(Invalid::Ahs("AHSLength runs past TotalAHSLength"));
        };
        out.push((ty, body));
        ahs = rest;
    }
    Ok(out)
}

impl WirePdu for ScsiCommand {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        let mut cdb = h.bytes::<BHS_CDB_LEN>(32).to_vec();
        let mut bidi_read_length = None;
        let mut seen_ext = false;
        for (ty, body) in ahs_records(ahs)? {
            match ty {
                AHS_EXTENDED_CDB => {
                    // The first AHS-specific byte is reserved; the CDB continues after it.
                    let Some(ext) = body.get(1..).filter(|e| !e.is_empty()) else {
                        return Err(Invalid::Ahs("empty extended CDB AHS"));
                    };
                    if seen_ext || BHS_CDB_LEN + ext.len() > MAX_CDB_LEN {
                        return Err(Invalid::Ahs("duplicate or oversized extended CDB AHS"));
                    }
                    seen_ext = true;
                    cdb.extend_from_slice(ext);
                }
                AHS_BIDI_READ_LENGTH => {
                    let [_, a, b, c, d] = *body else {
                        return Err(Invalid::Ahs(
                            "bidirectional read length AHS must be 5 bytes",
                        ));
                    };
                    if bidi_read_length.is_some() {
                        return Err(Invalid::Ahs("duplicate bidirectional read length AHS"));
                    }
                    bidi_read_length = Some(u32::from_be_bytes([a, b, c, d]));
                }
                _ => return Err(Invalid::Ahs("unknown AHS type")),
            }
        }
        let flags = h.u8(1);
        let [cmd_sn, exp_stat_sn] = h.initiator_sns();
        Ok(ScsiCommand {
            immediate: h.immediate(),
            is_final: flags & 0x80 != 0,
            read: flags & 0x40 != 0,
            write: flags & 0x20 != 0,
            attr: TaskAttribute::from_bits(flags),
            lun: h.lun(),
            itt: h.itt(),
            expected_data_transfer_length: h.u32(20),
            cmd_sn,
            exp_stat_sn,
            cdb: Bytes::from(cdb),
            bidi_read_length,
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::SCSI_COMMAND, self.immediate);
        h.set_flag(1, 0x80, self.is_final);
        h.set_flag(1, 0x40, self.read);
        h.set_flag(1, 0x20, self.write);
        h.set_u8(1, h.u8(1) | self.attr.bits());
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.expected_data_transfer_length);
        h.set_initiator_sns(self.cmd_sn, self.exp_stat_sn);
        let head = &self.cdb[..self.cdb.len().min(BHS_CDB_LEN)];
        h.set_bytes(32, head);
        h
    }

    fn ahs(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ext) = self.cdb.get(BHS_CDB_LEN..).filter(|e| !e.is_empty()) {
            // AHSLength counts the reserved byte plus the CDB bytes beyond the first 16; the
            // codec refuses CDBs over MAX_CDB_LEN, so it fits in 16 bits.
            out.extend_from_slice(&((ext.len() + 1) as u16).to_be_bytes());
            out.push(AHS_EXTENDED_CDB);
            out.push(0);
            out.extend_from_slice(ext);
            out.resize(out.len().div_ceil(4) * 4, 0);
        }
        if let Some(len) = self.bidi_read_length {
            out.extend_from_slice(&[0, 5, AHS_BIDI_READ_LENGTH, 0]);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

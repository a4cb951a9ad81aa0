//! The 48-byte Basic Header Segment with big-endian field accessors.
//!
//! All offsets passed in are compile-time constants of the PDU layouts (RFC 7143 §11), so the
//! indexing below can only go wrong through a bug in this module, never through wire data.

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// A Basic Header Segment being read or written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bhs(pub(crate) [u8; BHS_LEN]);

impl Bhs {
    /// A zeroed header with the opcode byte set (bit 6 is the Immediate bit).
    pub(crate) fn new(opcode: u8, immediate: bool) -> Self {
        let mut b = [0u8; BHS_LEN];
        b[0] = (opcode & 0x3f) | if immediate { 0x40 } else { 0 };
        Bhs(b)
    }

    pub(crate) fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }

    pub(crate) fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }

    /// TotalAHSLength in bytes (the field counts 4-byte words).
    pub(crate) fn total_ahs_len(&self) -> usize {
        usize::from(self.0[4]) * 4
    }

    /// DataSegmentLength (24 bits, excluding padding).
    pub(crate) fn data_segment_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }

    pub(crate) fn set_lengths(&mut self, ahs_words: u8, data_len: u32) {
        self.0[4] = ahs_words;
        let l = data_len.to_be_bytes();
        self.0[5..8].copy_from_slice(&l[1..4]);
    }

    pub(crate) fn u8(&self, off: usize) -> u8 {
        self.0[off]
    }

    pub(crate) fn set_u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }

    pub(crate) fn flag(&self, off: usize, mask: u8) -> bool {
        self.0[off] & mask != 0
    }

    pub(crate) fn set_flag(&mut self, off: usize, mask: u8, on: bool) {
        if on {
            self.0[off] |= mask;
        } else {
            self.0[off] &= !mask;
        }
    }

    pub(crate) fn u16(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }

    pub(crate) fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }

    pub(crate) fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[off..off + N]);
        out
    }

    pub(crate) fn set_bytes(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }

    /// Bytes 8..16: the LUN field of most PDUs.
    pub(crate) fn lun(&self) -> super::LunField {
        super::LunField::from_bytes(self.bytes::<8>(8))
    }

    pub(crate) fn set_lun(&mut self, lun: super::LunField) {
        self.set_bytes(8, &lun.to_bytes());
    }

    /// Bytes 16..20: the Initiator Task Tag.
    pub(crate) fn itt(&self) -> u32 {
        self.u32(16)
    }

    /// Bytes 24..36 of every target-to-initiator PDU: StatSN, ExpCmdSN and MaxCmdSN.
    pub(crate) fn target_sns(&self) -> [u32; 3] {
        [self.u32(24), self.u32(28), self.u32(32)]
    }

    /// Writes what [`Bhs::target_sns`] reads.
    pub(crate) fn set_target_sns(&mut self, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) {
        self.set_u32(24, stat_sn);
        self.set_u32(28, exp_cmd_sn);
        self.set_u32(32, max_cmd_sn);
    }

    /// Bytes 24..32 of the initiator-to-target PDUs that carry both: CmdSN and ExpStatSN.
    pub(crate) fn initiator_sns(&self) -> [u32; 2] {
        [self.u32(24), self.u32(28)]
    }

    /// Writes what [`Bhs::initiator_sns`] reads.
    pub(crate) fn set_initiator_sns(&mut self, cmd_sn: u32, exp_stat_sn: u32) {
        self.set_u32(24, cmd_sn);
        self.set_u32(28, exp_stat_sn);
    }
}

/// Why a framed PDU's content is invalid (turned into a recoverable `PduError` by the codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// The Additional Header Segments are malformed or not allowed.
    Ahs(&'static str),
    /// A header field or the data segment is not allowed.
    Field(&'static str),
}

/// The mapping between one PDU kind's struct and its wire header, implemented once per file.
pub(crate) trait WirePdu: Sized {
    /// Builds the struct from a framed PDU (digests already checked, padding removed).
    fn from_wire(h: &Bhs, ahs: &[u8], data: bytes::Bytes) -> Result<Self, Invalid>;
    /// The BHS with every field but TotalAHSLength and DataSegmentLength filled in.
    fn to_bhs(&self) -> Bhs;
    /// The Additional Header Segments, already padded to 4-byte multiples.
    fn ahs(&self) -> Vec<u8> {
        Vec::new()
    }
    /// The data segment (without padding).
    fn data(&self) -> bytes::Bytes {
        bytes::Bytes::new()
    }
}

/// Rejects any AHS or data segment on a PDU kind that carries neither.
pub(crate) fn expect_bare(ahs: &[u8], data: &bytes::Bytes) -> Result<(), Invalid> {
    if !ahs.is_empty() {
        return Err(Invalid::Ahs("this PDU carries no AHS"));
    }
    if !data.is_empty() {
        return Err(Invalid::Field("this PDU carries no data segment"));
    }
    Ok(())
}

/// Rejects any AHS on a PDU kind that only carries a data segment.
pub(crate) fn expect_no_ahs(ahs: &[u8]) -> Result<(), Invalid> {
    if ahs.is_empty() {
        Ok(())
    } else {
        Err(Invalid::Ahs("this PDU carries no AHS"))
    }
}

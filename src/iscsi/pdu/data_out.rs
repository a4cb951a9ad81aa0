//! SCSI Data-Out (opcode 0x05, RFC 7143 §11.7): write data, solicited by an R2T or unsolicited.

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// A SCSI Data-Out PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    /// F bit: the last PDU of this burst (unsolicited burst or R2T's sequence).
    pub is_final: bool,
    /// LUN (copied from the R2T for solicited data).
    pub lun: LunField,
    /// Initiator Task Tag of the command.
    pub itt: u32,
    /// Target Transfer Tag of the R2T, or 0xffffffff for unsolicited data.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Offset of `data` in the command's whole transfer.
    pub buffer_offset: u32,
    /// The data.
    pub data: Bytes,
}

impl WirePdu for DataOut {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        Ok(DataOut {
            is_final: h.flag(1, 0x80),
            lun: h.lun(),
            itt: h.itt(),
            ttt: h.u32(20),
            exp_stat_sn: h.u32(28),
            data_sn: h.u32(36),
            buffer_offset: h.u32(40),
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::DATA_OUT, false);
        h.set_flag(1, 0x80, self.is_final);
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_u32(28, self.exp_stat_sn);
        h.set_u32(36, self.data_sn);
        h.set_u32(40, self.buffer_offset);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

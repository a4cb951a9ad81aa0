//! SCSI Data-In (opcode 0x25, RFC 7143 §11.7), optionally carrying the command's status
//! (S bit, "phase collapse").

use bytes::Bytes;

use super::bhs::{expect_no_ahs, Bhs, Invalid, WirePdu};
use super::{opcode, LunField};

/// A SCSI Data-In PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    /// F bit: the last PDU of the sequence (always set together with a status).
    pub is_final: bool,
    /// A bit: the target asks for a DataACK SNACK (ErrorRecoveryLevel > 0 only).
    pub ack: bool,
    /// O bit: residual overflow (valid with a status).
    pub overflow: bool,
    /// U bit: residual underflow (valid with a status).
    pub underflow: bool,
    /// S bit and status byte: `Some(status)` when this PDU ends the command.
    pub status: Option<u8>,
    /// LUN (required with the A bit, else may be zero).
    pub lun: LunField,
    /// Initiator Task Tag of the command.
    pub itt: u32,
    /// Target Transfer Tag: 0xffffffff unless `ack`.
    pub ttt: u32,
    /// StatSN (meaningful only with a status).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN of this PDU within the command.
    pub data_sn: u32,
    /// Offset of `data` in the command's whole transfer.
    pub buffer_offset: u32,
    /// Residual Count (meaningful with a status and O or U).
    pub residual_count: u32,
    /// The data.
    pub data: Bytes,
}

impl WirePdu for DataIn {
    fn from_wire(h: &Bhs, ahs: &[u8], data: Bytes) -> Result<Self, Invalid> {
        expect_no_ahs(ahs)?;
        let flags = h.u8(1);
        let [stat_sn, exp_cmd_sn, max_cmd_sn] = h.target_sns();
        Ok(DataIn {
            is_final: flags & 0x80 != 0,
            ack: flags & 0x40 != 0,
            overflow: flags & 0x04 != 0,
            underflow: flags & 0x02 != 0,
            status: (flags & 0x01 != 0).then(|| h.u8(3)),
            lun: h.lun(),
            itt: h.itt(),
            ttt: h.u32(20),
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data_sn: h.u32(36),
            buffer_offset: h.u32(40),
            residual_count: h.u32(44),
            data,
        })
    }

    fn to_bhs(&self) -> Bhs {
        let mut h = Bhs::new(opcode::DATA_IN, false);
        h.set_flag(1, 0x80, self.is_final);
        h.set_flag(1, 0x40, self.ack);
        h.set_flag(1, 0x04, self.overflow);
        h.set_flag(1, 0x02, self.underflow);
        if let Some(status) = self.status {
            h.set_flag(1, 0x01, true);
            h.set_u8(3, status);
        }
        h.set_lun(self.lun);
        h.set_u32(16, self.itt);
        h.set_u32(20, self.ttt);
        h.set_target_sns(self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
        h.set_u32(36, self.data_sn);
        h.set_u32(40, self.buffer_offset);
        h.set_u32(44, self.residual_count);
        h
    }

    fn data(&self) -> Bytes {
        self.data.clone()
    }
}

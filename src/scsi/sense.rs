//! Fixed-format sense data (SPC-4 4.5.3) and the additional sense codes this target reports.

use bytes::Bytes;

use crate::block::Unavailable;

/// Sense keys (SPC-4 table 27).
pub mod key {
    /// No error; used for deferred information such as REQUEST SENSE with nothing pending.
    pub const NO_SENSE: u8 = 0x0;
    /// The logical unit is not ready.
    pub const NOT_READY: u8 = 0x2;
    /// Unrecoverable medium error.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// Hardware failure.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// The command or its parameters were invalid.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// A unit attention condition was reported.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// The medium is write protected.
    pub const DATA_PROTECT: u8 = 0x7;
    /// EXTENDED COPY stopped: a copy target could not be reached or failed.
    pub const COPY_ABORTED: u8 = 0xa;
    /// The command was aborted.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// Source data did not match the medium (VERIFY, COMPARE AND WRITE).
    pub const MISCOMPARE: u8 = 0xe;

    /// The sense key's name as SPC-4 table 48 gives it, in lower case with underscores (the
    /// `sense_key` label of the metrics).
    pub fn name(key: u8) -> &'static str {
        match key {
            NO_SENSE => "no_sense",
            0x1 => "recovered_error",
            NOT_READY => "not_ready",
            MEDIUM_ERROR => "medium_error",
            HARDWARE_ERROR => "hardware_error",
            ILLEGAL_REQUEST => "illegal_request",
            UNIT_ATTENTION => "unit_attention",
            DATA_PROTECT => "data_protect",
            0x8 => "blank_check",
            0x9 => "vendor_specific",
            COPY_ABORTED => "copy_aborted",
            ABORTED_COMMAND => "aborted_command",
            0xd => "volume_overflow",
            MISCOMPARE => "miscompare",
            _ => "reserved",
        }
    }
}

/// An additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

/// Every additional sense code and qualifier this target reports, SCSI and iSCSI layer alike,
/// in code order. Each doc line gives the code's name as SPC-4 annex D lists it; the constant
/// names shorten a few of the longer ones.
pub mod asc {
    use super::Asc;
    /// 00/00 NO ADDITIONAL SENSE INFORMATION.
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x00, 0x00);
    /// 00/16 OPERATION IN PROGRESS.
    pub const OPERATION_IN_PROGRESS: Asc = Asc(0x00, 0x16);
    /// 04/01 LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
    pub const BECOMING_READY: Asc = Asc(0x04, 0x01);
    /// 04/03 LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED.
    pub const NOT_READY_MANUAL_INTERVENTION: Asc = Asc(0x04, 0x03);
    /// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS.
    pub const SANITIZE_IN_PROGRESS: Asc = Asc(0x04, 0x1b);
    /// 08/00 LOGICAL UNIT COMMUNICATION FAILURE.
    pub const LOGICAL_UNIT_COMMUNICATION_FAILURE: Asc = Asc(0x08, 0x00);
    /// 08/04 UNREACHABLE COPY TARGET.
    pub const UNREACHABLE_COPY_TARGET: Asc = Asc(0x08, 0x04);
    /// 0C/00 WRITE ERROR.
    pub const WRITE_ERROR: Asc = Asc(0x0c, 0x00);
    /// 0D/01 THIRD PARTY DEVICE FAILURE.
    pub const THIRD_PARTY_DEVICE_FAILURE: Asc = Asc(0x0d, 0x01);
    /// 0D/02 COPY TARGET DEVICE NOT REACHABLE.
    pub const COPY_TARGET_NOT_REACHABLE: Asc = Asc(0x0d, 0x02);
    /// 0E/03 INVALID FIELD IN COMMAND INFORMATION UNIT (the transfer length disagrees with
    /// the transport's).
    pub const INVALID_FIELD_IN_CDB_IU: Asc = Asc(0x0e, 0x03);
    /// 11/00 UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    /// 1A/00 PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1a, 0x00);
    /// 1D/00 MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1d, 0x00);
    /// 20/00 INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x20, 0x00);
    /// 21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    /// 24/00 INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    /// 25/00 LOGICAL UNIT NOT SUPPORTED.
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    /// 26/00 INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    /// 26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PR: Asc = Asc(0x26, 0x04);
    /// 26/06 TOO MANY TARGET DESCRIPTORS.
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x26, 0x06);
    /// 26/07 UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_TARGET_DESCRIPTOR: Asc = Asc(0x26, 0x07);
    /// 26/08 TOO MANY SEGMENT DESCRIPTORS.
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x26, 0x08);
    /// 26/09 UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR: Asc = Asc(0x26, 0x09);
    /// 27/00 WRITE PROTECTED.
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    /// 27/02 LOGICAL UNIT SOFTWARE WRITE PROTECTED (the SWP bit of the Control mode page).
    pub const SOFTWARE_WRITE_PROTECTED: Asc = Asc(0x27, 0x02);
    /// 27/07 SPACE ALLOCATION FAILED WRITE PROTECT (SBC-3: a thin LUN ran out of backing
    /// space).
    pub const SPACE_ALLOCATION_FAILED: Asc = Asc(0x27, 0x07);
    /// NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED (a removable medium was loaded).
    pub const MEDIUM_MAY_HAVE_CHANGED: Asc = Asc(0x28, 0x00);
    /// 29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    /// 29/03 BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    pub const BUS_DEVICE_RESET: Asc = Asc(0x29, 0x03);
    /// 2A/01 MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2a, 0x01);
    /// 2A/03 RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2a, 0x03);
    /// 2A/04 RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2a, 0x04);
    /// 2A/05 REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2a, 0x05);
    /// 2A/09 CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_CHANGED: Asc = Asc(0x2a, 0x09);
    /// 2F/00 COMMANDS CLEARED BY ANOTHER INITIATOR.
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2f, 0x00);
    /// 31/00 MEDIUM FORMAT CORRUPTED.
    pub const MEDIUM_FORMAT_CORRUPTED: Asc = Asc(0x31, 0x00);
    /// SANITIZE COMMAND FAILED (the medium is in sanitize failure mode).
    pub const SANITIZE_COMMAND_FAILED: Asc = Asc(0x31, 0x03);
    /// 39/00 SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    /// 3A/00 MEDIUM NOT PRESENT.
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3a, 0x00);
    /// 3F/0E REPORTED LUNS DATA HAS CHANGED (a logical unit was added or removed).
    pub const REPORTED_LUNS_DATA_CHANGED: Asc = Asc(0x3f, 0x0e);
    /// 44/00 INTERNAL TARGET FAILURE (a command's task panicked).
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    /// 47/05 PROTOCOL SERVICE CRC ERROR (iSCSI: a Data-Out was lost to a data digest error).
    pub const PROTOCOL_SERVICE_CRC_ERROR: Asc = Asc(0x47, 0x05);
    /// 4B/00 DATA PHASE ERROR (iSCSI: a Data-Out sequence error).
    pub const DATA_PHASE_ERROR: Asc = Asc(0x4b, 0x00);
    /// 4B/01 INVALID TARGET PORT TRANSFER TAG RECEIVED (iSCSI: Data-Out with an unknown TTT).
    pub const INVALID_TARGET_PORT_TRANSFER_TAG_RECEIVED: Asc = Asc(0x4b, 0x01);
    /// 4B/06 INITIATOR RESPONSE TIMEOUT (iSCSI: the solicited Data-Out never came).
    pub const INITIATOR_RESPONSE_TIMEOUT: Asc = Asc(0x4b, 0x06);
    /// 55/03 INSUFFICIENT RESOURCES.
    pub const INSUFFICIENT_RESOURCES: Asc = Asc(0x55, 0x03);
    /// 55/04 INSUFFICIENT REGISTRATION RESOURCES.
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
    /// MEDIUM REMOVAL PREVENTED (PREVENT ALLOW MEDIUM REMOVAL is in force).
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
}

/// Where in the CDB or parameter list an invalid field sits (sense-key specific bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the field is in the CDB, false when in the parameter data.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field's most significant bit, when the whole byte is not meant.
    pub bit: Option<u8>,
}

/// One CHECK CONDITION's sense data, before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code and qualifier.
    pub asc: Asc,
    /// INFORMATION field (sets the VALID bit), e.g. the miscompare offset.
    pub information: Option<u32>,
    /// Sense-key-specific field pointer for ILLEGAL REQUEST.
    pub field: Option<FieldPointer>,
    /// Sense-key-specific progress indication for NOT READY (done / 65536).
    pub progress: Option<u16>,
}

/// Length of the fixed-format sense data this target produces.
pub const SENSE_LEN: usize = 18;

impl Sense {
    /// Sense with a key and code and nothing else.
    pub const fn new(key: u8, asc: Asc) -> Self {
        Sense {
            key,
            asc,
            information: None,
            field: None,
            progress: None,
        }
    }

    /// ILLEGAL REQUEST with the given code and no field pointer.
    pub const fn illegal(asc: Asc) -> Self {
        Sense::new(key::ILLEGAL_REQUEST, asc)
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`, if given).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::illegal(asc::INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`).
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
        }
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (pointer at byte 0).
    pub const fn invalid_opcode() -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte: 0,
                bit: None,
            }),
            ..Sense::illegal(asc::INVALID_COMMAND_OPERATION_CODE)
        }
    }

    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Self {
        Sense::illegal(asc::LBA_OUT_OF_RANGE)
    }

    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const fn parameter_list_length() -> Self {
        Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// DATA PROTECT / WRITE PROTECTED.
    pub const fn write_protected() -> Self {
        Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED)
    }

    /// NOT READY with the code for why the LUN's backing is unavailable (README "Broken LUNs").
    pub const fn not_ready(reason: Unavailable) -> Self {
        let code = match reason {
            Unavailable::Missing => asc::MEDIUM_NOT_PRESENT,
            Unavailable::Corrupt => asc::MEDIUM_FORMAT_CORRUPTED,
            Unavailable::Unreachable => asc::LOGICAL_UNIT_COMMUNICATION_FAILURE,
            Unavailable::Failed => asc::NOT_READY_MANUAL_INTERVENTION,
            Unavailable::Opening => asc::BECOMING_READY,
        };
        Sense::new(key::NOT_READY, code)
    }

    /// ABORTED COMMAND with the given code (the iSCSI layer ends a command it cannot finish).
    pub const fn aborted_command(code: Asc) -> Self {
        Sense::new(key::ABORTED_COMMAND, code)
    }

    /// NOT READY, SANITIZE IN PROGRESS, with how far the sanitize has come (`done` of 65536).
    pub const fn sanitizing(done: u16) -> Self {
        Sense {
            progress: Some(done),
            ..Sense::new(key::NOT_READY, asc::SANITIZE_IN_PROGRESS)
        }
    }

    /// UNIT ATTENTION with the given code.
    pub const fn unit_attention(code: Asc) -> Self {
        Sense::new(key::UNIT_ATTENTION, code)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION at byte `offset` of the compared data.
    pub const fn miscompare(offset: u32) -> Self {
        Sense {
            information: Some(offset),
            ..Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
        }
    }

    /// Encodes descriptor-format (response code 0x72, current error) sense data: the
    /// information descriptor when there is an INFORMATION field, the sense-key-specific
    /// descriptor when there is a field pointer or progress indication.
    pub fn encode_descriptor(&self) -> Bytes {
        let fixed = self.encode();
        let mut out = vec![0x72, self.key & 0x0f, self.asc.0, self.asc.1, 0, 0, 0, 0];
        if let Some(info) = self.information {
            out.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00, 0, 0, 0, 0]);
            out.extend_from_slice(&info.to_be_bytes());
        }
        if fixed[15] & 0x80 != 0 {
            out.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, fixed[15], fixed[16], fixed[17], 0]);
        }
        out[7] = (out.len() - 8) as u8;
        Bytes::from(out)
    }

    /// Encodes fixed-format (response code 0x70, current error) sense data.
    pub fn encode(&self) -> Bytes {
        let mut out = [0u8; SENSE_LEN];
        out[0] = 0x70;
        if let Some(info) = self.information {
            out[0] |= 0x80;
            out[3..7].copy_from_slice(&info.to_be_bytes());
        }
        out[2] = self.key & 0x0f;
        out[7] = (SENSE_LEN - 8) as u8;
        out[12] = self.asc.0;
        out[13] = self.asc.1;
        if let Some(field) = self.field {
            // SKSV, C/D, BPV and the bit pointer, then the field pointer.
            let mut b15 = 0x80;
            if field.in_cdb {
                b15 |= 0x40;
            }
            if let Some(bit) = field.bit {
                b15 |= 0x08 | (bit & 0x07);
            }
            out[15] = b15;
            out[16..18].copy_from_slice(&field.byte.to_be_bytes());
        } else if let Some(progress) = self.progress {
            out[15] = 0x80;
            out[16..18].copy_from_slice(&progress.to_be_bytes());
        }
        Bytes::copy_from_slice(&out)
    }
}

/// The descriptor-format form of fixed-format sense data this module encoded (what a LUN
/// with D_SENSE set answers); anything else is returned as it is.
pub fn fixed_to_descriptor(fixed: &[u8]) -> Bytes {
    if fixed.len() < SENSE_LEN || fixed[0] & 0x7f != 0x70 {
        return Bytes::copy_from_slice(fixed);
    }
    let sks = fixed[15] & 0x80 != 0;
    let field = (sks && fixed[2] & 0x0f == key::ILLEGAL_REQUEST).then(|| FieldPointer {
        in_cdb: fixed[15] & 0x40 != 0,
        byte: u16::from_be_bytes([fixed[16], fixed[17]]),
        bit: (fixed[15] & 0x08 != 0).then_some(fixed[15] & 0x07),
    });
    let progress = (sks && field.is_none()).then(|| u16::from_be_bytes([fixed[16], fixed[17]]));
    Sense {
        key: fixed[2] & 0x0f,
        asc: Asc(fixed[12], fixed[13]),
        information: (fixed[0] & 0x80 != 0)
            .then(|| u32::from_be_bytes([fixed[3], fixed[4], fixed[5], fixed[6]])),
        field,
        progress,
    }
    .encode_descriptor()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_format_carries_the_same_facts() {
        for sense in [
            Sense::invalid_cdb_field(2, Some(5)),
            Sense::invalid_param_field(0x0102, None),
            Sense::miscompare(0x1234),
            Sense::sanitizing(0x4000),
            Sense::unit_attention(asc::POWER_ON_RESET),
        ] {
            assert_eq!(
                fixed_to_descriptor(&sense.encode()),
                sense.encode_descriptor()
            );
        }
        assert_eq!(
            &Sense::invalid_cdb_field(2, Some(5)).encode_descriptor()[..],
            &[0x72, 0x05, 0x24, 0x00, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xcd, 0, 2, 0]
        );
        assert_eq!(
            &Sense::miscompare(0x1234).encode_descriptor()[..],
            &[
                0x72, 0x0e, 0x1d, 0x00, 0, 0, 0, 12, 0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x12,
                0x34
            ]
        );
        assert_eq!(
            &Sense::unit_attention(asc::POWER_ON_RESET).encode_descriptor()[..],
            &[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]
        );
        // Sense this module did not make is passed on untouched.
        assert_eq!(&fixed_to_descriptor(&[0x71, 0, 5])[..], &[0x71, 0, 5]);
    }

    #[test]
    fn encodes_invalid_field_with_pointer() {
        let bytes = Sense::invalid_cdb_field(2, Some(5)).encode();
        assert_eq!(
            &bytes[..],
            &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xcd, 0, 2]
        );
    }

    #[test]
    fn encodes_information_for_miscompare() {
        let bytes = Sense::miscompare(0x1234).encode();
        assert_eq!(
            &bytes[..],
            &[0xf0, 0, 0x0e, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn iscsi_layer_sense_has_no_pointer_or_information() {
        // The bytes the iSCSI layer sent when it built its own sense (before it used this
        // module): fixed format, current error, key, length 10, ASC/ASCQ, nothing else.
        let bytes = Sense::aborted_command(asc::PROTOCOL_SERVICE_CRC_ERROR).encode();
        assert_eq!(
            &bytes[..],
            &[0x70, 0, 0x0b, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05, 0, 0, 0, 0]
        );
    }

    #[test]
    fn encodes_sanitize_progress() {
        let bytes = Sense::sanitizing(0x4000).encode();
        assert_eq!(
            &bytes[..],
            &[0x70, 0, 0x02, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x04, 0x1b, 0, 0x80, 0x40, 0]
        );
    }

    #[test]
    fn parameter_pointer_clears_cd_bit() {
        let bytes = Sense::invalid_param_field(0x0102, None).encode();
        assert_eq!(bytes[2], key::ILLEGAL_REQUEST);
        assert_eq!((bytes[12], bytes[13]), (0x26, 0x00));
        assert_eq!(&bytes[15..18], &[0x80, 0x01, 0x02]);
    }
}

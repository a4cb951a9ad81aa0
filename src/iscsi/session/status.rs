//! Turning a finished command into PDUs: Data-In pieces, with the status folded into the last
//! one when there is no sense data (phase collapse, RFC 7143 §11.7.4), or a separate SCSI
//! Response carrying the sense; residual flags and counts on whichever PDU carries the status.

use bytes::Bytes;

use super::data_in::pieces;
use super::STAMPED_AT_TRANSMIT;
use crate::iscsi::pdu::{self, DataIn, LunField, Pdu, RESERVED_TAG, RESPONSE_COMPLETED};
use crate::scsi::CommandOutcome;

/// The command a status belongs to.
#[derive(Debug, Clone, Copy)]
pub struct CommandRef {
    /// Initiator Task Tag.
    pub itt: u32,
    /// LUN field as received.
    pub lun: LunField,
    /// R bit: Data-In may be sent.
    pub read: bool,
    /// Expected length of Data-In (EDTL, or the bidirectional read length).
    pub read_len: u32,
    /// R2Ts sent for the command (counted in ExpDataSN).
    pub r2t_count: u32,
}

/// The sequence number and limits the PDUs are built with. ExpCmdSN and MaxCmdSN are not
/// among them: [`super::Session::poll_transmit`] writes those as each PDU leaves.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// StatSN consumed by the status-carrying PDU.
    pub stat_sn: u32,
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_segment: u32,
    /// MaxBurstLength (bounds a Data-In sequence).
    pub max_burst: u32,
}

/// Residual flags and count from the SCSI layer's signed residual.
fn residual_fields(residual: i64) -> (bool, bool, u32) {
    let count = u32::try_from(residual.unsigned_abs()).unwrap_or(u32::MAX);
    (residual < 0, residual > 0, count)
}

/// The PDUs that finish `cmd` with `resp`, in sending order.
pub fn status_pdus(cmd: CommandRef, resp: &CommandOutcome, stamp: Stamp) -> Vec<Pdu> {
    let mut data = if cmd.read {
        resp.data_in.clone()
    } else {
        Bytes::new()
    };
    // Never send more than the initiator asked for, whatever the SCSI layer returned.
    data.truncate(cmd.read_len as usize);
    let (overflow, underflow, residual_count) = residual_fields(resp.residual);
    let collapse = !resp.sense.as_ref().is_some_and(|s| !s.is_empty()) && !data.is_empty();
    let total = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    let mut data_sn = 0;
    for piece in pieces(total, stamp.max_segment, stamp.max_burst) {
        let carries_status = collapse && piece.last;
        let start = piece.offset as usize;
        out.push(Pdu::DataIn(DataIn {
            is_final: piece.ends_sequence,
            ack: false,
            overflow: carries_status && overflow,
            underflow: carries_status && underflow,
            status: carries_status.then_some(resp.status),
            lun: cmd.lun,
            itt: cmd.itt,
            ttt: RESERVED_TAG,
            stat_sn: if carries_status { stamp.stat_sn } else { 0 },
            exp_cmd_sn: STAMPED_AT_TRANSMIT,
            max_cmd_sn: STAMPED_AT_TRANSMIT,
            data_sn: piece.data_sn,
            buffer_offset: piece.offset,
            residual_count: if carries_status { residual_count } else { 0 },
            data: data.slice(start..start + piece.len as usize),
        }));
        data_sn = piece.data_sn.wrapping_add(1);
    }
    if !collapse {
        out.push(Pdu::ScsiResponse(pdu::ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow,
            underflow,
            response: RESPONSE_COMPLETED,
            status: resp.status,
            itt: cmd.itt,
            snack_tag: 0,
            stat_sn: stamp.stat_sn,
            exp_cmd_sn: STAMPED_AT_TRANSMIT,
            max_cmd_sn: STAMPED_AT_TRANSMIT,
            exp_data_sn: data_sn.wrapping_add(cmd.r2t_count),
            bidi_read_residual_count: 0,
            residual_count,
            data: resp
                .sense
                .as_ref()
                .map(|s| pdu::ScsiResponse::sense_segment(s))
                .unwrap_or_default(),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{asc, key, Sense};
    use crate::scsi::status::{CHECK_CONDITION, GOOD};

    const STAMP: Stamp = Stamp {
        stat_sn: 7,
        max_segment: 4096,
        max_burst: 262144,
    };

    fn read_cmd(len: u32) -> CommandRef {
        CommandRef {
            itt: 0x11,
            lun: LunField::from_bytes([0, 1, 0, 0, 0, 0, 0, 0]),
            read: true,
            read_len: len,
            r2t_count: 0,
        }
    }

    fn good(data: &[u8], residual: i64) -> CommandOutcome {
        CommandOutcome {
            status: GOOD,
            sense: None,
            data_in: Bytes::copy_from_slice(data),
            residual,
        }
    }

    #[test]
    fn read_splits_and_collapses_status_into_last_data_in() {
        let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
        let pdus = status_pdus(read_cmd(10000), &good(&data, 0), STAMP);
        assert_eq!(pdus.len(), 3);
        let ins: Vec<&DataIn> = pdus
            .iter()
            .map(|p| match p {
                Pdu::DataIn(d) => d,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            ins.iter()
                .map(|d| (d.data_sn, d.buffer_offset, d.data.len()))
                .collect::<Vec<_>>(),
            vec![(0, 0, 4096), (1, 4096, 4096), (2, 8192, 1808)]
        );
        assert_eq!(ins[0].status, None);
        assert!(!ins[0].is_final);
        assert_eq!(ins[2].status, Some(GOOD));
        assert!(ins[2].is_final && !ins[2].underflow && !ins[2].overflow);
        assert_eq!(ins[2].stat_sn, 7);
        assert_eq!(&ins[1].data[..], &data[4096..8192]);
    }

    #[test]
    fn short_read_reports_underflow_on_the_status_pdu() {
        // INQUIRY VPD 0x00 with alloc 36 returning 10 bytes (linux-initiator.md §5a).
        let pdus = status_pdus(read_cmd(36), &good(&[1; 10], 26), STAMP);
        let [Pdu::DataIn(d)] = &pdus[..] else {
            panic!("{pdus:?}")
        };
        assert!(d.underflow && !d.overflow);
        assert_eq!(d.residual_count, 26);
        assert_eq!(d.data.len(), 10);
    }

    #[test]
    fn overflow_and_no_data_use_a_scsi_response() {
        let pdus = status_pdus(read_cmd(0), &good(&[], -512), STAMP);
        let [Pdu::ScsiResponse(r)] = &pdus[..] else {
            panic!("{pdus:?}")
        };
        assert!(r.overflow && !r.underflow);
        assert_eq!(r.residual_count, 512);
        assert_eq!(r.stat_sn, 7);
        assert!(r.data.is_empty());
    }

    #[test]
    fn sense_goes_in_a_separate_response_after_data() {
        let mut resp = CommandOutcome::check_condition(Sense::new(
            key::MEDIUM_ERROR,
            asc::UNRECOVERED_READ_ERROR,
        ));
        resp.data_in = Bytes::from_static(&[9; 100]);
        let pdus = status_pdus(read_cmd(100), &resp, STAMP);
        let [Pdu::DataIn(d), Pdu::ScsiResponse(r)] = &pdus[..] else {
            panic!("{pdus:?}")
        };
        assert_eq!(d.status, None);
        assert_eq!(r.status, CHECK_CONDITION);
        assert_eq!(r.exp_data_sn, 1);
        let sense = r.sense().unwrap();
        assert_eq!(
            (sense[0], sense[2], sense[12], sense[13]),
            (0x70, 0x03, 0x11, 0x00)
        );
        assert_eq!(sense.len(), 18);
    }

    #[test]
    fn write_status_carries_no_data_and_counts_r2ts() {
        let cmd = CommandRef {
            read: false,
            read_len: 0,
            r2t_count: 3,
            ..read_cmd(0)
        };
        let pdus = status_pdus(cmd, &good(b"ignored", 0), STAMP);
        let [Pdu::ScsiResponse(r)] = &pdus[..] else {
            panic!("{pdus:?}")
        };
        assert_eq!(r.exp_data_sn, 3);
        assert_eq!(r.status, GOOD);
    }

    #[test]
    fn data_beyond_the_expected_length_is_cut() {
        let pdus = status_pdus(read_cmd(8), &good(&[5; 64], 0), STAMP);
        let [Pdu::DataIn(d)] = &pdus[..] else {
            panic!("{pdus:?}")
        };
        assert_eq!(d.data.len(), 8);
    }
}

//! Requests other than SCSI commands and task management: NOP-Out (pings both ways), Text
//! (SendTargets and friends, via the installed [`super::TextHandler`]) and Logout.

use bytes::Bytes;

use super::{CloseReason, Session, STAMPED_AT_TRANSMIT};
use crate::iscsi::pdu::{
    LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, NopIn, NopOut, Pdu,
    RejectReason, TextRequest, TextResponse, RESERVED_TAG,
};

impl Session {
    pub(super) fn on_nop_out(&mut self, nop: NopOut) {
        if nop.ttt != RESERVED_TAG {
            self.on_ping_reply(&nop);
        }
        let mut data = nop.data;
        data.truncate(self.opts.params.max_send_data_segment_length as usize);
        let reply = NopIn {
            lun: nop.lun,
            itt: nop.itt,
            ttt: RESERVED_TAG,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: STAMPED_AT_TRANSMIT,
            max_cmd_sn: STAMPED_AT_TRANSMIT,
            data,
        };
        self.transmit.push_back(Pdu::NopIn(reply));
    }

    pub(super) fn on_ping_reply(&mut self, nop: &NopOut) {
        if self.ping.is_some_and(|p| p.ttt == nop.ttt) {
            self.ping = None;
        }
    }

    pub(super) fn on_text(&mut self, req: TextRequest) {
        let max_send = self.opts.params.max_send_data_segment_length;
        let mut resp = match self.text.as_mut().map(|handler| handler(&req, max_send)) {
            Some(Ok(reply)) => {
                if let Some(limit) = reply.max_send_data_segment_length {
                    // A declarative MaxRecvDataSegmentLength in full-feature phase.
                    self.opts.params.max_send_data_segment_length = limit;
                }
                reply.response
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "text request refused");
                self.reject_pdu(RejectReason::PROTOCOL_ERROR, &Pdu::TextRequest(req));
                return;
            }
            None => TextResponse {
                is_final: true,
                continues: false,
                lun: req.lun,
                itt: req.itt,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: STAMPED_AT_TRANSMIT,
                max_cmd_sn: STAMPED_AT_TRANSMIT,
                data: Bytes::new(),
            },
        };
        resp.stat_sn = self.next_stat_sn();
        self.transmit.push_back(Pdu::TextResponse(resp));
    }

    pub(super) fn on_logout(&mut self, req: LogoutRequest) {
        let response = match req.reason {
            LogoutReason::CLOSE_SESSION => LogoutResponseCode::CLOSED,
            LogoutReason::CLOSE_CONNECTION if req.cid == self.opts.cid => {
                LogoutResponseCode::CLOSED
            }
            LogoutReason::CLOSE_CONNECTION => LogoutResponseCode::CID_NOT_FOUND,
            // Connection recovery needs ErrorRecoveryLevel 2.
            LogoutReason::REMOVE_CONNECTION => LogoutResponseCode::RECOVERY_NOT_SUPPORTED,
            _ => {
                self.reject_pdu(RejectReason::INVALID_PDU_FIELD, &Pdu::LogoutRequest(req));
                return;
            }
        };
        if response == LogoutResponseCode::CLOSED {
            // RFC 7143 §11.14: pending commands are terminated without responses.
            self.abort_all();
        }
        let resp = LogoutResponse {
            response,
            itt: req.itt,
            stat_sn: self.next_stat_sn(),
            exp_cmd_sn: STAMPED_AT_TRANSMIT,
            max_cmd_sn: STAMPED_AT_TRANSMIT,
            time2wait: 0,
            time2retain: 0,
        };
        self.transmit.push_back(Pdu::LogoutResponse(resp));
        if response == LogoutResponseCode::CLOSED {
            self.closing = Some(CloseReason::LoggedOut);
        }
    }
}

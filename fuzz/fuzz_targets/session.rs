//! Feeds arbitrary PDU streams to the full-feature session state machine, completing every
//! command it starts with a response derived from the input: it must never panic, never send a
//! data segment above the initiator's limit, and keep every queued PDU encodable.
#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use overlaybd_target::iscsi::pdu::{Pdu, PduCodec};
use overlaybd_target::iscsi::session::{Event, Session, SessionOptions, SessionParams};
use overlaybd_target::scsi::ScsiResponse;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, wire)) = input.split_first() else {
        return;
    };
    let params = SessionParams {
        max_send_data_segment_length: 512,
        max_burst_length: 2048,
        first_burst_length: 1024,
        initial_r2t: flags & 1 != 0,
        immediate_data: flags & 2 != 0,
        max_outstanding_r2t: u32::from(flags >> 6) + 1,
        ..SessionParams::default()
    };
    let start = Instant::now();
    let opts = SessionOptions {
        params,
        discovery: flags & 4 != 0,
        queue_depth: 4,
        nop_interval: Some(Duration::from_secs(1)),
        nop_timeout: Duration::from_secs(1),
        write_buffer_budget: 64 * 1024,
        lun_count: 2,
        allow_target_reset: true,
        cid: 0,
        first_cmd_sn: 0,
        first_stat_sn: 0,
    };
    let mut session = Session::new(opts, start);
    let codec = PduCodec::new();
    let mut buf = BytesMut::from(wire);
    let mut now = start;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(pdu)) => session.handle_pdu(pdu, now),
            Ok(None) => break,
            Err(e) => match e.rejected_header().zip(e.reject_reason()) {
                Some((bhs, reason)) => session.reject_corrupt(reason, bhs),
                None => break,
            },
        }
        now += Duration::from_millis(700);
        session.handle_timeout(now);
        while let Some(event) = session.poll_event() {
            if let Event::Execute { task, request } = event {
                let len = request.expected_len.min(4096) as usize;
                let response = ScsiResponse {
                    status: if len % 3 == 0 { 0x02 } else { 0 },
                    sense: (len % 3 == 0)
                        .then(|| Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10])),
                    data_in: Bytes::from(vec![0xa5; len]),
                    residual: i64::from(request.expected_len) - len as i64,
                };
                session.complete(task, response);
            }
        }
        while let Some(pdu) = session.poll_transmit() {
            assert!(pdu.data().len() <= 512 || matches!(pdu, Pdu::Reject(_)));
            codec.encode(&pdu).expect("queued PDUs encode");
        }
    }
});

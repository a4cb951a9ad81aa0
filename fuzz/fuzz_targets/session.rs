//! Feeds arbitrary PDU streams to the full-feature session state machine, completing every
//! command it starts with a response derived from the input: it must never panic, never send a
//! data segment above the initiator's limit, keep every queued PDU encodable, and keep its task
//! table bounded by the CmdSN window, immediate commands included.
//!
//! With flag bit 3 the stream is preceded by what the hostile-initiator attacks do: more
//! immediate commands than the window holds, none completed yet (those beyond the window must
//! be refused with Reject 0x06), and a ping whose data is longer than the initiator accepts.
#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use overlaybd_target::iscsi::pdu::{
    LunField, NopOut, Pdu, PduCodec, RejectReason, ScsiCommand, RESERVED_TAG,
};
use overlaybd_target::iscsi::session::{Event, Session, SessionOptions, SessionParams};
use overlaybd_target::scsi::CommandOutcome;

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
    const QUEUE_DEPTH: u32 = 4;
    let opts = SessionOptions {
        params,
        discovery: flags & 4 != 0,
        queue_depth: QUEUE_DEPTH,
        nop_interval: Some(Duration::from_secs(1)),
        nop_timeout: Duration::from_secs(1),
        write_buffer_budget: 64 * 1024,
        data_in_budget: 64 * 1024,
        shared_budget: None,
        data_out_timeout: None,
        lun_exists: overlaybd_target::iscsi::session::LunExists::new(|n| n < 2),
        allow_target_reset: true,
        cid: 0,
        first_cmd_sn: 0,
        first_stat_sn: 0,
    };
    let mut session = Session::new(opts, start);
    let codec = PduCodec::new();
    if flags & 8 != 0 && flags & 4 == 0 {
        hostile_prefix(&mut session, start, QUEUE_DEPTH, wire.len());
    }
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
                let response = CommandOutcome {
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
        assert_task_table_bounded(&session, QUEUE_DEPTH);
    }
});

/// At most `depth` commands wait in the window or run, immediate ones included; twice that
/// leaves room for however the window accounts commands answered but not yet retired.
fn assert_task_table_bounded(session: &Session, depth: u32) {
    assert!(
        session.task_count() <= 2 * depth as usize,
        "{} tasks with a window of {depth}",
        session.task_count()
    );
}

/// `depth + 4` immediate READs (never completed here, so they stay outstanding) and an
/// immediate ping with `ping_len` bytes of data, more than the initiator's 512-byte limit.
fn hostile_prefix(session: &mut Session, now: Instant, depth: u32, ping_len: usize) {
    for itt in 1..=depth + 4 {
        let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        let cmd = ScsiCommand {
            immediate: true,
            read: true,
            itt,
            ..ScsiCommand::new(LunField::from_number(0).unwrap(), &read10, 4096)
        };
        session.handle_pdu(Pdu::ScsiCommand(cmd), now);
        assert_task_table_bounded(session, depth);
    }
    let ping = NopOut {
        immediate: true,
        lun: LunField::default(),
        itt: depth + 5,
        ttt: RESERVED_TAG,
        cmd_sn: 0,
        exp_stat_sn: 0,
        data: Bytes::from(vec![0x5a; 513 + ping_len % 7680]),
    };
    session.handle_pdu(Pdu::NopOut(ping), now);
    let mut refused = 0;
    while let Some(pdu) = session.poll_transmit() {
        assert!(pdu.data().len() <= 512 || matches!(pdu, Pdu::Reject(_)));
        if matches!(&pdu, Pdu::Reject(r) if r.reason == RejectReason::IMMEDIATE_COMMAND_REJECT) {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "{} immediate commands with a window of {depth}, none refused",
        depth + 4
    );
}

//! Session state machine tests: PDUs in (some as literal wire bytes), PDUs and events out.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::iscsi::pdu::{
    DataIn, DataOut, LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, NopOut,
    ScsiCommand, TaskMgmtRequest, TaskMgmtResponse, TmfFunction, TmfResponseCode,
};
use crate::scsi::sense::{asc, key, Sense};
use crate::scsi::{CommandOutcome, DataDirection};

const K: u32 = 1024;

/// The options most session tests start from (the pair's tests too).
pub(super) fn options() -> SessionOptions {
    SessionOptions {
        params: SessionParams {
            max_send_data_segment_length: 4096,
            max_burst_length: 16 * K,
            first_burst_length: 8 * K,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            ..SessionParams::default()
        },
        discovery: false,
        queue_depth: 8,
        nop_interval: Some(Duration::from_secs(10)),
        nop_timeout: Duration::from_secs(5),
        write_buffer_budget: 64 * 1024,
        data_in_budget: 64 * 1024,
        shared_budget: None,
        data_out_timeout: None,
        lun_exists: LunExists::new(|n| n < 2),
        allow_target_reset: true,
        cid: 0,
        first_cmd_sn: 1,
        first_stat_sn: 100,
    }
}

fn session() -> (Session, Instant) {
    let now = Instant::now();
    (Session::new(options(), now), now)
}

/// Decodes literal wire bytes (no digests) into a PDU.
fn wire(bytes: &[u8]) -> Pdu {
    let mut buf = BytesMut::from(bytes);
    let pdu = PduCodec::new().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    pdu
}

fn sent(s: &mut Session) -> Vec<Pdu> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn lun(n: u64) -> LunField {
    LunField::from_number(n).unwrap()
}

fn command(itt: u32, cmd_sn: u32, read: bool, write: bool, edtl: u32, data: Bytes) -> ScsiCommand {
    ScsiCommand {
        read,
        write,
        itt,
        cmd_sn,
        data,
        ..ScsiCommand::new(lun(0), &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], edtl)
    }
}

fn read(itt: u32, cmd_sn: u32, edtl: u32) -> Pdu {
    Pdu::ScsiCommand(command(itt, cmd_sn, true, false, edtl, Bytes::new()))
}

fn write(itt: u32, cmd_sn: u32, edtl: u32, immediate: Bytes) -> Pdu {
    Pdu::ScsiCommand(command(itt, cmd_sn, false, true, edtl, immediate))
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, len: usize, fin: bool) -> Pdu {
    Pdu::DataOut(DataOut {
        is_final: fin,
        lun: lun(0),
        itt,
        ttt,
        exp_stat_sn: 0,
        data_sn,
        buffer_offset: offset,
        data: Bytes::from(vec![(offset % 251) as u8; len]),
    })
}

fn tmf(
    itt: u32,
    function: TmfFunction,
    lun_no: u64,
    ref_itt: u32,
    ref_cmd_sn: u32,
    cmd_sn: u32,
) -> Pdu {
    Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function,
        lun: lun(lun_no),
        itt,
        referenced_task_tag: ref_itt,
        cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn,
        exp_data_sn: 0,
    })
}

fn good(data: Bytes, residual: i64) -> CommandOutcome {
    CommandOutcome {
        status: 0,
        sense: None,
        data_in: data,
        residual,
    }
}

/// The tasks started by Execute events (other events are dropped).
fn started(s: &mut Session) -> Vec<TaskId> {
    events(s)
        .into_iter()
        .filter_map(|e| match e {
            Event::Execute { task, .. } => Some(task),
            _ => None,
        })
        .collect()
}

/// The single Execute event expected, as (task, request).
fn executed(s: &mut Session) -> (TaskId, ScsiRequest) {
    match &events(s)[..] {
        [Event::Execute { task, request }] => (*task, request.clone()),
        other => panic!("expected one Execute, got {other:?}"),
    }
}

fn tmf_response(pdus: &[Pdu]) -> &TaskMgmtResponse {
    match pdus {
        [Pdu::TaskMgmtResponse(r)] => r,
        other => panic!("expected one TMF response, got {other:?}"),
    }
}

#[test]
fn nop_out_from_wire_is_echoed_with_statsn() {
    let (mut s, now) = session();
    // NOP-Out, immediate, F, ITT 0x10, TTT reserved, CmdSN 1, ExpStatSN 100, data "ping".
    #[rustfmt::skip]
    let bytes = [
        0x40, 0x80, 0, 0,  0, 0, 0, 4,  0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0x10,  0xff, 0xff, 0xff, 0xff,  0, 0, 0, 1,  0, 0, 0, 100,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        b'p', b'i', b'n', b'g',
    ];
    s.handle_pdu(wire(&bytes), now);
    let out = sent(&mut s);
    let [Pdu::NopIn(nop)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((nop.itt, nop.ttt, nop.stat_sn), (0x10, RESERVED_TAG, 100));
    assert_eq!((nop.exp_cmd_sn, nop.max_cmd_sn), (1, 8));
    assert_eq!(&nop.data[..], b"ping");

    // The next status PDU takes the next StatSN; the immediate NOP did not move ExpCmdSN.
    s.handle_pdu(wire(&bytes), now);
    let out = sent(&mut s);
    let [Pdu::NopIn(nop)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((nop.stat_sn, nop.exp_cmd_sn), (101, 1));
}

#[test]
fn scsi_command_from_wire_starts_a_read() {
    let (mut s, now) = session();
    // SCSI Command: F+R+SIMPLE, LUN 1, ITT 7, EDTL 512, CmdSN 1, INQUIRY CDB.
    #[rustfmt::skip]
    let bytes = [
        0x01, 0xc1, 0, 0,  0, 0, 0, 0,  0, 1, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 7,  0, 0, 2, 0,  0, 0, 0, 1,  0, 0, 0, 100,
        0x12, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    s.handle_pdu(wire(&bytes), now);
    let (_, req) = executed(&mut s);
    assert_eq!(req.lun, 1);
    assert_eq!(req.direction, DataDirection::In);
    assert_eq!(req.expected_len, 512);
    assert_eq!(req.cdb[0], 0x12);
    assert_eq!(s.exp_cmd_sn(), 2);
}

#[test]
fn commands_are_delivered_in_cmdsn_order_and_out_of_window_ones_dropped() {
    let (mut s, now) = session();
    s.handle_pdu(read(3, 3, 512), now);
    s.handle_pdu(read(2, 2, 512), now);
    assert!(events(&mut s).is_empty(), "CmdSN 1 is missing");
    s.handle_pdu(read(9, 0, 512), now); // below ExpCmdSN
    s.handle_pdu(read(10, 9, 512), now); // MaxCmdSN + 1 (1 + 8 - 1 = 8)
    assert!(events(&mut s).is_empty());
    assert!(
        sent(&mut s).is_empty(),
        "out-of-window commands are silently ignored"
    );
    s.handle_pdu(read(1, 1, 512), now);
    let cdb_order: Vec<u64> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            Event::Execute { task, .. } => task.0,
            other => panic!("{other:?}"),
        })
        .collect();
    // Task ids follow arrival of accepted commands (CmdSN 3, 2, 1 -> ids 0, 1, 2); delivery
    // follows CmdSN.
    assert_eq!(cdb_order, vec![2, 1, 0]);
    assert_eq!(s.exp_cmd_sn(), 4);
    assert_eq!(s.task_count(), 3);
}

#[test]
fn window_closes_at_queue_depth_and_reopens_on_completion() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            queue_depth: 2,
            ..options()
        },
        now,
    );
    s.handle_pdu(read(1, 1, 0), now);
    s.handle_pdu(read(2, 2, 0), now);
    let tasks: Vec<TaskId> = started(&mut s);
    assert_eq!((s.exp_cmd_sn(), s.max_cmd_sn()), (3, 2), "closed window");
    s.handle_pdu(read(3, 3, 0), now);
    assert!(events(&mut s).is_empty(), "CmdSN 3 is above MaxCmdSN");
    s.complete(tasks[0], good(Bytes::new(), 0));
    let out = sent(&mut s);
    let [Pdu::ScsiResponse(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (r.itt, r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn),
        (1, 100, 3, 3)
    );
    s.handle_pdu(read(3, 3, 0), now);
    assert_eq!(events(&mut s).len(), 1);
}

#[test]
fn read_data_is_split_at_the_initiators_segment_length_with_phase_collapse() {
    let (mut s, now) = session();
    s.handle_pdu(read(5, 1, 40 * K), now);
    let (task, _) = executed(&mut s);
    let data: Bytes = (0..36 * K).map(|i| i as u8).collect::<Vec<u8>>().into();
    s.complete(task, good(data.clone(), 4 * K as i64));
    let out = sent(&mut s);
    let ins: Vec<&DataIn> = out
        .iter()
        .map(|p| match p {
            Pdu::DataIn(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    // 36 KiB at 4 KiB segments = 9 PDUs; bursts of 16 KiB put F on PDUs 3, 7 and 8.
    assert_eq!(ins.len(), 9);
    let finals: Vec<u32> = ins
        .iter()
        .filter(|d| d.is_final)
        .map(|d| d.data_sn)
        .collect();
    assert_eq!(finals, vec![3, 7, 8]);
    let last = ins[8];
    assert_eq!(last.status, Some(0));
    assert!(last.underflow && !last.overflow);
    assert_eq!(last.residual_count, 4 * K);
    assert_eq!(last.stat_sn, 100);
    assert!(ins[..8].iter().all(|d| d.status.is_none()));
    let joined: Vec<u8> = ins.iter().flat_map(|d| d.data.to_vec()).collect();
    assert_eq!(Bytes::from(joined), data);
    assert_eq!(s.task_count(), 0);
}

#[test]
fn write_with_immediate_data_is_completed_through_r2ts() {
    let (mut s, now) = session();
    // 40 KiB write, 4 KiB immediate; InitialR2T=Yes; MaxBurstLength 16 KiB.
    s.handle_pdu(write(8, 1, 40 * K, Bytes::from(vec![7u8; 4096])), now);
    assert!(events(&mut s).is_empty());
    let mut offset = 4 * K;
    let mut expected = vec![(4 * K, 16 * K, 0), (20 * K, 16 * K, 1), (36 * K, 4 * K, 2)];
    expected.reverse();
    while let Some(r2t) = sent(&mut s).into_iter().find_map(|p| match p {
        Pdu::R2t(r) => Some(r),
        _ => None,
    }) {
        assert_eq!(
            (r2t.buffer_offset, r2t.desired_length, r2t.r2t_sn),
            expected.pop().unwrap()
        );
        assert_eq!(
            (r2t.itt, r2t.stat_sn),
            (8, 100),
            "R2T does not consume StatSN"
        );
        assert_ne!(r2t.ttt, RESERVED_TAG);
        let end = r2t.buffer_offset + r2t.desired_length;
        let mut sn = 0;
        while offset < end {
            let n = 4096.min(end - offset);
            s.handle_pdu(
                data_out(8, r2t.ttt, sn, offset, n as usize, offset + n == end),
                now,
            );
            offset += n;
            sn += 1;
        }
    }
    assert!(expected.is_empty());
    let (task, req) = executed(&mut s);
    assert_eq!(req.direction, DataDirection::Out);
    assert_eq!(req.data_out.len(), 40 * K as usize);
    assert_eq!(req.data_out[0], 7);
    assert_eq!(req.data_out[20 * K as usize], ((20 * K) % 251) as u8);
    s.complete(task, good(Bytes::new(), 0));
    let out = sent(&mut s);
    let [Pdu::ScsiResponse(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((r.status, r.exp_data_sn), (0, 3));
}

#[test]
fn unsolicited_data_out_is_accepted_when_initial_r2t_is_off() {
    let now = Instant::now();
    let mut opts = options();
    opts.params.initial_r2t = false;
    let mut s = Session::new(opts, now);
    let mut cmd = command(4, 1, false, true, 8 * K, Bytes::from(vec![1u8; 2048]));
    cmd.is_final = false;
    s.handle_pdu(Pdu::ScsiCommand(cmd), now);
    s.handle_pdu(data_out(4, RESERVED_TAG, 0, 2048, 4096, false), now);
    s.handle_pdu(data_out(4, RESERVED_TAG, 1, 6144, 2048, true), now);
    assert!(sent(&mut s).is_empty(), "no R2T needed");
    let (_, req) = executed(&mut s);
    assert_eq!(req.data_out.len(), 8 * K as usize);
}

#[test]
fn data_sn_error_terminates_the_task_with_check_condition() {
    let (mut s, now) = session();
    s.handle_pdu(write(8, 1, 1024, Bytes::new()), now);
    let out = sent(&mut s);
    let [Pdu::R2t(r2t)] = &out[..] else {
        panic!("{out:?}")
    };
    s.handle_pdu(data_out(8, r2t.ttt, 1, 0, 512, false), now); // DataSN 1 instead of 0
    assert!(events(&mut s).is_empty(), "never executed");
    let out = sent(&mut s);
    let [Pdu::ScsiResponse(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.status, 0x02);
    let sense = r.sense().unwrap();
    assert_eq!((sense[2], sense[12]), (0x0b, 0x4b));
    // The rest of the task's data is ignored, and the slot is free again.
    s.handle_pdu(data_out(8, r2t.ttt, 1, 512, 512, true), now);
    assert!(sent(&mut s).is_empty());
    assert_eq!(s.task_count(), 0);
    assert_eq!(s.max_cmd_sn(), 9);
}

#[test]
fn abort_task_cancels_the_running_command_which_then_gets_no_response() {
    let (mut s, now) = session();
    s.handle_pdu(read(0x20, 1, 512), now);
    let (task, _) = executed(&mut s);
    s.handle_pdu(tmf(0x21, TmfFunction::ABORT_TASK, 0, 0x20, 1, 2), now);
    assert!(matches!(&events(&mut s)[..], [Event::Cancel(t)] if *t == task));
    let out = sent(&mut s);
    assert_eq!(tmf_response(&out).response, TmfResponseCode::COMPLETE);
    assert_eq!(tmf_response(&out).itt, 0x21);
    s.complete(task, good(Bytes::from_static(b"late"), 0));
    assert!(sent(&mut s).is_empty(), "aborted tasks get no response");

    // Aborting it again: it is gone and its CmdSN is behind ExpCmdSN.
    s.handle_pdu(tmf(0x22, TmfFunction::ABORT_TASK, 0, 0x20, 1, 2), now);
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::TASK_DOES_NOT_EXIST
    );
}

#[test]
fn abort_of_a_command_not_yet_arrived_voids_its_cmdsn() {
    let (mut s, now) = session();
    // TMF with CmdSN 2 refers to CmdSN 1, which has not arrived.
    s.handle_pdu(tmf(0x30, TmfFunction::ABORT_TASK, 0, 0x31, 1, 2), now);
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::COMPLETE
    );
    assert_eq!(s.exp_cmd_sn(), 2, "CmdSN 1 considered received");
    s.handle_pdu(read(0x31, 1, 512), now);
    assert!(events(&mut s).is_empty(), "the late command is ignored");
}

#[test]
fn abort_of_a_command_waiting_for_data_out_drops_it() {
    let (mut s, now) = session();
    s.handle_pdu(write(0x40, 1, 4096, Bytes::new()), now);
    let out = sent(&mut s);
    let [Pdu::R2t(r2t)] = &out[..] else {
        panic!("{out:?}")
    };
    s.handle_pdu(tmf(0x41, TmfFunction::ABORT_TASK, 0, 0x40, 1, 2), now);
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::COMPLETE
    );
    assert!(events(&mut s).is_empty(), "nothing was running");
    s.handle_pdu(data_out(0x40, r2t.ttt, 0, 0, 4096, true), now);
    assert!(events(&mut s).is_empty() && sent(&mut s).is_empty());
}

#[test]
fn lun_reset_cancels_that_luns_tasks_only() {
    let (mut s, now) = session();
    let mut on_lun1 = command(1, 1, true, false, 512, Bytes::new());
    on_lun1.lun = lun(1);
    s.handle_pdu(Pdu::ScsiCommand(on_lun1), now);
    s.handle_pdu(read(2, 2, 512), now);
    let ids: Vec<TaskId> = started(&mut s);
    s.handle_pdu(
        tmf(9, TmfFunction::LOGICAL_UNIT_RESET, 1, RESERVED_TAG, 0, 3),
        now,
    );
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [Event::Cancel(t), Event::LunReset { lun: 1 }] if *t == ids[0]),
        "{ev:?}"
    );
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::COMPLETE
    );
    assert_eq!(s.task_count(), 1);

    s.handle_pdu(
        tmf(10, TmfFunction::LOGICAL_UNIT_RESET, 5, RESERVED_TAG, 0, 3),
        now,
    );
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::LUN_DOES_NOT_EXIST
    );
    s.handle_pdu(tmf(11, TmfFunction::TASK_REASSIGN, 0, 2, 0, 3), now);
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::REASSIGNMENT_NOT_SUPPORTED
    );
}

#[test]
fn lun_reset_reaches_a_lun_added_after_login() {
    use crate::scsi::{LunConfig, ScsiTarget};
    let ram = || LunConfig {
        device: Arc::new(crate::block::RamDevice::new(1 << 20)),
        serial: "S".to_string(),
        product: "P".to_string(),
        options: Default::default(),
    };
    let target = Arc::new(ScsiTarget::new(vec![ram()]));
    let scsi = target.clone();
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            lun_exists: LunExists::new(move |n| scsi.has_lun(n)),
            ..options()
        },
        now,
    );
    let mut reset = |itt, cmd_sn| {
        s.handle_pdu(
            tmf(
                itt,
                TmfFunction::LOGICAL_UNIT_RESET,
                7,
                RESERVED_TAG,
                0,
                cmd_sn,
            ),
            now,
        );
        (tmf_response(&sent(&mut s)).response, events(&mut s))
    };
    let (code, ev) = reset(1, 1);
    assert_eq!((code, ev.len()), (TmfResponseCode::LUN_DOES_NOT_EXIST, 0));
    target.insert_lun(7, ram()).unwrap();
    let (code, ev) = reset(2, 1);
    assert_eq!(code, TmfResponseCode::COMPLETE);
    assert!(matches!(&ev[..], [Event::LunReset { lun: 7 }]), "{ev:?}");
    target.remove_lun(7).unwrap();
    let (code, _) = reset(3, 1);
    assert_eq!(code, TmfResponseCode::LUN_DOES_NOT_EXIST);
}

#[test]
fn cold_reset_answers_then_closes() {
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    events(&mut s);
    s.handle_pdu(
        tmf(2, TmfFunction::TARGET_COLD_RESET, 0, RESERVED_TAG, 0, 2),
        now,
    );
    let ev = events(&mut s);
    assert!(
        matches!(
            &ev[..],
            [Event::Cancel(_), Event::TargetReset { cold: true }]
        ),
        "{ev:?}"
    );
    assert_eq!(
        tmf_response(&sent(&mut s)).response,
        TmfResponseCode::COMPLETE
    );
    assert_eq!(s.close_reason(), Some(&CloseReason::ColdReset));
}

#[test]
fn target_resets_are_rejected_unless_the_target_allows_them() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            allow_target_reset: false,
            ..options()
        },
        now,
    );
    s.handle_pdu(read(1, 1, 512), now);
    assert_eq!(started(&mut s).len(), 1);
    // TARGET COLD RESET (function 7), immediate, ITT 2, CmdSN 2, from the wire.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x40 | 0x02;
    bhs[1] = 0x80 | 7;
    bhs[16..20].copy_from_slice(&2u32.to_be_bytes());
    bhs[20..24].copy_from_slice(&RESERVED_TAG.to_be_bytes());
    bhs[24..28].copy_from_slice(&2u32.to_be_bytes());
    s.handle_pdu(wire(&bhs), now);
    let out = sent(&mut s);
    assert_eq!(tmf_response(&out).response, TmfResponseCode::REJECTED);
    assert_eq!(tmf_response(&out).response.0, 255);
    assert!(events(&mut s).is_empty(), "nothing cancelled or reset");
    assert_eq!(s.close_reason(), None);
    // TARGET WARM RESET (6) likewise; LOGICAL UNIT RESET still works.
    let mut answer = |function, itt| {
        s.handle_pdu(tmf(itt, function, 0, RESERVED_TAG, 0, 2), now);
        (tmf_response(&sent(&mut s)).response, events(&mut s))
    };
    let (code, ev) = answer(TmfFunction::TARGET_WARM_RESET, 3);
    assert_eq!((code, ev.len()), (TmfResponseCode::REJECTED, 0));
    let (code, ev) = answer(TmfFunction::LOGICAL_UNIT_RESET, 4);
    assert_eq!(code, TmfResponseCode::COMPLETE);
    assert!(
        matches!(&ev[..], [Event::Cancel(_), Event::LunReset { lun: 0 }]),
        "{ev:?}"
    );
}

#[test]
fn target_pings_after_idle_and_drops_a_dead_initiator() {
    let (mut s, start) = session();
    assert_eq!(s.poll_timeout(), Some(start + Duration::from_secs(10)));
    s.handle_timeout(start + Duration::from_secs(9));
    assert!(sent(&mut s).is_empty());
    let t1 = start + Duration::from_secs(10);
    s.handle_timeout(t1);
    let out = sent(&mut s);
    let [Pdu::NopIn(ping)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((ping.itt, ping.stat_sn), (RESERVED_TAG, 100));
    assert_ne!(ping.ttt, RESERVED_TAG);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(5)));
    s.handle_timeout(t1 + Duration::from_secs(5));
    assert_eq!(s.close_reason(), Some(&CloseReason::NopTimeout));
}

#[test]
fn answered_ping_keeps_the_connection() {
    let (mut s, start) = session();
    let t1 = start + Duration::from_secs(10);
    s.handle_timeout(t1);
    let out = sent(&mut s);
    let [Pdu::NopIn(ping)] = &out[..] else {
        panic!("{out:?}")
    };
    let reply = NopOut {
        immediate: true,
        lun: ping.lun,
        itt: RESERVED_TAG,
        ttt: ping.ttt,
        cmd_sn: 1,
        exp_stat_sn: 100,
        data: Bytes::new(),
    };
    s.handle_pdu(Pdu::NopOut(reply), t1 + Duration::from_secs(1));
    assert!(sent(&mut s).is_empty(), "a ping answer gets no reply");
    s.handle_timeout(t1 + Duration::from_secs(6));
    assert_eq!(s.close_reason(), None);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(11)));
}

#[test]
fn logout_terminates_tasks_answers_and_closes() {
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let (task, _) = executed(&mut s);
    s.handle_pdu(
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt: 0x50,
            cid: 0,
            cmd_sn: 2,
            exp_stat_sn: 100,
        }),
        now,
    );
    assert!(matches!(&events(&mut s)[..], [Event::Cancel(t)] if *t == task));
    let out = sent(&mut s);
    let [Pdu::LogoutResponse(LogoutResponse {
        response,
        itt: 0x50,
        stat_sn: 100,
        ..
    })] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*response, LogoutResponseCode::CLOSED);
    assert_eq!(s.close_reason(), Some(&CloseReason::LoggedOut));
    s.complete(task, good(Bytes::new(), 0));
    s.handle_pdu(read(2, 2, 512), now);
    assert!(sent(&mut s).is_empty() && events(&mut s).is_empty());
}

#[test]
fn unknown_opcodes_and_snack_are_rejected_with_the_header() {
    let (mut s, now) = session();
    let mut bytes = [0u8; 48];
    bytes[0] = 0x1c; // an opcode no one defined
    bytes[16..20].copy_from_slice(&[0, 0, 0, 0x99]);
    s.handle_pdu(wire(&bytes), now);
    let out = sent(&mut s);
    let [Pdu::Reject(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::COMMAND_NOT_SUPPORTED);
    assert_eq!(&r.data[..], &bytes[..]);
    assert_eq!(r.stat_sn, 100);

    let mut snack = [0u8; 48];
    snack[0] = 0x10;
    snack[1] = 0x80;
    s.handle_pdu(wire(&snack), now);
    let out = sent(&mut s);
    let [Pdu::Reject(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::PROTOCOL_ERROR);
    assert_eq!(r.data[0], 0x10);
}

#[test]
fn duplicate_itt_is_rejected_and_its_cmdsn_consumed() {
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    events(&mut s);
    s.handle_pdu(read(1, 2, 512), now);
    let out = sent(&mut s);
    let [Pdu::Reject(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::TASK_IN_PROGRESS);
    assert_eq!(s.exp_cmd_sn(), 3);
}

#[test]
fn oversized_write_is_refused_without_soliciting_data() {
    let (mut s, now) = session();
    s.handle_pdu(write(1, 1, tasks::MAX_WRITE_LEN + 512, Bytes::new()), now);
    assert!(events(&mut s).is_empty());
    let out = sent(&mut s);
    let [Pdu::ScsiResponse(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.status, 0x02);
    assert_eq!(r.sense().unwrap()[2], 0x05);
}

#[test]
fn shutdown_asks_for_logout() {
    let (mut s, _) = session();
    s.request_logout(Duration::from_secs(5), Instant::now());
    let out = sent(&mut s);
    let [Pdu::AsyncMessage(m)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((m.event, m.parameter3, m.stat_sn), (1, 5, 100));
}

#[test]
fn logout_grace_expires_at_its_deadline_only() {
    let (mut s, now) = session();
    let grace = Duration::from_secs(3);
    s.handle_pdu(read(1, 1, 512), now);
    let [task] = started(&mut s)[..] else {
        panic!("one task")
    };
    s.request_logout(grace, now);
    let out = sent(&mut s);
    let [Pdu::AsyncMessage(m)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((m.event, m.parameter3), (1, 3));
    // The grace deadline comes before the 10 s NOP interval.
    assert_eq!(s.poll_timeout(), Some(now + grace));
    // Traffic does not extend it: only a logout counts.
    s.handle_pdu(
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: lun(0),
            itt: 7,
            ttt: RESERVED_TAG,
            cmd_sn: 2,
            exp_stat_sn: 0,
            data: Bytes::new(),
        }),
        now + Duration::from_secs(2),
    );
    sent(&mut s);
    s.handle_timeout(now + grace - Duration::from_millis(1));
    assert_eq!(s.close_reason(), None);
    assert_eq!(s.poll_timeout(), Some(now + grace));
    // Asking again does not move the deadline or send a second message.
    s.request_logout(Duration::from_secs(60), now + Duration::from_secs(2));
    assert!(sent(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(now + grace));
    s.handle_timeout(now + grace);
    assert_eq!(s.close_reason(), Some(&CloseReason::LogoutTimeout));
    assert!(matches!(&events(&mut s)[..], [Event::Cancel(t)] if *t == task));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn logout_in_time_is_not_overtaken_by_the_grace_deadline() {
    let (mut s, now) = session();
    let grace = Duration::from_secs(3);
    s.request_logout(grace, now);
    sent(&mut s);
    s.handle_pdu(
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt: 0x51,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 101,
        }),
        now + Duration::from_secs(1),
    );
    assert_eq!(s.close_reason(), Some(&CloseReason::LoggedOut));
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(now + grace);
    assert_eq!(s.close_reason(), Some(&CloseReason::LoggedOut));
}

#[test]
fn a_reset_through_another_session_drops_tasks_silently() {
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let mut on_lun1 = command(2, 2, true, false, 512, Bytes::new());
    on_lun1.lun = lun(1);
    s.handle_pdu(Pdu::ScsiCommand(on_lun1), now);
    let ids: Vec<TaskId> = started(&mut s);
    assert_eq!(s.abort_for_foreign_reset(Some(1)), 1);
    assert!(matches!(&events(&mut s)[..], [Event::Cancel(t)] if *t == ids[1]));
    assert!(sent(&mut s).is_empty(), "no response for aborted tasks");
    assert_eq!(s.max_cmd_sn(), 9, "the slot is free again");
    assert_eq!(s.abort_for_foreign_reset(None), 1);
    assert_eq!(s.task_count(), 0);
}

#[test]
fn data_out_lost_to_a_digest_error_terminates_its_task() {
    let (mut s, now) = session();
    s.handle_pdu(write(8, 1, 1024, Bytes::new()), now);
    let out = sent(&mut s);
    let [Pdu::R2t(r2t)] = &out[..] else {
        panic!("{out:?}")
    };
    let bad = header_of(&data_out(8, r2t.ttt, 0, 0, 1024, true));
    s.reject_corrupt(RejectReason::DATA_DIGEST_ERROR, &bad);
    let out = sent(&mut s);
    let [Pdu::ScsiResponse(r), Pdu::Reject(j)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((r.itt, r.status), (8, 0x02));
    let sense = r.sense().unwrap();
    assert_eq!((sense[2], sense[12], sense[13]), (0x0b, 0x47, 0x05));
    assert_eq!(j.reason, RejectReason::DATA_DIGEST_ERROR);
    assert_eq!(&j.data[..], &bad[..]);
    assert!(events(&mut s).is_empty());
}

#[test]
fn numbered_command_lost_to_a_digest_error_does_not_stall_the_window() {
    let (mut s, now) = session();
    let bad = header_of(&write(1, 1, 512, Bytes::from(vec![0u8; 512])));
    s.reject_corrupt(RejectReason::DATA_DIGEST_ERROR, &bad);
    assert!(matches!(&sent(&mut s)[..], [Pdu::Reject(_)]));
    assert_eq!(s.exp_cmd_sn(), 2);
    s.handle_pdu(read(2, 2, 512), now);
    assert_eq!(started(&mut s).len(), 1);
}

fn r2ts(pdus: &[Pdu]) -> Vec<(u32, u32, u32)> {
    pdus.iter()
        .filter_map(|p| match p {
            Pdu::R2t(r) => Some((r.itt, r.buffer_offset, r.desired_length)),
            _ => None,
        })
        .collect()
}

#[test]
fn writes_beyond_the_buffer_budget_wait_for_their_first_r2t() {
    // Budget 64 KiB, bursts of 16 KiB: A (48 KiB) starts, B (32 KiB) must wait.
    let (mut s, now) = session();
    s.handle_pdu(write(0xa, 1, 48 * K, Bytes::new()), now);
    s.handle_pdu(write(0xb, 2, 32 * K, Bytes::new()), now);
    let out = sent(&mut s);
    assert_eq!(r2ts(&out), vec![(0xa, 0, 16 * K)], "only A is solicited");

    // A's data arrives burst by burst; B still waits while A executes.
    let mut offset = 0;
    let mut ttt = match &out[0] {
        Pdu::R2t(r) => r.ttt,
        other => panic!("{other:?}"),
    };
    loop {
        s.handle_pdu(data_out(0xa, ttt, 0, offset, (16 * K) as usize, true), now);
        offset += 16 * K;
        let out = sent(&mut s);
        match &out[..] {
            [Pdu::R2t(r)] if r.itt == 0xa => ttt = r.ttt,
            [] => break,
            other => panic!("{other:?}"),
        }
    }
    let (task, req) = executed(&mut s);
    assert_eq!(req.data_out.len(), 48 * K as usize);
    assert!(sent(&mut s).is_empty(), "B waits until A completes");
    s.complete(task, good(Bytes::new(), 0));
    let out = sent(&mut s);
    assert!(matches!(&out[0], Pdu::ScsiResponse(r) if r.itt == 0xa));
    assert_eq!(r2ts(&out), vec![(0xb, 0, 16 * K)], "A's budget went to B");
}

#[test]
fn aborting_a_write_gives_its_budget_to_the_next() {
    let (mut s, now) = session();
    s.handle_pdu(write(0xa, 1, 64 * K, Bytes::new()), now);
    s.handle_pdu(write(0xb, 2, 8 * K, Bytes::new()), now);
    assert_eq!(r2ts(&sent(&mut s)), vec![(0xa, 0, 16 * K)]);
    s.handle_pdu(tmf(0x30, TmfFunction::ABORT_TASK, 0, 0xa, 1, 3), now);
    let out = sent(&mut s);
    assert_eq!(r2ts(&out), vec![(0xb, 0, 8 * K)]);
    assert!(matches!(out.last(), Some(Pdu::TaskMgmtResponse(_))));
}

#[test]
fn a_write_larger_than_the_whole_budget_still_proceeds() {
    let (mut s, now) = session();
    s.handle_pdu(write(0xa, 1, 128 * K, Bytes::new()), now);
    assert_eq!(r2ts(&sent(&mut s)), vec![(0xa, 0, 16 * K)]);
}

fn immediate(mut p: Pdu) -> Pdu {
    if let Pdu::ScsiCommand(c) = &mut p {
        c.immediate = true;
    }
    p
}

#[test]
fn immediate_commands_beyond_the_queue_depth_are_rejected() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            queue_depth: 2,
            ..options()
        },
        now,
    );
    s.handle_pdu(immediate(read(1, 1, 512)), now);
    s.handle_pdu(immediate(read(2, 1, 512)), now);
    assert_eq!(started(&mut s).len(), 2);
    assert_eq!(
        s.max_cmd_sn(),
        2,
        "the window did not open past the held slots"
    );
    s.handle_pdu(immediate(read(3, 1, 512)), now);
    assert!(events(&mut s).is_empty(), "the third holds nothing");
    let out = sent(&mut s);
    let [Pdu::Reject(r)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(r.reason, RejectReason::IMMEDIATE_COMMAND_REJECT);
    assert_eq!(s.task_count(), 2);
}

#[test]
fn reads_wait_for_unsent_data_in_and_the_window_stays_shut() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            data_in_budget: 8 * K as u64,
            ..options()
        },
        now,
    );
    s.handle_pdu(read(1, 1, 8 * K), now);
    s.handle_pdu(read(2, 2, 8 * K), now);
    let first = started(&mut s);
    assert_eq!(first.len(), 1, "the second read waits for Data-In to drain");
    assert!(s.waiting_for_memory());
    let max_before = s.max_cmd_sn();
    s.complete(first[0], good(Bytes::from(vec![1u8; 8 * K as usize]), 0));
    let pdus = sent(&mut s);
    assert!(!pdus.is_empty());
    s.memory_freed();
    assert!(events(&mut s).is_empty(), "its Data-In is not sent yet");
    assert_eq!(
        s.max_cmd_sn(),
        max_before + 1,
        "one slot retired, the waiting read holds one"
    );
    // The writer task drops the PDUs once written: their bytes come back.
    drop(pdus);
    s.memory_freed();
    assert_eq!(started(&mut s).len(), 1);
    assert!(!s.waiting_for_memory());
}

#[test]
fn a_read_without_data_gives_its_budget_back_at_once() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            data_in_budget: 8 * K as u64,
            ..options()
        },
        now,
    );
    s.handle_pdu(read(1, 1, 8 * K), now);
    let t = started(&mut s);
    let failed = Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR);
    s.complete(t[0], CommandOutcome::check_condition(failed));
    let (own, _) = s.budgets();
    assert_eq!(own.used(), 0);
}

#[test]
fn the_shared_budget_is_shared_but_an_idle_session_always_gets_a_small_command_through() {
    let now = Instant::now();
    let shared = MemoryBudget::new(4 << 20);
    let opts = SessionOptions {
        data_in_budget: 64 << 20,
        shared_budget: Some(shared.clone()),
        queue_depth: 16,
        ..options()
    };
    let mut a = Session::new(opts.clone(), now);
    let mut b = Session::new(opts, now);
    // A's 3 MiB read fits; B's 2 MiB does not, and B holds nothing but 2 MiB is over the floor.
    a.handle_pdu(read(1, 1, 3 << 20), now);
    let a1 = started(&mut a);
    assert_eq!(a1.len(), 1);
    assert_eq!(shared.used(), 3 << 20);
    b.handle_pdu(read(1, 1, 2 << 20), now);
    assert!(started(&mut b).is_empty() && b.waiting_for_memory());
    // Another session's 4 KiB read still runs: it holds nothing and fits the floor.
    let (mut c, _) = session();
    c.opts.shared_budget = Some(shared.clone());
    c.handle_pdu(read(1, 1, 4 * K), now);
    assert_eq!(started(&mut c).len(), 1);
    // A's data is sent: B proceeds.
    a.complete(a1[0], good(Bytes::from(vec![0u8; 3 << 20]), 0));
    drop(sent(&mut a));
    assert_eq!(shared.used(), 0);
    b.memory_freed();
    assert_eq!(started(&mut b).len(), 1);
    assert_eq!(shared.used(), 2 << 20);
    // Ending a session gives everything back.
    drop(b);
    assert_eq!(shared.used(), 0);
}

#[test]
fn a_write_whose_data_out_never_comes_ends_after_the_timeout() {
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            data_out_timeout: Some(Duration::from_secs(20)),
            nop_interval: None,
            ..options()
        },
        t0,
    );
    s.handle_pdu(write(1, 1, 16 * K, Bytes::new()), t0);
    assert_eq!(r2ts(&sent(&mut s)).len(), 1);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(20)));
    // Data keeps it alive: the timeout counts from the last Data-Out.
    let t1 = t0 + Duration::from_secs(15);
    s.handle_pdu(data_out(1, 1, 0, 0, 4096, false), t1);
    s.handle_timeout(t0 + Duration::from_secs(25));
    assert!(sent(&mut s)
        .iter()
        .all(|p| !matches!(p, Pdu::ScsiResponse(_))));
    let late = t1 + Duration::from_secs(20);
    s.handle_timeout(late);
    let out = sent(&mut s);
    let r = out
        .iter()
        .find_map(|p| match p {
            Pdu::ScsiResponse(r) => Some(r),
            _ => None,
        })
        .expect("a response");
    assert_eq!(r.status, 0x02);
    assert_eq!(
        (r.data[4] & 0x0f, r.data[14], r.data[15]),
        (0x0b, 0x4b, 0x06)
    );
    assert_eq!(s.task_count(), 0);
    // Data that arrives afterwards belongs to no task.
    s.handle_pdu(data_out(1, 1, 1, 4096, 4096, false), late);
    assert!(sent(&mut s).is_empty());
}

#[test]
fn an_r2t_sent_on_a_completion_is_timed_from_the_next_clock_reading() {
    let t0 = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            data_out_timeout: Some(Duration::from_secs(20)),
            write_buffer_budget: 16 * K as u64,
            nop_interval: None,
            ..options()
        },
        t0,
    );
    s.handle_pdu(read(1, 1, 512), t0);
    let t = started(&mut s);
    s.handle_pdu(write(2, 2, 16 * K, Bytes::new()), t0);
    s.handle_pdu(write(3, 3, 16 * K, Bytes::new()), t0);
    assert_eq!(
        r2ts(&sent(&mut s)).len(),
        1,
        "the second write waits for budget"
    );
    // Much later the read completes; the first write ends, the second gets its R2T.
    let t1 = t0 + Duration::from_secs(100);
    s.handle_pdu(
        data_out(2, 1, 0, 0, 16 * K as usize, true),
        t1 - Duration::from_secs(1),
    );
    let w = started(&mut s);
    s.complete(t[0], good(Bytes::from_static(&[0; 512]), 0));
    s.complete(w[0], good(Bytes::new(), 0));
    assert_eq!(r2ts(&sent(&mut s)).len(), 1);
    // The session has no clock of its own: it asks to be told the time at once.
    assert!(s.poll_timeout().unwrap() <= t1);
    s.handle_timeout(t1);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(20)));
}

#[test]
fn commands_behind_a_cmd_sn_gap_may_hold_only_so_much_data() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            params: SessionParams {
                first_burst_length: 1 << 20,
                max_recv_data_segment_length: 1 << 20,
                ..options().params
            },
            queue_depth: 64,
            ..options()
        },
        now,
    );
    // CmdSN 1 never comes; 2.. each carry 1 MiB of immediate data.
    for n in 0..16u32 {
        s.handle_pdu(
            write(10 + n, 2 + n, 1 << 20, Bytes::from(vec![0u8; 1 << 20])),
            now,
        );
        assert!(s.close_reason().is_none(), "{n} MiB is still allowed");
    }
    s.handle_pdu(write(40, 18, 1 << 20, Bytes::from(vec![0u8; 1 << 20])), now);
    assert!(matches!(
        s.close_reason(),
        Some(CloseReason::ProtocolError(_))
    ));
}

#[test]
fn a_filled_gap_releases_its_count() {
    let now = Instant::now();
    let mut s = Session::new(
        SessionOptions {
            params: SessionParams {
                first_burst_length: 1 << 20,
                ..options().params
            },
            queue_depth: 64,
            ..options()
        },
        now,
    );
    for round in 0..3u32 {
        let base = 1 + round * 17;
        for n in 1..17u32 {
            s.handle_pdu(
                write(base + n, base + n, 1 << 20, Bytes::from(vec![0u8; 1 << 20])),
                now,
            );
        }
        // The missing command arrives: everything is delivered, nothing is held any more.
        s.handle_pdu(read(base, base, 512), now);
        let tasks = started(&mut s);
        assert_eq!(tasks.len(), 17);
        for t in tasks {
            s.complete(t, good(Bytes::new(), 0));
        }
        assert!(s.close_reason().is_none(), "round {round}");
    }
}

#[test]
fn data_behind_a_cmd_sn_gap_counts_against_the_shared_budget() {
    let now = Instant::now();
    let shared = MemoryBudget::new(3 << 20);
    let mut s = Session::new(
        SessionOptions {
            params: SessionParams {
                first_burst_length: 1 << 20,
                ..options().params
            },
            queue_depth: 64,
            shared_budget: Some(shared.clone()),
            ..options()
        },
        now,
    );
    for n in 0..3u32 {
        s.handle_pdu(
            write(10 + n, 2 + n, 1 << 20, Bytes::from(vec![0u8; 1 << 20])),
            now,
        );
    }
    assert_eq!(shared.used(), 3 << 20);
    assert!(s.close_reason().is_none());
    s.handle_pdu(write(20, 5, 1 << 20, Bytes::from(vec![0u8; 1 << 20])), now);
    assert!(matches!(
        s.close_reason(),
        Some(CloseReason::ProtocolError(_))
    ));
    drop(s);
    assert_eq!(shared.used(), 0);
}

#[test]
fn queued_pdus_leave_with_the_window_of_the_moment_they_are_sent() {
    // ExpCmdSN and MaxCmdSN are written by `poll_transmit`, not when a PDU is queued: a
    // response that waits while the window moves tells the initiator the newer values
    // (RFC 7143 §4.2.2.1: they acknowledge what the target has received and bound what it
    // accepts now; see `Session::poll_transmit`).
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    s.handle_pdu(read(2, 2, 512), now);
    let tasks = started(&mut s);
    assert_eq!((s.exp_cmd_sn(), s.max_cmd_sn()), (3, 8));
    // The first read's response is queued while two slots are still held...
    s.complete(tasks[0], good(Bytes::from_static(&[1; 512]), 0));
    assert_eq!(s.max_cmd_sn(), 9);
    // ...then, before it is sent, CmdSN 3 arrives (ExpCmdSN 4) and the second read ends
    // (MaxCmdSN 10).
    s.handle_pdu(read(3, 3, 512), now);
    s.complete(tasks[1], good(Bytes::from_static(&[2; 512]), 0));
    assert_eq!((s.exp_cmd_sn(), s.max_cmd_sn()), (4, 10));
    let out = sent(&mut s);
    let windows: Vec<(u32, u32, u32)> = out
        .iter()
        .map(|p| match p {
            Pdu::DataIn(d) => (d.itt, d.exp_cmd_sn, d.max_cmd_sn),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(windows, vec![(1, 4, 10), (2, 4, 10)]);

    // Every kind the session queues is stamped: R2T, Reject, TMF response, NOP-In.
    s.handle_pdu(write(4, 4, 1024, Bytes::new()), now);
    s.handle_pdu(read(4, 5, 512), now); // duplicate ITT: Reject
    s.handle_pdu(tmf(5, TmfFunction::ABORT_TASK, 0, 0x99, 0, 6), now);
    s.handle_timeout(now + Duration::from_secs(10));
    let out = sent(&mut s);
    let kinds: Vec<u8> = out.iter().map(Pdu::opcode).collect();
    assert_eq!(kinds, vec![0x31, 0x3f, 0x22, 0x20]);
    for mut pdu in out {
        let (exp, max) = pdu.cmd_window_mut().expect("a target PDU");
        assert_eq!((*exp, *max), (s.exp_cmd_sn(), s.max_cmd_sn()), "{pdu:?}");
    }
}

/// `p` (a SCSI command) with task attribute `attr` and LUN `lun_no`.
fn tagged(mut p: Pdu, attr: crate::iscsi::pdu::TaskAttribute, lun_no: u64) -> Pdu {
    if let Pdu::ScsiCommand(c) = &mut p {
        c.attr = attr;
        c.lun = lun(lun_no);
    }
    p
}

#[test]
fn ordered_from_wire_waits_for_older_tasks_and_holds_back_younger_simple_ones() {
    use crate::iscsi::pdu::TaskAttribute::Simple;
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let (first, _) = executed(&mut s);
    // SCSI Command, F|R|ATTR=2 (ORDERED), LUN 0, ITT 2, EDTL 512, CmdSN 2, READ(10) of 1 block.
    #[rustfmt::skip]
    let ordered = wire(&[
        0x01, 0xc2, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 2, 0, 0, 0x02, 0,
        0, 0, 0, 2, 0, 0, 0, 0,
        0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
    ]);
    s.handle_pdu(ordered, now);
    s.handle_pdu(tagged(read(3, 3, 512), Simple, 0), now);
    assert!(
        events(&mut s).is_empty(),
        "ORDERED waits for the older read"
    );

    s.complete(first, good(Bytes::from(vec![1; 512]), 0));
    let (second, request) = executed(&mut s);
    assert_eq!(&request.cdb[..6], &[0x28, 0, 0, 0, 0, 8]);
    assert!(
        events(&mut s).is_empty(),
        "SIMPLE waits for the ORDERED one"
    );

    s.complete(second, good(Bytes::from(vec![2; 512]), 0));
    let (third, _) = executed(&mut s);
    s.complete(third, good(Bytes::from(vec![3; 512]), 0));
    let itts: Vec<u32> = sent(&mut s)
        .iter()
        .filter_map(|p| match p {
            Pdu::DataIn(d) if d.status.is_some() => Some(d.itt),
            _ => None,
        })
        .collect();
    assert_eq!(itts, vec![1, 2, 3]);
}

#[test]
fn head_of_queue_starts_at_once_and_younger_simple_tasks_wait_for_it() {
    use crate::iscsi::pdu::TaskAttribute::{HeadOfQueue, Ordered, Simple};
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let (first, _) = executed(&mut s);
    s.handle_pdu(tagged(read(2, 2, 512), Ordered, 0), now);
    s.handle_pdu(tagged(read(3, 3, 512), HeadOfQueue, 0), now);
    let (hoq, _) = executed(&mut s);
    s.handle_pdu(tagged(read(4, 4, 512), Simple, 0), now);
    assert!(events(&mut s).is_empty());

    s.complete(hoq, good(Bytes::new(), 512));
    assert!(events(&mut s).is_empty(), "the ORDERED one still waits");
    s.complete(first, good(Bytes::new(), 512));
    let (ordered, _) = executed(&mut s);
    assert!(
        events(&mut s).is_empty(),
        "the SIMPLE one waits for the ORDERED one"
    );
    s.complete(ordered, good(Bytes::new(), 512));
    assert_eq!(started(&mut s).len(), 1);
}

#[test]
fn task_sets_are_per_lun() {
    use crate::iscsi::pdu::TaskAttribute::{Ordered, Simple};
    let (mut s, now) = session();
    s.handle_pdu(tagged(read(1, 1, 512), Simple, 0), now);
    let (first, _) = executed(&mut s);
    s.handle_pdu(tagged(read(2, 2, 512), Ordered, 0), now);
    s.handle_pdu(tagged(read(3, 3, 512), Ordered, 1), now);
    s.handle_pdu(tagged(read(4, 4, 512), Simple, 1), now);
    let lun1 = events(&mut s);
    assert_eq!(
        lun1.len(),
        1,
        "LUN 1's ORDERED task waits for nothing: {lun1:?}"
    );
    let Event::Execute { task, request } = &lun1[0] else {
        panic!("{lun1:?}")
    };
    assert_eq!(request.lun, 1);
    s.complete(*task, good(Bytes::new(), 512));
    let (simple1, request) = executed(&mut s);
    assert_eq!(request.lun, 1);
    s.complete(simple1, good(Bytes::new(), 512));
    assert!(
        events(&mut s).is_empty(),
        "LUN 0's ORDERED task still waits"
    );
    s.complete(first, good(Bytes::new(), 512));
    assert_eq!(executed(&mut s).1.lun, 0);
}

#[test]
fn a_dormant_write_solicits_no_data_until_its_turn() {
    use crate::iscsi::pdu::TaskAttribute::Ordered;
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let (first, _) = executed(&mut s);
    s.handle_pdu(tagged(write(2, 2, 4096, Bytes::new()), Ordered, 0), now);
    assert!(sent(&mut s).is_empty(), "no R2T while it is dormant");
    s.complete(first, good(Bytes::new(), 512));
    let out = sent(&mut s);
    let r2t = out
        .iter()
        .find_map(|p| match p {
            Pdu::R2t(r) => Some(r.clone()),
            _ => None,
        })
        .expect("an R2T once the read left");
    assert!(events(&mut s).is_empty());
    s.handle_pdu(data_out(2, r2t.ttt, 0, 0, 4096, true), now);
    let (_, request) = executed(&mut s);
    assert_eq!(request.data_out.len(), 4096);
}

#[test]
fn aborting_the_task_set_drops_dormant_tasks_without_starting_them() {
    use crate::iscsi::pdu::TaskAttribute::{Ordered, Simple};
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let (first, _) = executed(&mut s);
    s.handle_pdu(tagged(read(2, 2, 512), Ordered, 0), now);
    s.handle_pdu(tagged(read(3, 3, 512), Simple, 0), now);
    s.handle_pdu(tmf(9, TmfFunction::ABORT_TASK_SET, 0, 0, 0, 4), now);
    assert_eq!(
        events(&mut s)
            .iter()
            .map(|e| match e {
                Event::Cancel(t) => Ok(*t),
                other => Err(format!("{other:?}")),
            })
            .collect::<Vec<_>>(),
        vec![Ok(first)],
        "only the running read is cancelled; the dormant ones never start"
    );
    assert_eq!(s.task_count(), 0);
    // The set is empty: a new ORDERED task starts at once.
    s.handle_pdu(tagged(read(4, 4, 512), Ordered, 0), now);
    assert_eq!(started(&mut s).len(), 1);
}

#[test]
fn aborting_the_older_task_lets_the_ordered_one_start() {
    use crate::iscsi::pdu::TaskAttribute::Ordered;
    let (mut s, now) = session();
    s.handle_pdu(read(1, 1, 512), now);
    let (first, _) = executed(&mut s);
    s.handle_pdu(tagged(read(2, 2, 512), Ordered, 0), now);
    assert!(events(&mut s).is_empty());
    s.handle_pdu(tmf(9, TmfFunction::ABORT_TASK, 0, 1, 1, 3), now);
    let after = events(&mut s);
    assert!(
        matches!(&after[0], Event::Cancel(t) if *t == first),
        "{after:?}"
    );
    assert!(matches!(&after[1..], [Event::Execute { .. }]), "{after:?}");
}

#[test]
fn aca_and_reserved_attributes_are_refused() {
    use crate::iscsi::pdu::TaskAttribute::{Aca, Reserved};
    let (mut s, now) = session();
    for (itt, attr) in [(1, Aca), (2, Reserved(5))] {
        s.handle_pdu(tagged(read(itt, itt, 512), attr, 0), now);
        assert!(events(&mut s).is_empty());
        let out = sent(&mut s);
        let [Pdu::ScsiResponse(r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(r.status, 0x02);
        let sense = r.sense().unwrap();
        assert_eq!((sense[2], sense[12], sense[13]), (0x05, 0x24, 0x00));
    }
}

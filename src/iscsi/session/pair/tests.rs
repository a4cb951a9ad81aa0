//! Timer and ordering cases on the in-memory pair: what the socket tests can only show with
//! real sleeps and "nothing came within N ms", shown here at exact simulated instants.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{Backend, Pair};
use crate::block::RamDevice;
use crate::iscsi::pdu::{Pdu, TmfFunction, TmfResponseCode, RESERVED_TAG};
use crate::iscsi::session::{CloseReason, Event, LunExists, SessionOptions};
use crate::scsi::sense::{asc, key};
use crate::scsi::{status, LunConfig, ScsiTarget};

/// Simulated time every command takes on the RAM target.
const SERVICE: Duration = Duration::from_millis(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The session tests' options without NOP pings (the cases that want them say so).
fn options() -> SessionOptions {
    SessionOptions {
        nop_interval: None,
        ..crate::iscsi::session::tests::options()
    }
}

/// A pair whose session serves one 1 MiB RAM LUN, with its power-on UNIT ATTENTION already
/// taken, so the next command sees the medium.
fn on_ram(opts: SessionOptions, service: Duration) -> (Pair, Arc<ScsiTarget>) {
    let target = Arc::new(ScsiTarget::new(vec![LunConfig {
        device: Arc::new(RamDevice::new(1 << 20)),
        serial: "PAIR0".to_string(),
        product: "pair".to_string(),
        options: Default::default(),
    }]));
    let scsi = target.clone();
    let opts = SessionOptions {
        lun_exists: LunExists::new(move |n| scsi.has_lun(n)),
        ..opts
    };
    let mut p = Pair::with_target(opts, target.clone(), service);
    let (itt, tur) = p.ini.test_unit_ready(0);
    p.send(tur);
    p.advance(service);
    let (_, st, _, sense) = outcome(&mut p, itt);
    let sense = sense.expect("sense");
    assert_eq!(
        (st, sense[2] & 0x0f),
        (status::CHECK_CONDITION, key::UNIT_ATTENTION)
    );
    (p, target)
}

/// When the status of `itt` arrived, the status, the Data-In before it and the sense, from
/// what the initiator received; any other PDU on the way fails the test.
fn outcome(p: &mut Pair, itt: u32) -> (Duration, u8, Bytes, Option<Bytes>) {
    let mut data = BytesMut::new();
    while let Some((at, pdu)) = p.recv_at() {
        match pdu {
            Pdu::DataIn(d) if d.itt == itt => {
                data.extend_from_slice(&d.data);
                if let Some(status) = d.status {
                    return (at, status, data.freeze(), None);
                }
            }
            Pdu::ScsiResponse(r) if r.itt == itt => {
                return (at, r.status, data.freeze(), r.sense())
            }
            other => panic!("waiting for the status of {itt}, got {other:?}"),
        }
    }
    panic!("no status for {itt} by {:?}", p.elapsed())
}

/// The CmdSN a SCSI Command carries.
fn cmd_sn_of(pdu: &Pdu) -> u32 {
    match pdu {
        Pdu::ScsiCommand(c) => c.cmd_sn,
        other => panic!("not a command: {other:?}"),
    }
}

fn tmf_answer(p: &mut Pair) -> (Duration, TmfResponseCode) {
    match p.recv_at() {
        Some((at, Pdu::TaskMgmtResponse(r))) => (at, r.response),
        other => panic!("expected a TMF response, got {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// Ported from `tests/iscsi_target.rs::idle_initiator_is_pinged_and_dropped_when_silent`,
/// which spends about a second of real time and can only bound each deadline from below.
#[test]
fn a_silent_initiator_is_pinged_then_dropped_at_the_exact_deadlines() {
    let opts = SessionOptions {
        nop_interval: Some(secs(10)),
        nop_timeout: secs(5),
        ..options()
    };
    let mut p = Pair::new(opts, Backend::Manual);
    p.advance(secs(10) - ms(1));
    assert!(p.recv().is_none(), "no ping before the idle interval");
    p.advance(ms(1));
    let Some((at, Pdu::NopIn(ping))) = p.recv_at() else {
        panic!("no ping at 10 s")
    };
    assert_eq!(at, secs(10));
    assert_eq!(ping.itt, RESERVED_TAG);
    assert_ne!(ping.ttt, RESERVED_TAG);

    // Answered at 12 s: nothing answers the answer, and the connection stays.
    p.advance(secs(2));
    let reply = p.ini.ping_reply(&ping);
    p.send(reply);
    // A command at 13 s is a sign of life too. It never finishes (nobody completes it).
    p.advance(secs(1));
    let (_, read) = p.ini.read10(0, 0, 1);
    p.send(read);
    p.drive();
    let task = p.held()[0].0;

    // Idle from 13 s: pinged at 23 s, and with no answer dropped at 28 s, its command
    // cancelled.
    p.advance(secs(20));
    let Some((at, Pdu::NopIn(second))) = p.recv_at() else {
        panic!("no second ping")
    };
    assert_eq!(at, secs(23));
    assert_ne!(second.ttt, ping.ttt);
    assert!(p.recv().is_none(), "the command got no response");
    assert_eq!(p.closed_at(), Some(secs(28)));
    assert_eq!(p.close_reason(), Some(&CloseReason::NopTimeout));
    assert_eq!(p.cancelled(), &[task]);
    assert!(p.held().is_empty());

    // A late answer reaches nobody.
    let late = p.ini.ping_reply(&second);
    p.send(late);
    p.advance(secs(60));
    assert!(p.recv().is_none());
}

/// Ported from `tests/hostile.rs::unanswered_r2t_ends_after_the_data_out_timeout`, which runs
/// the binary for two seconds and more and can only say the verdict came within 30 s.
#[test]
fn an_unanswered_r2t_ends_with_initiator_response_timeout_on_time() {
    let opts = SessionOptions {
        data_out_timeout: Some(secs(20)),
        ..options()
    };
    let (mut p, _target) = on_ram(opts, SERVICE);
    let t0 = p.elapsed();
    let data = pattern(4096, 7);
    let (itt, write) = p.ini.write10(0, 8, &data, 0);
    p.send(write);
    p.drive();
    let Some((at, Pdu::R2t(r2t))) = p.recv_at() else {
        panic!("no R2T")
    };
    assert_eq!((at, r2t.itt, r2t.desired_length), (t0, itt, 4096));

    // Half the data at +15 s: the timeout counts from the last Data-Out.
    p.ini.segment = 2048;
    let mut halves = p.ini.answer(&r2t, &data).into_iter();
    let (first, second) = (halves.next().unwrap(), halves.next().unwrap());
    p.advance(secs(15));
    p.send(first);
    p.advance(secs(20) - ms(1));
    assert!(p.recv().is_none(), "still waiting at +35 s - 1 ms");
    p.advance(ms(1));
    let (at, st, _, sense) = outcome(&mut p, itt);
    let sense = sense.expect("sense");
    assert_eq!(at, t0 + secs(35));
    assert_eq!(st, status::CHECK_CONDITION);
    assert_eq!(
        (sense[2] & 0x0f, sense[12], sense[13]),
        (
            key::ABORTED_COMMAND,
            asc::INITIATOR_RESPONSE_TIMEOUT.0,
            asc::INITIATOR_RESPONSE_TIMEOUT.1
        )
    );

    // The rest of the data belongs to no task any more, and the blocks were never written.
    p.send(second);
    p.advance(secs(60));
    assert!(p.recv().is_none());
    let (itt, read) = p.ini.read10(0, 8, 8);
    p.send(read);
    p.advance(SERVICE);
    let (_, st, got, _) = outcome(&mut p, itt);
    assert_eq!((st, got), (status::GOOD, Bytes::from(vec![0u8; 4096])));
    assert_eq!(p.session.task_count(), 0);
}

/// Over a socket, "the READ waited for the WRITE before it" can only be shown by sleeping and
/// seeing nothing; here nothing is a fact at every instant.
#[test]
fn commands_sent_out_of_cmd_sn_order_run_in_cmd_sn_order() {
    let (mut p, _target) = on_ram(options(), SERVICE);
    let data = pattern(512, 3);
    let (w_itt, write) = p.ini.write10(0, 3, &data, 512);
    let (r_itt, read) = p.ini.read10(0, 3, 1);
    // One more command numbered just past MaxCmdSN: outside the window.
    let next = p.ini.cmd_sn;
    let (stray_itt, mut stray) = p.ini.read10(0, 3, 1);
    if let Pdu::ScsiCommand(c) = &mut stray {
        c.cmd_sn = p.ini.max_cmd_sn.wrapping_add(1);
    }
    p.ini.cmd_sn = next;

    // The READ overtakes the WRITE it follows in CmdSN order: it waits.
    p.send(read);
    p.advance(secs(1));
    assert!(
        p.recv().is_none(),
        "the READ waits for CmdSN {}",
        cmd_sn_of(&write)
    );
    assert_eq!(p.session.task_count(), 1);
    // A command outside the window is dropped without an answer (RFC 7143 §4.2.2.1).
    p.send(stray);
    p.advance(secs(1));
    assert!(p.recv().is_none());
    assert_eq!(p.session.task_count(), 1);

    // The WRITE arrives: both run, WRITE first, and the READ sees its data.
    let sent_at = p.elapsed();
    p.send(write);
    p.advance(SERVICE);
    let (at, st, _, _) = outcome(&mut p, w_itt);
    assert_eq!((at, st), (sent_at + SERVICE, status::GOOD));
    let (at, st, got, _) = outcome(&mut p, r_itt);
    assert_eq!((at, st, got), (sent_at + SERVICE, status::GOOD, data));
    assert!(p.recv().is_none(), "nothing for ITT {stray_itt}");
    assert_eq!(p.ini.exp_cmd_sn, next, "ExpCmdSN acknowledges both");
}

/// ABORT TASK against a command in flight: while it runs the abort wins and the command never
/// answers; once its status is out the task is gone. The socket version of "never answers"
/// waits half a second (`tests/iscsi_target.rs`, LUN reset across sessions).
#[test]
fn abort_task_wins_only_while_the_command_runs() {
    let service = ms(10);
    let (mut p, _target) = on_ram(options(), service);
    let (a, read_a) = p.ini.read10(0, 0, 1);
    let a_sn = cmd_sn_of(&read_a);
    p.send(read_a);
    p.advance(ms(5));
    let (_, abort) = p.ini.tmf(TmfFunction::ABORT_TASK, 0, a, a_sn);
    let abort_at = p.elapsed();
    p.send(abort);
    p.advance(secs(1));
    assert_eq!(tmf_answer(&mut p), (abort_at, TmfResponseCode::COMPLETE));
    assert!(p.recv().is_none(), "the aborted READ never answers");
    assert_eq!(p.cancelled().len(), 1);

    let (b, read_b) = p.ini.read10(0, 0, 1);
    let b_sn = cmd_sn_of(&read_b);
    let start = p.elapsed();
    p.send(read_b);
    p.advance(service);
    let (at, st, _, _) = outcome(&mut p, b);
    assert_eq!((at, st), (start + service, status::GOOD));
    p.advance(ms(1));
    let (_, abort) = p.ini.tmf(TmfFunction::ABORT_TASK, 0, b, b_sn);
    p.send(abort);
    p.drive();
    assert_eq!(tmf_answer(&mut p).1, TmfResponseCode::TASK_DOES_NOT_EXIST);
    assert_eq!(p.cancelled().len(), 1, "nothing more was cancelled");
}

/// The in-session half of `tests/iscsi_target.rs::lun_reset_by_one_session_aborts_the_other_
/// sessions_tasks_on_that_lun`: a write waiting for its Data-Out is ended by LOGICAL UNIT
/// RESET without a response, its late data changes nothing, and the reset is reported as a
/// UNIT ATTENTION. No sleeping: the minute of silence below takes no time.
#[test]
fn lun_reset_ends_a_write_waiting_for_data_without_a_response() {
    let (mut p, _target) = on_ram(options(), SERVICE);
    let data = pattern(4096, 9);
    let (w, write) = p.ini.write10(0, 0, &data, 0);
    p.send(write);
    p.drive();
    let Some(Pdu::R2t(r2t)) = p.recv() else {
        panic!("no R2T")
    };
    assert_eq!(r2t.itt, w);
    let (_, reset) = p
        .ini
        .tmf(TmfFunction::LOGICAL_UNIT_RESET, 0, RESERVED_TAG, 0);
    p.send(reset);
    p.drive();
    assert_eq!(tmf_answer(&mut p).1, TmfResponseCode::COMPLETE);
    assert!(matches!(p.resets(), [Event::LunReset { lun: 0 }]));

    let late = p.ini.answer(&r2t, &data);
    p.send_all(late);
    p.advance(secs(60));
    assert!(p.recv().is_none(), "no response for the ended write");

    let (itt, tur) = p.ini.test_unit_ready(0);
    p.send(tur);
    p.advance(SERVICE);
    let (_, st, _, sense) = outcome(&mut p, itt);
    let sense = sense.expect("sense");
    assert_eq!(
        (st, sense[2] & 0x0f, sense[12], sense[13]),
        (
            status::CHECK_CONDITION,
            key::UNIT_ATTENTION,
            asc::BUS_DEVICE_RESET.0,
            asc::BUS_DEVICE_RESET.1
        )
    );
    let (itt, read) = p.ini.read10(0, 0, 8);
    p.send(read);
    p.advance(SERVICE);
    let (_, st, got, _) = outcome(&mut p, itt);
    assert_eq!((st, got), (status::GOOD, Bytes::from(vec![0u8; 4096])));

    // Logging out ends the session cleanly.
    let (_, logout) = p.ini.logout();
    p.send(logout);
    p.drive();
    assert!(matches!(p.recv(), Some(Pdu::LogoutResponse(_))));
    assert_eq!(p.close_reason(), Some(&CloseReason::LoggedOut));
    assert_eq!(p.closed_at(), Some(p.elapsed()));
}

/// Completions in any order: responses leave in completion order with StatSNs in sequence
/// (the initiator side checks each), and each completion opens the window by one slot. The
/// test picks the order; over a socket it belongs to the scheduler.
#[test]
fn completions_out_of_order_reopen_the_window_slot_by_slot() {
    let opts = SessionOptions {
        queue_depth: 2,
        ..options()
    };
    let mut p = Pair::new(opts, Backend::Manual);
    let (a, read_a) = p.ini.read10(0, 0, 1);
    let (b, read_b) = p.ini.read10(0, 1, 1);
    let (_, read_c) = p.ini.read10(0, 2, 1);
    assert_eq!(
        cmd_sn_of(&read_c),
        p.ini.max_cmd_sn + 1,
        "C is past the window"
    );
    p.send_all([read_a, read_b, read_c]);
    p.drive();
    assert_eq!(p.held().len(), 2, "C was dropped");
    let (task_a, task_b) = (p.held()[0].0, p.held()[1].0);

    let block = |byte: u8| crate::scsi::CommandOutcome {
        status: status::GOOD,
        sense: None,
        data_in: Bytes::from(vec![byte; 512]),
        residual: 0,
    };
    p.complete(task_b, block(0xb));
    let first = p.received();
    assert!(matches!(&first[..], [Pdu::DataIn(d)] if d.itt == b && d.data[0] == 0xb));
    assert_eq!(
        (p.ini.exp_cmd_sn, p.ini.max_cmd_sn),
        (3, 3),
        "one slot open"
    );
    p.complete(task_a, block(0xa));
    let second = p.received();
    assert!(matches!(&second[..], [Pdu::DataIn(d)] if d.itt == a && d.data[0] == 0xa));
    assert_eq!(p.ini.max_cmd_sn, 4);

    // C again with the same CmdSN, now inside the window.
    p.ini.cmd_sn = 3;
    let (c, read_c) = p.ini.read10(0, 2, 1);
    assert_eq!(cmd_sn_of(&read_c), 3);
    p.send(read_c);
    p.drive();
    let (task_c, request) = p.held()[0].clone();
    assert_eq!(request.cdb[5], 2, "LBA 2");
    p.complete(task_c, block(0xc));
    let (_, st, got, _) = outcome(&mut p, c);
    assert_eq!((st, got[0]), (status::GOOD, 0xc));
}

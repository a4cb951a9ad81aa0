//! The real server on 127.0.0.1 driven by a small initiator over TCP: discovery, login, data
//! integrity through R2T and Data-In splitting, NOP, Reject, reinstatement, pings, shutdown.

mod common;
mod support;

use std::time::Duration;

use bytes::Bytes;
use common::{pattern, Initiator, LoginKeys, TestServer, IQN};
use overlaybd_target::config::Tuning;
use overlaybd_target::iscsi::pdu::{
    LoginStatus, LogoutResponseCode, LunField, NopOut, Pdu, R2t, RejectReason, TextRequest,
    RESERVED_TAG,
};

fn quiet() -> Tuning {
    Tuning {
        nop_interval: None,
        ..Tuning::default()
    }
}

/// SendTargets=All through `ini` (logged in), as text.
async fn send_targets(ini: &mut Initiator) -> String {
    let req = TextRequest {
        immediate: true,
        is_final: true,
        continues: false,
        lun: LunField::default(),
        itt: 0x78,
        ttt: RESERVED_TAG,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
        data: Bytes::from_static(b"SendTargets=All\0"),
    };
    ini.send(&Pdu::TextRequest(req)).await;
    let Some(Pdu::TextResponse(rsp)) = ini.recv().await else {
        panic!("no text response")
    };
    assert!(rsp.is_final);
    String::from_utf8_lossy(&rsp.data).to_string()
}

#[tokio::test]
async fn discovery_reports_the_target_at_the_accepting_address() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut ini = Initiator::connect(server.addr).await;
    let rsp = ini.login(None, &LoginKeys::default()).await;
    assert_eq!(rsp.status, LoginStatus::SUCCESS);
    assert_ne!(rsp.tsih, 0);
    let text = send_targets(&mut ini).await;
    assert!(text.contains(&format!("TargetName={IQN}\0")), "{text:?}");
    assert!(
        text.contains(&format!("TargetAddress={},1\0", server.addr)),
        "{text:?}"
    );
}

#[tokio::test]
async fn each_portal_is_a_target_port_in_a_port_group_of_its_own() {
    let server = TestServer::start_portals(common::config(&["ram:1M"], quiet()), 2).await;
    let (first, second) = (server.addrs[0], server.addrs[1]);
    // Discovery through either portal finds both paths, the one asked first.
    let mut ini = Initiator::connect(second).await;
    ini.login(None, &LoginKeys::default()).await;
    let text = send_targets(&mut ini).await;
    assert_eq!(
        text,
        format!("TargetName={IQN}\0TargetAddress={second},2\0TargetAddress={first},1\0")
    );

    // A session through the second portal is told its tag, and the LUN names that port and
    // group; the same initiator port through the first is another nexus on port 1.
    for (addr, tag) in [(second, 2u16), (first, 1)] {
        let mut ini = Initiator::connect(addr).await;
        ini.login_normal(IQN, &LoginKeys::default()).await;
        assert_eq!(
            ini.key("TargetPortalGroupTag"),
            Some(tag.to_string().as_str())
        );
        let itt = ini
            .command(
                0,
                &[0x12, 1, 0x83, 0, 255, 0],
                true,
                false,
                255,
                Bytes::new(),
                true,
            )
            .await;
        let (status, vpd, _) = ini.finish_read(itt).await;
        assert_eq!(status, 0);
        let port = [0x51, 0x94, 0, 4, 0, 0, 0, tag as u8];
        let group = [0x51, 0x95, 0, 4, 0, 0, 0, tag as u8];
        assert!(
            vpd.windows(8).any(|w| w == port),
            "relative target port {tag}: {vpd:02x?}"
        );
        assert!(
            vpd.windows(8).any(|w| w == group),
            "target port group {tag}: {vpd:02x?}"
        );
        // REPORT TARGET PORT GROUPS: both groups, active/optimized, one port each.
        let rtpg = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        let itt = ini
            .command(0, &rtpg, true, false, 256, Bytes::new(), true)
            .await;
        let (status, groups, _) = ini.finish_read(itt).await;
        assert_eq!(status, 0);
        assert_eq!(
            &groups[..],
            &[
                0, 0, 0, 24, 0, 0x0f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0x0f, 0, 2, 0, 0, 0, 1, 0,
                0, 0, 2
            ]
        );
        let itt = ini
            .command(
                0,
                &[0x12, 0, 0, 0, 36, 0],
                true,
                false,
                36,
                Bytes::new(),
                true,
            )
            .await;
        let (_, inquiry, _) = ini.finish_read(itt).await;
        assert_eq!(inquiry[5] & 0x30, 0x10, "TPGS: implicit ALUA");
    }
}

#[tokio::test]
async fn unknown_target_is_refused() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut ini = Initiator::connect(server.addr).await;
    let rsp = ini
        .login(Some("iqn.2026-11.io.overlaybd:nope"), &LoginKeys::default())
        .await;
    assert_eq!(rsp.status, LoginStatus::NOT_FOUND);
    assert!(
        ini.recv().await.is_none(),
        "connection closed after a failed login"
    );
}

#[tokio::test]
async fn large_write_and_read_back_through_r2t_and_data_in_splits() {
    let server = TestServer::start(&["ram:8M"], quiet()).await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    // The target declares its own MaxRecvDataSegmentLength.
    assert_eq!(ini.key("MaxRecvDataSegmentLength"), Some("262144"));

    // 1 MiB: 4 KiB immediate, then R2Ts of at most MaxBurstLength (64 KiB).
    let data = pattern(1 << 20, 1);
    let (status, sense) = ini.write10(0, 100, &data, 4096, 4096).await;
    assert_eq!(status, 0, "{sense:?}");
    // Read back in one command: Data-In PDUs of our 4 KiB MaxRecvDataSegmentLength.
    let back = ini.read10(0, 100, 2048).await;
    assert_eq!(back, data);
    // A neighbouring block is untouched.
    assert_eq!(ini.read10(0, 99, 1).await, Bytes::from(vec![0u8; 512]));
}

#[tokio::test]
async fn unsolicited_data_out_when_initial_r2t_is_off() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let keys = LoginKeys {
        initial_r2t: false,
        ..LoginKeys::default()
    };
    let mut ini = Initiator::logged_in(server.addr, &keys).await;
    assert_eq!(ini.key("InitialR2T"), Some("No"));
    let data = pattern(8192, 2);
    let cdb = [0x2a, 0, 0, 0, 0, 8, 0, 0, 16, 0];
    let itt = ini
        .command(0, &cdb, false, true, 8192, data.slice(..1024), false)
        .await;
    ini.unsolicited(itt, 0, 1024, data.slice(1024..5120), false)
        .await;
    ini.unsolicited(itt, 1, 5120, data.slice(5120..), true)
        .await;
    let Some(Pdu::ScsiResponse(r)) = ini.recv().await else {
        panic!("no response")
    };
    assert_eq!((r.itt, r.status), (itt, 0));
    ini.exp_stat_sn = r.stat_sn + 1;
    assert_eq!(ini.read10(0, 8, 16).await, data);
}

#[tokio::test]
async fn nop_out_is_echoed_and_unknown_opcodes_are_rejected() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    let nop = NopOut {
        immediate: true,
        lun: LunField::default(),
        itt: 0x1234,
        ttt: RESERVED_TAG,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
        data: Bytes::from_static(b"nopping\0"),
    };
    ini.send(&Pdu::NopOut(nop)).await;
    let Some(Pdu::NopIn(reply)) = ini.recv().await else {
        panic!("no NOP-In")
    };
    assert_eq!((reply.itt, reply.ttt), (0x1234, RESERVED_TAG));
    assert_eq!(&reply.data[..], b"nopping\0");
    assert_eq!(reply.stat_sn, ini.exp_stat_sn);

    let mut odd = [0u8; 48];
    odd[0] = 0x1d;
    odd[16..20].copy_from_slice(&0x55u32.to_be_bytes());
    ini.send(&Pdu::Unknown(overlaybd_target::iscsi::pdu::UnknownPdu {
        bhs: odd,
        ahs: Bytes::new(),
        data: Bytes::new(),
    }))
    .await;
    let Some(Pdu::Reject(reject)) = ini.recv().await else {
        panic!("no Reject")
    };
    assert_eq!(reject.reason, RejectReason::COMMAND_NOT_SUPPORTED);
    assert_eq!(&reject.data[..], &odd[..]);
    // The session still works.
    assert_eq!(ini.read10(0, 0, 1).await.len(), 512);
}

#[tokio::test]
async fn logout_is_answered_then_the_connection_closes() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    assert_eq!(ini.logout().await, LogoutResponseCode::CLOSED);
    assert!(ini.recv().await.is_none());
}

#[tokio::test]
async fn a_new_login_of_the_same_initiator_port_reinstates_the_session() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut old = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    let data = pattern(512, 3);
    assert_eq!(old.write10(0, 5, &data, 512, 512).await.0, 0);
    let old_tsih = old.tsih;

    // Same InitiatorName and ISID, TSIH 0: the host reconnecting.
    let mut new = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    assert_ne!(new.tsih, old_tsih);
    assert!(
        old.recv().await.is_none(),
        "the old session's connection is closed"
    );
    assert_eq!(new.read10(0, 5, 1).await, data);

    // Another ISID is another session and leaves this one alone.
    let keys = LoginKeys {
        isid: [0x00, 0x02, 0x3d, 0, 0, 2],
        ..LoginKeys::default()
    };
    let mut other = Initiator::logged_in(server.addr, &keys).await;
    assert_eq!(other.read10(0, 5, 1).await, data);
    assert_eq!(new.read10(0, 5, 1).await, data);
}

#[tokio::test]
async fn idle_initiator_is_pinged_and_dropped_when_silent() {
    let tuning = Tuning {
        nop_interval: Some(Duration::from_millis(300)),
        nop_timeout: Duration::from_millis(300),
        ..Tuning::default()
    };
    let server = TestServer::start(&["ram:1M"], tuning).await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    let Some(Pdu::NopIn(ping)) = ini.recv().await else {
        panic!("no ping")
    };
    assert_eq!(ping.itt, RESERVED_TAG);
    assert_ne!(ping.ttt, RESERVED_TAG);
    // Answer the first ping: the connection stays.
    let reply = NopOut {
        immediate: true,
        lun: ping.lun,
        itt: RESERVED_TAG,
        ttt: ping.ttt,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
        data: Bytes::new(),
    };
    ini.send(&Pdu::NopOut(reply)).await;
    let Some(Pdu::NopIn(second)) = ini.recv().await else {
        panic!("no second ping")
    };
    assert_ne!(second.ttt, ping.ttt);
    // Ignore the second one: the target gives up on us.
    assert!(ini.recv().await.is_none(), "dropped after the NOP timeout");
}

#[tokio::test]
async fn shutdown_asks_initiators_to_log_out() {
    let mut server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    server.shutdown();
    let Some(Pdu::AsyncMessage(msg)) = ini.recv().await else {
        panic!("no Async Message")
    };
    assert_eq!(msg.event, 1, "target requests logout");
    assert_eq!(ini.logout().await, LogoutResponseCode::CLOSED);
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("server stopped after the last logout")
        .unwrap();
}

/// One initiator with many commands in flight on its own LUN; responses may come back in any
/// order.
async fn pipelined_writes_then_reads(addr: std::net::SocketAddr, lun: u64) {
    let keys = LoginKeys {
        isid: [0x00, 0x02, 0x3d, 0, 1, lun as u8],
        ..LoginKeys::default()
    };
    let mut ini = Initiator::logged_in(addr, &keys).await;
    ini.clear_unit_attention(lun).await;
    const N: u32 = 16;
    let blocks: Vec<Bytes> = (0..N)
        .map(|i| pattern(4096, 100 * lun as u32 + i))
        .collect();
    let mut itts = std::collections::HashMap::new();
    for (i, data) in blocks.iter().enumerate() {
        let lba = (i as u32) * 8;
        let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        // All of it as immediate data (FirstBurstLength is 8 KiB): no R2T.
        let itt = ini
            .command(lun, &cdb, false, true, 4096, data.clone(), true)
            .await;
        itts.insert(itt, i);
    }
    while !itts.is_empty() {
        let Some(Pdu::ScsiResponse(r)) = ini.recv().await else {
            panic!("no response")
        };
        assert_eq!(r.status, 0);
        assert!(itts.remove(&r.itt).is_some(), "response for an unknown ITT");
    }
    let mut reads = std::collections::HashMap::new();
    for i in 0..N {
        let lba = i * 8;
        let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        let itt = ini
            .command(lun, &cdb, true, false, 4096, Bytes::new(), true)
            .await;
        reads.insert(itt, (i as usize, Vec::new()));
    }
    let mut done = 0;
    while done < N {
        let Some(Pdu::DataIn(d)) = ini.recv().await else {
            panic!("expected Data-In")
        };
        let (i, buf) = reads.get_mut(&d.itt).expect("Data-In for an unknown ITT");
        assert_eq!(d.buffer_offset as usize, buf.len());
        buf.extend_from_slice(&d.data);
        if d.status.is_some() {
            assert_eq!(Bytes::from(std::mem::take(buf)), blocks[*i]);
            done += 1;
        }
    }
    assert_eq!(ini.logout().await, LogoutResponseCode::CLOSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sessions_and_luns_at_once() {
    let server = TestServer::start(&["ram:1M", "ram:1M", "ram:1M", "ram:1M"], quiet()).await;
    let addr = server.addr;
    let runs: Vec<_> = (0..4)
        .map(|lun| tokio::spawn(pipelined_writes_then_reads(addr, lun)))
        .collect();
    for run in runs {
        run.await.unwrap();
    }
}

/// A server with one 1 MiB RAM LUN, and two sessions of one initiator (two ISIDs) on it.
async fn two_sessions_on_a_ram_lun() -> (TestServer, Initiator, Initiator) {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let a = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    let keys = LoginKeys {
        isid: [0x00, 0x02, 0x3d, 0, 0, 9],
        ..LoginKeys::default()
    };
    let b = Initiator::logged_in(server.addr, &keys).await;
    (server, a, b)
}

#[tokio::test]
async fn lun_reset_by_one_session_aborts_the_other_sessions_tasks_on_that_lun() {
    use overlaybd_target::iscsi::pdu::{TmfFunction, TmfResponseCode};
    let (_server, mut a, mut b) = two_sessions_on_a_ram_lun().await;

    // A's write waits for its Data-Out.
    let (_, r2t) = a.start_write(0, 8).await;

    assert_eq!(
        b.task_management(TmfFunction::LOGICAL_UNIT_RESET).await,
        TmfResponseCode::COMPLETE
    );

    // The reset shows up as a UNIT ATTENTION for A; the block was never written.
    assert_aborted_then_told(&mut a, &r2t, (0x29, 0x03)).await;
    assert_eq!(a.read10(0, 0, 8).await, Bytes::from(vec![0u8; 4096]));
}

/// `ini`'s task that was waiting for the Data-Out `r2t` asked for is gone: its data is ignored
/// and it never gets a response; the next command gets UNIT ATTENTION `why` (ASC, ASCQ).
async fn assert_aborted_then_told(ini: &mut Initiator, r2t: &R2t, why: (u8, u8)) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    ini.send(&ini.answer(r2t, pattern(r2t.desired_length as usize, 7)))
        .await;
    assert!(
        ini.recv_within(Duration::from_millis(500)).await.is_err(),
        "no response for the aborted task"
    );
    let tur = ini
        .command(0, &[0; 6], false, false, 0, Bytes::new(), true)
        .await;
    let (status, _, sense) = ini.finish_read(tur).await;
    let sense = sense.expect("sense");
    assert_eq!(
        (status, sense[2] & 0x0f, sense[12], sense[13]),
        (2, 6, why.0, why.1)
    );
}

#[tokio::test]
async fn crc32c_digests_when_the_initiator_requires_them() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let keys = LoginKeys {
        crc32c: true,
        ..LoginKeys::default()
    };
    let mut ini = Initiator::logged_in(server.addr, &keys).await;
    assert_eq!(ini.key("HeaderDigest"), Some("CRC32C"));
    assert_eq!(ini.key("DataDigest"), Some("CRC32C"));
    let data = pattern(64 * 1024, 11);
    assert_eq!(ini.write10(0, 0, &data, 4096, 4096).await.0, 0);
    assert_eq!(ini.read10(0, 0, 128).await, data);
}

#[tokio::test]
async fn data_out_with_a_bad_data_digest_fails_its_command_only() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let keys = LoginKeys {
        crc32c: true,
        ..LoginKeys::default()
    };
    let mut ini = Initiator::logged_in(server.addr, &keys).await;
    let (itt, r2t) = ini.start_write(0, 1).await;
    let out = ini.answer(&r2t, pattern(512, 5));
    // BHS (48) + header digest (4), then the data: flip one data byte.
    ini.send_tampered(&out, |wire| wire[60] ^= 1).await;
    let Some(Pdu::ScsiResponse(r)) = ini.recv().await else {
        panic!("no SCSI Response")
    };
    assert_eq!((r.itt, r.status), (itt, 2));
    let sense = r.sense().unwrap();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x0b, 0x47, 0x05));
    ini.exp_stat_sn = r.stat_sn + 1;
    let Some(Pdu::Reject(j)) = ini.recv().await else {
        panic!("no Reject")
    };
    assert_eq!(j.reason, RejectReason::DATA_DIGEST_ERROR);
    // The block was not written and the session carries on.
    assert_eq!(ini.read10(0, 0, 1).await, Bytes::from(vec![0u8; 512]));
}

#[tokio::test]
async fn cold_reset_ends_every_session_of_the_target() {
    use overlaybd_target::iscsi::pdu::{TmfFunction, TmfResponseCode};
    let mut config = common::config(&["ram:1M"], quiet());
    config.targets[0].allow_target_reset = true;
    let server = TestServer::start_config(config).await;
    let mut a = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    let keys = LoginKeys {
        isid: [0x00, 0x02, 0x3d, 0, 0, 4],
        ..LoginKeys::default()
    };
    let mut b = Initiator::logged_in(server.addr, &keys).await;
    assert_eq!(
        b.task_management(TmfFunction::TARGET_COLD_RESET).await,
        TmfResponseCode::COMPLETE
    );
    assert!(
        b.recv().await.is_none(),
        "the resetting session is closed after its response"
    );
    assert!(
        a.recv().await.is_none(),
        "and so is every other session of the target"
    );
}

#[tokio::test]
async fn luns_that_fail_to_open_answer_not_ready_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("config.v1.json");
    std::fs::write(&corrupt, b"{ not json").unwrap();
    let missing = dir.path().join("gone.img");
    let server = TestServer::start(
        &[
            "ram:1M",
            &format!("file:{}", missing.display()),
            &format!("image:{}", corrupt.display()),
        ],
        quiet(),
    )
    .await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    assert_eq!(ini.write10(0, 1, &pattern(512, 3), 512, 512).await.0, 0);
    assert_eq!(ini.read10(0, 1, 1).await, pattern(512, 3));
    // (LUN, ASC, ASCQ): MEDIUM NOT PRESENT, MEDIUM FORMAT CORRUPTED.
    for (lun, asc, ascq) in [(1, 0x3a, 0x00), (2, 0x31, 0x00)] {
        let inquiry = [0x12, 0, 0, 0, 36, 0];
        let itt = ini
            .command(lun, &inquiry, true, false, 36, Bytes::new(), true)
            .await;
        let (status, data, _) = ini.finish_read(itt).await;
        assert_eq!((status, data[0]), (0, 0x00), "INQUIRY of LUN {lun}");
        let read_capacity = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (cdb, len) in [(&[0u8; 6][..], 0), (&read_capacity[..], 8)] {
            // The first command of the nexus may report the power-on unit attention.
            let mut answer = (0, Bytes::new(), None);
            for _ in 0..2 {
                let itt = ini
                    .command(lun, cdb, len > 0, false, len, Bytes::new(), true)
                    .await;
                answer = ini.finish_read(itt).await;
                if answer.2.as_ref().is_some_and(|s| s[2] & 0x0f == 0x06) {
                    continue;
                }
                break;
            }
            let (status, _, sense) = answer;
            let sense = sense.expect("sense data");
            assert_eq!(
                (status, sense[2] & 0x0f, sense[12], sense[13]),
                (2, 0x02, asc, ascq),
                "LUN {lun} opcode {:#x}",
                cdb[0]
            );
        }
    }
    assert_eq!(ini.read10(0, 1, 1).await, pattern(512, 3));
}

/// A small tmpfs on a fresh folder, unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    /// Mounts a tmpfs of `size` bytes, or `None` without the privilege to mount (CI runs the
    /// tests as root).
    fn mount(size: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: the server may still hold the file open while it shuts down.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_file_system_under_a_thin_file_lun_answers_space_allocation_failed() {
    let Some(fs) = SmallFs::mount(64 << 10) else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    // A sparse 1 MiB file LUN on a 64 KiB file system.
    let disk = fs.0.path().join("thin.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let server = TestServer::start(&[&format!("file:{}", disk.display())], quiet()).await;
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    let chunk = pattern(32 << 10, 9);
    let mut failure = None;
    for i in 0..32u32 {
        let (status, sense) = ini.write10(0, i * 64, &chunk, 0, 4096).await;
        if status != 0 {
            failure = Some((i, sense.expect("sense data")));
            break;
        }
    }
    let (i, sense) = failure.expect("a write past 64 KiB fails");
    assert!(i >= 1, "the first 32 KiB fit");
    assert_eq!(
        (sense[2] & 0x0f, sense[12], sense[13]),
        (0x07, 0x27, 0x07),
        "DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT"
    );
    // What was written is still there.
    assert_eq!(ini.read10(0, 0, 64).await, chunk);
}

#[tokio::test]
async fn target_resets_are_refused_unless_the_target_allows_them() {
    use overlaybd_target::iscsi::pdu::{TmfFunction, TmfResponseCode};
    // The default: an open target (no CHAP), target resets not enabled.
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut a = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    assert_eq!(a.write10(0, 3, &pattern(512, 7), 512, 512).await.0, 0);
    let keys = LoginKeys {
        initiator: "iqn.2026-11.io.overlaybd:intruder".into(),
        isid: [0x00, 0x02, 0x3d, 0, 0, 5],
        ..LoginKeys::default()
    };
    let mut b = Initiator::logged_in(server.addr, &keys).await;
    for function in [
        TmfFunction::TARGET_COLD_RESET,
        TmfFunction::TARGET_WARM_RESET,
    ] {
        assert_eq!(b.task_management(function).await, TmfResponseCode::REJECTED);
    }
    // Neither session was closed nor reset: no unit attention, the data is there.
    assert_eq!(b.read10(0, 3, 1).await, pattern(512, 7));
    assert_eq!(a.read10(0, 3, 1).await, pattern(512, 7));
    assert_eq!(a.logout().await, LogoutResponseCode::CLOSED);
}

#[tokio::test]
async fn logins_that_would_add_a_connection_are_refused() {
    let server = TestServer::start(&["ram:1M"], quiet()).await;
    let mut a = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    // MaxConnections=1: the live session's TSIH cannot take a second connection.
    let mut second = Initiator::connect(server.addr).await;
    let join = LoginKeys {
        tsih: a.tsih,
        ..LoginKeys::default()
    };
    assert_eq!(
        second.login(Some(IQN), &join).await.status,
        LoginStatus::TOO_MANY_CONNECTIONS
    );
    // A TSIH nobody has is a session that does not exist.
    let mut third = Initiator::connect(server.addr).await;
    let stale = LoginKeys {
        tsih: a.tsih.wrapping_add(100),
        ..LoginKeys::default()
    };
    assert_eq!(
        third.login(Some(IQN), &stale).await.status,
        LoginStatus::SESSION_DOES_NOT_EXIST
    );
    // The live session is untouched.
    assert_eq!(a.read10(0, 0, 1).await.len(), 512);
}

/// PERSISTENT RESERVE OUT `action` of type `pr_type` with reservation key `key`, service
/// action key `sa_key` and APTPL `aptpl`, through `ini`; the status.
async fn pr_out(
    ini: &mut Initiator,
    action: u8,
    pr_type: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> u8 {
    let mut params = vec![0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    params[20] = u8::from(aptpl);
    let cdb = [0x5f, action, pr_type, 0, 0, 0, 0, 0, 24, 0];
    ini.write_command(0, &cdb, &Bytes::from(params), 0, 4096)
        .await
        .0
}

#[tokio::test]
async fn aptpl_reservations_hold_across_a_restart_of_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let config = common::config(&[&format!("file:{}", disk.display())], quiet());
    let options = || overlaybd_target::daemon::DaemonOptions {
        state: Some(tmp.path().join("state.json")),
        ..Default::default()
    };
    let holder_keys = LoginKeys::default();
    let other_keys = LoginKeys {
        initiator: "iqn.2026-11.io.overlaybd:other-host".into(),
        ..LoginKeys::default()
    };

    let mut server = TestServer::start_with(config.clone(), 1, options()).await;
    let mut holder = Initiator::logged_in(server.addr, &holder_keys).await;
    holder.clear_unit_attention(0).await;
    // REGISTER with APTPL, then RESERVE, WRITE EXCLUSIVE.
    assert_eq!(pr_out(&mut holder, 0, 0, 0, 0x5eed, true).await, 0);
    assert_eq!(pr_out(&mut holder, 1, 1, 0x5eed, 0, false).await, 0);
    holder.logout().await;
    server.shutdown();
    server.task.await.unwrap();
    let saved: Vec<_> = std::fs::read_dir(tmp.path().join("reservations"))
        .unwrap()
        .collect();
    assert_eq!(saved.len(), 1, "one saved document for the LUN");

    let mut server = TestServer::start_with(config, 1, options()).await;
    let mut other = Initiator::logged_in(server.addr, &other_keys).await;
    other.clear_unit_attention(0).await;
    // READ RESERVATION: the holder's key, WRITE EXCLUSIVE.
    let itt = other
        .command(
            0,
            &[0x5e, 1, 0, 0, 0, 0, 0, 0, 24, 0],
            true,
            false,
            24,
            Bytes::new(),
            true,
        )
        .await;
    let (status, data, _) = other.finish_read(itt).await;
    assert_eq!(status, 0);
    assert_eq!(&data[4..16], &[0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x5e, 0xed]);
    assert_eq!(data[21], 0x01);
    let (status, _) = other.write10(0, 0, &pattern(512, 1), 0, 512).await;
    assert_eq!(status, 0x18, "RESERVATION CONFLICT for another host");
    // The holder, back on the same initiator port, still holds it and writes.
    let mut holder = Initiator::logged_in(server.addr, &holder_keys).await;
    holder.clear_unit_attention(0).await;
    let (status, _) = holder.write10(0, 0, &pattern(512, 1), 0, 512).await;
    assert_eq!(status, 0);
    server.shutdown();
}

#[tokio::test]
async fn preempt_and_abort_drops_the_preempted_sessions_tasks_on_that_lun() {
    let (_server, mut a, mut b) = two_sessions_on_a_ram_lun().await;
    a.clear_unit_attention(0).await;
    b.clear_unit_attention(0).await;
    // A registers and holds WRITE EXCLUSIVE; B registers.
    assert_eq!(pr_out(&mut a, 0, 0, 0, 0xa, false).await, 0);
    assert_eq!(pr_out(&mut a, 1, 1, 0xa, 0, false).await, 0);
    assert_eq!(pr_out(&mut b, 0, 0, 0, 0xb, false).await, 0);

    // A's write waits for its Data-Out when B preempts A's key, and aborts.
    let (_, r2t) = a.start_write(0, 8).await;
    assert_eq!(pr_out(&mut b, 5, 1, 0xb, 0xa, false).await, 0);

    // A's task is gone, and A learns why (REGISTRATIONS PREEMPTED); B holds the reservation
    // now, so A may not write.
    assert_aborted_then_told(&mut a, &r2t, (0x2a, 0x05)).await;
    let (status, _) = a.write10(0, 0, &pattern(512, 1), 0, 512).await;
    assert_eq!(status, 0x18);
    assert_eq!(a.read10(0, 0, 8).await, Bytes::from(vec![0u8; 4096]));
    // A plain PREEMPT takes a registration without aborting anything.
    assert_eq!(pr_out(&mut a, 0, 0, 0, 0xc, false).await, 0);
    let (_, r2t) = a.start_write(0, 1).await;
    assert_eq!(pr_out(&mut b, 4, 1, 0xb, 0xc, false).await, 0);
    a.send(&a.answer(&r2t, pattern(512, 8))).await;
    let response = a.recv_within(Duration::from_secs(5)).await;
    assert!(
        matches!(response, Ok(Some(Pdu::ScsiResponse(_)))),
        "the task of a plain PREEMPT's victim completes: {response:?}"
    );
}

#[tokio::test]
async fn a_standby_portal_group_answers_not_ready_to_media_commands() {
    let mut config = common::config(&["ram:1M"], quiet());
    config
        .alua
        .insert(2, overlaybd_target::scsi::AccessState::Standby);
    let server = TestServer::start_portals(config, 2).await;
    let rtpg = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    for (addr, tur_sense) in [
        (server.addrs[0], None),
        (server.addrs[1], Some((2, 0x04, 0x0b))),
    ] {
        let mut ini = Initiator::connect(addr).await;
        ini.login_normal(IQN, &LoginKeys::default()).await;
        // A power-on UNIT ATTENTION may come first.
        let (mut status, mut sense) = (0, None);
        for _ in 0..2 {
            let itt = ini
                .command(0, &[0; 6], false, false, 0, Bytes::new(), true)
                .await;
            (status, _, sense) = ini.finish_read(itt).await;
            if !sense.as_ref().is_some_and(|s| s[2] & 0x0f == 6) {
                break;
            }
        }
        let got = sense.map(|s| (s[2] & 0x0f, s[12], s[13]));
        assert_eq!((status != 0, got), (tur_sense.is_some(), tur_sense));
        // Both paths say which group is which.
        let itt = ini
            .command(0, &rtpg, true, false, 256, Bytes::new(), true)
            .await;
        let (status, groups, _) = ini.finish_read(itt).await;
        assert_eq!(status, 0);
        assert_eq!((groups[4] & 0x0f, groups[16] & 0x0f), (0x0, 0x2));
    }
}

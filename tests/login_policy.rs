//! Login policy against the real server: `--digests require-crc32c` refuses initiators without
//! CRC32C (libiscsi's `iscsi-ls` and the in-repo initiator), and a login text of 64 KiB of
//! short keys is refused while normal logins go on.

mod common;
mod support;

use std::time::Duration;

use bytes::Bytes;
use common::{Initiator, LoginKeys, TestServer, IQN};
use overlaybd_target::config::{DigestSetting, Tuning};
use overlaybd_target::iscsi::pdu::{Isid, LoginRequest, LoginStatus, Pdu};
use support::process::{tool, Target};

fn require_crc32c() -> Tuning {
    Tuning {
        nop_interval: None,
        digests: DigestSetting::RequireCrc32c,
        ..Tuning::default()
    }
}

#[test]
fn iscsi_ls_without_digests_is_refused_by_require_crc32c() {
    let target = Target::start(&[
        "--target",
        IQN,
        "--lun",
        "ram:1M",
        "--digests",
        "require-crc32c",
    ]);
    // iscsi-ls offers HeaderDigest=None and DataDigest=None; it used to log in and list LUNs.
    let out = tool("iscsi-ls")
        .args(["-s", &format!("iscsi://127.0.0.1:{}", target.port)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "iscsi-ls logged in: {stdout}{stderr}"
    );
    assert!(!stdout.contains("Lun:"), "{stdout}");
    // libiscsi names the status it got.
    assert!(
        format!("{stdout}{stderr}").contains("Missing parameter"),
        "{stdout}{stderr}"
    );
    assert!(target.stop().success());
}

#[tokio::test]
async fn initiator_offering_only_none_is_refused_with_missing_parameter() {
    let server = TestServer::start(&["ram:1M"], require_crc32c()).await;
    for target in [Some(IQN), None] {
        let mut ini = Initiator::connect(server.addr).await;
        let rsp = ini.login(target, &LoginKeys::default()).await;
        assert_eq!(rsp.status, LoginStatus::MISSING_PARAMETER, "{target:?}");
        assert_eq!(rsp.tsih, 0);
        assert!(ini.recv().await.is_none(), "the connection is closed");
    }
    // Offering CRC32C logs in, with both digests in force.
    let keys = LoginKeys {
        crc32c: true,
        ..LoginKeys::default()
    };
    let mut ini = Initiator::logged_in(server.addr, &keys).await;
    assert_eq!(
        (ini.key("HeaderDigest"), ini.key("DataDigest")),
        (Some("CRC32C"), Some("CRC32C"))
    );
    assert_eq!(ini.read10(0, 0, 1).await.len(), 512);
}

/// A first Login Request of 64 KiB: leading keys, then distinct short keys, in eight
/// continued PDUs of 8 KiB (the most a login PDU may carry).
fn key_flood() -> Vec<LoginRequest> {
    let mut text = format!("InitiatorName=iqn.2026-11.test:flood\0TargetName={IQN}\0").into_bytes();
    for n in 0u32.. {
        let entry = format!("X{n:x}=\0");
        if text.len() + entry.len() > 65536 {
            break;
        }
        text.extend_from_slice(entry.as_bytes());
    }
    // Well-formed to the end (padding NULs are skipped): only the key count can refuse it.
    text.resize(65536, 0);
    let pieces: Vec<&[u8]> = text.chunks(8192).collect();
    let last = pieces.len() - 1;
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| LoginRequest {
            transit: i == last,
            continues: i != last,
            itt: 1,
            ..LoginRequest::operational(Isid([0x80, 0, 0, 0, 0, 7]), Bytes::copy_from_slice(piece))
        })
        .collect()
}

#[tokio::test]
async fn login_with_64_kib_of_short_keys_is_refused_and_others_log_in() {
    let server = TestServer::start(
        &["ram:1M"],
        Tuning {
            nop_interval: None,
            ..Tuning::default()
        },
    )
    .await;
    let floods = key_flood();
    assert_eq!(floods.len(), 8);
    for _ in 0..4 {
        let mut ini = Initiator::connect(server.addr).await;
        let mut last = None;
        for req in &floods {
            ini.send(&Pdu::LoginRequest(req.clone())).await;
            match ini.recv().await {
                Some(Pdu::LoginResponse(rsp)) => last = Some(rsp),
                other => panic!("expected a Login Response, got {other:?}"),
            }
            if last.as_ref().is_some_and(|r| !r.status.is_success()) {
                break;
            }
        }
        let last = last.expect("answered");
        assert_eq!(last.status, LoginStatus::INITIATOR_ERROR, "{last:?}");
        assert!(matches!(
            ini.recv_within(Duration::from_secs(5)).await,
            Ok(None)
        ));
    }
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    assert_eq!(ini.read10(0, 0, 1).await.len(), 512);
}

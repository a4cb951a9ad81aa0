//! Login state machine tests: the exact key sets Linux open-iscsi sends, CHAP (one-way,
//! mutual, every failure), each failure status, header rules and text continuation.

use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};

use super::*;
use crate::iscsi::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Stage};

const TARGET: &str = "iqn.2026-11.test:vm";
const INITIATOR: &str = "iqn.2026-11.test.vm-initiator:guest";
const ISID: Isid = Isid([0, 2, 0x3d, 0, 0, 1]);

fn text(pairs: &[&str]) -> Bytes {
    let mut v = Vec::new();
    for p in pairs {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    Bytes::from(v)
}

fn req(csg: Stage, nsg: Stage, transit: bool, pairs: &[&str]) -> LoginRequest {
    LoginRequest {
        transit,
        csg,
        nsg,
        ..LoginRequest::operational(ISID, text(pairs))
    }
}

fn answers(rsp: &LoginResponse) -> Vec<(String, String)> {
    keys::parse(&rsp.data).expect("target text parses")
}

fn answer(rsp: &LoginResponse, key: &str) -> Option<String> {
    answers(rsp)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn open_dir() -> StaticDirectory {
    StaticDirectory::new(LoginSettings::default(), [LoginTarget::open(TARGET)])
}

fn account(user: &str, secret: &str) -> ChapAccount {
    ChapAccount {
        user: user.into(),
        secret: secret.as_bytes().to_vec(),
    }
}

fn chap_dir(mutual: bool) -> StaticDirectory {
    let mut t = LoginTarget::open(TARGET);
    t.auth.chap = Some(account("alice", "initiator-secret"));
    if mutual {
        t.auth.mutual_chap = Some(account("target-user", "target-secret1"));
    }
    StaticDirectory::new(LoginSettings::default(), [t])
}

fn leading_keys() -> [String; 2] {
    [
        format!("InitiatorName={INITIATOR}"),
        format!("TargetName={TARGET}"),
    ]
}

fn respond(step: LoginStep) -> LoginResponse {
    match step {
        LoginStep::Respond(r) => r,
        other => panic!("expected Respond, got {other:?}"),
    }
}

fn fail_status(step: LoginStep) -> LoginStatus {
    match step {
        LoginStep::Fail(r, reason) => {
            assert!(!r.transit && r.data.is_empty());
            assert_eq!(r.status, reason.status());
            r.status
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

fn ready(step: LoginStep) -> LoginOutcome {
    match step {
        LoginStep::Ready(o) => *o,
        other => panic!("expected Ready, got {other:?}"),
    }
}

/// Independent CHAP-MD5 computation for the test's initiator side.
fn chap_r(id: u8, secret: &str, challenge: &[u8]) -> String {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret.as_bytes());
    h.update(challenge);
    format!("0x{}", hex::encode(h.finalize()))
}

const LINUX_DISCOVERY: &[&str] = &[
    "InitiatorName=iqn.2026-11.test.vm-initiator:guest",
    "InitiatorAlias=(none)",
    "SessionType=Discovery",
    "HeaderDigest=None",
    "DataDigest=None",
    "DefaultTime2Wait=2",
    "DefaultTime2Retain=0",
    "IFMarker=No",
    "OFMarker=No",
    "ErrorRecoveryLevel=0",
    "MaxRecvDataSegmentLength=32768",
];

const LINUX_NORMAL: &[&str] = &[
    "InitiatorName=iqn.2026-11.test.vm-initiator:guest",
    "InitiatorAlias=(none)",
    "TargetName=iqn.2026-11.test:vm",
    "SessionType=Normal",
    "HeaderDigest=None",
    "DataDigest=None",
    "DefaultTime2Wait=2",
    "DefaultTime2Retain=0",
    "IFMarker=No",
    "OFMarker=No",
    "ErrorRecoveryLevel=0",
    "InitialR2T=No",
    "ImmediateData=Yes",
    "MaxBurstLength=16776192",
    "FirstBurstLength=262144",
    "MaxOutstandingR2T=1",
    "MaxConnections=1",
    "DataPDUInOrder=Yes",
    "DataSequenceInOrder=Yes",
    "MaxRecvDataSegmentLength=262144",
];

#[test]
fn linux_discovery_login_in_one_round_trip() {
    let dir = open_dir();
    let mut login = Login::new(Instant::now());
    let mut r = req(
        Stage::Operational,
        Stage::FullFeature,
        true,
        LINUX_DISCOVERY,
    );
    r.cmd_sn = 1;
    let out = ready(login.handle(&dir, &r));
    assert_eq!(out.session_type, SessionType::Discovery);
    assert_eq!(out.initiator_name, INITIATOR);
    assert_eq!(out.initiator_alias.as_deref(), Some("(none)"));
    assert_eq!(out.target, None);
    assert_eq!((out.isid, out.requested_tsih, out.cid), (ISID, 0, 0));
    assert_eq!(out.exp_cmd_sn, 1);
    assert_eq!(out.params.max_send_data_segment_length, 32768);
    assert_eq!(out.params.max_recv_data_segment_length, 262144);
    assert_eq!(out.params.digests(), crate::iscsi::pdu::Digests::default());

    let rsp = login.accept(0x0101).expect("final response");
    assert!(rsp.transit && !rsp.continues);
    assert_eq!(
        (rsp.csg, rsp.nsg, rsp.tsih, rsp.status),
        (
            Stage::Operational,
            Stage::FullFeature,
            0x0101,
            LoginStatus::SUCCESS
        )
    );
    assert_eq!((rsp.stat_sn, rsp.exp_cmd_sn, rsp.max_cmd_sn), (0, 1, 128));
    assert_eq!(out.next_stat_sn, 1);
    let got = answers(&rsp);
    let expect: Vec<(String, String)> = [
        ("TargetPortalGroupTag", "1"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("MaxRecvDataSegmentLength", "262144"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, expect);
    assert_eq!(login.accept(1), None, "accept only once");
}

#[test]
fn linux_normal_login_answers_every_key() {
    let dir = open_dir();
    let mut login = Login::new(Instant::now());
    let out = ready(login.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, true, LINUX_NORMAL),
    ));
    assert_eq!(out.session_type, SessionType::Normal);
    assert_eq!(out.target.as_ref().map(|t| t.name.as_str()), Some(TARGET));
    let p = &out.params;
    assert_eq!(p.max_send_data_segment_length, 262144);
    assert_eq!(
        (
            p.max_burst_length,
            p.first_burst_length,
            p.max_outstanding_r2t
        ),
        (1 << 20, 262144, 1)
    );
    assert!(p.initial_r2t, "OR with our InitialR2T=Yes");
    assert!(p.immediate_data);
    let rsp = login.accept(0x100).expect("final");
    assert_eq!(rsp.tsih, 0x100);
    for (k, v) in [
        ("TargetPortalGroupTag", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "1048576"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ] {
        assert_eq!(answer(&rsp, k).as_deref(), Some(v), "{k}");
    }
    // Declarations and leading keys get no answer.
    for k in [
        "InitiatorName",
        "InitiatorAlias",
        "TargetName",
        "SessionType",
    ] {
        assert_eq!(answer(&rsp, k), None, "{k}");
    }
    // Every negotiated key the initiator offered is answered.
    for offered in LINUX_NORMAL.iter().skip(4) {
        let key = offered.split('=').next().expect("key");
        assert!(answer(&rsp, key).is_some(), "{key} unanswered");
    }
}

#[test]
fn allowing_unsolicited_data_follows_the_initiator() {
    let mut dir = open_dir();
    dir.settings.initial_r2t = false;
    let mut login = Login::new(Instant::now());
    let out = ready(login.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, true, LINUX_NORMAL),
    ));
    assert!(!out.params.initial_r2t);
}

#[test]
fn crc32c_only_offer_is_honoured() {
    let mut keys: Vec<&str> = LINUX_NORMAL.to_vec();
    keys[4] = "HeaderDigest=CRC32C";
    keys[5] = "DataDigest=CRC32C";
    let mut login = Login::new(Instant::now());
    let out = ready(login.handle(
        &open_dir(),
        &req(Stage::Operational, Stage::FullFeature, true, &keys),
    ));
    assert!(out.params.header_digest && out.params.data_digest);
    let rsp = login.accept(1).expect("final");
    assert_eq!(answer(&rsp, "HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(answer(&rsp, "DataDigest").as_deref(), Some("CRC32C"));
}

#[test]
fn security_then_operational_then_full_feature() {
    let dir = open_dir();
    let mut login = Login::new(Instant::now());
    let mut first = req(
        Stage::Security,
        Stage::Operational,
        true,
        &[
            &format!("InitiatorName={INITIATOR}"),
            &format!("TargetName={TARGET}"),
            "AuthMethod=CHAP,None",
        ],
    );
    first.exp_stat_sn = 500;
    first.cmd_sn = 9;
    let r1 = respond(login.handle(&dir, &first));
    assert!(r1.transit);
    assert_eq!(
        (r1.csg, r1.nsg, r1.stat_sn, r1.exp_cmd_sn, r1.max_cmd_sn),
        (Stage::Security, Stage::Operational, 500, 9, 136)
    );
    assert_eq!(answer(&r1, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(answer(&r1, "TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(
        answer(&r1, "MaxRecvDataSegmentLength"),
        None,
        "not declared in the security stage"
    );

    let mut second = req(
        Stage::Operational,
        Stage::Operational,
        false,
        &["MaxRecvDataSegmentLength=65536"],
    );
    second.cmd_sn = 9;
    let r2 = respond(login.handle(&dir, &second));
    assert!(!r2.transit);
    assert_eq!(r2.stat_sn, 501);
    assert_eq!(
        answers(&r2),
        vec![("MaxRecvDataSegmentLength".to_string(), "262144".to_string())]
    );

    let mut third = req(Stage::Operational, Stage::FullFeature, true, &[]);
    third.cmd_sn = 9;
    let out = ready(login.handle(&dir, &third));
    assert_eq!((out.exp_cmd_sn, out.next_stat_sn), (9, 503));
    assert_eq!(out.params.max_send_data_segment_length, 65536);
    let rsp = login.accept(7).expect("final");
    assert!(rsp.data.is_empty(), "nothing left to say");
}

#[test]
fn skipping_operational_stage_keeps_default_receive_limit() {
    let mut login = Login::new(Instant::now());
    let out = ready(login.handle(
        &open_dir(),
        &req(
            Stage::Security,
            Stage::FullFeature,
            true,
            &[
                &format!("InitiatorName={INITIATOR}"),
                &format!("TargetName={TARGET}"),
                "AuthMethod=None",
            ],
        ),
    ));
    assert_eq!(out.params.max_recv_data_segment_length, 8192);
}

/// Runs a CHAP login up to the challenge; returns (login, id, challenge).
fn chap_until_challenge(dir: &StaticDirectory, algorithms: &str) -> (Login, u8, Vec<u8>) {
    let mut login = Login::new(Instant::now());
    let r1 = respond(login.handle(
        dir,
        &req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                &format!("InitiatorName={INITIATOR}"),
                &format!("TargetName={TARGET}"),
                "AuthMethod=CHAP,None",
            ],
        ),
    ));
    assert!(!r1.transit, "must not leave the security stage before CHAP");
    assert_eq!(answer(&r1, "AuthMethod").as_deref(), Some("CHAP"));
    let r2 = respond(login.handle(
        dir,
        &req(
            Stage::Security,
            Stage::Operational,
            false,
            &[&format!("CHAP_A={algorithms}")],
        ),
    ));
    assert!(!r2.transit);
    assert_eq!(answer(&r2, "CHAP_A").as_deref(), Some("5"));
    let id: u8 = answer(&r2, "CHAP_I")
        .and_then(|i| i.parse().ok())
        .expect("CHAP_I");
    let c = answer(&r2, "CHAP_C").expect("CHAP_C");
    let challenge = hex::decode(c.strip_prefix("0x").expect("hex challenge")).expect("hex");
    assert_eq!(challenge.len(), chap::CHALLENGE_LEN);
    (login, id, challenge)
}

#[test]
fn one_way_chap_succeeds() {
    let dir = chap_dir(false);
    let (mut login, id, challenge) = chap_until_challenge(&dir, "5");
    let r3 = respond(login.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                "CHAP_N=alice",
                &format!("CHAP_R={}", chap_r(id, "initiator-secret", &challenge)),
            ],
        ),
    ));
    assert!(r3.transit);
    assert_eq!(r3.nsg, Stage::Operational);
    assert!(answers(&r3).is_empty(), "no mutual CHAP answer");
    let out = ready(login.handle(
        &dir,
        &req(
            Stage::Operational,
            Stage::FullFeature,
            true,
            &LINUX_NORMAL[4..],
        ),
    ));
    assert_eq!(out.chap_user.as_deref(), Some("alice"));
}

#[test]
fn chap_accepts_algorithm_lists_and_base64_responses() {
    let dir = chap_dir(false);
    let (mut login, id, challenge) = chap_until_challenge(&dir, "7,6,5");
    let mut h = Md5::new();
    h.update([id]);
    h.update(b"initiator-secret");
    h.update(&challenge);
    let raw = h.finalize();
    let b64 = base64_encode(&raw);
    // Security straight to full feature phase: no operational stage, so nothing declared.
    let out = ready(login.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::FullFeature,
            true,
            &["CHAP_N=alice", &format!("CHAP_R=0b{b64}")],
        ),
    ));
    assert_eq!(out.chap_user.as_deref(), Some("alice"));
    assert_eq!(out.params.max_recv_data_segment_length, 8192);
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn mutual_chap_answers_the_initiator_challenge() {
    let dir = chap_dir(true);
    let (mut login, id, challenge) = chap_until_challenge(&dir, "5");
    let my_challenge = [0x5au8; 16];
    let r3 = respond(login.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                "CHAP_N=alice",
                &format!("CHAP_R={}", chap_r(id, "initiator-secret", &challenge)),
                "CHAP_I=77",
                &format!("CHAP_C=0x{}", hex::encode(my_challenge)),
            ],
        ),
    ));
    assert!(r3.transit);
    assert_eq!(answer(&r3, "CHAP_N").as_deref(), Some("target-user"));
    assert_eq!(
        answer(&r3, "CHAP_R"),
        Some(chap_r(77, "target-secret1", &my_challenge))
    );
}

fn chap_final_status(
    dir: &StaticDirectory,
    pairs: impl Fn(u8, &[u8]) -> Vec<String>,
) -> LoginStatus {
    let (mut login, id, challenge) = chap_until_challenge(dir, "5");
    let kv = pairs(id, &challenge);
    let kv: Vec<&str> = kv.iter().map(String::as_str).collect();
    fail_status(login.handle(dir, &req(Stage::Security, Stage::Operational, true, &kv)))
}

#[test]
fn chap_failures_are_authentication_failures() {
    let auth = LoginStatus::AUTHENTICATION_FAILURE;
    let one_way = chap_dir(false);
    let mutual = chap_dir(true);
    // Wrong secret.
    assert_eq!(
        chap_final_status(&one_way, |id, c| vec![
            "CHAP_N=alice".into(),
            format!("CHAP_R={}", chap_r(id, "nope", c))
        ]),
        auth
    );
    // Wrong user.
    assert_eq!(
        chap_final_status(&one_way, |id, c| vec![
            "CHAP_N=mallory".into(),
            format!("CHAP_R={}", chap_r(id, "initiator-secret", c))
        ]),
        auth
    );
    // Garbage response, missing response.
    assert_eq!(
        chap_final_status(&one_way, |_, _| vec![
            "CHAP_N=alice".into(),
            "CHAP_R=0xzz".into()
        ]),
        auth
    );
    assert_eq!(
        chap_final_status(&one_way, |_, _| vec!["CHAP_N=alice".into()]),
        auth
    );
    // Mutual CHAP requested but the target has no mutual secret.
    assert_eq!(
        chap_final_status(&one_way, |id, c| vec![
            "CHAP_N=alice".into(),
            format!("CHAP_R={}", chap_r(id, "initiator-secret", c)),
            "CHAP_I=1".into(),
            "CHAP_C=0x0102030405060708".into(),
        ]),
        auth
    );
    // Reflected challenge.
    assert_eq!(
        chap_final_status(&mutual, |id, c| vec![
            "CHAP_N=alice".into(),
            format!("CHAP_R={}", chap_r(id, "initiator-secret", c)),
            "CHAP_I=1".into(),
            format!("CHAP_C=0x{}", hex::encode(c)),
        ]),
        auth
    );
    // Half a mutual request.
    assert_eq!(
        chap_final_status(&mutual, |id, c| vec![
            "CHAP_N=alice".into(),
            format!("CHAP_R={}", chap_r(id, "initiator-secret", c)),
            "CHAP_I=1".into(),
        ]),
        auth
    );
}

#[test]
fn unsupported_chap_algorithms_fail() {
    for algorithms in ["56", "", "6,7"] {
        let dir = chap_dir(false);
        let mut login = Login::new(Instant::now());
        respond(login.handle(
            &dir,
            &req(
                Stage::Security,
                Stage::Operational,
                false,
                &[
                    &format!("InitiatorName={INITIATOR}"),
                    &format!("TargetName={TARGET}"),
                    "AuthMethod=CHAP",
                ],
            ),
        ));
        let status = fail_status(login.handle(
            &dir,
            &req(
                Stage::Security,
                Stage::Operational,
                false,
                &[&format!("CHAP_A={algorithms}")],
            ),
        ));
        assert_eq!(
            status,
            LoginStatus::AUTHENTICATION_FAILURE,
            "CHAP_A={algorithms}"
        );
    }
}

#[test]
fn chap_required_but_not_offered_fails() {
    let dir = chap_dir(false);
    let lead = leading_keys();
    // Only AuthMethod=None offered.
    let mut l = Login::new(Instant::now());
    let status = fail_status(l.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            true,
            &[&lead[0], &lead[1], "AuthMethod=None"],
        ),
    ));
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    // Straight to the operational stage.
    let mut l = Login::new(Instant::now());
    let status = fail_status(l.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, true, LINUX_NORMAL),
    ));
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    // Leaving the security stage without negotiating AuthMethod.
    let mut l = Login::new(Instant::now());
    let status = fail_status(l.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            true,
            &[&lead[0], &lead[1]],
        ),
    ));
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn no_auth_target_rejects_chap_only_offer() {
    let mut l = Login::new(Instant::now());
    let status = fail_status(l.handle(
        &open_dir(),
        &req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                &format!("InitiatorName={INITIATOR}"),
                &format!("TargetName={TARGET}"),
                "AuthMethod=CHAP",
            ],
        ),
    ));
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn discovery_chap_uses_the_discovery_account() {
    let mut settings = LoginSettings::default();
    settings.discovery_auth.chap = Some(account("disc", "discovery-secret"));
    let dir = StaticDirectory::new(settings, [LoginTarget::open(TARGET)]);
    let status = fail_status(linux_discovery(&dir));
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
}

/// Open-iscsi's one-request discovery login.
fn linux_discovery(dir: &StaticDirectory) -> LoginStep {
    Login::new(Instant::now()).handle(
        dir,
        &req(
            Stage::Operational,
            Stage::FullFeature,
            true,
            LINUX_DISCOVERY,
        ),
    )
}

fn first_pdu_status(dir: &StaticDirectory, r: LoginRequest) -> LoginStatus {
    fail_status(Login::new(Instant::now()).handle(dir, &r))
}

#[test]
fn leading_key_failures() {
    let dir = open_dir();
    let mut restricted = LoginTarget::open(TARGET);
    restricted.allowed_initiators = vec!["iqn.2026-11.test:someone-else".into()];
    let restricted = StaticDirectory::new(LoginSettings::default(), [restricted]);
    let full = Stage::FullFeature;
    let op = Stage::Operational;
    let i = format!("InitiatorName={INITIATOR}");
    let t = format!("TargetName={TARGET}");
    assert_eq!(
        first_pdu_status(&restricted, req(op, full, true, &[&i, &t])),
        LoginStatus::NOT_FOUND,
        "an unlisted initiator is told the same as for a missing target"
    );
    assert_eq!(
        first_pdu_status(
            &dir,
            req(op, full, true, &[&i, "TargetName=iqn.2026-11.test:nope"])
        ),
        LoginStatus::NOT_FOUND
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, full, true, &[&t])),
        LoginStatus::MISSING_PARAMETER
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, full, true, &["InitiatorName=", &t])),
        LoginStatus::MISSING_PARAMETER
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, full, true, &[&i])),
        LoginStatus::MISSING_PARAMETER
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, full, true, &[&i, &t, "SessionType=Bogus"])),
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED
    );
    let long = format!("InitiatorName=iqn.{}", "x".repeat(230));
    assert_eq!(
        first_pdu_status(&dir, req(op, full, true, &[&long, &t])),
        LoginStatus::INITIATOR_ERROR
    );
    // Restricted targets still allow discovery sessions.
    let mut l = Login::new(Instant::now());
    ready(l.handle(
        &restricted,
        &req(op, full, true, &[&i, "SessionType=Discovery"]),
    ));
}

#[test]
fn header_rule_failures() {
    let dir = open_dir();
    let op = Stage::Operational;
    let full = Stage::FullFeature;
    let good = || req(op, full, true, LINUX_NORMAL);

    let mut r = good();
    r.version_min = 1;
    r.version_max = 2;
    assert_eq!(first_pdu_status(&dir, r), LoginStatus::UNSUPPORTED_VERSION);
    let mut r = good();
    r.continues = true;
    assert_eq!(
        first_pdu_status(&dir, r),
        LoginStatus::INITIATOR_ERROR,
        "T and C together"
    );
    let mut r = good();
    r.csg = Stage::FullFeature;
    assert_eq!(
        first_pdu_status(&dir, r),
        LoginStatus::INITIATOR_ERROR,
        "CSG=3"
    );
    let mut r = good();
    r.csg = Stage::Reserved;
    assert_eq!(
        first_pdu_status(&dir, r),
        LoginStatus::INITIATOR_ERROR,
        "CSG=2"
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, op, true, LINUX_NORMAL)),
        LoginStatus::INITIATOR_ERROR,
        "NSG=CSG"
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, Stage::Reserved, true, LINUX_NORMAL)),
        LoginStatus::INITIATOR_ERROR,
        "NSG=2"
    );
    assert_eq!(
        first_pdu_status(
            &dir,
            req(op, full, true, &["InitiatorName=a", "InitiatorName=b"])
        ),
        LoginStatus::INITIATOR_ERROR,
        "duplicate key"
    );
    assert_eq!(
        first_pdu_status(&dir, req(op, full, true, &["InitiatorName"])),
        LoginStatus::INITIATOR_ERROR,
        "malformed text"
    );
}

/// A login left in the operational stage after one keyless-answer round.
fn op_login(dir: &StaticDirectory) -> Login {
    let mut l = Login::new(Instant::now());
    respond(l.handle(
        dir,
        &req(Stage::Operational, Stage::FullFeature, false, LINUX_NORMAL),
    ));
    l
}

#[test]
fn later_pdu_rule_failures() {
    let dir = open_dir();
    let op = Stage::Operational;
    let full = Stage::FullFeature;
    let cases: Vec<(&str, LoginRequest)> = vec![
        (
            "ISID changed",
            LoginRequest {
                isid: Isid([0x80, 0, 0, 0, 0, 1]),
                ..req(op, full, true, &[])
            },
        ),
        (
            "TSIH changed",
            LoginRequest {
                tsih: 5,
                ..req(op, full, true, &[])
            },
        ),
        (
            "CID changed",
            LoginRequest {
                cid: 1,
                ..req(op, full, true, &[])
            },
        ),
        (
            "version changed",
            LoginRequest {
                version_max: 1,
                ..req(op, full, true, &[])
            },
        ),
        ("stage went back", req(Stage::Security, op, true, &[])),
        (
            "key renegotiated",
            req(op, full, true, &["MaxBurstLength=65536"]),
        ),
        (
            "leading key repeated later",
            req(op, full, true, &["SessionType=Discovery"]),
        ),
        (
            "security key in operational stage",
            req(op, full, true, &["AuthMethod=None"]),
        ),
        (
            "CHAP key in operational stage",
            req(op, full, true, &["CHAP_A=5"]),
        ),
    ];
    for (what, r) in cases {
        let mut l = op_login(&dir);
        assert_eq!(
            fail_status(l.handle(&dir, &r)),
            LoginStatus::INITIATOR_ERROR,
            "{what}"
        );
        assert_eq!(
            fail_status(l.handle(&dir, &req(op, full, true, &[]))),
            LoginStatus::INITIATOR_ERROR,
            "{what}: stays failed"
        );
    }
}

#[test]
fn chap_keys_out_of_order_are_protocol_errors() {
    let dir = chap_dir(false);
    let lead = leading_keys();
    let mut l = Login::new(Instant::now());
    let s = fail_status(l.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            false,
            &[&lead[0], &lead[1], "CHAP_A=5"],
        ),
    ));
    assert_eq!(s, LoginStatus::INITIATOR_ERROR, "CHAP_A before AuthMethod");
    let mut l = Login::new(Instant::now());
    respond(l.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            false,
            &[&lead[0], &lead[1], "AuthMethod=CHAP"],
        ),
    ));
    let s = fail_status(l.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::Operational,
            false,
            &["CHAP_N=alice", "CHAP_R=0x00"],
        ),
    ));
    assert_eq!(
        s,
        LoginStatus::INITIATOR_ERROR,
        "CHAP_R before the challenge"
    );
}

#[test]
fn unknown_foreign_and_target_only_keys() {
    let mut keys: Vec<&str> = LINUX_NORMAL.to_vec();
    keys.extend([
        "X-com.example.Thing=1",
        "FancyNewKey=Yes",
        "TargetAlias=x",
        "OFMarkInt=1~65535",
        "MaxBurstLength2=1",
    ]);
    keys.push("DataDigest2=x");
    let mut l = Login::new(Instant::now());
    ready(l.handle(
        &open_dir(),
        &req(Stage::Operational, Stage::FullFeature, true, &keys),
    ));
    let rsp = l.accept(1).expect("final");
    assert_eq!(
        answer(&rsp, "X-com.example.Thing").as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(
        answer(&rsp, "FancyNewKey").as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(answer(&rsp, "TargetAlias").as_deref(), Some("Reject"));
    assert_eq!(answer(&rsp, "OFMarkInt").as_deref(), Some("Reject"));
}

#[test]
fn malformed_values_are_rejected_keeping_defaults() {
    let mut l = Login::new(Instant::now());
    let out = ready(l.handle(
        &open_dir(),
        &req(
            Stage::Operational,
            Stage::FullFeature,
            true,
            &[
                &format!("InitiatorName={INITIATOR}"),
                &format!("TargetName={TARGET}"),
                "MaxBurstLength=lots",
                "ImmediateData=maybe",
            ],
        ),
    ));
    assert_eq!(
        out.params.max_burst_length,
        SessionParams::default().max_burst_length
    );
    let rsp = l.accept(1).expect("final");
    assert_eq!(answer(&rsp, "MaxBurstLength").as_deref(), Some("Reject"));
    assert_eq!(answer(&rsp, "ImmediateData").as_deref(), Some("Reject"));
}

#[test]
fn discovery_answers_session_keys_irrelevant() {
    let mut keys: Vec<&str> = LINUX_DISCOVERY.to_vec();
    keys.extend(["MaxBurstLength=65536", "InitialR2T=No"]);
    let mut l = Login::new(Instant::now());
    ready(l.handle(
        &open_dir(),
        &req(Stage::Operational, Stage::FullFeature, true, &keys),
    ));
    let rsp = l.accept(1).expect("final");
    assert_eq!(
        answer(&rsp, "MaxBurstLength").as_deref(),
        Some("Irrelevant")
    );
    assert_eq!(answer(&rsp, "InitialR2T").as_deref(), Some("Irrelevant"));
}

#[test]
fn target_alias_is_declared_in_the_first_response() {
    let mut t = LoginTarget::open(TARGET);
    t.alias = Some("vm disk".into());
    let dir = StaticDirectory::new(
        LoginSettings {
            target_portal_group_tag: 7,
            ..LoginSettings::default()
        },
        [t],
    );
    let mut l = Login::new(Instant::now());
    let r1 = respond(l.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, false, LINUX_NORMAL),
    ));
    assert_eq!(answer(&r1, "TargetAlias").as_deref(), Some("vm disk"));
    assert_eq!(answer(&r1, "TargetPortalGroupTag").as_deref(), Some("7"));
    ready(l.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, true, &[]),
    ));
    let rsp = l.accept(1).expect("final");
    assert_eq!(
        answer(&rsp, "TargetPortalGroupTag"),
        None,
        "only in the first response"
    );
}

#[test]
fn request_text_continued_over_two_pdus() {
    let dir = open_dir();
    let all = text(LINUX_NORMAL);
    let (a, b) = all.split_at(37);
    let mut l = Login::new(Instant::now());
    let mut r1 = req(Stage::Operational, Stage::FullFeature, false, &[]);
    r1.continues = true;
    r1.data = Bytes::copy_from_slice(a);
    let ack = respond(l.handle(&dir, &r1));
    assert!(!ack.transit && !ack.continues && ack.data.is_empty());
    let mut r2 = req(Stage::Operational, Stage::FullFeature, true, &[]);
    r2.data = Bytes::copy_from_slice(b);
    let out = ready(l.handle(&dir, &r2));
    assert_eq!(out.initiator_name, INITIATOR);
    assert_eq!(out.params.max_burst_length, 1 << 20);
}

#[test]
fn long_response_is_sent_in_pieces() {
    let dir = open_dir();
    let unknown: Vec<String> = (0..300)
        .map(|i| format!("X-com.example.key-number-{i:04}=1"))
        .collect();
    let mut keys: Vec<&str> = LINUX_NORMAL.to_vec();
    keys.extend(unknown.iter().map(String::as_str));
    let mut l = Login::new(Instant::now());
    let mut r = req(Stage::Operational, Stage::FullFeature, true, &[]);
    r.data = text(&keys);
    let first = respond(l.handle(&dir, &r));
    assert!(first.continues && !first.transit);
    assert_eq!(first.data.len(), 8192);
    let mut collected = first.data.to_vec();
    let drain = req(Stage::Operational, Stage::FullFeature, true, &[]);
    let out = loop {
        match l.handle(&dir, &drain) {
            LoginStep::Respond(rsp) => {
                assert!(rsp.continues);
                collected.extend_from_slice(&rsp.data);
            }
            LoginStep::Ready(out) => break out,
            LoginStep::Fail(rsp, reason) => panic!("failed: {reason}: {rsp:?}"),
        }
    };
    let last = l.accept(3).expect("final");
    assert!(last.transit && !last.continues);
    collected.extend_from_slice(&last.data);
    let all = keys::parse(&collected).expect("joined text parses");
    assert_eq!(
        all.iter().filter(|(_, v)| v == "NotUnderstood").count(),
        300
    );
    assert_eq!(out.initiator_name, INITIATOR);
    // Sending data while the target is still sending its pieces is an error.
    let mut l = Login::new(Instant::now());
    respond(l.handle(&dir, &r));
    assert_eq!(
        fail_status(l.handle(
            &dir,
            &req(Stage::Operational, Stage::FullFeature, true, &["A=1"])
        )),
        LoginStatus::INITIATOR_ERROR
    );
}

#[test]
fn refuse_replaces_the_final_response() {
    let mut l = Login::new(Instant::now());
    assert_eq!(
        l.refuse(&LoginError::SessionDoesNotExist),
        None,
        "nothing to refuse yet"
    );
    let mut r = req(Stage::Operational, Stage::FullFeature, true, LINUX_NORMAL);
    r.tsih = 9;
    r.itt = 0x44;
    let out = ready(l.handle(&open_dir(), &r));
    assert_eq!(out.requested_tsih, 9);
    let rsp = l.refuse(&LoginError::SessionDoesNotExist).expect("refusal");
    assert_eq!(
        (rsp.status, rsp.transit, rsp.itt, rsp.isid),
        (LoginStatus::SESSION_DOES_NOT_EXIST, false, 0x44, ISID)
    );
    assert_eq!(l.accept(1), None);
}

#[test]
fn endless_logins_are_cut_off() {
    let dir = open_dir();
    let mut l = op_login(&dir);
    let idle = req(Stage::Operational, Stage::FullFeature, false, &[]);
    let mut steps = 1;
    while let LoginStep::Respond(_) = l.handle(&dir, &idle) {
        steps += 1;
        assert!(steps < 1000, "never cut off");
    }
    assert!(steps >= 10);
}

#[test]
fn linux_login_through_the_codec() {
    use crate::iscsi::pdu::{Pdu, PduCodec};
    use bytes::BytesMut;
    let body = text(LINUX_NORMAL);
    let len = (body.len() as u32).to_be_bytes();
    let mut wire = vec![
        0x43, 0x87, 0, 0, 0, len[1], len[2], len[3], 0, 2, 0x3d, 0, 0, 1, 0, 0,
    ];
    wire.extend_from_slice(&[0; 32]);
    wire.extend_from_slice(&body);
    wire.resize(wire.len().div_ceil(4) * 4, 0);
    let codec = PduCodec::new();
    let mut buf = BytesMut::from(&wire[..]);
    let Some(Pdu::LoginRequest(r)) = codec.decode(&mut buf).expect("decodes") else {
        panic!("not a login request")
    };
    let mut login = Login::new(Instant::now());
    let out = ready(login.handle(&open_dir(), &r));
    let rsp = login.accept(0x0200).expect("final");
    let mut out_buf = BytesMut::new();
    codec
        .encode_into(&Pdu::LoginResponse(rsp.clone()), &mut out_buf)
        .expect("encodes");
    assert_eq!(&out_buf[..4], &[0x23, 0x87, 0, 0]);
    assert_eq!(
        &out_buf[8..16],
        &[0, 2, 0x3d, 0, 0, 1, 0x02, 0x00],
        "ISID echoed, TSIH assigned"
    );
    assert_eq!(&out_buf[36..38], &[0, 0], "success");
    assert_eq!(
        codec.decode(&mut out_buf).expect("decodes"),
        Some(Pdu::LoginResponse(rsp))
    );
    // After the final response both ends switch to the negotiated settings.
    let mut ffp = PduCodec::new();
    ffp.set_digests(out.params.digests());
    ffp.set_max_recv_data_segment_length(out.params.max_recv_data_segment_length);
    assert_eq!(ffp.max_recv_data_segment_length(), 262144);
}

/// The reason of a failed step.
fn fail_reason(step: LoginStep) -> LoginError {
    match step {
        LoginStep::Fail(r, reason) => {
            assert_eq!(r.status, reason.status());
            reason
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

/// Whole distinct short `key=\0` entries, numbered from `from`, filling at most `len` bytes.
fn short_keys(from: usize, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for n in from.. {
        let entry = format!("X{n:x}=\0");
        if v.len() + entry.len() > len {
            break;
        }
        v.extend_from_slice(entry.as_bytes());
    }
    v
}

/// A login whose first request spreads 64 KiB of distinct short keys (~10,000 of them) over
/// eight continued PDUs: it used to be parsed and answered key by key, each checked against
/// every earlier one. Now the text is refused as soon as it passes the key cap.
#[test]
fn login_with_64_kib_of_short_keys_is_refused() {
    let dir = open_dir();
    let mut all = text(LINUX_NORMAL).to_vec();
    all.extend(short_keys(0, keys::MAX_TEXT_LEN - all.len()));
    // Well-formed to the end (padding NULs are skipped), so nothing but the key count can
    // refuse it: the old parser went through every key and answered each.
    all.resize(keys::MAX_TEXT_LEN, 0);
    let pieces: Vec<&[u8]> = all.chunks(8192).collect();
    assert_eq!(pieces.len(), 8);
    let mut l = Login::new(Instant::now());
    for piece in &pieces[..7] {
        let mut r = req(Stage::Operational, Stage::FullFeature, false, &[]);
        r.continues = true;
        r.data = Bytes::copy_from_slice(piece);
        let ack = respond(l.handle(&dir, &r));
        assert!(ack.data.is_empty());
    }
    let mut last = req(Stage::Operational, Stage::FullFeature, true, &[]);
    last.data = Bytes::copy_from_slice(pieces[7]);
    let reason = fail_reason(l.handle(&dir, &last));
    assert_eq!(reason, LoginError::BadText(keys::KeyError::TooManyKeys));
    assert_eq!(reason.status(), LoginStatus::INITIATOR_ERROR);
}

/// The caps hold across the requests of one login too, not only within one request.
#[test]
fn keys_and_text_are_capped_across_a_login() {
    let dir = open_dir();
    // Distinct keys spread over several requests of under 1024 keys each.
    let mut l = op_login(&dir);
    let mut from = 0;
    let reason = loop {
        let mut r = req(Stage::Operational, Stage::FullFeature, false, &[]);
        r.data = short_keys(from, 1500).into();
        from += keys::parse(&r.data).expect("valid").len();
        assert!(from < 4 * keys::MAX_KEYS, "never cut off");
        match l.handle(&dir, &r) {
            LoginStep::Respond(_) => {}
            other => break fail_reason(other),
        }
    };
    assert_eq!(reason, LoginError::TooManyKeys(keys::MAX_KEYS));
    // Text: continued PDUs of harmless padding add up to more than 64 KiB.
    let mut l = Login::new(Instant::now());
    let mut sent = 0;
    let reason = loop {
        let mut r = req(Stage::Operational, Stage::FullFeature, false, &[]);
        r.continues = true;
        r.data = vec![0u8; 8192].into();
        sent += 8192;
        match l.handle(&dir, &r) {
            LoginStep::Respond(_) => assert!(sent <= keys::MAX_TEXT_LEN),
            other => break fail_reason(other),
        }
    };
    assert_eq!(reason.status(), LoginStatus::INITIATOR_ERROR);
    assert_eq!(sent, keys::MAX_TEXT_LEN + 8192);
}

fn crc32c_dir() -> StaticDirectory {
    let settings = LoginSettings {
        header_digest: DigestPolicy::Crc32cOnly,
        data_digest: DigestPolicy::Crc32cOnly,
        ..LoginSettings::default()
    };
    StaticDirectory::new(settings, [LoginTarget::open(TARGET)])
}

/// LINUX_NORMAL with the digest keys replaced (`None` leaves a key out).
fn normal_with_digests(header: Option<&str>, data: Option<&str>) -> Vec<String> {
    let mut keys: Vec<String> = LINUX_NORMAL
        .iter()
        .filter(|k| !k.starts_with("HeaderDigest=") && !k.starts_with("DataDigest="))
        .map(|k| k.to_string())
        .collect();
    keys.extend(header.map(|v| format!("HeaderDigest={v}")));
    keys.extend(data.map(|v| format!("DataDigest={v}")));
    keys
}

fn digest_login(dir: &StaticDirectory, header: Option<&str>, data: Option<&str>) -> LoginStep {
    let keys = normal_with_digests(header, data);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    Login::new(Instant::now()).handle(
        dir,
        &req(Stage::Operational, Stage::FullFeature, true, &keys),
    )
}

fn digest_required(key: &'static str, offered: &str) -> LoginError {
    LoginError::DigestRequired {
        key,
        offered: offered.into(),
    }
}

#[test]
fn required_crc32c_refuses_omitted_digest_keys() {
    let dir = crc32c_dir();
    let reason = fail_reason(digest_login(&dir, None, None));
    assert_eq!(reason, digest_required("HeaderDigest", "nothing"));
    assert_eq!(reason.status(), LoginStatus::MISSING_PARAMETER);
    assert_eq!(
        fail_reason(digest_login(&dir, Some("CRC32C"), None)),
        digest_required("DataDigest", "nothing")
    );
    // Straight from the security stage to full feature phase, no digest keys at all.
    let mut l = Login::new(Instant::now());
    let lead = leading_keys();
    let reason = fail_reason(l.handle(
        &dir,
        &req(
            Stage::Security,
            Stage::FullFeature,
            true,
            &[&lead[0], &lead[1], "AuthMethod=None"],
        ),
    ));
    assert_eq!(reason, digest_required("HeaderDigest", "nothing"));
}

#[test]
fn required_crc32c_refuses_a_none_offer() {
    let dir = crc32c_dir();
    let reason = fail_reason(digest_login(&dir, Some("None"), Some("None")));
    assert_eq!(reason, digest_required("HeaderDigest", "None"));
    assert_eq!(reason.status(), LoginStatus::MISSING_PARAMETER);
    assert!(reason.to_string().contains("HeaderDigest=CRC32C required"));
    // Header digest only.
    assert_eq!(
        fail_reason(digest_login(&dir, Some("CRC32C"), Some("None"))),
        digest_required("DataDigest", "None")
    );
    assert_eq!(
        fail_reason(digest_login(&dir, Some("None"), Some("CRC32C"))),
        digest_required("HeaderDigest", "None")
    );
    // Discovery sessions too (open-iscsi's discovery offers None).
    let reason = fail_reason(linux_discovery(&dir));
    assert_eq!(reason.status(), LoginStatus::MISSING_PARAMETER);
}

#[test]
fn required_crc32c_accepts_crc32c_on_both() {
    let dir = crc32c_dir();
    for offer in ["CRC32C", "None,CRC32C"] {
        let out = ready(digest_login(&dir, Some(offer), Some(offer)));
        assert!(
            out.params.header_digest && out.params.data_digest,
            "{offer}"
        );
    }
    // Without the policy, omitting the keys still means no digests.
    let out = ready(digest_login(&open_dir(), None, None));
    assert!(!out.params.header_digest && !out.params.data_digest);
}

#[test]
fn short_mutual_chap_challenges_are_refused() {
    let dir = chap_dir(true);
    let mutual = |len: usize| {
        let challenge = format!("CHAP_C=0x{}", "a5".repeat(len));
        chap_answer(&dir, "alice", "initiator-secret", &["CHAP_I=9", &challenge]).1
    };
    for len in [1, 8, 15] {
        assert_eq!(
            fail_reason(mutual(len)),
            LoginError::Auth(AuthError::ShortChallenge),
            "{len} bytes"
        );
    }
    let r = respond(mutual(16));
    assert!(r.transit && answer(&r, "CHAP_R").is_some());
}

/// Runs CHAP up to the challenge, then answers as `user` with `secret`, plus `extra` keys.
fn chap_answer(
    dir: &StaticDirectory,
    user: &str,
    secret: &str,
    extra: &[&str],
) -> (Login, LoginStep) {
    let (mut login, id, challenge) = chap_until_challenge(dir, "5");
    let name = format!("CHAP_N={user}");
    let response = format!("CHAP_R={}", chap_r(id, secret, &challenge));
    let mut keys = vec![name.as_str(), response.as_str()];
    keys.extend_from_slice(extra);
    let step = login.handle(dir, &req(Stage::Security, Stage::Operational, true, &keys));
    (login, step)
}

/// A one-way CHAP attempt that fails; the login and its failure reason.
fn chap_attempt(dir: &StaticDirectory, user: &str, secret: &str) -> (Login, LoginError) {
    let (login, step) = chap_answer(dir, user, secret, &[]);
    (login, fail_reason(step))
}

#[test]
fn failures_name_their_reason_and_who_tried() {
    let dir = chap_dir(false);
    let (login, reason) = chap_attempt(&dir, "alice", "guess");
    assert_eq!(reason, LoginError::Auth(AuthError::WrongResponse));
    assert!(reason.is_auth_failure());
    assert_eq!(
        reason.to_string(),
        "authentication failed: wrong CHAP response"
    );
    assert_eq!(
        (
            login.initiator_name(),
            login.target_name(),
            login.chap_name()
        ),
        (Some(INITIATOR), Some(TARGET), Some("alice"))
    );

    let (login, reason) = chap_attempt(&dir, "mallory", "initiator-secret");
    assert_eq!(reason, LoginError::Auth(AuthError::UnknownUser));
    assert_eq!(login.chap_name(), Some("mallory"));

    // Not authentication failures: not slowed down.
    let mut l = Login::new(Instant::now());
    let reason = fail_reason(l.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, true, &[]),
    ));
    assert_eq!(reason, LoginError::MissingKey("InitiatorName"));
    assert!(!reason.is_auth_failure());
    assert_eq!(l.initiator_name(), None);
}

/// An initiator not on a target's list gets exactly the answer a missing target gets.
#[test]
fn protected_and_missing_targets_look_the_same_to_an_unlisted_initiator() {
    let mut protected = LoginTarget::open(TARGET);
    protected.allowed_initiators = vec!["iqn.2026-11.test:someone-else".into()];
    protected.auth.chap = Some(account("alice", "initiator-secret"));
    let dir = StaticDirectory::new(LoginSettings::default(), [protected]);
    let attempt = |target: &str| {
        let (i, t) = (
            format!("InitiatorName={INITIATOR}"),
            format!("TargetName={target}"),
        );
        let first = req(
            Stage::Security,
            Stage::Operational,
            false,
            &[&i, &t, "AuthMethod=CHAP"],
        );
        let step = Login::new(Instant::now()).handle(&dir, &first);
        match step {
            LoginStep::Fail(rsp, reason) => (rsp, reason),
            other => panic!("expected Fail, got {other:?}"),
        }
    };
    let (hidden, why_hidden) = attempt(TARGET);
    let (missing, why_missing) = attempt("iqn.2026-11.test:nope");
    assert_eq!(hidden, missing, "the same response, byte for byte");
    assert_eq!(hidden.status, LoginStatus::NOT_FOUND);
    // The log still tells them apart.
    assert_eq!(
        (why_hidden, why_missing),
        (LoginError::InitiatorNotAllowed, LoginError::TargetNotFound)
    );
}

/// The LoginError of a login's first request.
fn first_reason(dir: &StaticDirectory, r: LoginRequest) -> LoginError {
    fail_reason(Login::new(Instant::now()).handle(dir, &r))
}

/// A login whose first request (security stage, T=0) carried the leading keys and `more`.
fn security_login(dir: &StaticDirectory, more: &[&str]) -> Login {
    let lead = leading_keys();
    let mut keys: Vec<&str> = vec![&lead[0], &lead[1]];
    keys.extend_from_slice(more);
    let mut l = Login::new(Instant::now());
    respond(l.handle(dir, &req(Stage::Security, Stage::Operational, false, &keys)));
    l
}

#[test]
fn header_violations_name_their_error() {
    let dir = open_dir();
    let (sec, op, full) = (Stage::Security, Stage::Operational, Stage::FullFeature);
    let good = || req(op, full, true, LINUX_NORMAL);

    let mut r = good();
    r.version_min = 1;
    r.version_max = 2;
    assert_eq!(
        first_reason(&dir, r),
        LoginError::UnsupportedVersion { min: 1, max: 2 }
    );
    let mut r = good();
    r.version_max = 0;
    r.version_min = 0;
    r.continues = true;
    assert_eq!(first_reason(&dir, r), LoginError::TransitAndContinue);
    let mut r = good();
    r.csg = full;
    assert_eq!(first_reason(&dir, r), LoginError::BadFirstStage(full));
    assert_eq!(
        first_reason(&dir, req(op, op, true, LINUX_NORMAL)),
        LoginError::BadTransition { from: op, to: op }
    );

    // Later requests: fields that must stay, the stage, the end of the login.
    let mut l = op_login(&dir);
    let mut r = req(op, full, false, &[]);
    r.cid = 1;
    assert_eq!(
        fail_reason(l.handle(&dir, &r)),
        LoginError::LeadingFieldsChanged
    );
    let mut l = op_login(&dir);
    assert_eq!(
        fail_reason(l.handle(&dir, &req(sec, op, false, &[]))),
        LoginError::WrongStage {
            current: op,
            got: sec
        }
    );
    assert_eq!(
        fail_reason(l.handle(&dir, &req(op, full, true, &[]))),
        LoginError::AfterEnd,
        "a failed login takes no more requests"
    );
    let mut l = Login::new(Instant::now());
    ready(l.handle(&dir, &good()));
    assert_eq!(
        fail_reason(l.handle(&dir, &good())),
        LoginError::AfterEnd,
        "a negotiated login waits for accept or refuse"
    );
}

#[test]
fn key_violations_name_their_error() {
    let dir = open_dir();
    let (op, full) = (Stage::Operational, Stage::FullFeature);
    let i = format!("InitiatorName={INITIATOR}");
    let t = format!("TargetName={TARGET}");

    assert_eq!(
        first_reason(
            &dir,
            req(
                op,
                full,
                true,
                &[&i, &t, "MaxBurstLength=512", "MaxBurstLength=512"]
            )
        ),
        LoginError::DuplicateKey("MaxBurstLength".into())
    );
    assert_eq!(
        first_reason(&dir, req(op, full, true, &[&i, "TargetName"])),
        LoginError::BadText(keys::KeyError::MissingEquals)
    );
    assert_eq!(
        first_reason(&dir, req(op, full, true, &[&i, &t, "bad key=1"])),
        LoginError::BadText(keys::KeyError::BadKeyName)
    );
    assert_eq!(
        first_reason(&dir, req(op, full, true, &[&i, &t, "SessionType=Other"])),
        LoginError::UnknownSessionType("Other".into())
    );
    assert_eq!(
        first_reason(&dir, req(op, full, true, &[&i])),
        LoginError::MissingKey("TargetName")
    );
    assert_eq!(
        first_reason(&dir, req(op, full, true, &[&i, &t, "AuthMethod=None"])),
        LoginError::SecurityKeyOutsideSecurity("AuthMethod".into())
    );

    // A key offered again in a later request, and a leading key after the first request.
    let mut l = security_login(&dir, &["MaxBurstLength=512"]);
    assert_eq!(
        fail_reason(l.handle(
            &dir,
            &req(Stage::Security, op, false, &["MaxBurstLength=512"])
        )),
        LoginError::KeyRenegotiated("MaxBurstLength".into())
    );
    let mut l = security_login(&dir, &[]);
    assert_eq!(
        fail_reason(l.handle(
            &dir,
            &req(Stage::Security, op, false, &["SessionType=Normal"])
        )),
        LoginError::LeadingKeyLate("SessionType".into())
    );
    let mut l = security_login(&dir, &[]);
    assert_eq!(
        fail_reason(l.handle(
            &dir,
            &req(
                Stage::Security,
                op,
                false,
                &["TargetName=iqn.2026-11.test:other"]
            )
        )),
        LoginError::LeadingKeyLate("TargetName".into()),
        "a leading key sent again with another value is late before it is renegotiated"
    );
    let mut l = security_login(&dir, &[]);
    let rsp = respond(l.handle(&dir, &req(Stage::Security, op, false, &[&t, &i])));
    assert!(
        answers(&rsp).is_empty(),
        "a same-value repeat of the leading keys is dropped, not answered: {:?}",
        answers(&rsp)
    );
}

/// What `iscsi-ls -s 'iscsi://user%secret@host'` sends (libiscsi 1.19, taken with strace)
/// to a discovery session that needs no CHAP: it offers CHAP, takes our `AuthMethod=None`,
/// and in its operational request sends InitiatorName and SessionType again.
#[test]
fn libiscsi_discovery_offering_chap_logs_in_without_it() {
    let dir = open_dir();
    let initiator = "InitiatorName=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls";
    let mut login = Login::new(Instant::now());
    let first = req(
        Stage::Security,
        Stage::Operational,
        true,
        &[initiator, "SessionType=Discovery", "AuthMethod=CHAP,None"],
    );
    let rsp = respond(login.handle(&dir, &first));
    assert_eq!(answer(&rsp, "AuthMethod").as_deref(), Some("None"));
    assert!(
        rsp.transit,
        "no CHAP configured: the security stage ends here"
    );
    let mut second = req(
        Stage::Operational,
        Stage::FullFeature,
        true,
        &[
            initiator,
            "SessionType=Discovery",
            "HeaderDigest=None",
            "DataDigest=None",
            "InitialR2T=No",
            "ImmediateData=Yes",
            "MaxBurstLength=262144",
            "FirstBurstLength=262144",
            "DefaultTime2Wait=2",
            "DefaultTime2Retain=0",
            "MaxOutstandingR2T=1",
            "ErrorRecoveryLevel=0",
            "IFMarker=No",
            "OFMarker=No",
            "MaxConnections=1",
            "MaxRecvDataSegmentLength=262144",
            "DataPDUInOrder=Yes",
            "DataSequenceInOrder=Yes",
        ],
    );
    second.cmd_sn = 0;
    let out = ready(login.handle(&dir, &second));
    assert_eq!(out.session_type, SessionType::Discovery);
    assert_eq!(
        out.initiator_name,
        "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls"
    );
}

#[test]
fn authentication_violations_name_their_error() {
    let chap = chap_dir(false);
    let (sec, op, full) = (Stage::Security, Stage::Operational, Stage::FullFeature);
    let lead = leading_keys();

    // Leaving the security stage, or never entering it, without authenticating.
    assert_eq!(
        first_reason(&chap, req(sec, op, true, &[&lead[0], &lead[1]])),
        LoginError::UnauthenticatedTransit
    );
    assert_eq!(
        first_reason(&chap, req(op, full, true, LINUX_NORMAL)),
        LoginError::UnauthenticatedTransit
    );
    // Keys of a later step before their turn.
    let mut l = security_login(&chap, &[]);
    assert_eq!(
        fail_reason(l.handle(&chap, &req(sec, op, false, &["CHAP_A=5"]))),
        LoginError::AuthKeyOutOfOrder("CHAP_A")
    );
    let mut l = security_login(&chap, &["AuthMethod=CHAP"]);
    assert_eq!(
        fail_reason(l.handle(
            &chap,
            &req(sec, op, false, &["CHAP_N=alice", "CHAP_R=0x00"])
        )),
        LoginError::AuthKeyOutOfOrder("CHAP_N")
    );
    assert_eq!(
        l.chap_name(),
        Some("alice"),
        "who tried is kept for the log"
    );
    let mut l = security_login(&chap, &["AuthMethod=CHAP"]);
    assert_eq!(
        fail_reason(l.handle(&chap, &req(sec, op, false, &["CHAP_C=0x0102"]))),
        LoginError::AuthKeyOutOfOrder("CHAP_C")
    );
    // No common method: CHAP required, only None offered.
    assert_eq!(
        first_reason(
            &chap,
            req(sec, op, true, &[&lead[0], &lead[1], "AuthMethod=None"])
        ),
        LoginError::Auth(AuthError::NoCommonMethod)
    );
    assert!(LoginError::UnauthenticatedTransit.is_auth_failure());
    assert!(!LoginError::TargetNotFound.is_auth_failure());
}

#[test]
fn too_many_pdus_is_named() {
    let dir = open_dir();
    let mut l = op_login(&dir);
    let idle = req(Stage::Operational, Stage::FullFeature, false, &[]);
    let reason = loop {
        match l.handle(&dir, &idle) {
            LoginStep::Respond(_) => {}
            other => break fail_reason(other),
        }
    };
    assert_eq!(reason, LoginError::TooManyPdus(64));
}

#[test]
fn data_during_a_continued_response_is_named() {
    // A response of more than 8192 bytes: one NotUnderstood per unknown key.
    let dir = open_dir();
    let many: Vec<String> = (0..400)
        .map(|n| format!("X-com.example.key{n:04}=1"))
        .collect();
    let mut keys: Vec<&str> = LINUX_NORMAL.to_vec();
    keys.extend(many.iter().map(String::as_str));
    let mut l = Login::new(Instant::now());
    let op = Stage::Operational;
    let rsp = respond(l.handle(&dir, &req(op, Stage::FullFeature, true, &keys)));
    assert!(rsp.continues, "the answer needs more than one PDU");
    assert_eq!(
        fail_reason(l.handle(&dir, &req(op, Stage::FullFeature, false, &["A=1"]))),
        LoginError::DataDuringContinuation
    );
}

/// The status each reason is sent as (RFC 7143 §11.13.5), as class/detail on the wire.
#[test]
fn each_error_maps_to_its_status() {
    use LoginError as E;
    let table: Vec<(LoginError, u16)> = vec![
        (E::AfterEnd, 0x0200),
        (E::UnsupportedVersion { min: 1, max: 1 }, 0x0205),
        (E::NotALoginRequest { opcode: 0x01 }, 0x020b),
        (E::TransitAndContinue, 0x0200),
        (E::BadFirstStage(Stage::FullFeature), 0x0200),
        (E::LeadingFieldsChanged, 0x0200),
        (
            E::WrongStage {
                current: Stage::Operational,
                got: Stage::Security,
            },
            0x0200,
        ),
        (
            E::BadTransition {
                from: Stage::Operational,
                to: Stage::Operational,
            },
            0x0200,
        ),
        (E::TooManyPdus(64), 0x0200),
        (E::DataDuringContinuation, 0x0200),
        (E::BadText(keys::KeyError::NotUtf8), 0x0200),
        (E::DuplicateKey("A".into()), 0x0200),
        (E::KeyRenegotiated("A".into()), 0x0200),
        (E::LeadingKeyLate("TargetName".into()), 0x0200),
        (E::TooManyKeys(1024), 0x0200),
        (E::TooMuchText(65536), 0x0200),
        (E::SecurityKeyOutsideSecurity("CHAP_A".into()), 0x0200),
        (E::AuthKeyOutOfOrder("CHAP_A"), 0x0200),
        (E::NameTooLong, 0x0200),
        (E::MissingKey("InitiatorName"), 0x0207),
        (E::UnknownSessionType("X".into()), 0x0209),
        (E::TargetNotFound, 0x0203),
        (E::InitiatorNotAllowed, 0x0203),
        (E::UnauthenticatedTransit, 0x0201),
        (E::Auth(AuthError::WrongResponse), 0x0201),
        (
            E::DigestRequired {
                key: "DataDigest",
                offered: "None".into(),
            },
            0x0207,
        ),
        (E::SessionDoesNotExist, 0x020a),
        (E::TooManyConnections, 0x0206),
        (E::OutOfResources, 0x0302),
    ];
    for (reason, code) in table {
        assert_eq!(reason.status().code(), code, "{reason}");
    }
}

#[test]
fn admission_refusals_carry_their_status() {
    for (reason, status) in [
        (
            LoginError::TooManyConnections,
            LoginStatus::TOO_MANY_CONNECTIONS,
        ),
        (LoginError::OutOfResources, LoginStatus::OUT_OF_RESOURCES),
    ] {
        let mut l = Login::new(Instant::now());
        ready(l.handle(
            &open_dir(),
            &req(Stage::Operational, Stage::FullFeature, true, LINUX_NORMAL),
        ));
        let rsp = l.refuse(&reason).expect("refusal");
        assert_eq!((rsp.status, rsp.transit), (status, false));
        assert_eq!(l.poll_timeout(), None, "a refused login has no deadline");
    }
}

#[test]
fn login_deadline_expires_only_when_reached() {
    let t0 = Instant::now();
    let dir = open_dir();
    let mut l = Login::new(t0);
    assert_eq!(l.poll_timeout(), Some(t0 + LOGIN_TIMEOUT));
    assert_eq!(LOGIN_TIMEOUT, Duration::from_secs(30));
    // Requests do not move the deadline: it bounds the whole login.
    respond(l.handle(
        &dir,
        &req(Stage::Operational, Stage::FullFeature, false, LINUX_NORMAL),
    ));
    assert_eq!(l.poll_timeout(), Some(t0 + LOGIN_TIMEOUT));
    assert!(!l.handle_timeout(t0 + LOGIN_TIMEOUT - Duration::from_millis(1)));
    assert!(l.handle_timeout(t0 + LOGIN_TIMEOUT));
    assert_eq!(l.poll_timeout(), None);
    assert!(!l.handle_timeout(t0 + 2 * LOGIN_TIMEOUT), "expires once");
    // The login is over: a late request is refused.
    assert_eq!(
        fail_reason(l.handle(
            &dir,
            &req(Stage::Operational, Stage::FullFeature, true, &[])
        )),
        LoginError::AfterEnd
    );
}

#[test]
fn login_deadline_covers_admission_and_ends_with_accept() {
    let t0 = Instant::now();
    let dir = open_dir();
    let full_login = || req(Stage::Operational, Stage::FullFeature, true, LINUX_NORMAL);

    // Accepted in time: no deadline any more, however late it is.
    let mut l = Login::new(t0);
    ready(l.handle(&dir, &full_login()));
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + LOGIN_TIMEOUT),
        "admission is part of the login"
    );
    assert!(!l.handle_timeout(t0 + Duration::from_secs(29)));
    assert!(l.accept(1).is_some());
    assert_eq!(l.poll_timeout(), None);
    assert!(!l.handle_timeout(t0 + Duration::from_secs(3600)));

    // Admission still undecided at the deadline: the parked final response is dropped.
    let mut l = Login::new(t0);
    ready(l.handle(&dir, &full_login()));
    assert!(l.handle_timeout(t0 + LOGIN_TIMEOUT));
    assert_eq!(l.accept(1), None);
    assert_eq!(l.refuse(&LoginError::OutOfResources), None);

    // A failed login has no deadline left either.
    let mut l = Login::new(t0);
    fail_reason(l.handle(
        &dir,
        &req(Stage::FullFeature, Stage::FullFeature, false, &[]),
    ));
    assert_eq!(l.poll_timeout(), None);
    assert!(!l.handle_timeout(t0 + LOGIN_TIMEOUT));
}

#[test]
fn other_pdus_during_login_are_invalid_during_login() {
    let dir = open_dir();
    // Before the first Login Request there is no login to answer in: close at once.
    assert_eq!(Login::new(Instant::now()).invalid_pdu(0x01, 5), None);
    let mut l = op_login(&dir);
    let Some(LoginStep::Fail(rsp, reason)) = l.invalid_pdu(0x01, 5) else {
        panic!("a started login answers a stray PDU")
    };
    assert_eq!(reason, LoginError::NotALoginRequest { opcode: 0x01 });
    assert_eq!(
        (rsp.status, rsp.itt, rsp.isid, rsp.transit),
        (LoginStatus::INVALID_DURING_LOGIN, 5, ISID, false)
    );
    assert_eq!(rsp.status.code(), 0x020b);
    assert_eq!(l.poll_timeout(), None, "the login is over");
    assert_eq!(l.invalid_pdu(0x01, 6), None, "answered once");
    assert_eq!(
        fail_reason(l.handle(
            &dir,
            &req(Stage::Operational, Stage::FullFeature, true, &[])
        )),
        LoginError::AfterEnd
    );
}

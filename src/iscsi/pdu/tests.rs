//! Codec tests with literal wire bytes for every opcode, digests, AHS, incremental input and
//! limits, plus property-based round trips.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// Parses hex with any whitespace or `|` separators.
fn hex(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).expect("test literal is valid hex"))
        .collect()
}

fn decode_all(codec: &PduCodec, wire: &[u8]) -> Pdu {
    let mut buf = BytesMut::from(wire);
    let pdu = codec.decode(&mut buf).expect("decodes").expect("complete");
    assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    pdu
}

fn encode_all(codec: &PduCodec, pdu: &Pdu) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec.encode_into(pdu, &mut out).expect("encodes");
    out.to_vec()
}

/// Decoding `wire` gives `pdu`, and encoding `pdu` gives `wire` back.
fn check(wire: &[u8], pdu: Pdu) {
    let codec = PduCodec::new();
    assert_eq!(decode_all(&codec, wire), pdu);
    assert_eq!(encode_all(&codec, &pdu), wire);
}

fn lun(n: u64) -> LunField {
    LunField::from_number(n).expect("small LUN")
}

#[test]
fn nop_out_ping_as_linux_sends_it() {
    let wire = hex(
        "40 80 00 00 00 000000 0000000000000000 00000005 ffffffff 00000003 00000007
                    00000000000000000000000000000000",
    );
    check(
        &wire,
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: lun(0),
            itt: 5,
            ttt: RESERVED_TAG,
            cmd_sn: 3,
            exp_stat_sn: 7,
            data: Bytes::new(),
        }),
    );
}

#[test]
fn scsi_command_read10() {
    let wire = hex(
        "01 c1 00 00 00 000000 0001000000000000 00000010 00100000 00000002 00000003
                    28000000000000000800000000000000",
    );
    let pdu = decode_all(&PduCodec::new(), &wire);
    let Pdu::ScsiCommand(cmd) = &pdu else {
        panic!("not a SCSI command: {pdu:?}")
    };
    assert!(cmd.is_final && cmd.read && !cmd.write && !cmd.immediate);
    assert_eq!(cmd.attr, TaskAttribute::Simple);
    assert_eq!(cmd.lun.number(), Some(1));
    assert_eq!(
        (
            cmd.itt,
            cmd.expected_data_transfer_length,
            cmd.cmd_sn,
            cmd.exp_stat_sn
        ),
        (0x10, 1 << 20, 2, 3)
    );
    assert_eq!(&cmd.cdb[..10], &hex("28 00 00000000 00 0008 00")[..]);
    assert_eq!(cmd.cdb.len(), 16);
    assert_eq!(cmd.bidi_read_length, None);
    assert_eq!(encode_all(&PduCodec::new(), &pdu), wire);
}

#[test]
fn scsi_command_write_with_padded_immediate_data() {
    let wire = hex(
        "01 a1 00 00 00 000005 0001000000000000 00000011 00000200 00000004 00000005
                    2a000000000000000100000000000000 0102030405 000000",
    );
    check(
        &wire,
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            is_final: true,
            read: false,
            write: true,
            attr: TaskAttribute::Simple,
            lun: lun(1),
            itt: 0x11,
            expected_data_transfer_length: 512,
            cmd_sn: 4,
            exp_stat_sn: 5,
            cdb: Bytes::from(hex("2a000000000000000100000000000000")),
            bidi_read_length: None,
            data: Bytes::from_static(&[1, 2, 3, 4, 5]),
        }),
    );
}

#[test]
fn scsi_command_with_extended_cdb_and_bidi_ahs() {
    let mut cdb = vec![0x7f, 0, 0, 0, 0, 0, 0, 0x18];
    cdb.extend((8u8..32).collect::<Vec<_>>());
    // TotalAHSLength 7 words: extended CDB AHS (AHSLength 17 = reserved byte + 16 CDB bytes,
    // 20 bytes in all) then the bidirectional read length AHS (8 bytes).
    let wire = hex(&format!(
        "01 e1 00 00 07 000000 0000000000000000 00000001 00000200 00000001 00000001 {}
         0011 01 00 {} 0005 02 00 00001000",
        hex_str(&cdb[..16]),
        hex_str(&cdb[16..])
    ));
    check(
        &wire,
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            is_final: true,
            read: true,
            write: true,
            attr: TaskAttribute::Simple,
            lun: lun(0),
            itt: 1,
            expected_data_transfer_length: 512,
            cmd_sn: 1,
            exp_stat_sn: 1,
            cdb: Bytes::from(cdb),
            bidi_read_length: Some(0x1000),
            data: Bytes::new(),
        }),
    );
}

fn hex_str(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn task_mgmt_request_lun_reset() {
    let wire = hex(
        "42 85 00 00 00 000000 0000000000000000 00000020 ffffffff 00000009 0000000a
                    00000008 00000000 0000000000000000",
    );
    check(
        &wire,
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::LOGICAL_UNIT_RESET,
            lun: lun(0),
            itt: 0x20,
            referenced_task_tag: RESERVED_TAG,
            cmd_sn: 9,
            exp_stat_sn: 10,
            ref_cmd_sn: 8,
            exp_data_sn: 0,
        }),
    );
}

#[test]
fn login_request_as_linux_sends_it() {
    let text = b"InitiatorName=iqn.a\0SessionType=Discovery\0";
    assert_eq!(text.len(), 42);
    let wire = [
        hex(
            "43 87 00 00 00 00002a 00023d000001 0000 00000000 0000 0000 00000001 00000000
             00000000000000000000000000000000",
        ),
        text.to_vec(),
        vec![0, 0],
    ]
    .concat();
    check(
        &wire,
        Pdu::LoginRequest(LoginRequest {
            cmd_sn: 1,
            ..LoginRequest::operational(Isid([0, 2, 0x3d, 0, 0, 1]), Bytes::from_static(text))
        }),
    );
}

#[test]
fn text_request_send_targets() {
    let wire = [
        hex(
            "44 80 00 00 00 000010 0000000000000000 00000001 ffffffff 00000002 00000001
             00000000000000000000000000000000",
        ),
        b"SendTargets=All\0".to_vec(),
    ]
    .concat();
    check(
        &wire,
        Pdu::TextRequest(TextRequest {
            immediate: true,
            is_final: true,
            continues: false,
            lun: lun(0),
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 2,
            exp_stat_sn: 1,
            data: Bytes::from_static(b"SendTargets=All\0"),
        }),
    );
}

#[test]
fn data_out_solicited() {
    let wire = hex(
        "05 80 00 00 00 000006 0001000000000000 00000011 00000077 00000000 00000005
                    00000000 00000003 00002000 00000000 aabbccddeeff 0000",
    );
    check(
        &wire,
        Pdu::DataOut(DataOut {
            is_final: true,
            lun: lun(1),
            itt: 0x11,
            ttt: 0x77,
            exp_stat_sn: 5,
            data_sn: 3,
            buffer_offset: 0x2000,
            data: Bytes::from(hex("aabbccddeeff")),
        }),
    );
}

#[test]
fn logout_request_close_session() {
    let wire = hex(
        "46 80 00 00 00 000000 0000000000000000 00000030 0000 0000 00000010 00000011
                    00000000000000000000000000000000",
    );
    check(
        &wire,
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt: 0x30,
            cid: 0,
            cmd_sn: 0x10,
            exp_stat_sn: 0x11,
        }),
    );
}

#[test]
fn snack_status() {
    let wire = hex(
        "10 81 00 00 00 000000 0000000000000000 ffffffff ffffffff 00000000 00000004
                    0000000000000000 00000002 00000001",
    );
    check(
        &wire,
        Pdu::Snack(Snack {
            snack_type: SnackType::STATUS,
            lun: lun(0),
            itt: RESERVED_TAG,
            ttt_or_snack_tag: RESERVED_TAG,
            exp_stat_sn: 4,
            beg_run: 2,
            run_length: 1,
        }),
    );
}

#[test]
fn nop_in_answer() {
    let wire = hex(
        "20 80 00 00 00 000000 0000000000000000 00000005 ffffffff 00000007 00000004
                    00000044 000000000000000000000000",
    );
    check(
        &wire,
        Pdu::NopIn(NopIn {
            lun: lun(0),
            itt: 5,
            ttt: RESERVED_TAG,
            stat_sn: 7,
            exp_cmd_sn: 4,
            max_cmd_sn: 0x44,
            data: Bytes::new(),
        }),
    );
}

#[test]
fn scsi_response_check_condition_with_sense() {
    let sense = hex("70 00 05 00000000 0a 00000000 24 00 00 000000");
    assert_eq!(sense.len(), 18);
    let wire = [
        hex(
            "21 82 00 02 00 000014 0000000000000000 00000011 00000000 00000008 00000005
             00000045 00000000 00000000 00000100",
        ),
        hex("0012"),
        sense.clone(),
    ]
    .concat();
    let pdu = ScsiResponse {
        bidi_overflow: false,
        bidi_underflow: false,
        overflow: false,
        underflow: true,
        response: RESPONSE_COMPLETED,
        status: 0x02,
        itt: 0x11,
        snack_tag: 0,
        stat_sn: 8,
        exp_cmd_sn: 5,
        max_cmd_sn: 0x45,
        exp_data_sn: 0,
        bidi_read_residual_count: 0,
        residual_count: 0x100,
        data: ScsiResponse::sense_segment(&sense),
    };
    assert_eq!(pdu.sense().as_deref(), Some(&sense[..]));
    check(&wire, Pdu::ScsiResponse(pdu));
}

#[test]
fn scsi_response_sense_accessor_rejects_short_segment() {
    let mut rsp = ScsiResponse {
        bidi_overflow: false,
        bidi_underflow: false,
        overflow: false,
        underflow: false,
        response: 0,
        status: 2,
        itt: 0,
        snack_tag: 0,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        exp_data_sn: 0,
        bidi_read_residual_count: 0,
        residual_count: 0,
        data: Bytes::from_static(&[0x00, 0x12, 0x70]),
    };
    assert_eq!(rsp.sense(), None);
    rsp.data = Bytes::from_static(&[0x00]);
    assert_eq!(rsp.sense(), None);
    assert!(ScsiResponse::sense_segment(&[]).is_empty());
}

#[test]
fn task_mgmt_response() {
    let wire = hex(
        "22 80 02 00 00 000000 0000000000000000 00000020 00000000 0000000b 0000000a
                    0000004a 000000000000000000000000",
    );
    check(
        &wire,
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponseCode::LUN_DOES_NOT_EXIST,
            itt: 0x20,
            stat_sn: 0xb,
            exp_cmd_sn: 0xa,
            max_cmd_sn: 0x4a,
        }),
    );
}

#[test]
fn login_response_failure() {
    let wire = hex(
        "23 00 00 00 00 000000 00023d000001 0000 00000000 00000000 00000000 00000001
                    00000001 0201 0000 0000 0000 0000 0000",
    );
    check(
        &wire,
        Pdu::LoginResponse(LoginResponse {
            transit: false,
            continues: false,
            csg: Stage::Security,
            nsg: Stage::Security,
            version_max: 0,
            version_active: 0,
            isid: Isid([0, 2, 0x3d, 0, 0, 1]),
            tsih: 0,
            itt: 0,
            stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            status: LoginStatus::AUTHENTICATION_FAILURE,
            data: Bytes::new(),
        }),
    );
}

#[test]
fn login_response_success_with_text() {
    let text = b"TargetPortalGroupTag=1\0";
    let wire = [
        hex(
            "23 87 00 00 00 000017 00023d000001 0100 00000000 00000000 00000000 00000001
             00000021 0000 0000 0000 0000 0000 0000",
        ),
        text.to_vec(),
        vec![0],
    ]
    .concat();
    check(
        &wire,
        Pdu::LoginResponse(LoginResponse {
            transit: true,
            continues: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: Isid([0, 2, 0x3d, 0, 0, 1]),
            tsih: 0x100,
            itt: 0,
            stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 0x21,
            status: LoginStatus::SUCCESS,
            data: Bytes::from_static(text),
        }),
    );
}

#[test]
fn text_response_continued() {
    let wire = hex(
        "24 40 00 00 00 000004 0000000000000000 00000001 00000099 00000002 00000003
                    00000043 000000000000000000000000 41 3d 42 00",
    );
    check(
        &wire,
        Pdu::TextResponse(TextResponse {
            is_final: false,
            continues: true,
            lun: lun(0),
            itt: 1,
            ttt: 0x99,
            stat_sn: 2,
            exp_cmd_sn: 3,
            max_cmd_sn: 0x43,
            data: Bytes::from_static(b"A=B\0"),
        }),
    );
}

#[test]
fn data_in_with_status_phase_collapse() {
    let wire = hex(
        "25 83 00 00 00 000002 0001000000000000 00000010 ffffffff 00000009 00000004
                    00000044 00000001 00040000 00000016 abcd 0000",
    );
    check(
        &wire,
        Pdu::DataIn(DataIn {
            is_final: true,
            ack: false,
            overflow: false,
            underflow: true,
            status: Some(0),
            lun: lun(1),
            itt: 0x10,
            ttt: RESERVED_TAG,
            stat_sn: 9,
            exp_cmd_sn: 4,
            max_cmd_sn: 0x44,
            data_sn: 1,
            buffer_offset: 0x40000,
            residual_count: 0x16,
            data: Bytes::from_static(&[0xab, 0xcd]),
        }),
    );
}

#[test]
fn data_in_without_status_ignores_status_byte() {
    let wire = hex(
        "25 00 00 02 00 000000 0000000000000000 00000010 ffffffff 00000000 00000004
                    00000044 00000000 00000000 00000000",
    );
    let Pdu::DataIn(d) = decode_all(&PduCodec::new(), &wire) else {
        panic!("not Data-In")
    };
    assert_eq!(d.status, None);
}

#[test]
fn logout_response() {
    let wire = hex(
        "26 80 00 00 00 000000 0000000000000000 00000030 00000000 00000012 00000011
                    00000051 00000000 0002 0014 00000000",
    );
    check(
        &wire,
        Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::CLOSED,
            itt: 0x30,
            stat_sn: 0x12,
            exp_cmd_sn: 0x11,
            max_cmd_sn: 0x51,
            time2wait: 2,
            time2retain: 20,
        }),
    );
}

#[test]
fn r2t() {
    let wire = hex(
        "31 80 00 00 00 000000 0001000000000000 00000011 00000001 00000006 00000005
                    00000045 00000000 00002000 00040000",
    );
    check(
        &wire,
        Pdu::R2t(R2t {
            lun: lun(1),
            itt: 0x11,
            ttt: 1,
            stat_sn: 6,
            exp_cmd_sn: 5,
            max_cmd_sn: 0x45,
            r2t_sn: 0,
            buffer_offset: 0x2000,
            desired_length: 0x40000,
        }),
    );
}

#[test]
fn async_message_logout_requested() {
    let wire = hex(
        "32 80 00 00 00 000000 0000000000000000 ffffffff 00000000 00000006 00000005
                    00000045 01 00 0000 0000 0005 00000000",
    );
    check(
        &wire,
        Pdu::AsyncMessage(AsyncMessage {
            lun: lun(0),
            stat_sn: 6,
            exp_cmd_sn: 5,
            max_cmd_sn: 0x45,
            event: ASYNC_EVENT_LOGOUT_REQUESTED,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: 5,
            data: Bytes::new(),
        }),
    );
}

#[test]
fn reject_carries_the_bad_header() {
    let bad = [0x1cu8; BHS_LEN];
    let wire = [
        hex(
            "3f 80 05 00 00 000030 0000000000000000 ffffffff 00000000 00000006 00000005
             00000045 00000000 0000000000000000",
        ),
        bad.to_vec(),
    ]
    .concat();
    let mut rej = Reject::of_header(RejectReason::COMMAND_NOT_SUPPORTED, &bad);
    rej.stat_sn = 6;
    rej.exp_cmd_sn = 5;
    rej.max_cmd_sn = 0x45;
    check(&wire, Pdu::Reject(rej));
}

#[test]
fn unknown_opcode_is_kept_whole() {
    let wire = [
        hex(
            "5c 80 00 00 00 000003 0000000000000000 00000042 00000000 00000000 00000000
             00000000000000000000000000000000",
        ),
        vec![1, 2, 3, 0],
    ]
    .concat();
    let pdu = decode_all(&PduCodec::new(), &wire);
    let Pdu::Unknown(u) = &pdu else {
        panic!("expected Unknown, got {pdu:?}")
    };
    assert_eq!((u.opcode(), u.immediate(), u.itt()), (0x1c, true, 0x42));
    assert_eq!(&u.data[..], &[1, 2, 3]);
    assert_eq!(pdu.opcode(), 0x1c);
    assert_eq!(encode_all(&PduCodec::new(), &pdu), wire);
}

#[test]
fn incremental_input_byte_by_byte() {
    let codec = PduCodec::new();
    let first = Pdu::DataOut(DataOut {
        is_final: false,
        lun: lun(1),
        itt: 9,
        ttt: 3,
        exp_stat_sn: 1,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from_static(b"hello"),
    });
    let second = Pdu::NopOut(NopOut {
        immediate: true,
        lun: lun(0),
        itt: 10,
        ttt: RESERVED_TAG,
        cmd_sn: 1,
        exp_stat_sn: 1,
        data: Bytes::new(),
    });
    let mut wire = encode_all(&codec, &first);
    let first_len = wire.len();
    wire.extend(encode_all(&codec, &second));
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for (i, b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        match codec.decode(&mut buf).expect("valid stream") {
            Some(p) => got.push((i + 1, p)),
            None => assert!(buf.len() <= i + 1),
        }
    }
    assert_eq!(got, vec![(first_len, first), (wire.len(), second)]);
    assert!(buf.is_empty());
}

#[test]
fn two_pdus_in_one_buffer() {
    let codec = PduCodec::new();
    let nop = Pdu::NopIn(NopIn {
        lun: lun(0),
        itt: 1,
        ttt: RESERVED_TAG,
        stat_sn: 1,
        exp_cmd_sn: 1,
        max_cmd_sn: 1,
        data: Bytes::from_static(b"xy"),
    });
    let mut buf = BytesMut::new();
    codec.encode_into(&nop, &mut buf).expect("encodes");
    codec.encode_into(&nop, &mut buf).expect("encodes");
    assert_eq!(codec.decode(&mut buf).expect("ok"), Some(nop.clone()));
    assert_eq!(codec.decode(&mut buf).expect("ok"), Some(nop));
    assert_eq!(codec.decode(&mut buf).expect("ok"), None);
}

#[test]
fn crc32c_matches_rfc_example() {
    // RFC 7143 Appendix B.4: 32 bytes of zeros give the digest bytes aa 36 91 8a.
    assert_eq!(
        codec::digest(&[&[0u8; 32]]).to_le_bytes(),
        [0xaa, 0x36, 0x91, 0x8a]
    );
    // 32 bytes of 0xff give 43 ab a8 62.
    assert_eq!(
        codec::digest(&[&[0xffu8; 32]]).to_le_bytes(),
        [0x43, 0xab, 0xa8, 0x62]
    );
}

fn digest_codec() -> PduCodec {
    let mut c = PduCodec::new();
    c.set_digests(Digests {
        header: true,
        data: true,
    });
    c
}

#[test]
fn digests_are_placed_and_checked() {
    let codec = digest_codec();
    let pdu = Pdu::NopOut(NopOut {
        immediate: true,
        lun: lun(0),
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: 3,
        exp_stat_sn: 7,
        data: Bytes::from_static(b"abcde"),
    });
    let wire = encode_all(&codec, &pdu);
    assert_eq!(wire.len(), 48 + 4 + 8 + 4);
    assert_eq!(&wire[48..52], &crc32c::crc32c(&wire[..48]).to_le_bytes());
    assert_eq!(&wire[60..64], &crc32c::crc32c(&wire[52..60]).to_le_bytes());
    assert_eq!(decode_all(&codec, &wire), pdu);
    // Without digests the same bytes are misframed, which is why both ends must switch together.
    let mut buf = BytesMut::from(&wire[..]);
    let plain = PduCodec::new().decode(&mut buf).expect("frames");
    assert_ne!(plain, Some(pdu));
}

#[test]
fn empty_data_segment_has_no_data_digest() {
    let codec = digest_codec();
    let pdu = Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: LogoutReason::CLOSE_SESSION,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 1,
    });
    let enc = codec.encode(&pdu).expect("encodes");
    assert_eq!(
        (
            enc.header.len(),
            enc.data.len(),
            enc.trailer.as_bytes().len()
        ),
        (52, 0, 0)
    );
}

#[test]
fn header_digest_mismatch_is_fatal() {
    let codec = digest_codec();
    let pdu = Pdu::NopOut(NopOut {
        immediate: true,
        lun: lun(0),
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: 3,
        exp_stat_sn: 7,
        data: Bytes::new(),
    });
    let mut wire = encode_all(&codec, &pdu);
    wire[20] ^= 1;
    let err = codec
        .decode(&mut BytesMut::from(&wire[..]))
        .expect_err("bad digest");
    assert!(matches!(err, PduError::HeaderDigest { .. }), "{err:?}");
    assert!(!err.is_recoverable());
}

#[test]
fn data_digest_mismatch_consumes_pdu_and_keeps_sync() {
    let codec = digest_codec();
    let out = Pdu::DataOut(DataOut {
        is_final: true,
        lun: lun(0),
        itt: 9,
        ttt: 1,
        exp_stat_sn: 1,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from_static(b"payload!"),
    });
    let mut wire = encode_all(&codec, &out);
    let last = wire.len() - 5;
    wire[last] ^= 0x80; // corrupt the data, not the digest
    wire.extend(encode_all(&codec, &out));
    let mut buf = BytesMut::from(&wire[..]);
    let err = codec.decode(&mut buf).expect_err("bad data digest");
    assert!(err.is_recoverable());
    assert_eq!(err.reject_reason(), Some(RejectReason::DATA_DIGEST_ERROR));
    assert_eq!(err.rejected_header().map(|h| h[0]), Some(opcode::DATA_OUT));
    assert_eq!(codec.decode(&mut buf).expect("next PDU is fine"), Some(out));
}

#[test]
fn oversize_segment_rejected_from_the_header_alone() {
    let mut codec = PduCodec::new();
    codec.set_max_recv_data_segment_length(8192);
    let wire = hex(
        "05 80 00 00 00 002001 0000000000000000 00000001 00000001 00000000 00000000
                    00000000 00000000 00000000 00000000",
    );
    let err = codec
        .decode(&mut BytesMut::from(&wire[..]))
        .expect_err("too long");
    assert!(
        matches!(
            err,
            PduError::SegmentTooLong {
                len: 8193,
                limit: 8192
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_recoverable());
    // Exactly at the limit only waits for more bytes.
    let mut ok = wire.clone();
    ok[7] = 0x00;
    ok[6] = 0x20;
    assert_eq!(
        codec
            .decode(&mut BytesMut::from(&ok[..]))
            .expect("within limit"),
        None
    );
}

#[test]
fn ahs_on_pdu_without_ahs_is_rejected() {
    let wire = hex(
        "00 80 00 00 01 000000 0000000000000000 00000005 ffffffff 00000003 00000007
                    00000000000000000000000000000000 00000000",
    );
    let mut buf = BytesMut::from(&wire[..]);
    let err = PduCodec::new()
        .decode(&mut buf)
        .expect_err("AHS not allowed");
    assert!(matches!(err, PduError::BadAhs { .. }), "{err:?}");
    assert_eq!(err.reject_reason(), Some(RejectReason::INVALID_PDU_FIELD));
    assert!(buf.is_empty(), "the bad PDU is consumed");
}

#[test]
fn malformed_scsi_command_ahs_is_rejected() {
    let base = "01 c1 00 00 01 000000 0000000000000000 00000001 00000200 00000001 00000001
                28000000000000010000000000000000";
    for ahs in [
        "0011 01 00", // AHSLength runs past TotalAHSLength
        "0005 02 00", // truncated bidi AHS
        "0000 09 00", // unknown AHS type
        "0001 01 00", // extended CDB AHS with no CDB bytes
    ] {
        let wire = hex(&format!("{base} {ahs}"));
        let err = PduCodec::new()
            .decode(&mut BytesMut::from(&wire[..]))
            .expect_err(ahs);
        assert!(matches!(err, PduError::BadAhs { .. }), "{ahs}: {err:?}");
    }
}

#[test]
fn data_on_dataless_pdu_is_invalid() {
    let wire = hex(
        "42 85 00 00 00 000004 0000000000000000 00000020 ffffffff 00000009 0000000a
                    00000008 00000000 0000000000000000 01020304",
    );
    let err = PduCodec::new()
        .decode(&mut BytesMut::from(&wire[..]))
        .expect_err("no data allowed");
    assert!(matches!(err, PduError::InvalidField { .. }), "{err:?}");
}

#[test]
fn encode_rejects_segment_beyond_24_bits() {
    let pdu = Pdu::NopIn(NopIn {
        lun: lun(0),
        itt: 1,
        ttt: RESERVED_TAG,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        data: Bytes::from(vec![0u8; 1 << 24]),
    });
    assert!(matches!(
        PduCodec::new().encode(&pdu),
        Err(PduError::SegmentTooLong { .. })
    ));
}

#[test]
fn encode_rejects_oversized_cdb() {
    let pdu = Pdu::ScsiCommand(ScsiCommand {
        itt: 1,
        cmd_sn: 1,
        exp_stat_sn: 1,
        ..ScsiCommand::new(lun(0), &[0u8; MAX_CDB_LEN + 1], 0)
    });
    assert!(pdu.is_initiator_opcode());
    assert!(matches!(
        PduCodec::new().encode(&pdu),
        Err(PduError::CdbTooLong { len: 261, max: 260 })
    ));
}

#[test]
fn pdu_accessors() {
    let cmd = Pdu::TextRequest(TextRequest {
        immediate: false,
        is_final: true,
        continues: false,
        lun: lun(0),
        itt: 77,
        ttt: RESERVED_TAG,
        cmd_sn: 1,
        exp_stat_sn: 1,
        data: Bytes::from_static(b"k=v\0"),
    });
    assert_eq!(
        (cmd.opcode(), cmd.itt(), cmd.immediate()),
        (opcode::TEXT_REQUEST, 77, false)
    );
    assert_eq!(&cmd.data()[..], b"k=v\0");
    let rej = Pdu::Reject(Reject::of_header(
        RejectReason::PROTOCOL_ERROR,
        &[0; BHS_LEN],
    ));
    assert_eq!(rej.itt(), RESERVED_TAG);
}

const KNOWN_OPCODES: [u8; 18] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31,
    0x32, 0x3f,
];

/// A syntactically valid random frame: a random BHS with the given opcode, no AHS (except
/// through the dedicated SCSI Command strategy) and a data segment where the kind allows one.
fn arb_framed_pdu() -> impl Strategy<Value = Pdu> {
    (
        prop::sample::select(KNOWN_OPCODES.to_vec()),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), BHS_LEN),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_filter_map("kind carries no data", |(op, imm, mut bhs, data)| {
            bhs[0] = op | if imm { 0x40 } else { 0 };
            bhs[4] = 0;
            let dataless = matches!(op, 0x02 | 0x06 | 0x10 | 0x22 | 0x26 | 0x31);
            let data = if dataless { Vec::new() } else { data };
            let len = (data.len() as u32).to_be_bytes();
            bhs[5..8].copy_from_slice(&len[1..]);
            let mut wire = bhs;
            wire.extend_from_slice(&data);
            wire.resize(wire.len().div_ceil(4) * 4, 0);
            PduCodec::new()
                .decode(&mut BytesMut::from(&wire[..]))
                .ok()
                .flatten()
        })
}

fn arb_scsi_command() -> impl Strategy<Value = Pdu> {
    (
        any::<(bool, bool, bool, bool, u8)>(),
        any::<(u64, u32, u32, u32, u32)>(),
        prop::collection::vec(any::<u8>(), 16..=MAX_CDB_LEN),
        any::<Option<u32>>(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |((imm, f, r, w, attr), (l, itt, edtl, csn, esn), cdb, bidi, data)| {
                Pdu::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    is_final: f,
                    read: r,
                    write: w,
                    attr: TaskAttribute::from_bits(attr),
                    lun: LunField::from_bytes(l.to_be_bytes()),
                    itt,
                    expected_data_transfer_length: edtl,
                    cmd_sn: csn,
                    exp_stat_sn: esn,
                    cdb: Bytes::from(cdb),
                    bidi_read_length: bidi,
                    data: Bytes::from(data),
                })
            },
        )
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(
        pdu in prop_oneof![arb_framed_pdu(), arb_scsi_command()],
        header in any::<bool>(),
        data in any::<bool>(),
    ) {
        let mut codec = PduCodec::new();
        codec.set_max_recv_data_segment_length(1 << 20);
        codec.set_digests(Digests { header, data });
        let mut buf = BytesMut::new();
        codec.encode_into(&pdu, &mut buf).expect("encodes");
        prop_assert_eq!(buf.len() % 4, 0);
        let back = codec.decode(&mut buf).expect("decodes");
        prop_assert_eq!(back, Some(pdu));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), header in any::<bool>(), data in any::<bool>()) {
        let mut codec = PduCodec::new();
        codec.set_digests(Digests { header, data });
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}

//! Drives the key=value parser and the login state machine with arbitrary login text split
//! over arbitrary PDUs: no panic, and every response must itself be well-formed text.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use overlaybd_target::iscsi::login::{
    keys, AuthConfig, ChapAccount, Login, LoginSettings, LoginStep, StaticDirectory, LoginTarget,
};
use overlaybd_target::iscsi::pdu::{Isid, LoginRequest, Stage};

fuzz_target!(|input: &[u8]| {
    let _ = keys::parse(input);
    let mut chap = LoginTarget::open("iqn.2026-11.fuzz:chap");
    chap.auth = AuthConfig {
        chap: Some(ChapAccount { user: "u".into(), secret: b"0123456789ab".to_vec() }),
        mutual_chap: Some(ChapAccount { user: "t".into(), secret: b"ba9876543210".to_vec() }),
    };
    let dir = StaticDirectory::new(LoginSettings::default(), [LoginTarget::open("iqn.2026-11.fuzz:open"), chap]);
    let mut login = Login::new(std::time::Instant::now());
    // Each chunk: one flags byte (T, C, CSG, NSG) followed by text up to the next 0xff byte.
    for chunk in input.split(|&b| b == 0xff) {
        let Some((&flags, text)) = chunk.split_first() else { continue };
        let req = LoginRequest {
            transit: flags & 0x80 != 0,
            continues: flags & 0x40 != 0,
            csg: Stage::from_bits(flags >> 2),
            nsg: Stage::from_bits(flags),
            version_max: 0,
            version_min: 0,
            isid: Isid([0x80, 0, 0, 0, 0, 1]),
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            data: Bytes::copy_from_slice(text),
        };
        match login.handle(&dir, &req) {
            LoginStep::Respond(rsp) => {
                assert!(keys::parse_entries(&rsp.data).is_ok());
            }
            LoginStep::Ready(_) => {
                let rsp = login.accept(1).expect("final response after Ready");
                assert!(keys::parse_entries(&rsp.data).is_ok());
                break;
            }
            LoginStep::Fail(..) => break,
        }
    }
});

//! Feeds arbitrary bytes to the PDU codec: it must never panic, and every PDU it accepts must
//! survive an encode/decode round trip unchanged.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use overlaybd_target::iscsi::pdu::{Digests, PduCodec};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, wire)) = input.split_first() else { return };
    let mut codec = PduCodec::new();
    codec.set_digests(Digests { header: flags & 1 != 0, data: flags & 2 != 0 });
    codec.set_max_recv_data_segment_length(if flags & 4 != 0 { 512 } else { 1 << 20 });
    let mut buf = BytesMut::from(wire);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(pdu)) => {
                let mut again = BytesMut::new();
                codec.encode_into(&pdu, &mut again).expect("a decoded PDU re-encodes");
                let back = codec.decode(&mut again).expect("re-encoded PDU decodes");
                assert_eq!(back.as_ref(), Some(&pdu));
                assert!(again.is_empty());
            }
            Ok(None) => break,
            Err(e) if e.is_recoverable() => continue,
            Err(_) => break,
        }
    }
});

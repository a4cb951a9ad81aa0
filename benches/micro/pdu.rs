//! iSCSI PDU framing: decode and encode of the two PDUs on the read fast path, a SCSI Command
//! (READ(10), no data) and a Data-In carrying a 256 KiB segment, with and without CRC32C
//! header and data digests.

use bytes::{Bytes, BytesMut};
use divan::counter::BytesCount;
use divan::Bencher;
use overlaybd_target::iscsi::pdu::{DataIn, Digests, LunField, Pdu, PduCodec, ScsiCommand};

/// Data-In segment length (a common MaxRecvDataSegmentLength of Linux initiators).
const SEGMENT: usize = 256 * 1024;
const DIGESTS: [bool; 2] = [false, true];

fn codec(digests: bool) -> PduCodec {
    let mut codec = PduCodec::new();
    codec.set_digests(Digests {
        header: digests,
        data: digests,
    });
    codec.set_max_recv_data_segment_length(1 << 20);
    codec
}

fn read10() -> Pdu {
    let cdb = [0x28, 0, 0, 0, 0x10, 0, 0, 0, 0x80, 0];
    Pdu::ScsiCommand(ScsiCommand {
        read: true,
        itt: 0x1234,
        cmd_sn: 77,
        exp_stat_sn: 76,
        ..ScsiCommand::new(LunField::from_number(0).unwrap_or_default(), &cdb, 65_536)
    })
}

fn data_in() -> Pdu {
    let data: Vec<u8> = (0..SEGMENT).map(|i| (i * 7 % 251) as u8).collect();
    Pdu::DataIn(DataIn {
        is_final: true,
        ack: false,
        overflow: false,
        underflow: false,
        status: Some(0),
        lun: LunField::default(),
        itt: 0x1234,
        ttt: 0xffff_ffff,
        stat_sn: 9,
        exp_cmd_sn: 78,
        max_cmd_sn: 140,
        data_sn: 0,
        buffer_offset: 0,
        residual_count: 0,
        data: Bytes::from(data),
    })
}

fn wire(codec: &PduCodec, pdu: &Pdu) -> Bytes {
    let mut out = BytesMut::new();
    codec
        .encode_into(pdu, &mut out)
        .expect("benchmark PDU encodes");
    out.freeze()
}

/// Decodes one buffered PDU. Refilling the receive buffer (a copy, as a socket read makes) is
/// done outside the timed part.
fn bench_decode(bencher: Bencher, pdu: Pdu, digests: bool) {
    let codec = codec(digests);
    let bytes = wire(&codec, &pdu);
    bencher
        .counter(BytesCount::new(bytes.len()))
        .with_inputs(|| BytesMut::from(&bytes[..]))
        .bench_local_refs(|buf| codec.decode(buf).expect("decodes").expect("complete"));
}

/// Encodes into header + shared data + trailer (the vectored-write form the session uses);
/// with digests this includes the CRC32C over the data segment.
fn bench_encode(bencher: Bencher, pdu: Pdu, digests: bool) {
    let codec = codec(digests);
    let len = wire(&codec, &pdu).len();
    bencher
        .counter(BytesCount::new(len))
        .bench_local(|| codec.encode(divan::black_box(&pdu)).expect("encodes"));
}

#[divan::bench(args = DIGESTS)]
fn decode_scsi_command(bencher: Bencher, digests: bool) {
    bench_decode(bencher, read10(), digests);
}

#[divan::bench(args = DIGESTS)]
fn encode_scsi_command(bencher: Bencher, digests: bool) {
    bench_encode(bencher, read10(), digests);
}

#[divan::bench(args = DIGESTS)]
fn decode_data_in_256k(bencher: Bencher, digests: bool) {
    bench_decode(bencher, data_in(), digests);
}

#[divan::bench(args = DIGESTS)]
fn encode_data_in_256k(bencher: Bencher, digests: bool) {
    bench_encode(bencher, data_in(), digests);
}

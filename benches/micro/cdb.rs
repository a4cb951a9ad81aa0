//! SCSI CDB parsing: the commands of the I/O fast path, each given as the 16 zero-padded bytes
//! a SCSI Command PDU carries in its BHS.

use divan::Bencher;
use overlaybd_target::scsi::cdb::parse;

/// Opcode name and CDB (unpadded).
const CDBS: [(&str, &[u8]); 5] = [
    ("read10", &[0x28, 0, 0, 0, 0x10, 0, 0, 0, 0x80, 0]),
    ("write10_fua", &[0x2a, 0x08, 0, 0, 0x10, 0, 0, 0, 0x80, 0]),
    (
        "read16",
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0x80, 0, 0],
    ),
    ("test_unit_ready", &[0, 0, 0, 0, 0, 0]),
    ("inquiry", &[0x12, 0, 0, 0, 0xff, 0]),
];

#[divan::bench(args = CDBS.map(|(name, _)| name))]
fn parse_cdb(bencher: Bencher, name: &str) {
    let cdb = CDBS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[][..], |(_, c)| c);
    let mut padded = [0u8; 16];
    padded[..cdb.len()].copy_from_slice(cdb);
    assert!(parse(&padded).is_ok(), "{name} must parse");
    bencher.bench_local(|| parse(divan::black_box(&padded)));
}

//! Fuzz target: any CDB parses without panicking, and any CDB with any Data-Out executes
//! against a small RAM LUN without panicking, with Data-In never longer than expected.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use overlaybd_target::block::RamDevice;
use overlaybd_target::scsi::{
    cdb, DataDirection, LunConfig, Nexus, ScsiRequest, ScsiTarget, UnitOptions,
};

fn target() -> &'static ScsiTarget {
    static TARGET: OnceLock<ScsiTarget> = OnceLock::new();
    TARGET.get_or_init(|| {
        ScsiTarget::new(vec![LunConfig {
            device: Arc::new(RamDevice::new(1 << 20)),
            serial: "fuzz".into(),
            product: "fuzz".into(),
            // Removable, so load, eject and prevent are reached too.
            options: UnitOptions {
                removable: true,
                physical_block_exponent: 3,
                ..UnitOptions::default()
            },
        }])
    })
}

fuzz_target!(|input: &[u8]| {
    let split = input.len().min(16);
    let (cdb_bytes, rest) = input.split_at(split);
    let _ = cdb::parse(cdb_bytes);

    let expected_len = rest
        .get(..2)
        .map_or(0, |b| u32::from(u16::from_be_bytes([b[0], b[1]])));
    let data_out = Bytes::copy_from_slice(rest.get(2..).unwrap_or(&[]));
    let req = ScsiRequest {
        lun: 0,
        cdb: Bytes::copy_from_slice(cdb_bytes),
        direction: DataDirection::Bidirectional,
        expected_len,
        data_out,
    };
    let nexus = Nexus {
        initiator_name: "iqn.fuzz".into(),
        isid: [0; 6],
        tpgt: 1,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let resp = rt.block_on(target().execute(&nexus, req));
    assert!(resp.data_in.len() <= expected_len as usize);
});

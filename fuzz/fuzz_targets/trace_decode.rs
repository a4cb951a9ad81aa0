//! Fuzz target: the prefetch trace file (`trace-prefetch.md` §3). Any bytes decode to records
//! or a clear error, never a panic; what decodes re-encodes to bytes that decode to the same
//! records, and equals the input except for padding; classification agrees with decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlaybd_target::prefetch::trace::{self, FileKind};

fuzz_target!(|data: &[u8]| {
    match trace::decode(data) {
        Ok(records) => {
            assert_eq!(trace::classify(data), FileKind::Binary);
            let again = trace::encode(&records);
            assert_eq!(again.len(), data.len());
            assert_eq!(trace::decode(&again).as_ref(), Ok(&records));
            // Only padding may differ: the op, layer, count and offset bytes are the input's.
            for (a, b) in again[trace::HEADER_SIZE..]
                .chunks(trace::RECORD_SIZE)
                .zip(data[trace::HEADER_SIZE..].chunks(trace::RECORD_SIZE))
            {
                assert_eq!((a[0], &a[4..]), (b[0], &b[4..]));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

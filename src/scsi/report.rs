//! REPORT LUNS (SPC-4 6.33) and REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::{has_service_action, lookup, OpInfo, SUPPORTED};
use super::sense::Sense;

/// REPORT LUNS for a target whose logical units have `numbers` (ascending, each below
/// [`super::LUN_LIMIT`]).
pub fn report_luns(numbers: &[u64], select: u8, alloc_len: u32) -> Result<Bytes, Sense> {
    if alloc_len < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    let listed = match select {
        // All logical units / all including well-known ones (we have no well-known LUNs).
        0x00 | 0x02 => numbers,
        // Well-known logical units only.
        0x01 => &[],
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut out = BytesMut::with_capacity(8 + 8 * listed.len());
    out.put_u32((8 * listed.len()) as u32);
    out.put_u32(0);
    for &lun in listed {
        // Peripheral device addressing below 256, flat space addressing above.
        let field: u16 = if lun < 256 {
            lun as u16
        } else {
            0x4000 | (lun as u16 & 0x3fff)
        };
        out.put_u16(field);
        out.put_slice(&[0; 6]);
    }
    Ok(out.freeze())
}

/// Nominal and recommended command timeouts in seconds (0 = not specified).
const RECOMMENDED_TIMEOUT_SECS: u32 = 30;

fn put_timeouts(out: &mut BytesMut) {
    out.put_u16(0x0a);
    out.put_u8(0);
    out.put_u8(0);
    out.put_u32(0);
    out.put_u32(RECOMMENDED_TIMEOUT_SECS);
}

/// REPORT SUPPORTED OPERATION CODES. `offered` leaves out what the LUN does not offer (UNMAP
/// on a LUN that cannot deallocate, SANITIZE on an image), so the list is exactly what the
/// LUN honours.
pub fn report_supported_opcodes(
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    offered: &dyn Fn(&OpInfo) -> bool,
) -> Result<Bytes, Sense> {
    let mut out = BytesMut::new();
    match options {
        0 => {
            let mut body = BytesMut::new();
            for info in SUPPORTED.iter().filter(|info| offered(info)) {
                body.put_u8(info.opcode);
                body.put_u8(0);
                body.put_u16(info.service_action.unwrap_or(0));
                body.put_u8(0);
                body.put_u8((u8::from(rctd) << 1) | u8::from(info.service_action.is_some()));
                body.put_u16(info.usage.len() as u16);
                if rctd {
                    put_timeouts(&mut body);
                }
            }
            out.put_u32(body.len() as u32);
            out.put_slice(&body);
        }
        1..=3 => {
            let with_sa = has_service_action(opcode);
            if (options == 1 && with_sa) || (options == 2 && !with_sa) {
                return Err(Sense::invalid_cdb_field(2, Some(2)));
            }
            let sa = if with_sa { service_action } else { 0 };
            let found = lookup(opcode, sa)
                .filter(|info| info.service_action.is_none() || with_sa)
                .filter(|info| offered(info));
            out.put_u8(0);
            match found {
                Some(info) => {
                    out.put_u8((u8::from(rctd) << 7) | 0x03);
                    out.put_u16(info.usage.len() as u16);
                    out.put_slice(info.usage);
                    if rctd {
                        put_timeouts(&mut out);
                    }
                }
                None => {
                    // SUPPORT = 001b: not supported; no usage data.
                    out.put_u8(0x01);
                    out.put_u16(0);
                }
            }
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::asc;

    #[test]
    fn report_luns_lists_and_validates() {
        let data = report_luns(&[0, 1], 0, 16).unwrap();
        assert_eq!(
            &data[..],
            &[0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&report_luns(&[0, 1], 1, 16).unwrap()[..], &[0; 8]);
        let err = report_luns(&[0], 0, 15).unwrap_err();
        assert_eq!(err.asc, asc::INVALID_FIELD_IN_CDB);
        assert_eq!(err.field.unwrap().byte, 6);
        assert_eq!(report_luns(&[0], 3, 16).unwrap_err().field.unwrap().byte, 2);
        let big = report_luns(&[7, 299, 16383], 0, 4096).unwrap();
        assert_eq!(&big[..4], &24u32.to_be_bytes());
        assert_eq!(&big[8..10], &[0x00, 0x07]);
        assert_eq!(&big[16..18], &[0x41, 0x2b]);
        assert_eq!(&big[24..26], &[0x7f, 0xff]);
    }

    fn all(_: &OpInfo) -> bool {
        true
    }

    fn no_unmap(info: &OpInfo) -> bool {
        info.opcode != crate::scsi::cdb::opcode::UNMAP
    }

    #[test]
    fn rsoc_all_lists_every_command() {
        let data = report_supported_opcodes(false, 0, 0, 0, &all).unwrap();
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        assert_eq!(len, 8 * SUPPORTED.len());
        // READ(10) descriptor: opcode, no service action, CDB length 10.
        let read10 = data[4..].chunks(8).find(|d| d[0] == 0x28).unwrap();
        assert_eq!(read10, &[0x28, 0, 0, 0, 0, 0, 0, 10]);
        let without_unmap = report_supported_opcodes(true, 0, 0, 0, &no_unmap).unwrap();
        assert_eq!(without_unmap.len(), 4 + 20 * (SUPPORTED.len() - 1));
        assert!(without_unmap[4..]
            .chunks(20)
            .all(|d| d[0] != 0x42 && d[5] & 0x02 != 0));
    }

    #[test]
    fn rsoc_one_command() {
        let data = report_supported_opcodes(false, 1, 0x2a, 0, &all).unwrap();
        assert_eq!(
            &data[..],
            &[0, 0x03, 0, 10, 0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]
        );
        let data = report_supported_opcodes(true, 2, 0x9e, 0x10, &all).unwrap();
        assert_eq!(&data[..4], &[0, 0x83, 0, 16]);
        assert_eq!(&data[4..6], &[0x9e, 0x1f]);
        assert_eq!(data.len(), 4 + 16 + 12);
        let data = report_supported_opcodes(false, 1, 0x04, 0, &all).unwrap();
        assert_eq!(&data[..], &[0, 0x01, 0, 0]);
        assert!(report_supported_opcodes(false, 1, 0x9e, 0, &all).is_err());
        assert!(report_supported_opcodes(false, 2, 0x28, 0, &all).is_err());
        assert!(report_supported_opcodes(false, 5, 0x28, 0, &all).is_err());
    }
}

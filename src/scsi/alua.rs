//! Asymmetric logical unit access (SPC-4 5.15), implicit: each portal group of the target is
//! a SCSI target port (its relative target port identifier is the portal group tag) and a
//! target port group of its own (with the same number), so a multipath host sees one path per
//! portal and asks REPORT TARGET PORT GROUPS which to use. Every group is active/optimized:
//! any path serves every command equally well, and a host may spread I/O over all of them.

use bytes::{BufMut, Bytes, BytesMut};

/// ASYMMETRIC ACCESS STATE active/optimized.
const ACTIVE_OPTIMIZED: u8 = 0x0;
/// The supported-states byte of a group descriptor: AO_SUP alone, the one state we use.
const SUPPORTED_STATES: u8 = 0x01;
/// IMPLICIT TRANSITION TIME in the extended header (seconds): there are no transitions.
const IMPLICIT_TRANSITION_SECS: u8 = 0;

/// REPORT TARGET PORT GROUPS (SPC-4 6.36) for a target whose ports (and groups) are `ports`;
/// `extended` selects the extended header (PARAMETER DATA FORMAT 001b).
pub fn report_target_port_groups(ports: &[u16], extended: bool) -> Bytes {
    let mut body = BytesMut::new();
    for &port in ports {
        body.put_u8(ACTIVE_OPTIMIZED); // PREF 0
        body.put_u8(SUPPORTED_STATES);
        body.put_u16(port); // the target port group identifier
        body.put_u8(0);
        body.put_u8(0); // STATUS CODE: no transition
        body.put_u8(0);
        body.put_u8(1); // TARGET PORT COUNT
        body.put_u16(0);
        body.put_u16(port); // RELATIVE TARGET PORT IDENTIFIER
    }
    let mut out = BytesMut::with_capacity(8 + body.len());
    if extended {
        out.put_u32(body.len() as u32 + 4);
        out.put_u8(0x10); // FORMAT TYPE 001b
        out.put_u8(IMPLICIT_TRANSITION_SECS);
        out.put_u16(0);
    } else {
        out.put_u32(body.len() as u32);
    }
    out.put_slice(&body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_active_optimized_group_per_port() {
        let data = report_target_port_groups(&[1, 2], false);
        assert_eq!(
            &data[..],
            &[
                0, 0, 0, 24, // RETURN DATA LENGTH
                0x00, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1: port 1
                0x00, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, // group 2: port 2
            ]
        );
        let extended = report_target_port_groups(&[7], true);
        assert_eq!(
            &extended[..8],
            &[0, 0, 0, 16, 0x10, IMPLICIT_TRANSITION_SECS, 0, 0]
        );
        assert_eq!(&extended[8..12], &[0x00, 0x01, 0, 7]);
        assert_eq!(extended.len(), 8 + 12);
    }
}

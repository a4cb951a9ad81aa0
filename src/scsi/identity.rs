//! What names a logical unit on the wire: the T10 vendor, and how the INQUIRY text fields and
//! the NAA identifier are made. (A target port is named by its portal group tag, which each
//! nexus carries; see `alua`.)
//!
//! A leaf: INQUIRY formats these facts and a [`super::lun::LogicalUnit`] holds its own values
//! of them, without importing each other.

use sha2::{Digest, Sha256};

/// T10 vendor identification reported in INQUIRY and VPD 0x83.
pub const VENDOR: &[u8; 8] = b"OVERLAYB";

/// Space-pads `text` (printable ASCII only) to `N` bytes, as INQUIRY's text fields are.
pub fn ascii_field<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (slot, byte) in out
        .iter_mut()
        .zip(text.bytes().filter(|b| (0x20..0x7f).contains(b)))
    {
        *slot = byte;
    }
    out
}

/// The NAA identifier (VPD 0x83) of the unit with serial number `serial`: NAA 3, locally
/// assigned, the remaining 60 bits from the serial's SHA-256, so it is stable across restarts
/// and differs between units.
pub fn naa_from_serial(serial: &str) -> [u8; 8] {
    let digest = Sha256::digest(serial.as_bytes());
    let mut naa = [0u8; 8];
    naa.copy_from_slice(&digest[..8]);
    naa[0] = 0x30 | (naa[0] & 0x0f);
    naa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_are_padded_cut_and_printable() {
        assert_eq!(&ascii_field::<8>("disk"), b"disk    ");
        assert_eq!(&ascii_field::<4>("overlaybd"), b"over");
        assert_eq!(&ascii_field::<6>("a\u{7}b\u{e9}c"), b"abc   ");
    }

    #[test]
    fn naa_is_locally_assigned_and_follows_the_serial() {
        let a = naa_from_serial("serial-a");
        assert_eq!(a[0] >> 4, 3);
        assert_eq!(a, naa_from_serial("serial-a"));
        assert_ne!(a, naa_from_serial("serial-b"));
    }
}

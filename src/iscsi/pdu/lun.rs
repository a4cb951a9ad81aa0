//! The 8-byte LUN field (SAM-5 §4.7) and its mapping to flat LUN numbers.
//!
//! We use two single-level addressing methods: peripheral device addressing (method 00b, bus 0)
//! for LUNs below 256, which is what Linux and most initiators send, and flat space addressing
//! (method 01b) for LUNs up to 16383. Anything else (hierarchical levels, extended addressing)
//! is kept as raw bytes and reported as not decodable.

/// A LUN field exactly as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LunField([u8; 8]);

impl LunField {
    /// Largest LUN number [`LunField::from_number`] can encode (flat space addressing, 14 bits).
    pub const MAX_NUMBER: u64 = 0x3fff;

    /// Wraps the raw 8 wire bytes.
    pub fn from_bytes(raw: [u8; 8]) -> Self {
        LunField(raw)
    }

    /// The raw 8 wire bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The raw field as a big-endian integer.
    pub fn raw(self) -> u64 {
        u64::from_be_bytes(self.0)
    }

    /// Encodes a LUN number: peripheral addressing below 256, flat space addressing up to
    /// [`LunField::MAX_NUMBER`]; `None` above that.
    pub fn from_number(n: u64) -> Option<Self> {
        let mut raw = [0u8; 8];
        if n < 256 {
            raw[1] = n as u8;
        } else if n <= Self::MAX_NUMBER {
            raw[0] = 0x40 | (n >> 8) as u8;
            raw[1] = (n & 0xff) as u8;
        } else {
            return None;
        }
        Some(LunField(raw))
    }

    /// Decodes the LUN number from a single-level peripheral (bus 0) or flat space address;
    /// `None` for any other form, which callers answer as "logical unit not supported".
    pub fn number(self) -> Option<u64> {
        if self.0[2..].iter().any(|&b| b != 0) {
            return None;
        }
        match self.0[0] >> 6 {
            // Peripheral device addressing; a non-zero bus number addresses another level.
            0b00 if self.0[0] == 0 => Some(u64::from(self.0[1])),
            0b01 => Some((u64::from(self.0[0] & 0x3f) << 8) | u64::from(self.0[1])),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peripheral_and_flat_encoding() {
        assert_eq!(
            LunField::from_number(0).map(LunField::to_bytes),
            Some([0; 8])
        );
        assert_eq!(
            LunField::from_number(5).map(LunField::to_bytes),
            Some([0, 5, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(
            LunField::from_number(0x1234).map(LunField::to_bytes),
            Some([0x52, 0x34, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(LunField::from_number(0x4000), None);
    }

    #[test]
    fn decoding() {
        assert_eq!(
            LunField::from_bytes([0, 1, 0, 0, 0, 0, 0, 0]).number(),
            Some(1)
        );
        assert_eq!(
            LunField::from_bytes([0x40, 0x07, 0, 0, 0, 0, 0, 0]).number(),
            Some(7)
        );
        assert_eq!(
            LunField::from_bytes([0x7f, 0xff, 0, 0, 0, 0, 0, 0]).number(),
            Some(0x3fff)
        );
        // Bus number 1, second level present, extended addressing: not ours.
        assert_eq!(
            LunField::from_bytes([0x01, 0x01, 0, 0, 0, 0, 0, 0]).number(),
            None
        );
        assert_eq!(
            LunField::from_bytes([0, 1, 0, 2, 0, 0, 0, 0]).number(),
            None
        );
        assert_eq!(
            LunField::from_bytes([0xc0, 0, 0, 0, 0, 0, 0, 0]).number(),
            None
        );
        assert_eq!(
            LunField::from_bytes([0, 1, 0, 0, 0, 0, 0, 0]).raw(),
            0x0001_0000_0000_0000
        );
    }

    #[test]
    fn round_trip_all_numbers() {
        for n in 0..=LunField::MAX_NUMBER {
            assert_eq!(LunField::from_number(n).and_then(LunField::number), Some(n));
        }
    }
}

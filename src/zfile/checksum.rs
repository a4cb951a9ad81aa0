//! CRC32C in the "raw register" form the ZFile format uses (zfile.md §4): the caller picks the
//! initial register and no final inversion is applied. The `crc32c` crate computes the
//! conventional form (register pre- and post-inverted), so we undo both inversions.

/// Seed of the per-block checksum (zfile.md §4).
pub(crate) const BLOCK_CRC_SEED: u32 = 100_007;

/// Raw-register CRC32C of `data` starting from `seed`.
pub(crate) fn crc32c_seeded(data: &[u8], seed: u32) -> u32 {
    // crc32c_append(c, d) = !raw(d, !c)  =>  raw(d, s) = !crc32c_append(!s, d)
    !crc32c::crc32c_append(!seed, data)
}

/// Raw-register CRC32C starting at 0 (header digests and the jump-table CRC).
pub(crate) fn crc32c_raw(data: &[u8]) -> u32 {
    crc32c_seeded(data, 0)
}

/// Incremental raw-register CRC32C, for checksumming a table read in pieces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawCrc(u32);

impl RawCrc {
    /// A register starting at 0.
    pub(crate) fn new() -> Self {
        RawCrc(0)
    }

    /// Feeds more bytes.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0 = crc32c_seeded(data, self.0);
    }

    /// The register value.
    pub(crate) fn value(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_values_from_spec() {
        assert_eq!(crc32c_raw(b"123456789"), 0x58E3_FA20);
        assert_eq!(
            crc32c_seeded(b"123456789", 0xFFFF_FFFF) ^ 0xFFFF_FFFF,
            0xE306_9283
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut crc = RawCrc::new();
        for piece in data.chunks(77) {
            crc.update(piece);
        }
        assert_eq!(crc.value(), crc32c_raw(&data));
    }
}

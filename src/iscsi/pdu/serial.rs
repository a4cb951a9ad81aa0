//! Serial number arithmetic (RFC 1982, SERIAL_BITS = 32) for CmdSN, StatSN, DataSN and R2TSN,
//! which wrap around: RFC 7143 §4.2.2.1 requires every comparison of them to use it.

/// `a < b` in serial number arithmetic. Undefined pairs (exactly 2^31 apart) compare as neither
/// less nor greater, as RFC 1982 leaves them undefined.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a > b` in serial number arithmetic.
pub fn sn_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// `a >= b` in serial number arithmetic.
pub fn sn_ge(a: u32, b: u32) -> bool {
    a == b || sn_gt(a, b)
}

/// Whether `sn` lies in the inclusive window `[low, high]` (e.g. a CmdSN between ExpCmdSN and
/// MaxCmdSN), taking wrap-around into account.
pub fn sn_in_window(sn: u32, low: u32, high: u32) -> bool {
    sn_ge(sn, low) && sn_le(sn, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_order() {
        assert!(sn_lt(1, 2));
        assert!(!sn_lt(2, 1));
        assert!(sn_gt(2, 1));
        assert!(sn_le(5, 5) && sn_ge(5, 5));
        assert!(!sn_lt(5, 5) && !sn_gt(5, 5));
    }

    #[test]
    fn wraps_around() {
        assert!(sn_lt(u32::MAX, 0));
        assert!(sn_gt(0, u32::MAX));
        assert!(sn_lt(0xffff_fff0, 0x10));
        assert!(sn_in_window(2, 0xffff_fffe, 5));
        assert!(!sn_in_window(6, 0xffff_fffe, 5));
    }

    #[test]
    fn half_range_is_undefined() {
        assert!(!sn_lt(0, 0x8000_0000));
        assert!(!sn_gt(0, 0x8000_0000));
        assert!(sn_lt(0, 0x7fff_ffff));
    }
}

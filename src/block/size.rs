//! Human-readable sizes ("1G", "512M", "4096") for configuration and the command line.

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The string is empty or its number part is not a decimal integer.
    #[error("invalid size {0:?}: expected a number with an optional K/M/G/T suffix")]
    Invalid(String),
    /// The value does not fit in 64 bits.
    #[error("size {0:?} overflows 64 bits")]
    Overflow(String),
}

/// Parses a size in bytes: a decimal number with an optional binary suffix `K`, `M`, `G`, `T`
/// (powers of 1024; case-insensitive, an optional trailing `B`/`iB` is accepted).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    let invalid = || SizeError::Invalid(text.to_string());
    let lower = trimmed.to_ascii_lowercase();
    // Strip "ib" / "b" so "1GiB", "1GB" and "1G" mean the same; a bare "b" means bytes.
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_string()))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert_eq!(parse_size(" 8m "), Ok(8 << 20));
    }

    #[test]
    fn rejects_garbage_and_overflow() {
        assert!(matches!(parse_size(""), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1.5G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1X"), Err(SizeError::Invalid(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::Overflow(_))
        ));
    }
}

//! HTTP Range handling, sans-IO: the `Range` header we send, the `Content-Range` we get back,
//! and the check that an answer really carries the bytes we asked for (a 206 for a different
//! range, or a 200 from a server that ignores Range, must never be misread as our range).

/// What went wrong with a ranged answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `Content-Range` is missing or malformed.
    #[error("bad Content-Range {0:?}")]
    BadContentRange(String),
    /// The server answered a different range than requested.
    #[error("asked for bytes {asked_first}-{asked_last}, server sent {got_first}-{got_last}")]
    WrongRange {
        /// First byte requested.
        asked_first: u64,
        /// Last byte requested.
        asked_last: u64,
        /// First byte answered.
        got_first: u64,
        /// Last byte answered.
        got_last: u64,
    },
    /// The answer's blob size differs from the size we know.
    #[error("blob size changed: known {known}, server says {got}")]
    SizeMismatch {
        /// Size known from an earlier answer.
        known: u64,
        /// Size in this answer.
        got: u64,
    },
    /// A 200 answer whose body would have to be skipped too far to reach the range.
    #[error("server ignores Range and the requested offset {0} is too far into the blob")]
    RangeIgnored(u64),
    /// A 200 answer whose body is too short to hold the range.
    #[error("server ignores Range and its body ({body} bytes) ends before byte {needed}")]
    ShortFullBody {
        /// Content-Length of the body.
        body: u64,
        /// One past the last byte needed.
        needed: u64,
    },
    /// The requested range is empty or overflows.
    #[error("invalid range: offset {offset}, length {len}")]
    InvalidRequest {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
    },
}

/// A parsed `Content-Range: bytes first-last/total` (total `None` for `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte (inclusive).
    pub first: u64,
    /// Last byte (inclusive).
    pub last: u64,
    /// Complete length, when the server knows it.
    pub total: Option<u64>,
}

/// The `Range` header value for `len` bytes at `offset` (`len` > 0).
pub fn range_header(offset: u64, len: u64) -> Result<String, RangeError> {
    let last = last_byte(offset, len)?;
    Ok(format!("bytes={offset}-{last}"))
}

fn last_byte(offset: u64, len: u64) -> Result<u64, RangeError> {
    len.checked_sub(1)
        .and_then(|l| offset.checked_add(l))
        .ok_or(RangeError::InvalidRequest { offset, len })
}

/// Parses a `Content-Range` value of a 206 answer.
pub fn parse_content_range(value: &str) -> Result<ContentRange, RangeError> {
    let bad = || RangeError::BadContentRange(value.to_string());
    let rest = value
        .trim()
        .strip_prefix("bytes")
        .ok_or_else(bad)?
        .trim_start();
    let (span, total) = rest.split_once('/').ok_or_else(bad)?;
    let (first, last) = span.split_once('-').ok_or_else(bad)?;
    let num = |s: &str| -> Result<u64, RangeError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (first, last) = (num(first)?, num(last)?);
    let total = if total.trim() == "*" {
        None
    } else {
        Some(num(total)?)
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return Err(bad());
    }
    Ok(ContentRange { first, last, total })
}

/// How to take the requested bytes out of an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlan {
    /// Bytes of the body to discard before the requested range starts.
    pub skip: u64,
    /// The blob size the answer revealed, if any.
    pub total: Option<u64>,
}

/// How far into a 200 body we are willing to read to reach a range (a server that ignores
/// Range makes every read download the blob's prefix; beyond this we refuse instead).
pub const MAX_SKIP: u64 = 64 << 20;

/// Checks a 200/206 answer to a request for `len` bytes at `offset`.
/// `status` must be 200 or 206; `known_total` is the blob size if already known.
pub fn plan_body(
    status: u16,
    content_range: Option<&str>,
    content_length: Option<u64>,
    offset: u64,
    len: u64,
    known_total: Option<u64>,
) -> Result<BodyPlan, RangeError> {
    let last = last_byte(offset, len)?;
    let check_total = |got: u64| match known_total {
        Some(known) if known != got => Err(RangeError::SizeMismatch { known, got }),
        _ => Ok(()),
    };
    if status == 206 {
        let cr = parse_content_range(content_range.unwrap_or(""))?;
        if cr.first != offset || cr.last != last {
            return Err(RangeError::WrongRange {
                asked_first: offset,
                asked_last: last,
                got_first: cr.first,
                got_last: cr.last,
            });
        }
        if let Some(t) = cr.total {
            check_total(t)?;
        }
        return Ok(BodyPlan {
            skip: 0,
            total: cr.total.or(known_total),
        });
    }
    // 200: the whole blob from byte 0.
    if offset > MAX_SKIP {
        return Err(RangeError::RangeIgnored(offset));
    }
    let needed = last + 1;
    if let Some(body) = content_length {
        check_total(body)?;
        if body < needed {
            return Err(RangeError::ShortFullBody { body, needed });
        }
    }
    Ok(BodyPlan {
        skip: offset,
        total: content_length.or(known_total),
    })
}

/// The blob size revealed by an answer to a `bytes=0-0` probe: the `Content-Range` total of
/// a 206, or the `Content-Length` of a 200.
pub fn probe_total(
    status: u16,
    content_range: Option<&str>,
    content_length: Option<u64>,
) -> Result<u64, RangeError> {
    if status == 206 {
        let cr = parse_content_range(content_range.unwrap_or(""))?;
        return cr
            .total
            .ok_or_else(|| RangeError::BadContentRange(content_range.unwrap_or("").into()));
    }
    content_length
        .ok_or_else(|| RangeError::BadContentRange("200 answer without Content-Length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_parse() {
        assert_eq!(range_header(0, 1).unwrap(), "bytes=0-0");
        assert_eq!(range_header(10, 5).unwrap(), "bytes=10-14");
        assert!(range_header(5, 0).is_err());
        assert!(range_header(u64::MAX, 2).is_err());
        assert_eq!(
            parse_content_range("bytes 0-0/4739584").unwrap(),
            ContentRange {
                first: 0,
                last: 0,
                total: Some(4739584)
            }
        );
        assert_eq!(parse_content_range("bytes 5-9/*").unwrap().total, None);
        for bad in [
            "",
            "bytes",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes -1-2/3",
            "bytes 0-1",
            "bytes 0-99999999999999999999999/1",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partial_answer_must_match_request() {
        assert_eq!(
            plan_body(206, Some("bytes 10-19/100"), Some(10), 10, 10, None).unwrap(),
            BodyPlan {
                skip: 0,
                total: Some(100)
            }
        );
        assert!(matches!(
            plan_body(206, Some("bytes 0-9/100"), None, 10, 10, None),
            Err(RangeError::WrongRange { .. })
        ));
        assert!(matches!(
            plan_body(206, Some("bytes 10-19/100"), None, 10, 10, Some(99)),
            Err(RangeError::SizeMismatch { .. })
        ));
        assert!(plan_body(206, None, None, 0, 1, None).is_err());
    }

    #[test]
    fn full_answer_is_sliced_or_refused() {
        assert_eq!(
            plan_body(200, None, Some(100), 10, 10, Some(100)).unwrap(),
            BodyPlan {
                skip: 10,
                total: Some(100)
            }
        );
        assert!(matches!(
            plan_body(200, None, Some(15), 10, 10, None),
            Err(RangeError::ShortFullBody { .. })
        ));
        assert!(matches!(
            plan_body(200, None, Some(50), 0, 1, Some(100)),
            Err(RangeError::SizeMismatch { .. })
        ));
        assert!(matches!(
            plan_body(200, None, None, MAX_SKIP + 1, 1, None),
            Err(RangeError::RangeIgnored(_))
        ));
    }

    #[test]
    fn probe_sizes() {
        assert_eq!(probe_total(206, Some("bytes 0-0/77"), Some(1)).unwrap(), 77);
        assert_eq!(probe_total(200, None, Some(77)).unwrap(), 77);
        assert!(probe_total(206, Some("bytes 0-0/*"), None).is_err());
        assert!(probe_total(200, None, None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn content_range_roundtrips_and_never_panics(first in 0u64..1 << 40, n in 1u64..1 << 20, extra in 0u64..1 << 20, junk in ".{0,40}") {
            let last = first + n - 1;
            let total = last + 1 + extra;
            let parsed = parse_content_range(&format!("bytes {first}-{last}/{total}")).unwrap();
            proptest::prop_assert_eq!(parsed, ContentRange { first, last, total: Some(total) });
            let plan = plan_body(206, Some(&format!("bytes {first}-{last}/{total}")), Some(n), first, n, Some(total)).unwrap();
            proptest::prop_assert_eq!(plan.skip, 0);
            let _ = parse_content_range(&junk);
            let _ = plan_body(206, Some(&junk), None, first, n, None);
        }
    }
}

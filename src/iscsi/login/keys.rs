//! Text key=value pairs (RFC 7143 §6.1): parsing with limits, encoding, and reassembly and
//! splitting of text that spans several PDUs (the C bit).

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};

/// Longest key name (RFC 7143 §6.1: at most 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept. Standard text values are at most 255 bytes, but binary values
/// (CHAP challenges and responses) may be longer; 8192 covers a 1024-byte challenge in hex.
pub const MAX_VALUE_LEN: usize = 8192;
/// Most text bytes one request may accumulate across continued PDUs.
pub const MAX_TEXT_LEN: usize = 65536;
/// Most keys one request may carry. A real login offers about 20; the cap keeps the work (and
/// the answer, one entry per key) small whatever a peer sends.
pub const MAX_KEYS: usize = 1024;

/// Why a block of text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An entry has no `=`.
    #[error("text entry without '='")]
    MissingEquals,
    /// A key is empty or has a character outside RFC 7143's key alphabet.
    #[error("malformed key name")]
    BadKeyName,
    /// A key is longer than [`MAX_KEY_LEN`].
    #[error("key name longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    /// A value is longer than [`MAX_VALUE_LEN`].
    #[error("value of {key} longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong {
        /// The key whose value is too long.
        key: String,
    },
    /// Key or value is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// A key appears twice in one request.
    #[error("key {0} appears more than once")]
    DuplicateKey(String),
    /// The text of one request exceeds [`MAX_TEXT_LEN`].
    #[error("text longer than {MAX_TEXT_LEN} bytes")]
    TextTooLong,
    /// One request carries more than [`MAX_KEYS`] keys.
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
}

/// Key names are letters, digits and `.-+@_` (RFC 7143 §6.1).
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+@_".contains(&b))
}

/// Parses NUL-separated `key=value` pairs in order, like [`parse_entries`], where a key may
/// appear only once (the rule for requests and negotiation) and at most [`MAX_KEYS`] keys are
/// accepted. Linear in the text: duplicates are found with a hash set, and parsing stops at the
/// first key past the cap.
pub fn parse(text: &[u8]) -> Result<Vec<(String, String)>, KeyError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in entries(text)? {
        if out.len() == MAX_KEYS {
            return Err(KeyError::TooManyKeys);
        }
        out.push(entry?);
    }
    let mut seen = HashSet::with_capacity(out.len());
    if let Some((key, _)) = out.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(KeyError::DuplicateKey(key.clone()));
    }
    Ok(out)
}

/// Parses NUL-separated `key=value` entries in order, allowing repeated keys (as in a
/// SendTargets response). Empty entries (padding, doubled NULs) are skipped and a final entry
/// without its NUL is accepted.
pub fn parse_entries(text: &[u8]) -> Result<Vec<(String, String)>, KeyError> {
    entries(text)?.collect()
}

/// The entries of `text`, each checked as it is reached.
fn entries(
    text: &[u8],
) -> Result<impl Iterator<Item = Result<(String, String), KeyError>> + '_, KeyError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(KeyError::TextTooLong);
    }
    Ok(text
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(parse_entry))
}

/// One `key=value` entry.
fn parse_entry(entry: &[u8]) -> Result<(String, String), KeyError> {
    let eq = entry
        .iter()
        .position(|&b| b == b'=')
        .ok_or(KeyError::MissingEquals)?;
    let (key, value) = (&entry[..eq], &entry[eq + 1..]);
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::KeyTooLong);
    }
    let key = std::str::from_utf8(key).map_err(|_| KeyError::NotUtf8)?;
    if !valid_key(key) {
        return Err(KeyError::BadKeyName);
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(KeyError::ValueTooLong {
            key: key.to_owned(),
        });
    }
    let value = std::str::from_utf8(value).map_err(|_| KeyError::NotUtf8)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Builds text as NUL-terminated `key=value` entries.
#[derive(Debug, Default, Clone)]
pub struct TextWriter {
    buf: BytesMut,
}

impl TextWriter {
    /// An empty text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value\0`.
    pub fn push(&mut self, key: &str, value: &str) {
        self.buf.reserve(key.len() + value.len() + 2);
        self.buf.put_slice(key.as_bytes());
        self.buf.put_u8(b'=');
        self.buf.put_slice(value.as_bytes());
        self.buf.put_u8(0);
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether `key` was already written.
    pub fn contains(&self, key: &str) -> bool {
        self.buf[..].split(|&b| b == 0).any(|e| {
            e.strip_prefix(key.as_bytes())
                .is_some_and(|rest| rest.first() == Some(&b'='))
        })
    }

    /// The finished text.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Collects the text of a request sent over several PDUs (C bit set on all but the last).
#[derive(Debug, Default)]
pub struct TextAssembler {
    buf: BytesMut,
}

impl TextAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one PDU's data. Returns the whole text once a PDU arrives without the C bit.
    pub fn push(&mut self, data: &[u8], continues: bool) -> Result<Option<Bytes>, KeyError> {
        if self.buf.len().saturating_add(data.len()) > MAX_TEXT_LEN {
            self.buf.clear();
            return Err(KeyError::TextTooLong);
        }
        self.buf.extend_from_slice(data);
        Ok((!continues).then(|| self.buf.split().freeze()))
    }

    /// Whether part of a continued text is buffered.
    pub fn is_pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Hands out a response text in pieces of at most the peer's MaxRecvDataSegmentLength.
#[derive(Debug, Default)]
pub struct TextSplitter {
    rest: Bytes,
}

impl TextSplitter {
    /// Queues `text` for sending.
    pub fn new(text: Bytes) -> Self {
        TextSplitter { rest: text }
    }

    /// The next piece and whether more follow (the C bit). `max` of 0 is treated as 1.
    pub fn next_chunk(&mut self, max: usize) -> (Bytes, bool) {
        let n = self.rest.len().min(max.max(1));
        let chunk = self.rest.split_to(n);
        (chunk, !self.rest.is_empty())
    }

    /// Whether pieces remain after the last one handed out.
    pub fn has_more(&self) -> bool {
        !self.rest.is_empty()
    }
}

/// Splits a list value (`a,b,c`) into its items.
pub fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',')
}

/// Parses an iSCSI numerical value: decimal, or hexadecimal with a `0x`/`0X` prefix.
pub fn parse_number(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse().ok()
    } else {
        None
    }
}

/// Parses an iSCSI boolean (`Yes` / `No`, case-sensitive).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Formats a boolean as `Yes` / `No`.
pub fn format_bool(v: bool) -> &'static str {
    if v {
        "Yes"
    } else {
        "No"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn written_text_parses_back(pairs in prop::collection::btree_map("[A-Za-z0-9.+@_-]{1,63}", "[^\\x00]{0,300}", 0..20)) {
            let mut w = TextWriter::new();
            for (k, v) in &pairs {
                w.push(k, v);
            }
            let parsed = parse(&w.finish()).expect("valid text");
            let expected: Vec<(String, String)> = pairs.into_iter().collect();
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn parses_pairs_in_order() {
        let kv = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0").expect("valid");
        assert_eq!(
            kv,
            vec![
                ("InitiatorName".into(), "iqn.x".into()),
                ("SessionType".into(), "Normal".into())
            ]
        );
        // Values may contain '=' and be empty; padding NULs are skipped.
        let kv = parse(b"A=b=c\0B=\0\0\0").expect("valid");
        assert_eq!(
            kv,
            vec![("A".into(), "b=c".into()), ("B".into(), String::new())]
        );
        assert_eq!(
            parse(b"K=v").expect("unterminated last entry"),
            vec![("K".into(), "v".into())]
        );
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(parse(b"novalue\0"), Err(KeyError::MissingEquals));
        assert_eq!(parse(b"=v\0"), Err(KeyError::BadKeyName));
        assert_eq!(parse(b"a b=v\0"), Err(KeyError::BadKeyName));
        assert_eq!(parse(b"K=\xff\0"), Err(KeyError::NotUtf8));
        assert_eq!(
            parse(b"K=1\0K=2\0"),
            Err(KeyError::DuplicateKey("K".into()))
        );
        assert_eq!(parse_entries(b"K=1\0K=2\0").map(|e| e.len()), Ok(2));
        let long_key = format!("{}=v\0", "k".repeat(MAX_KEY_LEN + 1));
        assert_eq!(parse(long_key.as_bytes()), Err(KeyError::KeyTooLong));
        let ok_key = format!("{}=v\0", "k".repeat(MAX_KEY_LEN));
        assert!(parse(ok_key.as_bytes()).is_ok());
        let long_value = format!("K={}\0", "v".repeat(MAX_VALUE_LEN + 1));
        assert_eq!(
            parse(long_value.as_bytes()),
            Err(KeyError::ValueTooLong { key: "K".into() })
        );
        assert_eq!(
            parse(&vec![b'a'; MAX_TEXT_LEN + 1]),
            Err(KeyError::TextTooLong)
        );
    }

    /// 64 KiB of the shortest distinct keys: the old parser compared every key with every
    /// earlier one (~10^8 comparisons here) and accepted them all; now the text is refused once
    /// the key cap is passed, and duplicates among the most keys allowed are still found.
    #[test]
    fn key_count_is_capped_and_duplicates_found_in_one_pass() {
        let mut many = Vec::new();
        let mut n = 0u32;
        while many.len() < MAX_TEXT_LEN - 16 {
            many.extend_from_slice(format!("{n:x}=\0").as_bytes());
            n += 1;
        }
        assert!(n as usize > 10 * MAX_KEYS);
        assert_eq!(parse(&many), Err(KeyError::TooManyKeys));
        // Repeated keys are fine where repetition is allowed (SendTargets responses).
        assert_eq!(parse_entries(&many).map(|e| e.len()), Ok(n as usize));

        let mut at_cap: Vec<u8> = (0..MAX_KEYS - 1)
            .flat_map(|i| format!("k{i}=v\0").into_bytes())
            .collect();
        assert_eq!(parse(&at_cap).map(|e| e.len()), Ok(MAX_KEYS - 1));
        at_cap.extend_from_slice(b"k0=again\0");
        assert_eq!(parse(&at_cap), Err(KeyError::DuplicateKey("k0".into())));
        at_cap.extend_from_slice(b"one-more=v\0");
        assert_eq!(parse(&at_cap), Err(KeyError::TooManyKeys));
    }

    #[test]
    fn writer_round_trips() {
        let mut w = TextWriter::new();
        assert!(w.is_empty());
        w.push("HeaderDigest", "None");
        w.push("MaxRecvDataSegmentLength", "262144");
        assert!(w.contains("HeaderDigest") && !w.contains("Header") && !w.contains("DataDigest"));
        let text = w.finish();
        assert_eq!(
            &text[..],
            b"HeaderDigest=None\0MaxRecvDataSegmentLength=262144\0"
        );
        assert_eq!(parse(&text).expect("valid").len(), 2);
    }

    #[test]
    fn assembler_joins_continued_pdus_and_enforces_limit() {
        let mut a = TextAssembler::new();
        assert_eq!(a.push(b"Initiator", true), Ok(None));
        assert!(a.is_pending());
        assert_eq!(
            a.push(b"Name=iqn.x\0", false),
            Ok(Some(Bytes::from_static(b"InitiatorName=iqn.x\0")))
        );
        assert!(!a.is_pending());
        let big = vec![b'a'; MAX_TEXT_LEN];
        assert_eq!(a.push(&big, true), Ok(None));
        assert_eq!(a.push(b"x", false), Err(KeyError::TextTooLong));
        assert!(!a.is_pending(), "state is reset after an error");
    }

    #[test]
    fn splitter_cuts_at_limit() {
        let mut s = TextSplitter::new(Bytes::from_static(b"0123456789"));
        assert_eq!(s.next_chunk(4), (Bytes::from_static(b"0123"), true));
        assert_eq!(s.next_chunk(4), (Bytes::from_static(b"4567"), true));
        assert_eq!(s.next_chunk(4), (Bytes::from_static(b"89"), false));
        assert!(!s.has_more());
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(parse_number("262144"), Some(262144));
        assert_eq!(parse_number("0x40000"), Some(0x40000));
        assert_eq!(parse_number("0X1f"), Some(31));
        for bad in [
            "",
            "-1",
            "+1",
            "12a",
            "0x",
            "0xg",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("No"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(format_bool(true), "Yes");
        assert_eq!(
            list_items("CRC32C,None").collect::<Vec<_>>(),
            vec!["CRC32C", "None"]
        );
    }
}

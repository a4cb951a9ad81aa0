//! CHAP with MD5 (RFC 1994 as used by RFC 7143 §12.1.3): response computation, challenge
//! generation and the encodings of binary values (`0x` hex, `0b` base64).

use md5::{Digest, Md5};
use rand::RngCore;

/// The only CHAP algorithm we offer: CHAP_A=5 (MD5).
pub const CHAP_MD5: &str = "5";
/// Length of the challenges we generate.
pub const CHALLENGE_LEN: usize = 16;
/// Shortest challenge accepted from an initiator asking for mutual CHAP. A short challenge lets
/// an eavesdropper collect our responses for every value of it (a 1-byte challenge has 256),
/// then answer as the target; 16 bytes is what we send and what open-iscsi and libiscsi send.
pub const MIN_PEER_CHALLENGE_LEN: usize = 16;
/// Longest binary value accepted from the initiator (RFC 7143 caps CHAP_C at 1024 bytes).
pub const MAX_BINARY_LEN: usize = 1024;

/// CHAP_R = MD5(identifier || secret || challenge).
pub fn md5_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// A fresh random identifier and challenge.
pub fn new_challenge() -> (u8, Vec<u8>) {
    let mut rng = rand::thread_rng();
    let mut c = vec![0u8; CHALLENGE_LEN];
    rng.fill_bytes(&mut c);
    ((rng.next_u32() & 0xff) as u8, c)
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Formats binary as a `0x` hex constant (what initiators such as libiscsi expect).
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Decodes a binary value: `0x`/`0X` hex (an odd digit count gets a leading zero) or `0b`/`0B`
/// base64. `None` when malformed, empty or longer than [`MAX_BINARY_LEN`].
pub fn decode_binary(value: &str) -> Option<Vec<u8>> {
    let (prefix, body) = value.split_at_checked(2)?;
    let bytes = match prefix {
        "0x" | "0X" => {
            if body.len() % 2 == 1 {
                hex::decode(format!("0{body}")).ok()?
            } else {
                hex::decode(body).ok()?
            }
        }
        "0b" | "0B" => decode_base64(body)?,
        _ => return None,
    };
    (!bytes.is_empty() && bytes.len() <= MAX_BINARY_LEN).then_some(bytes)
}

/// Standard base64 with `=` padding required to a multiple of 4 characters.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let quads = b.len() / 4;
    for (i, q) in b.chunks_exact(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// Parses CHAP_I: a number 0..=255 (decimal or `0x` hex).
pub fn parse_identifier(value: &str) -> Option<u8> {
    super::keys::parse_number(value).and_then(|n| u8::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_known_answers() {
        // RFC 1321 test suite: MD5("abc") and MD5("message digest"), split into id||secret||challenge.
        assert_eq!(
            hex::encode(md5_response(b'a', b"b", b"c")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex::encode(md5_response(b'm', b"essage ", b"digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0X102"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        for bad in [
            "",
            "0x",
            "0b",
            "12",
            "0xzz",
            "0bAQ=",
            "0bA===",
            "0bAQ==AQ==",
            "0b****",
        ] {
            assert_eq!(decode_binary(bad), None, "{bad}");
        }
        assert_eq!(
            decode_binary(&format!("0x{}", "00".repeat(MAX_BINARY_LEN + 1))),
            None
        );
        assert_eq!(encode_hex(&[0xab, 1]), "0xab01");
        assert_eq!(decode_binary(&encode_hex(&[9, 8, 7])), Some(vec![9, 8, 7]));
    }

    #[test]
    fn identifiers_and_challenges() {
        assert_eq!(parse_identifier("255"), Some(255));
        assert_eq!(parse_identifier("0x10"), Some(16));
        assert_eq!(parse_identifier("256"), None);
        let (_, a) = new_challenge();
        let (_, b) = new_challenge();
        assert_eq!(a.len(), CHALLENGE_LEN);
        assert_ne!(a, b, "challenges must not repeat");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

//! Cache keys: a blob identity (its digest) and the index of a refill unit within the blob.
//! Keying by digest, not by URL, lets images that share a layer share its cached bytes.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A blob's identity in the caches, always of the form `<algorithm>:<lowercase hex>` so it
/// maps to a safe folder name (a digest from a config file is untrusted text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(Arc<str>);

impl BlobId {
    /// The identity of a blob named by `digest`. A well-formed `algo:hex` digest is used as
    /// is; anything else is hashed into `x-sha256:<hex>` so it can never escape the cache
    /// folder (and never collides with a real digest).
    pub fn from_digest(digest: &str) -> Self {
        if Self::parse(digest).is_some() {
            return Self(Arc::from(digest));
        }
        Self(Arc::from(format!(
            "x-sha256:{}",
            hex::encode(Sha256::digest(digest.as_bytes()))
        )))
    }

    /// Splits a well-formed id into (algorithm, hex); `None` when the text is not one.
    pub fn parse(text: &str) -> Option<(&str, &str)> {
        let (algo, hex) = text.split_once(':')?;
        let algo_ok = !algo.is_empty()
            && algo.len() <= 32
            && algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let hex_ok = (32..=128).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (algo_ok && hex_ok).then_some((algo, hex))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// (algorithm, hex) parts of the id.
    pub fn parts(&self) -> (&str, &str) {
        // Every constructor guarantees the shape; fall back to the whole id if not.
        Self::parse(&self.0).unwrap_or(("x", &self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One refill unit of one blob: bytes `[index * unit, (index + 1) * unit)` clamped to the blob.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct UnitKey {
    /// The blob.
    pub blob: BlobId,
    /// Index of the unit within the blob.
    pub index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_kept_and_junk_is_hashed() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(BlobId::from_digest(&d).as_str(), d);
        assert_eq!(
            BlobId::from_digest(&d).parts(),
            ("sha256", &"ab".repeat(32)[..])
        );
        for junk in [
            "../../etc/passwd",
            "sha256:XYZ",
            "sha256:",
            "",
            "sha256:ab/../..",
        ] {
            let id = BlobId::from_digest(junk);
            let (algo, hex) = id.parts();
            assert_eq!(algo, "x-sha256", "{junk}");
            assert_eq!(hex.len(), 64);
        }
    }
}

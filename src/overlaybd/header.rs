//! The 4096-byte LSMT header / trailer structure (spec `lsmt.md` §3).
//!
//! Sans-IO: [`LsmtHeader::decode`] and [`LsmtHeader::encode`] work on byte slices only.

use super::error::{LsmtError, LsmtResult};

/// Size of a header or trailer on disk, and the offset where data starts in a data file.
pub const HEADER_SIZE: usize = 4096;
/// Number of meaningful bytes at the start of the structure (stored in the `size` field).
pub const HEADER_USED: u32 = 390;
/// The 24 magic bytes (magic0 ‖ magic1) that open every LSMT header and trailer.
pub const MAGIC: [u8; 24] = [
    0x4C, 0x53, 0x4D, 0x54, 0x00, 0x01, 0x02, 0x00, // "LSMT" 0 1 2 0
    0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08, 0x4C, 0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A,
];
/// Length of the user tag field in bytes.
pub const USER_TAG_LEN: usize = 256;

/// Flag bits of the header `flags` field (§3.1). Readers test only these four.
pub mod flags {
    /// Set in a header, clear in a trailer.
    pub const HEADER: u32 = 0x01;
    /// Set in data files and sealed blobs, clear in the index file of a writable layer.
    pub const DATA: u32 = 0x02;
    /// Set when the file is sealed (immutable, with a trailer).
    pub const SEALED: u32 = 0x04;
    /// Data file of a sparse writable layer.
    pub const SPARSE_RW: u32 = 0x10;
}

// Byte offsets of the fields inside the structure (the struct is packed).
const OFF_SIZE: usize = 24;
const OFF_FLAGS: usize = 28;
const OFF_INDEX_OFFSET: usize = 32;
const OFF_INDEX_SIZE: usize = 40;
const OFF_VSIZE: usize = 48;
const OFF_UUID: usize = 56;
const OFF_PARENT: usize = 93;
const OFF_VERSION: usize = 132;
const OFF_SUB_VERSION: usize = 133;
const OFF_USER_TAG: usize = 134;
/// Length of a UUID text field: 36 characters and a NUL.
pub const UUID_FIELD_LEN: usize = 37;

/// A UUID text field exactly as stored (37 bytes, §3.3).
///
/// Kept raw because readers must tolerate whatever a writer put there; [`LayerUuid::to_uuid`]
/// parses it when it is well formed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerUuid([u8; UUID_FIELD_LEN]);

impl LayerUuid {
    /// The all-zero UUID text used for "no parent" and for commits without `--uuid`.
    pub fn nil() -> Self {
        Self::from_uuid(&uuid::Uuid::nil())
    }

    /// The text form the reference writer stores: upper-case 8-4-4-4-12 hex digits and a NUL.
    pub fn from_uuid(u: &uuid::Uuid) -> Self {
        let mut raw = [0u8; UUID_FIELD_LEN];
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = u.hyphenated().encode_upper(&mut text);
        raw[..s.len()].copy_from_slice(s.as_bytes());
        LayerUuid(raw)
    }

    /// Parses a UUID text in either case (`XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(text)
            .ok()
            .map(|u| Self::from_uuid(&u))
    }

    /// Wraps the raw 37 bytes of a field.
    pub fn from_raw(raw: [u8; UUID_FIELD_LEN]) -> Self {
        LayerUuid(raw)
    }

    /// The raw 37 bytes of the field.
    pub fn raw(&self) -> &[u8; UUID_FIELD_LEN] {
        &self.0
    }

    /// The UUID, when the field holds a well-formed UUID text.
    pub fn to_uuid(&self) -> Option<uuid::Uuid> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(UUID_FIELD_LEN);
        let text = std::str::from_utf8(self.0.get(..end)?).ok()?;
        if text.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(text).ok()
    }

    /// True for the all-zero UUID.
    pub fn is_nil(&self) -> bool {
        self.to_uuid().is_some_and(|u| u.is_nil())
    }
}

impl std::fmt::Display for LayerUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(UUID_FIELD_LEN);
        f.write_str(&String::from_utf8_lossy(&self.0[..end]))
    }
}

impl std::fmt::Debug for LayerUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LayerUuid({self})")
    }
}

/// The decoded fields of an LSMT header or trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmtHeader {
    /// Flag bits (see [`flags`]); unknown bits are kept as read.
    pub flags: u32,
    /// Byte offset of the index (meaning depends on the file kind, §3.2).
    pub index_offset: u64,
    /// Number of 16-byte index records (meaning depends on the file kind, §3.2).
    pub index_size: u64,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// This layer's UUID.
    pub uuid: LayerUuid,
    /// The UUID of the layer below.
    pub parent_uuid: LayerUuid,
    /// Format version (1).
    pub version: u8,
    /// Format sub-version (1).
    pub sub_version: u8,
    /// Free text ("commit message"), without its NUL padding; at most 256 bytes are stored.
    pub user_tag: Vec<u8>,
}

impl LsmtHeader {
    /// A header with the given flags and virtual size, nil UUIDs, version 1.1, no index.
    pub fn new(flags: u32, virtual_size: u64) -> Self {
        LsmtHeader {
            flags,
            index_offset: 0,
            index_size: 0,
            virtual_size,
            uuid: LayerUuid::nil(),
            parent_uuid: LayerUuid::nil(),
            version: 1,
            sub_version: 1,
            user_tag: Vec::new(),
        }
    }

    /// True when the header bit is set (a header rather than a trailer).
    pub fn is_header(&self) -> bool {
        self.flags & flags::HEADER != 0
    }

    /// True when the data bit is set.
    pub fn is_data(&self) -> bool {
        self.flags & flags::DATA != 0
    }

    /// True when the sealed bit is set.
    pub fn is_sealed(&self) -> bool {
        self.flags & flags::SEALED != 0
    }

    /// True when the sparse writable bit is set.
    pub fn is_sparse(&self) -> bool {
        self.flags & flags::SPARSE_RW != 0
    }

    /// Decodes the structure from at least [`HEADER_USED`] bytes; `file` names the source in errors.
    ///
    /// Only the magic is checked here; which flag bits a caller needs depends on the file kind.
    pub fn decode(buf: &[u8], file: &str) -> LsmtResult<LsmtHeader> {
        let Some(b) = buf.get(..HEADER_USED as usize) else {
            return Err(LsmtError::corrupt(
                file,
                format!(
                    "LSMT header/trailer truncated: {} bytes, need {HEADER_USED}",
                    buf.len()
                ),
            ));
        };
        if b[..MAGIC.len()] != MAGIC {
            return Err(LsmtError::corrupt(file, "bad LSMT magic"));
        }
        let mut uuid = [0u8; UUID_FIELD_LEN];
        uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + UUID_FIELD_LEN]);
        let mut parent = [0u8; UUID_FIELD_LEN];
        parent.copy_from_slice(&b[OFF_PARENT..OFF_PARENT + UUID_FIELD_LEN]);
        let tag = &b[OFF_USER_TAG..OFF_USER_TAG + USER_TAG_LEN];
        let tag_len = tag.iter().position(|&c| c == 0).unwrap_or(USER_TAG_LEN);
        Ok(LsmtHeader {
            flags: le_u32(b, OFF_FLAGS),
            index_offset: le_u64(b, OFF_INDEX_OFFSET),
            index_size: le_u64(b, OFF_INDEX_SIZE),
            virtual_size: le_u64(b, OFF_VSIZE),
            uuid: LayerUuid(uuid),
            parent_uuid: LayerUuid(parent),
            version: b[OFF_VERSION],
            sub_version: b[OFF_SUB_VERSION],
            user_tag: tag[..tag_len].to_vec(),
        })
    }

    /// Encodes the structure as the reference writer does: 4096 bytes, zero beyond byte 390.
    ///
    /// A user tag longer than 256 bytes is cut at 256 (callers validate lengths up front).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..MAGIC.len()].copy_from_slice(&MAGIC);
        b[OFF_SIZE..OFF_SIZE + 4].copy_from_slice(&HEADER_USED.to_le_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[OFF_INDEX_OFFSET..OFF_INDEX_OFFSET + 8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[OFF_INDEX_SIZE..OFF_INDEX_SIZE + 8].copy_from_slice(&self.index_size.to_le_bytes());
        b[OFF_VSIZE..OFF_VSIZE + 8].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[OFF_UUID..OFF_UUID + UUID_FIELD_LEN].copy_from_slice(&self.uuid.0);
        b[OFF_PARENT..OFF_PARENT + UUID_FIELD_LEN].copy_from_slice(&self.parent_uuid.0);
        b[OFF_VERSION] = self.version;
        b[OFF_SUB_VERSION] = self.sub_version;
        let n = self.user_tag.len().min(USER_TAG_LEN);
        b[OFF_USER_TAG..OFF_USER_TAG + n].copy_from_slice(&self.user_tag[..n]);
        b
    }
}

/// True when `buf` starts like an LSMT header: the 24 magic bytes and the header flag (§3).
pub fn is_lsmt_header(buf: &[u8]) -> bool {
    buf.len() >= OFF_FLAGS + 4
        && buf[..MAGIC.len()] == MAGIC
        && le_u32(buf, OFF_FLAGS) & flags::HEADER != 0
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_layout_matches_spec_offsets() {
        let mut h = LsmtHeader::new(0x07, 64 << 30);
        h.uuid = LayerUuid::parse("c02fb491-b4d4-4904-8684-a014d032af78").unwrap();
        h.user_tag = b"hello".to_vec();
        h.index_offset = 0x1122;
        h.index_size = 0x33;
        let b = h.encode();
        assert_eq!(&b[..8], b"LSMT\x00\x01\x02\x00");
        assert_eq!(&b[24..28], &[0x86, 0x01, 0, 0]);
        assert_eq!(&b[28..32], &[7, 0, 0, 0]);
        assert_eq!(&b[32..40], &0x1122u64.to_le_bytes());
        assert_eq!(&b[40..48], &0x33u64.to_le_bytes());
        assert_eq!(&b[48..56], &(64u64 << 30).to_le_bytes());
        assert_eq!(&b[56..93], b"C02FB491-B4D4-4904-8684-A014D032AF78\0");
        assert_eq!(&b[93..130], b"00000000-0000-0000-0000-000000000000\0");
        assert_eq!(&b[130..134], &[0, 0, 1, 1]);
        assert_eq!(&b[134..139], b"hello");
        assert!(b[139..].iter().all(|&x| x == 0));
        assert_eq!(LsmtHeader::decode(&b, "t").unwrap(), h);
    }

    #[test]
    fn decode_rejects_bad_magic_and_truncation() {
        let b = LsmtHeader::new(1, 0).encode();
        let mut bad = b;
        bad[9] ^= 1;
        assert!(matches!(
            LsmtHeader::decode(&bad, "x"),
            Err(LsmtError::Corrupt { .. })
        ));
        let err = LsmtHeader::decode(&b[..100], "x").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn full_user_tag_without_terminator_roundtrips() {
        let mut h = LsmtHeader::new(0x07, 0);
        h.user_tag = vec![b'a'; 256];
        assert_eq!(
            LsmtHeader::decode(&h.encode(), "t").unwrap().user_tag.len(),
            256
        );
    }

    #[test]
    fn uuid_text_rules() {
        assert!(LayerUuid::nil().is_nil());
        assert!(LayerUuid::parse("not-a-uuid").is_none());
        assert!(LayerUuid::parse("C02FB491B4D449048684A014D032AF78").is_none());
        let garbage = LayerUuid::from_raw([0xff; UUID_FIELD_LEN]);
        assert!(garbage.to_uuid().is_none());
        assert!(is_lsmt_header(&LsmtHeader::new(3, 0).encode()));
        assert!(!is_lsmt_header(&LsmtHeader::new(2, 0).encode()));
    }
}

//! Errors of ZFile parsing, reading and writing.

use std::io;

use crate::source::SourceError;

/// Why one stored block could not be turned back into its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockFault {
    /// With per-block checksums every stored block must hold more than the 4-byte checksum.
    #[error("stored length {0} is too short to hold a checksum and data")]
    TooShort(usize),
    /// The trailing CRC32C does not match the compressed bytes.
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// Checksum stored after the compressed bytes.
        stored: u32,
        /// Checksum computed over the compressed bytes.
        computed: u32,
    },
    /// The codec rejected the compressed bytes (corrupt data, or more output than expected).
    #[error("{algorithm} decode failed: {reason}")]
    Decode {
        /// Codec name.
        algorithm: &'static str,
        /// The codec's own explanation.
        reason: String,
    },
    /// The block decoded to a different number of bytes than its raw length.
    #[error("decompressed to {got} bytes, expected {expected}")]
    SizeMismatch {
        /// Raw length of the block (the block size, or the short last block).
        expected: usize,
        /// Bytes the codec produced.
        got: usize,
    },
    /// A ZSTD payload must be exactly one frame; trailing bytes mean corruption.
    #[error("ZSTD payload is {payload} bytes but its first frame ends at {frame}")]
    NotOneFrame {
        /// Payload length (without checksum).
        payload: usize,
        /// Length of the first frame.
        frame: usize,
    },
}

/// Everything that can go wrong with a ZFile.
#[derive(Debug, thiserror::Error)]
pub enum ZFileError {
    /// The blob does not start with a ZFile header (magic or header flag missing).
    #[error("not a ZFile: {0}")]
    NotZFile(&'static str),
    /// The blob ends before a structure the format requires.
    #[error("truncated ZFile: {what} needs bytes up to {needed}, blob has {size}")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
        /// End offset the structure needs.
        needed: u64,
        /// Blob size.
        size: u64,
    },
    /// A header or trailer digest does not match its 512 bytes.
    #[error("{which} digest mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Digest {
        /// "header" or "trailer".
        which: &'static str,
        /// Digest field value.
        stored: u32,
        /// CRC32C of the structure with the digest field zeroed.
        computed: u32,
    },
    /// The jump table's CRC32C does not match index_crc.
    #[error("jump table CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    IndexCrc {
        /// index_crc field value.
        stored: u32,
        /// CRC32C of the table bytes.
        computed: u32,
    },
    /// Fields are inconsistent or out of range (the message says which).
    #[error("corrupt ZFile: {0}")]
    Corrupt(String),
    /// Well-formed but uses something this implementation (and the reference) does not support.
    #[error("unsupported ZFile: {0}")]
    Unsupported(String),
    /// One stored block is bad.
    #[error("ZFile block {index}: {fault}")]
    Block {
        /// Block index (raw offset / block size).
        index: u64,
        /// What is wrong with it.
        fault: BlockFault,
    },
    /// A tar wrapper could not be understood (image-config.md §7).
    #[error("bad tar wrapper: {0}")]
    Tar(String),
    /// The underlying source failed (its error already says how: not found, unavailable, ...).
    #[error("{0}")]
    Source(#[from] SourceError),
}

impl From<io::Error> for ZFileError {
    /// A local I/O error (the writer's output, a blocking task that died).
    fn from(e: io::Error) -> Self {
        ZFileError::Source(e.into())
    }
}

impl From<ZFileError> for SourceError {
    /// Source errors pass through with their kind; every finding of the format (a block's
    /// CRC, a digest, the jump table, an unsupported field) makes the bytes
    /// [`SourceError::Corrupt`], with the [`ZFileError`] kept inside for a downcast.
    fn from(err: ZFileError) -> Self {
        match err {
            ZFileError::Source(e) => e,
            other => SourceError::corrupt(other),
        }
    }
}

impl From<ZFileError> for io::Error {
    /// For the tools, which speak `io::Error`: the [`SourceError`] kind's mapping.
    fn from(err: ZFileError) -> Self {
        io::Error::from(SourceError::from(err))
    }
}

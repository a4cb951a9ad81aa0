//! ZFile: overlaybd's random-access compressed file format (`../shared/spec/zfile.md`).
//!
//! A ZFile is a stream cut into fixed-size blocks, each compressed independently (LZ4 or
//! ZSTD, optionally followed by a CRC32C), with a jump table of stored lengths so any range can
//! be read by fetching and decoding only the blocks covering it.
//!
//! - [`ZFileReader`] opens a ZFile held by any [`crate::source::LayerSource`] and is itself a
//!   `LayerSource` of the uncompressed bytes, so LSMT reads through it like through a file.
//! - [`ZFileWriter`] / [`compress`] produce files the original overlaybd reads.
//! - [`open_payload`] removes a tar wrapper and says whether the payload is a ZFile or LSMT.
//! - [`decode_block`] decodes one stored block synchronously (benchmarks, parallel decoders).

mod checksum;
mod codec;
mod detect;
mod error;
mod header;
mod jump_table;
mod reader;
pub(crate) mod tar;
mod view;
mod writer;

// The raw CRC-32C (zfile.md §4), shared with the prefetch trace format (trace-prefetch.md §3.3).
pub(crate) use checksum::crc32c_raw;
pub use codec::{decode_block, Algorithm};
pub use detect::{detect_format, open_payload, BlobFormat, Payload};
pub use error::{BlockFault, ZFileError};
pub use header::ZFileInfo;
pub use reader::ZFileReader;
pub use view::RangeView;
pub use writer::{compress, WriterOptions, ZFileWriter};

#[cfg(test)]
mod tests;

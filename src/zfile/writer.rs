//! Compressing a byte stream into a ZFile exactly as the reference writer does (zfile.md §9.3):
//! placeholder header, blocks in input order, jump table, trailer, and optionally the final
//! header rewritten at offset 0.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::checksum::crc32c_raw;
use super::codec::{Algorithm, BlockEncoder};
use super::error::ZFileError;
use super::header::{flag, ZFileHeader, ZFileInfo, MAX_BLOCK_SIZE, MAX_INDEX_SIZE, STRUCT_SIZE};

/// Smallest block size the writer accepts (the reference tools' `--bs 4`).
const MIN_WRITE_BLOCK_SIZE: u32 = 4096;
/// The reference reader cannot read a stored block larger than its 64 KiB buffer (§5).
const MAX_STORED_LEN: usize = 65_536;

/// How to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Codec of every block.
    pub algorithm: Algorithm,
    /// Raw block size: a power of two from 4096 to 65536.
    pub block_size: u32,
    /// Append a CRC32C to every stored block (all reference tools do).
    pub verify: bool,
}

impl Default for WriterOptions {
    /// The reference tools' defaults: LZ4, 4 KiB blocks, per-block CRC.
    fn default() -> Self {
        WriterOptions {
            algorithm: Algorithm::Lz4,
            block_size: 4096,
            verify: true,
        }
    }
}

impl WriterOptions {
    fn validate(&self) -> Result<(), ZFileError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_WRITE_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(ZFileError::Unsupported(format!(
                "block size {bs}: must be a power of two from {MIN_WRITE_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
            )));
        }
        Ok(())
    }

    /// The header/trailer fields that do not depend on the data.
    fn structure(&self, flags: u64) -> ZFileHeader {
        ZFileHeader {
            flags,
            digest: 0,
            index_offset: 0,
            index_size: 0,
            original_file_size: 0,
            index_crc: 0,
            block_size: self.block_size,
            algo: self.algorithm.id(),
            level: 0,
            use_dict: 0,
            dict_size: 0,
            verify: u8::from(self.verify),
        }
    }
}

/// Streams raw bytes into a ZFile. Feed data with [`Write`] (any chunking), then call
/// [`ZFileWriter::finish`] (or [`ZFileWriter::finish_with_header`] on seekable outputs).
pub struct ZFileWriter<W: Write> {
    out: W,
    options: WriterOptions,
    encoder: BlockEncoder,
    /// Input not yet forming a whole block.
    pending: Vec<u8>,
    /// Stored length of every block written so far (the jump table).
    lengths: Vec<u32>,
    /// Bytes written to `out` so far.
    position: u64,
    /// Raw bytes consumed so far.
    raw_total: u64,
}

impl<W: Write> ZFileWriter<W> {
    /// Validates `options` and writes the placeholder header to `out`.
    pub fn new(mut out: W, options: WriterOptions) -> Result<ZFileWriter<W>, ZFileError> {
        options.validate()?;
        let placeholder = options.structure(flag::HEADER | flag::DATA | flag::DIGEST);
        out.write_all(&placeholder.encode())?;
        Ok(ZFileWriter {
            out,
            encoder: BlockEncoder::new(options.algorithm, options.verify)?,
            options,
            pending: Vec::with_capacity(options.block_size as usize),
            lengths: Vec::new(),
            position: STRUCT_SIZE as u64,
            raw_total: 0,
        })
    }

    fn write_block(&mut self, raw: &[u8]) -> io::Result<()> {
        if self.lengths.len() as u64 >= MAX_INDEX_SIZE {
            return Err(io::Error::other(format!(
                "more than {MAX_INDEX_SIZE} blocks"
            )));
        }
        let stored = self.encoder.encode(raw)?;
        if stored.len() > MAX_STORED_LEN {
            return Err(io::Error::other(format!(
                "block {} stores as {} bytes, above the 64 KiB the reference can read; use a smaller block size",
                self.lengths.len(),
                stored.len()
            )));
        }
        self.out.write_all(stored)?;
        // At most 64 KiB, checked above.
        self.lengths.push(stored.len() as u32);
        self.position += stored.len() as u64;
        self.raw_total += raw.len() as u64;
        Ok(())
    }

    /// Flushes the last partial block, writes the jump table and the trailer, and returns the
    /// output with the values now in the trailer.
    pub fn finish(mut self) -> io::Result<(W, ZFileInfo)> {
        let (_, info) = self.write_tail()?;
        self.out.flush()?;
        Ok((self.out, info))
    }

    fn write_tail(&mut self) -> io::Result<(ZFileHeader, ZFileInfo)> {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.write_block(&last)?;
        }
        let table: Vec<u8> = self.lengths.iter().flat_map(|l| l.to_le_bytes()).collect();
        let index_offset = self.position;
        self.out.write_all(&table)?;
        self.position += table.len() as u64;
        let mut trailer = self
            .options
            .structure(flag::DATA | flag::SEALED | flag::DIGEST);
        trailer.index_offset = index_offset;
        trailer.index_size = self.lengths.len() as u64;
        trailer.original_file_size = self.raw_total;
        trailer.index_crc = crc32c_raw(&table);
        self.out.write_all(&trailer.encode())?;
        self.position += STRUCT_SIZE as u64;
        let info =
            ZFileInfo::from_structure(&trailer, self.position, false).map_err(io::Error::from)?;
        Ok((trailer, info))
    }
}

impl<W: Write + Seek> ZFileWriter<W> {
    /// Like [`ZFileWriter::finish`], then rewrites the header at the start of the ZFile with
    /// the final values (flags header|data|header_overwrite|digest), as `overlaybd-commit -z`
    /// does, so readers need not fetch the trailer. The stream is left at the ZFile's end.
    pub fn finish_with_header(mut self) -> io::Result<(W, ZFileInfo)> {
        let (mut header, mut info) = self.write_tail()?;
        header.flags = flag::HEADER | flag::DATA | flag::HEADER_OVERWRITE | flag::DIGEST;
        let end = self.out.stream_position()?;
        // The ZFile may sit inside a larger stream (a tar wrapper): its start is `position`
        // bytes back.
        let start = end
            .checked_sub(self.position)
            .ok_or_else(|| io::Error::other("output position moved behind the writer"))?;
        self.out.seek(SeekFrom::Start(start))?;
        self.out.write_all(&header.encode())?;
        self.out.seek(SeekFrom::Start(end))?;
        self.out.flush()?;
        info.header_overwrite = true;
        Ok((self.out, info))
    }
}

impl<W: Write> Write for ZFileWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let consumed = buf.len();
        let bs = self.options.block_size as usize;
        if !self.pending.is_empty() {
            let take = (bs - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == bs {
                let block = std::mem::take(&mut self.pending);
                self.write_block(&block)?;
                self.pending = block;
                self.pending.clear();
            }
        }
        // Whole blocks straight from the caller's buffer, no copy.
        while buf.len() >= bs {
            let (block, rest) = buf.split_at(bs);
            self.write_block(block)?;
            buf = rest;
        }
        self.pending.extend_from_slice(buf);
        Ok(consumed)
    }

    /// Flushes the output; a partial block stays buffered until more data or `finish`.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Compresses everything `input` yields into `out` as a ZFile (placeholder header kept, like
/// `overlaybd-zfile`), returning the output and the file's values.
pub fn compress<R: Read, W: Write>(
    mut input: R,
    out: W,
    options: WriterOptions,
) -> Result<(W, ZFileInfo), ZFileError> {
    let mut writer = ZFileWriter::new(out, options)?;
    io::copy(&mut input, &mut writer)?;
    Ok(writer.finish()?)
}

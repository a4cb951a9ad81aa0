//! Damaged files: every corruption is a clear error, never a panic and never wrong data.

use super::{make_zfile, mem, sample_data};
use crate::source::{LayerSource, SourceError};
use crate::zfile::header::{flag, parse_header, parse_trailer, ZFileHeader};
use crate::zfile::{Algorithm, BlockFault, WriterOptions, ZFileError, ZFileReader};

const LEN: usize = 11_000;

fn options(algorithm: Algorithm) -> WriterOptions {
    WriterOptions {
        algorithm,
        block_size: 4096,
        verify: true,
    }
}

/// Rewrites the trailer (digest recomputed when its flag is set).
fn edit_trailer(file: &mut [u8], edit: impl FnOnce(&mut ZFileHeader)) {
    let at = file.len() - 512;
    let mut t = parse_trailer(&file[at..]).unwrap();
    edit(&mut t);
    file[at..].copy_from_slice(&t.encode());
}

/// Turns a current-format file into a legacy one: no digest flags, digests zero.
fn to_legacy(file: &mut [u8]) {
    let mut h = parse_header(file).unwrap();
    h.flags = flag::HEADER | flag::DATA;
    h.digest = 0;
    file[..512].copy_from_slice(&h.encode());
    edit_trailer(file, |t| t.flags = flag::DATA | flag::SEALED);
}

/// The [`ZFileError`] inside an error returned through `LayerSource`: a corrupt finding, by
/// type.
pub(super) fn zfile_error(err: &SourceError) -> &ZFileError {
    err.finding()
        .and_then(|e| e.downcast_ref::<ZFileError>())
        .unwrap_or_else(|| panic!("not a corrupt ZFile finding: {err}"))
}

/// Opens and reads everything; Ok only with exactly the original bytes.
async fn open_and_read(file: Vec<u8>, data: &[u8]) -> Result<(), ZFileError> {
    let reader = ZFileReader::open(mem(file)).await?;
    let got = reader
        .read_exact_at(0, data.len())
        .await
        .map_err(ZFileError::Source)?;
    assert_eq!(reader.size(), data.len() as u64, "size changed silently");
    assert!(got[..] == data[..], "wrong data returned");
    Ok(())
}

#[tokio::test]
async fn flipped_bit_in_a_block_names_the_block() {
    let data = sample_data(LEN, 1);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        let clean = make_zfile(&data, options(algorithm), false);
        let spans: Vec<(u64, u64)> = {
            let reader = ZFileReader::open(mem(clean.clone())).await.unwrap();
            (0..3).map(|i| reader.block_span(i).unwrap()).collect()
        };
        for (k, &(s, e)) in spans.iter().enumerate() {
            let mut file = clean.clone();
            file[((s + e) / 2) as usize] ^= 0x08;
            let reader = ZFileReader::open(mem(file)).await.unwrap();
            let err = reader
                .read_exact_at(k as u64 * 4096 + 10, 100)
                .await
                .unwrap_err();
            match zfile_error(&err) {
                ZFileError::Block {
                    index,
                    fault: BlockFault::Crc { .. },
                } => assert_eq!(*index, k as u64),
                other => panic!("unexpected {other}"),
            }
            assert!(err.to_string().contains(&format!("block {k}")), "{err}");
            // Other blocks stay readable.
            let other = (k as u64 + 1) % 3;
            let start = other as usize * 4096;
            let got = reader.read_exact_at(start as u64, 500).await.unwrap();
            assert_eq!(&got[..], &data[start..start + 500]);
        }
    }
}

#[tokio::test]
async fn every_bit_flip_is_caught_in_current_files() {
    // Every bit of the header, jump table and trailer; one bit per byte of block data (all of
    // which the per-block CRC covers alike).
    let data = sample_data(LEN, 2);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        for header in [false, true] {
            let clean = make_zfile(&data, options(algorithm), header);
            let index_offset = parse_trailer(&clean[clean.len() - 512..])
                .unwrap()
                .index_offset as usize;
            for at in 0..clean.len() {
                let structure = at < 512 || at >= index_offset;
                let bits = if structure { 0..8 } else { at % 8..at % 8 + 1 };
                for bit in bits {
                    let mut file = clean.clone();
                    file[at] ^= 1 << bit;
                    // With a complete header the trailer is never read, and clearing the
                    // header's digest flag leaves a valid legacy-style header.
                    let harmless = header && (at >= clean.len() - 512 || (at, bit) == (32, 4));
                    if open_and_read(file, &data).await.is_ok() {
                        assert!(harmless, "flip of bit {bit} at {at} ({algorithm}, header {header}) went unnoticed");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn byte_flips_after_a_legacy_header_never_give_wrong_data() {
    // Legacy files have no digests: damage must still surface through block CRCs, sizes and
    // offsets, or be harmless. (The legacy header itself is unprotected by design.)
    let data = sample_data(LEN, 3);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        let mut clean = make_zfile(&data, options(algorithm), false);
        to_legacy(&mut clean);
        open_and_read(clean.clone(), &data).await.unwrap();
        for at in 512..clean.len() {
            let mut file = clean.clone();
            file[at] ^= 1 << (at % 8);
            let _ = open_and_read(file, &data).await;
        }
    }
}

#[tokio::test]
async fn truncated_files_are_errors() {
    let data = sample_data(LEN, 4);
    for header in [false, true] {
        let clean = make_zfile(&data, options(Algorithm::Lz4), header);
        for cut in 0..clean.len() {
            let result = open_and_read(clean[..cut].to_vec(), &data).await;
            // A complete header lets a reader skip the trailer (and then any success was checked
            // to return the right bytes); every other truncation must fail.
            let tolerated = header && cut >= clean.len() - 512;
            assert!(tolerated || result.is_err(), "cut {cut} accepted");
        }
    }
}

#[tokio::test]
async fn header_and_trailer_damage_is_named() {
    let data = sample_data(LEN, 5);
    let clean = make_zfile(&data, options(Algorithm::Lz4), false);
    let open = |file: Vec<u8>| async move { ZFileReader::open(mem(file)).await.unwrap_err() };

    let mut f = clean.clone();
    f[3] ^= 1;
    assert!(matches!(open(f).await, ZFileError::NotZFile(_)));
    let mut f = clean.clone();
    f[200] ^= 1;
    assert!(matches!(
        open(f).await,
        ZFileError::Digest {
            which: "header",
            ..
        }
    ));
    let mut f = clean.clone();
    let n = f.len();
    f[n - 300] ^= 1;
    assert!(matches!(
        open(f).await,
        ZFileError::Digest {
            which: "trailer",
            ..
        }
    ));
    let mut f = clean.clone();
    f[n - 512] ^= 1;
    assert!(
        matches!(open(f).await, ZFileError::Corrupt(_)),
        "trailer magic"
    );
    let mut f = clean.clone();
    f[n - 512 + 32] &= !(flag::DIGEST as u8);
    assert!(
        matches!(open(f).await, ZFileError::Corrupt(_)),
        "trailer digest flag cleared"
    );
    let mut f = clean.clone();
    edit_trailer(&mut f, |t| t.flags |= flag::HEADER);
    assert!(matches!(open(f).await, ZFileError::Corrupt(_)));
    let mut f = clean.clone();
    edit_trailer(&mut f, |t| t.flags &= !flag::SEALED);
    assert!(matches!(open(f).await, ZFileError::Corrupt(_)));
    // A flipped jump-table byte is caught by index_crc.
    let mut f = clean.clone();
    let index_offset = parse_trailer(&clean[n - 512..]).unwrap().index_offset as usize;
    f[index_offset + 5] ^= 1;
    assert!(matches!(open(f).await, ZFileError::IndexCrc { .. }));
    assert!(matches!(
        open(vec![0u8; 100]).await,
        ZFileError::Truncated { .. }
    ));
    assert!(matches!(
        open(clean[..600].to_vec()).await,
        ZFileError::Truncated { .. }
    ));
}

#[tokio::test]
async fn absurd_fields_are_refused() {
    let data = sample_data(LEN, 6);
    let clean = make_zfile(&data, options(Algorithm::Lz4), false);
    type Edit = fn(&mut ZFileHeader);
    let cases: [(&str, Edit); 14] = [
        ("index_size 1e9+1", |t| t.index_size = 1_000_000_001),
        ("index_size 2^62", |t| t.index_size = 1 << 62),
        ("huge original size", |t| t.original_file_size = u64::MAX),
        ("size/count mismatch", |t| t.original_file_size += 4096),
        ("index_offset max", |t| t.index_offset = u64::MAX),
        ("index_offset 0", |t| t.index_offset = 0),
        ("block_size 0", |t| t.block_size = 0),
        ("block_size 3000", |t| t.block_size = 3000),
        ("block_size 1 MiB", |t| t.block_size = 1 << 20),
        ("algo MINI_LZO", |t| t.algo = 0),
        ("algo 9", |t| t.algo = 9),
        ("dictionary", |t| t.use_dict = 1),
        ("compressed table", |t| t.flags |= flag::INDEX_COMPRESSED),
        ("dict_size max", |t| t.dict_size = u32::MAX),
    ];
    for (name, edit) in cases {
        let mut f = clean.clone();
        edit_trailer(&mut f, edit);
        let err = ZFileReader::open(mem(f)).await.unwrap_err();
        assert!(
            matches!(
                err,
                ZFileError::Corrupt(_) | ZFileError::Unsupported(_) | ZFileError::Truncated { .. }
            ),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn legacy_jump_table_damage_is_caught_by_block_crc() {
    let data = sample_data(LEN, 7);
    let mut file = make_zfile(&data, options(Algorithm::Lz4), false);
    to_legacy(&mut file);
    let n = file.len();
    let index_offset = parse_trailer(&file[n - 512..]).unwrap().index_offset as usize;
    let entry =
        |f: &[u8], i: usize| u32::from_le_bytes(f[index_offset + 4 * i..][..4].try_into().unwrap());
    // Move the boundary between blocks 1 and 2 by one byte; the total stays the same.
    let (l1, l2) = (entry(&file, 1), entry(&file, 2));
    file[index_offset + 4..][..4].copy_from_slice(&(l1 - 1).to_le_bytes());
    file[index_offset + 8..][..4].copy_from_slice(&(l2 + 1).to_le_bytes());
    let reader = ZFileReader::open(mem(file.clone())).await.unwrap();
    assert_eq!(
        &reader.read_exact_at(0, 4096).await.unwrap()[..],
        &data[..4096]
    );
    for block in [1u64, 2] {
        let err = reader.read_exact_at(block * 4096, 1).await.unwrap_err();
        assert!(
            matches!(zfile_error(&err), ZFileError::Block { index, .. } if *index == block),
            "{err}"
        );
    }
    // A zero or checksum-only length is refused when the table is loaded.
    for bad in [0u32, 4] {
        let mut f = file.clone();
        f[index_offset..][..4].copy_from_slice(&bad.to_le_bytes());
        assert!(matches!(
            ZFileReader::open(mem(f)).await,
            Err(ZFileError::Corrupt(_))
        ));
    }
}

#[tokio::test]
async fn reads_outside_the_stream_are_eof() {
    let data = sample_data(LEN, 8);
    let reader = ZFileReader::open(mem(make_zfile(&data, options(Algorithm::Zstd), false)))
        .await
        .unwrap();
    for (offset, len) in [(LEN as u64, 1), (LEN as u64 - 1, 2), (u64::MAX, 1)] {
        let err = reader.read_exact_at(offset, len).await.unwrap_err();
        assert!(matches!(err, SourceError::OutOfRange { .. }), "{err}");
    }
    assert!(reader
        .read_exact_at(LEN as u64, 0)
        .await
        .unwrap()
        .is_empty());
}

//! Writer -> reader round trips and the writer's on-disk structure.

use proptest::prelude::*;

use super::{make_zfile, mem, sample_data};
use crate::source::LayerSource;
use crate::zfile::checksum::{crc32c_raw, crc32c_seeded, BLOCK_CRC_SEED};
use crate::zfile::header::{parse_header, parse_trailer};
use crate::zfile::{
    compress, open_payload, Algorithm, BlobFormat, WriterOptions, ZFileError, ZFileReader,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn round_trip_random_reads(
        len in 0usize..150_000,
        seed in any::<u64>(),
        bs_shift in 12u32..=15,
        zstd in any::<bool>(),
        verify in any::<bool>(),
        header in any::<bool>(),
        reads in proptest::collection::vec((any::<u64>(), 0usize..40_000), 1..8),
    ) {
        let data = sample_data(len, seed);
        let algorithm = if zstd { Algorithm::Zstd } else { Algorithm::Lz4 };
        let options = WriterOptions { algorithm, block_size: 1 << bs_shift, verify };
        let file = make_zfile(&data, options, header);
        runtime().block_on(async {
            let reader = ZFileReader::open(mem(file)).await.unwrap();
            assert_eq!(reader.size(), len as u64);
            assert_eq!(reader.info().header_overwrite, header);
            for (at, want) in reads {
                let offset = if len == 0 { 0 } else { at % len as u64 };
                let count = want.min(len - offset as usize);
                let got = reader.read_exact_at(offset, count).await.unwrap();
                prop_assert_eq!(&got[..], &data[offset as usize..offset as usize + count]);
            }
            let whole = reader.read_exact_at(0, len).await.unwrap();
            prop_assert!(whole[..] == data[..]);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn large_read_uses_parallel_path_correctly() {
    // 3 MiB of 4 KiB blocks: well above the parallel threshold, unaligned at both ends.
    let data = sample_data(3 << 20, 99);
    let file = make_zfile(&data, WriterOptions::default(), false);
    let reader = ZFileReader::open(mem(file)).await.unwrap();
    let got = reader.read_exact_at(1234, data.len() - 5000).await.unwrap();
    assert!(got[..] == data[1234..data.len() - 3766]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_parallel_decoding_agree() {
    // The same large unaligned read decoded inline (1 worker) and split across 1..=5 blocking
    // threads, for both codecs; every variant must return the original bytes.
    let data = sample_data(2 << 20, 7);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        let options = WriterOptions {
            algorithm,
            ..WriterOptions::default()
        };
        let file = make_zfile(&data, options, false);
        for workers in 1..=5 {
            let reader = ZFileReader::open(mem(file.clone()))
                .await
                .unwrap()
                .with_decode_workers(workers);
            let got = reader.read_exact_at(777, data.len() - 1000).await.unwrap();
            assert!(
                got[..] == data[777..data.len() - 223],
                "{algorithm} with {workers} workers"
            );
        }
    }
}

#[test]
fn writer_structure_follows_spec() {
    let data = sample_data(50_000, 5);
    let file = make_zfile(&data, WriterOptions::default(), false);
    // Placeholder header: identical for every LZ4 / 4 KiB / verify file (§10.1).
    let header = parse_header(&file).unwrap();
    assert_eq!(header.flags, 0x13);
    assert_eq!(header.digest, 0xC7A2_12FC);
    assert_eq!(
        (
            header.index_offset,
            header.index_size,
            header.original_file_size
        ),
        (0, 0, 0)
    );
    // Trailer at EOF - 512, table right before it, blocks right before that.
    let trailer = parse_trailer(&file[file.len() - 512..]).unwrap();
    assert_eq!(trailer.flags, 0x16);
    let n = trailer.index_size as usize;
    assert_eq!(n, 50_000usize.div_ceil(4096));
    assert_eq!(trailer.original_file_size, 50_000);
    let index_offset = trailer.index_offset as usize;
    assert_eq!(index_offset + 4 * n, file.len() - 512);
    let table = &file[index_offset..index_offset + 4 * n];
    assert_eq!(trailer.index_crc, crc32c_raw(table));
    let mut off = 512usize;
    for entry in table.chunks(4) {
        let len = u32::from_le_bytes(entry.try_into().unwrap()) as usize;
        let (payload, crc) = file[off..off + len].split_at(len - 4);
        assert_eq!(
            crc32c_seeded(payload, BLOCK_CRC_SEED),
            u32::from_le_bytes(crc.try_into().unwrap())
        );
        off += len;
    }
    assert_eq!(off, index_offset);
    assert!(file[96..512].iter().all(|&b| b == 0));
}

#[test]
fn header_overwrite_equals_trailer_but_flags_and_digest() {
    let data = sample_data(20_000, 6);
    let options = WriterOptions {
        algorithm: Algorithm::Zstd,
        block_size: 8192,
        verify: true,
    };
    let file = make_zfile(&data, options, true);
    let header = parse_header(&file).unwrap();
    assert_eq!(header.flags, 0x1B);
    let mut trailer = parse_trailer(&file[file.len() - 512..]).unwrap();
    trailer.flags = header.flags;
    trailer.digest = header.digest;
    assert_eq!(header, trailer);
    assert_eq!(header.algo, 2);
    assert_eq!(header.level, 0);
}

#[tokio::test]
async fn header_overwrite_file_does_not_need_its_trailer() {
    let data = sample_data(30_000, 7);
    let mut file = make_zfile(&data, WriterOptions::default(), true);
    let end = file.len();
    file[end - 512..].fill(0);
    let reader = ZFileReader::open(mem(file)).await.unwrap();
    assert!(reader.info().header_overwrite);
    assert_eq!(
        &reader.read_exact_at(0, 30_000).await.unwrap()[..],
        &data[..]
    );
}

#[tokio::test]
async fn empty_stream() {
    let file = make_zfile(&[], WriterOptions::default(), false);
    assert_eq!(file.len(), 1024);
    let reader = ZFileReader::open(mem(file)).await.unwrap();
    assert_eq!(reader.size(), 0);
    assert_eq!(reader.info().block_count, 0);
    assert!(reader.read_exact_at(0, 0).await.unwrap().is_empty());
    assert!(reader.read_exact_at(0, 1).await.is_err());
}

#[test]
fn writer_refuses_bad_block_sizes() {
    for bs in [0, 512, 2048, 4095, 12_288, 131_072] {
        let options = WriterOptions {
            block_size: bs,
            ..WriterOptions::default()
        };
        let err = compress(&b"x"[..], Vec::new(), options).unwrap_err();
        assert!(matches!(err, ZFileError::Unsupported(_)), "{bs}: {err}");
    }
}

#[test]
fn writer_refuses_stored_blocks_over_64k() {
    // 64 KiB of random bytes grows under both codecs beyond what the reference can read (§5).
    let noise = super::noise(65_536, 0x1234_5678_9ABC_DEF1u64);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        let options = WriterOptions {
            algorithm,
            block_size: 65_536,
            verify: true,
        };
        let err = compress(&noise[..], Vec::new(), options).unwrap_err();
        assert!(err.to_string().contains("64 KiB"), "{err}");
    }
    // Compressible data is fine with 64 KiB blocks.
    let options = WriterOptions {
        block_size: 65_536,
        ..WriterOptions::default()
    };
    assert!(compress(&sample_data(200_000, 3)[..], Vec::new(), options).is_ok());
}

#[tokio::test]
async fn detection_of_plain_and_wrapped_blobs() {
    let data = sample_data(10_000, 8);
    let file = make_zfile(&data, WriterOptions::default(), false);
    let plain = open_payload(mem(file.clone())).await.unwrap();
    assert_eq!((plain.format, plain.tar_offset), (BlobFormat::ZFile, None));
    let wrapped = open_payload(mem(crate::zfile::tar::build::pax(&file)))
        .await
        .unwrap();
    assert_eq!(
        (wrapped.format, wrapped.tar_offset),
        (BlobFormat::ZFile, Some(1536))
    );
    let stream = wrapped.decompressed().await.unwrap();
    assert_eq!(
        &stream.read_exact_at(0, 10_000).await.unwrap()[..],
        &data[..]
    );

    let mut lsmt = vec![0u8; 8192];
    lsmt[..24].copy_from_slice(&[
        0x4C, 0x53, 0x4D, 0x54, 0x00, 0x01, 0x02, 0x00, 0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08,
        0x4C, 0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A,
    ]);
    lsmt[28] = 1;
    let p = open_payload(mem(crate::zfile::tar::build::ustar(&lsmt)))
        .await
        .unwrap();
    assert_eq!((p.format, p.tar_offset), (BlobFormat::Lsmt, Some(512)));
    assert_eq!(p.decompressed().await.unwrap().size(), 8192);
    lsmt[28] = 0;
    assert_eq!(
        open_payload(mem(lsmt)).await.unwrap().format,
        BlobFormat::Unknown
    );
    assert_eq!(
        open_payload(mem(vec![1, 2, 3])).await.unwrap().format,
        BlobFormat::Unknown
    );
    // A ZFile header with the digest flag but a wrong digest is corrupt, not "unknown".
    let mut bad = file;
    bad[100] ^= 1;
    assert!(matches!(
        open_payload(mem(bad)).await,
        Err(ZFileError::Digest { .. })
    ));
}

#[test]
fn writer_output_equals_a_direct_assembly_for_any_chunking() {
    let data = sample_data(70_000, 10);
    for (algorithm, block_size, verify) in [
        (Algorithm::Lz4, 4096, true),
        (Algorithm::Zstd, 16_384, false),
        (Algorithm::Lz4, 32_768, false),
    ] {
        let expected = super::assemble(&data, algorithm, block_size, verify);
        let options = WriterOptions {
            algorithm,
            block_size,
            verify,
        };
        for piece in [1usize, 1000, 4096, 5000, 70_000] {
            let mut w = crate::zfile::ZFileWriter::new(Vec::new(), options).unwrap();
            for chunk in data.chunks(piece) {
                std::io::Write::write_all(&mut w, chunk).unwrap();
            }
            assert!(
                w.finish().unwrap().0 == expected,
                "{algorithm} {block_size} piece {piece}"
            );
        }
    }
}

#[tokio::test]
async fn reader_accepts_small_block_sizes() {
    // Readers accept any power of two from 512 (the writer only makes 4 KiB and up).
    let data = sample_data(9_000, 11);
    for block_size in [512, 1024, 2048] {
        let reader = ZFileReader::open(mem(super::assemble(
            &data,
            Algorithm::Zstd,
            block_size,
            true,
        )))
        .await
        .unwrap();
        assert_eq!(
            reader.info().block_count,
            9_000u64.div_ceil(u64::from(block_size))
        );
        assert_eq!(
            &reader.read_exact_at(700, 5_000).await.unwrap()[..],
            &data[700..5_700]
        );
    }
}

#[tokio::test]
async fn reader_decodes_stored_blocks_over_64k() {
    // The reference writer makes these with --bs 64 and cannot read them back; we can (§5).
    let noise = super::noise(100_000, 77u64);
    for algorithm in [Algorithm::Lz4, Algorithm::Zstd] {
        let reader = ZFileReader::open(mem(super::assemble(&noise, algorithm, 65_536, true)))
            .await
            .unwrap();
        assert_eq!(
            &reader.read_exact_at(1, 99_999).await.unwrap()[..],
            &noise[1..]
        );
    }
}

#[tokio::test]
async fn dictionary_size_shifts_the_data_area() {
    // No writer makes a dictionary, but dict_size must be honoured as an offset (§8).
    let data = sample_data(20_000, 12);
    let plain = make_zfile(&data, WriterOptions::default(), false);
    let shift = 100usize;
    let mut header = parse_header(&plain).unwrap();
    let mut trailer = parse_trailer(&plain[plain.len() - 512..]).unwrap();
    header.dict_size = shift as u32;
    trailer.dict_size = shift as u32;
    trailer.index_offset += shift as u64;
    let mut file = header.encode().to_vec();
    file.extend(std::iter::repeat(0xEE).take(shift));
    file.extend_from_slice(&plain[512..plain.len() - 512]);
    file.extend_from_slice(&trailer.encode());
    let reader = ZFileReader::open(mem(file)).await.unwrap();
    assert_eq!(reader.info().data_offset, 612);
    assert_eq!(
        &reader.read_exact_at(0, 20_000).await.unwrap()[..],
        &data[..]
    );
}

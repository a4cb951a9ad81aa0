//! The real `ext4_64` base layer made by the original C++ tools (fixtures/README.md,
//! zfile.md §10): every documented value, the legacy header quirk, full decompression.

use std::sync::Arc;

use crate::cache::file::FileSource;
use crate::source::LayerSource;
use crate::test_fixtures::{fixture, require};
use crate::zfile::header::{flag, parse_header, parse_trailer, STRUCT_SIZE};
use crate::zfile::tar::build;
use crate::zfile::{open_payload, Algorithm, BlobFormat, ZFileReader};

const FILE_SIZE: u64 = 4_737_695;
const BLOCKS: u64 = 132_309;
const ORIGINAL_SIZE: u64 = 541_937_664;
const INDEX_OFFSET: u64 = 4_207_947;
const LSMT_MAGIC0: [u8; 8] = [0x4C, 0x53, 0x4D, 0x54, 0x00, 0x01, 0x02, 0x00];

async fn open_fixture() -> (Arc<dyn LayerSource>, ZFileReader) {
    let src: Arc<dyn LayerSource> = Arc::new(FileSource::open(fixture("ext4_64")).await.unwrap());
    assert_eq!(src.size(), FILE_SIZE);
    let reader = ZFileReader::open(Arc::clone(&src)).await.unwrap();
    (src, reader)
}

#[tokio::test]
async fn fixture_info_matches_readme() {
    let Some(_) = require("ext4_64") else { return };
    let (_, reader) = open_fixture().await;
    let info = reader.info();
    assert_eq!(info.algorithm, Algorithm::Lz4);
    assert_eq!(info.block_size, 4096);
    assert!(info.verify);
    assert_eq!(info.block_count, BLOCKS);
    assert_eq!(info.original_file_size, ORIGINAL_SIZE);
    assert_eq!(info.index_offset, INDEX_OFFSET);
    assert_eq!(info.data_offset, 512);
    assert!(info.legacy, "no digest flag: a pre-2023 file");
    assert!(!info.header_overwrite);
    assert_eq!(info.index_crc, None);
    assert_eq!(reader.size(), ORIGINAL_SIZE);
}

#[tokio::test]
async fn fixture_legacy_header_garbage_is_ignored() {
    let Some(_) = require("ext4_64") else { return };
    let (src, _) = open_fixture().await;
    let head = src.read_exact_at(0, STRUCT_SIZE).await.unwrap();
    let header = parse_header(&head).unwrap();
    assert_eq!(header.flags & flag::MEANINGFUL, flag::HEADER | flag::DATA);
    assert!(!header.has(flag::HEADER_OVERWRITE));
    // Placeholder garbage a reader must not use (§10).
    assert_eq!(header.index_offset, 140_327_818_076_376);
    assert_eq!(header.index_size, 1);
    assert_eq!(header.original_file_size, 0);

    let tail = src
        .read_exact_at(FILE_SIZE - 512, STRUCT_SIZE)
        .await
        .unwrap();
    let trailer = parse_trailer(&tail).unwrap();
    assert_eq!(
        trailer.flags, 0x7FFE_A464_0B46,
        "garbage above bit 4 kept verbatim"
    );
    assert_eq!(trailer.flags & flag::MEANINGFUL, flag::DATA | flag::SEALED);
    assert_eq!(
        trailer.digest, 0x7FA0,
        "garbage digest, not checked without the digest flag"
    );
    assert_eq!(trailer.index_size, BLOCKS);
}

#[tokio::test]
async fn fixture_jump_table_values() {
    let Some(_) = require("ext4_64") else { return };
    let (src, reader) = open_fixture().await;
    let starts: Vec<u64> = (0..5).map(|i| reader.block_span(i).unwrap().0).collect();
    assert_eq!(starts, [512, 641, 877, 2246, 3586]);
    let lens: Vec<u64> = (0..BLOCKS)
        .map(|i| reader.block_span(i).map(|(s, e)| e - s).unwrap())
        .collect();
    assert_eq!(&lens[..8], &[129, 236, 1369, 1340, 1331, 1340, 1352, 1334]);
    assert_eq!(lens.iter().min(), Some(&30));
    assert_eq!(lens.iter().max(), Some(&4118));
    assert_eq!(reader.block_span(BLOCKS - 1).unwrap().1, INDEX_OFFSET);
    // §6.2: base[1] = off[16]; the largest in-group delta.
    assert_eq!(reader.block_span(16).unwrap().0, 12_080);
    let max_delta = (0..BLOCKS)
        .map(|i| reader.block_span(i).unwrap().0 - reader.block_span(i / 16 * 16).unwrap().0)
        .max();
    assert_eq!(max_delta, Some(21_349));
    // §10.1: the table's CRC a current writer would record.
    let table = src
        .read_exact_at(INDEX_OFFSET, (BLOCKS * 4) as usize)
        .await
        .unwrap();
    assert_eq!(crate::zfile::checksum::crc32c_raw(&table), 0x71AC_C654);
}

#[tokio::test]
async fn fixture_block_checksums() {
    let Some(_) = require("ext4_64") else { return };
    let (src, _) = open_fixture().await;
    let block0 = src.read_exact_at(512, 129).await.unwrap();
    assert_eq!(&block0[..6], &[0xFF, 0x0F, 0x4C, 0x53, 0x4D, 0x54]);
    assert_eq!(
        u32::from_le_bytes(block0[125..].try_into().unwrap()),
        0x85AA_FE22
    );
    let block1 = src.read_exact_at(641, 236).await.unwrap();
    assert_eq!(
        u32::from_le_bytes(block1[232..].try_into().unwrap()),
        0xFB10_CE27
    );
    let seed = crate::zfile::checksum::BLOCK_CRC_SEED;
    assert_eq!(
        crate::zfile::checksum::crc32c_seeded(&block1[..232], seed),
        0xFB10_CE27
    );
}

#[tokio::test]
async fn fixture_ext4_magic_through_blob_offset() {
    let Some(_) = require("ext4_64") else { return };
    // Virtual byte 1080 maps to blob byte 5120 + 56 through the first LSMT record (§10).
    let (_, reader) = open_fixture().await;
    assert_eq!(
        &reader.read_exact_at(5176, 2).await.unwrap()[..],
        &[0x53, 0xEF]
    );
    // The same bytes inside a larger unaligned read spanning blocks 0..2.
    let wide = reader.read_exact_at(100, 9000).await.unwrap();
    assert_eq!(&wide[5076..5078], &[0x53, 0xEF]);
}

#[tokio::test]
async fn fixture_current_format_structures() {
    let Some(_) = require("ext4_64") else { return };
    // Re-encode the fixture's values as a current writer would (§10.1) and compare with the
    // spec's bytes and digests.
    let (src, _) = open_fixture().await;
    let tail = src
        .read_exact_at(FILE_SIZE - 512, STRUCT_SIZE)
        .await
        .unwrap();
    let mut s = parse_trailer(&tail).unwrap();
    s.flags = flag::DATA | flag::SEALED | flag::DIGEST;
    s.index_crc = 0x71AC_C654;
    let trailer = s.encode();
    let expected = hex::decode(concat!(
        "5A46696C6500010074756A692E79796640416C6962616261",
        "60000000",
        "CB729D71",
        "1600000000000000",
        "4B35400000000000",
        "D504020000000000",
        "00504D2000000000",
        "54C6AC71",
        "00000000",
        "00100000",
        "01",
        "00",
        "00",
        "00",
        "00000000",
        "00000000",
        "01",
        "00000000000000",
    ))
    .unwrap();
    assert_eq!(&trailer[..96], &expected[..]);
    assert!(trailer[96..].iter().all(|&b| b == 0));
    s.flags = flag::HEADER | flag::DATA | flag::HEADER_OVERWRITE | flag::DIGEST;
    assert_eq!(
        u32::from_le_bytes(s.encode()[28..32].try_into().unwrap()),
        0x815D_A7EF
    );
    s.flags = flag::HEADER | flag::DATA | flag::DIGEST;
    (
        s.index_offset,
        s.index_size,
        s.original_file_size,
        s.index_crc,
    ) = (0, 0, 0, 0);
    assert_eq!(
        u32::from_le_bytes(s.encode()[28..32].try_into().unwrap()),
        0xC7A2_12FC
    );
}

#[tokio::test]
async fn fixture_decompresses_fully_to_an_lsmt_blob() {
    let Some(_) = require("ext4_64") else { return };
    let (_, reader) = open_fixture().await;
    // 4 MiB reads use the parallel decode path; every block's CRC and size are checked.
    let chunk = 4 << 20;
    let mut offset = 0u64;
    let mut head = None;
    let mut tail = Vec::new();
    while offset < ORIGINAL_SIZE {
        let len = (ORIGINAL_SIZE - offset).min(chunk) as usize;
        let bytes = reader.read_exact_at(offset, len).await.unwrap();
        assert_eq!(bytes.len(), len);
        head.get_or_insert_with(|| bytes.slice(..4096));
        tail = bytes[len - 4096..].to_vec();
        offset += len as u64;
    }
    let head = head.unwrap();
    assert_eq!(&head[..8], &LSMT_MAGIC0, "LSMT header at the start");
    assert_eq!(head[28] & 1, 1, "LSMT header flag");
    assert_eq!(&tail[..8], &LSMT_MAGIC0, "sealed LSMT trailer at the end");
    assert_eq!(tail[28] & 1, 0, "trailer flag");
    let err = reader
        .read_exact_at(ORIGINAL_SIZE - 1, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::source::SourceError::OutOfRange { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn fixture_tar_wrapped_is_detected_and_read() {
    let Some(_) = require("ext4_64") else { return };
    let bytes = std::fs::read(fixture("ext4_64")).unwrap();
    for (wrapped, offset) in [(build::pax(&bytes), 1536), (build::ustar(&bytes), 512)] {
        let payload = open_payload(super::mem(wrapped)).await.unwrap();
        assert_eq!(payload.format, BlobFormat::ZFile);
        assert_eq!(payload.tar_offset, Some(offset));
        assert_eq!(payload.source.size(), FILE_SIZE);
        let lsmt = payload.decompressed().await.unwrap();
        assert_eq!(lsmt.size(), ORIGINAL_SIZE);
        assert_eq!(&lsmt.read_exact_at(0, 8).await.unwrap()[..], &LSMT_MAGIC0);
        assert_eq!(
            &lsmt.read_exact_at(5176, 2).await.unwrap()[..],
            &[0x53, 0xEF]
        );
    }
}

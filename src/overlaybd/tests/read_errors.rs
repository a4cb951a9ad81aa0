//! How a failed layer read reaches the initiator: every [`SourceError`] kind, read through an
//! image LUN and the SCSI layer, pinned to its [`BlockError`] and its sense data. The mapping
//! is by type; nothing here (or in the code under test) matches messages or `ErrorKind`s.

use std::ops::Range;

use super::*;
use crate::scsi::{DataDirection, LunConfig, Nexus, ScsiRequest, ScsiTarget};
use crate::source::{SourceError, SourceResult, Span};
use crate::zfile::{compress, WriterOptions, ZFileReader};

/// Bytes of the virtual disk the test layer holds (at offset 0).
const DATA: u64 = 64 << 10;

/// A layer's bytes whose reads touching `bad` fail with `error`.
struct Failing {
    inner: BytesSource,
    bad: Range<u64>,
    error: SourceError,
}

#[async_trait::async_trait]
impl LayerSource for Failing {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        if span.offset() < self.bad.end && self.bad.start < span.end() {
            return Err(self.error.clone());
        }
        self.inner.read_exact_at(span.offset(), span.len()).await
    }
    fn describe(&self) -> String {
        "failing".into()
    }
}

/// A sealed layer holding `DATA` pattern bytes at disk offset 0, and those bytes.
async fn layer_file() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let layer = new_layer(dir.path(), "w", 1 << 20);
    let data = pattern(DATA / S, 5);
    layer.write(0, Bytes::from(data.clone())).await.unwrap();
    let file = commit_blob(&layer).await;
    (file, data)
}

async fn image_over(source: Arc<dyn LayerSource>) -> Arc<dyn BlockDevice> {
    let layer = SealedLayer::open(source).await.unwrap();
    let stack = LayerStack::new(vec![layer]).unwrap();
    Arc::new(Image::new(stack, None).await.unwrap())
}

/// Sense key and ASC of a READ(10) of `blocks` blocks at LBA 0, or `None` when it succeeded.
async fn read_sense(device: Arc<dyn BlockDevice>, blocks: u16) -> Option<(u8, u8)> {
    let target = ScsiTarget::new(vec![LunConfig {
        device,
        serial: "errors0".into(),
        product: "overlaybd image".into(),
        options: Default::default(),
    }]);
    let nexus = Nexus {
        initiator_name: "iqn.2026-11.test:init".into(),
        isid: [0; 6],
        tpgt: 1,
    };
    let request = |cdb: Vec<u8>, direction, expected_len| ScsiRequest {
        lun: 0,
        cdb: Bytes::from(cdb),
        direction,
        expected_len,
        data_out: Bytes::new(),
    };
    // The first command takes the power-on unit attention.
    let _ = target
        .execute(&nexus, request(vec![0; 6], DataDirection::None, 0))
        .await;
    let mut cdb = vec![0x28, 0, 0, 0, 0, 0, 0];
    cdb.extend_from_slice(&blocks.to_be_bytes());
    cdb.push(0);
    let resp = target
        .execute(
            &nexus,
            request(cdb, DataDirection::In, u32::from(blocks) * 512),
        )
        .await;
    if resp.status == 0 {
        return None;
    }
    assert_eq!(resp.status, 0x02, "CHECK CONDITION");
    let sense = resp.sense.expect("sense data");
    Some((sense[2] & 0x0f, sense[12]))
}

const MEDIUM_ERROR: Option<(u8, u8)> = Some((0x03, 0x11));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crc_failure_in_a_zfile_layer_is_corrupt_and_a_medium_error() {
    let (file, data) = layer_file().await;
    let (zfile, _) = compress(&file[..], Vec::new(), WriterOptions::default()).unwrap();
    // Damage every stored block of the data area (after the 4 KiB LSMT header, before the
    // index and trailer), so the layer opens but its data reads fail their CRC.
    let clean = ZFileReader::open(mem(zfile.clone())).await.unwrap();
    let bs = u64::from(clean.info().block_size);
    let mut bad = zfile.clone();
    for raw in (4096..4096 + DATA).step_by(bs as usize) {
        let (s, e) = clean.block_span(raw / bs).unwrap();
        bad[((s + e) / 2) as usize] ^= 0x08;
    }
    let image = Image::new(
        LayerStack::new(vec![SealedLayer::open(Arc::new(
            ZFileReader::open(mem(bad.clone())).await.unwrap(),
        ))
        .await
        .unwrap()])
        .unwrap(),
        None,
    )
    .await
    .unwrap();
    let crc_failures = || {
        let text = crate::metrics::global().render();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("overlaybd_target_crc_failures_total "));
        line.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let before = crc_failures();
    let err = image.read(0, 4096).await.unwrap_err();
    assert!(matches!(err, BlockError::Corrupt(_)), "{err:?}");
    // Counted (other tests of this process may add theirs in between).
    assert!(crc_failures() > before, "the CRC failure is in the metrics");
    let device = image_over(Arc::new(ZFileReader::open(mem(bad)).await.unwrap())).await;
    assert_eq!(read_sense(device, 8).await, MEDIUM_ERROR);
    // The same image undamaged reads its data.
    let good = image_over(Arc::new(ZFileReader::open(mem(zfile)).await.unwrap())).await;
    assert_eq!(&good.read(0, 4096).await.unwrap()[..], &data[..4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_error_kind_maps_to_its_block_error_and_sense() {
    let (file, data) = layer_file().await;
    let eio = || std::io::Error::from_raw_os_error(libc::EIO);
    // (the error, whether the device error is Corrupt (else Io, or Remote for an
    // unavailable registry), the io kind of an Io).
    let cases: Vec<(SourceError, bool, std::io::ErrorKind)> = vec![
        (
            SourceError::NotFound("blob not found (HTTP 404)".into()),
            false,
            std::io::ErrorKind::NotFound,
        ),
        (
            SourceError::Denied("HTTP 403".into()),
            false,
            std::io::ErrorKind::PermissionDenied,
        ),
        (
            SourceError::Unavailable("HTTP 503".into()),
            false,
            std::io::ErrorKind::Other,
        ),
        (
            SourceError::corrupt("bad bytes"),
            true,
            std::io::ErrorKind::Other,
        ),
        (
            SourceError::OutOfRange {
                offset: 1,
                len: 2,
                size: 2,
            },
            false,
            std::io::ErrorKind::UnexpectedEof,
        ),
        (
            SourceError::WrongLength {
                source_name: "x".into(),
                expected: 2,
                got: 1,
            },
            false,
            std::io::ErrorKind::UnexpectedEof,
        ),
        (SourceError::from(eio()), false, eio().kind()),
    ];
    for (error, corrupt, kind) in cases {
        let name = format!("{error:?}");
        let failing = || {
            Arc::new(Failing {
                inner: BytesSource::new(file.clone(), "layer"),
                bad: 4096..4096 + DATA,
                error: error.clone(),
            }) as Arc<dyn LayerSource>
        };
        let device = image_over(failing()).await;
        let remote = matches!(error, SourceError::Unavailable(_));
        match device.read(0, 4096).await.unwrap_err() {
            BlockError::Corrupt(m) if corrupt => assert!(m.starts_with("failing: "), "{m}"),
            BlockError::Remote(m) if remote => assert!(m.starts_with("failing: "), "{m}"),
            BlockError::Io(e) if !corrupt && !remote => {
                assert_eq!(e.kind(), kind, "{name}");
                assert!(e.to_string().starts_with("failing: "), "{e}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // Whatever the kind, the initiator sees MEDIUM ERROR / UNRECOVERED READ ERROR, as
        // before the errors were typed; the LUN stays ready for other reads.
        assert_eq!(read_sense(device, 8).await, MEDIUM_ERROR, "{name}");
    }
    let clean = image_over(mem(file)).await;
    assert_eq!(read_sense(Arc::clone(&clean), 8).await, None);
    assert_eq!(&clean.read(0, 4096).await.unwrap()[..], &data[..4096]);
}

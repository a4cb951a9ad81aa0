//! Trace prefetch through image configs (`trace-prefetch.md` §2, §4, §5): a device opened
//! with an empty `recordTracePath` records its layer reads and writes the trace when closed;
//! one opened with a trace (in `recordTracePath` or an acceleration layer) replays it.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::*;
use crate::overlaybd::commit::write_commit_file;
use crate::overlaybd::config::{ImageConfig, LayerLocation};
use crate::overlaybd::{LayerOpener, LocalOpener, LsmtResult};
use crate::prefetch::record::companion;
use crate::prefetch::trace::{self, Op, TraceRecord};
use crate::source::{SourceResult, Span};
use crate::zfile::WriterOptions;

const VSIZE: u64 = 8 << 20;
const MIB: u64 = 1 << 20;

/// Two lowers in `d`: a plain committed file with 64 KiB of data at 0 (seed 1), and a
/// ZFile-compressed commit in a layer directory with 16 KiB at 1 MiB (seed 2). Returns the
/// JSON of `lowers`.
async fn two_lowers(d: &Path) -> Vec<serde_json::Value> {
    let base = new_layer(d, "base", VSIZE);
    base.write(0, Bytes::from(pattern(128, 1))).await.unwrap();
    let blob = d.join("base.obd");
    std::fs::write(&blob, commit_blob(&base).await).unwrap();
    let mid = new_layer(d, "mid", VSIZE);
    mid.write(MIB, Bytes::from(pattern(32, 2))).await.unwrap();
    let dir = d.join("l1");
    std::fs::create_dir(&dir).unwrap();
    write_commit_file(
        &CommitSource::from_writable(&mid),
        &CommitOptions::default(),
        &dir.join("overlaybd.commit"),
        Some(WriterOptions::default()),
        &|_| {},
    )
    .await
    .unwrap();
    vec![
        serde_json::json!({ "file": blob }),
        serde_json::json!({ "dir": dir }),
    ]
}

/// Writes `config.v1.json` in `d` with `lowers` and the extra keys of `extra`.
fn write_config(d: &Path, lowers: &[serde_json::Value], extra: serde_json::Value) -> PathBuf {
    let mut json = serde_json::json!({ "lowers": lowers, "resultFile": d.join("result") });
    for (k, v) in extra.as_object().unwrap() {
        json[k] = v.clone();
    }
    let path = d.join("config.v1.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// Waits (10 s at most) until `path` exists, or, with `gone`, no longer exists.
async fn wait_for(path: &Path, gone: bool) {
    for _ in 0..1000 {
        if path.exists() != gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} did not {}",
        path.display(),
        if gone { "go" } else { "appear" }
    );
}

/// Whether every byte of `[start, end)` lies in one of `ranges` (`(offset, len)` pairs).
fn covered(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let mut ranges = ranges.to_vec();
    ranges.sort();
    let mut at = start;
    for (o, l) in ranges {
        if o <= at && o + l > at {
            at = o + l;
        }
    }
    at >= end
}

/// The layer byte ranges (layer index in `lowers`, offset, len) holding the data of virtual
/// bytes `[offset, offset + len)` of `image`.
fn layer_ranges(image: &Image, offset: u64, len: u64) -> Vec<(u8, u64, u64)> {
    let (start, end) = (offset / S, (offset + len) / S);
    // Stack tags count from the top, layer indexes from the bottom.
    let top = image.stack().len() as u8 - 1;
    image
        .extents(start, end - start)
        .into_iter()
        .filter(|r| !r.zeroed)
        .map(|r| {
            let from = r.offset.max(start);
            let to = r.end().min(end);
            (
                top - r.tag,
                (r.moffset + from - r.offset) * S,
                (to - from) * S,
            )
        })
        .collect()
}

#[tokio::test]
async fn an_empty_record_trace_path_records_the_reads_of_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lowers = two_lowers(d).await;
    let trace_path = d.join("trace");
    std::fs::write(&trace_path, b"").unwrap();
    let config = write_config(
        d,
        &lowers,
        serde_json::json!({ "recordTracePath": trace_path }),
    );

    // The tools' plain open leaves the trace alone.
    let loaded = ImageConfig::load(&config).unwrap();
    let plain = Image::open(&loaded, "c", &LocalOpener).await.unwrap();
    assert!(plain.prefetch().is_none());
    assert!(!companion(&trace_path, ".lock").exists());
    drop(plain);

    let image = Image::open_config_file(&config, &LocalOpener)
        .await
        .unwrap();
    assert!(image.prefetch().unwrap().recorder().is_some());
    assert!(companion(&trace_path, ".lock").exists());
    let reads = [(0, 8192), (MIB - 4096, 12288), (4 * MIB, 4096)];
    let mut expected = Vec::new();
    for (offset, len) in reads {
        let data = image.read(offset, len as usize).await.unwrap();
        if offset == 0 {
            assert_eq!(&data[..], &pattern(16, 1)[..]);
        }
        expected.extend(layer_ranges(&image, offset, len));
    }
    assert!(
        expected.iter().any(|&(tag, ..)| tag == 0) && expected.iter().any(|&(tag, ..)| tag == 1),
        "{expected:?}"
    );
    let sizes: Vec<u64> = (image.stack().layers_top_first().iter().rev())
        .map(|l| l.source().size())
        .collect();
    drop(image);

    wait_for(&companion(&trace_path, ".ok"), false).await;
    assert!(!companion(&trace_path, ".lock").exists());
    let records = trace::decode(&std::fs::read(&trace_path).unwrap()).unwrap();
    assert!(records.iter().all(|r| r.op == Op::Read && r.layer < 2));
    let of_layer = |layer: u8| -> Vec<(u64, u64)> {
        records
            .iter()
            .filter(|r| r.layer == u32::from(layer))
            .map(|r| (r.offset, r.count))
            .collect()
    };
    for layer in 0..2u8 {
        // The open's header and trailer reads (lsmt.md §5.2) are recorded too.
        let ranges = of_layer(layer);
        assert!(ranges.contains(&(0, 4096)), "layer {layer}: {ranges:?}");
        let size = sizes[usize::from(layer)];
        assert!(ranges.contains(&(size - 4096, 4096)), "{ranges:?}");
    }
    for (tag, offset, len) in expected {
        assert!(
            covered(&of_layer(tag), offset, offset + len),
            "layer {tag} [{offset}, +{len}) not recorded: {records:?}"
        );
    }

    // The next device open finds a non-empty trace and replays it instead.
    let log = Arc::new(Mutex::new(Vec::new()));
    let opener = Counting {
        log: Arc::clone(&log),
    };
    let image = Image::open_config_file(&config, &opener).await.unwrap();
    assert!(image.prefetch().unwrap().is_replaying());
    for layer in 0..2u8 {
        for (offset, len) in of_layer(layer) {
            wait_until_read(&log, layer, offset, len).await;
        }
    }
}

/// Logs every read of the layers it opens (through [`LocalOpener`]) as (layer, offset, len).
struct Counting {
    log: Arc<Mutex<Vec<(u8, u64, u64)>>>,
}

struct CountingSource {
    inner: Arc<dyn LayerSource>,
    layer: u8,
    log: Arc<Mutex<Vec<(u8, u64, u64)>>>,
}

#[async_trait]
impl LayerSource for CountingSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read_span(&self, span: Span) -> SourceResult<Bytes> {
        let bytes = self.inner.read_span(span).await?;
        self.log
            .lock()
            .push((self.layer, span.offset(), span.len() as u64));
        Ok(bytes)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[async_trait]
impl LayerOpener for Counting {
    async fn open(
        &self,
        config: &ImageConfig,
        index: usize,
        location: &LayerLocation,
    ) -> LsmtResult<Arc<dyn LayerSource>> {
        Ok(Arc::new(CountingSource {
            inner: LocalOpener.open(config, index, location).await?,
            layer: index as u8,
            log: Arc::clone(&self.log),
        }))
    }

    fn prefetch_workers(&self) -> usize {
        2
    }
}

/// Waits (10 s at most) until `[offset, offset + len)` of `layer` was read.
async fn wait_until_read(log: &Mutex<Vec<(u8, u64, u64)>>, layer: u8, offset: u64, len: u64) {
    for _ in 0..1000 {
        let ranges: Vec<_> = log
            .lock()
            .iter()
            .filter(|r| r.0 == layer)
            .map(|r| (r.1, r.2))
            .collect();
        if covered(&ranges, offset, offset + len) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "layer {layer} [{offset}, +{len}) was never read: {:?}",
        log.lock()
    );
}

/// Where a test puts its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TraceIn {
    /// `recordTracePath`.
    Path,
    /// `<dir>/trace` of the acceleration layer (unpacked by the snapshotter).
    Dir,
    /// The acceleration layer's tar blob itself, as the last lower's `file` (no `dir`).
    Tar,
}

#[tokio::test]
async fn a_trace_is_replayed_from_record_trace_path_or_an_acceleration_layer() {
    for place in [TraceIn::Path, TraceIn::Dir, TraceIn::Tar] {
        let accelerated = place != TraceIn::Path;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut lowers = two_lowers(d).await;
        // Data-area ranges the open itself never reads, and records replay must skip.
        let mut write = TraceRecord::read(0, 40_960, 4096);
        write.op = Op::Write;
        let records = vec![
            TraceRecord::read(1, 4096, 8192),
            TraceRecord::read(0, 8192, 16384),
            TraceRecord::read(7, 0, 4096),
            write,
        ];
        let bytes = trace::encode(&records);
        let extra = if place == TraceIn::Tar {
            let tar = d.join("accel.tar");
            std::fs::write(&tar, crate::registry::acceleration::layer_tar(&bytes)).unwrap();
            lowers.push(serde_json::json!({ "file": tar }));
            serde_json::json!({ "accelerationLayer": true })
        } else if accelerated {
            let accel = d.join("accel");
            std::fs::create_dir(&accel).unwrap();
            std::fs::write(accel.join("trace"), &bytes).unwrap();
            lowers.push(serde_json::json!({ "dir": accel }));
            serde_json::json!({ "accelerationLayer": true })
        } else {
            std::fs::write(d.join("trace"), &bytes).unwrap();
            serde_json::json!({ "recordTracePath": d.join("trace") })
        };
        let config = write_config(d, &lowers, extra);
        let log = Arc::new(Mutex::new(Vec::new()));
        let opener = Counting {
            log: Arc::clone(&log),
        };
        let image = Image::open_config_file(&config, &opener).await.unwrap();
        assert_eq!(
            image.stack().len(),
            2,
            "the acceleration layer is no data layer"
        );
        assert!(image.prefetch().unwrap().is_replaying(), "{place:?}");
        wait_until_read(&log, 1, 4096, 8192).await;
        wait_until_read(&log, 0, 8192, 16384).await;
        // Give the (finished) replay a moment, then check what it must not have read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let log = log.lock().clone();
        assert!(log.iter().all(|r| r.0 < 2), "{log:?}");
        assert!(
            !covered(
                &log.iter()
                    .filter(|r| r.0 == 0)
                    .map(|r| (r.1, r.2))
                    .collect::<Vec<_>>(),
                40_960,
                45_056
            ),
            "the 'W' record was replayed: {log:?}"
        );
        // The trace file is untouched: replay does not record.
        let trace_file = match place {
            TraceIn::Path => d.join("trace"),
            TraceIn::Dir => d.join("accel/trace"),
            TraceIn::Tar => continue,
        };
        assert_eq!(std::fs::read(trace_file).unwrap(), bytes);
        assert!(!companion(&d.join("trace"), ".lock").exists());
    }
}

#[tokio::test]
async fn damaged_traces_and_file_lists_open_without_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lowers = two_lowers(d).await;
    let trace_path = d.join("trace");
    let config = write_config(
        d,
        &lowers,
        serde_json::json!({ "recordTracePath": trace_path }),
    );
    let mut damaged = trace::encode(&[TraceRecord::read(0, 0, 4096)]);
    damaged[30] ^= 1;
    for contents in [damaged, b"/usr/bin/containerd\n".to_vec()] {
        std::fs::write(&trace_path, &contents).unwrap();
        let image = Image::open_config_file(&config, &LocalOpener)
            .await
            .unwrap();
        assert!(image.prefetch().is_none());
        assert_eq!(image.read(0, 4096).await.unwrap(), pattern(8, 1));
    }
    // A missing trace file: no prefetch either.
    std::fs::remove_file(&trace_path).unwrap();
    let image = Image::open_config_file(&config, &LocalOpener)
        .await
        .unwrap();
    assert!(image.prefetch().is_none());

    // An acceleration layer blob that is no tar, a tar without `trace`, a damaged trace in
    // it, a missing file, and a registry blob without `repoBlobUrl` to fetch it from: the
    // device opens, without prefetch (and the layer is still no data layer).
    let tar_without = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("other").unwrap();
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let mut bad_trace = trace::encode(&[TraceRecord::read(0, 0, 4096)]);
    bad_trace[30] ^= 1;
    let blobs = [
        vec![3u8; 4096],
        tar_without,
        crate::registry::acceleration::layer_tar(&bad_trace),
    ];
    let digest = format!("sha256:{}", "b".repeat(64));
    let tar_file = serde_json::json!({ "file": d.join("accel.tar") });
    let mut cases: Vec<(serde_json::Value, Option<Vec<u8>>)> = blobs
        .into_iter()
        .map(|blob| (tar_file.clone(), Some(blob)))
        .collect();
    cases.push((serde_json::json!({ "file": d.join("missing.tar") }), None));
    cases.push((serde_json::json!({ "digest": digest, "size": 2048 }), None));
    for (accel, blob) in cases {
        if let Some(blob) = &blob {
            std::fs::write(d.join("accel.tar"), blob).unwrap();
        }
        let mut all = lowers.clone();
        all.push(accel.clone());
        let config = write_config(d, &all, serde_json::json!({ "accelerationLayer": true }));
        let image = Image::open_config_file(&config, &LocalOpener)
            .await
            .unwrap_or_else(|e| panic!("{accel}: {e}"));
        assert!(image.prefetch().is_none(), "{accel}");
        assert_eq!(image.stack().len(), 2);
        assert_eq!(std::fs::read(d.join("result")).unwrap(), b"success");
    }
}

#[tokio::test]
async fn a_failed_open_abandons_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lowers = two_lowers(d).await;
    let trace_path = d.join("trace");
    std::fs::write(&trace_path, b"").unwrap();
    let config = write_config(
        d,
        &lowers,
        serde_json::json!({ "recordTracePath": trace_path }),
    );
    std::fs::remove_file(d.join("l1/overlaybd.commit")).unwrap();
    let err = Image::open_config_file(&config, &LocalOpener)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lowers[1]"), "{err}");
    wait_for(&companion(&trace_path, ".lock"), true).await;
    assert_eq!(std::fs::read(&trace_path).unwrap(), b"");
    assert!(!companion(&trace_path, ".ok").exists());
}

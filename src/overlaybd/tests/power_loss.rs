//! Power loss on append layers: the unsynced tails of the data and index files reach the disk
//! independently. Reopening keeps every flushed operation, drops the rest back to a consistent
//! prefix (with a warning), and later appends survive the next reopen (`writable` module doc).

use super::*;

/// Lengths of the two files of layer `name` in `dir`.
fn lens(dir: &Path, name: &str) -> (u64, u64) {
    let len = |ext: &str| {
        std::fs::metadata(dir.join(format!("{name}.{ext}")))
            .unwrap()
            .len()
    };
    (len("data"), len("index"))
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

thread_local! {
    /// What WARN events logged on this thread wrote, while a capture is running.
    static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Writes to this thread's capture, if one is running (else nowhere).
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| {
            if let Some(buf) = c.borrow_mut().as_mut() {
                buf.extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` and returns its result and the WARN (and above) lines it logged on this thread.
///
/// One process-wide subscriber, installed on first use, writes each thread's events to that
/// thread's capture. A scoped subscriber (`with_default`) per test lost events now and then
/// (about one run in forty): a callsite whose interest another test's thread cached while no
/// subscriber of its own was set stays "never" for everyone. With one global subscriber every
/// thread agrees, so the interest is always right.
fn capture_warnings<T>(f: impl FnOnce() -> T) -> (T, String) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(|| ThreadSink)
            .finish();
        // Fails only if another global subscriber exists, which the lib tests never set.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = f();
    let log = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (out, String::from_utf8_lossy(&log).into_owned())
}

/// A write of `len` sectors at `sector`.
fn w(sector: u64, len: u64, seed: u8) -> Op {
    Op::Write { sector, len, seed }
}

/// A discard of `len` sectors at `sector`.
fn z(sector: u64, len: u64) -> Op {
    Op::Discard { sector, len }
}

async fn read_all(layer: &WritableLayer) -> Vec<u8> {
    let vsize = layer.virtual_size() as usize;
    layer.read(0, vsize).await.unwrap().to_vec()
}

/// Flushed writes and discards, then unflushed ones; `(model after the flushed part, synced
/// data length, synced index length)`.
async fn synced_then_unsynced(dir: &Path) -> (Vec<u8>, u64, u64) {
    let layer = new_layer(dir, "w", VSECTORS * S);
    let flushed = [w(0, 32, 1), w(100, 16, 2), z(8, 8)];
    apply_layer(&layer, &flushed).await;
    layer.flush().await.unwrap();
    let mut model = vec![0u8; (VSECTORS * S) as usize];
    apply_model(&mut model, &flushed);
    let (data_len, index_len) = lens(dir, "w");
    let unflushed = [w(4, 8, 3), z(100, 4), w(200, 40, 4)];
    apply_layer(&layer, &unflushed).await;
    (model, data_len, index_len)
}

/// The ordinary delalloc outcome: the index tail reached the disk, the data tail did not.
#[tokio::test]
async fn lost_data_tail_drops_unsynced_records_and_keeps_flushed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut model, data_len, index_len) = synced_then_unsynced(d).await;
    set_len(&d.join("w.data"), data_len);

    let (layer, log) = capture_warnings(|| reopen(d, "w"));
    assert!(
        read_all(&layer).await == model,
        "flushed state after recovery"
    );
    // The three unflushed records are gone from the file, not only from memory.
    assert_eq!(lens(d, "w"), (data_len, index_len));
    assert!(log.contains("WARN") && log.contains("w.index"), "{log}");
    assert!(log.contains("dropped_records=3"), "{log}");
    assert!(
        log.contains(&format!("{index_len}..{}", index_len + 48)),
        "{log}"
    );
    assert!(
        log.contains("write of sectors 4+8") && log.contains("discard of sectors 100+4"),
        "{log}"
    );

    // Writing goes on, and what is written after recovery survives the next reopen.
    let more = [w(60, 8, 9), z(0, 2)];
    apply_layer(&layer, &more).await;
    apply_model(&mut model, &more);
    layer.flush().await.unwrap();
    drop(layer);
    let (layer, log) = capture_warnings(|| reopen(d, "w"));
    assert!(read_all(&layer).await == model, "after a second reopen");
    assert!(log.is_empty(), "a clean reopen warns: {log}");
}

/// The data file cut inside the first unsynced piece, plus a torn final index record.
#[tokio::test]
async fn data_cut_mid_record_and_torn_index_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut model, data_len, index_len) = synced_then_unsynced(d).await;
    set_len(&d.join("w.data"), data_len + 700);
    append(&d.join("w.index"), &Record::data(9, 1, 8).encode()[..9]);

    let (layer, log) = capture_warnings(|| reopen(d, "w"));
    assert!(read_all(&layer).await == model);
    assert_eq!(lens(d, "w").1, index_len);
    assert!(log.contains("dropped_records=3"), "{log}");
    // The next append starts on a sector boundary past the partial one.
    let op = [w(250, 6, 7)];
    apply_layer(&layer, &op).await;
    apply_model(&mut model, &op);
    drop(layer);
    let layer = reopen(d, "w");
    assert!(read_all(&layer).await == model);
    assert_eq!(
        layer.lookup(250, 6),
        vec![Record::data(250, 6, (data_len + 1024) / S)]
    );
}

/// An index page that never reached the disk reads as zeros; records after it are not
/// trusted even when their data happens to be present, and appends go after the kept prefix.
#[tokio::test]
async fn zeroed_index_page_stops_replay_and_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, _, index_len) = synced_then_unsynced(d).await;
    let ipath = d.join("w.index");
    set_len(&ipath, index_len);
    let mut tail = vec![0u8; 4096];
    tail.extend_from_slice(&Record::data(0, 8, 8).encode());
    append(&ipath, &tail);

    let (layer, log) = capture_warnings(|| reopen(d, "w"));
    assert!(read_all(&layer).await == model);
    assert!(log.contains("dropped_records=257"), "{log}");
    assert!(log.contains("and 249 more records"), "{log}");
    drop(layer);
    assert_eq!(lens(d, "w").1, index_len);
}

/// Old code fails the open outright; now a dangling record is dropped and reported instead.
#[tokio::test]
async fn dangling_record_after_flush_is_dropped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layer = new_layer(d, "w", 1 << 20);
    layer.write(0, Bytes::from(pattern(4, 1))).await.unwrap();
    layer.flush().await.unwrap();
    drop(layer);
    append(&d.join("w.index"), &Record::data(50, 4, 100).encode());
    let (layer, log) = capture_warnings(|| reopen(d, "w"));
    assert_eq!(layer.records(), vec![Record::data(0, 4, 8)]);
    assert!(log.contains("write of sectors 50+4"), "{log}");
}

/// A crash cut of an append layer after `ops`, flushed after the first `synced` of them.
#[derive(Debug, Clone)]
struct Crash {
    ops: Vec<Op>,
    synced: usize,
    /// Where in the unsynced data tail the data file is cut (fraction of it, in 1/256).
    data_cut: u8,
    /// Where in the unsynced index tail the index file is cut (fraction, in 1/256).
    index_cut: u8,
    /// Zero-fill this many whole records at the start of what is left of the unsynced index
    /// tail (an index block that never reached the disk; blocks hold whole records).
    zeroed: u16,
}

fn crash_strategy() -> impl Strategy<Value = Crash> {
    (
        prop::collection::vec(op_strategy(VSECTORS), 1..30),
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<u8>(),
        prop_oneof![3 => Just(0u16), 1 => 1..8u16],
    )
        .prop_map(|(ops, at, data_cut, index_cut, zeroed)| Crash {
            synced: at.index(ops.len() + 1),
            ops,
            data_cut,
            index_cut,
            zeroed,
        })
}

/// Cuts `[synced, now)` of the file at `path` at `frac`/256 of the way, then zero-fills `zero`
/// bytes of what stays past `synced`.
fn cut(path: &Path, synced: u64, now: u64, frac: u8, zero: u64) {
    let len = synced + (now - synced) * u64::from(frac) / 256;
    set_len(path, len);
    let zero = zero.min(len - synced);
    if zero > 0 {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![0u8; zero as usize], synced).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any power-loss cut of the unsynced tails reopens without error to the state after some
    /// prefix of the operations that includes every flushed one; appends after recovery
    /// survive the next reopen.
    #[test]
    fn any_crash_cut_recovers_a_prefix_with_every_flushed_op(c in crash_strategy()) {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let layer = new_layer(d, "w", VSECTORS * S);
            apply_layer(&layer, &c.ops[..c.synced]).await;
            layer.flush().await.unwrap();
            let (ds, is) = lens(d, "w");
            apply_layer(&layer, &c.ops[c.synced..]).await;
            drop(layer);
            let (dn, inow) = lens(d, "w");
            cut(&d.join("w.data"), ds, dn, c.data_cut, 0);
            cut(&d.join("w.index"), is, inow, c.index_cut, u64::from(c.zeroed) * RECORD_SIZE as u64);

            let layer = WritableLayer::open(&d.join("w.data"), &d.join("w.index")).unwrap();
            // Every op here is one record, so the kept record count is the kept op count.
            let (_, kept_len) = lens(d, "w");
            let kept = ((kept_len - HEADER_SIZE as u64) / RECORD_SIZE as u64) as usize;
            assert!(kept >= c.synced && kept <= c.ops.len(), "kept {kept} of {} ops, {} synced", c.ops.len(), c.synced);
            let mut model = vec![0u8; (VSECTORS * S) as usize];
            apply_model(&mut model, &c.ops[..kept]);
            assert!(read_all(&layer).await == model, "state after {kept} ops differs");

            let more = [w(3, 5, 77)];
            apply_layer(&layer, &more).await;
            apply_model(&mut model, &more);
            drop(layer);
            let layer = reopen(d, "w");
            assert!(read_all(&layer).await == model, "append after recovery differs");
        });
    }
}

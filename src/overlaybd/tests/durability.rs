//! Acknowledged writes survive SIGKILL of the writing process, for image LUNs (append and sparse
//! uppers, through the block device a LUN serves) and file LUNs, over several kill cycles:
//! everything before a completed flush, and every FUA write the process reported as done.

use std::io::BufRead;

use super::*;
use crate::block::FileDevice;
use crate::overlaybd::LocalOpener;

const BLOCKS: u64 = 64;
const KILL_CYCLES: u8 = 3;
/// FUA writes the parent waits to see acknowledged before it kills the child.
const FUA_SEEN: usize = 8;

/// The kinds of LUN the cycles run against.
const KINDS: [&str; 3] = ["image-append", "image-sparse", "file"];

/// Creates the LUN of `kind` in `dir`.
fn make_lun(dir: &Path, kind: &str) {
    let size = BLOCKS * 8 * S;
    if kind == "file" {
        let f = std::fs::File::create(dir.join("disk.raw")).unwrap();
        f.set_len(size).unwrap();
        return;
    }
    let opts = CreateOptions {
        sparse: kind == "image-sparse",
        ..CreateOptions::new(size)
    };
    drop(create_layer(dir, "w", &opts));
    let json = serde_json::json!({
        "lowers": [],
        "upper": { "data": dir.join("w.data"), "index": dir.join("w.index") },
    });
    std::fs::write(dir.join("config.v1.json"), json.to_string()).unwrap();
}

/// Opens the LUN of `kind` in `dir` as the block device the target would serve.
async fn open_lun(dir: &Path, kind: &str) -> Arc<dyn BlockDevice> {
    if kind == "file" {
        Arc::new(FileDevice::open(&dir.join("disk.raw"), false).unwrap())
    } else {
        Arc::new(
            Image::open_config_file(&dir.join("config.v1.json"), &LocalOpener)
                .await
                .unwrap(),
        )
    }
}

/// The churn pattern of cycle `cycle` (written after the flush, some of it with FUA).
fn churn(cycle: u8) -> Vec<u8> {
    pattern(8, 200u8.wrapping_add(cycle))
}

/// The flushed pattern of block `i` in cycle `cycle`.
fn flushed(i: u64, cycle: u8) -> Vec<u8> {
    pattern(8, (i as u8).wrapping_add(cycle.wrapping_mul(64)))
}

/// Child half of [`acknowledged_writes_survive_kill_9_cycles`]: writes, unmaps, flushes,
/// reports, then keeps writing (every third write FUA, reported once done) until killed.
#[test]
#[ignore = "child process of acknowledged_writes_survive_kill_9_cycles, which runs it"]
fn kill9_child() {
    let (Ok(dir), Ok(kind), Ok(cycle)) = (
        std::env::var("OVERLAYBD_KILL9_DIR"),
        std::env::var("OVERLAYBD_KILL9_KIND"),
        std::env::var("OVERLAYBD_KILL9_CYCLE"),
    ) else {
        return;
    };
    let cycle: u8 = cycle.parse().unwrap();
    rt().block_on(async {
        let lun = open_lun(Path::new(&dir), &kind).await;
        for i in 0..BLOCKS {
            lun.write(i * 8 * S, Bytes::from(flushed(i, cycle)), false)
                .await
                .unwrap();
        }
        if lun.can_unmap() {
            lun.unmap(8 * S, 8 * S).await.unwrap();
        }
        lun.flush().await.unwrap();
        println!("FLUSHED");
        let mut i = 0u64;
        loop {
            let block = (i * 7) % BLOCKS;
            let fua = i % 3 == 0;
            lun.write(block * 8 * S, Bytes::from(churn(cycle)), fua)
                .await
                .unwrap();
            if fua {
                println!("FUA {block}");
            }
            i += 1;
        }
    });
}

/// Runs one kill cycle of `kind`: returns the blocks whose FUA writes the child acknowledged.
fn kill_cycle(dir: &Path, kind: &str, cycle: u8) -> Vec<u64> {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overlaybd::tests::durability::kill9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OVERLAYBD_KILL9_DIR", dir)
        .env("OVERLAYBD_KILL9_KIND", kind)
        .env("OVERLAYBD_KILL9_CYCLE", cycle.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let flushed = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("FLUSHED"));
    let fua: Vec<u64> = lines
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("FUA ").map(|b| b.parse().unwrap()))
        .take(FUA_SEEN)
        .collect();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        flushed,
        "{kind} cycle {cycle}: child never reported its flush"
    );
    assert_eq!(
        fua.len(),
        FUA_SEEN,
        "{kind} cycle {cycle}: too few FUA writes"
    );
    fua
}

/// SIGKILLs a writer after its flush and several FUA writes, several times per LUN kind:
/// reopening finds every flushed write and unmap, and every acknowledged FUA write.
#[test]
fn acknowledged_writes_survive_kill_9_cycles() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        make_lun(dir.path(), kind);
        for cycle in 0..KILL_CYCLES {
            let fua = kill_cycle(dir.path(), kind, cycle);
            rt().block_on(async {
                let lun = open_lun(dir.path(), kind).await;
                let all = lun.read(0, (BLOCKS * 8 * S) as usize).await.unwrap();
                for i in 0..BLOCKS {
                    let got = &all[(i * 8 * S) as usize..((i + 1) * 8 * S) as usize];
                    let what = format!("{kind} cycle {cycle} block {i}");
                    if fua.contains(&i) {
                        assert!(got == churn(cycle), "{what}: FUA write lost");
                    } else if i == 1 && lun.can_unmap() {
                        // Unmapped, unless a later (unflushed) churn write landed.
                        let zero = got.iter().all(|&b| b == 0);
                        assert!(zero || got == churn(cycle), "{what}");
                    } else {
                        assert!(got == flushed(i, cycle) || got == churn(cycle), "{what}");
                    }
                }
            });
        }
    }
}

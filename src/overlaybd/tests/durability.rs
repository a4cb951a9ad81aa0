//! Flushed writes survive SIGKILL of the writing process.

use super::*;

/// Child half of [`flushed_writes_survive_kill_9`]: writes, flushes, reports, keeps writing.
#[test]
#[ignore = "child process of flushed_writes_survive_kill_9, which runs it"]
fn kill9_child() {
    let Ok(dir) = std::env::var("OVERLAYBD_KILL9_DIR") else {
        return;
    };
    rt().block_on(async {
        let layer = reopen(Path::new(&dir), "w");
        for i in 0..64u64 {
            layer
                .write(i * 8 * S, Bytes::from(pattern(8, i as u8)))
                .await
                .unwrap();
        }
        layer.discard(8 * S, 8 * S).await.unwrap();
        layer.flush().await.unwrap();
        println!("FLUSHED");
        // Unflushed churn until killed.
        let mut i = 0u64;
        loop {
            layer
                .write((i % 64) * 8 * S, Bytes::from(pattern(8, 200)))
                .await
                .unwrap();
            i += 1;
        }
    });
}

/// Kills a process with SIGKILL after its flush returned: reopening finds every flushed write.
#[test]
fn flushed_writes_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    drop(new_layer(dir.path(), "w", 1 << 20));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overlaybd::tests::durability::kill9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OVERLAYBD_KILL9_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let flushed = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("FLUSHED"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(flushed, "child never reported its flush");
    let layer = reopen(dir.path(), "w");
    rt().block_on(async {
        let all = layer.read(0, (64 * 8 * S) as usize).await.unwrap();
        for i in 0..64u64 {
            let got = &all[(i * 8 * S) as usize..((i + 1) * 8 * S) as usize];
            if i == 1 {
                // Discarded, unless a later unflushed overwrite landed; never anything else.
                assert!(
                    got.iter().all(|&b| b == 0) || got == pattern(8, 200),
                    "block {i}"
                );
            } else {
                assert!(
                    got == pattern(8, i as u8) || got == pattern(8, 200),
                    "block {i}"
                );
            }
        }
    });
}

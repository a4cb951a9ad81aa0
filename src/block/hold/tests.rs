//! The policy's text form, and the design note's claims attacked with a scripted device on a
//! paused clock: held commands end when the device answers, `fail` keeps its deadline even
//! when the first attempt hangs, only remote failures are retried, and an aborted command
//! stops being held.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A device whose reads and writes fail with [`BlockError::Remote`] until `healthy_after`
/// attempts were made (`usize::MAX`: never), or hang when `hang` is set.
struct Flaky {
    attempts: AtomicUsize,
    healthy_after: usize,
    hang: bool,
    other_error: bool,
    written: Mutex<Vec<Bytes>>,
}

impl Flaky {
    fn new(healthy_after: usize) -> Arc<Flaky> {
        Arc::new(Flaky {
            attempts: AtomicUsize::new(0),
            healthy_after,
            hang: false,
            other_error: false,
            written: Mutex::default(),
        })
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    async fn attempt(&self) -> BlockResult<()> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.other_error {
            return Err(BlockError::Corrupt("bad block".into()));
        }
        if n < self.healthy_after {
            return Err(BlockError::Remote(format!("registry down (attempt {n})")));
        }
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for Flaky {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_unmap(&self) -> bool {
        false
    }
    async fn read(&self, _offset: u64, len: usize) -> BlockResult<Bytes> {
        self.attempt().await?;
        Ok(Bytes::from(vec![7u8; len]))
    }
    async fn write(&self, _offset: u64, data: Bytes, _fua: bool) -> BlockResult<()> {
        self.attempt().await?;
        self.written.lock().push(data);
        Ok(())
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn unmap(&self, _offset: u64, _len: u64) -> BlockResult<()> {
        Ok(())
    }
    async fn block_status(&self, offset: u64) -> BlockResult<BlockStatus> {
        Err(BlockError::OutOfRange {
            offset,
            len: 0,
            size: 0,
        })
    }
}

fn held(inner: &Arc<Flaky>, policy: &str) -> HeldDevice {
    HeldDevice::new(
        inner.clone(),
        policy.parse().expect("policy"),
        "registry:test/app".into(),
    )
}

#[test]
fn policies_parse_and_print_back() {
    for (text, policy, printed) in [
        ("hold", RemoteFailurePolicy::default(), "hold:10m"),
        (
            "hold:forever",
            RemoteFailurePolicy::Hold { deadline: None },
            "hold:forever",
        ),
        (
            "hold:90s",
            RemoteFailurePolicy::Hold {
                deadline: Some(Duration::from_secs(90)),
            },
            "hold:90s",
        ),
        (
            "hold:2h",
            RemoteFailurePolicy::Hold {
                deadline: Some(Duration::from_secs(7200)),
            },
            "hold:2h",
        ),
        (
            "fail",
            RemoteFailurePolicy::Fail {
                deadline: Duration::from_secs(20),
            },
            "fail:20s",
        ),
        (
            "fail:1500ms",
            RemoteFailurePolicy::Fail {
                deadline: Duration::from_millis(1500),
            },
            "fail:1500ms",
        ),
    ] {
        let parsed: RemoteFailurePolicy = text.parse().expect(text);
        assert_eq!(parsed, policy, "{text}");
        assert_eq!(parsed.to_string(), printed, "{text}");
        assert_eq!(printed.parse::<RemoteFailurePolicy>(), Ok(policy));
    }
    for bad in [
        "",
        "hold:",
        "hold:10",
        "hold:0s",
        "hold:-1s",
        "hold:1y",
        "fail:forever",
        "retry",
        "hold:99999999999999999d",
        "HOLD",
    ] {
        let e = bad.parse::<RemoteFailurePolicy>().expect_err(bad);
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_read_is_answered_once_the_registry_is_back() {
    let flaky = Flaky::new(6);
    let device = held(&flaky, "hold:10m");
    let started = Instant::now();
    let data = device.read(0, 512).await.expect("held, then served");
    assert_eq!(&data[..], &[7u8; 512][..]);
    assert_eq!(flaky.attempts(), 7);
    // Pauses 0.25 + 0.5 + 1 + 2 + 4 + 4 s between the seven attempts.
    assert_eq!(started.elapsed(), Duration::from_millis(11_750));
    assert_eq!(device.holds.lock().count, 0, "nothing is held any more");
}

#[tokio::test(start_paused = true)]
async fn hold_forever_outlasts_a_day_long_outage() {
    let flaky = Flaky::new(22_000);
    let device = held(&flaky, "hold:forever");
    let started = Instant::now();
    device.read(0, 512).await.expect("served in the end");
    assert!(started.elapsed() > Duration::from_secs(86_400));
}

#[tokio::test(start_paused = true)]
async fn a_hold_deadline_fails_the_command_with_the_last_error() {
    let flaky = Flaky::new(usize::MAX);
    let device = held(&flaky, "hold:90s");
    let started = Instant::now();
    let e = device
        .read(0, 512)
        .await
        .expect_err("the registry never came back");
    assert_eq!(started.elapsed(), Duration::from_secs(90));
    let BlockError::Remote(message) = e else {
        panic!("{e:?}")
    };
    assert!(
        message.contains("registry:test/app: gave up after 90s (hold:90s policy)"),
        "{message}"
    );
    let last = flaky.attempts() - 1;
    assert!(
        message.ends_with(&format!("registry down (attempt {last})")),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_ends_even_a_hanging_first_attempt_at_its_deadline() {
    let flaky = Arc::new(Flaky {
        hang: true,
        ..Arc::try_unwrap(Flaky::new(0)).ok().expect("sole owner")
    });
    let device = held(&flaky, "fail:20s");
    let started = Instant::now();
    let e = device.read(0, 512).await.expect_err("no answer");
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!(flaky.attempts(), 1);
    assert!(
        matches!(&e, BlockError::Remote(m) if m.ends_with("gave up after 20s (fail:20s policy)")),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_retries_within_its_deadline() {
    let flaky = Flaky::new(3);
    let device = held(&flaky, "fail:20s");
    device.read(0, 512).await.expect("recovered within 20 s");
    assert_eq!(flaky.attempts(), 4);
}

#[tokio::test(start_paused = true)]
async fn only_remote_failures_are_retried() {
    let flaky = Arc::new(Flaky {
        other_error: true,
        ..Arc::try_unwrap(Flaky::new(0)).ok().expect("sole owner")
    });
    let device = held(&flaky, "hold:forever");
    let e = device.read(0, 512).await.expect_err("damaged bytes fail");
    assert!(matches!(e, BlockError::Corrupt(_)), "{e:?}");
    assert_eq!(flaky.attempts(), 1);
    let e = device.block_status(0).await.expect_err("passed through");
    assert!(matches!(e, BlockError::OutOfRange { .. }), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn a_held_write_is_written_once_with_its_data() {
    let flaky = Flaky::new(2);
    let device = held(&flaky, "hold");
    device
        .write(4096, Bytes::from_static(b"note"), false)
        .await
        .expect("written after the outage");
    assert_eq!(
        flaky.written.lock().as_slice(),
        [Bytes::from_static(b"note")]
    );
}

#[tokio::test(start_paused = true)]
async fn an_aborted_command_stops_being_held_at_once() {
    let flaky = Flaky::new(usize::MAX);
    let device = Arc::new(held(&flaky, "hold:forever"));
    let task = tokio::spawn({
        let device = Arc::clone(&device);
        async move { device.read(0, 512).await }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        device.holds.lock().count,
        1,
        "held while the registry is down"
    );
    // ABORT TASK: the session aborts the command's task.
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    assert_eq!(device.holds.lock().count, 0);
    let attempts = flaky.attempts();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(flaky.attempts(), attempts, "no attempt after the abort");
}

#[tokio::test(start_paused = true)]
async fn concurrent_holds_are_counted_per_device() {
    let flaky = Flaky::new(40);
    let device = Arc::new(held(&flaky, "hold"));
    let reads: Vec<_> = (0..4)
        .map(|i| {
            let device = Arc::clone(&device);
            tokio::spawn(async move { device.read(i * 512, 512).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(device.holds.lock().count, 4);
    for r in reads {
        r.await.expect("joined").expect("served");
    }
    assert_eq!(device.holds.lock().count, 0);
}

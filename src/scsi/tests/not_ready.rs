//! LUNs whose backing is unavailable (NOT READY), out of space (DATA PROTECT 27/07), and the
//! log lines I/O errors leave.

use std::sync::Mutex;

use super::*;
use crate::block::{Unavailable, UnavailableDevice};

/// A target whose LUN 0 works and LUN 1 failed to open for `reason`.
fn target_with_broken_lun(reason: Unavailable) -> ScsiTarget {
    ScsiTarget::new(vec![
        lun_config(Arc::new(RamDevice::new(BLOCKS * 512))),
        lun_config(Arc::new(UnavailableDevice::new(reason))),
    ])
}

/// A nexus whose power-on unit attention on `lun` is already consumed.
async fn past_power_on(t: &ScsiTarget, name: &str, lun: u64) -> Nexus {
    let n = nexus(name);
    let first = exec_lun(t, &n, lun, &TUR, 0, &[]).await;
    assert_sense(&first, sense::key::UNIT_ATTENTION, 0x29, 0x00);
    n
}

#[tokio::test]
async fn media_commands_on_an_unavailable_lun_answer_not_ready_with_the_reason() {
    for (reason, asc, ascq) in [
        (Unavailable::Missing, 0x3a, 0x00),
        (Unavailable::Corrupt, 0x31, 0x00),
        (Unavailable::Unreachable, 0x08, 0x00),
        (Unavailable::Failed, 0x04, 0x03),
    ] {
        let t = target_with_broken_lun(reason);
        let n = past_power_on(&t, "a", 1).await;
        let read_capacity10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let read_capacity16 = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (cdb, len, out) in [
            (&TUR[..], 0, &[][..]),
            (&read_capacity10[..], 8, &[][..]),
            (&read_capacity16[..], 32, &[][..]),
            (&read10(0, 1)[..], 512, &[][..]),
            (&write10(0, 1)[..], 512, &[0u8; 512][..]),
            (&sync[..], 0, &[][..]),
        ] {
            let r = exec_lun(&t, &n, 1, cdb, len, out).await;
            assert_sense(&r, sense::key::NOT_READY, asc, ascq);
        }
        // REQUEST SENSE reports the condition as data.
        let r = exec_lun(&t, &n, 1, &[0x03, 0, 0, 0, 18, 0], 18, &[]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!((r.data_in[2], r.data_in[12], r.data_in[13]), (2, asc, ascq));
    }
}

#[tokio::test]
async fn an_unavailable_lun_still_answers_inquiry_and_report_luns() {
    let t = target_with_broken_lun(Unavailable::Missing);
    let n = nexus("a");
    let inquiry = exec_lun(&t, &n, 1, &[0x12, 0, 0, 0, 96, 0], 96, &[]).await;
    assert_eq!(inquiry.status, status::GOOD);
    // Peripheral qualifier 0 (the LUN exists), device type 0 (direct access).
    assert_eq!(inquiry.data_in[0], 0x00);
    let serial = exec_lun(&t, &n, 1, &[0x12, 1, 0x80, 0, 64, 0], 64, &[]).await;
    assert_eq!(serial.status, status::GOOD);
    let report = exec_lun(
        &t,
        &n,
        1,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
        64,
        &[],
    )
    .await;
    assert_eq!(report.status, status::GOOD);
    assert_eq!(
        &report.data_in[0..4],
        &16u32.to_be_bytes(),
        "two LUNs listed"
    );
    // The other LUN works.
    let n = ready(&t, "b").await;
    assert_eq!(
        exec(&t, &n, &read10(0, 1), 512, &[]).await.status,
        status::GOOD
    );
}

#[tokio::test]
async fn a_write_that_finds_no_space_answers_space_allocation_failed() {
    // What FileDevice and the image layers turn ENOSPC into.
    let no_space = || BlockError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
    let t = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice { write: no_space }))]);
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &write10(8, 1), 512, &[1u8; 512]).await;
    assert_sense(&r, sense::key::DATA_PROTECT, 0x27, 0x07);
    // The LUN stays ready.
    assert_eq!(exec(&t, &n, &TUR, 0, &[]).await.status, status::GOOD);
}

#[tokio::test]
async fn a_device_found_unavailable_later_makes_the_lun_not_ready() {
    let gone = || BlockError::Unavailable(Unavailable::Failed);
    let t = ScsiTarget::new(vec![lun_config(Arc::new(BrokenDevice { write: gone }))]);
    let n = ready(&t, "a").await;
    let r = exec(&t, &n, &write10(0, 1), 512, &[1u8; 512]).await;
    assert_sense(&r, sense::key::NOT_READY, 0x04, 0x03);
    // From now on the LUN is NOT READY, reads included.
    assert_sense(&exec(&t, &n, &TUR, 0, &[]).await, 2, 0x04, 0x03);
    assert_sense(&exec(&t, &n, &read10(0, 1), 512, &[]).await, 2, 0x04, 0x03);
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn io_errors_are_logged_once_per_interval_with_target_lun_and_lba() {
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let t = ScsiTarget::named(
        "iqn.2026-11.test:logged",
        vec![
            lun_config(Arc::new(RamDevice::new(BLOCKS * 512))),
            lun_config(Arc::new(BrokenDevice::ON_FIRE)),
        ],
    );
    let n = past_power_on(&t, "a", 1).await;
    for _ in 0..5 {
        let r = exec_lun(&t, &n, 1, &read10(42, 2), 1024, &[]).await;
        assert_sense(&r, sense::key::MEDIUM_ERROR, 0x11, 0);
    }
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("I/O error")).collect();
    assert_eq!(lines.len(), 1, "rate limited to one line: {text}");
    let line = lines[0];
    for part in [
        "WARN",
        "target=iqn.2026-11.test:logged",
        "lun=1",
        "lba=42",
        "blocks=2",
        "disk on fire",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
}

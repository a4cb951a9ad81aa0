//! A registry outage as an initiator sees it, through the whole target: an image LUN over a
//! fault proxy that blacks the registry out on demand (connections reset). With the default
//! `hold` policy a read of uncached bytes waits, the session stays alive (NOP-Out answered),
//! and the read returns the right bytes once the registry is back; ABORT TASK and LUN RESET
//! end a held read at once. With `fail:DURATION` cached reads carry on and uncached ones get
//! MEDIUM ERROR within the deadline.

mod common;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{pattern, Initiator, LoginKeys, TestServer};
use overlaybd_target::cache::settings::HttpConfig;
use overlaybd_target::config::Tuning;
use overlaybd_target::iscsi::pdu::{
    LunField, NopOut, Pdu, TaskMgmtRequest, TmfFunction, TmfResponseCode, RESERVED_TAG,
};
use support::fault_proxy::{Fault, FaultProxy, Link};
use support::http_server::{blob_server, TestServer as HttpServer};
use support::images::write_config;

/// The image's size: 8 MiB of incompressible data, so every 256 KiB of the device is its own
/// cache unit.
const IMAGE: usize = 8 << 20;

/// A one-layer image in an in-test registry behind a fault proxy.
struct Registry {
    content: Bytes,
    _server: HttpServer,
    proxy: FaultProxy,
    blackout: Arc<AtomicBool>,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let content = pattern(IMAGE, 71);
        let (blob, digest) = support::images::imported_layer(dir.path(), &content);
        let server = blob_server(&blob).await;
        let blackout = Arc::new(AtomicBool::new(false));
        let proxy = FaultProxy::start(server.addr, Link::default(), {
            let blackout = Arc::clone(&blackout);
            move |_, _| {
                if blackout.load(Ordering::SeqCst) {
                    Fault::Reset
                } else {
                    Fault::Pass
                }
            }
        })
        .await;
        let config = write_config(
            dir.path(),
            &format!("{}/v2/team/app/blobs", proxy.url()),
            serde_json::json!({ "digest": digest, "size": blob.len() }),
        );
        Registry {
            content,
            _server: server,
            proxy,
            blackout,
            config,
            _dir: dir,
        }
    }

    /// A target serving the image as LUN 0 with `options` after the backing (e.g.
    /// `,remote_failure=fail:2s`), its cache in a folder of its own.
    async fn serve(&self, options: &str) -> TestServer {
        let lun = format!("image:{}{options}", self.config.display());
        let mut config = common::config(
            &[&lun],
            Tuning {
                nop_interval: None,
                ..Tuning::default()
            },
        );
        let cache = self
            .config
            .parent()
            .unwrap()
            .join(format!("cache{}", rand_suffix()));
        let images = &mut config.images;
        images.cache_config.cache_dir = Some(cache.display().to_string());
        images.http_config = HttpConfig {
            connect_timeout_ms: 500,
            request_timeout_ms: 2_000,
            retries: 1,
            retry_backoff_ms: 5,
            retry_backoff_max_ms: 20,
            ..HttpConfig::default()
        };
        TestServer::start_config(config).await
    }

    fn set_blackout(&self, on: bool) {
        self.blackout.store(on, Ordering::SeqCst);
    }
}

fn rand_suffix() -> u64 {
    rand::random::<u64>()
}

/// Logs in and waits until LUN 0 reads (the image opens in the background).
async fn ready_initiator(server: &TestServer) -> Initiator {
    let mut ini = Initiator::logged_in(server.addr, &LoginKeys::default()).await;
    ini.clear_unit_attention(0).await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let itt = ini.start_read10(0, 0, 8).await;
        let (status, _, _) = ini.finish_read(itt).await;
        if status == 0 {
            return ini;
        }
        assert!(Instant::now() < until, "the image LUN never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A NOP-Out that asks for an answer; asserts the NOP-In echo arrives.
async fn ping(ini: &mut Initiator, itt: u32) {
    let nop = NopOut {
        immediate: true,
        lun: LunField::default(),
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
        data: Bytes::from_static(b"alive?"),
    };
    ini.send(&Pdu::NopOut(nop)).await;
    match ini.recv_within(Duration::from_secs(5)).await {
        Ok(Some(Pdu::NopIn(reply))) => assert_eq!(reply.itt, itt),
        other => panic!("no NOP-In while a read is held: {other:?}"),
    }
}

/// Block `lba`'s offset in bytes.
fn at(lba: u32) -> usize {
    lba as usize * 512
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_read_returns_the_right_bytes_once_the_registry_is_back() {
    let registry = Registry::start().await;
    let server = registry.serve("").await;
    let mut ini = ready_initiator(&server).await;

    registry.set_blackout(true);
    let faults_before = registry.proxy.faults();
    let lba = 10_000; // ~4.9 MiB in: not fetched at open or by the first read
    let itt = ini.start_read10(0, lba, 64).await;
    // Held, not failed: nothing comes back while the registry is out.
    let early = ini.recv_within(Duration::from_millis(1500)).await;
    assert!(
        matches!(early, Err(())),
        "answered during the outage: {early:?}"
    );
    assert!(
        registry.proxy.faults() > faults_before,
        "the target kept asking the registry"
    );
    // The session is alive while the read waits.
    ping(&mut ini, 0x7001).await;
    let gauge = overlaybd_target::metrics::global().render();
    let held = gauge
        .lines()
        .find_map(|l| l.strip_prefix("overlaybd_target_held_commands "))
        .and_then(|v| v.trim().parse::<i64>().ok());
    assert!(
        held.is_some_and(|n| n >= 1),
        "held commands gauge: {held:?}"
    );

    registry.set_blackout(false);
    let (status, data, sense) = ini.finish_read(itt).await;
    assert_eq!(status, 0, "sense {sense:?}");
    assert!(
        data[..] == registry.content[at(lba)..at(lba) + 64 * 512],
        "the held read returned wrong bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_task_and_lun_reset_end_a_held_read_at_once() {
    let registry = Registry::start().await;
    let server = registry.serve(",remote_failure=hold:forever").await;
    let mut ini = ready_initiator(&server).await;
    registry.set_blackout(true);

    for function in [TmfFunction::ABORT_TASK, TmfFunction::LOGICAL_UNIT_RESET] {
        let itt = ini.start_read10(0, 12_000, 8).await;
        assert!(matches!(
            ini.recv_within(Duration::from_millis(800)).await,
            Err(())
        ));
        let tmf_itt = ini.itt();
        let req = TaskMgmtRequest {
            immediate: true,
            function,
            lun: LunField::from_number(0).unwrap(),
            itt: tmf_itt,
            referenced_task_tag: if function == TmfFunction::ABORT_TASK {
                itt
            } else {
                RESERVED_TAG
            },
            cmd_sn: ini.cmd_sn,
            exp_stat_sn: ini.exp_stat_sn,
            ref_cmd_sn: ini.cmd_sn.wrapping_sub(1),
            exp_data_sn: 0,
        };
        let asked = Instant::now();
        ini.send(&Pdu::TaskMgmtRequest(req)).await;
        // The TMF answer comes at once, and the aborted read gets no response at all.
        match ini.recv_within(Duration::from_secs(5)).await {
            Ok(Some(Pdu::TaskMgmtResponse(rsp))) => {
                assert_eq!(
                    (rsp.itt, rsp.response),
                    (tmf_itt, TmfResponseCode::COMPLETE)
                );
            }
            other => panic!("{function:?}: expected the TMF response, got {other:?}"),
        }
        assert!(asked.elapsed() < Duration::from_secs(5));
        if function == TmfFunction::LOGICAL_UNIT_RESET {
            // The reset's unit attention comes with the next command.
            ini.clear_unit_attention(0).await;
        }
    }
    // The session carries on: a cached block reads while the registry is still out.
    let itt = ini.start_read10(0, 0, 8).await;
    let (status, data, _) = ini.finish_read(itt).await;
    assert_eq!(status, 0);
    assert!(data[..] == registry.content[..8 * 512]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_serves_cached_bytes_and_fails_uncached_reads_within_its_deadline() {
    let registry = Registry::start().await;
    let server = registry.serve(",remote_failure=fail:2s").await;
    let mut ini = ready_initiator(&server).await;
    registry.set_blackout(true);

    let itt = ini.start_read10(0, 0, 8).await;
    let (status, data, _) = ini.finish_read(itt).await;
    assert_eq!(status, 0, "a cached block reads during the outage");
    assert!(data[..] == registry.content[..8 * 512]);

    let started = Instant::now();
    let itt = ini.start_read10(0, 14_000, 8).await;
    let (status, _, sense) = ini.finish_read(itt).await;
    let took = started.elapsed();
    let sense = sense.expect("CHECK CONDITION carries sense");
    assert_eq!(
        (status, sense[2] & 0x0f, sense[12]),
        (2, 3, 0x11),
        "MEDIUM ERROR, UNRECOVERED READ ERROR"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "failed after {took:?}, the deadline is 2 s"
    );

    registry.set_blackout(false);
    let itt = ini.start_read10(0, 14_000, 8).await;
    let (status, data, _) = ini.finish_read(itt).await;
    assert_eq!(status, 0, "the same read works once the registry is back");
    assert!(data[..] == registry.content[at(14_000)..at(14_000) + 8 * 512]);
}

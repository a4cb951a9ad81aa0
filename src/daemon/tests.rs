//! The control plane's promises, checked on a started daemon without the HTTP layer: a change
//! either completes or leaves nothing behind, LUN numbers are never handed out twice, and a
//! LUN that fails to open never disturbs the others.

use std::collections::BTreeSet;
use std::path::Path;

use super::control::ControlError;
use super::model::{AddLun, AddTarget, LunState};
use super::{Daemon, DaemonOptions};
use crate::config::{Config, LunSpec, TargetConfig};

const IQN: &str = "iqn.2026-12.io.overlaybd:unit";

fn config(luns: &[&str]) -> Config {
    let luns = luns.iter().map(|l| LunSpec::parse(l).unwrap()).collect();
    Config::single(
        vec!["127.0.0.1:0".parse().unwrap()],
        TargetConfig::open(IQN, luns),
    )
}

async fn start(luns: &[&str], state: Option<&Path>) -> Daemon {
    let options = DaemonOptions {
        state: state.map(Path::to_path_buf),
        ..DaemonOptions::default()
    };
    Daemon::start(config(luns), options).await.unwrap()
}

fn lun(backing: &str) -> AddLun {
    AddLun {
        backing: backing.to_string(),
        lun: None,
        read_only: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_get_distinct_numbers() {
    let daemon = start(&["ram:1M"], None).await;
    let control = daemon.control();
    let adds = (0..32).map(|_| {
        let control = control.clone();
        tokio::spawn(async move { control.add_lun(IQN, lun("ram:1M")).await })
    });
    let mut numbers = BTreeSet::new();
    for add in adds {
        numbers.insert(add.await.unwrap().unwrap().lun);
    }
    assert_eq!(numbers, (1..=32).collect());
    let target = control.target(IQN).unwrap();
    assert_eq!(target.luns.len(), 33);
    assert!(target.luns.iter().all(|l| l.state == LunState::Ready));
}

#[tokio::test]
async fn a_backing_that_cannot_open_adds_nothing() {
    let daemon = start(&["ram:1M"], None).await;
    let control = daemon.control();
    let before = control.target(IQN).unwrap();
    let e = control
        .add_lun(IQN, lun("file:/nonexistent/disk.img"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::OpenFailed(m) if m.contains("/nonexistent/disk.img")),
        "{e:?}"
    );
    assert_eq!(control.target(IQN).unwrap(), before);
    // The number it had claimed is free again.
    assert_eq!(control.add_lun(IQN, lun("ram:1M")).await.unwrap().lun, 1);
}

#[tokio::test]
async fn a_declared_lun_that_fails_is_reported_and_the_others_serve() {
    let daemon = start(&["file:/nonexistent/disk.img", "ram:1M"], None).await;
    let luns = daemon.control().target(IQN).unwrap().luns;
    assert_eq!(luns[0].state, LunState::Failed);
    let reason = luns[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains("/nonexistent/disk.img"), "{reason}");
    assert_eq!(
        (luns[1].state, luns[1].size_bytes),
        (LunState::Ready, Some(1 << 20))
    );
}

#[tokio::test]
async fn a_change_whose_state_cannot_be_saved_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("state");
    let daemon = start(&["ram:1M"], Some(&folder.join("state.json"))).await;
    // A regular file where the state file's folder must be: every save fails.
    std::fs::write(&folder, b"").unwrap();
    let control = daemon.control();
    let before = control.status();

    let e = control.add_lun(IQN, lun("ram:1M")).await.unwrap_err();
    assert!(matches!(e, ControlError::Unavailable(_)), "{e:?}");
    let e = control.remove_lun(IQN, 0, true).await.unwrap_err();
    assert!(matches!(e, ControlError::Unavailable(_)), "{e:?}");
    let add = AddTarget {
        name: "iqn.2026-12.io.overlaybd:other".into(),
        alias: None,
        allowed_initiators: vec![],
        chap: None,
        mutual_chap: None,
        allow_target_reset: false,
    };
    let e = control.add_target(add).await.unwrap_err();
    assert!(matches!(e, ControlError::Unavailable(_)), "{e:?}");
    let e = control.remove_target(IQN, true).await.unwrap_err();
    assert!(matches!(e, ControlError::Unavailable(_)), "{e:?}");
    assert_eq!(control.status(), before);
}

#[tokio::test]
async fn changes_survive_a_restart_and_removed_config_luns_stay_removed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    {
        let daemon = start(&["ram:1M", "ram:2M"], Some(&state)).await;
        let control = daemon.control();
        let mut add = lun("ram:4M");
        add.lun = Some(9);
        assert_eq!(control.add_lun(IQN, add).await.unwrap().lun, 9);
        control.remove_lun(IQN, 0, false).await.unwrap();
    }
    let daemon = start(&["ram:1M", "ram:2M"], Some(&state)).await;
    let luns: Vec<(u64, Option<u64>)> = daemon
        .control()
        .target(IQN)
        .unwrap()
        .luns
        .iter()
        .map(|l| (l.lun, l.size_bytes))
        .collect();
    assert_eq!(luns, vec![(1, Some(2 << 20)), (9, Some(4 << 20))]);
}

fn invalid<T>(r: Result<T, ControlError>) -> bool {
    matches!(r, Err(ControlError::Invalid(_)))
}

#[tokio::test]
async fn bad_requests_are_refused_with_their_reason() {
    let daemon = start(&["ram:1M"], None).await;
    let control = daemon.control();
    assert!(invalid(control.add_lun(IQN, lun("tape:1")).await));
    let mut far = lun("ram:1M");
    far.lun = Some(super::MAX_LUN + 1);
    assert!(invalid(control.add_lun(IQN, far).await));
    let mut taken = lun("ram:1M");
    taken.lun = Some(0);
    assert!(matches!(
        control.add_lun(IQN, taken).await,
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        control
            .add_lun("iqn.2026-12.io.overlaybd:none", lun("ram:1M"))
            .await,
        Err(ControlError::NotFound(_))
    ));
    assert!(matches!(
        control.remove_lun(IQN, 7, false).await,
        Err(ControlError::NotFound(_))
    ));
    let bad_name = AddTarget {
        name: "not an iqn".into(),
        alias: None,
        allowed_initiators: vec![],
        chap: None,
        mutual_chap: None,
        allow_target_reset: false,
    };
    assert!(invalid(control.add_target(bad_name).await));
    let duplicate = AddTarget {
        name: IQN.to_uppercase().replace("IQN.", "iqn."),
        alias: None,
        allowed_initiators: vec![],
        chap: None,
        mutual_chap: None,
        allow_target_reset: false,
    };
    assert!(matches!(
        control.add_target(duplicate).await,
        Err(ControlError::Conflict(_))
    ));
}

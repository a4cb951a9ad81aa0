//! Where open-iscsi's sessions and their disks appear in sysfs, read from a root folder that
//! is `/sys` on a host and a built tree in tests.
//!
//! A session is `class/iscsi_session/sessionN` with a `targetname` file; its `device` link
//! leads to `…/hostH/sessionN`, under which each LUN is `targetH:C:T/H:C:T:L` with the disk's
//! name in `block/`. A disk's own `class/block/sdX` link leads back through the same path, so
//! both directions read the same layout.

use std::path::{Path, PathBuf};

/// A disk of an iSCSI session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDisk {
    /// The kernel's session name (`session3`).
    pub session: String,
    /// The target's iSCSI name.
    pub target: String,
    /// The LUN number.
    pub lun: u64,
    /// The disk's name (`sdb`).
    pub disk: String,
}

fn read_trimmed(path: &Path) -> Option<String> {
    Some(std::fs::read_to_string(path).ok()?.trim().to_string())
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = read
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    out
}

/// The LUN number of a SCSI device name `H:C:T:L`.
fn lun_of(hctl: &str) -> Option<u64> {
    let parts: Vec<&str> = hctl.split(':').collect();
    match parts.as_slice() {
        [h, c, t, l] if [h, c, t].iter().all(|p| p.parse::<u32>().is_ok()) => l.parse().ok(),
        _ => None,
    }
}

/// Every disk of every iSCSI session under `sys`.
pub fn session_disks(sys: &Path) -> Vec<SessionDisk> {
    let mut out = Vec::new();
    for (session, dir) in entries(&sys.join("class/iscsi_session")) {
        let Some(target) = read_trimmed(&dir.join("targetname")) else {
            continue;
        };
        for (name, target_dir) in entries(&dir.join("device")) {
            if !name.starts_with("target") {
                continue;
            }
            for (hctl, unit) in entries(&target_dir) {
                let Some(lun) = lun_of(&hctl) else { continue };
                for (disk, _) in entries(&unit.join("block")) {
                    out.push(SessionDisk {
                        session: session.clone(),
                        target: target.clone(),
                        lun,
                        disk,
                    });
                }
            }
        }
    }
    out
}

/// The sessions logged in to `target` (by the kernel's session name).
pub fn sessions_of(sys: &Path, target: &str) -> Vec<String> {
    entries(&sys.join("class/iscsi_session"))
        .into_iter()
        .filter(|(_, dir)| read_trimmed(&dir.join("targetname")).as_deref() == Some(target))
        .map(|(name, _)| name)
        .collect()
}

/// The disk of LUN `lun` of `target`, if a session has it.
pub fn find_disk(sys: &Path, target: &str, lun: u64) -> Option<SessionDisk> {
    session_disks(sys)
        .into_iter()
        .find(|d| d.target == target && d.lun == lun)
}

/// The session disk named `disk` (`sdb`, or a path `/dev/sdb`).
pub fn disk_by_name(sys: &Path, disk: &str) -> Option<SessionDisk> {
    let name = disk.rsplit('/').next().unwrap_or(disk);
    session_disks(sys).into_iter().find(|d| d.disk == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds the sysfs shape of one session with disks (real folders stand for the links).
    fn session(sys: &Path, n: u32, target: &str, disks: &[(u64, &str)]) {
        let dir = sys.join(format!("class/iscsi_session/session{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("targetname"), format!("{target}\n")).unwrap();
        for (lun, disk) in disks {
            let unit = dir.join(format!("device/target{n}:0:0/{n}:0:0:{lun}/block/{disk}"));
            std::fs::create_dir_all(unit).unwrap();
        }
        // Other entries of a session's device folder are not targets.
        std::fs::create_dir_all(dir.join("device/power")).unwrap();
    }

    #[test]
    fn disks_are_found_by_target_and_lun_and_by_name() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        assert!(session_disks(sys).is_empty(), "no iscsi_session class");
        session(sys, 1, "iqn.a", &[(0, "sda"), (3, "sdc")]);
        session(sys, 2, "iqn.b", &[(0, "sdb")]);
        session(sys, 4, "iqn.c", &[]);
        let d = find_disk(sys, "iqn.a", 3).unwrap();
        assert_eq!((d.session.as_str(), d.disk.as_str()), ("session1", "sdc"));
        assert_eq!(find_disk(sys, "iqn.b", 0).unwrap().disk, "sdb");
        assert_eq!(find_disk(sys, "iqn.b", 1), None);
        assert_eq!(find_disk(sys, "iqn.c", 0), None);
        assert_eq!(disk_by_name(sys, "/dev/sdb").unwrap().target, "iqn.b");
        assert_eq!(disk_by_name(sys, "sda").unwrap().lun, 0);
        assert_eq!(disk_by_name(sys, "sdz"), None);
        assert_eq!(sessions_of(sys, "iqn.c"), ["session4"]);
        assert!(sessions_of(sys, "iqn.z").is_empty());
    }

    #[test]
    fn lun_numbers_come_from_h_c_t_l_names_only() {
        assert_eq!(lun_of("2:0:0:17"), Some(17));
        assert_eq!(lun_of("2:0:0"), None);
        assert_eq!(lun_of("power"), None);
        assert_eq!(lun_of("a:0:0:1"), None);
    }
}

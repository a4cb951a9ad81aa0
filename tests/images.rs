//! overlaybd images end to end with the real binary: its image tools (`export`, `inspect`,
//! `import`, `build`, `create`, `commit`, `merge`), `--lun image:CONFIG.json` served over
//! iSCSI and read or written with qemu-img (iscsi driver) and libiscsi's tools, filesystems
//! checked with e2fsprogs (mkfs.ext4 -d, debugfs, e2fsck).

mod common;
mod support;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use support::fixtures::{fixture, require};
use support::process::{binary, run, run_fails, tool, Target};
use support::raw_initiator::read10;

const IQN: &str = "iqn.2026-11.io.overlaybd:images";
const DEMO_IQN: &str = "iqn.2026-11.io.overlaybd:demo";
const FS_SIZE: u64 = 64 << 20;

/// Runs a tool subcommand of the binary, asserting success.
fn obd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    run(binary().args(args))
}

/// A directory tree of `files` (path, contents); `None` contents make a directory.
fn tree(root: &Path, files: &[(&str, &[u8])]) {
    std::fs::create_dir_all(root).unwrap();
    for (path, data) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// `mkfs.ext4 -d tree` into a new raw file of [`FS_SIZE`] bytes.
fn mkfs(tree: &Path, raw: &Path) {
    std::fs::File::create(raw)
        .unwrap()
        .set_len(FS_SIZE)
        .unwrap();
    run(tool("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(raw));
}

fn e2fsck_clean(raw: &Path) {
    run(tool("e2fsck").arg("-fn").arg(raw));
}

/// `debugfs -R 'cat PATH'`: the file's contents, or `None` when debugfs reports it missing.
fn debugfs_cat(raw: &Path, path: &str) -> Option<Vec<u8>> {
    let out = tool("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(raw)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return None;
    }
    assert!(out.status.success(), "debugfs failed: {err}");
    Some(out.stdout)
}

/// Reads the whole LUN through iSCSI into a new raw file.
fn qemu_read(url: &str, out: &Path) {
    run(tool("qemu-img")
        .args(["convert", "-O", "raw", url])
        .arg(out));
}

/// Writes a raw file over the LUN through iSCSI.
fn qemu_write(raw: &Path, url: &str) -> std::process::Output {
    tool("qemu-img")
        .args(["convert", "-n", "-O", "raw"])
        .arg(raw)
        .arg(url)
        .output()
        .unwrap()
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "{a:?} and {b:?} differ in size");
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{a:?} and {b:?} differ first at byte {i}");
    }
}

/// The value of `key` in a `key: value` report.
fn field(report: &str, key: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{report}"))
        .to_string()
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    common::pattern(len, seed).to_vec()
}

fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn fixture_exports_to_a_clean_ext4_and_inspects() {
    let Some(_) = require("ext4_64") else { return };
    let base = fixture("ext4_64");
    let report = obd(&[&"inspect", &base]);
    // The values documented for the fixture (shared/fixtures/README.md).
    for (key, value) in [
        ("format", "zfile"),
        ("zfile.algorithm", "lz4"),
        ("zfile.block_size", "4096"),
        ("zfile.blocks", "132309"),
        ("zfile.verify", "true"),
        ("zfile.original_file_size", "541937664"),
        ("lsmt.kind", "sealed"),
        ("lsmt.virtual_size", "68719476736"),
        ("lsmt.uuid", "C02FB491-B4D4-4904-8684-A014D032AF78"),
        ("lsmt.parent_uuid", "00000000-0000-0000-0000-000000000000"),
        ("lsmt.index_records_stored", "8448"),
        ("lsmt.extents", "8323"),
    ] {
        assert_eq!(field(&report, key), value, "{report}");
    }

    let dir = tempfile::tempdir().unwrap();
    let raw = p(dir.path(), "ext4_64.raw");
    obd(&[&"export", &base, &raw]);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 64 << 30);
    let mut head = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&raw).unwrap(), &mut head, 0)
        .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&head)),
        "7afc8295bdfac4e6189e2a10850384e91391d02e0e6d4931e1f7f09f9d54420b"
    );
    e2fsck_clean(&raw);
    // Refuses to overwrite without -f, with a message naming the file.
    let err = run_fails(binary().arg("export").arg(&base).arg(&raw));
    assert!(err.contains("ext4_64.raw"), "{err}");
}

/// Trees A → B → C: B changes, adds and deletes files of A; C does it again.
fn three_trees(root: &Path) -> [PathBuf; 3] {
    let big = noise(300 << 10, 1);
    let mut big_c = big.clone();
    big_c[100_000..140_000].copy_from_slice(&noise(40_000, 2));
    let a = p(root, "tree-a");
    tree(
        &a,
        &[
            ("etc/hostname", b"layer-a\n"),
            ("data/keep.txt", b"kept in every layer\n"),
            ("data/change.txt", b"version 1\n"),
            ("data/delete-in-b.txt", b"gone in B\n"),
            ("big.bin", &big),
        ],
    );
    let b = p(root, "tree-b");
    tree(
        &b,
        &[
            ("etc/hostname", b"layer-b\n"),
            ("data/keep.txt", b"kept in every layer\n"),
            ("data/change.txt", b"version 2\n"),
            ("data/new-in-b.txt", b"added in B, deleted in C\n"),
            ("big.bin", &big),
        ],
    );
    let c = p(root, "tree-c");
    tree(
        &c,
        &[
            ("etc/hostname", b"layer-c\n"),
            ("data/keep.txt", b"kept in every layer\n"),
            ("data/change.txt", b"version 3\n"),
            ("c/added.txt", b"added in C\n"),
            ("big.bin", &big_c),
        ],
    );
    [a, b, c]
}

/// Bytes of 4 KiB blocks where `new` differs from `old` and is not all zeros: what an import
/// of `new` on top of `old` must store.
fn changed_nonzero_bytes(old: &Path, new: &Path) -> u64 {
    let (o, n) = (std::fs::read(old).unwrap(), std::fs::read(new).unwrap());
    o.chunks(4096)
        .zip(n.chunks(4096))
        .filter(|(x, y)| x != y && y.iter().any(|&b| b != 0))
        .map(|(_, y)| y.len() as u64)
        .sum()
}

#[test]
fn three_layer_stack_from_mkfs_trees_serves_through_iscsi() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let trees = three_trees(d);
    let raws: Vec<PathBuf> = ["a.raw", "b.raw", "c.raw"]
        .iter()
        .map(|n| p(d, n))
        .collect();
    for (t, r) in trees.iter().zip(&raws) {
        mkfs(t, r);
    }
    // Base from A (LZ4), B on top (ZSTD), C on top (ZSTD, 16 KiB blocks).
    obd(&[
        &"import",
        &"-z",
        &raws[0],
        &p(d, "l0.obd"),
        &p(d, "c0.json"),
    ]);
    obd(&[
        &"import",
        &"-z",
        &"--algorithm",
        &"zstd",
        &"--base",
        &p(d, "c0.json"),
        &raws[1],
        &p(d, "l1.obd"),
        &p(d, "c1.json"),
    ]);
    obd(&[
        &"import",
        &"-z",
        &"--algorithm",
        &"zstd",
        &"--bs",
        &"16",
        &"-m",
        &"tree C",
        &"--base",
        &p(d, "c1.json"),
        &raws[2],
        &p(d, "l2.obd"),
        &p(d, "c2.json"),
    ]);
    let config = p(d, "c2.json");

    let report = obd(&[&"inspect", &config]);
    assert_eq!(field(&report, "config.lowers"), "3");
    assert_eq!(field(&report, "uuid_chain"), "ok");
    assert_eq!(field(&report, "lowers[0].zfile.algorithm"), "lz4");
    assert_eq!(field(&report, "lowers[1].zfile.algorithm"), "zstd");
    assert_eq!(field(&report, "lowers[2].zfile.block_size"), "16384");
    assert_eq!(field(&report, "lowers[2].lsmt.user_tag"), "tree C");
    assert_eq!(field(&report, "image.virtual_size"), FS_SIZE.to_string());
    assert_eq!(field(&report, "image.read_only"), "true");
    // Upper layers hold exactly the blocks that changed.
    for (i, (old, new)) in [(0, 1), (1, 2)].into_iter().enumerate() {
        let stored: u64 = field(&report, &format!("lowers[{}].lsmt.mapped_bytes", i + 1))
            .parse()
            .unwrap();
        assert_eq!(stored, changed_nonzero_bytes(&raws[old], &raws[new]));
        assert!(
            stored < FS_SIZE / 4,
            "layer {} stores {stored} bytes",
            i + 1
        );
    }

    let target = Target::start(&[
        "--target",
        IQN,
        "--lun",
        &format!("image:{}", config.display()),
    ]);
    let cap = run(tool("iscsi-readcapacity16").arg(target.url(IQN, 0)));
    assert!(
        cap.contains(&format!(
            "RETURNED LOGICAL BLOCK ADDRESS:{}",
            FS_SIZE / 512 - 1
        )),
        "{cap}"
    );
    let via = p(d, "via-iscsi.raw");
    qemu_read(&target.url(IQN, 0), &via);
    // Read-only without an upper: writes are refused.
    assert!(!qemu_write(&raws[0], &target.url(IQN, 0)).status.success());
    assert!(target.stop().success());

    let exported = p(d, "exported.raw");
    obd(&[&"export", &config, &exported]);
    assert_same_file(&via, &exported);
    assert_same_file(&via, &raws[2]);
    e2fsck_clean(&via);
    assert_eq!(debugfs_cat(&via, "/etc/hostname").unwrap(), b"layer-c\n");
    assert_eq!(
        debugfs_cat(&via, "/data/change.txt").unwrap(),
        b"version 3\n"
    );
    assert_eq!(
        debugfs_cat(&via, "/data/keep.txt").unwrap(),
        b"kept in every layer\n"
    );
    assert_eq!(debugfs_cat(&via, "/c/added.txt").unwrap(), b"added in C\n");
    assert_eq!(
        debugfs_cat(&via, "/big.bin").unwrap(),
        std::fs::read(trees[2].join("big.bin")).unwrap()
    );
    assert_eq!(debugfs_cat(&via, "/data/delete-in-b.txt"), None);
    assert_eq!(debugfs_cat(&via, "/data/new-in-b.txt"), None);

    // The middle of the stack still reads as B.
    let mid = p(d, "b-exported.raw");
    obd(&[&"export", &p(d, "c1.json"), &mid]);
    assert_same_file(&mid, &raws[1]);

    // Layers stacked out of order break the UUID chain, and inspect says where.
    let mut wrong: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    wrong["lowers"].as_array_mut().unwrap().remove(1);
    let wrong_config = p(d, "wrong.json");
    std::fs::write(&wrong_config, wrong.to_string()).unwrap();
    let chain = field(&obd(&[&"inspect", &wrong_config]), "uuid_chain");
    assert!(chain.starts_with("broken at lowers[1]"), "{chain}");

    // Merging flattens the stack into one layer with the same disk.
    obd(&[&"merge", &"-z", &config, &p(d, "merged.obd")]);
    let merged = p(d, "merged.raw");
    obd(&[&"export", &p(d, "merged.obd"), &merged]);
    assert_same_file(&merged, &raws[2]);
}

#[test]
fn build_makes_layers_from_directories() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [a, b, _] = three_trees(d);
    obd(&[
        &"build",
        &"-z",
        &"--size",
        &"64M",
        &a,
        &p(d, "l0.obd"),
        &p(d, "c0.json"),
    ]);
    obd(&[
        &"build",
        &"-z",
        &"--algorithm",
        &"zstd",
        &"--base",
        &p(d, "c0.json"),
        &b,
        &p(d, "l1.obd"),
        &p(d, "c1.json"),
    ]);
    let raw = p(d, "b.raw");
    obd(&[&"export", &p(d, "c1.json"), &raw]);
    e2fsck_clean(&raw);
    assert_eq!(
        debugfs_cat(&raw, "/data/change.txt").unwrap(),
        b"version 2\n"
    );
    assert_eq!(debugfs_cat(&raw, "/data/delete-in-b.txt"), None);
    assert!(
        !p(d, "l1.obd.build-raw").exists(),
        "scratch file left behind"
    );

    let err = run_fails(
        binary()
            .arg("build")
            .arg(d.join("no-such-dir"))
            .arg(p(d, "x"))
            .arg(p(d, "y")),
    );
    assert!(
        err.contains("no-such-dir") && err.contains("not a directory"),
        "{err}"
    );
    let err = run_fails(binary().arg("build").arg(&a).arg(p(d, "x")).arg(p(d, "y")));
    assert!(err.contains("--size"), "{err}");
}

#[test]
fn writable_image_lun_keeps_writes_across_restarts_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [a, b, _] = three_trees(d);
    let (a_raw, b_raw) = (p(d, "a.raw"), p(d, "b.raw"));
    mkfs(&a, &a_raw);
    mkfs(&b, &b_raw);
    obd(&[&"import", &"-z", &a_raw, &p(d, "l0.obd"), &p(d, "c0.json")]);
    let base_uuid = field(&obd(&[&"inspect", &p(d, "l0.obd")]), "lsmt.uuid");
    let (data, index) = (p(d, "upper.data"), p(d, "upper.index"));
    obd(&[&"create", &"-u", &base_uuid, &data, &index, &"64M"]);
    // The default is the sparse layout (bounded on disk): an empty index file.
    let upper = obd(&[&"inspect", &data]);
    assert_eq!(field(&upper, "lsmt.kind"), "writable data (sparse)");
    assert_eq!(field(&upper, "lsmt.parent_uuid"), base_uuid);
    assert_eq!(field(&upper, "lsmt.virtual_size"), FS_SIZE.to_string());
    assert_eq!(std::fs::metadata(&index).unwrap().len(), 0);
    // `--append` makes the reference's default append-only layout.
    let (adata, aindex) = (p(d, "append.data"), p(d, "append.index"));
    obd(&[&"create", &"--append", &adata, &aindex, &"64M"]);
    assert_eq!(
        field(&obd(&[&"inspect", &adata]), "lsmt.kind"),
        "writable data"
    );
    assert_eq!(
        field(&obd(&[&"inspect", &aindex]), "lsmt.kind"),
        "writable index"
    );
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p(d, "c0.json")).unwrap()).unwrap();
    config["upper"] = serde_json::json!({ "data": data, "index": index });
    let rw_config = p(d, "rw.json");
    std::fs::write(&rw_config, config.to_string()).unwrap();
    let lun = format!("image:{}", rw_config.display());

    let target = Target::start(&["--target", IQN, "--lun", &lun]);
    let out = qemu_write(&b_raw, &target.url(IQN, 0));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = p(d, "first.raw");
    qemu_read(&target.url(IQN, 0), &first);
    assert_same_file(&first, &b_raw);
    assert!(target.stop().success());

    let target = Target::start(&["--target", IQN, "--lun", &lun]);
    let again = p(d, "again.raw");
    qemu_read(&target.url(IQN, 0), &again);
    assert_same_file(&again, &b_raw);
    assert!(target.stop().success());

    // Commit the upper and serve the committed stack read-only.
    obd(&[
        &"commit",
        &"-z",
        &"--algorithm",
        &"zstd",
        &"-p",
        &base_uuid,
        &data,
        &index,
        &p(d, "l1.obd"),
    ]);
    let l1 = obd(&[&"inspect", &p(d, "l1.obd")]);
    assert_eq!(field(&l1, "lsmt.parent_uuid"), base_uuid);
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p(d, "c0.json")).unwrap()).unwrap();
    config["lowers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "file": p(d, "l1.obd") }));
    let ro_config = p(d, "committed.json");
    std::fs::write(&ro_config, config.to_string()).unwrap();
    let target = Target::start(&[
        "--target",
        IQN,
        "--lun",
        &format!("image:{}", ro_config.display()),
        "--lun",
        &format!("ro:{lun}"),
    ]);
    let committed = p(d, "committed.raw");
    qemu_read(&target.url(IQN, 0), &committed);
    assert_same_file(&committed, &b_raw);
    e2fsck_clean(&committed);
    assert_eq!(
        debugfs_cat(&committed, "/etc/hostname").unwrap(),
        b"layer-b\n"
    );
    // Both the committed image and the ro: view of the writable one refuse writes.
    assert!(!qemu_write(&a_raw, &target.url(IQN, 0)).status.success());
    assert!(!qemu_write(&a_raw, &target.url(IQN, 1)).status.success());
    let ro_view = p(d, "ro-view.raw");
    qemu_read(&target.url(IQN, 1), &ro_view);
    assert_same_file(&ro_view, &b_raw);
    assert!(target.stop().success());
}

#[test]
fn without_luns_the_demo_image_is_served() {
    let target = Target::start(&[]);
    let url = target.url(DEMO_IQN, 0);
    let inq = run(tool("iscsi-inq").arg(&url));
    assert!(inq.contains("DIRECT_ACCESS"), "{inq}");
    let cap = run(tool("iscsi-readcapacity16").arg(&url));
    assert!(
        cap.contains("RETURNED LOGICAL BLOCK ADDRESS:16383"),
        "{cap}"
    );
    let dir = tempfile::tempdir().unwrap();
    let raw = p(dir.path(), "demo.raw");
    qemu_read(&url, &raw);
    assert!(
        !qemu_write(&raw, &url).status.success(),
        "the demo is read-only"
    );
    assert!(target.stop().success());
    e2fsck_clean(&raw);
    let readme = String::from_utf8(debugfs_cat(&raw, "/README").unwrap()).unwrap();
    assert!(readme.contains("overlaybd-target"), "{readme}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_zfile_block_fails_only_the_reads_that_cover_it() {
    use common::{Initiator, LoginKeys};
    const DISK: usize = 4 << 20;
    const CHUNK: usize = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let content = noise(DISK, 7);
    std::fs::write(p(d, "disk.raw"), &content).unwrap();
    obd(&[
        &"import",
        &"-z",
        &p(d, "disk.raw"),
        &p(d, "l0.obd"),
        &p(d, "c0.json"),
    ]);
    // Flip one bit in the middle of the blob: inside a compressed data block, whose CRC32C
    // then fails.
    let blob = p(d, "l0.obd");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&blob, &bytes).unwrap();

    let target = Target::start(&[
        "--target",
        IQN,
        "--lun",
        &format!("image:{}", p(d, "c0.json").display()),
    ]);
    let mut ini = Initiator::connect(target.addr()).await;
    ini.login_normal(IQN, &LoginKeys::default()).await;
    let read = |lba: usize, blocks: usize| read10(lba as u32, blocks as u16);
    let mut failed = Vec::new();
    for chunk in 0..DISK / CHUNK {
        let cdb = read(chunk * CHUNK / 512, CHUNK / 512);
        let itt = ini
            .command(
                0,
                &cdb,
                true,
                false,
                CHUNK as u32,
                bytes::Bytes::new(),
                true,
            )
            .await;
        let (status, data, sense) = ini.finish_read(itt).await;
        if status == 0 {
            assert_eq!(
                &data[..],
                &content[chunk * CHUNK..][..CHUNK],
                "chunk {chunk}"
            );
        } else {
            let sense = sense.expect("CHECK CONDITION carries sense data");
            // MEDIUM ERROR, UNRECOVERED READ ERROR.
            assert_eq!((status, sense[2] & 0x0f, sense[12]), (2, 3, 0x11));
            failed.push(chunk);
        }
    }
    assert_eq!(failed.len(), 1, "failing chunks: {failed:?}");
    // Within the failing chunk exactly one 4 KiB block (one ZFile block) is unreadable.
    let base = failed[0] * CHUNK;
    let mut bad_blocks = 0;
    for block in 0..CHUNK / 4096 {
        let at = base + block * 4096;
        let itt = ini
            .command(
                0,
                &read(at / 512, 8),
                true,
                false,
                4096,
                bytes::Bytes::new(),
                true,
            )
            .await;
        let (status, data, _) = ini.finish_read(itt).await;
        if status == 0 {
            assert_eq!(&data[..], &content[at..at + 4096]);
        } else {
            bad_blocks += 1;
        }
    }
    assert_eq!(bad_blocks, 1);
    // The session lives on.
    assert_eq!(&ini.read10(0, 0, 8).await[..], &content[..4096]);
    // A whole-disk copy with qemu-img fails on that range.
    let url = target.url(IQN, 0);
    let out = p(d, "out.raw");
    let copy = tokio::task::spawn_blocking(move || {
        tool("qemu-img")
            .args(["convert", "-O", "raw", &url])
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!copy.status.success());
    assert!(target.stop().success());
}

#[test]
fn zfile_round_trips_and_tools_refuse_bad_inputs_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut data = noise(300_000, 3);
    data.extend(std::iter::repeat_n(b'z', 200_000));
    let src = p(d, "data.bin");
    std::fs::write(&src, &data).unwrap();
    for (algo, bs) in [("lz4", "4"), ("zstd", "32")] {
        let z = p(d, &format!("data.{algo}.zfile"));
        let back = p(d, &format!("data.{algo}.back"));
        obd(&[&"zfile", &"--algorithm", &algo, &"--bs", &bs, &src, &z]);
        let report = obd(&[&"inspect", &z]);
        assert_eq!(field(&report, "zfile.algorithm"), algo);
        assert_eq!(
            field(&report, "zfile.original_file_size"),
            data.len().to_string()
        );
        assert!(std::fs::metadata(&z).unwrap().len() < data.len() as u64);
        obd(&[&"zfile", &"-d", &z, &back]);
        assert_eq!(std::fs::read(&back).unwrap(), data);
    }

    // Not a ZFile, not LSMT.
    let err = run_fails(binary().args(["zfile", "-d"]).arg(&src).arg(p(d, "x")));
    assert!(
        err.contains("data.bin") && err.contains("not a ZFile"),
        "{err}"
    );
    // `inspect` of a file that is no image prints what it found and fails.
    let out = binary().arg("inspect").arg(&src).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        field(&String::from_utf8_lossy(&out.stdout), "format"),
        "unknown (neither ZFile nor LSMT)"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data.bin") && err.contains("not an overlaybd layer"),
        "{err}"
    );
    let err = run_fails(binary().arg("export").arg(&src).arg(p(d, "x.raw")));
    assert!(err.contains("data.bin"), "{err}");
    // A truncated ZFile.
    let z = std::fs::read(p(d, "data.lz4.zfile")).unwrap();
    let cut = p(d, "cut.zfile");
    std::fs::write(&cut, &z[..z.len() / 2]).unwrap();
    let err = run_fails(binary().arg("inspect").arg(&cut));
    assert!(err.contains("cut.zfile"), "{err}");
    // Bad options and configs.
    let err = run_fails(
        binary()
            .args(["zfile", "--bs", "3"])
            .arg(&src)
            .arg(p(d, "y")),
    );
    assert!(err.contains("--bs 3"), "{err}");
    let bad = p(d, "bad.json");
    std::fs::write(&bad, r#"{"lowers": [{"file": "/nonexistent/layer.obd"}]}"#).unwrap();
    let err = run_fails(binary().arg("export").arg(&bad).arg(p(d, "z.raw")));
    assert!(err.contains("/nonexistent/layer.obd"), "{err}");
    let err = run_fails(binary().args(["create", "-u", "not-a-uuid", "a", "b", "1G"]));
    assert!(err.contains("not-a-uuid"), "{err}");
    let err = run_fails(
        binary()
            .args(["create"])
            .arg(p(d, "d"))
            .arg(p(d, "i"))
            .arg("1000"),
    );
    assert!(err.contains("multiple of 512"), "{err}");
    let err = run_fails(
        binary()
            .args(["create", "-s", "--append"])
            .arg(p(d, "d"))
            .arg(p(d, "i"))
            .arg("1M"),
    );
    assert!(err.contains("--append"), "{err}");
    // With --strict the server refuses a LUN whose image cannot be opened, naming it.
    let err = run_fails(
        binary()
            .args(["--portal", "127.0.0.1:0", "--strict", "--lun"])
            .arg(format!("image:{}", bad.display())),
    );
    assert!(
        err.contains("bad.json") && err.contains("/nonexistent/layer.obd"),
        "{err}"
    );
}

/// The first-run errors that used to mislead: a `lower` typo or empty `lowers` (was "smaller
/// than one 512-byte block"), a layer blob given to `--lun image:` (was "stream did not contain
/// valid UTF-8"; now served as a one-layer image), a file that is neither (names both), and a
/// broken UUID chain (was served silently; now a warning naming the layer, as overlaybd serves
/// it too).
#[test]
fn first_run_image_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [a, b, _] = three_trees(d);
    let (a_raw, b_raw) = (p(d, "a.raw"), p(d, "b.raw"));
    mkfs(&a, &a_raw);
    mkfs(&b, &b_raw);
    // Two independent bottom layers: each has the nil parent and its own uuid.
    obd(&[&"import", &a_raw, &p(d, "a.obd"), &p(d, "a.json")]);
    obd(&[&"import", &b_raw, &p(d, "b.obd"), &p(d, "b.json")]);
    let a_uuid = field(&obd(&[&"inspect", &p(d, "a.obd")]), "lsmt.uuid");

    let strict_start = |backing: String| {
        run_fails(
            binary()
                .args([
                    "--portal",
                    "127.0.0.1:0",
                    "--strict",
                    "--no-api",
                    "--no-state",
                ])
                .args(["--lun", &backing]),
        )
    };
    let typo = p(d, "typo.json");
    std::fs::write(
        &typo,
        format!(
            r#"{{"lower": [{{"file": "{}"}}]}}"#,
            p(d, "a.obd").display()
        ),
    )
    .unwrap();
    let err = strict_start(format!("image:{}", typo.display()));
    assert!(
        err.contains("typo.json")
            && err.contains("`lowers`")
            && err.contains("not read: `lower`")
            && !err.contains("512-byte"),
        "{err}"
    );
    let empty = p(d, "empty.json");
    std::fs::write(&empty, r#"{"lowers": []}"#).unwrap();
    let err = strict_start(format!("image:{}", empty.display()));
    assert!(
        err.contains("empty.json") && err.contains("no layer"),
        "{err}"
    );
    let text = p(d, "notes.txt");
    std::fs::write(&text, "not an image\n").unwrap();
    let err = strict_start(format!("image:{}", text.display()));
    assert!(
        err.contains("notes.txt")
            && err.contains("neither an image config")
            && err.contains("layer blob"),
        "{err}"
    );

    // A layer blob is served as a one-layer, read-only image of its file system.
    let target = Target::start(&[
        "--target",
        IQN,
        "--lun",
        &format!("image:{}", p(d, "a.obd").display()),
    ]);
    let out = p(d, "blob-first-mib.raw");
    support::process::copy_first_mib(&target.url(IQN, 0), out.to_str().unwrap());
    let a_bytes = std::fs::read(&a_raw).unwrap();
    assert!(
        std::fs::read(&out).unwrap() == a_bytes[..1 << 20],
        "the blob's first MiB is the raw file system's"
    );
    let inq = run(tool("iscsi-readcapacity16").arg(target.url(IQN, 0)));
    assert!(
        inq.contains(&format!(
            "RETURNED LOGICAL BLOCK ADDRESS:{}",
            FS_SIZE / 512 - 1
        )),
        "{inq}"
    );
    assert!(target.stop().success());

    // A broken chain: b.obd's parent is nil, not a.obd's uuid.
    let broken = p(d, "broken.json");
    std::fs::write(
        &broken,
        format!(
            r#"{{"lowers": [{{"file": "{}"}}, {{"file": "{}"}}]}}"#,
            p(d, "a.obd").display(),
            p(d, "b.obd").display()
        ),
    )
    .unwrap();
    let report = obd(&[&"inspect", &broken]);
    assert!(
        field(&report, "uuid_chain").starts_with("broken at lowers[1]"),
        "{report}"
    );
    let log = p(d, "broken.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = binary()
        .args(["--portal", &format!("127.0.0.1:{port}"), "--target", IQN])
        .args(["--lun", &format!("image:{}", broken.display())])
        .args(["--no-api", "--no-state", "--log-level", "info"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("LUN ready") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no LUN ready: {text}");
        assert!(child.try_wait().unwrap().is_none(), "exited: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let warn = text
        .lines()
        .find(|l| l.contains("layer UUID chain"))
        .unwrap_or_else(|| panic!("no chain warning: {text}"));
    assert!(
        warn.contains("WARN")
            && warn.contains("broken.json")
            && warn.contains("broken at lowers[1]")
            && warn.contains(&a_uuid),
        "{warn}"
    );
}

/// Tools on a pipe: `export` writes a progress line per tenth on stderr (stdout keeps the
/// result line), an existing output names `-f`, and SIGINT during `zfile` (reading a FIFO the
/// test holds open, so the signal surely lands mid-run) removes the partial output and exits
/// with 130.
#[test]
fn tools_report_progress_name_force_and_clean_up_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [a, _, _] = three_trees(d);
    let a_raw = p(d, "a.raw");
    mkfs(&a, &a_raw);
    obd(&[&"import", &a_raw, &p(d, "a.obd"), &p(d, "a.json")]);

    let out = binary()
        .arg("export")
        .arg(p(d, "a.json"))
        .arg(p(d, "x.raw"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("exported") && !stdout.contains('%'),
        "{stdout}"
    );
    let tenths: Vec<&str> = stderr.lines().filter(|l| l.contains("% (")).collect();
    assert_eq!(tenths.len(), 9, "{stderr}");
    assert!(
        tenths[0].starts_with(&format!("export {}: 1", p(d, "x.raw").display())),
        "{stderr}"
    );
    assert!(!stderr.contains('\r'), "no terminal redraws on a pipe");

    let err = run_fails(
        binary()
            .arg("export")
            .arg(p(d, "a.json"))
            .arg(p(d, "x.raw")),
    );
    assert!(
        err.contains("x.raw: the output exists; -f replaces it"),
        "{err}"
    );

    let fifo = p(d, "input.fifo");
    run(tool("mkfifo").arg(&fifo));
    let target = p(d, "out.zfile");
    let child = binary()
        .arg("zfile")
        .arg(&fifo)
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut writer, &noise(1 << 20, 9)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !target.exists() {
        assert!(std::time::Instant::now() < deadline, "no output appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    drop(writer);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(!target.exists(), "the partial output is removed: {stderr}");
    assert!(
        stderr.contains("interrupted: removed 1 partial file(s)") && stderr.contains("out.zfile"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("out"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A fresh clone has no `../shared`: a test that needs the upstream layer passes, saying it is
/// skipped and why. Seen here by running this file's fixture test again in a child process
/// whose fixture folder is empty (`OVERLAYBD_FIXTURES` set is the only folder tried).
#[test]
fn without_the_shared_fixtures_a_fixture_test_says_it_is_skipped() {
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fixture_exports_to_a_clean_ext4_and_inspects"])
        .env("OVERLAYBD_FIXTURES", empty.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        stderr.contains("skipped: fixture_exports_to_a_clean_ext4_and_inspects needs the upstream fixture ext4_64")
            && stderr.contains("OVERLAYBD_FIXTURES"),
        "{stderr}"
    );
}

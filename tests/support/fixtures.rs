//! The shared test fixtures (`../shared/fixtures`), found as the project brief says.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// sha256 of the fixture `ext4_64` (a real overlaybd base layer, LZ4 ZFile).
pub const EXT4_64_DIGEST: &str =
    "sha256:c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9";

/// The fixture `name` from `$OVERLAYBD_FIXTURES` when it is set, else `../shared/fixtures` or
/// `../../shared/fixtures` from the crate root. A test calls [`require`] first; this panics
/// when the fixture is missing, which then only happens to a test that forgot to.
pub fn fixture(name: &str) -> PathBuf {
    find_fixture(name).unwrap_or_else(|tried| {
        panic!("fixture {name} not found (set OVERLAYBD_FIXTURES); tried {tried:?}")
    })
}

/// Whether the fixture `name` is present. When it is not, prints that the calling test is
/// skipped and why, and returns `None`: a fresh clone has no `../shared` beside it, and a
/// test that needs the upstream layer (made by the original overlaybd tools, which this
/// repository must not copy) cannot run there. Use it first in the test:
/// `let Some(_) = require("ext4_64") else { return };`.
pub fn require(name: &str) -> Option<PathBuf> {
    match find_fixture(name) {
        Ok(path) => Some(path),
        Err(tried) => {
            let thread = std::thread::current();
            let test = thread.name().unwrap_or("this test");
            // Straight to stderr, not `eprintln!`: the test harness captures the print macros
            // of a passing test, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test} needs the upstream fixture {name} (../shared/fixtures, not in \
                 this repository; set OVERLAYBD_FIXTURES to its folder); tried {tried:?}"
            );
            None
        }
    }
}

/// The fixture `name`, looked up like [`fixture`]; the folders tried when it is missing, for
/// a test that skips the part needing it and says so.
pub fn find_fixture(name: &str) -> Result<PathBuf, Vec<PathBuf>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A folder named by the environment is the only one tried: that is also how a test sees
    // what a fresh clone (no ../shared) does, on a machine that has ../shared.
    let tried: Vec<PathBuf> = match std::env::var_os("OVERLAYBD_FIXTURES") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            root.join("../shared/fixtures"),
            root.join("../../shared/fixtures"),
        ],
    };
    tried
        .iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(tried)
}

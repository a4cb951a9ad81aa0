//! The shared test fixtures (`../shared/fixtures`), found as the project brief says.

#![allow(dead_code)]

use std::path::PathBuf;

/// sha256 of the fixture `ext4_64` (a real overlaybd base layer, LZ4 ZFile).
pub const EXT4_64_DIGEST: &str =
    "sha256:c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9";

/// The fixture `name` from `$OVERLAYBD_FIXTURES`, else `../shared/fixtures` or
/// `../../shared/fixtures` from the crate root. Missing fixtures fail the test loudly.
pub fn fixture(name: &str) -> PathBuf {
    find_fixture(name).unwrap_or_else(|tried| {
        panic!("fixture {name} not found (set OVERLAYBD_FIXTURES); tried {tried:?}")
    })
}

/// The fixture `name`, looked up like [`fixture`]; the folders tried when it is missing, for
/// a test that skips the part needing it and says so.
pub fn find_fixture(name: &str) -> Result<PathBuf, Vec<PathBuf>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tried: Vec<PathBuf> = std::env::var_os("OVERLAYBD_FIXTURES")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("../shared/fixtures"),
            root.join("../../shared/fixtures"),
        ])
        .collect();
    tried
        .iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(tried)
}

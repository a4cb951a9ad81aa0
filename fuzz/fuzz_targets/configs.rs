//! Fuzz target: the three configuration formats a user or the snapshotter hands us, the
//! image's `config.v1.json`, the daemon's `overlaybd.json` and our own TOML file. The first
//! byte picks the parser; any text gives a value or a clear error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use overlaybd_target::cache::DaemonSettings;
use overlaybd_target::config::file;
use overlaybd_target::overlaybd::ImageConfig;

fuzz_target!(|input: &[u8]| {
    let Some((&which, rest)) = input.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 3 {
        0 => {
            if let Err(e) = ImageConfig::from_json(text, "fuzz.json") {
                assert!(!e.to_string().is_empty());
            }
        }
        1 => {
            if let Err(e) = DaemonSettings::from_json(text, "fuzz.json") {
                assert!(!e.to_string().is_empty());
            }
        }
        _ => {
            if let Err(e) = file::parse(text, Path::new("fuzz.toml")) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});

//! Fuzz target: what a registry or a user hands the image-reference flow, an image reference
//! and a manifest body (with a Content-Type picked by the first byte). Any input gives a value
//! or a clear error, never a panic; an overlaybd image's config parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlaybd_target::overlaybd::ImageConfig;
use overlaybd_target::registry::manifest::{select_platform, OCI_INDEX, OCI_MANIFEST};
use overlaybd_target::registry::{ImageReference, Manifest, Platform};

fuzz_target!(|input: &[u8]| {
    let Some((&which, rest)) = input.split_first() else { return };
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok(r) = ImageReference::parse(text) {
            assert_eq!(ImageReference::parse(&r.to_string()).as_ref(), Ok(&r));
        }
    }
    let content_type = match which % 3 {
        0 => None,
        1 => Some(OCI_INDEX),
        _ => Some(OCI_MANIFEST),
    };
    match Manifest::parse(content_type, rest) {
        Ok(Manifest::Index(entries)) => {
            let _ = select_platform(&entries, &Platform::host());
        }
        Ok(Manifest::Image(m)) => {
            if let Ok(image) = m.overlaybd() {
                let config = image.image_config("http://127.0.0.1:5000/v2/a/blobs");
                ImageConfig::from_json(&config.to_json(), "fuzz").expect("our config parses");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

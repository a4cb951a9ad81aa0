//! Fuzz target: what a registry or token service sends back. The first byte picks the parser:
//! `WWW-Authenticate` challenges, token-service JSON, credential files and credential-service
//! answers, `Content-Range` values, and the check of a whole 200/206 answer against the range
//! asked for. No panic, and every accepted answer is consistent with the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlaybd_target::cache::http::auth::{parse_challenge, parse_token_response, Challenge};
use overlaybd_target::cache::http::credentials::AuthFile;
use overlaybd_target::cache::http::range::{parse_content_range, plan_body, probe_total, MAX_SKIP};

/// Reads a big-endian u64 from the front of `data`, or 0 past its end.
fn take_u64(data: &mut &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = data.len().min(8);
    raw[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    u64::from_be_bytes(raw)
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, mut rest)) = input.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match which % 5 {
        0 => {
            if let Ok(Challenge::Bearer(b)) = parse_challenge(&text) {
                // A usable challenge always names its token service.
                assert!(!b.realm.is_empty());
                let _ = b.token_url();
            }
        }
        1 => {
            if let Ok(token) = parse_token_response(rest) {
                assert!(!token.token.is_empty());
            }
        }
        2 => {
            let keys = ["reg".to_string(), "reg/a/b".to_string()];
            if let Ok(file) = AuthFile::parse(rest) {
                let _ = file.lookup(&keys);
            }
            if let Ok(file) = AuthFile::parse_service_answer(rest) {
                let _ = file.lookup(&keys);
            }
        }
        3 => {
            if let Ok(cr) = parse_content_range(&text) {
                assert!(cr.first <= cr.last);
                assert!(cr.total.is_none_or(|t| cr.last < t));
            }
        }
        _ => {
            // Request and answer headers from the input; the Content-Range value is the rest.
            let flags = take_u64(&mut rest);
            let offset = take_u64(&mut rest) % (MAX_SKIP * 4);
            let len = take_u64(&mut rest) % (1 << 24);
            let length_header = take_u64(&mut rest);
            let known = take_u64(&mut rest);
            let status = if flags & 1 == 0 { 206 } else { 200 };
            let content_length = (flags & 2 != 0).then_some(length_header);
            let known_total = (flags & 4 != 0).then_some(known);
            let cr_text = String::from_utf8_lossy(rest);
            let content_range = (flags & 8 != 0).then_some(cr_text.as_ref());
            let _ = probe_total(status, content_range, content_length);
            let Ok(plan) =
                plan_body(status, content_range, content_length, offset, len, known_total)
            else {
                return;
            };
            // An accepted answer delivers exactly bytes offset..offset+len, and never
            // contradicts a blob size we already knew.
            let end = offset + len;
            if status == 206 {
                assert_eq!(plan.skip, 0);
                let cr = parse_content_range(content_range.unwrap_or("")).expect("206 accepted");
                assert_eq!((cr.first, cr.last + 1), (offset, end));
            } else {
                assert_eq!(plan.skip, offset);
                assert!(offset <= MAX_SKIP);
                if let Some(body) = content_length {
                    assert!(body >= end);
                }
            }
            if let (Some(k), Some(t)) = (known_total, plan.total) {
                assert_eq!(k, t);
            }
            assert!(len > 0);
        }
    }
});

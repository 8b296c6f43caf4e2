//! Fuzz target for the stealth relay's first-flight readers: the ClientHello
//! parser, the tag check, the server-flight reader and the record deframer
//! never panic, and what they accept stays within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::stealth::{hello, record, reply, tag, Secret};

fuzz_target!(|data: &[u8]| {
    let secret = Secret::from_bytes([7; 16]);
    let _ = hello::peek(data);
    if let Ok(h) = hello::parse(data) {
        assert!(h.record.len() <= data.len());
        assert!(h.session_id_range.end <= h.record.len());
        let _ = h.extensions().count();
        let _ = h.alpn().count();
        let _ = h.key_shares().count();
        assert!(tag::verify(&h, [&secret], 1_800_000_000).is_err());
    }
    if let Ok(Some(n)) = reply::flight_len(data) {
        assert!(n <= data.len());
        let _ = reply::verify(&data[..n], &[0; 32], &secret);
    }
    let mut d = record::Deframer::new();
    let mut out = Vec::new();
    if d.unwrap_into(data, &mut out).is_ok() {
        assert!(out.len() <= data.len());
    }
});

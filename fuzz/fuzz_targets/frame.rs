//! Fuzz target for the application frame decoder and the protobuf frames it
//! carries: cut the input into frames like a receiver does, decode each
//! payload as a ClientFrame and a ServerFrame; no panic, the cap is always
//! respected, and whatever decodes re-encodes to something that decodes the
//! same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::frame::{decode, encode, Decoded};
use ponte_wire::messages::{decode_client_frame, decode_server_frame};
use prost::Message as _;

/// A small cap so the fuzzer reaches the too-large path easily.
const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Each step consumes at least the 4-byte prefix, so this terminates.
    while let Ok(Decoded::Complete { payload, consumed }) = decode(rest, CAP) {
        assert!(payload.len() <= CAP);
        assert_eq!(consumed, payload.len() + 4);
        let mut again = Vec::new();
        encode(payload, CAP, &mut again).unwrap();
        assert_eq!(&again[..], &rest[..consumed]);
        if let Ok(f) = decode_client_frame(payload) {
            assert_eq!(decode_client_frame(&f.encode_to_vec()).unwrap(), f);
        }
        if let Ok(f) = decode_server_frame(payload) {
            assert_eq!(decode_server_frame(&f.encode_to_vec()).unwrap(), f);
        }
        rest = &rest[consumed..];
    }
});

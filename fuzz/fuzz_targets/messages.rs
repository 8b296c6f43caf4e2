//! Fuzz target for protobuf decoding of whole frames and for the server
//! address parser: arbitrary bytes never panic, and decoded values survive a
//! re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{ClientFrame, ServerFrame};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = ClientFrame::decode(data) {
        assert_eq!(ClientFrame::decode(&f.encode_to_vec()[..]).unwrap(), f);
    }
    if let Ok(f) = ServerFrame::decode(data) {
        assert_eq!(ServerFrame::decode(&f.encode_to_vec()[..]).unwrap(), f);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(a) = s.parse::<ServerAddress>() {
            assert_eq!(a.to_string().parse::<ServerAddress>().unwrap(), a);
        }
    }
});

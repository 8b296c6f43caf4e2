//! Fuzz target for protobuf decoding of whole frames (every request and
//! push, `SendGroupMessage` and `GroupSendAck` among them), the walk that
//! finds a client frame's type before decoding, and the server address
//! parser: arbitrary bytes never panic, decoded values survive a re-encode,
//! and the type the walk finds for a message is the one decoding gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{self, client_frame, ClientFrame, ServerFrame};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let walked = messages::client_body_field(data);
    if let Ok(f) = ClientFrame::decode(data) {
        assert_eq!(ClientFrame::decode(&f.encode_to_vec()[..]).unwrap(), f);
        // The last body field wins in both.
        match walked {
            Some(messages::SEND_FIELD) => {
                assert!(matches!(f.body, Some(client_frame::Body::Send(_))))
            }
            Some(messages::SEND_GROUP_FIELD) => {
                assert!(matches!(f.body, Some(client_frame::Body::SendGroup(_))))
            }
            _ => {}
        }
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

//! Fuzz target for the share-link reader: no panic on any input, and what
//! it reads writes back, in both forms, to the same relay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::link::{validate_host, RelayLink, MAX_LINK_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = RelayLink::parse(text) {
        assert!(text.len() <= MAX_LINK_LEN);
        assert!(link.port != 0);
        assert_eq!(validate_host(&link.host), Ok(()));
        for again in [link.app_link(), link.web_link()] {
            assert!(again.is_ascii());
            assert_eq!(RelayLink::parse(&again).as_ref(), Ok(&link));
        }
    }
});

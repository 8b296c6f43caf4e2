//! Fuzz target for the PROXY header parser: no panic on any input, and the
//! invariants of `parse` (prefixes of a complete header are incomplete; the
//! header alone parses the same; TCP headers survive a re-encode).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::proxy_header::{parse, Parsed, Version, MAX_V1_LEN, MAX_V2_LEN};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Complete {
            header,
            version,
            consumed,
        }) => {
            assert!(consumed <= data.len() && consumed <= MAX_V2_LEN);
            assert!(version == Version::V2 || consumed <= MAX_V1_LEN);
            assert_eq!(
                parse(&data[..consumed]),
                Ok(Parsed::Complete {
                    header,
                    version,
                    consumed
                })
            );
            for k in 0..consumed {
                assert_eq!(parse(&data[..k]), Ok(Parsed::Incomplete));
            }
            if let Some(pair) = header.addresses.tcp() {
                for v in [Version::V1, Version::V2] {
                    let mut out = Vec::new();
                    assert!(header.encode(v, &mut out).is_ok());
                    match parse(&out) {
                        Ok(Parsed::Complete { header: again, .. }) => {
                            assert_eq!(again.addresses.tcp(), Some(pair));
                        }
                        other => panic!("re-encoded header did not parse: {other:?}"),
                    }
                }
            }
        }
        Ok(Parsed::Incomplete) => assert!(data.len() < MAX_V2_LEN),
        Err(_) => {}
    }
});

//! Fuzz target for the PROXY header parser: no panic on any input, and the
//! invariants of `parse` (prefixes of a complete header are incomplete; the
//! header alone parses the same; TCP headers survive a re-encode), and the
//! stream reader, fed the same bytes in reads of 1 to 16 bytes, agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_wire::proxy_header::{
    parse, HeaderReader, Parsed, ReadError, Step, Version, MAX_V1_LEN, MAX_V2_LEN,
};

/// Feeds `data` to a reader in reads of `chunk` bytes; running out is a
/// close. Each round takes at least one byte or ends.
fn read(data: &[u8], chunk: usize) -> Result<Step, ReadError> {
    let mut reader = HeaderReader::required();
    let mut at = 0;
    loop {
        let space = reader.unfilled();
        let n = space.len().min(chunk).min(data.len() - at);
        space[..n].copy_from_slice(&data[at..at + n]);
        at += n;
        match reader.advance(n) {
            Ok(Step::NeedMore) => {}
            other => return other,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let chunk = usize::from(data.first().copied().unwrap_or(0) % 16) + 1;
    match (parse(data), read(data, chunk)) {
        (
            Ok(Parsed::Complete {
                header, consumed, ..
            }),
            Ok(Step::Done(got)),
        ) => {
            assert_eq!(got.header, Some(header));
            assert!(data[consumed..].starts_with(&got.rest));
        }
        (Ok(Parsed::Incomplete), Err(ReadError::Closed)) | (Err(_), Err(ReadError::Invalid(_))) => {
        }
        (parsed, read) => panic!("parse gave {parsed:?}, the reader {read:?}"),
    }
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

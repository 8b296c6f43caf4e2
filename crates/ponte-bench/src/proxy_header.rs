//! Recognising (and skipping) the PROXY protocol header a relay writes at the
//! start of each upstream connection.
//!
//! The bench upstream does not care about the addresses inside the header: it
//! only needs to know where the header ends so that the payload after it is
//! counted, echoed or held. Both versions are recognised:
//!
//! ```text
//! v1: "PROXY TCP4 127.0.0.1 127.0.0.1 40000 8080\r\n"      (at most 107 bytes)
//! v2: \r\n\r\n\0\r\nQUIT\n | ver/cmd | fam | len (u16 BE) | len bytes
//! ```
//!
//! Pure functions over a byte slice; no I/O.

/// Longest possible v1 header, CRLF included (from the PROXY protocol spec).
pub const V1_MAX_LEN: usize = 107;
/// The 12-byte signature that opens every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Cap we accept for a v2 header's address block (the spec allows 65,535; a
/// relay in this harness sends a few dozen bytes).
pub const V2_MAX_BODY: usize = 512;
/// Longest header this module will ever wait for.
pub const MAX_HEADER_LEN: usize = 16 + V2_MAX_BODY;

/// What the bytes received so far say about the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStatus {
    /// More bytes are needed to decide.
    Incomplete,
    /// A complete header occupies the first `len` bytes.
    Complete {
        /// Header length in bytes, terminator included.
        len: usize,
        /// 1 or 2.
        version: u8,
    },
    /// The bytes cannot start a PROXY header (or it is too long).
    Invalid,
}

/// Looks for a complete PROXY v1 or v2 header at the start of `buf`.
#[must_use]
pub fn parse(buf: &[u8]) -> HeaderStatus {
    const V1_PREFIX: &[u8] = b"PROXY ";
    if buf.is_empty() {
        return HeaderStatus::Incomplete;
    }
    if buf[0] == b'P' {
        let n = buf.len().min(V1_PREFIX.len());
        if buf[..n] != V1_PREFIX[..n] {
            return HeaderStatus::Invalid;
        }
        let window = &buf[..buf.len().min(V1_MAX_LEN)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(pos) => {
                let line = &window[..pos];
                if line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                    HeaderStatus::Complete {
                        len: pos + 2,
                        version: 1,
                    }
                } else {
                    HeaderStatus::Invalid
                }
            }
            None if buf.len() >= V1_MAX_LEN => HeaderStatus::Invalid,
            None => HeaderStatus::Incomplete,
        };
    }
    if buf[0] == V2_SIGNATURE[0] {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return HeaderStatus::Invalid;
        }
        if buf.len() < 16 {
            return HeaderStatus::Incomplete;
        }
        if buf[12] >> 4 != 2 {
            return HeaderStatus::Invalid;
        }
        let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if body > V2_MAX_BODY {
            return HeaderStatus::Invalid;
        }
        return if buf.len() >= 16 + body {
            HeaderStatus::Complete {
                len: 16 + body,
                version: 2,
            }
        } else {
            HeaderStatus::Incomplete
        };
    }
    HeaderStatus::Invalid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_complete_with_payload_after() {
        let mut bytes = b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8080\r\n".to_vec();
        let header_len = bytes.len();
        bytes.extend_from_slice(b"Dpayload");
        assert_eq!(
            parse(&bytes),
            HeaderStatus::Complete {
                len: header_len,
                version: 1
            }
        );
        assert_eq!(&bytes[header_len..], b"Dpayload");
    }

    #[test]
    fn v1_split_across_reads_is_incomplete_until_crlf() {
        let full = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), HeaderStatus::Incomplete, "cut {cut}");
        }
        assert!(matches!(
            parse(full),
            HeaderStatus::Complete { version: 1, .. }
        ));
    }

    #[test]
    fn v1_unknown_and_overlong() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            HeaderStatus::Complete {
                len: 15,
                version: 1
            }
        );
        let mut long = b"PROXY ".to_vec();
        long.resize(V1_MAX_LEN, b'1');
        assert_eq!(parse(&long), HeaderStatus::Invalid);
        assert_eq!(parse(b"PROXY A\0B\r\n"), HeaderStatus::Invalid);
    }

    #[test]
    fn not_a_header() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), HeaderStatus::Invalid);
        assert_eq!(parse(b"PROXX"), HeaderStatus::Invalid);
        assert_eq!(parse(b"D"), HeaderStatus::Invalid);
        assert_eq!(parse(b""), HeaderStatus::Incomplete);
    }

    #[test]
    fn v2_ipv4() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0, 12]);
        bytes.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(parse(&bytes[..20]), HeaderStatus::Incomplete);
        bytes.push(b'E');
        assert_eq!(
            parse(&bytes),
            HeaderStatus::Complete {
                len: 28,
                version: 2
            }
        );
    }

    #[test]
    fn v2_rejects_bad_version_and_huge_body() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(parse(&bytes), HeaderStatus::Invalid);
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&bytes), HeaderStatus::Invalid);
    }
}

//! Tests for the PROXY header codec: spec vectors, round trips, every byte
//! split, hostile input, and a bounded pseudo-random sweep.
#![allow(clippy::unwrap_used)]

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn complete(buf: &[u8]) -> (ProxyHeader, Version, usize) {
    match parse(buf) {
        Ok(Parsed::Complete {
            header,
            version,
            consumed,
        }) => (header, version, consumed),
        other => panic!("expected Complete for {buf:?}, got {other:?}"),
    }
}

fn err(buf: &[u8]) -> ProxyHeaderError {
    match parse(buf) {
        Err(e) => e,
        other => panic!("expected an error for {buf:?}, got {other:?}"),
    }
}

/// Every strict prefix of a valid header is Incomplete; the whole is
/// Complete; trailing payload is left alone.
fn assert_every_split(wire: &[u8]) -> ProxyHeader {
    for k in 0..wire.len() {
        assert_eq!(
            parse(&wire[..k]),
            Ok(Parsed::Incomplete),
            "prefix of {k} bytes of {wire:?}"
        );
    }
    let (header, _, consumed) = complete(wire);
    assert_eq!(consumed, wire.len());
    let mut with_payload = wire.to_vec();
    with_payload.extend_from_slice(b"\x16\x03\x01 payload\r\n");
    let (again, _, consumed) = complete(&with_payload);
    assert_eq!((again, consumed), (header, wire.len()));
    header
}

// ------------------------------------------------------------ spec vectors

#[test]
fn v1_spec_examples() {
    let wire = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    let h = assert_every_split(wire);
    assert_eq!(
        h,
        ProxyHeader::tcp(sa("192.168.0.1:56324"), sa("192.168.0.11:443"))
    );

    let wire = b"PROXY UNKNOWN\r\n";
    let (h, v, n) = complete(wire);
    assert_eq!(
        (h.command, h.addresses, v, n),
        (Command::Proxy, Addresses::Unspec, Version::V1, 15)
    );

    let wire = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    let (h, _, n) = complete(wire);
    assert_eq!((h.addresses, n), (Addresses::Unspec, wire.len()));
    assert_eq!(h.tcp_source(), None);
}

#[test]
fn v1_longest_header_is_107_bytes() {
    // The specification's worst case, with the longest possible line.
    let wire = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(wire.len(), MAX_V1_LEN);
    assert_every_split(wire);

    let wire = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(wire.len(), 104);
    let h = assert_every_split(wire);
    let all = sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
    assert_eq!(h, ProxyHeader::tcp(all, all));
}

#[test]
fn v2_known_bytes_ipv4() {
    // Built by hand from the specification's layout.
    let wire: [u8; 28] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, // v2, PROXY
        0x11, // INET, STREAM
        0x00, 0x0C, // 12 bytes follow
        192, 168, 0, 1, // src
        192, 168, 0, 11, // dst
        0xDC, 0x04, // 56324
        0x01, 0xBB, // 443
    ];
    let h = assert_every_split(&wire);
    assert_eq!(
        h,
        ProxyHeader::tcp(sa("192.168.0.1:56324"), sa("192.168.0.11:443"))
    );
    let mut out = Vec::new();
    encode_v2(sa("192.168.0.1:56324"), sa("192.168.0.11:443"), &mut out);
    assert_eq!(out, wire);
}

#[test]
fn v2_known_bytes_ipv6_and_local() {
    let mut wire = V2_SIGNATURE.to_vec();
    wire.extend_from_slice(&[0x21, 0x21, 0x00, 36]);
    let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
    wire.extend_from_slice(&src.octets());
    wire.extend_from_slice(&dst.octets());
    wire.extend_from_slice(&[0x30, 0x39, 0x14, 0x66]); // 12345, 5222
    let h = assert_every_split(&wire);
    assert_eq!(
        h,
        ProxyHeader::tcp(sa("[2001:db8::1]:12345"), sa("[2001:db8::2]:5222"))
    );
    let mut out = Vec::new();
    encode_v2(
        sa("[2001:db8::1]:12345"),
        sa("[2001:db8::2]:5222"),
        &mut out,
    );
    assert_eq!(out, wire);

    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let h = assert_every_split(&local);
    assert_eq!(
        (h.command, h.addresses),
        (Command::Local, Addresses::Unspec)
    );
    let mut out = Vec::new();
    encode_v2_local(&mut out);
    assert_eq!(out, local);
}

// ------------------------------------------------------------- round trips

#[test]
fn round_trips_v1_v2_by_family() {
    let pairs = [
        ("10.0.0.1:1", "10.0.0.2:443"),
        ("0.0.0.0:0", "255.255.255.255:65535"),
        ("[::1]:5222", "[2001:db8::dead:beef]:80"),
        ("[::]:0", "[::ffff:1.2.3.4]:7"),
        (
            "[fe80::1]:40000",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ),
    ];
    for (s, d) in pairs {
        let (s, d) = (sa(s), sa(d));
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            ProxyHeader::tcp(s, d).encode(version, &mut out).unwrap();
            let h = assert_every_split(&out);
            assert_eq!(h, ProxyHeader::tcp(s, d), "{version:?} {s} {d}");
            assert_eq!(h.tcp_source(), Some(s));
            let (_, v, _) = complete(&out);
            assert_eq!(v, version);
        }
    }
}

#[test]
fn mixed_families_become_ipv4_mapped_ipv6() {
    let s = sa("192.0.2.7:1234");
    let d = sa("[2001:db8::5]:443");
    let mapped = sa("[::ffff:192.0.2.7]:1234");
    let mut v1 = Vec::new();
    encode_v1(s, d, &mut v1);
    assert_eq!(
        v1,
        b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::5 1234 443\r\n".to_vec()
    );
    assert_eq!(complete(&v1).0, ProxyHeader::tcp(mapped, d));
    let mut v2 = Vec::new();
    encode_v2(d, s, &mut v2);
    assert_eq!(v2.len(), 52);
    assert_eq!(
        complete(&v2).0,
        ProxyHeader::tcp(d, sa("[::ffff:192.0.2.7]:1234"))
    );
}

#[test]
fn encode_local_unspec_udp_unix() {
    let local = ProxyHeader {
        command: Command::Local,
        addresses: Addresses::Unspec,
    };
    let unspec = ProxyHeader {
        command: Command::Proxy,
        addresses: Addresses::Unspec,
    };
    let udp = ProxyHeader {
        command: Command::Proxy,
        addresses: Addresses::Udp {
            source: sa("10.1.1.1:53"),
            destination: sa("10.1.1.2:5353"),
        },
    };
    let unix = ProxyHeader {
        command: Command::Proxy,
        addresses: Addresses::Unix,
    };
    let enc = |h: ProxyHeader, v| {
        let mut out = Vec::new();
        h.encode(v, &mut out).map(|()| out)
    };
    assert_eq!(
        enc(local, Version::V1).unwrap(),
        b"PROXY UNKNOWN\r\n".to_vec()
    );
    assert_eq!(
        enc(unspec, Version::V1).unwrap(),
        b"PROXY UNKNOWN\r\n".to_vec()
    );
    assert_eq!(complete(&enc(local, Version::V2).unwrap()).0, local);
    assert_eq!(complete(&enc(unspec, Version::V2).unwrap()).0, unspec);
    let udp_wire = enc(udp, Version::V2).unwrap();
    assert_eq!(udp_wire[13], 0x12);
    let parsed = complete(&udp_wire).0;
    assert_eq!(parsed, udp);
    assert_eq!(parsed.addresses.tcp(), None);
    assert_eq!(parsed.tcp_source(), None);
    assert!(matches!(
        enc(udp, Version::V1),
        Err(ProxyHeaderError::NotEncodable(_))
    ));
    assert!(matches!(
        enc(unix, Version::V2),
        Err(ProxyHeaderError::NotEncodable(_))
    ));
}

// ------------------------------------------------------------- v1 strictness

#[test]
fn v1_rejects_malformed_lines() {
    use V1Syntax::*;
    let cases: &[(&[u8], ProxyHeaderError)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", v1_err(LineEnding)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", v1_err(LineEnding)),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", v1_err(Fields)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", v1_err(Fields)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", v1_err(Fields)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", v1_err(Fields)),
        (
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            v1_err(UnknownProtocol),
        ),
        (
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            v1_err(UnknownProtocol),
        ),
        (b"PROXY UNKNOWNX\r\n", v1_err(UnknownProtocol)),
        (b"PROXY \r\n", v1_err(Fields)),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", v1_err(BadAddress)),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", v1_err(BadAddress)),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", v1_err(BadAddress)),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", v1_err(FamilyMismatch)),
        (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", v1_err(FamilyMismatch)),
        (b"PROXY TCP6 ::1 ::g 1 2\r\n", v1_err(BadAddress)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", v1_err(BadPort)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", v1_err(BadPort)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", v1_err(BadPort)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", v1_err(BadPort)),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000000\r\n", v1_err(BadPort)),
        (b"PROXY UNKNOWN \n", v1_err(LineEnding)),
        (b"PROXY\r\n", ProxyHeaderError::NotProxyProtocol),
    ];
    for (input, expected) in cases {
        assert_eq!(
            parse(input),
            Err(*expected),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn v1_port_edges() {
    let (h, _, _) = complete(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n");
    assert_eq!(h, ProxyHeader::tcp(sa("1.2.3.4:0"), sa("5.6.7.8:65535")));
}

#[test]
fn v1_garbage_is_rejected_early() {
    // One byte suffices for anything that starts with neither signature.
    for first in [b'G', b'\x16', b'S', b'p', b'\0', b'\n', b' '] {
        assert_eq!(err(&[first]), ProxyHeaderError::NotProxyProtocol);
    }
    assert_eq!(err(b"POST / HTTP/1.1"), ProxyHeaderError::NotProxyProtocol);
    assert_eq!(err(b"PROXYX"), ProxyHeaderError::NotProxyProtocol);
    // Inside the line, a wrong protocol word or character is caught before
    // the CRLF arrives.
    assert_eq!(err(b"PROXY X"), v1_err(V1Syntax::UnknownProtocol));
    assert_eq!(err(b"PROXY TCP4 1.2.3.4 x"), v1_err(V1Syntax::BadCharacter));
    assert_eq!(err(b"PROXY TCP4 1.2.3.4  "), v1_err(V1Syntax::Fields));
    assert_eq!(
        err(b"PROXY TCP4 1.2.3.4 1.2.3.4 123456"),
        v1_err(V1Syntax::BadPort)
    );
    assert_eq!(err(b"PROXY UNKNOWNS"), v1_err(V1Syntax::UnknownProtocol));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4 "), Ok(Parsed::Incomplete));
}

#[test]
fn v1_too_long() {
    // A plausible-looking UNKNOWN line that never ends.
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(MAX_V1_LEN - 1, b'a');
    assert_eq!(parse(&line), Ok(Parsed::Incomplete));
    line.push(b'\r');
    assert_eq!(err(&line), ProxyHeaderError::TooLong { limit: MAX_V1_LEN });
    line.push(b'\n');
    assert_eq!(err(&line), ProxyHeaderError::TooLong { limit: MAX_V1_LEN });
    // Exactly 107 bytes with the CRLF is fine.
    line.truncate(MAX_V1_LEN - 2);
    line.extend_from_slice(b"\r\n");
    assert_eq!(complete(&line).2, MAX_V1_LEN);
}

// ------------------------------------------------------------- v2 strictness

fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut w = V2_SIGNATURE.to_vec();
    w.push(ver_cmd);
    w.push(fam);
    w.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    w.extend_from_slice(block);
    w
}

#[test]
fn v2_signature_mismatch_is_rejected_at_the_first_wrong_byte() {
    for k in 1..V2_SIGNATURE.len() {
        let mut w = V2_SIGNATURE[..k].to_vec();
        assert_eq!(parse(&w), Ok(Parsed::Incomplete));
        w[k - 1] ^= 0x40;
        assert_eq!(err(&w), ProxyHeaderError::NotProxyProtocol, "byte {k}");
    }
}

#[test]
fn v2_rejects_bad_version_command_family() {
    let sig = V2_SIGNATURE.to_vec();
    let with = |extra: &[u8]| [sig.as_slice(), extra].concat();
    assert_eq!(err(&with(&[0x11])), ProxyHeaderError::UnsupportedVersion(1));
    assert_eq!(err(&with(&[0x31])), ProxyHeaderError::UnsupportedVersion(3));
    assert_eq!(err(&with(&[0x22])), ProxyHeaderError::UnsupportedCommand(2));
    assert_eq!(
        err(&with(&[0x2F])),
        ProxyHeaderError::UnsupportedCommand(15)
    );
    for fam in [0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x41, 0xFF] {
        assert_eq!(
            err(&with(&[0x21, fam])),
            ProxyHeaderError::UnsupportedFamily(fam)
        );
    }
    // LOCAL ignores the family and the whole block, as the spec requires.
    let h = complete(&v2(0x20, 0xFF, &[1, 2, 3])).0;
    assert_eq!(
        (h.command, h.addresses),
        (Command::Local, Addresses::Unspec)
    );
}

#[test]
fn v2_address_length_must_fit_family() {
    for (fam, needed) in [
        (0x11, 12),
        (0x12, 12),
        (0x21, 36),
        (0x22, 36),
        (0x31, 216),
        (0x32, 216),
    ] {
        let short = vec![0u8; needed - 1];
        // Known from the fixed part alone: no need to wait for the block.
        assert_eq!(
            err(&v2(0x21, fam, &short)[..16]),
            ProxyHeaderError::AddressBlockTooShort {
                needed,
                got: needed - 1
            }
        );
        let exact = vec![0u8; needed];
        let h = complete(&v2(0x21, fam, &exact)).0;
        assert_eq!(h.addresses.tcp().is_some(), fam & 0x0F == 1 && fam < 0x30);
    }
    let unix = complete(&v2(0x21, 0x31, &[b'/'; 216])).0;
    assert_eq!(unix.addresses, Addresses::Unix);
    let unspec = complete(&v2(0x21, 0x00, &[])).0;
    assert_eq!(unspec.addresses, Addresses::Unspec);
}

#[test]
fn v2_tlvs_are_validated_and_skipped() {
    let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x01, 0xBB];
    block.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // NOOP with 3 bytes
    block.extend_from_slice(&[0x01, 0x00, 0x00]); // empty ALPN
    let wire = v2(0x21, 0x11, &block);
    let h = assert_every_split(&wire);
    assert_eq!(
        h,
        ProxyHeader::tcp(sa("10.0.0.1:12345"), sa("10.0.0.2:443"))
    );

    // A TLV whose value runs past the block.
    let mut bad = block.clone();
    bad.extend_from_slice(&[0x02, 0x00, 0x05, b'x']);
    assert_eq!(
        err(&v2(0x21, 0x11, &bad)),
        ProxyHeaderError::BadTlv {
            offset: 16 + block.len()
        }
    );
    // A TLV header cut short (1 and 2 bytes left).
    for cut in [1usize, 2] {
        let mut bad = block.clone();
        bad.extend_from_slice(&[0x02, 0x00][..cut]);
        assert!(matches!(
            err(&v2(0x21, 0x11, &bad)),
            ProxyHeaderError::BadTlv { .. }
        ));
    }
    // TLVs after UNSPEC are checked the same way.
    assert!(matches!(
        err(&v2(0x21, 0x00, &[0x01, 0x00, 0x09])),
        ProxyHeaderError::BadTlv { offset: 16 }
    ));
}

#[test]
fn v2_length_cap() {
    let max_block = MAX_V2_LEN - 16;
    // The largest allowed block: addresses plus one big NOOP TLV.
    let mut block = vec![0u8; 12];
    let tlv_len = max_block - 12 - 3;
    block.push(0x04);
    block.extend_from_slice(&u16::try_from(tlv_len).unwrap().to_be_bytes());
    block.resize(max_block, 0);
    let wire = v2(0x21, 0x11, &block);
    assert_eq!(wire.len(), MAX_V2_LEN);
    assert_eq!(complete(&wire).2, MAX_V2_LEN);
    // One more byte is refused as soon as the length field is read.
    let mut over = wire[..16].to_vec();
    over[14..16].copy_from_slice(&u16::try_from(max_block + 1).unwrap().to_be_bytes());
    assert_eq!(err(&over), ProxyHeaderError::TooLong { limit: MAX_V2_LEN });
    over[14..16].copy_from_slice(&[0xFF, 0xFF]);
    assert_eq!(err(&over), ProxyHeaderError::TooLong { limit: MAX_V2_LEN });
}

#[test]
fn v2_truncated_is_incomplete_not_error() {
    let mut wire = Vec::new();
    encode_v2(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"), &mut wire);
    for k in 0..wire.len() {
        assert_eq!(parse(&wire[..k]), Ok(Parsed::Incomplete));
    }
}

// ------------------------------------------------------ pseudo-random sweep

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// The invariants the fuzz target also checks.
fn check_invariants(data: &[u8]) {
    match parse(data) {
        Ok(Parsed::Complete {
            header,
            version,
            consumed,
        }) => {
            assert!(consumed <= data.len());
            assert!(consumed <= MAX_V2_LEN);
            if version == Version::V1 {
                assert!(consumed <= MAX_V1_LEN);
            }
            // The header alone parses to the same thing, and no shorter
            // prefix is complete.
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
            // TCP headers survive a re-encode in both versions.
            if let Some((s, d)) = header.addresses.tcp() {
                for v in [Version::V1, Version::V2] {
                    let mut out = Vec::new();
                    header.encode(v, &mut out).unwrap();
                    let (again, _, _) = complete(&out);
                    assert_eq!(again.addresses.tcp(), Some((s, d)));
                }
            }
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < MAX_V2_LEN);
        }
        Err(_) => {}
    }
}

#[test]
fn pseudo_random_inputs_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seeds: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        let mut w = Vec::new();
        encode_v1(sa("1.2.3.4:5"), sa("6.7.8.9:10"), &mut w);
        v.push(w.clone());
        w.clear();
        encode_v1(sa("[::1]:5"), sa("[::2]:10"), &mut w);
        v.push(w.clone());
        w.clear();
        encode_v2(sa("1.2.3.4:5"), sa("6.7.8.9:10"), &mut w);
        w[15] += 6;
        w.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        v.push(w.clone());
        w.clear();
        encode_v2(sa("[::1]:5"), sa("[::2]:10"), &mut w);
        v.push(w.clone());
        v.push(b"PROXY UNKNOWN abc\r\n".to_vec());
        v
    };
    let mut buf = Vec::with_capacity(MAX_V2_LEN + 64);
    for round in 0..20_000 {
        buf.clear();
        if round % 4 == 0 {
            // Pure noise, sometimes behind a valid signature start.
            let len = rng.below(80);
            match rng.below(3) {
                0 => buf.extend_from_slice(b"PROXY "),
                1 => buf.extend_from_slice(&V2_SIGNATURE),
                _ => {}
            }
            for _ in 0..len {
                buf.push(rng.next() as u8);
            }
        } else {
            // A valid header with a few mutations and a random cut.
            buf.extend_from_slice(&seeds[rng.below(seeds.len())]);
            for _ in 0..rng.below(4) {
                let i = rng.below(buf.len());
                match rng.below(3) {
                    0 => buf[i] = rng.next() as u8,
                    1 => buf[i] ^= 1 << rng.below(8),
                    _ => {
                        buf.insert(i, b" .:0\r\n9aF"[rng.below(9)]);
                    }
                }
            }
            let cut = rng.below(buf.len() + 1);
            buf.truncate(cut.max(1));
        }
        check_invariants(&buf);
    }
}

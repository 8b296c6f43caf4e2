use super::hello::{self, ext, is_grease, HelloError, Peek};
use super::record::{self, Deframer, RecordError, CHANGE_CIPHER_SPEC, MAX_WRITE_PAYLOAD};
use super::reply::{self, ReplyError, TLS13_SERVER};
use super::tag::{self, TagError, WINDOW_SECS};
use super::template::{self, group, Extension, KeyShare, Template, CHROME, GREASE};
use super::Secret;
use proptest::prelude::*;

/// A deterministic byte source (xorshift64*).
fn rng(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut s = seed | 1;
    move |buf: &mut [u8]| {
        for b in buf {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            *b = (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

const NOW: u64 = 1_800_000_000;

fn secret(n: u8) -> Secret {
    Secret::from_bytes([n; 16])
}

fn sealed(seed: u64, s: &Secret, time: u64) -> Vec<u8> {
    let mut fill = rng(seed);
    let mut rec = template::build(&CHROME, "www.example.com", &mut fill).expect("builds");
    tag::seal(&mut rec, s, time).expect("seals");
    rec
}

#[test]
fn chrome_hello_has_chromes_shape() {
    let rec = sealed(7, &secret(1), NOW);
    let h = hello::parse(&rec).expect("parses");
    assert_eq!(h.record_version, 0x0301);
    assert_eq!(h.legacy_version, 0x0303);
    assert_eq!(h.session_id.len(), 32);
    assert_eq!(h.server_name, Some("www.example.com"));
    assert_eq!(h.compression(), &[0]);
    let alpn: Vec<&[u8]> = h.alpn().collect();
    assert_eq!(alpn, vec![&b"h2"[..], &b"http/1.1"[..]]);
    let groups: Vec<u16> = h.groups().collect();
    assert!(is_grease(groups[0]));
    assert_eq!(
        groups[1..],
        [
            group::X25519_MLKEM768,
            group::X25519,
            group::SECP256R1,
            group::SECP384R1
        ]
    );
    let shares: Vec<(u16, usize)> = h.key_shares().map(|(g, k)| (g, k.len())).collect();
    assert_eq!(
        shares[0],
        (groups[0], 1),
        "the GREASE share uses the GREASE group"
    );
    assert_eq!(
        shares[1..],
        [(group::X25519_MLKEM768, 1216), (group::X25519, 32)]
    );
    let versions: Vec<u16> = h.versions().collect();
    assert!(is_grease(versions[0]));
    assert_eq!(versions[1..], [0x0304, 0x0303]);
    let suites: Vec<u16> = h.cipher_suites().collect();
    assert_eq!(suites.len(), 16);
    assert!(is_grease(suites[0]));
    assert_eq!(suites[1..4], [0x1301, 0x1302, 0x1303]);

    let exts: Vec<(u16, &[u8])> = h.extensions().collect();
    assert_eq!(
        exts.len(),
        CHROME.extensions.len(),
        "no padding: the hello is over 512 bytes"
    );
    assert!(is_grease(exts[0].0) && exts[0].1.is_empty());
    let last = exts[exts.len() - 1];
    assert!(is_grease(last.0) && last.1 == [0]);
    assert_ne!(exts[0].0, last.0, "the two GREASE extensions differ");
    let mut kinds: Vec<u16> = exts[1..exts.len() - 1].iter().map(|e| e.0).collect();
    kinds.sort_unstable();
    let mut want = vec![
        ext::SERVER_NAME,
        ext::EXTENDED_MASTER_SECRET,
        ext::RENEGOTIATION_INFO,
        ext::SUPPORTED_GROUPS,
        ext::EC_POINT_FORMATS,
        ext::SESSION_TICKET,
        ext::ALPN,
        ext::STATUS_REQUEST,
        ext::SIGNATURE_ALGORITHMS,
        ext::SCT,
        ext::KEY_SHARE,
        ext::PSK_KEY_EXCHANGE_MODES,
        ext::SUPPORTED_VERSIONS,
        ext::COMPRESS_CERTIFICATE,
        ext::TRUST_ANCHORS,
        ext::APPLICATION_SETTINGS,
        ext::ENCRYPTED_CLIENT_HELLO,
    ];
    want.sort_unstable();
    assert_eq!(kinds, want);
    let ech = exts
        .iter()
        .find(|e| e.0 == ext::ENCRYPTED_CLIENT_HELLO)
        .expect("ech");
    // type, kdf, aead, config id, enc (2 + 32), payload (2 + len)
    assert!([144, 176, 208, 240]
        .map(|l| 1 + 4 + 1 + 34 + 2 + l)
        .contains(&ech.1.len()));
}

#[test]
fn extension_order_varies_between_hellos() {
    let order = |seed| {
        let rec = sealed(seed, &secret(1), NOW);
        let h = hello::parse(&rec).expect("parses");
        h.extensions()
            .map(|e| e.0)
            .filter(|&k| !is_grease(k))
            .collect::<Vec<_>>()
    };
    let first = order(1);
    assert!((2..12).any(|s| order(s) != first));
}

#[test]
fn mlkem_key_is_coefficients_below_q() {
    let rec = sealed(3, &secret(1), NOW);
    let h = hello::parse(&rec).expect("parses");
    let (_, key) = h
        .key_shares()
        .find(|k| k.0 == group::X25519_MLKEM768)
        .expect("hybrid share");
    for c in key[..1152].chunks_exact(3) {
        let a = u16::from(c[0]) | (u16::from(c[1] & 0x0f) << 8);
        let b = u16::from(c[1] >> 4) | (u16::from(c[2]) << 4);
        assert!(a < 3329 && b < 3329);
    }
    assert!(key[1216 - 1] < 0x80, "the X25519 share is below 2^255");
}

#[test]
fn small_template_is_padded_to_512() {
    const SMALL: Template = Template {
        name: "small",
        extensions: &[
            Extension::Grease(0),
            Extension::ServerName,
            Extension::SupportedGroups,
            Extension::Alpn,
            Extension::SignatureAlgorithms,
            Extension::KeyShare,
            Extension::SupportedVersions,
        ],
        key_shares: &[KeyShare::Grease, KeyShare::X25519],
        shuffle: false,
        ..CHROME
    };
    let mut fill = rng(5);
    let name = "static-content-delivery.images.eu-west.example.com";
    let rec = template::build(&SMALL, name, &mut fill).expect("builds");
    let h = hello::parse(&rec).expect("parses");
    assert_eq!(rec.len() - hello::RECORD_HEADER_LEN, 512);
    assert_eq!(h.extensions().last().map(|e| e.0), Some(ext::PADDING));
}

#[test]
fn tag_verifies_with_its_secret_only() {
    let s = [secret(1), secret(2), secret(3)];
    let rec = sealed(9, &s[1], NOW);
    let h = hello::parse(&rec).expect("parses");
    let v = tag::verify(&h, &s, NOW + 5).expect("verifies");
    assert_eq!(v.secret, 1);
    assert_eq!(v.time, NOW as u32);
    assert_eq!(v.replay_key[..], h.session_id[4..20]);
    assert_eq!(tag::verify(&h, [&s[0], &s[2]], NOW), Err(TagError::NoMatch));
}

#[test]
fn tag_outside_the_window_is_stale() {
    let s = secret(1);
    let w = u64::from(WINDOW_SECS);
    for (client, ok) in [
        (NOW - w, true),
        (NOW + w, true),
        (NOW - w - 1, false),
        (NOW + w + 1, false),
    ] {
        let rec = sealed(11, &s, client);
        let h = hello::parse(&rec).expect("parses");
        let got = tag::verify(&h, [&s], NOW);
        if ok {
            assert!(got.is_ok(), "{client}");
        } else {
            assert!(
                matches!(got, Err(TagError::Stale { .. })),
                "{client}: {got:?}"
            );
        }
    }
}

#[test]
fn hello_without_tag_is_refused() {
    let mut fill = rng(1);
    let rec = template::build(&CHROME, "www.example.com", &mut fill).expect("builds");
    let h = hello::parse(&rec).expect("parses");
    assert_eq!(tag::verify(&h, [&secret(1)], NOW), Err(TagError::NoMatch));
}

#[test]
fn peek_tells_records_from_other_bytes() {
    assert_eq!(hello::peek(b""), Peek::NeedMore(5));
    assert_eq!(hello::peek(&[0x16]), Peek::NeedMore(5));
    assert_eq!(hello::peek(&[0x16, 3, 1, 2]), Peek::NeedMore(5));
    assert_eq!(hello::peek(&[0x16, 3, 1, 2, 0]), Peek::Record(517));
    assert_eq!(hello::peek(b"GET / HTTP/1.1"), Peek::NotHello);
    assert_eq!(hello::peek(b"PRI * HTTP/2.0"), Peek::NotHello);
    assert_eq!(hello::peek(&[0x16, 3, 1, 0x40, 1]), Peek::NotHello);
    assert_eq!(hello::peek(&[0x16, 4]), Peek::NotHello);
    assert_eq!(
        hello::parse(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
        Err(HelloError::NotClientHello)
    );
}

#[test]
fn reply_verifies_and_binds_to_the_client_tag() {
    let s = secret(4);
    let sid = [7u8; 32];
    let mut fill = rng(21);
    let flight = reply::build(&TLS13_SERVER, &sid, &s, &mut fill);
    assert_eq!(reply::flight_len(&flight), Ok(Some(flight.len())));
    for cut in [0, 3, 5, 100, flight.len() - 1] {
        assert_eq!(reply::flight_len(&flight[..cut]), Ok(None));
    }
    reply::verify(&flight, &sid, &s).expect("verifies");
    assert_eq!(
        reply::verify(&flight, &sid, &secret(5)),
        Err(ReplyError::BadTag)
    );
    let other = [8u8; 32];
    assert!(reply::verify(&flight, &other, &s).is_err());
    // ServerHello (5 + 4 + 2 + 32 + 33 + 3 + 2 + 6 + 8 + 1120) + CCS + app data.
    let hs = 5 + 4 + 2 + 32 + 33 + 3 + 2 + 6 + 8 + 1120;
    assert_eq!(&flight[hs..hs + 6], &CHANGE_CIPHER_SPEC);
    let app = flight.len() - hs - 6 - 5;
    assert!((2560..=4608).contains(&app));
}

#[test]
fn deframer_skips_change_cipher_spec_and_ends_on_alert() {
    let mut d = Deframer::new();
    let mut out = Vec::new();
    let mut wire = CHANGE_CIPHER_SPEC.to_vec();
    record::frame(b"hello", &mut wire);
    d.unwrap_into(&wire, &mut out).expect("unwraps");
    assert_eq!(out, b"hello");
    assert!(d.at_boundary());
    assert_eq!(
        d.unwrap_into(&[0x15, 3, 3, 0, 2, 2, 0], &mut out),
        Err(RecordError::Type(0x15))
    );
    let mut d = Deframer::new();
    assert_eq!(
        d.unwrap_into(&[0x17, 3, 3, 0x41, 1], &mut out),
        Err(RecordError::Length(0x4101))
    );
    let mut d = Deframer::new();
    assert_eq!(
        d.unwrap_into(&[0x17, 3, 3, 0, 0], &mut out),
        Err(RecordError::Length(0))
    );
}

#[test]
fn frame_splits_at_a_full_record() {
    let data = vec![9u8; MAX_WRITE_PAYLOAD * 2 + 3];
    let mut wire = Vec::new();
    record::frame(&data, &mut wire);
    assert_eq!(wire.len(), data.len() + 3 * 5);
    assert_eq!(wire[3..5], (MAX_WRITE_PAYLOAD as u16).to_be_bytes());
}

#[test]
fn secret_text_round_trips_and_debug_hides_it() {
    let s = Secret::from_bytes(*b"0123456789abcdef");
    let t = s.to_text();
    assert_eq!(t.len(), 22);
    assert_eq!(Secret::from_text(&t), Ok(s.clone()));
    assert!(Secret::from_text("short").is_err());
    assert!(Secret::from_text(&format!("{}!", &t[..21])).is_err());
    assert!(!format!("{s:?}").contains(&t));
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = hello::peek(&bytes);
        if let Ok(h) = hello::parse(&bytes) {
            prop_assert!(h.record.len() <= bytes.len());
            let _ = tag::verify(&h, [&secret(1)], NOW);
            let _ = h.extensions().count();
        }
        let _ = reply::flight_len(&bytes);
        let _ = reply::verify(&bytes, &[0; 32], &secret(1));
    }

    #[test]
    fn any_flipped_byte_fails_the_tag(seed in any::<u64>(), at in any::<usize>(), bit in 0u8..8) {
        let s = secret(1);
        let mut rec = sealed(seed, &s, NOW);
        let at = at % rec.len();
        rec[at] ^= 1 << bit;
        if let Ok(h) = hello::parse(&rec) {
            prop_assert!(tag::verify(&h, [&s], NOW).is_err());
        }
    }

    #[test]
    fn any_flipped_byte_fails_the_reply(seed in any::<u64>(), at in any::<usize>(), bit in 0u8..8) {
        let s = secret(1);
        let sid = [3u8; 32];
        let mut fill = rng(seed);
        let mut flight = reply::build(&TLS13_SERVER, &sid, &s, &mut fill);
        let at = at % flight.len();
        flight[at] ^= 1 << bit;
        prop_assert!(reply::verify(&flight, &sid, &s).is_err());
    }

    #[test]
    fn truncated_hello_is_refused(seed in any::<u64>(), cut in any::<usize>()) {
        let rec = sealed(seed, &secret(1), NOW);
        let cut = cut % rec.len();
        prop_assert!(hello::parse(&rec[..cut]).is_err());
    }

    #[test]
    fn deframe_returns_what_was_framed(
        data in proptest::collection::vec(any::<u8>(), 0..40000),
        splits in proptest::collection::vec(1usize..5000, 1..20),
    ) {
        let mut wire = CHANGE_CIPHER_SPEC.to_vec();
        record::frame(&data, &mut wire);
        let mut d = Deframer::new();
        let mut out = Vec::new();
        let mut rest = &wire[..];
        for s in splits.iter().cycle().take(10_000) {
            if rest.is_empty() {
                break;
            }
            let n = (*s).min(rest.len());
            d.unwrap_into(&rest[..n], &mut out).expect("unwraps");
            rest = &rest[n..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(out, data);
        prop_assert!(d.at_boundary());
    }
}

#[test]
fn grease_marker_is_grease() {
    assert!(is_grease(GREASE));
    assert!(is_grease(0xfafa));
    assert!(!is_grease(0x0a1a));
}

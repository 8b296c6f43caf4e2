//! JA4, FoxIO's TLS client fingerprint, of a parsed ClientHello: the tests
//! compare the Ponte client's opening with a real browser's by it, and an
//! operator can check a capture against a published fingerprint.
//!
//! ```text
//! t 13 d 15 16 h2 _ 8daaf6152771 _ d8a2da3f94cd
//! │ │  │ │  │  │    │              └ SHA-256 of the sorted extensions (minus SNI and
//! │ │  │ │  │  │    │                ALPN), "_", the signature algorithms in order
//! │ │  │ │  │  │    └ SHA-256 of the sorted cipher suites, first 12 hex digits
//! │ │  │ │  │  └ first and last character of the first ALPN value ("00": none)
//! │ │  │ │  └ extensions, counted with SNI and ALPN (at most 99)
//! │ │  │ └ cipher suites (at most 99)
//! │ │  └ d: a server name is sent, i: none
//! │ └ highest version in supported_versions, else the legacy version
//! └ t: TLS over TCP
//! ```
//!
//! GREASE values are left out everywhere. Lists are written as 4-digit
//! lower-case hex, comma-separated, before hashing.

use super::hello::{ext, is_grease, ClientHello, Reader};
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;

/// The JA4 fingerprint of `hello` (TLS over TCP).
pub fn ja4(hello: &ClientHello<'_>) -> String {
    let ja4 = Ja4::of(hello);
    format!(
        "{}_{}_{}",
        ja4.a(),
        truncated_hash(&ja4.ciphers()),
        truncated_hash(&ja4.extensions())
    )
}

/// JA4's raw form (`ja4_r`): section a, then the lists that sections b and c
/// hash, unhashed. What tells two fingerprints apart.
pub fn ja4_r(hello: &ClientHello<'_>) -> String {
    let ja4 = Ja4::of(hello);
    format!("{}_{}_{}", ja4.a(), ja4.ciphers(), ja4.extensions())
}

struct Ja4 {
    version: u16,
    sni: bool,
    ciphers: Vec<u16>,
    extensions: Vec<u16>,
    alpn: Option<Vec<u8>>,
    signature_algorithms: Vec<u16>,
}

impl Ja4 {
    fn of(h: &ClientHello<'_>) -> Ja4 {
        let ciphers: Vec<u16> = h.cipher_suites().filter(|c| !is_grease(*c)).collect();
        let mut extensions = Vec::new();
        let mut sni = false;
        let mut signature_algorithms = Vec::new();
        for (kind, data) in h.extensions() {
            if is_grease(kind) {
                continue;
            }
            extensions.push(kind);
            match kind {
                ext::SERVER_NAME => sni = true,
                ext::SIGNATURE_ALGORITHMS => {
                    let mut r = Reader::new(data);
                    if let Ok(list) = r.vec16("signature algorithms") {
                        signature_algorithms = list
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .filter(|s| !is_grease(*s))
                            .collect();
                    }
                }
                _ => {}
            }
        }
        let version = h
            .versions()
            .filter(|v| !is_grease(*v))
            .max()
            .unwrap_or(h.legacy_version);
        Ja4 {
            version,
            sni,
            ciphers,
            extensions,
            alpn: h.alpn().next().map(<[u8]>::to_vec),
            signature_algorithms,
        }
    }

    fn a(&self) -> String {
        let version = match self.version {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            0x0300 => "s3",
            0x0002 => "s2",
            0xfeff => "d1",
            0xfefd => "d2",
            0xfefc => "d3",
            _ => "00",
        };
        format!(
            "t{version}{}{:02}{:02}{}",
            if self.sni { 'd' } else { 'i' },
            self.ciphers.len().min(99),
            self.extensions.len().min(99),
            alpn_chars(self.alpn.as_deref())
        )
    }

    fn ciphers(&self) -> String {
        let mut c = self.ciphers.clone();
        c.sort_unstable();
        hex_list(&c)
    }

    fn extensions(&self) -> String {
        let mut e: Vec<u16> = self
            .extensions
            .iter()
            .copied()
            .filter(|&e| e != ext::SERVER_NAME && e != ext::ALPN)
            .collect();
        e.sort_unstable();
        let mut s = hex_list(&e);
        if !self.signature_algorithms.is_empty() {
            s.push('_');
            s.push_str(&hex_list(&self.signature_algorithms));
        }
        s
    }
}

/// The first and last character of the first ALPN value; when either is
/// not an ASCII letter or digit, the first and last hex digit of the value.
fn alpn_chars(alpn: Option<&[u8]>) -> String {
    match alpn {
        Some([first, .., last]) | Some([first @ last]) => {
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                format!("{}{}", char::from(*first), char::from(*last))
            } else {
                let first = format!("{first:02x}");
                let last = format!("{last:02x}");
                format!("{}{}", &first[..1], &last[1..])
            }
        }
        _ => "00".to_owned(),
    }
}

fn hex_list(v: &[u16]) -> String {
    let mut s = String::with_capacity(v.len() * 5);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x:04x}");
    }
    s
}

/// The first 12 hex digits of SHA-256, or twelve zeros for an empty list.
fn truncated_hash(s: &str) -> String {
    if s.is_empty() {
        return "000000000000".to_owned();
    }
    let d = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(12);
    for b in &d[..6] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes of FoxIO's published Chrome fingerprint
    /// (t13d1516h2_8daaf6152771_d8a2da3f94cd) from its raw lists.
    #[test]
    fn hashes_match_the_published_chrome_fingerprint() {
        assert_eq!(
            truncated_hash(
                "002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"
            ),
            "8daaf6152771"
        );
        assert_eq!(
            truncated_hash(
                "0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,fe0d,ff01_\
                 0403,0804,0401,0503,0805,0501,0806,0601"
            ),
            "d8a2da3f94cd"
        );
        assert_eq!(truncated_hash(""), "000000000000");
    }

    /// Debian's Chromium 156 (captured by `ponte-cli`'s `stealth_ja4` test).
    const CHROMIUM_156: &str = "t13d1517h2_8daaf6152771_cb7bf5808d99";

    /// The template's hellos have Chromium's fingerprint, whatever the
    /// shuffle and the GREASE values drawn.
    #[test]
    fn chrome_template_has_chromes_fingerprint() {
        for seed in 1..50u64 {
            let mut s = seed;
            let mut fill = |b: &mut [u8]| {
                for x in b {
                    s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    *x = (s >> 56) as u8;
                }
            };
            let rec = super::super::template::build(
                &super::super::template::CHROME,
                "www.example.com",
                &mut fill,
            )
            .expect("builds");
            let h = super::super::hello::parse(&rec).expect("parses");
            assert_eq!(ja4(&h), CHROMIUM_156, "seed {seed}");
            assert!(ja4_r(&h).ends_with(
                "ca34,fe0d,ff01_0904,0905,0906,0403,0804,0401,0503,0805,0501,0806,0601"
            ));
        }
    }

    #[test]
    fn alpn_characters() {
        assert_eq!(alpn_chars(Some(b"h2")), "h2");
        assert_eq!(alpn_chars(Some(b"http/1.1")), "h1");
        assert_eq!(alpn_chars(Some(b"x")), "xx");
        assert_eq!(alpn_chars(Some(&[0xab])), "ab");
        assert_eq!(alpn_chars(Some(&[0xab, b'x', 0xcd])), "ad");
        assert_eq!(alpn_chars(Some(b"")), "00");
        assert_eq!(alpn_chars(None), "00");
    }
}

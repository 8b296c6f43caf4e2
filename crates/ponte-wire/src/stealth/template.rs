//! Chrome-shaped ClientHellos, built from a template that is data.
//!
//! A [`Template`] lists the cipher suites, the extensions and their order
//! rules, the groups and key shares with their real sizes, ALPN, signature
//! algorithms, versions and the padding rule. [`CHROME`] is current Chrome
//! (checked against Debian's Chromium 156 by JA4 in the tests:
//! X25519MLKEM768 key share, extension order shuffled per connection with
//! GREASE first and last, GREASE ECH, ALPS on 17613, a GREASE signature
//! algorithm and ML-DSA ones first, Trust Anchor IDs); when browsers change,
//! the template changes and nothing else.
//!
//! The builder takes the randomness as a function that fills buffers (the
//! caller passes its CSPRNG), so it stays free of I/O and deterministic
//! under test. It writes the session id as 32 zero bytes; [`super::tag`]
//! fills it with the authentication tag.
//!
//! Key shares are filled so that they read as real ones: an X25519 share
//! is 32 random bytes with the top bit clear (a field element below 2^255),
//! an ML-KEM-768 encapsulation key is 768 coefficients below q = 3329 packed
//! 12 bits each, then 32 random bytes of seed.

use super::hello::{ext, RECORD_HEADER_LEN};

/// A GREASE placeholder in a template list: replaced by the GREASE value
/// drawn for that list.
pub const GREASE: u16 = 0x0a0a;

/// Named groups.
pub mod group {
    /// X25519MLKEM768 (hybrid post-quantum).
    pub const X25519_MLKEM768: u16 = 0x11ec;
    /// X25519.
    pub const X25519: u16 = 0x001d;
    /// secp256r1.
    pub const SECP256R1: u16 = 0x0017;
    /// secp384r1.
    pub const SECP384R1: u16 = 0x0018;
}

/// An extension in a template, written as the template says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// A GREASE extension with this many zero bytes of data. The first and
    /// the second GREASE extension of a hello get different values.
    Grease(u8),
    /// server_name with the host name given to the builder.
    ServerName,
    /// supported_groups from [`Template::groups`].
    SupportedGroups,
    /// key_share from [`Template::key_shares`].
    KeyShare,
    /// ALPN from [`Template::alpn`].
    Alpn,
    /// signature_algorithms from [`Template::signature_algorithms`].
    SignatureAlgorithms,
    /// supported_versions from [`Template::versions`].
    SupportedVersions,
    /// application_settings (ALPS) for `h2`.
    ApplicationSettings(u16),
    /// A GREASE encrypted_client_hello (outer, HPKE X25519 / HKDF-SHA256 /
    /// AES-128-GCM, random config id and enc, payload length drawn from
    /// [`Template::ech_payload_lens`]).
    EchGrease,
    /// An extension with fixed data.
    Fixed(u16, &'static [u8]),
}

/// How one key share is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyShare {
    /// A GREASE group with one zero byte (Chrome's).
    Grease,
    /// X25519MLKEM768: an ML-KEM-768 encapsulation key (1184 bytes) then an
    /// X25519 share (32): 1216 bytes.
    X25519MlKem768,
    /// X25519: 32 bytes.
    X25519,
}

/// The padding extension rule (BoringSSL's): a hello whose handshake
/// message would be `min..max` bytes long is padded to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Lower bound (inclusive) of the unpadded handshake length.
    pub min: usize,
    /// The length padded to (exclusive upper bound).
    pub max: usize,
}

/// A ClientHello template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Name, for logs and tests.
    pub name: &'static str,
    /// The record header's version.
    pub record_version: u16,
    /// Cipher suites; [`GREASE`] marks where a GREASE value goes.
    pub cipher_suites: &'static [u16],
    /// Extensions in template order.
    pub extensions: &'static [Extension],
    /// Shuffle the extensions per hello, except the first and the last
    /// (Chrome keeps a GREASE extension at each end).
    pub shuffle: bool,
    /// supported_groups; [`GREASE`] marks the GREASE group.
    pub groups: &'static [u16],
    /// key_share entries, in order.
    pub key_shares: &'static [KeyShare],
    /// ALPN protocols.
    pub alpn: &'static [&'static [u8]],
    /// signature_algorithms; [`GREASE`] marks the GREASE algorithm.
    pub signature_algorithms: &'static [u16],
    /// supported_versions; [`GREASE`] marks the GREASE version.
    pub versions: &'static [u16],
    /// Lengths a GREASE ECH payload is drawn from.
    pub ech_payload_lens: &'static [u16],
    /// The padding rule, if any.
    pub padding: Option<Padding>,
}

/// The Trust Anchor IDs Chrome 156 sends (its root store's, as relative
/// OIDs): fixed data, the same in every hello until the root store changes.
const CHROME_TRUST_ANCHORS: &[u8] = &[
    0x00, 0xb8, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x01, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x06, 0x05, 0x82,
    0xdf, 0x13, 0x02, 0x0d, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x0e, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x0f,
    0x05, 0x82, 0xdf, 0x13, 0x02, 0x12, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x13, 0x05, 0x82, 0xdf, 0x13,
    0x02, 0x14, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x07, 0x08, 0x83, 0x9a, 0x64, 0x8c,
    0x9b, 0x2d, 0x01, 0x08, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x09, 0x08, 0x83, 0x9a,
    0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0a, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0b, 0x08,
    0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0c, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01,
    0x0d, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x12, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b,
    0x2d, 0x01, 0x13, 0x04, 0xd6, 0x79, 0x09, 0x01, 0x04, 0xd6, 0x79, 0x09, 0x04, 0x04, 0xd6, 0x79,
    0x09, 0x05, 0x04, 0xd6, 0x79, 0x09, 0x06, 0x04, 0xd6, 0x79, 0x09, 0x07, 0x04, 0xd6, 0x79, 0x09,
    0x08, 0x04, 0xd6, 0x79, 0x09, 0x0a, 0x04, 0xd6, 0x79, 0x09, 0x0b, 0x04, 0xd6, 0x79, 0x09, 0x0c,
    0x04, 0xd6, 0x79, 0x09, 0x0d, 0x04, 0xd6, 0x79, 0x09, 0x0f,
];

/// Current Chrome (156 on desktop; Debian's Chromium 156 has the same JA4).
pub const CHROME: Template = Template {
    name: "chrome-156",
    record_version: 0x0301,
    cipher_suites: &[
        GREASE, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
        0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
    ],
    extensions: &[
        Extension::Grease(0),
        Extension::ServerName,
        Extension::Fixed(ext::EXTENDED_MASTER_SECRET, &[]),
        Extension::Fixed(ext::RENEGOTIATION_INFO, &[0]),
        Extension::SupportedGroups,
        Extension::Fixed(ext::EC_POINT_FORMATS, &[1, 0]),
        Extension::Fixed(ext::SESSION_TICKET, &[]),
        Extension::Alpn,
        Extension::Fixed(ext::STATUS_REQUEST, &[1, 0, 0, 0, 0]),
        Extension::SignatureAlgorithms,
        Extension::Fixed(ext::SCT, &[]),
        Extension::KeyShare,
        Extension::Fixed(ext::PSK_KEY_EXCHANGE_MODES, &[1, 1]),
        Extension::SupportedVersions,
        Extension::Fixed(ext::COMPRESS_CERTIFICATE, &[2, 0, 2]),
        Extension::Fixed(ext::TRUST_ANCHORS, CHROME_TRUST_ANCHORS),
        Extension::ApplicationSettings(ext::APPLICATION_SETTINGS),
        Extension::EchGrease,
        Extension::Grease(1),
    ],
    shuffle: true,
    groups: &[
        GREASE,
        group::X25519_MLKEM768,
        group::X25519,
        group::SECP256R1,
        group::SECP384R1,
    ],
    key_shares: &[KeyShare::Grease, KeyShare::X25519MlKem768, KeyShare::X25519],
    alpn: &[b"h2", b"http/1.1"],
    signature_algorithms: &[
        GREASE, 0x0904, 0x0905, 0x0906, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806,
        0x0601,
    ],
    versions: &[GREASE, 0x0304, 0x0303],
    ech_payload_lens: &[144, 176, 208, 240],
    padding: Some(Padding { min: 256, max: 512 }),
};

/// Offset of the session id's 32 bytes in a built record.
pub const SESSION_ID_OFFSET: usize = RECORD_HEADER_LEN + 4 + 2 + 32 + 1;

/// Offset of the client random in a built record.
pub const RANDOM_OFFSET: usize = RECORD_HEADER_LEN + 4 + 2;

/// Why a hello cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The server name is empty or longer than 253 bytes.
    #[error("the TLS server name must be 1 to 253 bytes")]
    ServerName,
    /// The template makes a hello longer than one record.
    #[error("the template makes a ClientHello longer than one record")]
    TooLong,
}

/// A source of random bytes (the caller's CSPRNG).
pub type Fill<'r> = &'r mut dyn FnMut(&mut [u8]);

fn u16_at(fill: Fill<'_>) -> u16 {
    let mut b = [0u8; 2];
    fill(&mut b);
    u16::from_be_bytes(b)
}

/// Draws a GREASE value, different from every value in `not`.
fn grease(fill: Fill<'_>, not: &[u16]) -> u16 {
    let mut b = [0u8; 1];
    fill(&mut b);
    let mut i = b[0] & 0x0f;
    // At most 16 values, `not` holds fewer: the loop ends.
    for _ in 0..16 {
        let v = u16::from(i) << 12 | 0x0a00 | u16::from(i) << 4 | 0x0a;
        if !not.contains(&v) {
            return v;
        }
        i = (i + 1) & 0x0f;
    }
    0x0a0a
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes `len` as u16 at `at` (callers keep every length below 2^16).
fn patch_u16(out: &mut [u8], at: usize, len: usize) {
    let v = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    out[at..at + 2].copy_from_slice(&v);
}

/// Appends a vector with a u16 length prefix, written by `body`.
fn vec16(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let len = out.len() - at - 2;
    patch_u16(out, at, len);
}

/// Fills an ML-KEM-768 encapsulation key: 768 coefficients below 3329 in
/// 12 bits each, then the 32-byte seed.
fn mlkem768_key(fill: Fill<'_>, out: &mut Vec<u8>) {
    let mut raw = [0u8; 4 * 64];
    for _ in 0..(768 / 64) {
        fill(&mut raw);
        let mut coeffs = [0u16; 64];
        for (c, b) in coeffs.iter_mut().zip(raw.chunks_exact(4)) {
            // 32 random bits reduced mod q: the bias is below 2^-19.
            let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % 3329;
            *c = v as u16;
        }
        for pair in coeffs.chunks_exact(2) {
            let (a, b) = (pair[0], pair[1]);
            out.push((a & 0xff) as u8);
            out.push(((a >> 8) | ((b & 0x0f) << 4)) as u8);
            out.push((b >> 4) as u8);
        }
    }
    let mut seed = [0u8; 32];
    fill(&mut seed);
    out.extend_from_slice(&seed);
}

/// An X25519 public value: 32 random bytes below 2^255.
pub(crate) fn x25519_key(fill: Fill<'_>, out: &mut Vec<u8>) {
    let mut k = [0u8; 32];
    fill(&mut k);
    k[31] &= 0x7f;
    out.extend_from_slice(&k);
}

/// Builds a ClientHello record from `template` for `server_name`, with a
/// zero session id of 32 bytes at [`SESSION_ID_OFFSET`].
pub fn build(
    template: &Template,
    server_name: &str,
    fill: Fill<'_>,
) -> Result<Vec<u8>, BuildError> {
    if server_name.is_empty() || server_name.len() > 253 {
        return Err(BuildError::ServerName);
    }
    let cs_grease = grease(fill, &[]);
    let group_grease = grease(fill, &[]);
    let version_grease = grease(fill, &[]);
    let sigalg_grease = grease(fill, &[]);
    let ext_grease1 = grease(fill, &[]);
    let ext_grease2 = grease(fill, &[ext_grease1]);

    let mut order: Vec<usize> = (0..template.extensions.len()).collect();
    if template.shuffle && order.len() > 3 {
        // Fisher-Yates over the middle, keeping the first and the last.
        let last = order.len() - 1;
        for i in (2..last).rev() {
            let j = 1 + usize::from(u16_at(fill)) % i;
            order.swap(i, j);
        }
    }

    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(&[0x16]);
    put_u16(&mut out, template.record_version);
    out.extend_from_slice(&[0, 0]); // record length
    out.extend_from_slice(&[1, 0, 0, 0]); // handshake type, length
    put_u16(&mut out, 0x0303);
    let mut random = [0u8; 32];
    fill(&mut random);
    out.extend_from_slice(&random);
    out.push(32);
    out.extend_from_slice(&[0u8; 32]);
    vec16(&mut out, |o| {
        for &c in template.cipher_suites {
            put_u16(o, if c == GREASE { cs_grease } else { c });
        }
    });
    out.extend_from_slice(&[1, 0]);
    let ext_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut greases_used = 0;
    for &i in &order {
        let e = template.extensions[i];
        match e {
            Extension::Grease(n) => {
                let v = if greases_used == 0 {
                    ext_grease1
                } else {
                    ext_grease2
                };
                greases_used += 1;
                put_u16(&mut out, v);
                vec16(&mut out, |o| {
                    o.extend(std::iter::repeat_n(0u8, usize::from(n)))
                });
            }
            Extension::ServerName => {
                put_u16(&mut out, ext::SERVER_NAME);
                vec16(&mut out, |o| {
                    vec16(o, |o| {
                        o.push(0);
                        vec16(o, |o| o.extend_from_slice(server_name.as_bytes()));
                    })
                });
            }
            Extension::SupportedGroups => {
                put_u16(&mut out, ext::SUPPORTED_GROUPS);
                vec16(&mut out, |o| {
                    vec16(o, |o| {
                        for &g in template.groups {
                            put_u16(o, if g == GREASE { group_grease } else { g });
                        }
                    })
                });
            }
            Extension::KeyShare => {
                put_u16(&mut out, ext::KEY_SHARE);
                vec16(&mut out, |o| {
                    vec16(o, |o| {
                        for &k in template.key_shares {
                            match k {
                                KeyShare::Grease => {
                                    put_u16(o, group_grease);
                                    vec16(o, |o| o.push(0));
                                }
                                KeyShare::X25519MlKem768 => {
                                    put_u16(o, group::X25519_MLKEM768);
                                    vec16(o, |o| {
                                        mlkem768_key(fill, o);
                                        x25519_key(fill, o);
                                    });
                                }
                                KeyShare::X25519 => {
                                    put_u16(o, group::X25519);
                                    vec16(o, |o| x25519_key(fill, o));
                                }
                            }
                        }
                    })
                });
            }
            Extension::Alpn => {
                put_u16(&mut out, ext::ALPN);
                vec16(&mut out, |o| {
                    vec16(o, |o| {
                        for p in template.alpn {
                            o.push(p.len() as u8);
                            o.extend_from_slice(p);
                        }
                    })
                });
            }
            Extension::SignatureAlgorithms => {
                put_u16(&mut out, ext::SIGNATURE_ALGORITHMS);
                vec16(&mut out, |o| {
                    vec16(o, |o| {
                        for &s in template.signature_algorithms {
                            put_u16(o, if s == GREASE { sigalg_grease } else { s });
                        }
                    })
                });
            }
            Extension::SupportedVersions => {
                put_u16(&mut out, ext::SUPPORTED_VERSIONS);
                vec16(&mut out, |o| {
                    o.push((template.versions.len() * 2) as u8);
                    for &v in template.versions {
                        put_u16(o, if v == GREASE { version_grease } else { v });
                    }
                });
            }
            Extension::ApplicationSettings(code) => {
                put_u16(&mut out, code);
                vec16(&mut out, |o| {
                    vec16(o, |o| {
                        o.push(2);
                        o.extend_from_slice(b"h2");
                    })
                });
            }
            Extension::EchGrease => {
                put_u16(&mut out, ext::ENCRYPTED_CLIENT_HELLO);
                vec16(&mut out, |o| {
                    o.push(0); // outer
                    put_u16(o, 0x0001); // HKDF-SHA256
                    put_u16(o, 0x0001); // AES-128-GCM
                    let mut id = [0u8; 1];
                    fill(&mut id);
                    o.push(id[0]);
                    vec16(o, |o| x25519_key(fill, o));
                    let lens = template.ech_payload_lens;
                    let len = if lens.is_empty() {
                        144
                    } else {
                        lens[usize::from(u16_at(fill)) % lens.len()]
                    };
                    let mut payload = vec![0u8; usize::from(len)];
                    fill(&mut payload);
                    vec16(o, |o| o.extend_from_slice(&payload));
                });
            }
            Extension::Fixed(code, data) => {
                put_u16(&mut out, code);
                vec16(&mut out, |o| o.extend_from_slice(data));
            }
        }
    }
    if let Some(p) = template.padding {
        let hs_len = out.len() - RECORD_HEADER_LEN;
        if (p.min..p.max).contains(&hs_len) {
            // The padding extension's own header takes 4 bytes.
            let pad = (p.max - hs_len).saturating_sub(4);
            put_u16(&mut out, ext::PADDING);
            vec16(&mut out, |o| o.extend(std::iter::repeat_n(0u8, pad)));
        }
    }
    let ext_len = out.len() - ext_at - 2;
    let hs_len = out.len() - RECORD_HEADER_LEN - 4;
    let rec_len = out.len() - RECORD_HEADER_LEN;
    if rec_len > super::hello::MAX_HELLO_RECORD || ext_len > usize::from(u16::MAX) {
        return Err(BuildError::TooLong);
    }
    patch_u16(&mut out, ext_at, ext_len);
    patch_u16(&mut out, 3, rec_len);
    out[6] = (hs_len >> 16) as u8;
    out[7] = (hs_len >> 8) as u8;
    out[8] = hs_len as u8;
    Ok(out)
}

//! The relay's reply to an authenticated ClientHello: a TLS 1.3 server's
//! first flight in shape, with a tag proving the relay knows the secret.
//!
//! ```text
//! record 0x16: ServerHello
//!   legacy_version 0x0303 | random [32] = tag | session_id = client's (32)
//!   cipher_suite | compression 0
//!   extensions: supported_versions (0x0304), key_share (group, key)
//! record 0x14: ChangeCipherSpec (1)
//! record 0x17: opaque bytes, as long as an encrypted certificate flight
//!
//! tag = HMAC-SHA256(secret, "ponte stealth v1 server" || client session id
//!                   || the three records with the server random zeroed)
//! ```
//!
//! The tag binds the reply to the client's own tag (its session id), so a
//! recorded reply is worth nothing for another hello, and covers every byte
//! of the flight. A client that finds a wrong tag talks to something that
//! does not hold the link's secret and must not go on ([`verify`]).

use super::hello::{Reader, RECORD_HEADER_LEN};
use super::record::{content, CHANGE_CIPHER_SPEC, MAX_RECORD_PAYLOAD};
use super::tag::{hmac_parts, TAG_LEN};
use super::template::{group, x25519_key, Fill};
use super::Secret;

const SERVER_LABEL: &[u8] = b"ponte stealth v1 server";

/// Offset of the server random in the flight.
const RANDOM_OFFSET: usize = RECORD_HEADER_LEN + 4 + 2;

/// The shape of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTemplate {
    /// The cipher suite chosen.
    pub cipher_suite: u16,
    /// The key share group chosen: X25519MLKEM768 (1120-byte share: an
    /// ML-KEM-768 ciphertext and an X25519 share) or X25519 (32).
    pub group: u16,
    /// Smallest and largest length of the opaque application-data record
    /// (a certificate chain, its signature and Finished, encrypted).
    pub app_data_len: (u16, u16),
}

/// A TLS 1.3 server answering current Chrome: AES-128-GCM, the hybrid
/// post-quantum group, and a first encrypted flight of 2.5 to 4.5 KiB (a
/// two-certificate ECDSA or RSA chain).
pub const TLS13_SERVER: ServerTemplate = ServerTemplate {
    cipher_suite: 0x1301,
    group: group::X25519_MLKEM768,
    app_data_len: (2560, 4608),
};

/// Why a server flight is refused by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// Not the three records of a server flight, or malformed.
    #[error("the relay's first flight is not a TLS server flight")]
    Malformed,
    /// Well formed, but the tag is wrong: whoever answered does not hold the
    /// link's secret.
    #[error("the relay failed authentication (its reply does not prove the link's secret)")]
    BadTag,
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Builds the reply to a hello whose session id (the client's tag) is
/// `client_sid`.
pub fn build(
    template: &ServerTemplate,
    client_sid: &[u8; TAG_LEN],
    secret: &Secret,
    fill: Fill<'_>,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(1120);
    if template.group == group::X25519_MLKEM768 {
        let mut ct = vec![0u8; 1088];
        fill(&mut ct);
        key.extend_from_slice(&ct);
    }
    x25519_key(fill, &mut key);
    let (lo, hi) = template.app_data_len;
    let (lo, hi) = (usize::from(lo.max(1)), usize::from(hi.max(lo.max(1))));
    let mut r = [0u8; 2];
    fill(&mut r);
    let app_len = (lo + usize::from(u16::from_be_bytes(r)) % (hi - lo + 1)).min(MAX_RECORD_PAYLOAD);

    let mut body = Vec::with_capacity(1300);
    put_u16(&mut body, 0x0303);
    body.extend_from_slice(&[0u8; 32]);
    body.push(TAG_LEN as u8);
    body.extend_from_slice(client_sid);
    put_u16(&mut body, template.cipher_suite);
    body.push(0);
    let ext_len = 6 + 8 + key.len();
    put_u16(&mut body, ext_len as u16);
    put_u16(&mut body, super::hello::ext::SUPPORTED_VERSIONS);
    put_u16(&mut body, 2);
    put_u16(&mut body, 0x0304);
    put_u16(&mut body, super::hello::ext::KEY_SHARE);
    put_u16(&mut body, (key.len() + 4) as u16);
    put_u16(&mut body, template.group);
    put_u16(&mut body, key.len() as u16);
    body.extend_from_slice(&key);

    let mut out = Vec::with_capacity(body.len() + 4 + 5 + 6 + 5 + app_len);
    out.push(content::HANDSHAKE);
    put_u16(&mut out, 0x0303);
    put_u16(&mut out, (body.len() + 4) as u16);
    out.push(2);
    let l = body.len();
    out.extend_from_slice(&[(l >> 16) as u8, (l >> 8) as u8, l as u8]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&CHANGE_CIPHER_SPEC);
    out.push(content::APPLICATION_DATA);
    put_u16(&mut out, 0x0303);
    put_u16(&mut out, app_len as u16);
    let at = out.len();
    out.resize(at + app_len, 0);
    fill(&mut out[at..]);

    let tag = hmac_parts(secret, &[SERVER_LABEL, client_sid, &out]);
    out[RANDOM_OFFSET..RANDOM_OFFSET + 32].copy_from_slice(&tag);
    out
}

/// How many bytes the server flight at the start of `buf` takes: `Ok(None)`
/// when more bytes are needed. Refuses anything that is not a handshake
/// record, a ChangeCipherSpec and an application-data record, each within
/// the record size limit.
pub fn flight_len(buf: &[u8]) -> Result<Option<usize>, ReplyError> {
    let mut at = 0;
    for expected in [
        content::HANDSHAKE,
        content::CHANGE_CIPHER_SPEC,
        content::APPLICATION_DATA,
    ] {
        let Some(h) = buf.get(at..at + RECORD_HEADER_LEN) else {
            return Ok(None);
        };
        if h[0] != expected || h[1] != 0x03 || h[2] != 0x03 {
            return Err(ReplyError::Malformed);
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return Err(ReplyError::Malformed);
        }
        at += RECORD_HEADER_LEN + len;
    }
    Ok(if buf.len() >= at { Some(at) } else { None })
}

/// Checks a complete server flight (`flight_len` bytes) against the
/// client's session id and the link's secret.
pub fn verify(
    flight: &[u8],
    client_sid: &[u8; TAG_LEN],
    secret: &Secret,
) -> Result<(), ReplyError> {
    if flight_len(flight)? != Some(flight.len()) {
        return Err(ReplyError::Malformed);
    }
    let hs_len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
    let mut r = Reader::new(&flight[RECORD_HEADER_LEN..RECORD_HEADER_LEN + hs_len]);
    let m = |_| ReplyError::Malformed;
    if r.u8("").map_err(m)? != 2 || r.u24("").map_err(m)? != hs_len - 4 {
        return Err(ReplyError::Malformed);
    }
    r.u16("").map_err(m)?;
    let random = r.take(32, "").map_err(m)?;
    if r.vec8("").map_err(m)? != client_sid {
        return Err(ReplyError::Malformed);
    }
    let mut zeroed = flight.to_vec();
    zeroed[RANDOM_OFFSET..RANDOM_OFFSET + 32].fill(0);
    let expected = hmac_parts(secret, &[SERVER_LABEL, client_sid, &zeroed]);
    let mut diff = 0u8;
    for (a, b) in expected.iter().zip(random) {
        diff |= a ^ b;
    }
    if diff != 0 {
        return Err(ReplyError::BadTag);
    }
    Ok(())
}

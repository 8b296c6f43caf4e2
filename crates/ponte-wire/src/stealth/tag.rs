//! The client's authentication tag, in the ClientHello's 32-byte session id.
//!
//! ```text
//! mask       = HMAC-SHA256(secret, "ponte stealth v1 time" || client random)[0..4]
//! session_id = (unix seconds as u32, big-endian) XOR mask          [0..4]
//!           || HMAC-SHA256(secret, "ponte stealth v1 hello" || unix seconds
//!                          || the record with session_id zeroed)[0..28]  [4..32]
//! ```
//!
//! The session id reads as random bytes to anyone without the secret. The
//! MAC covers every byte of the record (header included) and the time, so
//! any byte flipped anywhere, the time field included, fails. The relay
//! checks the time against its clock with a window ([`WINDOW_SECS`]), and
//! keeps the [`Verified::replay_key`] of every accepted hello for longer
//! than the window so that a replayed first flight is refused. Comparison
//! is constant-time.

use super::hello::ClientHello;
use super::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const TIME_LABEL: &[u8] = b"ponte stealth v1 time";
const HELLO_LABEL: &[u8] = b"ponte stealth v1 hello";

/// How far the client's clock may be from the relay's, either way.
pub const WINDOW_SECS: u32 = 120;

/// Bytes of the session id that carry the tag.
pub const TAG_LEN: usize = 32;

/// Why a ClientHello's tag is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    /// The session id is not 32 bytes long.
    #[error("no tag in the session id")]
    NoTag,
    /// No secret given makes this tag.
    #[error("no secret matches the tag")]
    NoMatch,
    /// The tag is valid but its time is outside the window.
    #[error("the tag's time is {skew} s away from the relay's clock")]
    Stale {
        /// Client time minus relay time, in seconds.
        skew: i64,
    },
}

/// A tag that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The index of the secret that made it.
    pub secret: usize,
    /// The client's time (unix seconds, low 32 bits).
    pub time: u32,
    /// 16 bytes unique to this hello, for the replay cache.
    pub replay_key: [u8; 16],
}

fn mac(secret: &Secret) -> HmacSha256 {
    // HMAC takes keys of any length.
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    }
}

fn time_mask(secret: &Secret, random: &[u8; 32]) -> [u8; 4] {
    let mut m = mac(secret);
    m.update(TIME_LABEL);
    m.update(random);
    let out = m.finalize().into_bytes();
    [out[0], out[1], out[2], out[3]]
}

fn hello_mac(secret: &Secret, time: u32, record: &[u8], sid: std::ops::Range<usize>) -> HmacSha256 {
    let mut m = mac(secret);
    m.update(HELLO_LABEL);
    m.update(&time.to_be_bytes());
    m.update(&record[..sid.start]);
    m.update(&[0u8; TAG_LEN]);
    m.update(&record[sid.end..]);
    m
}

/// Why a record cannot be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the record is not a ClientHello with a 32-byte session id")]
pub struct SealError;

/// Writes the tag into the session id of a built ClientHello record
/// ([`super::template::build`]).
pub fn seal(record: &mut [u8], secret: &Secret, unix_time: u64) -> Result<(), SealError> {
    let (sid, random) = {
        let hello = super::hello::parse(record).map_err(|_| SealError)?;
        if hello.session_id.len() != TAG_LEN {
            return Err(SealError);
        }
        (hello.session_id_range.clone(), hello.random)
    };
    let time = unix_time as u32;
    record[sid.clone()].fill(0);
    let full = hello_mac(secret, time, record, sid.clone())
        .finalize()
        .into_bytes();
    let mask = time_mask(secret, &random);
    let t = time.to_be_bytes();
    let s = &mut record[sid];
    for i in 0..4 {
        s[i] = t[i] ^ mask[i];
    }
    s[4..].copy_from_slice(&full[..TAG_LEN - 4]);
    Ok(())
}

/// Checks a ClientHello's tag against `secrets` (tried in order) and the
/// relay's clock `now` (unix seconds).
pub fn verify<'s>(
    hello: &ClientHello<'_>,
    secrets: impl IntoIterator<Item = &'s Secret>,
    now: u64,
) -> Result<Verified, TagError> {
    if hello.session_id.len() != TAG_LEN {
        return Err(TagError::NoTag);
    }
    let sid = hello.session_id;
    for (i, secret) in secrets.into_iter().enumerate() {
        let mask = time_mask(secret, &hello.random);
        let time = u32::from_be_bytes([
            sid[0] ^ mask[0],
            sid[1] ^ mask[1],
            sid[2] ^ mask[2],
            sid[3] ^ mask[3],
        ]);
        let m = hello_mac(secret, time, hello.record, hello.session_id_range.clone());
        if m.verify_truncated_left(&sid[4..]).is_err() {
            continue;
        }
        let skew = i64::from((time.wrapping_sub(now as u32)) as i32);
        if skew.unsigned_abs() > u64::from(WINDOW_SECS) {
            return Err(TagError::Stale { skew });
        }
        let mut replay_key = [0u8; 16];
        replay_key.copy_from_slice(&sid[4..20]);
        return Ok(Verified {
            secret: i,
            time,
            replay_key,
        });
    }
    Err(TagError::NoMatch)
}

/// HMAC-SHA256 under `secret` over the given parts (used by the reply).
pub(crate) fn hmac_parts(secret: &Secret, parts: &[&[u8]]) -> [u8; 32] {
    let mut m = mac(secret);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

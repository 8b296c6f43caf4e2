//! Application frames: a 4-byte big-endian length, then that many bytes of
//! protobuf (`ClientFrame` or `ServerFrame`). Pure: no I/O, fuzzable.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |                 length N (u32, big endian)                    |
//! +---------------------------------------------------------------+
//! |                 N bytes: protobuf message ...                 |
//! +---------------------------------------------------------------+
//! ```
//!
//! Frames are carried in the decrypted byte stream of the Noise channel (see
//! `ponte-transport`); a frame may span several Noise messages. The length is
//! checked against the cap as soon as its 4 bytes are available, before any
//! buffer for the body is reserved. A zero length is allowed (an empty
//! protobuf message) and decodes to an empty payload.

use thiserror::Error;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default (and recommended) cap on a frame's payload: 128 KiB.
pub const MAX_FRAME_LEN: usize = 128 * 1024;

/// Errors from frame encoding and decoding.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix (or the payload to encode) exceeds the cap.
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// Announced or actual payload length.
        len: u64,
        /// The cap in force.
        max: usize,
    },
}

/// Result of [`decode`] on a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame: its payload, and how many bytes of the buffer it used
    /// (prefix included); remove them before decoding the next frame.
    Complete {
        /// The frame's payload (the protobuf bytes).
        payload: &'a [u8],
        /// Bytes consumed from the start of the buffer.
        consumed: usize,
    },
    /// More bytes are needed; `needed` is a lower bound on how many more.
    Incomplete {
        /// At least this many more bytes are needed.
        needed: usize,
    },
}

/// Decodes one frame from the start of `buf`, refusing payloads longer than
/// `max_len` as soon as the prefix is known.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Decoded<'_>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(Decoded::Incomplete {
            needed: LEN_PREFIX - buf.len(),
        });
    };
    let mut len_bytes = [0u8; LEN_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes);
    let len_usize = usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len: u64::from(len),
        max: max_len,
    })?;
    if len_usize > max_len {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: max_len,
        });
    }
    let total = LEN_PREFIX + len_usize;
    match buf.get(LEN_PREFIX..total) {
        Some(payload) => Ok(Decoded::Complete {
            payload,
            consumed: total,
        }),
        None => Ok(Decoded::Incomplete {
            needed: total - buf.len(),
        }),
    }
}

/// The length prefix of a frame carrying `len` bytes of payload, unless
/// that exceeds `max_len`.
pub fn prefix(len: usize, max_len: usize) -> Result<[u8; LEN_PREFIX], FrameError> {
    let too_large = || FrameError::TooLarge {
        len: len as u64,
        max: max_len,
    };
    if len > max_len {
        return Err(too_large());
    }
    let len = u32::try_from(len).map_err(|_| too_large())?;
    Ok(len.to_be_bytes())
}

/// Appends a frame carrying `payload` to `out`.
pub fn encode(payload: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let prefix = prefix(payload.len(), max_len)?;
    out.reserve(LEN_PREFIX + payload.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a frame carrying the protobuf encoding of `msg` to `out`.
pub fn encode_message<M: prost::Message>(
    msg: &M,
    max_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    let prefix = prefix(len, max_len)?;
    out.reserve(LEN_PREFIX + len);
    out.extend_from_slice(&prefix);
    // Cannot fail: `out` has room (Vec grows) and `len` was computed above.
    msg.encode_raw(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_incremental() {
        let mut out = Vec::new();
        encode(b"hello", 16, &mut out).unwrap();
        encode(b"", 16, &mut out).unwrap();
        assert_eq!(&out[..4], &[0, 0, 0, 5]);
        for cut in 0..9 {
            assert!(matches!(
                decode(&out[..cut], 16).unwrap(),
                Decoded::Incomplete { .. }
            ));
        }
        let Decoded::Complete { payload, consumed } = decode(&out, 16).unwrap() else {
            panic!("expected a frame");
        };
        assert_eq!(payload, b"hello");
        assert_eq!(consumed, 9);
        let Decoded::Complete { payload, consumed } = decode(&out[9..], 16).unwrap() else {
            panic!("expected a frame");
        };
        assert_eq!(payload, b"");
        assert_eq!(consumed, 4);
    }

    #[test]
    fn oversize_refused_from_prefix_alone() {
        let buf = [0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&buf, MAX_FRAME_LEN),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: MAX_FRAME_LEN
            })
        );
        let mut out = Vec::new();
        assert!(encode(&[0u8; 17], 16, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn incomplete_reports_needed() {
        let buf = [0, 0, 0, 10, 1, 2];
        assert_eq!(
            decode(&buf, 100).unwrap(),
            Decoded::Incomplete { needed: 8 }
        );
    }
}

//! TLS record framing of the stream after the first flight.
//!
//! ```text
//! type u8 | version u16 = 0x0303 | length u16 | payload
//! ```
//!
//! The writer puts at most [`MAX_WRITE_PAYLOAD`] bytes in an
//! application-data record (0x17), the size of a full TLS 1.3 record: 2^14
//! of plaintext, its content type byte and a 16-byte AEAD tag. The reader
//! ([`Deframer`]) accepts application-data records up to
//! [`MAX_RECORD_PAYLOAD`] (2^14 + 256, RFC 8446's ciphertext limit) and
//! skips ChangeCipherSpec records (a TLS 1.3 client sends one before its
//! first encrypted record); any other type, a zero-length or an oversized
//! record ends the stream. It is a byte-level state machine: it hands back
//! ranges of the caller's buffer and copies nothing.

use std::ops::Range;

/// Largest record payload accepted.
pub const MAX_RECORD_PAYLOAD: usize = 16384 + 256;

/// Largest record payload written.
pub const MAX_WRITE_PAYLOAD: usize = 16384 + 17;

/// Record content types.
pub mod content {
    /// change_cipher_spec.
    pub const CHANGE_CIPHER_SPEC: u8 = 0x14;
    /// alert.
    pub const ALERT: u8 = 0x15;
    /// handshake.
    pub const HANDSHAKE: u8 = 0x16;
    /// application_data.
    pub const APPLICATION_DATA: u8 = 0x17;
}

/// A ChangeCipherSpec record, as a TLS 1.3 peer sends it for middlebox
/// compatibility.
pub const CHANGE_CIPHER_SPEC: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];

/// The header of an application-data record carrying `len` bytes
/// (`len <= MAX_WRITE_PAYLOAD`; larger values are clamped).
pub fn app_data_header(len: usize) -> [u8; 5] {
    let l = len.min(MAX_WRITE_PAYLOAD) as u16;
    let [a, b] = l.to_be_bytes();
    [content::APPLICATION_DATA, 0x03, 0x03, a, b]
}

/// Frames `data` into application-data records appended to `out`.
pub fn frame(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_WRITE_PAYLOAD) {
        out.extend_from_slice(&app_data_header(chunk.len()));
        out.extend_from_slice(chunk);
    }
}

/// Why the record stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A record of a type other than application data or ChangeCipherSpec
    /// (an alert ends the stream this way).
    #[error("unexpected record type {0:#04x}")]
    Type(u8),
    /// A version other than 0x0303.
    #[error("bad record version")]
    Version,
    /// A zero-length record or one longer than [`MAX_RECORD_PAYLOAD`].
    #[error("bad record length {0}")]
    Length(usize),
    /// A ChangeCipherSpec record that is not the single byte 1.
    #[error("bad ChangeCipherSpec")]
    ChangeCipherSpec,
}

/// Unwraps application-data records from a byte stream.
#[derive(Debug, Clone, Default)]
pub struct Deframer {
    header: [u8; 5],
    have: usize,
    /// Payload bytes left in the current record.
    left: usize,
    /// The current record is a ChangeCipherSpec.
    ccs: bool,
}

impl Deframer {
    /// A deframer at a record boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream is at a record boundary (a clean place to end).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Takes bytes from the front of `input`. Returns how many were taken
    /// and, within them, the range that is payload for the caller. Call
    /// again with the rest until all of `input` is taken; each call takes
    /// at least one byte of a non-empty input.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Range<usize>>), RecordError> {
        if input.is_empty() {
            return Ok((0, None));
        }
        if self.left == 0 {
            let n = (5 - self.have).min(input.len());
            self.header[self.have..self.have + n].copy_from_slice(&input[..n]);
            self.have += n;
            if self.have < 5 {
                return Ok((n, None));
            }
            self.have = 0;
            let h = self.header;
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            if h[1] != 0x03 || h[2] != 0x03 {
                return Err(RecordError::Version);
            }
            match h[0] {
                content::APPLICATION_DATA => {
                    if len == 0 || len > MAX_RECORD_PAYLOAD {
                        return Err(RecordError::Length(len));
                    }
                    self.ccs = false;
                }
                content::CHANGE_CIPHER_SPEC => {
                    if len != 1 {
                        return Err(RecordError::ChangeCipherSpec);
                    }
                    self.ccs = true;
                }
                t => return Err(RecordError::Type(t)),
            }
            self.left = len;
            return Ok((n, None));
        }
        let n = self.left.min(input.len());
        self.left -= n;
        if self.ccs {
            if input[0] != 1 {
                return Err(RecordError::ChangeCipherSpec);
            }
            return Ok((n, None));
        }
        Ok((n, Some(0..n)))
    }

    /// Unwraps all of `input`, appending the payload to `out`.
    pub fn unwrap_into(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        while !input.is_empty() {
            let (n, payload) = self.step(input)?;
            if let Some(r) = payload {
                out.extend_from_slice(&input[r]);
            }
            input = &input[n..];
        }
        Ok(())
    }
}

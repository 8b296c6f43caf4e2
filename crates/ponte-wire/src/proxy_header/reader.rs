//! Reading a PROXY header off the start of a byte stream, without doing the
//! reading: the caller reads into [`HeaderReader::unfilled`] and reports
//! how many bytes came with [`HeaderReader::advance`], which says whether
//! to read more, what was found, or why the stream is refused.
//!
//! The reader holds at most [`MAX_V2_LEN`] bytes (a 256-byte buffer first,
//! which every v1 header and the usual v2 ones fit in), so a peer that
//! sends more without completing a header is refused after at most that
//! many bytes, whatever the read sizes; the bytes read past the header are
//! handed back, they are the start of the payload.
//!
//! A caller's loop (tokio):
//!
//! ```ignore
//! let mut reader = HeaderReader::required();
//! let received = loop {
//!     let n = stream.read(reader.unfilled()).await?;
//!     match reader.advance(n)? {
//!         Step::NeedMore => {}
//!         Step::Done(received) => break received,
//!     }
//! };
//! ```

use super::{parse, Parsed, ProxyHeader, ProxyHeaderError, MAX_V2_LEN};

/// The buffer's first size: any v1 header (107 bytes) and a v2 header with
/// IPv6 addresses and 204 bytes of TLVs.
const FIRST_BUFFER: usize = 256;

/// Reads one PROXY header; see the module docs.
#[derive(Debug)]
pub struct HeaderReader {
    buf: Vec<u8>,
    filled: usize,
    optional: bool,
}

/// What [`HeaderReader::advance`] found.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Valid so far: read more into [`HeaderReader::unfilled`].
    NeedMore,
    /// The header (or, for an optional one, its absence) and what followed.
    Done(Received),
}

/// A finished read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The header; `None` only from [`HeaderReader::optional`], for a stream
    /// that does not start with one.
    pub header: Option<ProxyHeader>,
    /// The bytes read past the header: the start of the payload.
    pub rest: Vec<u8>,
}

/// Why the stream is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream ended (a read of 0 bytes) before a complete header.
    #[error("the stream ended inside a PROXY header")]
    Closed,
    /// Not a valid PROXY header (or an absent one that was required).
    #[error(transparent)]
    Invalid(#[from] ProxyHeaderError),
}

impl HeaderReader {
    /// A reader for a stream that must start with a PROXY header.
    #[must_use]
    pub fn required() -> Self {
        Self::new(false)
    }

    /// A reader for a stream that may start with a PROXY header: a first
    /// byte that begins neither version (`P` for v1, `\r` for v2) means no
    /// header, and everything read is handed back as payload.
    #[must_use]
    pub fn optional() -> Self {
        Self::new(true)
    }

    fn new(optional: bool) -> Self {
        HeaderReader {
            buf: Vec::new(),
            filled: 0,
            optional,
        }
    }

    /// Where the next read goes; never empty while a header is awaited.
    pub fn unfilled(&mut self) -> &mut [u8] {
        if self.filled == self.buf.len() {
            let grown = if self.buf.is_empty() {
                FIRST_BUFFER
            } else {
                MAX_V2_LEN
            };
            self.buf.resize(grown.max(self.filled), 0);
        }
        self.buf.get_mut(self.filled..).unwrap_or_default()
    }

    /// Takes note of `n` more bytes read into [`HeaderReader::unfilled`]
    /// (`0`: the stream ended).
    ///
    /// # Errors
    ///
    /// [`ReadError::Closed`] for `n == 0`, [`ReadError::Invalid`] as soon as
    /// the bytes cannot begin a valid header (or no header came within
    /// [`MAX_V2_LEN`] bytes).
    pub fn advance(&mut self, n: usize) -> Result<Step, ReadError> {
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.filled = self.filled.saturating_add(n).min(self.buf.len());
        let got = self.buf.get(..self.filled).unwrap_or_default();
        if self.optional && !matches!(got.first(), Some(b'P' | b'\r')) {
            return Ok(Step::Done(self.finish(None, 0)));
        }
        match parse(got)? {
            Parsed::Complete {
                header, consumed, ..
            } => Ok(Step::Done(self.finish(Some(header), consumed))),
            Parsed::Incomplete if self.filled < MAX_V2_LEN => Ok(Step::NeedMore),
            Parsed::Incomplete => Err(ReadError::Invalid(ProxyHeaderError::TooLong {
                limit: MAX_V2_LEN,
            })),
        }
    }

    /// The result, with the buffer past `consumed` as the payload.
    fn finish(&mut self, header: Option<ProxyHeader>, consumed: usize) -> Received {
        let mut rest = std::mem::take(&mut self.buf);
        rest.truncate(self.filled);
        rest.drain(..consumed.min(self.filled));
        self.filled = 0;
        Received { header, rest }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::proxy_header::encode_v2;
    use proptest::prelude::*;

    /// Feeds `input` in chunks of `chunk` bytes (as reads would bring it)
    /// until the reader is done or refuses; running out is `Closed`.
    fn read_all(
        mut reader: HeaderReader,
        input: &[u8],
        chunk: usize,
    ) -> Result<Received, ReadError> {
        let mut at = 0;
        // Each round takes at least one byte: bounded by the input's length.
        for _ in 0..=input.len() {
            let space = reader.unfilled();
            let n = space.len().min(chunk).min(input.len() - at);
            space[..n].copy_from_slice(&input[at..at + n]);
            at += n;
            match reader.advance(n)? {
                Step::NeedMore => {}
                Step::Done(received) => return Ok(received),
            }
        }
        Err(ReadError::Closed)
    }

    fn v2_header() -> Vec<u8> {
        let mut out = Vec::new();
        encode_v2(
            "[2001:db8::1]:1234".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
            &mut out,
        );
        out
    }

    #[test]
    fn a_header_and_what_follows_in_any_read_sizes() {
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\nhello".to_vec();
        let mut v2 = v2_header();
        v2.extend_from_slice(b"payload");
        for chunk in [1, 2, 7, 64, 4096] {
            let got = read_all(HeaderReader::required(), &v1, chunk).unwrap();
            let source = got.header.unwrap().tcp_source().unwrap();
            assert_eq!(source, "192.0.2.1:56324".parse().unwrap());
            // What was read past the header is handed back.
            assert!(b"hello".starts_with(&got.rest), "{chunk}: {:?}", got.rest);
            let got = read_all(HeaderReader::optional(), &v2, chunk).unwrap();
            assert!(b"payload".starts_with(&got.rest), "{chunk}: {:?}", got.rest);
            assert_eq!(
                got.header.unwrap().tcp_source(),
                Some("[2001:db8::1]:1234".parse().unwrap())
            );
        }
    }

    #[test]
    fn optional_header_absent_hands_everything_back() {
        let noise = [1u8, 0, 32, 7, 7, 7];
        let got = read_all(HeaderReader::optional(), &noise, 4096).unwrap();
        assert_eq!(got.header, None);
        assert_eq!(got.rest, noise);
        // Required, the same bytes are refused at once.
        assert_eq!(
            read_all(HeaderReader::required(), &noise, 1),
            Err(ReadError::Invalid(ProxyHeaderError::NotProxyProtocol))
        );
        // Optional, a start that looks like a header must be one.
        assert!(matches!(
            read_all(HeaderReader::optional(), b"POST / HTTP/1.1\r\n", 4096),
            Err(ReadError::Invalid(_))
        ));
    }

    #[test]
    fn end_of_stream_and_caps() {
        let header = v2_header();
        assert_eq!(
            read_all(HeaderReader::required(), &header[..header.len() - 1], 3),
            Err(ReadError::Closed)
        );
        assert_eq!(HeaderReader::optional().advance(0), Err(ReadError::Closed));
        // A v2 header announcing more than the cap is refused from its
        // length field, before the bytes arrive.
        let mut long = header[..16].to_vec();
        long[14..16].copy_from_slice(&600u16.to_be_bytes());
        assert!(matches!(
            read_all(HeaderReader::required(), &long, 1),
            Err(ReadError::Invalid(ProxyHeaderError::TooLong { .. }))
        ));
        // A buffer never grows past the cap, and a caller that claims more
        // than it was given cannot make the reader read out of bounds.
        let mut r = HeaderReader::required();
        assert_eq!(r.unfilled().len(), FIRST_BUFFER);
        r.unfilled()[0] = b'\r';
        assert_eq!(
            r.advance(usize::MAX),
            Err(ReadError::Invalid(ProxyHeaderError::NotProxyProtocol))
        );
    }

    proptest! {
        /// Whatever the bytes and read sizes, the reader agrees with
        /// `parse` on the whole input.
        #[test]
        fn reader_agrees_with_parse(
            prefix in prop_oneof![Just(v2_header()), Just(b"PROXY UNKNOWN\r\n".to_vec()), Just(Vec::new())],
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            chunk in 1usize..40,
        ) {
            let input = [prefix, tail].concat();
            let got = read_all(HeaderReader::required(), &input, chunk);
            match parse(&input) {
                Ok(Parsed::Complete { header, consumed, .. }) => {
                    let got = got.unwrap();
                    prop_assert_eq!(got.header, Some(header));
                    prop_assert!(input[consumed..].starts_with(&got.rest));
                }
                Ok(Parsed::Incomplete) => prop_assert_eq!(got, Err(ReadError::Closed)),
                Err(_) => prop_assert!(matches!(got, Err(ReadError::Invalid(_))), "{:?}", got),
            }
        }
    }
}

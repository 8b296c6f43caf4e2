//! A bounded reader of the first TLS record when it holds a ClientHello.
//!
//! ```text
//! record:    type 0x16 | version u16 | length u16 (<= 16384)
//! handshake: type 0x01 | length u24 (= record length - 4)
//! body:      legacy_version u16 | random [32] | session_id <0..32>
//!            cipher_suites <2..2^16-2> | compression <1..2^8-1>
//!            extensions <0..2^16-1>: (type u16, data <0..2^16-1>)*
//! ```
//!
//! Every length is checked against what is left of its enclosing field
//! before anything is read; nothing is allocated; no input panics. The
//! whole ClientHello must sit in one record (browsers' and Ponte's do);
//! one split over several records is refused, which for the relay only
//! means "not ours, pass it to the cover".

use std::ops::Range;

/// Bytes in a TLS record header.
pub const RECORD_HEADER_LEN: usize = 5;

/// The largest record payload a ClientHello may arrive in (TLS plaintext
/// limit, 2^14).
pub const MAX_HELLO_RECORD: usize = 16384;

/// Extension numbers the reader looks into.
pub mod ext {
    /// server_name.
    pub const SERVER_NAME: u16 = 0;
    /// status_request.
    pub const STATUS_REQUEST: u16 = 5;
    /// supported_groups.
    pub const SUPPORTED_GROUPS: u16 = 10;
    /// ec_point_formats.
    pub const EC_POINT_FORMATS: u16 = 11;
    /// signature_algorithms.
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    /// application_layer_protocol_negotiation.
    pub const ALPN: u16 = 16;
    /// signed_certificate_timestamp.
    pub const SCT: u16 = 18;
    /// padding.
    pub const PADDING: u16 = 21;
    /// extended_master_secret.
    pub const EXTENDED_MASTER_SECRET: u16 = 23;
    /// compress_certificate.
    pub const COMPRESS_CERTIFICATE: u16 = 27;
    /// session_ticket.
    pub const SESSION_TICKET: u16 = 35;
    /// supported_versions.
    pub const SUPPORTED_VERSIONS: u16 = 43;
    /// psk_key_exchange_modes.
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 45;
    /// key_share.
    pub const KEY_SHARE: u16 = 51;
    /// trust_anchors (Trust Anchor IDs, the code point Chrome uses while the
    /// draft is experimental).
    pub const TRUST_ANCHORS: u16 = 0xca34;
    /// application_settings (ALPS, the code point Chrome uses since 2025).
    pub const APPLICATION_SETTINGS: u16 = 17613;
    /// encrypted_client_hello.
    pub const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
    /// renegotiation_info.
    pub const RENEGOTIATION_INFO: u16 = 0xff01;
}

/// What the first bytes of a connection say about its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Too few bytes to tell; at least this many are needed in total.
    NeedMore(usize),
    /// A handshake record of this total length (header included) is coming;
    /// it may not be complete yet.
    Record(usize),
    /// Not a TLS handshake record of a size a ClientHello comes in.
    NotHello,
}

/// Looks at the first bytes: is a handshake record coming, and how long?
pub fn peek(buf: &[u8]) -> Peek {
    if buf.is_empty() {
        return Peek::NeedMore(RECORD_HEADER_LEN);
    }
    if buf[0] != 0x16 {
        return Peek::NotHello;
    }
    if buf.len() >= 2 && buf[1] != 0x03 {
        return Peek::NotHello;
    }
    if buf.len() < RECORD_HEADER_LEN {
        return Peek::NeedMore(RECORD_HEADER_LEN);
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if !(4..=MAX_HELLO_RECORD).contains(&len) {
        return Peek::NotHello;
    }
    Peek::Record(RECORD_HEADER_LEN + len)
}

/// Why a record is not a ClientHello this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// Fewer bytes than the record header announces.
    #[error("truncated record")]
    Truncated,
    /// Not a handshake record, or a record length out of range.
    #[error("not a handshake record")]
    NotHandshake,
    /// A handshake message other than ClientHello, or one longer than its
    /// record.
    #[error("not a ClientHello in one record")]
    NotClientHello,
    /// A length field runs past its enclosing field, or bytes are left over.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// A parsed ClientHello, borrowing the record it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The whole record, header included.
    pub record: &'a [u8],
    /// The record header's version.
    pub record_version: u16,
    /// `legacy_version` (0x0303 for TLS 1.2 and 1.3).
    pub legacy_version: u16,
    /// The client random.
    pub random: [u8; 32],
    /// The legacy session id (0 to 32 bytes).
    pub session_id: &'a [u8],
    /// Where the session id lies in [`ClientHello::record`].
    pub session_id_range: Range<usize>,
    cipher_suites: &'a [u8],
    compression: &'a [u8],
    extensions: &'a [u8],
    /// The first host name of server_name, when it is valid UTF-8.
    pub server_name: Option<&'a str>,
    alpn: &'a [u8],
    groups: &'a [u8],
    key_shares: &'a [u8],
    versions: &'a [u8],
}

/// Reads big-endian fields off a slice without ever running past its end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(HelloError::Malformed(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u24(&mut self, what: &'static str) -> Result<usize, HelloError> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    pub(crate) fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    pub(crate) fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

fn pairs(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// Parses one complete record holding a ClientHello. `buf` must hold exactly
/// the record or more; bytes past the record are ignored.
pub fn parse(buf: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    let total = match peek(buf) {
        Peek::NeedMore(_) => return Err(HelloError::Truncated),
        Peek::NotHello => return Err(HelloError::NotHandshake),
        Peek::Record(n) => n,
    };
    let record = buf.get(..total).ok_or(HelloError::Truncated)?;
    let record_version = u16::from_be_bytes([record[1], record[2]]);
    let mut r = Reader::new(&record[RECORD_HEADER_LEN..]);
    if r.u8("handshake type")? != 1 {
        return Err(HelloError::NotClientHello);
    }
    let hs_len = r.u24("handshake length")?;
    if hs_len != total - RECORD_HEADER_LEN - 4 {
        return Err(HelloError::NotClientHello);
    }
    let legacy_version = r.u16("legacy_version")?;
    let mut random = [0u8; 32];
    random.copy_from_slice(r.take(32, "random")?);
    let sid_start = RECORD_HEADER_LEN + r.pos() + 1;
    let session_id = r.vec8("session id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let cipher_suites = r.vec16("cipher suites")?;
    if cipher_suites.len() < 2 || cipher_suites.len() & 1 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    let compression = r.vec8("compression methods")?;
    if compression.is_empty() {
        return Err(HelloError::Malformed("compression methods"));
    }
    let extensions = if r.is_empty() {
        &[][..]
    } else {
        r.vec16("extensions")?
    };
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut hello = ClientHello {
        record,
        record_version,
        legacy_version,
        random,
        session_id,
        session_id_range: sid_start..sid_start + session_id.len(),
        cipher_suites,
        compression,
        extensions,
        server_name: None,
        alpn: &[],
        groups: &[],
        key_shares: &[],
        versions: &[],
    };
    let mut seen_sni = false;
    let mut e = Reader::new(extensions);
    while !e.is_empty() {
        let kind = e.u16("extension type")?;
        let data = e.vec16("extension data")?;
        let mut d = Reader::new(data);
        match kind {
            ext::SERVER_NAME if !seen_sni => {
                seen_sni = true;
                let list = d.vec16("server_name list")?;
                let mut l = Reader::new(list);
                while !l.is_empty() {
                    let name_type = l.u8("server name type")?;
                    let name = l.vec16("server name")?;
                    if name_type == 0 && hello.server_name.is_none() {
                        hello.server_name = std::str::from_utf8(name).ok();
                    }
                }
            }
            ext::ALPN => {
                hello.alpn = d.vec16("alpn list")?;
                let mut l = Reader::new(hello.alpn);
                while !l.is_empty() {
                    if l.vec8("alpn protocol")?.is_empty() {
                        return Err(HelloError::Malformed("empty alpn protocol"));
                    }
                }
            }
            ext::SUPPORTED_GROUPS => {
                hello.groups = d.vec16("supported groups")?;
                if hello.groups.len() & 1 != 0 {
                    return Err(HelloError::Malformed("supported groups"));
                }
            }
            ext::KEY_SHARE => {
                hello.key_shares = d.vec16("key shares")?;
                let mut l = Reader::new(hello.key_shares);
                while !l.is_empty() {
                    l.u16("key share group")?;
                    l.vec16("key share")?;
                }
            }
            ext::SUPPORTED_VERSIONS => {
                hello.versions = d.vec8("supported versions")?;
                if hello.versions.len() & 1 != 0 {
                    return Err(HelloError::Malformed("supported versions"));
                }
            }
            _ => continue,
        }
        if !d.is_empty() {
            return Err(HelloError::Malformed("bytes left in an extension"));
        }
    }
    Ok(hello)
}

impl<'a> ClientHello<'a> {
    /// The cipher suites, in order.
    pub fn cipher_suites(&self) -> impl Iterator<Item = u16> + 'a {
        pairs(self.cipher_suites)
    }

    /// The compression methods.
    pub fn compression(&self) -> &'a [u8] {
        self.compression
    }

    /// The extensions, in order: (type, data).
    pub fn extensions(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let mut r = Reader::new(self.extensions);
        std::iter::from_fn(move || {
            let kind = r.u16("").ok()?;
            let data = r.vec16("").ok()?;
            Some((kind, data))
        })
    }

    /// The ALPN protocol names, in order.
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut r = Reader::new(self.alpn);
        std::iter::from_fn(move || r.vec8("").ok())
    }

    /// The supported groups, in order.
    pub fn groups(&self) -> impl Iterator<Item = u16> + 'a {
        pairs(self.groups)
    }

    /// The supported versions, in order.
    pub fn versions(&self) -> impl Iterator<Item = u16> + 'a {
        pairs(self.versions)
    }

    /// The key shares, in order: (group, key exchange bytes).
    pub fn key_shares(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let mut r = Reader::new(self.key_shares);
        std::iter::from_fn(move || {
            let group = r.u16("").ok()?;
            let key = r.vec16("").ok()?;
            Some((group, key))
        })
    }
}

/// Whether a code point is a GREASE value (RFC 8701: 0x?A?A, both bytes equal).
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

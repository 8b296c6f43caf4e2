//! The PROXY protocol header (HAProxy, versions 1 and 2): an incremental,
//! strict, allocation-free parser and the matching encoders.
//!
//! A relay writes this header first on each upstream connection so the
//! upstream learns the original client's address; a relay behind a load
//! balancer reads one first on each inbound connection.
//!
//! # Version 1 (text, at most [`MAX_V1_LEN`] = 107 bytes including CRLF)
//!
//! ```text
//! "PROXY" SP proto SP src-addr SP dst-addr SP src-port SP dst-port CRLF
//!          │        └ dotted quad for TCP4, RFC 4291 text for TCP6
//!          └ "TCP4" | "TCP6" | "UNKNOWN" (UNKNOWN: anything up to CRLF is ignored)
//!
//! PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n
//! PROXY UNKNOWN\r\n
//! ```
//!
//! Exactly one space between fields, ports in decimal `0..=65535` without a
//! sign or leading zeros, IPv4 octets without leading zeros, the address
//! family matching the protocol word, and CRLF as the only line ending.
//!
//! # Version 2 (binary, at most [`MAX_V2_LEN`] = 16 + 512 bytes here)
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |  signature (12 bytes): 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A     |
//! |                         "\r\n\r\n\0\r\nQUIT\n"                 |
//! +---------------+---------------+-------------------------------+
//! | ver=2 | cmd   | fam   | proto |  len (u16, big endian)        |
//! +---------------+---------------+-------------------------------+
//! |  address block (len bytes): addresses, then TLVs              |
//! +---------------------------------------------------------------+
//!
//! cmd:   0 LOCAL (health check: use the real endpoints), 1 PROXY
//! fam:   0 UNSPEC, 1 INET, 2 INET6, 3 UNIX     proto: 0 UNSPEC, 1 STREAM, 2 DGRAM
//! INET:  src addr (4) | dst addr (4)  | src port (2) | dst port (2)    = 12 bytes
//! INET6: src addr (16)| dst addr (16) | src port (2) | dst port (2)    = 36 bytes
//! UNIX:  src path (108) | dst path (108)                               = 216 bytes
//! TLV:   type (1) | length (u16, big endian) | value (length bytes), repeated
//! ```
//!
//! # Decisions
//!
//! - **Detection is early.** The first byte decides between `P` (v1) and
//!   `0x0D` (v2); every further byte is checked against the signature as it
//!   arrives, so non-PROXY input (an HTTP request, a TLS ClientHello, a port
//!   scanner's probe) is rejected as soon as its prefix stops matching, often
//!   after one byte. A v1 line is also checked field by field while still
//!   incomplete, so a line of garbage is not waited on until 107 bytes.
//! - **Only TCP is usable.** v2 UDP headers parse to [`Addresses::Udp`], UNIX
//!   ones to [`Addresses::Unix`] (the paths are not kept), and both give
//!   `None` from [`Addresses::tcp`]: a relay forwards TCP only, so it treats
//!   them as "no usable address", like `UNSPEC`.
//! - **v1 `UNKNOWN`** gives [`Command::Proxy`] with [`Addresses::Unspec`].
//! - **v2 `LOCAL`** gives [`Command::Local`] with [`Addresses::Unspec`]: as the
//!   specification requires, the family byte and the whole address block
//!   (addresses and TLVs) are skipped unread.
//! - **v2 `PROXY`** accepts only the seven family/protocol bytes the
//!   specification defines (`0x00`, `0x11`, `0x12`, `0x21`, `0x22`, `0x31`,
//!   `0x32`); the length must cover the addresses of the family, and the rest
//!   of the block must be a well-formed TLV sequence (types and values are
//!   skipped, not interpreted; `PP2_TYPE_CRC32C` is not verified).
//! - **Encoding mixed families** (one IPv4 and one IPv6 address) writes both
//!   as IPv6, the IPv4 one as an IPv4-mapped address (`::ffff:a.b.c.d`), as
//!   HAProxy does. IPv6 flow labels and scope ids are not carried.
//!
//! Parsing never allocates and never panics; it reads at most
//! [`MAX_V2_LEN`] bytes of the buffer it is given.
//!
//! [`HeaderReader`] reads a header off the start of a stream without doing
//! I/O itself (the relay and the server each run a few lines of tokio
//! around it): it owns the buffer, caps it at [`MAX_V2_LEN`], and hands back
//! the header and the bytes read past it; see [`reader`] for the loop.

pub mod reader;

pub use reader::{HeaderReader, ReadError, Received, Step};

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Longest v1 header, CRLF included (fixed by the specification).
pub const MAX_V1_LEN: usize = 107;

/// Longest v2 header accepted: the 16-byte fixed part plus an address block
/// (addresses and TLVs) of at most 512 bytes. The largest address block
/// without TLVs (UNIX, 216 bytes) fits with room for the TLVs that load
/// balancers add; a header announcing more is rejected with
/// [`ProxyHeaderError::TooLong`] as soon as its length field is read.
pub const MAX_V2_LEN: usize = V2_FIXED_LEN + 512;

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8; 6] = b"PROXY ";
const V2_FIXED_LEN: usize = 16;
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;
const V2_UNIX_LEN: usize = 216;

/// Which version of the protocol a header is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Human-readable text line.
    V1,
    /// Binary.
    V2,
}

/// Whether the connection carries a proxied client or was opened by the
/// proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Opened by the proxy on its own behalf (health check): use the real
    /// connection endpoints. Only v2 expresses it.
    Local,
    /// Relayed on behalf of a client (every v1 header, v2 command 1).
    Proxy,
}

/// The addresses a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addresses {
    /// No address information: v1 `UNKNOWN`, v2 `AF_UNSPEC`, any v2 `LOCAL`.
    Unspec,
    /// TCP over IPv4 or IPv6 (v1 `TCP4`/`TCP6`, v2 family 1 or 2, STREAM).
    Tcp {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// UDP over IPv4 or IPv6 (v2 only). Not usable by a TCP relay.
    Udp {
        /// The original client.
        source: SocketAddr,
        /// The address the client sent to.
        destination: SocketAddr,
    },
    /// A UNIX socket (v2 only); the paths are not kept. Not usable by a TCP
    /// relay.
    Unix,
}

impl Addresses {
    /// The TCP `(source, destination)` pair, or `None` when the header carries
    /// no address a TCP relay can use (UNSPEC, UDP, UNIX).
    #[must_use]
    pub fn tcp(&self) -> Option<(SocketAddr, SocketAddr)> {
        match *self {
            Addresses::Tcp {
                source,
                destination,
            } => Some((source, destination)),
            _ => None,
        }
    }
}

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// LOCAL or PROXY.
    pub command: Command,
    /// What the header says about the original connection.
    pub addresses: Addresses,
}

impl ProxyHeader {
    /// A relayed TCP connection from `source` to `destination`.
    #[must_use]
    pub fn tcp(source: SocketAddr, destination: SocketAddr) -> Self {
        ProxyHeader {
            command: Command::Proxy,
            addresses: Addresses::Tcp {
                source,
                destination,
            },
        }
    }

    /// The original client's TCP address, if the header carries one.
    #[must_use]
    pub fn tcp_source(&self) -> Option<SocketAddr> {
        if self.command == Command::Local {
            return None;
        }
        self.addresses.tcp().map(|(source, _)| source)
    }

    /// Appends this header to `out` in the given version.
    ///
    /// LOCAL and UNSPEC headers are written as v1 `PROXY UNKNOWN` or as a v2
    /// header with an empty address block.
    ///
    /// # Errors
    ///
    /// [`ProxyHeaderError::NotEncodable`] for UDP in v1 and for UNIX
    /// addresses with the PROXY command (their paths are not kept). Nothing
    /// is written then.
    pub fn encode(&self, version: Version, out: &mut Vec<u8>) -> Result<(), ProxyHeaderError> {
        match (version, self.command, self.addresses) {
            (Version::V1, Command::Local, _) | (Version::V1, _, Addresses::Unspec) => {
                encode_v1_unknown(out);
                Ok(())
            }
            (
                Version::V1,
                Command::Proxy,
                Addresses::Tcp {
                    source,
                    destination,
                },
            ) => {
                encode_v1(source, destination, out);
                Ok(())
            }
            (_, Command::Proxy, Addresses::Unix) => Err(ProxyHeaderError::NotEncodable(
                "UNIX socket paths are not kept",
            )),
            (Version::V1, Command::Proxy, Addresses::Udp { .. }) => Err(
                ProxyHeaderError::NotEncodable("PROXY v1 cannot express UDP"),
            ),
            (Version::V2, Command::Local, _) => {
                encode_v2_local(out);
                Ok(())
            }
            (Version::V2, Command::Proxy, Addresses::Unspec) => {
                out.extend_from_slice(&V2_SIGNATURE);
                out.extend_from_slice(&[0x21, 0x00, 0, 0]);
                Ok(())
            }
            (
                Version::V2,
                Command::Proxy,
                Addresses::Tcp {
                    source,
                    destination,
                },
            ) => {
                encode_v2_inet(source, destination, TRANSPORT_STREAM, out);
                Ok(())
            }
            (
                Version::V2,
                Command::Proxy,
                Addresses::Udp {
                    source,
                    destination,
                },
            ) => {
                encode_v2_inet(source, destination, TRANSPORT_DGRAM, out);
                Ok(())
            }
        }
    }
}

/// Outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Parsed {
    /// A whole, valid header: the first `consumed` bytes of the buffer. Bytes
    /// after them belong to the payload.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// The version it was written in.
        version: Version,
        /// Its length on the wire.
        consumed: usize,
    },
    /// Valid so far, but more bytes are needed: read more and call again
    /// with the whole buffer.
    Incomplete,
}

/// What is wrong with a v1 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum V1Syntax {
    /// The protocol word is not `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("unknown protocol word")]
    UnknownProtocol,
    /// Not exactly one space between fields, or a wrong number of fields.
    #[error("fields must be separated by exactly one space")]
    Fields,
    /// An address that is not a valid literal.
    #[error("invalid address")]
    BadAddress,
    /// An address of the other family than the protocol word announces.
    #[error("address family does not match the protocol")]
    FamilyMismatch,
    /// A port that is not a decimal number in 0..=65535 without sign or
    /// leading zero.
    #[error("invalid port")]
    BadPort,
    /// A CR not followed by LF, or a LF not preceded by CR.
    #[error("line must end with CRLF")]
    LineEnding,
    /// A byte that cannot appear in this field.
    #[error("unexpected character")]
    BadCharacter,
}

/// Why a PROXY header was refused (by [`parse`]) or could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The input does not start with a v1 or v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    /// The header is longer than [`MAX_V1_LEN`] or [`MAX_V2_LEN`] allows.
    #[error("PROXY header longer than {limit} bytes")]
    TooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A malformed v1 line.
    #[error("malformed PROXY v1 header: {0}")]
    BadV1Syntax(V1Syntax),
    /// A v2 signature followed by a version other than 2.
    #[error("unsupported PROXY header version {0}")]
    UnsupportedVersion(u8),
    /// A v2 command other than LOCAL (0) or PROXY (1).
    #[error("unsupported PROXY v2 command {0}")]
    UnsupportedCommand(u8),
    /// A v2 family/protocol byte the specification does not define.
    #[error("unsupported PROXY v2 family/protocol byte {0:#04x}")]
    UnsupportedFamily(u8),
    /// A v2 address block too short for the addresses of its family.
    #[error("PROXY v2 address block of {got} bytes, family needs {needed}")]
    AddressBlockTooShort {
        /// Bytes the family needs.
        needed: usize,
        /// Bytes the length field announced.
        got: usize,
    },
    /// A v2 TLV that runs past the end of the address block, at this offset
    /// from the start of the header.
    #[error("malformed PROXY v2 TLV at byte {offset}")]
    BadTlv {
        /// Offset of the TLV's first byte in the header.
        offset: usize,
    },
    /// [`ProxyHeader::encode`] was asked for something the version cannot
    /// express.
    #[error("cannot encode PROXY header: {0}")]
    NotEncodable(&'static str),
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`.
///
/// Call it with everything received so far; on [`Parsed::Incomplete`], read
/// more and call again. At most [`MAX_V2_LEN`] bytes are ever needed, so a
/// caller can read into a buffer of that size (a v1 header needs at most
/// [`MAX_V1_LEN`]). An empty buffer is `Incomplete`.
///
/// # Errors
///
/// Any [`ProxyHeaderError`] other than `NotEncodable`, as soon as the bytes
/// received so far cannot begin a valid header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(0x0D) => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::NotProxyProtocol),
    }
}

// ---------------------------------------------------------------- version 1

fn v1_err(kind: V1Syntax) -> ProxyHeaderError {
    ProxyHeaderError::BadV1Syntax(kind)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyHeaderError::NotProxyProtocol);
    }
    // Look for the end of the line within the allowed length.
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let end = window.iter().position(|&b| b == b'\r' || b == b'\n');
    match end {
        Some(i) if window[i] == b'\n' => Err(v1_err(V1Syntax::LineEnding)),
        Some(i) if i + 1 < window.len() => {
            if window[i + 1] != b'\n' {
                return Err(v1_err(V1Syntax::LineEnding));
            }
            if i < V1_PREFIX.len() {
                // "PROXY\r\n" or a shorter CR: the prefix check already
                // failed unless the CR sits after "PROXY ".
                return Err(v1_err(V1Syntax::UnknownProtocol));
            }
            let header = parse_v1_line(&window[V1_PREFIX.len()..i])?;
            Ok(Parsed::Complete {
                header,
                version: Version::V1,
                consumed: i + 2,
            })
        }
        // A CR as the last byte of the window.
        Some(i) => {
            if i + 1 >= MAX_V1_LEN {
                return Err(ProxyHeaderError::TooLong { limit: MAX_V1_LEN });
            }
            check_v1_partial(&window[n..i])?;
            Ok(Parsed::Incomplete)
        }
        None => {
            if window.len() >= MAX_V1_LEN {
                return Err(ProxyHeaderError::TooLong { limit: MAX_V1_LEN });
            }
            check_v1_partial(&window[n..])?;
            Ok(Parsed::Incomplete)
        }
    }
}

/// Checks that `rest` (the bytes after "PROXY " seen so far, without any line
/// ending) can still begin a valid line.
fn check_v1_partial(rest: &[u8]) -> Result<(), ProxyHeaderError> {
    const WORDS: [&[u8]; 3] = [b"TCP4 ", b"TCP6 ", b"UNKNOWN"];
    for word in WORDS {
        let k = rest.len().min(word.len());
        if rest[..k] != word[..k] {
            continue;
        }
        if rest.len() <= word.len() {
            return Ok(());
        }
        let tail = &rest[word.len()..];
        if word == b"UNKNOWN" {
            // Anything may follow a space, up to the CRLF.
            return if tail[0] == b' ' {
                Ok(())
            } else {
                Err(v1_err(V1Syntax::UnknownProtocol))
            };
        }
        // Four fields follow: address, address, port, port.
        let mut field = 0usize;
        let mut field_len = 0usize;
        for &b in tail {
            if b == b' ' {
                if field_len == 0 || field == 3 {
                    return Err(v1_err(V1Syntax::Fields));
                }
                field += 1;
                field_len = 0;
                continue;
            }
            let ok = match field {
                0 | 1 => b.is_ascii_hexdigit() || b == b'.' || b == b':',
                _ => b.is_ascii_digit(),
            };
            if !ok {
                return Err(v1_err(V1Syntax::BadCharacter));
            }
            field_len += 1;
            // 45 is the longest IPv6 text form; 5 digits for a port.
            let max = if field < 2 { 45 } else { 5 };
            if field_len > max {
                return Err(v1_err(if field < 2 {
                    V1Syntax::BadAddress
                } else {
                    V1Syntax::BadPort
                }));
            }
        }
        return Ok(());
    }
    Err(v1_err(V1Syntax::UnknownProtocol))
}

/// Parses a whole v1 line after "PROXY ", without CRLF.
fn parse_v1_line(rest: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if let Some(tail) = rest.strip_prefix(b"UNKNOWN") {
        // The receiver ignores anything after UNKNOWN up to the CRLF.
        if tail.is_empty() || tail[0] == b' ' {
            return Ok(ProxyHeader {
                command: Command::Proxy,
                addresses: Addresses::Unspec,
            });
        }
        return Err(v1_err(V1Syntax::UnknownProtocol));
    }
    let mut fields = rest.split(|&b| b == b' ');
    let mut next = || match fields.next() {
        Some(f) if !f.is_empty() => Ok(f),
        _ => Err(v1_err(V1Syntax::Fields)),
    };
    let proto = next()?;
    let v6 = match proto {
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(v1_err(V1Syntax::UnknownProtocol)),
    };
    let src = parse_v1_ip(next()?, v6)?;
    let dst = parse_v1_ip(next()?, v6)?;
    let sport = parse_v1_port(next()?)?;
    let dport = parse_v1_port(next()?)?;
    if fields.next().is_some() {
        return Err(v1_err(V1Syntax::Fields));
    }
    Ok(ProxyHeader::tcp(
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    ))
}

fn parse_v1_ip(field: &[u8], v6: bool) -> Result<IpAddr, ProxyHeaderError> {
    let text = std::str::from_utf8(field).map_err(|_| v1_err(V1Syntax::BadAddress))?;
    if v6 {
        match text.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(IpAddr::V6(ip)),
            Err(_) if text.parse::<Ipv4Addr>().is_ok() => Err(v1_err(V1Syntax::FamilyMismatch)),
            Err(_) => Err(v1_err(V1Syntax::BadAddress)),
        }
    } else {
        // std's parser refuses octets with leading zeros, as required.
        match text.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(IpAddr::V4(ip)),
            Err(_) if text.parse::<Ipv6Addr>().is_ok() => Err(v1_err(V1Syntax::FamilyMismatch)),
            Err(_) => Err(v1_err(V1Syntax::BadAddress)),
        }
    }
}

fn parse_v1_port(field: &[u8]) -> Result<u16, ProxyHeaderError> {
    let bad = || v1_err(V1Syntax::BadPort);
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field[0] == b'0') {
        return Err(bad());
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(bad());
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).map_err(|_| bad())
}

// ---------------------------------------------------------------- version 2

const TRANSPORT_STREAM: u8 = 0x1;
const TRANSPORT_DGRAM: u8 = 0x2;

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyHeaderError::NotProxyProtocol);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::UnsupportedVersion(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        other => return Err(ProxyHeaderError::UnsupportedCommand(other)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL: the family is ignored, as the specification requires.
    let addr_len = match command {
        Command::Local => 0,
        Command::Proxy => match fam {
            0x00 => 0,
            0x11 | 0x12 => V2_INET_LEN,
            0x21 | 0x22 => V2_INET6_LEN,
            0x31 | 0x32 => V2_UNIX_LEN,
            other => return Err(ProxyHeaderError::UnsupportedFamily(other)),
        },
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let block_len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_FIXED_LEN + block_len;
    if total > MAX_V2_LEN {
        return Err(ProxyHeaderError::TooLong { limit: MAX_V2_LEN });
    }
    if block_len < addr_len {
        return Err(ProxyHeaderError::AddressBlockTooShort {
            needed: addr_len,
            got: block_len,
        });
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete);
    };
    let header = match command {
        Command::Local => ProxyHeader {
            command,
            addresses: Addresses::Unspec,
        },
        Command::Proxy => {
            let (addrs, tlvs) = block.split_at(addr_len);
            check_tlvs(tlvs, V2_FIXED_LEN + addr_len)?;
            ProxyHeader {
                command,
                addresses: v2_addresses(fam, addrs),
            }
        }
    };
    Ok(Parsed::Complete {
        header,
        version: Version::V2,
        consumed: total,
    })
}

/// Decodes the address part; `addrs` has exactly the family's length.
fn v2_addresses(fam: u8, addrs: &[u8]) -> Addresses {
    let pair = match addrs.len() {
        V2_INET_LEN => {
            let ip = |i: usize| Ipv4Addr::new(addrs[i], addrs[i + 1], addrs[i + 2], addrs[i + 3]);
            let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
            Some((
                SocketAddr::V4(SocketAddrV4::new(ip(0), port(8))),
                SocketAddr::V4(SocketAddrV4::new(ip(4), port(10))),
            ))
        }
        V2_INET6_LEN => {
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addrs[i..i + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
            Some((
                SocketAddr::V6(SocketAddrV6::new(ip(0), port(32), 0, 0)),
                SocketAddr::V6(SocketAddrV6::new(ip(16), port(34), 0, 0)),
            ))
        }
        _ => None,
    };
    match (fam, pair) {
        (0x11 | 0x21, Some((source, destination))) => Addresses::Tcp {
            source,
            destination,
        },
        (0x12 | 0x22, Some((source, destination))) => Addresses::Udp {
            source,
            destination,
        },
        (0x31 | 0x32, _) => Addresses::Unix,
        _ => Addresses::Unspec,
    }
}

/// Walks the TLV sequence `tlvs`, which starts `base` bytes into the header.
fn check_tlvs(tlvs: &[u8], base: usize) -> Result<(), ProxyHeaderError> {
    let mut at = 0usize;
    // Each round consumes at least 3 bytes, so this ends.
    while at < tlvs.len() {
        let bad = ProxyHeaderError::BadTlv { offset: base + at };
        let (Some(&hi), Some(&lo)) = (tlvs.get(at + 1), tlvs.get(at + 2)) else {
            return Err(bad);
        };
        let end = at + 3 + usize::from(u16::from_be_bytes([hi, lo]));
        if end > tlvs.len() {
            return Err(bad);
        }
        at = end;
    }
    Ok(())
}

// ----------------------------------------------------------------- encoding

/// Brings both addresses to one family: if they differ, both become IPv6
/// (IPv4-mapped for the IPv4 one).
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let to_v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 @ SocketAddr::V6(_) => v6,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (to_v6(source), to_v6(destination))
    }
}

/// Appends a v1 header for a TCP connection from `source` to `destination`
/// (`TCP4` if both are IPv4, else `TCP6`, see the module docs).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    let (source, destination) = same_family(source, destination);
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    // Writing into a Vec cannot fail; the length is at most 104 bytes
    // (Ipv6Addr's display form is at most 39 characters).
    let _ = write!(
        out,
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    );
}

/// Appends `PROXY UNKNOWN\r\n`, the v1 header for a connection whose client
/// address is unknown or that the proxy opened itself.
pub fn encode_v1_unknown(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PROXY UNKNOWN\r\n");
}

/// Appends a v2 PROXY header for a TCP connection from `source` to
/// `destination` (28 bytes for IPv4, 52 for IPv6; mixed families as in the
/// module docs). No TLVs.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    encode_v2_inet(source, destination, TRANSPORT_STREAM, out);
}

/// Appends a v2 LOCAL header (16 bytes, no addresses): the connection was
/// opened by the proxy itself, e.g. for a health check.
pub fn encode_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
}

fn encode_v2_inet(source: SocketAddr, destination: SocketAddr, transport: u8, out: &mut Vec<u8>) {
    let (source, destination) = same_family(source, destination);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x10 | transport);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x20 | transport);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
}

#[cfg(test)]
mod tests;

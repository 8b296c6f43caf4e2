//! Ponte wire formats (no I/O): pure encoders and decoders, fuzzable.
//!
//! - [`proxy_header`]: the PROXY protocol header (v1 text, v2 binary) that a
//!   relay writes before the upstream stream.
//! - [`frame`]: length-prefixed application frames carried inside Noise.
//! - [`messages`]: the client ⇄ server protobuf messages (`proto/ponte.proto`)
//!   and the strings devices sign.
//! - [`address`]: the server address `ponte://HOST:PORT#KEY`.
//! - [`link`]: relay share links (`ponte://relay?…`, `https://…/relay#…`,
//!   WhatsApp's `https://wa.me/proxy?…`) and the one check of a relay host.
//! - [`limit`]: the key a source address counts under (IPv6 by /64) and the
//!   token buckets that the relay's and the server's limits share.
//! - [`stealth`]: the stealth relay's Chrome-shaped ClientHello with its
//!   authentication tag, the server's reply, and TLS record framing.
#![forbid(unsafe_code)]

pub mod address;
pub mod diag;
pub mod frame;
pub mod limit;
pub mod link;
pub mod messages;
pub mod proxy_header;
pub mod stealth;

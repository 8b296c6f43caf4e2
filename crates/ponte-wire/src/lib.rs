//! Ponte wire formats (no I/O): pure encoders and decoders, fuzzable.
//!
//! - [`frame`]: length-prefixed application frames carried inside Noise.
//! - [`messages`]: the client ⇄ server protobuf messages (`proto/ponte.proto`)
//!   and the strings devices sign.
//! - [`address`]: the server address `ponte://HOST:PORT#KEY`.
#![forbid(unsafe_code)]

pub mod address;
pub mod frame;
pub mod messages;

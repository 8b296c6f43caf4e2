//! Ponte wire formats (no I/O): pure encoders and decoders, fuzzable.
//!
//! - [`proxy_header`]: the PROXY protocol header (v1 text, v2 binary) that a
//!   relay writes before the upstream stream.
#![forbid(unsafe_code)]

pub mod proxy_header;

//! The server address handed to users: `ponte://HOST:PORT#KEY`.
//!
//! `HOST` is a DNS name, an IPv4 address or a bracketed IPv6 address; `PORT`
//! defaults to [`DEFAULT_PORT`] when omitted; `KEY` is the server's Noise
//! static public key (X25519, 32 bytes) in base64url without padding.
//!
//! ```text
//! ponte://chat.example.org:5222#9b4qf0mJ3N2Yxq8XjHgiA0wF1n3c5s7u9w_yA2C4E6G
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// URL scheme of a server address.
pub const SCHEME: &str = "ponte://";
/// Port used when an address names none.
pub const DEFAULT_PORT: u16 = 5222;

/// A parsed server address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The server's Noise static public key.
    pub key: [u8; 32],
}

impl fmt::Debug for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerAddress({self})")
    }
}

/// Why a string is not a server address.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// Does not start with `ponte://`.
    #[error("a server address starts with ponte://")]
    Scheme,
    /// No `#KEY` part.
    #[error("the server address has no #KEY part")]
    MissingKey,
    /// KEY is not base64url of 32 bytes.
    #[error("the key in the server address is not 32 bytes of base64url")]
    BadKey,
    /// HOST is empty or malformed.
    #[error("the host in the server address is empty or malformed")]
    BadHost,
    /// PORT is not a number in 1..=65535.
    #[error("the port in the server address is not a number in 1..=65535")]
    BadPort,
}

/// Encodes a key as base64url without padding.
pub fn encode_key(key: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Decodes a 32-byte key from base64url without padding.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 43 {
        return None;
    }
    let v = URL_SAFE_NO_PAD.decode(s).ok()?;
    v.try_into().ok()
}

/// `host:port` for connecting, an IPv6 address (any host with a colon)
/// bracketed.
#[must_use]
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl ServerAddress {
    /// `host:port` for connecting (IPv6 bracketed).
    pub fn socket_addr_string(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}#{}",
            self.socket_addr_string(),
            encode_key(&self.key)
        )
    }
}

impl FromStr for ServerAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(SCHEME).ok_or(AddressError::Scheme)?;
        let (hostport, key) = rest.split_once('#').ok_or(AddressError::MissingKey)?;
        let key = decode_key(key).ok_or(AddressError::BadKey)?;
        let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(AddressError::BadHost)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(AddressError::BadHost)?),
            };
            (host, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(AddressError::BadHost);
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(AddressError::BadPort),
                Ok(n) => n,
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips() {
        for (host, port) in [("chat.example.org", 5222), ("127.0.0.1", 1), ("::1", 443)] {
            let a = ServerAddress {
                host: host.into(),
                port,
                key: [7; 32],
            };
            let s = a.to_string();
            assert_eq!(s.parse::<ServerAddress>().unwrap(), a, "{s}");
        }
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(join_host_port("h.example", 1), "h.example:1");
        assert_eq!(join_host_port("203.0.113.7", 443), "203.0.113.7:443");
        assert_eq!(join_host_port("2001:db8::1", 80), "[2001:db8::1]:80");
    }

    #[test]
    fn defaults_and_errors() {
        let k = encode_key(&[1; 32]);
        let a: ServerAddress = format!("ponte://h.example#{k}").parse().unwrap();
        assert_eq!(a.port, DEFAULT_PORT);
        assert_eq!(
            "http://h#x".parse::<ServerAddress>(),
            Err(AddressError::Scheme)
        );
        assert_eq!(
            "ponte://h:1".parse::<ServerAddress>(),
            Err(AddressError::MissingKey)
        );
        assert_eq!(
            "ponte://h:1#abc".parse::<ServerAddress>(),
            Err(AddressError::BadKey)
        );
        assert_eq!(
            format!("ponte://h:0#{k}").parse::<ServerAddress>(),
            Err(AddressError::BadPort)
        );
        assert_eq!(
            format!("ponte://:5#{k}").parse::<ServerAddress>(),
            Err(AddressError::BadHost)
        );
    }
}

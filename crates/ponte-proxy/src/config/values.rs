//! The config's values that check themselves while parsing (durations,
//! listen addresses, host:port), so the TOML parser locates their errors.

use ponte_wire::address::ServerAddress;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A duration written as an integer and a unit: `250ms`, `5s`, `3m`, `1h`,
/// `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration `{s}` needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration `{s}` must start with a whole number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => {
                return Err(format!(
                    "duration `{s}`: unknown unit `{unit}` (ms, s, m, h, d)"
                ))
            }
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// A socket address to bind: an IP literal and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<SocketAddr>().map(ListenAddr).map_err(|_| {
            format!("`{s}` is not an IP address and port (like 0.0.0.0:443 or [::]:443)")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An upstream server: a host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HostPort {
    /// The IP address, when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with(ponte_wire::address::SCHEME) {
            // The address operators hand out: a natural thing to paste here.
            let hint = match s.parse::<ServerAddress>() {
                Ok(a) => format!(": `{}`", a.socket_addr_string()),
                Err(_) => String::new(),
            };
            return Err(format!(
                "`{s}` is a Ponte server address; give only its HOST:PORT{hint}"
            ));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!("`{s}`: give HOST:PORT, without `{scheme}://`"));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(format!("`{s}`: port must be 1-65535"));
            }
            return Ok(HostPort {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` needs a port (host:port)"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}`: port must be 1-65535"))?;
        if !valid_hostname(host) {
            return Err(format!(
                "`{s}`: `{host}` is not a valid host name or IP address"
            ));
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// RFC 1123 host name check (letters, digits, hyphens, dots; labels 1-63; total <= 253).
pub fn valid_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}
string_serde!(Dur);
string_serde!(ListenAddr);
string_serde!(HostPort);

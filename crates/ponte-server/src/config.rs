//! Server settings, built once (from flags in `ponte-cli`) into this typed
//! struct; every bound the server enforces lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5222";
/// Default admin address (loopback only: `/metrics`, `/healthz`).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8299";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "ponte-data";

/// A token bucket: `burst` at once, refilled at `per_hour` per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Bucket size.
    pub burst: u32,
    /// Refill rate per hour.
    pub per_hour: u32,
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Data directory: `server.key` (Noise static key) and `ponte.db`.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Require a one-use invite token to register.
    pub invite_only: bool,
    /// How long an undelivered message is kept (then: expired notice).
    pub retention: Duration,
    /// How long a receipt or expired notice is kept for its offline owner.
    pub notice_retention: Duration,
    /// How often the expiry sweep runs.
    pub expiry_interval: Duration,
    /// Most simultaneous connections (others are closed at once).
    pub max_connections: usize,
    /// Deadline for the PROXY header plus the Noise handshake.
    pub handshake_timeout: Duration,
    /// Deadline for Register/Login after the handshake.
    pub unauthenticated_timeout: Duration,
    /// Close a logged-in connection that sent nothing for this long.
    pub idle_timeout: Duration,
    /// Cap on a frame, both directions.
    pub max_frame_len: usize,
    /// Cap on a message body.
    pub max_body_len: usize,
    /// Most undelivered messages per recipient.
    pub max_pending_per_mailbox: u32,
    /// Most one-time keys stored per device.
    pub max_one_time_keys: u32,
    /// Most keys in one upload.
    pub max_keys_per_upload: usize,
    /// Below this many one-time keys the owner is told to upload more.
    pub one_time_key_low_water: u32,
    /// Frames queued for one connection's socket.
    pub outbound_queue: usize,
    /// Mailbox pushes sent but not yet acknowledged, per connection.
    pub delivery_window: usize,
    /// Requests of one connection waiting for the database at once.
    pub max_requests_in_flight: usize,
    /// How long a response may wait for room in the outbound queue before
    /// the connection is closed as a slow consumer.
    pub slow_consumer_timeout: Duration,
    /// Registrations per source address (the PROXY-reported client address
    /// when present, else the peer address).
    pub register_limit: RateLimit,
    /// Registrations per peer address (a relay counts as one peer).
    pub register_limit_per_peer: RateLimit,
    /// Grace period for connections at shutdown.
    pub shutdown_grace: Duration,
    /// Least time between two database commits while writes keep coming
    /// (an idle server commits a lone write at once). Longer: fewer, larger
    /// commits and less written; shorter: lower latency at moderate load.
    pub commit_interval: Duration,
}

impl ServerConfig {
    /// Defaults, with the given data directory and listen address.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            invite_only: false,
            retention: Duration::from_secs(30 * 24 * 3600),
            notice_retention: Duration::from_secs(30 * 24 * 3600),
            expiry_interval: Duration::from_secs(60),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            unauthenticated_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_frame_len: ponte_wire::frame::MAX_FRAME_LEN,
            max_body_len: 64 * 1024,
            max_pending_per_mailbox: 10_000,
            max_one_time_keys: 200,
            max_keys_per_upload: 100,
            one_time_key_low_water: 10,
            outbound_queue: 256,
            delivery_window: 64,
            max_requests_in_flight: 32,
            slow_consumer_timeout: Duration::from_secs(30),
            register_limit: RateLimit {
                burst: 5,
                per_hour: 10,
            },
            register_limit_per_peer: RateLimit {
                burst: 50,
                per_hour: 200,
            },
            shutdown_grace: Duration::from_secs(5),
            commit_interval: crate::store::DEFAULT_COMMIT_INTERVAL,
        }
    }
}

/// Parses `500ms`, `45s`, `90m`, `12h`, `30d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m, h, d)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: too large"))
}

mod duration_serde {
    use serde::{Deserialize as _, Deserializer};
    use std::time::Duration;

    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// A rate limit as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Bucket size.
    pub burst: u32,
    /// Refill per hour.
    pub per_hour: u32,
}

/// The server's TOML config file (`ponte server --config FILE`). Every key is
/// optional; unknown keys are errors. Command-line flags win over the file.
///
/// ```toml
/// data = "/var/lib/ponte"
/// listen = "0.0.0.0:5222"
/// admin = "127.0.0.1:8299"     # "off" disables the admin endpoint
/// host = "chat.example.org"
/// invite_only = true
/// retention = "30d"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data: Option<PathBuf>,
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Admin address, or `"off"`.
    pub admin: Option<String>,
    /// Host name for the printed server address.
    pub host: Option<String>,
    /// Invite-only registration.
    pub invite_only: Option<bool>,
    /// Retention of undelivered messages.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub retention: Option<Duration>,
    /// Retention of receipts and notices.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub notice_retention: Option<Duration>,
    /// Expiry sweep interval.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub expiry_interval: Option<Duration>,
    /// Connection cap.
    pub max_connections: Option<usize>,
    /// Undelivered messages per recipient.
    pub max_pending: Option<u32>,
    /// Message body cap, bytes.
    pub max_body_len: Option<usize>,
    /// One-time keys stored per device.
    pub max_one_time_keys: Option<u32>,
    /// Handshake deadline.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub handshake_timeout: Option<Duration>,
    /// Register/Login deadline.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub unauthenticated_timeout: Option<Duration>,
    /// Idle deadline for logged-in connections.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub idle_timeout: Option<Duration>,
    /// Least time between commits under load.
    #[serde(default, deserialize_with = "duration_serde::opt")]
    pub commit_interval: Option<Duration>,
    /// Registrations per source address.
    pub register_limit: Option<RateLimitFile>,
    /// Registrations per peer (relay) address.
    pub register_limit_per_peer: Option<RateLimitFile>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key or a bad value (the message names the
    /// line, column and key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description, with line and key.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: &'static str,
    },
}

impl FileConfig {
    /// Reads and checks a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text (`path` is only used in errors).
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key, message| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if cfg.max_connections == Some(0) {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if cfg.max_pending == Some(0) {
            return Err(invalid("max_pending", "must be at least 1"));
        }
        if cfg.max_body_len.is_some_and(|n| n == 0 || n > 96 * 1024) {
            return Err(invalid("max_body_len", "must be 1 to 98304 bytes"));
        }
        if let Some(a) = &cfg.admin {
            if a != "off" && a.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "admin",
                    "an address like 127.0.0.1:8299, or \"off\"",
                ));
            }
        }
        if cfg.expiry_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid("expiry_interval", "must be more than zero"));
        }
        if cfg
            .commit_interval
            .is_some_and(|d| d > Duration::from_secs(1))
        {
            return Err(invalid("commit_interval", "must be 0 to 1s"));
        }
        Ok(cfg)
    }

    /// The admin address: `Some(None)` when the file says `"off"`.
    pub fn admin_addr(&self) -> Option<Option<SocketAddr>> {
        self.admin
            .as_ref()
            .map(|a| if a == "off" { None } else { a.parse().ok() })
    }

    /// Copies every value set in the file into `cfg` (data and listen
    /// included).
    pub fn apply(&self, cfg: &mut ServerConfig) {
        if let Some(v) = &self.data {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = self.invite_only {
            cfg.invite_only = v;
        }
        if let Some(v) = self.retention {
            cfg.retention = v;
        }
        if let Some(v) = self.notice_retention {
            cfg.notice_retention = v;
        }
        if let Some(v) = self.expiry_interval {
            cfg.expiry_interval = v;
        }
        if let Some(v) = self.max_connections {
            cfg.max_connections = v;
        }
        if let Some(v) = self.max_pending {
            cfg.max_pending_per_mailbox = v;
        }
        if let Some(v) = self.max_body_len {
            cfg.max_body_len = v;
        }
        if let Some(v) = self.max_one_time_keys {
            cfg.max_one_time_keys = v;
        }
        if let Some(v) = self.handshake_timeout {
            cfg.handshake_timeout = v;
        }
        if let Some(v) = self.unauthenticated_timeout {
            cfg.unauthenticated_timeout = v;
        }
        if let Some(v) = self.idle_timeout {
            cfg.idle_timeout = v;
        }
        if let Some(v) = self.commit_interval {
            cfg.commit_interval = v;
        }
        if let Some(v) = self.register_limit {
            cfg.register_limit = RateLimit {
                burst: v.burst,
                per_hour: v.per_hour,
            };
        }
        if let Some(v) = self.register_limit_per_peer {
            cfg.register_limit_per_peer = RateLimit {
                burst: v.burst,
                per_hour: v.per_hour,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn commit_interval_is_a_setting_with_bounds() {
        let p = Path::new("server.toml");
        let mut cfg = ServerConfig::new("d", "0.0.0.0:5222".parse().unwrap());
        assert_eq!(cfg.commit_interval, Duration::from_millis(3));
        FileConfig::parse("commit_interval = \"0ms\"\n", p)
            .unwrap()
            .apply(&mut cfg);
        assert_eq!(cfg.commit_interval, Duration::ZERO);
        let e = FileConfig::parse("commit_interval = \"2s\"\n", p).unwrap_err();
        assert!(e.to_string().contains("commit_interval"), "{e}");
    }

    #[test]
    fn file_config_applies_and_refuses_unknown_keys() {
        let p = Path::new("server.toml");
        let f = FileConfig::parse(
            "listen = \"127.0.0.1:6000\"\ninvite_only = true\nretention = \"2d\"\nadmin = \"off\"\n\
             [register_limit]\nburst = 1\nper_hour = 2\n",
            p,
        )
        .unwrap();
        let mut cfg = ServerConfig::new("d", "0.0.0.0:5222".parse().unwrap());
        f.apply(&mut cfg);
        assert!(cfg.invite_only);
        assert_eq!(cfg.listen.port(), 6000);
        assert_eq!(cfg.retention, Duration::from_secs(2 * 86400));
        assert_eq!(cfg.register_limit.per_hour, 2);
        assert_eq!(f.admin_addr(), Some(None));
        let e = FileConfig::parse("invite_only = true\nretension = \"1d\"\n", p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("server.toml") && msg.contains("retension") && msg.contains("line 2"),
            "{msg}"
        );
        let e = FileConfig::parse("retention = \"soon\"\n", p).unwrap_err();
        assert!(e.to_string().contains("retention"), "{e}");
        assert!(FileConfig::parse("max_connections = 0\n", p).is_err());
        assert!(FileConfig::parse("admin = \"nowhere\"\n", p).is_err());
    }
}

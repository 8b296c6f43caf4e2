//! Server settings, built once (from flags in `ponte-cli`) into this typed
//! struct; every bound the server enforces lives here.

use ponte_wire::diag::{key_path, line_col};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

impl RateLimit {
    /// The bucket's rate in [`ponte_wire::limit`]'s terms.
    pub fn rate(self) -> ponte_wire::limit::Rate {
        ponte_wire::limit::Rate {
            per_second: f64::from(self.per_hour) / 3600.0,
            capacity: f64::from(self.burst),
        }
    }
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
    /// Most connections from one peer address (IPv6: one /64) that have not
    /// logged in yet; more are closed at once.
    pub max_pre_login_per_address: usize,
    /// Whether loopback peers (a relay on this machine) are exempt from
    /// `max_pre_login_per_address`.
    pub pre_login_exempts_loopback: bool,
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
    /// Bytes of message bodies sent but not yet acknowledged, per
    /// connection: no further item is pushed while the next one would go
    /// over it (one item always may, so a maximal message still goes out).
    pub delivery_window_bytes: usize,
    /// Requests of one connection waiting for the database at once.
    pub max_requests_in_flight: usize,
    /// How long a response may wait for room in the outbound queue before
    /// the connection is closed as a slow consumer.
    pub slow_consumer_timeout: Duration,
    /// How long the socket may accept no byte while frames wait to be
    /// written before the connection is closed as a slow consumer.
    pub write_stall_timeout: Duration,
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
    /// Largest blob (an uploaded file's ciphertext), bytes.
    pub max_blob_size: u64,
    /// Most bytes of blobs (finished or being uploaded, by declared size)
    /// one account may have stored.
    pub blob_quota_per_account: u64,
    /// How long a blob (or an unfinished upload) is kept; `None`: as long
    /// as `retention`.
    pub blob_retention: Option<Duration>,
    /// Where accounts, keys and mailboxes live: `None` for SQLite in the
    /// data directory (`ponte.db`), or a PostgreSQL address
    /// (`postgres://USER@HOST:PORT/DB`) that every node of the service
    /// shares (see `store::pg`).
    pub store: Option<String>,
    /// Where blob files live [default: `DATA_DIR/blobs`]; with several
    /// nodes on one PostgreSQL database, a directory they all share.
    pub blob_dir: Option<PathBuf>,
    /// NATS (`nats://HOST:PORT`, with JetStream) carrying wake-ups and
    /// presence between the nodes of a service on PostgreSQL.
    pub bus: Option<String>,
    /// With PostgreSQL: how often every connected device's mailbox is read
    /// anyway, bounding the delay of a lost wake-up (or of everything
    /// stored by other nodes, without a bus).
    pub catch_up_interval: Duration,
}

impl ServerConfig {
    /// How long a blob is kept: `blob_retention`, else `retention`.
    pub fn blob_retention(&self) -> Duration {
        self.blob_retention.unwrap_or(self.retention)
    }

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
            max_pre_login_per_address: 256,
            pre_login_exempts_loopback: true,
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
            delivery_window_bytes: 1024 * 1024,
            max_requests_in_flight: 32,
            slow_consumer_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
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
            max_blob_size: 100 * 1024 * 1024,
            blob_quota_per_account: 1024 * 1024 * 1024,
            blob_retention: None,
            store: None,
            blob_dir: None,
            bus: None,
            catch_up_interval: Duration::from_secs(10),
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

/// Formats a duration the way [`parse_duration`] reads it (`90s`, `30d`,
/// `500ms`), for messages.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= per && (ms / per) * per == ms {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// The range a duration setting must lie in. The same bounds apply to the
/// command-line flag and to the config file key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    /// The config file key (the flag is `--` and the key with `-` for `_`).
    pub key: &'static str,
    /// Least value accepted.
    pub min: Duration,
    /// Greatest value accepted.
    pub max: Duration,
}

impl DurationBounds {
    /// `Ok(d)` when `d` is in range, else what is wrong (without the key).
    pub fn check(&self, d: Duration) -> Result<Duration, String> {
        if d < self.min || d > self.max {
            let range = if self.min.is_zero() {
                format!("at most {}", format_duration(self.max))
            } else {
                format!(
                    "{} to {}",
                    format_duration(self.min),
                    format_duration(self.max)
                )
            };
            return Err(format!("must be {range}, not {}", format_duration(d)));
        }
        Ok(d)
    }

    /// Parses a duration and checks its range (a flag's value parser).
    pub fn parse(&self, s: &str) -> Result<Duration, String> {
        self.check(parse_duration(s)?)
    }
}

/// The range a count setting must lie in (flag and config file alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountBounds {
    /// The config file key.
    pub key: &'static str,
    /// Least value accepted.
    pub min: u64,
    /// Greatest value accepted.
    pub max: u64,
}

impl CountBounds {
    /// `Ok(n)` when `n` is in range, else what is wrong (without the key).
    pub fn check<T>(&self, n: T) -> Result<T, String>
    where
        T: Copy + TryInto<u64> + std::fmt::Display,
    {
        match n.try_into() {
            Ok(v) if (self.min..=self.max).contains(&v) => Ok(n),
            _ if self.max == u64::MAX => Err(format!("must be at least {}, not {n}", self.min)),
            _ => Err(format!("must be {} to {}, not {n}", self.min, self.max)),
        }
    }

    /// Parses a number and checks its range (a flag's value parser).
    pub fn parse<T>(&self, s: &str) -> Result<T, String>
    where
        T: Copy + TryInto<u64> + std::fmt::Display + std::str::FromStr,
    {
        let n: T = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected a whole number"))?;
        self.check(n)
    }
}

/// Checks a host for the printed server address (`--host`, config key
/// `host`): one that a client parses back from it unchanged
/// (`ServerAddress::from_str`: a DNS name of letters, digits, `.`, `-`,
/// `_`, or an IP address). A bracketed IPv6 address loses its brackets
/// (the address adds them). A `:` is only allowed in an IPv6 address:
/// `chat.example.org:443` would be taken for one by the parser and reach
/// nothing. Returns the host as it goes in the address.
pub fn check_host(s: &str) -> Result<String, String> {
    use ponte_wire::address::{ServerAddress, DEFAULT_PORT};
    use std::net::Ipv6Addr;
    let host = s
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|h| h.parse::<Ipv6Addr>().is_ok())
        .unwrap_or(s);
    if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
        return Err(format!(
            "{s:?} is neither a host name nor an IPv6 address: give the host alone, \
             the port is set separately"
        ));
    }
    let probe = ServerAddress {
        host: host.to_owned(),
        port: DEFAULT_PORT,
        key: [0; 32],
    };
    match probe.to_string().parse::<ServerAddress>() {
        Ok(back) if back == probe => Ok(host.to_owned()),
        _ => Err(format!(
            "{s:?} cannot be used in a server address: give a DNS name (letters, digits, \
             '.', '-', '_') or an IP address"
        )),
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// Checks a `store` value: a PostgreSQL address (`postgres://…` or
/// `postgresql://…`) that parses. The message never repeats the value (it
/// may hold a password).
pub fn check_store(s: &str) -> Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err(
            "not a PostgreSQL address: give postgres://USER@HOST:PORT/DATABASE \
             (leave store unset for SQLite in the data directory)"
                .to_owned(),
        );
    }
    crate::store::pg::parse_address(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{}", crate::Chain(&e)))
}

/// `catch_up_interval`: often enough to bound a lost wake-up, not so often
/// that idle devices load the database.
pub const CATCH_UP_INTERVAL: DurationBounds = DurationBounds {
    key: "catch_up_interval",
    min: Duration::from_millis(100),
    max: Duration::from_secs(3600),
};

/// `retention`: long enough to outlast a short absence, at most ten years.
pub const RETENTION: DurationBounds = DurationBounds {
    key: "retention",
    min: MINUTE,
    max: Duration::from_secs(3650 * 86_400),
};
/// `notice_retention`: as `retention`.
pub const NOTICE_RETENTION: DurationBounds = DurationBounds {
    key: "notice_retention",
    ..RETENTION
};
/// `expiry_interval`: a sweep every second at most, once a day at least.
pub const EXPIRY_INTERVAL: DurationBounds = DurationBounds {
    key: "expiry_interval",
    min: SECOND,
    max: DAY,
};
/// `handshake_timeout`: a slow mobile link needs more than a second; a
/// deadline of more than five minutes would let idle sockets hold slots.
pub const HANDSHAKE_TIMEOUT: DurationBounds = DurationBounds {
    key: "handshake_timeout",
    min: SECOND,
    max: Duration::from_secs(300),
};
/// `unauthenticated_timeout`: as `handshake_timeout`.
pub const UNAUTHENTICATED_TIMEOUT: DurationBounds = DurationBounds {
    key: "unauthenticated_timeout",
    ..HANDSHAKE_TIMEOUT
};
/// `idle_timeout`: clients ping every 60 s while listening, so anything
/// shorter than 90 s would cut off every idle client.
pub const IDLE_TIMEOUT: DurationBounds = DurationBounds {
    key: "idle_timeout",
    min: Duration::from_secs(90),
    max: DAY,
};
/// `commit_interval`: zero (commit as soon as the last flush is done) to 1 s.
pub const COMMIT_INTERVAL: DurationBounds = DurationBounds {
    key: "commit_interval",
    min: Duration::ZERO,
    max: SECOND,
};
/// `max_connections`.
pub const MAX_CONNECTIONS: CountBounds = CountBounds {
    key: "max_connections",
    min: 1,
    max: u64::MAX,
};
/// `max_pre_login_per_address`.
pub const MAX_PRE_LOGIN_PER_ADDRESS: CountBounds = CountBounds {
    key: "max_pre_login_per_address",
    min: 1,
    max: u64::MAX,
};
/// `max_pending`.
pub const MAX_PENDING: CountBounds = CountBounds {
    key: "max_pending",
    min: 1,
    max: u64::MAX,
};
/// `max_body_len`: room for a short message's ciphertext, and below the
/// frame limit (128 KiB) with room for the envelope.
pub const MAX_BODY_LEN: CountBounds = CountBounds {
    key: "max_body_len",
    min: 1024,
    max: 96 * 1024,
};
/// `max_blob_size`: from 1 KiB (a voice note) to 4 GiB.
pub const MAX_BLOB_SIZE: CountBounds = CountBounds {
    key: "max_blob_size",
    min: 1024,
    max: 4 * 1024 * 1024 * 1024,
};
/// `blob_quota_per_account`: 0 turns uploads off.
pub const BLOB_QUOTA_PER_ACCOUNT: CountBounds = CountBounds {
    key: "blob_quota_per_account",
    min: 0,
    max: u64::MAX,
};
/// `blob_retention`: as `retention`.
pub const BLOB_RETENTION: DurationBounds = DurationBounds {
    key: "blob_retention",
    ..RETENTION
};
/// `max_one_time_keys`: clients keep 50 on the server, so fewer would refuse
/// their uploads.
pub const MAX_ONE_TIME_KEYS: CountBounds = CountBounds {
    key: "max_one_time_keys",
    min: 50,
    max: 10_000,
};
/// `burst` of a registration limit: 0 would close registration for good
/// (`invite_only` is the way to do that).
pub const RATE_LIMIT_BURST: CountBounds = CountBounds {
    key: "burst",
    min: 1,
    max: u64::MAX,
};
/// `per_hour` of a registration limit: 0 would never refill the bucket.
pub const RATE_LIMIT_PER_HOUR: CountBounds = CountBounds {
    key: "per_hour",
    ..RATE_LIMIT_BURST
};

/// Deserializers for config file values that check their range, so that an
/// out-of-range value is reported by the TOML parser with file, line, column
/// and key like any other bad value (the messages leave the key out: the
/// error's path names it).
mod bounded {
    use super::{CountBounds, DurationBounds};
    use serde::de::Error as _;
    use serde::{Deserialize as _, Deserializer};
    use std::time::Duration;

    /// A duration is written as a string: the visitor says so to a bare
    /// number (`retention = 30`), instead of only "expected a string".
    struct DurationText;

    impl serde::de::Visitor<'_> for DurationText {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration in quotes with its unit, such as \"30d\", \"12h\" or \"90s\"")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }

    fn duration<'de, D: Deserializer<'de>>(
        d: D,
        b: &DurationBounds,
    ) -> Result<Option<Duration>, D::Error> {
        let s = d.deserialize_str(DurationText)?;
        let v = super::parse_duration(&s).map_err(D::Error::custom)?;
        b.check(v).map(Some).map_err(D::Error::custom)
    }

    fn count<'de, D, T>(d: D, b: &CountBounds) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: serde::Deserialize<'de> + Copy + TryInto<u64> + std::fmt::Display,
    {
        let n = T::deserialize(d)?;
        b.check(n).map_err(D::Error::custom)
    }

    macro_rules! durations {
        ($($name:ident => $bounds:ident),* $(,)?) => {$(
            pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
                duration(d, &super::$bounds)
            }
        )*};
    }
    durations!(
        retention => RETENTION,
        notice_retention => NOTICE_RETENTION,
        expiry_interval => EXPIRY_INTERVAL,
        handshake_timeout => HANDSHAKE_TIMEOUT,
        unauthenticated_timeout => UNAUTHENTICATED_TIMEOUT,
        idle_timeout => IDLE_TIMEOUT,
        commit_interval => COMMIT_INTERVAL,
        catch_up_interval => CATCH_UP_INTERVAL,
        blob_retention => BLOB_RETENTION,
    );

    macro_rules! counts {
        ($($name:ident: $t:ty => $bounds:ident),* $(,)?) => {$(
            pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$t>, D::Error> {
                count::<D, $t>(d, &super::$bounds).map(Some)
            }
        )*};
    }
    counts!(
        max_connections: usize => MAX_CONNECTIONS,
        max_pre_login_per_address: usize => MAX_PRE_LOGIN_PER_ADDRESS,
        max_pending: u32 => MAX_PENDING,
        max_body_len: usize => MAX_BODY_LEN,
        max_one_time_keys: u32 => MAX_ONE_TIME_KEYS,
        max_blob_size: u64 => MAX_BLOB_SIZE,
        blob_quota_per_account: u64 => BLOB_QUOTA_PER_ACCOUNT,
    );

    pub fn listen<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::net::SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Some).map_err(|_| {
            D::Error::custom(format!(
                "{s:?} is not an IP address and port, e.g. 0.0.0.0:5222 or [::]:5222 \
                 (host names such as localhost are not resolved)"
            ))
        })
    }

    pub fn admin<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s = String::deserialize(d)?;
        if s != "off" && s.parse::<std::net::SocketAddr>().is_err() {
            return Err(D::Error::custom(format!(
                "{s:?} is not an address like 127.0.0.1:8299, or \"off\""
            )));
        }
        Ok(Some(s))
    }

    pub fn bus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s = String::deserialize(d)?;
        crate::bus::check_address(&s)
            .map(Some)
            .map_err(D::Error::custom)
    }

    pub fn store<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s = String::deserialize(d)?;
        super::check_store(&s).map(Some).map_err(D::Error::custom)
    }

    pub fn host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s = String::deserialize(d)?;
        super::check_host(&s).map(Some).map_err(D::Error::custom)
    }

    pub fn burst<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        count::<D, u32>(d, &super::RATE_LIMIT_BURST)
    }

    pub fn per_hour<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        count::<D, u32>(d, &super::RATE_LIMIT_PER_HOUR)
    }
}

/// A rate limit as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Bucket size.
    #[serde(deserialize_with = "bounded::burst")]
    pub burst: u32,
    /// Refill per hour.
    #[serde(deserialize_with = "bounded::per_hour")]
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
    /// Data directory (relative: from the config file's folder, see
    /// [`FileConfig::load`]).
    pub data: Option<PathBuf>,
    /// PostgreSQL address shared by every node of the service (unset:
    /// SQLite in the data directory).
    #[serde(default, deserialize_with = "bounded::store")]
    pub store: Option<String>,
    /// Blob directory (relative: from the config file's folder) [default:
    /// DATA_DIR/blobs].
    pub blob_dir: Option<PathBuf>,
    /// NATS between the nodes of a PostgreSQL service.
    #[serde(default, deserialize_with = "bounded::bus")]
    pub bus: Option<String>,
    /// Catch-up read interval (PostgreSQL only).
    #[serde(default, deserialize_with = "bounded::catch_up_interval")]
    pub catch_up_interval: Option<Duration>,
    /// Listen address (an IP address and port; host names are refused).
    #[serde(default, deserialize_with = "bounded::listen")]
    pub listen: Option<SocketAddr>,
    /// Admin address, or `"off"`.
    #[serde(default, deserialize_with = "bounded::admin")]
    pub admin: Option<String>,
    /// Host name for the printed server address (checked as `--host` is).
    #[serde(default, deserialize_with = "bounded::host")]
    pub host: Option<String>,
    /// Invite-only registration.
    pub invite_only: Option<bool>,
    /// Retention of undelivered messages.
    #[serde(default, deserialize_with = "bounded::retention")]
    pub retention: Option<Duration>,
    /// Retention of receipts and notices.
    #[serde(default, deserialize_with = "bounded::notice_retention")]
    pub notice_retention: Option<Duration>,
    /// Expiry sweep interval.
    #[serde(default, deserialize_with = "bounded::expiry_interval")]
    pub expiry_interval: Option<Duration>,
    /// Connection cap.
    #[serde(default, deserialize_with = "bounded::max_connections")]
    pub max_connections: Option<usize>,
    /// Connections not logged in yet, per peer address.
    #[serde(default, deserialize_with = "bounded::max_pre_login_per_address")]
    pub max_pre_login_per_address: Option<usize>,
    /// Undelivered messages per recipient.
    #[serde(default, deserialize_with = "bounded::max_pending")]
    pub max_pending: Option<u32>,
    /// Message body cap, bytes.
    #[serde(default, deserialize_with = "bounded::max_body_len")]
    pub max_body_len: Option<usize>,
    /// One-time keys stored per device.
    #[serde(default, deserialize_with = "bounded::max_one_time_keys")]
    pub max_one_time_keys: Option<u32>,
    /// Handshake deadline.
    #[serde(default, deserialize_with = "bounded::handshake_timeout")]
    pub handshake_timeout: Option<Duration>,
    /// Register/Login deadline.
    #[serde(default, deserialize_with = "bounded::unauthenticated_timeout")]
    pub unauthenticated_timeout: Option<Duration>,
    /// Idle deadline for logged-in connections.
    #[serde(default, deserialize_with = "bounded::idle_timeout")]
    pub idle_timeout: Option<Duration>,
    /// Least time between commits under load.
    #[serde(default, deserialize_with = "bounded::commit_interval")]
    pub commit_interval: Option<Duration>,
    /// Largest blob, bytes.
    #[serde(default, deserialize_with = "bounded::max_blob_size")]
    pub max_blob_size: Option<u64>,
    /// Blob bytes stored per account.
    #[serde(default, deserialize_with = "bounded::blob_quota_per_account")]
    pub blob_quota_per_account: Option<u64>,
    /// Retention of blobs (default: `retention`).
    #[serde(default, deserialize_with = "bounded::blob_retention")]
    pub blob_retention: Option<Duration>,
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
    // The cause is part of the message and deliberately not a `source`:
    // error reporters that print the chain would otherwise say it twice.
    #[error("{}: {error}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// Not valid TOML, an unknown key, a bad or out-of-range value, on one
    /// line: `server.toml:3:1: register_limit.burst: invalid type ...`.
    #[error("{}", parse_error_text(.path, *.line, *.column, .key, .message))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// The key in dotted form (`register_limit.burst`), empty when the
        /// error is not about one key (TOML syntax).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `FILE:LINE:COL: KEY: MESSAGE`, leaving out an unknown position and an
/// empty key (never `: :`).
fn parse_error_text(path: &Path, line: usize, column: usize, key: &str, message: &str) -> String {
    let mut s = format!("{}:", path.display());
    if line > 0 {
        s.push_str(&format!("{line}:{column}:"));
    }
    s.push(' ');
    if !key.is_empty() {
        s.push_str(key);
        s.push_str(": ");
    }
    s.push_str(message);
    s
}

impl FileConfig {
    /// Reads and checks a config file. A relative `data` is resolved from
    /// the file's folder (as the relay resolves its certificate paths), so
    /// the file means the same from any working directory.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut file = Self::parse(&text, path)?;
        let folder = match path.parent() {
            Some(f) if !f.as_os_str().is_empty() => f,
            _ => Path::new("."),
        };
        let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_owned());
        for dir in [file.data.as_mut(), file.blob_dir.as_mut()]
            .into_iter()
            .flatten()
            .filter(|d| d.is_relative())
        {
            *dir = folder.join(&*dir);
        }
        Ok(file)
    }

    /// Parses config text (`path` is only used in errors).
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = key_path(e.path());
            let e = e.into_inner();
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                key,
                // toml's own message, on one line and without the excerpt
                // of the file the error's own Display adds.
                message: e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })
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
        if let Some(v) = &self.store {
            cfg.store = Some(v.clone());
        }
        if let Some(v) = &self.blob_dir {
            cfg.blob_dir = Some(v.clone());
        }
        if let Some(v) = &self.bus {
            cfg.bus = Some(v.clone());
        }
        if let Some(v) = self.catch_up_interval {
            cfg.catch_up_interval = v;
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
        if let Some(v) = self.max_pre_login_per_address {
            cfg.max_pre_login_per_address = v;
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
        if let Some(v) = self.max_blob_size {
            cfg.max_blob_size = v;
        }
        if let Some(v) = self.blob_quota_per_account {
            cfg.blob_quota_per_account = v;
        }
        if let Some(v) = self.blob_retention {
            cfg.blob_retention = Some(v);
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
mod tests;

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
        }
    }
}

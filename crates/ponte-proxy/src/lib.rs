//! `ponte proxy`: the volunteer relay.
//!
//! A stateless TCP/TLS relay that forwards bytes to a fixed set of configured
//! upstreams and nothing else. It never reads what it carries. The preset
//! `whatsapp` is a drop-in replacement for WhatsApp's official proxy; the
//! preset `ponte` fronts a Ponte server; the preset `stealth` fronts one
//! behind a cover website.
//!
//! What lives where:
//! - [`config`]: the TOML schema, presets, validation with file/line/key errors.
//! - [`server`]: bound listeners, accept loops, the life of one connection.
//! - [`relay`]: the data path (splice on Linux, small on-demand buffers elsewhere,
//!   half-close and idle timeouts).
//! - [`upstream`]: resolution, failover, health checks.
//! - [`tls`]: self-signed or file certificates, reloaded without a restart.
//! - [`limits`]: global, per-listener and per-source caps.
//! - [`metrics`], [`admin`]: Prometheus metrics, status page, health check.
//! - [`link`]: share links and terminal QR codes.
//! - [`stealth`]: the stealth listener (probes see a cover website), its
//!   per-link secrets and replay cache.
//! - `sys`: the few raw system calls (`splice`, `pipe2`, `setrlimit`).

pub mod acme;
pub mod admin;
pub mod config;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod relay;
pub mod server;
pub mod stealth;
mod sys;
pub mod tls;
pub mod upstream;

pub use config::{Config, ConfigError, Preset};
pub use server::{Proxy, ProxyError, ReloadHandle};
pub use sys::{raise_nofile_limit, restart_with_fast_memcpy, FAST_MEMCPY_TUNABLE};

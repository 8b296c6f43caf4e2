//! Relay configuration: the TOML schema, the presets, and validation.
//!
//! The file is parsed once into these types; every value that can be wrong is
//! a small newtype whose `Deserialize` checks it, so a bad address or duration
//! is reported by the TOML parser with its line and column. Cross references
//! (a listener naming an upstream) keep their source span ([`toml::Spanned`])
//! so that they too are reported at the right line. Unknown keys are refused.
//!
//! The same types serialize back to TOML (`ponte proxy --print-config`), and a
//! printed config loads back to an equal value.

use ponte_wire::diag::{key_path, line_col};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

mod presets;
mod validate;
mod values;

/// Official WhatsApp proxy connection cap (HAProxy `maxconn`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 27_500;
/// Official WhatsApp proxy buffer size (HAProxy `tune.bufsize`).
pub const DEFAULT_BUFFER_SIZE: usize = 4096;
/// Default admin endpoint (loopback only).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8199";

/// A configuration error, located in its file when it came from one:
/// `relay.toml:12:7: listener[0].tls: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The key in dotted form (`listener[2].upstream`), empty when the error
    /// is not about one key (TOML syntax, an unreadable file).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        } else if self.file.is_some() {
            f.write_str(" ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole relay configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Status page, `/metrics` and `/healthz`. Absent: no admin endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Connection limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Data path tuning.
    #[serde(default)]
    pub tuning: TuningConfig,
    /// Logging (privacy) switches.
    #[serde(default)]
    pub log: LogConfig,
    /// TLS settings shared by the listeners that terminate TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Certificates from an ACME CA, for `tls = "acme"` listeners and the
    /// builtin cover site (`crate::acme`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<crate::acme::AcmeConfig>,
    /// Named upstreams, the only places the relay ever forwards to.
    #[serde(default)]
    pub upstream: BTreeMap<String, UpstreamConfig>,
    /// Listeners (`[[listener]]`).
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint.
    pub listen: Spanned<ListenAddr>,
}

impl AdminConfig {
    /// An admin endpoint on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        AdminConfig {
            listen: sp(ListenAddr(addr)),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections across all listeners.
    pub max_connections: u32,
    /// Open connections from one source address (IPv6: one /64); 0 = no cap.
    pub per_source_connections: u32,
    /// New connections per second from one source (IPv6: one /64); 0 = no cap.
    pub per_source_rate: u32,
    /// Burst allowance on top of `per_source_rate`.
    pub per_source_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            per_source_connections: 0,
            per_source_rate: 0,
            per_source_burst: 20,
        }
    }
}

/// `[timeouts]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Connecting to one upstream server.
    pub connect: Dur,
    /// No bytes in either direction for this long closes the connection.
    pub idle: Dur,
    /// After one side has finished sending, how long the other may go on.
    pub half_close: Dur,
    /// Inbound PROXY header plus TLS handshake must complete within this.
    pub handshake: Dur,
    /// On SIGTERM/SIGINT, how long open connections may drain.
    pub drain: Dur,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: Dur(Duration::from_secs(5)),
            idle: Dur(Duration::from_secs(200)),
            half_close: Dur(Duration::from_secs(1)),
            handshake: Dur(Duration::from_secs(5)),
            drain: Dur(Duration::from_secs(30)),
        }
    }
}

/// `[tuning]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TuningConfig {
    /// Size of the first read buffer per direction. Buffers exist only while
    /// bytes are in flight; an idle connection holds none.
    pub buffer_size: usize,
    /// Largest buffer a busy direction grows to.
    pub max_buffer_size: usize,
    /// Zero-copy `splice(2)` for plain TCP legs (Linux).
    pub splice: bool,
    /// Worker threads, each with its own event loop; 0 = one per CPU.
    pub workers: u32,
}

impl Default for TuningConfig {
    fn default() -> Self {
        Self {
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_buffer_size: 64 * 1024,
            splice: cfg!(target_os = "linux"),
            workers: 0,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Write client IP addresses into logs. Off by default: relay users may be at risk.
    pub client_addresses: bool,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// DNS names and IP addresses written into the self-signed certificate.
    pub self_signed_names: Vec<String>,
    /// How often PEM files are checked for changes (they also reload on SIGHUP).
    pub reload_interval: Dur,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            self_signed_names: vec!["localhost".to_owned()],
            reload_interval: Dur(Duration::from_secs(5)),
        }
    }
}

/// `[upstream.NAME]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Servers in order of preference (`host:port`); later ones are failovers.
    pub servers: Spanned<Vec<HostPort>>,
    /// PROXY header written at the start of each upstream connection.
    #[serde(default)]
    pub send_proxy: SendProxy,
    /// Layer-4 health check interval; `0s` disables it.
    #[serde(default = "default_health_interval")]
    pub health_check_interval: Dur,
    /// How often host names are resolved again (also on every failure).
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Dur,
}

fn default_health_interval() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_resolve_interval() -> Dur {
    Dur(Duration::from_secs(300))
}

/// Which PROXY protocol header to send upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    /// No header.
    #[default]
    None,
    /// Text header, version 1.
    V1,
    /// Binary header, version 2.
    V2,
}

/// `[[listener]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name, used in metrics and logs.
    pub name: Spanned<String>,
    /// Addresses to bind (`0.0.0.0:443`, `[::]:443`).
    pub listen: Spanned<Vec<ListenAddr>>,
    /// TLS termination.
    #[serde(default)]
    pub tls: TlsMode,
    /// Expect a PROXY v1/v2 header from a load balancer before anything else.
    #[serde(default)]
    pub accept_proxy: bool,
    /// The upstream this listener forwards to.
    pub upstream: Spanned<String>,
    /// Open connections on this listener; absent = only the global cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// A stealth listener: a probe sees the cover site (`crate::stealth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stealth: Option<crate::stealth::StealthConfig>,
    /// TLS connections for other servers, told apart by their server name
    /// before any byte is forwarded, go to another upstream untouched
    /// (WhatsApp's media on the chat port in the single-port layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_passthrough: Option<SniPassthrough>,
}

/// `[listener.sni_passthrough]`: a connection whose ClientHello names one
/// of `names` (or a name under one: `whatsapp.net` covers
/// `mmg.whatsapp.net`) is passed to `upstream` as it is, TLS and all; the
/// listener terminates TLS for every other connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniPassthrough {
    /// Server names (and the names under them) that are passed through.
    pub names: Vec<String>,
    /// The upstream they go to.
    pub upstream: Spanned<String>,
}

impl SniPassthrough {
    /// Whether `server_name` is one of the names or under one (ASCII case
    /// ignored).
    pub fn matches(&self, server_name: &str) -> bool {
        let sni = server_name.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            let n = n.to_ascii_lowercase();
            sni == n
                || (sni.len() > n.len()
                    && sni.ends_with(&n)
                    && sni.as_bytes()[sni.len() - n.len() - 1] == b'.')
        })
    }
}

/// TLS mode of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    None,
    /// A certificate made at start.
    SelfSigned,
    /// A certificate from the `[acme]` CA, renewed before it expires.
    Acme,
    /// The operator's PEM files, reloaded on change.
    Files {
        /// Certificate chain, PEM.
        cert: PathBuf,
        /// Private key, PEM.
        key: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl Serialize for TlsMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TlsMode::None => s.serialize_str("none"),
            TlsMode::SelfSigned => s.serialize_str("self-signed"),
            TlsMode::Acme => s.serialize_str("acme"),
            TlsMode::Files { cert, key } => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TlsMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TlsMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""none", "self-signed", "acme" or { cert = "x.pem", key = "y.pem" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TlsMode, E> {
                match v {
                    "none" => Ok(TlsMode::None),
                    "self-signed" => Ok(TlsMode::SelfSigned),
                    "acme" => Ok(TlsMode::Acme),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TlsMode, A::Error> {
                let f = TlsFiles::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TlsMode::Files {
                    cert: f.cert,
                    key: f.key,
                })
            }
        }
        d.deserialize_any(V)
    }
}

pub use values::{valid_hostname, Dur, HostPort, ListenAddr};

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

pub use presets::Preset;

impl Config {
    /// Parse and validate TOML text. `file` is used in error messages.
    pub fn from_toml(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
                let path = key_path(e.path());
                let e = e.into_inner();
                let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
                ConfigError {
                    file: file.map(Path::to_path_buf),
                    line,
                    column,
                    key: path,
                    message: e.message().trim().to_owned(),
                }
            })?;
        cfg.validate(Some(text), file)?;
        Ok(cfg)
    }

    /// Read, parse and validate a file. Relative certificate and key paths
    /// are resolved from the file's folder (as nginx and HAProxy do), so the
    /// config works from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut cfg = Config::from_toml(&text, Some(path))?;
        let folder = match path.parent() {
            Some(f) if !f.as_os_str().is_empty() => f,
            _ => Path::new("."),
        };
        let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
        cfg.resolve_paths(&folder);
        for l in &mut cfg.listener {
            if let Some(st) = &mut l.stealth {
                let p = st.secrets_path(Some(path));
                st.secrets = Some(std::path::absolute(&p).unwrap_or(p));
                if let Some(site) = &mut st.site {
                    if site.is_relative() {
                        *site = folder.join(&*site);
                    }
                }
            }
        }
        if let Some(a) = &mut cfg.acme {
            let p = a.state_path(Some(path));
            a.state = Some(std::path::absolute(&p).unwrap_or(p));
            if let Some(ca) = &mut a.directory_ca {
                if ca.is_relative() {
                    *ca = folder.join(&*ca);
                }
            }
        }
        Ok(cfg)
    }

    /// Make relative certificate and key paths relative to `folder`.
    pub fn resolve_paths(&mut self, folder: &Path) {
        for l in &mut self.listener {
            if let TlsMode::Files { cert, key } = &mut l.tls {
                for p in [cert, key] {
                    if p.is_relative() {
                        *p = folder.join(&*p);
                    }
                }
            }
        }
    }

    /// The config as TOML that [`Config::from_toml`] loads back unchanged.
    pub fn to_toml(&self) -> String {
        // Serialization of these types cannot fail: every map key is a string
        // and no value is a bare None.
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// What is allowed but probably not meant: said at start (logged) and
    /// by `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for l in &self.listener {
            let builtin = l
                .stealth
                .as_ref()
                .is_some_and(|st| st.cover == crate::stealth::CoverSite::Builtin);
            if builtin && self.acme.is_none() {
                w.push(format!(
                    "listener `{}`: the builtin cover site has a self-signed certificate \
                     without [acme]; a prober sees a site no browser trusts",
                    l.name.get_ref()
                ));
            }
        }
        if let Some(a) = &self.admin {
            let addr = a.listen.get_ref().0;
            if !addr.ip().to_canonical().is_loopback() {
                w.push(format!(
                    "the admin endpoint {addr} is not on loopback: whoever can reach it reads \
                     the status page and /metrics (users connected, traffic, upstream health); \
                     firewall it, or use 127.0.0.1 and `ssh -L` to see it from elsewhere"
                ));
            }
        }
        w
    }
}

#[cfg(test)]
mod tests;

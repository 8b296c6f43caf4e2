//! Upstreams: the fixed set of places the relay forwards to.
//!
//! Each upstream has servers in order of preference. Host names are resolved
//! at start, again on a timer, and again whenever a connect fails; a lookup
//! failure is logged once, until a lookup succeeds again. A layer-4
//! health check (connect, then close) runs on an interval; connects try the
//! healthy servers first and fall over to the next on failure, so a client
//! whose upstream cannot be reached is closed promptly. A server going down
//! or coming back is logged once, whether the health check or a client's
//! connect noticed it.

use crate::config::{HostPort, SendProxy, UpstreamConfig};
use crate::metrics::{Metrics, ServerMetrics, UpstreamMetrics};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Every server was tried and none answered in time.
    #[error("no server of upstream `{0}` could be reached")]
    Unavailable(String),
}

/// How long a DNS lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Re-resolution after failures happens at most this often per server.
const MIN_RERESOLVE_GAP: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Server {
    spec: HostPort,
    addrs: RwLock<Arc<[SocketAddr]>>,
    /// Health in the low bit, above it a count of the results recorded: a
    /// health check whose result is older than a client's connect (the
    /// count moved while it ran) does not undo what the connect found.
    health: AtomicU64,
    /// The last lookup failed (said once until one succeeds).
    dns_failing: AtomicBool,
    last_resolve: std::sync::Mutex<Option<Instant>>,
    metrics: ServerMetrics,
}

impl Server {
    fn addrs(&self) -> Arc<[SocketAddr]> {
        match self.addrs.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn healthy(&self) -> bool {
        self.health.load(Ordering::Relaxed) & 1 == 1
    }

    /// Record a client connect's result.
    fn set_healthy(&self, upstream: &str, ok: bool, noticed_by: &'static str) {
        let old = self
            .health
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(next_health(h, ok))
            })
            .unwrap_or_else(|h| h);
        self.health_changed(upstream, old & 1 == 1, ok, noticed_by);
    }

    /// Record a health check's result, unless a client's connect recorded
    /// one since `seen` (read when the check began).
    fn set_checked(&self, upstream: &str, seen: u64, ok: bool) {
        if self
            .health
            .compare_exchange(
                seen,
                next_health(seen, ok),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.health_changed(upstream, seen & 1 == 1, ok, "the health check");
        }
    }

    /// Update the gauge; log a change once, whichever noticed it.
    fn health_changed(&self, upstream: &str, was: bool, ok: bool, noticed_by: &'static str) {
        self.metrics.healthy.set(i64::from(ok));
        match (was, ok) {
            (true, false) => tracing::warn!(
                upstream = %upstream,
                server = %self.spec,
                "upstream server unreachable (noticed by {noticed_by}); clients go to the next server, or are closed"
            ),
            (false, true) => tracing::info!(
                upstream = %upstream,
                server = %self.spec,
                "upstream server reachable again (noticed by {noticed_by})"
            ),
            _ => {}
        }
    }

    /// Resolve the host again; keeps the previous answer when the lookup fails.
    async fn resolve(&self) {
        if let Some(ip) = self.spec.ip() {
            self.set_addrs(vec![SocketAddr::new(ip, self.spec.port)]);
            return;
        }
        {
            let mut last = match self.last_resolve.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if let Some(t) = *last {
                if t.elapsed() < MIN_RERESOLVE_GAP {
                    return;
                }
            }
            *last = Some(Instant::now());
        }
        let host = (self.spec.host.as_str(), self.spec.port);
        let failure = match timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(host)).await {
            Ok(Ok(it)) => {
                let addrs: Vec<SocketAddr> = it.take(16).collect();
                if addrs.is_empty() {
                    Some("no address".to_owned())
                } else {
                    self.set_addrs(addrs);
                    None
                }
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("DNS lookup timed out".to_owned()),
        };
        // Lookups are retried on a timer and after failures: a failure is
        // said once, and so is the first success after it.
        match failure {
            Some(why) if !self.dns_failing.swap(true, Ordering::Relaxed) => {
                let kept = if self.addrs().is_empty() {
                    "no address known yet"
                } else {
                    "keeping the last addresses"
                };
                tracing::warn!(server = %self.spec, "cannot resolve: {why}; {kept}; retrying")
            }
            None if self.dns_failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(server = %self.spec, "resolves again")
            }
            _ => {}
        }
    }

    fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        let mut g = match self.addrs.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = addrs.into();
    }
}

/// The health word after recording `ok`: one more result, `ok` in the low bit.
fn next_health(h: u64, ok: bool) -> u64 {
    ((h >> 1).wrapping_add(1) << 1) | u64::from(ok)
}

/// One configured upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the config.
    pub name: String,
    /// Header to write first on each upstream connection.
    pub send_proxy: SendProxy,
    servers: Vec<Arc<Server>>,
    connect_timeout: Duration,
    health_interval: Duration,
    resolve_interval: Duration,
    metrics: UpstreamMetrics,
}

impl Upstream {
    /// Build from config; resolution happens in [`Upstream::start`].
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        connect_timeout: Duration,
        metrics: &Metrics,
    ) -> Upstream {
        let servers = cfg
            .servers
            .get_ref()
            .iter()
            .map(|spec| {
                let m = metrics.server(name, &spec.to_string());
                m.healthy.set(1);
                Arc::new(Server {
                    spec: spec.clone(),
                    addrs: RwLock::new(Arc::from(Vec::new())),
                    health: AtomicU64::new(1),
                    dns_failing: AtomicBool::new(false),
                    last_resolve: std::sync::Mutex::new(None),
                    metrics: m,
                })
            })
            .collect();
        Upstream {
            name: name.to_owned(),
            send_proxy: cfg.send_proxy,
            servers,
            connect_timeout,
            health_interval: cfg.health_check_interval.0,
            resolve_interval: cfg.resolve_interval.0,
            metrics: metrics.upstream(name),
        }
    }

    /// Resolve every server once, then run the health and re-resolve timers
    /// until `shutdown`.
    pub async fn start(self: Arc<Self>, shutdown: CancellationToken) {
        for s in &self.servers {
            s.resolve().await;
        }
        self.check_all().await;
        let mut health = (!self.health_interval.is_zero()).then(|| {
            tokio::time::interval_at(Instant::now() + self.health_interval, self.health_interval)
        });
        let mut resolve = tokio::time::interval_at(
            Instant::now() + self.resolve_interval.max(Duration::from_secs(1)),
            self.resolve_interval.max(Duration::from_secs(1)),
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async { match &mut health { Some(h) => { h.tick().await; } None => std::future::pending().await } } => {
                    self.check_all().await;
                }
                _ = resolve.tick() => {
                    for s in &self.servers {
                        if let Ok(mut g) = s.last_resolve.lock() { *g = None; }
                        s.resolve().await;
                    }
                }
            }
        }
    }

    /// Layer-4 check of every server: connect, then close.
    pub async fn check_all(&self) {
        for s in &self.servers {
            let seen = s.health.load(Ordering::Acquire);
            let mut ok = false;
            for addr in s.addrs().iter() {
                if let Ok(Ok(_)) = timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                    ok = true;
                    break;
                }
            }
            if !ok {
                s.resolve().await;
            }
            s.set_checked(&self.name, seen, ok);
        }
    }

    /// True when at least one server passed its last check.
    pub fn is_healthy(&self) -> bool {
        self.servers.iter().any(|s| s.healthy())
    }

    /// Each server and its health, for the status page.
    pub fn server_health(&self) -> Vec<(String, bool)> {
        self.servers
            .iter()
            .map(|s| (s.spec.to_string(), s.healthy()))
            .collect()
    }

    /// Connect to the first server that answers: healthy servers first, in
    /// config order, then the others.
    pub async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        let healthy = self.servers.iter().filter(|s| s.healthy());
        let unhealthy = self.servers.iter().filter(|s| !s.healthy());
        for s in healthy.chain(unhealthy) {
            let mut addrs = s.addrs();
            if addrs.is_empty() {
                s.resolve().await;
                addrs = s.addrs();
            }
            let mut failed = addrs.is_empty();
            for addr in addrs.iter() {
                let start = Instant::now();
                match timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        self.metrics
                            .connect_seconds
                            .observe(start.elapsed().as_secs_f64());
                        let _ = stream.set_nodelay(true);
                        if !s.healthy() {
                            s.set_healthy(&self.name, true, "a client's connect");
                        }
                        return Ok(stream);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(upstream = %self.name, server = %s.spec, "connect failed: {e}");
                        failed = true;
                    }
                    Err(_) => {
                        tracing::debug!(upstream = %self.name, server = %s.spec, "connect timed out");
                        failed = true;
                    }
                }
                s.metrics.connect_failures.inc();
            }
            if failed {
                s.set_healthy(&self.name, false, "a client's connect");
                // Look the name up again in the background: this client is
                // served by the next server (or closed) without waiting for DNS.
                let s = Arc::clone(s);
                tokio::spawn(async move { s.resolve().await });
            }
        }
        Err(UpstreamError::Unavailable(self.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one_server() -> Upstream {
        let cfg: crate::Config = crate::Config::from_toml(
            "[upstream.u]\nservers = [\"127.0.0.1:9\"]\n[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n",
            None,
        )
        .unwrap();
        Upstream::new(
            "u",
            &cfg.upstream["u"],
            Duration::from_secs(1),
            &Metrics::new(),
        )
    }

    /// A check that began before a client's connect found the server down
    /// does not mark it healthy again with its older result.
    #[test]
    fn an_older_check_result_does_not_undo_a_clients_connect() {
        let u = one_server();
        let s = &u.servers[0];
        let seen = s.health.load(Ordering::Acquire);
        s.set_healthy("u", false, "a client's connect");
        s.set_checked("u", seen, true);
        assert!(!u.is_healthy());
        // A check that began after it counts.
        let seen = s.health.load(Ordering::Acquire);
        s.set_checked("u", seen, true);
        assert!(u.is_healthy());
        assert_eq!(s.metrics.healthy.get(), 1);
        let seen = s.health.load(Ordering::Acquire);
        s.set_checked("u", seen, false);
        assert!(!u.is_healthy());
        assert_eq!(s.metrics.healthy.get(), 0);
    }
}

//! The running relay: what a start prepares, the bound listeners, the
//! worker threads and their accept loops. The life of one connection
//! (limits -> PROXY header in -> TLS or the stealth opening -> upstream ->
//! PROXY header out -> data path) is [`connection`].

use crate::acme::Acme;
use crate::admin;
use crate::config::{Config, SendProxy, TlsMode};
use crate::limits::{Counter, Limits};
use crate::metrics::{HandshakeFailure, ListenerMetrics, Metrics, Refusal, ResultLabel};
use crate::relay::{self, ByteCounters, Outcome, RelayOptions};
use crate::stealth::secrets::{Secrets, RELOAD_EVERY};
use crate::stealth::site::Site;
use crate::stealth::{Accepted, CoverSite, StealthListener};
use crate::tls::{Acceptor, CertStore, TlsError};
use crate::upstream::Upstream;
use ponte_wire::proxy_header::{self, HeaderReader, ProxyHeader, ReadError, Received, Step};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod connection;
use connection::{connection, reset};

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listen address could not be bound.
    #[error("listener `{listener}`: cannot listen on {addr}: {error}{hint}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        error: io::Error,
        /// Advice (privileged ports).
        hint: &'static str,
    },
    /// A TLS certificate could not be made or loaded.
    #[error("listener[{index}].tls (`{listener}`): {error}")]
    Tls {
        /// Position of the listener in the config.
        index: usize,
        /// Listener name.
        listener: String,
        /// Cause.
        error: TlsError,
    },
    /// The configuration is inconsistent (should have been caught by validation).
    #[error("configuration: {0}")]
    Config(String),
}

/// Shared, per-listener state.
struct ListenerShared {
    name: String,
    tls: Option<Acceptor>,
    accept_proxy: bool,
    upstream: Arc<Upstream>,
    metrics: ListenerMetrics,
    counters: ByteCounters,
    open: Arc<Counter>,
    max: Option<u32>,
    stealth: Option<Arc<StealthListener>>,
    /// Server names passed through untouched, and where to.
    passthrough: Option<(crate::config::SniPassthrough, Arc<Upstream>)>,
}

impl std::fmt::Debug for ListenerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerShared")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("accept_proxy", &self.accept_proxy)
            .finish_non_exhaustive()
    }
}

/// Everything a connection task needs.
#[derive(Debug)]
struct Shared {
    limits: Arc<Limits>,
    relay: RelayOptions,
    handshake: Duration,
    log_addresses: bool,
    next_id: AtomicU64,
    /// Set by the first worker whose drain period ran out: every worker
    /// waits for the same connections, and the end is said once.
    drain_over: AtomicBool,
}

/// A relay with its sockets bound, ready to [`Proxy::run`].
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    listeners: Vec<(Arc<ListenerShared>, Vec<TcpListener>)>,
    admin: Option<TcpListener>,
    certs: Vec<Arc<CertStore>>,
    secrets: Vec<Arc<Secrets>>,
    acme: Option<Arc<Acme>>,
    sites: Vec<BuiltinSite>,
    reload: Arc<tokio::sync::Notify>,
    reload_secrets: Arc<tokio::sync::Notify>,
}

/// Ask a running relay to reload its certificate and secrets files now
/// (SIGHUP).
#[derive(Debug, Clone)]
pub struct ReloadHandle(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>);

impl ReloadHandle {
    /// Reload every file-backed certificate and every stealth secrets file.
    pub fn reload(&self) {
        self.0.notify_one();
        self.1.notify_one();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

/// A listener's first socket, which the workers' own sockets join later.
/// A plain bind comes first so that an address another process holds is
/// refused ("address in use") instead of silently shared: `SO_REUSEPORT`
/// alone would join that process's group.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let probe = bind_std(addr, false)?;
    let actual = probe.local_addr()?;
    drop(probe);
    TcpListener::from_std(bind_std(actual, true)?)
}

/// A listening socket; with `shard`, one of a group on the same address
/// (`SO_REUSEPORT`: the kernel spreads new connections over the group).
fn bind_std(addr: SocketAddr, shard: bool) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]` and `0.0.0.0` are separate listeners in the config.
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if shard {
        s.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = shard;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// True when `e` means "this host has no IPv6" for an IPv6 wildcard bind.
fn no_ipv6(addr: &SocketAddr, e: &io::Error) -> bool {
    addr.is_ipv6()
        && matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
        )
}

/// A builtin cover site: its loopback socket, TLS and files.
#[derive(Debug)]
struct BuiltinSite {
    socket: std::net::TcpListener,
    acceptor: Acceptor,
    site: Arc<Site>,
}

/// What a start builds before binding the listeners (the builtin cover
/// sites' loopback sockets excepted: the stealth listeners need their
/// ports).
struct Prepared {
    metrics: Arc<Metrics>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    listeners: Vec<Arc<ListenerShared>>,
    certs: Vec<Arc<CertStore>>,
    secrets: Vec<Arc<Secrets>>,
    acme: Option<Arc<Acme>>,
    sites: Vec<BuiltinSite>,
}

/// Whether anything in `config` serves the `[acme]` certificate.
fn uses_acme(config: &Config) -> bool {
    config.acme.is_some()
        && config.listener.iter().any(|l| {
            l.tls == TlsMode::Acme
                || l.stealth
                    .as_ref()
                    .is_some_and(|st| st.cover == CoverSite::Builtin)
        })
}

/// Everything a start does short of binding: no upstream that is the relay
/// itself, upstreams set up, certificates made or loaded from their files,
/// each listener's upstream found.
fn prepare(config: &Config) -> Result<Prepared, ProxyError> {
    config
        .check_forwarding()
        .map_err(|e| ProxyError::Config(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let upstreams: BTreeMap<String, Arc<Upstream>> = config
        .upstream
        .iter()
        .map(|(name, u)| {
            (
                name.clone(),
                Arc::new(Upstream::new(name, u, config.timeouts.connect.0, &metrics)),
            )
        })
        .collect();
    let mut self_signed: Option<Arc<CertStore>> = None;
    let mut certs: Vec<Arc<CertStore>> = Vec::new();
    let mut secrets: Vec<Arc<Secrets>> = Vec::new();
    let mut listeners = Vec::new();
    let mut sites = Vec::new();
    let acme = match &config.acme {
        Some(a) if uses_acme(config) => Some(Arc::new(
            Acme::new(a, a.state_path(None))
                .map_err(|e| ProxyError::Config(format!("[acme]: {e}")))?,
        )),
        _ => None,
    };
    for (index, l) in config.listener.iter().enumerate() {
        let name = l.name.get_ref().clone();
        let tls_err = |error| ProxyError::Tls {
            index,
            listener: name.clone(),
            error,
        };
        let store = match &l.tls {
            TlsMode::None => None,
            TlsMode::SelfSigned => {
                if self_signed.is_none() {
                    let s = Arc::new(
                        CertStore::self_signed(&config.tls.self_signed_names).map_err(tls_err)?,
                    );
                    certs.push(Arc::clone(&s));
                    self_signed = Some(s);
                }
                self_signed.clone()
            }
            TlsMode::Files { cert, key } => {
                let s = Arc::new(CertStore::from_files(cert, key).map_err(tls_err)?);
                certs.push(Arc::clone(&s));
                Some(s)
            }
            TlsMode::Acme => match &acme {
                Some(a) => Some(Arc::clone(a.store())),
                None => {
                    return Err(ProxyError::Config(format!(
                        "listener `{name}`: tls = \"acme\" needs an [acme] section"
                    )))
                }
            },
        };
        let challenges = match (&l.tls, &acme) {
            (TlsMode::Acme, Some(a)) => Some(Arc::clone(a.challenges())),
            _ => None,
        };
        let tls = match store {
            Some(s) => Some(Acceptor::new(
                s.server_config().map_err(tls_err)?,
                challenges,
            )),
            None => None,
        };
        let upstream = upstreams
            .get(l.upstream.get_ref())
            .cloned()
            .ok_or_else(|| ProxyError::Config(format!("no upstream `{}`", l.upstream.get_ref())))?;
        let lm = metrics.listener(&name);
        let stealth = match &l.stealth {
            None => None,
            Some(st) => {
                let path = st.secrets_path(None);
                let s = match secrets.iter().find(|s| s.path() == path) {
                    Some(s) => Arc::clone(s),
                    None => {
                        let s =
                            Arc::new(Secrets::open(&path).map_err(|e| {
                                ProxyError::Config(format!("listener `{name}`: {e}"))
                            })?);
                        secrets.push(Arc::clone(&s));
                        s
                    }
                };
                let cover = match &st.cover {
                    CoverSite::Remote(h) => h.clone(),
                    CoverSite::Builtin => {
                        let site = builtin_site(st, acme.as_deref()).map_err(tls_err)?;
                        let port = site
                            .socket
                            .local_addr()
                            .map_err(|e| {
                                ProxyError::Config(format!("listener `{name}`: builtin cover: {e}"))
                            })?
                            .port();
                        sites.push(site);
                        crate::config::HostPort {
                            host: "127.0.0.1".into(),
                            port,
                        }
                    }
                };
                Some(Arc::new(StealthListener::new(
                    &name,
                    st,
                    cover,
                    s,
                    metrics.stealth.clone(),
                    config.timeouts.connect.0,
                )))
            }
        };
        let passthrough = match &l.sni_passthrough {
            None => None,
            Some(p) => {
                let up = upstreams
                    .get(p.upstream.get_ref())
                    .cloned()
                    .ok_or_else(|| {
                        ProxyError::Config(format!("no upstream `{}`", p.upstream.get_ref()))
                    })?;
                Some((p.clone(), up))
            }
        };
        let shared = Arc::new(ListenerShared {
            passthrough,
            counters: ByteCounters {
                up: lm.bytes_up.clone(),
                down: lm.bytes_down.clone(),
            },
            metrics: lm,
            name: name.clone(),
            tls,
            accept_proxy: l.accept_proxy,
            upstream,
            open: Arc::new(Counter::default()),
            max: l.max_connections,
            stealth,
        });
        listeners.push(shared);
    }
    Ok(Prepared {
        metrics,
        upstreams,
        listeners,
        certs,
        secrets,
        acme,
        sites,
    })
}

/// A builtin cover site: a loopback socket, and TLS with the ACME
/// certificate (answering its validations) or a self-signed one for the
/// domain.
fn builtin_site(
    st: &crate::stealth::StealthConfig,
    acme: Option<&Acme>,
) -> Result<BuiltinSite, TlsError> {
    let socket = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| TlsError::File {
        path: "builtin cover".into(),
        message: format!("cannot bind a loopback port: {e}"),
    })?;
    socket.set_nonblocking(true).map_err(|e| TlsError::File {
        path: "builtin cover".into(),
        message: e.to_string(),
    })?;
    let (store, challenges) = match acme {
        Some(a) => (Arc::clone(a.store()), Some(Arc::clone(a.challenges()))),
        None => (
            Arc::new(CertStore::self_signed(std::slice::from_ref(&st.domain))?),
            None,
        ),
    };
    let mut cfg = (*store.server_config()?).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(BuiltinSite {
        socket,
        acceptor: Acceptor::new(Arc::new(cfg), challenges),
        site: Arc::new(Site::new(&st.domain, st.site.clone())),
    })
}

impl Proxy {
    /// Check that `config` can start: everything [`Proxy::bind`] does short
    /// of binding (certificates loaded or made, upstreams set up).
    pub fn check(config: &Config) -> Result<(), ProxyError> {
        prepare(config).map(drop)
    }

    /// Bind every listener and the admin endpoint, make certificates. Logs
    /// the config's [warnings](Config::warnings) first.
    pub async fn bind(config: Config) -> Result<Proxy, ProxyError> {
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let Prepared {
            metrics,
            upstreams,
            listeners: prepared,
            certs,
            secrets,
            acme,
            sites,
        } = prepare(&config)?;
        let mut listeners = Vec::new();
        for (shared, l) in prepared.into_iter().zip(&config.listener) {
            let name = shared.name.clone();
            let mut sockets = Vec::new();
            for addr in l.listen.get_ref() {
                match bind_listener(addr.0) {
                    Ok(s) => sockets.push(s),
                    Err(e) if no_ipv6(&addr.0, &e) => {
                        tracing::warn!(listener = %name, %addr, "no IPv6 on this host; skipping");
                    }
                    Err(error) => {
                        let hint = if addr.0.port() < 1024
                            && error.kind() == io::ErrorKind::PermissionDenied
                        {
                            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; see docs/OPERATIONS.md)"
                        } else {
                            ""
                        };
                        return Err(ProxyError::Bind {
                            listener: name,
                            addr: addr.0,
                            error,
                            hint,
                        });
                    }
                }
            }
            if sockets.is_empty() {
                return Err(ProxyError::Config(format!(
                    "listener `{name}`: no address could be bound"
                )));
            }
            listeners.push((shared, sockets));
        }
        let admin = match &config.admin {
            Some(a) => {
                let addr = a.listen.get_ref().0;
                Some(bind(addr).map_err(|error| ProxyError::Bind {
                    listener: "admin".into(),
                    addr,
                    error,
                    hint: "",
                })?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            limits: Limits::new(config.limits.clone()),
            relay: RelayOptions {
                idle: config.timeouts.idle.0,
                half_close: config.timeouts.half_close.0,
                buffer_size: config.tuning.buffer_size,
                max_buffer_size: config.tuning.max_buffer_size,
                splice: config.tuning.splice,
            },
            handshake: config.timeouts.handshake.0,
            log_addresses: config.log.client_addresses,
            next_id: AtomicU64::new(1),
            drain_over: AtomicBool::new(false),
        });
        Ok(Proxy {
            config,
            metrics,
            shared,
            upstreams,
            listeners,
            admin,
            certs,
            secrets,
            acme,
            sites,
            reload: Arc::new(tokio::sync::Notify::new()),
            reload_secrets: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Bound addresses per listener (after port 0 was resolved).
    pub fn listener_addrs(&self) -> Vec<(String, Vec<SocketAddr>)> {
        self.listeners
            .iter()
            .map(|(l, socks)| {
                (
                    l.name.clone(),
                    socks.iter().filter_map(|s| s.local_addr().ok()).collect(),
                )
            })
            .collect()
    }

    /// Bound address of one listener's first socket.
    pub fn addr_of(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(l, _)| l.name == listener)
            .and_then(|(_, s)| s.first())
            .and_then(|s| s.local_addr().ok())
    }

    /// Bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// A handle that reloads certificate files.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(Arc::clone(&self.reload), Arc::clone(&self.reload_secrets))
    }

    /// Serve until `shutdown` completes; then stop accepting, let open
    /// connections drain for the configured grace period, and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let conns = TaskTracker::new();
        let background = TaskTracker::new();
        for u in self.upstreams.values() {
            background.spawn(Arc::clone(u).start(stop.child_token()));
        }
        if let Some(admin) = self.admin {
            let state = admin::AdminState {
                metrics: Arc::clone(&self.metrics),
                upstreams: self.upstreams.values().cloned().collect(),
                listeners: self
                    .listeners
                    .iter()
                    .map(|(l, _)| admin::ListenerView {
                        name: l.name.clone(),
                        upstream: Arc::clone(&l.upstream),
                        metrics: l.metrics.clone(),
                        stealth: l.stealth.clone(),
                    })
                    .collect(),
            };
            background.spawn(admin::serve(admin, state, stop.child_token()));
        }
        if let Some(acme) = &self.acme {
            background.spawn(Arc::clone(acme).run(stop.child_token()));
        }
        for site in self.sites {
            match TcpListener::from_std(site.socket) {
                Ok(l) => {
                    background.spawn(crate::stealth::site::serve(
                        l,
                        site.acceptor,
                        site.site,
                        stop.child_token(),
                    ));
                }
                Err(e) => tracing::error!("builtin cover site: {e}"),
            }
        }
        if !self.secrets.is_empty() {
            let secrets = self.secrets.clone();
            let notify = Arc::clone(&self.reload_secrets);
            let stop = stop.child_token();
            background.spawn(async move {
                let mut tick = tokio::time::interval(RELOAD_EVERY);
                loop {
                    let force = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => false,
                        _ = notify.notified() => true,
                    };
                    for s in &secrets {
                        match s.reload(force) {
                            Ok(true) => tracing::info!(
                                links = s.current().len(),
                                "stealth secrets reloaded"
                            ),
                            Ok(false) => {}
                            Err(e) => tracing::error!(
                                "stealth secrets reload failed, keeping the old ones: {e}"
                            ),
                        }
                    }
                }
            });
        }
        if !self.certs.iter().any(|c| c.is_file_backed()) {
            // Nothing to reload.
        } else {
            let certs = self.certs.clone();
            let metrics = Arc::clone(&self.metrics);
            let every = self
                .config
                .tls
                .reload_interval
                .0
                .max(Duration::from_millis(100));
            let notify = Arc::clone(&self.reload);
            let stop = stop.child_token();
            background.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    let force = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => false,
                        _ = notify.notified() => true,
                    };
                    for c in certs.iter().filter(|c| c.is_file_backed()) {
                        match c.reload(force) {
                            Ok(true) => {
                                tracing::info!("TLS certificate reloaded");
                                metrics
                                    .cert_reloads
                                    .get_or_create(&ResultLabel { result: "ok" })
                                    .inc();
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::error!(
                                    "TLS certificate reload failed, keeping the old one: {e}"
                                );
                                metrics
                                    .cert_reloads
                                    .get_or_create(&ResultLabel { result: "error" })
                                    .inc();
                            }
                        }
                    }
                }
            });
        }
        // Worker threads, each with its own single-threaded event loop (as
        // HAProxy's threads have their own pollers): a connection lives and
        // dies on the thread that accepted it, so the data path never
        // crosses threads or wakes another one. On Linux every worker gets
        // its own listening socket per address (`SO_REUSEPORT`, as HAProxy
        // shards its listeners): the kernel hands each new connection to one
        // socket, so exactly one worker wakes. Elsewhere, or if that bind
        // fails, workers share clones of one socket (and all of them wake
        // for each connection).
        let workers = match self.config.tuning.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        let mut sockets = Vec::new();
        for (l, socks) in self.listeners {
            for s in socks {
                match s.into_std() {
                    Ok(s) => sockets.push((Arc::clone(&l), s)),
                    Err(e) => {
                        tracing::error!(listener = %l.name, "cannot hand the socket to a worker: {e}")
                    }
                }
            }
        }
        let drain = self.config.timeouts.drain.0;
        let mut finished = Vec::new();
        for i in 0..workers {
            let mut mine = Vec::new();
            for (l, s) in &sockets {
                // Worker 0 takes the socket bound at start; the others bind
                // their own to the same address (its port is known by now).
                let own = match (i, s.local_addr()) {
                    (0, _) => s.try_clone(),
                    (_, Ok(addr)) if cfg!(target_os = "linux") => {
                        bind_std(addr, true).or_else(|e| {
                            tracing::warn!(listener = %l.name, "worker {i} shares a socket: {e}");
                            s.try_clone()
                        })
                    }
                    _ => s.try_clone(),
                };
                match own {
                    Ok(c) => mine.push((Arc::clone(l), c)),
                    Err(e) => {
                        tracing::error!(listener = %l.name, "cannot give worker {i} a socket: {e}")
                    }
                }
            }
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (shared, metrics, conns, stop) = (
                Arc::clone(&self.shared),
                Arc::clone(&self.metrics),
                conns.clone(),
                stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("ponte-worker-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            rt.block_on(worker(mine, shared, metrics, conns, stop, drain));
                            // Dropping the runtime ends what outlived the drain period.
                            drop(rt);
                        }
                        Err(e) => tracing::error!("worker {i}: cannot start its event loop: {e}"),
                    }
                    let _ = tx.send(());
                });
            match spawned {
                Ok(_) => finished.push(rx),
                Err(e) => tracing::error!("cannot start worker thread {i}: {e}"),
            }
        }
        // The workers now hold the only copies of the listening sockets.
        drop(sockets);
        shutdown.await;
        let open = self.shared.limits.open();
        tracing::info!(open, "shutting down: no new connections; draining");
        stop.cancel();
        for rx in finished {
            let _ = rx.await;
        }
        background.close();
        background.wait().await;
    }
}

/// One worker: accept on its clones of the listening sockets until `stop`,
/// then let its connections drain for at most `drain`.
async fn worker(
    sockets: Vec<(Arc<ListenerShared>, std::net::TcpListener)>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    conns: TaskTracker,
    stop: CancellationToken,
    drain: Duration,
) {
    let accepting = TaskTracker::new();
    for (l, s) in sockets {
        match TcpListener::from_std(s) {
            Ok(s) => {
                accepting.spawn(accept_loop(
                    s,
                    l,
                    Arc::clone(&shared),
                    Arc::clone(&metrics),
                    conns.clone(),
                    stop.child_token(),
                ));
            }
            Err(e) => tracing::error!(listener = %l.name, "cannot register the socket: {e}"),
        }
    }
    stop.cancelled().await;
    accepting.close();
    accepting.wait().await;
    conns.close();
    if tokio::time::timeout(drain, conns.wait()).await.is_err()
        && !shared.drain_over.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            open = shared.limits.open(),
            "drain period over; closing the remaining connections"
        );
    }
}

/// Accept until cancelled. Errors from accept(2) (out of descriptors, …)
/// back off briefly instead of spinning.
async fn accept_loop(
    listener: TcpListener,
    l: Arc<ListenerShared>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    conns: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                metrics.accept_errors.inc();
                tracing::warn!(listener = %l.name, "accept failed: {e}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        l.metrics.total.inc();
        let mut permit = match shared.limits.admit(&l.open, l.max) {
            Ok(p) => p,
            Err(r) => {
                l.metrics.refuse(r);
                reset(stream);
                continue;
            }
        };
        if !l.accept_proxy {
            if let Err(r) = shared.limits.admit_source(&mut permit, peer.ip()) {
                l.metrics.refuse(r);
                reset(stream);
                continue;
            }
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let span = if shared.log_addresses {
            tracing::debug_span!("conn", id, listener = %l.name, client = %peer)
        } else {
            tracing::debug_span!("conn", id, listener = %l.name)
        };
        let task = connection(stream, peer, Arc::clone(&l), Arc::clone(&shared), permit);
        // A span costs memory in every connection's task: only when logged.
        if span.is_disabled() {
            conns.spawn(task);
        } else {
            conns.spawn(task.instrument(span));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What an established connection costs in the task is this future.
    #[tokio::test]
    async fn connection_future_is_small() {
        let cfg = Config::from_toml(
            "[upstream.u]\nservers = [\"127.0.0.1:9\"]\n[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n",
            None,
        )
        .unwrap();
        let proxy = Proxy::bind(cfg).await.unwrap();
        let (l, socks) = &proxy.listeners[0];
        let a = TcpStream::connect(socks[0].local_addr().unwrap())
            .await
            .unwrap();
        let permit = proxy.shared.limits.admit(&l.open, None).unwrap();
        let peer = a.local_addr().unwrap();
        let f = connection(a, peer, Arc::clone(l), Arc::clone(&proxy.shared), permit);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 640, "connection future is {size} bytes");
    }
}

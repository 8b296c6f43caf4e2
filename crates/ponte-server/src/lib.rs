//! `ponte server`: the messaging service. It only ever sees ciphertext.
//!
//! - [`Server`]: bind, then [`Server::run`] until a shutdown future
//!   completes: the accept loop (a semaphore caps connections), the expiry
//!   sweep and the admin endpoint.
//! - `connection`: one task per connection: optional PROXY header, Noise
//!   handshake (`ponte-transport`), the socket and its writer task.
//! - `session`: the request loop of a connection past its handshake:
//!   dispatch, mailbox pushes within the delivery window, wakes.
//! - `requests`: one module per request (register, login, send, ack, ...),
//!   each an async fn from the request to an answer or a refusal.
//! - `frames`: the server frames built from the store's types.
//! - [`store`]: the storage seam ([`store::Store`]) and its SQLite
//!   implementation (WAL, flushed before every answer) behind a group-commit
//!   writer thread, its sync and checkpoint threads, and four reader threads;
//!   or, with `store = "postgres://…"`, the PostgreSQL one
//!   ([`store::PgStore`]) shared by every node of a service.
//! - `registry`: devices online now; the store's sink, which hands
//!   committed items to them in commit order.
//! - `blobs`: uploaded files (ciphertext) under `DATA_DIR/blobs/`, their
//!   appends, checks and the sweep that deletes them.
//! - [`backup`]: `ponte server backup`, a consistent copy while running.
//! - [`config`]: every limit and timeout, typed.
//! - [`keyfile`]: the server's Noise static key and the record of its
//!   printed address in the data directory.
//! - `admin`, `metrics`: `/metrics` and `/healthz` on a loopback port.
//!
//! The wire protocol is described in `docs/PROTOCOL.md`.

#![forbid(unsafe_code)]

mod admin;
pub mod backup;
pub mod blobs;
pub mod bus;
pub mod config;
mod connection;
mod frames;
pub mod keyfile;
mod metrics;
mod outbox;
mod prelogin;
mod ratelimit;
mod registry;
mod requests;
mod session;
pub mod store;

pub use config::{RateLimit, ServerConfig};

use ponte_transport::Keypair;
use ponte_wire::address::ServerAddress;
use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use store::{SqliteStore, Store, UnixMillis};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Errors starting or running the server.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The key file could not be read or created.
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Binding a listener failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        error: std::io::Error,
    },
    /// Binding the admin endpoint's listener failed.
    #[error("cannot listen on {addr} for the admin endpoint")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        error: std::io::Error,
    },
    /// The database's path names something that is not a file (a
    /// directory, say).
    #[error("{}: not a file, so not a server database: move it away", .0.display())]
    DatabaseNotAFile(PathBuf),
    /// The data directory holds no database (the server never started
    /// there, or the path is mistyped).
    #[error("no server database in {} ({} does not exist)", .0.display(), .0.join(store::DB_FILE).display())]
    NoDatabase(PathBuf),
    /// This node's key is not the one the service's PostgreSQL database
    /// recorded (another node's, or the first node's): it would serve
    /// under another address.
    #[error(
        "{}: this key is not the service's (the database records another node's key); \
         copy server.key from a node of this service into this data directory, \
         or give this node a database of its own",
        .0.display()
    )]
    AddressKeyMismatch(PathBuf),
    /// A bus was given without PostgreSQL (one node on SQLite has no one
    /// to talk to).
    #[error("--bus (config bus) needs --store postgres://… (a service of several nodes)")]
    BusWithoutPostgres,
    /// NATS could not be reached, or its bucket not opened.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// Copying a SQLite service into PostgreSQL failed (nothing was
    /// written there).
    #[error(transparent)]
    Migrate(#[from] store::pg::migrate::MigrateError),
    /// Another server process runs on this data directory.
    #[error(
        "another ponte server is already running with the data directory {} \
         (it holds {}); stop it first, or give this one its own --data",
        .0.display(),
        .0.join(LOCK_FILE).display()
    )]
    DataDirInUse(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", .path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        error: std::io::Error,
    },
}

/// The lock file in a data directory, held while a server runs there.
pub const LOCK_FILE: &str = "server.lock";

/// Takes the data directory's lock (an advisory `flock` on
/// `DIR/server.lock`, released by the kernel when the process ends, even
/// on SIGKILL). Two servers on one directory would each keep their own
/// seq reservations, online devices and pending counts: the second one is
/// refused instead. `ponte server invite` and `address` do not lock: they
/// work while the server runs.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServerError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |error| ServerError::Lock {
        path: path.clone(),
        error,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::DataDirInUse(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
    }
}

/// Refuses ([`ServerError::DataDirInUse`]) a data directory whose lock
/// another process holds, creating nothing: only an existing lock file is
/// opened. [`lock_data_dir`] takes the lock for good afterwards.
fn check_data_dir_free(dir: &Path) -> Result<(), ServerError> {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return Ok(());
    };
    match file.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::DataDirInUse(dir.to_owned())),
        // Free (dropping the file releases it), or not lockable: the real
        // lock below says why.
        _ => Ok(()),
    }
}

/// What a first start (one that created the key) found in the data
/// directory, so that a failed one can remove what it created.
#[derive(Debug)]
struct FirstStart {
    dir: PathBuf,
    /// The outermost directory the start created (the data directory or
    /// one of its parents), if it created any.
    created: Option<PathBuf>,
    /// The files a start may create that were there before it.
    existed: Vec<&'static str>,
}

impl FirstStart {
    /// Files a start creates besides the key.
    const FILES: [&'static str; 4] = [LOCK_FILE, store::DB_FILE, "ponte.db-wal", "ponte.db-shm"];

    /// `missing`: the outermost directory that did not exist before the
    /// start ([`outermost_missing`]).
    fn record(dir: &Path, missing: Option<PathBuf>) -> Self {
        Self {
            dir: dir.to_owned(),
            created: missing,
            existed: Self::FILES
                .into_iter()
                .filter(|name| std::fs::symlink_metadata(dir.join(name)).is_ok())
                .collect(),
        }
    }

    /// Removes the key, and the directory or the files the start created
    /// (best effort: the start's own error is what gets reported).
    fn undo(self) {
        if let Some(created) = self.created {
            let _ = std::fs::remove_dir_all(created);
            return;
        }
        let _ = std::fs::remove_file(self.dir.join(keyfile::KEY_FILE));
        for name in Self::FILES {
            if !self.existed.contains(&name) {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }
}

/// The outermost of `dir` and its parents that does not exist (what
/// creating `dir` with its parents creates), or `None` when `dir` exists.
fn outermost_missing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| std::fs::symlink_metadata(a).is_err())
        .last()
        .map(Path::to_owned)
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: ServerConfig,
    pub keypair: Keypair,
    pub store: Box<dyn Store>,
    pub blobs: blobs::Blobs,
    /// Why files may be lost between nodes (this node's blob directory is
    /// not the one the service's first node recorded), for `/healthz`.
    pub blob_dir_warning: Option<String>,
    pub metrics: metrics::Metrics,
    pub registry: Arc<registry::Registry>,
    /// The bus between the nodes of a service on PostgreSQL.
    pub bus: Option<Arc<bus::Bus>>,
    pub register_by_source: ratelimit::Limiter,
    pub register_by_peer: ratelimit::Limiter,
    /// Connections not logged in yet, per peer address.
    pub pre_login: Arc<prelogin::PreLogin>,
    pub next_conn_id: AtomicU64,
    pub stop: CancellationToken,
    /// The data directory's lock, held as long as anything uses the store.
    _lock: std::fs::File,
}

/// An error with its causes, for log lines.
pub(crate) use ponte_wire::diag::Report as Chain;

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    key_created: bool,
}

impl Server {
    /// Binds the listener (and the admin listener when `admin` is given),
    /// then loads or creates the key and opens the database: a start that
    /// cannot listen creates nothing in the data directory, and a first
    /// start that fails after creating the key removes what it created
    /// (so the next one creates the key again and says so). Logs a warning
    /// first when `admin` is not a loopback address.
    pub async fn bind(cfg: ServerConfig, admin: Option<SocketAddr>) -> Result<Self, ServerError> {
        Self::bind_wrapping(cfg, admin, std::convert::identity).await
    }

    /// [`Server::bind`], with the opened store handed through `wrap` (the
    /// identity but in tests, which wrap it to hold a call back).
    async fn bind_wrapping(
        cfg: ServerConfig,
        admin: Option<SocketAddr>,
        wrap: impl FnOnce(Box<dyn Store>) -> Box<dyn Store>,
    ) -> Result<Self, ServerError> {
        if let Some(addr) = admin.filter(|a| !is_loopback(a.ip())) {
            // Allowed (a private network may be trusted), but metrics show
            // traffic volumes and connection counts to whoever reaches them.
            tracing::warn!(
                "the admin endpoint {addr} is not on loopback: whoever can reach it reads \
                 /metrics (connection counts, traffic volumes); firewall it, or use 127.0.0.1"
            );
        }
        // A server already running here is said as such, not as its port
        // being taken.
        check_data_dir_free(&cfg.data_dir)?;
        // The listeners first: a start that fails on a taken address (a
        // second start, a mistyped --data on a restart) creates nothing in
        // the data directory, least of all a new key.
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|error| ServerError::Bind {
                addr: cfg.listen,
                error,
            })?;
        let admin = match admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|error| ServerError::AdminBind { addr, error })?,
            ),
            None => None,
        };
        if cfg.bus.is_some() && cfg.store.is_none() {
            return Err(ServerError::BusWithoutPostgres);
        }
        // The registry takes every committed item, in commit order.
        let registry = Arc::new(registry::Registry::default());
        let bus = match &cfg.bus {
            Some(address) => {
                let bus = bus::Bus::connect(address, Arc::clone(&registry)).await?;
                registry.attach_bus(&bus);
                Some(bus)
            }
            None => None,
        };
        let missing = outermost_missing(&cfg.data_dir);
        let (keypair, key_created) = keyfile::load_or_create(&cfg.data_dir)?;
        let first_start = key_created.then(|| FirstStart::record(&cfg.data_dir, missing));
        let opened = lock_data_dir(&cfg.data_dir).and_then(|lock| {
            let sink: Arc<dyn store::Sink> = match &cfg.store {
                None => Arc::clone(&registry) as Arc<dyn store::Sink>,
                // Several nodes: every item is a wake-up, here or elsewhere.
                Some(_) => Arc::new(bus::ServiceSink {
                    registry: Arc::clone(&registry),
                    bus: bus.clone(),
                }),
            };
            let store = open_store(&cfg, &keypair, sink)?;
            Ok((lock, wrap(store)))
        });
        let (lock, store) = match opened {
            Ok(v) => v,
            Err(e) => {
                // A first start that failed leaves no key behind: the next
                // one creates it again, and says so.
                if let Some(f) = first_start {
                    f.undo();
                }
                return Err(e);
            }
        };
        let blobs = match &cfg.blob_dir {
            Some(dir) => blobs::Blobs::in_dir(dir.clone()),
            None => blobs::Blobs::new(&cfg.data_dir),
        };
        let blob_dir_warning = match &cfg.store {
            Some(address) => blob_dir_shared(address, &blobs, cfg.blob_dir.is_some())?,
            None => None,
        };
        let mut metrics = metrics::Metrics::new();
        metrics.register_store(store.stats());
        let shared = Arc::new(Shared {
            register_by_source: ratelimit::Limiter::new(cfg.register_limit),
            register_by_peer: ratelimit::Limiter::new(cfg.register_limit_per_peer),
            pre_login: prelogin::PreLogin::new(
                cfg.max_pre_login_per_address,
                cfg.pre_login_exempts_loopback,
            ),
            cfg,
            keypair,
            store,
            blobs,
            blob_dir_warning,
            metrics,
            registry,
            bus,
            next_conn_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
            _lock: lock,
        });
        Ok(Self {
            shared,
            listener,
            admin,
            key_created,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The server's Noise static public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.keypair.public()
    }

    /// Whether this start created the key (first start).
    pub fn key_created(&self) -> bool {
        self.key_created
    }

    /// The address users are given, for `host` and the bound port.
    pub fn address(&self, host: &str) -> ServerAddress {
        ServerAddress {
            host: host.to_owned(),
            port: self.local_addr().map(|a| a.port()).unwrap_or(0),
            key: self.public_key(),
        }
    }

    /// Serves until `shutdown` completes, then closes connections (with a
    /// `Close { SHUTDOWN }`), waits up to the grace period, and closes the
    /// database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            shared,
            listener,
            admin,
            ..
        } = self;
        let stop = shared.stop.clone();
        let mut background = JoinSet::new();
        if let Some(admin) = admin {
            background.spawn(admin::serve(admin, Arc::clone(&shared), stop.clone()));
        }
        background.spawn(expiry_loop(Arc::clone(&shared)));
        if shared.cfg.store.is_some() {
            background.spawn(catch_up_loop(Arc::clone(&shared)));
        }
        if let Some(bus) = &shared.bus {
            background.spawn(Arc::clone(bus).run(stop.clone()));
        }

        let slots = Arc::new(Semaphore::new(shared.cfg.max_connections));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        shared.metrics.connections_accepted.inc();
                        match Arc::clone(&slots).try_acquire_owned() {
                            Ok(permit) => match shared.pre_login.enter(peer.ip()) {
                                Some(slot) => {
                                    conns.spawn(connection::handle(
                                        Arc::clone(&shared),
                                        sock,
                                        peer,
                                        permit,
                                        slot,
                                    ));
                                }
                                None => {
                                    shared.metrics.closed(metrics::CloseCause::PreLoginPerAddress);
                                    drop(sock);
                                }
                            },
                            Err(_) => {
                                shared.metrics.closed(metrics::CloseCause::Overloaded);
                                drop(sock);
                            }
                        }
                    }
                    Err(e) => {
                        // Usually EMFILE/ENFILE: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        stop.cancel();
        let grace = shared.cfg.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            conns.shutdown().await;
        }
        background.shutdown().await;
        let shared2 = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || shared2.store.close()).await;
        Ok(())
    }
}

/// Opens the configured store: SQLite in the data directory, or the
/// PostgreSQL database every node of the service shares (after checking
/// that this node's key is the service's).
fn open_store(
    cfg: &ServerConfig,
    keypair: &Keypair,
    sink: Arc<dyn store::Sink>,
) -> Result<Box<dyn Store>, ServerError> {
    match &cfg.store {
        None => {
            let db = cfg.data_dir.join(store::DB_FILE);
            if std::fs::symlink_metadata(&db).is_ok() && !db.is_file() {
                return Err(ServerError::DatabaseNotAFile(db));
            }
            let opts = store::StoreOptions::with_commit_interval(cfg.commit_interval);
            Ok(Box::new(SqliteStore::open_with(&cfg.data_dir, opts, sink)?))
        }
        Some(address) => {
            let recorded = store::pg::claim_address_key(address, keypair.public())
                .map_err(store::StoreError::Postgres)?;
            if recorded != keypair.public() {
                return Err(ServerError::AddressKeyMismatch(
                    cfg.data_dir.join(keyfile::KEY_FILE),
                ));
            }
            let opts = store::PgOptions::default();
            let pg = store::PgStore::open_with(address, opts, sink)?;
            tracing::info!("store: PostgreSQL (this node is one of the service's nodes)");
            Ok(Box::new(pg))
        }
    }
}

/// On PostgreSQL: whether this node's blob directory is the one the
/// service's nodes share (its marker's id is the one the database recorded
/// from the first node that started). When it is not, a file uploaded
/// through one node cannot be downloaded through another: said with a
/// warning now, and returned for `/healthz`. A directory that cannot be
/// used for the check is warned about and not held against the start
/// (uploads would fail on it and say so).
fn blob_dir_shared(
    address: &str,
    blobs: &blobs::Blobs,
    configured: bool,
) -> Result<Option<String>, ServerError> {
    let dir = blobs.dir().display().to_string();
    let marker = match blobs.marker() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(
                "cannot check whether the blob directory {dir} is shared with the other nodes: {e}"
            );
            return Ok(None);
        }
    };
    let recorded =
        store::pg::claim_blob_dir(address, marker).map_err(store::StoreError::Postgres)?;
    if recorded == marker {
        return Ok(None);
    }
    let why = if configured {
        "blob_dir is not the directory the service's other nodes use"
    } else {
        "blob_dir is not set, so files go to this node's own data directory"
    };
    let warning = format!(
        "the blob directory {dir} is not shared with the service's other nodes ({why}; its \
         {} differs from the one the database recorded): a file uploaded through one node \
         cannot be downloaded through another. Set blob_dir (--blob-dir) on every node to \
         one shared directory (a network file system)",
        blobs::MARKER_FILE
    );
    tracing::warn!("{warning}");
    Ok(Some(warning))
}

/// What `ponte server init --store …` did.
#[derive(Debug, Clone)]
pub struct Init {
    /// The service's address key.
    pub key: [u8; 32],
    /// Whether the key file was created now (else it was there).
    pub key_created: bool,
}

/// `ponte server init --store ADDRESS --data DIR`: creates (or migrates)
/// the schema in the PostgreSQL database and the service's key in `DIR`
/// (if not there), and records the key's public half in the database.
/// Every other node of the service gets a copy of `DIR/server.key`; a node
/// with another key is refused at start.
pub fn init_postgres(data_dir: &Path, address: &str) -> Result<Init, ServerError> {
    let (keypair, key_created) = keyfile::load_or_create(data_dir)?;
    let recorded = store::pg::claim_address_key(address, keypair.public())
        .map_err(store::StoreError::Postgres)?;
    if recorded != keypair.public() {
        return Err(ServerError::AddressKeyMismatch(
            data_dir.join(keyfile::KEY_FILE),
        ));
    }
    Ok(Init {
        key: keypair.public(),
        key_created,
    })
}

/// What the SQLite database is renamed to once migrated, so that a start
/// without `--store` cannot serve the old copy.
pub const MIGRATED_DB_FILE: &str = "ponte.db.migrated";

/// `ponte server migrate --data DIR --to ADDRESS`: moves the SQLite service
/// in `DIR` (no server may run there) into the empty PostgreSQL database
/// at `address`, records the service's key there, and renames `ponte.db`
/// to [`MIGRATED_DB_FILE`]. The key and the blob files stay in `DIR`; the
/// server address does not change.
pub fn migrate_to_postgres(
    data_dir: &Path,
    address: &str,
) -> Result<store::pg::migrate::MigrateSummary, ServerError> {
    let db = data_dir.join(store::DB_FILE);
    if !keyfile::dir_exists(data_dir)? || std::fs::symlink_metadata(&db).is_err() {
        return Err(ServerError::NoDatabase(data_dir.to_owned()));
    }
    let _lock = lock_data_dir(data_dir)?;
    let keypair = keyfile::load(data_dir)?;
    let recorded = store::pg::claim_address_key(address, keypair.public())
        .map_err(store::StoreError::Postgres)?;
    if recorded != keypair.public() {
        return Err(ServerError::AddressKeyMismatch(
            data_dir.join(keyfile::KEY_FILE),
        ));
    }
    let summary = store::pg::migrate::migrate_sqlite(data_dir, address)?;
    for suffix in ["", "-wal", "-shm"] {
        let from = data_dir.join(format!("{}{suffix}", store::DB_FILE));
        if std::fs::symlink_metadata(&from).is_ok() {
            let to = data_dir.join(format!("{MIGRATED_DB_FILE}{suffix}"));
            std::fs::rename(&from, &to).map_err(|error| ServerError::Lock { path: from, error })?;
        }
    }
    Ok(summary)
}

/// Creates a one-use invite token in the service's PostgreSQL database
/// (any node accepts it, once).
pub fn create_invite_postgres(address: &str) -> Result<String, ServerError> {
    store::pg::create_invite(address, UnixMillis::now())
        .map_err(|e| ServerError::Store(store::StoreError::Postgres(e)))
}

/// With PostgreSQL: every connected device reads its mailbox every
/// `catch_up_interval`, so an item another node stored reaches it even
/// when its wake-up was lost (or there is no bus).
async fn catch_up_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.catch_up_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => shared.registry.wake_all(),
        }
    }
}

/// The periodic expiry sweep.
async fn expiry_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Run until a sweep finds less than a full batch.
        for _ in 0..100 {
            // The senders of new notices are woken by the store's sink
            // (the registry) in commit order, like deliveries.
            match shared
                .store
                .expire(
                    UnixMillis::now(),
                    shared.cfg.retention,
                    shared.cfg.notice_retention,
                )
                .await
            {
                Ok(out) => {
                    shared.metrics.messages_expired.inc_by(out.expired_messages);
                    if !out.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("expiry sweep failed: {}", Chain(&e));
                    break;
                }
            }
        }
        blobs::sweep(&shared).await;
    }
}

/// Whether `ip` is a loopback address (an IPv4-mapped IPv6 loopback such as
/// `::ffff:127.0.0.1` counts).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// This machine's host name (`localhost` if it has none).
pub fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host name printed in the server address: `host` when given, else the
/// listen IP, or this machine's host name when listening on all addresses
/// (`0.0.0.0`, `::`), which no client can connect to.
pub fn display_host(host: Option<&str>, listen: SocketAddr) -> String {
    match host {
        Some(h) => h.to_owned(),
        None if listen.ip().is_unspecified() => machine_host_name(),
        None => listen.ip().to_string(),
    }
}

/// The server address for a data directory, to print again: the key from
/// `server.key`, and the host and port the server printed at its last start
/// (`server.address`) unless `host` or `port` override them. With no record
/// (the server never started there) the defaults are this machine's host
/// name and port 5222.
pub fn server_address(
    data_dir: &Path,
    host: Option<&str>,
    port: Option<u16>,
) -> Result<ServerAddress, ServerError> {
    let kp = keyfile::load(data_dir)?;
    let recorded = match (host, port) {
        (Some(_), Some(_)) => None,
        _ => keyfile::read_address(data_dir)?,
    };
    let host = match (host, &recorded) {
        (Some(h), _) => h.to_owned(),
        (None, Some(r)) => r.host.clone(),
        (None, None) => machine_host_name(),
    };
    let port = port
        .or(recorded.map(|r| r.port))
        .unwrap_or(ponte_wire::address::DEFAULT_PORT);
    Ok(ServerAddress {
        host,
        port,
        key: kp.public(),
    })
}

/// Creates a one-use invite token in the data directory's database. Refuses
/// ([`ServerError::NoDatabase`]) a directory without one: a token stored
/// anywhere else would be accepted by no server.
pub fn create_invite(data_dir: &Path) -> Result<String, ServerError> {
    let db = data_dir.join(store::DB_FILE);
    if !keyfile::dir_exists(data_dir)? || std::fs::symlink_metadata(&db).is_err() {
        return Err(ServerError::NoDatabase(data_dir.to_owned()));
    }
    if !db.is_file() {
        return Err(ServerError::DatabaseNotAFile(db));
    }
    Ok(store::create_invite(data_dir, UnixMillis::now())?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A failed first start in a directory it made, with parents it made,
    /// removes them all and nothing above; in a directory that was there,
    /// only the files it made.
    #[test]
    fn a_failed_first_start_removes_what_it_made() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("new/parent/data");
        let missing = outermost_missing(&data);
        assert_eq!(missing, Some(tmp.path().join("new")));
        let (_, created) = keyfile::load_or_create(&data).unwrap();
        assert!(created);
        let f = FirstStart::record(&data, missing);
        std::fs::write(data.join(LOCK_FILE), b"").unwrap();
        f.undo();
        assert!(!tmp.path().join("new").exists());
        assert!(tmp.path().is_dir());

        let kept = tmp.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("notes.txt"), b"mine").unwrap();
        std::fs::write(kept.join("ponte.db-wal"), b"there before").unwrap();
        assert_eq!(outermost_missing(&kept), None);
        keyfile::load_or_create(&kept).unwrap();
        let f = FirstStart::record(&kept, None);
        std::fs::write(kept.join(LOCK_FILE), b"").unwrap();
        std::fs::write(kept.join(store::DB_FILE), b"").unwrap();
        f.undo();
        let mut left: Vec<_> = std::fs::read_dir(&kept)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "ponte.db-wal"]);
    }
}

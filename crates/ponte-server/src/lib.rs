//! `ponte server`: the messaging service. It only ever sees ciphertext.
//!
//! - [`Server`]: bind, then [`Server::run`] until a shutdown future
//!   completes: the accept loop (a semaphore caps connections), the expiry
//!   sweep and the admin endpoint.
//! - `conn`: one task per connection: optional PROXY header, Noise
//!   handshake (`ponte-transport`), then the request loop and mailbox pushes.
//! - [`store`]: SQLite (WAL, flushed before every answer) behind a
//!   group-commit writer thread, its sync and checkpoint threads, and four
//!   reader threads.
//! - `registry`: devices online now, and the in-memory hand-over of
//!   committed items to them.
//! - [`config`]: every limit and timeout, typed.
//! - [`keyfile`]: the server's Noise static key in the data directory.
//! - `admin`, [`metrics`]: `/metrics` and `/healthz` on a loopback port.
//!
//! The wire protocol is described in `docs/PROTOCOL.md`.

#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod conn;
pub mod keyfile;
pub mod metrics;
mod outbox;
mod ratelimit;
mod registry;
pub mod store;

pub use config::{RateLimit, ServerConfig};

use ponte_transport::Keypair;
use ponte_wire::address::ServerAddress;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::Store;
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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: ServerConfig,
    pub keypair: Keypair,
    pub store: Store,
    pub metrics: metrics::Metrics,
    pub registry: registry::Registry,
    pub register_by_source: ratelimit::Limiter,
    pub register_by_peer: ratelimit::Limiter,
    pub next_conn_id: AtomicU64,
    pub stop: CancellationToken,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    key_created: bool,
}

impl Server {
    /// Loads or creates the key, opens the database and binds the listener
    /// (and the admin listener when `admin` is given).
    pub async fn bind(cfg: ServerConfig, admin: Option<SocketAddr>) -> Result<Self, ServerError> {
        let (keypair, key_created) = keyfile::load_or_create(&cfg.data_dir)?;
        let store = Store::open_with(
            &cfg.data_dir,
            store::StoreOptions::with_commit_interval(cfg.commit_interval),
        )?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let admin = match admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let mut metrics = metrics::Metrics::new();
        metrics.register_store(store.stats());
        let shared = Arc::new(Shared {
            register_by_source: ratelimit::Limiter::new(cfg.register_limit),
            register_by_peer: ratelimit::Limiter::new(cfg.register_limit_per_peer),
            cfg,
            keypair,
            store,
            metrics,
            registry: registry::Registry::default(),
            next_conn_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
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
                            Ok(permit) => {
                                conns.spawn(conn::handle(Arc::clone(&shared), sock, peer, permit));
                            }
                            Err(_) => {
                                shared.metrics.closed("overloaded");
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
            match shared
                .store
                .expire(
                    now_ms(),
                    duration_ms(shared.cfg.retention),
                    duration_ms(shared.cfg.notice_retention),
                )
                .await
            {
                Ok(out) => {
                    shared.metrics.messages_expired.inc_by(out.expired_messages);
                    for account in &out.notify {
                        shared.registry.wake(*account);
                    }
                    if !out.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("expiry sweep failed: {e}");
                    break;
                }
            }
        }
    }
}

/// The server address for a data directory (reads the existing key).
pub fn server_address(
    data_dir: &Path,
    host: &str,
    port: u16,
) -> Result<ServerAddress, ServerError> {
    let kp = keyfile::load(data_dir)?;
    Ok(ServerAddress {
        host: host.to_owned(),
        port,
        key: kp.public(),
    })
}

/// Creates a one-use invite token in the data directory's database.
pub fn create_invite(data_dir: &Path) -> Result<String, ServerError> {
    keyfile::load_or_create(data_dir)?;
    Ok(store::create_invite(data_dir, now_ms())?)
}

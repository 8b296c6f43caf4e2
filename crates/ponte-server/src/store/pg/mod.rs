//! The PostgreSQL backend: [`PgStore`], for a service whose nodes share one
//! database (`--store postgres://…`).
//!
//! - `schema`: the tables and their versioned migrations, run at start under
//!   an advisory lock (once, whichever node starts first).
//! - `write`: the writer thread (`ponte-pg-writer`): group commit of every
//!   queued job in one transaction, the hand-over to the [`Sink`], retries.
//! - `jobs`: the SQL of every write job, run inside the writer's transaction.
//! - `read`: the reads, on a pool of connections.
//! - `limits`: token buckets shared by every node (registration limits).
//! - `tls`: libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey` and the
//!   rustls connector every connection to PostgreSQL goes through.
//!
//! **Driver**: `tokio-postgres` with `deadpool-postgres` for the pool, not
//! `sqlx`: the store writes its SQL by hand anyway (no query macros, which
//! would need a live database at build time), tokio-postgres is the plain
//! async protocol client with prepared statements and no other layers, and
//! deadpool replaces a connection PostgreSQL dropped (a restart) on its
//! next use, so a node recovers without a restart of its own.
//!
//! **Threads**: the writer runs on its own thread with a single-threaded
//! runtime that owns its connection, so that [`Store::close`] can wait for
//! it from anywhere (also from inside another runtime). Reads run on a
//! small runtime of the store's own (`ponte-pg-read`, two threads) with a
//! pool of [`PgOptions::readers`] connections; every read is one statement
//! (one snapshot).
//!
//! **Durable before answered**: a job is answered once the `COMMIT` of its
//! batch returned (the session runs with `synchronous_commit = on`, so the
//! commit record is flushed on the database server, and on its synchronous
//! standbys if it has any). Jobs queue while a commit is in flight and form
//! the next batch: one commit per batch, each as large as the load makes it
//! (the SQLite writer's group commit, across the node's connections).
//!
//! **Seqs and order**: every mailbox item's seq comes from one PostgreSQL
//! sequence (`mailbox_seq`), so seqs are unique across the whole service
//! and never reused (a sequence never goes back, not even when a
//! transaction rolls back). Before a transaction adds an item to a mailbox
//! it locks the owner's `accounts` row (`FOR NO KEY UPDATE`, held to the
//! commit) and only then takes the seq: two transactions adding to one
//! mailbox, on one node or two, commit in the order of their seqs. So a
//! mailbox read that sees seq N sees every item of that mailbox below N,
//! whichever node stored it: the one-snapshot guarantee of the seam holds
//! across nodes. The same row holds the count of waiting messages
//! (`pending`, for `max_pending`), kept exact under the same lock.
//!
//! **Commit order**: the [`Sink`] gets each committed batch's items in the
//! order the writer committed them. With several nodes that order is per
//! node: a node's sink sees only what that node committed; what another
//! node stored for a device online here reaches it through a mailbox read
//! (the bus's wake-ups, or the catch-up read).
//!
//! **Conflicts**: transactions of two nodes can wait for each other's
//! account locks; PostgreSQL breaks a deadlock by failing one of them
//! (after `deadlock_timeout`), and a lock wait is bounded by
//! `lock_timeout` (5 s). Such a batch (nothing of it stored) is run again,
//! up to [`MAX_RETRIES`] times. A job whose statement fails for any other
//! reason is answered with the error and the rest of its batch runs again
//! without it.
//!
//! **Lost database**: a batch that cannot get a connection, or whose
//! connection breaks, is answered with an error (the server answers
//! `UNAVAILABLE`, as on a full disk) and the next batch connects afresh.
//! A batch that takes longer than [`PgOptions::batch_timeout`] is abandoned
//! with its connection (PostgreSQL rolls it back when the connection goes;
//! if its `COMMIT` was already on its way the outcome is unknown, and a
//! client's resend of the message is answered as a duplicate).
//!
//! **Blobs**: metadata here; the bytes are files under the blob directory
//! (`blob_dir` in the server config), which every node of a service must
//! share (a network file system), so that any node can serve an upload
//! another node took. The `service` row `blob_dir` records the id in the
//! first node's blob directory's marker file ([`claim_blob_dir`]): a node
//! whose directory holds another says so at start.

mod jobs;
mod limits;
pub mod migrate;
mod read;
mod schema;
mod tls;
mod write;

use super::seam::{Sink, Store, StoreFuture};
use super::types::*;
use super::{BlobCreateOutcome, BlobId, BlobInfo, BlobTotals, NewBlob, StoreError, StoreStats};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use write::{Done, Queued, Work};

pub use tls::{ConnectFailure, SslMode, Target};
pub use write::MAX_RETRIES;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgError {
    /// A statement, the commit, or the connection failed.
    #[error("PostgreSQL")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had (PostgreSQL down or unreachable, or every
    /// connection busy for too long).
    #[error("no connection to PostgreSQL")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The store address is not a PostgreSQL connection string.
    #[error("not a PostgreSQL address (postgres://USER@HOST:PORT/DATABASE)")]
    Address(#[source] tokio_postgres::Error),
    /// A setting of the store address is wrong (`sslmode`, `sslrootcert`,
    /// …); the message names it.
    #[error("{0}")]
    Setting(String),
    /// A file named by a TLS setting cannot be used.
    #[error("{setting}={}: {what}", path.display())]
    TlsFile {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        setting: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The first connection to PostgreSQL failed: where, with which
    /// `sslmode`, and what failed as far as can be told (the cause has
    /// the rest).
    #[error("PostgreSQL at {at} {failure} (sslmode={mode})")]
    Connect {
        /// `HOST:PORT` (every host of the address).
        at: String,
        /// The `sslmode` given.
        mode: SslMode,
        /// What failed.
        failure: ConnectFailure,
        /// The driver's (or the pool's) error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database's schema is newer than this server knows.
    #[error("the database schema is version {found}, newer than this server's {known}: upgrade this server")]
    SchemaTooNew {
        /// Version found.
        found: i64,
        /// Newest version this code writes.
        known: i64,
    },
    /// A batch took longer than the batch timeout and was abandoned.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    /// The store's runtime or threads could not be started.
    #[error("cannot start the PostgreSQL store's threads")]
    Start(#[source] std::io::Error),
}

impl PgError {
    /// PostgreSQL's SQLSTATE of a failed statement, if it gave one.
    fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Db(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// A conflict with another transaction (serialization failure,
    /// deadlock, lock timeout): running the same jobs again may succeed.
    fn is_conflict(&self) -> bool {
        matches!(self.sqlstate(), Some("40001" | "40P01" | "55P03"))
    }

    /// A statement PostgreSQL refused on its own account (a constraint, a
    /// bad value): not the connection's fault, only this job's.
    fn is_statement(&self) -> bool {
        match self.sqlstate() {
            // Connection or server-state classes: 08 (connection), 53
            // (resources), 57 (operator intervention, e.g. shutdown), 58
            // (system), XX (internal), 25 (transaction state).
            Some(s) => !["08", "53", "57", "58", "XX", "25"]
                .iter()
                .any(|class| s.starts_with(class)),
            None => false,
        }
    }
}

/// Tuning of a [`PgStore`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PgOptions {
    /// Connections for reads.
    pub readers: usize,
    /// Most jobs in one transaction.
    pub batch_max: usize,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long a batch (its statements and commit) may take before it is
    /// abandoned with its connection.
    pub batch_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            readers: 4,
            batch_max: 512,
            connect_timeout: Duration::from_secs(5),
            batch_timeout: Duration::from_secs(30),
        }
    }
}

/// Jobs that may wait for the writer (back-pressure beyond this).
const QUEUE: usize = 8192;

/// The store on PostgreSQL: a writer thread with its connection, and a pool
/// of read connections on a small runtime of the store's own.
pub struct PgStore {
    jobs: Mutex<Option<mpsc::Sender<Queued>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    pool: Pool,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    stats: StoreStats,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// Parses a store address (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or
/// PostgreSQL's `key=value` form), with libpq's TLS settings (`sslmode`,
/// `sslrootcert`, `sslcert`, `sslkey`: see `tls`).
pub fn parse_address(address: &str) -> Result<Target, PgError> {
    Target::parse(address)
}

/// A pool of at most `size` connections to `target`, through its TLS
/// connector (which reads the certificate files now).
fn make_pool(target: &Target, size: usize, opts: &PgOptions) -> Result<Pool, PgError> {
    let mut cfg = target.cfg.clone();
    cfg.connect_timeout(opts.connect_timeout);
    let mgr = Manager::from_config(
        cfg,
        target.connector()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let t = Some(opts.connect_timeout);
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(t)
        .create_timeout(t)
        .recycle_timeout(t)
        .build()
        .map_err(|e| PgError::Start(std::io::Error::other(e.to_string())))
}

/// [`make_pool`], and its first connection made now: a failure says where
/// and what failed (TLS refused, certificate not trusted, …).
async fn open_pool(target: &Target, size: usize, opts: &PgOptions) -> Result<Pool, PgError> {
    let pool = make_pool(target, size, opts)?;
    // The connection goes back to the pool for the caller's first use.
    drop(pool.get().await.map_err(|e| target.connect_error(e))?);
    Ok(pool)
}

/// One connection to the database at `address`, through the same TLS
/// settings as the store's (for tools: the bench, tests). Its driver runs
/// on the current runtime.
pub async fn connect(address: &str) -> Result<tokio_postgres::Client, PgError> {
    let target = parse_address(address)?;
    let mut cfg = target.cfg.clone();
    cfg.connect_timeout(PgOptions::default().connect_timeout);
    let (client, conn) = cfg
        .connect(target.connector()?)
        .await
        .map_err(|e| target.connect_error(e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Runs `f` on a fresh single-threaded runtime on a thread of its own and
/// waits for it: for the blocking entry points, callable from inside
/// another runtime.
pub(crate) fn block_on_own_thread<T: Send + 'static>(
    f: impl Future<Output = Result<T, PgError>> + Send + 'static,
) -> Result<T, PgError> {
    std::thread::Builder::new()
        .name("ponte-pg-setup".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(PgError::Start)?
                .block_on(f)
        })
        .map_err(PgError::Start)?
        .join()
        .unwrap_or_else(|_| {
            Err(PgError::Start(std::io::Error::other(
                "setup thread panicked",
            )))
        })
}

/// Creates the schema in the database at `address`, or brings it up to
/// date (what every node does at start).
pub fn migrate(address: &str) -> Result<(), PgError> {
    let cfg = parse_address(address)?;
    let opts = PgOptions::default();
    block_on_own_thread(async move {
        let pool = open_pool(&cfg, 1, &opts).await?;
        schema::migrate(&pool).await
    })
}

/// The service's address key (the Noise static public key every node
/// serves with) as the database records it: `public` if none was recorded
/// yet (this node is the first), else the one recorded by the first node.
/// Creates or migrates the schema first. A node whose key differs must not
/// serve (its clients would see another server).
pub fn claim_address_key(address: &str, public: [u8; 32]) -> Result<[u8; 32], PgError> {
    let cfg = parse_address(address)?;
    let opts = PgOptions::default();
    block_on_own_thread(async move {
        let pool = open_pool(&cfg, 1, &opts).await?;
        schema::migrate(&pool).await?;
        let c = pool.get().await?;
        c.execute(
            "INSERT INTO service (key, value) VALUES ('address_key', $1) ON CONFLICT DO NOTHING",
            &[&&public[..]],
        )
        .await?;
        let stored: Vec<u8> = c
            .query_one("SELECT value FROM service WHERE key = 'address_key'", &[])
            .await?
            .try_get(0)?;
        Ok(<[u8; 32]>::try_from(stored.as_slice()).unwrap_or([0; 32]))
    })
}

/// The id of the blob directory the service's nodes use, as the database
/// records it: `marker` (this node's directory's) if none was recorded yet,
/// else the one the first node recorded. A node that gets another id has a
/// blob directory the other nodes do not share.
pub fn claim_blob_dir(address: &str, marker: [u8; 16]) -> Result<[u8; 16], PgError> {
    let cfg = parse_address(address)?;
    let opts = PgOptions::default();
    block_on_own_thread(async move {
        let pool = open_pool(&cfg, 1, &opts).await?;
        let c = pool.get().await?;
        c.execute(
            "INSERT INTO service (key, value) VALUES ('blob_dir', $1) ON CONFLICT DO NOTHING",
            &[&&marker[..]],
        )
        .await?;
        let stored: Vec<u8> = c
            .query_one("SELECT value FROM service WHERE key = 'blob_dir'", &[])
            .await?
            .try_get(0)?;
        Ok(<[u8; 16]>::try_from(stored.as_slice()).unwrap_or([0; 16]))
    })
}

/// Creates a random one-use invite token in the database at `address`
/// (works while nodes run on it).
pub fn create_invite(address: &str, now: UnixMillis) -> Result<String, PgError> {
    let cfg = parse_address(address)?;
    let opts = PgOptions::default();
    block_on_own_thread(async move {
        let pool = open_pool(&cfg, 1, &opts).await?;
        schema::migrate(&pool).await?;
        let token = super::jobs::new_invite_token();
        let hash = super::jobs::invite_hash(&token);
        pool.get()
            .await?
            .execute(
                "INSERT INTO invites (token_hash, created_at) VALUES ($1, $2)",
                &[&&hash[..], &now.0],
            )
            .await?;
        Ok(token)
    })
}

impl PgStore {
    /// Connects to `address`, creates or migrates the schema, and starts the
    /// writer, with default options; nothing is handed over.
    pub fn open(address: &str) -> Result<Self, StoreError> {
        Self::open_with(address, PgOptions::default(), Arc::new(()))
    }

    /// Like [`PgStore::open`], with options, and `sink` taking every
    /// committed batch's items (see [`Sink`]). Blocks until the schema is
    /// ready (callable from inside a runtime: the work runs on the store's
    /// own threads).
    pub fn open_with(
        address: &str,
        opts: PgOptions,
        sink: Arc<dyn Sink>,
    ) -> Result<Self, StoreError> {
        let cfg = parse_address(address).map_err(StoreError::Postgres)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ponte-pg-read")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(PgError::Start(e)))?;
        let pool = make_pool(&cfg, opts.readers, &opts).map_err(StoreError::Postgres)?;
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (pool, cfg) = (pool.clone(), cfg.clone());
            runtime.spawn(async move {
                let first = pool.get().await.map_err(|e| cfg.connect_error(e));
                let _ = tx.send(match first {
                    Ok(c) => {
                        drop(c);
                        schema::migrate(&pool).await
                    }
                    Err(e) => Err(e),
                });
            });
        }
        match rx.recv() {
            Ok(r) => r.map_err(StoreError::Postgres)?,
            Err(_) => return Err(StoreError::Task),
        }
        let write_pool = make_pool(&cfg, 1, &opts).map_err(StoreError::Postgres)?;
        let stats = StoreStats::new();
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE);
        let writer = write::Writer::new(write_pool, sink, stats.clone(), opts);
        let thread = std::thread::Builder::new()
            .name("ponte-pg-writer".into())
            .spawn(move || writer.run(jobs_rx))
            .map_err(|e| StoreError::Postgres(PgError::Start(e)))?;
        Ok(Self {
            jobs: Mutex::new(Some(jobs_tx)),
            writer: Mutex::new(Some(thread)),
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            pool,
            stats,
        })
    }

    /// Whether PostgreSQL answers a trivial query now (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| async move {
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    /// Runs a write job on the writer and waits for its answer.
    async fn submit(&self, work: Work) -> Result<Done, StoreError> {
        let tx = self
            .jobs
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Queued { work, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// A write job whose answer is `pick`ed out of [`Done`].
    fn write<T: Send + 'static>(
        &self,
        work: Work,
        pick: fn(Done) -> Option<T>,
    ) -> StoreFuture<'_, T> {
        Box::pin(async move { pick(self.submit(work).await?).ok_or(StoreError::Task) })
    }

    /// Runs `f` with a pooled connection on the store's runtime.
    fn read<T, F, Fut>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let open = self.runtime.lock().map(|r| r.is_some()).unwrap_or(false);
        let pool = self.pool.clone();
        let task = open.then(|| {
            self.handle
                .spawn(async move { f(pool.get().await.map_err(PgError::Pool)?).await })
        });
        Box::pin(async move {
            match task {
                None => Err(StoreError::Closed),
                Some(t) => match t.await {
                    Ok(r) => r.map_err(StoreError::Postgres),
                    Err(_) => Err(StoreError::Task),
                },
            }
        })
    }

    /// Stops the writer after the queued jobs and waits for it, then the
    /// read runtime (blocking).
    fn shutdown(&self) {
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
        let thread = self.writer.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
        let runtime = self.runtime.lock().ok().and_then(|mut r| r.take());
        if let Some(rt) = runtime {
            self.pool.close();
            rt.shutdown_background();
        }
    }
}

impl Store for PgStore {
    fn register(&self, a: NewAccount) -> StoreFuture<'_, RegisterOutcome> {
        self.write(Work::Register(a), |d| match d {
            Done::Register(o) => Some(o),
            _ => None,
        })
    }

    fn upload_keys(
        &self,
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
    ) -> StoreFuture<'_, UploadOutcome> {
        let work = Work::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
        };
        self.write(work, |d| match d {
            Done::Upload(o) => Some(o),
            _ => None,
        })
    }

    fn claim(&self, handle: String) -> StoreFuture<'_, ClaimOutcome> {
        self.write(Work::Claim(handle), |d| match d {
            Done::Claim(o) => Some(o),
            _ => None,
        })
    }

    fn send(&self, m: NewMessage) -> StoreFuture<'_, SendOutcome> {
        self.write(Work::Send(m), |d| match d {
            Done::Send(o) => Some(o),
            _ => None,
        })
    }

    fn send_group(&self, m: NewGroupMessage) -> StoreFuture<'_, GroupSendOutcome> {
        self.write(Work::SendGroup(m), |d| match d {
            Done::Group(o) => Some(o),
            _ => None,
        })
    }

    fn ack(
        &self,
        account: AccountId,
        seqs: Vec<Seq>,
        now: UnixMillis,
        notice_expires_at: UnixMillis,
    ) -> StoreFuture<'_, AckOutcome> {
        let work = Work::Ack {
            account,
            seqs,
            now,
            notice_expires_at,
        };
        self.write(work, |d| match d {
            Done::Ack(o) => Some(o),
            _ => None,
        })
    }

    fn expire(
        &self,
        now: UnixMillis,
        retention: Duration,
        notice_ttl: Duration,
    ) -> StoreFuture<'_, ExpireOutcome> {
        let work = Work::Expire {
            now,
            retention,
            notice_ttl,
        };
        self.write(work, |d| match d {
            Done::Expire(o) => Some(o),
            _ => None,
        })
    }

    fn login_info(&self, noise_key: [u8; 32]) -> StoreFuture<'_, Option<LoginInfo>> {
        self.read(move |c| async move { read::login_info(&c, &noise_key).await })
    }

    fn account_by_handle(&self, handle: String) -> StoreFuture<'_, Option<AccountInfo>> {
        self.read(move |c| async move { read::account_by_handle(&c, &handle).await })
    }

    fn key_counts(&self, account: AccountId) -> StoreFuture<'_, KeyCounts> {
        self.read(move |c| async move { read::key_counts(&c, account).await })
    }

    fn shared_token(
        &self,
        key: Vec<u8>,
        rate: ponte_wire::limit::Rate,
        take: bool,
    ) -> StoreFuture<'_, Option<bool>> {
        self.read(move |c| async move { limits::token(&c, &key, rate, take).await.map(Some) })
    }

    fn mailbox_len(&self, account: AccountId) -> StoreFuture<'_, u32> {
        self.read(move |c| async move { read::mailbox_len(&c, account).await })
    }

    fn fetch_mailbox(
        &self,
        owner: AccountId,
        after: Seq,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MailItem>> {
        self.read(move |c| async move { read::fetch_mailbox(&c, owner, after, limit).await })
    }

    fn blob_create(&self, b: NewBlob) -> StoreFuture<'_, BlobCreateOutcome> {
        self.write(Work::BlobCreate(b), |d| match d {
            Done::BlobCreate(o) => Some(o),
            _ => None,
        })
    }

    fn blob(&self, id: BlobId) -> StoreFuture<'_, Option<BlobInfo>> {
        self.read(move |c| async move { read::blob(&c, &id).await })
    }

    fn blob_advance(&self, id: BlobId, from: u64, to: u64) -> StoreFuture<'_, bool> {
        self.write(Work::BlobAdvance(id, from, to), |d| match d {
            Done::Flag(o) => Some(o),
            _ => None,
        })
    }

    fn blob_finish(&self, id: BlobId) -> StoreFuture<'_, bool> {
        self.write(Work::BlobFinish(id), |d| match d {
            Done::Flag(o) => Some(o),
            _ => None,
        })
    }

    fn blob_fetched(&self, id: BlobId, account: AccountId) -> StoreFuture<'_, ()> {
        self.write(Work::BlobFetched(id, account), |d| match d {
            Done::Unit => Some(()),
            _ => None,
        })
    }

    fn blob_delete(&self, ids: Vec<BlobId>) -> StoreFuture<'_, u64> {
        self.write(Work::BlobDelete(ids), |d| match d {
            Done::Count(n) => Some(n),
            _ => None,
        })
    }

    fn blobs_due(&self, now: UnixMillis, limit: usize) -> StoreFuture<'_, Vec<BlobId>> {
        self.read(move |c| async move { read::blobs_due(&c, now, limit).await })
    }

    fn blob_totals(&self) -> StoreFuture<'_, BlobTotals> {
        self.read(|c| async move { read::blob_totals(&c).await })
    }

    fn stats(&self) -> &StoreStats {
        &self.stats
    }

    fn close(&self) {
        self.shutdown();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

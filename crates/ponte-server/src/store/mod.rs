//! Durable storage: accounts, public keys, mailboxes (with the shared
//! bodies of group messages), the dedup log of sent message ids and invite
//! tokens, behind the [`Store`] seam; SQLite (one
//! file, `ponte.db` in the data directory) is its embedded implementation,
//! and [`PgStore`] (module [`pg`]) the one for a service whose nodes share
//! a PostgreSQL database.
//!
//! - `seam`: [`Store`], the trait through which the server talks to its
//!   store, and the guarantees every backend keeps; [`Sink`], where
//!   committed items go.
//! - [`SqliteStore`] (here): the SQLite backend's handle, opening, options,
//!   stats and closing.
//! - `types`: the domain types (accounts, keys, messages, mailbox items and
//!   the outcome of every job).
//! - `schema`: the tables, and the migrations from every older version.
//! - `read`: the reader threads and the queries they run.
//! - `write`: the writer, syncer and checkpointer threads.
//! - `jobs`: the SQL of every write job.
//! - `blobs`: blob metadata (the bytes are files, see the server's `blobs`
//!   module): its tables, write jobs and reads.
//!
//! **Writes** go to one writer thread that owns the only write connection.
//! It takes every job waiting in its queue (up to a batch limit), runs them
//! in one `BEGIN IMMEDIATE` transaction and commits once (group commit).
//! The commit writes the WAL without waiting for the disk
//! (`synchronous=NORMAL`); a second thread, the syncer, then calls
//! `fdatasync` on the WAL file and only after that answers the batch's
//! callers. So "answered" still means "durable" (the WAL survives SIGKILL
//! and power loss), and the writer runs the next batch while the disk
//! flushes the previous one. One `fdatasync` covers every batch committed
//! before it started.
//!
//! **Checkpoints** (copying the WAL into the database file) run on their own
//! thread and connection, not inside a commit; the writer finishes a
//! checkpoint itself between transactions (cheap by then) so the WAL can
//! restart from its beginning instead of growing.
//!
//! **Reads** run on four reader threads (`ponte-db-read0..3`), each with its
//! own read-only connection; WAL lets them run while the writer commits.
//!
//! Mailbox items of all kinds share one sequence (`seq`), allocated by the
//! writer and never reused (the high-water mark is reserved in the `meta`
//! table ahead of use), so a stale ack can never delete a newer item:
//! messages live in `mailbox` (owner = recipient, peer = sender), delivery
//! receipts (kind 1) and expired notices (kind 2) in `notices` (owner =
//! original sender, peer = original recipient). Both are keyed by
//! `(owner, seq)`: one B-tree insert to store an item, one delete to drop it
//! (plus the expiry index for messages). A group message's body is stored
//! once in `bodies`, with its group id and the number of mailbox entries
//! that refer to it; each recipient's entry carries an empty body and the
//! body's id, and the body is deleted with the last entry (acknowledged or
//! expired). The number of waiting messages per
//! recipient (for `max_pending`) is kept in memory by the writer, counted
//! from the table at start.

mod blobs;
mod jobs;
pub mod pg;
mod read;
mod schema;
mod seam;
mod types;
mod write;

pub use blobs::{BlobCreateOutcome, BlobId, BlobInfo, BlobTotals, NewBlob};
pub use pg::{PgOptions, PgStore};
pub use seam::{Sink, Store, StoreFuture};
pub use types::*;

use jobs::{invite_hash, new_invite_token, Job, Reply};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use read::{open_reader, reader_loop, ReadJob, READERS};
use rusqlite::params;
use schema::{init_schema, open_conn};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use write::{
    wal_path, writer_main, Pipeline, WriterState, JOURNAL_SIZE_LIMIT, QUEUE, WRITER_CACHE_KIB,
};

/// Database file name inside the data directory.
pub const DB_FILE: &str = "ponte.db";

/// Storage failures.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error")]
    Sqlite(#[source] rusqlite::Error),
    /// The store was closed (server shutting down).
    #[error("store closed")]
    Closed,
    /// The group commit failed; nothing of the batch was stored. The cause
    /// is shared by every job of the batch.
    #[error("commit failed")]
    CommitFailed(#[source] Arc<CommitError>),
    /// A blocking task panicked or was cancelled.
    #[error("storage task failed")]
    Task,
    /// PostgreSQL reported an error, or could not be reached.
    #[error("database error")]
    Postgres(#[source] pg::PgError),
}

/// Why a batch of writes was not committed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CommitError {
    /// A statement, or the commit itself, failed (a full disk, an I/O
    /// error): the transaction rolled back.
    #[error("the transaction failed")]
    Sqlite(#[source] rusqlite::Error),
    /// Flushing the write-ahead log to disk failed: the store refuses
    /// writes until restarted (the kernel may have dropped the pages it
    /// could not write).
    #[error("flushing the write-ahead log failed")]
    Flush(#[source] std::io::Error),
    /// A flush failed earlier: writes are refused until restarted.
    #[error("storage failed earlier (a flush to disk failed); restart the server")]
    FailedEarlier,
    /// The store is closing.
    #[error("store closing")]
    Closing,
    /// PostgreSQL failed the transaction, its commit, or the connection
    /// (nothing of the batch was stored, or the commit's outcome is
    /// unknown: see `store::pg`).
    #[error("the transaction failed")]
    Postgres(#[source] pg::PgError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Least time between commits while jobs keep coming.
    pub commit_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            commit_interval: DEFAULT_COMMIT_INTERVAL,
        }
    }
}

impl StoreOptions {
    /// Default options with this commit interval.
    pub fn with_commit_interval(commit_interval: Duration) -> Self {
        Self { commit_interval }
    }
}

/// What the store did, for the server's metrics: commits, the writes they
/// carried, and how long the WAL flushes took. Handles are shared: clone
/// them into a Prometheus registry.
#[derive(Clone, Debug)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: Counter,
    /// Write jobs (sends, acks, registrations, ...) in those commits.
    pub writes: Counter,
    /// Time each `fdatasync` of the WAL took, in seconds.
    pub fsync_seconds: Histogram,
    /// 1 once a flush failed: the store then refuses writes until restarted.
    pub failed: Gauge,
    /// Batches whose commit failed (disk full, an I/O error): their jobs
    /// were answered with an error and nothing of them was stored.
    pub commit_failures: Counter,
    /// 1 while the latest commit attempt failed, 0 once one succeeds: the
    /// disk may be full, and sends get "try again later" meanwhile.
    pub commit_failing: Gauge,
}

impl StoreStats {
    fn new() -> Self {
        Self {
            commits: Counter::default(),
            writes: Counter::default(),
            // 50 µs .. ~1.6 s, doubling.
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            failed: Gauge::default(),
            commit_failures: Counter::default(),
            commit_failing: Gauge::default(),
        }
    }
}

/// The store: a writer thread (with its syncer and checkpointer) and a
/// fixed pool of reader threads.
#[derive(Debug)]
pub struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    reads: Mutex<Option<std::sync::mpsc::Sender<ReadJob>>>,
    reader_threads: Mutex<Vec<JoinHandle<()>>>,
    stats: StoreStats,
}

/// Default least time between two commits while jobs keep coming (an idle
/// writer commits a lone job at once; `commit_interval` in the server
/// config). Measured on the benchmark machine: with back-to-back commits
/// (one per flush) the WAL took ~90 pages per commit and the disk's flushes
/// sometimes 50–100 ms under that volume; 3 ms between commits cut the slow
/// flushes and the p99 latency at half rate.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(3);

/// Creates a random one-use invite token and stores it (works while a server
/// runs on the same data directory: SQLite serialises the writers).
pub fn create_invite(data_dir: &Path, now: UnixMillis) -> Result<String, StoreError> {
    let token = new_invite_token();
    let mut conn = open_conn(&data_dir.join(DB_FILE), false)?;
    init_schema(&mut conn)?;
    conn.execute(
        "INSERT INTO invites (token_hash, created_at) VALUES (?1, ?2)",
        params![&invite_hash(&token)[..], now],
    )?;
    Ok(token)
}

impl SqliteStore {
    /// Opens (creating or upgrading if needed) `DIR/ponte.db` and starts the
    /// writer, with default options.
    /// Nothing is handed over: for tools and tests that push nothing.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, StoreOptions::default(), Arc::new(()))
    }

    /// Like [`SqliteStore::open`], with options, and `sink` taking every
    /// committed batch's items (see [`Sink`]).
    pub fn open_with(
        data_dir: &Path,
        opts: StoreOptions,
        sink: Arc<dyn Sink>,
    ) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let mut conn = open_conn(&path, false)?;
        init_schema(&mut conn)?;
        let state = WriterState::load(&conn)?;
        // Durability comes from the syncer's fdatasync of the WAL before any
        // answer (see the module docs); checkpoints run on their own thread.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        let checkpointer = open_conn(&path, false)?;
        // Readers are threads of their own, each with its connection (not
        // tokio's blocking pool, which grows threads under a login storm,
        // each with its own stack and allocator caches).
        let (read_tx, read_rx) = std::sync::mpsc::channel::<ReadJob>();
        let read_rx = Arc::new(Mutex::new(read_rx));
        let mut reader_threads = Vec::with_capacity(READERS);
        for i in 0..READERS {
            let conn = open_reader(&path)?;
            let rx = Arc::clone(&read_rx);
            let t = std::thread::Builder::new()
                .name(format!("ponte-db-read{i}"))
                .spawn(move || reader_loop(&conn, &rx))
                .map_err(|_| StoreError::Task)?;
            reader_threads.push(t);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = StoreStats::new();
        let pipeline = Pipeline {
            conn,
            state,
            commit_interval: opts.commit_interval,
            checkpointer,
            wal: wal_path(&path),
            db: path.clone(),
            stats: stats.clone(),
            sink,
        };
        let thread = std::thread::Builder::new()
            .name("ponte-db-writer".into())
            .spawn(move || writer_main(pipeline, rx))
            .map_err(|_| StoreError::Task)?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reads: Mutex::new(Some(read_tx)),
            reader_threads: Mutex::new(reader_threads),
            stats,
        })
    }

    /// Stops the writer after the queued jobs and waits for it, then the
    /// readers (blocking).
    fn shutdown(&self) {
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
        if let Ok(mut r) = self.reads.lock() {
            r.take();
        }
        let readers = self
            .reader_threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in readers {
            let _ = t.join();
        }
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let tx = self
            .jobs
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        let (rtx, rrx) = oneshot::channel();
        tx.send(make(rtx)).await.map_err(|_| StoreError::Closed)?;
        rrx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Store for SqliteStore {
    fn register(&self, a: NewAccount) -> StoreFuture<'_, RegisterOutcome> {
        Box::pin(self.submit(move |r| Job::Register(a, r)))
    }

    fn upload_keys(
        &self,
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
    ) -> StoreFuture<'_, UploadOutcome> {
        Box::pin(self.submit(move |reply| Job::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
            reply,
        }))
    }

    fn claim(&self, handle: String) -> StoreFuture<'_, ClaimOutcome> {
        Box::pin(self.submit(move |r| Job::Claim(handle, r)))
    }

    fn send(&self, m: NewMessage) -> StoreFuture<'_, SendOutcome> {
        Box::pin(self.submit(move |r| Job::Send(m, r)))
    }

    fn send_group(&self, m: NewGroupMessage) -> StoreFuture<'_, GroupSendOutcome> {
        Box::pin(self.submit(move |r| Job::SendGroup(m, r)))
    }

    fn ack(
        &self,
        account: AccountId,
        seqs: Vec<Seq>,
        now: UnixMillis,
        notice_expires_at: UnixMillis,
    ) -> StoreFuture<'_, AckOutcome> {
        Box::pin(self.submit(move |reply| Job::Ack {
            account,
            seqs,
            now,
            notice_expires_at,
            reply,
        }))
    }

    fn expire(
        &self,
        now: UnixMillis,
        retention: Duration,
        notice_ttl: Duration,
    ) -> StoreFuture<'_, ExpireOutcome> {
        Box::pin(async move {
            // Notices have no expiry index (they are written and deleted
            // once per delivered message, and an index would double that):
            // a reader scans for stale ones off the writer thread, and the
            // writer deletes them.
            let stale_notices = self
                .read(move |c| read::stale_notices(c, now, jobs::EXPIRE_BATCH))
                .await?;
            self.submit(move |reply| Job::Expire {
                now,
                retention,
                notice_ttl,
                stale_notices,
                reply,
            })
            .await
        })
    }

    fn login_info(&self, noise_key: [u8; 32]) -> StoreFuture<'_, Option<LoginInfo>> {
        Box::pin(self.read(move |c| read::login_info(c, &noise_key)))
    }

    fn account_by_handle(&self, handle: String) -> StoreFuture<'_, Option<AccountInfo>> {
        Box::pin(self.read(move |c| read::account_where(c, "handle = ?1", &handle)))
    }

    fn key_counts(&self, account: AccountId) -> StoreFuture<'_, KeyCounts> {
        Box::pin(self.read(move |c| read::key_counts(c, account)))
    }

    fn mailbox_len(&self, account: AccountId) -> StoreFuture<'_, u32> {
        Box::pin(self.read(move |c| read::mailbox_len(c, account)))
    }

    fn fetch_mailbox(
        &self,
        owner: AccountId,
        after: Seq,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MailItem>> {
        Box::pin(self.read(move |c| read::fetch_mailbox(c, owner, after, limit)))
    }

    fn blob_create(&self, b: NewBlob) -> StoreFuture<'_, BlobCreateOutcome> {
        Box::pin(self.submit(move |r| Job::Savepoint(blobs::job(r, move |c| blobs::create(c, &b)))))
    }

    fn blob(&self, id: BlobId) -> StoreFuture<'_, Option<BlobInfo>> {
        Box::pin(self.read(move |c| blobs::get(c, &id)))
    }

    fn blob_advance(&self, id: BlobId, from: u64, to: u64) -> StoreFuture<'_, bool> {
        Box::pin(self.submit(move |r| {
            Job::Savepoint(blobs::job(r, move |c| blobs::advance(c, &id, from, to)))
        }))
    }

    fn blob_finish(&self, id: BlobId) -> StoreFuture<'_, bool> {
        Box::pin(
            self.submit(move |r| Job::Savepoint(blobs::job(r, move |c| blobs::finish(c, &id)))),
        )
    }

    fn blob_fetched(&self, id: BlobId, account: AccountId) -> StoreFuture<'_, ()> {
        Box::pin(self.submit(move |r| {
            Job::Savepoint(blobs::job(r, move |c| blobs::fetched(c, &id, account)))
        }))
    }

    fn blob_delete(&self, ids: Vec<BlobId>) -> StoreFuture<'_, u64> {
        Box::pin(
            self.submit(move |r| Job::Savepoint(blobs::job(r, move |c| blobs::delete(c, &ids)))),
        )
    }

    fn blobs_due(&self, now: UnixMillis, limit: usize) -> StoreFuture<'_, Vec<BlobId>> {
        Box::pin(self.read(move |c| blobs::due(c, now, limit)))
    }

    fn blob_totals(&self) -> StoreFuture<'_, BlobTotals> {
        Box::pin(self.read(blobs::totals))
    }

    fn stats(&self) -> &StoreStats {
        &self.stats
    }

    fn close(&self) {
        self.shutdown();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

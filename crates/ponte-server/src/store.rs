//! Durable storage in one SQLite file (`ponte.db` in the data directory):
//! accounts, public keys, mailboxes, the dedup log of sent message ids and
//! invite tokens.
//!
//! - **Writes** go to one writer thread that owns the only write connection.
//!   It takes every job waiting in its queue (up to a batch limit), runs
//!   them in one `BEGIN IMMEDIATE` transaction and commits once (group
//!   commit). The commit writes the WAL without waiting for the disk
//!   (`synchronous=NORMAL`); a second thread, the syncer, then calls
//!   `fdatasync` on the WAL file and only after that answers the batch's
//!   callers. So "answered" still means "durable" (the WAL survives SIGKILL
//!   and power loss), and the writer runs the next batch while the disk
//!   flushes the previous one. One `fdatasync` covers every batch committed
//!   before it started.
//! - **Checkpoints** (copying the WAL into the database file) run on their
//!   own thread and connection, not inside a commit; the writer finishes a
//!   checkpoint itself now and then (cheap by then) so the WAL can restart
//!   from its beginning instead of growing.
//! - **Reads** run on four reader threads (`ponte-db-read0..3`), each with
//!   its own read-only connection; WAL lets them run while the writer
//!   commits.
//!
//! Mailbox items of all kinds share one sequence (`seq`), allocated by the
//! writer and never reused (the high-water mark is reserved in the `meta`
//! table ahead of use), so a stale ack can never delete a newer item:
//! messages live in `mailbox` (owner = recipient, peer = sender), delivery
//! receipts (kind 1) and expired notices (kind 2) in `notices` (owner =
//! original sender, peer = original recipient). Both are keyed by
//! `(owner, seq)`: one B-tree insert to store an item, one delete to drop it
//! (plus the expiry index for messages). The number of waiting messages per
//! recipient (for `max_pending`) is kept in memory by the writer, counted
//! from the table at start.

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Database file name inside the data directory.
pub const DB_FILE: &str = "ponte.db";

/// Row id of an account.
pub type AccountId = i64;

/// Storage failures.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error. Its text is part of this message, so it is
    /// not also a `source` (a report of the error chain would say it twice).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// The store was closed (server shutting down).
    #[error("store closed")]
    Closed,
    /// The group commit failed; nothing of the batch was stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// A blocking task panicked or was cancelled.
    #[error("storage task failed")]
    Task,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// Kinds of mailbox items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A message for the owner.
    Message,
    /// The owner's message was delivered to `peer`.
    Receipt,
    /// The owner's message to `peer` expired undelivered.
    Expired,
}

impl ItemKind {
    fn code(self) -> i64 {
        match self {
            ItemKind::Message => 0,
            ItemKind::Receipt => 1,
            ItemKind::Expired => 2,
        }
    }

    fn from_code(c: i64) -> Option<Self> {
        match c {
            0 => Some(ItemKind::Message),
            1 => Some(ItemKind::Receipt),
            2 => Some(ItemKind::Expired),
            _ => None,
        }
    }
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// Row id.
    pub id: AccountId,
    /// Handle.
    pub handle: String,
    /// Device Noise static public key.
    pub noise_key: [u8; 32],
    /// Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 signing key.
    pub ed25519: [u8; 32],
    /// Registration signature.
    pub signature: Vec<u8>,
}

/// What a login needs, read in one go.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    /// The device's account.
    pub account: AccountInfo,
    /// Its key counts.
    pub keys: KeyCounts,
    /// Mailbox items waiting (messages, receipts, notices).
    pub pending: u32,
}

/// A public key with its signature.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The device's key id.
    pub key_id: Vec<u8>,
    /// Curve25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Handle (already syntax-checked).
    pub handle: String,
    /// Device Noise static key.
    pub noise_key: [u8; 32],
    /// Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 key.
    pub ed25519: [u8; 32],
    /// Verified registration signature.
    pub signature: Vec<u8>,
    /// Invite token given, if any.
    pub invite: Option<String>,
    /// Whether an invite is required.
    pub invite_required: bool,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

/// Result of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Created.
    Created(AccountId),
    /// Handle already in use.
    HandleTaken,
    /// This device key already has an account.
    DeviceTaken,
    /// Invite-only and no token.
    InviteRequired,
    /// Unknown or used token.
    InviteInvalid,
}

/// One-time key count and fallback presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCounts {
    /// Unclaimed one-time keys.
    pub one_time_keys: u32,
    /// Fallback key on file.
    pub has_fallback: bool,
}

/// Result of a key upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Stored.
    Stored(KeyCounts),
    /// Would exceed the per-device one-time key limit; nothing stored.
    LimitExceeded,
}

/// A claimed key.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The account whose key was claimed.
    pub owner: AccountInfo,
    /// The key.
    pub key: KeyRecord,
    /// Whether it is the fallback key.
    pub fallback: bool,
    /// One-time keys left for the owner.
    pub remaining: u32,
}

/// Result of a claim.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// A key.
    Claimed(Box<Claimed>),
    /// No account with that handle.
    UnknownHandle,
    /// Neither one-time nor fallback key.
    NoKeys,
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender.
    pub sender: AccountId,
    /// Client message id.
    pub message_id: [u8; 16],
    /// Recipient handle.
    pub recipient: String,
    /// Ciphertext.
    pub body: Bytes,
    /// Now, ms.
    pub now_ms: i64,
    /// When it expires, ms.
    pub expires_at_ms: i64,
    /// Mailbox limit.
    pub max_pending: u32,
}

/// Result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored.
    Accepted {
        /// Recipient account.
        recipient: AccountId,
        /// Mailbox seq.
        seq: u64,
        /// Accept time, ms.
        accepted_at_ms: i64,
    },
    /// Same sender and message id seen before: not stored again.
    Duplicate {
        /// First accept time, ms.
        accepted_at_ms: i64,
    },
    /// No such handle.
    UnknownRecipient,
    /// Recipient's mailbox is full.
    MailboxFull,
}

/// A delivery receipt stored by an acknowledgement, for pushing it to its
/// owner (the original sender) without reading it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The original sender, who gets the receipt.
    pub owner: AccountId,
    /// The receipt's seq in the owner's mailbox.
    pub seq: u64,
    /// The delivered message's id.
    pub message_id: Bytes,
    /// Delivery time, ms.
    pub at_ms: i64,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Messages deleted (a receipt was queued for each sender).
    pub messages: u64,
    /// Receipts and notices deleted.
    pub notices: u64,
    /// The receipts stored, in seq order.
    pub receipts: Vec<StoredReceipt>,
}

impl AckOutcome {
    /// Accounts that got a receipt, each once, in the receipts' order.
    pub fn notified(&self) -> Vec<AccountId> {
        let mut out: Vec<AccountId> = Vec::new();
        for r in &self.receipts {
            if !out.contains(&r.owner) {
                out.push(r.owner);
            }
        }
        out
    }
}

/// What an expiry sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireOutcome {
    /// Messages that expired (a notice was queued for each sender).
    pub expired_messages: u64,
    /// Receipts/notices dropped uncollected.
    pub dropped_notices: u64,
    /// Accounts that got a notice.
    pub notify: Vec<AccountId>,
    /// The sweep hit its per-run limit; run again.
    pub more: bool,
}

/// A mailbox item to push.
#[derive(Debug, Clone)]
pub struct MailItem {
    /// Sequence number (the ack key).
    pub seq: u64,
    /// Kind.
    pub kind: ItemKind,
    /// Message id.
    pub message_id: Bytes,
    /// Body (messages only).
    pub body: Bytes,
    /// Accepted / delivered / expired time, ms.
    pub at_ms: i64,
    /// The other party's handle.
    pub peer_handle: String,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Runs on the sync thread once a job's result is durable, before its
/// caller is answered, in commit order.
pub type AfterCommit<T> = Box<dyn FnOnce(&T) + Send>;

enum Job {
    Register(NewAccount, Reply<RegisterOutcome>),
    Upload {
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
        reply: Reply<UploadOutcome>,
    },
    Claim(String, Reply<ClaimOutcome>),
    Send(
        NewMessage,
        Reply<SendOutcome>,
        Option<AfterCommit<SendOutcome>>,
    ),
    Ack {
        account: AccountId,
        seqs: Vec<u64>,
        now_ms: i64,
        notice_expires_at_ms: i64,
        reply: Reply<AckOutcome>,
        after: Option<AfterCommit<AckOutcome>>,
    },
    Expire {
        now_ms: i64,
        retention_ms: i64,
        notice_ttl_ms: i64,
        /// Notices a reader found past their deadline: `(owner, seq)`.
        stale_notices: Vec<(AccountId, i64)>,
        reply: Reply<ExpireOutcome>,
        after: Option<AfterCommit<ExpireOutcome>>,
    },
    AddInvite([u8; 32], Reply<()>),
}

/// Tuning of a [`Store`].
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

/// A read, run on one of the reader threads with its connection.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The store: a writer thread (with its syncer and checkpointer) and a
/// fixed pool of reader threads.
#[derive(Debug)]
pub struct Store {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    reads: Mutex<Option<std::sync::mpsc::Sender<ReadJob>>>,
    reader_threads: Mutex<Vec<JoinHandle<()>>>,
    path: PathBuf,
    stats: StoreStats,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE,
    noise_key BLOB NOT NULL UNIQUE,
    curve25519 BLOB NOT NULL,
    ed25519 BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS one_time_keys (
    account INTEGER NOT NULL,
    key_id BLOB NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    UNIQUE (account, key_id)
);
CREATE INDEX IF NOT EXISTS one_time_keys_account ON one_time_keys(account);
CREATE TABLE IF NOT EXISTS fallback_keys (
    account INTEGER PRIMARY KEY,
    key_id BLOB NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox (
    owner INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (owner, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mailbox_expiry ON mailbox(expires_at);
CREATE TABLE IF NOT EXISTS notices (
    owner INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (owner, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent (
    sender INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_time ON sent(accepted_at);
CREATE TABLE IF NOT EXISTS invites (
    token_hash BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Schema 1 (one `mailbox` table with a `kind` column and AUTOINCREMENT
/// seqs) to 2: messages and notices apart, seqs reserved in `meta`.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE mailbox RENAME TO mailbox_v1;
DROP INDEX IF EXISTS mailbox_owner;
DROP INDEX IF EXISTS mailbox_expiry;
";

/// Largest number of jobs committed together.
const BATCH_MAX: usize = 1024;
/// Jobs that may wait for the writer (back-pressure beyond this).
const QUEUE: usize = 8192;
/// Read connections.
const READERS: usize = 4;
/// Rows handled by one expiry sweep.
const EXPIRE_BATCH: i64 = 2000;
/// Seqs reserved in `meta` at a time.
const SEQ_RESERVE: i64 = 1 << 20;
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL size kept after a checkpoint (larger WAL files are truncated to it).
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;
/// Default least time between two commits while jobs keep coming (an idle
/// writer commits a lone job at once; `commit_interval` in the server
/// config). Measured on the benchmark machine: with back-to-back commits
/// (one per flush) the WAL took ~90 pages per commit and the disk's flushes
/// sometimes 50–100 ms under that volume; 3 ms between commits cut the slow
/// flushes and the p99 latency at half rate.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(3);
/// How long the writer waits for the syncer before looking for new jobs.
const SYNC_POLL: Duration = Duration::from_micros(200);
/// Prepared statements kept per connection (more than the store uses).
const STATEMENT_CACHE: usize = 64;
/// Page cache of each read connection, KiB (SQLite's default is 2 MiB).
const READER_CACHE_KIB: i64 = 256;
/// Page cache of the write connection, KiB.
const WRITER_CACHE_KIB: i64 = 16 << 10;

/// Creates the database file with mode 0600 if it does not exist yet
/// (SQLite gives its WAL and shared-memory files the same mode).
fn ensure_private_file(path: &Path) {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    // Already there (the usual case) or not creatable: SQLite reports the
    // real problem when it opens the file.
    let _ = opts.open(path);
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, rusqlite::Error> {
    if !read_only {
        ensure_private_file(path);
    }
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Creates the tables, or brings an older schema up to date.
fn init_schema(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let legacy = version == 1
        && tx
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
    if legacy {
        tx.execute_batch(MIGRATE_1_TO_2)?;
    }
    tx.execute_batch(SCHEMA)?;
    if legacy {
        tx.execute_batch(
            "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at)
                 SELECT owner, seq, peer, message_id, body, created_at, expires_at
                 FROM mailbox_v1 WHERE kind = 0;
             INSERT INTO notices (owner, seq, kind, peer, message_id, at, expires_at)
                 SELECT owner, seq, kind, peer, message_id, created_at, expires_at
                 FROM mailbox_v1 WHERE kind <> 0;
             INSERT OR REPLACE INTO meta (key, value)
                 SELECT 'seq_reserved', MAX(
                     (SELECT COALESCE(MAX(seq), 0) FROM mailbox_v1),
                     (SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence
                      WHERE name IN ('mailbox', 'mailbox_v1'))
                 ) + 1;
             DROP TABLE mailbox_v1;",
        )?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()
}

/// Hash under which an invite token is stored.
fn invite_hash(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ponte-invite-v1\n");
    h.update(token.as_bytes());
    h.finalize().into()
}

/// A fresh random invite token: 128 bits as 32 lowercase hex digits.
///
/// Hex rather than base64url: a base64url token starts with `-` one time in
/// 64, and a command line then reads it as a flag (`--invite -x…`). Hex is
/// also easier to read out over the phone. Tokens from older versions
/// (base64url) stay valid: the server only compares hashes.
fn new_invite_token() -> String {
    use rand::RngCore as _;
    use std::fmt::Write as _;
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Creates a random one-use invite token and stores it (works while a server
/// runs on the same data directory: SQLite serialises the writers).
pub fn create_invite(data_dir: &Path, now_ms: i64) -> Result<String, StoreError> {
    let token = new_invite_token();
    let mut conn = open_conn(&data_dir.join(DB_FILE), false)?;
    init_schema(&mut conn)?;
    conn.execute(
        "INSERT INTO invites (token_hash, created_at) VALUES (?1, ?2)",
        params![&invite_hash(&token)[..], now_ms],
    )?;
    Ok(token)
}

impl Store {
    /// Opens (creating or upgrading if needed) `DIR/ponte.db` and starts the
    /// writer, with default options.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// Like [`Store::open`], with options.
    pub fn open_with(data_dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
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
        let wal_path = wal_path(&path);
        let db_path = path.clone();
        let stats = StoreStats::new();
        let writer_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("ponte-db-writer".into())
            .spawn(move || {
                writer_main(
                    conn,
                    state,
                    opts.commit_interval,
                    checkpointer,
                    rx,
                    (wal_path, db_path),
                    writer_stats,
                )
            })
            .map_err(|_| StoreError::Task)?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reads: Mutex::new(Some(read_tx)),
            reader_threads: Mutex::new(reader_threads),
            path,
            stats,
        })
    }

    /// Commit, write and flush counters (shared handles; see [`StoreStats`]).
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Stops the writer after the queued jobs and waits for it (blocking).
    pub fn close(&self) {
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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Registers an account.
    pub async fn register(&self, a: NewAccount) -> Result<RegisterOutcome, StoreError> {
        self.submit(|r| Job::Register(a, r)).await
    }

    /// Adds one-time keys and/or replaces the fallback key.
    pub async fn upload_keys(
        &self,
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
    ) -> Result<UploadOutcome, StoreError> {
        self.submit(|reply| Job::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
            reply,
        })
        .await
    }

    /// Claims a key of `handle`.
    pub async fn claim(&self, handle: String) -> Result<ClaimOutcome, StoreError> {
        self.submit(|r| Job::Claim(handle, r)).await
    }

    /// Stores a message (durable when this returns `Accepted`).
    pub async fn send(&self, m: NewMessage) -> Result<SendOutcome, StoreError> {
        self.submit(|r| Job::Send(m, r, None)).await
    }

    /// Like [`Store::send`], and runs `after` with the outcome once it is
    /// durable: on the store's sync thread, in commit order (so a
    /// sender's messages are handed on in the order they were stored).
    pub async fn send_then(
        &self,
        m: NewMessage,
        after: impl FnOnce(&SendOutcome) + Send + 'static,
    ) -> Result<SendOutcome, StoreError> {
        self.submit(|r| Job::Send(m, r, Some(Box::new(after))))
            .await
    }

    /// Acknowledges mailbox items of `account` (unknown seqs are ignored);
    /// each acknowledged message becomes a delivery receipt for its sender.
    pub async fn ack(
        &self,
        account: AccountId,
        seqs: Vec<u64>,
        now_ms: i64,
        notice_expires_at_ms: i64,
    ) -> Result<AckOutcome, StoreError> {
        self.ack_job(account, seqs, now_ms, notice_expires_at_ms, None)
            .await
    }

    /// Like [`Store::ack`], and runs `after` with the outcome once it is
    /// durable, on the sync thread in commit order.
    pub async fn ack_then(
        &self,
        account: AccountId,
        seqs: Vec<u64>,
        now_ms: i64,
        notice_expires_at_ms: i64,
        after: impl FnOnce(&AckOutcome) + Send + 'static,
    ) -> Result<AckOutcome, StoreError> {
        let after: AfterCommit<AckOutcome> = Box::new(after);
        self.ack_job(account, seqs, now_ms, notice_expires_at_ms, Some(after))
            .await
    }

    async fn ack_job(
        &self,
        account: AccountId,
        seqs: Vec<u64>,
        now_ms: i64,
        notice_expires_at_ms: i64,
        after: Option<AfterCommit<AckOutcome>>,
    ) -> Result<AckOutcome, StoreError> {
        self.submit(|reply| Job::Ack {
            account,
            seqs,
            now_ms,
            notice_expires_at_ms,
            reply,
            after,
        })
        .await
    }

    /// Expires items past their deadline: messages become expired notices
    /// for their senders (kept `notice_ttl_ms`), uncollected notices are
    /// dropped, and the dedup log forgets ids older than `retention_ms`.
    pub async fn expire(
        &self,
        now_ms: i64,
        retention_ms: i64,
        notice_ttl_ms: i64,
    ) -> Result<ExpireOutcome, StoreError> {
        self.expire_inner(now_ms, retention_ms, notice_ttl_ms, None)
            .await
    }

    /// [`Store::expire`], with `after` run on the outcome once the sweep is
    /// durable, on the sync thread in commit order (before any later
    /// commit's hooks): the server wakes the senders of new notices there,
    /// so their connections read them before anything committed later is
    /// handed over in memory.
    pub async fn expire_then(
        &self,
        now_ms: i64,
        retention_ms: i64,
        notice_ttl_ms: i64,
        after: impl FnOnce(&ExpireOutcome) + Send + 'static,
    ) -> Result<ExpireOutcome, StoreError> {
        self.expire_inner(now_ms, retention_ms, notice_ttl_ms, Some(Box::new(after)))
            .await
    }

    async fn expire_inner(
        &self,
        now_ms: i64,
        retention_ms: i64,
        notice_ttl_ms: i64,
        after: Option<AfterCommit<ExpireOutcome>>,
    ) -> Result<ExpireOutcome, StoreError> {
        // Notices have no expiry index (they are written and deleted once per
        // delivered message, and an index would double that): a reader scans
        // for stale ones off the writer thread, and the writer deletes them.
        let stale_notices = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT owner, seq FROM notices WHERE expires_at <= ?1 LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now_ms, EXPIRE_BATCH], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await?;
        self.submit(|reply| Job::Expire {
            now_ms,
            retention_ms,
            notice_ttl_ms,
            stale_notices,
            reply,
            after,
        })
        .await
    }

    /// Stores an invite token (see also [`create_invite`]).
    pub async fn add_invite(&self, token: &str) -> Result<(), StoreError> {
        let h = invite_hash(token);
        self.submit(|r| Job::AddInvite(h, r)).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.reads
            .lock()
            .map_err(|_| StoreError::Closed)?
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        Ok(rx.await.map_err(|_| StoreError::Task)??)
    }

    /// The account bound to a device Noise key.
    pub async fn account_by_noise_key(
        &self,
        key: [u8; 32],
    ) -> Result<Option<AccountInfo>, StoreError> {
        self.read(move |c| account_where(c, "noise_key = ?1", &key.to_vec()))
            .await
    }

    /// The account of a device key with its key counts and waiting items:
    /// one read for a login.
    pub async fn login_info(&self, key: [u8; 32]) -> Result<Option<LoginInfo>, StoreError> {
        self.read(move |c| {
            let Some(account) = account_where(c, "noise_key = ?1", &key.to_vec())? else {
                return Ok(None);
            };
            let keys = key_counts(c, account.id)?;
            let pending = mailbox_len(c, account.id)?;
            Ok(Some(LoginInfo {
                account,
                keys,
                pending,
            }))
        })
        .await
    }

    /// The account with a handle.
    pub async fn account_by_handle(
        &self,
        handle: String,
    ) -> Result<Option<AccountInfo>, StoreError> {
        self.read(move |c| account_where(c, "handle = ?1", &handle))
            .await
    }

    /// One-time key count and fallback presence.
    pub async fn key_counts(&self, account: AccountId) -> Result<KeyCounts, StoreError> {
        self.read(move |c| key_counts(c, account)).await
    }

    /// Number of mailbox items (messages, receipts, notices) waiting for
    /// `account`.
    pub async fn mailbox_len(&self, account: AccountId) -> Result<u32, StoreError> {
        self.read(move |c| mailbox_len(c, account)).await
    }

    /// Up to `limit` mailbox items of `owner` after `after_seq`, in order.
    pub async fn fetch_mailbox(
        &self,
        owner: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<MailItem>, StoreError> {
        self.read(move |c| fetch_mailbox(c, owner, after_seq, limit))
            .await
    }
}

/// A reader thread: runs reads until the store closes. A read that panics
/// answers `StoreError::Task` (its reply is dropped) and the thread goes on.
fn reader_loop(conn: &Connection, jobs: &Mutex<std::sync::mpsc::Receiver<ReadJob>>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)));
    }
}

fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let c = open_conn(path, true)?;
    c.pragma_update(None, "query_only", true)?;
    // Readers mostly look up single rows (logins); the kernel's page cache
    // holds the file anyway, and SQLite's own cache is per connection.
    c.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    Ok(c)
}

fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Messages and notices of `owner` after `after_seq`, merged in seq order.
///
/// Both tables are read in one transaction, so from one snapshot. A
/// connection pushes what this returns and then skips anything handed over
/// in memory at or below the highest seq it pushed; that is only right if
/// the read holds every item up to that seq. Two snapshots could see a
/// receipt committed after a message yet miss the message: the message
/// would then wait for the device's next login.
fn fetch_mailbox(
    c: &Connection,
    owner: AccountId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<MailItem>, rusqlite::Error> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    // Read-only: ends with a rollback when dropped.
    let snapshot = c.unchecked_transaction()?;
    let c = &*snapshot;
    let mut out = Vec::new();
    {
        let mut stmt = c.prepare_cached(
            "SELECT m.seq, m.message_id, m.body, m.created_at, a.handle
             FROM mailbox m JOIN accounts a ON a.id = m.peer
             WHERE m.owner = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![owner, after, lim], |r| {
            Ok(MailItem {
                seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                kind: ItemKind::Message,
                message_id: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                body: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                at_ms: r.get(3)?,
                peer_handle: r.get(4)?,
            })
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    {
        let mut stmt = c.prepare_cached(
            "SELECT n.seq, n.kind, n.message_id, n.at, a.handle
             FROM notices n JOIN accounts a ON a.id = n.peer
             WHERE n.owner = ?1 AND n.seq > ?2 ORDER BY n.seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![owner, after, lim], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        for row in rows {
            let (seq, kind, id, at, peer) = row?;
            let Some(kind) = ItemKind::from_code(kind) else {
                continue;
            };
            out.push(MailItem {
                seq: u64::try_from(seq).unwrap_or(0),
                kind,
                message_id: Bytes::from(id),
                body: Bytes::new(),
                at_ms: at,
                peer_handle: peer,
            });
        }
    }
    out.sort_by_key(|i| i.seq);
    out.truncate(limit);
    Ok(out)
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn arr32(v: Vec<u8>) -> [u8; 32] {
    let mut a = [0u8; 32];
    if v.len() == 32 {
        a.copy_from_slice(&v);
    }
    a
}

fn account_where(
    c: &Connection,
    cond: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<AccountInfo>, rusqlite::Error> {
    let sql = format!(
        "SELECT id, handle, noise_key, curve25519, ed25519, signature FROM accounts WHERE {cond}"
    );
    c.prepare_cached(&sql)?
        .query_row([value], |r| {
            Ok(AccountInfo {
                id: r.get(0)?,
                handle: r.get(1)?,
                noise_key: arr32(r.get(2)?),
                curve25519: arr32(r.get(3)?),
                ed25519: arr32(r.get(4)?),
                signature: r.get(5)?,
            })
        })
        .optional()
}

fn mailbox_len(c: &Connection, account: AccountId) -> Result<u32, rusqlite::Error> {
    c.prepare_cached(
        "SELECT (SELECT COUNT(*) FROM mailbox WHERE owner = ?1)
              + (SELECT COUNT(*) FROM notices WHERE owner = ?1)",
    )?
    .query_row([account], |r| r.get::<_, u32>(0))
}

fn key_counts(c: &Connection, account: AccountId) -> Result<KeyCounts, rusqlite::Error> {
    let one_time_keys = c
        .prepare_cached("SELECT COUNT(*) FROM one_time_keys WHERE account = ?1")?
        .query_row([account], |r| r.get::<_, u32>(0))?;
    let has_fallback = c
        .prepare_cached("SELECT 1 FROM fallback_keys WHERE account = ?1")?
        .query_row([account], |_| Ok(()))
        .optional()?
        .is_some();
    Ok(KeyCounts {
        one_time_keys,
        has_fallback,
    })
}

/// What the writer keeps in memory next to its connection. Changes made by
/// a batch are undone if the batch rolls back.
struct WriterState {
    /// Next mailbox seq to hand out.
    next_seq: i64,
    /// Seqs below this are reserved in `meta` (committed or in this batch).
    reserved: i64,
    /// Waiting messages per recipient (only non-zero counts).
    pending: HashMap<AccountId, u32>,
    /// This batch's changes to `pending`, to undo on rollback.
    undo: Vec<(AccountId, bool)>,
}

impl WriterState {
    /// Reads the seq reservation and counts waiting messages.
    fn load(conn: &Connection) -> Result<Self, rusqlite::Error> {
        let reserved = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'seq_reserved'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(1)
            .max(1);
        let mut pending = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT owner, COUNT(*) FROM mailbox GROUP BY owner")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?)))?;
            for row in rows {
                let (owner, n) = row?;
                pending.insert(owner, n);
            }
        }
        Ok(Self {
            next_seq: reserved,
            reserved,
            pending,
            undo: Vec::new(),
        })
    }

    /// Hands out a seq, reserving a new range in `meta` when needed.
    fn alloc_seq(&mut self, c: &Connection) -> Result<i64, rusqlite::Error> {
        if self.next_seq >= self.reserved {
            let upto = self.next_seq.saturating_add(SEQ_RESERVE);
            c.prepare_cached(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_reserved', ?1)",
            )?
            .execute([upto])?;
            self.reserved = upto;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    fn pending(&self, account: AccountId) -> u32 {
        self.pending.get(&account).copied().unwrap_or(0)
    }

    fn add_pending(&mut self, account: AccountId) {
        *self.pending.entry(account).or_insert(0) += 1;
        self.undo.push((account, true));
    }

    fn sub_pending(&mut self, account: AccountId) {
        self.apply(account, false);
        self.undo.push((account, false));
    }

    fn apply(&mut self, account: AccountId, add: bool) {
        if add {
            *self.pending.entry(account).or_insert(0) += 1;
        } else if let Some(n) = self.pending.get_mut(&account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(&account);
            }
        }
    }

    /// Forgets the batch's changes (they were committed).
    fn commit(&mut self) {
        self.undo.clear();
    }

    /// Reverts the batch's changes (it rolled back).
    fn rollback(&mut self, c: &Connection) {
        let undo = std::mem::take(&mut self.undo);
        for (account, added) in undo.into_iter().rev() {
            self.apply(account, !added);
        }
        // The reservation may have rolled back too; seqs handed out in the
        // batch are simply skipped (next_seq never goes back).
        self.reserved = c
            .query_row(
                "SELECT value FROM meta WHERE key = 'seq_reserved'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0);
    }
}

/// A job's answer, sent once its batch is durable (or failed).
type Finisher = Box<dyn FnOnce(Option<&str>) + Send>;

fn finisher<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Finisher {
    finisher_then(reply, result, None)
}

fn finisher_then<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, StoreError>,
    after: Option<AfterCommit<T>>,
) -> Finisher {
    Box::new(move |commit_error: Option<&str>| {
        let r = match (commit_error, result) {
            (Some(e), Ok(_)) => Err(StoreError::CommitFailed(e.to_owned())),
            (_, r) => r,
        };
        if let (Ok(v), Some(after)) = (&r, after) {
            // The hook runs on the sync thread; a panic there must not stop
            // it (every later write would wait forever). The item is durable
            // either way: a device that missed the push gets it from the
            // database on its next login.
            let hook = std::panic::AssertUnwindSafe(|| after(v));
            if std::panic::catch_unwind(hook).is_err() {
                tracing::error!("a post-commit hook panicked; the store carries on");
            }
        }
        let _ = reply.send(r);
    })
}

/// The writer thread: starts the syncer and the checkpointer, runs batches
/// until the job queue closes, then stops them and checkpoints.
fn writer_main(
    conn: Connection,
    state: WriterState,
    commit_interval: Duration,
    checkpointer: Connection,
    rx: mpsc::Receiver<Job>,
    (wal, db): (PathBuf, PathBuf),
    stats: StoreStats,
) {
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<Vec<Finisher>>();
    let failed = Arc::new(AtomicBool::new(false));
    let outstanding = Arc::new((Mutex::new(0usize), Condvar::new()));
    let syncer = {
        let failed = Arc::clone(&failed);
        let outstanding = Arc::clone(&outstanding);
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("ponte-db-sync".into())
            .spawn(move || syncer_loop(sync_rx, (wal, db), failed, outstanding, &stats))
    };
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let caught_up = Arc::new(AtomicBool::new(false));
    let ckpt = std::thread::Builder::new()
        .name("ponte-db-ckpt".into())
        .spawn({
            let caught_up = Arc::clone(&caught_up);
            move || checkpoint_loop(checkpointer, stop_rx, &caught_up)
        });
    let mut w = Writer {
        conn,
        state,
        failed,
        caught_up,
        last_commit: Instant::now(),
        commit_interval,
        stats,
    };
    match syncer {
        Ok(syncer) => {
            let handle = SyncHandle {
                tx: Some(sync_tx),
                outstanding,
            };
            w.run(rx, &handle);
            drop(handle);
            let _ = syncer.join();
        }
        Err(e) => {
            tracing::error!("cannot start the database sync thread: {e}");
            w.failed.store(true, Ordering::Release);
            w.stats.failed.set(1);
            // Answer every job with an error until the store closes.
            let handle = SyncHandle {
                tx: None,
                outstanding,
            };
            w.run(rx, &handle);
        }
    }
    drop(stop_tx);
    if let Ok(ckpt) = ckpt {
        let _ = ckpt.join();
    }
    // Closing: copy the WAL into the database so it does not stay around.
    let _ = w.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Copies the WAL into the database file every `CHECKPOINT_EVERY` (passive:
/// never waits for the writer or readers) until `stop` closes.
fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>, caught_up: &AtomicBool) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // (busy, frames in the WAL, frames copied)
                let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                match r {
                    // Copied something: the writer can finish the rest cheaply
                    // and restart the WAL.
                    Ok((frames, copied)) if frames > 0 && copied > 0 => {
                        caught_up.store(true, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("checkpoint: {e}"),
                }
            }
            _ => return,
        }
    }
}

/// The writer's side of the syncer: committed batches go in, and the
/// writer can wait until every one of them is flushed.
struct SyncHandle {
    tx: Option<std::sync::mpsc::Sender<Vec<Finisher>>>,
    /// Batches handed over and not yet flushed.
    outstanding: Arc<(Mutex<usize>, Condvar)>,
}

impl SyncHandle {
    fn submit(&self, batch: Vec<Finisher>) {
        if batch.is_empty() {
            return;
        }
        let sent = match &self.tx {
            Some(tx) => {
                self.count(true);
                tx.send(batch).map_err(|e| {
                    // Never reaches the syncer: not outstanding either.
                    self.count(false);
                    e.0
                })
            }
            None => Err(batch),
        };
        if let Err(batch) = sent {
            for f in batch {
                f(Some("store closing"));
            }
        }
    }

    fn count(&self, up: bool) {
        if let Ok(mut n) = self.outstanding.0.lock() {
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    /// Waits up to `max` for the syncer to flush everything; true if idle.
    fn wait_idle(&self, max: Duration) -> bool {
        let (lock, cv) = &*self.outstanding;
        let Ok(n) = lock.lock() else {
            return true;
        };
        if *n == 0 {
            return true;
        }
        match cv.wait_timeout_while(n, max, |n| *n > 0) {
            Ok((n, _)) => *n == 0,
            Err(_) => true,
        }
    }
}

/// Makes committed batches durable (`fdatasync` of the WAL) and answers
/// their jobs. One sync covers every batch that arrived before it started.
fn syncer_loop(
    rx: std::sync::mpsc::Receiver<Vec<Finisher>>,
    (wal, db): (PathBuf, PathBuf),
    failed: Arc<AtomicBool>,
    outstanding: Arc<(Mutex<usize>, Condvar)>,
    stats: &StoreStats,
) {
    let mut file: Option<std::fs::File> = None;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let started = Instant::now();
        let res = sync_wal(&mut file, &wal, &db);
        stats.fsync_seconds.observe(started.elapsed().as_secs_f64());
        let err = match res {
            Ok(()) => None,
            Err(e) => {
                // After a failed fsync the kernel may have dropped the dirty
                // pages: nothing written since can be trusted to be on disk.
                tracing::error!(
                    "fsync of {} failed: {e}; the store refuses writes until restarted",
                    wal.display()
                );
                failed.store(true, Ordering::Release);
                stats.failed.set(1);
                Some(format!("fsync failed: {e}"))
            }
        };
        let flushed = batches.len();
        for f in batches.into_iter().flatten() {
            f(err.as_deref());
        }
        let (lock, cv) = &*outstanding;
        if let Ok(mut n) = lock.lock() {
            *n = n.saturating_sub(flushed);
        }
        cv.notify_all();
    }
}

/// `fdatasync` of the WAL file. The file is reopened if SQLite replaced it.
/// Without a WAL file everything committed is in the database file.
fn sync_wal(file: &mut Option<std::fs::File>, wal: &Path, db: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::metadata(wal) {
            Ok(meta) => {
                let same = match file {
                    Some(f) => f.metadata().is_ok_and(|m| m.ino() == meta.ino()),
                    None => false,
                };
                if !same {
                    *file = Some(std::fs::File::open(wal)?);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return std::fs::File::open(db)?.sync_data();
            }
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    if file.is_none() {
        *file = Some(std::fs::OpenOptions::new().write(true).open(wal)?);
    }
    match file {
        Some(f) => f.sync_data(),
        None => Ok(()),
    }
}

/// The write connection and its in-memory state.
struct Writer {
    conn: Connection,
    state: WriterState,
    /// An fsync failed: every further write is refused.
    failed: Arc<AtomicBool>,
    /// The checkpointer just copied the WAL: finishing it is cheap now.
    caught_up: Arc<AtomicBool>,
    /// When the last commit started.
    last_commit: Instant,
    /// Least time between commits under load.
    commit_interval: Duration,
    stats: StoreStats,
}

/// How a job ran inside the batch transaction.
enum Ran {
    /// Its answer, given once the batch is durable.
    Done(Finisher),
    /// A statement failed outside a savepoint: the whole batch rolls back.
    Abort(Finisher, String),
}

impl Writer {
    /// Runs jobs until the queue closes. A transaction stays open, taking
    /// jobs as they come, while the syncer is still flushing the previous
    /// commit; it commits as soon as the syncer is idle (or the batch is
    /// full). So commits follow the disk's pace: one per flush, each as
    /// large as the load makes it.
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, sync: &SyncHandle) {
        let mut done: Vec<Finisher> = Vec::new();
        let mut open = false;
        let mut jobs = 0usize;
        loop {
            let job = if open {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // Under steady load, commits at most every
                        // `commit_interval`: each commit writes every page
                        // it dirtied to the WAL, so fewer, larger commits
                        // write far less (and keep the disk's flushes short).
                        let since = self.last_commit.elapsed();
                        if since < self.commit_interval && jobs < BATCH_MAX {
                            std::thread::sleep((self.commit_interval - since).min(SYNC_POLL));
                            continue;
                        }
                        if jobs >= BATCH_MAX || sync.wait_idle(SYNC_POLL) {
                            self.commit(&mut done, sync);
                            open = false;
                            jobs = 0;
                        }
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.commit(&mut done, sync);
                        break;
                    }
                }
            } else {
                self.maybe_checkpoint();
                match rx.blocking_recv() {
                    Some(j) => j,
                    None => break,
                }
            };
            if self.failed.load(Ordering::Acquire) {
                fail_job(
                    job,
                    "storage failed earlier (fsync error); restart the server",
                );
                continue;
            }
            if !open {
                if let Err(e) = self.exec("BEGIN IMMEDIATE") {
                    fail_job(job, &e.to_string());
                    continue;
                }
                open = true;
            }
            jobs += 1;
            match run_job(&self.conn, &mut self.state, job) {
                Ran::Done(f) => done.push(f),
                Ran::Abort(f, e) => {
                    done.push(f);
                    self.abort(&mut done, &e);
                    open = false;
                    jobs = 0;
                    continue;
                }
            }
            if jobs >= BATCH_MAX {
                self.commit(&mut done, sync);
                open = false;
                jobs = 0;
            }
        }
    }

    fn exec(&self, sql: &str) -> Result<usize, rusqlite::Error> {
        self.conn.prepare_cached(sql)?.execute([])
    }

    /// Commits the open transaction and hands its answers to the syncer.
    fn commit(&mut self, done: &mut Vec<Finisher>, sync: &SyncHandle) {
        self.last_commit = Instant::now();
        if let Err(e) = self.exec("COMMIT") {
            self.abort(done, &e.to_string());
            return;
        }
        self.state.commit();
        self.stats.commits.inc();
        self.stats.commit_failing.set(0);
        self.stats.writes.inc_by(done.len() as u64);
        sync.submit(std::mem::take(done));
    }

    /// Rolls the open transaction back and answers its jobs with `e`.
    fn abort(&mut self, done: &mut Vec<Finisher>, e: &str) {
        tracing::error!("group commit failed: {e}");
        self.stats.commit_failures.inc();
        self.stats.commit_failing.set(1);
        let _ = self.conn.execute_batch("ROLLBACK");
        self.state.rollback(&self.conn);
        for f in done.drain(..) {
            f(Some(e));
        }
    }

    /// Between transactions, right after the checkpointer copied the WAL:
    /// finishes the checkpoint (only the frames added since) so the next
    /// commit restarts the WAL at its beginning instead of growing it. A
    /// checkpoint by another connection can never complete under steady
    /// writes, as frames keep coming while it runs.
    fn maybe_checkpoint(&mut self) {
        if self.caught_up.swap(false, Ordering::AcqRel) {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }
}

fn fail_job(job: Job, msg: &str) {
    let e = || StoreError::CommitFailed(msg.to_owned());
    match job {
        Job::Register(_, r) => drop(r.send(Err(e()))),
        Job::Upload { reply, .. } => drop(reply.send(Err(e()))),
        Job::Claim(_, r) => drop(r.send(Err(e()))),
        Job::Send(_, r, _) => drop(r.send(Err(e()))),
        Job::Ack { reply, .. } => drop(reply.send(Err(e()))),
        Job::Expire { reply, .. } => drop(reply.send(Err(e()))),
        Job::AddInvite(_, r) => drop(r.send(Err(e()))),
    }
}

/// Runs `f` in a savepoint: kept when it returns `Ok((_, true))`, rolled
/// back otherwise (for jobs that may write and then refuse).
fn in_savepoint<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<(T, bool), rusqlite::Error>,
) -> Result<T, StoreError> {
    let exec = |sql: &str| c.prepare_cached(sql).and_then(|mut s| s.execute([]));
    exec("SAVEPOINT job")?;
    let r = f(c);
    let keep = matches!(r, Ok((_, true)));
    if keep {
        exec("RELEASE job")?;
    } else {
        exec("ROLLBACK TO job")?;
        exec("RELEASE job")?;
    }
    Ok(r?.0)
}

/// Wraps the result of a job that runs without a savepoint: a statement
/// error leaves the transaction half-changed, so it aborts the batch.
fn direct<T: Send + 'static>(
    reply: Reply<T>,
    r: Result<T, rusqlite::Error>,
    after: Option<AfterCommit<T>>,
) -> Ran {
    match r {
        Ok(v) => Ran::Done(finisher_then(reply, Ok(v), after)),
        Err(e) => {
            let msg = e.to_string();
            Ran::Abort(finisher(reply, Err(e.into())), msg)
        }
    }
}

fn run_job(c: &Connection, st: &mut WriterState, job: Job) -> Ran {
    match job {
        Job::Register(a, reply) => {
            Ran::Done(finisher(reply, in_savepoint(c, |c| do_register(c, &a))))
        }
        Job::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
            reply,
        } => Ran::Done(finisher(
            reply,
            in_savepoint(c, |c| {
                do_upload(c, account, &one_time, fallback.as_ref(), max_one_time)
            }),
        )),
        Job::Claim(handle, reply) => {
            Ran::Done(finisher(reply, in_savepoint(c, |c| do_claim(c, &handle))))
        }
        Job::Send(m, reply, after) => direct(reply, do_send(c, st, &m), after),
        Job::Ack {
            account,
            seqs,
            now_ms,
            notice_expires_at_ms,
            reply,
            after,
        } => direct(
            reply,
            do_ack(c, st, account, &seqs, now_ms, notice_expires_at_ms),
            after,
        ),
        Job::Expire {
            now_ms,
            retention_ms,
            notice_ttl_ms,
            stale_notices,
            reply,
            after,
        } => direct(
            reply,
            do_expire(c, st, now_ms, retention_ms, notice_ttl_ms, &stale_notices),
            after,
        ),
        Job::AddInvite(hash, reply) => direct(
            reply,
            c.prepare_cached(
                "INSERT OR IGNORE INTO invites (token_hash, created_at) VALUES (?1, 0)",
            )
            .and_then(|mut s| s.execute([&hash[..]]))
            .map(|_| ()),
            None,
        ),
    }
}

fn do_register(c: &Connection, a: &NewAccount) -> Result<(RegisterOutcome, bool), rusqlite::Error> {
    let exists = |sql: &str, v: &dyn rusqlite::ToSql| -> Result<bool, rusqlite::Error> {
        Ok(c.prepare_cached(sql)?
            .query_row([v], |_| Ok(()))
            .optional()?
            .is_some())
    };
    if exists(
        "SELECT 1 FROM accounts WHERE noise_key = ?1",
        &&a.noise_key[..],
    )? {
        return Ok((RegisterOutcome::DeviceTaken, false));
    }
    if exists("SELECT 1 FROM accounts WHERE handle = ?1", &a.handle)? {
        return Ok((RegisterOutcome::HandleTaken, false));
    }
    if a.invite_required {
        let Some(token) = &a.invite else {
            return Ok((RegisterOutcome::InviteRequired, false));
        };
        let used = c.execute(
            "DELETE FROM invites WHERE token_hash = ?1",
            [&invite_hash(token)[..]],
        )?;
        if used == 0 {
            return Ok((RegisterOutcome::InviteInvalid, false));
        }
    }
    c.execute(
        "INSERT INTO accounts (handle, noise_key, curve25519, ed25519, signature, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            a.handle,
            &a.noise_key[..],
            &a.curve25519[..],
            &a.ed25519[..],
            a.signature,
            a.now_ms
        ],
    )?;
    Ok((RegisterOutcome::Created(c.last_insert_rowid()), true))
}

fn do_upload(
    c: &Connection,
    account: AccountId,
    one_time: &[KeyRecord],
    fallback: Option<&KeyRecord>,
    max_one_time: u32,
) -> Result<(UploadOutcome, bool), rusqlite::Error> {
    {
        let mut ins = c.prepare_cached(
            "INSERT OR IGNORE INTO one_time_keys (account, key_id, public_key, signature)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for k in one_time {
            ins.execute(params![account, k.key_id, &k.public_key[..], k.signature])?;
        }
    }
    if let Some(k) = fallback {
        c.execute(
            "INSERT OR REPLACE INTO fallback_keys (account, key_id, public_key, signature)
             VALUES (?1, ?2, ?3, ?4)",
            params![account, k.key_id, &k.public_key[..], k.signature],
        )?;
    }
    let counts = key_counts(c, account)?;
    if counts.one_time_keys > max_one_time {
        return Ok((UploadOutcome::LimitExceeded, false));
    }
    Ok((UploadOutcome::Stored(counts), true))
}

fn do_claim(c: &Connection, handle: &str) -> Result<(ClaimOutcome, bool), rusqlite::Error> {
    let Some(owner) = account_where(c, "handle = ?1", &handle)? else {
        return Ok((ClaimOutcome::UnknownHandle, false));
    };
    let otk = c
        .prepare_cached(
            "SELECT rowid, key_id, public_key, signature FROM one_time_keys
             WHERE account = ?1 ORDER BY rowid LIMIT 1",
        )?
        .query_row([owner.id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                KeyRecord {
                    key_id: r.get(1)?,
                    public_key: arr32(r.get(2)?),
                    signature: r.get(3)?,
                },
            ))
        })
        .optional()?;
    let (key, fallback) = match otk {
        Some((rowid, key)) => {
            c.execute("DELETE FROM one_time_keys WHERE rowid = ?1", [rowid])?;
            (key, false)
        }
        None => {
            let fb = c
                .prepare_cached(
                    "SELECT key_id, public_key, signature FROM fallback_keys WHERE account = ?1",
                )?
                .query_row([owner.id], |r| {
                    Ok(KeyRecord {
                        key_id: r.get(0)?,
                        public_key: arr32(r.get(1)?),
                        signature: r.get(2)?,
                    })
                })
                .optional()?;
            match fb {
                Some(k) => (k, true),
                None => return Ok((ClaimOutcome::NoKeys, false)),
            }
        }
    };
    let remaining = key_counts(c, owner.id)?.one_time_keys;
    Ok((
        ClaimOutcome::Claimed(Box::new(Claimed {
            owner,
            key,
            fallback,
            remaining,
        })),
        true,
    ))
}

/// The dedup log's accept time of `(sender, message_id)`, if it was seen.
fn seen(c: &Connection, m: &NewMessage) -> Result<Option<i64>, rusqlite::Error> {
    c.prepare_cached("SELECT accepted_at FROM sent WHERE sender = ?1 AND message_id = ?2")?
        .query_row(params![m.sender, &m.message_id[..]], |r| r.get::<_, i64>(0))
        .optional()
}

/// Stores a message. Checks come before writes, so a refused send changes
/// nothing; three statements on the common path (recipient lookup, dedup
/// insert, mailbox insert).
fn do_send(
    c: &Connection,
    st: &mut WriterState,
    m: &NewMessage,
) -> Result<SendOutcome, rusqlite::Error> {
    let recipient = c
        .prepare_cached("SELECT id FROM accounts WHERE handle = ?1")?
        .query_row([&m.recipient], |r| r.get::<_, i64>(0))
        .optional()?;
    let refused = match recipient {
        None => Some(SendOutcome::UnknownRecipient),
        Some(r) if st.pending(r) >= m.max_pending => Some(SendOutcome::MailboxFull),
        Some(_) => None,
    };
    // A retry of a message that was accepted is acknowledged again even if
    // the mailbox filled up since.
    if let Some(refused) = refused {
        return Ok(match seen(c, m)? {
            Some(accepted_at_ms) => SendOutcome::Duplicate { accepted_at_ms },
            None => refused,
        });
    }
    let Some(recipient) = recipient else {
        return Ok(SendOutcome::UnknownRecipient);
    };
    let fresh = c
        .prepare_cached(
            "INSERT INTO sent (sender, message_id, accepted_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![m.sender, &m.message_id[..], m.now_ms])?;
    if fresh == 0 {
        let accepted_at_ms = seen(c, m)?.unwrap_or(m.now_ms);
        return Ok(SendOutcome::Duplicate { accepted_at_ms });
    }
    let seq = st.alloc_seq(c)?;
    c.prepare_cached(
        "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        recipient,
        seq,
        m.sender,
        &m.message_id[..],
        &m.body[..],
        m.now_ms,
        m.expires_at_ms
    ])?;
    st.add_pending(recipient);
    Ok(SendOutcome::Accepted {
        recipient,
        seq: u64::try_from(seq).unwrap_or(0),
        accepted_at_ms: m.now_ms,
    })
}

/// Stores a receipt or expired notice for `owner` and returns its seq.
#[allow(clippy::too_many_arguments)]
fn insert_notice(
    c: &Connection,
    st: &mut WriterState,
    owner: AccountId,
    kind: ItemKind,
    peer: AccountId,
    message_id: &[u8],
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<i64, rusqlite::Error> {
    let seq = st.alloc_seq(c)?;
    c.prepare_cached(
        "INSERT INTO notices (owner, seq, kind, peer, message_id, at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        owner,
        seq,
        kind.code(),
        peer,
        message_id,
        now_ms,
        expires_at_ms
    ])?;
    Ok(seq)
}

/// Deletes acknowledged items of `account`; each message becomes a receipt
/// for its sender. Seqs of other owners or already gone are ignored.
fn do_ack(
    c: &Connection,
    st: &mut WriterState,
    account: AccountId,
    seqs: &[u64],
    now_ms: i64,
    notice_expires_at_ms: i64,
) -> Result<AckOutcome, rusqlite::Error> {
    let mut out = AckOutcome::default();
    for &seq in seqs {
        let Ok(seq) = i64::try_from(seq) else {
            continue;
        };
        let message = c
            .prepare_cached(
                "DELETE FROM mailbox WHERE owner = ?1 AND seq = ?2 RETURNING peer, message_id",
            )?
            .query_row(params![account, seq], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        let Some((peer, message_id)) = message else {
            out.notices += c
                .prepare_cached("DELETE FROM notices WHERE owner = ?1 AND seq = ?2")?
                .execute(params![account, seq])? as u64;
            continue;
        };
        st.sub_pending(account);
        let receipt_seq = insert_notice(
            c,
            st,
            peer,
            ItemKind::Receipt,
            account,
            &message_id,
            now_ms,
            notice_expires_at_ms,
        )?;
        out.messages += 1;
        out.receipts.push(StoredReceipt {
            owner: peer,
            seq: u64::try_from(receipt_seq).unwrap_or(0),
            message_id: Bytes::from(message_id),
            at_ms: now_ms,
        });
    }
    Ok(out)
}

fn do_expire(
    c: &Connection,
    st: &mut WriterState,
    now_ms: i64,
    retention_ms: i64,
    notice_ttl_ms: i64,
    stale_notices: &[(AccountId, i64)],
) -> Result<ExpireOutcome, rusqlite::Error> {
    let mut out = ExpireOutcome::default();
    let rows: Vec<(i64, i64, i64, Vec<u8>)> = {
        let mut stmt = c.prepare_cached(
            "SELECT owner, seq, peer, message_id FROM mailbox
             WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )?;
        let it = stmt.query_map(params![now_ms, EXPIRE_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        it.collect::<Result<_, _>>()?
    };
    out.more = rows.len() as i64 >= EXPIRE_BATCH || stale_notices.len() as i64 >= EXPIRE_BATCH;
    for (owner, seq, peer, message_id) in rows {
        c.prepare_cached("DELETE FROM mailbox WHERE owner = ?1 AND seq = ?2")?
            .execute(params![owner, seq])?;
        st.sub_pending(owner);
        insert_notice(
            c,
            st,
            peer,
            ItemKind::Expired,
            owner,
            &message_id,
            now_ms,
            now_ms.saturating_add(notice_ttl_ms),
        )?;
        out.expired_messages += 1;
        if !out.notify.contains(&peer) {
            out.notify.push(peer);
        }
    }
    for &(owner, seq) in stale_notices {
        out.dropped_notices += c
            .prepare_cached(
                "DELETE FROM notices WHERE owner = ?1 AND seq = ?2 AND expires_at <= ?3",
            )?
            .execute(params![owner, seq, now_ms])? as u64;
    }
    c.prepare_cached("DELETE FROM sent WHERE accepted_at < ?1")?
        .execute([now_ms.saturating_sub(retention_ms)])?;
    Ok(out)
}

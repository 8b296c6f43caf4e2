//! Durable storage in one SQLite file (`ponte.db` in the data directory):
//! accounts, public keys, mailboxes, the dedup log of sent message ids and
//! invite tokens.
//!
//! - **Writes** go to one writer thread that owns the only write connection.
//!   It takes every job waiting in its queue (up to a batch limit), runs each
//!   inside its own savepoint of one `BEGIN IMMEDIATE` transaction, commits
//!   once (group commit: one fsync for many sends), and only then answers the
//!   callers. With `journal_mode=WAL` and `synchronous=FULL` a committed
//!   transaction survives SIGKILL and power loss, so "answered" implies
//!   "durable".
//! - **Reads** use a small pool of read-only connections on the blocking
//!   thread pool; WAL lets them run while the writer commits.
//!
//! Mailbox items share one table and one sequence (`seq`, AUTOINCREMENT so a
//! seq is never reused and a stale ack can never delete a newer item):
//! kind 0 = message (owner = recipient, peer = sender), 1 = delivery receipt
//! and 2 = expired notice (owner = original sender, peer = original recipient).

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Database file name inside the data directory.
pub const DB_FILE: &str = "ponte.db";

/// Row id of an account.
pub type AccountId = i64;

/// Storage failures.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// What an acknowledgement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Messages deleted (a receipt was queued for each sender).
    pub messages: u64,
    /// Receipts and notices deleted.
    pub notices: u64,
    /// Accounts that got a receipt.
    pub notify: Vec<AccountId>,
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
    Send(NewMessage, Reply<SendOutcome>),
    Ack {
        account: AccountId,
        seqs: Vec<u64>,
        now_ms: i64,
        notice_expires_at_ms: i64,
        reply: Reply<AckOutcome>,
    },
    Expire {
        now_ms: i64,
        retention_ms: i64,
        notice_ttl_ms: i64,
        reply: Reply<ExpireOutcome>,
    },
    AddInvite([u8; 32], Reply<()>),
}

/// The store: a writer thread and a pool of readers.
#[derive(Debug)]
pub struct Store {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Semaphore,
    path: PathBuf,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE,
    noise_key BLOB NOT NULL UNIQUE,
    curve25519 BLOB NOT NULL,
    ed25519 BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0
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
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mailbox_owner ON mailbox(owner, seq);
CREATE INDEX IF NOT EXISTS mailbox_expiry ON mailbox(expires_at);
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
PRAGMA user_version = 1;
";

/// Largest number of jobs committed together.
const BATCH_MAX: usize = 512;
/// Jobs that may wait for the writer (back-pressure beyond this).
const QUEUE: usize = 4096;
/// Read connections.
const READERS: usize = 4;
/// Rows handled by one expiry sweep.
const EXPIRE_BATCH: i64 = 2000;

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
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Hash under which an invite token is stored.
fn invite_hash(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"ponte-invite-v1\n");
    h.update(token.as_bytes());
    h.finalize().into()
}

/// Creates a random one-use invite token and stores it (works while a server
/// runs on the same data directory: SQLite serialises the writers).
pub fn create_invite(data_dir: &Path, now_ms: i64) -> Result<String, StoreError> {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let conn = open_conn(&data_dir.join(DB_FILE), false)?;
    conn.execute_batch(SCHEMA)?;
    conn.execute(
        "INSERT INTO invites (token_hash, created_at) VALUES (?1, ?2)",
        params![&invite_hash(&token)[..], now_ms],
    )?;
    Ok(token)
}

impl Store {
    /// Opens (creating if needed) `DIR/ponte.db` and starts the writer.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let conn = open_conn(&path, false)?;
        conn.execute_batch(SCHEMA)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = open_conn(&path, true)?;
            r.pragma_update(None, "query_only", true)?;
            readers.push(r);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("ponte-db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|_| StoreError::Task)?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers: Mutex::new(readers),
            reader_slots: Semaphore::new(READERS),
            path,
        })
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
        if let Ok(mut r) = self.readers.lock() {
            r.clear();
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
        self.submit(|r| Job::Send(m, r)).await
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
        self.submit(|reply| Job::Ack {
            account,
            seqs,
            now_ms,
            notice_expires_at_ms,
            reply,
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
        self.submit(|reply| Job::Expire {
            now_ms,
            retention_ms,
            notice_ttl_ms,
            reply,
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
        let _slot = self
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = self.readers.lock().map_err(|_| StoreError::Closed)?.pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = open_conn(&self.path, true)?;
                c.pragma_update(None, "query_only", true)?;
                c
            }
        };
        let (conn, res) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .map_err(|_| StoreError::Task)?;
        if let Ok(mut r) = self.readers.lock() {
            r.push(conn);
        }
        Ok(res?)
    }

    /// The account bound to a device Noise key.
    pub async fn account_by_noise_key(
        &self,
        key: [u8; 32],
    ) -> Result<Option<AccountInfo>, StoreError> {
        self.read(move |c| account_where(c, "noise_key = ?1", &key.to_vec()))
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

    /// Number of mailbox items waiting for `account`.
    pub async fn mailbox_len(&self, account: AccountId) -> Result<u32, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM mailbox WHERE owner = ?1",
                [account],
                |r| r.get::<_, u32>(0),
            )
        })
        .await
    }

    /// Up to `limit` mailbox items of `owner` after `after_seq`, in order.
    pub async fn fetch_mailbox(
        &self,
        owner: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<MailItem>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.seq, m.kind, m.message_id, m.body, m.created_at, a.handle
                 FROM mailbox m JOIN accounts a ON a.id = m.peer
                 WHERE m.owner = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
            )?;
            let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![owner, after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, kind, id, body, at, peer) = row?;
                let Some(kind) = ItemKind::from_code(kind) else {
                    continue;
                };
                out.push(MailItem {
                    seq: u64::try_from(seq).unwrap_or(0),
                    kind,
                    message_id: Bytes::from(id),
                    body: Bytes::from(body),
                    at_ms: at,
                    peer_handle: peer,
                });
            }
            Ok(out)
        })
        .await
    }
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

/// The writer thread: group commit of everything queued.
fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, &mut batch);
    }
    // Queue closed: checkpoint so the WAL does not grow forever.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

type Finisher = Box<dyn FnOnce(Option<&str>)>;

fn finisher<T: 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Finisher {
    Box::new(move |commit_error: Option<&str>| {
        let r = match (commit_error, result) {
            (Some(e), Ok(_)) => Err(StoreError::CommitFailed(e.to_owned())),
            (_, r) => r,
        };
        let _ = reply.send(r);
    })
}

fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>) {
    let mut finishers: Vec<Finisher> = Vec::with_capacity(batch.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for job in batch.drain(..) {
                fail_job(job, &msg);
            }
            return;
        }
    };
    let mut tx = tx;
    for job in batch.drain(..) {
        finishers.push(run_job(&mut tx, job));
    }
    let commit = tx.commit().err().map(|e| e.to_string());
    if let Some(e) = &commit {
        tracing::error!("group commit failed: {e}");
    }
    for f in finishers {
        f(commit.as_deref());
    }
}

fn fail_job(job: Job, msg: &str) {
    let e = || StoreError::CommitFailed(msg.to_owned());
    match job {
        Job::Register(_, r) => drop(r.send(Err(e()))),
        Job::Upload { reply, .. } => drop(reply.send(Err(e()))),
        Job::Claim(_, r) => drop(r.send(Err(e()))),
        Job::Send(_, r) => drop(r.send(Err(e()))),
        Job::Ack { reply, .. } => drop(reply.send(Err(e()))),
        Job::Expire { reply, .. } => drop(reply.send(Err(e()))),
        Job::AddInvite(_, r) => drop(r.send(Err(e()))),
    }
}

/// Runs `f` in a savepoint: committed when it returns `Ok((_, true))`,
/// rolled back otherwise.
fn in_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<(T, bool), rusqlite::Error>,
) -> Result<T, StoreError> {
    let sp = tx.savepoint()?;
    match f(&sp) {
        Ok((v, true)) => {
            sp.commit()?;
            Ok(v)
        }
        Ok((v, false)) => {
            drop(sp);
            Ok(v)
        }
        Err(e) => {
            drop(sp);
            Err(e.into())
        }
    }
}

fn run_job(tx: &mut rusqlite::Transaction<'_>, job: Job) -> Finisher {
    match job {
        Job::Register(a, reply) => finisher(reply, in_savepoint(tx, |c| do_register(c, &a))),
        Job::Upload {
            account,
            one_time,
            fallback,
            max_one_time,
            reply,
        } => finisher(
            reply,
            in_savepoint(tx, |c| {
                do_upload(c, account, &one_time, fallback.as_ref(), max_one_time)
            }),
        ),
        Job::Claim(handle, reply) => finisher(reply, in_savepoint(tx, |c| do_claim(c, &handle))),
        Job::Send(m, reply) => finisher(reply, in_savepoint(tx, |c| do_send(c, &m))),
        Job::Ack {
            account,
            seqs,
            now_ms,
            notice_expires_at_ms,
            reply,
        } => finisher(
            reply,
            in_savepoint(tx, |c| {
                do_ack(c, account, &seqs, now_ms, notice_expires_at_ms).map(|v| (v, true))
            }),
        ),
        Job::Expire {
            now_ms,
            retention_ms,
            notice_ttl_ms,
            reply,
        } => finisher(
            reply,
            in_savepoint(tx, |c| {
                do_expire(c, now_ms, retention_ms, notice_ttl_ms).map(|v| (v, true))
            }),
        ),
        Job::AddInvite(hash, reply) => finisher(
            reply,
            in_savepoint(tx, |c| {
                c.execute(
                    "INSERT OR IGNORE INTO invites (token_hash, created_at) VALUES (?1, 0)",
                    [&hash[..]],
                )?;
                Ok(((), true))
            }),
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

fn do_send(c: &Connection, m: &NewMessage) -> Result<(SendOutcome, bool), rusqlite::Error> {
    let seen = c
        .prepare_cached("SELECT accepted_at FROM sent WHERE sender = ?1 AND message_id = ?2")?
        .query_row(params![m.sender, &m.message_id[..]], |r| r.get::<_, i64>(0))
        .optional()?;
    if let Some(accepted_at_ms) = seen {
        return Ok((SendOutcome::Duplicate { accepted_at_ms }, false));
    }
    let recipient = c
        .prepare_cached("SELECT id, pending FROM accounts WHERE handle = ?1")?
        .query_row([&m.recipient], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    let Some((recipient, pending)) = recipient else {
        return Ok((SendOutcome::UnknownRecipient, false));
    };
    if pending >= i64::from(m.max_pending) {
        return Ok((SendOutcome::MailboxFull, false));
    }
    c.prepare_cached(
        "INSERT INTO mailbox (owner, kind, peer, message_id, body, created_at, expires_at)
         VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        recipient,
        m.sender,
        &m.message_id[..],
        &m.body[..],
        m.now_ms,
        m.expires_at_ms
    ])?;
    let seq = c.last_insert_rowid();
    c.prepare_cached("UPDATE accounts SET pending = pending + 1 WHERE id = ?1")?
        .execute([recipient])?;
    c.prepare_cached("INSERT INTO sent (sender, message_id, accepted_at) VALUES (?1, ?2, ?3)")?
        .execute(params![m.sender, &m.message_id[..], m.now_ms])?;
    Ok((
        SendOutcome::Accepted {
            recipient,
            seq: u64::try_from(seq).unwrap_or(0),
            accepted_at_ms: m.now_ms,
        },
        true,
    ))
}

fn insert_notice(
    c: &Connection,
    owner: AccountId,
    kind: ItemKind,
    peer: AccountId,
    message_id: &[u8],
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<(), rusqlite::Error> {
    c.prepare_cached(
        "INSERT INTO mailbox (owner, kind, peer, message_id, body, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, x'', ?5, ?6)",
    )?
    .execute(params![
        owner,
        kind.code(),
        peer,
        message_id,
        now_ms,
        expires_at_ms
    ])?;
    Ok(())
}

fn do_ack(
    c: &Connection,
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
        let row = c
            .prepare_cached(
                "SELECT kind, peer, message_id FROM mailbox WHERE seq = ?1 AND owner = ?2",
            )?
            .query_row(params![seq, account], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()?;
        let Some((kind, peer, message_id)) = row else {
            continue;
        };
        c.prepare_cached("DELETE FROM mailbox WHERE seq = ?1")?
            .execute([seq])?;
        if kind == ItemKind::Message.code() {
            c.prepare_cached("UPDATE accounts SET pending = pending - 1 WHERE id = ?1")?
                .execute([account])?;
            insert_notice(
                c,
                peer,
                ItemKind::Receipt,
                account,
                &message_id,
                now_ms,
                notice_expires_at_ms,
            )?;
            out.messages += 1;
            if !out.notify.contains(&peer) {
                out.notify.push(peer);
            }
        } else {
            out.notices += 1;
        }
    }
    Ok(out)
}

fn do_expire(
    c: &Connection,
    now_ms: i64,
    retention_ms: i64,
    notice_ttl_ms: i64,
) -> Result<ExpireOutcome, rusqlite::Error> {
    let mut out = ExpireOutcome::default();
    let rows: Vec<(i64, i64, i64, i64, Vec<u8>)> = {
        let mut stmt = c.prepare_cached(
            "SELECT seq, owner, kind, peer, message_id FROM mailbox
             WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )?;
        let it = stmt.query_map(params![now_ms, EXPIRE_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        it.collect::<Result<_, _>>()?
    };
    out.more = rows.len() as i64 >= EXPIRE_BATCH;
    for (seq, owner, kind, peer, message_id) in rows {
        c.prepare_cached("DELETE FROM mailbox WHERE seq = ?1")?
            .execute([seq])?;
        if kind == ItemKind::Message.code() {
            c.prepare_cached("UPDATE accounts SET pending = pending - 1 WHERE id = ?1")?
                .execute([owner])?;
            insert_notice(
                c,
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
        } else {
            out.dropped_notices += 1;
        }
    }
    c.prepare_cached("DELETE FROM sent WHERE accepted_at < ?1")?
        .execute([now_ms.saturating_sub(retention_ms)])?;
    Ok(out)
}

//! Connections to the database file, its schema and the migrations from
//! every older version, in one place.
//!
//! The version is SQLite's `PRAGMA user_version`. A new database gets the
//! base tables ([`BASE`], version 2) and then every migration after it; an
//! older one gets the migrations past its version, all in one transaction.
//! A new table joins as a new entry of [`MIGRATIONS`].
//!
//! Seqs and times are stored as SQLite integers (signed: seqs stay far below
//! 2^63, and a seq read back negative would be a corrupt row, read as 0).

use super::types::{Seq, UnixMillis};
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, Transaction, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Prepared statements kept per connection (more than the store uses).
const STATEMENT_CACHE: usize = 64;

/// The version of [`BASE`].
const BASE_VERSION: i64 = 2;

/// The tables of a new database, at [`BASE_VERSION`].
const BASE: &str = "
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

/// One step up: brings a database from version `to - 1` to `to`.
struct Migration {
    to: i64,
    apply: fn(&Transaction<'_>) -> Result<(), rusqlite::Error>,
}

/// Every step after [`BASE_VERSION`] (and the one to it from the first
/// schema), in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 2,
        apply: v1_to_v2,
    },
    Migration {
        to: 3,
        apply: v2_to_v3,
    },
    Migration {
        to: 4,
        apply: v3_to_v4,
    },
];

/// The schema version this code writes.
fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.to).fold(BASE_VERSION, i64::max)
}

/// Creates the tables, or brings an older schema up to date.
pub(super) fn init_schema(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let from = if version == 0 {
        tx.execute_batch(BASE)?;
        BASE_VERSION
    } else {
        version
    };
    for m in MIGRATIONS.iter().filter(|m| m.to > from) {
        (m.apply)(&tx)?;
    }
    if version < latest_version() {
        tx.pragma_update(None, "user_version", latest_version())?;
    }
    tx.commit()
}

/// Schema 1 (one `mailbox` table with a `kind` column and AUTOINCREMENT
/// seqs) to 2: messages and notices apart, seqs reserved in `meta` above
/// every seq schema 1 handed out.
fn v1_to_v2(tx: &Transaction<'_>) -> Result<(), rusqlite::Error> {
    let legacy = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if legacy {
        tx.execute_batch(
            "ALTER TABLE mailbox RENAME TO mailbox_v1;
             DROP INDEX IF EXISTS mailbox_owner;
             DROP INDEX IF EXISTS mailbox_expiry;",
        )?;
    }
    tx.execute_batch(BASE)?;
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
    Ok(())
}

/// Schema 2 to 3: group message bodies, stored once in `bodies` with the
/// group's opaque id and the count of mailbox entries that refer to them
/// (deleted with the last); a group entry in `mailbox` has an empty `body`
/// and its body's `body_id` (NULL for 1:1 messages).
fn v2_to_v3(tx: &Transaction<'_>) -> Result<(), rusqlite::Error> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS bodies (
             id INTEGER PRIMARY KEY,
             group_id BLOB NOT NULL,
             body BLOB NOT NULL,
             refs INTEGER NOT NULL
         );
         ALTER TABLE mailbox ADD COLUMN body_id INTEGER;",
    )
}

/// Schema 3 to 4: blob metadata (`store::blobs`).
fn v3_to_v4(tx: &Transaction<'_>) -> Result<(), rusqlite::Error> {
    tx.execute_batch(super::blobs::TABLES)
}

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

pub(super) fn open_conn(path: &Path, read_only: bool) -> Result<Connection, rusqlite::Error> {
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

impl ToSql for Seq {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(i64::try_from(self.0).unwrap_or(i64::MAX)))
    }
}

impl FromSql for Seq {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(|v| Seq(u64::try_from(v).unwrap_or(0)))
    }
}

impl ToSql for UnixMillis {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

impl FromSql for UnixMillis {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(UnixMillis)
    }
}

//! `ponte server migrate --data DIR --to postgres://…`: copies a SQLite
//! service (accounts, keys, queued messages and notices, group bodies, the
//! dedup log, invites, blob metadata) into an empty PostgreSQL database, in
//! one transaction, keeping every id and seq, so clients continue without
//! registering again and acks of items pushed before still match. The
//! sequences are set past everything copied (the mailbox seq past the
//! SQLite reservation, so no seq is ever handed out twice).

use super::{block_on_own_thread, open_pool, parse_address, schema, PgError, PgOptions};
use crate::store::schema::{init_schema, open_conn};
use crate::store::DB_FILE;
use rusqlite::types::Value;
use std::path::Path;
use thiserror::Error;

/// What a migration copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateSummary {
    /// Rows copied per table, in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

/// Why a migration did not happen (nothing was written to PostgreSQL).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Reading the SQLite database failed.
    #[error("reading the SQLite database")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing to PostgreSQL failed.
    #[error("writing to PostgreSQL")]
    Postgres(#[from] PgError),
    /// The target already holds accounts: migrating into it would mix two
    /// services.
    #[error("the PostgreSQL database already holds accounts: migrate into an empty one")]
    NotEmpty,
}

/// One table's copy: the SQLite query and the PostgreSQL insert, with the
/// same columns in the same order. `b` columns are booleans in PostgreSQL
/// (integers in SQLite).
struct Table {
    name: &'static str,
    select: &'static str,
    insert: &'static str,
    bools: &'static [usize],
}

const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        select: "SELECT id, handle, noise_key, curve25519, ed25519, signature, created_at,
                        (SELECT COUNT(*) FROM mailbox m WHERE m.owner = a.id)
                 FROM accounts a ORDER BY id",
        insert: "INSERT INTO accounts (id, handle, noise_key, curve25519, ed25519, signature,
                                       created_at, pending)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        bools: &[],
    },
    Table {
        name: "one_time_keys",
        // In rowid order: the order keys are claimed in.
        select: "SELECT account, key_id, public_key, signature FROM one_time_keys ORDER BY rowid",
        insert: "INSERT INTO one_time_keys (account, key_id, public_key, signature)
                 VALUES ($1, $2, $3, $4)",
        bools: &[],
    },
    Table {
        name: "fallback_keys",
        select: "SELECT account, key_id, public_key, signature FROM fallback_keys",
        insert: "INSERT INTO fallback_keys (account, key_id, public_key, signature)
                 VALUES ($1, $2, $3, $4)",
        bools: &[],
    },
    Table {
        name: "bodies",
        select: "SELECT id, group_id, body, refs FROM bodies ORDER BY id",
        insert: "INSERT INTO bodies (id, group_id, body, refs) VALUES ($1, $2, $3, $4)",
        bools: &[],
    },
    Table {
        name: "mailbox",
        select: "SELECT owner, seq, peer, message_id, body, created_at, expires_at, body_id
                 FROM mailbox ORDER BY seq",
        insert: "INSERT INTO mailbox (owner, seq, peer, message_id, body, created_at,
                                      expires_at, body_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        bools: &[],
    },
    Table {
        name: "notices",
        select: "SELECT owner, seq, kind, peer, message_id, at, expires_at FROM notices
                 ORDER BY seq",
        insert: "INSERT INTO notices (owner, seq, kind, peer, message_id, at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
        bools: &[],
    },
    Table {
        name: "sent",
        select: "SELECT sender, message_id, accepted_at FROM sent",
        insert: "INSERT INTO sent (sender, message_id, accepted_at) VALUES ($1, $2, $3)",
        bools: &[],
    },
    Table {
        name: "invites",
        select: "SELECT token_hash, created_at FROM invites",
        insert: "INSERT INTO invites (token_hash, created_at) VALUES ($1, $2)",
        bools: &[],
    },
    Table {
        name: "blobs",
        select: "SELECT id, owner, size, sha256, offset, recipients, finished, created_at,
                        expires_at FROM blobs",
        insert: "INSERT INTO blobs (id, owner, size, sha256, acked, recipients, finished,
                                    created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        bools: &[6],
    },
    Table {
        name: "blob_fetches",
        select: "SELECT blob, account FROM blob_fetches",
        insert: "INSERT INTO blob_fetches (blob, account) VALUES ($1, $2)",
        bools: &[],
    },
];

/// A SQLite value as a PostgreSQL parameter (integers as BIGINT, or
/// BOOLEAN in the `bools` columns; blobs as BYTEA; text as TEXT).
#[derive(Debug)]
enum Param {
    Int(Option<i64>),
    Bool(bool),
    Bytes(Vec<u8>),
    Text(String),
}

impl Param {
    fn of(v: Value, boolean: bool) -> Self {
        match v {
            Value::Integer(i) if boolean => Param::Bool(i != 0),
            Value::Integer(i) => Param::Int(Some(i)),
            Value::Null => Param::Int(None),
            Value::Blob(b) => Param::Bytes(b),
            Value::Text(t) => Param::Text(t),
            // No store column holds a float.
            Value::Real(r) => Param::Int(Some(r as i64)),
        }
    }

    fn sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Int(i) => i,
            Param::Bool(b) => b,
            Param::Bytes(b) => b,
            Param::Text(t) => t,
        }
    }
}

/// Reads every table of `DIR/ponte.db` (brought up to date first), as
/// parameters, and the seq reservation.
/// Every table's rows, in [`TABLES`] order.
type Rows = Vec<Vec<Vec<Param>>>;

fn read_sqlite(data_dir: &Path) -> Result<(Rows, i64), MigrateError> {
    let mut conn = open_conn(&data_dir.join(DB_FILE), false)?;
    init_schema(&mut conn)?;
    let snapshot = conn.transaction()?;
    let mut all = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        let mut stmt = snapshot.prepare(t.select)?;
        let n = stmt.column_count();
        let rows = stmt.query_map([], |r| {
            (0..n)
                .map(|i| Ok(Param::of(r.get::<_, Value>(i)?, t.bools.contains(&i))))
                .collect::<Result<Vec<_>, rusqlite::Error>>()
        })?;
        all.push(rows.collect::<Result<Vec<_>, _>>()?);
    }
    let reserved: i64 = snapshot.query_row(
        "SELECT MAX(
             COALESCE((SELECT value FROM meta WHERE key = 'seq_reserved'), 1),
             COALESCE((SELECT MAX(seq) FROM mailbox), 0) + 1,
             COALESCE((SELECT MAX(seq) FROM notices), 0) + 1)",
        [],
        |r| r.get(0),
    )?;
    Ok((all, reserved))
}

/// Copies the SQLite service in `data_dir` into the empty PostgreSQL
/// database at `address` (creating its schema), in one transaction. The
/// caller makes sure no server runs on `data_dir`.
pub fn migrate_sqlite(data_dir: &Path, address: &str) -> Result<MigrateSummary, MigrateError> {
    let (rows, reserved) = read_sqlite(data_dir)?;
    let cfg = parse_address(address)?;
    let opts = PgOptions::default();
    let summary = block_on_own_thread(async move {
        let pool = open_pool(&cfg, 1, &opts).await?;
        schema::migrate(&pool).await?;
        let mut c = pool.get().await?;
        let tx = c.transaction().await?;
        let accounts: i64 = tx
            .query_one("SELECT COUNT(*) FROM accounts", &[])
            .await?
            .try_get(0)?;
        if accounts > 0 {
            return Ok(None);
        }
        let mut summary = MigrateSummary::default();
        for (t, rows) in TABLES.iter().zip(&rows) {
            let st = tx.prepare(t.insert).await?;
            for row in rows {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    row.iter().map(Param::sql).collect();
                tx.execute(&st, &params).await?;
            }
            summary.tables.push((t.name, rows.len() as u64));
        }
        // Past everything copied: identities, and the one mailbox sequence
        // (its next value is the SQLite reservation, above every seq it
        // ever handed out).
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('accounts', 'id'),
                           GREATEST((SELECT MAX(id) FROM accounts), 1));
             SELECT setval(pg_get_serial_sequence('one_time_keys', 'id'),
                           GREATEST((SELECT MAX(id) FROM one_time_keys), 1));
             SELECT setval(pg_get_serial_sequence('bodies', 'id'),
                           GREATEST((SELECT MAX(id) FROM bodies), 1));",
        )
        .await?;
        tx.execute(
            "SELECT setval('mailbox_seq', $1, false)",
            &[&reserved.max(1)],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(summary))
    })?;
    summary.ok_or(MigrateError::NotEmpty)
}

//! Reads: a fixed pool of reader threads (`ponte-db-read0..3`), each with
//! its own read-only connection (WAL readers run while the writer commits),
//! and the queries they run.

use super::schema::open_conn;
use super::types::*;
use super::{SqliteStore, StoreError};
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// A read, run on one of the reader threads with its connection.
pub(super) type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Read connections.
pub(super) const READERS: usize = 4;
/// Page cache of each read connection, KiB (SQLite's default is 2 MiB).
const READER_CACHE_KIB: i64 = 256;

impl SqliteStore {
    pub(super) async fn read<T: Send + 'static>(
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
}

/// The account of a device key with its key counts and waiting items.
pub(super) fn login_info(
    c: &Connection,
    noise_key: &[u8; 32],
) -> Result<Option<LoginInfo>, rusqlite::Error> {
    let Some(account) = account_where(c, "noise_key = ?1", &noise_key.to_vec())? else {
        return Ok(None);
    };
    let keys = key_counts(c, account.id)?;
    let pending = mailbox_len(c, account.id)?;
    Ok(Some(LoginInfo {
        account,
        keys,
        pending,
    }))
}

/// A reader thread: runs reads until the store closes. A read that panics
/// answers `StoreError::Task` (its reply is dropped) and the thread goes on.
pub(super) fn reader_loop(conn: &Connection, jobs: &Mutex<std::sync::mpsc::Receiver<ReadJob>>) {
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

pub(super) fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let c = open_conn(path, true)?;
    c.pragma_update(None, "query_only", true)?;
    // Readers mostly look up single rows (logins); the kernel's page cache
    // holds the file anyway, and SQLite's own cache is per connection.
    c.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    Ok(c)
}

/// Messages and notices of `owner` after `after`, merged in seq order.
///
/// Both tables are read in one transaction, so from one snapshot. A
/// connection pushes what this returns and then skips anything handed over
/// in memory at or below the highest seq it pushed; that is only right if
/// the read holds every item up to that seq. Two snapshots could see a
/// receipt committed after a message yet miss the message: the message
/// would then wait for the device's next login.
pub(super) fn fetch_mailbox(
    c: &Connection,
    owner: AccountId,
    after: Seq,
    limit: usize,
) -> Result<Vec<MailItem>, rusqlite::Error> {
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    // Read-only: ends with a rollback when dropped.
    let snapshot = c.unchecked_transaction()?;
    let c = &*snapshot;
    let mut out = Vec::new();
    {
        let mut stmt = c.prepare_cached(
            "SELECT m.seq, m.message_id, COALESCE(b.body, m.body), m.created_at, a.handle,
                    b.group_id
             FROM mailbox m JOIN accounts a ON a.id = m.peer
             LEFT JOIN bodies b ON b.id = m.body_id
             WHERE m.owner = ?1 AND m.seq > ?2 ORDER BY m.seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![owner, after, lim], |r| {
            Ok(MailItem {
                seq: r.get(0)?,
                kind: ItemKind::Message,
                message_id: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                body: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                at: r.get(3)?,
                peer_handle: r.get(4)?,
                group_id: r.get::<_, Option<Vec<u8>>>(5)?.map(Bytes::from),
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
                r.get::<_, Seq>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, UnixMillis>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        for row in rows {
            let (seq, kind, id, at, peer) = row?;
            let Some(kind) = ItemKind::from_code(kind) else {
                continue;
            };
            out.push(MailItem {
                seq,
                kind,
                message_id: Bytes::from(id),
                body: Bytes::new(),
                at,
                peer_handle: peer,
                group_id: None,
            });
        }
    }
    out.sort_by_key(|i| i.seq);
    out.truncate(limit);
    Ok(out)
}

pub(super) fn arr32(v: Vec<u8>) -> [u8; 32] {
    let mut a = [0u8; 32];
    if v.len() == 32 {
        a.copy_from_slice(&v);
    }
    a
}

pub(super) fn account_where(
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

pub(super) fn mailbox_len(c: &Connection, account: AccountId) -> Result<u32, rusqlite::Error> {
    c.prepare_cached(
        "SELECT (SELECT COUNT(*) FROM mailbox WHERE owner = ?1)
              + (SELECT COUNT(*) FROM notices WHERE owner = ?1)",
    )?
    .query_row([account], |r| r.get::<_, u32>(0))
}

pub(super) fn key_counts(c: &Connection, account: AccountId) -> Result<KeyCounts, rusqlite::Error> {
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

/// Up to `limit` notices past their deadline at `now_ms`: `(owner, seq)`.
pub(super) fn stale_notices(
    c: &Connection,
    now: UnixMillis,
    limit: i64,
) -> Result<Vec<(AccountId, Seq)>, rusqlite::Error> {
    let mut stmt =
        c.prepare_cached("SELECT owner, seq FROM notices WHERE expires_at <= ?1 LIMIT ?2")?;
    let rows = stmt.query_map(params![now, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

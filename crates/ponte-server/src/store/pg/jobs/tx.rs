//! The open transaction of a batch ([`Tx`]): the statement helpers, the
//! account locks it holds and the waiting-message counts of the locked
//! accounts, written back once before the commit.

use super::super::write::remember_handle;
use super::super::PgError;
use crate::store::types::*;
use deadpool_postgres::ClientWrapper;
use std::collections::{HashMap, HashSet};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Writes the waiting-message counts of a batch back (one statement, sent
/// with the `COMMIT`): `$1` ids, `$2` counts.
pub(in crate::store::pg) const FLUSH_PENDING: &str = "UPDATE accounts AS a SET pending = v.p
     FROM unnest($1::bigint[], $2::bigint[]) AS v(id, p) WHERE a.id = v.id";

/// The open transaction of a batch.
pub(in crate::store::pg) struct Tx<'a> {
    pub(super) c: &'a ClientWrapper,
    /// Accounts locked by this transaction, with their waiting messages as
    /// this transaction leaves them (`None`: no such account).
    pub(super) locked: HashMap<AccountId, Option<i64>>,
    /// Locked accounts whose count changed.
    pub(super) dirty: HashSet<AccountId>,
    /// The ids of the handles locked by [`Tx::lock_many`], so that a send
    /// to one of them needs no statement of its own to find and lock its
    /// recipient. Only handles found: one not found is looked up again (a
    /// registration earlier in the batch may have made it).
    pub(super) by_handle: HashMap<String, AccountId>,
    pub(super) handover: Vec<Committed>,
    pub(super) handles: &'a mut HashMap<AccountId, String>,
}

impl<'a> Tx<'a> {
    pub(in crate::store::pg) fn new(
        c: &'a ClientWrapper,
        handles: &'a mut HashMap<AccountId, String>,
    ) -> Self {
        Self {
            c,
            locked: HashMap::new(),
            dirty: HashSet::new(),
            by_handle: HashMap::new(),
            handover: Vec::new(),
            handles,
        }
    }

    pub(super) async fn query(&self, sql: &str, p: &Params<'_>) -> Result<Vec<Row>, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.query(&st, p).await?)
    }

    pub(super) async fn opt(&self, sql: &str, p: &Params<'_>) -> Result<Option<Row>, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.query_opt(&st, p).await?)
    }

    pub(super) async fn one(&self, sql: &str, p: &Params<'_>) -> Result<Row, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.query_one(&st, p).await?)
    }

    pub(super) async fn exec(&self, sql: &str, p: &Params<'_>) -> Result<u64, PgError> {
        let st = self.c.prepare_cached(sql).await?;
        Ok(self.c.execute(&st, p).await?)
    }

    pub(super) async fn simple(&self, sql: &str) -> Result<(), PgError> {
        Ok(self.c.batch_execute(sql).await?)
    }

    /// Locks the row of `account` (once per transaction); its waiting
    /// messages, `None` if there is no such account.
    pub(super) async fn lock(&mut self, account: AccountId) -> Result<Option<i64>, PgError> {
        if let Some(p) = self.locked.get(&account) {
            return Ok(*p);
        }
        let p = self
            .opt(
                "SELECT pending FROM accounts WHERE id = $1 FOR NO KEY UPDATE",
                &[&account],
            )
            .await?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?;
        self.locked.insert(account, p);
        Ok(p)
    }

    /// Looks up and locks the account with `handle`: its id and waiting
    /// messages.
    pub(super) async fn lock_handle(
        &mut self,
        handle: &str,
    ) -> Result<Option<(AccountId, i64)>, PgError> {
        if let Some(id) = self.by_handle.get(handle) {
            if let Some(Some(p)) = self.locked.get(id) {
                return Ok(Some((*id, *p)));
            }
        }
        let row = self
            .opt(
                "SELECT id, pending FROM accounts WHERE handle = $1 FOR NO KEY UPDATE",
                &[&handle],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: AccountId = row.try_get(0)?;
        let stored: i64 = row.try_get(1)?;
        let p = *self.locked.entry(id).or_insert(Some(stored));
        Ok(Some((id, p.unwrap_or(stored))))
    }

    /// Locks the rows of the accounts `ids`, those with `handles` and the
    /// senders of the `acked` items, all in one statement, in id order (see
    /// [`super::lock_all`]). The senders are gathered into the id array
    /// first (an init plan, run once), so that every condition stays an
    /// index lookup.
    pub(super) async fn lock_many(
        &mut self,
        ids: &[AccountId],
        handles: &[String],
        acked: &super::Acked,
    ) -> Result<(), PgError> {
        let rows = self
            .query(
                "SELECT id, pending, handle FROM accounts
                 WHERE id = ANY($1::bigint[] || ARRAY(
                           SELECT m.peer FROM unnest($3::bigint[], $4::bigint[]) AS w(o, s)
                           JOIN mailbox m ON m.owner = w.o AND m.seq = w.s))
                    OR handle = ANY($2)
                 ORDER BY id FOR NO KEY UPDATE",
                &[&ids, &handles, &acked.owners, &acked.seqs],
            )
            .await?;
        for r in &rows {
            let id: AccountId = r.try_get(0)?;
            let pending: i64 = r.try_get(1)?;
            let handle: String = r.try_get(2)?;
            self.locked.entry(id).or_insert(Some(pending));
            self.by_handle.insert(handle, id);
        }
        // An id without a row: no such account (as `lock` would find).
        for id in ids {
            self.locked.entry(*id).or_insert(None);
        }
        Ok(())
    }

    /// Adds `d` to the waiting messages of a locked account.
    pub(super) fn add_pending(&mut self, account: AccountId, d: i64) {
        if let Some(Some(p)) = self.locked.get_mut(&account) {
            *p = (*p + d).max(0);
            self.dirty.insert(account);
        }
    }

    /// The changed counts to write back before the commit (ids and
    /// counts, pairwise, for [`FLUSH_PENDING`]); `None` if none changed.
    pub(in crate::store::pg) fn pending_counts(&self) -> Option<(Vec<i64>, Vec<i64>)> {
        if self.dirty.is_empty() {
            return None;
        }
        Some(
            self.dirty
                .iter()
                .filter_map(|id| self.locked.get(id).copied().flatten().map(|p| (*id, p)))
                .unzip(),
        )
    }

    pub(in crate::store::pg) fn into_handover(self) -> Vec<Committed> {
        self.handover
    }

    /// The handle of `account` as its peers see it (`None` without a row).
    pub(super) async fn handle_of(
        &mut self,
        account: AccountId,
    ) -> Result<Option<String>, PgError> {
        if let Some(h) = self.handles.get(&account) {
            return Ok(Some(h.clone()));
        }
        let h: Option<String> = self
            .opt("SELECT handle FROM accounts WHERE id = $1", &[&account])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if let Some(h) = &h {
            remember_handle(self.handles, account, h);
        }
        Ok(h)
    }

    /// Runs `keep_if` in a savepoint, kept only when it says so.
    pub(super) async fn savepoint_end(&self, keep: bool) -> Result<(), PgError> {
        if keep {
            self.simple("RELEASE SAVEPOINT job").await
        } else {
            self.simple("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                .await
        }
    }
}

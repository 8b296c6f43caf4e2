//! The writer (`ponte-pg-writer`): takes every queued job (up to the batch
//! limit), runs them in one transaction, commits, hands the batch's items
//! to the sink and answers the jobs, in that order.

use super::jobs::{self, Tx};
use super::{PgError, PgOptions};
use crate::store::seam::Sink;
use crate::store::types::*;
use crate::store::{BlobCreateOutcome, BlobId, CommitError, NewBlob, StoreError, StoreStats};
use deadpool_postgres::{Object, Pool};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often a batch that conflicted with another node's transaction
/// (deadlock, lock timeout, serialization failure) is run again before its
/// jobs are answered with the error.
pub const MAX_RETRIES: u32 = 5;

/// Most account handles the writer keeps (a handle never changes for its
/// account; looking one up per item handed over costs a round trip).
const MAX_CACHED_HANDLES: usize = 65_536;

/// A write job's input: owned, so that a batch can run again.
#[derive(Debug)]
pub(super) enum Work {
    Register(NewAccount),
    Upload {
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
    },
    Claim(String),
    Send(NewMessage),
    SendGroup(NewGroupMessage),
    Ack {
        account: AccountId,
        seqs: Vec<Seq>,
        now: UnixMillis,
        notice_expires_at: UnixMillis,
    },
    Expire {
        now: UnixMillis,
        retention: Duration,
        notice_ttl: Duration,
    },
    BlobCreate(NewBlob),
    BlobAdvance(BlobId, u64, u64),
    BlobFinish(BlobId),
    BlobFetched(BlobId, AccountId),
    BlobDelete(Vec<BlobId>),
}

/// A write job's answer.
#[derive(Debug)]
pub(super) enum Done {
    Register(RegisterOutcome),
    Upload(UploadOutcome),
    Claim(ClaimOutcome),
    Send(SendOutcome),
    Group(GroupSendOutcome),
    Ack(AckOutcome),
    Expire(ExpireOutcome),
    BlobCreate(BlobCreateOutcome),
    Flag(bool),
    Unit,
    Count(u64),
}

/// A job waiting for the writer.
pub(super) struct Queued {
    pub work: Work,
    pub reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// Why an attempt at a batch did not commit.
enum Failure {
    /// Job `i` failed on its own (a statement PostgreSQL refused): it is
    /// answered with the error, the others run again.
    Job(usize, PgError),
    /// A conflict with another transaction: the whole batch may run again.
    Conflict(PgError),
    /// The connection or the database failed: every job gets the error.
    Batch(PgError),
}

/// A connection that goes back to the pool only when released; dropped
/// otherwise (mid-transaction, after a timeout), so that no half-done
/// transaction is ever reused: PostgreSQL rolls it back when the
/// connection closes.
struct Held(Option<Object>);

impl Held {
    fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            drop(Object::take(o));
        }
    }
}

pub(super) struct Writer {
    pool: Pool,
    sink: Arc<dyn Sink>,
    stats: StoreStats,
    opts: PgOptions,
    handles: HashMap<AccountId, String>,
}

impl Writer {
    pub(super) fn new(pool: Pool, sink: Arc<dyn Sink>, stats: StoreStats, opts: PgOptions) -> Self {
        Self {
            pool,
            sink,
            stats,
            opts,
            handles: HashMap::new(),
        }
    }

    /// The thread's body: batches until the queue closes and is drained.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start the PostgreSQL writer's runtime: {e}");
                // Dropping the receiver answers every job with `Closed`.
                return;
            }
        };
        rt.block_on(async {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < self.opts.batch_max.max(1) {
                    match rx.try_recv() {
                        Ok(q) => batch.push(q),
                        Err(_) => break,
                    }
                }
                self.batch(batch).await;
            }
        });
        self.pool.close();
    }

    /// Runs `jobs` until they are committed or answered with an error.
    async fn batch(&mut self, mut jobs: Vec<Queued>) {
        let mut conflicts = 0u32;
        loop {
            let limit = self.opts.batch_timeout;
            let attempt = tokio::time::timeout(limit, self.attempt(&jobs)).await;
            let failure = match attempt {
                Ok(Ok((answers, handover))) => {
                    self.stats.commits.inc();
                    self.stats.commit_failing.set(0);
                    self.stats.writes.inc_by(jobs.len() as u64);
                    deliver(handover, &*self.sink);
                    for (q, a) in jobs.into_iter().zip(answers) {
                        let _ = q.reply.send(Ok(a));
                    }
                    return;
                }
                Ok(Err(f)) => f,
                Err(_) => Failure::Batch(PgError::Timeout(limit)),
            };
            // Whatever this transaction read may be gone with it.
            self.handles.clear();
            match failure {
                Failure::Job(i, e) => {
                    tracing::warn!("a write job failed: {}", crate::Chain(&e));
                    let q = jobs.remove(i);
                    let _ = q.reply.send(Err(StoreError::Postgres(e)));
                    if jobs.is_empty() {
                        return;
                    }
                }
                Failure::Conflict(e) if conflicts < MAX_RETRIES => {
                    conflicts += 1;
                    tracing::debug!("batch conflicted, running it again: {}", crate::Chain(&e));
                }
                Failure::Conflict(e) | Failure::Batch(e) => {
                    tracing::error!("PostgreSQL batch failed: {}", crate::Chain(&e));
                    self.stats.commit_failures.inc();
                    self.stats.commit_failing.set(1);
                    let e = Arc::new(CommitError::Postgres(e));
                    for q in jobs {
                        let _ = q.reply.send(Err(StoreError::CommitFailed(Arc::clone(&e))));
                    }
                    return;
                }
            }
        }
    }

    /// One try at running and committing `jobs`: their answers and the items
    /// to hand over, once committed.
    async fn attempt(&mut self, jobs: &[Queued]) -> Result<(Vec<Done>, Vec<Committed>), Failure> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| Failure::Batch(e.into()))?;
        let held = Held(Some(conn));
        let Some(c) = held.0.as_ref() else {
            return Err(Failure::Batch(PgError::Timeout(Duration::ZERO)));
        };
        // `BEGIN` and the batch's locks in one round trip: both are sent
        // before either answer is read (the driver writes a request when
        // its future is first polled, and `join` polls in order), and
        // PostgreSQL runs them in the order sent.
        let begin = c.batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL lock_timeout = '5s'",
        );
        let mut tx = Tx::new(c, &mut self.handles);
        let works: Vec<&Work> = jobs.iter().map(|q| &q.work).collect();
        let (began, locked) = futures::future::join(begin, jobs::lock_all(&mut tx, &works)).await;
        if let Err(e) = began.map_err(PgError::from).and(locked) {
            drop(tx);
            rollback(held).await;
            return Err(classify_batch(e));
        }
        let mut answers = Vec::with_capacity(jobs.len());
        for (i, q) in jobs.iter().enumerate() {
            match jobs::run(&mut tx, &q.work).await {
                Ok(done) => answers.push(done),
                Err(e) => {
                    drop(tx);
                    rollback(held).await;
                    return Err(if e.is_conflict() {
                        Failure::Conflict(e)
                    } else if e.is_statement() {
                        Failure::Job(i, e)
                    } else {
                        Failure::Batch(e)
                    });
                }
            }
        }
        let counts = tx.pending_counts();
        let handover = tx.into_handover();
        let flush = match &counts {
            Some(_) => match c.prepare_cached(jobs::FLUSH_PENDING).await {
                Ok(st) => Some(st),
                Err(e) => {
                    rollback(held).await;
                    return Err(classify_batch(e.into()));
                }
            },
            None => None,
        };
        let started = Instant::now();
        // The counts' `UPDATE` and the `COMMIT` in one round trip (the
        // statement is prepared above, so that nothing of the `UPDATE` can
        // be sent after the `COMMIT`). If the `UPDATE` fails, PostgreSQL
        // ends the transaction at the `COMMIT` with a rollback, and the
        // error is the `UPDATE`'s: nothing of the batch is stored, and the
        // connection is dropped with `held`.
        let commit = c.batch_execute("COMMIT");
        let done = match (&flush, &counts) {
            (Some(st), Some((ids, n))) => {
                futures::future::try_join(c.execute(st, &[ids, n]), commit)
                    .await
                    .map(|_| ())
            }
            _ => commit.await,
        };
        done.map_err(|e| classify_batch(e.into()))?;
        self.stats
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        held.release();
        Ok((answers, handover))
    }
}

/// A failure of the batch as a whole (not of one job).
fn classify_batch(e: PgError) -> Failure {
    if e.is_conflict() {
        Failure::Conflict(e)
    } else {
        Failure::Batch(e)
    }
}

/// Rolls back; the connection goes back to the pool only if that worked.
async fn rollback(held: Held) {
    let ok = match held.0.as_ref() {
        Some(c) => c.batch_execute("ROLLBACK").await.is_ok(),
        None => false,
    };
    if ok {
        held.release();
    }
}

/// Hands a committed batch's items to the sink; a panic in it is caught and
/// logged (the items are stored either way: a device that missed a push
/// reads them at its next mailbox read).
fn deliver(handover: Vec<Committed>, sink: &dyn Sink) {
    if handover.is_empty() {
        return;
    }
    let hand = std::panic::AssertUnwindSafe(|| sink.committed(handover));
    if std::panic::catch_unwind(hand).is_err() {
        tracing::error!("the commit sink panicked; the store carries on");
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").field("work", &self.work).finish()
    }
}

/// Keeps [`MAX_CACHED_HANDLES`] in one place with the cache it bounds.
pub(super) fn remember_handle(cache: &mut HashMap<AccountId, String>, id: AccountId, h: &str) {
    if cache.len() >= MAX_CACHED_HANDLES {
        cache.clear();
    }
    cache.insert(id, h.to_owned());
}

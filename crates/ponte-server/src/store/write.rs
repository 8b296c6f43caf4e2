//! The write pipeline: the writer thread (one open transaction taking jobs,
//! group commit), the syncer (`fdatasync` of the WAL, then the answers) and
//! the checkpointer.

use super::jobs::{fail_job, run_job, Job, Ran, Reply};
use super::types::*;
use super::{CommitError, Sink, StoreError, StoreStats};
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest number of jobs committed together.
const BATCH_MAX: usize = 1024;
/// Jobs that may wait for the writer (back-pressure beyond this).
pub(super) const QUEUE: usize = 8192;
/// Seqs reserved in `meta` at a time.
const SEQ_RESERVE: i64 = 1 << 20;
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL size kept after a checkpoint (larger WAL files are truncated to it).
pub(super) const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;
/// How long the writer waits for the syncer before looking for new jobs.
const SYNC_POLL: Duration = Duration::from_micros(200);
/// Page cache of the write connection, KiB.
pub(super) const WRITER_CACHE_KIB: i64 = 16 << 10;

pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// What the writer keeps in memory next to its connection. Changes made by
/// a batch are undone if the batch rolls back.
pub(super) struct WriterState {
    /// Next mailbox seq to hand out.
    next_seq: i64,
    /// Seqs below this are reserved in `meta` (committed or in this batch).
    reserved: i64,
    /// Waiting messages per recipient (only non-zero counts).
    pending: HashMap<AccountId, u32>,
    /// This batch's changes to `pending`, to undo on rollback.
    undo: Vec<(AccountId, bool)>,
    /// Handles of accounts that sent or acknowledged lately, for the items
    /// handed over: a handle never changes for its account, and a lookup
    /// per message is measurable on the one writer thread. Emptied when
    /// full and on a rollback.
    handles: HashMap<AccountId, String>,
}

/// Most handles [`WriterState`] keeps (about 5 MiB).
const MAX_CACHED_HANDLES: usize = 65_536;

impl WriterState {
    /// Reads the seq reservation and counts waiting messages.
    pub(super) fn load(conn: &Connection) -> Result<Self, rusqlite::Error> {
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
            handles: HashMap::new(),
        })
    }

    /// Hands out a seq, reserving a new range in `meta` when needed.
    pub(super) fn alloc_seq(&mut self, c: &Connection) -> Result<Seq, rusqlite::Error> {
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
        Ok(Seq(u64::try_from(seq).unwrap_or(0)))
    }

    pub(super) fn pending(&self, account: AccountId) -> u32 {
        self.pending.get(&account).copied().unwrap_or(0)
    }

    pub(super) fn add_pending(&mut self, account: AccountId) {
        *self.pending.entry(account).or_insert(0) += 1;
        self.undo.push((account, true));
    }

    pub(super) fn sub_pending(&mut self, account: AccountId) {
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
    pub(super) fn commit(&mut self) {
        self.undo.clear();
    }

    /// The handle of `account`, as its peers see it in items handed over
    /// (`None` for an account without a row).
    pub(super) fn handle_of(
        &mut self,
        c: &Connection,
        account: AccountId,
    ) -> Result<Option<String>, rusqlite::Error> {
        if let Some(h) = self.handles.get(&account) {
            return Ok(Some(h.clone()));
        }
        let handle: Option<String> = c
            .prepare_cached("SELECT handle FROM accounts WHERE id = ?1")?
            .query_row([account], |r| r.get(0))
            .optional()?;
        if let Some(h) = &handle {
            if self.handles.len() >= MAX_CACHED_HANDLES {
                self.handles.clear();
            }
            self.handles.insert(account, h.clone());
        }
        Ok(handle)
    }

    /// Reverts the batch's changes (it rolled back).
    pub(super) fn rollback(&mut self, c: &Connection) {
        // A row read in the batch may be gone with it.
        self.handles.clear();
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
pub(super) type Finisher = Box<dyn FnOnce(Option<&Arc<CommitError>>) + Send>;

pub(super) fn finisher<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, StoreError>,
) -> Finisher {
    Box::new(move |commit_error: Option<&Arc<CommitError>>| {
        let r = match (commit_error, result) {
            (Some(e), Ok(_)) => Err(StoreError::CommitFailed(Arc::clone(e))),
            (_, r) => r,
        };
        let _ = reply.send(r);
    })
}

/// The jobs of one transaction: their answers, and the items they stored
/// for the sink, both in the order the jobs ran.
#[derive(Default)]
struct Batch {
    answers: Vec<Finisher>,
    handover: Vec<Committed>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// Answers every job with `error`; the items are dropped (not stored).
    fn fail(self, error: &Arc<CommitError>) {
        for f in self.answers {
            f(Some(error));
        }
    }
}

/// Hands a durable batch's items to the sink, then answers its jobs: on the
/// sync thread, in commit order. A panic in the sink must not stop this
/// thread (every later write would wait forever): it is caught and logged,
/// and the items are durable either way (a device that missed a push reads
/// it from the database at its next login).
fn deliver(batch: Batch, sink: &dyn Sink) {
    if !batch.handover.is_empty() {
        let handover = batch.handover;
        let hand = std::panic::AssertUnwindSafe(|| sink.committed(handover));
        if std::panic::catch_unwind(hand).is_err() {
            tracing::error!("the commit sink panicked; the store carries on");
        }
    }
    for f in batch.answers {
        f(None);
    }
}

/// What the write pipeline is made of.
pub(super) struct Pipeline {
    /// The write connection.
    pub conn: Connection,
    pub state: WriterState,
    /// Least time between commits under load.
    pub commit_interval: Duration,
    /// The checkpointer's connection.
    pub checkpointer: Connection,
    /// The WAL file, flushed by the syncer.
    pub wal: PathBuf,
    /// The database file (flushed instead when there is no WAL).
    pub db: PathBuf,
    pub stats: StoreStats,
    pub sink: Arc<dyn Sink>,
}

/// The writer thread: starts the syncer and the checkpointer, runs batches
/// until the job queue closes, then stops them and checkpoints.
pub(super) fn writer_main(p: Pipeline, rx: mpsc::Receiver<Job>) {
    let Pipeline {
        conn,
        state,
        commit_interval,
        checkpointer,
        wal,
        db,
        stats,
        sink,
    } = p;
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<Batch>();
    let failed = Arc::new(AtomicBool::new(false));
    let outstanding = Arc::new((Mutex::new(0usize), Condvar::new()));
    let syncer = {
        let failed = Arc::clone(&failed);
        let outstanding = Arc::clone(&outstanding);
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("ponte-db-sync".into())
            .spawn(move || syncer_loop(sync_rx, (wal, db), failed, outstanding, &stats, &*sink))
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
    tx: Option<std::sync::mpsc::Sender<Batch>>,
    /// Batches handed over and not yet flushed.
    outstanding: Arc<(Mutex<usize>, Condvar)>,
}

impl SyncHandle {
    fn submit(&self, batch: Batch) {
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
            batch.fail(&Arc::new(CommitError::Closing));
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

/// Makes committed batches durable (`fdatasync` of the WAL), hands their
/// items to the sink and answers their jobs. One sync covers every batch
/// that arrived before it started.
fn syncer_loop(
    rx: std::sync::mpsc::Receiver<Batch>,
    (wal, db): (PathBuf, PathBuf),
    failed: Arc<AtomicBool>,
    outstanding: Arc<(Mutex<usize>, Condvar)>,
    stats: &StoreStats,
    sink: &dyn Sink,
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
                Some(Arc::new(CommitError::Flush(e)))
            }
        };
        let flushed = batches.len();
        for batch in batches {
            match &err {
                None => deliver(batch, sink),
                Some(e) => batch.fail(e),
            }
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

impl Writer {
    /// Runs jobs until the queue closes. A transaction stays open, taking
    /// jobs as they come, while the syncer is still flushing the previous
    /// commit; it commits as soon as the syncer is idle (or the batch is
    /// full). So commits follow the disk's pace: one per flush, each as
    /// large as the load makes it.
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, sync: &SyncHandle) {
        let mut done = Batch::default();
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
                fail_job(job, &Arc::new(CommitError::FailedEarlier));
                continue;
            }
            if !open {
                if let Err(e) = self.exec("BEGIN IMMEDIATE") {
                    fail_job(job, &Arc::new(CommitError::Sqlite(e)));
                    continue;
                }
                open = true;
            }
            jobs += 1;
            match run_job(&self.conn, &mut self.state, job, &mut done.handover) {
                Ran::Done(f) => done.answers.push(f),
                Ran::Abort(f, e) => {
                    done.answers.push(f);
                    self.abort(&mut done, CommitError::Sqlite(e));
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
    fn commit(&mut self, done: &mut Batch, sync: &SyncHandle) {
        self.last_commit = Instant::now();
        if let Err(e) = self.exec("COMMIT") {
            self.abort(done, CommitError::Sqlite(e));
            return;
        }
        self.state.commit();
        self.stats.commits.inc();
        self.stats.commit_failing.set(0);
        self.stats.writes.inc_by(done.answers.len() as u64);
        sync.submit(std::mem::take(done));
    }

    /// Rolls the open transaction back and answers its jobs with `e`.
    fn abort(&mut self, done: &mut Batch, e: CommitError) {
        tracing::error!("group commit failed: {}", crate::Chain(&e));
        self.stats.commit_failures.inc();
        self.stats.commit_failing.set(1);
        let _ = self.conn.execute_batch("ROLLBACK");
        self.state.rollback(&self.conn);
        std::mem::take(done).fail(&Arc::new(e));
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

//! An upload's [`Tail`]: the appends in flight to it, and the two
//! workers that put their chunks on disk.
//!
//! An append takes its turn (a FIFO lock, so turns follow the frames'
//! order), learns where its chunk must start ([`Tail::next_offset`]) and
//! queues the chunk ([`TailHold::append`]); then it lets the turn go and
//! waits for one answer. Two workers run on the blocking pool while they
//! have work: the writer takes every chunk queued so far and writes them
//! in order (feeding the upload's running hash), then hands them to the
//! flusher, which makes everything written so far durable with one
//! `fdatasync` and hands one record of the new offset to the store; the
//! appends are answered once that record is committed. Chunks that come
//! while a worker is busy are its next batch. So a client that keeps
//! several appends in flight pays one flush and one store record per
//! batch, not per 96 KiB chunk, and a chunk crosses threads a few times
//! per batch rather than eight or nine times of its own: each hop between
//! threads is a wake-up on the path every chunk of the upload waits
//! behind.
//!
//! Records reach the store in order: the flusher polls each once, which
//! queues it at the store, before it syncs the next batch; a task of its
//! own awaits the commit (which so overlaps the next sync) and answers.
//! The workers and that task hold the tail until the record is
//! committed, even if the connection drops meanwhile: the next append (on
//! any connection) goes on from this tail's offsets instead of starting a
//! new tail at a stored offset that is about to move.
//!
//! A chunk that cannot be written (a full disk, or a file shorter than
//! the recorded offset: [`Short`]) is cut off again; the chunks queued
//! after it are not written and their appends are told to go on from its
//! offset (tus's 409). A failed flush or record poisons the tail: the
//! kernel may have dropped the pages it could not write, so a later flush
//! proves nothing. Every append in flight is refused, and the next tail
//! starts again from the recorded offset.

use super::{create_private_dir, lock, open_private, sync_dir, MAX_RUNNING_HASHES};
use crate::store::{AccountId, BlobId, BlobInfo};
use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::oneshot;

pub(super) type Tails = HashMap<BlobId, Arc<Tail>>;
pub(super) type Hashes = HashMap<BlobId, Running>;

/// Records an upload's new durable offset in the store: `record(from,
/// to)` moves it from `from` to `to`; `Ok(false)` when the store refused
/// (the row went, or its offset is not at `from`).
pub(crate) type Record =
    Arc<dyn Fn(u64, u64) -> BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// The SHA-256 of an upload's bytes `0..upto`, fed by this process's
/// writes as they succeeded, in order. Kept across tails (a client that
/// waits for its appends' answers lets the tail go between them) and
/// dropped when a write does not start at `upto`.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub(super) upto: u64,
    pub(super) sha: Sha256,
}

/// The appends in flight to one upload (see the module docs).
#[derive(Debug)]
pub(crate) struct Tail {
    id: BlobId,
    path: PathBuf,
    /// The blob directory's running hashes (see `Blobs`).
    hashes: Option<Arc<Mutex<Hashes>>>,
    /// The turn to take an offset and queue a chunk: tokio's mutex is
    /// fair, so appends that asked for it in frame order get it in frame
    /// order.
    order: tokio::sync::Mutex<()>,
    state: Mutex<TailState>,
    /// The upload's row as an append of this tail read it, and the account
    /// that read it: the appends in the middle of the upload take it from
    /// here instead of reading the store once per chunk (see
    /// [`Tail::row_for`]).
    row: Mutex<Option<(AccountId, BlobInfo)>>,
}

#[derive(Debug, Default)]
struct TailState {
    /// Where the next chunk goes; `None` until the first append read the
    /// store's offset.
    next: Option<u64>,
    /// Durable, and its record handed to the store, up to here: where the
    /// next record moves the offset from.
    handed: u64,
    /// A flush or record failed: every append of this tail is refused.
    poisoned: bool,
    /// Chunks waiting for the writer, in offset order.
    queue: Vec<Queued>,
    /// The writer runs (and will look at the queue again before it stops).
    writing: bool,
    /// Chunks written and waiting for the flusher, in offset order.
    written: Vec<Written>,
    /// The flusher runs (and will look at `written` again before it stops).
    flushing: bool,
}

/// A chunk written, waiting for a flush.
struct Written {
    end: u64,
    record: Record,
    done: oneshot::Sender<Flushed>,
    /// The file it was written to (opened by the first chunk of its
    /// batch).
    file: Arc<File>,
}

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// A chunk handed to the writer.
struct Queued {
    offset: u64,
    chunk: Bytes,
    record: Record,
    done: oneshot::Sender<Flushed>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("offset", &self.offset)
            .field("len", &self.chunk.len())
            .finish_non_exhaustive()
    }
}

/// What became of an append's chunk.
#[derive(Debug, Clone)]
pub(crate) enum Flushed {
    /// On disk and its offset recorded.
    Durable,
    /// The store refused the record: the upload's row went (the sweep
    /// deleted the expired upload), or its offset is not where this
    /// tail's records left it (an append elsewhere recorded first). The
    /// caller tells which (see `requests::upload`).
    Refused,
    /// The disk or the store failed; nothing past the recorded offset
    /// counts, and the tail is poisoned.
    Failed(String),
    /// The chunk could not be written (a full disk: the file ends where
    /// the last good write did), or the file holds fewer bytes than the
    /// recorded offset (`short`: how many; nothing was filled in).
    NotWritten { error: String, short: Option<u64> },
    /// A chunk before this one could not be written, so this one was not
    /// either: the upload goes on from this offset.
    Behind(u64),
}

impl Flushed {
    /// The answer of every append of a poisoned tail.
    fn earlier_failure() -> Self {
        Self::Failed("an earlier flush of this upload failed".into())
    }
}

/// A hold on an upload's [`Tail`]; the tail goes with its last hold.
#[derive(Debug)]
pub(crate) struct TailHold {
    pub(super) id: BlobId,
    pub(super) tail: Arc<Tail>,
    pub(super) tails: Arc<Mutex<Tails>>,
}

impl Deref for TailHold {
    type Target = Tail;

    fn deref(&self) -> &Tail {
        &self.tail
    }
}

impl Clone for TailHold {
    /// Another hold on the same tail, made under the map's lock like every
    /// hold (see `Drop`).
    fn clone(&self) -> Self {
        let _tails = lock(&self.tails);
        Self {
            id: self.id,
            tail: Arc::clone(&self.tail),
            tails: Arc::clone(&self.tails),
        }
    }
}

impl Drop for TailHold {
    fn drop(&mut self) {
        let mut tails = lock(&self.tails);
        // New holds are only made under this lock: the map's and this one
        // are the last.
        if Arc::strong_count(&self.tail) == 2 {
            tails.remove(&self.id);
        }
    }
}

impl Tail {
    pub(super) fn new(id: BlobId, path: PathBuf, hashes: Option<Arc<Mutex<Hashes>>>) -> Self {
        Self {
            id,
            path,
            hashes,
            order: tokio::sync::Mutex::new(()),
            state: Mutex::new(TailState::default()),
            row: Mutex::new(None),
        }
    }

    /// The upload's row for an append of `account` (with the turn held)
    /// whose chunk ends at `end`, if an earlier append of the same account
    /// read it for this tail and the tail has taken a chunk since: the
    /// row's owner, size and hash do not change, the tail knows the offset
    /// better than the row, and the rest is checked where it matters (an
    /// append that reaches the end, or an empty one, reads the store; a
    /// row that went meanwhile refuses the record). `None`: read the store.
    pub(crate) fn row_for(&self, account: AccountId, end: u64) -> Option<BlobInfo> {
        let st = lock(&self.state);
        if st.poisoned || st.next.is_none() {
            return None;
        }
        drop(st);
        let row = lock(&self.row);
        let (who, info) = row.as_ref()?;
        let now = crate::store::UnixMillis::now();
        (*who == account && end < info.size && !info.finished && info.expires_at > now)
            .then(|| info.clone())
    }

    /// Keeps the row an append of `account` read, for [`Tail::row_for`].
    pub(crate) fn remember_row(&self, account: AccountId, info: &BlobInfo) {
        *lock(&self.row) = Some((account, info.clone()));
    }

    /// Waits for this append's turn. Asked for before the append's first
    /// other wait, so turns follow the frames' order.
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.order.lock().await
    }

    /// Where the next chunk must start (with the turn held): the end of
    /// the last chunk this tail took, or `recorded` (the store's offset)
    /// before its first. `None` once a flush failed.
    pub(crate) fn next_offset(&self, recorded: u64) -> Option<u64> {
        let mut st = lock(&self.state);
        if st.poisoned {
            return None;
        }
        Some(match st.next {
            Some(n) => n,
            None => {
                st.next = Some(recorded);
                st.handed = recorded;
                recorded
            }
        })
    }

    /// Refuses every later append of this tail and answers the queued
    /// ones with `outcome`.
    fn poison(&self, outcome: &Flushed) {
        let (queued, written) = {
            let mut st = lock(&self.state);
            st.poisoned = true;
            (
                std::mem::take(&mut st.queue),
                std::mem::take(&mut st.written),
            )
        };
        for done in queued
            .into_iter()
            .map(|q| q.done)
            .chain(written.into_iter().map(|w| w.done))
        {
            let _ = done.send(outcome.clone());
        }
    }

    /// Writes one chunk at `offset` (the writer's, in order). The first
    /// write of a batch opens the file (`file` is `None`): it leaves what
    /// an interrupted append (or another node's) left past `offset`, and
    /// refuses a file that ends before `offset` ([`Short`], see the module
    /// docs of `blobs`), so a file that lost bytes (or went) since the
    /// last batch is noticed at the next; a failed write is cut off again.
    ///
    /// The upload's running hash, if it reaches exactly `offset`, is fed
    /// with the chunk once it is written (a write at offset 0 starts one);
    /// any other write drops it, and the upload is read back when it
    /// finishes.
    fn write_one(
        &self,
        file: &mut Option<Arc<File>>,
        offset: u64,
        chunk: &[u8],
    ) -> io::Result<Arc<File>> {
        let f = match file {
            Some(f) => Arc::clone(f),
            None => {
                let parent = self.path.parent().unwrap_or(Path::new("."));
                let f = match open_private(&self.path, false) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        create_private_dir(parent)?;
                        let f = open_private(&self.path, false)?;
                        // The partial file's name must survive a crash too.
                        sync_dir(parent)?;
                        f
                    }
                    r => r?,
                };
                let held = f.metadata()?.len();
                if held < offset {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, Short(held)));
                }
                let f = Arc::new(f);
                *file = Some(Arc::clone(&f));
                f
            }
        };
        // Taken out for the write (one writer per tail) and put back once
        // the chunk is in the file.
        let running = self.hashes.as_ref().and_then(|h| {
            let mut hashes = lock(h);
            match hashes.remove(&self.id) {
                Some(r) if r.upto == offset => Some(r),
                _ if offset == 0 && hashes.len() < MAX_RUNNING_HASHES => Some(Running {
                    upto: 0,
                    sha: Sha256::new(),
                }),
                _ => None,
            }
        });
        if let Err(e) = f.write_all_at(chunk, offset) {
            // A full disk: give back what the chunk took, so the file
            // ends where the last good write did.
            let _ = f.set_len(offset);
            return Err(e);
        }
        if let (Some(h), Some(mut r)) = (&self.hashes, running) {
            r.sha.update(chunk);
            r.upto += chunk.len() as u64;
            lock(h).insert(self.id, r);
        }
        Ok(f)
    }
}

impl TailHold {
    /// Hands `chunk`, to be written at `offset` (which
    /// [`Tail::next_offset`] gave, with the turn held), to the tail's
    /// writer; the answer comes once it is durable and recorded with
    /// `record`, or why not. Does not wait: the turn can go at once.
    pub(crate) fn append(
        &self,
        offset: u64,
        chunk: Bytes,
        record: Record,
    ) -> impl std::future::Future<Output = Flushed> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut st = lock(&self.state);
            if st.poisoned {
                let _ = done.send(Flushed::earlier_failure());
                false
            } else {
                st.next = Some(offset + chunk.len() as u64);
                st.queue.push(Queued {
                    offset,
                    chunk,
                    record,
                    done,
                });
                !std::mem::replace(&mut st.writing, true)
            }
        };
        if start {
            Worker::start(self, Role::Write);
        }
        async move {
            answer.await.unwrap_or_else(|_| {
                Flushed::Failed("the upload's writer ended before answering".into())
            })
        }
    }
}

/// One of a tail's two workers on the blocking pool (see the module
/// docs). It holds the tail until its last batch is done, and lets it go
/// just before it answers that batch: an append answered finds no worker
/// holding the tail (a poisoned tail goes with its last append).
struct Worker {
    /// `None` once it ended its turn.
    tail: Option<TailHold>,
    role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Writes the queued chunks, in order, and hands them to the flusher.
    Write,
    /// Syncs what was written, records the new offset and answers.
    Flush,
}

/// An answer for an append, sent once its batch is done.
type Answer = (oneshot::Sender<Flushed>, Flushed);

impl Worker {
    /// Starts the `role` worker of `tail`, whose flag the caller set.
    fn start(tail: &TailHold, role: Role) {
        let worker = Worker {
            tail: Some(tail.clone()),
            role,
        };
        // The worker ends its turn even if its task never runs (a runtime
        // shutting down) or panics: what waits for it is then refused,
        // not left waiting.
        tokio::task::spawn_blocking(move || worker.run());
    }

    fn run(mut self) {
        loop {
            let Some(tail) = &self.tail else { return };
            let answers = match self.role {
                Role::Write => write_batch(tail),
                Role::Flush => flush_batch(tail),
            };
            let more = {
                let mut st = lock(&tail.state);
                let st = &mut *st;
                match self.role {
                    Role::Write => {
                        st.writing = !st.queue.is_empty();
                        st.writing
                    }
                    Role::Flush => {
                        st.flushing = !st.written.is_empty();
                        st.flushing
                    }
                }
            };
            if !more {
                self.tail = None;
            }
            for (done, outcome) in answers {
                let _ = done.send(outcome);
            }
            if !more {
                return;
            }
        }
    }
}

impl Drop for Worker {
    /// A worker that did not end its turn (it panicked, or its task never
    /// ran) ends it here and refuses what waits.
    fn drop(&mut self) {
        if let Some(tail) = self.tail.take() {
            {
                let mut st = lock(&tail.state);
                match self.role {
                    Role::Write => st.writing = false,
                    Role::Flush => st.flushing = false,
                }
            }
            tail.poison(&Flushed::Failed("the upload's writer stopped".into()));
        }
    }
}

/// Writes the chunks queued now, in order, and hands them to the flusher
/// (started if it does not run); answers for chunks that were not written.
fn write_batch(tail: &TailHold) -> Vec<Answer> {
    let batch = std::mem::take(&mut lock(&tail.state).queue);
    let mut file = None;
    let mut answers = Vec::new();
    let mut written = Vec::with_capacity(batch.len());
    let mut failed: Option<u64> = None;
    for q in batch {
        if let Some(at) = failed {
            answers.push((q.done, Flushed::Behind(at)));
            continue;
        }
        let end = q.offset + q.chunk.len() as u64;
        match tail.write_one(&mut file, q.offset, &q.chunk) {
            Ok(f) => written.push(Written {
                end,
                record: q.record,
                done: q.done,
                file: f,
            }),
            Err(e) => {
                failed = Some(q.offset);
                let short = Short::of(&e).map(|Short(held)| held);
                let error = e.to_string();
                answers.push((q.done, Flushed::NotWritten { error, short }));
            }
        }
    }
    let start = {
        let mut st = lock(&tail.state);
        if let Some(at) = failed {
            // Nothing queued after the failed chunk can be written: those
            // appends go on from its offset, as the next ones do.
            st.next = Some(at);
            let queued = std::mem::take(&mut st.queue);
            answers.extend(queued.into_iter().map(|q| (q.done, Flushed::Behind(at))));
        }
        if st.poisoned {
            // The flusher failed meanwhile: these chunks prove nothing.
            let failed = Flushed::earlier_failure();
            answers.extend(written.into_iter().map(|w| (w.done, failed.clone())));
            false
        } else if written.is_empty() {
            false
        } else {
            st.written.extend(written);
            !std::mem::replace(&mut st.flushing, true)
        }
    };
    if start {
        Worker::start(tail, Role::Flush);
    }
    answers
}

/// Makes every chunk written so far durable (one `fdatasync`) and hands
/// the record of the new offset to the store: polled once here, so
/// records reach the store in order, and awaited by a task of its own, so
/// that its commit overlaps the next batch's sync. The answers for their
/// appends, when the record was answered at once (else the task answers).
fn flush_batch(tail: &TailHold) -> Vec<Answer> {
    let (written, from) = {
        let mut st = lock(&tail.state);
        (std::mem::take(&mut st.written), st.handed)
    };
    let Some(last) = written.last() else {
        return Vec::new();
    };
    let to = last.end;
    // Each file the chunks went to: one, unless the file was replaced
    // between two batches.
    let mut files: Vec<&Arc<File>> = Vec::with_capacity(1);
    for w in &written {
        if !files.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
            files.push(&w.file);
        }
    }
    if let Err(e) = files.iter().try_for_each(|f| f.sync_data()) {
        let failed = Flushed::Failed(e.to_string());
        tail.poison(&failed);
        return answers(written, &failed);
    }
    {
        let mut st = lock(&tail.state);
        if st.poisoned {
            // An earlier record failed meanwhile: this one would move the
            // offset from where that one did not.
            drop(st);
            let failed = Flushed::earlier_failure();
            return answers(written, &failed);
        }
        st.handed = to;
    }
    let mut record = (last.record)(from, to);
    let waker = futures::task::noop_waker();
    match record
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker))
    {
        Poll::Ready(r) => answers(written, &recorded(tail, r)),
        Poll::Pending => {
            // Holds the tail until the record is committed.
            let hold = tail.clone();
            tokio::spawn(async move {
                let outcome = recorded(&hold, record.await);
                drop(hold);
                for (done, outcome) in answers(written, &outcome) {
                    let _ = done.send(outcome);
                }
            });
            Vec::new()
        }
    }
}

/// What the store's answer to a record makes of the
/// chunks it covers (a failure poisons the tail).
fn recorded(tail: &Tail, r: Result<bool, String>) -> Flushed {
    let outcome = match r {
        Ok(true) => return Flushed::Durable,
        Ok(false) => Flushed::Refused,
        Err(e) => Flushed::Failed(e),
    };
    tail.poison(&outcome);
    outcome
}

fn answers(written: Vec<Written>, outcome: &Flushed) -> Vec<Answer> {
    written
        .into_iter()
        .map(|w| (w.done, outcome.clone()))
        .collect()
}

/// The error of a tail's first write when the upload's file holds fewer
/// bytes than the store recorded: how many it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short(pub u64);

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upload's file holds {} bytes, fewer than recorded (is the blob directory \
             shared by every node?)",
            self.0
        )
    }
}

impl std::error::Error for Short {}

impl Short {
    /// The [`Short`] inside `e`, if that is what it is.
    pub(crate) fn of(e: &io::Error) -> Option<Self> {
        e.get_ref()?.downcast_ref::<Self>().copied()
    }
}

#[cfg(test)]
mod tests;

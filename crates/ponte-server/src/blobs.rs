//! Blob files: the bytes of uploaded files (ciphertext the server cannot
//! read), outside the database, under `DATA_DIR/blobs/`:
//!
//! ```text
//! blobs/
//!   partial/<32 hex digits>   an upload in progress, appended in place
//!   <32 hex digits>           a finished blob, named by its id
//! ```
//!
//! Appends to an upload go through its [`Tail`] (`blobs/tail.rs`), which
//! exists while appends to it are in flight: they queue their chunks in
//! the order their frames came (a FIFO lock), each at the offset the
//! previous one ended, for the tail's writer, one task on the blocking
//! pool that writes every chunk queued so far, makes them durable with one
//! `fdatasync` and one store record of the new offset, and only then
//! answers their appends: an acknowledged chunk survives a crash, and a
//! client that keeps several appends in flight pays one flush per batch,
//! not one per 96 KiB chunk.
//!
//! Bytes past the recorded offset (a crash between a write and its
//! record, or another node's append whose record is on its way, when the
//! nodes of a PostgreSQL service share the blob directory) are left in
//! place: they are the same upload's bytes at the same offsets, and every
//! byte from the recorded offset on is written again before the upload
//! finishes. Cutting them would cut under the other node's append, which
//! then records an offset the file no longer reaches. A file shorter than
//! the recorded offset (a blob directory that is not shared, or lost
//! bytes) is never filled up: the append is refused, the recorded offset
//! moved back to what the file holds, and the client goes on from there
//! at its next connection. A failed write is cut off again and answered
//! `UNAVAILABLE` (the appends queued behind it are told to go on from its
//! offset); a failed flush poisons the tail (the kernel may have
//! dropped the pages it could not write, so a later flush proves
//! nothing): every append in flight is refused, and the next tail starts
//! again from the recorded offset.
//!
//! The last append checks the file against the declared SHA-256, renames
//! it into place and syncs the directory before the store marks the blob
//! finished, so a blob is never served before it is whole and checked.
//! When this process wrote every byte of the file, in order from offset 0
//! (the usual upload, in one or several tails), the hash was fed as the
//! chunks were written (a [`Running`] hash per upload) and the check costs
//! nothing at the end; otherwise (an upload resumed after a restart, a
//! tail that started where an interrupted one left off, or a blob
//! directory shared by several nodes, whose other writers this process
//! cannot see) the file is read back through SHA-256, 64 KiB at a time.
//! Every file operation runs on the blocking pool; nothing holds more
//! than the chunks in flight in memory.
//!
//! The metadata (owner, size, offset, expiry, who fetched it) is in the
//! store (`store::blobs`); the expiry sweep ([`sweep`]) deletes the files
//! of blobs that expired or were fetched by every recipient, then their
//! rows.

use crate::store::{BlobId, BlobInfo};
use crate::Shared;
use ahead::{ReadAhead, READ_AHEAD_CHUNKS};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
pub(crate) use tail::{Flushed, Record, TailHold};
use tail::{Hashes, Running, Tail, Tails};

/// The blob directory inside the data directory.
pub const BLOB_DIR: &str = "blobs";
/// Unfinished uploads, inside [`BLOB_DIR`].
const PARTIAL_DIR: &str = "partial";
/// Rows handled per sweep round.
const SWEEP_BATCH: usize = 256;
/// The blob directory's marker on PostgreSQL: a random id written by the
/// first node that used the directory, which the database records for the
/// service (see [`Blobs::marker`]). Not 32 hex digits: never taken for a
/// blob.
pub const MARKER_FILE: &str = "ponte-blob-dir";
/// Uploads whose hash is fed as they are written, at most (about 120
/// bytes each); an upload past it is read back when it finishes.
const MAX_RUNNING_HASHES: usize = 4096;

/// The file name of blob `id`: its 32 lowercase hex digits.
pub fn file_name(id: &BlobId) -> String {
    use std::fmt::Write as _;
    id.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// How a finished upload's bytes compared with the declared hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
    /// Whole and matching: in place under its id.
    Stored,
    /// The bytes do not hash to what was declared: deleted.
    Mismatch,
}

/// The blob files of one data directory, the tails of the uploads being
/// appended to now, and the uploads being finished.
#[derive(Debug)]
pub(crate) struct Blobs {
    dir: PathBuf,
    busy: Arc<Mutex<HashSet<BlobId>>>,
    tails: Arc<Mutex<Tails>>,
    /// The running hashes of uploads this process wrote from offset 0;
    /// `None` when the directory is shared with other nodes (see the
    /// module docs).
    hashes: Option<Arc<Mutex<Hashes>>>,
    /// Rows of finished blobs being downloaded, so each `Download` of a
    /// large blob does not read the store again (see [`Blobs::finished_row`]).
    rows: Mutex<HashMap<BlobId, BlobInfo>>,
    /// Chunks of finished blobs read ahead for downloads ([`Blobs::read`]).
    ahead: Mutex<ReadAhead>,
}

/// Finished blobs' rows kept for downloads, at most (about 150 bytes
/// each); the set is emptied when it is full.
const MAX_FINISHED_ROWS: usize = 1024;

/// A std mutex's guard, even after a panic elsewhere poisoned it (the
/// state is plain data, valid at every step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An upload held while it is finished; released when dropped.
#[derive(Debug)]
pub(crate) struct Busy {
    id: BlobId,
    busy: Arc<Mutex<HashSet<BlobId>>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(&self.id);
        }
    }
}

/// The id in a marker file; `None` if there is no such file.
fn read_marker(path: &Path) -> io::Result<Option<[u8; 16]>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let hex = text.trim();
    let mut id = [0u8; 16];
    let ok = hex.len() == 32
        && id.iter_mut().enumerate().all(|(i, b)| {
            hex.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|v| *b = v)
                .is_some()
        });
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold a blob directory id (32 hex digits)",
                path.display()
            ),
        ));
    }
    Ok(Some(id))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Opens (creating, mode 0600) a blob file for writing.
fn open_private(path: &Path, truncate: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).truncate(truncate).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(io::Error::other("blob task failed")))
}

fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

impl Blobs {
    /// The blob files of `data_dir`. Nothing is created until the first
    /// upload (the directories then, mode 0700): a server that never took
    /// a file has the data directory it always had.
    /// The data directory is this process's alone (it holds its lock), so
    /// uploads are hashed as they are written.
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            hashes: Some(Arc::default()),
            ..Self::in_dir(data_dir.join(BLOB_DIR))
        }
    }

    /// The blob files in `dir` (`blob_dir` in the config: a directory
    /// every node of a PostgreSQL service shares). Another node may write
    /// to an upload meanwhile, so each is read back when it finishes.
    pub(crate) fn in_dir(dir: PathBuf) -> Self {
        Self {
            dir,
            busy: Arc::default(),
            tails: Arc::default(),
            hashes: None,
            rows: Mutex::default(),
            ahead: Mutex::default(),
        }
    }

    /// Finished blob `id`'s row as a download read it, unless it expired
    /// since. A finished blob's row does not change until it is deleted;
    /// a deleted blob's file is gone, which [`Blobs::read`] reports.
    pub(crate) fn finished_row(&self, id: &BlobId) -> Option<BlobInfo> {
        let mut rows = lock(&self.rows);
        let info = rows.get(id)?;
        if info.expires_at > crate::store::UnixMillis::now() {
            return Some(info.clone());
        }
        rows.remove(id);
        None
    }

    /// Keeps a finished blob's row for [`Blobs::finished_row`].
    pub(crate) fn keep_finished_row(&self, info: &BlobInfo) {
        if !info.finished {
            return;
        }
        let mut rows = lock(&self.rows);
        if rows.len() >= MAX_FINISHED_ROWS && !rows.contains_key(&info.id) {
            rows.clear();
        }
        rows.insert(info.id, info.clone());
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id in the directory's [`MARKER_FILE`], written now (a random
    /// one) if there is none. The nodes of a PostgreSQL service compare it
    /// with the one the database recorded: a node that finds another has
    /// a blob directory the others do not see. Two nodes writing it at
    /// once (one shared directory) agree: it is written aside and linked
    /// into place, which fails for the second, who reads the first's.
    pub(crate) fn marker(&self) -> io::Result<[u8; 16]> {
        let path = self.dir.join(MARKER_FILE);
        if let Some(id) = read_marker(&path)? {
            return Ok(id);
        }
        create_private_dir(&self.dir)?;
        let id: [u8; 16] = rand::random();
        let aside = self
            .dir
            .join(format!(".{MARKER_FILE}.{}", file_name(&rand::random())));
        let written = (|| {
            let mut f = open_private(&aside, true)?;
            std::io::Write::write_all(&mut f, format!("{}\n", file_name(&id)).as_bytes())?;
            f.sync_all()?;
            match std::fs::hard_link(&aside, &path) {
                Ok(()) => sync_dir(&self.dir).map(|()| true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&aside);
        if written? {
            return Ok(id);
        }
        read_marker(&path)?.ok_or_else(|| {
            io::Error::other(format!("{} vanished while being read", path.display()))
        })
    }

    /// How far upload `id`'s running hash reaches, if it has one (tests).
    #[cfg(test)]
    pub(crate) fn hashed(&self, id: &BlobId) -> Option<u64> {
        lock(self.hashes.as_ref()?).get(id).map(|r| r.upto)
    }

    /// Takes upload `id`'s running hash out, if it has one.
    fn take_running(&self, id: &BlobId) -> Option<Running> {
        lock(self.hashes.as_ref()?).remove(id)
    }

    /// The tail of upload `id`, made if no append to it is in flight.
    pub(crate) fn tail(&self, id: BlobId) -> TailHold {
        let mut tails = lock(&self.tails);
        let tail = tails
            .entry(id)
            .or_insert_with(|| Arc::new(Tail::new(id, self.partial(&id), self.hashes.clone())))
            .clone();
        TailHold {
            id,
            tail,
            tails: Arc::clone(&self.tails),
        }
    }

    fn partial(&self, id: &BlobId) -> PathBuf {
        self.dir.join(PARTIAL_DIR).join(file_name(id))
    }

    fn finished(&self, id: &BlobId) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// Holds upload `id` while it is finished; `None` while that runs
    /// already.
    pub(crate) fn hold(&self, id: BlobId) -> Option<Busy> {
        let mut b = self.busy.lock().ok()?;
        b.insert(id).then(|| Busy {
            id,
            busy: Arc::clone(&self.busy),
        })
    }

    /// Checks a complete upload against `sha256` and moves it into place
    /// (a mismatch deletes it). The check is the running hash when it
    /// covers the whole size, else a read of the file. A crash after the
    /// move and before the store recorded it leaves the blob in place:
    /// checked there again.
    pub(crate) async fn finish(
        &self,
        id: BlobId,
        size: u64,
        sha256: [u8; 32],
    ) -> io::Result<Finished> {
        let partial = self.partial(&id);
        let finished = self.finished(&id);
        let dir = self.dir.clone();
        let streamed = self
            .take_running(&id)
            .filter(|r| r.upto == size)
            .map(|r| <[u8; 32]>::from(r.sha.finalize()));
        blocking(move || {
            if size == 0 {
                if Sha256::digest([]).as_slice() != sha256 {
                    return Ok(Finished::Mismatch);
                }
                create_private_dir(&dir)?;
                open_private(&finished, true)?.sync_all()?;
                sync_dir(&dir)?;
                return Ok(Finished::Stored);
            }
            let in_partial = partial.is_file();
            let source = if in_partial { &partial } else { &finished };
            let len = match std::fs::metadata(source) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Finished::Mismatch),
                Err(e) => return Err(e),
            };
            // The running hash is of what was written to the partial file.
            let matches = len == size
                && match streamed {
                    Some(h) if in_partial => h == sha256,
                    _ => hash_file(source)? == sha256,
                };
            if !matches {
                let _ = std::fs::remove_file(source);
                return Ok(Finished::Mismatch);
            }
            if source == &partial {
                std::fs::rename(&partial, &finished)?;
                sync_dir(&dir)?;
                sync_dir(&dir.join(PARTIAL_DIR))?;
            }
            Ok(Finished::Stored)
        })
        .await
    }

    /// Up to `max_len` bytes of finished blob `id` from `offset`; `None`
    /// when its file is gone (deleted meanwhile).
    ///
    /// A download keeps several requests in flight, each for the chunk
    /// after the last, and the session answers them one at a time: so a
    /// read that is not answered from what an earlier one read ahead
    /// reads [`READ_AHEAD_CHUNKS`] chunks of `max_len` in one trip to the
    /// blocking pool, and keeps the ones after the first for the requests
    /// to come (16 MiB at most for all downloads, each chunk for 10 s at
    /// most: see `blobs/ahead.rs`).
    pub(crate) async fn read(
        &self,
        id: BlobId,
        offset: u64,
        max_len: usize,
    ) -> io::Result<Option<Bytes>> {
        if let Some(chunk) = lock(&self.ahead).take(&id, offset, max_len) {
            return Ok(Some(chunk));
        }
        let chunks = if lock(&self.ahead).has_room(max_len * (READ_AHEAD_CHUNKS - 1)) {
            READ_AHEAD_CHUNKS
        } else {
            1
        };
        let want = max_len * chunks;
        let path = self.finished(&id);
        let read = blocking(move || {
            use std::io::Seek as _;
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            f.seek(io::SeekFrom::Start(offset))?;
            // Into spare capacity: nothing is zeroed first.
            let mut buf = Vec::with_capacity(want);
            (&mut f).take(want as u64).read_to_end(&mut buf)?;
            Ok(Some(Bytes::from(buf)))
        })
        .await?;
        let Some(all) = read else { return Ok(None) };
        let first = all.slice(..all.len().min(max_len));
        if all.len() > max_len {
            let mut ahead = lock(&self.ahead);
            let mut at = max_len;
            while at < all.len() {
                let end = all.len().min(at + max_len);
                ahead.keep(id, offset + at as u64, all.slice(at..end));
                at = end;
            }
        }
        Ok(Some(first))
    }

    /// Deletes both files of `id` (either may be missing).
    pub(crate) async fn delete(&self, id: BlobId) -> io::Result<()> {
        self.take_running(&id);
        lock(&self.rows).remove(&id);
        lock(&self.ahead).forget(&id);
        let paths = [self.partial(&id), self.finished(&id)];
        blocking(move || {
            for p in paths {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
    }
}

/// One expiry sweep of blobs: deletes the files, then the rows, of blobs
/// past their retention or fetched by every recipient; then updates the
/// stored-blob gauges.
pub(crate) async fn sweep(shared: &Shared) {
    for _ in 0..100 {
        let due = match shared
            .store
            .blobs_due(crate::store::UnixMillis::now(), SWEEP_BATCH)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("blob sweep failed: {}", crate::Chain(&e));
                return;
            }
        };
        if due.is_empty() {
            break;
        }
        let mut gone = Vec::with_capacity(due.len());
        for id in due {
            match shared.blobs.delete(id).await {
                Ok(()) => gone.push(id),
                Err(e) => tracing::warn!("deleting a blob file failed: {e}"),
            }
        }
        let more = gone.len() == SWEEP_BATCH;
        match shared.store.blob_delete(gone).await {
            Ok(n) => {
                shared.metrics.blobs_deleted.inc_by(n);
            }
            Err(e) => {
                tracing::warn!("blob sweep failed: {}", crate::Chain(&e));
                return;
            }
        }
        if !more {
            break;
        }
    }
    match shared.store.blob_totals().await {
        Ok(t) => {
            shared
                .metrics
                .blobs_stored
                .set(i64::try_from(t.finished).unwrap_or(i64::MAX));
            shared
                .metrics
                .blob_bytes_stored
                .set(i64::try_from(t.bytes).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!("blob totals failed: {}", crate::Chain(&e)),
    }
}

mod ahead;
#[cfg(test)]
mod recorded;
#[cfg(test)]
mod streamed;
mod tail;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod two_nodes;

//! Blob files: the bytes of uploaded files (ciphertext the server cannot
//! read), outside the database, under `DATA_DIR/blobs/`:
//!
//! ```text
//! blobs/
//!   partial/<32 hex digits>   an upload in progress, appended in place
//!   <32 hex digits>           a finished blob, named by its id
//! ```
//!
//! An append writes the chunk at its offset and `fdatasync`s the file
//! before the store records the new offset, and only then is it answered:
//! an acknowledged chunk survives a crash. A crash between the write and
//! the record leaves the file longer than the recorded offset; the next
//! append cuts it back first. The last append reads the file back through
//! SHA-256 (streamed, 64 KiB at a time), renames it into place and syncs
//! the directory before the store marks the blob finished, so a blob is
//! never served before it is whole and checked. Every file operation runs
//! on the blocking pool; nothing holds more than a chunk in memory.
//!
//! The metadata (owner, size, offset, expiry, who fetched it) is in the
//! store (`store::blobs`); the expiry sweep ([`sweep`]) deletes the files
//! of blobs that expired or were fetched by every recipient, then their
//! rows.

use crate::store::BlobId;
use crate::Shared;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The blob directory inside the data directory.
pub const BLOB_DIR: &str = "blobs";
/// Unfinished uploads, inside [`BLOB_DIR`].
const PARTIAL_DIR: &str = "partial";
/// Rows handled per sweep round.
const SWEEP_BATCH: usize = 256;

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

/// The blob files of one data directory, and the uploads being appended
/// to now (one append at a time per upload).
#[derive(Debug)]
pub(crate) struct Blobs {
    dir: PathBuf,
    busy: Arc<Mutex<HashSet<BlobId>>>,
}

/// An upload held for one append; released when dropped.
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
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self::in_dir(data_dir.join(BLOB_DIR))
    }

    /// The blob files in `dir` (`blob_dir` in the config: a directory
    /// every node of a PostgreSQL service shares).
    pub(crate) fn in_dir(dir: PathBuf) -> Self {
        Self {
            dir,
            busy: Arc::default(),
        }
    }

    fn partial(&self, id: &BlobId) -> PathBuf {
        self.dir.join(PARTIAL_DIR).join(file_name(id))
    }

    fn finished(&self, id: &BlobId) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// Holds upload `id` for one append; `None` while another append to
    /// it runs.
    pub(crate) fn hold(&self, id: BlobId) -> Option<Busy> {
        let mut b = self.busy.lock().ok()?;
        b.insert(id).then(|| Busy {
            id,
            busy: Arc::clone(&self.busy),
        })
    }

    /// Writes `chunk` at `offset` of upload `id` (cutting off whatever an
    /// interrupted append left past `offset`) and flushes it to disk.
    pub(crate) async fn append(&self, id: BlobId, offset: u64, chunk: Bytes) -> io::Result<()> {
        let path = self.partial(&id);
        blocking(move || {
            let parent = path.parent().unwrap_or(Path::new("."));
            let f = match open_private(&path, false) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_private_dir(parent)?;
                    open_private(&path, false)?
                }
                r => r?,
            };
            let created = offset == 0;
            if f.metadata()?.len() != offset {
                f.set_len(offset)?;
            }
            let written = f.write_all_at(&chunk, offset).and_then(|()| f.sync_data());
            if let Err(e) = written {
                // A full disk: give back what the chunk took, so the
                // partial file stays at the acknowledged offset.
                let _ = f.set_len(offset);
                return Err(e);
            }
            if created {
                // The partial file's name must survive a crash too.
                sync_dir(parent)?;
            }
            Ok(())
        })
        .await
    }

    /// Checks a complete upload against `sha256` and moves it into place
    /// (a mismatch deletes it). A crash after the move and before the store
    /// recorded it leaves the blob in place: checked there again.
    pub(crate) async fn finish(
        &self,
        id: BlobId,
        size: u64,
        sha256: [u8; 32],
    ) -> io::Result<Finished> {
        let partial = self.partial(&id);
        let finished = self.finished(&id);
        let dir = self.dir.clone();
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
            let source = if partial.is_file() {
                &partial
            } else {
                &finished
            };
            let len = match std::fs::metadata(source) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Finished::Mismatch),
                Err(e) => return Err(e),
            };
            if len != size || hash_file(source)? != sha256 {
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
    pub(crate) async fn read(
        &self,
        id: BlobId,
        offset: u64,
        max_len: usize,
    ) -> io::Result<Option<Bytes>> {
        let path = self.finished(&id);
        blocking(move || {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut buf = vec![0u8; max_len];
            let mut got = 0;
            while got < max_len {
                let n = f.read_at(&mut buf[got..], offset + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            Ok(Some(Bytes::from(buf)))
        })
        .await
    }

    /// Deletes both files of `id` (either may be missing).
    pub(crate) async fn delete(&self, id: BlobId) -> io::Result<()> {
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

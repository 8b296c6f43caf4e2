//! `ponte server backup`: a consistent copy of a data directory, taken while
//! the server runs.
//!
//! The database is copied with SQLite's `VACUUM INTO`: one read transaction
//! over one snapshot of the WAL database, so the copy holds exactly what was
//! committed when it started, and the server's writer is never held up (in
//! WAL mode readers and the writer do not block each other). A file copy of
//! `ponte.db` alone would miss the WAL and could tear pages mid-write. The
//! copy is then opened and checked (`PRAGMA integrity_check`) before the
//! backup is declared good.
//!
//! The backup is a data directory of its own: `ponte.db`, `server.key`
//! (the same identity, so clients accept the restored server), the
//! records `server.address` and `server.registration` when there are any
//! (so `ponte server address` and `invite` say on the copy what they said
//! on the original), and `blobs/` with every blob that is finished in the
//! copied database (see [`copy_blobs`]). `server.lock` is not copied: it
//! holds nothing. It is built in a hidden staging
//! directory next to the destination and renamed into place only when
//! complete, so an interrupted backup never looks like a good one.

use crate::keyfile::{self, KeyFileError, ADDRESS_FILE, KEY_FILE, REGISTRATION_FILE};
use crate::store::DB_FILE;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// What a backup holds, counted in the copy after its integrity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Accounts.
    pub accounts: u64,
    /// Messages not yet delivered (still in a mailbox).
    pub undelivered: u64,
    /// Size of the copied database, in bytes.
    pub bytes: u64,
}

/// Why a backup failed. Nothing is left at the destination then.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The source holds no database.
    #[error("no server database in {} ({} does not exist)", .0.display(), .0.join(DB_FILE).display())]
    NoDatabase(PathBuf),
    /// The source's database path names something that is not a file.
    #[error("{}: not a file, so not a server database", .0.display())]
    DatabaseNotAFile(PathBuf),
    /// The source's key file is missing or unreadable.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The destination is a file.
    #[error("{} is a file, not a directory: back up into a new directory", .0.display())]
    DestinationNotADirectory(PathBuf),
    /// The destination exists and holds files.
    #[error("{} already exists and is not empty: back up into a new directory", .0.display())]
    DestinationNotEmpty(PathBuf),
    /// A file could not be read or written.
    // The cause is part of the message and not a `source`: callers match
    // on the text (`no such directory`), and reporters that print the
    // chain would say it twice.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// SQLite refused the copy.
    #[error("copying the database")]
    Sqlite(#[source] rusqlite::Error),
    /// The copy failed its integrity check.
    #[error("the copy failed its integrity check: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for BackupError {
    fn from(e: rusqlite::Error) -> Self {
        BackupError::Sqlite(e)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Backs up the data directory `data_dir` into `dest`, a directory that
/// must not exist yet or be empty. Works while a server runs on
/// `data_dir`. Restoring is starting a server with `--data dest`.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<BackupSummary, BackupError> {
    let db = data_dir.join(DB_FILE);
    if !keyfile::dir_exists(data_dir)? || std::fs::symlink_metadata(&db).is_err() {
        return Err(BackupError::NoDatabase(data_dir.to_owned()));
    }
    if !db.is_file() {
        return Err(BackupError::DatabaseNotAFile(db));
    }
    // The key must be readable and valid, or the backup restores nothing
    // clients would accept.
    keyfile::load(data_dir)?;
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::DestinationNotEmpty(dest.to_owned()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(BackupError::DestinationNotADirectory(dest.to_owned()))
        }
        Err(e) => return Err(io(dest)(e)),
    }
    let parent = parent_dir(dest);
    if !parent.is_dir() {
        return Err(BackupError::Io {
            path: parent,
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let staging = parent.join(format!(
        ".{}.partial-{}",
        dest.file_name()
            .map_or_else(|| "backup".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    create_private_dir(&staging)?;
    match fill(data_dir, &staging).and_then(|summary| {
        // Onto a missing or empty directory: rename(2) replaces an empty
        // one, atomically.
        std::fs::rename(&staging, dest).map_err(io(dest))?;
        sync_dir(&parent);
        Ok(summary)
    }) {
        Ok(summary) => Ok(summary),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// The directory `dest` goes in (the staging directory is built there too,
/// `.DEST.partial-PID`: the same file system, so the final rename is atomic).
fn parent_dir(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(io(dir))
}

/// Writes the copy of the database and the key files into `staging`.
fn fill(data_dir: &Path, staging: &Path) -> Result<BackupSummary, BackupError> {
    let copy = staging.join(DB_FILE);
    copy_database(&data_dir.join(DB_FILE), &copy)?;
    let summary = check(&copy)?;
    copy_blobs(data_dir, staging, &copy)?;
    copy_private(&data_dir.join(KEY_FILE), &staging.join(KEY_FILE))?;
    // Written at a server's start: optional.
    for name in [ADDRESS_FILE, REGISTRATION_FILE] {
        let from = data_dir.join(name);
        if from.is_file() {
            copy_private(&from, &staging.join(name))?;
        }
    }
    sync_dir(staging);
    Ok(summary)
}

fn copy_database(source: &Path, copy: &Path) -> Result<(), BackupError> {
    // Read-write (never create): a read-only connection to a WAL database
    // needs the -shm file to exist, which it does not on a stopped server.
    // Nothing is written to the source.
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    src.busy_timeout(Duration::from_secs(30))?;
    // Created empty and private first: SQLite writes into it as it finds it
    // (VACUUM INTO accepts an empty file), so it is never world-readable.
    create_private_file(copy)?;
    let target = copy.to_str().ok_or_else(|| BackupError::Io {
        path: copy.to_owned(),
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the destination path is not valid UTF-8",
        ),
    })?;
    src.execute("VACUUM INTO ?1", [target])?;
    Ok(())
}

/// Opens the copy, checks it, and counts what it holds.
fn check(copy: &Path) -> Result<BackupSummary, BackupError> {
    let db = Connection::open_with_flags(
        copy,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let verdict: Vec<String> = db
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if verdict != ["ok"] {
        return Err(BackupError::Corrupt(verdict.join("; ")));
    }
    let count = |table: &str| -> Result<u64, rusqlite::Error> {
        db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
    };
    let accounts = count("accounts")?;
    let undelivered = count("mailbox")?;
    drop(db);
    let bytes = std::fs::metadata(copy).map_err(io(copy))?.len();
    // The copy is a plain rollback-journal file until a server opens it;
    // make it durable before the backup is said to be done.
    std::fs::File::open(copy)
        .and_then(|f| f.sync_all())
        .map_err(io(copy))?;
    Ok(BackupSummary {
        accounts,
        undelivered,
        bytes,
    })
}

fn create_private_file(path: &Path) -> Result<std::fs::File, BackupError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path).map_err(io(path))
}

/// Copies into `staging/blobs/` the file of every blob that is finished in
/// the database copy `db`. Finished blob files never change (they are
/// renamed into place whole), so a copy taken while the server runs is
/// whole; unfinished uploads are left out (their clients start again). A
/// blob deleted since the database was copied is skipped: its row comes
/// back with the backup, and the restored server's sweep (or a download
/// answered "unknown blob") deals with it. Streamed, one file at a time.
fn copy_blobs(data_dir: &Path, staging: &Path, db: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let has_table = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blobs'")?
        .exists([])?;
    if !has_table {
        return Ok(());
    }
    let ids = conn
        .prepare("SELECT id FROM blobs WHERE finished = 1")?
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Ok(());
    }
    let from_dir = data_dir.join(crate::blobs::BLOB_DIR);
    let to_dir = staging.join(crate::blobs::BLOB_DIR);
    create_private_dir(&to_dir)?;
    for id in ids {
        let Ok(id) = <crate::store::BlobId>::try_from(id.as_slice()) else {
            continue;
        };
        let name = crate::blobs::file_name(&id);
        let from = from_dir.join(&name);
        let mut src = match std::fs::File::open(&from) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&from)(e)),
        };
        let to = to_dir.join(&name);
        let mut dst = create_private_file(&to)?;
        std::io::copy(&mut src, &mut dst).map_err(io(&to))?;
        dst.sync_all().map_err(io(&to))?;
    }
    sync_dir(&to_dir);
    Ok(())
}

/// Copies a small file, private (0600) and synced.
fn copy_private(from: &Path, to: &Path) -> Result<(), BackupError> {
    let bytes = std::fs::read(from).map_err(io(from))?;
    let mut f = create_private_file(to)?;
    std::io::Write::write_all(&mut f, &bytes).map_err(io(to))?;
    f.sync_all().map_err(io(to))
}

/// Best effort: makes a directory's entries (new files, a rename) durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

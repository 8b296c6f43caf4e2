//! The data directory's small files (the database is [`crate::store`]'s):
//!
//! - `server.key`: the server's Noise static key (32 raw secret bytes, file
//!   mode 0600, created on first start).
//! - `server.address`: the address `ponte server` printed at its last start
//!   (one line, `ponte://HOST:PORT#KEY`, mode 0644: it holds nothing
//!   secret), so that `ponte server address` can print it again.
//! - `server.registration`: how the last start took registrations, one
//!   word, `open` or `invite-only` (mode 0644), so that `ponte server
//!   invite` can say when a token is not needed.

use ponte_transport::Keypair;
use ponte_wire::address::ServerAddress;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Key file name inside the data directory.
pub const KEY_FILE: &str = "server.key";

/// Name of the record of the last printed address inside the data directory.
pub const ADDRESS_FILE: &str = "server.address";

/// Name of the record of the last start's registration mode inside the
/// data directory.
pub const REGISTRATION_FILE: &str = "server.registration";

/// Errors loading or creating the key, or reading or writing the address
/// record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading, creating or writing the file failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        error: std::io::Error,
    },
    /// The data directory path names something that is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// The data directory holds no key (the server never started there).
    #[error("no server key in {dir} ({} does not exist)", dir.join(KEY_FILE).display())]
    Missing {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory holds a database but no key: the key was lost
    /// or moved, and a new one would be a new server identity that every
    /// registered client refuses.
    #[error(
        "{dir} holds a server database but no {KEY_FILE}: the key was lost or moved, and a \
         new one would be a new server identity that every registered client refuses. Put \
         {KEY_FILE} back (a backup made by `ponte server backup` holds it); to start over \
         with a new identity and no accounts, move {} away too",
        crate::store::DB_FILE,
        dir = dir.display()
    )]
    LostKey {
        /// The data directory.
        dir: PathBuf,
    },
    /// The file is not 32 bytes.
    #[error("{0}: not a server key (expected 32 bytes)")]
    Corrupt(PathBuf),
    /// The address record does not hold a server address.
    #[error("{0}: not a server address (start the server to write it again, or give both --host and --port)")]
    BadAddress(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |error| KeyFileError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Whether `dir` exists; an error if it exists but is not a directory (a
/// mistyped `--data` naming a file).
pub fn dir_exists(dir: &Path) -> Result<bool, KeyFileError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(KeyFileError::NotADirectory(dir.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // A path component is a file (`file/sub`).
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(KeyFileError::NotADirectory(dir.to_owned()))
        }
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Loads the key from `dir`, or fails if there is none.
pub fn load(dir: &Path) -> Result<Keypair, KeyFileError> {
    if !dir_exists(dir)? {
        return Err(KeyFileError::Missing {
            dir: dir.to_owned(),
        });
    }
    let path = dir.join(KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing {
                dir: dir.to_owned(),
            })
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyFileError::Corrupt(path.clone()))?;
    Ok(Keypair::from_secret(secret))
}

/// Loads the key from `dir`, creating the directory (0700) and a new key
/// (0600) on first start. Returns the key and whether it was just created.
/// A directory that holds a database but no key is refused
/// ([`KeyFileError::LostKey`]): that is no first start.
pub fn load_or_create(dir: &Path) -> Result<(Keypair, bool), KeyFileError> {
    if !dir_exists(dir)? {
        create_dir(dir)?;
    }
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return Ok((load(dir)?, false));
    }
    // A database file: a directory in its place is no database, and
    // opening it fails after this.
    if dir.join(crate::store::DB_FILE).is_file() {
        return Err(KeyFileError::LostKey {
            dir: dir.to_owned(),
        });
    }
    let kp = Keypair::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(io_err(&path))?;
    f.write_all(kp.secret()).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    Ok((kp, true))
}

fn create_dir(dir: &Path) -> Result<(), KeyFileError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Records `addr` as the address printed at this start, replacing the
/// previous record atomically (a new file renamed over the old one), so a
/// reader never sees half a line.
pub fn write_address(dir: &Path, addr: &ServerAddress) -> Result<(), KeyFileError> {
    write_record(dir, ADDRESS_FILE, &format!("{addr}\n"))
}

/// Records whether this start registers only users with an invite,
/// replacing the previous record atomically.
pub fn write_registration(dir: &Path, invite_only: bool) -> Result<(), KeyFileError> {
    let word = if invite_only { "invite-only" } else { "open" };
    write_record(dir, REGISTRATION_FILE, &format!("{word}\n"))
}

/// Whether the last start registered only users with an invite; `None`
/// when there is no record (the server never started there, or was last
/// started by a version that did not write one) or it is unreadable: the
/// record only informs a note, it decides nothing.
pub fn read_registration(dir: &Path) -> Option<bool> {
    match std::fs::read_to_string(dir.join(REGISTRATION_FILE))
        .ok()?
        .trim()
    {
        "invite-only" => Some(true),
        "open" => Some(false),
        _ => None,
    }
}

/// Writes `DIR/NAME` (mode 0644) through a temporary file renamed over it.
fn write_record(dir: &Path, name: &str, text: &str) -> Result<(), KeyFileError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o644);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The address recorded by the last start, or `None` when there is no
/// record (the server never started there, or was last started by a
/// version that did not write one).
pub fn read_address(dir: &Path) -> Result<Option<ServerAddress>, KeyFileError> {
    let path = dir.join(ADDRESS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(KeyFileError::BadAddress(path))
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| KeyFileError::BadAddress(path))
}

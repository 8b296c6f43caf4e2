//! The profile directory: where it is and how it is unlocked.
//!
//! Location: `--profile DIR`, else `$PONTE_PROFILE`, else
//! `$XDG_DATA_HOME/ponte`, else `~/.local/share/ponte`.
//!
//! Layout (directory mode 0700):
//!
//! ```text
//! DIR/ponte.db        SQLite database (+ ponte.db-wal, ponte.db-shm)
//! DIR/profile.key     only without a passphrase: 32 random bytes, mode 0600
//! ```
//!
//! The database's `meta` table records how the profile key is obtained
//! (`kdf` = `keyfile` or `argon2id:m=..,t=..,p=..` with a random `salt`) and a
//! *check value*: a known string sealed with the key, so a wrong passphrase
//! is reported as such instead of as corrupt data.

use crate::atrest::{KdfParams, ProfileKey};
use crate::store::{meta_get, meta_set, open_connection, Store};
use crate::{ClientError, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Database file name inside the profile directory.
pub const DB_FILE: &str = "ponte.db";
/// Key file name (no-passphrase profiles).
pub const KEY_FILE: &str = "profile.key";
const CHECK_PLAINTEXT: &[u8] = b"ponte profile key check v1";

/// How a new profile's key is protected.
#[derive(Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// Derive from this passphrase with Argon2id.
    Passphrase(String, KdfParams),
    /// A random key in `profile.key` (mode 0600).
    KeyFile,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Passphrase(_, p) => write!(f, "Passphrase(.., {p:?})"),
            KeySource::KeyFile => f.write_str("KeyFile"),
        }
    }
}

/// Resolve the profile directory from an explicit flag, then
/// `PONTE_PROFILE`, then the XDG data directory.
pub fn resolve_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let dir = choose_dir(explicit)?;
    // A file where the directory should be: say so, rather than "no
    // registered profile" (and then "File exists" from `register`).
    match std::fs::metadata(&dir) {
        Ok(m) if !m.is_dir() => Err(ClientError::Invalid(format!(
            "{} is not a directory: a profile is a directory (--profile DIR or PONTE_PROFILE)",
            dir.display()
        ))),
        _ => Ok(dir),
    }
}

fn choose_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("PONTE_PROFILE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p).join("ponte"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/ponte")),
        None => Err(ClientError::Invalid(
            "no profile directory: pass --profile DIR or set PONTE_PROFILE".into(),
        )),
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let context = context.into();
    move |error| ClientError::Io { context, error }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// An existing profile database opened read-only, after checking that it
/// is one: an SQLite database with the profile's `meta` table. Nothing is
/// written to the file, whatever it holds.
fn open_read_only(db: &Path) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let not_a_profile = |why: &str| {
        ClientError::Invalid(format!(
            "{} is not a Ponte profile database ({why}); it was left as it is. Restore the \
             profile from a copy, or move the file away and run `ponte register` for a new one",
            db.display()
        ))
    };
    let empty = std::fs::metadata(db)
        .map(|m| m.len() == 0)
        .map_err(|error| ClientError::Io {
            context: format!("reading {}", db.display()),
            error,
        })?;
    if empty {
        return Err(not_a_profile("the file is empty"));
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )
        .map_err(|_| not_a_profile("not an SQLite database"))?;
    if tables == 0 {
        return Err(not_a_profile("it holds no profile settings"));
    }
    Ok(conn)
}

/// An open, unlocked profile.
#[derive(Debug)]
pub struct Profile {
    dir: PathBuf,
    store: Store,
}

impl Profile {
    /// Whether `dir` holds a profile database.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).exists()
    }

    /// Whether the profile in `dir` needs a passphrase to open.
    pub fn needs_passphrase(dir: &Path) -> Result<bool> {
        let conn = open_read_only(&dir.join(DB_FILE))?;
        Ok(meta_get(&conn, "kdf")?.is_some_and(|k| k != "keyfile"))
    }

    /// Create a new profile in `dir` (created 0700 if missing). Fails if a
    /// profile already exists there.
    pub fn create(dir: &Path, source: KeySource) -> Result<Self> {
        if Self::exists(dir) {
            return Err(ClientError::Invalid(format!(
                "a profile already exists in {}",
                dir.display()
            )));
        }
        create_dir_private(dir)?;
        let db = dir.join(DB_FILE);
        let conn = open_connection(&db)?;
        let key = match source {
            KeySource::KeyFile => {
                let master: [u8; 32] = rand::random();
                write_key_file(&dir.join(KEY_FILE), &master)?;
                meta_set(&conn, "kdf", "keyfile")?;
                ProfileKey::from_master(&master)
            }
            KeySource::Passphrase(pass, params) => {
                let salt: [u8; 16] = rand::random();
                let key = ProfileKey::from_passphrase(&pass, &salt, params)
                    .map_err(|e| ClientError::Invalid(e.to_string()))?;
                meta_set(&conn, "kdf", &params.encode())?;
                meta_set(&conn, "salt", &hex(&salt))?;
                key
            }
        };
        meta_set(
            &conn,
            "check",
            &hex(&key.seal(b"ponte/meta/check", CHECK_PLAINTEXT)),
        )?;
        drop(conn);
        Ok(Self {
            dir: dir.to_owned(),
            store: Store::open_with_key(&db, key)?,
        })
    }

    /// Open an existing profile. `passphrase` is called only if the profile
    /// is passphrase-protected.
    pub fn open(dir: &Path, passphrase: impl FnOnce() -> Result<String>) -> Result<Self> {
        if !Self::exists(dir) {
            return Err(ClientError::NotRegistered(dir.display().to_string()));
        }
        let db = dir.join(DB_FILE);
        // Read only until the key check passes: a file that is not this
        // profile's database (empty, another file) is left as it is.
        let conn = open_read_only(&db)?;
        let kdf = meta_get(&conn, "kdf")?.ok_or(ClientError::Corrupt("no kdf recorded"))?;
        let key = if kdf == "keyfile" {
            ProfileKey::from_master(&read_key_file(&dir.join(KEY_FILE))?)
        } else {
            let params = KdfParams::decode(&kdf).ok_or(ClientError::Corrupt("kdf parameters"))?;
            let salt = meta_get(&conn, "salt")?
                .and_then(|s| unhex(&s))
                .ok_or(ClientError::Corrupt("salt"))?;
            let pass = passphrase()?;
            ProfileKey::from_passphrase(&pass, &salt, params)
                .map_err(|_| ClientError::Corrupt("kdf parameters"))?
        };
        let check = meta_get(&conn, "check")?
            .and_then(|s| unhex(&s))
            .ok_or(ClientError::Corrupt("key check value"))?;
        match key.open(b"ponte/meta/check", &check) {
            Ok(v) if v == CHECK_PLAINTEXT => {}
            _ if kdf == "keyfile" => {
                return Err(ClientError::Invalid(format!(
                    "{} does not unlock the profile in {}: it is another profile's key file. \
                     Put this profile's own back (from the copy it came with)",
                    dir.join(KEY_FILE).display(),
                    dir.display()
                )))
            }
            _ => return Err(ClientError::WrongPassphrase),
        }
        drop(conn);
        Ok(Self {
            dir: dir.to_owned(),
            store: Store::open_with_key(&db, key)?,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn create_dir_private(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("restricting {}", dir.display())))?;
    }
    Ok(())
}

fn write_key_file(path: &Path, key: &[u8; 32]) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    f.write_all(key)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.sync_all()
        .map_err(io_err(format!("syncing {}", path.display())))?;
    Ok(())
}

fn read_key_file(path: &Path) -> Result<[u8; 32]> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        // The profile has no passphrase: this file is its only key.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ClientError::Invalid(format!(
                "{} is missing: this profile is locked with that key file (it has no \
                 passphrase) and cannot be opened without it. Put the file back from a copy \
                 of the profile; a new one cannot be made",
                path.display()
            )))
        }
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    bytes.try_into().map_err(|_| {
        ClientError::Invalid(format!(
            "{} is not a profile key file (it must hold 32 bytes): the profile cannot be \
             opened without its own. Put it back from a copy of the profile",
            path.display()
        ))
    })
}

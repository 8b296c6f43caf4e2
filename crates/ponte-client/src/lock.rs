//! Who holds a profile: `ponte app` keeps the profile's one live
//! connection for as long as it runs, and the CLI must not open a second
//! one behind its back (the server would hand the connection over at each
//! login, and both would write the same database).
//!
//! The lock is an advisory file lock (`flock`) on `ponte.lock` in the
//! profile directory: the app takes it exclusively ([`ProfileLock::exclusive`]),
//! every CLI command on an existing profile takes it shared
//! ([`ProfileLock::shared`]). Either side that finds the other gets a clear
//! [`ClientError::Invalid`] naming the holder. The kernel releases the lock
//! when the process ends, however it ends, so a crash leaves nothing stale.

use crate::{ClientError, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

/// Lock file name inside the profile directory.
pub const LOCK_FILE: &str = "ponte.lock";

/// A held lock on a profile; released when dropped.
#[derive(Debug)]
pub struct ProfileLock {
    _file: File,
}

fn open_lock(dir: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(dir.join(LOCK_FILE))
}

fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(200).read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "another ponte process".to_owned()
    } else {
        text.chars().filter(|c| !c.is_control()).collect()
    }
}

impl ProfileLock {
    /// Take the profile in `dir` for this process alone (the app), creating
    /// `dir` (0700) if missing; `who` is written into the lock file so the
    /// CLI can name the holder ("ponte app, pid 1234").
    pub fn exclusive(dir: &Path, who: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|error| ClientError::Io {
            context: format!("creating {}", dir.display()),
            error,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut file = open_lock(dir).map_err(|error| ClientError::Io {
            context: format!("opening {}", dir.join(LOCK_FILE).display()),
            error,
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(ClientError::Invalid(format!(
                    "the profile in {} is in use by {}: close it first",
                    dir.display(),
                    holder(&mut file)
                )))
            }
            Err(TryLockError::Error(error)) => {
                return Err(ClientError::Io {
                    context: format!("locking {}", dir.join(LOCK_FILE).display()),
                    error,
                })
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(who.as_bytes()))
            .and_then(|()| file.flush());
        if let Err(error) = written {
            return Err(ClientError::Io {
                context: format!("writing {}", dir.join(LOCK_FILE).display()),
                error,
            });
        }
        Ok(Self { _file: file })
    }

    /// Share the profile in `dir` with other CLI commands, refusing while
    /// an app holds it. A directory without a profile is not locked (and
    /// nothing is created in it): `Ok(None)`; so is a profile whose lock
    /// file cannot be created (a read-only copy): nothing else can hold it.
    pub fn shared(dir: &Path) -> Result<Option<Self>> {
        if !crate::Profile::exists(dir) {
            return Ok(None);
        }
        let Ok(mut file) = open_lock(dir) else {
            return Ok(None);
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Err(ClientError::Invalid(format!(
                "the profile in {} is in use by {}, which holds its connection: use it there, \
                 or close it and run this command again",
                dir.display(),
                holder(&mut file)
            ))),
            Err(TryLockError::Error(error)) => Err(ClientError::Io {
                context: format!("locking {}", dir.join(LOCK_FILE).display()),
                error,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_app_and_the_cli_exclude_each_other_and_name_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        // No profile yet: the CLI takes nothing and creates nothing.
        assert!(ProfileLock::shared(&dir).unwrap().is_none());
        assert!(!dir.exists());
        let app = ProfileLock::exclusive(&dir, "ponte app, pid 42").unwrap();
        // A second app is refused.
        let e = ProfileLock::exclusive(&dir, "x").unwrap_err().to_string();
        assert!(e.contains("in use by ponte app, pid 42"), "{e}");
        // A profile database makes the CLI look: refused while the app runs.
        std::fs::write(dir.join(crate::profile::DB_FILE), b"").unwrap();
        let e = ProfileLock::shared(&dir).unwrap_err().to_string();
        assert!(e.contains("in use by ponte app, pid 42"), "{e}");
        drop(app);
        // Released: CLI commands share it, and keep the app out meanwhile.
        let a = ProfileLock::shared(&dir).unwrap().unwrap();
        let b = ProfileLock::shared(&dir).unwrap().unwrap();
        assert!(ProfileLock::exclusive(&dir, "app").is_err());
        drop((a, b));
        ProfileLock::exclusive(&dir, "app").unwrap();
    }
}

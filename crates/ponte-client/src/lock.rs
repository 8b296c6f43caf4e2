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
//!
//! `ponte listen` keeps the profile's connection too, but other CLI
//! commands go on working beside it: it holds a second lock,
//! [`LiveLock`] on `ponte.live`, and a `ponte send` that finds it held
//! writes its message into the outbox and lets the listener send it (the
//! listener flushes the outbox when another process changed it), instead
//! of logging in as the same device and pushing the listener off.

use crate::{ClientError, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

/// Lock file name inside the profile directory.
pub const LOCK_FILE: &str = "ponte.lock";

/// The file `ponte listen` locks while it holds the profile's connection.
pub const LIVE_FILE: &str = "ponte.live";

/// A held lock on a profile; released when dropped.
#[derive(Debug)]
pub struct ProfileLock {
    _file: File,
}

fn open_lock(dir: &Path) -> std::io::Result<File> {
    open_file(&dir.join(LOCK_FILE))
}

fn open_file(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
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

/// `ponte listen`'s claim on a profile's connection; released when
/// dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct LiveLock {
    _file: File,
}

impl LiveLock {
    /// Claim the connection of the profile in `dir` for this process;
    /// `who` names it to others ("ponte listen, pid 1234"). A second
    /// claimant is refused, naming the first: two listeners would take the
    /// device's connection from each other at every login.
    pub fn claim(dir: &Path, who: &str) -> Result<Self> {
        let path = dir.join(LIVE_FILE);
        let io = |error| ClientError::Io {
            context: format!("locking {}", path.display()),
            error,
        };
        let mut file = open_file(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(ClientError::Invalid(format!(
                "{} already holds the connection of the profile in {}: use it, or stop it first",
                holder(&mut file),
                dir.display()
            )))
            }
            Err(TryLockError::Error(error)) => return Err(io(error)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(who.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(io)?;
        Ok(Self { _file: file })
    }

    /// Who holds the connection of the profile in `dir` now, if another
    /// process does (its own description). Nothing is left locked.
    pub fn holder(dir: &Path) -> Result<Option<String>> {
        let path = dir.join(LIVE_FILE);
        let mut file = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(ClientError::Io {
                    context: format!("opening {}", path.display()),
                    error,
                })
            }
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(holder(&mut file))),
            Err(TryLockError::Error(error)) => Err(ClientError::Io {
                context: format!("locking {}", path.display()),
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

    #[test]
    fn one_listener_holds_the_connection_and_others_see_who() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Nobody yet (and asking creates nothing).
        assert_eq!(LiveLock::holder(dir).unwrap(), None);
        assert!(!dir.join(LIVE_FILE).exists());
        let live = LiveLock::claim(dir, "ponte listen, pid 42").unwrap();
        let e = LiveLock::claim(dir, "ponte listen, pid 43")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ponte listen, pid 42 already holds"), "{e}");
        assert_eq!(
            LiveLock::holder(dir).unwrap().as_deref(),
            Some("ponte listen, pid 42")
        );
        // Asking leaves nothing locked.
        assert_eq!(
            LiveLock::holder(dir).unwrap().as_deref(),
            Some("ponte listen, pid 42")
        );
        drop(live);
        assert_eq!(LiveLock::holder(dir).unwrap(), None);
        drop(LiveLock::claim(dir, "ponte listen, pid 44").unwrap());
    }
}

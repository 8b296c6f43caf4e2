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
//!
//! Both processes then keep using the profile's keys: the device's Olm
//! account, the pairwise sessions, the group sender sessions. Each of
//! those is read, advanced and written back, and two processes that did
//! that at once would each write back a state the other never saw: one
//! ratchet step lost (a message key used twice, a message the recipient
//! cannot open), one-time keys whose private halves are gone, a group's
//! new sender key (after a removal) replaced by the old one. So every use
//! of the keys, from reading them to writing them back, holds [`Keys`]: an
//! exclusive `flock` on `ponte.keys`, taken for one flush of the outbox,
//! one message received, one group change, and let go at once.

use crate::{ClientError, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The file a process locks while it uses the profile's keys ([`Keys`]).
pub const KEYS_FILE: &str = "ponte.keys";

/// How long a process waits for another one's use of the keys (a flush
/// of a long outbox over a slow route can take a while) before it gives
/// up with an error; nothing is lost then (it was not begun).
pub const KEYS_WAIT: Duration = Duration::from_secs(120);

/// How often a waiting process tries the lock again.
const KEYS_POLL: Duration = Duration::from_millis(5);

/// The lock on a profile's keys (see the module docs), one per open
/// client. It excludes the other processes of the profile (`flock`) and
/// the other clients of the profile in this process (the app has two,
/// whose uses of the keys run on different threads), and it is
/// re-entrant within its client: an operation that holds the keys may
/// call another that takes them (a group change flushes the outbox).
///
/// A client waits for another of the same process with
/// [`Keys::take_blocking`] only from a thread the holder does not need:
/// in the app the holder (the connection's client) runs on the runtime's
/// own thread and the waiter (the API's) on a worker.
///
/// A clone is the same client's handle ([`crate::Client::keys`]): its
/// holds nest with the client's, so a caller may wait for the keys before
/// it takes whatever guards the client (the app waits before it locks
/// its API's client, so that a wait does not hold up the API's other
/// requests).
#[derive(Debug, Clone)]
pub struct Keys {
    path: PathBuf,
    /// This client, among those of the profile in this process.
    client: u64,
    /// Shared by the clients of the profile in this process.
    state: Arc<Mutex<KeysState>>,
}

#[derive(Debug, Default)]
struct KeysState {
    /// Opened at the first use and kept open (one per process, as `flock`
    /// locks are per open file); locked while `depth > 0`.
    file: Option<File>,
    /// The client that holds the keys, and how many of its holds are open.
    owner: u64,
    depth: usize,
}

/// A hold on [`Keys`]; the lock goes with the last hold.
#[derive(Debug)]
#[must_use = "the keys are let go when the hold is dropped"]
pub struct KeysHold {
    state: Arc<Mutex<KeysState>>,
    /// The hold took the lock (no other hold of this client had it), so
    /// another process may have changed the keys since this client last
    /// used them.
    first: bool,
}

impl KeysHold {
    /// Whether this hold took the lock, rather than joining a hold this
    /// client already had.
    pub fn first(&self) -> bool {
        self.first
    }
}

impl Drop for KeysHold {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.depth = st.depth.saturating_sub(1);
        if st.depth == 0 {
            if let Some(file) = &st.file {
                // Closing the file would release it too; the file stays
                // open for the next hold. An unlock that fails leaves the
                // lock until the process ends: the other process then
                // waits and gives up with a clear error.
                let _ = file.unlock();
            }
        }
    }
}

impl Keys {
    /// The keys of the profile in `dir` (nothing is opened yet), shared
    /// with the other clients of that profile in this process.
    pub fn new(dir: &Path) -> Self {
        static SHARED: Mutex<Vec<(PathBuf, std::sync::Weak<Mutex<KeysState>>)>> =
            Mutex::new(Vec::new());
        let path = dir.join(KEYS_FILE);
        let path = std::path::absolute(&path).unwrap_or(path);
        static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let client = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.retain(|(_, state)| state.strong_count() > 0);
        let state = shared
            .iter()
            .find(|(p, _)| *p == path)
            .and_then(|(_, state)| state.upgrade())
            .unwrap_or_else(|| {
                let state = Arc::default();
                shared.push((path.clone(), Arc::downgrade(&state)));
                state
            });
        Self {
            path,
            client,
            state,
        }
    }

    /// Takes the keys if nobody else has them: `None` while another
    /// process (or another client of this one) holds them.
    fn try_take(&self) -> Result<Option<KeysHold>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.depth > 0 {
            if st.owner != self.client {
                return Ok(None);
            }
            st.depth += 1;
            return Ok(Some(KeysHold {
                state: Arc::clone(&self.state),
                first: false,
            }));
        }
        let io = |error| ClientError::Io {
            context: format!("locking {}", self.path.display()),
            error,
        };
        if st.file.is_none() {
            st.file = Some(open_file(&self.path).map_err(io)?);
        }
        let Some(file) = &st.file else {
            return Ok(None);
        };
        match file.try_lock() {
            Ok(()) => {
                st.owner = self.client;
                st.depth = 1;
                Ok(Some(KeysHold {
                    state: Arc::clone(&self.state),
                    first: true,
                }))
            }
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(io(error)),
        }
    }

    fn busy(&self) -> ClientError {
        ClientError::Invalid(format!(
            "another ponte process kept this profile's keys ({}) busy for {} s; nothing was \
             done, try again",
            self.path.display(),
            KEYS_WAIT.as_secs()
        ))
    }

    /// Takes the keys, waiting (at most [`KEYS_WAIT`]) while another
    /// process uses them.
    pub async fn take(&self) -> Result<KeysHold> {
        let deadline = Instant::now() + KEYS_WAIT;
        loop {
            if let Some(hold) = self.try_take()? {
                return Ok(hold);
            }
            if Instant::now() >= deadline {
                return Err(self.busy());
            }
            tokio::time::sleep(KEYS_POLL).await;
        }
    }

    /// [`Keys::take`] for code that cannot wait asynchronously: the thread
    /// sleeps while it waits.
    pub fn take_blocking(&self) -> Result<KeysHold> {
        let deadline = Instant::now() + KEYS_WAIT;
        loop {
            if let Some(hold) = self.try_take()? {
                return Ok(hold);
            }
            if Instant::now() >= deadline {
                return Err(self.busy());
            }
            std::thread::sleep(KEYS_POLL);
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

#[cfg(test)]
mod keys_tests {
    #![allow(clippy::unwrap_used)]
    use super::{open_file, Keys, KEYS_FILE};

    /// Another process's hold on the keys: its own open file, locked.
    fn other_process(dir: &std::path::Path) -> std::fs::File {
        let file = open_file(&dir.join(KEYS_FILE)).unwrap();
        file.try_lock().unwrap();
        file
    }

    /// The keys are held by one client at a time, of this process or
    /// another; a client's nested holds share its lock, which goes with
    /// the last of them.
    #[test]
    fn the_keys_are_held_by_one_client_at_a_time_and_nest_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Keys::new(dir.path()), Keys::new(dir.path()));
        let outer = a.try_take().unwrap().unwrap();
        assert!(outer.first());
        let inner = a.try_take().unwrap().unwrap();
        assert!(!inner.first(), "a nested hold joins the client's lock");
        assert!(b.try_take().unwrap().is_none(), "another client waits");
        let probe = open_file(&dir.path().join(KEYS_FILE)).unwrap();
        assert!(probe.try_lock().is_err(), "another process waits");
        drop(outer);
        assert!(probe.try_lock().is_err(), "the nested hold still has it");
        assert!(b.try_take().unwrap().is_none());
        drop(inner);
        let theirs = b.try_take().unwrap().unwrap();
        assert!(theirs.first());
        assert!(a.try_take().unwrap().is_none());
        drop(theirs);
        probe.try_lock().unwrap();
        assert!(a.try_take().unwrap().is_none(), "this process now waits");
        drop(probe);
        assert!(a.try_take().unwrap().unwrap().first());
    }

    /// A client of this process waiting on another thread gets the keys
    /// once the holder lets them go.
    #[test]
    fn a_client_on_another_thread_waits_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Keys::new(dir.path()), Keys::new(dir.path()));
        let held = a.try_take().unwrap().unwrap();
        let waiter = std::thread::spawn(move || b.take_blocking().map(|h| h.first()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "it waits while the keys are held");
        drop(held);
        assert!(waiter.join().unwrap().unwrap());
    }

    /// A waiting client gets the keys as soon as the other process lets
    /// them go.
    #[tokio::test]
    async fn a_waiting_client_takes_the_keys_once_they_are_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let held = other_process(dir.path());
        let keys = Keys::new(dir.path());
        let waiter = tokio::spawn(async move { keys.take().await.map(|h| h.first()) });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "it waits while the keys are held");
        drop(held);
        let took = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(took);
    }
}

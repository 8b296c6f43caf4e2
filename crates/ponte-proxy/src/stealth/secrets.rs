//! Per-link secrets: the file, and the live set a running relay checks.
//!
//! ```toml
//! [[secret]]
//! label = "family"
//! secret = "3q2-7wAAAAAAAAAAAAAAAA"   # 16 bytes, unpadded base64url
//! created = 1800000000                 # unix seconds
//! expires = 1802592000                 # optional
//! max_connections = 20                 # optional, open at once
//! ```
//!
//! The file is written whole to a temporary file with mode 0600 in the same
//! directory and renamed over the old one, so a reader sees the old or the
//! new set, never half of one. A running relay reloads it when its
//! modification time or size changes (checked every [`RELOAD_EVERY`]) or on
//! SIGHUP. Each label keeps one [`Link`] for as long as it is in the file:
//! its open-connection count and metrics survive reloads, and a revoked
//! label's connections are told to end ([`Link::revoked`]) while other
//! labels' connections go on untouched.

use ponte_wire::stealth::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How often a running relay looks at the secrets file.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Longest secrets file read.
const MAX_FILE: u64 = 4 << 20;

/// One entry of the secrets file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    /// The operator's name for the link (unique in the file).
    pub label: String,
    /// The secret, unpadded base64url.
    pub secret: String,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Expiry, unix seconds; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Connections open at once with this link; absent: no cap of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl std::fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEntry")
            .field("label", &self.label)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// The secrets file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    /// Entries, in the order they were added.
    #[serde(default)]
    pub secret: Vec<SecretEntry>,
}

/// A secrets file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// I/O.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// Not a valid secrets file.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A label the operator may give a link: letters, digits, `-`, `_`, `.`,
/// 1 to 64 bytes (it appears in metrics and on the status page).
pub fn valid_label(label: &str) -> bool {
    (1..=64).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl SecretsFile {
    /// Reads `path`; a missing file is an empty set.
    pub fn load(path: &Path) -> Result<SecretsFile, SecretsError> {
        let io = |error| SecretsError::Io {
            path: path.to_path_buf(),
            error,
        };
        let text = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SecretsFile::default()),
            Err(e) => return Err(io(e)),
            Ok(m) if m.len() > MAX_FILE => {
                return Err(SecretsError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("larger than {MAX_FILE} bytes"),
                })
            }
            Ok(_) => std::fs::read_to_string(path).map_err(io)?,
        };
        let invalid = |message: String| SecretsError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: SecretsFile =
            toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?;
        let mut labels = std::collections::HashSet::new();
        for e in &file.secret {
            if !valid_label(&e.label) {
                return Err(invalid(format!(
                    "label `{}`: use letters, digits, -, _ and .",
                    e.label
                )));
            }
            if !labels.insert(e.label.as_str()) {
                return Err(invalid(format!("label `{}` is used twice", e.label)));
            }
            if Secret::from_text(&e.secret).is_err() {
                return Err(invalid(format!(
                    "label `{}`: the secret is not 22 characters of base64url",
                    e.label
                )));
            }
        }
        Ok(file)
    }

    /// Adds a link with a new random secret; `None` when `label` is taken
    /// or not a valid label.
    pub fn add(
        &mut self,
        label: &str,
        expires: Option<u64>,
        max_connections: Option<u32>,
    ) -> Option<Secret> {
        if !valid_label(label) || self.secret.iter().any(|e| e.label == label) {
            return None;
        }
        let mut bytes = [0u8; ponte_wire::stealth::SECRET_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let secret = Secret::from_bytes(bytes);
        self.secret.push(SecretEntry {
            label: label.to_owned(),
            secret: secret.to_text(),
            created: now_unix(),
            expires,
            max_connections,
        });
        Some(secret)
    }

    /// A label not in use yet: `link-1`, `link-2`, …
    pub fn free_label(&self) -> String {
        (1..)
            .map(|i| format!("link-{i}"))
            .find(|l| self.secret.iter().all(|e| &e.label != l))
            .unwrap_or_else(|| "link".to_owned())
    }

    /// Removes `label`; whether it was there.
    pub fn revoke(&mut self, label: &str) -> bool {
        let before = self.secret.len();
        self.secret.retain(|e| e.label != label);
        self.secret.len() != before
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), SecretsError> {
        let io = |error| SecretsError::Io {
            path: path.to_path_buf(),
            error,
        };
        let text = toml::to_string(self).map_err(|e| SecretsError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().map_or_else(
            || "secrets.toml".into(),
            |n| n.to_string_lossy().into_owned(),
        );
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let written = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(
                b"# Ponte stealth relay link secrets: keep private (ponte proxy secret ...).\n",
            )?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }
}

/// The live state of one label: shared by its connections and kept across
/// reloads while the label stays in the file.
#[derive(Debug)]
pub struct Link {
    /// The label.
    pub label: String,
    open: AtomicU32,
    revoked: CancellationToken,
}

impl Link {
    fn new(label: &str) -> Self {
        Link {
            label: label.to_owned(),
            open: AtomicU32::new(0),
            revoked: CancellationToken::new(),
        }
    }

    /// Connections open now with this link.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Completes when the label is removed from the file.
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoked
    }
}

/// A connection counted against its link until dropped.
#[derive(Debug)]
pub struct LinkGuard(Arc<Link>);

impl LinkGuard {
    /// The link.
    pub fn link(&self) -> &Arc<Link> {
        &self.0
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A usable secret with its link state.
#[derive(Debug)]
struct Active {
    secret: Secret,
    expires: Option<u64>,
    max: Option<u32>,
    link: Arc<Link>,
}

/// The set of secrets a running relay checks, replaced whole on reload.
#[derive(Debug, Default)]
pub struct SecretSet {
    active: Vec<Active>,
}

/// What a check of a hello's secret index gives.
impl SecretSet {
    /// The secrets, in order, for [`ponte_wire::stealth::tag::verify`].
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.active.iter().map(|a| &a.secret)
    }

    /// The secret at `index`.
    pub fn secret(&self, index: usize) -> Option<&Secret> {
        self.active.get(index).map(|a| &a.secret)
    }

    /// Admits a connection on the secret at `index`: `None` when it has
    /// expired or its link is at its connection cap.
    pub fn admit(&self, index: usize, now: u64) -> Option<LinkGuard> {
        let a = self.active.get(index)?;
        if a.expires.is_some_and(|e| now >= e) {
            return None;
        }
        let prev = a.link.open.fetch_add(1, Ordering::Relaxed);
        let guard = LinkGuard(Arc::clone(&a.link));
        if a.max.is_some_and(|m| prev >= m) {
            return None; // the guard's drop undoes the count
        }
        Some(guard)
    }

    /// The links, in file order.
    pub fn links(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.active.iter().map(|a| &a.link)
    }

    /// The number of secrets.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// No secrets at all (every connection goes to the cover).
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

/// The secrets of a stealth listener, with what is needed to reload them.
#[derive(Debug)]
pub struct Secrets {
    path: PathBuf,
    set: RwLock<Arc<SecretSet>>,
    stamp: std::sync::Mutex<Option<(SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Secrets {
    /// Loads `path` (a missing file is an empty set).
    pub fn open(path: &Path) -> Result<Secrets, SecretsError> {
        let s = Secrets {
            path: path.to_path_buf(),
            set: RwLock::new(Arc::new(SecretSet::default())),
            stamp: std::sync::Mutex::new(None),
        };
        s.reload(true)?;
        Ok(s)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The set now.
    pub fn current(&self) -> Arc<SecretSet> {
        match self.set.read() {
            Ok(s) => Arc::clone(&s),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Reloads when the file changed (or always with `force`). Returns
    /// whether the set was replaced. On error the old set stays.
    pub fn reload(&self, force: bool) -> Result<bool, SecretsError> {
        let now_stamp = stamp(&self.path);
        {
            let last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *last == now_stamp {
                return Ok(false);
            }
        }
        let file = SecretsFile::load(&self.path)?;
        let old = self.current();
        let mut by_label: HashMap<&str, &Arc<Link>> =
            old.links().map(|l| (l.label.as_str(), l)).collect();
        let mut active = Vec::with_capacity(file.secret.len());
        for e in &file.secret {
            let Ok(secret) = Secret::from_text(&e.secret) else {
                continue;
            };
            let link = by_label
                .remove(e.label.as_str())
                .map_or_else(|| Arc::new(Link::new(&e.label)), Arc::clone);
            active.push(Active {
                secret,
                expires: e.expires,
                max: e.max_connections,
                link,
            });
        }
        // Labels no longer in the file: their connections end.
        for gone in by_label.values() {
            gone.revoked.cancel();
        }
        let new = Arc::new(SecretSet { active });
        match self.set.write() {
            Ok(mut s) => *s = new,
            Err(p) => *p.into_inner() = new,
        }
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now_stamp;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set_with(expires: Option<u64>, max: Option<u32>) -> (tempfile::TempDir, Secrets) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        let mut f = SecretsFile::default();
        f.add("a", None, None).unwrap();
        f.secret[0].expires = expires;
        f.secret[0].max_connections = max;
        f.save(&path).unwrap();
        let s = Secrets::open(&path).unwrap();
        (dir, s)
    }

    #[test]
    fn expired_link_is_not_admitted() {
        let (_d, s) = set_with(Some(1000), None);
        let set = s.current();
        assert!(set.admit(0, 999).is_some());
        assert!(set.admit(0, 1000).is_none());
    }

    #[test]
    fn link_cap_counts_open_connections() {
        let (_d, s) = set_with(None, Some(2));
        let set = s.current();
        let a = set.admit(0, 1).unwrap();
        let b = set.admit(0, 1).unwrap();
        assert!(set.admit(0, 1).is_none());
        assert_eq!(a.link().open(), 2);
        drop(b);
        assert!(set.admit(0, 1).is_some());
        drop(a);
        assert_eq!(set.links().next().unwrap().open(), 0);
    }

    #[test]
    fn reload_keeps_link_state_and_cancels_removed_labels() {
        let (d, s) = set_with(None, None);
        let path = d.path().join("secrets.toml");
        let mut f = SecretsFile::load(&path).unwrap();
        f.add("b", None, None).unwrap();
        f.save(&path).unwrap();
        assert!(s.reload(true).unwrap());
        let set = s.current();
        let guard_a = set.admit(0, 1).unwrap();
        let link_b = Arc::clone(set.links().nth(1).unwrap());
        assert!(f.revoke("b"));
        assert!(!f.revoke("b"));
        f.save(&path).unwrap();
        assert!(s.reload(true).unwrap());
        assert!(link_b.revoked().is_cancelled());
        assert!(!guard_a.link().revoked().is_cancelled());
        let now = s.current();
        assert_eq!(now.len(), 1);
        assert!(Arc::ptr_eq(now.links().next().unwrap(), guard_a.link()));
        assert_eq!(now.links().next().unwrap().open(), 1);
        assert_eq!(f.free_label(), "link-1");
        assert!(f.add("a", None, None).is_none(), "labels are unique");
        assert!(f.add("bad label", None, None).is_none());
    }
}

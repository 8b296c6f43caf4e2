//! The `files` table: one row per file message, sent or received.
//!
//! An outgoing file is queued as its history row (the caption, status
//! queued) and a `files` row in state [`FileState::Upload`] whose path is
//! the encrypted copy in the profile's files directory; once the blob is
//! uploaded, one transaction moves the row to [`FileState::Uploaded`] and
//! puts the message (the descriptor) into the outbox. An incoming file
//! arrives in state [`FileState::Pending`] and becomes
//! [`FileState::Fetched`] with the path of the decrypted file. The
//! descriptor (key included) and the path are sealed with the profile key.

use super::messages::insert_outbox;
use super::{aad, row_key, FileSummary, MessageView, OutboxKind, Status, Store, UnixMillis};
use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::{FileDescriptor, MessageId};
use rusqlite::{params, Transaction};
use std::path::PathBuf;

/// Where a fetch asked of the process holding the connection stands
/// ([`Store::fetch_want`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAsked {
    /// Not tried yet.
    Waiting,
    /// Tried, and it failed: why.
    Failed(String),
}

/// Prefix of the `meta` keys of fetches asked for ([`Store::want_fetch`]),
/// and of the sealed reasons of those that failed.
const WANT_PREFIX: &str = "fetch_wanted:";

fn want_key(id: &MessageId) -> String {
    format!("{WANT_PREFIX}{}", id.to_hex())
}

/// Where a file message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileState {
    /// Outgoing: encrypted locally, the blob not (fully) uploaded yet.
    Upload,
    /// Outgoing: the blob is on the server, the message in the outbox or sent.
    Uploaded,
    /// Incoming: not downloaded yet.
    Pending,
    /// Incoming: downloaded, checked and decrypted to its path.
    Fetched,
}

impl FileState {
    pub(super) fn to_i64(self) -> i64 {
        match self {
            FileState::Upload => 0,
            FileState::Uploaded => 1,
            FileState::Pending => 2,
            FileState::Fetched => 3,
        }
    }

    fn from_i64(v: i64) -> Result<Self> {
        Ok(match v {
            0 => FileState::Upload,
            1 => FileState::Uploaded,
            2 => FileState::Pending,
            3 => FileState::Fetched,
            _ => return Err(ClientError::Corrupt("file state")),
        })
    }
}

/// One file message.
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// The contact.
    pub peer: String,
    /// Whether we sent it.
    pub outgoing: bool,
    /// The message id.
    pub id: MessageId,
    /// Blob id, key, hash, name, size, type, caption.
    pub descriptor: FileDescriptor,
    /// Upload or download state.
    pub state: FileState,
    /// Outgoing and not uploaded: the encrypted copy. Incoming and
    /// fetched: the decrypted file.
    pub path: Option<PathBuf>,
}

/// Paths are stored as UTF-8 (the files directory's names are sanitised
/// UTF-8; a non-UTF-8 directory is stored lossily).
fn path_bytes(path: &std::path::Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn insert_file(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    peer: &str,
    outgoing: bool,
    id: &MessageId,
    fd: &FileDescriptor,
    state: FileState,
    path: Option<&std::path::Path>,
) -> Result<()> {
    let row = row_key(peer, outgoing, id);
    let descriptor = key.seal(&aad("files", "descriptor", &row), &fd.to_bytes()?);
    let path = path.map(|p| key.seal(&aad("files", "path", &row), &path_bytes(p)));
    tx.execute(
        "INSERT OR IGNORE INTO files(peer, outgoing, id, descriptor, state, path, size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            peer,
            i64::from(outgoing),
            id.0.to_vec(),
            descriptor,
            state.to_i64(),
            path,
            i64::try_from(fd.size).unwrap_or(i64::MAX),
        ],
    )?;
    Ok(())
}

impl Store {
    /// Queue an outgoing file whose encrypted copy is at `encrypted`: its
    /// history row (the caption, status queued, the message it replies to
    /// if any) and its `files` row, in one transaction. It enters the
    /// outbox once uploaded ([`Store::file_uploaded`]).
    pub fn queue_file(
        &self,
        peer: &str,
        fd: &FileDescriptor,
        encrypted: &std::path::Path,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        let id = MessageId::random();
        let now = UnixMillis::now();
        let tx = self.conn.unchecked_transaction()?;
        let body = self.key.seal(
            &aad("messages", "body", &row_key(peer, true, &id)),
            fd.caption.as_bytes(),
        );
        tx.execute(
            "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status, shown_status,
             reply_to) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![
                peer,
                id.0.to_vec(),
                body,
                now,
                Status::Queued.to_i64(),
                reply_to.map(|r| r.0.to_vec())
            ],
        )?;
        insert_file(
            &tx,
            &self.key,
            peer,
            true,
            &id,
            fd,
            FileState::Upload,
            Some(encrypted),
        )?;
        super::expiry::stamp_outgoing(&tx, peer, &id, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// The blob of an outgoing file is on the server: the message goes
    /// into the outbox (one transaction).
    pub fn file_uploaded(&self, peer: &str, id: &MessageId) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let Some(rec) = self.file_in(&tx, peer, true, id)? else {
            return Err(ClientError::Corrupt("uploaded file vanished"));
        };
        if rec.state != FileState::Upload {
            return Ok(());
        }
        tx.execute(
            "UPDATE files SET state = ?4, path = NULL WHERE peer = ?1 AND outgoing = 1 AND id = ?2 AND state = ?3",
            params![
                peer,
                id.0.to_vec(),
                FileState::Upload.to_i64(),
                FileState::Uploaded.to_i64()
            ],
        )?;
        let sent_at: UnixMillis = tx.query_row(
            "SELECT sent_at_ms FROM messages WHERE peer = ?1 AND outgoing = 1 AND id = ?2",
            params![peer, id.0.to_vec()],
            |r| r.get(0),
        )?;
        insert_outbox(
            &tx,
            &self.key,
            id,
            peer,
            &OutboxKind::File(rec.descriptor),
            sent_at,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// An outgoing file the server refused: its row goes (the message is
    /// marked failed by the caller).
    pub fn file_abandoned(&self, peer: &str, id: &MessageId) -> Result<()> {
        self.conn.execute(
            "DELETE FROM files WHERE peer = ?1 AND outgoing = 1 AND id = ?2",
            params![peer, id.0.to_vec()],
        )?;
        Ok(())
    }

    /// An incoming file was downloaded, checked and decrypted to `path`.
    pub fn file_fetched(&self, peer: &str, id: &MessageId, path: &std::path::Path) -> Result<()> {
        let row = row_key(peer, false, id);
        let sealed = self
            .key
            .seal(&aad("files", "path", &row), &path_bytes(path));
        self.conn.execute(
            "UPDATE files SET state = ?3, path = ?4 WHERE peer = ?1 AND outgoing = 0 AND id = ?2",
            params![peer, id.0.to_vec(), FileState::Fetched.to_i64(), sealed],
        )?;
        Ok(())
    }

    /// Files in `state`, oldest first.
    pub fn files_in_state(&self, state: FileState) -> Result<Vec<FileRecord>> {
        self.select_files("state = ?1", &[&state.to_i64()])
    }

    /// Ask the process holding the connection to fetch the file of message
    /// `id` (`ponte file get` beside `ponte listen`), whatever its size.
    pub fn want_fetch(&self, id: &MessageId) -> Result<()> {
        let key = want_key(id);
        self.conn
            .execute("DELETE FROM secrets WHERE name = ?1", [&key])?;
        super::meta_set(&self.conn, &key, "")
    }

    /// The files asked for with [`Store::want_fetch`] and not tried yet.
    pub fn fetches_wanted(&self) -> Result<Vec<MessageId>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM meta WHERE key LIKE 'fetch_wanted:%' AND value = ''")?;
        let keys = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(keys
            .iter()
            .filter_map(|k| MessageId::from_hex(k.strip_prefix(WANT_PREFIX)?))
            .collect())
    }

    /// Where the fetch asked for with [`Store::want_fetch`] stands (`None`
    /// when nobody asks, or not any more).
    pub fn fetch_want(&self, id: &MessageId) -> Result<Option<FetchAsked>> {
        Ok(match super::meta_get(&self.conn, &want_key(id))? {
            None => None,
            Some(v) if v.is_empty() => Some(FetchAsked::Waiting),
            Some(_) => {
                let why = self.secret(&want_key(id))?;
                let why = why.map(|w| String::from_utf8_lossy(&w).into_owned());
                Some(FetchAsked::Failed(why.unwrap_or_default()))
            }
        })
    }

    /// The fetch asked for is over: done (`failed: None`; the file's state
    /// says so), or failed and why (sealed, like every secret: the reason
    /// may name the file).
    pub fn fetch_want_done(&self, id: &MessageId, failed: Option<&str>) -> Result<()> {
        let key = want_key(id);
        match failed {
            Some(why) => {
                self.set_secret(&key, why.as_bytes())?;
                super::meta_set(&self.conn, &key, "failed")
            }
            None => {
                self.conn
                    .execute("DELETE FROM meta WHERE key = ?1", [&key])?;
                self.conn
                    .execute("DELETE FROM secrets WHERE name = ?1", [&key])?;
                Ok(())
            }
        }
    }

    /// The file of a message (either direction), by message id.
    pub fn file_by_id(&self, id: &MessageId) -> Result<Option<FileRecord>> {
        let id = id.0.to_vec();
        Ok(self.select_files("id = ?1", &[&id])?.pop())
    }

    /// The file a history message carries, if it is a file message.
    pub fn file_of(&self, view: &MessageView) -> Result<Option<FileRecord>> {
        self.file_in(&self.conn, &view.peer, view.outgoing, &view.id)
    }

    fn file_in(
        &self,
        conn: &rusqlite::Connection,
        peer: &str,
        outgoing: bool,
        id: &MessageId,
    ) -> Result<Option<FileRecord>> {
        let out = i64::from(outgoing);
        let id = id.0.to_vec();
        Ok(select_files(
            conn,
            &self.key,
            "peer = ?1 AND outgoing = ?2 AND id = ?3",
            &[&peer, &out, &id],
        )?
        .pop())
    }

    fn select_files(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<FileRecord>> {
        select_files(&self.conn, &self.key, filter, args)
    }
}

/// The [`FileSummary`] of a history message, if it carries a file.
pub(super) fn summary(
    conn: &rusqlite::Connection,
    key: &ProfileKey,
    peer: &str,
    outgoing: bool,
    id: &MessageId,
) -> Result<Option<FileSummary>> {
    let out = i64::from(outgoing);
    let id = id.0.to_vec();
    let rec = select_files(
        conn,
        key,
        "peer = ?1 AND outgoing = ?2 AND id = ?3",
        &[&peer, &out, &id],
    )?
    .pop();
    Ok(rec.map(|r| FileSummary {
        sha256: r
            .descriptor
            .sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        name: r.descriptor.name,
        size: r.descriptor.size,
        mime: r.descriptor.mime,
        state: r.state,
        path: if r.outgoing { None } else { r.path },
    }))
}

fn select_files(
    conn: &rusqlite::Connection,
    key: &ProfileKey,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<FileRecord>> {
    let sql = format!(
        "SELECT peer, outgoing, id, descriptor, state, path FROM files WHERE {filter} ORDER BY rowid"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? != 0,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (peer, outgoing, id, descriptor, state, path) in rows {
        let id = MessageId::from_slice(&id).ok_or(ClientError::Corrupt("file message id"))?;
        let row = row_key(&peer, outgoing, &id);
        let plain = key
            .open(&aad("files", "descriptor", &row), &descriptor)
            .map_err(|_| ClientError::Corrupt("file descriptor"))?;
        let descriptor = FileDescriptor::from_bytes(&plain)
            .map_err(|_| ClientError::Corrupt("file descriptor"))?;
        let path = match path {
            Some(sealed) => {
                let raw = key
                    .open(&aad("files", "path", &row), &sealed)
                    .map_err(|_| ClientError::Corrupt("file path"))?;
                let s = String::from_utf8(raw).map_err(|_| ClientError::Corrupt("file path"))?;
                Some(PathBuf::from(s))
            }
            None => None,
        };
        out.push(FileRecord {
            peer,
            outgoing,
            id,
            descriptor,
            state: FileState::from_i64(state)?,
            path,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{meta_get, meta_set, open_connection};

    #[test]
    fn a_version_1_database_gains_the_files_table() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ponte.db");
        {
            // What version 1 created.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(super::super::SCHEMA).unwrap();
            meta_set(&conn, "schema", "1").unwrap();
        }
        let conn = open_connection(&path).unwrap();
        assert_eq!(
            meta_get(&conn, "schema").unwrap().as_deref(),
            Some(super::super::SCHEMA_VERSION.to_string().as_str())
        );
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM files", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        meta_set(&conn, "schema", "99").unwrap();
        drop(conn);
        assert!(open_connection(&path).is_err());
    }

    #[test]
    fn a_fetch_asked_for_waits_then_reads_as_failed_or_goes() {
        use super::super::Store;
        use super::FetchAsked;
        use crate::atrest::ProfileKey;
        use ponte_e2e::MessageId;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with_key(
            &tmp.path().join("ponte.db"),
            ProfileKey::from_master(&[3; 32]),
        )
        .unwrap();
        let (a, b) = (MessageId::random(), MessageId::random());
        assert!(store.fetches_wanted().unwrap().is_empty());
        store.want_fetch(&a).unwrap();
        store.want_fetch(&b).unwrap();
        let mut wanted = store.fetches_wanted().unwrap();
        wanted.sort_by_key(|id| id.0);
        let mut both = vec![a, b];
        both.sort_by_key(|id| id.0);
        assert_eq!(wanted, both);
        assert_eq!(store.fetch_want(&a).unwrap(), Some(FetchAsked::Waiting));
        // A failure is kept for who asked (its reason sealed), and is not
        // tried again.
        store
            .fetch_want_done(&a, Some("no such blob: photo.jpg"))
            .unwrap();
        assert_eq!(
            store.fetch_want(&a).unwrap(),
            Some(FetchAsked::Failed("no such blob: photo.jpg".into()))
        );
        assert_eq!(store.fetches_wanted().unwrap(), vec![b]);
        let clear: Vec<u8> = store
            .conn
            .query_row("SELECT value FROM secrets", [], |r| r.get(0))
            .unwrap();
        assert!(!clear.windows(5).any(|w| w == b"photo"));
        // Done: nothing is left of it.
        store.fetch_want_done(&a, None).unwrap();
        store.fetch_want_done(&b, None).unwrap();
        assert_eq!(store.fetch_want(&a).unwrap(), None);
        assert_eq!(store.fetch_want(&b).unwrap(), None);
        let left: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM secrets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}

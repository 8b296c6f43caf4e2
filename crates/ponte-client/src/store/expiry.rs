//! Disappearing messages in the profile database (schema version 4).
//!
//! - `timers`: one row per conversation with a setting: the timer (0: off),
//!   the sender's clock of the setting that won (last writer wins by sent
//!   time, ties broken by message id) and that setting's message id.
//! - `messages.timer_ms`: how long the message lives (the conversation's
//!   timer when we sent it; the envelope's timer when we received it);
//!   `messages.expires_at_ms`: when it goes. An outgoing message's clock
//!   starts when it is written ([`stamp_outgoing`]), but it is never swept
//!   while still queued: what the user sent is not lost before it left. An
//!   incoming message's clock starts when it is displayed
//!   ([`start_clocks`], next to its read receipt), so nothing disappears
//!   before it was read.
//! - A setting is itself a message: a history row flagged
//!   [`FLAG_TIMER_NOTICE`] whose sealed body is the timer in seconds
//!   (`0`: off), shown to both sides, and which never expires. A group's
//!   setting is such a row in the group's conversation (`group_id` set),
//!   its timer under `group:HEX` in `timers`; the group's texts and files
//!   are stamped from it like a contact's.
//!
//! [`Store::sweep_expired`] deletes what is due: the downloaded file of a
//! file message (when it is inside the profile's files directory; a copy
//! the user wrote elsewhere with `file get --out` is theirs), its partial
//! download, then the `files` and `messages` rows in one transaction
//! (`secure_delete` is on, so SQLite zeroes the freed cells and pages),
//! then a `TRUNCATE` checkpoint copies the zeroed pages into the database
//! file and empties the WAL, which held the rows' earlier frames. Files go
//! before rows: a crash in between leaves a row whose file is gone, swept
//! again next time, never a file nothing points to. The ids stay in
//! `inbox_seen`, so a copy delivered again is dropped, not resurrected.
//!
//! Timers and expiry times are stored in clear (the sweep finds due rows
//! by an index); the text they govern is sealed like any message.

use super::{
    aad, group_of_key, row_key, Conversation, GroupOutgoing, Incoming, OutboxKind, Status, Store,
    UnixMillis,
};
use crate::atrest::ProfileKey;
use crate::{ClientError, Result};
use ponte_e2e::group::GroupId;
use ponte_e2e::{MessageId, Timer, TimerSetting};
use rusqlite::{params, OptionalExtension, Transaction};
use std::path::{Path, PathBuf};

/// Schema version 4: timers and message expiry. Depends on version 2's
/// tables only (`messages`, `files`).
pub(super) const SCHEMA_TIMERS: &str = "
ALTER TABLE messages ADD COLUMN timer_ms INTEGER;
ALTER TABLE messages ADD COLUMN expires_at_ms INTEGER;
CREATE INDEX IF NOT EXISTS messages_expiring ON messages(expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS timers (
    conversation TEXT PRIMARY KEY,
    timer_ms INTEGER NOT NULL,
    set_at_ms INTEGER NOT NULL,
    set_id BLOB NOT NULL
);
";

/// Message flag: the row is a timer-setting notice, not a message.
/// (Each message flag is its own bit: see `message_flags_are_distinct_bits`.)
pub const FLAG_TIMER_NOTICE: i64 = 4;

/// Rows swept per transaction (the sweep loops until none is due).
const SWEEP_BATCH: i64 = 256;
/// Bound on the sweep's rounds in one call (256 × 4,096 rows).
const SWEEP_ROUNDS: usize = 4096;

impl Conversation {
    /// The pairwise conversation with `handle`.
    pub fn contact(handle: &str) -> Self {
        Self::Contact(handle.to_owned())
    }

    /// Its key in the `timers` table: `contact:HANDLE` or `group:HEX`.
    fn key(&self) -> String {
        match self {
            Self::Contact(h) => format!("contact:{h}"),
            Self::Group(g) => format!("group:{}", g.to_hex()),
        }
    }

    /// The setting as it travels (kind 7) for this conversation.
    fn setting(&self, timer: Option<Timer>) -> TimerSetting {
        match self {
            Self::Contact(_) => TimerSetting { group: None, timer },
            Self::Group(g) => TimerSetting {
                group: Some(*g),
                timer,
            },
        }
    }
}

/// What a history row is when it is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// The sender of the row set the conversation's timer (`None`: off).
    TimerSet(Option<Timer>),
}

/// What one [`Store::sweep_expired`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Messages deleted.
    pub messages: usize,
    /// Files deleted from the files directory.
    pub files: usize,
    /// Messages kept for now because a file of theirs could not be
    /// deleted (tried again at the next sweep).
    pub kept: usize,
    /// The WAL was emptied after the deletion (false: another connection
    /// was reading; the next sweep tries again).
    pub scrubbed: bool,
}

/// A stored timer (`timer_ms`); `None` for none or a value out of bounds.
pub(super) fn timer_from_ms(ms: Option<i64>) -> Option<Timer> {
    let secs = u32::try_from(ms? / 1000).ok()?;
    Timer::from_secs(secs)
}

fn ms(timer: Timer) -> i64 {
    i64::from(timer.secs()) * 1000
}

/// A message's `timer_ms` column for `timer`.
pub(super) fn timer_ms(timer: Option<Timer>) -> Option<i64> {
    timer.map(ms)
}

fn expiry(from: UnixMillis, timer: Timer) -> UnixMillis {
    UnixMillis(from.0.saturating_add(timer.millis()))
}

/// The timer in force for `conversation` (`None`: off or never set).
fn current(conn: &rusqlite::Connection, conversation: &Conversation) -> Result<Option<Timer>> {
    let ms: Option<i64> = conn
        .query_row(
            "SELECT timer_ms FROM timers WHERE conversation = ?1",
            [conversation.key()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(timer_from_ms(ms))
}

/// Record `setting` for `conversation` if it is newer than the one in
/// force (by sent time, then id): last writer wins on both sides, whatever
/// order the settings arrive in.
pub(super) fn apply_setting(
    tx: &Transaction<'_>,
    conversation: &Conversation,
    timer: Option<Timer>,
    sent_at: UnixMillis,
    id: &MessageId,
) -> Result<()> {
    tx.execute(
        "INSERT INTO timers(conversation, timer_ms, set_at_ms, set_id) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(conversation) DO UPDATE SET timer_ms = excluded.timer_ms,
             set_at_ms = excluded.set_at_ms, set_id = excluded.set_id
         WHERE excluded.set_at_ms > timers.set_at_ms
            OR (excluded.set_at_ms = timers.set_at_ms AND excluded.set_id > timers.set_id)",
        params![
            conversation.key(),
            timer.map_or(0, ms),
            sent_at,
            id.0.to_vec()
        ],
    )?;
    Ok(())
}

/// The history row of a timer setting (never expires); in a group's
/// conversation when `group` is set (`peer` is then the member who set it,
/// or the group's key `g:HEX` for our own).
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_notice(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    peer: &str,
    outgoing: bool,
    id: &MessageId,
    timer: Option<Timer>,
    sent_at: UnixMillis,
    group: Option<&GroupId>,
) -> Result<()> {
    let body = key.seal(
        &aad("messages", "body", &row_key(peer, outgoing, id)),
        timer.map_or(0, Timer::secs).to_string().as_bytes(),
    );
    let (status, received) = if outgoing {
        (Status::Queued, None)
    } else {
        (Status::Received, Some(UnixMillis::now()))
    };
    // An outgoing notice is shown by `timer` itself: not new to `sync`.
    let shown = if outgoing { status.to_i64() } else { -1 };
    tx.execute(
        "INSERT OR IGNORE INTO messages(peer, outgoing, id, body, sent_at_ms, received_at_ms,
         status, shown_status, flags, group_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            peer,
            i64::from(outgoing),
            id.0.to_vec(),
            body,
            sent_at,
            received,
            status.to_i64(),
            shown,
            FLAG_TIMER_NOTICE,
            group.map(|g| g.0.to_vec())
        ],
    )?;
    Ok(())
}

/// A message we just wrote to `peer` (a handle, or a group's key `g:HEX`):
/// it takes the conversation's timer, its clock starting now (it is swept
/// only once it left the outbox).
pub(super) fn stamp_outgoing(
    tx: &Transaction<'_>,
    peer: &str,
    id: &MessageId,
    now: UnixMillis,
) -> Result<()> {
    let conversation = match group_of_key(peer) {
        Some(group) => Conversation::Group(group),
        None => Conversation::contact(peer),
    };
    if let Some(timer) = current(tx, &conversation)? {
        tx.execute(
            "UPDATE messages SET timer_ms = ?3, expires_at_ms = ?4
             WHERE peer = ?1 AND outgoing = 1 AND id = ?2",
            params![peer, id.0.to_vec(), ms(timer), expiry(now, timer)],
        )?;
    }
    Ok(())
}

/// A message we received with `timer` in its envelope: its clock starts
/// when it is displayed ([`start_clocks`]).
pub(super) fn stamp_incoming(
    tx: &Transaction<'_>,
    incoming: &Incoming<'_>,
    timer: Option<Timer>,
) -> Result<()> {
    if let Some(timer) = timer {
        tx.execute(
            "UPDATE messages SET timer_ms = ?3
             WHERE peer = ?1 AND outgoing = 0 AND id = ?2 AND flags & ?4 = 0",
            params![
                incoming.peer,
                incoming.id.0.to_vec(),
                ms(timer),
                FLAG_TIMER_NOTICE
            ],
        )?;
    }
    Ok(())
}

/// These incoming messages were just displayed (first time): the clocks
/// of those with a timer start now.
pub(super) fn start_clocks(tx: &Transaction<'_>, displayed: &[(String, MessageId)]) -> Result<()> {
    let now = UnixMillis::now();
    for (peer, id) in displayed {
        tx.execute(
            "UPDATE messages SET expires_at_ms = ?3 + timer_ms
             WHERE peer = ?1 AND outgoing = 0 AND id = ?2
               AND timer_ms IS NOT NULL AND expires_at_ms IS NULL",
            params![peer, id.0.to_vec(), now],
        )?;
    }
    Ok(())
}

/// A timer setting received from `incoming.peer`: a notice in the
/// history, and the conversation's timer if it is the latest. A group's
/// setting that came pairwise (handed to a member who joined) is for the
/// group's conversation; the caller checked that its sender is a current
/// member.
pub(super) fn commit_setting(
    tx: &Transaction<'_>,
    key: &ProfileKey,
    incoming: &Incoming<'_>,
    setting: &TimerSetting,
) -> Result<()> {
    let conversation = match setting.group {
        Some(group) => Conversation::Group(group),
        None => Conversation::contact(incoming.peer),
    };
    insert_notice(
        tx,
        key,
        incoming.peer,
        false,
        &incoming.id,
        setting.timer,
        incoming.sent_at,
        setting.group.as_ref(),
    )?;
    apply_setting(
        tx,
        &conversation,
        setting.timer,
        incoming.sent_at,
        &incoming.id,
    )
}

/// What a history row read by `select_views` adds for timers: its timer,
/// its expiry and, for a notice, what it says (its text is then empty).
/// `None` for the notice when its body does not parse (unreadable).
pub(super) fn view_parts(
    flags: i64,
    timer_ms: Option<i64>,
    text: &str,
) -> (Option<Timer>, Option<Option<Notice>>) {
    let timer = timer_from_ms(timer_ms);
    if flags & FLAG_TIMER_NOTICE == 0 {
        return (timer, Some(None));
    }
    let notice = match text.parse::<u32>() {
        Ok(0) => Some(Some(Notice::TimerSet(None))),
        Ok(s) => Timer::from_secs(s).map(|t| Some(Notice::TimerSet(Some(t)))),
        Err(_) => None,
    };
    (None, notice)
}

/// Whether `path` lies inside `dir` (both as recorded: the client joins
/// the files directory with a sanitised name).
fn inside(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) && path != dir
}

fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Store {
    /// The timer in force for `conversation` (`None`: off).
    pub fn timer(&self, conversation: &Conversation) -> Result<Option<Timer>> {
        current(&self.conn, conversation)
    }

    /// Set the timer of `conversation` to `timer` (`None`: off): one
    /// transaction writes the setting, its notice in the history (status
    /// queued) and the message that tells the other side (outbox).
    pub fn queue_timer_setting(
        &self,
        conversation: &Conversation,
        timer: Option<Timer>,
    ) -> Result<MessageId> {
        let Conversation::Contact(peer) = conversation else {
            return Err(ClientError::Invalid(
                "a group's timer goes out in the group's channel: use Client::set_timer".into(),
            ));
        };
        let id = MessageId::random();
        let now = UnixMillis::now();
        let tx = self.conn.unchecked_transaction()?;
        insert_notice(&tx, &self.key, peer, true, &id, timer, now, None)?;
        super::messages::insert_outbox(
            &tx,
            &self.key,
            &id,
            peer,
            &OutboxKind::TimerSetting(conversation.setting(timer)),
            now,
        )?;
        apply_setting(&tx, conversation, timer, now, &id)?;
        tx.commit()?;
        Ok(id)
    }

    /// Set a group's timer: one transaction writes the setting, its notice
    /// in the group's history (status queued) and the Megolm message that
    /// tells the members (`out`, encrypted with this device's sender
    /// session, with its recipients and any sender key to hand out first).
    pub fn queue_group_timer(
        &self,
        out: &GroupOutgoing<'_>,
        timer: Option<Timer>,
        sent_at: UnixMillis,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        let peer = super::group_key(&out.group);
        insert_notice(
            &tx,
            &self.key,
            &peer,
            true,
            &out.id,
            timer,
            sent_at,
            Some(&out.group),
        )?;
        super::groups::insert_group_send(&tx, &self.key, out, sent_at)?;
        apply_setting(
            &tx,
            &Conversation::Group(out.group),
            timer,
            sent_at,
            &out.id,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The setting in force for `conversation` and when it was set (the
    /// sender's clock), if one was ever set: what a member who joins a
    /// group is handed.
    pub fn timer_setting(
        &self,
        conversation: &Conversation,
    ) -> Result<Option<(Option<Timer>, UnixMillis)>> {
        let row: Option<(i64, UnixMillis)> = self
            .conn
            .query_row(
                "SELECT timer_ms, set_at_ms FROM timers WHERE conversation = ?1",
                [conversation.key()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.map(|(ms, at)| (timer_from_ms(Some(ms)), at)))
    }

    /// When the next message is due to disappear, if any has its clock
    /// running.
    pub fn next_expiry(&self) -> Result<Option<UnixMillis>> {
        Ok(self.conn.query_row(
            "SELECT MIN(expires_at_ms) FROM messages WHERE expires_at_ms IS NOT NULL",
            [],
            |r| r.get(0),
        )?)
    }

    /// Delete every message due at `now` (see the module documentation),
    /// with its file if it is inside `files_dir`, then empty the WAL.
    pub fn sweep_expired(&self, now: UnixMillis, files_dir: &Path) -> Result<Swept> {
        let mut swept = Swept::default();
        // Rows whose file could not go: skipped in the later rounds.
        let mut skip: Vec<(String, bool, MessageId)> = Vec::new();
        for _ in 0..SWEEP_ROUNDS {
            let due = self.due(now, SWEEP_BATCH + skip.len() as i64)?;
            let due: Vec<_> = due.into_iter().filter(|d| !skip.contains(d)).collect();
            if due.is_empty() {
                break;
            }
            let mut gone = Vec::with_capacity(due.len());
            for (peer, outgoing, id) in due {
                match self.remove_files(&peer, outgoing, &id, files_dir) {
                    Ok(n) => {
                        swept.files += n;
                        gone.push((peer, outgoing, id));
                    }
                    Err(e) => {
                        tracing::warn!("a disappearing message's file stays for now: {e}");
                        swept.kept += 1;
                        skip.push((peer, outgoing, id));
                    }
                }
            }
            let tx = self.conn.unchecked_transaction()?;
            for (peer, outgoing, id) in &gone {
                let args = params![peer, i64::from(*outgoing), id.0.to_vec()];
                tx.execute(
                    "DELETE FROM files WHERE peer = ?1 AND outgoing = ?2 AND id = ?3",
                    args,
                )?;
                tx.execute(
                    "DELETE FROM messages WHERE peer = ?1 AND outgoing = ?2 AND id = ?3",
                    args,
                )?;
                if !*outgoing {
                    // A chat window's unread mark goes with the message.
                    super::chats::forget_unread(&tx, peer, id)?;
                }
            }
            tx.commit()?;
            swept.messages += gone.len();
        }
        if swept.messages > 0 || self.scrub_owed.get() {
            swept.scrubbed = self.scrub_wal()?;
            self.scrub_owed.set(!swept.scrubbed);
        }
        Ok(swept)
    }

    /// Copy everything into the database file and empty the WAL
    /// (`wal_checkpoint(TRUNCATE)`); false when a reader kept it from
    /// completing.
    fn scrub_wal(&self) -> Result<bool> {
        let (busy, log, done): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok(busy == 0 && log == done)
    }

    /// Up to `limit` rows due at `now`; an outgoing message still waiting
    /// in the outbox is not due yet.
    fn due(&self, now: UnixMillis, limit: i64) -> Result<Vec<(String, bool, MessageId)>> {
        let mut stmt = self.conn.prepare(
            "SELECT peer, outgoing, id FROM messages
             WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1
               AND NOT (outgoing = 1 AND status = ?2)
             ORDER BY expires_at_ms LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![now, Status::Queued.to_i64(), limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? != 0,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(peer, outgoing, id)| {
                let id = MessageId::from_slice(&id).ok_or(ClientError::Corrupt("message id"))?;
                Ok((peer, outgoing, id))
            })
            .collect()
    }

    /// Delete the files of one message from the files directory: the
    /// fetched file (if it is in there), a partial download and a
    /// half-written decryption. Returns how many existed.
    fn remove_files(
        &self,
        peer: &str,
        outgoing: bool,
        id: &MessageId,
        files_dir: &Path,
    ) -> std::io::Result<usize> {
        let mut paths: Vec<PathBuf> = vec![
            files_dir.join(format!("{}.part", id.to_hex())),
            files_dir.join(format!(".{}.tmp", id.to_hex())),
        ];
        match super::files::summary(&self.conn, &self.key, peer, outgoing, id) {
            Ok(Some(summary)) => paths.extend(summary.path.filter(|p| inside(p, files_dir))),
            Ok(None) => {}
            // A row that does not open names no file we can find.
            Err(e) => tracing::debug!("file row of an expired message: {e}"),
        }
        let mut removed = 0;
        for p in paths {
            removed += usize::from(remove(&p)?);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{meta_get, meta_set, open_connection, SCHEMA, SCHEMA_FILES};

    #[test]
    fn a_version_2_database_gains_timers_and_keeps_its_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ponte.db");
        {
            // What version 2 created, with one message.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(SCHEMA_FILES).unwrap();
            meta_set(&conn, "schema", "2").unwrap();
            conn.execute(
                "INSERT INTO messages(peer, outgoing, id, body, sent_at_ms, status)
                 VALUES ('bob', 1, x'00', x'01', 5, 1)",
                [],
            )
            .unwrap();
        }
        let conn = open_connection(&path).unwrap();
        assert_eq!(
            meta_get(&conn, "schema").unwrap(),
            Some(super::super::SCHEMA_VERSION.to_string())
        );
        let row: (String, Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT peer, timer_ms, expires_at_ms FROM messages",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, ("bob".to_owned(), None, None));
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM timers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        drop(conn);
        // Opening again changes nothing (the step ran once).
        let conn = open_connection(&path).unwrap();
        assert_eq!(
            meta_get(&conn, "schema").unwrap(),
            Some(super::super::SCHEMA_VERSION.to_string())
        );
    }
}

//! A message or a file sent from one process while another holds the
//! profile's connection (`ponte send` beside `ponte listen`, see
//! [`crate::lock::LiveLock`]): this process only writes it into the outbox
//! (nothing is encrypted here, so the two never use a session at once),
//! the holder sees the outbox change and sends it, and this process reads
//! the outcome from the profile.

use super::{Client, GroupOutcome, QueuedChange, SendOutcome};
use crate::store::{group_key, Conversation, FetchAsked, FileState, Status};
use crate::{ClientError, Result};
use ponte_e2e::MessageId;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the outcome is read from the profile while waiting.
const POLL: Duration = Duration::from_millis(100);

impl Client {
    /// Queue the file at `path` for `to` (a contact or a group), quoting
    /// `reply_to` if given: it is encrypted into the profile now, and the
    /// process holding the connection ([`Client::listen_to`], here or in
    /// another process) uploads it and sends its message. Follow it with
    /// [`Client::sent_by_holder`].
    pub fn queue_file_to(
        &self,
        to: &Conversation,
        path: &Path,
        caption: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        match to {
            Conversation::Contact(peer) => self.queue_file_reply(peer, path, caption, reply_to),
            Conversation::Group(group) => {
                self.queue_group_file_reply(group, path, caption, reply_to)
            }
        }
    }

    /// How many queued files wait for their upload.
    pub(super) fn uploads_waiting(&self) -> Result<usize> {
        Ok(self.store().files_in_state(FileState::Upload)?.len())
    }

    /// The outcome of message `id` to `to`, queued here (e.g. with
    /// [`Client::queue_text_to`]) while `holder` (another process, such as
    /// `ponte listen`) holds this profile's connection: waits until the
    /// holder sent it or refused it for good, at most `wait`; after that it
    /// is still queued, with a note saying who sends it.
    pub async fn sent_by_holder(
        &self,
        to: &Conversation,
        id: &MessageId,
        holder: &str,
        wait: Duration,
    ) -> Result<SendOutcome> {
        let key = match to {
            Conversation::Contact(peer) => peer.clone(),
            Conversation::Group(group) => group_key(group),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let note = loop {
            let status = self
                .store()
                .message(&key, true, id)?
                .ok_or(ClientError::Corrupt("queued message vanished"))?
                .status;
            if status != Status::Queued {
                break None;
            }
            if tokio::time::Instant::now() >= deadline {
                break Some(format!(
                    "queued: {holder} holds this profile's connection and sends it as soon \
                     as it can"
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        self.send_outcome(&key, id, note, Vec::new())
    }

    /// The outcome of a group change queued here
    /// ([`Client::queue_group_change`]) while `holder` holds this profile's
    /// connection: waits until the holder sent everything the change
    /// queued, at most `wait`; after that it is still queued, with a note
    /// saying who sends it. (What the holder's flush warns about, it shows
    /// itself.)
    pub async fn group_change_by_holder(
        &self,
        change: &QueuedChange,
        holder: &str,
        wait: Duration,
    ) -> Result<GroupOutcome> {
        let deadline = tokio::time::Instant::now() + wait;
        let note = loop {
            if self.store().outbox_waiting(&change.queued, 1)? == 0 {
                break None;
            }
            if tokio::time::Instant::now() >= deadline {
                let waiting = self.store().outbox_waiting(&change.queued, usize::MAX)?;
                break Some(format!(
                    "queued ({waiting} of {} messages of the change): {holder} holds this \
                     profile's connection and sends them as soon as it can",
                    change.queued.len()
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        Ok(GroupOutcome {
            info: self.group_info(&change.group)?,
            note,
            warnings: Vec::new(),
        })
    }

    /// Ask the process holding the connection to fetch the file of message
    /// `id` (any size): follow it with [`Client::fetched_by_holder`].
    pub fn queue_fetch(&self, id: &MessageId) -> Result<()> {
        self.received_file(id)?;
        self.store().want_fetch(id)
    }

    /// Where the file of message `id`, asked for with
    /// [`Client::queue_fetch`] while `holder` holds this profile's
    /// connection, is once the holder fetched it (copied to `out` if
    /// given), waiting at most `wait`; an error says why the holder could
    /// not fetch it, or that it is still fetching it.
    pub async fn fetched_by_holder(
        &mut self,
        id: &MessageId,
        out: Option<&Path>,
        holder: &str,
        wait: Duration,
    ) -> Result<PathBuf> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.received_file(id)?.state == FileState::Fetched {
                // Copied (with `out`) or found in place: no connection.
                return self.fetch_file(id, out, &mut |_, _| {}).await;
            }
            match self.store().fetch_want(id)? {
                Some(FetchAsked::Failed(why)) => {
                    self.store().fetch_want_done(id, None)?;
                    return Err(ClientError::Invalid(format!(
                        "{holder}, which holds this profile's connection, could not fetch \
                         it: {why}"
                    )));
                }
                // Given up by the holder with nothing said: ask again.
                None => self.store().want_fetch(id)?,
                Some(FetchAsked::Waiting) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Invalid(format!(
                    "not fetched yet: {holder} holds this profile's connection and is still \
                     fetching it (the same command prints its path once it is here)"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

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
        let sent = until_answered(wait, || {
            let status = self
                .store()
                .message(&key, true, id)?
                .ok_or(ClientError::Corrupt("queued message vanished"))?
                .status;
            Ok((status != Status::Queued).then_some(()))
        })
        .await?;
        let note = sent.is_none().then(|| {
            format!(
                "queued: {holder} holds this profile's connection and sends it as soon as it can"
            )
        });
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
        let sent = until_answered(wait, || {
            Ok((self.store().outbox_waiting(&change.queued, 1)? == 0).then_some(()))
        })
        .await?;
        let note = match sent {
            Some(()) => None,
            None => {
                let waiting = self.store().outbox_waiting(&change.queued, usize::MAX)?;
                Some(format!(
                    "queued ({waiting} of {} messages of the change): {holder} holds this \
                     profile's connection and sends them as soon as it can",
                    change.queued.len()
                ))
            }
        };
        Ok(GroupOutcome {
            info: self.group_info(&change.group)?,
            note,
            warnings: Vec::new(),
        })
    }

    /// Ask the process holding the connection to fetch the file of message
    /// `id` (any size): follow it with [`Client::fetched_by_holder`], or
    /// poll [`Client::fetch_asked`].
    pub fn queue_fetch(&self, id: &MessageId) -> Result<()> {
        self.received_file(id)?;
        self.store().want_fetch(id)
    }

    /// Where the fetch of message `id`'s file asked for with
    /// [`Client::queue_fetch`] stands: `Some(Ok(()))` once the file is
    /// here, `Some(Err(why))` when the holder could not fetch it (the
    /// request is then forgotten), `None` while it waits (asked again if
    /// the holder dropped the request without a word).
    pub fn fetch_asked(&self, id: &MessageId) -> Result<Option<std::result::Result<(), String>>> {
        if self.received_file(id)?.state == FileState::Fetched {
            return Ok(Some(Ok(())));
        }
        match self.store().fetch_want(id)? {
            Some(FetchAsked::Failed(why)) => {
                self.store().fetch_want_done(id, None)?;
                Ok(Some(Err(why)))
            }
            None => {
                self.store().want_fetch(id)?;
                Ok(None)
            }
            Some(FetchAsked::Waiting) => Ok(None),
        }
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
        match until_answered(wait, || self.fetch_asked(id)).await? {
            // Copied (with `out`) or found in place: no connection.
            Some(Ok(())) => self.fetch_file(id, out, &mut |_, _| {}).await,
            Some(Err(why)) => Err(ClientError::Invalid(format!(
                "{holder}, which holds this profile's connection, could not fetch it: {why}"
            ))),
            None => Err(ClientError::Invalid(format!(
                "not fetched yet: {holder} holds this profile's connection and is still \
                 fetching it (the same command prints its path once it is here)"
            ))),
        }
    }
}

/// How long a process waits for the holder of the connection to move a
/// file of `bytes` (upload or download): 15 s, and a second per MiB.
pub fn transfer_wait(bytes: u64) -> Duration {
    Duration::from_secs(15 + bytes / (1 << 20))
}

/// Asks `step` every [`POLL`] until it has an answer, for at most `wait`:
/// `None` when the time is up first.
async fn until_answered<T>(
    wait: Duration,
    mut step: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(answer) = step()? {
            return Ok(Some(answer));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

//! A message sent from one process while another holds the profile's
//! connection (`ponte send` beside `ponte listen`, see
//! [`crate::lock::LiveLock`]): this process only writes it into the outbox
//! (nothing is encrypted here, so the two never use a session at once),
//! the holder sees the outbox change and sends it, and this process reads
//! the outcome from the profile.

use super::{Client, SendOutcome};
use crate::store::{group_key, Conversation, Status};
use crate::{ClientError, Result};
use ponte_e2e::MessageId;
use std::time::Duration;

/// How often the outcome is read from the profile while waiting.
const POLL: Duration = Duration::from_millis(100);

impl Client {
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
}

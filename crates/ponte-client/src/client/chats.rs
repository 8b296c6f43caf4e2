//! What a chat window needs from the client: the chat list, pages of a
//! conversation, unread state and read receipts sent when a chat is
//! opened, and the number of messages waiting to go out. The store side
//! is `store::chats`.

use super::Client;
use crate::store::{ChatSummary, ConversationPage, MessageView};
use crate::{ClientError, Result};
use ponte_e2e::{PublicIdentity, SafetyNumber};
use ponte_wire::messages::validate_handle;

fn check(peer: &str) -> Result<()> {
    validate_handle(peer).map_err(|e| ClientError::Invalid(format!("{peer:?}: {e}")))
}

impl Client {
    /// Report incoming messages as they arrive without counting them as
    /// read: `sync` and `listen` then leave them unread (no read receipt)
    /// until [`Client::mark_chat_read`]. The CLI, which prints what it
    /// reports, keeps the default (reported = read).
    pub fn set_read_when_opened(&mut self, on: bool) {
        self.read_when_opened = on;
    }

    /// The chat list: one entry per contact or peer with messages, newest
    /// activity first, with the last message and the unread count.
    pub fn chats(&self) -> Result<Vec<ChatSummary>> {
        self.store().chat_summaries()
    }

    /// Up to `limit` messages with `peer` before the cursor `before`
    /// (`None`: the newest), oldest first. Nothing is marked read.
    pub fn conversation_page(
        &self,
        peer: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<ConversationPage> {
        check(peer)?;
        self.store().conversation_page(peer, before, limit)
    }

    /// The user opened the chat with `peer`: its incoming messages are
    /// read, and read receipts are queued for those not read before (the
    /// next flush sends them). Returns how many became read.
    pub fn mark_chat_read(&self, peer: &str) -> Result<usize> {
        check(peer)?;
        self.store().mark_chat_read(peer)
    }

    /// Texts and files waiting in the outbox (read receipts not counted).
    pub fn waiting_out(&self) -> Result<usize> {
        self.store().waiting_out()
    }

    /// The safety number with a contact already known here (no network):
    /// computed from the identity `verify --confirm` would trust (a
    /// changed one while it waits).
    pub fn local_safety_number(&self, peer: &str) -> Result<(SafetyNumber, crate::store::Contact)> {
        check(peer)?;
        let contact = self
            .store()
            .contact(peer)?
            .ok_or_else(|| ClientError::UnknownContact(peer.to_owned()))?;
        let theirs: PublicIdentity = contact.changed_identity.unwrap_or(contact.identity);
        let number =
            SafetyNumber::compute((&self.identity.public(), &self.handle), (&theirs, peer));
        Ok((number, contact))
    }

    /// One message by peer, direction and id.
    pub fn message(
        &self,
        peer: &str,
        outgoing: bool,
        id: &ponte_e2e::MessageId,
    ) -> Result<Option<MessageView>> {
        check(peer)?;
        self.store().message(peer, outgoing, id)
    }
}

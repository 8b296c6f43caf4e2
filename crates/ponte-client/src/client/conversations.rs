//! A chat window's calls that take a [`Conversation`] (a contact or a
//! group): a page of it, reading it, writing to it. The contact-only
//! calls are in `chats`; groups' own calls in `groups`.

use super::Client;
use crate::store::Conversation;
use crate::store::{ConversationPage, GroupStatus};
use crate::{ClientError, Result};
use ponte_e2e::MessageId;

impl Client {
    /// Up to `limit` messages of `with` before the cursor `before`
    /// (`None`: the newest), oldest first. Nothing is marked read.
    pub fn page_of(
        &self,
        with: &Conversation,
        before: Option<i64>,
        limit: usize,
    ) -> Result<ConversationPage> {
        match with {
            Conversation::Contact(peer) => self.conversation_page(peer, before, limit),
            Conversation::Group(group) => {
                self.known_group_status(group)?;
                self.store().group_page(group, before, limit)
            }
        }
    }

    /// The user opened the chat `with`: its incoming messages are read
    /// (read receipts queued for those not read before). Returns how many.
    pub fn mark_read_of(&self, with: &Conversation) -> Result<usize> {
        match with {
            Conversation::Contact(peer) => self.mark_chat_read(peer),
            Conversation::Group(group) => {
                self.known_group_status(group)?;
                self.store().mark_group_read(group)
            }
        }
    }

    /// Queue a text to `with` (sent by the next flush); works offline.
    pub fn queue_text_to(&self, with: &Conversation, text: &str) -> Result<MessageId> {
        match with {
            Conversation::Contact(peer) => self.queue_text(peer, text),
            Conversation::Group(group) => self.queue_group_text(group, text),
        }
    }

    /// [`Client::queue_reply`] to a contact or a group (see
    /// [`Client::queue_group_reply`]).
    pub fn queue_reply_to(
        &self,
        with: &Conversation,
        text: &str,
        reply_to: Option<&MessageId>,
    ) -> Result<MessageId> {
        match with {
            Conversation::Contact(peer) => self.queue_reply(peer, text, reply_to),
            Conversation::Group(group) => self.queue_group_reply(group, text, reply_to),
        }
    }

    /// A reply may quote only a message of the conversation it goes to,
    /// as this profile has it: refused otherwise, before anything is
    /// queued, so a quote never points elsewhere.
    pub(in crate::client) fn check_reply(
        &self,
        with: &Conversation,
        reply_to: Option<&MessageId>,
    ) -> Result<()> {
        let Some(to) = reply_to else {
            return Ok(());
        };
        if self.store().find_message(with, to)?.is_some() {
            return Ok(());
        }
        Err(ClientError::Invalid(match with {
            Conversation::Contact(peer) => {
                format!("no message {to} in your conversation with {peer} to reply to")
            }
            Conversation::Group(group) => {
                let title = self
                    .store()
                    .group(group)?
                    .map(|r| format!("{:?}", r.state.title()))
                    .unwrap_or_else(|| format!("g:{}", group.to_hex()));
                format!("no message {to} in group {title} to reply to")
            }
        }))
    }

    /// Where this device stands in `group` (an error if the profile does
    /// not know it).
    fn known_group_status(&self, group: &ponte_e2e::group::GroupId) -> Result<GroupStatus> {
        match self.store().group_status(group)? {
            Some(GroupStatus::Joining) | None => Err(ClientError::Invalid(format!(
                "no group g:{} in this profile",
                group.to_hex()
            ))),
            Some(s) => Ok(s),
        }
    }
}

impl Client {
    /// Messages of the whole local history holding every word of `query`,
    /// newest first, at most `limit` (see [`crate::store::SearchHit`]).
    /// No network; what arrived since the last search is indexed first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<crate::store::SearchHit>> {
        self.store().search(query, limit)
    }
}

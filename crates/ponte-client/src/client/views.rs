//! Local views: history, contacts, safety numbers and verification.

use super::{display_failed, Client};
use crate::store::{Contact, Conversation, MessageView};
use crate::{ClientError, Result};
use ponte_e2e::{PublicIdentity, SafetyNumber};
use ponte_wire::messages::validate_handle;

impl Client {
    /// The conversation with `peer` (printing it counts as displaying it).
    pub fn history(&self, peer: &str) -> Result<Vec<MessageView>> {
        self.store().history(peer)
    }

    /// The conversation with `peer`, oldest first, handed to `show` one
    /// message at a time. Only the incoming messages `show` accepted count
    /// as displayed (marked, read receipt queued); the first error stops it
    /// with [`ClientError::Io`]. An invalid handle is refused.
    pub fn history_to(
        &self,
        peer: &str,
        show: &mut dyn FnMut(&MessageView) -> std::io::Result<()>,
    ) -> Result<()> {
        validate_handle(peer).map_err(|e| ClientError::Invalid(format!("{peer:?}: {e}")))?;
        let views = self.store().conversation(peer)?;
        self.show_views(&views, show)
    }

    /// The conversation `with` (a contact or a group), as
    /// [`Client::history_to`] shows it.
    pub fn history_of(
        &self,
        with: &Conversation,
        show: &mut dyn FnMut(&MessageView) -> std::io::Result<()>,
    ) -> Result<()> {
        match with {
            Conversation::Contact(peer) => self.history_to(peer, show),
            Conversation::Group(group) => {
                let views = self.store().group_conversation(group)?;
                self.show_views(&views, show)
            }
        }
    }

    /// Hand `views` to `show` in order; the incoming ones it took count as
    /// displayed.
    fn show_views(
        &self,
        views: &[MessageView],
        show: &mut dyn FnMut(&MessageView) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut shown = Vec::new();
        let mut failed = None;
        for v in views {
            if let Err(e) = show(v) {
                failed = Some(e);
                break;
            }
            if !v.outgoing {
                shown.push(v);
            }
        }
        if !shown.is_empty() {
            self.store().mark_shown(shown)?;
        }
        match failed {
            Some(e) => Err(display_failed(e)),
            None => Ok(()),
        }
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        self.store().contacts()
    }

    /// The safety number with `peer`, computed from the identity that
    /// `verify --confirm` would trust (a changed one if waiting). If the
    /// contact is unknown locally, or `refresh` is set, its identity is
    /// fetched from the server first (a change is flagged as usual).
    pub async fn safety_number(
        &mut self,
        peer: &str,
        refresh: bool,
    ) -> Result<(SafetyNumber, Contact)> {
        validate_handle(peer).map_err(|e| ClientError::Invalid(format!("{peer:?}: {e}")))?;
        let known = self.store().contact(peer)?;
        if known.is_none() || refresh {
            match self.login().await {
                Ok((mut conn, _)) => {
                    let identity = self.lookup_identity(&mut conn, peer).await?;
                    self.store().observe_identity(peer, &identity)?;
                }
                Err(e)
                    if known.is_some()
                        && matches!(
                            e,
                            ClientError::Unreachable(_)
                                | ClientError::Disconnected(_)
                                | ClientError::Closed { .. }
                        ) =>
                {
                    tracing::debug!(error = %e, "offline; using the stored identity");
                }
                Err(e) => return Err(e),
            }
        }
        let contact = self
            .store()
            .contact(peer)?
            .ok_or_else(|| ClientError::UnknownContact(peer.to_owned()))?;
        let theirs = contact.changed_identity.unwrap_or(contact.identity);
        let number =
            SafetyNumber::compute((&self.identity.public(), &self.handle), (&theirs, peer));
        Ok((number, contact))
    }

    /// Mark `peer` verified (after comparing safety numbers); a waiting
    /// changed identity becomes the trusted one.
    pub fn confirm(&self, peer: &str) -> Result<PublicIdentity> {
        // It drops the sessions with an old identity: not while another
        // process holds them in memory, to write them back after.
        let _keys = self.hold_keys_blocking()?;
        self.store().confirm_contact(peer)
    }

    /// This device's public identity.
    pub fn public_identity(&self) -> PublicIdentity {
        self.identity.public()
    }
}

//! `ponte send` and `ponte listen` on one profile at once. `listen` holds
//! the profile's connection and says so ([`LiveLock`]); a `send` that
//! finds it held does not log in as the same device (which would push the
//! listener off its connection at every send): it writes the message (or
//! the encrypted file) into the profile, the listener sends it (uploading
//! the file first), and `send` reports the outcome it reads back from the
//! profile.

use super::Common;
use ponte_client::client::{transfer_wait, GroupChange, GroupOutcome, SendOutcome};
use ponte_client::lock::LiveLock;
use ponte_client::profile;
use ponte_client::store::Conversation;
use ponte_client::Client;
use ponte_e2e::group::GroupId;
use ponte_e2e::MessageId;
use std::time::Duration;

/// How long `send` waits for the listener to send what it queued; after
/// that it reports the message queued (the listener sends it later).
const HANDOFF_WAIT: Duration = Duration::from_secs(15);

/// Claims the connection of `common`'s profile for this `ponte listen`.
pub(super) fn claim(common: &Common) -> anyhow::Result<LiveLock> {
    let dir = profile::resolve_dir(common.profile.clone())?;
    let who = format!("ponte listen, pid {}", std::process::id());
    Ok(LiveLock::claim(&dir, &who)?)
}

/// Who holds the connection of `common`'s profile, if another process does.
pub(super) fn holder(common: &Common) -> anyhow::Result<Option<String>> {
    let dir = profile::resolve_dir(common.profile.clone())?;
    Ok(LiveLock::holder(&dir)?)
}

/// Queues `text` (a reply to `reply_to`, if given) for `holder` to send,
/// and waits for the outcome.
pub(super) fn send(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    to: &Conversation,
    text: &str,
    reply_to: Option<&MessageId>,
    holder: &str,
) -> anyhow::Result<SendOutcome> {
    let id = client.queue_reply_to(to, text, reply_to)?;
    Ok(rt.block_on(client.sent_by_holder(to, &id, holder, HANDOFF_WAIT))?)
}

/// Queues the file at `path` (a reply to `reply_to`, if given) for
/// `holder` to upload and send, and waits for the outcome.
pub(super) fn send_file(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    to: &Conversation,
    path: &std::path::Path,
    caption: &str,
    reply_to: Option<&MessageId>,
    holder: &str,
) -> anyhow::Result<SendOutcome> {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let id = client.queue_file_to(to, path, caption, reply_to)?;
    Ok(rt.block_on(client.sent_by_holder(to, &id, holder, transfer_wait(bytes)))?)
}

/// Asks `holder` to fetch the file of message `id` and waits until it is
/// here (copied to `out` if given): where it is.
pub(super) fn file_get(
    client: &mut Client,
    rt: &tokio::runtime::Runtime,
    id: &MessageId,
    out: Option<&std::path::Path>,
    holder: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let size = client
        .store()
        .file_by_id(id)?
        .map_or(0, |rec| rec.descriptor.size);
    client.queue_fetch(id)?;
    Ok(rt.block_on(client.fetched_by_holder(id, out, holder, transfer_wait(size)))?)
}

/// Queues the setting of the timer of `to` (a contact's, or a group's,
/// encrypted for the group here) for `holder` to send, and waits for the
/// outcome.
pub(super) fn timer(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    to: &Conversation,
    timer: Option<ponte_e2e::Timer>,
    holder: &str,
) -> anyhow::Result<SendOutcome> {
    let id = client.queue_timer(to, timer)?;
    Ok(rt.block_on(client.sent_by_holder(to, &id, holder, HANDOFF_WAIT))?)
}

/// Writes a group change (to `group`; `None` creates one) into the profile
/// for `holder` to send, and waits for the outcome. New members must be
/// contacts already (see [`group_needs_login`]).
pub(super) fn group(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    group: Option<&GroupId>,
    change: &GroupChange,
    holder: &str,
) -> anyhow::Result<GroupOutcome> {
    let queued = client.queue_group_change(group, change)?;
    Ok(rt.block_on(client.group_change_by_holder(&queued, holder, HANDOFF_WAIT))?)
}

/// Whether `change` needs the server's directory (a new member who is not a
/// contact yet), so that it cannot be handed to the listener: the command
/// then logs in itself, and says what that does to the listener.
pub(super) fn group_needs_login(
    client: &Client,
    change: &GroupChange,
    holder: &str,
) -> anyhow::Result<bool> {
    if client.knows_all(change.new_members())? {
        return Ok(false);
    }
    super::notice(&format!(
        "a new member is not a contact of this profile yet: asking the server's directory \
         on a connection of this command's own ({holder} reconnects after it)"
    ));
    Ok(true)
}

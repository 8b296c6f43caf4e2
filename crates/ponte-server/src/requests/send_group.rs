//! `SendGroupMessage`: stores one ciphertext for many recipients (the
//! members the sender's client knows; the server keeps no group state),
//! answered `GroupSendAck` once durable with the recipients refused one by
//! one. The store writes the body once and an entry per recipient, and
//! hands every entry to its recipient's connection (through the registry)
//! before the answer; from there each entry is acked, receipted and expired
//! like a 1:1 message. A resend of the same id stores nothing.

use super::{arr, Context, Refusal, Reply, Request, Runs};
use crate::store::{GroupSendOutcome, NewGroupMessage, Refused, UnixMillis};
use ponte_wire::messages::{
    self, server_frame, ErrorCode, GroupSendAck, RecipientRefusal, RefusedRecipient,
    MAX_GROUP_RECIPIENTS,
};
use std::collections::HashSet;

impl Request for messages::SendGroupMessage {
    const RUNS: Runs = Runs::Alongside;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let s = self;
        let info = cx.account()?;
        let Some(message_id) = arr::<16>(&s.message_id) else {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "message id must be 16 bytes",
            ));
        };
        let id_bytes = s.message_id;
        let refuse = |code, detail| Err(Refusal::new(code, detail).about(id_bytes.clone()));
        let Some(group_id) = arr::<16>(&s.group_id) else {
            return refuse(ErrorCode::InvalidArgument, "group id must be 16 bytes");
        };
        if s.body.is_empty() {
            // As for 1:1: an empty ciphertext is a broken client.
            return refuse(ErrorCode::InvalidArgument, "empty body");
        }
        let shared = &cx.shared;
        if s.body.len() > shared.cfg.max_body_len {
            return refuse(ErrorCode::TooLarge, "body too large");
        }
        if s.recipients.is_empty() {
            return refuse(ErrorCode::InvalidArgument, "no recipients");
        }
        if s.recipients.len() > MAX_GROUP_RECIPIENTS {
            return refuse(ErrorCode::LimitExceeded, "more than 1024 recipients");
        }
        let mut seen = HashSet::with_capacity(s.recipients.len());
        if !s.recipients.iter().all(|h| seen.insert(h.as_str())) {
            return refuse(ErrorCode::InvalidArgument, "a recipient named twice");
        }
        drop(seen);
        let now = UnixMillis::now();
        let ack = |accepted_at: UnixMillis, duplicate: bool, refused: Vec<(String, Refused)>| {
            Reply::Answer(server_frame::Body::GroupSendAck(GroupSendAck {
                message_id: id_bytes.clone(),
                accepted_at_ms: accepted_at.to_wire(),
                duplicate,
                refused: refused
                    .into_iter()
                    .map(|(handle, why)| RefusedRecipient {
                        handle,
                        reason: refusal(why) as i32,
                    })
                    .collect(),
            }))
        };
        let msg = NewGroupMessage {
            sender: info.id,
            message_id,
            group_id,
            // A handle that cannot exist is refused as unknown by the
            // store, in its place in the list.
            recipients: s.recipients,
            body: s.body,
            now,
            expires_at: now.plus(shared.cfg.retention),
            max_pending: shared.cfg.max_pending_per_mailbox,
        };
        match shared.store.send_group(msg).await {
            Ok(GroupSendOutcome::Accepted {
                accepted_at,
                entries,
                refused,
            }) => {
                if entries > 0 {
                    shared.metrics.group_messages.inc();
                    shared.metrics.group_entries.inc_by(u64::from(entries));
                }
                Ok(ack(accepted_at, false, refused))
            }
            Ok(GroupSendOutcome::Duplicate { accepted_at }) => {
                shared.metrics.messages_duplicate.inc();
                Ok(ack(accepted_at, true, Vec::new()))
            }
            Err(e) => Err(Refusal::unavailable("group send", &e).about(id_bytes)),
        }
    }
}

fn refusal(why: Refused) -> RecipientRefusal {
    match why {
        Refused::Unknown => RecipientRefusal::Unknown,
        Refused::MailboxFull => RecipientRefusal::MailboxFull,
        Refused::Sender => RecipientRefusal::Sender,
    }
}

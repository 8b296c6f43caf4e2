//! `SendMessage`: stores a ciphertext for a recipient, answered `SendAck`
//! once it is durable; a resend of the same id is answered with the first
//! accept time. The store hands the committed message to the recipient's
//! connection (through the registry, its sink) before the answer.

use super::{arr, Context, Refusal, Reply, Request, Runs};
use crate::store::{NewMessage, SendOutcome, UnixMillis};
use ponte_wire::messages::{self, server_frame, ErrorCode};

impl Request for messages::SendMessage {
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
        if s.body.is_empty() {
            // Every ciphertext has a header and a tag: an empty body is a
            // broken client, and storing it would end in a "delivered"
            // tick for a message nobody can read.
            return Err(Refusal::new(ErrorCode::InvalidArgument, "empty body").about(id_bytes));
        }
        let shared = &cx.shared;
        if s.body.len() > shared.cfg.max_body_len {
            return Err(Refusal::new(ErrorCode::TooLarge, "body too large").about(id_bytes));
        }
        if messages::validate_handle(&s.recipient).is_err() {
            return Err(
                Refusal::new(ErrorCode::UnknownRecipient, "no such recipient").about(id_bytes),
            );
        }
        let now = UnixMillis::now();
        let msg = NewMessage {
            sender: info.id,
            message_id,
            recipient: s.recipient,
            body: s.body,
            now,
            expires_at: now.plus(shared.cfg.retention),
            max_pending: shared.cfg.max_pending_per_mailbox,
        };
        let ack = |accepted_at: UnixMillis, duplicate: bool| {
            Reply::Answer(server_frame::Body::SendAck(messages::SendAck {
                message_id: id_bytes.clone(),
                accepted_at_ms: accepted_at.to_wire(),
                duplicate,
            }))
        };
        match shared.store.send(msg).await {
            Ok(SendOutcome::Accepted { accepted_at, .. }) => {
                shared.metrics.messages_accepted.inc();
                Ok(ack(accepted_at, false))
            }
            Ok(SendOutcome::Duplicate { accepted_at }) => {
                shared.metrics.messages_duplicate.inc();
                Ok(ack(accepted_at, true))
            }
            Ok(SendOutcome::UnknownRecipient) => {
                Err(Refusal::new(ErrorCode::UnknownRecipient, "no such recipient").about(id_bytes))
            }
            Ok(SendOutcome::MailboxFull) => {
                Err(Refusal::new(ErrorCode::MailboxFull, "recipient mailbox full").about(id_bytes))
            }
            Err(e) => Err(Refusal::unavailable("send", &e).about(id_bytes)),
        }
    }
}

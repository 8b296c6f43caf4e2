//! `Ack`: the device has the pushed items with these seqs. Each message
//! acknowledged becomes a delivery receipt for its sender, which the store
//! hands to the sender's connection once committed. No answer.
//!
//! Only seqs this connection pushed and has not seen acknowledged yet go to
//! the store: anything else is a stale or bogus ack (items pushed on an
//! earlier connection are pushed again at login and acked then). Without
//! this, an ack of 1,024 unknown seqs costs the single writer thread some
//! 2,000 lookups, for nothing, and a few accounts flooding them slow every
//! user's sends.

use super::{Context, Refusal, Reply, Request, Runs};
use crate::session::Window;
use crate::{duration_ms, now_ms};
use ponte_wire::messages::{self, ErrorCode};

/// Most seqs in one Ack.
const MAX_ACK_SEQS: usize = 1024;

impl Request for messages::Ack {
    const RUNS: Runs = Runs::Alongside;

    fn settle(&mut self, window: &mut Window) -> bool {
        if self.seqs.len() > MAX_ACK_SEQS {
            return false;
        }
        self.seqs.retain(|s| window.settle(*s));
        true
    }

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let seqs = self.seqs;
        if seqs.len() > MAX_ACK_SEQS {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "too many seqs in one ack",
            ));
        }
        if seqs.is_empty() {
            return Ok(Reply::Silent);
        }
        let info = cx.account()?;
        let shared = &cx.shared;
        let now = now_ms();
        let expires = now.saturating_add(duration_ms(shared.cfg.notice_retention));
        match shared.store.ack(info.id, seqs, now, expires).await {
            Ok(out) => {
                shared.metrics.messages_acked.inc_by(out.messages);
            }
            Err(e) => tracing::warn!("ack failed: {}", crate::Chain(&e)),
        }
        Ok(Reply::Silent)
    }
}

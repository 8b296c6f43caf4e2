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
use crate::store::{Seq, UnixMillis};
use ponte_wire::messages::{self, ErrorCode};

/// Most seqs in one Ack.
const MAX_ACK_SEQS: usize = 1024;

impl Request for messages::Ack {
    const RUNS: Runs = Runs::Alongside;

    fn settle(&mut self, window: &mut Window) -> bool {
        if self.seqs.len() > MAX_ACK_SEQS {
            return false;
        }
        self.seqs.retain(|s| window.settle(Seq(*s)));
        true
    }

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        if self.seqs.len() > MAX_ACK_SEQS {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "too many seqs in one ack",
            ));
        }
        if self.seqs.is_empty() {
            return Ok(Reply::Silent);
        }
        let seqs: Vec<Seq> = self.seqs.into_iter().map(Seq).collect();
        let info = cx.account()?;
        let shared = &cx.shared;
        let now = UnixMillis::now();
        let expires = now.plus(shared.cfg.notice_retention);
        match shared.store.ack(info.id, seqs, now, expires).await {
            Ok(out) => {
                shared.metrics.messages_acked.inc_by(out.messages);
            }
            Err(e) => tracing::warn!("ack failed: {}", crate::Chain(&e)),
        }
        Ok(Reply::Silent)
    }
}

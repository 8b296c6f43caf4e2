//! `ClaimKey`: takes one of a handle's one-time keys (or its fallback key)
//! for a first message to it; tells the owner's connection when its
//! one-time keys run low.

use super::{Context, Refusal, Reply, Request, Runs};
use crate::frames::{device_keys, signed_key};
use crate::store::ClaimOutcome;
use ponte_wire::messages::{self, server_frame, ErrorCode};

impl Request for messages::ClaimKey {
    const RUNS: Runs = Runs::Alongside;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let unknown = || Refusal::new(ErrorCode::UnknownHandle, "no such handle");
        if messages::validate_handle(&self.handle).is_err() {
            return Err(unknown());
        }
        let shared = &cx.shared;
        match shared.store.claim(self.handle).await {
            Ok(ClaimOutcome::Claimed(c)) => {
                shared.metrics.keys_claimed.inc();
                if c.remaining < shared.cfg.one_time_key_low_water {
                    shared.registry.key_count_low(c.owner.id);
                }
                Ok(Reply::Answer(server_frame::Body::ClaimedKey(
                    messages::ClaimedKey {
                        handle: c.owner.handle.clone(),
                        identity: Some(device_keys(&c.owner)),
                        key: Some(signed_key(&c.key)),
                        fallback: c.fallback,
                    },
                )))
            }
            Ok(ClaimOutcome::UnknownHandle) => Err(unknown()),
            Ok(ClaimOutcome::NoKeys) => Err(Refusal::new(ErrorCode::NoKeys, "no keys on file")),
            Err(e) => Err(Refusal::unavailable("claim", &e)),
        }
    }
}

//! `LookupIdentity`: the identity keys, registration signature and Noise
//! key of a handle (a read, run in place).

use super::{Context, Refusal, Reply, Request, Runs};
use crate::frames::device_keys;
use bytes::Bytes;
use ponte_wire::messages::{self, server_frame, ErrorCode};

impl Request for messages::LookupIdentity {
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let unknown = || Refusal::new(ErrorCode::UnknownHandle, "no such handle");
        if messages::validate_handle(&self.handle).is_err() {
            return Err(unknown());
        }
        match cx.shared.store.account_by_handle(self.handle).await {
            Ok(Some(a)) => Ok(Reply::Answer(server_frame::Body::IdentityKeys(
                messages::IdentityKeys {
                    handle: a.handle.clone(),
                    keys: Some(device_keys(&a)),
                    registration_signature: Bytes::from(a.signature.clone()),
                    noise_static_key: Bytes::copy_from_slice(&a.noise_key),
                },
            ))),
            Ok(None) => Err(unknown()),
            Err(e) => Err(Refusal::unavailable("lookup", &e)),
        }
    }
}

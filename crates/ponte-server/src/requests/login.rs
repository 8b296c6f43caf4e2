//! `Login`: the account of this device (its Noise key), its key counts and
//! how many items wait, in one read; the session then goes online and
//! pushes the mailbox.

use super::{Context, Online, Refusal, Reply, Request, Runs};
use ponte_wire::messages::{self, server_frame, ErrorCode};

impl Request for messages::Login {
    const NEEDS_LOGIN: bool = false;
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, cx: Context) -> Result<Reply, Refusal> {
        let login = match cx.shared.store.login_info(cx.peer.device_key).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(Refusal::new(
                    ErrorCode::NotRegistered,
                    "no account for this device",
                ))
            }
            Err(e) => return Err(Refusal::unavailable("login lookup", &e)),
        };
        let answer = server_frame::Body::LoggedIn(messages::LoggedIn {
            handle: login.account.handle.clone(),
            one_time_keys: login.keys.one_time_keys,
            has_fallback_key: login.keys.has_fallback,
            pending: login.pending,
        });
        Ok(Reply::Online(Box::new(Online {
            account: login.account,
            answer,
            keys: Some(login.keys),
        })))
    }
}

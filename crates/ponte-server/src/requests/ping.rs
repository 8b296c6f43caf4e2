//! `Ping`: answered with `Pong` and the server's clock, logged in or not.

use super::{Context, Refusal, Reply, Request, Runs};
use crate::store::UnixMillis;
use ponte_wire::messages::{self, server_frame};

impl Request for messages::Ping {
    const NEEDS_LOGIN: bool = false;
    const RUNS: Runs = Runs::InPlace;

    async fn run(self, _cx: Context) -> Result<Reply, Refusal> {
        Ok(Reply::Answer(server_frame::Body::Pong(messages::Pong {
            nonce: self.nonce,
            server_time_ms: UnixMillis::now().to_wire(),
        })))
    }
}

//! The live channel (`POST /api/events`, server-sent events) and the
//! changes the connection reports, gathered into as few events as the page
//! needs.

use super::{lock, view_json, views_json, App};
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ponte_client::{MessageView, Update};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Message and tick changes reported together go to the page as one event
/// each up to this many; past it, as one `resync` (the page reloads the
/// chat list and the open chat). A first connection after a long time
/// offline can report tens of thousands of tick changes at once: one event
/// each would make the page reload its chat list as often.
const LIVE_BATCH: usize = 256;

impl App {
    /// Send the gathered message and tick changes: one event each, with one
    /// state after them when a tick changed (what waits to go out may have
    /// changed), or a single `resync` when there are more than
    /// [`LIVE_BATCH`].
    pub(super) fn send_gathered(&self) {
        let updates = std::mem::take(&mut *lock(&self.gathered));
        // Each with its event's name (a kind of update this app does not
        // know is left out).
        let (kinds, views): (Vec<&str>, Vec<MessageView>) = updates
            .into_iter()
            .filter_map(|u| match u {
                Update::Message(v) => Some(("message", v)),
                Update::Status(v) => Some(("status", v)),
                _ => None,
            })
            .unzip();
        if views.is_empty() {
            return;
        }
        if views.len() > LIVE_BATCH {
            self.send_live(&json!({ "type": "resync" }));
        } else {
            // With their quotes; without, if the profile cannot say.
            let shown = lock(&self.local)
                .as_ref()
                .and_then(|c| views_json(c, &views).ok())
                .unwrap_or_else(|| views.iter().map(view_json).collect());
            for (kind, message) in kinds.iter().zip(shown) {
                self.send_live(&json!({ "type": kind, "message": message }));
            }
        }
        if kinds.contains(&"status") {
            self.push_state();
        }
    }
}

/// The live channel: the state first, then every event; ends when the app
/// stops. A page that falls behind is told to reload.
pub(super) async fn events(State(app): State<Arc<App>>) -> Response {
    let first = app.state_json().to_string();
    let rx = app.live.subscribe();
    let closing = app.closing.subscribe();
    let stream = futures::stream::unfold(
        (Some(first), rx, closing),
        |(first, mut rx, mut closing)| async move {
            if let Some(f) = first {
                return Some((
                    Ok::<_, std::convert::Infallible>(SseEvent::default().data(f)),
                    (None, rx, closing),
                ));
            }
            if *closing.borrow() {
                return None;
            }
            let data = tokio::select! {
                r = rx.recv() => match r {
                    Ok(d) => d,
                    Err(broadcast::error::RecvError::Lagged(_)) => json!({ "type": "resync" }).to_string(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = closing.wait_for(|c| *c) => return None,
            };
            Some((Ok(SseEvent::default().data(data)), (None, rx, closing)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

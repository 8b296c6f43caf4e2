//! `GET /api/search?q=WORDS`: messages of the whole local history that
//! hold every word (the library's blind index, see
//! `ponte_client::store::search`), newest first, each with its chat and
//! its place there (`seq`) so the page can open the chat at it. Chat
//! names are filtered by the page itself, from the chat list.

use super::{fail, ok, views_json, ApiResult, App};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use ponte_client::store::group_of_key;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Hits returned to the page.
const HITS: usize = 50;

pub(super) async fn search(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = q
        .get("q")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "search for what?"))?;
    let app2 = app.clone();
    // Decrypting and hashing may take a moment (the first search after an
    // upgrade indexes the whole history): off the async threads.
    let hits = tokio::task::spawn_blocking(move || {
        app2.with_local(|c| {
            let hits = c.search(&query, HITS)?;
            let mut out = Vec::with_capacity(hits.len());
            for h in &hits {
                let message = views_json(c, std::slice::from_ref(&h.message))?
                    .pop()
                    .unwrap_or_default();
                let title = match group_of_key(&h.chat) {
                    Some(g) => c.group_info(&g).ok().map(|i| i.title),
                    None => None,
                };
                out.push(json!({
                    "chat": h.chat,
                    "title": title,
                    "seq": h.seq,
                    "message": message,
                }));
            }
            Ok(out)
        })
    })
    .await
    .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    ok(json!({ "hits": hits }))
}

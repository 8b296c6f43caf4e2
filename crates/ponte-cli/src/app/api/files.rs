//! Files from the page and to it: an upload staged in the profile and
//! queued by the library; a received file served back (pictures inline,
//! the rest as a download); fetching one now (by the connection, which
//! keeps its connection).

use super::{conversation, fail, ok, parse_id, views_json, ApiResult, App, Phase};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use futures::StreamExt as _;
use ponte_client::client::transfer_wait;
use ponte_client::store::{group_key, Conversation, FileState};
use ponte_client::ClientError;
use ponte_e2e::MessageId;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::Arc;

/// Largest file the page may upload (the library's own cap is far higher;
/// this bounds what a tab can write into the profile in one request).
pub const MAX_UPLOAD: u64 = 2 << 30;

/// A file name the page sent, made safe to create in a directory of our
/// own (the library sanitises it again for the message).
fn temp_name(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .take(200)
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.to_owned()
    }
}

pub(super) async fn send_file(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> ApiResult {
    let peer = q
        .get("peer")
        .cloned()
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "no recipient"))?;
    let with = conversation(&peer)?;
    let reply_to = match q.get("reply_to").map(String::as_str) {
        Some(id) if !id.is_empty() => Some(parse_id(id)?),
        _ => None,
    };
    let name = temp_name(q.get("name").map(String::as_str).unwrap_or("file"));
    let caption = q.get("caption").cloned().unwrap_or_default();
    if app.phase() != Phase::Ready {
        return Err(fail(StatusCode::CONFLICT, "the profile is not open yet"));
    }
    // Into a directory of its own in the profile (0700), then encrypted by
    // the library into the files directory; the plain copy goes at once.
    let staging = app
        .dir
        .join("app-uploads")
        .join(MessageId::random().to_hex());
    std::fs::create_dir_all(&staging).map_err(|e| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("staging the file: {e}"),
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(
            app.dir.join("app-uploads"),
            std::fs::Permissions::from_mode(0o700),
        );
    }
    let path = staging.join(&name);
    let written = write_body(&path, body).await;
    let queued = match written {
        Ok(()) => {
            let app2 = app.clone();
            let path2 = path.clone();
            tokio::task::spawn_blocking(move || {
                app2.with_local(|c| {
                    let r = reply_to.as_ref();
                    let (id, key) = match &with {
                        Conversation::Group(g) => (
                            c.queue_group_file_reply(g, &path2, &caption, r)?,
                            group_key(g),
                        ),
                        _ => (c.queue_file_reply(&peer, &path2, &caption, r)?, peer),
                    };
                    // The store's lookup: `key` is a handle or `g:HEX`.
                    let view = c
                        .store()
                        .message(&key, true, &id)?
                        .ok_or(ClientError::Corrupt("queued file"))?;
                    views_json(c, &[view])
                })
            })
            .await
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
            .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&staging);
    let views = queued?;
    // The connection uploads it (at once when online, else when it
    // connects).
    app.push_state();
    app.nudge();
    ok(json!({ "message": views.first() }))
}

async fn write_body(path: &FsPath, body: Body) -> Result<(), (StatusCode, Json<Value>)> {
    use tokio::io::AsyncWriteExt as _;
    let io = |e: std::io::Error| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("staging the file: {e}"),
        )
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(StatusCode::BAD_REQUEST, format!("upload: {e}")))?;
        total += chunk.len() as u64;
        if total > MAX_UPLOAD {
            return Err(fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "files up to {} MiB can be sent from the app",
                    MAX_UPLOAD >> 20
                ),
            ));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}

/// Types shown inline; everything else is a download.
const INLINE: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

pub(super) async fn file(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let rec = app
        .with_local(|c| c.store().file_by_id(&id))?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such file"))?;
    let path = match (rec.outgoing, rec.state, &rec.path) {
        (false, FileState::Fetched, Some(p)) => p.clone(),
        _ => return Err(fail(StatusCode::NOT_FOUND, "not downloaded")),
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| fail(StatusCode::NOT_FOUND, format!("the file is gone: {e}")))?;
    let stream = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mime = rec.descriptor.mime.to_ascii_lowercase();
    let inline = INLINE.contains(&mime.as_str());
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if inline {
            INLINE
                .iter()
                .find(|m| **m == mime)
                .copied()
                .unwrap_or("application/octet-stream")
        } else {
            "application/octet-stream"
        }),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(if inline { "inline" } else { "attachment" }),
    );
    Ok(response)
}

/// `POST /api/file/{id}/fetch`: the connection fetches the file (any
/// size) on its own connection, as `ponte file get` beside `ponte listen`
/// asks it to; answered once it is here, with why it failed, or after 15 s
/// plus a second per MiB with "still fetching" (the connection goes on).
pub(super) async fn fetch(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let size = app.with_local(|c| {
        c.queue_fetch(&id)?;
        Ok(c.store().file_by_id(&id)?.map_or(0, |r| r.descriptor.size))
    })?;
    app.nudge();
    // The wait of `ponte file get` beside `ponte listen`; polled here with
    // the API's client let go in between.
    let deadline = tokio::time::Instant::now() + transfer_wait(size);
    loop {
        match app.with_local(|c| c.fetch_asked(&id))? {
            Some(Ok(())) => return ok(json!({ "fetched": id.to_hex() })),
            Some(Err(why)) => {
                return Err(fail(StatusCode::BAD_GATEWAY, format!("not fetched: {why}")))
            }
            None if tokio::time::Instant::now() >= deadline => {
                return Err(fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "still fetching: it shows here once it is done",
                ))
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_stay_in_their_directory() {
        assert_eq!(temp_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(temp_name(".."), "file");
        assert_eq!(temp_name(""), "file");
        assert_eq!(temp_name("a\nb/c"), "a_b_c");
        assert_eq!(temp_name(&"x".repeat(500)).len(), 200);
    }
}

//! Groups and timers from the page. Reading a group is local (the API's
//! client). A change to a group, and a timer, are written locally and
//! queued like a text: the connection's task sends them without leaving
//! its connection. Only a change that adds someone who is not a contact
//! yet needs the server first (their key from its directory): it is
//! handed to the connection's task like a file fetch, and answered when
//! done.
//!
//! | method, path | what |
//! |---|---|
//! | `POST /api/groups` | `{title, members: [handle]}` → the new group's info |
//! | `GET /api/group/{id}` | its info: title, members and admins, your role, status, timer |
//! | `POST /api/group/{id}/add` | `{members: [handle]}` (admins) |
//! | `POST /api/group/{id}/remove` | `{member}` (admins) |
//! | `POST /api/group/{id}/leave` | leave it |
//! | `POST /api/group/{id}/promote` | `{member}`: make a member an admin (admins only) |
//! | `POST /api/group/{id}/rename` | `{title}`: a new title (admins only) |
//! | `POST /api/timer` | `{peer, timer}`: a conversation's disappearing timer (`"1h"`, `"off"`, as `ponte timer`) |

use super::super::net::Command;
use super::{conversation, fail, ok, string_field, ApiResult, App};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ponte_client::client::{format_timer, parse_timer, GroupChange, GroupInfo};
use ponte_client::store::{group_key, group_of_key};
use ponte_e2e::group::{GroupId, Role};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A group as the page gets it.
pub(super) fn info_json(g: &GroupInfo) -> Value {
    json!({
        "id": g.id.to_hex(),
        "peer": group_key(&g.id),
        "title": g.title,
        "status": g.status.as_str(),
        "role": match g.role {
            Some(Role::Admin) => Some("admin"),
            Some(_) => Some("member"),
            None => None,
        },
        "members": g.members.iter().map(|m| json!({
            "handle": m.handle,
            "admin": m.admin,
        })).collect::<Vec<_>>(),
        "version": g.version,
    })
}

fn group_id(raw: &str) -> Result<GroupId, (StatusCode, Json<Value>)> {
    let key = if raw.starts_with("g:") {
        raw.to_owned()
    } else {
        format!("g:{raw}")
    };
    group_of_key(&key).ok_or_else(|| fail(StatusCode::BAD_REQUEST, "not a group id"))
}

/// Handles from a JSON list (each trimmed, lower-cased; the library
/// checks them).
fn handles(body: &Value, name: &str) -> Result<Vec<String>, (StatusCode, Json<Value>)> {
    let list = body.get(name).and_then(Value::as_array).ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("{name}: a list of handles"),
        )
    })?;
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        let h = v
            .as_str()
            .ok_or_else(|| {
                fail(
                    StatusCode::BAD_REQUEST,
                    format!("{name}: a list of handles"),
                )
            })?
            .trim()
            .to_lowercase();
        if !h.is_empty() && !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

/// Make `change` to `group` (`None`: create one). When every new member
/// is a contact already, the change is written here and the connection's
/// task sends it like a text, without leaving its connection; otherwise
/// (new members' keys come from the server's directory) it is handed to
/// that task, which makes it on a connection of its own, and answered when
/// done.
async fn run(app: &Arc<App>, group: Option<GroupId>, change: GroupChange) -> ApiResult {
    let (g, ch) = (group, change.clone());
    let local = app
        .with_keys(move |c| {
            if !c.knows_all(ch.new_members())? {
                return Ok(None);
            }
            let queued = c.queue_group_change(g.as_ref(), &ch)?;
            c.group_info(&queued.group).map(Some)
        })
        .await?;
    if let Some(info) = local {
        app.push_state();
        app.nudge();
        return ok(json!({ "group": info_json(&info) }));
    }
    let (reply, answer) = oneshot::channel();
    app.command(Command::Group {
        group,
        change,
        reply,
    })?;
    match answer.await {
        Ok(Ok(info)) => {
            app.push_state();
            ok(json!({ "group": info_json(&info) }))
        }
        Ok(Err(e)) => Err(fail(StatusCode::BAD_REQUEST, e)),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
    }
}

pub(super) async fn create(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let title = string_field(&body, "title")
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "a group needs a title"))?;
    let members = handles(&body, "members")?;
    if members.is_empty() {
        return Err(fail(StatusCode::BAD_REQUEST, "pick at least one member"));
    }
    run(&app, None, GroupChange::Create { title, members }).await
}

pub(super) async fn info(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let group = group_id(&id)?;
    let (info, timer) = app.with_local(|c| {
        let info = c.group_info(&group)?;
        let timer = c.timer(&ponte_client::store::Conversation::Group(group))?;
        Ok((info, timer))
    })?;
    let mut v = info_json(&info);
    v["timer"] = json!(timer.map(ponte_e2e::Timer::secs));
    v["me"] = json!(app.handle());
    ok(v)
}

/// `POST /api/group/{id}/{add,remove,promote,rename}`: one change by an
/// admin, its field checked here and the rest left to the library.
pub(super) async fn change(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> ApiResult {
    let group = group_id(&id)?;
    let bad = |what: &str| fail(StatusCode::BAD_REQUEST, what);
    let member = |question: &str| string_field(&body, "member").ok_or_else(|| bad(question));
    let change = match action.as_str() {
        "add" => {
            let members = handles(&body, "members")?;
            if members.is_empty() {
                return Err(bad("whom to add?"));
            }
            GroupChange::Add(members)
        }
        "remove" => GroupChange::Remove(vec![member("whom to remove?")?]),
        "promote" => GroupChange::Promote(vec![member("whom to make an admin?")?]),
        "rename" => GroupChange::Rename(
            string_field(&body, "title")
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("a group needs a title"))?,
        ),
        _ => return Err(fail(StatusCode::NOT_FOUND, "no such change to a group")),
    };
    run(&app, Some(group), change).await
}

pub(super) async fn leave(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let group = group_id(&id)?;
    run(&app, Some(group), GroupChange::Leave).await
}

pub(super) async fn set_timer(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let peer =
        string_field(&body, "peer").ok_or_else(|| fail(StatusCode::BAD_REQUEST, "which chat?"))?;
    let with = conversation(&peer)?;
    let text = string_field(&body, "timer").unwrap_or_else(|| "off".to_owned());
    let timer = parse_timer(&text).map_err(|e| fail(StatusCode::BAD_REQUEST, e.to_string()))?;
    // Applied here at once and written into the outbox (a group's setting
    // encrypted for the group); the connection's task sends it like a
    // text, without leaving its connection.
    app.with_keys(move |c| c.queue_timer(&with, timer)).await?;
    app.push_state();
    app.nudge();
    ok(json!({
        "peer": peer,
        "timer": timer.map(ponte_e2e::Timer::secs),
        "label": timer.map_or_else(|| "off".to_owned(), format_timer),
    }))
}

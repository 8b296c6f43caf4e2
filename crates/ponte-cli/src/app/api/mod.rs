//! The JSON API over `ponte-client`, and the live channel.
//!
//! Every route here sits behind [`super::guard`]. Answers are JSON; an
//! error is `{"error": "..."}` with a 4xx/5xx status. Text from others goes
//! out as JSON strings: the page renders it as text, never as HTML.
//!
//! | method, path | what |
//! |---|---|
//! | `GET /api/state` | phase (setup, locked, ready), handle, connection, messages waiting |
//! | `POST /api/register` | first run: `{server, handle, passphrase?, invite?, relay?}` |
//! | `POST /api/unlock` | `{passphrase}` |
//! | `GET /api/chats` | the chat list (contacts and groups) |
//! | `GET /api/chat/{peer}?before=N` | a page of a conversation (200 messages); `peer` a handle or `g:HEX` |
//! | `POST /api/chat/{peer}/read` | the chat is open: its messages are read (read receipts) |
//! | `POST /api/send` | `{peer, text, reply_to?}` |
//! | `POST /api/groups`, `GET /api/group/{id}`, `POST /api/group/{id}/{add,remove,promote,rename,leave}`, `POST /api/timer` | groups and timers (`groups.rs`) |
//! | `GET /api/search?q=WORDS` | search the history (`search.rs`) |
//! | `POST /api/send-file?peer=P&name=N&caption=C&reply_to=ID` | the file's bytes as the body (P a contact or `g:ID`; `reply_to` optional) |
//! | `GET /api/file/{id}` | a received file (images inline, the rest as a download) |
//! | `POST /api/file/{id}/fetch` | download a received file now |
//! | `GET /api/contact/{peer}` | safety number, its QR code's modules, verified, key changed |
//! | `POST /api/contact/{peer}/verify` | mark verified (accepts a changed key) |
//! | `GET /api/relays`, `POST /api/relays`, `POST /api/relays/remove`, `POST /api/relays/check` | the saved relays |
//! | `POST /api/events` | the live channel: server-sent events (a `POST`, so it carries `Origin`) |

mod files;
mod groups;
mod live;
mod search;

use super::guard::{self, Expect};
use super::net::{Command, Control, Setup};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ponte_client::client::{save_vias, saved_vias, Event};
use ponte_client::route::RelayUrl;
use ponte_client::store::{group_of_key, ChatSummary, Conversation, FileState};
use ponte_client::{Client, ClientError, MessageView, Report, Update};
use ponte_e2e::MessageId;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Messages per conversation page.
const PAGE: usize = 200;
/// Largest JSON body.
const MAX_JSON: usize = 256 * 1024;
/// Characters of a quoted message shown above a reply.
const QUOTE_CHARS: usize = 200;
/// Live events kept for a slow page before it is told to reload.
const LIVE_BACKLOG: usize = 1024;

/// Where the app is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Opening the profile.
    Starting,
    /// No profile: the first-run screen.
    Setup,
    /// A passphrase is needed.
    Locked,
    /// Open.
    Ready,
    /// The profile cannot be opened (said on the page).
    Failed(String),
}

#[derive(Debug, Clone, Default)]
struct Net {
    state: &'static str,
    route: Option<String>,
    detail: Option<String>,
}

/// The app's shared state.
pub struct App {
    dir: PathBuf,
    expect: Arc<Expect>,
    phase: Mutex<Phase>,
    handle: Mutex<Option<String>>,
    local: Mutex<Option<Client>>,
    net: Mutex<Net>,
    live: broadcast::Sender<String>,
    /// Message and tick changes reported and not yet sent to the page
    /// ([`App::send_gathered`]).
    gathered: Mutex<Vec<Update>>,
    /// Bumped at each state change: the page drops a state older than the
    /// one it shows (an answer and a live event can cross).
    version: std::sync::atomic::AtomicU64,
    closing: watch::Sender<bool>,
    setup: mpsc::Sender<Setup>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

type ApiResult = Result<Response, (StatusCode, Json<Value>)>;

fn fail(status: StatusCode, text: impl Into<String>) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "error": text.into() })))
}

fn client_fail(e: &ClientError) -> (StatusCode, Json<Value>) {
    let status = match e {
        ClientError::Invalid(_) | ClientError::KeyChanged(_) => StatusCode::BAD_REQUEST,
        ClientError::UnknownContact(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    fail(status, Report(e).to_string())
}

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn file_state(s: FileState) -> &'static str {
    match s {
        FileState::Upload => "uploading",
        FileState::Uploaded => "uploaded",
        FileState::Pending => "pending",
        FileState::Fetched => "fetched",
        _ => "unknown",
    }
}

/// A message as the page gets it. `chat` is the conversation it belongs
/// to (the contact, or `g:HEX` for a group, where `peer` is the sender).
pub fn view_json(v: &MessageView) -> Value {
    let chat = match &v.group {
        Some(g) => ponte_client::store::group_key(g),
        None => v.peer.clone(),
    };
    json!({
        "id": v.id.to_hex(),
        "chat": chat,
        "peer": v.peer,
        "group": v.group.map(|g| g.to_hex()),
        "group_title": v.group_title,
        "ticks": v.ticks.map(|t| json!({
            "delivered_to": t.delivered_to,
            "read_by": t.read_by,
            "of": t.of,
            "expired": t.expired,
        })),
        "notice": if v.group_notice {
            Some("group")
        } else if v.notice.is_some() {
            Some("timer")
        } else {
            None
        },
        "notice_timer": match &v.notice {
            Some(ponte_client::store::Notice::TimerSet(t)) => Some(t.map_or(0, ponte_e2e::Timer::secs)),
            _ => None,
        },
        "timer": v.timer.map(ponte_e2e::Timer::secs),
        "expires_at": v.expires_at.map(|t| t.0),
        "outgoing": v.outgoing,
        "text": v.text,
        "sent_at": v.sent_at.0,
        "status": v.status.as_str(),
        "key_changed": v.key_changed,
        "unreadable": v.unreadable,
        "file": v.file.as_ref().map(|f| json!({
            "name": f.name,
            "size": f.size,
            "mime": f.mime,
            "state": file_state(f.state),
        })),
    })
}

/// What a reply shows of the message it quotes.
fn quote_json(quoted: Option<&MessageView>, id: &MessageId) -> Value {
    match quoted {
        Some(q) => json!({
            "id": id.to_hex(),
            "peer": q.peer,
            "outgoing": q.outgoing,
            "text": q.text.chars().take(QUOTE_CHARS).collect::<String>(),
            "file": q.file.as_ref().map(|f| f.name.clone()),
        }),
        None => json!({ "id": id.to_hex(), "missing": true }),
    }
}

/// Messages as the page gets them, each reply with its quote (looked up
/// in the profile).
fn views_json(c: &Client, views: &[MessageView]) -> Result<Vec<Value>, ClientError> {
    views
        .iter()
        .map(|v| {
            let mut j = view_json(v);
            if let Some(to) = &v.reply_to {
                j["reply"] = quote_json(c.store().quoted(v)?.as_ref(), to);
            }
            Ok(j)
        })
        .collect()
}

fn chat_json(c: &ChatSummary) -> Value {
    json!({
        "peer": c.peer,
        "group": c.group.map(|g| g.to_hex()),
        "title": c.title,
        "group_status": c.group_status.map(|s| s.as_str()),
        "last": c.last.as_ref().map(view_json),
        "unread": c.unread,
        "key_changed": c.key_changed,
        "verified": c.verified,
    })
}

impl App {
    /// The state, and the receiving ends for the connection task.
    pub fn new(dir: PathBuf, addr: SocketAddr, secret: String) -> (Self, Control) {
        let (setup, setup_rx) = mpsc::channel(8);
        let (commands, commands_rx) = mpsc::channel(64);
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let app = Self {
            dir,
            expect: Arc::new(Expect {
                host: addr.to_string(),
                origin: format!("http://{addr}"),
                secret,
            }),
            phase: Mutex::new(Phase::Starting),
            handle: Mutex::new(None),
            local: Mutex::new(None),
            net: Mutex::new(Net {
                state: "connecting",
                ..Net::default()
            }),
            live,
            gathered: Mutex::new(Vec::new()),
            version: std::sync::atomic::AtomicU64::new(0),
            closing: watch::channel(false).0,
            setup,
            commands,
        };
        (
            app,
            Control {
                setup: setup_rx,
                commands: commands_rx,
            },
        )
    }

    pub fn dir(&self) -> &FsPath {
        &self.dir
    }

    /// The profile's handle, once open.
    pub fn handle(&self) -> Option<String> {
        lock(&self.handle).clone()
    }

    pub fn phase(&self) -> Phase {
        lock(&self.phase).clone()
    }

    pub fn set_phase(&self, phase: Phase) {
        *lock(&self.phase) = phase;
        self.push_state();
    }

    /// The profile is open: `local` serves the API.
    pub fn ready(&self, local: Client, handle: &str) {
        *lock(&self.local) = Some(local);
        *lock(&self.handle) = Some(handle.to_owned());
        self.set_phase(Phase::Ready);
    }

    /// Index for search what waits (the whole history after the upgrade
    /// to schema 5), one batch at a time with the API's client released in
    /// between, so the page stays answered meanwhile. Runs on a blocking
    /// thread until nothing waits or the app stops.
    pub fn index_in_background(self: &Arc<Self>) {
        let app = self.clone();
        tokio::task::spawn_blocking(move || loop {
            if *app.closing.borrow() {
                return;
            }
            let n = match lock(&app.local).as_ref() {
                Some(c) => c.store().index_some(),
                None => return,
            };
            match n {
                Ok(0) => return,
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => {
                    tracing::warn!(error = %Report(&e), "indexing for search stopped");
                    return;
                }
            }
        });
    }

    /// End the live channels (shutting down).
    pub fn close_live(&self) {
        self.send_gathered();
        let _ = self.closing.send(true);
    }

    fn send_live(&self, v: &Value) {
        let _ = self.live.send(v.to_string());
    }

    fn state_json(&self) -> Value {
        let phase = self.phase();
        let (name, error) = match &phase {
            Phase::Starting => ("starting", None),
            Phase::Setup => ("setup", None),
            Phase::Locked => ("locked", None),
            Phase::Ready => ("ready", None),
            Phase::Failed(e) => ("failed", Some(e.clone())),
        };
        let net = lock(&self.net).clone();
        let (waiting, server) = match lock(&self.local).as_ref() {
            Some(c) => (c.waiting_out().unwrap_or(0), Some(c.server().to_string())),
            None => (0, None),
        };
        json!({
            "type": "state",
            "version": self.version.load(std::sync::atomic::Ordering::SeqCst),
            "phase": name,
            "error": error,
            "handle": *lock(&self.handle),
            "server": server,
            "connection": net.state,
            "route": net.route,
            "detail": net.detail,
            "waiting": waiting,
        })
    }

    fn push_state(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.send_live(&self.state_json());
    }

    pub fn set_offline(&self, why: &str) {
        *lock(&self.net) = Net {
            state: "offline",
            route: None,
            detail: Some(why.to_owned()),
        };
        self.push_state();
    }

    pub fn set_connecting(&self) {
        lock(&self.net).state = "connecting";
        self.push_state();
    }

    /// What the connection reports, turned into live events. Message and
    /// tick changes are gathered until the end of their run
    /// ([`Event::UpdatesEnd`]) and sent by [`App::send_gathered`]; any other
    /// event sends what was gathered first, so the page sees events in the
    /// order they happened.
    pub fn on_event(&self, event: Event) {
        if let Event::Update(u) = event {
            lock(&self.gathered).push(u);
            return;
        }
        self.send_gathered();
        match event {
            Event::Update(_) | Event::UpdatesEnd => {}
            Event::Connection(text) => {
                let handle = lock(&self.handle).clone().unwrap_or_default();
                *lock(&self.net) = parse_connection(&text, &handle);
                self.push_state();
            }
            Event::Warning(text) => {
                self.send_live(&json!({ "type": "warning", "text": text }));
            }
            Event::FileFetched { id, .. } => {
                self.send_live(&json!({ "type": "file", "id": id.to_hex() }));
            }
            _ => {}
        }
    }

    fn with_local<T>(
        &self,
        f: impl FnOnce(&Client) -> Result<T, ClientError>,
    ) -> Result<T, (StatusCode, Json<Value>)> {
        let guard = lock(&self.local);
        let client = guard
            .as_ref()
            .ok_or_else(|| fail(StatusCode::CONFLICT, "the profile is not open yet"))?;
        f(client).map_err(|e| client_fail(&e))
    }

    /// [`App::with_local`] for what takes the profile's keys (a group's
    /// message, timer or change is encrypted or signed under them;
    /// confirming a key drops sessions), which the connection may hold
    /// across a network round: on the blocking pool, so that no runtime
    /// thread waits (the runtime has two), and the keys taken before the
    /// API's client is locked, so that its other requests (the chat list,
    /// the state) do not wait behind the keys.
    async fn with_keys<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Client) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, (StatusCode, Json<Value>)> {
        let keys = lock(&self.local)
            .as_ref()
            .map(Client::keys)
            .ok_or_else(|| fail(StatusCode::CONFLICT, "the profile is not open yet"))?;
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let _hold = keys.take_blocking().map_err(|e| client_fail(&e))?;
            app.with_local(f)
        })
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    }

    fn command(&self, c: Command) -> Result<(), (StatusCode, Json<Value>)> {
        self.commands
            .try_send(c)
            .map_err(|_| fail(StatusCode::SERVICE_UNAVAILABLE, "busy; try again"))
    }

    /// Reconnect unless connected (a message queued while offline goes
    /// out now rather than at the next retry).
    fn nudge(&self) {
        if lock(&self.net).state != "online" {
            let _ = self.commands.try_send(Command::Reconnect);
        }
    }
}

/// `connected to HOST:PORT as HANDLE (ROUTE)`, `disconnected (…); retrying
/// in …`, `cannot connect (…); …` as the connection reports them.
fn parse_connection(text: &str, handle: &str) -> Net {
    if text.starts_with("connected to ") {
        let marker = format!(" as {handle} (");
        if let Some((_, rest)) = text.split_once(&marker) {
            let route = rest.strip_suffix(')').unwrap_or(rest);
            return Net {
                state: "online",
                route: Some(route.to_owned()),
                detail: None,
            };
        }
        return Net {
            state: "online",
            route: None,
            detail: None,
        };
    }
    if text.starts_with("disconnected") || text.starts_with("cannot connect") {
        return Net {
            state: "offline",
            route: None,
            detail: Some(text.to_owned()),
        };
    }
    Net {
        state: "connecting",
        route: None,
        detail: Some(text.to_owned()),
    }
}

fn string_field(body: &Value, name: &str) -> Option<String> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn parse_id(hex: &str) -> Result<MessageId, (StatusCode, Json<Value>)> {
    MessageId::from_hex(hex).ok_or_else(|| fail(StatusCode::BAD_REQUEST, "not a message id"))
}

// ---------------------------------------------------------------- handlers

async fn state(State(app): State<Arc<App>>) -> ApiResult {
    ok(app.state_json())
}

async fn register(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let server = string_field(&body, "server")
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "the server's address is missing"))?;
    let handle = string_field(&body, "handle")
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "choose a handle"))?;
    // A passphrase is taken as typed (spaces count); empty means none.
    let passphrase = body
        .get("passphrase")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    let relay = match string_field(&body, "relay") {
        Some(r) => Some(
            r.parse::<RelayUrl>()
                .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("relay link: {e}")))?,
        ),
        None => None,
    };
    let (reply, answer) = oneshot::channel();
    app.setup
        .send(Setup::Register {
            server,
            handle,
            passphrase,
            invite: string_field(&body, "invite"),
            relay,
            reply,
        })
        .await
        .map_err(|_| fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    match answer.await {
        Ok(Ok(())) => ok(app.state_json()),
        Ok(Err(e)) => Err(fail(StatusCode::BAD_REQUEST, e)),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
    }
}

async fn unlock(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let passphrase = body
        .get("passphrase")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let (reply, answer) = oneshot::channel();
    app.setup
        .send(Setup::Unlock { passphrase, reply })
        .await
        .map_err(|_| fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    match answer.await {
        Ok(Ok(())) => ok(app.state_json()),
        Ok(Err(e)) => Err(fail(StatusCode::FORBIDDEN, e)),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
    }
}

async fn chats(State(app): State<Arc<App>>) -> ApiResult {
    let chats = app.with_local(Client::chats)?;
    ok(json!({ "chats": chats.iter().map(chat_json).collect::<Vec<_>>() }))
}

/// The conversation a path or body names: `g:HEX` for a group, else a
/// contact's handle (checked by the library).
fn conversation(key: &str) -> Result<Conversation, (StatusCode, Json<Value>)> {
    if key.starts_with("g:") {
        return group_of_key(key)
            .map(Conversation::Group)
            .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "not a group id"));
    }
    Ok(Conversation::contact(key))
}

async fn chat(
    State(app): State<Arc<App>>,
    Path(peer): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let before = match q.get("before") {
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| fail(StatusCode::BAD_REQUEST, "before: not a number"))?,
        ),
        None => None,
    };
    let with = conversation(&peer)?;
    let (page, messages, contact, group, timer) = app.with_local(|c| {
        let page = c.page_of(&with, before, PAGE)?;
        let messages = views_json(c, &page.messages)?;
        let timer = c.timer(&with)?;
        Ok(match &with {
            Conversation::Group(g) => (page, messages, None, Some(c.group_info(g)?), timer),
            _ => (page, messages, c.store().contact(&peer)?, None, timer),
        })
    })?;
    ok(json!({
        "peer": peer,
        "messages": messages,
        "older": page.older,
        "timer": timer.map(ponte_e2e::Timer::secs),
        "contact": contact.map(|c| json!({
            "verified": c.verified,
            "key_changed": c.changed_identity.is_some(),
        })),
        "group": group.as_ref().map(groups::info_json),
    }))
}

async fn read(State(app): State<Arc<App>>, Path(peer): Path<String>) -> ApiResult {
    let with = conversation(&peer)?;
    let n = app.with_local(|c| c.mark_read_of(&with))?;
    ok(json!({ "read": n }))
}

async fn send(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let peer =
        string_field(&body, "peer").ok_or_else(|| fail(StatusCode::BAD_REQUEST, "no recipient"))?;
    let with = conversation(&peer)?;
    // The text as typed (leading spaces and new lines are the user's).
    let text = body
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let reply_to = match string_field(&body, "reply_to") {
        Some(id) => Some(parse_id(&id)?),
        None => None,
    };
    let for_group = matches!(with, Conversation::Group(_));
    let queue = move |c: &Client| {
        let id = c.queue_reply_to(&with, &text, reply_to.as_ref())?;
        let key = match &with {
            Conversation::Group(g) => ponte_client::store::group_key(g),
            _ => peer.clone(),
        };
        c.store()
            .message(&key, true, &id)?
            .ok_or(ClientError::Corrupt("queued message"))
            .and_then(|v| views_json(c, &[v]))
    };
    // A group's message is encrypted under the profile's keys.
    let view = if for_group {
        app.with_keys(queue).await?
    } else {
        app.with_local(queue)?
    };
    app.push_state();
    app.nudge();
    ok(json!({ "message": view.first() }))
}

async fn contact(State(app): State<Arc<App>>, Path(peer): Path<String>) -> ApiResult {
    let (number, contact) = app.with_local(|c| c.local_safety_number(&peer))?;
    let qr = qrcode::QrCode::new(number.qr_payload().as_bytes())
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let modules: String = qr
        .to_colors()
        .iter()
        .map(|c| if *c == qrcode::Color::Dark { '1' } else { '0' })
        .collect();
    ok(json!({
        "peer": peer,
        "safety_number": number.grouped(),
        "qr": { "width": qr.width(), "modules": modules },
        "verified": contact.verified,
        "key_changed": contact.changed_identity.is_some(),
    }))
}

async fn verify(State(app): State<Arc<App>>, Path(peer): Path<String>) -> ApiResult {
    let who = peer.clone();
    app.with_keys(move |c| c.confirm(&who).map(|_| ())).await?;
    // Messages held by the key change go out with the next connection.
    let _ = app.command(Command::Reconnect);
    ok(json!({ "verified": peer }))
}

async fn relays(State(app): State<Arc<App>>) -> ApiResult {
    let list = app.with_local(|c| saved_vias(c.store()))?;
    let route = lock(&app.net).route.clone();
    ok(json!({
        "relays": list.iter().map(|u| {
            let url = u.to_string();
            let in_use = route.as_deref() == Some(format!("relay {url}").as_str());
            json!({ "url": url, "in_use": in_use })
        }).collect::<Vec<_>>(),
        "route": route,
    }))
}

async fn relay_add(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let url: RelayUrl = string_field(&body, "url")
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "paste a relay link"))?
        .parse()
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("{e}")))?;
    app.with_local(|c| {
        let mut list = saved_vias(c.store())?;
        if !list.contains(&url) {
            list.push(url.clone());
            save_vias(c.store(), &list)?;
        }
        Ok(())
    })?;
    let _ = app.command(Command::Reconnect);
    ok(json!({ "added": url.to_string() }))
}

async fn relay_remove(State(app): State<Arc<App>>, Json(body): Json<Value>) -> ApiResult {
    let url: RelayUrl = string_field(&body, "url")
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "which relay?"))?
        .parse()
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let removed = app.with_local(|c| {
        let mut list = saved_vias(c.store())?;
        let before = list.len();
        list.retain(|u| *u != url);
        save_vias(c.store(), &list)?;
        Ok(before != list.len())
    })?;
    if !removed {
        return Err(fail(StatusCode::NOT_FOUND, "not a saved relay"));
    }
    let _ = app.command(Command::Reconnect);
    ok(json!({ "removed": url.to_string() }))
}

async fn relay_check(State(app): State<Arc<App>>) -> ApiResult {
    let (reply, answer) = oneshot::channel();
    app.command(Command::Routes { reply })?;
    match answer.await {
        Ok(Ok(s)) => ok(json!({
            "in_use": s.in_use.as_ref().ok(),
            "error": s.in_use.as_ref().err(),
            "routes": s.probes.iter().map(|p| json!({
                "route": p.route,
                "ms": p.result.as_ref().ok(),
                "error": p.result.as_ref().err(),
            })).collect::<Vec<_>>(),
        })),
        Ok(Err(e)) => Err(fail(StatusCode::BAD_GATEWAY, e)),
        Err(_) => Err(fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
    }
}

async fn retry(State(app): State<Arc<App>>) -> ApiResult {
    app.command(Command::Reconnect)?;
    ok(json!({}))
}

// ---------------------------------------------------------------- assets

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const GROUPS_SCRIPT: &str = include_str!("../assets/groups.js");
const SEARCH_SCRIPT: &str = include_str!("../assets/search.js");
const STYLE: &str = include_str!("../assets/style.css");
const ICON: &str = include_str!("../assets/icon.svg");
const ATTACH: &str = include_str!("../assets/attach.svg");
const GROUP_ICON: &str = include_str!("../assets/group.svg");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Every route, behind the guard.
pub fn router(app: Arc<App>) -> Router {
    let expect = app.expect.clone();
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/groups.js",
            get(|| async { asset(GROUPS_SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/search.js",
            get(|| async { asset(SEARCH_SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/icon.svg", get(|| async { asset(ICON, "image/svg+xml") }))
        .route(
            "/attach.svg",
            get(|| async { asset(ATTACH, "image/svg+xml") }),
        )
        .route(
            "/group.svg",
            get(|| async { asset(GROUP_ICON, "image/svg+xml") }),
        )
        .route("/api/state", get(state))
        .route("/api/register", post(register))
        .route("/api/unlock", post(unlock))
        .route("/api/chats", get(chats))
        .route("/api/chat/{peer}", get(chat))
        .route("/api/chat/{peer}/read", post(read))
        .route("/api/send", post(send))
        .route(
            "/api/send-file",
            post(files::send_file).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/file/{id}", get(files::file))
        .route("/api/file/{id}/fetch", post(files::fetch))
        .route("/api/groups", post(groups::create))
        .route("/api/group/{id}", get(groups::info))
        .route("/api/group/{id}/leave", post(groups::leave))
        .route("/api/group/{id}/{action}", post(groups::change))
        .route("/api/timer", post(groups::set_timer))
        .route("/api/search", get(search::search))
        .route("/api/contact/{peer}", get(contact))
        .route("/api/contact/{peer}/verify", post(verify))
        .route("/api/relays", get(relays).post(relay_add))
        .route("/api/relays/remove", post(relay_remove))
        .route("/api/relays/check", post(relay_check))
        .route("/api/retry", post(retry))
        .route("/api/events", post(live::events))
        .layer(DefaultBodyLimit::max(MAX_JSON))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(expect, guard::layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lines_become_states() {
        let n = parse_connection(
            "connected to 127.0.0.1:5222 as alice (relay tls://127.0.0.1:4433)",
            "alice",
        );
        assert_eq!(n.state, "online");
        assert_eq!(n.route.as_deref(), Some("relay tls://127.0.0.1:4433"));
        let n = parse_connection("connected to h:1 as alice (direct)", "alice");
        assert_eq!(n.route.as_deref(), Some("direct"));
        assert_eq!(
            parse_connection("cannot connect (x); retrying in 1.0 s", "a").state,
            "offline"
        );
        assert_eq!(
            parse_connection("disconnected (x); retrying in 1.0 s", "a").state,
            "offline"
        );
    }
}

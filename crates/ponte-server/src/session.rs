//! A session: one device's requests and mailbox pushes over an established
//! Noise channel, until something ends it (a [`CloseCause`]).
//!
//! The loop waits on, in order: shutdown, a newer connection of the same
//! device, a stalled writer, a request that finished, a wake (items handed
//! over in memory, or a key count to push), the next frame, and the idle or
//! login deadline. A frame is capped by its request type before it is
//! decoded, then dispatched to its module under `requests/`: requests that
//! change the session (register, login) and reads run in place; database
//! writes run alongside (up to `max_requests_in_flight`) and answer as they
//! commit.
//!
//! Mailbox pushes come from memory when they were committed while the
//! device was online (the registry's inbox), else from the database (after
//! login, or when the inbox overflowed), at most `delivery_window` items and
//! about `delivery_window_bytes` of bodies unacknowledged at a time (the
//! [`Window`]), so a slow reader never makes the server buffer its mailbox.
//!
//! The session's future lives as long as the connection, so it is kept
//! small: the frame handlers are boxed (their state exists only while a
//! frame is handled), answers of requests in flight are encoded as soon as
//! they are ready, and only the few config values the loop needs are
//! copied.

use crate::connection::Reader;
use crate::frames;
use crate::metrics::CloseCause;
use crate::outbox::{self, PushError, TryPushError};
use crate::registry::Online;
use crate::requests::{Context, Online as LoggedIn, Peer, Refusal, Reply, Request, Runs};
use crate::store::{AccountInfo, MailItem, Seq};
use crate::Shared;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use ponte_transport::TransportError;
use ponte_wire::messages::{self, client_frame, ClientFrame, ErrorCode, MessageError, ServerFrame};
use prost::Message as _;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest frame before login: `Register` (a handle, two keys, a signature
/// and an invite) is under 300 bytes.
const PRE_LOGIN_MAX_FRAME: usize = 4 * 1024;

/// Largest frame after login other than `Send` and `UploadAppend`: an
/// upload of 100 keys is about 17 KiB, an ack of 1,024 seqs at most 11 KiB.
const SMALL_REQUEST_MAX_FRAME: usize = 32 * 1024;

/// A request running alongside the session; yields its encoded answer, if
/// any (encoded: a `ServerFrame` is 200 bytes, and the result sits in the
/// session's future).
type Pending = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// The logged-in account of a session.
#[derive(Debug)]
struct Account {
    info: Arc<AccountInfo>,
    online: Arc<Online>,
}

/// Items pushed and not yet acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Seq and body length of each.
    inflight: HashMap<Seq, usize>,
    /// The sum of `inflight`'s body lengths.
    bytes: usize,
}

impl Window {
    /// An ack of `seq`: whether it was in flight (and is no longer).
    pub(crate) fn settle(&mut self, seq: Seq) -> bool {
        match self.inflight.remove(&seq) {
            Some(len) => {
                self.bytes = self.bytes.saturating_sub(len);
                true
            }
            None => false,
        }
    }

    fn record(&mut self, seq: Seq, len: usize) {
        if let Some(old) = self.inflight.insert(seq, len) {
            self.bytes = self.bytes.saturating_sub(old);
        }
        self.bytes = self.bytes.saturating_add(len);
    }

    /// How many items to read for a window with `room` free slots: no more
    /// than the byte budget likely lets through at the average size of the
    /// items in flight, so that big messages are not read only to be
    /// dropped. With nothing in flight there is no average: a small batch.
    fn batch_size(&self, room: usize, budget: usize) -> usize {
        const FIRST_BATCH: usize = 16;
        if self.inflight.is_empty() {
            return room.min(FIRST_BATCH);
        }
        let average = (self.bytes / self.inflight.len()).max(1);
        let fit = budget.saturating_sub(self.bytes) / average + 1;
        fit.clamp(1, room)
    }

    /// Whether `item` may be pushed within the byte budget: always when
    /// nothing is in flight, so a message bigger than the budget still goes.
    fn fits(&self, item: &MailItem, budget: usize) -> bool {
        self.inflight.is_empty() || self.bytes.saturating_add(item.body.len()) <= budget
    }
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    conn_id: u64,
    peer: Peer,
    /// Encoded frames for the writer task (a queue that holds no memory
    /// while empty; see `outbox`).
    out: outbox::Sender,
    account: Option<Account>,
    /// Highest seq pushed on this connection. Items reach the connection in
    /// seq order (from the database in seq order, in memory in commit
    /// order), so anything at or below it was already pushed, and the
    /// database is read from just after it.
    last_sent_seq: Seq,
    window: Window,
    /// The database may hold items past `last_sent_seq` that were not
    /// handed over in memory: read it before the inbox.
    has_more: bool,
    /// Requests running alongside, each yielding its answer.
    writes: FuturesUnordered<Pending>,
    /// This connection's place among its address's connections that have
    /// not logged in; given back at login.
    pre_login: Option<crate::prelogin::Slot>,
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn_id: u64,
        device_key: [u8; 32],
        source_ip: IpAddr,
        peer_ip: IpAddr,
        out: outbox::Sender,
        pre_login: crate::prelogin::Slot,
    ) -> Self {
        Self {
            shared,
            conn_id,
            peer: Peer {
                device_key,
                source_ip,
                peer_ip,
            },
            out,
            account: None,
            last_sent_seq: Seq::ZERO,
            window: Window::default(),
            has_more: false,
            writes: FuturesUnordered::new(),
            pre_login: Some(pre_login),
        }
    }

    /// Queues the session's last frame if there is room (no wait).
    pub(crate) fn queue_last(&mut self, encoded: Vec<u8>) {
        let _ = self.out.try_push(encoded);
    }

    /// Serves the session until something ends it.
    pub(crate) async fn serve(&mut self, mut reader: Reader) -> CloseCause {
        // Only what the loop needs: a clone of the whole config would sit in
        // every idle connection's future.
        let idle_timeout = self.shared.cfg.idle_timeout;
        let max_in_flight = self.shared.cfg.max_requests_in_flight;
        let stop = self.shared.stop.clone();
        let auth_deadline = tokio::time::Instant::now() + self.shared.cfg.unauthenticated_timeout;
        let mut last_activity = tokio::time::Instant::now();
        loop {
            let online = self.account.as_ref().map(|a| Arc::clone(&a.online));
            let deadline = if online.is_some() {
                last_activity + idle_timeout
            } else {
                auth_deadline
            };
            let can_read = self.writes.len() < max_in_flight;
            let wake = async {
                match &online {
                    Some(o) => o.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            let kicked = async {
                match &online {
                    Some(o) => o.kicked.notified().await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                biased;
                _ = stop.cancelled() => Err(CloseCause::Shutdown),
                _ = kicked => Err(CloseCause::Replaced),
                // Before reading: a client that keeps sending (pings) must
                // not keep a connection whose writes are stalled.
                _ = self.out.stalled() => Err(CloseCause::SlowConsumer),
                Some(done) = self.writes.next(), if !self.writes.is_empty() => match done {
                    Some(frame) => self.send_encoded(frame).await,
                    None => Ok(()),
                },
                // The handlers are boxed: inline, their state would sit in
                // every connection's task for its whole life (kilobytes per
                // idle client); boxed, it exists only while a frame is handled.
                _ = wake => Box::pin(self.on_wake()).await,
                r = reader.recv_frame(), if can_read => match r {
                    Ok(Some(payload)) => {
                        last_activity = tokio::time::Instant::now();
                        Box::pin(self.on_frame(&payload)).await
                    }
                    Ok(None) => Err(CloseCause::ClientClosed),
                    Err(TransportError::Frame(_)) => Err(CloseCause::FrameTooLarge),
                    Err(TransportError::Decrypt) => Err(CloseCause::DecryptFailed),
                    Err(TransportError::UnexpectedEof) => Err(CloseCause::ClientEofMidFrame),
                    Err(_) => Err(CloseCause::ReadError),
                },
                _ = tokio::time::sleep_until(deadline) => Err(if online.is_some() {
                    CloseCause::Idle
                } else {
                    CloseCause::UnauthenticatedTimeout
                }),
            };
            if let Err(cause) = step {
                return cause;
            }
        }
    }

    /// Leaves the registry, if logged in.
    pub(crate) fn logout(&mut self) {
        if let Some(a) = self.account.take() {
            self.shared.registry.logout(a.info.id, self.conn_id);
            self.shared.metrics.online_devices.dec();
        }
    }

    /// Queues a frame for the socket; a client that does not read for
    /// `slow_consumer_timeout` is disconnected. (Not an `async fn`: the
    /// frame is encoded at once, so it never sits in a future.)
    fn send(
        &mut self,
        frame: ServerFrame,
    ) -> impl Future<Output = Result<(), CloseCause>> + Send + '_ {
        self.send_encoded(frame.encode_to_vec())
    }

    /// Queues an encoded frame; waits (boxed, rarely) when the queue is full.
    async fn send_encoded(&mut self, encoded: Vec<u8>) -> Result<(), CloseCause> {
        let closed = |out: &outbox::Sender| {
            if out.is_stalled() {
                CloseCause::SlowConsumer
            } else {
                CloseCause::WriteFailed
            }
        };
        match self.out.try_push(encoded) {
            Ok(()) => Ok(()),
            Err(TryPushError::Closed) => Err(closed(&self.out)),
            Err(TryPushError::Full(encoded)) => {
                let wait = self
                    .out
                    .push(encoded, self.shared.cfg.slow_consumer_timeout);
                match Box::pin(wait).await {
                    Ok(()) => Ok(()),
                    Err(PushError::Closed) => Err(closed(&self.out)),
                    Err(PushError::TimedOut) => Err(CloseCause::SlowConsumer),
                }
            }
        }
    }

    async fn refuse(&mut self, request_id: u64, r: Refusal) -> Result<(), CloseCause> {
        self.send(refusal_frame(&self.shared, request_id, r)).await
    }

    async fn on_frame(&mut self, payload: &[u8]) -> Result<(), CloseCause> {
        self.shared.metrics.frames_in.inc();
        // Decoding allocates for every repeated entry (an upload of 65,000
        // empty keys fits in 128 KiB and decodes to ~6 MiB), so each kind
        // of request is capped to what an honest client can send before it
        // is decoded: before login only small requests exist (register,
        // login, ping); after it only a message body or an upload chunk is large,
        // and a group message's recipients (at most ~1.2 MiB of decoded strings
        // for the ~50,000 empty ones its cap holds, refused once decoded).
        // The type is only looked up for a frame over the small cap, so a
        // message of ordinary size costs nothing here.
        let too_large = if self.account.is_none() {
            payload.len() > PRE_LOGIN_MAX_FRAME
        } else {
            let small =
                SMALL_REQUEST_MAX_FRAME.max((self.shared.cfg.max_keys_per_upload + 1) * 256);
            // A message's and an upload chunk's cap is the transport's frame
            // cap (a chunk is further capped once decoded); a group
            // message's is its body cap plus 1,024 recipients.
            payload.len() > small
                && match messages::client_body_field(payload) {
                    Some(messages::SEND_FIELD | messages::UPLOAD_APPEND_FIELD) => false,
                    Some(messages::SEND_GROUP_FIELD) => {
                        payload.len() > messages::max_group_frame_len(self.shared.cfg.max_body_len)
                    }
                    _ => true,
                }
        };
        if too_large {
            return Err(CloseCause::FrameTooLarge);
        }
        // A group message is capped by its recipients too before decoding
        // (a frame of two bytes per entry holds over 1,024 only past 2 KiB):
        // decoding then allocates at most 1,024 strings (24 KiB of them) and
        // their bytes, which the frame holds.
        if self.account.is_some()
            && payload.len() > 2 * messages::MAX_GROUP_RECIPIENTS
            && messages::client_body_field(payload) == Some(messages::SEND_GROUP_FIELD)
        {
            match messages::group_frame_head(payload) {
                Some(head) if head.recipients > messages::MAX_GROUP_RECIPIENTS => {
                    let r = Refusal::new(ErrorCode::LimitExceeded, "more than 1024 recipients")
                        .about(head.message_id);
                    return self.refuse(head.request_id, r).await;
                }
                Some(_) => {}
                None => return Err(CloseCause::MalformedFrame),
            }
        }
        let frame: ClientFrame = match messages::decode_client_frame(payload) {
            Ok(f) => f,
            Err(MessageError::MissingBody) => {
                // An empty frame, or a request type this server does not know.
                let rid = <ClientFrame as prost::Message>::decode(payload)
                    .map(|f| f.request_id)
                    .unwrap_or(0);
                let r = Refusal::new(ErrorCode::Unsupported, "unknown request");
                return self.refuse(rid, r).await;
            }
            Err(_) => return Err(CloseCause::MalformedFrame),
        };
        let rid = frame.request_id;
        let Some(body) = frame.body else {
            return Ok(());
        };
        use client_frame::Body;
        match body {
            Body::Ping(r) => self.dispatch(rid, r).await,
            Body::Register(r) => self.dispatch(rid, r).await,
            Body::Login(r) => self.dispatch(rid, r).await,
            Body::UploadKeys(r) => self.dispatch(rid, r).await,
            Body::ClaimKey(r) => self.dispatch(rid, r).await,
            Body::LookupIdentity(r) => self.dispatch(rid, r).await,
            Body::Send(r) => self.dispatch(rid, r).await,
            Body::Ack(r) => self.dispatch(rid, r).await,
            Body::SendGroup(r) => self.dispatch(rid, r).await,
            Body::UploadCreate(r) => self.dispatch(rid, r).await,
            Body::UploadAppend(r) => self.dispatch(rid, r).await,
            Body::UploadOffset(r) => self.dispatch(rid, r).await,
            Body::Download(r) => self.dispatch(rid, r).await,
        }
    }

    /// Runs one request: in place, or alongside the session (see
    /// [`Runs`]).
    async fn dispatch<R: Request>(&mut self, rid: u64, mut request: R) -> Result<(), CloseCause> {
        if R::NEEDS_LOGIN && self.account.is_none() {
            // Not held while the answer waits for room to go out.
            drop(request);
            let r = Refusal::new(ErrorCode::NotAuthenticated, "log in first");
            return self.refuse(rid, r).await;
        }
        let pump = request.settle(&mut self.window);
        let cx = Context {
            shared: Arc::clone(&self.shared),
            peer: self.peer,
            account: self.account.as_ref().map(|a| Arc::clone(&a.info)),
        };
        match R::RUNS {
            Runs::InPlace => match request.run(cx).await {
                Ok(Reply::Online(login)) => return self.go_online(rid, *login).await,
                outcome => {
                    if let Some(frame) = answer(&self.shared, rid, outcome) {
                        self.send(frame).await?;
                    }
                }
            },
            Runs::Alongside => {
                let shared = Arc::clone(&self.shared);
                let run = request.run(cx);
                let mut pending: Pending =
                    Box::pin(
                        async move { answer(&shared, rid, run.await).map(|f| f.encode_to_vec()) },
                    );
                // Polled once at once: what the request checks before its
                // first wait is answered in place, and the store takes the
                // session's writes in the order the frames came.
                match (&mut pending).now_or_never() {
                    Some(Some(frame)) => self.send_encoded(frame).await?,
                    Some(None) => {}
                    None => self.writes.push(pending),
                }
            }
        }
        if pump {
            self.pump().await
        } else {
            Ok(())
        }
    }

    /// After a login or registration: the session is online as the account
    /// (unless it already was), answers, pushes the key count and what
    /// waits.
    async fn go_online(&mut self, rid: u64, login: LoggedIn) -> Result<(), CloseCause> {
        let LoggedIn {
            account,
            answer,
            keys,
        } = login;
        if self.account.is_none() {
            self.pre_login = None;
            let online = self.shared.registry.login(account.id, self.conn_id);
            self.shared.metrics.online_devices.inc();
            self.account = Some(Account {
                info: Arc::new(account),
                online,
            });
        }
        self.send(frames::reply(rid, answer)).await?;
        match keys {
            Some(keys) => {
                let low_water = self.shared.cfg.one_time_key_low_water;
                self.send(frames::key_count(keys, low_water)).await?;
            }
            None => self.push_key_count().await?,
        }
        self.has_more = true;
        self.pump().await
    }

    async fn push_key_count(&mut self) -> Result<(), CloseCause> {
        let Some(acc) = &self.account else {
            return Ok(());
        };
        let counts = match self.shared.store.key_counts(acc.info.id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("key count failed: {}", crate::Chain(&e));
                return Ok(());
            }
        };
        let low_water = self.shared.cfg.one_time_key_low_water;
        self.send(frames::key_count(counts, low_water)).await
    }

    async fn on_wake(&mut self) -> Result<(), CloseCause> {
        let low = self
            .account
            .as_ref()
            .is_some_and(|a| a.online.key_count_low.swap(false, Ordering::AcqRel));
        if low {
            self.push_key_count().await?;
        }
        self.pump().await
    }

    /// Pushes mailbox items while the window has room: from the database
    /// while `has_more`, else what was handed over in memory.
    ///
    /// The window is counted in items (`delivery_window`) and in body bytes
    /// (`delivery_window_bytes`): an item that would take the bytes in
    /// flight over the budget waits, unless nothing is in flight. It is not
    /// held here: it is in the database (items are handed over in memory
    /// only once committed), read from there after acks make room.
    async fn pump(&mut self) -> Result<(), CloseCause> {
        let Some((id, online)) = self
            .account
            .as_ref()
            .map(|a| (a.info.id, Arc::clone(&a.online)))
        else {
            return Ok(());
        };
        let window = self.shared.cfg.delivery_window.max(1);
        let budget = self.shared.cfg.delivery_window_bytes.max(1);
        loop {
            let room = window.saturating_sub(self.window.inflight.len());
            if room == 0 || self.window.bytes >= budget {
                return Ok(());
            }
            let want = self.window.batch_size(room, budget);
            if !self.has_more {
                let (items, read_db) = online.take(want);
                if read_db {
                    self.has_more = true;
                    continue;
                }
                if items.is_empty() {
                    return Ok(());
                }
                for item in items {
                    // At or below: a database read already pushed it.
                    if item.seq <= self.last_sent_seq {
                        continue;
                    }
                    if !self.window.fits(&item, budget) {
                        // This and the rest taken are read again from the
                        // database once acks make room.
                        self.has_more = true;
                        return Ok(());
                    }
                    self.push_item(item).await?;
                }
                continue;
            }
            let items = match self
                .shared
                .store
                .fetch_mailbox(id, self.last_sent_seq, want)
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!("mailbox fetch failed: {}", crate::Chain(&e));
                    return Ok(());
                }
            };
            self.has_more = items.len() == want;
            for item in items {
                if !self.window.fits(&item, budget) {
                    self.has_more = true;
                    return Ok(());
                }
                self.push_item(item).await?;
            }
        }
    }

    async fn push_item(&mut self, item: MailItem) -> Result<(), CloseCause> {
        self.last_sent_seq = self.last_sent_seq.max(item.seq);
        self.window.record(item.seq, item.body.len());
        self.shared.metrics.items_pushed.inc();
        self.send(frames::item(item)).await
    }
}

/// The frame answering a request's outcome, if any.
fn answer(shared: &Shared, rid: u64, outcome: Result<Reply, Refusal>) -> Option<ServerFrame> {
    match outcome {
        Ok(Reply::Answer(body)) => Some(frames::reply(rid, body)),
        Ok(Reply::Online(login)) => Some(frames::reply(rid, login.answer)),
        Ok(Reply::Silent) => None,
        Err(r) => Some(refusal_frame(shared, rid, r)),
    }
}

fn refusal_frame(shared: &Shared, rid: u64, r: Refusal) -> ServerFrame {
    frames::error(&shared.metrics, rid, r.code, r.detail, r.message_id)
}

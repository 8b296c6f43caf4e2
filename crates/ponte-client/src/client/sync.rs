//! One connection's life for `sync` and `listen`: log in, flush the
//! outbox, handle pushes (deliveries opened by [`super::inbound`], receipts,
//! expiry notices, key counts), acknowledge what was committed, report
//! what is new, keep the connection alive and reconnect with backoff.

use super::inbound::{self, Decision, Inbound};
use super::outbound::Flush;
use super::META_LAST_ROUTE;
use super::{display_failed, emit, is_fatal, Client, Display, Event, LOW_WATER_MARK};
use crate::connection::{Connection, REQUEST_TIMEOUT};
use crate::store::{IdentityCheck, Incoming, IncomingContent, UnixMillis, Update};
use crate::{ClientError, CloseCode, Report, Result};
use ponte_e2e::{Ciphertext, Envelope, MessageId, Payload};
use ponte_wire::messages::{client_frame, server_frame, Ack, Ping};
use std::future::Future;
use std::time::Duration;

/// How long `sync` waits for the mailbox to drain.
const SYNC_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Keep-alive period for `listen` (the server's idle timeout is 300 s).
const PING_EVERY: Duration = Duration::from_secs(60);
/// Reconnect backoff bounds for `listen`.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Wait after another process of the same profile took over the connection.
const REPLACED_BACKOFF: Duration = Duration::from_secs(2);

impl Client {
    /// Handle one push; returns the mailbox seq to acknowledge, if any.
    async fn handle_push(
        &mut self,
        conn: &mut Connection,
        push: server_frame::Body,
        events: &mut Display<'_>,
    ) -> Result<Option<u64>> {
        match push {
            server_frame::Body::Deliver(d) => {
                // Opening it reads, advances and writes back a session (and
                // the identity, for a new one).
                let _keys = self.hold_keys().await?;
                match &d.group_id {
                    Some(group) => {
                        self.handle_group_deliver(&d.sender, &d.message_id, group, &d.body, events)?
                    }
                    None => {
                        self.handle_deliver(conn, &d.sender, &d.message_id, &d.body, events)
                            .await?
                    }
                }
                Ok(Some(d.seq))
            }
            server_frame::Body::DeliveryReceipt(r) => {
                if let Some(id) = MessageId::from_slice(&r.message_id) {
                    self.store().mark_delivered(&r.recipient, &id)?;
                    self.store().group_delivered(&r.recipient, &id)?;
                }
                Ok(Some(r.seq))
            }
            server_frame::Body::ExpiredNotice(n) => {
                if let Some(id) = MessageId::from_slice(&n.message_id) {
                    self.store().mark_expired(&n.recipient, &id)?;
                    self.store().group_expired(&n.recipient, &id)?;
                }
                Ok(Some(n.seq))
            }
            server_frame::Body::KeyCount(k) => {
                let mark = if k.low_water_mark == 0 {
                    LOW_WATER_MARK
                } else {
                    k.low_water_mark
                };
                if k.one_time_keys < mark || !k.has_fallback_key {
                    self.upload_keys(conn, k.one_time_keys, k.has_fallback_key)
                        .await?;
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// A delivery: deduplicated, opened ([`inbound::open`], looking the
    /// sender up when it asks), committed. Whatever cannot be opened is
    /// dropped with a warning; an error means it must not be acknowledged.
    async fn handle_deliver(
        &mut self,
        conn: &mut Connection,
        sender: &str,
        message_id: &[u8],
        body: &[u8],
        events: &mut Display<'_>,
    ) -> Result<()> {
        if let Some(id) = MessageId::from_slice(message_id) {
            if self.store().seen(sender, &id)? {
                return Ok(());
            }
        }
        let ciphertext = match Ciphertext::from_bytes(body) {
            Ok(c) => c,
            Err(e) => {
                emit(
                    events,
                    Event::Warning(format!(
                        "dropped a malformed message from {sender}: {}",
                        Report(&e)
                    )),
                )?;
                return Ok(());
            }
        };
        let contact = self.store().contact(sender)?;
        let mut looked_up = None;
        let opened = loop {
            let input = Inbound {
                ciphertext: &ciphertext,
                contact: contact.as_ref(),
                sessions: self.store().sessions(sender)?,
                looked_up,
            };
            match inbound::open(&mut self.identity, input) {
                Decision::Opened(o) => break *o,
                Decision::NeedIdentity if looked_up.is_none() => {
                    looked_up = match self.lookup_identity(conn, sender).await {
                        Ok(identity) => Some(identity),
                        // The server could not look it up just now: not
                        // acknowledged, so it comes again (dropping it
                        // would lose a genuine first message).
                        Err(e) if e.is_temporary_refusal() => return Err(e),
                        Err(
                            e @ (ClientError::Server { .. }
                            | ClientError::Protocol(_)
                            | ClientError::E2e(_)),
                        ) => {
                            emit(
                                events,
                                Event::Warning(format!(
                                    "dropped a message from {sender}: cannot check its identity ({})",
                                    Report(&e)
                                )),
                            )?;
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    };
                }
                Decision::NeedIdentity | Decision::NotSendersKey => {
                    emit(
                        events,
                        Event::Warning(format!(
                        "dropped a message claiming to be from {sender}: its key is not {sender}'s"
                    )),
                    )?;
                    return Ok(());
                }
                _ => {
                    emit(
                        events,
                        Event::Warning(format!(
                            "could not decrypt a message from {sender}; dropped"
                        )),
                    )?;
                    return Ok(());
                }
            }
        };
        let mut key_changed = opened.key_changed;
        if let Some(identity) = &opened.record {
            if self.store().observe_identity(sender, identity)? == IdentityCheck::Changed {
                key_changed = true;
                // Once per run: a flush that holds our messages to them
                // does not say it again.
                if self.warned_held.insert(sender.to_owned()) {
                    emit(
                        events,
                        Event::Warning(ClientError::KeyChanged(sender.to_owned()).to_string()),
                    )?;
                    for warning in self.group_key_change_warnings(sender)? {
                        emit(events, Event::Warning(warning))?;
                    }
                }
            }
        }
        let (envelope, extensions) = match Envelope::decode_with(&opened.plaintext) {
            Ok(e) => e,
            Err(e) => {
                emit(
                    events,
                    Event::Warning(format!(
                        "dropped an unreadable message from {sender}: {}",
                        Report(&e)
                    )),
                )?;
                // Keep the ratchet state anyway: the ciphertext was genuine.
                self.store().save_session(sender, &opened.session)?;
                return Ok(());
            }
        };
        // A group op or sender key: what it changes is committed with the
        // session that opened it.
        let (group_change, group_warning, retry) = match &envelope.payload {
            Payload::GroupOp(_) | Payload::GroupLog(_) | Payload::SenderKey(_) => {
                let (w, warning, retry) =
                    self.pairwise_group(sender, &envelope.payload, key_changed)?;
                (Some(w), warning, retry)
            }
            // A group's timer handed over pairwise: a setting (below) only
            // from a current member; else held, or nothing but a warning.
            Payload::TimerSetting(ponte_e2e::TimerSetting { group: Some(_), .. }) => {
                let (w, warning) = self.pairwise_group_timer(sender, &envelope, key_changed)?;
                (w, warning, None)
            }
            _ => (None, None, None),
        };
        let content = match (&envelope.payload, &group_change) {
            (_, Some(change)) => IncomingContent::Group(change),
            (Payload::Text(t), _) => IncomingContent::Text(t),
            (Payload::ReadReceipt(ids), _) => IncomingContent::ReadReceipt(ids),
            (Payload::File(fd), _) => IncomingContent::File(fd),
            (Payload::TimerSetting(t), _) => IncomingContent::TimerSetting(t),
            _ => IncomingContent::ReadReceipt(&[]),
        };
        let incoming = Incoming {
            peer: sender,
            id: envelope.id,
            sent_at: UnixMillis(envelope.sent_at_ms),
            session: &opened.session,
            identity: opened.new_session.then_some(&self.identity),
            key_changed,
            content,
        };
        self.store()
            .commit_incoming_with(&incoming, envelope.timer, extensions.reply_to)?;
        if let Some(w) = group_warning {
            emit(events, Event::Warning(w))?;
        }
        if let Some(group) = retry {
            self.retry_pending(group, events)?;
        }
        Ok(())
    }

    /// Process pushes until none arrives within `quiet`, acknowledging each
    /// after it is committed. At most `limit` pushes (a bound per call).
    async fn drain(
        &mut self,
        conn: &mut Connection,
        quiet: Duration,
        limit: usize,
        events: &mut Display<'_>,
    ) -> Result<Drained> {
        let mut drained = Drained::default();
        while drained.pushes < limit {
            let Some(push) = conn.next_push(quiet).await? else {
                break;
            };
            drained.pushes += 1;
            if let Some(seq) = self.handle_push(conn, push, events).await? {
                drained.mailbox += 1;
                conn.notify(client_frame::Body::Ack(Ack { seqs: vec![seq] }))
                    .await?;
            }
            // Report as each push lands, so a "delivered" followed by a
            // "read" in the same batch is still seen.
            self.report_updates(events)?;
        }
        Ok(drained)
    }

    /// Show what is new, then mark as shown exactly what the display took:
    /// an update it could not show stays new for the next `sync`/`listen`
    /// (shown at least once rather than at most once).
    fn report_updates(&self, events: &mut Display<'_>) -> Result<()> {
        let updates = self.store().unshown_updates()?;
        if updates.is_empty() {
            return Ok(());
        }
        let mut shown = Vec::with_capacity(updates.len());
        let mut failed = None;
        for u in updates {
            let view = match &u {
                Update::Message(v) | Update::Status(v) => v.clone(),
            };
            if let Err(e) = events(Event::Update(u)) {
                failed = Some(e);
                break;
            }
            shown.push(view);
        }
        if self.read_when_opened {
            self.store().mark_notified(&shown)?;
        } else {
            self.store().mark_shown(&shown)?;
        }
        match failed {
            Some(e) => Err(display_failed(e)),
            None => emit(events, Event::UpdatesEnd),
        }
    }

    /// Connect, flush the outbox, receive everything pending, report what is
    /// new, send the read receipts this display causes, and return.
    pub async fn sync(&mut self, events: &mut dyn FnMut(Event)) -> Result<()> {
        self.sync_to(&mut |e| {
            events(e);
            Ok(())
        })
        .await
    }

    /// [`Client::sync`] to a display that can fail (see [`Display`]): it
    /// stops at the first event the display cannot show, with
    /// [`ClientError::Io`]; what was not shown is reported again next time.
    pub async fn sync_to(&mut self, events: &mut Display<'_>) -> Result<()> {
        let result = self.sync_once(events).await;
        if let Err(e) = &result {
            self.forget_route_after(e)?;
        }
        result
    }

    async fn sync_once(&mut self, events: &mut Display<'_>) -> Result<()> {
        self.warned_full.clear();
        let (mut conn, logged_in) = self.login().await?;
        // One-time keys: the server pushes a KeyCount right after LoggedIn;
        // handle_push tops them up when it says they run low.
        self.resume_uploads(&mut conn, events).await?;
        let flushed = self.flush_outbox(&mut conn, events).await?;
        // Everything pending at login is pushed right after LoggedIn (at most
        // 64 in flight, more as we acknowledge). Drain until that many were
        // handled or the deadline passes, then a ping round trip makes sure
        // nothing pushed before it is left.
        let deadline = tokio::time::Instant::now() + SYNC_DRAIN_TIMEOUT;
        let mut handled = 0usize;
        let pending = usize::try_from(logged_in.pending).unwrap_or(usize::MAX);
        while handled < pending && tokio::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Stop as soon as that many pushes were handled (a key count
            // among them takes a slot; the loop then asks for the rest)
            // rather than waiting for a quiet period after the last one.
            let n = self
                .drain(
                    &mut conn,
                    left.min(Duration::from_secs(2)),
                    pending - handled,
                    events,
                )
                .await?;
            if n.pushes == 0 {
                break;
            }
            handled += n.mailbox;
        }
        conn.request(client_frame::Body::Ping(Ping { nonce: 1 }), REQUEST_TIMEOUT)
            .await?;
        self.drain(&mut conn, Duration::from_millis(200), 10_000, events)
            .await?;
        self.auto_fetch(&mut conn, events).await?;
        self.report_updates(events)?;
        // Read receipts queued just now; not again if the server refused
        // sends a moment ago (it would only say so twice).
        if flushed == Flush::Done && self.store().outbox_len()? > 0 {
            self.flush_outbox(&mut conn, events).await?;
            self.report_updates(events)?;
        }
        self.sweep_expired()?;
        Ok(())
    }

    /// Stay connected: report messages and tick changes as they happen,
    /// flush what is written meanwhile, keep the connection alive, and
    /// reconnect with exponential backoff (0.5 s doubling to 30 s, with
    /// ±20 % jitter; back to 0.5 s after a successful login) until
    /// `shutdown` completes. Errors that retrying cannot fix (wrong server
    /// key, account unknown, local database trouble) end it.
    pub async fn listen(
        &mut self,
        events: &mut dyn FnMut(Event),
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        self.listen_to(
            &mut |e| {
                events(e);
                Ok(())
            },
            shutdown,
        )
        .await
    }

    /// [`Client::listen`] to a display that can fail (see [`Display`]): a
    /// display error ends it (no reconnecting) with [`ClientError::Io`];
    /// what was not shown is reported by the next `sync` or `listen`.
    pub async fn listen_to(
        &mut self,
        events: &mut Display<'_>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut connected = false;
            let result = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.listen_once(events, &mut connected) => r,
            };
            let err = match result {
                // The direct route works again: move back to it now.
                Ok(()) => {
                    emit(
                        events,
                        Event::Connection(
                            "the direct route to the server works again: moving back to it".into(),
                        ),
                    )?;
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Err(e) if is_fatal(&e) => {
                    self.forget_route_after(&e)?;
                    return Err(e);
                }
                Err(e) => e,
            };
            let replaced = matches!(
                &err,
                ClientError::Closed {
                    reason: CloseCode::Replaced,
                    ..
                }
            );
            if replaced {
                // Another process of this profile (a `send` or `sync`)
                // connected as the same device: give it time to finish
                // instead of taking the connection straight back.
                backoff = backoff.max(REPLACED_BACKOFF);
            } else if connected {
                backoff = BACKOFF_MIN;
            }
            let jitter = 0.8 + rand::random::<f64>() * 0.4;
            let wait = backoff.mul_f64(jitter);
            let what = if connected {
                "disconnected"
            } else {
                "cannot connect"
            };
            emit(
                events,
                Event::Connection(format!(
                    "{what} ({}); retrying in {:.1} s",
                    Report(&err),
                    wait.as_secs_f64()
                )),
            )?;
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life. Returns `Ok(())` only to move back to the
    /// direct route (it answered a background probe while on a relay).
    async fn listen_once(&mut self, events: &mut Display<'_>, connected: &mut bool) -> Result<()> {
        let (mut conn, _) = self.login().await?;
        *connected = true;
        self.warned_full.clear();
        emit(
            events,
            Event::Connection(format!(
                "connected to {}:{} as {} ({})",
                self.server.host,
                self.server.port,
                self.handle,
                conn.route()
            )),
        )?;
        let on_relay = !conn.is_direct() && self.custom_routes.is_none();
        let mut last_probe = tokio::time::Instant::now();
        // The background probe of the direct route: a task of its own, so a
        // silent direct route never holds up the messages on the relay.
        let mut probe: Option<tokio::task::JoinHandle<bool>> = None;
        // One-time keys: the server pushes a KeyCount right after LoggedIn;
        // handle_push tops them up when it says they run low.
        self.resume_uploads(&mut conn, events).await?;
        self.flush_outbox(&mut conn, events).await?;
        let mut last_ping = tokio::time::Instant::now();
        let mut last_flush = tokio::time::Instant::now();
        let mut last_outbox = self.store().outbox_len()?;
        let mut last_upload = tokio::time::Instant::now();
        let mut last_uploads = self.uploads_waiting()?;
        loop {
            self.drain(&mut conn, Duration::from_millis(500), 64, events)
                .await?;
            self.auto_fetch(&mut conn, events).await?;
            // Upload when a file was queued (by the app, or by `ponte send
            // --file` in another process) or every 30 s for one that did
            // not finish; its message then joins the outbox.
            let uploads = self.uploads_waiting()?;
            if uploads > 0
                && (uploads != last_uploads || last_upload.elapsed() >= Duration::from_secs(30))
            {
                self.resume_uploads(&mut conn, events).await?;
                last_upload = tokio::time::Instant::now();
            }
            last_uploads = self.uploads_waiting()?;
            self.report_updates(events)?;
            // Flush when the outbox changed (receipts just queued, or a
            // message written by another process) or every 30 s for what
            // is waiting (e.g. a contact with no keys yet).
            let outbox = self.store().outbox_len()?;
            if outbox > 0
                && (outbox != last_outbox || last_flush.elapsed() >= Duration::from_secs(30))
            {
                self.flush_outbox(&mut conn, events).await?;
                self.report_updates(events)?;
                last_flush = tokio::time::Instant::now();
            }
            last_outbox = self.store().outbox_len()?;
            self.sweep_if_due()?;
            if last_ping.elapsed() >= PING_EVERY {
                conn.request(client_frame::Body::Ping(Ping { nonce: 2 }), REQUEST_TIMEOUT)
                    .await?;
                last_ping = tokio::time::Instant::now();
            }
            if on_relay && probe.is_none() && last_probe.elapsed() >= self.direct_probe_every {
                probe = Some(tokio::spawn(self.probe_direct()));
            }
            if probe.as_ref().is_some_and(|p| p.is_finished()) {
                last_probe = tokio::time::Instant::now();
                let works = match probe.take() {
                    Some(finished) => finished.await.unwrap_or(false),
                    None => false,
                };
                if works {
                    // The next connection tries direct first and keeps it.
                    self.store().set_meta(META_LAST_ROUTE, "")?;
                    return Ok(());
                }
            }
        }
    }
}

/// What one [`Client::drain`] call handled.
#[derive(Debug, Default, Clone, Copy)]
struct Drained {
    /// Pushes of any kind.
    pushes: usize,
    /// Mailbox items among them (acknowledged by seq).
    mailbox: usize,
}

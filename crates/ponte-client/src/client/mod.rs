//! The client operations behind the CLI: register, send, sync, listen,
//! history, contacts, verify, status.
//!
//! What lives where:
//! - this module: [`Client`] (opening a profile, its settings, reaching and
//!   logging in to the server, one-time keys, directory look-ups) and the
//!   [`Event`]s it reports;
//! - [`register`](RegisterOptions): creating a profile and its account;
//! - `inbound`: choosing and opening the Olm session for an incoming
//!   message, a decision without I/O ([`inbound::open`]);
//! - `outbound`: the outbox: queueing, and the pipelined flush;
//! - `sync`: one connection's life for `sync` and `listen` (pushes,
//!   acknowledgements, reconnecting);
//! - `status`: routes: the relays saved in the profile and `ponte status`;
//! - `views`: local views (history, contacts, safety numbers);
//! - `chats`: the chat list, conversation pages, unread state;
//! - `files`: sending files (encrypt, upload, resume) and fetching them;
//! - `groups`: groups: signed changes sent pairwise, Megolm messages sent
//!   once for every member, and what arrives for a group;
//! - `timers`: disappearing messages: a conversation's timer, and the
//!   sweep that deletes what expired.
//!
//! The flow on every connection: connect over the routes, Noise handshake
//! against the key in the server address, `Login`, top up one-time keys if
//! the server is low, flush the outbox (texts, then read receipts), then
//! process pushes: deliveries are decrypted, deduplicated by message id and
//! committed before they are acknowledged; delivery receipts and expiry
//! notices move ticks. What became new is reported as [`Event`]s; reporting an
//! incoming message counts as displaying it, which queues its read receipt.
//! It is recorded as shown only after the display took it (see [`Display`]):
//! what a closed stdout could not show is reported again next time.
//!
//! Identity keys: the first identity seen for a contact is trusted on first
//! use (unverified). If the server later announces a different one, the
//! contact is flagged, the new key is never used to send, and sending to
//! that contact is refused until the user compares safety numbers and runs
//! `verify --confirm`. Messages that arrive under the new key are still shown,
//! marked with a warning.

mod chats;
mod conversations;
mod files;
mod groups;
mod handoff;
pub use handoff::transfer_wait;
pub mod inbound;
mod outbound;
mod register;
mod status;
mod sync;
mod timers;
mod views;

pub use files::{guess_mime, Progress, DEFAULT_AUTO_DOWNLOAD, FILES_DIR, UPLOAD_WINDOW};
pub use groups::{
    GroupChange, GroupInfo, GroupMember, GroupOutcome, QueuedChange, MIN_GROUP_PREFIX,
};
pub use outbound::SendOutcome;
pub use register::{RegisterOptions, DEFAULT_CONNECT_TIMEOUT};
pub use status::{last_route, save_vias, saved_vias, RouteProbe, RouteStatus, MAX_SAVED_VIAS};
pub use timers::{format_timer, parse_timer};

use crate::connection::{Connection, Handshake, REQUEST_TIMEOUT};
use crate::lock::{Keys, KeysHold};
use crate::profile::Profile;
use crate::route::{DirectRoute, RelayRoute, RelayUrl, Route, HEAD_START};
use crate::store::{Contact, Store, Update};
use crate::{ClientError, Result, ServerCode};
use bytes::Bytes;
use ponte_e2e::{Identity, PublicIdentity};
use ponte_transport::Keypair;
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{
    client_frame, key_signing_string, registration_signing_string, server_frame, DeviceKeys, Login,
    LookupIdentity, SignedKey, UploadKeys,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// One-time keys kept on the server (vodozemac's recommendation).
pub const TARGET_ONE_TIME_KEYS: u32 = 50;
/// Upload more when the server holds fewer than this (the protocol's mark).
pub const LOW_WATER_MARK: u32 = 10;

/// Something to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// An event is made once per message shown and handed straight to the
// caller; boxing the message view would cost an allocation for each to
// save bytes on the rarer variants.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A new incoming message or a tick change.
    Update(Update),
    /// Connection state, for `listen` (connected, lost, retrying).
    Connection(String),
    /// Something the user must know (identity key change, undecryptable message).
    Warning(String),
    /// `sync`/`listen` fetched a received file (auto-download): the file
    /// of message `id` from `peer` is complete and verified at `path`.
    FileFetched {
        /// The sender.
        peer: String,
        /// The message that carried it.
        id: ponte_e2e::MessageId,
        /// Where it is.
        path: std::path::PathBuf,
    },
    /// The [`Event::Update`]s just before this one were all that was new:
    /// a display that gathers updates (the app, which sends a long run of
    /// tick changes to its page as one reload) shows them now. Nothing to
    /// show by itself.
    UpdatesEnd,
}

/// Where [`Client::sync_to`], [`Client::listen_to`] show what happens. It
/// returns an error when it could not show the event (stdout closed, disk
/// full): the operation then stops with [`ClientError::Io`], and an update
/// it did not show is not marked as shown, so the next `sync` or `listen`
/// reports it again. Nothing is lost.
pub type Display<'a> = dyn FnMut(Event) -> std::io::Result<()> + 'a;

fn display_failed(error: std::io::Error) -> ClientError {
    ClientError::Io {
        context: "writing the output".into(),
        error,
    }
}

/// Hand `event` to the display; its failure stops the caller.
fn emit(events: &mut Display<'_>, event: Event) -> Result<()> {
    events(event).map_err(display_failed)
}

/// An open profile with its identity, ready to talk to its server.
pub struct Client {
    profile: Profile,
    identity: Identity,
    device: Keypair,
    server: ServerAddress,
    handle: String,
    /// Routes set by [`Client::set_routes`] (tests, embedders); else built
    /// from the server address and the relays.
    custom_routes: Option<Vec<Box<dyn Route>>>,
    /// Relays given for this process only (`--via`), tried before the saved ones.
    extra_vias: Vec<RelayUrl>,
    direct_probe_every: Duration,
    route_in_use: Option<String>,
    connect_timeout: Duration,
    /// Contacts whose key change was already reported (once per process).
    warned_held: BTreeSet<String>,
    /// The refusal last reported by a deferred flush: `listen` retries
    /// every 30 s and says it again only when it changes, or after a flush
    /// that went through.
    warned_deferred: Option<String>,
    /// Recipients whose full mailbox was reported in this `send`, `sync`
    /// or `listen` connection (said again once a send to them went through).
    warned_full: BTreeSet<String>,
    /// The route this process recorded as the one that worked last, and
    /// the one recorded before it (see [`Client::forget_route_after`]).
    remembered: Option<(String, Option<String>)>,
    /// `sync` and `listen` fetch files up to this size (0: none).
    auto_download: u64,
    /// Files whose automatic fetch failed in this process (not retried
    /// until `file get` or the next process).
    fetch_failed: BTreeSet<ponte_e2e::MessageId>,
    /// Reported incoming messages stay unread until the chat is opened
    /// (see [`Client::set_read_when_opened`]).
    read_when_opened: bool,
    /// The lock every use of the profile's keys holds (see
    /// [`crate::lock`]), and the identity's version when `identity` was
    /// read or saved by this client.
    keys: Keys,
    identity_version: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("handle", &self.handle)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Profile meta key: the route that worked last ([`Route::describe`]).
const META_LAST_ROUTE: &str = "last_route";
/// Profile meta key, set once a connection to the server has succeeded:
/// from then on the client starts with Noise IK instead of XX.
const META_SERVER_REACHED: &str = "server_reached";
/// How often `listen`, while on a relay, checks whether the direct route
/// works again.
pub const DIRECT_PROBE_EVERY: Duration = Duration::from_secs(60);

fn parse_address(address: &str) -> Result<ServerAddress> {
    address
        .trim()
        .parse::<ServerAddress>()
        .map_err(|e| ClientError::Address(e.to_string()))
}

fn device_keys(identity: &Identity) -> DeviceKeys {
    let public = identity.public();
    DeviceKeys {
        curve25519: Bytes::copy_from_slice(&public.curve25519),
        ed25519: Bytes::copy_from_slice(&public.ed25519),
    }
}

/// The Noise device key pair from its stored 32-byte secret.
fn device_keypair(secret: &[u8]) -> Result<Keypair> {
    let bytes: [u8; 32] = secret
        .try_into()
        .map_err(|_| ClientError::Corrupt("noise key"))?;
    Ok(Keypair::from_secret(bytes))
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("unexpected response to {what}"))
}

impl Client {
    /// Open a registered profile.
    pub fn open(dir: &Path, passphrase: impl FnOnce() -> Result<String>) -> Result<Self> {
        let profile = Profile::open(dir, passphrase)?;
        let store = profile.store();
        let not_registered = || ClientError::NotRegistered(dir.display().to_string());
        let handle = store.meta("handle")?.ok_or_else(not_registered)?;
        let server = parse_address(&store.meta("server")?.ok_or_else(not_registered)?)?;
        let identity_version = store.identity_version()?;
        let identity = store.identity()?.ok_or_else(not_registered)?;
        let secret = store.secret("noise")?.ok_or_else(not_registered)?;
        let device = device_keypair(&secret)?;
        let client = Self {
            profile,
            identity,
            device,
            server,
            handle,
            custom_routes: None,
            extra_vias: Vec::new(),
            direct_probe_every: DIRECT_PROBE_EVERY,
            route_in_use: None,
            connect_timeout: register::DEFAULT_CONNECT_TIMEOUT,
            warned_held: BTreeSet::new(),
            warned_deferred: None,
            warned_full: BTreeSet::new(),
            remembered: None,
            auto_download: files::DEFAULT_AUTO_DOWNLOAD,
            fetch_failed: BTreeSet::new(),
            read_when_opened: false,
            keys: Keys::new(dir),
            identity_version,
        };
        // Whatever expired while no client ran goes before anything is read.
        client.sweep_expired()?;
        Ok(client)
    }

    /// Takes the profile's keys for one use (see [`crate::lock`]): waits
    /// while another process uses them, and then reads the identity again
    /// if that process saved it meanwhile (made one-time keys, or used one
    /// for a new session), so this client neither misses its keys nor
    /// writes an older identity over them.
    pub(crate) async fn hold_keys(&mut self) -> Result<KeysHold> {
        let hold = self.keys.take().await?;
        if hold.first() {
            self.reload_identity_if_changed()?;
        }
        Ok(hold)
    }

    /// This client's handle on the profile's keys: a hold taken with it
    /// nests with the client's own (see [`Keys`]).
    pub fn keys(&self) -> Keys {
        self.keys.clone()
    }

    /// [`Client::hold_keys`] for code that cannot wait asynchronously and
    /// does not change the identity (it is not read again here).
    pub(crate) fn hold_keys_blocking(&self) -> Result<KeysHold> {
        self.keys.take_blocking()
    }

    fn reload_identity_if_changed(&mut self) -> Result<()> {
        let version = self.store().identity_version()?;
        if version != self.identity_version {
            if let Some(identity) = self.store().identity()? {
                self.identity = identity;
            }
            self.identity_version = version;
        }
        Ok(())
    }

    /// Own handle.
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// The server address.
    pub fn server(&self) -> &ServerAddress {
        &self.server
    }

    /// The local database.
    pub fn store(&self) -> &Store {
        self.profile.store()
    }

    /// Bound on reaching the server (TCP connect, then the handshake).
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    /// Replace the routes to the server (default: direct TCP, then the
    /// relays from `--via` and the profile).
    pub fn set_routes(&mut self, routes: Vec<Box<dyn Route>>) {
        self.custom_routes = Some(routes);
    }

    /// Relays to use for this process only (before the saved ones).
    pub fn set_extra_vias(&mut self, vias: Vec<RelayUrl>) {
        self.extra_vias = vias;
    }

    /// How often `listen` re-checks the direct route while on a relay
    /// (default [`DIRECT_PROBE_EVERY`]).
    pub fn set_direct_probe_interval(&mut self, every: Duration) {
        self.direct_probe_every = every;
    }

    /// The relays this client tries: `--via` ones, then the saved ones.
    pub fn vias(&self) -> Result<Vec<RelayUrl>> {
        let mut all = self.extra_vias.clone();
        for v in saved_vias(self.store())? {
            if !all.contains(&v) {
                all.push(v);
            }
        }
        Ok(all)
    }

    /// The route of the last successful connection of this process.
    pub fn route_in_use(&self) -> Option<&str> {
        self.route_in_use.as_deref()
    }

    fn direct_route(&self) -> DirectRoute {
        DirectRoute {
            target: self.server.socket_addr_string(),
        }
    }

    /// Routes in the order they are raced: direct first, then the relays,
    /// the one that worked last leading.
    fn build_routes(&self) -> Result<Vec<Box<dyn Route>>> {
        let mut relays = Vec::new();
        for v in self.vias()? {
            relays.push(RelayRoute::new(v)?);
        }
        if let Some(last) = last_route(self.store())? {
            if let Some(pos) = relays.iter().position(|r| r.describe() == last) {
                let r = relays.remove(pos);
                relays.insert(0, r);
            }
        }
        let mut routes: Vec<Box<dyn Route>> = vec![Box::new(self.direct_route())];
        routes.extend(relays.into_iter().map(|r| Box::new(r) as Box<dyn Route>));
        Ok(routes)
    }

    async fn open_connection(&mut self) -> Result<Connection> {
        let built;
        let routes = match &self.custom_routes {
            Some(r) => r,
            None => {
                built = self.build_routes()?;
                &built
            }
        };
        let handshake = self.handshake()?;
        let conn = Connection::open_with(
            routes,
            self.server.key,
            self.device.clone(),
            self.connect_timeout,
            HEAD_START,
            handshake,
        )
        .await?;
        self.reached(handshake)?;
        self.route_in_use = Some(conn.route().to_owned());
        Ok(conn)
    }

    /// Records `route` as the one that worked last, once it carried an
    /// authenticated answer (the handshake, and for a session its login).
    /// A relay given with `--via` for this process only and not saved is
    /// not recorded: nothing would try it again.
    fn remember_route(&mut self, route: &str) -> Result<()> {
        let saved = saved_vias(self.store())?;
        let one_off = self
            .extra_vias
            .iter()
            .filter(|v| !saved.contains(v))
            .any(|v| format!("relay {v}") == route);
        if one_off {
            return Ok(());
        }
        let last = last_route(self.store())?;
        if last.as_deref() != Some(route) {
            self.store().set_meta(META_LAST_ROUTE, route)?;
            self.remembered = Some((route.to_owned(), last));
        }
        Ok(())
    }

    /// After `e`: a route that was remembered in this process and then
    /// failed authentication (bytes altered, another server key) is
    /// forgotten again, the route remembered before it restored.
    fn forget_route_after(&mut self, e: &ClientError) -> Result<()> {
        if !crate::route::is_security_error(e) {
            return Ok(());
        }
        if let Some((route, before)) = self.remembered.take() {
            if last_route(self.store())?.as_deref() == Some(route.as_str()) {
                self.store()
                    .set_meta(META_LAST_ROUTE, before.as_deref().unwrap_or(""))?;
            }
        }
        Ok(())
    }

    /// XX until a connection to the server has succeeded once (the first
    /// contact checks the key the server presents against the address and
    /// can name both when they differ), IK after.
    fn handshake(&self) -> Result<Handshake> {
        Ok(match self.store().meta(META_SERVER_REACHED)? {
            Some(_) => Handshake::Known,
            None => Handshake::FirstContact,
        })
    }

    /// Records that a connection made with `handshake` succeeded.
    fn reached(&self, handshake: Handshake) -> Result<()> {
        if handshake == Handshake::FirstContact {
            self.store().set_meta(META_SERVER_REACHED, "1")?;
        }
        Ok(())
    }

    /// Connect and log in; returns the connection and the login summary.
    async fn login(&mut self) -> Result<(Connection, ponte_wire::messages::LoggedIn)> {
        let mut conn = self.open_connection().await?;
        match conn
            .request(client_frame::Body::Login(Login {}), REQUEST_TIMEOUT)
            .await?
        {
            server_frame::Body::LoggedIn(l) => {
                if l.handle != self.handle {
                    return Err(ClientError::Protocol(format!(
                        "logged in as {:?}, expected {:?}",
                        l.handle, self.handle
                    )));
                }
                self.remember_route(conn.route())?;
                Ok((conn, l))
            }
            _ => Err(unexpected("Login")),
        }
    }

    // ------------------------------------------------------------ keys

    /// Upload one-time keys up to the target (the server holds `on_server`),
    /// and a fallback key if the server has none.
    async fn upload_keys(
        &mut self,
        conn: &mut Connection,
        on_server: u32,
        has_fallback: bool,
    ) -> Result<()> {
        let _keys = self.hold_keys().await?;
        let want = TARGET_ONE_TIME_KEYS.saturating_sub(on_server) as usize;
        let pending = self.identity.unpublished_one_time_keys().len();
        let mut keys = self
            .identity
            .generate_one_time_keys(want.saturating_sub(pending));
        keys.truncate(100);
        let fallback = if has_fallback {
            None
        } else {
            self.identity
                .unpublished_fallback_key()
                .or_else(|| self.identity.rotate_fallback_key())
        };
        if keys.is_empty() && fallback.is_none() {
            return Ok(());
        }
        // Private halves are saved before the public halves leave.
        self.store().save_identity(&self.identity)?;
        let sign = |k: &ponte_e2e::PreKey| SignedKey {
            key_id: Bytes::copy_from_slice(&k.key_id),
            public_key: Bytes::copy_from_slice(&k.public_key),
            signature: Bytes::copy_from_slice(
                &self
                    .identity
                    .sign(key_signing_string(&k.key_id, &k.public_key, k.fallback).as_bytes()),
            ),
        };
        let body = client_frame::Body::UploadKeys(UploadKeys {
            one_time_keys: keys.iter().map(sign).collect(),
            fallback_key: fallback.as_ref().map(sign),
        });
        match conn.request(body, REQUEST_TIMEOUT).await? {
            server_frame::Body::KeysUploaded(_) => {
                self.identity.mark_published();
                self.store().save_identity(&self.identity)?;
                tracing::debug!(count = keys.len(), "uploaded one-time keys");
                Ok(())
            }
            _ => Err(unexpected("UploadKeys")),
        }
    }

    // ------------------------------------------------------------ identities

    /// Fetch a handle's identity from the server and check the registration
    /// signature binds it to the handle.
    async fn lookup_identity(&self, conn: &mut Connection, handle: &str) -> Result<PublicIdentity> {
        let body = client_frame::Body::LookupIdentity(LookupIdentity {
            handle: handle.to_owned(),
        });
        let server_frame::Body::IdentityKeys(ik) = conn.request(body, REQUEST_TIMEOUT).await?
        else {
            return Err(unexpected("LookupIdentity"));
        };
        let keys = ik
            .keys
            .ok_or_else(|| ClientError::Protocol("identity without keys".into()))?;
        let identity = PublicIdentity::from_slices(&keys.curve25519, &keys.ed25519)?;
        let signing = registration_signing_string(
            handle,
            &identity.curve25519,
            &identity.ed25519,
            &ik.noise_static_key,
        );
        identity
            .verify(signing.as_bytes(), &ik.registration_signature)
            .map_err(|_| {
                ClientError::Protocol(format!("{handle}'s registration signature does not verify"))
            })?;
        Ok(identity)
    }

    /// Refuse to send to a contact whose identity changed unverified.
    fn check_not_changed(&self, peer: &str) -> Result<()> {
        match self.store().contact(peer)? {
            Some(Contact {
                changed_identity: Some(_),
                ..
            }) => Err(ClientError::KeyChanged(peer.to_owned())),
            _ => Ok(()),
        }
    }
}

fn is_fatal(e: &ClientError) -> bool {
    match e {
        // The profile's files, or the display (stdout closed): a new
        // connection does not fix either.
        ClientError::Io { .. }
        | ClientError::ServerKeyMismatch(_)
        | ClientError::Tampered(_)
        | ClientError::NotRegistered(_)
        | ClientError::Corrupt(_)
        | ClientError::Db(_)
        | ClientError::WrongPassphrase
        | ClientError::PassphraseRequired => true,
        ClientError::Server { code, .. } => *code == ServerCode::NotRegistered,
        _ => false,
    }
}

//! The client operations behind the CLI: register, send, sync, listen,
//! history, contacts, verify.
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

use crate::connection::{Connection, Handshake, REQUEST_TIMEOUT};
use crate::profile::{KeySource, Profile};
use crate::route::{DirectRoute, RelayRoute, RelayUrl, Route, HEAD_START};
use crate::store::{
    Contact, IdentityCheck, Incoming, IncomingContent, MessageView, OutboxKind, Store, Update,
};
use crate::{ClientError, Result};
use bytes::Bytes;
use ponte_e2e::{
    Ciphertext, Envelope, Identity, MessageId, Payload, PublicIdentity, SafetyNumber, Session,
};
use ponte_transport::Keypair;
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{
    client_frame, key_signing_string, registration_signing_string, server_frame, validate_handle,
    Ack, ClaimKey, DeviceKeys, Login, LookupIdentity, Ping, Register, SendMessage, SignedKey,
    UploadKeys,
};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// One-time keys kept on the server (vodozemac's recommendation).
pub const TARGET_ONE_TIME_KEYS: u32 = 50;
/// Upload more when the server holds fewer than this (the protocol's mark).
pub const LOW_WATER_MARK: u32 = 10;
/// How long `sync` waits for the mailbox to drain.
const SYNC_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Keep-alive period for `listen` (the server's idle timeout is 300 s).
const PING_EVERY: Duration = Duration::from_secs(60);
/// Reconnect backoff bounds for `listen`.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Wait after another process of the same profile took over the connection.
const REPLACED_BACKOFF: Duration = Duration::from_secs(2);

/// Something to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new incoming message or a tick change.
    Update(Update),
    /// Connection state, for `listen` (connected, lost, retrying).
    Connection(String),
    /// Something the user must know (identity key change, undecryptable message).
    Warning(String),
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

/// The outcome of `send`.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The message as stored (status queued, sent...).
    pub message: MessageView,
    /// Why it is still queued, if it is.
    pub note: Option<String>,
    /// This very send found that the contact's identity key changed (and
    /// flagged it): the message is held in the outbox, neither sent nor
    /// lost, and goes out only after `verify --confirm`. Treat it as the
    /// refusal later sends get ([`ClientError::KeyChanged`]).
    pub key_changed: bool,
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
    head_start: Duration,
    direct_probe_every: Duration,
    route_in_use: Option<String>,
    connect_timeout: Duration,
    /// Contacts whose key change was already reported (once per process).
    warned_held: BTreeSet<String>,
    /// The refusal last reported by a deferred flush: `listen` retries
    /// every 30 s and says it again only when it changes, or after a flush
    /// that went through.
    warned_deferred: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("handle", &self.handle)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Profile meta key: the saved relays, one URL per line.
const META_VIAS: &str = "vias";
/// Profile meta key: the route that worked last ([`Route::describe`]).
const META_LAST_ROUTE: &str = "last_route";
/// Profile meta key, set once a connection to the server has succeeded:
/// from then on the client starts with Noise IK instead of XX.
const META_SERVER_REACHED: &str = "server_reached";
/// How often `listen`, while on a relay, checks whether the direct route
/// works again.
pub const DIRECT_PROBE_EVERY: Duration = Duration::from_secs(60);
/// Most relays saved in a profile.
pub const MAX_SAVED_VIAS: usize = 32;

/// The relays saved in a profile (`ponte via add`), in the order added.
pub fn saved_vias(store: &Store) -> Result<Vec<RelayUrl>> {
    let Some(text) = store.meta(META_VIAS)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.parse::<RelayUrl>()
                .map_err(|_| ClientError::Corrupt("saved relay list"))
        })
        .collect()
}

/// Replace the relays saved in a profile (duplicates dropped, order kept).
pub fn save_vias(store: &Store, vias: &[RelayUrl]) -> Result<()> {
    let mut seen = BTreeSet::new();
    let list: Vec<String> = vias
        .iter()
        .filter(|v| seen.insert((*v).clone()))
        .map(ToString::to_string)
        .collect();
    if list.len() > MAX_SAVED_VIAS {
        return Err(ClientError::Invalid(format!(
            "at most {MAX_SAVED_VIAS} relays can be saved"
        )));
    }
    store.set_meta(META_VIAS, &list.join("\n"))
}

/// The route that worked last, as recorded in the profile.
pub fn last_route(store: &Store) -> Result<Option<String>> {
    Ok(store.meta(META_LAST_ROUTE)?.filter(|r| !r.is_empty()))
}

/// One route checked on its own (for `ponte status`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteProbe {
    /// The route ([`Route::describe`]).
    pub route: String,
    /// `Ok(milliseconds to an authenticated channel)` or the reason it failed.
    pub result: std::result::Result<u64, String>,
}

/// What `ponte status` shows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouteStatus {
    /// The route the client would use now (the race's winner), or why none works.
    pub in_use: std::result::Result<String, String>,
    /// The route recorded as working last, before this check.
    pub last_route: Option<String>,
    /// Each route on its own, in the order they are tried.
    pub probes: Vec<RouteProbe>,
    /// No route could be used because of a security error (the server at
    /// the address holds another key, a route tampered with the handshake;
    /// the text is in `in_use`): report it as an error, not only as a
    /// failed route.
    pub refused: bool,
}

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
    /// Create a profile in `dir` (or reuse one whose registration did not
    /// finish), register `handle` on the server and upload keys.
    pub async fn register(
        dir: &Path,
        source: KeySource,
        passphrase: impl FnOnce() -> Result<String>,
        address: &str,
        handle: &str,
        invite: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Self> {
        Self::register_via(
            dir,
            source,
            passphrase,
            address,
            handle,
            invite,
            connect_timeout,
            &[],
        )
        .await
    }

    /// [`Client::register`], reaching the server directly or through the
    /// relays `vias` (which are saved in the new profile: a user whose
    /// server is blocked needs them for every later command too).
    #[allow(clippy::too_many_arguments)]
    pub async fn register_via(
        dir: &Path,
        source: KeySource,
        passphrase: impl FnOnce() -> Result<String>,
        address: &str,
        handle: &str,
        invite: Option<&str>,
        connect_timeout: Duration,
        vias: &[RelayUrl],
    ) -> Result<Self> {
        Self::register_inner(
            dir,
            source,
            passphrase,
            address,
            handle,
            invite,
            connect_timeout,
            vias,
            None,
        )
        .await
    }

    /// [`Client::register`] over the given routes only (an embedder's own
    /// transport, a test's); the client keeps using them, as after
    /// [`Client::set_routes`].
    #[allow(clippy::too_many_arguments)]
    pub async fn register_with_routes(
        dir: &Path,
        source: KeySource,
        passphrase: impl FnOnce() -> Result<String>,
        address: &str,
        handle: &str,
        invite: Option<&str>,
        connect_timeout: Duration,
        routes: Vec<Box<dyn Route>>,
    ) -> Result<Self> {
        Self::register_inner(
            dir,
            source,
            passphrase,
            address,
            handle,
            invite,
            connect_timeout,
            &[],
            Some(routes),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn register_inner(
        dir: &Path,
        source: KeySource,
        passphrase: impl FnOnce() -> Result<String>,
        address: &str,
        handle: &str,
        invite: Option<&str>,
        connect_timeout: Duration,
        vias: &[RelayUrl],
        custom_routes: Option<Vec<Box<dyn Route>>>,
    ) -> Result<Self> {
        let server = parse_address(address)?;
        validate_handle(handle)
            .map_err(|e| ClientError::Invalid(format!("handle {handle:?}: {e}")))?;
        let profile = if Profile::exists(dir) {
            let profile = Profile::open(dir, passphrase)?;
            if let Some(existing) = profile.store().meta("handle")? {
                // The same name on the same server: register this device
                // again (the server lost the account: its data was reset or
                // restored from an older backup). Same identity, so
                // contacts keep the safety number. If the server still has
                // the account, this just confirms it.
                let same_server = profile
                    .store()
                    .meta("server")?
                    .and_then(|a| parse_address(&a).ok())
                    .is_some_and(|a| a == server);
                if existing != handle || !same_server {
                    return Err(ClientError::AlreadyRegistered(
                        dir.display().to_string(),
                        existing,
                    ));
                }
            }
            profile
        } else {
            Profile::create(dir, source)?
        };
        let store = profile.store();
        let identity = match store.identity()? {
            Some(i) => i,
            None => {
                let i = Identity::generate();
                store.save_identity(&i)?;
                i
            }
        };
        let device = match store.secret("noise")? {
            Some(secret) => device_keypair(&secret)?,
            None => {
                let kp = Keypair::generate();
                store.set_secret("noise", kp.secret())?;
                kp
            }
        };
        store.set_meta("server", &server.to_string())?;
        if !vias.is_empty() {
            let mut saved = saved_vias(store)?;
            saved.extend(vias.iter().cloned());
            save_vias(store, &saved)?;
        }
        let mut client = Self {
            profile,
            identity,
            device,
            server,
            handle: handle.to_owned(),
            custom_routes,
            extra_vias: Vec::new(),
            head_start: HEAD_START,
            direct_probe_every: DIRECT_PROBE_EVERY,
            route_in_use: None,
            connect_timeout,
            warned_held: BTreeSet::new(),
            warned_deferred: None,
        };
        let mut conn = client.open_connection().await?;
        let public = client.identity.public();
        let signing = registration_signing_string(
            handle,
            &public.curve25519,
            &public.ed25519,
            &client.device.public(),
        );
        let body = client_frame::Body::Register(Register {
            handle: handle.to_owned(),
            keys: Some(device_keys(&client.identity)),
            signature: Bytes::copy_from_slice(&client.identity.sign(signing.as_bytes())),
            invite: invite.unwrap_or_default().to_owned(),
        });
        match conn.request(body, REQUEST_TIMEOUT).await {
            Ok(server_frame::Body::Registered(_)) => {}
            Ok(_) => return Err(unexpected("Register")),
            // An earlier attempt registered this device but stopped before
            // recording it (crash, lost response): log in to confirm.
            Err(ClientError::Server { code, detail }) if code == "ALREADY_REGISTERED" => match conn
                .request(client_frame::Body::Login(Login {}), REQUEST_TIMEOUT)
                .await?
            {
                server_frame::Body::LoggedIn(l) if l.handle == handle => {}
                server_frame::Body::LoggedIn(l) => {
                    return Err(ClientError::AlreadyRegistered(
                        dir.display().to_string(),
                        l.handle,
                    ))
                }
                _ => return Err(ClientError::Server { code, detail }),
            },
            Err(e) => return Err(e),
        }
        client.profile.store().set_meta("handle", handle)?;
        client.upload_keys(&mut conn, 0, false).await?;
        Ok(client)
    }

    /// Open a registered profile.
    pub fn open(dir: &Path, passphrase: impl FnOnce() -> Result<String>) -> Result<Self> {
        let profile = Profile::open(dir, passphrase)?;
        let store = profile.store();
        let not_registered = || ClientError::NotRegistered(dir.display().to_string());
        let handle = store.meta("handle")?.ok_or_else(not_registered)?;
        let server = parse_address(&store.meta("server")?.ok_or_else(not_registered)?)?;
        let identity = store.identity()?.ok_or_else(not_registered)?;
        let secret = store.secret("noise")?.ok_or_else(not_registered)?;
        let device = device_keypair(&secret)?;
        Ok(Self {
            profile,
            identity,
            device,
            server,
            handle,
            custom_routes: None,
            extra_vias: Vec::new(),
            head_start: HEAD_START,
            direct_probe_every: DIRECT_PROBE_EVERY,
            route_in_use: None,
            connect_timeout: Duration::from_secs(5),
            warned_held: BTreeSet::new(),
            warned_deferred: None,
        })
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

    /// Head start of each route in the race (default [`HEAD_START`]).
    pub fn set_head_start(&mut self, head_start: Duration) {
        self.head_start = head_start;
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
            self.head_start,
            handshake,
        )
        .await?;
        self.reached(handshake)?;
        if last_route(self.store())?.as_deref() != Some(conn.route()) {
            self.store().set_meta(META_LAST_ROUTE, conn.route())?;
        }
        self.route_in_use = Some(conn.route().to_owned());
        Ok(conn)
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

    /// Which route works now: the race's winner, and each route alone.
    pub async fn status(&mut self) -> Result<RouteStatus> {
        let last = last_route(self.store())?;
        let built;
        let routes = match &self.custom_routes {
            Some(r) => r,
            None => {
                built = self.build_routes()?;
                &built
            }
        };
        let handshake = self.handshake()?;
        let head_start = self.head_start;
        let probes = futures::future::join_all(routes.iter().map(|r| {
            let device = self.device.clone();
            let (key, timeout) = (self.server.key, self.connect_timeout);
            async move {
                let t0 = tokio::time::Instant::now();
                let one = std::slice::from_ref(r);
                let result =
                    Connection::open_with(one, key, device, timeout, head_start, handshake)
                        .await
                        .map(|_| u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX))
                        .map_err(|e| match e {
                            ClientError::Unreachable(m) => m,
                            other => other.to_string(),
                        });
                RouteProbe {
                    route: r.describe(),
                    result,
                }
            }
        }))
        .await;
        let in_use = Connection::open_with(
            routes,
            self.server.key,
            self.device.clone(),
            self.connect_timeout,
            self.head_start,
            handshake,
        )
        .await
        .map(|c| c.route().to_owned());
        if let Ok(route) = &in_use {
            self.reached(handshake)?;
            self.store().set_meta(META_LAST_ROUTE, route)?;
            self.route_in_use = Some(route.clone());
        }
        let (in_use, refused) = match in_use {
            Ok(r) => (Ok(r), false),
            Err(e) => (Err(e.to_string()), crate::route::is_security_error(&e)),
        };
        Ok(RouteStatus {
            in_use,
            last_route: last,
            probes,
            refused,
        })
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

    // ------------------------------------------------------------ sending

    /// Write a message into the outbox (works offline).
    pub fn queue_text(&self, peer: &str, text: &str) -> Result<MessageId> {
        validate_handle(peer)
            .map_err(|e| ClientError::Invalid(format!("recipient {peer:?}: {e}")))?;
        if peer == self.handle {
            return Err(ClientError::Invalid(
                "you cannot send a message to yourself".into(),
            ));
        }
        if text.is_empty() {
            return Err(ClientError::Invalid("empty message".into()));
        }
        if text.len() > ponte_e2e::MAX_TEXT_BYTES {
            return Err(ClientError::Invalid(format!(
                "message too long ({} bytes, at most {})",
                text.len(),
                ponte_e2e::MAX_TEXT_BYTES
            )));
        }
        self.check_not_changed(peer)?;
        self.store().queue_text(peer, text)
    }

    /// The session to encrypt to `peer` with: the most recent one, or a new
    /// one from a claimed pre-key.
    async fn outbound_session(&mut self, conn: &mut Connection, peer: &str) -> Result<Session> {
        if let Some(s) = self.store().sessions(peer)?.into_iter().next() {
            return Ok(s);
        }
        let body = client_frame::Body::ClaimKey(ClaimKey {
            handle: peer.to_owned(),
        });
        let server_frame::Body::ClaimedKey(claimed) = conn.request(body, REQUEST_TIMEOUT).await?
        else {
            return Err(unexpected("ClaimKey"));
        };
        let keys = claimed
            .identity
            .ok_or_else(|| ClientError::Protocol("claimed key without identity".into()))?;
        let identity = PublicIdentity::from_slices(&keys.curve25519, &keys.ed25519)?;
        let key = claimed
            .key
            .ok_or_else(|| ClientError::Protocol("claimed key missing".into()))?;
        let public_key: [u8; 32] = key
            .public_key
            .as_ref()
            .try_into()
            .map_err(|_| ponte_e2e::Error::InvalidKey)?;
        identity.verify(
            key_signing_string(&key.key_id, &public_key, claimed.fallback).as_bytes(),
            &key.signature,
        )?;
        if self.store().observe_identity(peer, &identity)? == IdentityCheck::Changed {
            return Err(ClientError::KeyChanged(peer.to_owned()));
        }
        let session = self
            .identity
            .create_outbound_session(&identity, &public_key)?;
        self.store().save_session(peer, &session)?;
        Ok(session)
    }

    /// Send everything in the outbox. Items for contacts whose key changed
    /// are held (reported once); a recipient whose mailbox is full is held
    /// for this flush; a temporary server refusal (`UNAVAILABLE`, e.g. its
    /// disk is full, or `RATE_LIMITED`) stops the flush with a warning and
    /// [`Flush::Deferred`]: the rest stays queued, in order, and the
    /// connection stays usable for receiving. A permanent refusal marks the
    /// message failed.
    async fn flush_outbox(
        &mut self,
        conn: &mut Connection,
        events: &mut Display<'_>,
    ) -> Result<Flush> {
        let mut held = BTreeSet::new();
        let mut failed_peers = BTreeSet::new();
        let mut unknown_peers = BTreeSet::new();
        let outbox = self.store().outbox()?;
        // Before encrypting to a known contact over an existing session,
        // ask the directory whether their identity is still the one we
        // trust (once per contact and flush): a changed key must stop us
        // even when no new session is needed.
        let to_encrypt: BTreeSet<String> = outbox
            .iter()
            .filter(|i| i.ciphertext.is_none())
            .map(|i| i.peer.clone())
            .collect();
        for peer in to_encrypt {
            if self.store().contact(&peer)?.is_none() {
                continue; // first contact: the claim below records it
            }
            match self.lookup_identity(conn, &peer).await {
                Ok(identity) => {
                    self.store().observe_identity(&peer, &identity)?;
                }
                Err(ClientError::Server { .. }) => {} // handled per item below
                Err(e) => return Err(e),
            }
        }
        for item in outbox {
            if unknown_peers.contains(&item.peer) {
                self.store().mark_failed(&item.peer, &item.id)?;
                continue;
            }
            if held.contains(&item.peer) || failed_peers.contains(&item.peer) {
                continue;
            }
            let ciphertext = match item.ciphertext.clone() {
                Some(c) => c,
                None => {
                    let changed = self.check_not_changed(&item.peer).err();
                    let session = match changed {
                        Some(e) => Err(e),
                        None => self.outbound_session(conn, &item.peer).await,
                    };
                    let mut session = match session {
                        Ok(s) => s,
                        Err(ClientError::KeyChanged(p)) => {
                            if self.warned_held.insert(p.clone()) {
                                emit(
                                    events,
                                    Event::Warning(ClientError::KeyChanged(p.clone()).to_string()),
                                )?;
                            }
                            held.insert(p);
                            continue;
                        }
                        Err(ClientError::Server { code, detail }) if code == "UNKNOWN_HANDLE" => {
                            emit(
                                events,
                                Event::Warning(format!(
                                    "{}: no such user on the server ({detail})",
                                    item.peer
                                )),
                            )?;
                            self.store().mark_failed(&item.peer, &item.id)?;
                            unknown_peers.insert(item.peer.clone());
                            continue;
                        }
                        Err(ClientError::Server { code, detail }) if code == "NO_KEYS" => {
                            emit(
                                events,
                                Event::Warning(format!(
                                    "{} has no keys on the server yet ({detail}); kept queued",
                                    item.peer
                                )),
                            )?;
                            failed_peers.insert(item.peer.clone());
                            continue;
                        }
                        Err(e) if is_temporary_refusal(&e) => {
                            self.warn_deferred(events, &e)?;
                            return Ok(Flush::Deferred);
                        }
                        Err(e) => return Err(e),
                    };
                    let payload = match &item.kind {
                        OutboxKind::Text(t) => Payload::Text(t.clone()),
                        OutboxKind::ReadReceipt(ids) => Payload::ReadReceipt(ids.clone()),
                    };
                    let envelope = Envelope {
                        id: item.id,
                        sent_at_ms: item.sent_at_ms,
                        payload,
                    };
                    let ct = session.encrypt(&envelope.encode()?).to_bytes();
                    self.store()
                        .save_encrypted(&item.id, &item.peer, &session, &ct)?;
                    ct
                }
            };
            let body = client_frame::Body::Send(SendMessage {
                message_id: Bytes::copy_from_slice(&item.id.0),
                recipient: item.peer.clone(),
                body: Bytes::from(ciphertext),
            });
            match conn.request(body, REQUEST_TIMEOUT).await {
                Ok(server_frame::Body::SendAck(_)) => {
                    self.store().mark_sent(&item.peer, &item.id)?
                }
                Ok(_) => return Err(unexpected("SendMessage")),
                Err(ClientError::Server { code, detail })
                    if matches!(
                        code.as_str(),
                        "UNKNOWN_RECIPIENT" | "TOO_LARGE" | "INVALID_ARGUMENT"
                    ) =>
                {
                    emit(
                        events,
                        Event::Warning(format!(
                            "message to {} refused by the server: {code} ({detail})",
                            item.peer
                        )),
                    )?;
                    self.store().mark_failed(&item.peer, &item.id)?;
                }
                Err(ClientError::Server { code, detail }) if code == "MAILBOX_FULL" => {
                    emit(
                        events,
                        Event::Warning(format!(
                            "{}'s mailbox on the server is full ({detail}); kept queued",
                            item.peer
                        )),
                    )?;
                    failed_peers.insert(item.peer.clone());
                }
                Err(e) if is_temporary_refusal(&e) => {
                    self.warn_deferred(events, &e)?;
                    return Ok(Flush::Deferred);
                }
                Err(e) => return Err(e),
            }
        }
        self.warned_deferred = None;
        Ok(Flush::Done)
    }

    /// Says that the outbox waits because of `e`, unless that was the last
    /// thing said about it.
    fn warn_deferred(&mut self, events: &mut Display<'_>, e: &ClientError) -> Result<()> {
        let text = format!("kept in the outbox: {e}");
        if self.warned_deferred.as_deref() != Some(text.as_str()) {
            emit(events, Event::Warning(text.clone()))?;
            self.warned_deferred = Some(text);
        }
        Ok(())
    }

    /// Queue a message and try to deliver it to the server right away. If
    /// the server cannot be reached, the message stays queued (not an
    /// error): the outcome says so.
    pub async fn send(&mut self, peer: &str, text: &str) -> Result<SendOutcome> {
        let id = self.queue_text(peer, text)?;
        let mut warnings = Vec::new();
        let note = match self.login().await {
            Ok((mut conn, _)) => {
                let mut sink = |e: Event| {
                    if let Event::Warning(w) = e {
                        warnings.push(w);
                    }
                    Ok(())
                };
                match self.flush_outbox(&mut conn, &mut sink).await {
                    Ok(_) => None,
                    Err(e) if is_fatal(&e) => return Err(self.give_up(peer, &id, e)),
                    Err(e) => Some(format!("kept in the outbox: {e}")),
                }
            }
            Err(e @ (ClientError::Unreachable(_) | ClientError::Disconnected(_))) => Some(format!(
                "server unreachable, message queued for the next connection ({e})"
            )),
            Err(e) if is_fatal(&e) => return Err(self.give_up(peer, &id, e)),
            // A refusal for now (the server is busy or out of space): it
            // waits in the outbox like an unreachable server's.
            Err(e) => Some(format!("kept in the outbox: {e}")),
        };
        let note = match (note, warnings.is_empty()) {
            (n, true) => n,
            (None, false) => Some(warnings.join("; ")),
            (Some(n), false) => Some(format!("{n}; {}", warnings.join("; "))),
        };
        let message = self
            .store()
            .message(peer, true, &id)?
            .ok_or(ClientError::Corrupt("sent message vanished"))?;
        self.store().mark_status_shown(peer, &id)?;
        // queue_text refused a contact already flagged, so a flag now means
        // this send's directory check (or key claim) found the change.
        let key_changed = self
            .store()
            .contact(peer)?
            .is_some_and(|c| c.changed_identity.is_some());
        Ok(SendOutcome {
            message,
            note,
            key_changed,
        })
    }

    /// `send` fails with `e`, which retrying does not fix (the server holds
    /// another key, the account is gone, ...): the message just queued is
    /// marked failed, so it never goes out later behind the user's back
    /// (they were told it failed, and will likely type it again).
    fn give_up(&self, peer: &str, id: &MessageId, e: ClientError) -> ClientError {
        if let Err(mark) = self.store().mark_failed(peer, id) {
            tracing::warn!("cannot mark the message failed: {mark}");
        }
        e
    }

    // ------------------------------------------------------------ receiving

    /// Handle one push; returns the mailbox seq to acknowledge, if any.
    async fn handle_push(
        &mut self,
        conn: &mut Connection,
        push: server_frame::Body,
        events: &mut Display<'_>,
    ) -> Result<Option<u64>> {
        match push {
            server_frame::Body::Deliver(d) => {
                self.handle_deliver(conn, &d.sender, &d.message_id, &d.body, events)
                    .await?;
                Ok(Some(d.seq))
            }
            server_frame::Body::DeliveryReceipt(r) => {
                if let Some(id) = MessageId::from_slice(&r.message_id) {
                    self.store().mark_delivered(&r.recipient, &id)?;
                }
                Ok(Some(r.seq))
            }
            server_frame::Body::ExpiredNotice(n) => {
                if let Some(id) = MessageId::from_slice(&n.message_id) {
                    self.store().mark_expired(&n.recipient, &id)?;
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
                    Event::Warning(format!("dropped a malformed message from {sender}: {e}")),
                )?;
                return Ok(());
            }
        };
        let contact = self.store().contact(sender)?;
        let mut key_changed = contact
            .as_ref()
            .is_some_and(|c| c.changed_identity.is_some());
        let mut sessions = self.store().sessions(sender)?;
        let mut opened: Option<(Session, Vec<u8>, bool)> = None;
        if ciphertext.is_prekey() {
            if let Some(pos) = sessions.iter().position(|s| s.matches_prekey(&ciphertext)) {
                let mut s = sessions.swap_remove(pos);
                if let Ok(p) = s.decrypt(&ciphertext) {
                    opened = Some((s, p, false));
                }
            } else {
                let claimed = Identity::prekey_sender(&ciphertext);
                let known = contact.as_ref().and_then(|c| {
                    if Some(c.identity.curve25519) == claimed {
                        Some((c.identity, false))
                    } else {
                        c.changed_identity
                            .filter(|n| Some(n.curve25519) == claimed)
                            .map(|n| (n, true))
                    }
                });
                let their = match known {
                    Some((identity, changed)) => {
                        key_changed = changed;
                        Some(identity)
                    }
                    None => {
                        let looked_up = match self.lookup_identity(conn, sender).await {
                            Ok(identity) => identity,
                            // The server could not look it up just now:
                            // not acknowledged, so it comes again (dropping
                            // it would lose a genuine first message).
                            Err(e) if is_temporary_refusal(&e) => return Err(e),
                            Err(
                                e @ (ClientError::Server { .. }
                                | ClientError::Protocol(_)
                                | ClientError::E2e(_)),
                            ) => {
                                emit(events, Event::Warning(format!(
                                    "dropped a message from {sender}: cannot check its identity ({e})"
                                )))?;
                                return Ok(());
                            }
                            Err(e) => return Err(e),
                        };
                        if Some(looked_up.curve25519) != claimed {
                            None
                        } else {
                            if self.store().observe_identity(sender, &looked_up)?
                                == IdentityCheck::Changed
                            {
                                key_changed = true;
                                // Once per run: a flush that holds our
                                // messages to them does not say it again.
                                if self.warned_held.insert(sender.to_owned()) {
                                    emit(
                                        events,
                                        Event::Warning(
                                            ClientError::KeyChanged(sender.to_owned()).to_string(),
                                        ),
                                    )?;
                                }
                            }
                            Some(looked_up)
                        }
                    }
                };
                match their {
                    Some(their) => {
                        match self.identity.create_inbound_session(&their, &ciphertext) {
                            Ok((s, p)) => opened = Some((s, p, true)),
                            Err(e) => tracing::debug!(error = %e, "inbound session failed"),
                        }
                    }
                    None => {
                        emit(events, Event::Warning(format!(
                            "dropped a message claiming to be from {sender}: its key is not {sender}'s"
                        )))?;
                        return Ok(());
                    }
                }
            }
        } else {
            for mut s in sessions {
                if let Ok(p) = s.decrypt(&ciphertext) {
                    opened = Some((s, p, false));
                    break;
                }
            }
        }
        let Some((session, plaintext, new_session)) = opened else {
            emit(
                events,
                Event::Warning(format!(
                    "could not decrypt a message from {sender}; dropped"
                )),
            )?;
            return Ok(());
        };
        let envelope = match Envelope::decode(&plaintext) {
            Ok(e) => e,
            Err(e) => {
                emit(
                    events,
                    Event::Warning(format!("dropped an unreadable message from {sender}: {e}")),
                )?;
                // Keep the ratchet state anyway: the ciphertext was genuine.
                self.store().save_session(sender, &session)?;
                return Ok(());
            }
        };
        let content = match &envelope.payload {
            Payload::Text(t) => IncomingContent::Text(t),
            Payload::ReadReceipt(ids) => IncomingContent::ReadReceipt(ids),
            _ => IncomingContent::ReadReceipt(&[]),
        };
        self.store().commit_incoming(&Incoming {
            peer: sender,
            id: envelope.id,
            sent_at_ms: envelope.sent_at_ms,
            session: &session,
            identity: new_session.then_some(&self.identity),
            key_changed,
            content,
        })?;
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
        self.store().mark_shown(&shown)?;
        match failed {
            Some(e) => Err(display_failed(e)),
            None => Ok(()),
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
        let (mut conn, logged_in) = self.login().await?;
        // One-time keys: the server pushes a KeyCount right after LoggedIn;
        // handle_push tops them up when it says they run low.
        let flushed = self.flush_outbox(&mut conn, events).await?;
        // Everything pending at login is pushed right after LoggedIn (at most
        // 64 in flight, more as we acknowledge). Drain until that many were
        // handled or the deadline passes, then a ping round trip makes sure
        // nothing pushed before it is left.
        let deadline = tokio::time::Instant::now() + SYNC_DRAIN_TIMEOUT;
        let mut handled = 0usize;
        let pending = logged_in.pending as usize;
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
        self.report_updates(events)?;
        // Read receipts queued just now; not again if the server refused
        // sends a moment ago (it would only say so twice).
        if flushed == Flush::Done && self.store().outbox_len()? > 0 {
            self.flush_outbox(&mut conn, events).await?;
            self.report_updates(events)?;
        }
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
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => e,
            };
            let replaced = matches!(&err, ClientError::Disconnected(m) if m.contains("REPLACED"));
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
                    "{what} ({err}); retrying in {:.1} s",
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
        self.flush_outbox(&mut conn, events).await?;
        let mut last_ping = tokio::time::Instant::now();
        let mut last_flush = tokio::time::Instant::now();
        let mut last_outbox = self.store().outbox_len()?;
        loop {
            self.drain(&mut conn, Duration::from_millis(500), 64, events)
                .await?;
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

    /// A future that tells whether the direct route reaches the server and
    /// completes the Noise handshake now (the probe connection is dropped).
    fn probe_direct(&self) -> impl Future<Output = bool> + Send + 'static {
        let direct: Vec<Box<dyn Route>> = vec![Box::new(self.direct_route())];
        let (key, device) = (self.server.key, self.device.clone());
        let timeout = self.connect_timeout.min(Duration::from_secs(5));
        async move {
            match Connection::open(&direct, key, device, timeout).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "direct route still unusable");
                    false
                }
            }
        }
    }

    // ------------------------------------------------------------ local views

    /// The conversation with `peer` (printing it counts as displaying it).
    pub fn history(&self, peer: &str) -> Result<Vec<MessageView>> {
        self.store().history(peer)
    }

    /// The conversation with `peer`, oldest first, handed to `show` one
    /// message at a time. Only the incoming messages `show` accepted count
    /// as displayed (marked, read receipt queued); the first error stops it
    /// with [`ClientError::Io`]. An invalid handle is refused.
    pub fn history_to(
        &self,
        peer: &str,
        show: &mut dyn FnMut(&MessageView) -> std::io::Result<()>,
    ) -> Result<()> {
        validate_handle(peer).map_err(|e| ClientError::Invalid(format!("{peer:?}: {e}")))?;
        let views = self.store().conversation(peer)?;
        let mut shown = Vec::new();
        let mut failed = None;
        for v in &views {
            if let Err(e) = show(v) {
                failed = Some(e);
                break;
            }
            if !v.outgoing {
                shown.push(v);
            }
        }
        if !shown.is_empty() {
            self.store().mark_shown(shown)?;
        }
        match failed {
            Some(e) => Err(display_failed(e)),
            None => Ok(()),
        }
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        self.store().contacts()
    }

    /// The safety number with `peer`, computed from the identity that
    /// `verify --confirm` would trust (a changed one if waiting). If the
    /// contact is unknown locally, or `refresh` is set, its identity is
    /// fetched from the server first (a change is flagged as usual).
    pub async fn safety_number(
        &mut self,
        peer: &str,
        refresh: bool,
    ) -> Result<(SafetyNumber, Contact)> {
        validate_handle(peer).map_err(|e| ClientError::Invalid(format!("{peer:?}: {e}")))?;
        let known = self.store().contact(peer)?;
        if known.is_none() || refresh {
            match self.login().await {
                Ok((mut conn, _)) => {
                    let identity = self.lookup_identity(&mut conn, peer).await?;
                    self.store().observe_identity(peer, &identity)?;
                }
                Err(e)
                    if known.is_some()
                        && matches!(
                            e,
                            ClientError::Unreachable(_) | ClientError::Disconnected(_)
                        ) =>
                {
                    tracing::debug!(error = %e, "offline; using the stored identity");
                }
                Err(e) => return Err(e),
            }
        }
        let contact = self
            .store()
            .contact(peer)?
            .ok_or_else(|| ClientError::UnknownContact(peer.to_owned()))?;
        let theirs = contact.changed_identity.unwrap_or(contact.identity);
        let number =
            SafetyNumber::compute((&self.identity.public(), &self.handle), (&theirs, peer));
        Ok((number, contact))
    }

    /// Mark `peer` verified (after comparing safety numbers); a waiting
    /// changed identity becomes the trusted one.
    pub fn confirm(&self, peer: &str) -> Result<PublicIdentity> {
        self.store().confirm_contact(peer)
    }

    /// This device's public identity.
    pub fn public_identity(&self) -> PublicIdentity {
        self.identity.public()
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

/// How a flush of the outbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Everything that could go out went out (some items may be held).
    Done,
    /// The server refused for now; the rest waits for a later flush.
    Deferred,
}

/// A refusal that retrying later fixes: the server cannot store anything
/// right now (`UNAVAILABLE`: its disk may be full) or asks us to slow down.
fn is_temporary_refusal(e: &ClientError) -> bool {
    matches!(e, ClientError::Server { code, .. } if code == "UNAVAILABLE" || code == "RATE_LIMITED")
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
        ClientError::Server { code, .. } => code == "NOT_REGISTERED",
        _ => false,
    }
}

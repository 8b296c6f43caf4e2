//! Registration: creating a profile (or reusing one whose registration
//! did not finish), registering its device on the server and uploading
//! its first keys. [`RegisterOptions`] says where and how.

use super::{
    device_keypair, device_keys, parse_address, save_vias, saved_vias, unexpected, Client,
    DIRECT_PROBE_EVERY,
};
use crate::connection::REQUEST_TIMEOUT;
use crate::profile::{KeySource, Profile};
use crate::route::{RelayUrl, Route};
use crate::{ClientError, Result, ServerCode};
use bytes::Bytes;
use ponte_e2e::Identity;
use ponte_transport::Keypair;
use ponte_wire::messages::{
    client_frame, registration_signing_string, server_frame, validate_handle, Login, Register,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Default bound on reaching the server (TCP connect, then the handshake).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Client::register`] registers, where, and how it reaches the server.
///
/// ```
/// # use ponte_client::client::RegisterOptions;
/// # use std::time::Duration;
/// let options = RegisterOptions::new("ponte://127.0.0.1:7000#KEY", "alice")
///     .invite("TOKEN")
///     .connect_timeout(Duration::from_secs(10));
/// # drop(options);
/// ```
#[non_exhaustive]
pub struct RegisterOptions {
    /// The server address (`ponte://HOST:PORT#KEY`).
    pub address: String,
    /// The handle to register.
    pub handle: String,
    /// An invite token, for servers that require one.
    pub invite: Option<String>,
    /// Bound on reaching the server (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Relays to reach the server through (saved in the new profile: a user
    /// whose server is blocked needs them for every later command too).
    pub vias: Vec<RelayUrl>,
    /// Routes to use instead of direct TCP and the relays (an embedder's
    /// own transport, a test's); the client keeps using them, as after
    /// [`Client::set_routes`].
    pub routes: Option<Vec<Box<dyn Route>>>,
}

impl std::fmt::Debug for RegisterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterOptions")
            .field("address", &self.address)
            .field("handle", &self.handle)
            .field("invite", &self.invite.as_ref().map(|_| "..."))
            .field("connect_timeout", &self.connect_timeout)
            .field("vias", &self.vias)
            .field("routes", &self.routes.as_ref().map(Vec::len))
            .finish()
    }
}

impl RegisterOptions {
    /// Register `handle` on the server at `address`, directly, no invite.
    pub fn new(address: impl Into<String>, handle: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            handle: handle.into(),
            invite: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            vias: Vec::new(),
            routes: None,
        }
    }

    /// Present an invite token.
    #[must_use]
    pub fn invite(mut self, token: impl Into<String>) -> Self {
        self.invite = Some(token.into());
        self
    }

    /// Bound on reaching the server.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reach the server directly or through these relays (saved in the
    /// profile).
    #[must_use]
    pub fn vias(mut self, vias: Vec<RelayUrl>) -> Self {
        self.vias = vias;
        self
    }

    /// Reach the server over these routes only.
    #[must_use]
    pub fn routes(mut self, routes: Vec<Box<dyn Route>>) -> Self {
        self.routes = Some(routes);
        self
    }
}

impl Client {
    /// Create a profile in `dir` protected by `source` (or reuse one whose
    /// registration did not finish, unlocked with `passphrase`), register
    /// the handle in `options` on the server and upload keys.
    ///
    /// On a profile already registered with the same handle and server this
    /// registers the device again (the server lost the account: its data
    /// was reset or restored from an older backup); any other registered
    /// profile is refused with [`ClientError::AlreadyRegistered`].
    pub async fn register(
        dir: &Path,
        source: KeySource,
        passphrase: impl FnOnce() -> Result<String>,
        options: RegisterOptions,
    ) -> Result<Self> {
        let RegisterOptions {
            address,
            handle,
            invite,
            connect_timeout,
            vias,
            routes: custom_routes,
        } = options;
        let handle = handle.as_str();
        let server = parse_address(&address)?;
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
        let identity_version = store.identity_version()?;
        let mut client = Self {
            profile,
            identity,
            device,
            server,
            handle: handle.to_owned(),
            custom_routes,
            extra_vias: Vec::new(),
            direct_probe_every: DIRECT_PROBE_EVERY,
            route_in_use: None,
            connect_timeout,
            warned_held: BTreeSet::new(),
            warned_deferred: None,
            warned_full: BTreeSet::new(),
            remembered: None,
            auto_download: super::DEFAULT_AUTO_DOWNLOAD,
            fetch_failed: BTreeSet::new(),
            read_when_opened: false,
            keys: crate::lock::Keys::new(dir),
            identity_version,
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
            invite: invite.unwrap_or_default(),
        });
        match conn.request(body, REQUEST_TIMEOUT).await {
            Ok(server_frame::Body::Registered(_)) => client.remember_route(conn.route())?,
            Ok(_) => return Err(unexpected("Register")),
            // An earlier attempt registered this device but stopped before
            // recording it (crash, lost response): log in to confirm.
            Err(ClientError::Server {
                code: code @ ServerCode::AlreadyRegistered,
                detail,
            }) => match conn
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
}

//! One authenticated connection to a Ponte server.
//!
//! [`Connection::open`] races the given routes (happy eyeballs, see
//! [`crate::route::race`]); each attempt is a TCP/TLS connect *and* the Noise
//! handshake against the key from the server address (IK; XX on a profile's
//! first contact, see [`Handshake`]), so a route that
//! accepts and then stays silent (a black hole) loses like a refused one. A
//! server that does not hold the key, or bytes that fail authentication,
//! end the attempt with a security error and the client refuses to go on.
//! The connection then offers:
//!
//! - [`Connection::request`]: send a request and wait for the response with
//!   the same `request_id`; server pushes that arrive meanwhile are queued;
//! - [`Connection::start`] and [`Connection::next_response`]: the same,
//!   split, for several requests in flight (the outbox flush);
//! - [`Connection::next_push`]: the next queued or incoming push (deliveries,
//!   receipts, notices, key counts), with a timeout;
//! - [`Connection::notify`]: send a frame that has no response (`Ack`).
//!
//! Every wait is bounded by a timeout; a `Close` from the server ends the
//! connection with [`ClientError::Closed`].

use crate::route::{race, BoxStream, Route, HEAD_START};
use crate::{ClientError, CloseCode, Result, ServerCode};
use ponte_transport::{Channel, Cipher, ClientConfig, Keypair, Pattern, TransportError};
use ponte_wire::messages::{client_frame, server_frame, ClientFrame, ServerFrame};
use std::collections::VecDeque;
use std::time::Duration;

/// Most pushes buffered while waiting for a response. The server keeps at
/// most 64 unacknowledged mailbox items in flight (plus the odd key
/// count), so this is never reached by an honest server; a dishonest one
/// gets disconnected before it makes the client hold more than
/// 256 × 128 KiB.
const MAX_QUEUED_PUSHES: usize = 256;

/// Default bound on one request's round trip.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Which Noise handshake a connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// IK: the client encrypts its first message to the key from the server
    /// address. One round trip; used once the profile has reached the
    /// server.
    Known,
    /// XX, for a profile's first contact: the server presents its key
    /// (authenticated by the handshake), the client checks it against the
    /// address before revealing its own. With a wrong or stale address the
    /// error names both keys, where IK can only say the handshake failed.
    FirstContact,
}

impl Handshake {
    fn pattern(self) -> Pattern {
        match self {
            Handshake::Known => Pattern::Ik,
            Handshake::FirstContact => Pattern::Xx,
        }
    }
}

/// An open Noise channel to the server.
pub struct Connection {
    chan: Channel<BoxStream>,
    route: String,
    direct: bool,
    next_id: u64,
    pushes: VecDeque<server_frame::Body>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("route", &self.route)
            .field("queued_pushes", &self.pushes.len())
            .finish()
    }
}

fn transport_err(e: TransportError) -> ClientError {
    match e {
        TransportError::ServerKeyMismatch { expected, actual } => {
            let expected = ponte_wire::address::encode_key(&expected);
            ClientError::ServerKeyMismatch(match actual {
                Some(a) => format!(
                    "expected key {expected}, the server presented {}",
                    ponte_wire::address::encode_key(&a)
                ),
                None => format!(
                    "the server (or a relay in between) could not complete the handshake for \
                     key {expected}"
                ),
            })
        }
        TransportError::Handshake(e) => ClientError::Tampered(format!(
            "the server's handshake did not authenticate ({e}): a relay or the network \
             altered or replayed it"
        )),
        TransportError::Decrypt => ClientError::Tampered(
            "an encrypted message from the server failed authentication: a relay or the network \
             altered it"
                .into(),
        ),
        TransportError::HandshakeTimeout => {
            ClientError::Unreachable("Noise handshake timed out".into())
        }
        other => ClientError::Disconnected(other.to_string()),
    }
}

/// Whether `e` means the other end closed the stream: cleanly, in the
/// middle of a message, reset, or (TLS) without its `close_notify`.
fn closed_by_peer(e: &TransportError) -> bool {
    use std::io::ErrorKind;
    match e {
        TransportError::UnexpectedEof => true,
        TransportError::Io(io) => matches!(
            io.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// What the user is told when the other end closed the stream, in their
/// terms: which end it was, and for a relay that accepted and closed
/// before the server answered, the likely reason.
fn closed_text(direct: bool, in_handshake: bool) -> String {
    match (direct, in_handshake) {
        (false, true) => {
            "the relay accepted the connection and closed it before the server answered: the \
         relay may not reach the server (try another relay, or tell its operator)"
                .into()
        }
        (true, true) => {
            "the server accepted the connection and closed it before the handshake finished".into()
        }
        (false, false) => "the relay closed the connection (it stopped, or lost the server)".into(),
        (true, false) => "the server closed the connection".into(),
    }
}

impl Connection {
    /// Race the routes (each: connect, then the Noise handshake, bounded
    /// by `connect_timeout`) and keep the first that authenticates the
    /// server against `server_key`.
    pub async fn open(
        routes: &[Box<dyn Route>],
        server_key: [u8; 32],
        device: Keypair,
        connect_timeout: Duration,
    ) -> Result<Self> {
        Self::open_with(
            routes,
            server_key,
            device,
            connect_timeout,
            HEAD_START,
            Handshake::Known,
        )
        .await
    }

    /// [`Connection::open`] with another head start per route and the
    /// given handshake.
    pub async fn open_with(
        routes: &[Box<dyn Route>],
        server_key: [u8; 32],
        device: Keypair,
        connect_timeout: Duration,
        head_start: Duration,
        handshake: Handshake,
    ) -> Result<Self> {
        let mut cfg = ClientConfig::new(device, server_key);
        cfg.handshake_timeout = connect_timeout;
        cfg.pattern = handshake.pattern();
        let cfg = &cfg;
        let (i, chan) = race(routes, head_start, connect_timeout, |route| {
            Box::pin(async move {
                let stream = route.connect().await.map_err(crate::route::connect_error)?;
                let chan = match ponte_transport::connect(stream, cfg).await {
                    // A server from before the cipher choice knows only the
                    // ChaCha20-Poly1305 preamble and closes on the other
                    // without a word: try that one on a new stream.
                    Err(e) if cfg.cipher != Cipher::ChaChaPoly && closed_by_peer(&e) => {
                        tracing::debug!(
                            route = %route.describe(),
                            "closed on the AES-GCM preamble; trying ChaCha20-Poly1305"
                        );
                        let mut legacy = cfg.clone();
                        legacy.cipher = Cipher::ChaChaPoly;
                        let stream = route.connect().await.map_err(crate::route::connect_error)?;
                        ponte_transport::connect(stream, &legacy).await
                    }
                    other => other,
                };
                chan.map_err(|e| {
                    if closed_by_peer(&e) {
                        return ClientError::Unreachable(closed_text(route.is_direct(), true));
                    }
                    match transport_err(e) {
                        ClientError::Disconnected(m) => ClientError::Unreachable(m),
                        other => other,
                    }
                })
            })
        })
        .await?;
        let route = &routes[i];
        tracing::debug!(route = %route.describe(), "connected");
        Ok(Self {
            chan,
            route: route.describe(),
            direct: route.is_direct(),
            next_id: 1,
            pushes: VecDeque::new(),
        })
    }

    /// The cipher of the Noise channel: AES-256-GCM where this CPU has AES
    /// instructions and the server knows it, else ChaCha20-Poly1305.
    pub fn cipher(&self) -> Cipher {
        self.chan.cipher()
    }

    /// The route this connection runs over ([`Route::describe`]).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Whether it is the direct route.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    async fn recv(&mut self, timeout: Duration) -> Result<Option<ServerFrame>> {
        match tokio::time::timeout(timeout, self.chan.recv::<ServerFrame>()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(frame))) => Ok(Some(frame)),
            Ok(Ok(None)) => Err(ClientError::Disconnected(closed_text(self.direct, false))),
            Ok(Err(e)) if closed_by_peer(&e) => {
                Err(ClientError::Disconnected(closed_text(self.direct, false)))
            }
            Ok(Err(e)) => Err(transport_err(e)),
        }
    }

    fn closed(close: ponte_wire::messages::Close) -> ClientError {
        ClientError::Closed {
            reason: CloseCode::from_wire(close.reason),
            detail: close.detail,
        }
    }

    /// Send a request and wait (at most `timeout`) for its response. An
    /// `Error` response becomes [`ClientError::Server`]. Responses to other
    /// requests that arrive meanwhile are dropped (use [`Connection::start`]
    /// and [`Connection::next_response`] to have several in flight).
    pub async fn request(
        &mut self,
        body: client_frame::Body,
        timeout: Duration,
    ) -> Result<server_frame::Body> {
        let request_id = self.start(body).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((id, answer)) = self.next_response(left).await? else {
                return Err(ClientError::Disconnected(format!(
                    "no response within {timeout:?}"
                )));
            };
            if id == request_id {
                return answer;
            }
            // A response to an older, abandoned request: ignore it.
        }
    }

    /// Send a request without waiting for its response; returns its
    /// request id, which [`Connection::next_response`] gives back with the
    /// answer. The server runs at most `max_requests_in_flight` (32 by
    /// default) of a connection's writes at once and reads no further
    /// frame meanwhile, so a caller that keeps more in flight only waits.
    pub async fn start(&mut self, body: client_frame::Body) -> Result<u64> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.chan
            .send(&ClientFrame {
                request_id,
                body: Some(body),
            })
            .await
            .map_err(|e| {
                if closed_by_peer(&e) {
                    ClientError::Disconnected(closed_text(self.direct, false))
                } else {
                    transport_err(e)
                }
            })?;
        Ok(request_id)
    }

    /// The next response to any request, with its request id, arriving
    /// within `timeout` (`Ok(None)` if none did). An `Error` response is
    /// the inner [`ClientError::Server`]; pushes that arrive meanwhile are
    /// queued for [`Connection::next_push`]. Responses come in the order
    /// the server finishes the requests, which for writes is not always
    /// the order they were sent.
    pub async fn next_response(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u64, Result<server_frame::Body>)>> {
        Ok(self.next_answer(timeout).await?.map(|(id, body)| {
            let answer = match body {
                server_frame::Body::Error(e) => Err(ClientError::Server {
                    code: ServerCode::from_wire(e.code),
                    detail: e.detail,
                }),
                body => Ok(body),
            };
            (id, answer)
        }))
    }

    /// Like [`Connection::next_response`], with an `Error` answer left as
    /// the frame (for the fields a [`ClientError`] does not carry, such as
    /// the offset of `OFFSET_MISMATCH`).
    pub async fn next_answer(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u64, server_frame::Body)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.recv(left).await? else {
                return Ok(None);
            };
            let Some(body) = frame.body else { continue };
            let body = match body {
                server_frame::Body::Close(close) => return Err(Self::closed(close)),
                body => body,
            };
            if frame.request_id != 0 {
                return Ok(Some((frame.request_id, body)));
            }
            if self.pushes.len() >= MAX_QUEUED_PUSHES {
                return Err(ClientError::Protocol(
                    "too many unacknowledged pushes".into(),
                ));
            }
            self.pushes.push_back(body);
        }
    }

    /// Send a frame that gets no response (e.g. `Ack`).
    pub async fn notify(&mut self, body: client_frame::Body) -> Result<()> {
        self.start(body).await.map(drop)
    }

    /// The next push: a queued one, or one arriving within `timeout`
    /// (`Ok(None)` if none did).
    pub async fn next_push(&mut self, timeout: Duration) -> Result<Option<server_frame::Body>> {
        if let Some(p) = self.pushes.pop_front() {
            return Ok(Some(p));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.recv(left).await? else {
                return Ok(None);
            };
            match frame.body {
                Some(server_frame::Body::Close(close)) => return Err(Self::closed(close)),
                Some(body) if frame.request_id == 0 => return Ok(Some(body)),
                _ => {
                    if left.is_zero() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

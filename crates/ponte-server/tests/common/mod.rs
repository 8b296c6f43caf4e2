//! Test support: a server on 127.0.0.1:0 over a temp data directory, and a
//! minimal protocol client (Noise IK, Ed25519-signed registration and keys).
#![allow(clippy::unwrap_used, dead_code)]

pub mod own_pg;
pub mod pg;

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use ponte_server::store::{Sink, SqliteStore, Store, StoreOptions};
use ponte_server::{Server, ServerConfig};
use ponte_transport::{connect, Channel, ClientConfig, Keypair};
use ponte_wire::messages::{
    self, client_frame, server_frame, ClientFrame, DeviceKeys, ErrorCode, ServerFrame, SignedKey,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous bound on any single wait in tests (never reached when things work).
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub key: [u8; 32],
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with_admin(dir, tweak, false).await
    }

    pub async fn start_with_admin(
        dir: &Path,
        tweak: impl FnOnce(&mut ServerConfig),
        admin: bool,
    ) -> Self {
        let mut cfg = ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
        tweak(&mut cfg);
        let admin_addr = admin.then(|| "127.0.0.1:0".parse().unwrap());
        let server = Server::bind(cfg, admin_addr).await.unwrap();
        let addr = server.local_addr().unwrap();
        let admin = server.admin_addr();
        let key = server.public_key();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            admin,
            key,
            dir: dir.to_owned(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and waits until its database is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
    }
}

/// A device: Noise key, Ed25519 signing key, Curve25519 identity (random
/// bytes: the server treats it as opaque).
#[derive(Clone)]
pub struct Device {
    pub noise: Keypair,
    pub signing: SigningKey,
    pub curve: [u8; 32],
}

impl Device {
    pub fn new() -> Self {
        let mut curve = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut curve);
        Self {
            noise: Keypair::generate(),
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
            curve,
        }
    }

    pub fn ed(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    pub fn register_frame(&self, handle: &str, invite: &str) -> client_frame::Body {
        let s = messages::registration_signing_string(
            handle,
            &self.curve,
            &self.ed(),
            &self.noise.public(),
        );
        client_frame::Body::Register(messages::Register {
            handle: handle.into(),
            keys: Some(DeviceKeys {
                curve25519: Bytes::copy_from_slice(&self.curve),
                ed25519: Bytes::copy_from_slice(&self.ed()),
            }),
            signature: Bytes::copy_from_slice(&self.signing.sign(s.as_bytes()).to_bytes()),
            invite: invite.into(),
        })
    }

    pub fn signed_key(&self, id: u32, fallback: bool) -> SignedKey {
        let key_id = id.to_be_bytes();
        let pk = [id as u8; 32];
        let s = messages::key_signing_string(&key_id, &pk, fallback);
        SignedKey {
            key_id: Bytes::copy_from_slice(&key_id),
            public_key: Bytes::copy_from_slice(&pk),
            signature: Bytes::copy_from_slice(&self.signing.sign(s.as_bytes()).to_bytes()),
        }
    }
}

pub struct Client {
    pub ch: Channel<TcpStream>,
    pub device: Device,
    next_rid: u64,
    pub pushes: VecDeque<ServerFrame>,
}

impl Client {
    pub async fn connect(server: &TestServer, device: &Device) -> Self {
        let sock = TcpStream::connect(server.addr).await.unwrap();
        let ch = connect(sock, &ClientConfig::new(device.noise.clone(), server.key))
            .await
            .unwrap();
        Self {
            ch,
            device: device.clone(),
            next_rid: 1,
            pushes: VecDeque::new(),
        }
    }

    pub fn from_channel(ch: Channel<TcpStream>, device: &Device) -> Self {
        Self {
            ch,
            device: device.clone(),
            next_rid: 1,
            pushes: VecDeque::new(),
        }
    }

    /// The request id the next request gets.
    pub fn next_rid(&self) -> u64 {
        self.next_rid
    }

    pub async fn recv(&mut self) -> Option<ServerFrame> {
        tokio::time::timeout(WAIT, self.ch.recv::<ServerFrame>())
            .await
            .expect("timed out waiting for a frame")
            .unwrap()
    }

    /// Sends a request and returns its response; pushes seen meanwhile are queued.
    pub async fn request(&mut self, body: client_frame::Body) -> server_frame::Body {
        let rid = self.next_rid;
        self.next_rid += 1;
        self.ch
            .send(&ClientFrame {
                request_id: rid,
                body: Some(body),
            })
            .await
            .unwrap();
        loop {
            let f = self.recv().await.expect("connection closed");
            if f.request_id == rid {
                return f.body.unwrap();
            }
            assert_eq!(f.request_id, 0, "response to an unknown request");
            self.pushes.push_back(f);
        }
    }

    /// Sends without waiting (for Ack).
    pub async fn fire(&mut self, body: client_frame::Body) {
        let rid = self.next_rid;
        self.next_rid += 1;
        self.ch
            .send(&ClientFrame {
                request_id: rid,
                body: Some(body),
            })
            .await
            .unwrap();
    }

    /// The next push matching `pred` (others are kept in order).
    pub async fn push_where(
        &mut self,
        pred: impl Fn(&server_frame::Body) -> bool,
    ) -> server_frame::Body {
        if let Some(i) = self
            .pushes
            .iter()
            .position(|f| f.body.as_ref().is_some_and(&pred))
        {
            return self.pushes.remove(i).unwrap().body.unwrap();
        }
        loop {
            let f = self.recv().await.expect("connection closed");
            let b = f.body.clone().unwrap();
            if pred(&b) {
                return b;
            }
            self.pushes.push_back(f);
        }
    }

    pub async fn register(&mut self, handle: &str) -> server_frame::Body {
        let body = self.device.register_frame(handle, "");
        self.request(body).await
    }

    pub async fn login(&mut self) -> server_frame::Body {
        self.request(client_frame::Body::Login(messages::Login {}))
            .await
    }

    pub async fn send_msg(&mut self, to: &str, id: [u8; 16], body: &[u8]) -> server_frame::Body {
        self.request(client_frame::Body::Send(messages::SendMessage {
            message_id: Bytes::copy_from_slice(&id),
            recipient: to.into(),
            body: Bytes::copy_from_slice(body),
        }))
        .await
    }

    pub async fn ack(&mut self, seqs: Vec<u64>) {
        self.fire(client_frame::Body::Ack(messages::Ack { seqs }))
            .await;
    }

    pub async fn next_deliver(&mut self) -> messages::Deliver {
        match self
            .push_where(|b| matches!(b, server_frame::Body::Deliver(_)))
            .await
        {
            server_frame::Body::Deliver(d) => d,
            _ => unreachable!(),
        }
    }

    pub async fn next_receipt(&mut self) -> messages::DeliveryReceipt {
        match self
            .push_where(|b| matches!(b, server_frame::Body::DeliveryReceipt(_)))
            .await
        {
            server_frame::Body::DeliveryReceipt(d) => d,
            _ => unreachable!(),
        }
    }
}

pub fn error_code(body: &server_frame::Body) -> ErrorCode {
    match body {
        server_frame::Body::Error(e) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Registers `handle` on a fresh device and returns the logged-in client.
pub async fn registered(server: &TestServer, handle: &str) -> Client {
    let device = Device::new();
    let mut c = Client::connect(server, &device).await;
    let r = c.register(handle).await;
    assert!(
        matches!(r, server_frame::Body::Registered(_)),
        "register {handle}: {r:?}"
    );
    c
}

/// Registers `handle` directly in a store (no protocol), its keys all `n`.
pub async fn store_account(
    store: &dyn ponte_server::store::Store,
    handle: &str,
    n: u8,
) -> ponte_server::store::AccountId {
    use ponte_server::store::{NewAccount, RegisterOutcome};
    match store
        .register(NewAccount {
            handle: handle.into(),
            noise_key: [n; 32],
            curve25519: [n; 32],
            ed25519: [n; 32],
            signature: vec![n; 64],
            invite: None,
            invite_required: false,
            now: at(1),
        })
        .await
        .unwrap()
    {
        RegisterOutcome::Created(id) => id,
        other => panic!("{other:?}"),
    }
}

/// Registers `handle` for `device` directly in a store (no protocol, no
/// signature check), so that the device can log in over Noise: for tests
/// that need many accounts quickly.
pub async fn store_device_account(
    store: &dyn ponte_server::store::Store,
    handle: &str,
    device: &Device,
) -> ponte_server::store::AccountId {
    use ponte_server::store::{NewAccount, RegisterOutcome};
    match store
        .register(NewAccount {
            handle: handle.into(),
            noise_key: device.noise.public(),
            curve25519: device.curve,
            ed25519: device.ed(),
            signature: vec![0; 64],
            invite: None,
            invite_required: false,
            now: at(1),
        })
        .await
        .unwrap()
    {
        RegisterOutcome::Created(id) => id,
        other => panic!("{other:?}"),
    }
}

/// A store sink that records every item handed over, with the name of the
/// thread that handed it; told to, it panics on its next batch instead.
#[derive(Debug, Default)]
pub struct Recorder {
    items: std::sync::Mutex<Vec<(ponte_server::store::Committed, Option<String>)>>,
    panic_next: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// Everything handed over so far, in order.
    pub fn items(&self) -> Vec<ponte_server::store::Committed> {
        let items = self.items.lock().unwrap();
        items.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The threads that handed the items over, in order.
    pub fn threads(&self) -> Vec<Option<String>> {
        let items = self.items.lock().unwrap();
        items.iter().map(|(_, t)| t.clone()).collect()
    }

    /// The next batch panics in the sink.
    pub fn panic_next(&self) {
        self.panic_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ponte_server::store::Sink for Recorder {
    fn committed(&self, items: Vec<ponte_server::store::Committed>) {
        if self
            .panic_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("sink bug (expected by this test)");
        }
        let thread = std::thread::current().name().map(str::to_owned);
        let mut all = self.items.lock().unwrap();
        all.extend(items.into_iter().map(|c| (c, thread.clone())));
    }
}

/// A storage backend under test: how to open it, and what its hand-overs
/// look like. Behavioural store tests take one, so every backend runs the
/// same bodies.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Whether the backend can run here (PostgreSQL reachable); when not,
    /// it said why on stderr and the test passes without running.
    pub ready: fn() -> bool,
    /// A fresh place for one test's store: a temp directory, and for
    /// PostgreSQL a fresh database dropped with it.
    pub scratch: fn() -> Scratch,
    /// Opens the store in the scratch at `dir` (again after a close or
    /// drop: it sees what was stored), its committed items handed to
    /// `sink`.
    pub open: fn(&Path, Arc<dyn Sink>) -> Arc<dyn Store>,
    /// The name of the thread that hands committed items to the sink.
    pub sink_thread: &'static str,
}

/// One test's store place: a temp directory, and the database the
/// directory names (`pg-url` in it), dropped when this is (also when the
/// test fails).
pub struct Scratch {
    dir: tempfile::TempDir,
    _db: Option<pg::TestDb>,
}

impl Scratch {
    fn dir() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            _db: None,
        }
    }

    fn postgres() -> Self {
        let db = pg::TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(pg::URL_FILE), &db.url).unwrap();
        Self { dir, _db: Some(db) }
    }

    /// The temp directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// SQLite with its default options.
pub const SQLITE: Backend = Backend {
    ready: || true,
    scratch: Scratch::dir,
    open: |dir, sink| Arc::new(SqliteStore::open_with(dir, StoreOptions::default(), sink).unwrap()),
    sink_thread: "ponte-db-sync",
};

/// SQLite committing as soon as jobs come (no spacing between commits).
pub const SQLITE_UNSPACED: Backend = Backend {
    ready: || true,
    scratch: Scratch::dir,
    open: |dir, sink| {
        let opts = StoreOptions::with_commit_interval(Duration::ZERO);
        Arc::new(SqliteStore::open_with(dir, opts, sink).unwrap())
    },
    sink_thread: "ponte-db-sync",
};

/// PostgreSQL (`PONTE_TEST_PG`, by default the local server's `test`
/// database as `postgres`), a fresh database per test.
pub const POSTGRES: Backend = Backend {
    ready: pg::reachable,
    scratch: Scratch::postgres,
    open: |dir, sink| {
        let url = std::fs::read_to_string(dir.join(pg::URL_FILE)).unwrap();
        let opts = ponte_server::store::PgOptions::default();
        Arc::new(ponte_server::store::PgStore::open_with(&url, opts, sink).unwrap())
    },
    sink_thread: "ponte-pg-writer",
};

/// A sink that drops everything.
pub fn no_sink() -> Arc<dyn Sink> {
    Arc::new(())
}

/// A point in time, `ms` milliseconds after the epoch.
pub fn at(ms: i64) -> ponte_server::store::UnixMillis {
    ponte_server::store::UnixMillis(ms)
}

/// A span of `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A message of `sender` to `to` with id `[id; 16]`, accepted at `now_ms`,
/// expiring at `expires_at_ms`, to a mailbox of up to 1,000 messages.
pub fn msg(
    sender: ponte_server::store::AccountId,
    to: &str,
    id: u8,
    now_ms: i64,
    expires_at_ms: i64,
) -> ponte_server::store::NewMessage {
    ponte_server::store::NewMessage {
        sender,
        message_id: [id; 16],
        recipient: to.into(),
        body: Bytes::from_static(b"body"),
        now: at(now_ms),
        expires_at: at(expires_at_ms),
        max_pending: 1000,
    }
}

/// Like [`msg`], expiring 1,000 s after `now_ms`, with a mailbox limit.
pub fn msg_max(
    sender: ponte_server::store::AccountId,
    to: &str,
    id: u8,
    now_ms: i64,
    max_pending: u32,
) -> ponte_server::store::NewMessage {
    ponte_server::store::NewMessage {
        max_pending,
        ..msg(sender, to, id, now_ms, now_ms + 1_000_000)
    }
}

/// A group message of `sender` to `to` with id `[id; 16]` and group id
/// `[0x6a; 16]`, accepted at `now_ms`, expiring at `expires_at_ms`, to
/// mailboxes of up to 1,000 messages.
pub fn group_msg(
    sender: ponte_server::store::AccountId,
    to: &[&str],
    id: u8,
    now_ms: i64,
    expires_at_ms: i64,
) -> ponte_server::store::NewGroupMessage {
    ponte_server::store::NewGroupMessage {
        sender,
        message_id: [id; 16],
        group_id: [0x6a; 16],
        recipients: to.iter().map(|h| (*h).to_owned()).collect(),
        body: Bytes::from_static(b"group body"),
        now: at(now_ms),
        expires_at: at(expires_at_ms),
        max_pending: 1000,
    }
}

/// Sends `m`, which must be accepted, and returns its seq.
pub async fn accepted_seq(
    store: &dyn Store,
    m: ponte_server::store::NewMessage,
) -> ponte_server::store::Seq {
    match store.send(m).await.unwrap() {
        ponte_server::store::SendOutcome::Accepted { seq, .. } => seq,
        other => panic!("not accepted: {other:?}"),
    }
}

/// The body of an HTTP/1.1 GET of `path` (headers included).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

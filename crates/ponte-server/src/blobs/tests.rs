//! Appends whose flush record is held at the store: a server on
//! 127.0.0.1:0 over a temp directory whose store is wrapped so that the
//! test decides when offset records go through, and real Noise clients.
//!
//! The race of an append's flush and a dropped connection: the record
//! was already with the store when the connection dropped; before, the
//! session dropped the flush with it, so the next connection's append
//! started a new tail at the stored offset (truncating the file there),
//! the late record then moved the offset, and the new tail's record
//! failed and deleted the upload.
#![allow(clippy::unwrap_used)]

use crate::store::*;
use crate::{Server, ServerConfig, Shared};
use bytes::Bytes;
use ponte_transport::{connect, Channel, ClientConfig, Keypair};
use ponte_wire::messages::{
    self, client_frame, server_frame, ClientFrame, ErrorCode, ServerFrame, BLOB_CHUNK_MAX,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// Generous bound on any single wait (never reached when things work).
const WAIT: Duration = Duration::from_secs(20);

/// One offset record on its way to the store.
type Record = (BlobId, u64, u64, oneshot::Sender<Result<bool, StoreError>>);

/// Holds `blob_advance` records while told to. Records go to the store
/// one at a time in the order they were handed over (as the real stores'
/// queues take them), and a record handed over goes through even if its
/// caller stopped waiting (as one already queued at a real store does).
struct Gate {
    /// The store behind, for changes the test makes under a held record.
    inner: Arc<dyn Store>,
    hold: watch::Sender<bool>,
    /// The records held now: `(from, to)`.
    held: watch::Sender<Vec<(u64, u64)>>,
}

impl Gate {
    /// Holds every record from now on.
    fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Lets the held records (and every later one) through.
    fn release(&self) {
        self.hold.send_replace(false);
    }

    /// Waits until a record is held; returns it.
    async fn held(&self) -> (u64, u64) {
        let mut rx = self.held.subscribe();
        let held = tokio::time::timeout(WAIT, rx.wait_for(|h| !h.is_empty()))
            .await
            .expect("no offset record reached the store")
            .unwrap();
        held[0]
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Record>) {
        let mut hold = self.hold.subscribe();
        while let Some((id, from, to, answer)) = rx.recv().await {
            if *hold.borrow_and_update() {
                self.held.send_modify(|h| h.push((from, to)));
                let _ = hold.wait_for(|h| !h).await;
                self.held.send_modify(|h| h.retain(|r| *r != (from, to)));
            }
            let _ = answer.send(self.inner.blob_advance(id, from, to).await);
        }
    }
}

/// A store whose `blob_advance` records pass a [`Gate`].
struct Gated {
    gate: Arc<Gate>,
    records: mpsc::UnboundedSender<Record>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gated")
    }
}

fn gated(store: Box<dyn Store>) -> (Box<dyn Store>, Arc<Gate>) {
    let gate = Arc::new(Gate {
        inner: Arc::from(store),
        hold: watch::Sender::new(false),
        held: watch::Sender::new(Vec::new()),
    });
    let (records, rx) = mpsc::unbounded_channel();
    tokio::spawn(Arc::clone(&gate).run(rx));
    let gate2 = Arc::clone(&gate);
    (Box::new(Gated { gate, records }), gate2)
}

impl Store for Gated {
    fn blob_advance(&self, id: BlobId, from: u64, to: u64) -> StoreFuture<'_, bool> {
        // Handed over at the call, as the flush expects of a store.
        let (tx, rx) = oneshot::channel();
        let sent = self.records.send((id, from, to, tx));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn register(&self, a: NewAccount) -> StoreFuture<'_, RegisterOutcome> {
        self.gate.inner.register(a)
    }
    fn upload_keys(
        &self,
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
    ) -> StoreFuture<'_, UploadOutcome> {
        self.gate
            .inner
            .upload_keys(account, one_time, fallback, max_one_time)
    }
    fn claim(&self, handle: String) -> StoreFuture<'_, ClaimOutcome> {
        self.gate.inner.claim(handle)
    }
    fn send(&self, m: NewMessage) -> StoreFuture<'_, SendOutcome> {
        self.gate.inner.send(m)
    }
    fn send_group(&self, m: NewGroupMessage) -> StoreFuture<'_, GroupSendOutcome> {
        self.gate.inner.send_group(m)
    }
    fn ack(
        &self,
        account: AccountId,
        seqs: Vec<Seq>,
        now: UnixMillis,
        notice_expires_at: UnixMillis,
    ) -> StoreFuture<'_, AckOutcome> {
        self.gate.inner.ack(account, seqs, now, notice_expires_at)
    }
    fn expire(
        &self,
        now: UnixMillis,
        retention: Duration,
        notice_ttl: Duration,
    ) -> StoreFuture<'_, ExpireOutcome> {
        self.gate.inner.expire(now, retention, notice_ttl)
    }
    fn login_info(&self, noise_key: [u8; 32]) -> StoreFuture<'_, Option<LoginInfo>> {
        self.gate.inner.login_info(noise_key)
    }
    fn account_by_handle(&self, handle: String) -> StoreFuture<'_, Option<AccountInfo>> {
        self.gate.inner.account_by_handle(handle)
    }
    fn key_counts(&self, account: AccountId) -> StoreFuture<'_, KeyCounts> {
        self.gate.inner.key_counts(account)
    }
    fn mailbox_len(&self, account: AccountId) -> StoreFuture<'_, u32> {
        self.gate.inner.mailbox_len(account)
    }
    fn fetch_mailbox(
        &self,
        owner: AccountId,
        after: Seq,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MailItem>> {
        self.gate.inner.fetch_mailbox(owner, after, limit)
    }
    fn blob_create(&self, b: NewBlob) -> StoreFuture<'_, BlobCreateOutcome> {
        self.gate.inner.blob_create(b)
    }
    fn blob(&self, id: BlobId) -> StoreFuture<'_, Option<BlobInfo>> {
        self.gate.inner.blob(id)
    }
    fn blob_finish(&self, id: BlobId) -> StoreFuture<'_, bool> {
        self.gate.inner.blob_finish(id)
    }
    fn blob_fetched(&self, id: BlobId, account: AccountId) -> StoreFuture<'_, ()> {
        self.gate.inner.blob_fetched(id, account)
    }
    fn blob_delete(&self, ids: Vec<BlobId>) -> StoreFuture<'_, u64> {
        self.gate.inner.blob_delete(ids)
    }
    fn blobs_due(&self, now: UnixMillis, limit: usize) -> StoreFuture<'_, Vec<BlobId>> {
        self.gate.inner.blobs_due(now, limit)
    }
    fn blob_totals(&self) -> StoreFuture<'_, BlobTotals> {
        self.gate.inner.blob_totals()
    }
    fn stats(&self) -> &StoreStats {
        self.gate.inner.stats()
    }
    fn close(&self) {
        self.gate.inner.close()
    }
}

/// A server whose store passes a [`Gate`], running until dropped.
struct Running {
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    addr: std::net::SocketAddr,
    key: [u8; 32],
    _stop: oneshot::Sender<()>,
}

async fn start(dir: &Path) -> Running {
    let cfg = ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let server = Server::bind_wrapping(cfg, None, move |store| {
        let (store, gate) = gated(store);
        tx.send(gate).unwrap();
        store
    })
    .await
    .unwrap();
    let gate = rx.recv().unwrap();
    let shared = Arc::clone(&server.shared);
    let addr = server.local_addr().unwrap();
    let key = server.public_key();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        shared,
        gate,
        addr,
        key,
        _stop: stop,
    }
}

/// A logged-in device of one account.
struct Client {
    ch: Channel<TcpStream>,
    next_rid: u64,
}

impl Client {
    /// Connects as `device` and logs in.
    async fn login(server: &Running, device: &Keypair) -> Self {
        let sock = TcpStream::connect(server.addr).await.unwrap();
        let ch = connect(sock, &ClientConfig::new(device.clone(), server.key))
            .await
            .unwrap();
        let mut c = Self { ch, next_rid: 1 };
        let r = c
            .request(client_frame::Body::Login(messages::Login {}))
            .await;
        assert!(matches!(r, server_frame::Body::LoggedIn(_)), "{r:?}");
        c
    }

    /// Sends a request without waiting for its answer; returns its id.
    async fn fire(&mut self, body: client_frame::Body) -> u64 {
        let rid = self.next_rid;
        self.next_rid += 1;
        let frame = ClientFrame {
            request_id: rid,
            body: Some(body),
        };
        self.ch.send(&frame).await.unwrap();
        rid
    }

    /// The answer to request `rid` (pushes are skipped).
    async fn answer(&mut self, rid: u64) -> server_frame::Body {
        self.answer_within(rid, WAIT)
            .await
            .expect("no answer in time")
    }

    /// The answer to request `rid` if it comes within `wait`.
    async fn answer_within(&mut self, rid: u64, wait: Duration) -> Option<server_frame::Body> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // (Receiving is cancel-safe: a frame half read stays buffered.)
            let f = tokio::time::timeout_at(deadline, self.ch.recv::<ServerFrame>())
                .await
                .ok()?
                .unwrap()
                .expect("connection closed");
            if f.request_id == rid {
                return Some(f.body.unwrap());
            }
            assert_eq!(f.request_id, 0, "an answer to another request");
        }
    }

    async fn request(&mut self, body: client_frame::Body) -> server_frame::Body {
        let rid = self.fire(body).await;
        self.answer(rid).await
    }
}

fn append(id: BlobId, offset: u64, chunk: &[u8]) -> client_frame::Body {
    client_frame::Body::UploadAppend(messages::UploadAppend {
        upload_id: Bytes::copy_from_slice(&id),
        offset,
        chunk: Bytes::copy_from_slice(chunk),
    })
}

fn upload_state(b: server_frame::Body) -> messages::UploadState {
    match b {
        server_frame::Body::UploadState(s) => s,
        other => panic!("expected UploadState, got {other:?}"),
    }
}

/// An error's code and offset.
fn refusal(b: server_frame::Body) -> (ErrorCode, u64) {
    match b {
        server_frame::Body::Error(e) => (ErrorCode::try_from(e.code).unwrap(), e.offset),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A registered device (put in the store directly: the test is about
/// uploads), an upload of `data` created over `c`, and its id.
async fn setup(server: &Running, data: &[u8]) -> (Keypair, Client, BlobId) {
    let device = Keypair::generate();
    let created = server
        .shared
        .store
        .register(NewAccount {
            handle: "uploader".into(),
            noise_key: device.public(),
            curve25519: [1; 32],
            ed25519: [2; 32],
            signature: vec![0; 64],
            invite: None,
            invite_required: false,
            now: UnixMillis::now(),
        })
        .await
        .unwrap();
    assert!(
        matches!(created, RegisterOutcome::Created(_)),
        "{created:?}"
    );
    let mut c = Client::login(server, &device).await;
    let id: BlobId = rand::random();
    let s = upload_state(
        c.request(client_frame::Body::UploadCreate(messages::UploadCreate {
            upload_id: Bytes::copy_from_slice(&id),
            size: data.len() as u64,
            sha256: Bytes::copy_from_slice(&Sha256::digest(data)),
            recipients: 1,
        }))
        .await,
    );
    assert_eq!((s.offset, s.finished), (0, false));
    (device, c, id)
}

fn random_data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

/// The finished blob's bytes on disk hash to `data`'s SHA-256.
fn assert_stored(dir: &Path, id: &BlobId, data: &[u8]) {
    let stored = std::fs::read(dir.join(super::BLOB_DIR).join(super::file_name(id))).unwrap();
    assert_eq!(stored.len(), data.len());
    assert_eq!(Sha256::digest(&stored), Sha256::digest(data), "sha256");
}

fn partial(dir: &Path, id: &BlobId) -> std::path::PathBuf {
    dir.join(super::BLOB_DIR)
        .join(super::PARTIAL_DIR)
        .join(super::file_name(id))
}

/// A connection drops while its append's offset record is at the store
/// (held there): the next connection's append goes on from where that
/// append ended (told so at once, while the record is still held), and
/// once the record commits the upload completes whole and matching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_with_a_record_at_the_store_keeps_the_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path()).await;
    let c = BLOB_CHUNK_MAX;
    let data = random_data(3 * c);
    let (device, mut a, id) = setup(&server, &data).await;

    server.gate.hold();
    a.fire(append(id, 0, &data[..c])).await;
    assert_eq!(server.gate.held().await, (0, c as u64));
    drop(a);
    // The server has dropped the session (and with it the append's
    // request) once its connection count is back to none.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.shared.metrics.connections_open.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the session stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut b = Client::login(&server, &device).await;
    let stored = upload_state(
        b.request(client_frame::Body::UploadOffset(messages::UploadOffset {
            upload_id: Bytes::copy_from_slice(&id),
        }))
        .await,
    );
    assert_eq!(stored.offset, 0, "the record is still held");
    // At the stored offset: the tail of the dropped append is still there
    // and says where it ended, at once.
    let rid = b.fire(append(id, 0, &data[..c])).await;
    let early = b.answer_within(rid, WAIT).await;
    server.gate.release();
    let Some(answer) = early else {
        panic!(
            "no answer while the record was held; once it went through: {:?}",
            b.answer(rid).await
        );
    };
    let (code, offset) = refusal(answer);
    assert_eq!((code, offset), (ErrorCode::OffsetMismatch, c as u64));
    let s = upload_state(b.request(append(id, c as u64, &data[c..2 * c])).await);
    assert_eq!((s.offset, s.finished), (2 * c as u64, false));
    let s = upload_state(b.request(append(id, 2 * c as u64, &data[2 * c..])).await);
    assert_eq!((s.offset, s.finished), (3 * c as u64, true));
    assert_stored(tmp.path(), &id, &data);
}

/// The stored offset moves while an append's record is held (as another
/// node's append to the same upload would move it): the record is refused,
/// but the upload is there, so the append is answered `OFFSET_MISMATCH`
/// with the stored offset and its file stays; the upload goes on from
/// there and completes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_moved_under_a_record_is_a_mismatch_and_keeps_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path()).await;
    let c = BLOB_CHUNK_MAX;
    let data = random_data(2 * c);
    let (_device, mut a, id) = setup(&server, &data).await;

    server.gate.hold();
    let rid = a.fire(append(id, 0, &data[..c])).await;
    assert_eq!(server.gate.held().await, (0, c as u64));
    assert!(server
        .gate
        .inner
        .blob_advance(id, 0, c as u64)
        .await
        .unwrap());
    server.gate.release();
    let (code, offset) = refusal(a.answer(rid).await);
    assert_eq!((code, offset), (ErrorCode::OffsetMismatch, c as u64));
    assert!(partial(tmp.path(), &id).is_file(), "the partial file stays");

    let s = upload_state(a.request(append(id, c as u64, &data[c..])).await);
    assert_eq!((s.offset, s.finished), (2 * c as u64, true));
    assert_stored(tmp.path(), &id, &data);
}

/// The upload is deleted while an append's record is held (as the sweep
/// deletes an expired one): the record is refused, the append is answered
/// `UNKNOWN_BLOB`, and the partial file it wrote is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_deleted_under_a_record_loses_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path()).await;
    let c = BLOB_CHUNK_MAX;
    let data = random_data(2 * c);
    let (_device, mut a, id) = setup(&server, &data).await;

    server.gate.hold();
    let rid = a.fire(append(id, 0, &data[..c])).await;
    assert_eq!(server.gate.held().await, (0, c as u64));
    assert!(
        partial(tmp.path(), &id).is_file(),
        "written before its flush"
    );
    assert_eq!(server.gate.inner.blob_delete(vec![id]).await.unwrap(), 1);
    server.gate.release();
    let (code, _) = refusal(a.answer(rid).await);
    assert_eq!(code, ErrorCode::UnknownBlob);
    assert!(!partial(tmp.path(), &id).exists(), "the partial file went");
    let (code, _) = refusal(a.request(append(id, 0, &data[..c])).await);
    assert_eq!(code, ErrorCode::UnknownBlob);
}

/// The upload's file lacks bytes the store counts (as on a node whose
/// blob directory is not the other nodes'): the append is refused
/// `UNAVAILABLE` and the recorded offset moves back to what the file
/// holds, nothing filled in; the upload goes on from there and completes
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shorter_than_its_recorded_offset_moves_the_offset_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path()).await;
    let c = BLOB_CHUNK_MAX;
    let data = random_data(2 * c);
    let (_device, mut a, id) = setup(&server, &data).await;
    let s = upload_state(a.request(append(id, 0, &data[..c])).await);
    assert_eq!(s.offset, c as u64);
    std::fs::remove_file(partial(tmp.path(), &id)).unwrap();

    let (code, _) = refusal(a.request(append(id, c as u64, &data[c..])).await);
    assert_eq!(code, ErrorCode::Unavailable);
    let offset = client_frame::Body::UploadOffset(messages::UploadOffset {
        upload_id: Bytes::copy_from_slice(&id),
    });
    assert_eq!(upload_state(a.request(offset).await).offset, 0);
    let s = upload_state(a.request(append(id, 0, &data[..c])).await);
    assert_eq!((s.offset, s.finished), (c as u64, false));
    let s = upload_state(a.request(append(id, c as u64, &data[c..])).await);
    assert_eq!((s.offset, s.finished), (2 * c as u64, true));
    assert_stored(tmp.path(), &id, &data);
}

//! The storage seam: the one trait through which the server talks to its
//! store. [`SqliteStore`](super::SqliteStore) is its implementation; another
//! backend implements [`Store`] and runs the same behavioural tests (the
//! test suite's bodies take a store opener).
//!
//! What every implementation guarantees:
//!
//! - **Durable before answered**: a write's future resolves once what it
//!   stored survives a crash (or with an error, having stored nothing).
//! - **One hand-over, in commit order**: every committed item meant for a
//!   connection (messages, receipts, and wakes for expired notices) goes to
//!   the store's [`Sink`] once durable and before the write that
//!   stored it is answered, batches in commit order, so a connection gets
//!   items in seq order. A panic in the sink is caught.
//! - **Seqs never reused**: every mailbox item gets a seq above every seq
//!   handed out before, across restarts.
//! - **One snapshot per mailbox read**: `fetch_mailbox` returns everything
//!   committed up to the highest seq it returns.

use super::types::*;
use super::{BlobCreateOutcome, BlobId, BlobInfo, BlobTotals, NewBlob};
use super::{StoreError, StoreStats};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What a store call returns: boxed, so that the server can hold any
/// backend as a `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store of accounts, keys and mailboxes.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Registers an account (consuming an invite when one is required).
    fn register(&self, a: NewAccount) -> StoreFuture<'_, RegisterOutcome>;

    /// Adds one-time keys and/or replaces the fallback key; nothing is
    /// stored if the account would hold more than `max_one_time` one-time
    /// keys.
    fn upload_keys(
        &self,
        account: AccountId,
        one_time: Vec<KeyRecord>,
        fallback: Option<KeyRecord>,
        max_one_time: u32,
    ) -> StoreFuture<'_, UploadOutcome>;

    /// Takes a one-time key of `handle` (its fallback key when none is
    /// left).
    fn claim(&self, handle: String) -> StoreFuture<'_, ClaimOutcome>;

    /// Stores a message; a resend of the same `(sender, message_id)` is a
    /// duplicate answered with its first accept time.
    fn send(&self, m: NewMessage) -> StoreFuture<'_, SendOutcome>;

    /// Stores a group message: the body once, and an entry referring to it
    /// for every recipient that exists, is not the sender and has room
    /// (the others are listed as refused), all in one commit. Each entry is
    /// then a message of its own (acked, receipted and expired per
    /// recipient); the body goes with the last entry. A resend of the same
    /// `(sender, message_id)`, 1:1 or group, is a duplicate that stores
    /// nothing.
    fn send_group(&self, m: NewGroupMessage) -> StoreFuture<'_, GroupSendOutcome>;

    /// Acknowledges mailbox items of `account` (unknown seqs are ignored);
    /// each acknowledged message becomes a delivery receipt for its sender,
    /// kept until `notice_expires_at`.
    fn ack(
        &self,
        account: AccountId,
        seqs: Vec<Seq>,
        now: UnixMillis,
        notice_expires_at: UnixMillis,
    ) -> StoreFuture<'_, AckOutcome>;

    /// Expires items past their deadline: messages become expired notices
    /// for their senders (kept `notice_ttl`), whose owners are woken;
    /// uncollected notices are dropped, and the dedup log forgets ids older
    /// than `retention`. Handles a bounded batch: run again while the
    /// outcome says `more`.
    fn expire(
        &self,
        now: UnixMillis,
        retention: Duration,
        notice_ttl: Duration,
    ) -> StoreFuture<'_, ExpireOutcome>;

    /// The account of a device key with its key counts and waiting items:
    /// one read for a login.
    fn login_info(&self, noise_key: [u8; 32]) -> StoreFuture<'_, Option<LoginInfo>>;

    /// The account with a handle.
    fn account_by_handle(&self, handle: String) -> StoreFuture<'_, Option<AccountInfo>>;

    /// One-time key count and fallback presence.
    fn key_counts(&self, account: AccountId) -> StoreFuture<'_, KeyCounts>;

    /// Number of mailbox items (messages, receipts, notices) waiting for
    /// `account`.
    fn mailbox_len(&self, account: AccountId) -> StoreFuture<'_, u32>;

    /// Up to `limit` mailbox items of `owner` after `after`, in seq order,
    /// from one snapshot.
    fn fetch_mailbox(
        &self,
        owner: AccountId,
        after: Seq,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MailItem>>;

    /// Starts an upload: a row for blob `b.id` at offset 0, unless the id
    /// exists (the owner's own create again: `Existing`) or the owner's
    /// blobs would exceed `b.quota`.
    fn blob_create(&self, b: NewBlob) -> StoreFuture<'_, BlobCreateOutcome>;

    /// The upload or blob `id`.
    fn blob(&self, id: BlobId) -> StoreFuture<'_, Option<BlobInfo>>;

    /// Records bytes `from..to` of an unfinished upload as acknowledged;
    /// false (nothing changed) when its offset is not `from`.
    fn blob_advance(&self, id: BlobId, from: u64, to: u64) -> StoreFuture<'_, bool>;

    /// Marks a complete upload finished (downloadable); false when it is
    /// not complete.
    fn blob_finish(&self, id: BlobId) -> StoreFuture<'_, bool>;

    /// Records that `account` read blob `id` to its end.
    fn blob_fetched(&self, id: BlobId, account: AccountId) -> StoreFuture<'_, ()>;

    /// Deletes the rows of `ids` (their files go first); returns how many
    /// existed.
    fn blob_delete(&self, ids: Vec<BlobId>) -> StoreFuture<'_, u64>;

    /// Up to `limit` blobs to delete: expired, or fetched by every
    /// recipient.
    fn blobs_due(&self, now: UnixMillis, limit: usize) -> StoreFuture<'_, Vec<BlobId>>;

    /// Finished blobs and stored bytes.
    fn blob_totals(&self) -> StoreFuture<'_, BlobTotals>;

    /// Takes a token from the service-wide token bucket `key` (with `take`
    /// false: only says whether one is there), for limits that count
    /// across every node of a service (registrations per address). `None`:
    /// this store keeps no such buckets, the node's own (in memory) count,
    /// which is right for a store only one node opens.
    fn shared_token(
        &self,
        key: Vec<u8>,
        rate: ponte_wire::limit::Rate,
        take: bool,
    ) -> StoreFuture<'_, Option<bool>> {
        let _ = (key, rate, take);
        Box::pin(async { Ok(None) })
    }

    /// Commit, write and flush figures (shared handles).
    fn stats(&self) -> &StoreStats;

    /// Finishes the queued writes and stops (blocking). Dropping the store
    /// does the same.
    fn close(&self);
}

/// Where committed items go: the server's registry of online devices.
///
/// The store calls it on its sync thread with every committed batch's
/// items ([`Committed`]), in commit order, once the batch is durable and
/// before any job of it is answered. So a connection gets items in seq
/// order, and an expiry's wake comes before anything committed after it.
/// It must not block (every later answer waits for it); a panic in it is
/// caught and logged, and costs a push, never the store.
pub trait Sink: Send + Sync + 'static {
    /// Takes the items of one committed batch.
    fn committed(&self, items: Vec<Committed>);
}

/// Hands nothing over.
impl Sink for () {
    fn committed(&self, _items: Vec<Committed>) {}
}

//! The store's recorded offset of one upload, for the tail tests: a
//! compare and set (`blob_advance`, as both stores do it) on a counter,
//! whose records can be held at a [`Gate`] until the test lets them go.
#![allow(clippy::unwrap_used)]

use super::*;
use futures::future::BoxFuture;
use std::time::Duration;
use tokio::sync::watch;

/// Generous bound on any single wait (never reached when things work).
const WAIT: Duration = Duration::from_secs(20);

/// The recorded offset. Records go through one at a time in the order
/// they were handed over (as the real stores' queues take them), whether
/// or not their callers still wait.
pub(super) struct Recorded {
    at: Mutex<u64>,
    /// Records handed over so far.
    handed: Mutex<u64>,
    /// Records gone through so far.
    done: watch::Sender<u64>,
}

impl Recorded {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            at: Mutex::new(0),
            handed: Mutex::new(0),
            done: watch::Sender::new(0),
        })
    }

    pub(super) fn get(&self) -> u64 {
        *lock(&self.at)
    }

    /// Records handed over so far.
    pub(super) fn handed(&self) -> u64 {
        *lock(&self.handed)
    }

    /// `blob_advance`: moves the offset from `from` to `to`, after the
    /// records handed over before it and once `gate` (if any) opens;
    /// false if the offset was not at `from`.
    fn advance(
        self: &Arc<Self>,
        from: u64,
        to: u64,
        gate: Option<Arc<Gate>>,
    ) -> BoxFuture<'static, Result<bool, String>> {
        let me = Arc::clone(self);
        let ticket = {
            let mut handed = lock(&self.handed);
            *handed += 1;
            *handed - 1
        };
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.reached.send_replace(true);
                let mut open = gate.open.subscribe();
                let _ = open.wait_for(|o| *o).await;
            }
            let mut done = me.done.subscribe();
            let _ = done.wait_for(|d| *d == ticket).await;
            let moved = {
                let mut at = lock(&me.at);
                let moved = *at == from;
                if moved {
                    *at = to;
                }
                moved
            };
            me.done.send_modify(|d| *d += 1);
            Ok(moved)
        })
    }

    /// Records that go through as soon as the ones before them did.
    pub(super) fn record(self: &Arc<Self>) -> Record {
        let me = Arc::clone(self);
        Arc::new(move |from, to| me.advance(from, to, None))
    }

    /// Records that wait at `gate` until it opens (and the ones handed
    /// over after them wait behind them).
    pub(super) fn through(self: &Arc<Self>, gate: &Arc<Gate>) -> Record {
        let (me, gate) = (Arc::clone(self), Arc::clone(gate));
        Arc::new(move |from, to| me.advance(from, to, Some(Arc::clone(&gate))))
    }

    /// Records that fail (a store that is down).
    pub(super) fn failing() -> Record {
        Arc::new(|_, _| Box::pin(async { Err("the store is down".to_owned()) }))
    }
}

/// Holds records until opened.
pub(super) struct Gate {
    open: watch::Sender<bool>,
    reached: watch::Sender<bool>,
}

impl Gate {
    pub(super) fn closed() -> Arc<Self> {
        Arc::new(Self {
            open: watch::Sender::new(false),
            reached: watch::Sender::new(false),
        })
    }

    /// Waits until a record waits here: its chunk is written and synced.
    pub(super) async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|r| *r))
            .await
            .expect("no record reached the gate")
            .unwrap();
    }

    pub(super) fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Queues `data[at..end]` on `tail` (turn held) from its next offset, with
/// `record`; the answer, once it comes.
pub(super) async fn append(
    tail: &TailHold,
    recorded: u64,
    data: &[u8],
    end: usize,
    record: Record,
) -> impl std::future::Future<Output = Flushed> {
    let _turn = tail.turn().await;
    let at = tail.next_offset(recorded).unwrap();
    let chunk = Bytes::copy_from_slice(&data[at as usize..end]);
    tail.append(at, chunk, record)
}

/// Waits for an answer, at most [`WAIT`].
pub(super) async fn answer(f: impl std::future::Future<Output = Flushed>) -> Flushed {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("an append was not answered")
}

/// Waits until no tail of `id` is left (its workers may let it go a
/// moment after the answer that poisoned it), at most [`WAIT`].
pub(super) async fn gone(blobs: &Blobs, id: BlobId) {
    let left = tokio::time::timeout(WAIT, async {
        while lock(&blobs.tails).contains_key(&id) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    left.await.expect("the tail outlived its appends");
}

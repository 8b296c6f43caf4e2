//! A connection's queue of encoded frames, between its session (which
//! pushes) and its writer task (which drains into the socket).
//!
//! Why not a `tokio::sync::mpsc` channel: a bounded tokio channel allocates
//! its first block of 32 slots when it is created, about a kilobyte per
//! connection held for the connection's whole life, and most connections
//! are idle. This queue is a `VecDeque` that allocates when frames come and
//! is freed when it drains, behind a mutex (one producer, one consumer,
//! never contended for long) with two `Notify`s.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;

/// Why `try_push` did not queue a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryPushError {
    /// The queue is full: the frame, back.
    Full(Vec<u8>),
    /// The writer is gone.
    Closed,
}

/// Why `push` did not queue a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The writer is gone (socket error or closing).
    Closed,
    /// The queue stayed full for the whole wait: a slow consumer.
    TimedOut,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Vec<u8>>,
    closed: bool,
    /// The writer gave up because the socket accepted no byte for too long
    /// (see `Receiver::stalled`).
    stalled: bool,
    /// The session waiting for a stall report. A waker here rather than a
    /// `Notify`: its future would sit in every connection's select loop.
    stall_waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Frames were queued, or the queue closed (the writer waits on it).
    readable: Notify,
    /// Frames were taken, or the queue closed (a full pusher waits on it).
    writable: Notify,
}

/// The session's end: pushes frames. Dropping it closes the queue; the
/// writer still drains what was queued.
#[derive(Debug)]
pub(crate) struct Sender {
    shared: Arc<Shared>,
    cap: usize,
}

/// The writer's end.
#[derive(Debug)]
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

/// A queue holding at most `cap` frames.
pub(crate) fn outbox(cap: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared::default());
    (
        Sender {
            shared: Arc::clone(&shared),
            cap: cap.max(1),
        },
        Receiver { shared },
    )
}

impl Sender {
    /// Queues `frame` if there is room; gives it back if the queue is full.
    pub fn try_push(&self, frame: Vec<u8>) -> Result<(), TryPushError> {
        {
            let Ok(mut st) = self.shared.state.lock() else {
                return Err(TryPushError::Closed);
            };
            if st.closed {
                return Err(TryPushError::Closed);
            }
            if st.frames.len() >= self.cap {
                return Err(TryPushError::Full(frame));
            }
            st.frames.push_back(frame);
        }
        self.shared.readable.notify_one();
        Ok(())
    }

    /// Queues `frame`, waiting up to `timeout` for room.
    pub async fn push(&self, mut frame: Vec<u8>, timeout: Duration) -> Result<(), PushError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let room = self.shared.writable.notified();
            tokio::pin!(room);
            // Registered before the check: a drain in between still wakes us.
            room.as_mut().enable();
            match self.try_push(frame) {
                Ok(()) => return Ok(()),
                Err(TryPushError::Closed) => return Err(PushError::Closed),
                Err(TryPushError::Full(f)) => frame = f,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(PushError::TimedOut);
            }
        }
    }
}

impl Sender {
    /// Whether the writer gave up on a stalled socket.
    pub fn is_stalled(&self) -> bool {
        self.shared
            .state
            .lock()
            .map(|st| st.stalled)
            .unwrap_or(false)
    }

    /// Resolves once the writer reports a stalled socket; never otherwise.
    /// (One waiter at a time: the session.)
    pub fn stalled(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let Ok(mut st) = self.shared.state.lock() else {
                return Poll::Pending;
            };
            if st.stalled {
                return Poll::Ready(());
            }
            match &st.stall_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.stall_waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.closed = true;
        }
        self.shared.readable.notify_one();
    }
}

impl Receiver {
    /// Takes up to `max` queued frames, waiting for at least one; `None`
    /// once the queue is closed and drained.
    pub async fn take(&mut self, max: usize) -> Option<Vec<Vec<u8>>> {
        loop {
            let ready = self.shared.readable.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let Ok(mut st) = self.shared.state.lock() else {
                    return None;
                };
                if !st.frames.is_empty() {
                    let n = max.max(1).min(st.frames.len());
                    let taken: Vec<Vec<u8>> = st.frames.drain(..n).collect();
                    if st.frames.is_empty() {
                        // An idle connection keeps no buffer.
                        st.frames = VecDeque::new();
                    }
                    drop(st);
                    self.shared.writable.notify_one();
                    return Some(taken);
                }
                if st.closed {
                    return None;
                }
            }
            ready.await;
        }
    }
}

impl Receiver {
    /// The socket accepted no byte for too long while frames waited: closes
    /// the queue, frees what it held and wakes the session, which closes
    /// the connection as a slow consumer.
    pub fn stalled(&mut self) {
        let waker = self.shared.state.lock().ok().and_then(|mut st| {
            st.closed = true;
            st.stalled = true;
            st.frames = VecDeque::new();
            st.stall_waker.take()
        });
        if let Some(w) = waker {
            w.wake();
        }
        self.shared.writable.notify_one();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // The writer is gone: pushes fail from now on.
        if let Ok(mut st) = self.shared.state.lock() {
            st.closed = true;
            st.frames = VecDeque::new();
        }
        self.shared.writable.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_and_the_queue_drains_after_close() {
        let (tx, mut rx) = outbox(4);
        for i in 0..3u8 {
            tx.try_push(vec![i]).unwrap();
        }
        drop(tx);
        assert_eq!(rx.take(2).await.unwrap(), vec![vec![0], vec![1]]);
        assert_eq!(rx.take(8).await.unwrap(), vec![vec![2]]);
        assert_eq!(rx.take(8).await, None);
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_writer_then_times_out() {
        tokio::time::pause();
        let (tx, mut rx) = outbox(2);
        tx.try_push(vec![1]).unwrap();
        tx.try_push(vec![2]).unwrap();
        assert_eq!(tx.try_push(vec![3]), Err(TryPushError::Full(vec![3])));
        // The writer takes one: the waiting push gets in.
        let push = tx.push(vec![3], Duration::from_secs(5));
        let take = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rx.take(1).await
        };
        let (pushed, taken) = tokio::join!(push, take);
        assert_eq!(pushed, Ok(()));
        assert_eq!(taken.unwrap(), vec![vec![1]]);
        // Nobody drains: the push times out.
        tx.try_push(vec![4]).unwrap_err();
        let r = tx.push(vec![4], Duration::from_secs(5)).await;
        assert_eq!(r, Err(PushError::TimedOut));
    }

    #[tokio::test]
    async fn pushes_fail_once_the_writer_is_gone() {
        let (tx, rx) = outbox(2);
        drop(rx);
        assert_eq!(tx.try_push(vec![1]), Err(TryPushError::Closed));
        assert_eq!(
            tx.push(vec![1], Duration::from_secs(1)).await,
            Err(PushError::Closed)
        );
    }

    #[tokio::test]
    async fn a_stall_report_wakes_the_session_and_closes_the_queue() {
        let (tx, mut rx) = outbox(4);
        tx.try_push(vec![1]).unwrap();
        assert!(!tx.is_stalled());
        let waiter = async { tx.stalled().await };
        let report = async {
            tokio::task::yield_now().await;
            rx.stalled();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(waiter, report)
        })
        .await
        .unwrap();
        assert!(tx.is_stalled());
        assert_eq!(tx.try_push(vec![2]), Err(TryPushError::Closed));
        // Already stalled: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), tx.stalled())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_writer_wakes_for_a_push_made_while_it_waits() {
        let (tx, mut rx) = outbox(2);
        let writer = tokio::spawn(async move { rx.take(4).await });
        tokio::task::yield_now().await;
        tx.try_push(vec![7]).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap(), vec![vec![7]]);
    }
}

//! Load on a `ponte server`, spoken with `ponte-transport` and the protobuf
//! messages directly (no `ponte-client`: bodies are opaque bytes of the
//! ciphertext size; end-to-end encryption is client-side work the server
//! never does).
//!
//! Accounts are derived from `(seed, index)`, so the registering process and
//! later processes agree on keys and handles without sharing files.

use super::common::{self, LoadResult, Phase};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use futures::{FutureExt as _, StreamExt as _};
use ponte_transport::{Channel, ChannelReader, ChannelWriter, Keypair};
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{
    client_frame, registration_signing_string, server_frame, Ack, ClientFrame, DeviceKeys,
    ErrorCode, Login, Register, SendMessage, ServerFrame,
};
use prost::Message as _;
use rand::{RngCore as _, SeedableRng as _};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

type Reader = ChannelReader<ReadHalf<TcpStream>>;
type Writer = ChannelWriter<WriteHalf<TcpStream>>;

/// Most frames read before acknowledging what they carried.
const ACK_BATCH: usize = 512;
/// Most sends written with one call.
const SEND_BATCH: usize = 64;
/// Deadline of one request/answer exchange (register, login).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One bench account: device key, identity key, handle.
#[derive(Debug)]
pub struct Account {
    /// Handle `bench<i>`.
    pub handle: String,
    noise: Keypair,
    ed: SigningKey,
    curve: [u8; 32],
}

/// The account number `i` of the run with this seed.
#[must_use]
pub fn account(seed: u32, i: u32) -> Account {
    let mut rng = rand::rngs::StdRng::seed_from_u64((u64::from(seed) << 32) | u64::from(i));
    let mut noise = [0u8; 32];
    let mut ed = [0u8; 32];
    let mut curve = [0u8; 32];
    rng.fill_bytes(&mut noise);
    rng.fill_bytes(&mut ed);
    rng.fill_bytes(&mut curve);
    Account {
        handle: handle(i),
        noise: Keypair::from_secret(noise),
        ed: SigningKey::from_bytes(&ed),
        curve,
    }
}

/// The handle of account `i`.
#[must_use]
pub fn handle(i: u32) -> String {
    format!("bench{i}")
}

/// Sends `body` as request 1 and returns the answer with request id 1.
async fn request(
    ch: &mut Channel<TcpStream>,
    body: client_frame::Body,
) -> anyhow::Result<server_frame::Body> {
    ch.send(&ClientFrame {
        request_id: 1,
        body: Some(body),
    })
    .await?;
    let work = async {
        // Pushes (key counts, deliveries) may come first; bounded.
        for _ in 0..10_000 {
            let Some(f) = ch.recv::<ServerFrame>().await? else {
                bail!("server closed the connection");
            };
            if f.request_id == 1 {
                return f.body.context("answer without body");
            }
        }
        bail!("no answer among 10,000 frames")
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .context("request timed out")?
}

/// Registers account `i` (an existing registration of the same device counts
/// as done).
pub async fn register(addr: &ServerAddress, seed: u32, i: u32) -> anyhow::Result<()> {
    let a = account(seed, i);
    let mut ch = ponte_transport::connect_tcp(addr, a.noise.clone()).await?;
    let ed_pub = a.ed.verifying_key().to_bytes();
    let signed = registration_signing_string(&a.handle, &a.curve, &ed_pub, &a.noise.public());
    let sig = a.ed.sign(signed.as_bytes()).to_bytes();
    let answer = request(
        &mut ch,
        client_frame::Body::Register(Register {
            handle: a.handle.clone(),
            keys: Some(DeviceKeys {
                curve25519: Bytes::copy_from_slice(&a.curve),
                ed25519: Bytes::copy_from_slice(&ed_pub),
            }),
            signature: Bytes::copy_from_slice(&sig),
            invite: String::new(),
        }),
    )
    .await?;
    let _ = ch.shutdown().await;
    match answer {
        server_frame::Body::Registered(_) => Ok(()),
        server_frame::Body::Error(e) if e.code == ErrorCode::AlreadyRegistered as i32 => Ok(()),
        other => bail!("register {}: {other:?}", a.handle),
    }
}

/// Connects and logs in as account `i`.
pub async fn login(addr: &ServerAddress, seed: u32, i: u32) -> anyhow::Result<Channel<TcpStream>> {
    let a = account(seed, i);
    let mut ch = ponte_transport::connect_tcp(addr, a.noise).await?;
    match request(&mut ch, client_frame::Body::Login(Login {})).await? {
        server_frame::Body::LoggedIn(_) => Ok(ch),
        other => bail!("login {}: {other:?}", a.handle),
    }
}

/// Runs `f(i)` for every index with at most `concurrency` at once; retries
/// a failed one twice. Returns the results in completion order.
pub(super) async fn for_each<T, F, Fut>(
    indices: Vec<u32>,
    concurrency: usize,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let f = &f;
    let results: Vec<anyhow::Result<T>> = futures::stream::iter(indices)
        .map(|i| async move {
            let mut last = None;
            for attempt in 0..3u64 {
                match f(i).await {
                    Ok(v) => return Ok(v),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Registers accounts `first..first+count`.
pub async fn register_range(
    addr: &ServerAddress,
    seed: u32,
    first: u32,
    count: u32,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let done = for_each((first..first + count).collect(), concurrency, |i| {
        register(addr, seed, i)
    })
    .await?;
    Ok(done.len())
}

/// Logs in accounts `first..first+count` and holds the connections idle
/// until stdin closes.
pub async fn idle(
    addr: &ServerAddress,
    seed: u32,
    first: u32,
    count: u32,
    concurrency: usize,
) -> anyhow::Result<()> {
    let held = for_each((first..first + count).collect(), concurrency, |i| {
        login(addr, seed, i)
    })
    .await?;
    common::ready_then_hold(held.len()).await?;
    drop(held);
    Ok(())
}

/// Settings of one sending connection.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// Distinguishes message ids between senders.
    pub sender: u32,
    /// Handles sent to, in turn.
    pub recipients: Vec<String>,
    /// Messages per second; 0 for as fast as the window allows.
    pub rate: f64,
    /// Sends awaiting their `SendAck`, at most.
    pub window: usize,
    /// Body bytes.
    pub size: usize,
    /// Count `SendAck`s in the window (the durable rate).
    pub count_acks: bool,
}

/// Online pairs (`durable == false`): senders `first + 2p` send to receivers
/// `first + 2p + 1`, which are logged in (at the second address: another
/// node of the service, or the same) and acknowledge. Durable
/// (`durable == true`): the senders send to the offline accounts
/// `offline_first..+offline_count` and only `SendAck`s are counted.
#[allow(clippy::too_many_arguments)]
pub async fn traffic(
    (addr, recv_addr): (&ServerAddress, &ServerAddress),
    seed: u32,
    first: u32,
    pairs: u32,
    durable: bool,
    offline: (u32, u32),
    plan: SendPlan,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for p in 0..pairs {
        senders.push(login(addr, seed, first + 2 * p).await?);
        if !durable {
            receivers.push(login(recv_addr, seed, first + 2 * p + 1).await?);
        }
    }
    common::ready_then_go(senders.len() + receivers.len()).await?;
    let phase = Phase::start(warmup, duration);
    let record_latency = plan.rate > 0.0;
    let mut tasks = tokio::task::JoinSet::new();
    for (p, ch) in senders.into_iter().enumerate() {
        let p = u32::try_from(p).unwrap_or(0);
        let mut plan = plan.clone();
        plan.sender = first + 2 * p;
        plan.recipients = if durable {
            let (off_first, off_count) = offline;
            (0..off_count.max(1))
                .map(|k| handle(off_first + (k + p * 7919) % off_count.max(1)))
                .collect()
        } else {
            vec![handle(first + 2 * p + 1)]
        };
        let (r, w) = ch.split();
        tasks.spawn(sender(r, w, phase, plan));
    }
    for ch in receivers {
        let (r, w) = ch.split();
        tasks.spawn(receiver(r, w, phase, record_latency));
    }
    let mut total = LoadResult {
        secs: phase.secs(),
        ..LoadResult::default()
    };
    while let Some(r) = tasks.join_next().await {
        total.merge(r.context("load task panicked")??);
    }
    Ok(total)
}

/// What a frame from the server means to a bench connection. `pending`
/// holds the send time of each unacknowledged send (by its counter) when
/// ack latency is recorded.
#[allow(clippy::too_many_arguments)]
fn on_frame(
    payload: &[u8],
    phase: &Phase,
    latency: bool,
    res: &mut LoadResult,
    seqs: &mut Vec<u64>,
    inflight: &mut usize,
    count_acks: bool,
    pending: &mut HashMap<u64, Instant>,
) -> anyhow::Result<()> {
    let f = ServerFrame::decode(payload)?;
    match f.body {
        Some(server_frame::Body::Deliver(d)) => {
            seqs.push(d.seq);
            res.record(phase, Instant::now(), common::read_stamp(&d.body), latency);
        }
        Some(server_frame::Body::DeliveryReceipt(r)) => seqs.push(r.seq),
        Some(server_frame::Body::ExpiredNotice(n)) => seqs.push(n.seq),
        Some(server_frame::Body::SendAck(a)) => {
            *inflight = inflight.saturating_sub(1);
            let now = Instant::now();
            if count_acks && phase.counts(now) {
                res.acked += 1;
            }
            let counter = a.message_id.get(10..16).map(|b| {
                let mut c = [0u8; 8];
                c[2..].copy_from_slice(b);
                u64::from_be_bytes(c)
            });
            if let Some(sent_at) = counter.and_then(|c| pending.remove(&c)) {
                if phase.counts(now) {
                    let us = (now - sent_at).as_micros();
                    res.ack_lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
        }
        Some(server_frame::Body::Error(e)) => {
            res.errors += 1;
            if !e.message_id.is_empty() {
                *inflight = inflight.saturating_sub(1);
            }
        }
        Some(server_frame::Body::Close(c)) => bail!("server closed: {c:?}"),
        _ => {}
    }
    Ok(())
}

/// Handles one received frame and whatever else is already readable, then
/// acknowledges the seqs they carried. `false` when the server closed.
#[allow(clippy::too_many_arguments)]
async fn absorb(
    first: Option<Bytes>,
    reader: &mut Reader,
    writer: &mut Writer,
    phase: &Phase,
    latency: bool,
    res: &mut LoadResult,
    inflight: &mut usize,
    count_acks: bool,
    rid: &mut u64,
    pending: &mut HashMap<u64, Instant>,
) -> anyhow::Result<bool> {
    let Some(first) = first else { return Ok(false) };
    let mut seqs = Vec::new();
    on_frame(
        &first, phase, latency, res, &mut seqs, inflight, count_acks, pending,
    )?;
    for _ in 0..ACK_BATCH {
        // recv_frame is cancel-safe: polling it once loses nothing.
        match reader.recv_frame().now_or_never() {
            Some(Ok(Some(f))) => {
                on_frame(
                    &f, phase, latency, res, &mut seqs, inflight, count_acks, pending,
                )?;
            }
            Some(Ok(None)) => return Ok(false),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    if !seqs.is_empty() {
        *rid += 1;
        writer
            .send(&ClientFrame {
                request_id: *rid,
                body: Some(client_frame::Body::Ack(Ack { seqs })),
            })
            .await?;
    }
    Ok(true)
}

/// A receiving connection: acknowledges every delivery (batched per read).
async fn receiver(
    mut reader: Reader,
    mut writer: Writer,
    phase: Phase,
    latency: bool,
) -> anyhow::Result<LoadResult> {
    let mut res = LoadResult::default();
    let mut inflight = 0usize;
    let mut rid = 1u64;
    let mut pending = HashMap::new();
    loop {
        let r = tokio::select! {
            r = reader.recv_frame() => r?,
            _ = sleep_until(phase.win_end) => break,
        };
        let open = absorb(
            r,
            &mut reader,
            &mut writer,
            &phase,
            latency,
            &mut res,
            &mut inflight,
            false,
            &mut rid,
            &mut pending,
        )
        .await?;
        if !open {
            bail!("server closed a receiver");
        }
    }
    Ok(res)
}

/// A sending connection: keeps up to `window` sends unacknowledged (as fast
/// as possible, or paced at `rate`), and acknowledges receipts.
async fn sender(
    mut reader: Reader,
    mut writer: Writer,
    phase: Phase,
    plan: SendPlan,
) -> anyhow::Result<LoadResult> {
    let mut res = LoadResult::default();
    let mut inflight = 0usize;
    let mut sent: u64 = 0;
    let mut rid = 1u64;
    let mut body = vec![0u8; plan.size.max(8)];
    let window = plan.window.max(1);
    // Send times by counter, for the ack latency (paced runs only).
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let track = plan.rate > 0.0;
    // Paced senders start spread over one interval (by the golden ratio of
    // their number, so also across load processes): in step, every sender
    // of a run would send at the same instants, a burst the size of the
    // run at every tick instead of the even rate asked for.
    let start = if plan.rate > 0.0 {
        let spread = (f64::from(plan.sender / 2) * 0.618_033_988_7).fract();
        phase.go + Duration::from_secs_f64(spread / plan.rate)
    } else {
        phase.go
    };
    loop {
        let now = Instant::now();
        if now >= phase.win_end {
            break;
        }
        let allowed = if plan.rate > 0.0 {
            if now < start {
                0
            } else {
                let due = (plan.rate * (now - start).as_secs_f64()) as u64 + 1;
                due.saturating_sub(sent)
            }
        } else {
            u64::MAX
        };
        let n = (window - inflight.min(window))
            .min(usize::try_from(allowed).unwrap_or(usize::MAX))
            .min(SEND_BATCH);
        if n > 0 {
            let mut frames = Vec::with_capacity(n);
            for _ in 0..n {
                let recipient = &plan.recipients[(sent as usize) % plan.recipients.len()];
                // Shaped like the client's ids (`MessageId::random`): the
                // time in ms first (big-endian), then what makes it unique.
                let mut id = [0u8; 16];
                id[..6].copy_from_slice(&(common::now_ns() / 1_000_000).to_be_bytes()[2..]);
                id[6..10].copy_from_slice(&plan.sender.to_be_bytes());
                id[10..].copy_from_slice(&sent.to_be_bytes()[2..]);
                common::stamp(&mut body);
                rid += 1;
                let f = ClientFrame {
                    request_id: rid,
                    body: Some(client_frame::Body::Send(SendMessage {
                        message_id: Bytes::copy_from_slice(&id),
                        recipient: recipient.clone(),
                        body: Bytes::copy_from_slice(&body),
                    })),
                };
                frames.push(f.encode_to_vec());
                if track {
                    pending.insert(sent, Instant::now());
                }
                sent += 1;
            }
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            writer.send_frames(&refs).await?;
            inflight += n;
            if plan.rate <= 0.0 && inflight < window {
                continue;
            }
        }
        let next_due = (plan.rate > 0.0 && inflight < window)
            .then(|| start + Duration::from_secs_f64(sent as f64 / plan.rate));
        let r = tokio::select! {
            r = reader.recv_frame() => r?,
            _ = async { if let Some(t) = next_due { sleep_until(t).await } }, if next_due.is_some() => continue,
            _ = sleep_until(phase.win_end) => break,
        };
        let open = absorb(
            r,
            &mut reader,
            &mut writer,
            &phase,
            false,
            &mut res,
            &mut inflight,
            plan.count_acks,
            &mut rid,
            &mut pending,
        )
        .await?;
        if !open {
            bail!("server closed a sender");
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accounts_are_deterministic_and_distinct() {
        let a = account(7, 1);
        let b = account(7, 1);
        let c = account(7, 2);
        let d = account(8, 1);
        assert_eq!(a.noise.public(), b.noise.public());
        assert_eq!(a.handle, "bench1");
        assert_ne!(a.noise.public(), c.noise.public());
        assert_ne!(a.noise.public(), d.noise.public());
        assert!(ponte_wire::messages::validate_handle(&handle(14_999)).is_ok());
    }
}

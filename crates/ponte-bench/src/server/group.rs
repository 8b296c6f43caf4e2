//! The group fan-out phase's load process: one sender and the members of a
//! group, all in this process (so one clock times the whole fan-out).
//!
//! Online (`fan_out` with `online`): every member is logged in and acks
//! what it gets; the sender sends one `SendGroupMessage` to all of them,
//! waits until the last member has it, and only then sends the next. The
//! fan-out time of a message is from its send until the last member read
//! its `Deliver`. The sender acknowledges the members' receipts as they
//! come. Offline: only the sender is logged in, and each message waits for
//! its `GroupSendAck` (the orchestrator measures what they stored).

use super::common::{self, LoadResult};
use super::ponte_load::{for_each, handle, login};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::FutureExt as _;
use ponte_wire::address::ServerAddress;
use ponte_wire::messages::{
    client_frame, server_frame, Ack, ClientFrame, SendGroupMessage, ServerFrame,
};
use prost::Message as _;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest wait for one message's fan-out (or its answer).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most frames handled before acknowledging what they carried.
const ACK_BATCH: usize = 512;
/// The group id of the bench group.
const GROUP_ID: [u8; 16] = [0x42; 16];

/// What the group phase does.
#[derive(Debug, Clone, Copy)]
pub struct GroupPlan {
    /// The sender's account.
    pub sender: u32,
    /// The members' accounts: `first_member..first_member + members`.
    pub first_member: u32,
    pub members: u32,
    /// Group messages sent, one after the other.
    pub messages: u32,
    /// Body bytes.
    pub size: usize,
    /// Whether the members are logged in.
    pub online: bool,
    /// Logins at once.
    pub concurrency: usize,
}

/// The message counter carried in the last 6 bytes of a message id.
fn counter(id: &[u8]) -> Option<u64> {
    let b = id.get(10..16)?;
    let mut c = [0u8; 8];
    c[2..].copy_from_slice(b);
    Some(u64::from_be_bytes(c))
}

fn message_id(sender: u32, k: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&(common::now_ns() / 1_000_000).to_be_bytes()[2..]);
    id[6..10].copy_from_slice(&sender.to_be_bytes());
    id[10..].copy_from_slice(&k.to_be_bytes()[2..]);
    id
}

/// A member's frames, until its connection closes: each group `Deliver` is
/// reported (message counter, arrival) on `got`, and every mailbox item is
/// acknowledged (batched per read).
async fn member(
    ch: ponte_transport::Channel<tokio::net::TcpStream>,
    got: mpsc::UnboundedSender<(u64, Instant)>,
) -> anyhow::Result<()> {
    let (mut reader, mut writer) = ch.split();
    let mut rid = 1u64;
    loop {
        let Some(first) = reader.recv_frame().await? else {
            return Ok(());
        };
        let mut frames = vec![first];
        for _ in 0..ACK_BATCH {
            // recv_frame is cancel-safe: polling it once loses nothing.
            match reader.recv_frame().now_or_never() {
                Some(Ok(Some(f))) => frames.push(f),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let now = Instant::now();
        let mut seqs = Vec::new();
        for f in frames {
            let f = ServerFrame::decode(&f[..])?;
            match f.body {
                Some(server_frame::Body::Deliver(d)) => {
                    seqs.push(d.seq);
                    if let (Some(k), true) = (counter(&d.message_id), d.group_id.is_some()) {
                        let _ = got.send((k, now));
                    }
                }
                Some(server_frame::Body::DeliveryReceipt(r)) => seqs.push(r.seq),
                Some(server_frame::Body::ExpiredNotice(n)) => seqs.push(n.seq),
                Some(server_frame::Body::Close(c)) => bail!("server closed: {c:?}"),
                _ => {}
            }
        }
        if !seqs.is_empty() {
            rid += 1;
            writer
                .send(&ClientFrame {
                    request_id: rid,
                    body: Some(client_frame::Body::Ack(Ack { seqs })),
                })
                .await?;
        }
    }
}

/// Runs the phase; `lat_us` holds each message's fan-out time (online) and
/// `ack_lat_us` each send's time to its `GroupSendAck`; `delivered` counts
/// deliveries, `acked` messages answered.
pub async fn fan_out(
    addr: &ServerAddress,
    seed: u32,
    plan: GroupPlan,
) -> anyhow::Result<LoadResult> {
    let members: Vec<u32> = (plan.first_member..plan.first_member + plan.members).collect();
    let recipients: Vec<String> = members.iter().map(|&i| handle(i)).collect();
    let mut conns = if plan.online {
        for_each(members.clone(), plan.concurrency, |i| login(addr, seed, i)).await?
    } else {
        Vec::new()
    };
    let sender = login(addr, seed, plan.sender).await?;
    common::ready_then_go(conns.len() + 1).await?;

    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let (ans_tx, mut ans_rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for ch in conns.drain(..) {
        tasks.spawn(member(ch, got_tx.clone()));
    }
    drop(got_tx);
    // The sender's connection is one task: it writes the sends queued by
    // the loop below, reports each answer, and acks the members' receipts.
    let (send_tx, mut send_rx) = mpsc::unbounded_channel::<ClientFrame>();
    let (mut s_reader, mut s_writer) = sender.split();
    tasks.spawn(async move {
        let mut rid = 1u64;
        loop {
            tokio::select! {
                f = send_rx.recv() => {
                    let Some(f) = f else { return Ok(()) };
                    s_writer.send(&f).await?;
                }
                r = s_reader.recv_frame() => {
                    let Some(first) = r? else { return Ok(()) };
                    let mut seqs = Vec::new();
                    let mut frames = vec![first];
                    for _ in 0..ACK_BATCH {
                        match s_reader.recv_frame().now_or_never() {
                            Some(Ok(Some(f))) => frames.push(f),
                            Some(Ok(None)) | None => break,
                            Some(Err(e)) => return Err(e.into()),
                        }
                    }
                    let now = Instant::now();
                    for f in frames {
                        match ServerFrame::decode(&f[..])?.body {
                            Some(server_frame::Body::DeliveryReceipt(r)) => seqs.push(r.seq),
                            Some(server_frame::Body::ExpiredNotice(n)) => seqs.push(n.seq),
                            Some(server_frame::Body::GroupSendAck(a)) => {
                                if let Some(k) = counter(&a.message_id) {
                                    let _ = ans_tx.send((k, now, a.refused.len()));
                                }
                            }
                            Some(server_frame::Body::Error(e)) => bail!("server error: {e:?}"),
                            Some(server_frame::Body::Close(c)) => bail!("server closed: {c:?}"),
                            _ => {}
                        }
                    }
                    if !seqs.is_empty() {
                        rid += 1;
                        s_writer
                            .send(&ClientFrame {
                                request_id: rid,
                                body: Some(client_frame::Body::Ack(Ack { seqs })),
                            })
                            .await?;
                    }
                }
            }
        }
    });

    let started = Instant::now();
    let mut res = LoadResult::default();
    let mut body = vec![0u8; plan.size.max(8)];
    for k in 0..u64::from(plan.messages) {
        common::stamp(&mut body);
        let id = message_id(plan.sender, k);
        let t0 = Instant::now();
        send_tx
            .send(ClientFrame {
                request_id: k + 1_000_000,
                body: Some(client_frame::Body::SendGroup(SendGroupMessage {
                    message_id: Bytes::copy_from_slice(&id),
                    group_id: Bytes::copy_from_slice(&GROUP_ID),
                    recipients: recipients.clone(),
                    body: Bytes::copy_from_slice(&body),
                })),
            })
            .ok()
            .context("the sender's connection ended")?;
        let deadline = t0 + MESSAGE_TIMEOUT;
        let mut answered = false;
        let mut have = 0u32;
        let mut last = t0;
        let want = if plan.online { plan.members } else { 0 };
        while !answered || have < want {
            tokio::select! {
                a = ans_rx.recv() => {
                    let Some((ak, at, refused)) = a else { bail!("the sender's connection ended") };
                    if ak == k {
                        answered = true;
                        res.acked += 1;
                        res.errors += refused as u64;
                        let us = (at - t0).as_micros();
                        res.ack_lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
                g = got_rx.recv(), if plan.online => {
                    let Some((gk, at)) = g else { bail!("every member's connection ended") };
                    if gk == k {
                        have += 1;
                        last = last.max(at);
                        res.delivered += 1;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    res.errors += 1;
                    break;
                }
            }
        }
        if plan.online && have == want {
            let us = (last - t0).as_micros();
            res.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    res.secs = started.elapsed().as_secs_f64();
    drop(send_tx);
    tasks.abort_all();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            res.errors += 1;
            eprintln!("[group] connection failed: {e:#}");
        }
    }
    Ok(res)
}

//! `ponte demo`: the whole system on loopback in one command, no setup.
//!
//! In this process, on 127.0.0.1 ports chosen by the OS, with every file in
//! a temporary directory removed at the end:
//!
//! ```text
//!  alice ──TLS──► relay (ponte proxy) ──PROXY v2 + Noise──► tap ──► ponte server
//!  bobby ──TLS──┘                                            │        (SQLite)
//!        ╳ direct route: a closed port                     records the bytes
//! ```
//!
//! The users' server address points at a closed port, so the direct route is
//! refused and both clients fall back to the relay. Alice and Bobby exchange
//! two messages with their ticks; then the demo shows a sample of the bytes
//! the relay carried and checks that no text, handle or identity key appears
//! in them. It exits 0 when all of that worked, 1 otherwise.

use anyhow::{ensure, Context as _};
use ponte_client::client::{Event, RegisterOptions};
use ponte_client::profile::KeySource;
use ponte_client::route::RelayUrl;
use ponte_client::{Client, MessageView, Status, Update};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Most bytes the tap keeps (the demo's conversation is a few KiB).
const TAP_CAP: usize = 1 << 20;
/// Bound on each client step.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Run the demo.
pub fn run() -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(demo());
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

fn say(text: &str) {
    let _ = crate::write_stdout(&format!("{text}\n"));
}

/// Records what crosses between the relay and the server (both directions).
#[derive(Debug, Default)]
struct Tap {
    to_server: Mutex<Vec<u8>>,
    to_relay: Mutex<Vec<u8>>,
}

impl Tap {
    fn all(&self) -> Vec<u8> {
        let mut v = self.to_server.lock().map(|b| b.clone()).unwrap_or_default();
        v.extend(self.to_relay.lock().map(|b| b.clone()).unwrap_or_default());
        v
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut into: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Tap>,
    to_server: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let side = if to_server {
            &log.to_server
        } else {
            &log.to_relay
        };
        if let Ok(mut b) = side.lock() {
            if b.len() + n <= TAP_CAP {
                b.extend_from_slice(chunk);
            }
        }
        if into.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = into.shutdown().await;
}

/// A TCP forwarder to `server` that records every byte.
async fn start_tap(server: SocketAddr, tap: Arc<Tap>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(server).await else {
                continue;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, Arc::clone(&tap), true));
            tokio::spawn(pump(or, iw, Arc::clone(&tap), false));
        }
    });
    Ok(addr)
}

/// Hex and ASCII, 16 bytes a line, as `xxd` prints it.
fn hexdump(bytes: &[u8], offset: usize) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "    {:06x}  {:<48} {ascii}\n",
            offset + i * 16,
            hex.join(" ")
        ));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn show(me: &str, m: &MessageView) -> String {
    if m.outgoing {
        let ticks = match m.status {
            Status::Queued => "🕓 queued",
            Status::Sent => "✓ sent",
            Status::Delivered => "✓✓ delivered",
            Status::Read => "✓✓ read",
            Status::Expired => "✗ expired",
            Status::Failed => "✗ failed",
            _ => "",
        };
        format!("{me} -> {}: {:?}  [{ticks}]", m.peer, m.text)
    } else {
        format!("{} -> {me}: {:?}  (received)", m.peer, m.text)
    }
}

async fn sync(client: &mut Client) -> anyhow::Result<()> {
    let me = client.handle().to_owned();
    let mut lines = Vec::new();
    tokio::time::timeout(
        STEP_TIMEOUT,
        client.sync(&mut |e| match e {
            Event::Update(Update::Message(m) | Update::Status(m)) => lines.push(show(&me, &m)),
            Event::Warning(w) => lines.push(format!("warning: {w}")),
            _ => {}
        }),
    )
    .await
    .context("sync timed out")??;
    say(&format!(
        "  {me} syncs ({}):",
        client.route_in_use().unwrap_or("?")
    ));
    for l in &lines {
        say(&format!("      {l}"));
    }
    Ok(())
}

async fn send(client: &mut Client, to: &str, text: &str) -> anyhow::Result<Status> {
    let me = client.handle().to_owned();
    let out = tokio::time::timeout(STEP_TIMEOUT, client.send(to, text))
        .await
        .context("send timed out")??;
    say(&format!(
        "  {me} sends ({}):\n      {}",
        client.route_in_use().unwrap_or("no route"),
        show(&me, &out.message)
    ));
    if let Some(note) = out.note {
        say(&format!("      note: {note}"));
    }
    Ok(out.message.status)
}

fn status_of(client: &Client, peer: &str, text: &str) -> anyhow::Result<Status> {
    client
        .history(peer)?
        .into_iter()
        .find(|m| m.outgoing && m.text == text)
        .map(|m| m.status)
        .context("message not in history")
}

async fn demo() -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("ponte-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    say("Ponte demo: a server, a volunteer relay and two users, all on this machine (127.0.0.1).");
    say(&format!(
        "Files: {} (deleted at the end)\n",
        dir.path().display()
    ));

    // 1. The server.
    let cfg = ponte_server::ServerConfig::new(
        dir.path().join("server"),
        "127.0.0.1:0".parse().context("address")?,
    );
    let server = ponte_server::Server::bind(cfg, None).await?;
    let server_addr = server.local_addr()?;
    let key = server.public_key();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async move {
        let _ = server_stopped.await;
    }));
    say(&format!(
        "1. ponte server listening on {server_addr} (SQLite in the temp dir)"
    ));

    // 2. The relay, in front of a tap that records what it forwards.
    let tap = Arc::new(Tap::default());
    let tap_addr = start_tap(server_addr, Arc::clone(&tap)).await?;
    let relay_cfg = ponte_proxy::Config::from_toml(
        &format!(
            "[upstream.server]\nservers = [\"{tap_addr}\"]\nsend_proxy = \"v2\"\n\
             health_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\n\
             upstream = \"server\"\n"
        ),
        None,
    )?;
    let relay = ponte_proxy::Proxy::bind(relay_cfg).await?;
    let relay_addr = relay.addr_of("tls").context("relay listener")?;
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(async move {
        let _ = relay_stopped.await;
    }));
    let via: RelayUrl = format!("tls://{relay_addr}").parse()?;
    say(&format!(
        "2. ponte proxy (a volunteer relay) on {relay_addr}, TLS with a self-signed certificate,\n   \
         forwarding to the server with a PROXY v2 header; share link:\n   {}",
        ponte_wire::link::ponte_relay_link("127.0.0.1", relay_addr.port(), true)
    ));

    // 3. The direct route is blocked: the users' server address points at a
    //    closed port (as if a censor dropped the server's address).
    //    A socket bound there and never listening keeps the port refused
    //    (and nobody else's) for as long as the demo runs.
    let closed_socket = tokio::net::TcpSocket::new_v4()?;
    closed_socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let closed = closed_socket.local_addr()?;
    let address = ponte_wire::address::ServerAddress {
        host: "127.0.0.1".into(),
        port: closed.port(),
        key,
    };
    say(&format!(
        "3. The direct route is blocked: users know the server as\n   {address}\n   \
         but nothing answers on port {} (the key after # still authenticates the server).\n",
        closed.port()
    ));

    // 4. Two users register through the relay.
    let timeout = Duration::from_secs(5);
    let mut alice = Client::register(
        &dir.path().join("alice"),
        KeySource::KeyFile,
        || Ok(String::new()),
        RegisterOptions::new(address.to_string(), "alice")
            .connect_timeout(timeout)
            .vias(vec![via.clone()]),
    )
    .await?;
    let mut bob = Client::register(
        &dir.path().join("bobby"),
        KeySource::KeyFile,
        || Ok(String::new()),
        RegisterOptions::new(address.to_string(), "bobby")
            .connect_timeout(timeout)
            .vias(vec![via.clone()]),
    )
    .await?;
    say("4. alice and bobby register (each with `--via` the relay):");
    for c in [&alice, &bob] {
        say(&format!(
            "     {} registered over {}",
            c.handle(),
            c.route_in_use().unwrap_or("?")
        ));
    }
    let status = alice.status().await?;
    say("   `ponte status` for alice, routes in the order they are tried:");
    for p in &status.probes {
        match &p.result {
            Ok(ms) => say(&format!("     ok    {}  ({ms} ms)", p.route)),
            Err(e) => say(&format!("     FAIL  {}  ({e})", p.route)),
        }
    }
    ensure!(
        status.probes.first().is_some_and(|p| p.result.is_err()),
        "the direct route should be blocked"
    );
    let in_use = status
        .in_use
        .map_err(|e| anyhow::anyhow!("no route works: {e}"))?;
    say(&format!("   in use: {in_use}\n"));
    ensure!(in_use.starts_with("relay "), "the relay should be in use");

    // 5. The conversation.
    say("5. A conversation through the relay (ticks: ✓ server has it, ✓✓ delivered, read):");
    let hello = "Hi Bobby! The server is blocked here, but this gets through.";
    let reply = "Hi Alice, received, end-to-end encrypted all the way.";
    send(&mut alice, "bobby", hello).await?;
    sync(&mut bob).await?;
    send(&mut bob, "alice", reply).await?;
    sync(&mut alice).await?;
    sync(&mut bob).await?;
    let (a, b) = (
        status_of(&alice, "bobby", hello)?,
        status_of(&bob, "alice", reply)?,
    );
    ensure!(
        a == Status::Read,
        "alice's message should be read, is {a:?}"
    );
    ensure!(
        matches!(b, Status::Delivered | Status::Read),
        "bobby's message should be delivered, is {b:?}"
    );
    say("");

    // 6. What the relay carried.
    let carried = tap.all();
    let to_server = tap.to_server.lock().map(|b| b.clone()).unwrap_or_default();
    say(&format!(
        "6. The relay forwarded {} bytes. The start of the first connection it opened\n   \
         (a PROXY v2 header with the client's address, then the Noise handshake):",
        carried.len()
    ));
    say(&hexdump(&to_server[..to_server.len().min(64)], 0));
    let mid = (to_server.len() / 2) & !15;
    let end = (mid + 64).min(to_server.len());
    say("   A sample from the middle: Noise ciphertext, no readable text:");
    say(&hexdump(&to_server[mid..end], mid));
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("alice's message".into(), hello.as_bytes().to_vec()),
        ("bobby's reply".into(), reply.as_bytes().to_vec()),
        ("the handle \"alice\"".into(), b"alice".to_vec()),
        ("the handle \"bobby\"".into(), b"bobby".to_vec()),
    ];
    for c in [&alice, &bob] {
        let id = c.public_identity();
        secrets.push((
            format!("{}'s identity key", c.handle()),
            id.curve25519.to_vec(),
        ));
        secrets.push((format!("{}'s signing key", c.handle()), id.ed25519.to_vec()));
    }
    say("   Searching everything the relay carried:");
    let mut leaked = false;
    for (what, bytes) in &secrets {
        let found = contains(&carried, bytes);
        leaked |= found;
        say(&format!(
            "     {what:<26} {}",
            if found { "FOUND (bug!)" } else { "not found" }
        ));
    }
    say("");

    let _ = stop_relay.send(());
    let _ = stop_server.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), relay_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server_task).await;
    drop(alice);
    drop(bob);
    if leaked {
        say("The relay saw something it should not have: this is a bug.");
        return Ok(ExitCode::from(1));
    }
    say("Done: the relay carried the conversation and learned nothing but byte counts.");
    say("Next: README.md (run a relay, use one, run a server), docs/CLIENT.md.");
    Ok(ExitCode::SUCCESS)
}

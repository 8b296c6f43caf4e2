//! Shared by the client's integration tests: a real `ponte-server` running
//! in process on 127.0.0.1, a key-file profile registered on it, syncing
//! and collecting what it reports, routes, and TCP forwarders (plain, or
//! delaying every chunk as a long network path would).
#![allow(clippy::unwrap_used, dead_code)]

use ponte_client::client::{Event, RegisterOptions};
use ponte_client::profile::KeySource;
use ponte_client::route::{DirectRoute, Route};
use ponte_client::{Client, ClientError, Update};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A server running until [`Running::stop`].
pub struct Running {
    /// Its listening socket.
    pub addr: SocketAddr,
    /// Its server address, `ponte://127.0.0.1:PORT#KEY`.
    pub address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The server key part of the address.
    pub fn key(&self) -> &str {
        self.address.rsplit_once('#').unwrap().1
    }

    /// Its address, parsed.
    pub fn server_address(&self) -> ponte_wire::address::ServerAddress {
        self.address.parse().unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

/// Starts a server on `data` (registration limits raised for tests).
pub async fn start_server(data: &Path) -> Running {
    start_server_with(data, |_| {}).await
}

/// [`start_server`], with `tweak` applied to its configuration.
pub async fn start_server_with(
    data: &Path,
    tweak: impl Fn(&mut ponte_server::ServerConfig),
) -> Running {
    start_server_on(data, 0, tweak).await
}

/// [`start_server_with`] on a given port of 127.0.0.1 (0: any): a server
/// restarted at the address its users were given ([`bind_again`]).
pub async fn start_server_on(
    data: &Path,
    port: u16,
    tweak: impl Fn(&mut ponte_server::ServerConfig),
) -> Running {
    let server = bind_again(|| {
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cfg = ponte_server::ServerConfig::new(data, listen);
        cfg.register_limit = ponte_server::RateLimit {
            burst: 100,
            per_hour: 1000,
        };
        tweak(&mut cfg);
        ponte_server::Server::bind(cfg, None)
    })
    .await;
    let addr = server.local_addr().unwrap();
    let address = server.address("127.0.0.1").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        addr,
        address,
        stop: Some(tx),
        task,
    }
}

/// Registers `handle` with a key-file profile in `dir`.
pub async fn try_register(dir: &Path, address: &str, handle: &str) -> Result<Client, ClientError> {
    Client::register(
        dir,
        KeySource::KeyFile,
        || panic!("no passphrase"),
        RegisterOptions::new(address, handle),
    )
    .await
}

/// [`try_register`], which must succeed.
pub async fn register(dir: &Path, address: &str, handle: &str) -> Client {
    try_register(dir, address, handle).await.unwrap()
}

/// Syncs `client`; the texts of the new messages it reported, and its
/// warnings, each in order.
pub async fn sync_report(client: &mut Client) -> (Vec<String>, Vec<String>) {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    // Every run of updates is closed by its end marker.
    for (i, e) in events.iter().enumerate() {
        if matches!(e, Event::Update(_)) {
            let next = events.get(i + 1);
            assert!(
                matches!(next, Some(Event::Update(_) | Event::UpdatesEnd)),
                "an update not followed by another or by its end: {events:?}"
            );
        }
    }
    let (mut texts, mut warnings) = (Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Update(Update::Message(m)) => texts.push(m.text),
            Event::Warning(w) => warnings.push(w),
            _ => {}
        }
    }
    (texts, warnings)
}

/// [`sync_report`]'s texts.
pub async fn sync_texts(client: &mut Client) -> Vec<String> {
    sync_report(client).await.0
}

/// Binds a port this test had before: a server restarted at the address its
/// users were given, or a blocked route that comes back. The port was free
/// a moment ago, but another socket on the machine (a parallel test's
/// outgoing connection) may hold it for a while, so this retries for up to
/// 10 s before it gives up.
pub async fn bind_again<T, E, Fut>(mut bind: impl FnMut() -> Fut) -> T
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last = String::new();
    for _ in 0..100 {
        match bind().await {
            Ok(bound) => return bound,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind the same port again: {last}");
}

/// The route straight to `to` (a forwarder, a test server).
pub fn direct(to: SocketAddr) -> Vec<Box<dyn Route>> {
    vec![Box::new(DirectRoute {
        target: to.to_string(),
    })]
}

/// Forwards every connection accepted on `listener` to `target`.
pub async fn forward(listener: TcpListener, target: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// A forwarder on 127.0.0.1:0 to `upstream` that reads each connection's
/// two preamble bytes first and shows them to `admit`: forwarded (the
/// preamble included) when it says so, else closed without an answer, as
/// a server closes on a preamble it does not know.
pub async fn preamble_forwarder(
    upstream: SocketAddr,
    admit: impl Fn([u8; 2]) -> bool + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admit = std::sync::Arc::new(admit);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let admit = std::sync::Arc::clone(&admit);
            tokio::spawn(async move {
                let mut preamble = [0u8; 2];
                if client.read_exact(&mut preamble).await.is_err() || !admit(preamble) {
                    return;
                }
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                if server.write_all(&preamble).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// Chunks read but not yet written, per direction of a delaying forwarder
/// (the reader waits when that many are pending).
const DELAYED_CHUNKS: usize = 4096;

/// A forwarder on 127.0.0.1:0 to `target` that holds every chunk it reads
/// for `delay` before writing it on, in each direction, keeping the order:
/// a path with a round trip of twice `delay`. Runs until the test ends.
pub async fn delaying_forwarder(target: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                // Chunks go on when due, not when Nagle lets them.
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (client_read, client_write) = inbound.into_split();
                let (server_read, server_write) = outbound.into_split();
                tokio::join!(
                    delayed_copy(client_read, server_write, delay),
                    delayed_copy(server_read, client_write, delay),
                );
            });
        }
    });
    addr
}

/// Copies `from` to `to`, each chunk `delay` after it was read, in order.
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAYED_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = tokio::time::Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

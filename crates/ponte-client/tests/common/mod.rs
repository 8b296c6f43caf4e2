//! Shared by the client's integration tests: a real `ponte-server` running
//! in process on 127.0.0.1, and a key-file profile registered on it.
#![allow(clippy::unwrap_used, dead_code)]

use ponte_client::client::{Event, RegisterOptions};
use ponte_client::profile::KeySource;
use ponte_client::{Client, ClientError, Update};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
    tweak: impl FnOnce(&mut ponte_server::ServerConfig),
) -> Running {
    let mut cfg = ponte_server::ServerConfig::new(data, "127.0.0.1:0".parse().unwrap());
    cfg.register_limit = ponte_server::RateLimit {
        burst: 100,
        per_hour: 1000,
    };
    tweak(&mut cfg);
    let server = ponte_server::Server::bind(cfg, None).await.unwrap();
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

//! Routes against a real `ponte-server` on 127.0.0.1 (in process): a client
//! whose direct route is blocked goes through a relay (a plain TCP forwarder
//! here), remembers it in the profile, and `listen` moves back to the direct
//! route as soon as a background probe finds it working again.
#![allow(clippy::unwrap_used)]

mod common;

use common::{forward, start_server};
use ponte_client::client::{last_route, Event, RegisterOptions};
use ponte_client::profile::KeySource;
use ponte_client::route::RelayUrl;
use ponte_client::Client;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

async fn wait_for(log: &Mutex<Vec<String>>, needle: &str) {
    for _ in 0..600 {
        if log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no event containing {needle:?}: {:?}", log.lock().unwrap());
}

#[tokio::test]
async fn listen_moves_back_to_the_direct_route_when_it_works_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let server_addr = server.addr;
    let key = server.server_address().key;

    // The direct route: a loopback port with nothing on it (for now).
    let direct_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = ponte_wire::address::ServerAddress {
        host: "127.0.0.1".into(),
        port: direct_port,
        key,
    };
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via: RelayUrl = format!("tcp://{}", relay.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(forward(relay, server_addr));

    let mut alice = Client::register(
        &tmp.path().join("alice"),
        KeySource::KeyFile,
        || panic!("no passphrase"),
        RegisterOptions::new(address.to_string(), "alice").vias(vec![via.clone()]),
    )
    .await
    .unwrap();
    let through_relay = format!("relay {via}");
    assert_eq!(alice.route_in_use(), Some(through_relay.as_str()));
    // Remembered in the profile, and the relay saved with it.
    assert_eq!(
        last_route(alice.store()).unwrap().as_deref(),
        Some(through_relay.as_str())
    );
    assert_eq!(alice.vias().unwrap(), vec![via.clone()]);

    alice.set_direct_probe_interval(Duration::from_millis(200));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stop_listen, listen_stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let log = Arc::clone(&log);
        async move {
            wait_for(&log, &format!("({through_relay})")).await;
            // The block is lifted: the server's address answers again.
            let direct = common::bind_again(|| TcpListener::bind(("127.0.0.1", direct_port))).await;
            tokio::spawn(forward(direct, server_addr));
            wait_for(&log, "moving back").await;
            wait_for(&log, "(direct tcp 127.0.0.1:").await;
            let _ = stop_listen.send(());
        }
    };
    let sink = Arc::clone(&log);
    let mut on_event = |e: Event| {
        if let Event::Connection(c) = e {
            sink.lock().unwrap().push(c);
        }
    };
    let listen = alice.listen(&mut on_event, async move {
        let _ = listen_stopped.await;
    });
    let (r, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(listen, driver)
    })
    .await
    .unwrap();
    r.unwrap();
    assert!(last_route(alice.store())
        .unwrap()
        .unwrap()
        .starts_with("direct tcp"));
    server.stop().await;
}

/// A relay stand-in: forwards to `target`, or, while `reset` is set,
/// accepts and closes at once.
async fn toggled_forwarder(
    target: SocketAddr,
    reset: Arc<std::sync::atomic::AtomicBool>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if reset.load(std::sync::atomic::Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    url
}

/// Direct routes that are refused, reset (accept, then close) or black holes
/// (accept, never answer) all lose to a relay; with two working relays the
/// one that worked last is preferred.
#[tokio::test]
async fn fallback_from_refused_reset_and_black_holed_direct_and_remembered_relay() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let server_addr = server.addr;
    let key = server.server_address().key;

    // Three kinds of blocked direct route.
    let refused = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let reset = toggled_forwarder(server_addr, Arc::new(AtomicBool::new(true))).await;
    let reset: SocketAddr = reset.trim_start_matches("tcp://").parse().unwrap();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // never accepted
    let hole_addr = hole.local_addr().unwrap();

    let a_down = Arc::new(AtomicBool::new(false));
    let relay_a: RelayUrl = toggled_forwarder(server_addr, Arc::clone(&a_down))
        .await
        .parse()
        .unwrap();
    let relay_b: RelayUrl = toggled_forwarder(server_addr, Arc::new(AtomicBool::new(false)))
        .await
        .parse()
        .unwrap();

    for (i, direct) in [refused, reset, hole_addr].into_iter().enumerate() {
        let address = ponte_wire::address::ServerAddress {
            host: "127.0.0.1".into(),
            port: direct.port(),
            key,
        };
        let name = format!("user{i}");
        let started = tokio::time::Instant::now();
        let client = Client::register(
            &tmp.path().join(&name),
            KeySource::KeyFile,
            || panic!("no passphrase"),
            RegisterOptions::new(address.to_string(), &name)
                .connect_timeout(Duration::from_secs(30))
                .vias(vec![relay_a.clone(), relay_b.clone()]),
        )
        .await
        .unwrap();
        assert_eq!(
            client.route_in_use(),
            Some(format!("relay {relay_a}").as_str()),
            "direct {direct}"
        );
        // Not the 30 s connect timeout: the relay joined after its head start.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    // Relay A fails once: B takes over and is remembered, so when A is back
    // B still leads.
    let mut user = Client::open(&tmp.path().join("user0"), || panic!("no passphrase")).unwrap();
    a_down.store(true, Ordering::SeqCst);
    user.sync(&mut |_| {}).await.unwrap();
    assert_eq!(
        user.route_in_use(),
        Some(format!("relay {relay_b}").as_str())
    );
    a_down.store(false, Ordering::SeqCst);
    let mut user = Client::open(&tmp.path().join("user0"), || panic!("no passphrase")).unwrap();
    user.sync(&mut |_| {}).await.unwrap();
    assert_eq!(
        user.route_in_use(),
        Some(format!("relay {relay_b}").as_str())
    );
    let status = user.status().await.unwrap();
    let order: Vec<&str> = status.probes.iter().map(|p| p.route.as_str()).collect();
    assert_eq!(
        order,
        [
            "direct tcp 127.0.0.1:".to_owned() + &refused.port().to_string(),
            format!("relay {relay_b}"),
            format!("relay {relay_a}"),
        ]
    );
    assert!(status.probes[0].result.is_err());
    assert!(status.probes[1].result.is_ok() && status.probes[2].result.is_ok());

    drop(hole);
    server.stop().await;
}

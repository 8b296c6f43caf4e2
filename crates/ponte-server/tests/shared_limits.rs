//! Limits that hold across the nodes of a service on PostgreSQL: the
//! registration rate per client address counts once for the whole service
//! (a client cannot get the burst again from each node), and an invite
//! works once whichever node it is used on, also when two nodes take it at
//! the same moment. Two in-process nodes on a fresh database; skips with a
//! reason when PostgreSQL is not reachable (unless `PONTE_REQUIRE_PG=1`).
#![allow(clippy::unwrap_used)]

mod common;

use common::pg::{self, TestDb};
use common::{error_code, Client, Device, TestServer};
use ponte_server::RateLimit;
use ponte_wire::messages::{server_frame, ErrorCode};
use std::path::Path;

/// Two nodes of one service on `db`: the second gets the first's key.
async fn two_nodes(
    db: &TestDb,
    root: &Path,
    tweak: impl Fn(&mut ponte_server::ServerConfig) + Copy,
) -> (TestServer, TestServer) {
    let (d1, d2) = (root.join("node1"), root.join("node2"));
    let url = db.url.clone();
    let one = TestServer::start(&d1, |c| {
        c.store = Some(url.clone());
        tweak(c);
    })
    .await;
    std::fs::create_dir_all(&d2).unwrap();
    std::fs::copy(d1.join("server.key"), d2.join("server.key")).unwrap();
    let two = TestServer::start(&d2, |c| {
        c.store = Some(url.clone());
        tweak(c);
    })
    .await;
    (one, two)
}

fn registered(r: &server_frame::Body) -> bool {
    matches!(r, server_frame::Body::Registered(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_limit_counts_across_nodes() {
    if !pg::reachable() {
        return;
    }
    let db = TestDb::create();
    let root = tempfile::tempdir().unwrap();
    // Three registrations per address for the whole service, no refill.
    let (one, two) = two_nodes(&db, root.path(), |c| {
        c.register_limit = RateLimit {
            burst: 3,
            per_hour: 0,
        };
    })
    .await;
    let mut outcomes = Vec::new();
    // Two on the first node, then two on the second: the fourth is over
    // the limit although the second node has seen only two.
    for (i, node) in [&one, &one, &two, &two].into_iter().enumerate() {
        let dev = Device::new();
        let mut c = Client::connect(node, &dev).await;
        outcomes.push(c.register(&format!("user{i}")).await);
    }
    assert!(outcomes[..3].iter().all(registered), "{outcomes:?}");
    assert_eq!(error_code(&outcomes[3]), ErrorCode::RateLimited);
    // And on the first node too.
    let dev = Device::new();
    let mut c = Client::connect(&one, &dev).await;
    assert_eq!(
        error_code(&c.register("user9").await),
        ErrorCode::RateLimited
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_works_once_across_nodes_even_at_the_same_moment() {
    if !pg::reachable() {
        return;
    }
    let db = TestDb::create();
    let root = tempfile::tempdir().unwrap();
    // Room for every attempt here: a failure past the registration limit
    // is answered as rate-limited, whatever it was.
    let (one, two) = two_nodes(&db, root.path(), |c| {
        c.invite_only = true;
        let plenty = RateLimit {
            burst: 1000,
            per_hour: 1000,
        };
        c.register_limit = plenty;
        c.register_limit_per_peer = plenty;
    })
    .await;
    // Used on the first node, refused on the second.
    let token = ponte_server::create_invite_postgres(&db.url).unwrap();
    let dev = Device::new();
    let mut c = Client::connect(&one, &dev).await;
    assert!(registered(
        &c.request(dev.register_frame("alice", &token)).await
    ));
    let dev = Device::new();
    let mut c = Client::connect(&two, &dev).await;
    let r = c.request(dev.register_frame("bob", &token)).await;
    assert_eq!(error_code(&r), ErrorCode::InviteInvalid);

    // Ten invites, each tried at once on both nodes by two devices: each
    // lets exactly one of them in.
    for round in 0..10 {
        let token = ponte_server::create_invite_postgres(&db.url).unwrap();
        let (d1, d2) = (Device::new(), Device::new());
        let mut c1 = Client::connect(&one, &d1).await;
        let mut c2 = Client::connect(&two, &d2).await;
        let (f1, f2) = (
            d1.register_frame(&format!("one{round}"), &token),
            d2.register_frame(&format!("two{round}"), &token),
        );
        let (r1, r2) = tokio::join!(c1.request(f1), c2.request(f2));
        let wins = [&r1, &r2].into_iter().filter(|r| registered(r)).count();
        assert_eq!(wins, 1, "round {round}: {r1:?} / {r2:?}");
        let loser = if registered(&r1) { &r2 } else { &r1 };
        assert_eq!(error_code(loser), ErrorCode::InviteInvalid);
    }
    one.stop().await;
    two.stop().await;
}

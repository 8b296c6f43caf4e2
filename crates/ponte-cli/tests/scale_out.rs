//! Several server nodes under failure, with real processes: three nodes on
//! one PostgreSQL database and one NATS behind two TLS relays lose each node
//! in turn (SIGKILL) under steady traffic; a test-owned NATS is killed and
//! restarted under traffic; a test-owned PostgreSQL crashes and comes back.
//! In every case each message the server acknowledged arrives exactly once
//! and in order. Skips with a reason when PostgreSQL or NATS (or, for the
//! test-owned ones, their binaries) are not there.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/own_pg.rs"]
mod own_pg;
// The server crate's test helper for PostgreSQL (fresh database, skip).
#[allow(dead_code)]
#[path = "../../ponte-server/tests/common/pg.rs"]
mod pg;

use cluster::{
    assert_once_in_order, init_service, nats_reachable, nats_url, register_via, shown, wait_all,
    wait_until, Cluster, Node, OwnNats, Sender,
};
use common::{json_lines, ok, ponte, Listen, WAIT};
use own_pg::OwnPg;

#[test]
fn three_nodes_lose_each_node_in_turn_and_no_acknowledged_message_is_lost() {
    if !pg::reachable() || !nats_reachable() {
        return;
    }
    let db = pg::TestDb::create();
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), &db.url, &nats_url(), "");
    // Relay A prefers node 1, relay B node 3; carol and erin go to node 2
    // directly (the relays are their fallback): every node has clients.
    let (a, b) = (cluster.vias[0].clone(), cluster.vias[1].clone());
    let p = |n: &str| tmp.path().join(n);
    for (name, vias) in [("alice", &a), ("frank", &a), ("bob", &b), ("dave", &b)] {
        register_via(&p(name), &cluster.nowhere, name, &[vias]);
    }
    for name in ["carol", "erin"] {
        register_via(&p(name), &cluster.nodes[1].address(), name, &[&a, &b]);
    }

    // Three conversations, each from one node to another: alice (1) → dave
    // (3), bob (3) → erin (2), carol (2) → frank (1). A recipient only
    // listens (a `send` on its profile would take over its connection).
    let convs = [("alice", "dave"), ("bob", "erin"), ("carol", "frank")];
    let mut listens: Vec<Listen> = convs.iter().map(|(_, to)| Listen::start(&p(to))).collect();
    let mut senders: Vec<Sender> = convs
        .iter()
        .map(|(from, to)| Sender::start(&p(from), to, &format!("{from}>{to}")))
        .collect();
    let long = WAIT * 3;
    for s in &senders {
        s.wait_more(2, long);
    }
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        let t = Instant::now();
        node.kill();
        for s in &senders {
            s.wait_more(2, long);
        }
        node.restart();
        for s in &senders {
            s.wait_more(1, long);
        }
        eprintln!("node {} down and back: {:?}", i + 1, t.elapsed());
    }
    let sent: Vec<Vec<cluster::Sent>> = senders.iter_mut().map(Sender::stop).collect();
    for ((from, _), (listen, sent)) in convs.iter().zip(listens.iter_mut().zip(&sent)) {
        // What a killed node left unanswered waits in the outbox: a sync
        // sends it (the server answers a resend of a stored one as a
        // duplicate).
        ok(&ponte(&p(from), &["sync"]));
        wait_all(listen, sent);
    }
    for (i, (listen, sent)) in listens.iter_mut().zip(&sent).enumerate() {
        listen.stop();
        let (from, prefix) = (convs[i].0, &senders[i].prefix);
        let got = shown(&listen.seen, from, prefix);
        let acked = sent.iter().filter(|s| s.acknowledged()).count();
        eprintln!(
            "{prefix}: {} sends, {acked} acknowledged, {} shown",
            sent.len(),
            got.len()
        );
        assert_once_in_order(sent, &got, prefix);
    }
    cluster.kill_all();
}

/// Sends `PREFIX N` for N in `range` from alice to bob, each acknowledged.
fn send_acked(
    alice: &std::path::Path,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<cluster::Sent> {
    range
        .map(|index| {
            let text = format!("{prefix} {index:04}");
            let out = json_lines(&ok(&ponte(alice, &["send", "bob", &text, "--json"])));
            let status = out[0]["status"].as_str().unwrap().to_owned();
            let s = cluster::Sent {
                index,
                text,
                status,
            };
            assert!(s.acknowledged(), "{s:?}");
            s
        })
        .collect()
}

/// The bus as `/healthz` of `node` reports it.
fn bus_is(node: &Node, state: &str) -> bool {
    node.healthz()
        .is_some_and(|(code, body)| code == 200 && body.contains(&format!("bus: {state}")))
}

#[test]
fn nats_restarted_under_traffic_loses_nothing_and_delivery_resumes() {
    if !pg::reachable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut nats) = OwnNats::start(tmp.path()) else {
        return;
    };
    let db = pg::TestDb::create();
    let dirs = [tmp.path().join("node1"), tmp.path().join("node2")];
    init_service(&db.url, &dirs);
    // Catch-up reads every 2 s: the bound on delivery while NATS is away.
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, "catch_up_interval = \"2s\"\n").unwrap();
    let bus = nats.url();
    let args = [
        "--store",
        db.url.as_str(),
        "--bus",
        bus.as_str(),
        "--config",
        config.to_str().unwrap(),
    ];
    let mut n1 = Node::start(&dirs[0], &args);
    let mut n2 = Node::start(&dirs[1], &args);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    common::register(&alice, &n1.address(), "alice");
    common::register(&bob, &n2.address(), "bob");
    let mut listen = Listen::start(&bob);
    let prefix = "over nats";
    let mut sent = send_acked(&alice, prefix, 0..3);
    wait_all(&mut listen, &sent);
    for n in [&n1, &n2] {
        wait_until(WAIT, "bus connected", || bus_is(n, "connected"));
    }

    // Steady traffic from carol (on node 2) to bob beside it, through the
    // kill and the restart.
    let carol = tmp.path().join("carol");
    common::register(&carol, &n2.address(), "carol");
    let mut steady = Sender::start(&carol, "bob", "steady");
    steady.wait_more(1, WAIT);

    nats.kill();
    // Both nodes say so, and keep serving.
    for n in [&n1, &n2] {
        wait_until(WAIT, "/healthz reports the bus down", || {
            bus_is(n, "disconnected")
        });
    }
    let during = send_acked(&alice, prefix, 3..6);
    let t = Instant::now();
    wait_all(&mut listen, &during);
    eprintln!(
        "delivered without NATS (catch-up reads) in {:?}",
        t.elapsed()
    );
    sent.extend(during);

    nats.restart();
    for n in [&n1, &n2] {
        wait_until(WAIT, "/healthz reports the bus back", || {
            bus_is(n, "connected")
        });
    }
    let after = send_acked(&alice, prefix, 6..9);
    wait_all(&mut listen, &after);
    sent.extend(after);
    steady.wait_more(1, WAIT);
    let steady_sent = steady.stop();
    ok(&ponte(&carol, &["sync"]));
    wait_all(&mut listen, &steady_sent);
    listen.stop();
    assert_once_in_order(&sent, &shown(&listen.seen, "alice", prefix), prefix);
    let got = shown(&listen.seen, "carol", "steady");
    assert_once_in_order(&steady_sent, &got, "steady");
    eprintln!("steady: {} sends, {} shown", steady_sent.len(), got.len());
    n1.kill();
    n2.kill();
}

#[test]
fn postgres_restarted_sends_fail_cleanly_and_nothing_acknowledged_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pg = match OwnPg::start(&tmp.path().join("pg")) {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("skipped: cannot run a PostgreSQL of the test's own here: {why}");
            return;
        }
    };
    let url = pg.url();
    let data = tmp.path().join("node1");
    init_service(&url, std::slice::from_ref(&data));
    let mut node = Node::start(&data, &["--store", &url]);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    common::register(&alice, &node.address(), "alice");
    common::register(&bob, &node.address(), "bob");
    let prefix = "kept";
    // Acknowledged while bob is away: only PostgreSQL holds them.
    let mut sent = send_acked(&alice, prefix, 0..3);

    pg.crash();
    wait_until(WAIT, "/healthz reports the database down", || {
        node.healthz()
            .is_some_and(|(code, body)| code == 503 && body.contains("database unavailable"))
    });
    // A send now is not acknowledged: it stays queued, with a clear reason.
    for index in 3..5 {
        let text = format!("{prefix} {index:04}");
        let out = ponte(&alice, &["send", "bob", &text, "--json"]);
        let err = common::stderr(&out);
        let status = json_lines(&common::stdout(&out))
            .first()
            .and_then(|v| v["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("exit {:?}", out.status));
        eprintln!("while PostgreSQL is down, send says: {}", err.trim());
        assert_eq!(status, "queued", "stderr: {err}");
        assert!(
            err.contains("try again") || err.contains("unavailable"),
            "no clear reason: {err}"
        );
        sent.push(cluster::Sent {
            index,
            text,
            status,
        });
    }

    pg.restart();
    wait_until(WAIT, "/healthz reports the database back", || {
        node.healthz().is_some_and(|(code, _)| code == 200)
    });
    // The queued ones go now; then one more, acknowledged at once.
    ok(&ponte(&alice, &["sync"]));
    sent.extend(send_acked(&alice, prefix, 5..6));
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let shown = shown(&got, "alice", prefix);
    assert_eq!(shown, (0..6).collect::<Vec<_>>(), "{got:?}");
    assert_once_in_order(&sent, &shown, prefix);
    node.kill();
}

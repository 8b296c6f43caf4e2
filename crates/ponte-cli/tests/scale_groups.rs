//! A group across several server nodes, with real processes: three nodes
//! on one PostgreSQL database and one NATS, sharing one blob directory,
//! behind two TLS relays (`cluster::Cluster`). Four members spread over
//! the three nodes send to their group under steady traffic while nodes
//! are SIGKILLed in turn; every acknowledged group message arrives exactly
//! once, in its sender's order, at every other member, and the senders'
//! ticks end at delivered to and read by all. Then a file sent to the
//! group by a member on one node is fetched by members on the others.
//! Skips with a reason when PostgreSQL or NATS is not there.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "common/cluster.rs"]
mod cluster;
mod common;
// The server crate's test helper for PostgreSQL (fresh database, skip).
#[allow(dead_code)]
#[path = "../../ponte-server/tests/common/pg.rs"]
mod pg;

use cluster::{
    assert_once_in_order, metric, nats_reachable, nats_url, register_via, shown, wait_all, Cluster,
    Sender, Sent,
};
use common::{json_lines, ok, ponte, Listen, WAIT};

/// `ponte ARGS… --json` on `profile`, checked; its JSON lines.
fn json(profile: &Path, args: &[&str]) -> Vec<Value> {
    let mut args = args.to_vec();
    args.push("--json");
    json_lines(&ok(&ponte(profile, &args)))
}

#[test]
fn a_group_spread_over_three_nodes_loses_nodes_under_traffic_and_gets_a_file() {
    if !pg::reachable() || !nats_reachable() {
        return;
    }
    let db = pg::TestDb::create();
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), &db.url, &nats_url(), "");
    let (a, b) = (cluster.vias[0].clone(), cluster.vias[1].clone());
    let p = |n: &str| tmp.path().join(n);
    // alice on node 1 (relay A), bob on node 3 (relay B), carol and dave
    // on node 2 directly (the relays are their fallback).
    register_via(&p("alice"), &cluster.nowhere, "alice", &[&a, &b]);
    register_via(&p("bob"), &cluster.nowhere, "bob", &[&b, &a]);
    for name in ["carol", "dave"] {
        register_via(&p(name), &cluster.nodes[1].address(), name, &[&a, &b]);
    }
    let created = json(
        &p("alice"),
        &["group", "create", "team", "bob", "carol", "dave"],
    );
    assert_eq!(created[0]["members"].as_array().unwrap().len(), 4);
    // Each member learns of the group before sending to it.
    for name in ["bob", "carol", "dave"] {
        json(&p(name), &["sync"]);
    }

    // alice, bob and carol send to the group, one `ponte send` at a time;
    // dave listens (a `send` on a listening profile would take over its
    // connection).
    let senders_of = ["alice", "bob", "carol"];
    let mut listen = Listen::start(&p("dave"));
    let mut senders: Vec<Sender> = senders_of
        .iter()
        .map(|from| Sender::start(&p(from), "g:team", &format!("{from}>team")))
        .collect();
    let long = WAIT * 3;
    for s in &senders {
        s.wait_more(2, long);
    }
    // Node 2 (carol's and dave's: they move to the relays), then node 1
    // (alice's: relay A moves her to node 2); traffic goes on meanwhile.
    let t = Instant::now();
    for i in [1, 0] {
        cluster.nodes[i].kill();
        for s in &senders {
            s.wait_more(1, long);
        }
        cluster.nodes[i].restart();
        eprintln!("node {} down and back at {:?}", i + 1, t.elapsed());
    }
    let sent: Vec<Vec<Sent>> = senders.iter_mut().map(Sender::stop).collect();

    // A sync each: it sends what a killed node left in the outbox and
    // receives the others' messages (read receipts going out); dave gets
    // everything, then syncs for the receipts his killed listen left.
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); senders_of.len()];
    for (i, from) in senders_of.iter().enumerate() {
        seen[i].extend(json(&p(from), &["sync"]));
    }
    for s in &sent {
        wait_all(&mut listen, s);
    }
    listen.stop();
    listen.seen.extend(json(&p("dave"), &["sync"]));
    // Then syncs until every sender's ticks are complete (what a later
    // sync of the first round sent is received, and receipted, here).
    let mut incomplete = Vec::new();
    for _round in 0..4 {
        incomplete.clear();
        for (i, from) in senders_of.iter().enumerate() {
            seen[i].extend(json(&p(from), &["sync"]));
            incomplete.extend(unfinished_ticks(&p(from), from, &sent[i]));
        }
        if incomplete.is_empty() {
            break;
        }
    }
    assert!(
        incomplete.is_empty(),
        "ticks not at delivered to and read by 3 of 3: {incomplete:#?}"
    );
    listen.seen.extend(json(&p("dave"), &["sync"]));

    for (i, from) in senders_of.iter().enumerate() {
        let prefix = &senders[i].prefix;
        let acked = sent[i].iter().filter(|s| s.acknowledged()).count();
        eprintln!("{prefix}: {} sends, {acked} acknowledged", sent[i].len());
        // At every other member, once and in order.
        let got = shown(&listen.seen, from, prefix);
        assert_once_in_order(&sent[i], &got, &format!("{prefix} at dave"));
        for (j, other) in senders_of.iter().enumerate().filter(|(j, _)| *j != i) {
            let got = shown(&seen[j], from, prefix);
            assert_once_in_order(&sent[i], &got, &format!("{prefix} at {other}"));
        }
    }

    a_file_to_the_group(&cluster, tmp.path(), &p);
    cluster.kill_all();
}

/// The lines of `from`'s history of the group for acknowledged sends of
/// `sent` whose ticks are not yet at read by and delivered to all three
/// others (or that are missing).
fn unfinished_ticks(profile: &Path, from: &str, sent: &[Sent]) -> Vec<Value> {
    let history = json(profile, &["history", "g:team"]);
    sent.iter()
        .filter(|s| s.acknowledged())
        .filter_map(|s| {
            let line = history
                .iter()
                .find(|v| v["text"] == s.text.as_str() && v["from"] == from);
            let done = line.is_some_and(|l| {
                l["status"] == "read" && l["delivered_to"] == 3 && l["read_by"] == 3 && l["of"] == 3
            });
            (!done).then(|| line.cloned().unwrap_or_else(|| s.text.as_str().into()))
        })
        .collect()
}

/// alice sends a file to the group; bob, carol and dave fetch it through
/// their nodes (at least one other than the node that took the upload),
/// their clients checking its hash, and get the same bytes.
fn a_file_to_the_group(cluster: &Cluster, dir: &Path, p: &dyn Fn(&str) -> PathBuf) {
    let bytes: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = dir.join("minutes.bin");
    std::fs::write(&file, &bytes).unwrap();
    let received = |c: &Cluster| -> Vec<u64> {
        c.nodes
            .iter()
            .map(|n| metric(n, "blob_bytes_received"))
            .collect()
    };
    let served = |c: &Cluster| -> Vec<u64> {
        c.nodes
            .iter()
            .map(|n| metric(n, "blob_bytes_sent"))
            .collect()
    };
    let (in0, out0) = (received(cluster), served(cluster));
    let sent = json(
        &p("alice"),
        &[
            "send",
            "g:team",
            "--file",
            file.to_str().unwrap(),
            "minutes",
        ],
    );
    assert_eq!(sent[0]["status"], "sent", "{sent:?}");
    for name in ["bob", "carol", "dave"] {
        let got = json(&p(name), &["sync", "--auto-download", "100000000"]);
        let fetched = got
            .iter()
            .find_map(|v| v["file_fetched"].as_str())
            .unwrap_or_else(|| panic!("{name} fetched no file: {got:?}"));
        assert!(
            std::fs::read(fetched).unwrap() == bytes,
            "{name}: the bytes differ"
        );
    }
    let took: Vec<bool> = received(cluster)
        .iter()
        .zip(&in0)
        .map(|(now, before)| now > before)
        .collect();
    let gave: Vec<bool> = served(cluster)
        .iter()
        .zip(&out0)
        .map(|(now, before)| now > before)
        .collect();
    eprintln!("upload taken by nodes {took:?}, downloads served by {gave:?}");
    assert!(
        (0..3).any(|i| gave[i] && !took[i]),
        "no node but the uploader's served the file: took {took:?}, gave {gave:?}"
    );
}

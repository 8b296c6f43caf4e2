//! Files across several server nodes when nodes die, with real processes:
//! three nodes on one PostgreSQL database and one NATS, sharing one blob
//! directory, behind two TLS relays (`cluster::Cluster`), each client's
//! relays reached through a recording forwarder. The node taking an upload
//! is SIGKILLed five eighths of the way through it: the upload goes on
//! through a relay to another node from the offset the service recorded
//! (far less than the blob again), and no finished blob is ever visible
//! before it is whole. Then the node serving the download is SIGKILLed
//! five eighths of the way through it: the
//! download goes on from where it was on another node. The file arrives
//! whole (the client checks its hash; the bytes are compared). Skips with
//! a reason when PostgreSQL or NATS is not there.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

#[path = "common/cluster.rs"]
mod cluster;
mod common;
// The server crate's test helper for PostgreSQL (fresh database, skip).
#[allow(dead_code)]
#[path = "../../ponte-server/tests/common/pg.rs"]
mod pg;

use cluster::{metric, nats_reachable, nats_url, register_via, Cluster};
use common::{command, json_lines, ok, ponte, wait_output, Forwarder};

/// The file: 12 MiB, long enough to be cut part of the way in a debug build.
const SIZE: usize = 12 * 1024 * 1024;
/// The longest an upload or download may take here (a loaded machine).
const TRANSFER: Duration = Duration::from_secs(300);

fn content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The sizes of the files in `dir` itself (not below).
fn file_sizes(dir: &Path) -> Vec<u64> {
    // Blobs only: a blob's file is named by its id, 32 hex digits (the
    // directory also holds the service's marker, `ponte-blob-dir`).
    let is_blob = |name: &str| name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_blob(&e.file_name().to_string_lossy()))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .collect()
}

/// The size of the partial download of `profile` (its `files/*.part`).
fn partial_download_len(profile: &Path) -> u64 {
    std::fs::read_dir(profile.join("files"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// Polls (every 5 ms, at most [`TRANSFER`]) until `done()` or `child`
/// exits, checking `always()` at every step; true if `done()`.
fn until(child: &mut Child, mut done: impl FnMut() -> bool, always: &dyn Fn()) -> bool {
    let deadline = Instant::now() + TRANSFER;
    while Instant::now() < deadline {
        always();
        if done() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The node whose counter `name` is highest (the one carrying a transfer).
fn busiest(cluster: &Cluster, name: &str) -> usize {
    let counts: Vec<u64> = cluster.nodes.iter().map(|n| metric(n, name)).collect();
    assert!(counts.iter().any(|&c| c > 0), "no node counts {name}");
    (0..counts.len()).max_by_key(|&i| counts[i]).unwrap()
}

/// The bytes `taps` carried, in total.
fn carried(taps: &[Forwarder]) -> u64 {
    taps.iter().map(|t| t.captured().len() as u64).sum()
}

#[test]
fn the_node_under_an_upload_then_a_download_is_killed_and_each_resumes_on_another() {
    if !pg::reachable() || !nats_reachable() {
        return;
    }
    let db = pg::TestDb::create();
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), &db.url, &nats_url(), "");
    let relay = |i: usize| cluster.relays[i].addr("tls");
    // alice's taps lead to relay A (node 1 first), then B; bob's to relay B
    // (node 3 first), then A. Neither has a direct route.
    let alice_taps = [Forwarder::start(relay(0)), Forwarder::start(relay(1))];
    let bob_taps = [Forwarder::start(relay(1)), Forwarder::start(relay(0))];
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    for (profile, name, taps) in [(&alice, "alice", &alice_taps), (&bob, "bob", &bob_taps)] {
        let vias: Vec<String> = taps.iter().map(|t| format!("tls://{}", t.addr)).collect();
        register_via(profile, &cluster.nowhere, name, &[&vias[0], &vias[1]]);
    }
    let bytes = content(SIZE);
    let path = tmp.path().join("report.pdf");
    std::fs::write(&path, &bytes).unwrap();
    let blob = ponte_e2e::file::ciphertext_len(SIZE as u64);
    let blob_dir = cluster.blob_dir.clone();
    // A finished blob is only ever there whole.
    let whole_or_nothing = || {
        for len in file_sizes(&blob_dir) {
            assert_eq!(len, blob, "a finished blob of {len} bytes, not {blob}");
        }
    };
    let partial = || file_sizes(&blob_dir.join("partial")).into_iter().max();

    // The upload, and its node killed five eighths of the way: starting
    // over would carry 1.6 times the blob, going on from the recorded
    // offset about the blob and the appends that were in flight.
    let before = carried(&alice_taps);
    let mut child = command(
        &alice,
        &["send", "bob", "--file", path.to_str().unwrap(), "--json"],
    )
    .spawn()
    .unwrap();
    let far = until(
        &mut child,
        || partial().unwrap_or(0) >= blob * 5 / 8,
        &whole_or_nothing,
    );
    assert!(far, "the upload never got five eighths of the way");
    let up_node = busiest(&cluster, "blob_bytes_received");
    cluster.nodes[up_node].kill();
    eprintln!(
        "killed node {} with {:?} bytes of the {blob}-byte upload on disk",
        up_node + 1,
        partial()
    );
    until(&mut child, || false, &whole_or_nothing);
    // `send` finishes it within its retries, or leaves it queued (exit 0)
    // and `sync` finishes it.
    let out = json_lines(&ok(&wait_output(child, TRANSFER)));
    if out[0]["status"] != "sent" {
        ok(&ponte(&alice, &["sync", "--json"]));
    }
    whole_or_nothing();
    let h = json_lines(&ok(&ponte(&alice, &["history", "bob", "--json"])));
    assert_eq!(h.len(), 1, "{h:?}");
    assert_ne!(h[0]["status"], "queued", "{h:?}");
    let up = carried(&alice_taps) - before;
    eprintln!("{blob}-byte blob: {up} bytes through alice's relays");
    assert!(
        up < blob + blob / 2,
        "{up} bytes carried for a {blob}-byte blob"
    );
    let finished_on = busiest(&cluster, "blob_bytes_received");
    assert_ne!(finished_on, up_node, "the upload went on on another node");
    cluster.nodes[up_node].restart();

    // The download, and its node killed five eighths of the way.
    let lines = json_lines(&ok(&ponte(
        &bob,
        &["sync", "--json", "--auto-download", "0"],
    )));
    let id = lines
        .iter()
        .find(|v| v["file"]["name"] == "report.pdf")
        .and_then(|v| v["id"].as_str())
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_owned();
    let target = tmp.path().join("got.pdf");
    let before = carried(&bob_taps);
    let sent_before: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| metric(n, "blob_bytes_sent"))
        .collect();
    let mut child = command(
        &bob,
        &[
            "file",
            "get",
            &id,
            "--out",
            target.to_str().unwrap(),
            "--json",
        ],
    )
    .spawn()
    .unwrap();
    let far = until(
        &mut child,
        || partial_download_len(&bob) >= blob * 5 / 8,
        &|| {},
    );
    assert!(far, "the download never got five eighths of the way");
    let serving: Vec<u64> = cluster
        .nodes
        .iter()
        .zip(&sent_before)
        .map(|(n, b)| metric(n, "blob_bytes_sent").saturating_sub(*b))
        .collect();
    let down_node = (0..3).max_by_key(|&i| serving[i]).unwrap();
    cluster.nodes[down_node].kill();
    eprintln!(
        "killed node {} with {} bytes of the download at bob",
        down_node + 1,
        partial_download_len(&bob)
    );
    let got = json_lines(&ok(&wait_output(child, TRANSFER)));
    assert_eq!(got[0]["path"], target.to_str().unwrap());
    assert!(std::fs::read(&target).unwrap() == bytes, "the bytes differ");
    let down = carried(&bob_taps) - before;
    eprintln!("{blob}-byte blob: {down} bytes through bob's relays");
    assert!(
        down < blob + blob / 2,
        "{down} bytes carried for a {blob}-byte blob"
    );
    cluster.kill_all();
}

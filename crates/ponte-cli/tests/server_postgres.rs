//! `ponte server` on PostgreSQL, with real processes and a fresh database:
//! `ponte server init --store …` prepares it (schema, the service's key in
//! the data directory, recorded in the database), a server started with
//! `--store` carries a chat between two `ponte` clients both ways (the
//! accounts are rows in PostgreSQL, and no SQLite file appears), an invite
//! made with `ponte server invite --store …` lets a user register on an
//! invite-only node, and a node whose key is not the service's is refused
//! with a clear error. Two nodes on one database and one NATS, a client on
//! each, deliver messages both ways exactly once and in order, pushed
//! through the bus (the catch-up read is set to an hour, so nothing else
//! could bring them). Skips with a reason when PostgreSQL or NATS is not
//! reachable (unless `PONTE_REQUIRE_PG=1`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

#[path = "common/cluster.rs"]
mod cluster;
mod common;
// The server crate's test helper for PostgreSQL (fresh database, skip).
#[allow(dead_code)]
#[path = "../../ponte-server/tests/common/pg.rs"]
mod pg;

use cluster::{nats_reachable, nats_url};
use common::{
    command, json_lines, ok, ponte, stderr, wait_output, with_text, Killed, Server, PONTE, WAIT,
};

/// `ponte server SUBCOMMAND …`, waited for.
fn server_cmd(args: &[&str]) -> std::process::Output {
    let child = Command::new(PONTE)
        .arg("server")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, WAIT)
}

/// Rows in `table` of the test database.
fn count(url: &str, table: &str) -> i64 {
    let url = url.to_owned();
    let sql = format!("SELECT COUNT(*) FROM {table}");
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let c = pg::connect(&url).await.unwrap();
                c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
            })
    })
    .join()
    .unwrap()
}

#[test]
fn two_clients_chat_through_a_server_on_postgres() {
    if !pg::reachable() {
        return;
    }
    let db = pg::TestDb::create();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node1");
    let data_arg = data.to_str().unwrap();

    let out = server_cmd(&["init", "--store", &db.url, "--data", data_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(data.join("server.key").is_file());
    assert!(stderr(&out).contains("records this service's key"));
    // Again: nothing changes (the same key is recorded).
    let again = server_cmd(&["init", "--store", &db.url, "--data", data_arg]);
    assert!(again.status.success(), "{}", stderr(&again));

    let server = Server::start_with(&data, &["--store", &db.url, "--invite-only"]);
    let address = server.address();
    let invite = || {
        ok(&server_cmd(&["invite", "--store", &db.url]))
            .trim()
            .to_owned()
    };
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    for (profile, name) in [(&alice, "alice"), (&bob, "bob")] {
        let token = invite();
        assert_eq!(token.len(), 32, "{token:?}");
        let out = ponte(
            profile,
            &[
                "register", "--server", &address, name, "--invite", &token, "--json",
            ],
        );
        common::assert_registered(&out, name);
    }
    // Without an invite: refused.
    let carol = tmp.path().join("carol");
    let out = ponte(
        &carol,
        &["register", "--server", &address, "carol", "--json"],
    );
    assert!(!out.status.success());

    ok(&ponte(&alice, &["send", "bob", "hello over postgres"]));
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert_eq!(with_text(&got, "hello over postgres").len(), 1, "{got:?}");
    ok(&ponte(&bob, &["send", "alice", "hello back"]));
    let got = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    assert_eq!(with_text(&got, "hello back").len(), 1, "{got:?}");
    // Each message once: a second sync brings nothing new.
    let again = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert!(
        with_text(&again, "hello over postgres").is_empty(),
        "{again:?}"
    );

    assert_eq!(count(&db.url, "accounts"), 2);
    assert_eq!(count(&db.url, "invites"), 0, "both invites used, once");
    assert!(!data.join("ponte.db").exists(), "no SQLite database");

    // A second node with a key of its own is refused: it would serve under
    // another address.
    let other = tmp.path().join("other");
    let mut cmd = Server::command(&other, &["--store", &db.url]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, WAIT);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not the service's"),
        "{}",
        stderr(&out)
    );
    assert!(
        !other.join("server.key").exists(),
        "the failed start left its key"
    );
    server.kill();
}

/// `ponte listen --json` on a profile: its output lines as they come.
struct Listen {
    _child: Killed,
    lines: mpsc::Receiver<String>,
}

impl Listen {
    /// Starts it and waits until it says it is connected.
    fn start(profile: &std::path::Path) -> Self {
        let mut child = command(profile, &["listen", "--json"]).spawn().unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(format!("out:{line}"));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("err:{line}"));
            }
        });
        let l = Self {
            _child: Killed(child),
            lines,
        };
        l.wait_for(|l| l.starts_with("err:") && l.contains("connected to"));
        l
    }

    fn wait_for(&self, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if what(&line) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("listen did not print the expected line in time");
    }

    /// The texts of the next `n` messages from `from` it prints.
    fn messages(&self, n: usize, from: &str) -> Vec<String> {
        (0..n)
            .map(|_| {
                let line = self.wait_for(|l| {
                    l.strip_prefix("out:")
                        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                        .is_some_and(|v| v["from"] == from && v["text"].is_string())
                });
                let v: serde_json::Value =
                    serde_json::from_str(line.strip_prefix("out:").unwrap()).unwrap();
                v["text"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Whatever else it printed by now.
    fn rest(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

#[test]
fn two_nodes_on_one_database_and_nats_deliver_both_ways_once_in_order() {
    if !pg::reachable() || !nats_reachable() {
        return;
    }
    let db = pg::TestDb::create();
    let nats = nats_url();
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("node1"), tmp.path().join("node2"));
    let out = server_cmd(&["init", "--store", &db.url, "--data", d1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The second node gets a copy of the service's key.
    std::fs::create_dir(&d2).unwrap();
    std::fs::copy(d1.join("server.key"), d2.join("server.key")).unwrap();
    // Catch-up reads an hour apart: what arrives within the test came
    // through the bus.
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, "catch_up_interval = \"1h\"\n").unwrap();
    let args = [
        "--store",
        &db.url,
        "--bus",
        &nats,
        "--config",
        config.to_str().unwrap(),
    ];
    let n1 = Server::start_with(&d1, &args);
    let n2 = Server::start_with(&d2, &args);
    assert_eq!(n1.key, n2.key, "one service, one address key");
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    common::register(&alice, &n1.address(), "alice");
    common::register(&bob, &n2.address(), "bob");

    let texts = |from: &str| (0..5).map(|i| format!("{from} {i}")).collect::<Vec<_>>();
    // Bob on node 2 listens; alice sends through node 1.
    let bob_listen = Listen::start(&bob);
    for t in texts("from alice") {
        ok(&ponte(&alice, &["send", "bob", &t]));
    }
    assert_eq!(bob_listen.messages(5, "alice"), texts("from alice"));
    // Alice on node 1 listens; bob sends through node 2.
    let alice_listen = Listen::start(&alice);
    for t in texts("from bob") {
        ok(&ponte(&bob, &["send", "alice", &t]));
    }
    assert_eq!(alice_listen.messages(5, "bob"), texts("from bob"));
    // Exactly once: nothing printed twice since, and a sync brings nothing
    // new.
    std::thread::sleep(std::time::Duration::from_millis(500));
    for (l, from) in [(&bob_listen, "alice"), (&alice_listen, "bob")] {
        let again: Vec<serde_json::Value> = l
            .rest()
            .iter()
            .filter_map(|x| serde_json::from_str(x.strip_prefix("out:")?).ok())
            .filter(|v: &serde_json::Value| v["from"] == from && v["text"].is_string())
            .collect();
        assert!(again.is_empty(), "{again:?}");
    }
    drop(bob_listen);
    let synced = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert!(with_text(&synced, "from alice 0").is_empty(), "{synced:?}");
    n1.kill();
    n2.kill();
}

/// A SQLite server with queued messages moves to PostgreSQL with `ponte
/// server migrate`: a client that never registered again gets what waited
/// for it, in order and once, through the same address (a forwarder stands
/// for the unchanged host and port); the service carries on both ways; a
/// second migrate into the same database is refused.
#[test]
fn a_sqlite_server_moves_to_postgres_and_clients_carry_on() {
    if !pg::reachable() {
        return;
    }
    let db = pg::TestDb::create();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let data_arg = data.to_str().unwrap();
    let server = Server::start(&data);
    let fwd = common::Forwarder::start(server.addr);
    let address = server.address_at(fwd.addr.port());
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    common::register(&alice, &address, "alice");
    common::register(&bob, &address, "bob");
    let queued: Vec<String> = (0..3).map(|i| format!("queued {i}")).collect();
    for t in &queued {
        ok(&ponte(&alice, &["send", "bob", t]));
    }
    // Stopped hard: the WAL is still there.
    server.kill();

    let out = server_cmd(&["migrate", "--data", data_arg, "--to", &db.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("mailbox 3"), "{}", stderr(&out));
    assert!(!data.join("ponte.db").exists());
    assert!(data.join("ponte.db.migrated").is_file());
    assert_eq!(count(&db.url, "accounts"), 2);

    let server = Server::start_with(&data, &["--store", &db.url]);
    assert_eq!(server.key, address.rsplit_once('#').unwrap().1, "same key");
    fwd.retarget(server.addr);
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let texts: Vec<&str> = got.iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(texts, queued.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&ponte(&bob, &["send", "alice", "after the move"]));
    let got = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    assert_eq!(with_text(&got, "after the move").len(), 1, "{got:?}");
    let again = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    assert!(with_text(&again, "queued 0").is_empty(), "{again:?}");
    server.kill();

    // The database now holds a service: a second migrate is refused.
    std::fs::rename(data.join("ponte.db.migrated"), data.join("ponte.db")).unwrap();
    let out = server_cmd(&["migrate", "--data", data_arg, "--to", &db.url]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds accounts"),
        "{}",
        stderr(&out)
    );
}

//! `ponte server` on PostgreSQL, with real processes and a fresh database:
//! `ponte server init --store …` prepares it (schema, the service's key in
//! the data directory, recorded in the database), a server started with
//! `--store` carries a chat between two `ponte` clients both ways (the
//! accounts are rows in PostgreSQL, and no SQLite file appears), an invite
//! made with `ponte server invite --store …` lets a user register on an
//! invite-only node, and a node whose key is not the service's is refused
//! with a clear error. Skips with a reason when PostgreSQL is not reachable
//! (unless `PONTE_REQUIRE_PG=1`).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

mod common;
// The server crate's test helper for PostgreSQL (fresh database, skip).
#[allow(dead_code)]
#[path = "../../ponte-server/tests/common/pg.rs"]
mod pg;

use common::{json_lines, ok, ponte, stderr, wait_output, with_text, Server, PONTE, WAIT};

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

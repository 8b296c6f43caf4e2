//! Upgrading a schema-1 database (one AUTOINCREMENT `mailbox` table for
//! messages, receipts and notices; `accounts.pending`) to the current schema
//! (2, then 3 with the shared bodies of group messages), built by hand in a
//! temp dir: items, times, peers and seq order survive, pending
//! counts are recounted, new seqs stay above every seq schema 1 handed out,
//! and the upgrade is idempotent and also done by `create_invite`. A
//! schema-2 database gets the group bodies and keeps its items.
#![allow(clippy::unwrap_used)]

mod common;

use common::{accepted_seq, msg_max};
use ponte_server::store::{
    AccountId, ItemKind, MailItem, NewAccount, RegisterOutcome, SendOutcome, Seq, SqliteStore,
    Store, UnixMillis, DB_FILE,
};
use rusqlite::{params, Connection};
use std::path::Path;

/// The schema version the server writes.
const LATEST: i64 = 4;

/// The schema-1 definition, as schema-1 servers wrote it.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE,
    noise_key BLOB NOT NULL UNIQUE,
    curve25519 BLOB NOT NULL,
    ed25519 BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS one_time_keys (
    account INTEGER NOT NULL,
    key_id BLOB NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL,
    UNIQUE (account, key_id)
);
CREATE INDEX IF NOT EXISTS one_time_keys_account ON one_time_keys(account);
CREATE TABLE IF NOT EXISTS fallback_keys (
    account INTEGER PRIMARY KEY,
    key_id BLOB NOT NULL,
    public_key BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    peer INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mailbox_owner ON mailbox(owner, seq);
CREATE INDEX IF NOT EXISTS mailbox_expiry ON mailbox(expires_at);
CREATE TABLE IF NOT EXISTS sent (
    sender INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_time ON sent(accepted_at);
CREATE TABLE IF NOT EXISTS invites (
    token_hash BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

const ALICE: AccountId = 1;
const BOB: AccountId = 2;
const CAROL: AccountId = 3;

/// The seq of a row that schema 1 handed out and then deleted: it is the
/// AUTOINCREMENT high-water mark (`sqlite_sequence`), above every live seq.
const DELETED_HIGH_SEQ: i64 = 1000;

/// One schema-1 mailbox row.
struct V1Row {
    owner: AccountId,
    /// 0 message, 1 receipt, 2 expired notice.
    kind: i64,
    peer: AccountId,
    /// Every byte of the message id.
    id: u8,
    body: &'static [u8],
    created_at: i64,
}

const fn row(
    owner: AccountId,
    kind: i64,
    peer: AccountId,
    id: u8,
    body: &'static [u8],
    created_at: i64,
) -> V1Row {
    V1Row {
        owner,
        kind,
        peer,
        id,
        body,
        created_at,
    }
}

/// The schema-1 mailbox, inserted in this order, so seqs are 1..=7.
const V1_ROWS: [V1Row; 7] = [
    row(BOB, 0, ALICE, 1, b"m1", 100),
    row(ALICE, 1, BOB, 9, b"", 110),
    row(BOB, 0, CAROL, 2, b"m2", 120),
    row(CAROL, 2, BOB, 7, b"", 130),
    row(BOB, 0, ALICE, 3, b"m3", 140),
    row(BOB, 0, ALICE, 4, b"m4", 150),
    row(ALICE, 1, BOB, 8, b"", 160),
];

/// A mailbox item as compared: (seq, kind, message id, body, time, peer).
type Item = (u64, ItemKind, Vec<u8>, Vec<u8>, i64, String);

/// Largest live seq in the schema-1 mailbox.
const V1_MAX_SEQ: u64 = 7;
/// Messages waiting for bob in schema 1.
const BOB_PENDING: u32 = 4;
/// Expiry of every schema-1 row.
const V1_EXPIRES: i64 = 1_000_000;

fn v1_conn(dir: &Path) -> Connection {
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(SCHEMA_V1).unwrap();
    for (id, handle) in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")] {
        let n = u8::try_from(id).unwrap();
        c.execute(
            "INSERT INTO accounts (id, handle, noise_key, curve25519, ed25519, signature,
                                   created_at, pending)
             VALUES (?1, ?2, ?3, ?3, ?3, ?4, 1, ?5)",
            params![
                id,
                handle,
                &[n; 32][..],
                &[n; 64][..],
                if id == BOB { BOB_PENDING } else { 0 }
            ],
        )
        .unwrap();
    }
    c
}

/// Builds a schema-1 database in `dir` with live items (seqs 1..=7) and a
/// deleted row at [`DELETED_HIGH_SEQ`].
fn build_v1(dir: &Path) {
    let c = v1_conn(dir);
    for r in &V1_ROWS {
        let id = &[r.id; 16][..];
        c.execute(
            "INSERT INTO mailbox (owner, kind, peer, message_id, body, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.owner,
                r.kind,
                r.peer,
                id,
                r.body,
                r.created_at,
                V1_EXPIRES
            ],
        )
        .unwrap();
        if r.kind == 0 {
            c.execute(
                "INSERT INTO sent (sender, message_id, accepted_at) VALUES (?1, ?2, ?3)",
                params![r.peer, id, r.created_at],
            )
            .unwrap();
        }
    }
    // A message that was delivered (acked) after getting the highest seq.
    c.execute(
        "INSERT INTO mailbox (seq, owner, kind, peer, message_id, body, created_at, expires_at)
         VALUES (?1, ?2, 0, ?3, ?4, x'00', 170, ?5)",
        params![DELETED_HIGH_SEQ, BOB, ALICE, &[5u8; 16][..], V1_EXPIRES],
    )
    .unwrap();
    c.execute("DELETE FROM mailbox WHERE seq = ?1", [DELETED_HIGH_SEQ])
        .unwrap();
    let (max, sequence): (i64, i64) = c
        .query_row(
            "SELECT (SELECT MAX(seq) FROM mailbox),
                    (SELECT seq FROM sqlite_sequence WHERE name = 'mailbox')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(u64::try_from(max).unwrap(), V1_MAX_SEQ);
    assert_eq!(sequence, DELETED_HIGH_SEQ);
}

/// The schema-1 items of `owner`, as `fetch_mailbox` should return them.
fn expected_items(owner: AccountId) -> Vec<Item> {
    let handle = |id| match id {
        ALICE => "alice",
        BOB => "bob",
        _ => "carol",
    };
    V1_ROWS
        .iter()
        .enumerate()
        .filter(|(_, r)| r.owner == owner)
        .map(|(i, r)| {
            let kind = match r.kind {
                0 => ItemKind::Message,
                1 => ItemKind::Receipt,
                _ => ItemKind::Expired,
            };
            (
                u64::try_from(i).unwrap() + 1,
                kind,
                vec![r.id; 16],
                r.body.to_vec(),
                r.created_at,
                handle(r.peer).to_owned(),
            )
        })
        .collect()
}

fn flatten(items: &[MailItem]) -> Vec<Item> {
    items
        .iter()
        .map(|i| {
            (
                i.seq.0,
                i.kind,
                i.message_id.to_vec(),
                i.body.to_vec(),
                i.at.0,
                i.peer_handle.clone(),
            )
        })
        .collect()
}

fn user_version(dir: &Path) -> i64 {
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn table_names(dir: &Path) -> Vec<String> {
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    names
}

/// Every schema-1 item is where it was, with its kind, id, body, time, peer
/// and seq; the schema is the current one with the old table gone.
async fn assert_v1_items(store: &dyn Store) {
    for owner in [ALICE, BOB, CAROL] {
        let items = store.fetch_mailbox(owner, Seq::ZERO, 100).await.unwrap();
        assert_eq!(flatten(&items), expected_items(owner), "owner {owner}");
        let len = store.mailbox_len(owner).await.unwrap();
        assert_eq!(len as usize, expected_items(owner).len(), "owner {owner}");
    }
    // Paging by seq works across the two tables.
    let after = store.fetch_mailbox(BOB, Seq(3), 100).await.unwrap();
    assert_eq!(
        after.iter().map(|i| i.seq.0).collect::<Vec<_>>(),
        vec![5, 6],
        "bob after seq 3"
    );
}

#[tokio::test]
async fn schema1_migration_keeps_items_times_peers_and_order() {
    let dir = tempfile::tempdir().unwrap();
    build_v1(dir.path());
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_v1_items(&store).await;
    store.close();
    drop(store);
    assert_eq!(user_version(dir.path()), LATEST);
    let tables = table_names(dir.path());
    assert!(tables.iter().any(|t| t == "notices"), "{tables:?}");
    assert!(tables.iter().any(|t| t == "meta"), "{tables:?}");
    assert!(tables.iter().any(|t| t == "bodies"), "{tables:?}");
    assert!(!tables.iter().any(|t| t == "mailbox_v1"), "{tables:?}");
}

#[tokio::test]
async fn schema1_migration_new_seqs_above_old_max_and_acks_work() {
    let dir = tempfile::tempdir().unwrap();
    build_v1(dir.path());
    let store = SqliteStore::open(dir.path()).unwrap();
    let seq = accepted_seq(&store, msg_max(CAROL, "alice", 40, 1000, 100))
        .await
        .0;
    assert!(seq > V1_MAX_SEQ, "new seq {seq} not above old max");
    // Acking a migrated message turns it into a receipt with a fresh seq;
    // acking a migrated receipt deletes it.
    let out = store
        .ack(BOB, vec![Seq(1)], UnixMillis(2000), UnixMillis(900_000))
        .await
        .unwrap();
    assert_eq!(out.messages, 1);
    assert_eq!(out.receipts.len(), 1);
    let receipt = &out.receipts[0];
    assert_eq!(receipt.owner, ALICE);
    assert!(receipt.seq.0 > seq);
    assert_eq!(&receipt.message_id[..], &[1u8; 16]);
    let gone = store
        .ack(ALICE, vec![Seq(2)], UnixMillis(2000), UnixMillis(900_000))
        .await
        .unwrap();
    assert_eq!((gone.messages, gone.notices), (0, 1));
    let alice = store.fetch_mailbox(ALICE, Seq::ZERO, 100).await.unwrap();
    let got: Vec<(u64, ItemKind, &str)> = alice
        .iter()
        .map(|i| (i.seq.0, i.kind, i.peer_handle.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (7, ItemKind::Receipt, "bob"),
            (seq, ItemKind::Message, "carol"),
            (receipt.seq.0, ItemKind::Receipt, "bob"),
        ]
    );
    assert_eq!(alice[2].at.0, 2000);
    assert_eq!(store.mailbox_len(BOB).await.unwrap(), BOB_PENDING - 1);
    store.close();
}

#[tokio::test]
async fn schema1_migration_new_seq_above_sqlite_sequence() {
    let dir = tempfile::tempdir().unwrap();
    build_v1(dir.path());
    let store = SqliteStore::open(dir.path()).unwrap();
    let seq = accepted_seq(&store, msg_max(CAROL, "alice", 40, 1000, 100))
        .await
        .0;
    assert!(
        seq > u64::try_from(DELETED_HIGH_SEQ).unwrap(),
        "new seq {seq} reuses a seq schema 1 handed out (high-water mark {DELETED_HIGH_SEQ})"
    );
    store.close();
}

#[tokio::test]
async fn schema1_migration_of_drained_mailbox_does_not_restart_seqs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = v1_conn(dir.path());
        // 50 messages, all delivered and acked: the table is empty, the
        // AUTOINCREMENT counter is at 50.
        for i in 0..50u8 {
            c.execute(
                "INSERT INTO mailbox (owner, kind, peer, message_id, body, created_at, expires_at)
                 VALUES (?1, 0, ?2, ?3, x'00', 1, ?4)",
                params![BOB, ALICE, &[i; 16][..], V1_EXPIRES],
            )
            .unwrap();
        }
        c.execute("DELETE FROM mailbox", []).unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let seq = accepted_seq(&store, msg_max(ALICE, "bob", 99, 1000, 100))
        .await
        .0;
    assert!(seq > 50, "new seq {seq} reuses a seq schema 1 handed out");
    store.close();
}

#[tokio::test]
async fn schema1_migration_restores_pending_counts_and_dedup_log() {
    let dir = tempfile::tempdir().unwrap();
    build_v1(dir.path());
    let store = SqliteStore::open(dir.path()).unwrap();
    let max = BOB_PENDING + 1;
    // Bob has BOB_PENDING old messages: room for exactly one more.
    accepted_seq(&store, msg_max(CAROL, "bob", 50, 1000, max)).await;
    assert_eq!(
        store
            .send(msg_max(CAROL, "bob", 51, 1001, max))
            .await
            .unwrap(),
        SendOutcome::MailboxFull
    );
    // Receipts and notices do not count: alice (two receipts) takes one
    // message with max_pending 1.
    accepted_seq(&store, msg_max(CAROL, "alice", 52, 1002, 1)).await;
    // The dedup log came along: a retry of an old message is a duplicate
    // with its schema-1 accept time.
    assert_eq!(
        store
            .send(msg_max(ALICE, "bob", 1, 1003, 1000))
            .await
            .unwrap(),
        SendOutcome::Duplicate {
            accepted_at: UnixMillis(100)
        }
    );
    store.close();
}

#[tokio::test]
async fn schema1_migration_is_idempotent_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    build_v1(dir.path());
    let first_new;
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        first_new = accepted_seq(&store, msg_max(CAROL, "alice", 60, 1000, 100))
            .await
            .0;
        store.close();
    }
    for round in 0..2 {
        let store = SqliteStore::open(dir.path()).unwrap();
        // The migrated items are still there, once, next to the new one.
        let bob = store.fetch_mailbox(BOB, Seq::ZERO, 100).await.unwrap();
        assert_eq!(bob.len(), 4 + round, "round {round}");
        assert_eq!(flatten(&bob[..4]), expected_items(BOB), "round {round}");
        let alice = store.fetch_mailbox(ALICE, Seq::ZERO, 100).await.unwrap();
        let seqs: Vec<u64> = alice.iter().map(|i| i.seq.0).collect();
        assert_eq!(seqs, vec![2, 7, first_new], "round {round}");
        assert_eq!(store.mailbox_len(CAROL).await.unwrap(), 1, "round {round}");
        // Pending counts are still right: bob takes one more then is full.
        if round == 0 {
            accepted_seq(&store, msg_max(CAROL, "bob", 61, 1001, BOB_PENDING + 1)).await;
        }
        assert_eq!(
            store
                .send(msg_max(CAROL, "bob", 62, 1002, BOB_PENDING + 1))
                .await
                .unwrap(),
            SendOutcome::MailboxFull,
            "round {round}"
        );
        store.close();
        drop(store);
        assert_eq!(user_version(dir.path()), LATEST);
    }
}

#[tokio::test]
async fn create_invite_migrates_a_schema1_directory() {
    let dir = tempfile::tempdir().unwrap();
    build_v1(dir.path());
    let token = ponte_server::create_invite(dir.path()).unwrap();
    assert_eq!(user_version(dir.path()), LATEST);
    let tables = table_names(dir.path());
    assert!(tables.iter().any(|t| t == "notices"), "{tables:?}");
    assert!(!tables.iter().any(|t| t == "mailbox_v1"), "{tables:?}");
    // The store opens the already-migrated file, finds the old items, and
    // the invite works.
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_v1_items(&store).await;
    let created = store
        .register(NewAccount {
            handle: "dave".into(),
            noise_key: [4; 32],
            curve25519: [4; 32],
            ed25519: [4; 32],
            signature: vec![4; 64],
            invite: Some(token),
            invite_required: true,
            now: UnixMillis(5000),
        })
        .await
        .unwrap();
    assert!(
        matches!(created, RegisterOutcome::Created(_)),
        "{created:?}"
    );
    store.close();
}

/// A schema-2 database (made here by taking the group tables out of a new
/// one) is brought to the current schema: its messages and receipts stay,
/// and group messages can be sent, read and acknowledged.
#[tokio::test]
async fn schema2_migration_adds_group_bodies_and_keeps_items() {
    use common::{group_msg, msg, store_account};
    use ponte_server::store::GroupSendOutcome;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, carol) = {
        let store = SqliteStore::open(dir.path()).unwrap();
        let alice = store_account(&store, "alice", 1).await;
        let bob = store_account(&store, "bob", 2).await;
        let carol = store_account(&store, "carol", 3).await;
        accepted_seq(&store, msg(alice, "bob", 1, 10, 1_000_000)).await;
        let seq = accepted_seq(&store, msg(bob, "carol", 2, 11, 1_000_000)).await;
        store
            .ack(carol, vec![seq], UnixMillis(12), UnixMillis(1_000_000))
            .await
            .unwrap();
        store.close();
        (alice, bob, carol)
    };
    {
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch(
            "DROP TABLE bodies;
             ALTER TABLE mailbox DROP COLUMN body_id;
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    assert!(!table_names(dir.path()).iter().any(|t| t == "bodies"));
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(user_version(dir.path()), LATEST);
    let bobs = store.fetch_mailbox(bob, Seq::ZERO, 10).await.unwrap();
    type Summary<'a> = (ItemKind, &'a str, &'a [u8], Option<&'a [u8]>);
    let summary: Vec<Summary<'_>> = bobs
        .iter()
        .map(|i| {
            (
                i.kind,
                i.peer_handle.as_str(),
                &i.body[..],
                i.group_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (ItemKind::Message, "alice", &b"body"[..], None),
            (ItemKind::Receipt, "carol", &b""[..], None),
        ]
    );
    let out = store
        .send_group(group_msg(alice, &["bob", "carol"], 3, 20, 1_000_000))
        .await
        .unwrap();
    assert!(matches!(out, GroupSendOutcome::Accepted { entries: 2, .. }));
    let items = store.fetch_mailbox(carol, Seq::ZERO, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(&items[0].body[..], b"group body");
    assert_eq!(items[0].group_id.as_deref(), Some(&[0x6a; 16][..]));
    let acked = store
        .ack(
            carol,
            vec![items[0].seq],
            UnixMillis(30),
            UnixMillis(1_000_000),
        )
        .await
        .unwrap();
    assert_eq!(acked.messages, 1);
    store.close();
}

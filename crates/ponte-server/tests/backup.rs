//! `ponte_server::backup`: a copy taken while a store keeps writing holds
//! exactly the commits up to one moment (a prefix of the seqs), passes its
//! integrity check, opens as a store of its own, and is private; a
//! destination with files in it, a directory with no database and a
//! missing parent are refused and leave nothing behind.
#![allow(clippy::unwrap_used)]

mod common;

use common::store_account;

use bytes::Bytes;
use ponte_server::backup::{backup, BackupError};
use ponte_server::store::{
    AccountId, NewMessage, SendOutcome, Seq, SqliteStore, Store, UnixMillis,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

fn msg(sender: AccountId, n: u32) -> NewMessage {
    let mut message_id = [0u8; 16];
    message_id[..4].copy_from_slice(&n.to_be_bytes());
    NewMessage {
        sender,
        message_id,
        recipient: "bob".into(),
        body: Bytes::from(vec![7u8; 500]),
        now: UnixMillis(10),
        expires_at: UnixMillis(i64::MAX),
        max_pending: 1_000_000,
    }
}

async fn seqs(store: &dyn Store, owner: AccountId) -> Vec<Seq> {
    let items = store
        .fetch_mailbox(owner, Seq::ZERO, 1_000_000)
        .await
        .unwrap();
    items.iter().map(|i| i.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_writes_is_a_consistent_prefix() {
    const BEFORE: u32 = 2_000;
    const MAX_SENDS: u32 = 20_000;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    ponte_server::keyfile::load_or_create(&data).unwrap();
    let store = Arc::new(SqliteStore::open(&data).unwrap());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    for n in 0..BEFORE {
        store.send(msg(alice, n)).await.unwrap();
    }
    // Keep sending while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(BEFORE));
    let writer = {
        let (store, stop, done) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&done));
        tokio::spawn(async move {
            let mut n = BEFORE;
            while !stop.load(Ordering::Relaxed) && n < MAX_SENDS {
                let out = store.send(msg(alice, n)).await.unwrap();
                assert!(matches!(out, SendOutcome::Accepted { .. }), "{out:?}");
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    // The writer is going before the backup starts.
    for _ in 0..3_000 {
        if done.load(Ordering::Relaxed) >= BEFORE + 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let started_at = done.load(Ordering::Relaxed) as usize;
    let dest = tmp.path().join("copy");
    let summary = {
        let (data, dest) = (data.clone(), dest.clone());
        tokio::task::spawn_blocking(move || backup(&data, &dest))
            .await
            .unwrap()
            .unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    let sent = writer.await.unwrap();
    let all = seqs(&*store, bob).await;
    assert_eq!(all.len(), sent as usize);

    assert_eq!(summary.accounts, 2);
    let copied = summary.undelivered as usize;
    assert!(
        (started_at..=all.len()).contains(&copied),
        "{copied} of {} (the backup started after {started_at})",
        all.len()
    );
    eprintln!(
        "the backup holds {copied} of the {} messages sent",
        all.len()
    );
    // The copy opens as a store of its own and holds exactly the first
    // `copied` messages: one snapshot, no gaps, nothing torn.
    let restored = SqliteStore::open(&dest).unwrap();
    assert_eq!(seqs(&restored, bob).await, all[..copied]);
    // Same key: clients accept the restored server.
    assert_eq!(
        ponte_server::keyfile::load(&dest).unwrap().public(),
        ponte_server::keyfile::load(&data).unwrap().public()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), 0o700);
        assert_eq!(mode(&dest.join("ponte.db")), 0o600);
        assert_eq!(mode(&dest.join("server.key")), 0o600);
    }
    // A restored store goes on with fresh seqs, never one the original
    // handed out before the backup.
    let SendOutcome::Accepted { seq, .. } = restored.send(msg(alice, MAX_SENDS + 1)).await.unwrap()
    else {
        panic!()
    };
    assert!(seq > all[copied - 1]);
}

#[tokio::test]
async fn bad_destinations_and_sources_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    ponte_server::keyfile::load_or_create(&data).unwrap();
    drop(SqliteStore::open(&data).unwrap());

    // A destination with a file in it.
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "mine").unwrap();
    let e = backup(&data, &full).unwrap_err();
    assert!(matches!(e, BackupError::DestinationNotEmpty(_)), "{e}");
    assert_eq!(
        std::fs::read_to_string(full.join("keep.txt")).unwrap(),
        "mine"
    );

    // A source that is no server's data directory.
    let e = backup(&tmp.path().join("nothing"), &tmp.path().join("b1")).unwrap_err();
    assert!(matches!(e, BackupError::NoDatabase(_)), "{e}");
    assert!(e.to_string().contains("ponte.db does not exist"), "{e}");

    // A destination whose parent is missing.
    let e = backup(&data, &tmp.path().join("missing/b2")).unwrap_err();
    assert!(e.to_string().contains("no such directory"), "{e}");

    // Nothing was left: no partial copy, no staging directory.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data", "full"]);

    // An empty existing directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let summary = backup(&data, &empty).unwrap();
    assert_eq!((summary.accounts, summary.undelivered), (0, 0));
    assert!(empty.join("ponte.db").is_file() && empty.join("server.key").is_file());
}

/// The copy holds every file of the data directory a restore needs: the
/// database, the key and both records (`ponte server address` and
/// `invite` read them), and nothing else (the lock file holds nothing).
#[test]
fn the_backup_holds_every_file_of_the_data_directory() {
    use ponte_server::keyfile;
    use ponte_wire::address::ServerAddress;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (kp, _) = keyfile::load_or_create(&data).unwrap();
    drop(SqliteStore::open(&data).unwrap());
    let printed = ServerAddress {
        host: "chat.example.org".into(),
        port: 443,
        key: kp.public(),
    };
    keyfile::write_address(&data, &printed).unwrap();
    keyfile::write_registration(&data, true).unwrap();
    std::fs::write(data.join(ponte_server::LOCK_FILE), b"").unwrap();

    let dest = tmp.path().join("copy");
    backup(&data, &dest).unwrap();
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("ponte.db-") && n != ponte_server::LOCK_FILE)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&dest), names(&data));
    assert_eq!(
        names(&dest),
        [
            "ponte.db",
            "server.address",
            "server.key",
            "server.registration"
        ]
    );
    assert_eq!(keyfile::read_registration(&dest), Some(true));
    assert_eq!(keyfile::read_address(&dest).unwrap(), Some(printed));
    assert!(!dest.join(ponte_server::LOCK_FILE).exists());
}

//! What only the PostgreSQL store promises: two stores on one database (two
//! nodes of a service) keep every mailbox's items in seq order for readers
//! on either, and its limit exact; a store whose database goes away refuses
//! writes and reads with an error, and works again once it is back, with no
//! restart. Each test runs in a fresh database, and says why it skips when
//! PostgreSQL is not reachable (unless `PONTE_REQUIRE_PG=1`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{msg_max, no_sink, store_account, POSTGRES, WAIT};
use ponte_server::store::{PgOptions, PgStore, SendOutcome, Seq, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Two senders on two stores fill one mailbox at once while both stores
/// read it over and over: exactly `MAX` messages are accepted (the count
/// is one across nodes), seqs are unique, and every read, on either store,
/// holds every item below the highest seq it returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_keep_one_mailbox_in_order_and_within_its_limit() {
    if !(POSTGRES.ready)() {
        return;
    }
    const PER_SENDER: u16 = 150;
    const MAX: u32 = 200;
    let scratch = (POSTGRES.scratch)();
    let one = (POSTGRES.open)(scratch.path(), no_sink());
    let two = (POSTGRES.open)(scratch.path(), no_sink());
    let alice = store_account(&*one, "alice", 1).await;
    let carol = store_account(&*two, "carol", 3).await;
    let bob = store_account(&*two, "bob", 2).await;
    let sender = |store: Arc<dyn Store>, from, tag: u8| {
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..PER_SENDER {
                let mut m = msg_max(from, "bob", 0, 10, MAX);
                m.message_id = [tag; 16];
                m.message_id[..2].copy_from_slice(&i.to_be_bytes());
                outcomes.push(store.send(m).await.unwrap());
            }
            outcomes
        })
    };
    let a = sender(Arc::clone(&one), alice, 1);
    let c = sender(Arc::clone(&two), carol, 3);
    let mut reads: Vec<Vec<Seq>> = Vec::new();
    for i in 0..5_000usize {
        if a.is_finished() && c.is_finished() {
            break;
        }
        let store = if i % 2 == 0 { &one } else { &two };
        let items = store.fetch_mailbox(bob, Seq::ZERO, 10_000).await.unwrap();
        reads.push(items.iter().map(|i| i.seq).collect());
    }
    let outcomes: Vec<SendOutcome> = [a.await.unwrap(), c.await.unwrap()].concat();
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, SendOutcome::Accepted { .. }))
        .count();
    let full = outcomes
        .iter()
        .filter(|o| **o == SendOutcome::MailboxFull)
        .count();
    assert_eq!(accepted, MAX as usize);
    assert_eq!(full, 2 * usize::from(PER_SENDER) - MAX as usize);
    let all: Vec<Seq> = two
        .fetch_mailbox(bob, Seq::ZERO, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(all.len(), MAX as usize);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(one.mailbox_len(bob).await.unwrap(), MAX);
    assert!(reads.len() > 5, "only {} reads", reads.len());
    for read in &reads {
        let Some(&top) = read.last() else { continue };
        let expected: Vec<Seq> = all.iter().copied().filter(|s| *s <= top).collect();
        assert_eq!(read, &expected, "a read up to seq {top} missed items");
    }
    one.close();
    two.close();
}

/// A TCP relay to PostgreSQL that can be cut (every connection closed, new
/// ones refused) and restored, to take the database away from a store.
struct Link {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Link {
    async fn to(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (Arc::clone(&up), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Self { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Sends go through while the database is there, fail with an error (not
/// a hang, not a panic) while it is away, and go through again once it is
/// back, on the same store; nothing refused was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_loses_postgres_refuses_and_recovers_without_restart() {
    if !(POSTGRES.ready)() {
        return;
    }
    let scratch = (POSTGRES.scratch)();
    let direct: tokio_postgres::Config =
        std::fs::read_to_string(scratch.path().join(common::pg::URL_FILE))
            .unwrap()
            .parse()
            .unwrap();
    let host = match &direct.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let port = direct.get_ports().first().copied().unwrap_or(5432);
    let link = Link::to((host, port)).await;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        direct.get_user().unwrap(),
        link.port,
        direct.get_dbname().unwrap()
    );
    let mut opts = PgOptions::default();
    opts.connect_timeout = Duration::from_secs(2);
    let store = Arc::new(PgStore::open_with(&url, opts, no_sink()).unwrap());
    let alice = store_account(&*store, "alice", 1).await;
    let bob = store_account(&*store, "bob", 2).await;
    let send = |id: u8| store.send(msg_max(alice, "bob", id, 10, 100));
    assert!(matches!(
        send(1).await.unwrap(),
        SendOutcome::Accepted { .. }
    ));

    link.cut();
    let refused = tokio::time::timeout(WAIT, send(2)).await.unwrap();
    assert!(refused.is_err(), "{refused:?}");
    let read = tokio::time::timeout(WAIT, store.mailbox_len(bob))
        .await
        .unwrap();
    assert!(read.is_err(), "{read:?}");

    link.restore();
    let mut back = None;
    for _ in 0..100 {
        match send(3).await {
            Ok(out) => {
                back = Some(out);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        matches!(back, Some(SendOutcome::Accepted { .. })),
        "{back:?}"
    );
    let ids: Vec<u8> = store
        .fetch_mailbox(bob, Seq::ZERO, 10)
        .await
        .unwrap()
        .iter()
        .map(|i| i.message_id[0])
        .collect();
    assert_eq!(ids, vec![1, 3]);
    store.close();
}

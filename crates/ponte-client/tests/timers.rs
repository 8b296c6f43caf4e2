//! Disappearing messages end to end against a real `ponte-server` on
//! 127.0.0.1 (in process): the setting as a message on both sides, the
//! timer carried by each message, the sender's clock from sending and the
//! recipient's from display, last writer wins, and after expiry nothing
//! left in the profile directories (every file, raw bytes): neither the
//! text, nor its sealed copy, nor the received file. In a group: any
//! member sets the timer, every member applies it, a member who joins
//! later gets it, and a removed member's setting is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::{direct, register, start_server};
use ponte_client::client::Event;
use ponte_client::store::Swept;
use ponte_client::{Client, Conversation, MessageView, Notice, Status, UnixMillis, Update};
use ponte_e2e::group::GroupId;
use ponte_e2e::{MessageId, Timer};
use std::path::{Path, PathBuf};

const MARKER: &str = "PONTE-DISAPPEARING-MARKER-41f9";

fn with_bob() -> Conversation {
    Conversation::contact("bob")
}

fn with_alice() -> Conversation {
    Conversation::contact("alice")
}

fn secs(s: u32) -> Option<Timer> {
    Timer::from_secs(s)
}

/// Every file under `dir`, recursively (bounded depth).
fn all_files(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, depth + 1, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Panics if any file under `dir` holds any of `needles` (raw bytes).
fn assert_nowhere(dir: &Path, needles: &[(&str, &[u8])]) {
    let mut files = Vec::new();
    all_files(dir, 0, &mut files);
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for (what, needle) in needles {
            assert!(!contains(&bytes, needle), "{what} found in {}", f.display());
        }
    }
}

/// Panics unless some file under `dir` holds `needle`: the scan finds
/// what is there (the check above is not vacuous).
fn assert_somewhere(dir: &Path, needle: &[u8]) {
    let mut files = Vec::new();
    all_files(dir, 0, &mut files);
    let found = files
        .iter()
        .any(|f| contains(&std::fs::read(f).unwrap_or_default(), needle));
    assert!(found, "not found under {}", dir.display());
}

/// The sealed bodies of every message row in a profile, read raw (the
/// client must not be writing meanwhile; the connection is closed again
/// before the sweep, so it cannot hold the WAL).
fn sealed_bodies(profile: &Path, id: &MessageId) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open_with_flags(
        profile.join("ponte.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT body FROM messages WHERE id = ?1")
        .unwrap();
    let rows = stmt
        .query_map([id.0.to_vec()], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

/// Sync and return what it reported as new.
async fn sync_views(client: &mut Client) -> Vec<MessageView> {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Update(Update::Message(m)) => Some(m),
            _ => None,
        })
        .collect()
}

fn sweep_at(client: &Client, at: UnixMillis) -> Swept {
    client
        .store()
        .sweep_expired(at, &client.files_dir())
        .unwrap()
}

fn later(ms: u64) -> UnixMillis {
    UnixMillis(UnixMillis::now().0 + ms)
}

fn notices(views: &[MessageView]) -> Vec<(bool, Option<Timer>)> {
    views
        .iter()
        .filter_map(|v| match v.notice {
            Some(Notice::TimerSet(t)) => Some((v.outgoing, t)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_timed_conversation_leaves_no_trace_in_either_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let (alice_dir, bob_dir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let mut alice = register(&alice_dir, &server.address, "alice").await;
    let mut bob = register(&bob_dir, &server.address, "bob").await;

    // The setting is a message: sent, and in alice's history at once.
    let set = alice.set_timer(&with_bob(), secs(5)).await.unwrap();
    assert_eq!(set.message.status, Status::Sent, "{:?}", set.note);
    assert_eq!(set.message.notice, Some(Notice::TimerSet(secs(5))));
    assert_eq!(alice.timer(&with_bob()).unwrap(), secs(5));

    let text = format!("{MARKER} the plans for tomorrow");
    let sent = alice.send("bob", &text).await.unwrap().message;
    assert_eq!(sent.status, Status::Sent);
    assert_eq!(sent.timer, secs(5));
    // The sender's clock runs from sending.
    let expires = sent.expires_at.unwrap();
    assert!(expires.0 >= sent.sent_at.0 + 5000 && expires.0 <= sent.sent_at.0 + 6000);

    // Bob sees the setting, then the message with its timer.
    let got = sync_views(&mut bob).await;
    assert_eq!(notices(&got), [(false, secs(5))]);
    let msg = got.iter().find(|v| v.notice.is_none()).unwrap();
    assert_eq!((msg.text.as_str(), msg.timer), (text.as_str(), secs(5)));
    assert_eq!(bob.timer(&with_alice()).unwrap(), secs(5));
    // Displayed by this sync: its clock runs from now, not from arrival.
    let shown = bob
        .store()
        .message("alice", false, &sent.id)
        .unwrap()
        .unwrap();
    let at = shown.expires_at.unwrap();
    assert!(at > UnixMillis(UnixMillis::now().0 + 3000), "{at:?}");

    // The peer's setting applies to bob's messages too.
    let reply = bob
        .send("alice", "and mine goes too")
        .await
        .unwrap()
        .message;
    assert_eq!(reply.timer, secs(5));
    let alice_got = sync_views(&mut alice).await;
    let reply_at_alice = alice_got.iter().find(|v| v.id == reply.id).unwrap();
    assert_eq!(reply_at_alice.timer, secs(5));

    // What would be left: the raw sealed rows, found by the scan before.
    let alice_sealed = sealed_bodies(&alice_dir, &sent.id);
    let bob_sealed = sealed_bodies(&bob_dir, &sent.id);
    assert_eq!((alice_sealed.len(), bob_sealed.len()), (1, 1));
    assert_somewhere(&alice_dir, &alice_sealed[0]);
    assert_somewhere(&bob_dir, &bob_sealed[0]);

    // Not due yet: nothing goes.
    assert_eq!(sweep_at(&alice, UnixMillis::now()).messages, 0);
    assert_eq!(sweep_at(&bob, UnixMillis::now()).messages, 0);
    // Due: both texts go on both sides, the notices stay.
    let swept = sweep_at(&alice, later(10_000));
    assert_eq!(swept.messages, 2, "{swept:?}");
    assert!(swept.scrubbed);
    assert!(sweep_at(&bob, later(10_000)).scrubbed);
    for (client, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let left = client.store().conversation(peer).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].notice.is_some());
        assert!(client
            .store()
            .message(peer, true, &sent.id)
            .unwrap()
            .is_none());
    }
    let sealed_reply = sealed_bodies(&bob_dir, &reply.id);
    assert!(sealed_reply.is_empty());
    // Scanned while both clients still hold their databases open (as a
    // `listen` would): the WAL is there, and must not hold the rows.
    for (dir, sealed) in [(&alice_dir, &alice_sealed[0]), (&bob_dir, &bob_sealed[0])] {
        assert_nowhere(
            dir,
            &[
                ("the text", text.as_bytes()),
                ("the marker", MARKER.as_bytes()),
                ("the sealed text", sealed.as_slice()),
            ],
        );
    }

    drop((alice, bob));
    // A delivery of the same message again does not bring it back.
    let bob = Client::open(&bob_dir, || panic!("no passphrase")).unwrap();
    assert!(bob.store().seen("alice", &sent.id).unwrap());
    server.stop().await;
}

#[tokio::test]
async fn the_recipients_clock_starts_at_display_and_a_queued_message_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    alice.set_timer(&with_bob(), secs(60)).await.unwrap();

    // Alice offline: the timed message waits in her outbox, and a sweep
    // however late leaves it (it has not left yet).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    alice.set_routes(direct(dead_addr));
    let queued = alice.send("bob", "sent while offline").await.unwrap();
    assert_eq!(queued.message.status, Status::Queued);
    assert_eq!(sweep_at(&alice, later(100 * 86_400_000)).messages, 0);
    assert_eq!(alice.store().outbox_len().unwrap(), 1);
    alice.set_routes(direct(server.addr));
    sync_views(&mut alice).await;
    assert_eq!(sweep_at(&alice, later(61_000)).messages, 1);

    // Bob receives it, but his display fails before showing it: stored,
    // not displayed, so its clock has not started and no sweep takes it.
    let err = bob
        .sync_to(&mut |e| match e {
            Event::Update(Update::Message(m)) if m.notice.is_none() => {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            _ => Ok(()),
        })
        .await;
    assert!(err.is_err());
    let waiting = bob
        .store()
        .message("alice", false, &queued.message.id)
        .unwrap()
        .unwrap();
    assert_eq!((waiting.timer, waiting.expires_at), (secs(60), None));
    assert_eq!(sweep_at(&bob, later(100 * 86_400_000)).messages, 0);

    // `history` displays it: now it runs, and goes a minute later.
    let before = UnixMillis::now();
    let mut shown = Vec::new();
    bob.history_to("alice", &mut |m| {
        shown.push(m.text.clone());
        Ok(())
    })
    .unwrap();
    assert!(
        shown.contains(&"sent while offline".to_owned()),
        "{shown:?}"
    );
    let running = bob
        .store()
        .message("alice", false, &queued.message.id)
        .unwrap()
        .unwrap();
    let at = running.expires_at.unwrap();
    assert!(at.0 >= before.0 + 60_000 && at.0 <= UnixMillis::now().0 + 60_000);
    assert_eq!(sweep_at(&bob, later(30_000)).messages, 0);
    assert_eq!(sweep_at(&bob, later(61_000)).messages, 1);
    assert!(bob
        .store()
        .message("alice", false, &queued.message.id)
        .unwrap()
        .is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_file_disappears_with_its_downloaded_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let bob_dir = tmp.path().join("bob");
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&bob_dir, &server.address, "bob").await;
    alice.set_timer(&with_bob(), secs(5)).await.unwrap();

    // 200 KiB: several chunks, the marker in each 64 KiB.
    let mut data = Vec::with_capacity(200 * 1024);
    let mut x = 0x9e37_79b9_u32;
    while data.len() < 200 * 1024 {
        if data.len() % (64 * 1024) == 0 {
            data.extend_from_slice(MARKER.as_bytes());
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.push(x as u8);
    }
    let src = tmp.path().join("photo.jpg");
    std::fs::write(&src, &data).unwrap();
    let out = alice
        .send_file("bob", &src, "the caption", &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    assert_eq!(out.message.timer, secs(5));

    let mut events = Vec::new();
    bob.sync(&mut |e| events.push(e)).await.unwrap();
    let fetched = events
        .iter()
        .find_map(|e| match e {
            Event::FileFetched { path, .. } => Some(path.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), data);
    let view = bob
        .store()
        .message("alice", false, &out.message.id)
        .unwrap()
        .unwrap();
    assert_eq!(view.timer, secs(5));
    assert_eq!(view.text, "the caption");
    assert!(view.expires_at.is_some());
    let window = &data[1000..1064];
    assert_somewhere(&bob_dir, window);

    let swept = sweep_at(&bob, later(10_000));
    assert_eq!((swept.messages, swept.files), (1, 1), "{swept:?}");
    assert!(!fetched.exists());
    assert!(bob.store().file_by_id(&out.message.id).unwrap().is_none());
    assert_nowhere(
        &bob_dir,
        &[
            ("the marker", MARKER.as_bytes()),
            ("the file's bytes", window),
            ("the caption", b"the caption"),
        ],
    );
    server.stop().await;
}

#[tokio::test]
async fn the_latest_setting_wins_on_both_sides_whatever_the_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    // Bob must know alice's keys to write to her: one message first.
    alice.send("bob", "hi").await.unwrap();
    sync_views(&mut bob).await;

    // Alice sets an hour; then bob, who has not seen it, turns it off.
    alice.set_timer(&with_bob(), secs(3600)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let off = bob.set_timer(&with_alice(), None).await.unwrap();
    assert_eq!(off.message.notice, Some(Notice::TimerSet(None)));
    assert_eq!(off.message.status, Status::Sent, "{:?}", off.note);

    // Bob then receives the older setting: it shows, but does not win.
    let got = sync_views(&mut bob).await;
    assert_eq!(notices(&got), [(false, secs(3600))]);
    assert_eq!(bob.timer(&with_alice()).unwrap(), None);
    // Alice receives the newer one: it wins.
    let got = sync_views(&mut alice).await;
    assert_eq!(notices(&got), [(false, None)]);
    assert_eq!(alice.timer(&with_bob()).unwrap(), None);

    // Both histories hold both settings; new messages do not disappear.
    for (client, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let all = notices(&client.store().conversation(peer).unwrap());
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all.contains(&(true, if peer == "bob" { secs(3600) } else { None })));
    }
    let plain = alice.send("bob", "this one stays").await.unwrap().message;
    assert_eq!((plain.timer, plain.expires_at), (None, None));
    let got = sync_views(&mut bob).await;
    assert_eq!(got[0].timer, None);
    assert_eq!(sweep_at(&bob, later(100 * 86_400_000)).messages, 0);
    server.stop().await;
}

/// The raw row of message `id` in a profile: its sealed body and expiry.
fn raw_row(profile: &Path, id: &MessageId) -> Option<(Vec<u8>, Option<i64>)> {
    let conn = rusqlite::Connection::open_with_flags(
        profile.join("ponte.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT body, expires_at_ms FROM messages WHERE id = ?1",
        [id.0.to_vec()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[tokio::test]
async fn listen_deletes_a_message_once_its_time_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let bob_dir = tmp.path().join("bob");
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&bob_dir, &server.address, "bob").await;
    alice.set_timer(&with_bob(), secs(5)).await.unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = shown.clone();
    let mut on_event = move |e: Event| {
        if let Event::Update(Update::Message(m)) = e {
            sink.lock().unwrap().push(m.text);
        }
    };
    let listen = bob.listen(&mut on_event, async move {
        let _ = stopped.await;
    });
    let dir = bob_dir.clone();
    let driver = async move {
        let sent = alice.send("bob", MARKER).await.unwrap().message;
        assert_eq!(sent.timer, secs(5));
        // Displayed by listen: the clock runs (bounded: 30 s).
        let mut sealed = None;
        for _ in 0..300 {
            if let Some((body, Some(_))) = raw_row(&dir, &sent.id) {
                sealed = Some(body);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let sealed = sealed.expect("listen displayed the message");
        // Gone within a few seconds of its time, while listen runs.
        let mut gone = false;
        for _ in 0..300 {
            if raw_row(&dir, &sent.id).is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(gone, "listen did not delete the message");
        let _ = stop.send(());
        sealed
    };
    let (r, sealed) = tokio::time::timeout(std::time::Duration::from_secs(90), async {
        tokio::join!(listen, driver)
    })
    .await
    .unwrap();
    r.unwrap();
    assert!(shown.lock().unwrap().contains(&MARKER.to_owned()));
    // Bob's database is still open: the WAL is there, and clean.
    assert_nowhere(&bob_dir, &[("the sealed text", sealed.as_slice())]);
    drop(bob);
    server.stop().await;
}

/// Sync and return the warnings it reported.
async fn sync_warnings(client: &mut Client) -> Vec<String> {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Warning(w) => Some(w),
            _ => None,
        })
        .collect()
}

/// The group conversation as `client` shows it.
fn group_history(client: &Client, group: &GroupId) -> Vec<MessageView> {
    let mut out = Vec::new();
    client
        .history_of(&Conversation::Group(*group), &mut |m| {
            out.push(m.clone());
            Ok(())
        })
        .unwrap();
    out
}

#[tokio::test]
async fn a_group_timer_set_by_any_member_reaches_everyone_and_applies_to_what_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let dirs: Vec<PathBuf> = ["alice", "bobby", "carol", "dave"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    let mut alice = register(&dirs[0], &server.address, "alice").await;
    let mut bobby = register(&dirs[1], &server.address, "bobby").await;
    let mut carol = register(&dirs[2], &server.address, "carol").await;
    let mut dave = register(&dirs[3], &server.address, "dave").await;
    let group = alice
        .group_create("team", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    let team = Conversation::Group(group);
    sync_views(&mut bobby).await;
    sync_views(&mut carol).await;

    // Bobby is no admin: any member sets the group's timer.
    let set = bobby.set_timer(&team, secs(5)).await.unwrap();
    assert_eq!(set.message.status, Status::Sent, "{:?}", set.note);
    assert_eq!(set.message.notice, Some(Notice::TimerSet(secs(5))));
    assert_eq!(set.message.group, Some(group));
    assert_eq!(bobby.timer(&team).unwrap(), secs(5));
    assert_eq!(bobby.group_info(&group).unwrap().timer, secs(5));
    for client in [&mut alice, &mut carol] {
        let got = sync_views(client).await;
        let notice = got.iter().find(|v| v.notice.is_some()).unwrap();
        assert_eq!(notice.notice, Some(Notice::TimerSet(secs(5))));
        assert_eq!((notice.peer.as_str(), notice.group), ("bobby", Some(group)));
        assert_eq!(client.timer(&team).unwrap(), secs(5));
        // Not the 1:1 conversation with bobby.
        assert_eq!(client.timer(&Conversation::contact("bobby")).unwrap(), None);
    }

    // What alice sends afterwards carries the timer, and goes everywhere.
    let text = format!("{MARKER} group plans");
    let sent = alice.send_group(&group, &text).await.unwrap().message;
    assert_eq!(sent.status, Status::Sent, "sent");
    assert_eq!(sent.timer, secs(5));
    assert!(sent.expires_at.is_some());
    for client in [&mut bobby, &mut carol] {
        let got = sync_views(client).await;
        let m = got.iter().find(|v| v.text == text).unwrap();
        assert_eq!(m.timer, secs(5));
        assert_eq!(m.group, Some(group));
        // Displayed by this sync: its clock runs.
        let stored = client.store().message("alice", false, &sent.id).unwrap();
        assert!(stored.unwrap().expires_at.is_some());
    }
    // Not due yet; then due on all three: gone from each history, the
    // notices stay.
    for (client, dir) in [(&alice, &dirs[0]), (&bobby, &dirs[1]), (&carol, &dirs[2])] {
        assert_eq!(sweep_at(client, UnixMillis::now()).messages, 0);
        let swept = sweep_at(client, later(10_000));
        assert_eq!(swept.messages, 1, "{swept:?}");
        let left = group_history(client, &group);
        assert!(!left.iter().any(|v| v.id == sent.id), "{left:?}");
        assert!(left
            .iter()
            .any(|v| v.notice == Some(Notice::TimerSet(secs(5)))));
        assert!(raw_row(dir, &sent.id).is_none());
        assert_nowhere(dir, &[("the text", text.as_bytes())]);
    }

    // A member added later gets the timer with the group.
    alice.group_add(&group, &["dave".into()]).await.unwrap();
    sync_views(&mut dave).await;
    assert_eq!(dave.timer(&team).unwrap(), secs(5));
    assert_eq!(dave.group_info(&group).unwrap().timer, secs(5));
    // Carol learns of dave (and hands him her sender key) first.
    sync_views(&mut carol).await;
    let later_text = "dave reads this, for five seconds";
    let sent = carol.send_group(&group, later_text).await.unwrap().message;
    assert_eq!(sent.timer, secs(5));
    let got = sync_views(&mut dave).await;
    let m = got.iter().find(|v| v.text == later_text).unwrap();
    assert_eq!(m.timer, secs(5));

    // Off, by alice: everyone's next messages stay.
    let off = alice.set_timer(&team, None).await.unwrap();
    assert_eq!(off.message.notice, Some(Notice::TimerSet(None)));
    for client in [&mut bobby, &mut carol, &mut dave] {
        sync_views(client).await;
        assert_eq!(client.timer(&team).unwrap(), None);
    }
    let kept = dave
        .send_group(&group, "this one stays")
        .await
        .unwrap()
        .message;
    assert_eq!(kept.timer, None);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_members_group_timer_is_refused_by_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    let group = alice
        .group_create("team", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    let team = Conversation::Group(group);
    sync_views(&mut bobby).await;
    sync_views(&mut carol).await;
    alice.set_timer(&team, secs(3600)).await.unwrap();
    sync_views(&mut bobby).await;
    sync_views(&mut carol).await;
    assert_eq!(carol.timer(&team).unwrap(), secs(3600));

    // Carol is removed; before she hears of it, her client still takes
    // itself for a member and sends a setting to the others.
    alice.group_remove(&group, &["carol".into()]).await.unwrap();
    sync_views(&mut bobby).await;
    let stale = carol.set_timer(&team, secs(5)).await.unwrap();
    assert_eq!(stale.message.status, Status::Sent, "{:?}", stale.note);
    for client in [&mut alice, &mut bobby] {
        let warnings = sync_warnings(client).await;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("carol") && w.contains("not a member")),
            "{warnings:?}"
        );
        assert_eq!(client.timer(&team).unwrap(), secs(3600));
        let history = group_history(client, &group);
        assert!(
            !history
                .iter()
                .any(|v| v.notice == Some(Notice::TimerSet(secs(5)))),
            "{history:?}"
        );
    }
    // Once she knows, her own client refuses.
    sync_views(&mut carol).await;
    let e = carol.set_timer(&team, secs(60)).await.unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
    server.stop().await;
}

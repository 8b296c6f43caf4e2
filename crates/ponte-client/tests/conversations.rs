//! What a chat window needs beyond one-to-one chats, against a real server
//! (in process): groups in the chat list with their own unread counts and
//! pages, read receipts when a group's chat is opened (the sender's ticks
//! go read, member by member), replies (a message quoting another, across
//! real Olm, kept in both profiles), and search over the whole history
//! through the blind index: found, kept in step with the disappearing-
//! messages sweep, and no word of it in the profile's files.
#![allow(clippy::unwrap_used)]

mod common;

use common::{register, start_server};
use ponte_client::client::Event;
use ponte_client::store::Conversation;
use ponte_client::{Client, MessageView, UnixMillis, Update};
use std::path::Path;

async fn sync_views(client: &mut Client) -> Vec<MessageView> {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Update(Update::Message(m) | Update::Status(m)) => Some(m),
            _ => None,
        })
        .collect()
}

/// Whether `needle` is anywhere in the profile's database files.
fn in_profile(dir: &Path, needle: &[u8]) -> bool {
    ["ponte.db", "ponte.db-wal"].iter().any(|f| {
        std::fs::read(dir.join(f))
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

fn terms_of(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("ponte.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM search_terms", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_group_is_a_chat_of_its_own_read_when_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    bob.set_read_when_opened(true);

    alice.send("bob", "one to one").await.unwrap();
    let made = alice
        .group_create("trip", &["bob".into(), "carol".into()])
        .await
        .unwrap();
    let group = made.info.id;
    let key = ponte_client::store::group_key(&group);
    let sent = alice
        .send_group(&group, "in the group")
        .await
        .unwrap()
        .message;
    sync_views(&mut bob).await;
    sync_views(&mut carol).await;

    // bob's list: the group and alice apart, each with its own unread.
    let chats = bob.chats().unwrap();
    let g = chats.iter().find(|c| c.peer == key).unwrap();
    assert_eq!(g.group, Some(group));
    assert_eq!(g.title.as_deref(), Some("trip"));
    assert_eq!(g.unread, 1, "{g:?}");
    assert_eq!(g.last.as_ref().unwrap().text, "in the group");
    let a = chats.iter().find(|c| c.peer == "alice").unwrap();
    assert_eq!(a.unread, 1);
    assert_eq!(a.last.as_ref().unwrap().text, "one to one");

    // Each chat's page holds its own messages.
    let with_group = Conversation::Group(group);
    let page = bob.page_of(&with_group, None, 200).unwrap();
    let texts: Vec<&str> = page
        .messages
        .iter()
        .filter(|m| !m.group_notice)
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(texts, ["in the group"]);
    assert_eq!(page.messages.last().unwrap().peer, "alice");
    let page = bob
        .page_of(&Conversation::contact("alice"), None, 200)
        .unwrap();
    assert_eq!(page.messages.len(), 1);

    // Opening alice's chat reads only it; opening the group reads the group.
    assert_eq!(
        bob.mark_read_of(&Conversation::contact("alice")).unwrap(),
        1
    );
    let chats = bob.chats().unwrap();
    assert_eq!(chats.iter().find(|c| c.peer == key).unwrap().unread, 1);
    assert_eq!(bob.mark_read_of(&with_group).unwrap(), 1);
    assert_eq!(bob.mark_read_of(&with_group).unwrap(), 0);
    assert_eq!(
        bob.chats()
            .unwrap()
            .iter()
            .find(|c| c.peer == key)
            .unwrap()
            .unread,
        0
    );
    sync_views(&mut bob).await;
    // carol read hers the CLI way (reported = read) when she synced.
    sync_views(&mut alice).await;
    let ticks = alice
        .store()
        .message(&key, true, &sent.id)
        .unwrap()
        .unwrap()
        .ticks
        .unwrap();
    assert_eq!((ticks.read_by, ticks.of), (2, 2), "{ticks:?}");

    // An unknown group is refused, not an empty chat.
    let other = Conversation::Group(ponte_e2e::group::GroupId([9; 16]));
    assert!(bob.page_of(&other, None, 10).is_err());
    assert!(bob.mark_read_of(&other).is_err());
    server.stop().await;
}

#[tokio::test]
async fn a_reply_quotes_its_message_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;

    let question = alice.send("bob", "lunch at noon?").await.unwrap().message;
    sync_views(&mut bob).await;
    let answer = bob
        .send_reply("alice", "yes!", Some(&question.id))
        .await
        .unwrap()
        .message;
    assert_eq!(answer.reply_to, Some(question.id));
    let quoted = bob.store().quoted(&answer).unwrap().unwrap();
    assert_eq!(quoted.text, "lunch at noon?");

    let got = sync_views(&mut alice).await;
    let reply = got.iter().find(|v| v.id == answer.id).unwrap();
    assert_eq!(reply.reply_to, Some(question.id));
    let quoted = alice.store().quoted(reply).unwrap().unwrap();
    assert!(quoted.outgoing);
    assert_eq!(quoted.id, question.id);
    // In the history too (a page reads the column).
    let page = alice.conversation_page("bob", None, 10).unwrap();
    assert_eq!(page.messages.last().unwrap().reply_to, Some(question.id));

    // A reply to a message that is not in this conversation is refused.
    let err = bob
        .queue_reply("alice", "what?", Some(&ponte_e2e::MessageId([3; 16])))
        .unwrap_err();
    assert!(err.to_string().contains("to reply to"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn search_finds_the_history_and_forgets_what_disappears() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let (alice_dir, bob_dir) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let mut alice = register(&alice_dir, &server.address, "alice").await;
    let mut bob = register(&bob_dir, &server.address, "bob").await;

    alice
        .send("bob", "The Quokkasaurus lives in Perth")
        .await
        .unwrap();
    alice.send("bob", "nothing to see").await.unwrap();
    sync_views(&mut bob).await;
    bob.send("alice", "a QUOKKASAURUS? really").await.unwrap();
    sync_views(&mut alice).await;

    for (client, other) in [(&alice, "bob"), (&bob, "alice")] {
        let hits = client.search("quokkasaurus", 50).unwrap();
        assert_eq!(hits.len(), 2, "{hits:?}");
        // Newest first, each with its chat.
        assert_eq!(hits[0].message.text, "a QUOKKASAURUS? really");
        assert!(hits.iter().all(|h| h.chat == other), "{hits:?}");
        // A prefix, two words, a word that is not there.
        assert_eq!(client.search("quok", 50).unwrap().len(), 2);
        assert_eq!(client.search("quokkasaurus perth", 50).unwrap().len(), 1);
        assert!(client.search("kangaroo", 50).unwrap().is_empty());
        assert!(client.search("  ?! ", 50).is_err());
    }
    // The index holds keyed hashes only: no word of the history in the files.
    for dir in [&alice_dir, &bob_dir] {
        assert!(terms_of(dir) > 0);
        assert!(!in_profile(dir, b"uokkasaurus"));
        assert!(!in_profile(dir, b"UOKKASAURUS"));
    }

    // A disappearing message: found while it lives, its terms gone with it.
    let with_bob = Conversation::contact("bob");
    alice
        .set_timer(&with_bob, ponte_e2e::Timer::from_secs(5))
        .await
        .unwrap();
    alice
        .send("bob", "the wombatron code is 1234")
        .await
        .unwrap();
    assert_eq!(alice.search("wombatron", 50).unwrap().len(), 1);
    let before = terms_of(&alice_dir);
    let swept = alice
        .store()
        .sweep_expired(UnixMillis(UnixMillis::now().0 + 60_000), &alice.files_dir())
        .unwrap();
    assert_eq!(swept.messages, 1, "{swept:?}");
    assert!(alice.search("wombatron", 50).unwrap().is_empty());
    assert!(terms_of(&alice_dir) < before);
    assert_eq!(alice.search("quokkasaurus", 50).unwrap().len(), 2);
    server.stop().await;
}

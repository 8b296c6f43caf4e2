//! The chat-window view of the client library against a real server (in
//! process): a client that reports messages as they arrive but counts
//! them read only when the chat is opened (`set_read_when_opened`), the
//! chat list with last message and unread counts, conversation pages, and
//! the messages waiting to go out.
#![allow(clippy::unwrap_used)]

mod common;

use common::{register, start_server};
use ponte_client::client::Event;
use ponte_client::{Client, Status, Update};

async fn statuses(client: &mut Client) -> Vec<Status> {
    let mut events = Vec::new();
    client.sync(&mut |e| events.push(e)).await.unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Update(Update::Status(v)) => Some(v.status),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn read_receipts_wait_until_the_chat_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let address = server.address.clone();
    let mut alice = register(&tmp.path().join("alice"), &address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &address, "bob").await;
    bob.set_read_when_opened(true);

    // Nothing yet: bob's chat list is empty; alice queues offline first.
    assert!(bob.chats().unwrap().is_empty());
    alice.queue_text("bob", "one").unwrap();
    assert_eq!(alice.waiting_out().unwrap(), 1);
    alice.send("bob", "two").await.unwrap();
    assert_eq!(alice.waiting_out().unwrap(), 0);

    // bob's sync reports both (a chat window shows them in its list)...
    let mut reported = Vec::new();
    bob.sync(&mut |e| {
        if let Event::Update(Update::Message(v)) = e {
            reported.push(v.text);
        }
    })
    .await
    .unwrap();
    assert_eq!(reported, ["one", "two"]);
    let chats = bob.chats().unwrap();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].peer, "alice");
    assert_eq!(chats[0].unread, 2);
    assert_eq!(chats[0].last.as_ref().unwrap().text, "two");
    // ...but sends no read receipt: alice's ticks stop at delivered.
    let seen = statuses(&mut alice).await;
    assert!(seen.contains(&Status::Delivered), "{seen:?}");
    assert!(!seen.contains(&Status::Read), "{seen:?}");
    // A second sync reports nothing again and reads nothing.
    bob.sync(&mut |e| assert!(!matches!(e, Event::Update(Update::Message(_))), "{e:?}"))
        .await
        .unwrap();
    assert_eq!(bob.chats().unwrap()[0].unread, 2);

    // Opening the chat reads both, once; the receipt goes with the next sync.
    assert_eq!(bob.mark_chat_read("alice").unwrap(), 2);
    assert_eq!(bob.mark_chat_read("alice").unwrap(), 0);
    assert_eq!(bob.chats().unwrap()[0].unread, 0);
    bob.sync(&mut |_| {}).await.unwrap();
    let seen = statuses(&mut alice).await;
    assert_eq!(seen, [Status::Read, Status::Read]);

    // alice's list: bob, last message "two" (hers), nothing unread.
    let chats = alice.chats().unwrap();
    assert_eq!(chats[0].peer, "bob");
    assert_eq!(chats[0].unread, 0);
    assert!(chats[0].last.as_ref().unwrap().outgoing);

    // A timer setting is a line in the chat, not an unread message.
    alice
        .set_timer(
            &ponte_client::store::Conversation::contact("bob"),
            ponte_e2e::Timer::from_secs(3600),
        )
        .await
        .unwrap();
    let mut notices = 0;
    bob.sync(&mut |e| {
        if let Event::Update(Update::Message(v)) = e {
            notices += usize::from(v.notice.is_some());
        }
    })
    .await
    .unwrap();
    assert_eq!(notices, 1, "the setting is shown");
    assert_eq!(bob.chats().unwrap()[0].unread, 0);
    server.stop().await;
}

#[tokio::test]
async fn conversation_pages_walk_back_to_the_first_message() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    for i in 0..25 {
        alice.queue_text("bob", &format!("m{i}")).unwrap();
    }
    let mut texts = Vec::new();
    let mut before = None;
    for _ in 0..10 {
        let page = alice.conversation_page("bob", before, 10).unwrap();
        assert!(page.messages.len() <= 10);
        let mut t: Vec<String> = page.messages.iter().map(|m| m.text.clone()).collect();
        t.append(&mut texts);
        texts = t;
        before = page.older;
        if before.is_none() {
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want);
    assert!(alice.conversation_page("bob", None, 0).is_err());
    assert!(alice.conversation_page("Not A Handle", None, 10).is_err());
    assert_eq!(alice.chats().unwrap()[0].last.as_ref().unwrap().text, "m24");
    server.stop().await;
}

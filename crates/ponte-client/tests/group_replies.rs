//! Replies in groups end to end against a real `ponte-server` on
//! 127.0.0.1 (in process), three members with profiles of their own: a
//! reply's quoted id rides in the Megolm plaintext, and every member's
//! profile finds the quoted message whoever sent it (the member's own, or
//! another member's); a reply may not quote a message of another
//! conversation (refused when queued, "not here" if a sender did it
//! anyway); a file can be a reply, in a group and 1:1.
#![allow(clippy::unwrap_used)]

mod common;

use common::{register, start_server};
use ponte_client::client::Event;
use ponte_client::store::Conversation;
use ponte_client::{Client, MessageView, Status, Update};
use ponte_e2e::MessageId;

/// Sync; the new messages (not the notices of changes to a group).
async fn sync_views(client: &mut Client) -> Vec<MessageView> {
    let mut views = Vec::new();
    client
        .sync(&mut |e| {
            if let Event::Update(Update::Message(m)) = e {
                if !m.group_notice {
                    views.push(m);
                }
            }
        })
        .await
        .unwrap();
    views
}

fn find<'a>(views: &'a [MessageView], text: &str) -> &'a MessageView {
    views
        .iter()
        .find(|v| v.text == text)
        .unwrap_or_else(|| panic!("no {text:?} in {views:?}"))
}

#[tokio::test]
async fn a_group_reply_quotes_its_message_for_every_member() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let mut carol = register(&tmp.path().join("carol"), &server.address, "carol").await;
    let group = alice
        .group_create("picnic", &["bobby".into(), "carol".into()])
        .await
        .unwrap()
        .info
        .id;
    let other = alice
        .group_create("work", &["carol".into()])
        .await
        .unwrap()
        .info
        .id;
    sync_views(&mut bobby).await;
    sync_views(&mut carol).await;

    // Something to quote from each side, and messages elsewhere.
    let question = alice
        .send_group(&group, "who brings food?")
        .await
        .unwrap()
        .message;
    let private = alice.send("carol", "a private word").await.unwrap().message;
    let at_work = alice
        .send_group(&other, "the report is due")
        .await
        .unwrap()
        .message;
    let got = sync_views(&mut bobby).await;
    let question_at_bobby = find(&got, "who brings food?");
    assert_eq!(question_at_bobby.id, question.id);

    // bobby answers alice; carol (later) answers bobby.
    let answer = bobby
        .send_group_reply(&group, "I bring bread", Some(&question.id))
        .await
        .unwrap()
        .message;
    assert_eq!(answer.status, Status::Sent);
    assert_eq!(answer.reply_to, Some(question.id));
    let quoted = bobby.store().quoted(&answer).unwrap().unwrap();
    assert_eq!(
        (quoted.peer.as_str(), quoted.text.as_str()),
        ("alice", "who brings food?")
    );
    let got = sync_views(&mut carol).await;
    let answer_at_carol = find(&got, "I bring bread").clone();
    assert_eq!(answer_at_carol.reply_to, Some(question.id));
    let quoted = carol.store().quoted(&answer_at_carol).unwrap().unwrap();
    assert_eq!(
        (quoted.peer.as_str(), quoted.text.as_str()),
        ("alice", "who brings food?")
    );
    let second = carol
        .send_reply_to(
            &Conversation::Group(group),
            "and I bring cheese",
            Some(&answer.id),
        )
        .await
        .unwrap()
        .message;

    // alice finds both quotes: her own message, and bobby's.
    let got = sync_views(&mut alice).await;
    let at_alice = find(&got, "I bring bread");
    assert_eq!(at_alice.group, Some(group));
    let quoted = alice.store().quoted(at_alice).unwrap().unwrap();
    assert!(quoted.outgoing);
    assert_eq!(quoted.id, question.id);
    let at_alice = find(&got, "and I bring cheese");
    assert_eq!(at_alice.id, second.id);
    let quoted = alice.store().quoted(at_alice).unwrap().unwrap();
    assert_eq!(
        (quoted.peer.as_str(), quoted.text.as_str()),
        ("bobby", "I bring bread")
    );
    // bobby finds carol's quote of his own message; the page carries it.
    sync_views(&mut bobby).await;
    let page = bobby
        .page_of(&Conversation::Group(group), None, 10)
        .unwrap();
    let last = page.messages.last().unwrap();
    assert_eq!(last.reply_to, Some(answer.id));
    assert!(bobby.store().quoted(last).unwrap().unwrap().outgoing);

    // A quote from another conversation is refused when queued: a 1:1
    // message, another group's, an unknown id; and a group's message in
    // a 1:1 reply.
    for id in [private.id, at_work.id, MessageId([7; 16])] {
        let err = carol
            .queue_group_reply(&group, "that one?", Some(&id))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("no message {id} in group \"picnic\" to reply to")),
            "{err}"
        );
    }
    let err = carol
        .queue_reply("alice", "that one?", Some(&question.id))
        .unwrap_err();
    assert!(err.to_string().contains("to reply to"), "{err}");
    // Nothing of those was queued.
    assert_eq!(carol.store().outbox_len().unwrap(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_file_can_reply_in_a_group_and_one_to_one() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bobby = register(&tmp.path().join("bobby"), &server.address, "bobby").await;
    let group = alice
        .group_create("photos", &["bobby".into()])
        .await
        .unwrap()
        .info
        .id;
    sync_views(&mut bobby).await;
    let ask = bobby
        .send_group(&group, "any pictures?")
        .await
        .unwrap()
        .message;
    let ask_private = bobby
        .send("alice", "and one for me?")
        .await
        .unwrap()
        .message;
    sync_views(&mut alice).await;

    let path = tmp.path().join("beach.jpg");
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let in_group = alice
        .send_file_reply_to(
            &Conversation::Group(group),
            &path,
            "here",
            Some(&ask.id),
            &mut |_, _| {},
        )
        .await
        .unwrap()
        .message;
    assert_eq!(in_group.status, Status::Sent);
    assert_eq!(in_group.reply_to, Some(ask.id));
    let one_to_one = alice
        .send_file_reply_to(
            &Conversation::contact("bobby"),
            &path,
            "yours",
            Some(&ask_private.id),
            &mut |_, _| {},
        )
        .await
        .unwrap()
        .message;
    assert_eq!(one_to_one.reply_to, Some(ask_private.id));
    // A file quoting another conversation's message is refused before
    // anything is encrypted or queued.
    let before = alice.store().outbox_len().unwrap();
    let err = alice
        .send_file_reply_to(
            &Conversation::contact("bobby"),
            &path,
            "",
            Some(&ask.id),
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("to reply to"), "{err}");
    assert_eq!(alice.store().outbox_len().unwrap(), before);

    let got = sync_views(&mut bobby).await;
    for (caption, quoted) in [("here", &ask), ("yours", &ask_private)] {
        let v = find(&got, caption);
        assert!(v.file.is_some(), "{v:?}");
        assert_eq!(v.reply_to, Some(quoted.id));
        let q = bobby.store().quoted(v).unwrap().unwrap();
        assert!(q.outgoing);
        assert_eq!(q.text, quoted.text);
    }
    server.stop().await;
}

//! `ponte app` in a real browser (Debian's headless Chromium over
//! chromedriver), for groups, replies, search and timers: alice uses the
//! page; bobby and carol are two more apps driven through their HTTP API
//! (as their pages would). alice makes a group of three from her
//! contacts, sees each member's messages under their name, her own
//! message's ticks turn read once both opened the group, the group info
//! panel shows members, admins and her role, and she removes carol (who
//! learns it); in the group she replies to carol (R on a focused
//! message: the quote names carol, in bobby's app too) and bobby replies
//! to her (quoted as hers, a click finds it), a reply quoting a 1:1
//! message refused; she replies to bobby (R on a focused message), the quote
//! shows on both sides and clicking it finds the original; the search box
//! finds messages of every chat and opens the chat at the one clicked;
//! the disappearing timer set in contact info shows in the header on
//! both sides. Screenshots go to `target/app-screenshots/`.
//!
//! Skipped, with the reason printed, without `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::Server;

mod app_common;
use app_common::browser::*;
use app_common::App;

/// Registers the app's profile through its first-run API.
fn register(app: &App, address: &str, handle: &str) {
    let body = json!({ "server": address, "handle": handle }).to_string();
    let v = app.json("POST", "/api/register", &body);
    assert_eq!(v["phase"], "ready", "{v}");
}

fn send(app: &App, peer: &str, text: &str) -> Value {
    let body = json!({ "peer": peer, "text": text }).to_string();
    app.json("POST", "/api/send", &body)["message"].clone()
}

/// The chat list of `app` holds `peer`.
fn wait_chat(app: &App, peer: &str) {
    app.wait_for("/api/chats", &format!("chat {peer}"), |v| {
        v["chats"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["peer"] == peer))
    });
}

/// The message of alice's open chat whose text is `text`, as a CSS selector.
fn message_with(b: &Browser<'_>, text: &str) -> String {
    let id = b.wait(
        &format!("the message {text:?}"),
        "for (const m of document.querySelectorAll('[data-testid=message]')) { \
           const t = m.querySelector('[data-testid=message-text]'); \
           if (t && t.textContent === arguments[0]) return m.dataset.id; } return null",
        json!([text]),
    );
    format!("[data-testid=message][data-id='{}']", id.as_str().unwrap())
}

#[test]
fn a_group_of_three_replies_search_and_timers_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let app_a = App::start(&tmp.path().join("alice"));
    let app_b = App::start(&tmp.path().join("bobby"));
    let app_c = App::start(&tmp.path().join("carol"));
    register(&app_a, &address, "alice");
    register(&app_b, &address, "bobby");
    register(&app_c, &address, "carol");
    let driver = Driver::start();
    let mut a = driver.session("alice", &tmp.path().join("chrome-a"));
    a.log = Some(app_a.log.clone());
    a.goto(&app_a.url());
    a.wait(
        "the main screen",
        "return !document.getElementById('main').hidden",
        json!([]),
    );

    // Two contacts write first.
    let hello = send(&app_b, "alice", "hello alice, bobby here");
    send(&app_c, "alice", "carol says hi");
    for peer in ["bobby", "carol"] {
        a.wait(
            &format!("{peer} in the chat list"),
            "return document.querySelector(`[data-testid=chat-item][data-peer=${arguments[0]}]`)",
            json!([peer]),
        );
    }

    // A new group: a title and members picked from contacts.
    a.click("[data-testid=new-group]");
    a.type_into("[data-testid=new-group-title]", "Trip to Porto");
    a.click("[data-testid=new-group-member][value=bobby]");
    a.click("[data-testid=new-group-member][value=carol]");
    a.click("[data-testid=new-group-create]");
    let key = a.wait(
        "the group's chat open",
        "const c = document.querySelector('[data-testid=chat-item][data-peer^=\"g:\"]'); \
         return c && document.querySelector('[data-testid=peer-name]').textContent === 'Trip to Porto' \
           && c.dataset.peer",
        json!([]),
    );
    let key = key.as_str().unwrap().to_owned();
    let group_path = format!("/api/chat/{key}");
    wait_chat(&app_b, &key);
    wait_chat(&app_c, &key);

    // Each member's message under their name.
    send(&app_b, &key, "hi all from bobby");
    send(&app_c, &key, "carol here, Porto is lovely");
    for (text, who) in [
        ("hi all from bobby", "bobby"),
        ("carol here, Porto is lovely", "carol"),
    ] {
        let sel = message_with(&a, text);
        let sender = a.js(
            "return document.querySelector(arguments[0]).querySelector('[data-testid=sender]').textContent",
            json!([sel]),
        );
        assert_eq!(sender, who);
    }

    // alice's message: delivered to 2 of 2, then read once both open the group.
    a.type_into("[data-testid=composer]", "see you both there\u{E007}");
    let mine = message_with(&a, "see you both there");
    a.wait(
        "delivered to both",
        "const g = document.querySelector(arguments[0] + ' [data-testid=group-ticks]'); \
         return g && g.dataset.deliveredTo === '2' && g.dataset.of === '2'",
        json!([mine]),
    );
    for app in [&app_b, &app_c] {
        app.wait_for(&group_path, "alice's message", |v| {
            v["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["text"] == "see you both there"))
        });
        app.json("POST", &format!("{group_path}/read"), "{}");
    }
    a.wait(
        "read by both",
        "const m = document.querySelector(arguments[0]); \
         return m && m.dataset.status === 'read' \
           && m.querySelector('[data-testid=group-ticks]').dataset.readBy === '2'",
        json!([mine]),
    );
    a.screenshot("10-group-chat");

    // Group info: members, admins, role; remove carol.
    a.click("[data-testid=contact-info]");
    a.wait(
        "three members",
        "return document.querySelectorAll('[data-testid=group-member]').length === 3 \
           && document.querySelector('[data-testid=group-role]').dataset.role === 'admin'",
        json!([]),
    );
    assert_eq!(
        a.js(
            "return [...document.querySelectorAll('[data-testid=group-member]')] \
               .filter((m) => m.dataset.admin).map((m) => m.dataset.handle)",
            json!([])
        ),
        json!(["alice"])
    );
    a.screenshot("11-group-info");
    // Any member sets the group's timer in group info: the header shows
    // it, and the others' apps have it.
    a.wait(
        "the group's timer choice",
        "return !document.getElementById('group-timer-row').hidden \
           && document.querySelector('[data-testid=group-timer-select]').value === 'off' \
           && !document.querySelector('[data-testid=group-timer-select]').disabled",
        json!([]),
    );
    a.choose(
        "[data-testid=group-timer-select] option[value='86400s']",
        "the group's timer in the header and the panel",
        "const t = document.querySelector('[data-testid=timer]'); \
         return !t.hidden && t.dataset.secs === '86400' \
           && document.querySelector('[data-testid=group-timer]').textContent.includes('1 d')",
    );
    let gid = key.strip_prefix("g:").unwrap();
    for (app, who) in [(&app_b, "bobby"), (&app_c, "carol")] {
        app.wait_for(
            &format!("/api/group/{gid}"),
            &format!("the group's timer at {who}'s"),
            |v| v["timer"] == 86400,
        );
    }
    // alice makes bobby an admin and renames the group; bobby's app has both.
    a.click("[data-testid=group-member][data-handle=bobby] [data-testid=group-promote]");
    a.wait(
        "bobby an admin",
        "return document.querySelector('[data-testid=group-member][data-handle=bobby]')?.dataset.admin === '1'",
        json!([]),
    );
    // Typed and sent again if the panel was redrawn under the typing (a
    // live event from the promotion), as a person would; bounded.
    let renamed =
        "return document.querySelector('[data-testid=group-title]').textContent === 'Porto in May'";
    for _ in 0..3 {
        a.type_into("[data-testid=group-rename-title]", "Porto in May");
        a.click("[data-testid=group-rename]");
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && a.js(renamed, json!([])) != true {
            thread::sleep(Duration::from_millis(100));
        }
        if a.js(renamed, json!([])) == true {
            break;
        }
    }
    a.wait("the new title", renamed, json!([]));
    // The group's chat was loaded again under the typing (a live event):
    // that never moves the keystrokes into the message composer.
    assert_eq!(
        a.js(
            "return document.querySelector('[data-testid=composer]').value",
            json!([])
        ),
        "",
        "keystrokes for the title went into the composer"
    );
    app_b.wait_for(
        &format!("/api/group/{gid}"),
        "bobby's app: admin, new title",
        |v| {
            v["title"] == "Porto in May"
                && v["members"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["handle"] == "bobby" && m["admin"] == true)
                })
        },
    );
    a.click("[data-testid=group-member][data-handle=carol] [data-testid=group-remove]");
    a.wait(
        "carol gone from the members",
        "return document.querySelectorAll('[data-testid=group-member]').length === 2 \
           && !document.querySelector('[data-testid=group-member][data-handle=carol]')",
        json!([]),
    );
    let id = key.strip_prefix("g:").unwrap();
    app_c.wait_for(&format!("/api/group/{id}"), "carol removed", |v| {
        v["status"] == "removed"
    });
    a.click("#panel-close");

    // A reply to bobby: R on his message, the quote on both sides.
    a.open_chat("bobby");
    let his = message_with(&a, "hello alice, bobby here");
    a.on_element(&his, "value", json!({ "text": "r" }));
    a.wait(
        "the reply bar",
        "return !document.querySelector('[data-testid=reply-bar]').hidden",
        json!([]),
    );
    a.type_into("[data-testid=composer]", "hello bobby, welcome\u{E007}");
    let reply = message_with(&a, "hello bobby, welcome");
    let quoted = a.js(
        "const q = document.querySelector(arguments[0] + ' [data-testid=quote]'); \
         return q && [q.dataset.replyTo, q.textContent]",
        json!([reply]),
    );
    assert_eq!(quoted[0], hello["id"], "{quoted}");
    assert!(
        quoted[1]
            .as_str()
            .unwrap()
            .contains("hello alice, bobby here"),
        "{quoted}"
    );
    app_b.wait_for("/api/chat/alice", "alice's reply with its quote", |v| {
        v["messages"].as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m["text"] == "hello bobby, welcome"
                    && m["reply"]["id"] == hello["id"]
                    && m["reply"]["text"] == "hello alice, bobby here"
            })
        })
    });
    a.click(&format!("{reply} [data-testid=quote]"));
    a.wait(
        "the original highlighted",
        "return document.querySelector(arguments[0]).dataset.highlighted === '1'",
        json!([his]),
    );
    a.screenshot("12-reply");

    // A draft stays with its chat: typed for bobby and not sent, it is not
    // in carol's composer, and it is back in bobby's.
    let composer = "return document.querySelector('[data-testid=composer]').value";
    a.type_into("[data-testid=composer]", "a draft for bobby");
    a.open_chat("carol");
    message_with(&a, "carol says hi");
    assert_eq!(
        a.js(composer, json!([])),
        "",
        "bobby's draft in carol's chat"
    );
    a.open_chat("bobby");
    message_with(&a, "hello alice, bobby here");
    assert_eq!(a.js(composer, json!([])), "a draft for bobby");
    a.js(
        "document.querySelector('[data-testid=composer]').value = ''",
        json!([]),
    );

    // Search: messages of every chat; a click opens the chat at the message.
    a.type_into("[data-testid=search]", "porto");
    a.wait(
        "the group in the list and a message found",
        "const chats = [...document.querySelectorAll('[data-testid=chat-item]')]; \
         return chats.length === 1 && chats[0].dataset.peer.startsWith('g:') \
           && document.querySelectorAll('[data-testid=search-result]').length === 1",
        json!([]),
    );
    a.screenshot("13-search");
    a.click("[data-testid=search-result]");
    a.wait(
        "the group's chat at the message",
        "const m = [...document.querySelectorAll('[data-testid=message]')].find((m) => \
           m.querySelector('[data-testid=message-text]').textContent === 'carol here, Porto is lovely'); \
         return m && m.dataset.highlighted === '1' && document.querySelector('[data-testid=newest]')",
        json!([]),
    );
    a.js(
        "const s = document.querySelector('[data-testid=search]'); s.value = ''; \
         s.dispatchEvent(new Event('input'))",
        json!([]),
    );

    // The timer, set in bobby's contact info: in the header on both sides.
    a.open_chat("bobby");
    a.click("[data-testid=contact-info]");
    a.wait(
        "the timer choice in contact info",
        "return !document.getElementById('timer-row').hidden \
           && document.querySelector('[data-testid=timer-select]').value === 'off' \
           && !document.querySelector('[data-testid=timer-select]').disabled",
        json!([]),
    );
    a.choose(
        "[data-testid=timer-select] option[value='3600s']",
        "the timer in the header",
        "const t = document.querySelector('[data-testid=timer]'); \
         return !t.hidden && t.dataset.secs === '3600'",
    );
    app_b.wait_for("/api/chat/alice", "the timer at bobby's", |v| {
        v["timer"] == 3600
    });

    // Back in the group (carol since removed, her message still there).
    a.click("#panel-close");
    a.open_chat(&key);
    // A reply in the group: R on carol's message; the quote names her in
    // alice's page and in bobby's app.
    let carols = message_with(&a, "carol here, Porto is lovely");
    a.on_element(&carols, "value", json!({ "text": "r" }));
    a.wait(
        "the reply bar naming carol",
        "return !document.querySelector('[data-testid=reply-bar]').hidden \
           && document.getElementById('reply-who').textContent === 'carol'",
        json!([]),
    );
    a.type_into("[data-testid=composer]", "count me in, carol\u{E007}");
    let answer = message_with(&a, "count me in, carol");
    let quoted = a.js(
        "const q = document.querySelector(arguments[0] + ' [data-testid=quote]'); \
         return q && [q.dataset.replyTo, q.querySelector('.quote-who').textContent, q.textContent]",
        json!([answer]),
    );
    let carols_id = a.js(
        "return document.querySelector(arguments[0]).dataset.id",
        json!([carols]),
    );
    assert_eq!(quoted[0], carols_id, "{quoted}");
    assert_eq!(quoted[1], "carol", "{quoted}");
    assert!(
        quoted[2].as_str().unwrap().contains("Porto is lovely"),
        "{quoted}"
    );
    app_b.wait_for(&group_path, "alice's group reply at bobby's", |v| {
        v["messages"].as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m["text"] == "count me in, carol"
                    && m["peer"] == "alice"
                    && m["reply"]["id"] == carols_id
                    && m["reply"]["peer"] == "carol"
                    && m["reply"]["text"] == "carol here, Porto is lovely"
            })
        })
    });
    // bobby replies to alice's message: her page quotes it as hers ("You")
    // and a click on the quote finds it.
    let mine_id = a.js(
        "return document.querySelector(arguments[0]).dataset.id",
        json!([mine]),
    );
    let body = json!({ "peer": key, "text": "bobby agrees", "reply_to": mine_id }).to_string();
    app_b.json("POST", "/api/send", &body);
    let agrees = message_with(&a, "bobby agrees");
    a.wait(
        "bobby's reply quoting alice's message",
        "const q = document.querySelector(arguments[0] + ' [data-testid=quote]'); \
         return q && q.dataset.replyTo === arguments[1] \
           && q.querySelector('.quote-who').textContent === 'You'",
        json!([agrees, mine_id]),
    );
    a.click(&format!("{agrees} [data-testid=quote]"));
    a.wait(
        "alice's original highlighted",
        "return document.querySelector(arguments[0]).dataset.highlighted === '1'",
        json!([mine]),
    );
    // A reply in the group to a message of a 1:1 chat is refused.
    let body = json!({ "peer": key, "text": "sneaky", "reply_to": hello["id"] }).to_string();
    let refused = app_b.call("POST", "/api/send", &body);
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("to reply to"), "{}", refused.text());
    a.screenshot("14-group-reply");
    server.kill();
}

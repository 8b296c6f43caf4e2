//! `ponte app` in a real browser: Debian's headless Chromium driven over
//! the W3C WebDriver protocol by chromedriver. Two apps (two profiles) talk
//! through a TLS relay with the direct route to the server blocked; the
//! users register on the first-run screen, send and receive, see ticks turn
//! read when the other side opens the chat, a photo dropped on one side
//! shows inline on the other, and hostile text and file names render as
//! text. Screenshots of the main screens go to `target/app-screenshots/`
//! (the assertions are on the page, never on pixels).
//!
//! Skipped, with the reason printed, when `/usr/bin/chromium` or
//! `/usr/bin/chromedriver` is missing (`.ci/run` installs them).
//!
//! The WebDriver client is the few commands used here, over the raw HTTP
//! helper the other app tests use (see `app_common`): a WebDriver crate
//! would pull a large dependency tree into the build for a handful of JSON
//! requests.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{closed_port, Server, WAIT};

mod app_common;
use app_common::browser::*;
use app_common::App;

#[test]
fn two_people_chat_through_a_relay_in_real_browsers() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let relay = tls_relay(tmp.path(), "relay", server.addr);
    let relay_url = format!("tls://{}", relay.addr("tls"));
    // The address users paste: its direct route goes nowhere.
    let address = server.address_at(closed_port());
    let app_a = App::start(&tmp.path().join("alice"));
    let app_b = App::start(&tmp.path().join("bob"));
    let driver = Driver::start();
    let mut a = driver.session("alice", &tmp.path().join("chrome-a"));
    let mut b = driver.session("bob", &tmp.path().join("chrome-b"));
    a.log = Some(app_a.log.clone());
    b.log = Some(app_b.log.clone());

    first_run(
        &a,
        &app_a,
        &address,
        "alice",
        &relay_url,
        Some("01-first-run"),
    );
    first_run(&b, &app_b, &address, "bobby", &relay_url, None);

    // alice starts a chat; Enter sends.
    a.click("[data-testid=new-chat]");
    a.type_into("[data-testid=new-chat-handle]", "bobby");
    a.click("[data-testid=new-chat-open]");
    a.type_into("[data-testid=composer]", "hello bobby\u{E007}");
    wait_status(&a, "hello bobby", &["sent", "delivered"]);
    // Shift+Enter is a new line, not a send.
    a.type_into("[data-testid=composer]", "two\u{E008}\u{E007}\u{E008}lines");
    assert_eq!(
        a.js(
            "return document.querySelector('[data-testid=composer]').value",
            json!([])
        ),
        "two\nlines"
    );
    a.js(
        "document.querySelector('[data-testid=composer]').value = ''",
        json!([]),
    );

    // bob: the chat appears with one unread; alice's tick is delivered, not read.
    b.wait(
        "alice's chat with an unread badge",
        "const c = document.querySelector('[data-testid=chat-item][data-peer=alice]'); \
         return c && c.querySelector('[data-testid=unread]') && c.querySelector('[data-testid=unread]').textContent === '1'",
        json!([]),
    );
    assert_eq!(b.js("return document.title", json!([])), "(1) Ponte");
    wait_status(&a, "hello bobby", &["delivered"]);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.js(STATUS_OF, json!(["hello bobby"])),
        "delivered",
        "read before bob opened it"
    );
    b.screenshot("02-chat-list");

    // bob opens the chat: alice's tick turns read, live.
    b.click("[data-testid=chat-item][data-peer=alice]");
    b.wait(
        "the message",
        "return document.body.innerText.includes('hello bobby')",
        json!([]),
    );
    wait_status(&a, "hello bobby", &["read"]);
    assert_eq!(b.js("return document.title", json!([])), "Ponte");
    b.type_into("[data-testid=composer]", "hi alice, it works\u{E007}");
    a.wait(
        "bob's answer",
        "return document.body.innerText.includes('hi alice, it works')",
        json!([]),
    );
    // Read at once in the open chat: no unread badge, title back to plain.
    a.wait(
        "no unread badge while the chat is open",
        "const c = document.querySelector('[data-testid=chat-item][data-peer=bobby]'); \
         return c && !c.querySelector('[data-testid=unread]') && document.title === 'Ponte'",
        json!([]),
    );
    wait_status(&b, "hi alice, it works", &["read"]);
    a.screenshot("03-conversation");

    // Hostile text: markup, a script end tag, a right-to-left override and
    // 10,000 characters arrive as text and run nothing.
    let hostile = format!(
        "<img src=x onerror=\"window.pwned=1\"></script><script>window.pwned=2</script>\u{202E}gnp.exe {}",
        "x".repeat(10_000)
    );
    a.js(
        "const c = document.querySelector('[data-testid=composer]'); c.value = arguments[0];",
        json!([hostile]),
    );
    a.click("[data-testid=send]");
    wait_status(&b, &hostile, &["received"]);
    let checks = b.js(
        "const ms = document.querySelectorAll('[data-testid=message]'); const m = ms[ms.length - 1]; \
         return { pwned: typeof window.pwned, imgs: m.querySelectorAll('img').length, \
         scripts: document.querySelectorAll('script').length, text: m.querySelector('[data-testid=message-text]').textContent.length }",
        json!([]),
    );
    assert_eq!(checks["pwned"], "undefined", "{checks}");
    assert_eq!(checks["imgs"], 0, "{checks}");
    // The page's own three script files, no other.
    assert_eq!(checks["scripts"], 3, "{checks}");
    assert_eq!(
        checks["text"],
        hostile.chars().map(char::len_utf16).sum::<usize>(),
        "{checks}"
    );

    // A photo, dropped on alice's conversation, shows inline on bob's side
    // (fetched and decrypted by bob's app, then shown from a blob).
    a.js(
        "const c = document.createElement('canvas'); c.width = 64; c.height = 48; \
         const g = c.getContext('2d'); g.fillStyle = '#1f7a5c'; g.fillRect(0, 0, 64, 48); \
         g.fillStyle = '#fff'; g.fillRect(8, 8, 20, 20); \
         return new Promise((done) => c.toBlob((blob) => { \
           const dt = new DataTransfer(); dt.items.add(new File([blob], 'photo.png', { type: 'image/png' })); \
           document.getElementById('conv').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })); \
           done(true); }, 'image/png'))",
        json!([]),
    );
    b.wait(
        "the photo inline",
        "const i = [...document.querySelectorAll('[data-testid=image]')].pop(); \
         return i && i.complete && i.naturalWidth === 64 && i.naturalHeight === 48 && i.src.startsWith('blob:')",
        json!([]),
    );
    b.screenshot("04-photo");

    // A hostile file name, through the attach button's picker.
    let evil_name = "<img src=x onerror=window.pwned=3>\u{202E}txt.exe";
    let evil = tmp.path().join(evil_name);
    std::fs::write(&evil, b"not an image").unwrap();
    a.type_into("[data-testid=file-input]", evil.to_str().unwrap());
    let shown = b.wait(
        "the file card",
        "const n = [...document.querySelectorAll('[data-testid=file-name]')].pop(); return n && n.textContent",
        json!([]),
    );
    // The sender's library turns `<` and `>` into `_`; the rest, the
    // attribute-like text and the override included, is shown as it is.
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains("img src=x onerror=window.pwned=3"),
        "{shown}"
    );
    assert_eq!(b.js("return typeof window.pwned", json!([])), "undefined");
    assert_eq!(
        b.js(
            "return [...document.querySelectorAll('.file-card img:not(.file-icon)')].length",
            json!([])
        ),
        0
    );

    // Contact info: the safety number and its QR code.
    a.click("[data-testid=contact-info]");
    let number = a.wait(
        "the safety number",
        "return document.querySelector('[data-testid=safety-number]').textContent",
        json!([]),
    );
    assert!(
        number
            .as_str()
            .unwrap()
            .chars()
            .filter(char::is_ascii_digit)
            .count()
            >= 60,
        "{number}"
    );
    assert_eq!(
        a.js(
            "return document.querySelectorAll('#qr svg').length",
            json!([])
        ),
        1
    );
    a.screenshot("05-contact-info");

    // A long conversation: 230 more messages; bob's chat opens on the
    // newest 200 and scrolling to the top loads the rest.
    for i in 0..230 {
        let body = json!({ "peer": "bobby", "text": format!("bulk {i}") }).to_string();
        app_a.json("POST", "/api/send", &body);
    }
    b.wait(
        "the last bulk message",
        "return document.body.innerText.includes('bulk 229')",
        json!([]),
    );
    b.click("[data-testid=chat-item][data-peer=alice]");
    b.wait(
        "a page of 200",
        "return document.querySelectorAll('[data-testid=message]').length === 200 && document.querySelector('.older')",
        json!([]),
    );
    b.js(
        "document.getElementById('messages').scrollTop = 0",
        json!([]),
    );
    b.wait(
        "the whole conversation after scrolling up",
        "const ms = document.querySelectorAll('[data-testid=message]'); \
         if (!document.querySelector('.older') && ms[0].textContent.includes('hello bobby')) return ms.length; \
         document.getElementById('messages').scrollTop = 0; return null",
        json!([]),
    );

    // The relays page: alice adds a second relay; the first one dies; her
    // indicator moves to the second, bob's (who has only the first) says
    // offline.
    let relay2 = tls_relay(tmp.path(), "relay2", server.addr);
    let relay2_url = format!("tls://{}", relay2.addr("tls"));
    a.click("#panel-close");
    a.click("[data-testid=route-status]");
    a.type_into("[data-testid=relay-url]", &relay2_url);
    a.click("[data-testid=relay-add]");
    a.wait(
        "two relays listed",
        "return document.querySelectorAll('[data-testid=relay]').length === 2",
        json!([]),
    );
    let mut relay = relay;
    relay.child.kill();
    let moved = a.wait(
        "the route indicator on the second relay",
        "const r = document.querySelector('[data-testid=route-status]'); \
         return r.dataset.state === 'online' && r.dataset.route === 'relay ' + arguments[0] && r.textContent",
        json!([relay2_url]),
    );
    assert!(moved.as_str().unwrap().contains(&relay2_url), "{moved}");
    b.wait(
        "bob offline",
        "const r = document.querySelector('[data-testid=route-status]'); \
         return r.dataset.state === 'offline' && r.textContent === 'offline'",
        json!([]),
    );
    a.screenshot("06-relays");

    // A phone-sized window: the list, then the conversation, each fits.
    b.size(360, 740);
    b.click("#back");
    assert!(
        visible(&b, "side")
            || b.js(
                "return getComputedStyle(document.getElementById('side')).display !== 'none'",
                json!([])
            ) == true
    );
    let overflow = b.js(
        "return document.documentElement.scrollWidth <= window.innerWidth",
        json!([]),
    );
    assert_eq!(overflow, true, "horizontal overflow at 360 px");
    b.screenshot("07-phone-chat-list");
    b.click("[data-testid=chat-item][data-peer=alice]");
    b.wait(
        "the conversation",
        "return getComputedStyle(document.getElementById('conv')).display !== 'none'",
        json!([]),
    );
    assert_eq!(
        b.js(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            json!([])
        ),
        true
    );
    b.screenshot("08-phone-conversation");

    drop((a, b));
    drop((app_a, app_b, relay, relay2, server));
}

/// A contact's key changes (bob's server lost its data and bob registered
/// again from a new device): alice's app shows it where it cannot be
/// missed, refuses to send, and lets her compare and mark the new key
/// verified, after which messages flow again.
#[test]
fn a_changed_key_is_a_banner_and_holds_messages_until_verified() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    use common::{json_lines, ok, ponte, register, Forwarder};
    let tmp = tempfile::tempdir().unwrap();
    let data1 = tmp.path().join("server1");
    let server1 = Server::start(&data1);
    let fwd = Forwarder::start(server1.addr);
    let address = format!("ponte://{}#{}", fwd.addr, server1.key);
    let alice = tmp.path().join("alice");
    let (bob1, bob2) = (tmp.path().join("bob1"), tmp.path().join("bob2"));
    register(&alice, &address, "alice");
    register(&bob1, &address, "bobby");
    ok(&ponte(&bob1, &["send", "alice", "before"]));
    ok(&ponte(&alice, &["sync"]));

    // The server starts over with its key and no accounts; alice's device
    // registers again (same identity), bob's new device with a new one.
    server1.kill();
    let data2 = tmp.path().join("server2");
    std::fs::create_dir_all(&data2).unwrap();
    std::fs::copy(data1.join("server.key"), data2.join("server.key")).unwrap();
    let server2 = Server::start(&data2);
    fwd.retarget(server2.addr);
    register(&alice, &address, "alice");
    register(&bob2, &address, "bobby");
    ok(&ponte(
        &bob2,
        &["send", "alice", "after, from my new phone"],
    ));

    let app = App::start(&alice);
    let driver = Driver::start();
    let mut a = driver.session("alice", &tmp.path().join("chrome-a"));
    a.log = Some(app.log.clone());
    a.goto(&app.url());
    a.wait(
        "bobby flagged in the chat list",
        "const c = document.querySelector('[data-testid=chat-item][data-peer=bobby]'); \
         return c && c.querySelector('.warn-dot') && c.textContent.includes('after, from my new phone')",
        json!([]),
    );
    a.click("[data-testid=chat-item][data-peer=bobby]");
    let banner = a.wait(
        "the key-change banner",
        "const b = document.querySelector('[data-testid=key-change-banner]'); return !b.hidden && b.textContent",
        json!([]),
    );
    assert!(banner.as_str().unwrap().contains("CHANGED"), "{banner}");
    assert_eq!(
        a.js(
            "return [...document.querySelectorAll('.bubble .warn')].some((w) => w.textContent.includes('new, unverified key'))",
            json!([])
        ),
        true
    );
    // On the direct route here: the indicator says so in one word.
    assert_eq!(
        a.js(
            "return document.querySelector('[data-testid=route-status]').textContent",
            json!([])
        ),
        "direct"
    );
    a.screenshot("09-key-change");

    // Sending is refused while the change is not verified.
    a.type_into("[data-testid=composer]", "are you really bob?\u{E007}");
    let refused = a.wait(
        "the refusal",
        "return document.getElementById('conv-error').textContent",
        json!([]),
    );
    assert!(refused.as_str().unwrap().contains("bobby"), "{refused}");
    assert_eq!(a.js(STATUS_OF, json!(["are you really bob?"])), Value::Null);

    // Compare, mark verified: the banner goes, messages flow again.
    a.click("#key-banner button");
    a.wait(
        "the new safety number",
        "return !document.getElementById('panel-banner').hidden && document.querySelector('[data-testid=safety-number]').textContent",
        json!([]),
    );
    a.click("[data-testid=verify]");
    a.wait(
        "verified",
        "return document.getElementById('verified-state').textContent.includes('Verified') \
         && document.querySelector('[data-testid=key-change-banner]').hidden",
        json!([]),
    );
    a.click("#panel-close");
    a.js(
        "document.querySelector('[data-testid=composer]').value = ''",
        json!([]),
    );
    a.type_into("[data-testid=composer]", "welcome back\u{E007}");
    wait_status(&a, "welcome back", &["sent", "delivered", "read"]);
    let start = Instant::now();
    loop {
        let got = json_lines(&ok(&ponte(&bob2, &["sync", "--json"])));
        if got.iter().any(|m| m["text"] == "welcome back") {
            break;
        }
        assert!(start.elapsed() < WAIT, "bob's new device never got it");
        thread::sleep(Duration::from_millis(200));
    }
    drop(a);
    drop((app, server2));
}

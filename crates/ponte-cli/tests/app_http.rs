//! `ponte app` over raw HTTP, with real processes: a `ponte server`, the
//! app on one profile and the CLI on another. Each guard of a local web
//! app is checked by a request that a hostile page or a DNS-rebound name
//! could send (wrong Host, foreign Origin, missing secret), each refused
//! with no effect; the headers (CSP, no CORS, nosniff, no-referrer); the
//! JSON API end to end (send, ticks, unread, read receipts only once the
//! chat is opened); group changes and timers sent on the app's one
//! connection; the profile lock against the CLI; Ctrl-C.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{json_lines, ok, ponte, register, Server, WAIT};

mod app_common;
use app_common::{raw, App};

/// Bob's messages as `ponte sync --json` prints them.
fn bob_sync(bob: &std::path::Path) -> Vec<serde_json::Value> {
    json_lines(&ok(&ponte(bob, &["sync", "--json"])))
}

/// How many queued-or-later messages alice's app holds for bob.
fn messages_with(app: &App, peer: &str) -> usize {
    app.json("GET", &format!("/api/chat/{peer}"), "")["messages"]
        .as_array()
        .unwrap()
        .len()
}

/// A server, and alice, bobby and carol registered on it (profiles
/// `alice`, `bob` and `carol`).
fn alice_bobby_carol() -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    for (profile, handle) in [("alice", "alice"), ("bob", "bobby"), ("carol", "carol")] {
        register(&tmp.path().join(profile), &server.address(), handle);
    }
    (tmp, server)
}

/// How many connections the app's log shows it made to the server.
fn connections(app: &App) -> usize {
    let log = app.log.lock().unwrap();
    log.lines()
        .filter(|l| l.contains("ponte_client::connection") && l.contains(" connected"))
        .count()
}

/// What a refused request is: its name, its headers, the status wanted.
type Refused<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);

#[test]
fn only_the_apps_own_page_gets_in_and_every_refusal_has_no_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bobby");
    let app = App::start(&alice);
    app.wait_for("/api/state", "the app to connect", |s| {
        s["phase"] == "ready" && s["connection"] == "online"
    });
    let host = app.addr.to_string();
    let origin = app.origin();
    let secret = app.secret.clone();
    let send = r#"{"peer":"bobby","text":"must not go"}"#;

    // The page itself: strict headers, no inline script.
    let page = raw(app.addr, "GET", "/", &[("Host", &host)], b"");
    assert_eq!(page.status, 200);
    let csp = &page.headers["content-security-policy"];
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    let html = page.text();
    let mut scripts = Vec::new();
    for tag in html.split("<script").skip(1) {
        let (open, rest) = tag.split_once('>').unwrap();
        // Each a file of this origin, nothing inline.
        assert!(rest.starts_with("</script>"), "inline script: {tag}");
        let src = open
            .split("src=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(src.starts_with('/') && src.ends_with(".js"), "{open}");
        scripts.push(src.to_owned());
    }
    assert_eq!(scripts, ["/app.js", "/groups.js", "/search.js"]);
    for src in &scripts {
        let js = raw(app.addr, "GET", src, &[("Host", &host)], b"");
        assert_eq!(js.status, 200, "{src}");
        assert!(js.headers["content-type"].starts_with("text/javascript"));
    }
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains("onclick"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external origin"
    );

    // Each refusal, on a request that would otherwise queue a message.
    let refused: &[Refused<'_>] = &[
        (
            "DNS rebinding (another name)",
            vec![
                ("Host", "attacker.example"),
                ("Origin", &origin),
                ("X-Ponte-Secret", &secret),
            ],
            421,
        ),
        (
            "localhost instead of the printed address",
            vec![
                ("Host", "localhost"),
                ("Origin", &origin),
                ("X-Ponte-Secret", &secret),
            ],
            421,
        ),
        (
            "no Host",
            vec![("Origin", &origin), ("X-Ponte-Secret", &secret)],
            421,
        ),
        (
            "a foreign Origin",
            vec![
                ("Host", &host),
                ("Origin", "http://attacker.example"),
                ("X-Ponte-Secret", &secret),
            ],
            403,
        ),
        (
            "Origin null (sandboxed frame)",
            vec![
                ("Host", &host),
                ("Origin", "null"),
                ("X-Ponte-Secret", &secret),
            ],
            403,
        ),
        (
            "no Origin",
            vec![("Host", &host), ("X-Ponte-Secret", &secret)],
            403,
        ),
        (
            "cross-site fetch metadata",
            vec![
                ("Host", &host),
                ("Origin", &origin),
                ("X-Ponte-Secret", &secret),
                ("Sec-Fetch-Site", "cross-site"),
            ],
            403,
        ),
        ("no secret", vec![("Host", &host), ("Origin", &origin)], 401),
        (
            "a wrong secret",
            vec![
                ("Host", &host),
                ("Origin", &origin),
                ("X-Ponte-Secret", "00"),
            ],
            401,
        ),
    ];
    for (what, headers, want) in refused {
        let mut h = headers.clone();
        h.push(("Content-Type", "application/json"));
        let r = raw(app.addr, "POST", "/api/send", &h, send.as_bytes());
        assert_eq!(r.status, *want, "{what}: {}", r.text());
        assert!(
            !r.headers.keys().any(|k| k.starts_with("access-control-")),
            "{what}: CORS headers {:?}",
            r.headers
        );
        // Reads are refused the same way (no data leaves).
        let h: Vec<_> = headers
            .iter()
            .filter(|(k, _)| *k != "Origin")
            .copied()
            .collect();
        let r = raw(app.addr, "GET", "/api/chats", &h, b"");
        if *what != "no Origin" && !what.contains("Origin") {
            assert_eq!(r.status, *want, "GET, {what}");
            assert!(!r.text().contains("chats"), "{what}");
        }
    }
    // A CORS preflight from another origin gets nothing that allows it.
    let pre = raw(
        app.addr,
        "OPTIONS",
        "/api/send",
        &[
            ("Host", &host),
            ("Origin", "http://attacker.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-ponte-secret"),
        ],
        b"",
    );
    assert!(pre.status >= 400, "{}", pre.status);
    assert!(!pre.headers.keys().any(|k| k.starts_with("access-control-")));
    // The live channel: foreign Origin refused, own page gets the state.
    let r = raw(
        app.addr,
        "POST",
        "/api/events",
        &[
            ("Host", &host),
            ("Origin", "http://attacker.example"),
            ("X-Ponte-Secret", &secret),
        ],
        b"",
    );
    assert_eq!(r.status, 403);
    let first = first_event(&app);
    assert!(first.contains("\"type\":\"state\""), "{first}");

    // None of it had an effect: nothing queued, nothing reached bob.
    assert_eq!(messages_with(&app, "bobby"), 0);
    assert!(bob_sync(&bob).is_empty());

    // The page's own request goes through, end to end.
    let sent = app.json(
        "POST",
        "/api/send",
        r#"{"peer":"bobby","text":"hello from the app"}"#,
    );
    let id = sent["message"]["id"].as_str().unwrap().to_owned();
    assert_eq!(sent["message"]["status"], "queued");
    app.wait_for("/api/chat/bobby", "sent", |v| {
        v["messages"][0]["status"] == "sent" || v["messages"][0]["status"] == "delivered"
    });
    let got = bob_sync(&bob);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "hello from the app");
    assert_eq!(got[0]["id"], id.as_str());
    // bob's sync displayed it: read by the CLI's rule, so alice sees read.
    app.wait_for("/api/chat/bobby", "read", |v| {
        v["messages"][0]["status"] == "read"
    });
    drop(server);
}

/// The first server-sent event of the live channel, as the page opens it.
fn first_event(app: &App) -> String {
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "POST /api/events HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nX-Ponte-Secret: {}\r\nContent-Length: 0\r\n\r\n",
        app.addr,
        app.origin(),
        app.secret
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the live channel closed");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(head.contains("text/event-stream"), "{head}");
            if let Some(data) = body.split("data: ").nth(1) {
                if data.contains('\n') {
                    return data.lines().next().unwrap().to_owned();
                }
            }
        }
    }
    panic!("no event within {WAIT:?}");
}

#[test]
fn messages_stay_unread_until_the_chat_is_opened_and_the_cli_is_kept_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bobby");
    let mut app = App::start(&alice);
    app.wait_for("/api/state", "online", |s| s["connection"] == "online");

    // The app holds the profile: the CLI and a second app say so and
    // change nothing.
    let out = ponte(&alice, &["sync"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by ponte app, pid"), "{err}");
    let out = ponte(&alice, &["app", "--no-open"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by ponte app"));
    // Only loopback is served, whatever the profile.
    let out = ponte(&bob, &["app", "--no-open", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serves loopback only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // bob writes; the app reports it at once, unread.
    ok(&ponte(&bob, &["send", "alice", "are you there?"]));
    let chats = app.wait_for("/api/chats", "bob's message", |v| {
        v["chats"][0]["unread"] == 1
    });
    assert_eq!(chats["chats"][0]["peer"], "bobby");
    assert_eq!(chats["chats"][0]["last"]["text"], "are you there?");
    // Delivered to alice's device, not read: bob's tick stays delivered.
    let start = Instant::now();
    loop {
        let out = ok(&ponte(&bob, &["sync", "--json"]));
        let lines = json_lines(&out);
        assert!(
            !lines.iter().any(|l| l["status"] == "read"),
            "read too early: {out}"
        );
        if lines.iter().any(|l| l["status"] == "delivered") {
            break;
        }
        assert!(start.elapsed() < WAIT, "never delivered");
        thread::sleep(Duration::from_millis(200));
    }
    // Give a wrong receipt every chance to arrive: it must not.
    thread::sleep(Duration::from_secs(2));
    let out = ok(&ponte(&bob, &["sync", "--json"]));
    assert!(
        !out.contains("\"read\""),
        "read before the chat was opened: {out}"
    );

    // alice opens the chat: read, and bob's tick turns read.
    let read = app.json("POST", "/api/chat/bobby/read", "");
    assert_eq!(read["read"], 1);
    assert_eq!(app.json("GET", "/api/chats", "")["chats"][0]["unread"], 0);
    let start = Instant::now();
    loop {
        let out = ok(&ponte(&bob, &["sync", "--json"]));
        if json_lines(&out).iter().any(|l| l["status"] == "read") {
            break;
        }
        assert!(start.elapsed() < WAIT, "bob never saw read");
        thread::sleep(Duration::from_millis(200));
    }

    // Ctrl-C: a clean stop, and the profile is free again.
    let kill = std::process::Command::new("kill")
        .args(["-INT", &app.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = app.child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the app did not stop"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status:?}; log:\n{}",
        app.log.lock().unwrap()
    );
    ok(&ponte(&alice, &["sync"]));
    drop(server);
}

#[test]
fn a_passphrase_profile_opens_on_the_unlock_screen_or_with_ponte_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let alice = tmp.path().join("alice");
    let mut cmd = common::command(
        &alice,
        &["register", "--server", &server.address(), "alice", "--json"],
    );
    cmd.env("PONTE_PASSPHRASE", "correct horse");
    ok(&common::wait_output(cmd.spawn().unwrap(), WAIT));

    let app = App::start(&alice);
    app.wait_for("/api/state", "the unlock screen", |s| {
        s["phase"] != "starting"
    });
    assert_eq!(app.json("GET", "/api/state", "")["phase"], "locked");
    // Nothing readable before it is unlocked.
    assert_eq!(app.call("GET", "/api/chats", "").status, 409);
    let wrong = app.call("POST", "/api/unlock", r#"{"passphrase":"wrong horse"}"#);
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    assert!(wrong.text().contains("passphrase"), "{}", wrong.text());
    assert_eq!(app.json("GET", "/api/state", "")["phase"], "locked");
    let right = app.json("POST", "/api/unlock", r#"{"passphrase":"correct horse"}"#);
    assert_eq!(right["phase"], "ready");
    assert_eq!(right["handle"], "alice");
    app.wait_for("/api/state", "online", |s| s["connection"] == "online");
    // Unlocking again is refused (it is open).
    assert_eq!(
        app.call("POST", "/api/unlock", r#"{"passphrase":"correct horse"}"#)
            .status,
        403
    );
    drop(app);

    let app = App::start_with(&alice, &[("PONTE_PASSPHRASE", "correct horse")]);
    app.wait_for("/api/state", "ready at start", |s| s["phase"] == "ready");
    drop(server);
}

#[test]
fn offline_the_app_says_so_and_counts_what_waits_then_sends_it() {
    use common::Forwarder;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data);
    let fwd = Forwarder::start(server.addr);
    let address = format!("ponte://{}#{}", fwd.addr, server.key);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &address, "alice");
    register(&bob, &address, "bobby");
    let app = App::start(&alice);
    app.wait_for("/api/state", "online", |s| s["connection"] == "online");

    server.kill();
    app.wait_for("/api/state", "offline", |s| {
        s["connection"] == "offline" && s["route"].is_null()
    });
    let sent = app.json(
        "POST",
        "/api/send",
        r#"{"peer":"bobby","text":"while offline"}"#,
    );
    assert_eq!(sent["message"]["status"], "queued");
    let state = app.json("GET", "/api/state", "");
    assert_eq!(state["waiting"], 1, "{state}");
    // Not online (the send made it try again at once: "connecting").
    assert_ne!(state["connection"], "online", "{state}");

    // The server is back: the message goes, nothing waits.
    let server = Server::start(&data);
    fwd.retarget(server.addr);
    app.wait_for("/api/state", "nothing waiting", |s| {
        s["connection"] == "online" && s["waiting"] == 0
    });
    let got = bob_sync(&bob);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "while offline");
    drop(server);
}

#[test]
fn a_file_goes_to_a_group_from_the_app_quoting_a_message() {
    let (tmp, server) = alice_bobby_carol();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|p| tmp.path().join(p));
    // The group is made with the CLI before the app holds the profile.
    let created = json_lines(&ok(&ponte(
        &alice,
        &["group", "create", "team", "bobby", "carol", "--json"],
    )));
    let gid = created[0]["group"].as_str().unwrap().to_owned();
    let key = format!("g:{gid}");
    ok(&ponte(&bob, &["sync"]));
    ok(&ponte(&carol, &["sync"]));
    ok(&ponte(&bob, &["send", &key, "a photo please"]));

    let app = App::start(&alice);
    app.wait_for("/api/state", "the app to connect", |s| {
        s["phase"] == "ready" && s["connection"] == "online"
    });
    let chat = app.wait_for(&format!("/api/chat/{key}"), "bobby's message", |v| {
        v["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["text"] == "a photo please"))
    });
    let asked = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["text"] == "a photo please")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A reply quoting a message this group does not hold: refused, nothing
    // queued.
    let stranger = "00".repeat(16);
    let r = app.call(
        "POST",
        &format!("/api/send-file?peer={key}&name=x.txt&reply_to={stranger}"),
        "bytes",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("to reply to"), "{}", r.text());

    let bytes = "the beach at noon, as bytes";
    let r = app.call(
        "POST",
        &format!("/api/send-file?peer={key}&name=beach.txt&caption=here&reply_to={asked}"),
        bytes,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(sent["message"]["group"], gid.as_str());
    assert_eq!(sent["message"]["reply"]["id"], asked.as_str());
    assert_eq!(sent["message"]["file"]["name"], "beach.txt");

    // Both members get it, in the group, quoting bobby's message, with the
    // bytes sent.
    for member in [&bob, &carol] {
        let start = Instant::now();
        let (got, lines) = loop {
            let lines = json_lines(&ok(&ponte(member, &["sync", "--json"])));
            if let Some(m) = lines.iter().find(|l| l["file"]["name"] == "beach.txt") {
                break (m.clone(), lines.clone());
            }
            assert!(start.elapsed() < WAIT, "the file never reached {member:?}");
            thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(got["group"], gid.as_str(), "{got}");
        assert_eq!(got["reply_to"], asked.as_str(), "{got}");
        assert_eq!(got["text"], "here", "{got}");
        // Fetched by that sync: on the message, or said on a line of its own.
        let path = got["file"]["path"]
            .as_str()
            .or_else(|| {
                lines
                    .iter()
                    .find(|l| l["id"] == got["id"] && l["file_fetched"].is_string())
                    .and_then(|l| l["file_fetched"].as_str())
            })
            .unwrap_or_else(|| panic!("not fetched: {lines:?}"));
        assert_eq!(std::fs::read_to_string(path).unwrap(), bytes);
    }
    // Only the refused file was not kept: the group holds one file.
    let chat = app.json("GET", &format!("/api/chat/{key}"), "");
    let files = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["file"].is_null())
        .count();
    assert_eq!(files, 1, "{chat}");
    drop(server);
}

/// The live channel as the page reads it: every event, in order.
struct Live {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Live {
    fn open(app: &App) -> Self {
        let mut stream = TcpStream::connect(app.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let req = format!(
            "POST /api/events HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nX-Ponte-Secret: {}\r\nContent-Length: 0\r\n\r\n",
            app.addr,
            app.origin(),
            app.secret
        );
        stream.write_all(req.as_bytes()).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// The events that came until `done` holds for one of them (at most
    /// [`WAIT`]); that one is the last.
    fn until(
        &mut self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut got = Vec::new();
        let start = Instant::now();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            // Whole lines only; an event is one `data: {...}` line.
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data: ") {
                    let v: serde_json::Value = serde_json::from_str(data).unwrap();
                    let last = done(&v);
                    got.push(v);
                    if last {
                        return got;
                    }
                }
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; got {} events, the last {:?}",
                got.len(),
                got.last()
            );
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the live channel closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the live channel: {e}"),
            }
        }
    }
}

#[test]
fn a_burst_of_tick_changes_reaches_the_page_as_one_resync_and_single_ones_as_they_come() {
    use common::Forwarder;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let fwd = Forwarder::start(server.addr);
    let address = format!("ponte://{}#{}", fwd.addr, server.key);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &address, "alice");
    register(&bob, &address, "bobby");

    // A history whose "sent" ticks were never shown (written by another
    // client, or a long time offline): 600 tick changes wait.
    const OLD: usize = 600;
    {
        let client = ponte_client::Client::open(&alice, || Ok(String::new())).unwrap();
        let store = client.store();
        let ids: Vec<ponte_e2e::MessageId> = (0..OLD)
            .map(|i| store.queue_text("bobby", &format!("old {i}")).unwrap())
            .collect();
        let items: Vec<(&str, &ponte_e2e::MessageId)> =
            ids.iter().map(|id| ("bobby", id)).collect();
        store.mark_all_sent(&items).unwrap();
    }

    // The app opens the profile while the server cannot be reached, so the
    // page's live channel is open before the changes are reported.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fwd.retarget(gone);
    let app = App::start(&alice);
    app.wait_for("/api/state", "the profile open", |s| s["phase"] == "ready");
    let mut live = Live::open(&app);
    let first = live.until("the first state", |v| v["type"] == "state");
    assert_eq!(first.len(), 1, "{first:?}");
    fwd.retarget(server.addr);

    let burst = live.until("the resync", |v| v["type"] == "resync");
    let ticks = burst.iter().filter(|v| v["type"] == "status").count();
    assert_eq!(ticks, 0, "{burst:?}");
    // A handful of states (connecting, online, the ticks), not one per tick.
    let states = burst.iter().filter(|v| v["type"] == "state").count();
    assert!(states <= 8, "{states} states: {burst:?}");
    // What the page reloads on resync shows them all sent.
    let chat = app.json("GET", "/api/chat/bobby", "");
    let shown = chat["messages"].as_array().unwrap();
    assert!(!shown.is_empty(), "{chat}");
    assert!(shown.iter().all(|m| m["status"] == "sent"), "{chat}");
    app.wait_for("/api/state", "online", |s| s["connection"] == "online");

    // One message later: its tick comes as its own event.
    let sent = app.json(
        "POST",
        "/api/send",
        r#"{"peer":"bobby","text":"after the burst"}"#,
    );
    let id = sent["message"]["id"].as_str().unwrap().to_owned();
    let later = live.until("the new message's tick", |v| {
        v["type"] == "status"
            && v["message"]["id"] == id.as_str()
            && v["message"]["status"] == "sent"
    });
    assert!(later.iter().all(|v| v["type"] != "resync"), "{later:?}");
    drop(server);
}

/// Group changes and timers from the page, for members who are contacts
/// already: written by the app and sent by its connection, which it keeps
/// (its log shows one connection throughout); each member's client has
/// them.
#[test]
fn group_changes_and_timers_from_the_app_keep_its_connection() {
    let (tmp, server) = alice_bobby_carol();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|p| tmp.path().join(p));
    // bobby and carol become alice's contacts before the app starts.
    for to in ["bobby", "carol"] {
        ok(&ponte(&alice, &["send", to, "hello"]));
    }
    let app = App::start(&alice);
    app.wait_for("/api/state", "the app to connect", |s| {
        s["phase"] == "ready" && s["connection"] == "online"
    });
    assert_eq!(connections(&app), 1, "{}", app.log.lock().unwrap());

    let created = app.json(
        "POST",
        "/api/groups",
        r#"{"title":"trip","members":["bobby","carol"]}"#,
    );
    let id = created["group"]["id"].as_str().unwrap().to_owned();
    let renamed = app.json(
        "POST",
        &format!("/api/group/{id}/rename"),
        r#"{"title":"trip to Porto"}"#,
    );
    assert_eq!(renamed["group"]["title"], "trip to Porto");
    let removed = app.json(
        "POST",
        &format!("/api/group/{id}/remove"),
        r#"{"member":"carol"}"#,
    );
    let members: Vec<_> = removed["group"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["handle"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, ["alice", "bobby"]);
    let timer = app.json(
        "POST",
        "/api/timer",
        &format!(r#"{{"peer":"g:{id}","timer":"1h"}}"#),
    );
    assert_eq!(timer["timer"], 3600, "{timer}");
    app.wait_for("/api/state", "everything sent", |s| s["waiting"] == 0);

    // bobby has the group as it is now, carol knows she was removed.
    let group = format!("g:{id}");
    let start = Instant::now();
    loop {
        ok(&ponte(&bob, &["sync"]));
        let info = &json_lines(&ok(&ponte(&bob, &["group", "info", &group, "--json"])))[0];
        if info["title"] == "trip to Porto" && info["timer_secs"] == 3600 {
            assert_eq!(
                info["members"],
                serde_json::json!(["alice", "bobby"]),
                "{info}"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "bobby's group: {info}");
        thread::sleep(Duration::from_millis(200));
    }
    ok(&ponte(&carol, &["sync"]));
    let info = &json_lines(&ok(&ponte(&carol, &["group", "info", &group, "--json"])))[0];
    assert_eq!(info["status"], "removed", "{info}");

    // One connection throughout.
    assert_eq!(connections(&app), 1, "{}", app.log.lock().unwrap());
    drop(server);
}

/// A file over the automatic download's size (16 MiB) waits until the page
/// asks for it; the app's connection then fetches it, without leaving its
/// connection, and serves it back.
#[test]
fn a_large_file_is_fetched_on_the_apps_connection_when_the_page_asks() {
    let (tmp, _server) = alice_bobby_carol();
    let [alice, bob] = ["alice", "bob"].map(|p| tmp.path().join(p));
    let app = App::start(&alice);
    app.wait_for("/api/state", "the app to connect", |s| {
        s["phase"] == "ready" && s["connection"] == "online"
    });
    let big: Vec<u8> = (0..17u32 << 20).map(|i| (i % 251) as u8).collect();
    let path = tmp.path().join("video.bin");
    std::fs::write(&path, &big).unwrap();
    ok(&ponte(
        &bob,
        &[
            "send",
            "alice",
            "--file",
            path.to_str().unwrap(),
            "the video",
        ],
    ));
    let chat = app.wait_for("/api/chat/bobby", "bobby's file", |v| {
        v["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["text"] == "the video"))
    });
    let message = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["text"] == "the video")
        .unwrap()
        .clone();
    assert_ne!(message["file"]["state"], "fetched", "{message}");
    let id = message["id"].as_str().unwrap();

    let fetched = app.json("POST", &format!("/api/file/{id}/fetch"), "");
    assert_eq!(fetched["fetched"], id, "{fetched}");
    let got = app.call("GET", &format!("/api/file/{id}"), "");
    assert_eq!(got.status, 200);
    assert!(got.body == big, "{} bytes served", got.body.len());
    // A message that is no file here is refused, and nothing is asked.
    let r = app.call("POST", &format!("/api/file/{}/fetch", "ab".repeat(16)), "");
    assert_eq!(r.status, 400, "{}", r.text());

    assert_eq!(connections(&app), 1, "{}", app.log.lock().unwrap());
}

/// Group messages from the page wait for the profile's keys while another
/// process holds them (here the test, with a bare lock on `ponte.keys`),
/// and the app still answers meanwhile: the waits are not on the runtime's
/// two threads. Once the keys are let go, each message goes out.
#[test]
fn the_app_answers_while_group_messages_wait_for_the_keys() {
    let (tmp, _server) = alice_bobby_carol();
    let [alice, bob] = ["alice", "bob"].map(|p| tmp.path().join(p));
    let created = json_lines(&ok(&ponte(
        &alice,
        &["group", "create", "team", "bobby", "carol", "--json"],
    )));
    let key = format!("g:{}", created[0]["group"].as_str().unwrap());
    let app = std::sync::Arc::new(App::start(&alice));
    app.wait_for("/api/state", "the app to connect", |s| {
        s["phase"] == "ready" && s["connection"] == "online"
    });

    let keys = std::fs::File::open(alice.join(ponte_client::lock::KEYS_FILE)).unwrap();
    keys.try_lock().unwrap();
    let sends: Vec<_> = (0..3)
        .map(|i| {
            let (app, key) = (app.clone(), key.clone());
            thread::spawn(move || {
                let body = format!(r#"{{"peer":"{key}","text":"held {i}"}}"#);
                app.call("POST", "/api/send", &body)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    // Three sends wait for the keys; the app answers anyway.
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = app.clone();
    thread::spawn(move || {
        let _ = tx.send(probe.call("GET", "/api/state", "").status);
    });
    let answered = rx.recv_timeout(Duration::from_secs(10));
    keys.unlock().unwrap();
    assert_eq!(
        answered,
        Ok(200),
        "the app did not answer while the keys were held"
    );
    for send in sends {
        let r = send.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let start = Instant::now();
    loop {
        let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
        let held = got
            .iter()
            .filter(|v| v["text"].as_str().is_some_and(|t| t.starts_with("held ")))
            .count();
        if held == 3 {
            break;
        }
        assert!(start.elapsed() < WAIT, "bobby got {held} of 3: {got:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

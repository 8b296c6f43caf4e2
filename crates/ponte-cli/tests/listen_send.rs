//! `ponte send` beside `ponte listen` on the same profile (real processes):
//! the send hands its message to the listener, which holds the profile's
//! connection, instead of logging in as the same device and pushing the
//! listener off; a second listener is refused, naming the first.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;
use common::{json_lines, ok, ponte, register, stderr, with_text, Listen, Server};

#[test]
fn send_beside_listen_goes_through_the_listener_which_keeps_its_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address();
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice");
    register(&bob, &address, "bob");

    let mut listen = Listen::start(&alice);
    listen.wait_notice("connected to");

    // A second listener on the profile is refused, naming the first.
    let second = ponte(&alice, &["listen", "--json"]);
    assert!(!second.status.success());
    let e = stderr(&second);
    assert!(
        e.contains("ponte listen, pid") && e.contains("already holds the connection"),
        "{e}"
    );

    // Three sends while alice listens: each answers sent, through the
    // listener.
    for text in ["one", "two", "three"] {
        let out = ponte(&alice, &["send", "bob", text, "--json"]);
        let v = &json_lines(&ok(&out))[0];
        assert_eq!(v["text"], text);
        assert!(
            ["sent", "delivered", "read"].contains(&v["status"].as_str().unwrap()),
            "{v}"
        );
    }

    // bob has each once, in order, and his answer reaches alice's listener.
    let got = json_lines(&ok(&ponte(&bob, &["sync", "--json"])));
    let texts: Vec<_> = got.iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    ok(&ponte(&bob, &["send", "alice", "got them", "--json"]));
    listen.wait_for("got them");
    assert_eq!(with_text(&listen.seen, "got them").len(), 1);

    // The listener was never pushed off its connection.
    let notices = listen.stop();
    assert!(!notices.contains("disconnected"), "{notices}");
    assert_eq!(notices.matches("connected to").count(), 1, "{notices}");
}

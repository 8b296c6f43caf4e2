//! Ponte clients chat through a stealth relay (`ponte proxy` with a
//! `[listener.stealth]`, a link from `ponte proxy secret add`), the direct
//! route refused; a link whose secret the relay does not hold reaches the
//! cover site, whose TLS answer fails the relay's tag: the client refuses
//! (a security failure), it does not fall back. Real processes, 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

mod common;
use common::{assert_registered, json_lines, ok, ponte, Proxy, Server, PONTE, WAIT};

const M1: &str = "the bridge holds at dawn 9a41";
const M2: &str = "dawn it is b302";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn register(profile: &Path, address: &str, name: &str, via: &str) {
    let args = [
        "register", "--server", address, name, "--json", "--via", via,
    ];
    assert_registered(&ponte(profile, &args), name);
}

fn secret_add(cfg: &Path, label: &str) -> String {
    let out = std::process::Command::new(PONTE)
        .args(["proxy", "-c"])
        .arg(cfg)
        .args([
            "secret",
            "add",
            "--host",
            "127.0.0.1",
            "--no-qr",
            "--label",
            label,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn chat_through_a_stealth_relay_with_the_direct_route_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (cover_port, stealth_port) = (free_port(), free_port());
    let cfg = tmp.path().join("relay.toml");
    // The cover is the relay's own TLS listener (a self-signed HTTPS-like
    // site); the stealth listener hands probes to it.
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{}\"]\nsend_proxy = \"v2\"\nhealth_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"cover\"\nlisten = [\"127.0.0.1:{cover_port}\"]\ntls = \"self-signed\"\nupstream = \"server\"\n\n\
             [[listener]]\nname = \"stealth\"\nlisten = [\"127.0.0.1:{stealth_port}\"]\nupstream = \"server\"\n\
             [listener.stealth]\ncover = \"127.0.0.1:{cover_port}\"\ndomain = \"www.cover.example\"\n",
            server.addr
        ),
    )
    .unwrap();
    let alice_link = secret_add(&cfg, "alice-circle");
    let bobby_link = secret_add(&cfg, "bobby-circle");
    assert!(alice_link.contains("secret=") && alice_link.contains("sni=www.cover.example"));
    let _relay = Proxy::start(&cfg, &["cover", "stealth"], WAIT);

    let closed = free_port();
    let address = server.address_at(closed);
    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));
    register(&alice, &address, "alice", &alice_link);
    register(&bobby, &address, "bobby", &bobby_link);

    let v = json_lines(&ok(&ponte(&alice, &["send", "bobby", M1, "--json"])));
    assert_eq!(v[0]["status"], "sent", "{v:?}");
    let v = json_lines(&ok(&ponte(&bobby, &["sync", "--json"])));
    assert!(
        v.iter().any(|m| m["text"] == M1 && m["from"] == "alice"),
        "{v:?}"
    );
    let v = json_lines(&ok(&ponte(&bobby, &["send", "alice", M2, "--json"])));
    assert_eq!(v[0]["status"], "sent", "{v:?}");
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"])));
    assert!(v.iter().any(|m| m["text"] == M2), "{v:?}");

    let s = &json_lines(&ok(&ponte(&alice, &["status", "--json"])))[0];
    assert_eq!(
        s["in_use"],
        format!("stealth relay 127.0.0.1:{stealth_port} (www.cover.example)"),
        "{s}"
    );
    assert!(
        !s.to_string().contains("secret="),
        "status never shows the secret: {s}"
    );

    // A link whose secret the relay does not hold: the cover answers, its
    // reply fails the tag, the client refuses as for a tampering relay.
    let wrong = format!(
        "ponte://relay?host=127.0.0.1&port={stealth_port}&tls=1&secret=AAAAAAAAAAAAAAAAAAAAAA&sni=www.cover.example"
    );
    let err = failed(&ponte(&alice, &["sync", "--via", &wrong]));
    assert!(
        err.contains("TAMPERING") && err.contains("did not prove"),
        "{err}"
    );

    // Revoked: alice's link goes to the cover too; bobby's still works.
    let out = std::process::Command::new(PONTE)
        .args(["proxy", "-c"])
        .arg(&cfg)
        .args(["secret", "revoke", "alice-circle"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut refused = false;
    for _ in 0..40 {
        let out = ponte(&alice, &["sync", "--via", &alice_link]);
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("did not prove") {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(refused, "a revoked link stops working within 10 s");
    ok(&ponte(&bobby, &["sync", "--json"]));
}

/// A stealth relay started in `dir` in front of `server`, its cover its own
/// self-signed TLS listener, with one link (label `circle`).
fn stealth_relay(dir: &Path, server: std::net::SocketAddr) -> (Proxy, String) {
    std::fs::create_dir_all(dir).unwrap();
    let (cover_port, stealth_port) = (free_port(), free_port());
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{server}\"]\nsend_proxy = \"v2\"\nhealth_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"cover\"\nlisten = [\"127.0.0.1:{cover_port}\"]\ntls = \"self-signed\"\nupstream = \"server\"\n\n\
             [[listener]]\nname = \"stealth\"\nlisten = [\"127.0.0.1:{stealth_port}\"]\nupstream = \"server\"\n\
             [listener.stealth]\ncover = \"127.0.0.1:{cover_port}\"\ndomain = \"www.cover.example\"\n"
        ),
    )
    .unwrap();
    let link = secret_add(&cfg, "circle");
    (Proxy::start(&cfg, &["cover", "stealth"], WAIT), link)
}

/// `listen` over a stealth relay moves to a second stealth relay when the
/// first is SIGKILLed, the direct route refused: every message is shown
/// exactly once, and the relay's death is told as a relay's, not the
/// server's.
#[test]
fn listen_moves_to_a_second_stealth_relay_when_the_first_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (mut first, first_link) = stealth_relay(&tmp.path().join("first"), server.addr);
    let (_second, second_link) = stealth_relay(&tmp.path().join("second"), server.addr);
    let address = server.address_at(free_port());
    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));
    register(&alice, &address, "alice", &second_link);
    register(&bobby, &address, "bobby", &first_link);
    ok(&ponte(&bobby, &["via", "add", &second_link]));

    let mut listen = common::Listen::start(&bobby);

    let texts = ["before the cut 7d", "after the cut 8e", "still here 9f"];
    ok(&ponte(&alice, &["send", "bobby", texts[0]]));
    listen.wait_for(texts[0]);
    first.child.kill();
    ok(&ponte(&alice, &["send", "bobby", texts[1]]));
    listen.wait_for(texts[1]);
    ok(&ponte(&alice, &["send", "bobby", texts[2]]));
    listen.wait_for(texts[2]);
    let notices = listen.stop();
    for t in texts {
        let n = listen.count(t, "alice");
        assert_eq!(n, 1, "{t:?} shown {n} times: {:?}", listen.seen);
    }
    assert!(
        notices.contains("the relay closed the connection"),
        "{notices}"
    );
    assert!(
        !notices.contains("the server closed the connection"),
        "{notices}"
    );
    assert!(
        !notices.contains("secret="),
        "no secret in notices: {notices}"
    );
}

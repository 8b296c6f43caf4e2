//! End-to-end tests of routes through relays, with real processes: `ponte
//! server`, `ponte proxy` relays (TLS and plain) and the `ponte` client
//! commands on two profiles, the direct route blocked (refused, or a black
//! hole that accepts and never answers). Between each relay and the server
//! sits a small recording forwarder (the "tap"), so the tests can check what
//! the relay carried; hostile forwarders in front of the server play a relay
//! that tampers with bytes or replays a handshake.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::closed_port;
use common::{
    assert_registered, contains, json_lines, ok, pipe, ponte, Proxy, Server, PONTE, WAIT,
};

// ---------------------------------------------------------------- forwarders

/// What a forwarder does to the bytes going from the server to the client.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Forward and record.
    Record,
    /// Flip one byte at this offset of the server-to-client stream.
    Flip(usize),
    /// Flip one byte at this offset of the client-to-server stream.
    FlipUp(usize),
    /// Replay the first connection's first server bytes (its handshake
    /// answer) on every later connection.
    Replay,
}

/// Accepts on 127.0.0.1 and relays each connection to `target`, recording
/// every byte (and misbehaving as `mode` says).
struct Forwarder {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(target: SocketAddr, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let first_answer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let (up_from, up_into) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let log = l.clone();
                thread::spawn(move || {
                    pipe(up_from, up_into, log, |off, bytes| {
                        if let Mode::FlipUp(at) = mode {
                            if (off..off + bytes.len()).contains(&at) {
                                bytes[at - off] ^= 0x01;
                            }
                        }
                    })
                });
                let log = l.clone();
                let first = first_answer.clone();
                thread::spawn(move || {
                    pipe(server, client, log, |off, bytes| match mode {
                        Mode::Flip(at) if (off..off + bytes.len()).contains(&at) => {
                            bytes[at - off] ^= 0x01;
                        }
                        Mode::Replay => {
                            let mut first = first.lock().unwrap();
                            for (i, b) in bytes.iter_mut().enumerate() {
                                let pos = off + i;
                                if pos >= 64 {
                                    break;
                                }
                                if n == 0 {
                                    first.push(*b);
                                } else if let Some(old) = first.get(pos) {
                                    *b = *old;
                                }
                            }
                        }
                        _ => {}
                    })
                });
            }
        });
        Self { addr, log, stop }
    }

    fn captured(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Accepts TCP connections at the kernel level and never answers: the
/// listening socket is never `accept`ed from.
struct BlackHole {
    _listener: TcpListener,
    addr: SocketAddr,
}

impl BlackHole {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            _listener: listener,
            addr,
        }
    }
}

// ---------------------------------------------------------------- processes

/// A `ponte proxy` relay with a TLS and a plain listener, forwarding to
/// `upstream` with a PROXY v2 header.
struct Relay {
    proxy: Proxy,
    tls: u16,
    plain: u16,
}

impl Relay {
    fn start(dir: &Path, name: &str, upstream: SocketAddr) -> Self {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[upstream.server]\nservers = [\"{upstream}\"]\nsend_proxy = \"v2\"\n\
                 health_check_interval = \"0s\"\n\n\
                 [[listener]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\nupstream = \"server\"\n\n\
                 [[listener]]\nname = \"plain\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"server\"\n"
            ),
        )
        .unwrap();
        let proxy = Proxy::start(&cfg, &["tls", "plain"], WAIT);
        let (tls, plain) = (proxy.addr("tls").port(), proxy.addr("plain").port());
        Self { proxy, tls, plain }
    }

    fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.tls)
    }

    fn plain_url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.plain)
    }

    fn kill(mut self) {
        self.proxy.child.kill();
    }
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn register(profile: &Path, address: &str, name: &str, vias: &[&str]) {
    let mut args = vec!["register", "--server", address, name, "--json"];
    for v in vias {
        args.extend(["--via", v]);
    }
    assert_registered(&ponte(profile, &args), name);
}

/// Neither texts, nor handles, nor the users' identity keys in `bytes`.
fn assert_only_ciphertext(bytes: &[u8], texts: &[&str], profiles: &[(&Path, &str)]) {
    assert!(bytes.len() > 1000, "the tap saw the traffic");
    let mut needles: Vec<(String, Vec<u8>)> = texts
        .iter()
        .map(|t| (format!("text {t:?}"), t.as_bytes().to_vec()))
        .collect();
    for (dir, handle) in profiles {
        needles.push((format!("handle {handle}"), handle.as_bytes().to_vec()));
        let client = ponte_client::Client::open(dir, || Ok(String::new())).unwrap();
        let id = client.public_identity();
        for (what, key) in [("curve25519", id.curve25519), ("ed25519", id.ed25519)] {
            needles.push((format!("{handle}'s {what} key"), key.to_vec()));
            let b64 = base64_url(&key);
            needles.push((format!("{handle}'s {what} key (base64)"), b64.into_bytes()));
        }
    }
    for (what, needle) in &needles {
        assert!(
            !contains(bytes, needle),
            "{what} found in the relay's traffic"
        );
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

// ---------------------------------------------------------------- tests

const M1: &str = "meet at the north gate 5e1f";
const M2: &str = "the north gate it is 0c77";

/// Direct route refused; alice goes through the relay's TLS listener, bobby
/// through its plain one. Messages flow both ways with ticks, `status` names
/// the relay, and the relay's traffic holds only ciphertext.
#[test]
fn messages_flow_both_ways_through_tls_and_plain_relays_when_direct_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let tap = Forwarder::start(server.addr, Mode::Record);
    let relay = Relay::start(tmp.path(), "relay", tap.addr);
    let address = server.address_at(closed_port());
    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));

    register(&alice, &address, "alice", &[&relay.tls_url()]);
    register(&bobby, &address, "bobby", &[&relay.plain_url()]);

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
    assert!(
        v.iter().any(|m| m["text"] == M1 && m["status"] == "read"),
        "{v:?}"
    );

    // Which route is in use.
    let s = &json_lines(&ok(&ponte(&alice, &["status", "--json"])))[0];
    assert_eq!(s["in_use"], format!("relay {}", relay.tls_url()), "{s}");
    assert_eq!(s["routes"][0]["ok"], false, "{s}");
    assert!(
        s["routes"][0]["route"]
            .as_str()
            .unwrap()
            .starts_with("direct"),
        "{s}"
    );
    assert_eq!(s["routes"][1]["ok"], true, "{s}");
    let text = ok(&ponte(&bobby, &["status"]));
    assert!(
        text.contains(&format!("in use: relay {}", relay.plain_url())),
        "{text}"
    );

    // The relay forwarded a PROXY v2 header carrying the client's address,
    // then nothing but Noise ciphertext.
    let carried = tap.captured();
    assert!(
        carried.starts_with(b"\r\n\r\n\x00\r\nQUIT\n"),
        "PROXY v2 first"
    );
    assert_only_ciphertext(&carried, &[M1, M2], &[(&alice, "alice"), (&bobby, "bobby")]);
}

/// The direct route is a black hole (it accepts and never answers): the
/// relay starts after its head start and wins. Relays saved with `ponte via`
/// (a share link among them) are used, listed and removed.
#[test]
fn black_holed_direct_falls_back_to_saved_relays() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let relay = Relay::start(tmp.path(), "relay", server.addr);
    let hole = BlackHole::new();
    let address = server.address_at(hole.addr.port());
    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));

    // Saved at registration.
    register(&alice, &address, "alice", &[&relay.plain_url()]);
    // Saved afterwards, from a share link.
    register(&bobby, &address, "bobby", &[&relay.plain_url()]);
    ok(&ponte(&bobby, &["via", "clear"]));
    assert_eq!(ok(&ponte(&bobby, &["via", "list"])), "");
    let link = format!("ponte://relay?host=127.0.0.1&port={}&tls=1", relay.tls);
    let out = ok(&ponte(&bobby, &["via", "add", &link]));
    assert!(out.contains(&relay.tls_url()), "{out}");
    let out = ok(&ponte(&bobby, &["via", "add", &relay.plain_url()]));
    assert!(out.contains("saved"), "{out}");
    let list = ok(&ponte(&bobby, &["via", "list"]));
    assert_eq!(
        list.lines()
            .map(|l| l.trim_end_matches("  (worked last)"))
            .collect::<Vec<_>>(),
        [relay.tls_url(), relay.plain_url()],
        "{list}"
    );
    ok(&ponte(&bobby, &["via", "remove", &relay.plain_url()]));
    let err = failed(&ponte(&bobby, &["via", "remove", &relay.plain_url()]));
    assert!(err.contains("not a saved relay"), "{err}");
    let err = failed(&ponte(&bobby, &["via", "add", "ftp://nowhere:1"]));
    assert!(err.contains("unknown scheme"), "{err}");

    let t0 = Instant::now();
    let v = json_lines(&ok(&ponte(
        &alice,
        &["send", "bobby", M1, "--json", "--connect-timeout", "30"],
    )));
    assert_eq!(v[0]["status"], "sent", "{v:?}");
    // It did not wait for the black hole's timeout.
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    let v = json_lines(&ok(&ponte(&bobby, &["sync", "--json"])));
    assert!(v.iter().any(|m| m["text"] == M1), "{v:?}");
    let list = ok(&ponte(&bobby, &["via", "list"]));
    assert!(list.contains("(worked last)"), "{list}");
}

/// `listen` survives its relay dying: it moves to the second relay, and every
/// message is shown exactly once.
#[test]
fn listen_moves_to_a_second_relay_when_the_first_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let first = Relay::start(tmp.path(), "first", server.addr);
    let second = Relay::start(tmp.path(), "second", server.addr);
    let address = server.address_at(closed_port());
    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));
    register(
        &alice,
        &address,
        "alice",
        &[&first.tls_url(), &second.tls_url()],
    );
    register(&bobby, &address, "bobby", &[&first.plain_url()]);
    ok(&ponte(&bobby, &["via", "add", &second.plain_url()]));

    let mut listen = common::Listen::start(&bobby);

    let texts = ["before the cut 1a", "after the cut 2b", "still here 3c"];
    ok(&ponte(&alice, &["send", "bobby", texts[0]]));
    listen.wait_for(texts[0]);
    let first_plain = first.plain_url();
    first.kill();
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
        notices.contains(&format!("relay {first_plain}")),
        "{notices}"
    );
    // The relay died, not the server: the notice says which.
    assert!(
        notices.contains("the relay closed the connection"),
        "{notices}"
    );
    assert!(
        !notices.contains("the server closed the connection"),
        "{notices}"
    );
    assert!(
        notices.contains(&format!("relay {}", second.plain_url())),
        "{notices}"
    );
    // Alice's side: all three delivered.
    let v = json_lines(&ok(&ponte(&alice, &["history", "bobby", "--json"])));
    for t in texts {
        assert!(
            v.iter()
                .any(|m| m["text"] == t && m["status"] != "queued" && m["status"] != "failed"),
            "{v:?}"
        );
    }
}

/// A relay that flips one byte (in the handshake, after it, or on the way
/// up), one that replays an old handshake answer, and one that forwards to
/// an impostor server with another key: the client refuses, exit 1, with an
/// error naming the cause, and never falls back to anything else silently.
#[test]
fn tampering_replaying_and_impostor_relays_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let good = Forwarder::start(server.addr, Mode::Record);
    let address = server.address_at(closed_port());
    let alice = tmp.path().join("alice");
    register(
        &alice,
        &address,
        "alice",
        &[&format!("tcp://{}", good.addr)],
    );
    ok(&ponte(&alice, &["via", "clear"]));

    let sync_via = |via: SocketAddr| ponte(&alice, &["sync", "--via", &format!("tcp://{via}")]);

    // One byte of the server's handshake answer (u16 length, then 48 bytes).
    let f = Forwarder::start(server.addr, Mode::Flip(10));
    let err = failed(&sync_via(f.addr));
    assert!(err.contains("TAMPERING"), "{err}");
    assert!(err.contains("handshake"), "{err}");

    // One byte of the first encrypted message after the handshake.
    let f = Forwarder::start(server.addr, Mode::Flip(60));
    let err = failed(&sync_via(f.addr));
    assert!(err.contains("TAMPERING"), "{err}");
    assert!(err.contains("altered"), "{err}");

    // One byte of the client's first handshake message, on its way up.
    let f = Forwarder::start(server.addr, Mode::FlipUp(20));
    let err = failed(&sync_via(f.addr));
    assert!(err.contains("could not complete the handshake"), "{err}");

    // A replayed handshake answer: the first connection works, later ones
    // get the old answer and are refused.
    let f = Forwarder::start(server.addr, Mode::Replay);
    ok(&sync_via(f.addr));
    let err = failed(&sync_via(f.addr));
    assert!(err.contains("TAMPERING"), "{err}");

    // An impostor server behind a real relay.
    let impostor = Server::start(&tmp.path().join("impostor"));
    assert_ne!(impostor.key, server.key);
    let relay = Relay::start(tmp.path(), "impostor-relay", impostor.addr);
    let err = failed(&ponte(&alice, &["sync", "--via", &relay.tls_url()]));
    assert!(err.contains("does not hold the key"), "{err}");
    let out = ponte(&alice, &["status", "--via", &relay.plain_url()]);
    let err = failed(&out);
    assert!(err.contains("does not hold the key"), "{err}");
    // The route table is still shown, with why the route failed.
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("FAIL  relay {}", relay.plain_url()))
            && table.contains("does not hold the key"),
        "{table}"
    );

    // `listen` stops too instead of retrying.
    let out = ponte(&alice, &["listen", "--via", &relay.plain_url()]);
    let err = failed(&out);
    assert!(err.contains("does not hold the key"), "{err}");

    // The honest path still works.
    ok(&sync_via(good.addr));
}

/// `last_route` (in `status --json`, and `via list`'s "worked last") is a
/// route that carried an authenticated session: a relay that altered the
/// server's first message is not recorded, and neither is a one-off
/// `--via` that worked but is not saved. The saved relay that worked stays.
#[test]
fn a_tampering_or_one_off_relay_is_not_remembered_as_the_last_route() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let good = Forwarder::start(server.addr, Mode::Record);
    let address = server.address_at(closed_port());
    let alice = tmp.path().join("alice");
    let saved = format!("tcp://{}", good.addr);
    register(&alice, &address, "alice", &[&saved]);
    let last_route = || {
        let out = ponte(&alice, &["status", "--json", "--connect-timeout", "2"]);
        json_lines(&String::from_utf8_lossy(&out.stdout))[0]["last_route"].clone()
    };
    let worked = format!("relay {saved}");
    assert_eq!(last_route(), worked.as_str());

    // Only the tampering relay is tried: the saved one is down for now.
    drop(good);
    thread::sleep(Duration::from_millis(500));
    let tamper = Forwarder::start(server.addr, Mode::Flip(60));
    let out = ponte(
        &alice,
        &["sync", "--via", &format!("tcp://{}", tamper.addr)],
    );
    let err = failed(&out);
    assert!(err.contains("TAMPERING"), "{err}");
    assert_eq!(last_route(), worked.as_str(), "the tampering relay");

    let one_off = Forwarder::start(server.addr, Mode::Record);
    ok(&ponte(
        &alice,
        &["sync", "--via", &format!("tcp://{}", one_off.addr)],
    ));
    assert_eq!(last_route(), worked.as_str(), "a one-off --via");
    let list = ok(&ponte(&alice, &["via", "list"]));
    assert!(list.contains(&format!("{saved}  (worked last)")), "{list}");
}

/// What a relay did, in the user's terms rather than rustls's or the
/// socket's: a relay that accepts and closes because it cannot reach the
/// server is named as such (TLS and plain); `tls://` at a plain relay's
/// port says it does not speak TLS and names the tcp:// URL to use; a
/// relay URL with a path says it has none.
#[test]
fn a_relay_that_cannot_reach_the_server_or_the_wrong_scheme_is_said_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let good = Relay::start(tmp.path(), "good", server.addr);
    let address = server.address_at(closed_port());
    let alice = tmp.path().join("alice");
    register(&alice, &address, "alice", &[&good.plain_url()]);
    ok(&ponte(&alice, &["via", "clear"]));

    let cut = Relay::start(
        tmp.path(),
        "cut",
        SocketAddr::from(([127, 0, 0, 1], closed_port())),
    );
    for url in [cut.tls_url(), cut.plain_url()] {
        let err = failed(&ponte(&alice, &["sync", "--via", &url]));
        assert!(
            err.contains("the relay accepted the connection and closed it"),
            "{url}: {err}"
        );
        assert!(err.contains("may not reach the server"), "{url}: {err}");
        assert!(!err.contains("  "), "one line of prose: {err}");
        assert!(
            !err.contains("close_notify") && !err.contains("docs.rs"),
            "{url}: {err}"
        );
    }

    let wrong = format!("tls://127.0.0.1:{}", good.plain);
    let err = failed(&ponte(&alice, &["sync", "--via", &wrong]));
    assert!(err.contains("does not seem to speak TLS"), "{err}");
    assert!(err.contains(&good.plain_url()), "{err}");
    assert!(!err.contains("tls handshake eof"), "{err}");

    let err = failed(&ponte(
        &alice,
        &["via", "add", "tls://relay.example.org:443/path"],
    ));
    assert!(err.contains("no path"), "{err}");
    assert!(err.contains("tls://relay.example.org:443"), "{err}");
    assert!(!err.contains("bad port"), "{err}");
}

/// The share link `ponte proxy link` prints for the `ponte` preset is read
/// back by `ponte via add`; its https:// form only on the operator's base.
#[test]
fn proxy_link_for_the_ponte_preset_round_trips_through_via_add() {
    let tmp = tempfile::tempdir().unwrap();
    let link = |extra: &[&str]| {
        Command::new(PONTE)
            .args([
                "proxy",
                "link",
                "--host",
                "relay.example.org",
                "--preset",
                "ponte",
                "--upstream",
                "127.0.0.1:5222",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // Without a base: the ponte:// form alone (no domain the project does
    // not run), its QR code drawn.
    let plain = ok(&link(&[]));
    assert_eq!(
        plain.lines().next(),
        Some("ponte://relay?host=relay.example.org&port=443&tls=1")
    );
    assert!(!plain.contains("https://"), "{plain}");
    assert!(plain.contains('█'), "QR code drawn");
    // A base that is not https, or carries a fragment: refused.
    for bad in ["http://relays.example.net/relay", "https://x.example/#a"] {
        let out = link(&["--web-base", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--web-base must be an https:// URL"),
            "{out:?}"
        );
    }
    let out = link(&["--web-base", "https://relays.example.net/ponte/relay"]);
    let text = ok(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "ponte://relay?host=relay.example.org&port=443&tls=1"
    );
    assert_eq!(
        lines[1],
        "https://relays.example.net/ponte/relay#host=relay.example.org&port=443&tls=1"
    );
    assert!(text.contains('█'), "QR code drawn");

    // A profile to save them in (registration needs a server).
    let server = Server::start(&tmp.path().join("server"));
    let alice = tmp.path().join("alice");
    register(&alice, &server.address_at(server.addr.port()), "alice", &[]);
    // None yet: an empty list on stdout, what to do on stderr.
    let out = ponte(&alice, &["via", "list"]);
    assert_eq!(ok(&out), "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no relays saved"),
        "{out:?}"
    );
    for link in &lines[..2] {
        ok(&ponte(&alice, &["via", "add", link]));
    }
    let list = ok(&ponte(&alice, &["via", "list"]));
    assert_eq!(list.trim(), "tls://relay.example.org:443", "{list}");
}

/// A route to a relay from a chosen loopback source address, so that
/// clients behind one relay come from different addresses.
#[derive(Debug)]
struct FromSource {
    source: std::net::IpAddr,
    relay: SocketAddr,
}

impl ponte_client::route::Route for FromSource {
    fn connect(
        &self,
    ) -> ponte_client::route::BoxFuture<'_, std::io::Result<ponte_client::route::BoxStream>> {
        Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(self.source, 0))?;
            let stream = socket.connect(self.relay).await?;
            Ok(Box::new(stream) as ponte_client::route::BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!("relay tcp://{} from {}", self.relay, self.source)
    }
}

/// The server counts registrations per *client* address, which it learns
/// from the relay's PROXY header: with one registration allowed per source,
/// two users behind the same relay (the same peer for the server) from two
/// addresses both get in, and a second one from the first address is
/// refused. Without the header both would count as the relay's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_rate_limits_by_the_client_address_the_relay_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("server.toml");
    std::fs::write(
        &cfg,
        "register_limit = { burst = 1, per_hour = 1 }\n\
         register_limit_per_peer = { burst = 100, per_hour = 1000 }\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let data = tmp.path().join("server");
    let (server, relay) = tokio::task::spawn_blocking({
        let tmp = tmp.path().to_owned();
        move || {
            let server = Server::start_with(&data, &["--config", &cfg_arg]);
            let relay = Relay::start(&tmp, "relay", server.addr);
            (server, relay)
        }
    })
    .await
    .unwrap();
    let address = server.address_at(closed_port());
    let relay_addr: SocketAddr = format!("127.0.0.1:{}", relay.plain).parse().unwrap();
    let register_from = |source: [u8; 4], name: &'static str| {
        let dir = tmp.path().join(name);
        let address = address.clone();
        async move {
            ponte_client::Client::register(
                &dir,
                ponte_client::profile::KeySource::KeyFile,
                || Ok(String::new()),
                ponte_client::client::RegisterOptions::new(address, name)
                    .connect_timeout(Duration::from_secs(10))
                    .routes(vec![Box::new(FromSource {
                        source: source.into(),
                        relay: relay_addr,
                    })]),
            )
            .await
        }
    };
    register_from([127, 0, 0, 2], "first").await.unwrap();
    register_from([127, 0, 0, 3], "second").await.unwrap();
    let err = register_from([127, 0, 0, 2], "third").await.unwrap_err();
    assert!(
        err.server_code() == Some(ponte_client::ServerCode::RateLimited),
        "{err}"
    );
    drop(relay);
    drop(server);
}

/// The tampering cases above through a stealth relay (`[listener.stealth]`,
/// its link from `ponte proxy secret add`): whatever alters a byte on the
/// relay's path to the server (here a forwarder that is the relay's
/// upstream) is refused as tampering, exit 1, with no fallback.
#[test]
fn a_tampering_path_behind_a_stealth_relay_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let address = server.address_at(closed_port());
    let alice = tmp.path().join("alice");
    let honest = Forwarder::start(server.addr, Mode::Record);
    let (_relay, link) = stealth_relay_to(&tmp.path().join("honest"), honest.addr);
    register(&alice, &address, "alice", &[&link]);
    ok(&ponte(&alice, &["via", "clear"]));
    for (name, mode, says) in [
        ("answer", Mode::Flip(10), "handshake"),
        ("message", Mode::Flip(60), "altered"),
    ] {
        let f = Forwarder::start(server.addr, mode);
        let (_relay, link) = stealth_relay_to(&tmp.path().join(name), f.addr);
        let err = failed(&ponte(&alice, &["sync", "--via", &link]));
        assert!(err.contains("TAMPERING") && err.contains(says), "{err}");
        assert!(!err.contains("secret="), "no secret in errors: {err}");
    }
    // The honest stealth path still works.
    ok(&ponte(&alice, &["sync", "--via", &link]));
}

/// A loopback port free now, for a listener to bind.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A stealth relay in `dir` whose upstream is `upstream`, its cover its own
/// self-signed TLS listener; returns it and its one link.
fn stealth_relay_to(dir: &Path, upstream: SocketAddr) -> (Proxy, String) {
    std::fs::create_dir_all(dir).unwrap();
    let (cover_port, stealth_port) = (free_port(), free_port());
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{upstream}\"]\nhealth_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"cover\"\nlisten = [\"127.0.0.1:{cover_port}\"]\ntls = \"self-signed\"\nupstream = \"server\"\n\n\
             [[listener]]\nname = \"stealth\"\nlisten = [\"127.0.0.1:{stealth_port}\"]\nupstream = \"server\"\n\
             [listener.stealth]\ncover = \"127.0.0.1:{cover_port}\"\ndomain = \"www.cover.example\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(PONTE)
        .args(["proxy", "-c"])
        .arg(&cfg)
        .args(["secret", "add", "--host", "127.0.0.1", "--no-qr"])
        .output()
        .unwrap();
    let link = ok(&out).lines().next().unwrap().to_owned();
    (Proxy::start(&cfg, &["cover", "stealth"], WAIT), link)
}

//! End-to-end tests with real processes: `ponte server` and the `ponte`
//! client commands on two profiles in temp dirs, talking through a small
//! recording TCP forwarder so the test can check what crossed the wire.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::{
    assert_registered, command, contains, json_lines, ok, wait_output, with_text, Forwarder, Proxy,
    Server, PONTE, WAIT,
};

// ---------------------------------------------------------------- helpers

/// Run a client command with a deadline; no passphrase unless given.
fn ponte(profile: &Path, args: &[&str], passphrase: Option<&str>) -> Output {
    let mut cmd = command(profile, args);
    if let Some(p) = passphrase {
        cmd.env("PONTE_PASSPHRASE", p);
    }
    wait_output(cmd.spawn().unwrap(), WAIT)
}

fn register(profile: &Path, address: &str, name: &str, passphrase: Option<&str>) {
    let out = ponte(
        profile,
        &["register", "--server", address, name, "--json"],
        passphrase,
    );
    assert_registered(&out, name);
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn assert_nowhere_on_disk(dirs: &[&Path], secrets: &[&str]) {
    let mut files = Vec::new();
    for d in dirs {
        files_under(d, &mut files);
    }
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with("-wal")),
        "WAL files are checked too"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for s in secrets {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "{s:?} found in {}",
                f.display()
            );
        }
    }
}

// ---------------------------------------------------------------- tests

const T1: &str = "rendezvous at the old mill 4a9c";
const T2: &str = "bring the blue folder 77e1";
const T3: &str = "understood, see you there b03d";

#[test]
fn client_offline_send_survives_sigkill_exactly_once_ticks_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    let server = Server::start(&data);
    let fwd = Forwarder::start(server.addr);
    let address = server.address_at(fwd.addr.port());

    register(&alice, &address, "alice", None);
    register(&bob, &address, "bob", Some("bob's long passphrase"));
    assert!(alice.join("profile.key").exists());
    assert!(!bob.join("profile.key").exists());
    // Bob's profile does not open without its passphrase.
    let out = ponte(&bob, &["contacts"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase"));

    // Bob is offline; alice sends: durable on the server (one tick).
    let v = json_lines(&ok(&ponte(&alice, &["send", "bob", T1, "--json"], None)));
    assert_eq!(v[0]["status"], "sent");
    assert_eq!(
        (v[0]["from"].as_str(), v[0]["to"].as_str()),
        (Some("alice"), Some("bob"))
    );
    let t1_id = v[0]["id"].as_str().unwrap().to_owned();

    // The server dies hard; alice writes while it is down: queued, exit 0.
    server.kill();
    let out = ponte(
        &alice,
        &["send", "bob", T2, "--json", "--connect-timeout", "2"],
        None,
    );
    let v = json_lines(&ok(&out));
    assert_eq!(v[0]["status"], "queued");
    assert!(String::from_utf8_lossy(&out.stderr).contains("queued"));

    // Back up (same data, new port behind the same forwarder address).
    let server = Server::start(&data);
    fwd.retarget(server.addr);
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"], None)));
    assert!(
        v.iter().any(|m| m["text"] == T2 && m["status"] == "sent"),
        "{v:?}"
    );

    // SIGKILL again between send and receive.
    server.kill();
    let server = Server::start(&data);
    fwd.retarget(server.addr);

    // Bob syncs: each text exactly once.
    let v = json_lines(&ok(&ponte(
        &bob,
        &["sync", "--json"],
        Some("bob's long passphrase"),
    )));
    assert_eq!(with_text(&v, T1).len(), 1, "{v:?}");
    assert_eq!(with_text(&v, T2).len(), 1, "{v:?}");
    let m1 = with_text(&v, T1)[0];
    assert_eq!(
        (m1["from"].as_str(), m1["to"].as_str()),
        (Some("alice"), Some("bob"))
    );
    assert_eq!(m1["id"].as_str(), Some(t1_id.as_str()));
    assert_eq!(m1["status"], "received");
    // Nothing new the second time.
    let v = json_lines(&ok(&ponte(
        &bob,
        &["sync", "--json"],
        Some("bob's long passphrase"),
    )));
    assert!(v.iter().all(|m| m["from"] != "alice"), "shown twice: {v:?}");

    // Alice sees delivered, then read (bob's sync displayed them).
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"], None)));
    for text in [T1, T2] {
        let statuses: Vec<_> = with_text(&v, text)
            .iter()
            .map(|m| m["status"].clone())
            .collect();
        assert_eq!(statuses, ["delivered", "read"], "{text}: {v:?}");
    }
    let h = json_lines(&ok(&ponte(&alice, &["history", "bob", "--json"], None)));
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|m| m["status"] == "read"));

    // A reply, read by alice through `history` (offline display), whose
    // read receipt goes out with alice's next sync.
    ok(&ponte(
        &bob,
        &["send", "alice", T3],
        Some("bob's long passphrase"),
    ));
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"], None)));
    assert_eq!(with_text(&v, T3).len(), 1);
    let v = json_lines(&ok(&ponte(
        &bob,
        &["sync", "--json"],
        Some("bob's long passphrase"),
    )));
    assert_eq!(with_text(&v, T3).last().unwrap()["status"], "read", "{v:?}");
    let text = ok(&ponte(
        &bob,
        &["history", "alice"],
        Some("bob's long passphrase"),
    ));
    assert!(text.contains(T1) && text.contains(T3), "{text}");

    // The plaintext is nowhere: not on the wire, not in any file (server
    // data, both profiles, WAL included).
    let wire = fwd.captured();
    assert!(wire.len() > 1000, "the forwarder saw the traffic");
    for t in [T1, T2, T3] {
        assert!(!contains(&wire, t.as_bytes()), "{t:?} on the wire");
    }
    assert_nowhere_on_disk(&[&data, &alice, &bob], &[T1, T2, T3]);
    drop(server);
    assert_nowhere_on_disk(&[&data, &alice, &bob], &[T1, T2, T3]);
}

#[test]
fn client_refuses_a_server_with_another_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let fwd = Forwarder::start(server.addr);
    let address = server.address_at(fwd.addr.port());
    let alice = tmp.path().join("alice");
    register(&alice, &address, "alice", None);
    ok(&ponte(&alice, &["sync"], None));

    // Another server (another key) now answers at the same address.
    let impostor = Server::start(&tmp.path().join("impostor"));
    assert_ne!(impostor.key, server.key);
    fwd.retarget(impostor.addr);
    for args in [
        &["sync"][..],
        &["send", "bob", "hello"][..],
        &["listen"][..],
    ] {
        let out = ponte(&alice, args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not hold the key"), "{args:?}: {err}");
    }
    // The send that failed is marked failed, never sent later behind the
    // user's back (they were told it failed and may type it again).
    let failed = |alice: &std::path::Path| {
        let v = json_lines(&ok(&ponte(alice, &["history", "bob", "--json"], None)));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0]["status"], "failed", "{v:?}");
    };
    failed(&alice);
    fwd.retarget(server.addr);
    ok(&ponte(&alice, &["sync"], None));
    failed(&alice);
    fwd.retarget(impostor.addr);
    // Registering against the impostor with the real key fails the same way.
    let out = ponte(
        &tmp.path().join("carol"),
        &["register", "--server", &address, "carol"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold the key"));
}

#[test]
fn client_verify_contacts_and_listen_reconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data);
    let fwd = Forwarder::start(server.addr);
    let address = server.address_at(fwd.addr.port());
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice", None);
    register(&bob, &address, "bob", None);

    // Safety numbers: 60 digits, the same on both sides.
    let a = json_lines(&ok(&ponte(&alice, &["verify", "bob", "--json"], None)))[0].clone();
    let b = json_lines(&ok(&ponte(&bob, &["verify", "alice", "--json"], None)))[0].clone();
    let digits = a["safety_number"].as_str().unwrap();
    assert_eq!(digits.len(), 60);
    assert!(digits.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(a["safety_number"], b["safety_number"]);
    assert_eq!(a["verified"], false);
    let text = ok(&ponte(&alice, &["verify", "bob"], None));
    assert!(
        text.contains(&digits[..5]) && (text.contains('▀') || text.contains('▄')),
        "{text}"
    );
    ok(&ponte(&alice, &["verify", "bob", "--confirm"], None));
    let c = json_lines(&ok(&ponte(&alice, &["contacts", "--json"], None)));
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0]["handle"].as_str(), c[0]["verified"].as_bool()),
        (Some("bob"), Some(true))
    );

    // Bob listens; alice's message shows up; the server dies (SIGKILL) and
    // comes back; listen reconnects on its own and shows the next one.
    let mut listen = command(&bob, &["listen", "--json"]).spawn().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = listen.stdout.take().unwrap();
    let tx2 = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(format!("out:{line}"));
        }
    });
    let stderr = listen.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("err:{line}"));
        }
    });
    let wait_for = |what: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if what(&line) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("listen did not print the expected line in time");
    };
    wait_for(&|l| l.starts_with("err:") && l.contains("connected to"));
    ok(&ponte(
        &alice,
        &["send", "bob", "first while listening"],
        None,
    ));
    let line = wait_for(&|l| l.contains("first while listening"));
    let v: serde_json::Value = serde_json::from_str(line.strip_prefix("out:").unwrap()).unwrap();
    assert_eq!(v["from"], "alice");

    server.kill();
    wait_for(&|l| {
        l.starts_with("err:") && l.contains("disconnected (") && l.contains("retrying in")
    });
    let server = Server::start(&data);
    fwd.retarget(server.addr);
    wait_for(&|l| l.starts_with("err:") && l.contains("connected to"));
    ok(&ponte(
        &alice,
        &["send", "bob", "second after restart"],
        None,
    ));
    wait_for(&|l| l.contains("second after restart"));

    // Alice sees both read (listen displayed them and sends the receipts
    // within its next loop turn): poll a bounded number of times.
    let mut h = Vec::new();
    for _ in 0..40 {
        ok(&ponte(&alice, &["sync"], None));
        h = json_lines(&ok(&ponte(&alice, &["history", "bob", "--json"], None)));
        if h.len() == 2 && h.iter().all(|m| m["status"] == "read") {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(
        h.len() == 2 && h.iter().all(|m| m["status"] == "read"),
        "{h:?}"
    );

    // `send` on the listening profile takes the connection over briefly;
    // listen gets it back by itself and keeps printing.
    ok(&ponte(
        &bob,
        &["send", "alice", "sent while listening"],
        None,
    ));
    let v = json_lines(&ok(&ponte(&alice, &["sync", "--json"], None)));
    assert_eq!(with_text(&v, "sent while listening").len(), 1, "{v:?}");
    ok(&ponte(&alice, &["send", "bob", "still listening?"], None));
    wait_for(&|l| l.starts_with("out:") && l.contains("still listening?"));
    listen.kill().unwrap();
    listen.wait().unwrap();
    drop(server);
}

#[test]
fn client_register_on_an_invite_only_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start_with(&data, &["--invite-only"]);
    let address = server.address();
    let carol = tmp.path().join("carol");

    let out = ponte(&carol, &["register", "--server", &address, "carol"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVITE_REQUIRED"), "{err}");
    // It says what to do next.
    assert!(
        err.contains("hint:") && err.contains("--invite TOKEN"),
        "{err}"
    );

    let invite = Command::new(PONTE)
        .args(["server", "invite", "--data"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let token = ok(&wait_output(invite, WAIT)).trim().to_owned();
    assert!(!token.is_empty());

    // The half-made profile from the refused attempt is reused.
    let out = ponte(
        &carol,
        &[
            "register", "--server", &address, "carol", "--invite", &token,
        ],
        None,
    );
    assert!(ok(&out).contains("registered as carol"));
    // Sending to a handle nobody has: exit 1, status failed.
    let out = ponte(&carol, &["send", "nobody", "hello?", "--json"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        json_lines(&String::from_utf8_lossy(&out.stdout))[0]["status"],
        "failed"
    );
    // A second registration on the same profile is refused locally.
    let out = ponte(&carol, &["register", "--server", &address, "carol2"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already registered"));
    // The token was single-use.
    let out = ponte(
        &tmp.path().join("dave"),
        &["register", "--server", &address, "dave", "--invite", &token],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVITE_INVALID"), "{err}");
    assert!(
        err.contains("already used") && err.contains("new one"),
        "{err}"
    );
    // Usage errors: bad handle, bad address.
    let out = ponte(
        &tmp.path().join("erin"),
        &["register", "--server", &address, "Erin!"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let out = ponte(
        &tmp.path().join("erin"),
        &["register", "--server", "http://x", "erin"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ponte://"));
    drop(server);
}

#[test]
fn client_reaches_the_server_through_a_ponte_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    // A relay (`ponte proxy`, plain TCP listener, PROXY v1 header upstream)
    // in front of the server. The address users get names the relay and
    // the server's key: the Noise channel runs through the relay.
    let cfg = tmp.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{}\"]\nsend_proxy = \"v1\"\n\n\
             [[listener]]\nname = \"plain\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"none\"\nupstream = \"server\"\n",
            server.addr
        ),
    )
    .unwrap();
    let relay = Proxy::start(&cfg, &["plain"], WAIT);
    let port = relay.addr("plain").port();
    let address = format!("ponte://127.0.0.1:{port}#{}", server.key);
    let alice = tmp.path().join("alice");
    let bob = tmp.path().join("bob");
    register(&alice, &address, "alice", None);
    register(&bob, &address, "bob", None);
    let v = json_lines(&ok(&ponte(
        &alice,
        &["send", "bob", "via the relay", "--json"],
        None,
    )));
    assert_eq!(v[0]["status"], "sent");
    let v = json_lines(&ok(&ponte(&bob, &["sync", "--json"], None)));
    assert_eq!(with_text(&v, "via the relay").len(), 1, "{v:?}");
    drop(relay);
    drop(server);
}

#[test]
fn client_profile_location_follows_flag_env_and_xdg() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &Path)], args: &[&str]| -> String {
        let mut cmd = Command::new(PONTE);
        cmd.arg("contacts")
            .args(args)
            .env_remove("PONTE_PROFILE")
            .env_remove("XDG_DATA_HOME")
            .env_remove("PONTE_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = wait_output(cmd.spawn().unwrap(), WAIT);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let home = tmp.path().join("home");
    let xdg = tmp.path().join("xdg");
    let env_dir = tmp.path().join("env-profile");
    let flag_dir = tmp.path().join("flag-profile");
    let err = run(&[("HOME", &home)], &[]);
    assert!(
        err.contains(&format!("{}", home.join(".local/share/ponte").display())),
        "{err}"
    );
    let err = run(&[("HOME", &home), ("XDG_DATA_HOME", &xdg)], &[]);
    assert!(
        err.contains(&format!("{}", xdg.join("ponte").display())),
        "{err}"
    );
    let err = run(
        &[
            ("HOME", &home),
            ("XDG_DATA_HOME", &xdg),
            ("PONTE_PROFILE", &env_dir),
        ],
        &[],
    );
    assert!(err.contains(&format!("{}", env_dir.display())), "{err}");
    let flag = flag_dir.to_str().unwrap();
    let err = run(&[("PONTE_PROFILE", &env_dir)], &["--profile", flag]);
    assert!(
        err.contains(flag) && err.contains("ponte register"),
        "{err}"
    );
    // Looking did not create anything.
    assert!(!home.exists() && !xdg.exists() && !env_dir.exists() && !flag_dir.exists());
}

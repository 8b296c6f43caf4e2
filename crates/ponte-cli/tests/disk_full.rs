//! A server whose disk fills up: sends are refused with "try again later"
//! and wait in the sender's outbox, `/healthz` says 503 and the metrics say
//! why, reads still work; once space is back the next commit succeeds, the
//! outbox drains, and every message arrives exactly once.
//!
//! The full disk is a file-size limit (`RLIMIT_FSIZE`, with `SIGXFSZ`
//! ignored so writes fail with `EFBIG` instead of killing the process) set
//! on the real `ponte server` process, lifted later with `prlimit(2)`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, unsafe_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;

mod common;

use common::{ok, ponte, Killed, PONTE, WAIT};

/// The largest file the server may write: the empty database and its WAL
/// take about 130 KB, so a few dozen messages fill the rest.
const FILE_LIMIT: u64 = 400_000;

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    common::json_lines(&ok(out))
}

/// `GET path` on the admin endpoint: the status code and the body.
fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (code, body)
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = get(admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .parse()
        .unwrap()
}

#[test]
fn a_full_disk_refuses_sends_loses_nothing_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let mut cmd = Command::new(PONTE);
    cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])
    .arg("--data")
    .arg(&data)
    .env("NO_COLOR", "1")
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls (signal,
    // setrlimit) that touch nothing but this process's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: FILE_LIMIT,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let server = Killed(child);
    let pid = server.0.id();
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("ponte://") {
                let _ = tx.send(line);
            }
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("admin endpoint on http://").nth(1) {
                let _ = tx2.send(rest.trim_end_matches("/metrics").to_owned());
            }
        }
    });
    let (mut address, mut admin) = (None, None);
    while address.is_none() || admin.is_none() {
        let line = rx.recv_timeout(WAIT).expect("server started");
        if line.starts_with("ponte://") {
            address = Some(line);
        } else {
            admin = Some(line.parse::<SocketAddr>().unwrap());
        }
    }
    let (address, admin) = (address.unwrap(), admin.unwrap());
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".to_owned()));

    let (alice, bobby) = (tmp.path().join("alice"), tmp.path().join("bobby"));
    for (p, name) in [(&alice, "alice"), (&bobby, "bobby")] {
        common::register(p, &address, name);
    }

    // Bob is offline: his mailbox grows until the disk is full.
    let filler = "x".repeat(12_000);
    let mut texts = Vec::new();
    let mut queued = None;
    for i in 0..100 {
        let text = format!("{i:03} {filler}");
        let v = json_lines(&ponte(&alice, &["send", "bobby", &text, "--json"]));
        texts.push(text);
        if v[0]["status"] == "queued" {
            queued = Some(i);
            break;
        }
        assert_eq!(v[0]["status"], "sent", "{v:?}");
    }
    let queued = queued.expect("the disk never filled up");
    assert!(queued >= 3, "full after only {queued} messages");
    let (code, body) = get(admin, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("disk full"), "{body}");
    assert_eq!(metric(admin, "ponte_server_store_commit_failing"), 1.0);
    assert!(metric(admin, "ponte_server_store_commit_failures_total") >= 1.0);
    eprintln!("the disk was full at message {queued}");
    // Still no space: `sync` says so once, keeps the message queued and
    // still succeeds (it could receive).
    let out = ponte(&alice, &["sync", "--json"]);
    let v = json_lines(&out);
    assert!(v.iter().all(|m| m["status"] != "sent"), "{v:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("kept in the outbox").count(), 1, "{err}");
    assert!(err.contains("UNAVAILABLE"), "{err}");

    // Reads work on a full disk: bob receives what was stored (his acks
    // cannot be stored yet, so it comes again later and is dropped by id).
    let mut seen = Vec::new();
    for m in json_lines(&ponte(&bobby, &["sync", "--json"])) {
        seen.push(m["text"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), queued, "bob got {} of {queued}", seen.len());

    // Space is back.
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child with valid pointers.
    let rc = unsafe {
        libc::prlimit(
            libc::pid_t::try_from(pid).unwrap(),
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let v = json_lines(&ponte(&alice, &["sync", "--json"]));
    assert!(
        v.iter()
            .any(|m| m["text"] == texts[queued] && m["status"] == "sent"),
        "{v:?}"
    );
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(metric(admin, "ponte_server_store_commit_failing"), 0.0);
    for m in json_lines(&ponte(&bobby, &["sync", "--json"])) {
        seen.push(m["text"].as_str().unwrap().to_owned());
    }
    // Every message exactly once, the one that waited in the outbox too.
    seen.sort();
    assert_eq!(seen, texts);
    // And alice learns they were all delivered.
    json_lines(&ponte(&alice, &["sync", "--json"]));
    let history = json_lines(&ponte(&alice, &["history", "bobby", "--json"]));
    assert_eq!(history.len(), texts.len());
    for m in &history {
        assert!(
            m["status"] == "delivered" || m["status"] == "read",
            "{}: {}",
            &m["text"].as_str().unwrap()[..3],
            m["status"]
        );
    }
}

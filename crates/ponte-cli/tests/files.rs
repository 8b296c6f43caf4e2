//! Files with real processes: `ponte server`, then `ponte send --file`,
//! `ponte sync --auto-download`, `ponte file get` on two profiles in temp
//! dirs; the bytes arrive verified, `--json` describes the file, and the
//! server's data directory holds no plaintext.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{command, contains, json_lines, ok, register, wait_output, Server};

const MARKER: &[u8] = b"PONTE-CLI-PLAINTEXT-MARKER-41ab";
/// The large file. 8 MiB, not 50: in a debug build on a loaded 2-core
/// machine `send --file` of 8 MiB took 7.5 s (encrypt and upload), so
/// 50 MiB sent and fetched would take well over a minute.
const LARGE: usize = 8 * 1024 * 1024;

fn ponte(profile: &Path, args: &[&str]) -> Output {
    wait_output(
        command(profile, args).spawn().unwrap(),
        Duration::from_secs(180),
    )
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut at = 0;
    while at + MARKER.len() <= len {
        out[at..at + MARKER.len()].copy_from_slice(MARKER);
        at += 64 * 1024;
    }
    out
}

fn all_files(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, depth + 1, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn send_file_sync_auto_download_and_file_get() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bob");

    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = content(LARGE, 7);
    let big_path = src.join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    let small_path = src.join("note\u{1b}[31m.txt");
    std::fs::write(&small_path, b"a small note").unwrap();

    let started = Instant::now();
    let out = ponte(
        &alice,
        &[
            "send",
            "bob",
            "--file",
            big_path.to_str().unwrap(),
            "the big one",
            "--json",
        ],
    );
    let sent = json_lines(&ok(&out));
    eprintln!("{LARGE}-byte file sent in {:?}", started.elapsed());
    assert_eq!(sent[0]["status"], "sent", "{sent:?}");
    assert_eq!(sent[0]["text"], "the big one");
    assert_eq!(sent[0]["file"]["name"], "big.bin");
    assert_eq!(sent[0]["file"]["size"], LARGE as u64);
    assert_eq!(sent[0]["file"]["sha256"].as_str().unwrap().len(), 64);
    assert!(sent[0]["file"]["path"].is_null());
    // --json: no progress bar on stderr.
    assert!(!common::stderr(&out).contains('\r'));
    let big_id = sent[0]["id"].as_str().unwrap().to_owned();

    let out = ponte(
        &alice,
        &["send", "bob", "--file", small_path.to_str().unwrap()],
    );
    let line = ok(&out);
    // The name is escaped on screen.
    assert!(
        line.contains("note\\u{1b}[31m.txt") || line.contains("note_[31m.txt"),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "{line}");

    // Bob fetches files up to 1 KiB by himself: the note, not the big one.
    let out = ponte(&bob, &["sync", "--json", "--auto-download", "1024"]);
    let lines = json_lines(&ok(&out));
    let big_msg = lines.iter().find(|v| v["id"] == big_id.as_str()).unwrap();
    assert!(big_msg["file"]["path"].is_null(), "{big_msg}");
    let fetched: Vec<_> = lines
        .iter()
        .filter(|v| v["file_fetched"].is_string())
        .collect();
    assert_eq!(fetched.len(), 1, "{lines:?}");
    let note = PathBuf::from(fetched[0]["file_fetched"].as_str().unwrap());
    assert_eq!(std::fs::read(&note).unwrap(), b"a small note");
    assert!(note.starts_with(&bob));

    let target = tmp.path().join("got.bin");
    let out = ponte(
        &bob,
        &[
            "file",
            "get",
            &big_id,
            "--out",
            target.to_str().unwrap(),
            "--json",
        ],
    );
    let got = json_lines(&ok(&out));
    assert_eq!(got[0]["path"], target.to_str().unwrap());
    assert!(std::fs::read(&target).unwrap() == big, "the bytes differ");
    // The history now says where it is.
    let out = ponte(&bob, &["history", "alice", "--json"]);
    let lines = json_lines(&ok(&out));
    let big_msg = lines.iter().find(|v| v["id"] == big_id.as_str()).unwrap();
    assert_eq!(big_msg["file"]["path"], target.to_str().unwrap());

    // Not a message id, or no file under it: clear errors.
    let out = ponte(&bob, &["file", "get", "nope"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("not a message id"));

    let mut files = Vec::new();
    all_files(&data, 0, &mut files);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!contains(&bytes, MARKER), "plaintext in {}", f.display());
    }
    server.kill();
}

/// The largest file under `dir/blobs/partial/`, in bytes.
fn partial_upload_len(data: &Path) -> u64 {
    let mut files = Vec::new();
    all_files(&data.join("blobs").join("partial"), 0, &mut files);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_send_killed_mid_upload_is_finished_by_the_next_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = Server::start(&data);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    register(&alice, &server.address(), "alice");
    register(&bob, &server.address(), "bob");
    let big = content(LARGE, 9);
    let path = tmp.path().join("clip.webm");
    std::fs::write(&path, &big).unwrap();

    let mut child = command(&alice, &["send", "bob", "--file", path.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Kill it once the server holds part of the upload (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut held = 0;
    while Instant::now() < deadline {
        held = partial_upload_len(&data);
        if held >= 1024 * 1024 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(held > 0, "the upload never started");
    eprintln!("killed `send` with {held} bytes of the upload on the server");

    // The encrypted copy survived; sync finishes the upload and sends.
    let out = ponte(&alice, &["sync", "--json"]);
    ok(&out);
    let out = ponte(&alice, &["history", "bob", "--json"]);
    let lines = json_lines(&ok(&out));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["file"]["name"], "clip.webm");
    assert_ne!(lines[0]["status"], "queued", "{lines:?}");
    let leftovers = std::fs::read_dir(alice.join("files")).unwrap().count();
    assert_eq!(leftovers, 0, "the encrypted copy is removed once uploaded");

    let out = ponte(&bob, &["sync", "--json", "--auto-download", "100000000"]);
    let lines = json_lines(&ok(&out));
    let fetched = lines
        .iter()
        .find_map(|v| v["file_fetched"].as_str())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(std::fs::read(fetched).unwrap() == big, "the bytes differ");
    server.kill();
}

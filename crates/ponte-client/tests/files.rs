//! Files end to end against a real `ponte-server` on 127.0.0.1 (in
//! process): sizes at the edges, hostile names, the server's size cap, an
//! upload cut halfway that resumes, auto-download and `fetch_file`, and no
//! plaintext in the server's data directory.
#![allow(clippy::unwrap_used)]

mod common;

use common::{direct, register, start_server, start_server_with, sync_report};
use ponte_client::store::FileState;
use ponte_client::{Client, ClientError, ServerCode, Status};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MARKER: &[u8] = b"PONTE-PLAINTEXT-MARKER-7d1c";

/// `len` pseudo-random bytes with the marker every 64 KiB (where it fits).
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

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Every file under `dir`, recursively (bounded depth).
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

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn assert_no_marker_under(dir: &Path) {
    let mut files = Vec::new();
    all_files(dir, 0, &mut files);
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!contains(&bytes, MARKER), "plaintext in {}", f.display());
    }
}

async fn send_ok(alice: &mut Client, path: &Path, caption: &str) -> ponte_e2e::MessageId {
    let out = alice
        .send_file("bob", path, caption, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    out.message.id
}

fn received(bob: &Client, id: &ponte_e2e::MessageId) -> ponte_client::store::FileRecord {
    bob.store().file_by_id(id).unwrap().unwrap()
}

#[tokio::test]
async fn files_of_every_size_arrive_verified_and_the_server_sees_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let src = tmp.path().join("src");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.bin", Vec::new()),
        ("one.bin", vec![0x42]),
        ("chunk.bin", content(ponte_e2e::file::CHUNK_PLAIN, 1)),
        ("several.bin", content(5 * 1024 * 1024 + 17, 2)),
    ];
    let mut sent = Vec::new();
    for (name, data) in &cases {
        let path = write(&src, name, data);
        let id = send_ok(&mut alice, &path, &format!("caption of {name}")).await;
        sent.push((id, data.clone()));
    }
    // Nothing encrypted is left behind on the sender's side.
    let leftovers: Vec<_> = std::fs::read_dir(alice.files_dir())
        .unwrap()
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (texts, warnings) = sync_report(&mut bob).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(texts.len(), cases.len(), "{texts:?}");
    for ((id, data), (name, _)) in sent.iter().zip(&cases) {
        let rec = received(&bob, id);
        assert_eq!(rec.state, FileState::Fetched, "{name}");
        assert_eq!(rec.descriptor.name, *name);
        assert_eq!(rec.descriptor.size, data.len() as u64);
        assert_eq!(rec.descriptor.caption, format!("caption of {name}"));
        let path = rec.path.unwrap();
        assert!(path.starts_with(bob.files_dir()));
        assert_eq!(std::fs::read(&path).unwrap(), *data, "{name}");
    }
    assert_no_marker_under(&tmp.path().join("server"));
    // No partial downloads or temporary files remain.
    let names: Vec<String> = std::fs::read_dir(bob.files_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".part") && !n.ends_with(".tmp")),
        "{names:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_names_stay_inside_the_files_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let name = "..\\..\\evil\u{1b}[2J\n.txt";
    let path = write(&tmp.path().join("src"), name, b"not a path");
    let id = send_ok(&mut alice, &path, "").await;
    sync_report(&mut bob).await;
    let rec = received(&bob, &id);
    let got = rec.path.unwrap();
    assert_eq!(got.parent().unwrap(), bob.files_dir());
    let stored = got.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!stored.contains(['/', '\\', '\u{1b}', '\n']), "{stored:?}");
    assert_eq!(std::fs::read(&got).unwrap(), b"not a path");
    // Shown escaped.
    let shown = ponte_e2e::file::display_name(&rec.descriptor.name);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\n'),
        "{shown}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_file_over_the_servers_cap_is_refused_and_nothing_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server_with(&tmp.path().join("server"), |c| {
        c.max_blob_size = 1024 * 1024;
    })
    .await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let _bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    let path = write(
        &tmp.path().join("src"),
        "big.bin",
        &content(2 * 1024 * 1024, 3),
    );
    let err = alice
        .send_file("bob", &path, "", &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ServerCode::TooLarge,
                ..
            }
        ),
        "{err}"
    );
    assert!(alice.store().outbox().unwrap().is_empty());
    assert!(alice
        .store()
        .files_in_state(FileState::Upload)
        .unwrap()
        .is_empty());
    assert_eq!(std::fs::read_dir(alice.files_dir()).unwrap().count(), 0);
    let h = alice.history("bob").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].status, Status::Failed);
    let mut on_server = Vec::new();
    all_files(&tmp.path().join("server").join("blobs"), 0, &mut on_server);
    assert!(on_server.is_empty(), "{on_server:?}");
    server.stop().await;
}

/// Bytes a [`cutting_forwarder`] carried, per direction, and its connections.
#[derive(Default)]
struct Carried {
    up: AtomicU64,
    down: AtomicU64,
    conns: AtomicU64,
}

/// Copies until either side ends or the connection carried `limit` bytes
/// (`this`, both directions), counting into `total`.
async fn copy(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    total: &AtomicU64,
    this: &AtomicU64,
    limit: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
        if this.fetch_add(n as u64, Ordering::Relaxed) + n as u64 >= limit {
            break;
        }
    }
}

/// A forwarder on 127.0.0.1:0 to `target` that counts what it carries and
/// cuts the first connection once `cut_after` bytes (both directions
/// together) went through it.
async fn cutting_forwarder(
    target: SocketAddr,
    cut_after: u64,
    carried: Arc<Carried>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let first = carried.conns.fetch_add(1, Ordering::Relaxed) == 0;
            let limit = if first { cut_after } else { u64::MAX };
            let carried = carried.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = inbound.into_split();
                let (mut sr, mut sw) = outbound.into_split();
                let this = AtomicU64::new(0);
                // Either direction ending ends the connection.
                tokio::select! {
                    _ = copy(&mut cr, &mut sw, &carried.up, &this, limit) => {}
                    _ = copy(&mut sr, &mut cw, &carried.down, &this, limit) => {}
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upload_cut_halfway_resumes_and_a_large_file_waits_for_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start_server(&tmp.path().join("server")).await;
    let mut alice = register(&tmp.path().join("alice"), &server.address, "alice").await;
    let mut bob = register(&tmp.path().join("bob"), &server.address, "bob").await;
    // A first message sets up the session, so the cut connection carries
    // the upload only.
    alice.send("bob", "hello").await.unwrap();

    let size = 6 * 1024 * 1024;
    let data = content(size, 4);
    let carried = Arc::new(Carried::default());
    let via = cutting_forwarder(server.addr, size as u64 / 2, carried.clone()).await;
    alice.set_routes(direct(via));
    let path = write(&tmp.path().join("src"), "video.mp4", &data);
    let mut seen = Vec::new();
    let out = alice
        .send_file("bob", &path, "look", &mut |done, total| {
            seen.push((done, total))
        })
        .await
        .unwrap();
    assert_eq!(out.message.status, Status::Sent, "{:?}", out.note);
    // Starting over after a cut halfway would send the file again from
    // byte 0; resuming sends again at most what was in flight and not yet
    // written by the server: one window of 96 KiB appends (how much of it
    // depends on how far the server's writes lag, so the bound is the
    // whole window, plus the framing).
    let total = carried.up.load(Ordering::Relaxed);
    let conns = carried.conns.load(Ordering::Relaxed);
    eprintln!("{size}-byte file: {total} bytes sent over {conns} connections");
    assert!(conns >= 2, "the cut happened");
    // Offsets went backwards once at most (the resume), to where the
    // server was, never to zero.
    let resumed_at = seen.windows(2).find(|w| w[1].0 < w[0].0).map(|w| w[1].0);
    assert!(resumed_at.is_none_or(|o| o > 0), "{seen:?}");
    let window = (ponte_client::client::UPLOAD_WINDOW * 96 * 1024) as u64;
    assert!(
        total < size as u64 + window + size as u64 / 16,
        "{total} bytes sent for a {size}-byte file"
    );
    assert!(total > size as u64);
    assert_eq!(seen.last().unwrap().0, seen.last().unwrap().1);

    // Bob fetches automatically only up to 1 MiB: this one waits.
    bob.set_auto_download(1024 * 1024);
    sync_report(&mut bob).await;
    let rec = received(&bob, &out.message.id);
    assert_eq!(rec.state, FileState::Pending);
    assert_eq!(rec.descriptor.mime, "video/mp4");
    // The download is cut halfway too, and resumes.
    let carried = Arc::new(Carried::default());
    let via = cutting_forwarder(server.addr, size as u64 / 2, carried.clone()).await;
    bob.set_routes(direct(via));
    let target = tmp.path().join("saved.mp4");
    let got = bob
        .fetch_file(&out.message.id, Some(&target), &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(got, target);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(received(&bob, &out.message.id).state, FileState::Fetched);
    let total = carried.down.load(Ordering::Relaxed);
    let conns = carried.conns.load(Ordering::Relaxed);
    eprintln!("{size}-byte file: {total} bytes received over {conns} connections");
    assert!(conns >= 2, "the cut happened");
    assert!(
        total < size as u64 * 5 / 4,
        "{total} bytes received for a {size}-byte file"
    );
    assert_no_marker_under(&tmp.path().join("server"));
    server.stop().await;
}

//! The Ponte client's stealth opening has the JA4 fingerprint of the
//! browser it imitates: Debian's headless Chromium and a real `ponte`
//! client each connect to a loopback listener that captures their first
//! TLS record; JA4 is computed from both captures
//! (`ponte_wire::stealth::ja4`) and must be equal. Beyond JA4, every field
//! that does not change per connection must match too (cipher order,
//! extension set and fixed contents, groups, key share sizes, signature
//! algorithms, versions, ALPN), GREASE values aside. When they differ, the
//! template (`ponte_wire::stealth::template::CHROME`) is what to update.
//!
//! Skipped, with a message, when `/usr/bin/chromium` is not installed.
#![allow(clippy::unwrap_used)]

use ponte_wire::stealth::hello::{self, ext, is_grease, ClientHello};
use ponte_wire::stealth::ja4::{ja4, ja4_r};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{command, Killed, Server};

const CHROMIUM: &str = "/usr/bin/chromium";
const HOST: &str = "cover.test";
/// How long a client may take to connect and send its first record.
const CAPTURE_WAIT: Duration = Duration::from_secs(60);

/// Accepts the first connection on `l` and returns its first TLS record
/// (header included), read within `limit`.
fn capture_first_record(l: &TcpListener, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    l.set_nonblocking(true).unwrap();
    // Bounded: one round per 20 ms until the deadline.
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection within {limit:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
        .unwrap();
    let mut rec = vec![0u8; 5];
    s.read_exact(&mut rec).unwrap();
    let len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
    assert!(
        rec[0] == 0x16 && len <= hello::MAX_HELLO_RECORD,
        "not a handshake record: {rec:02x?}"
    );
    rec.resize(5 + len, 0);
    s.read_exact(&mut rec[5..]).unwrap();
    rec
}

/// Headless Chromium's first record to `https://cover.test:PORT/`, the name
/// mapped to 127.0.0.1.
fn chromium_hello(profile: &Path) -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _chromium = Killed(
        Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--host-resolver-rules=MAP {HOST} 127.0.0.1"))
            .arg(format!("https://{HOST}:{port}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    capture_first_record(&l, CAPTURE_WAIT)
}

/// A real `ponte` client's first record through a stealth link to the
/// capturing listener (the direct route goes to a closed port).
fn ponte_hello(tmp: &Path, server: &Server) -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let direct = server.address_at(closed.local_addr().unwrap().port());
    drop(closed);
    let link = format!(
        "ponte://relay?host=127.0.0.1&port={port}&tls=1&secret=AAAAAAAAAAAAAAAAAAAAAA&sni={HOST}"
    );
    let profile = tmp.join("client");
    let _client = Killed(
        command(
            &profile,
            &["register", "--server", &direct, "alice", "--via", &link],
        )
        .spawn()
        .unwrap(),
    );
    capture_first_record(&l, CAPTURE_WAIT)
}

/// A GREASE value written as one placeholder, so lists compare.
fn norm(v: u16) -> u16 {
    if is_grease(v) {
        0x0a0a
    } else {
        v
    }
}

fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| norm(u16::from_be_bytes([c[0], c[1]])))
        .collect()
}

/// What must be the same in every hello of one client: GREASE values and
/// the per-connection random parts (key shares' bytes, ECH's payload, the
/// extension order) left out.
#[derive(Debug, PartialEq)]
struct Shape {
    record_version: u16,
    legacy_version: u16,
    session_id_len: usize,
    cipher_suites: Vec<u16>,
    compression: Vec<u8>,
    /// Non-GREASE extensions, sorted, with their data when it is fixed.
    extensions: BTreeMap<u16, Vec<u8>>,
    grease_extensions: Vec<usize>,
    groups: Vec<u16>,
    key_shares: Vec<(u16, usize)>,
    versions: Vec<u16>,
    alpn: Vec<Vec<u8>>,
}

fn shape(h: &ClientHello<'_>) -> Shape {
    let mut extensions = BTreeMap::new();
    let mut grease_extensions = Vec::new();
    for (kind, data) in h.extensions() {
        if is_grease(kind) {
            grease_extensions.push(data.len());
            continue;
        }
        let fixed = match kind {
            // Random per connection; their sizes are checked apart.
            ext::KEY_SHARE | ext::ENCRYPTED_CLIENT_HELLO => Vec::new(),
            ext::SUPPORTED_GROUPS | ext::SIGNATURE_ALGORITHMS => {
                let mut out = data[..2].to_vec();
                for v in u16s(&data[2..]) {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out
            }
            ext::SUPPORTED_VERSIONS => {
                let mut out = data[..1].to_vec();
                for v in u16s(&data[1..]) {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out
            }
            _ => data.to_vec(),
        };
        extensions.insert(kind, fixed);
    }
    Shape {
        record_version: h.record_version,
        legacy_version: h.legacy_version,
        session_id_len: h.session_id.len(),
        cipher_suites: h.cipher_suites().map(norm).collect(),
        compression: h.compression().to_vec(),
        extensions,
        grease_extensions,
        groups: h.groups().map(norm).collect(),
        key_shares: h.key_shares().map(|(g, k)| (norm(g), k.len())).collect(),
        versions: h.versions().map(norm).collect(),
        alpn: h.alpn().map(<[u8]>::to_vec).collect(),
    }
}

/// The length of the GREASE ECH extension's payload.
fn ech_payload_len(h: &ClientHello<'_>) -> Option<usize> {
    let (_, data) = h
        .extensions()
        .find(|(k, _)| *k == ext::ENCRYPTED_CLIENT_HELLO)?;
    // outer type, KDF, AEAD, config id, enc <2 + 32>, payload <2 + n>
    data.len().checked_sub(1 + 2 + 2 + 1 + 2 + 32 + 2)
}

#[test]
fn ponte_client_hello_has_chromiums_ja4() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "skipped: {CHROMIUM} is not installed (apt-get install chromium); \
             the JA4 comparison needs a real browser"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));

    let browser_rec = chromium_hello(&tmp.path().join("chromium"));
    let ponte_rec = ponte_hello(tmp.path(), &server);
    let browser = hello::parse(&browser_rec).unwrap();
    let ponte = hello::parse(&ponte_rec).unwrap();

    assert_eq!(browser.server_name, Some(HOST));
    assert_eq!(ponte.server_name, Some(HOST));
    eprintln!("chromium: {}\n          {}", ja4(&browser), ja4_r(&browser));
    eprintln!("ponte:    {}\n          {}", ja4(&ponte), ja4_r(&ponte));
    assert_eq!(
        ja4_r(&ponte),
        ja4_r(&browser),
        "the Ponte client's raw JA4 differs from Chromium's: update template::CHROME"
    );
    assert_eq!(ja4(&ponte), ja4(&browser));
    assert_eq!(
        shape(&ponte),
        shape(&browser),
        "a field JA4 does not cover differs from Chromium's"
    );
    let ech = ech_payload_len(&ponte).unwrap();
    assert!(
        [144, 176, 208, 240].contains(&ech),
        "ECH GREASE payload {ech}"
    );
    let chromium_ech = ech_payload_len(&browser).unwrap();
    assert!(
        [144, 176, 208, 240].contains(&chromium_ech),
        "Chromium's ECH GREASE payload {chromium_ech} is not in the template's list"
    );
}

//! The stealth listener over real loopback sockets: a genuine client gets
//! through to the upstream, every probe sees what the cover site shows.
#![allow(clippy::unwrap_used)]

mod common;

use common::cover::*;
use common::*;
use ponte_proxy::stealth::secrets::{now_unix, SecretEntry, SecretsFile};
use ponte_proxy::stealth::stream::RecordStream;
use ponte_proxy::stealth::StealthConfig;
use ponte_proxy::Config;
use ponte_wire::stealth::record::CHANGE_CIPHER_SPEC;
use ponte_wire::stealth::{reply, tag, template, Secret};
use rand::RngCore as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the relay waits for a first flight.
const RELAY_HANDSHAKE: &str = "500ms";

fn write_secrets(path: &Path, entries: &[(&str, &Secret)]) {
    let file = SecretsFile {
        secret: entries
            .iter()
            .map(|(label, s)| SecretEntry {
                label: (*label).to_owned(),
                secret: s.to_text(),
                created: now_unix(),
                expires: None,
                max_connections: None,
            })
            .collect(),
    };
    file.save(path).unwrap();
}

fn secret(n: u8) -> Secret {
    Secret::from_bytes([n; 16])
}

struct Setup {
    relay: Running,
    cover: Cover,
    up: FakeUpstream,
    dir: tempfile::TempDir,
}

impl Setup {
    fn relay(&self) -> SocketAddr {
        self.relay.addr("stealth")
    }
    fn secrets(&self) -> std::path::PathBuf {
        self.dir.path().join("secrets.toml")
    }
}

async fn setup() -> Setup {
    setup_with(Cover::start().await, RELAY_HANDSHAKE).await
}

async fn setup_with(cover: Cover, handshake: &str) -> Setup {
    setup_full(cover, handshake, false).await
}

async fn setup_full(cover: Cover, handshake: &str, accept_proxy: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let secrets = dir.path().join("secrets.toml");
    write_secrets(&secrets, &[("friends", &secret(1)), ("family", &secret(2))]);
    let mut cfg =
        Config::stealth_preset(up.host_port(), cover.host_port(), DOMAIN, Some(secrets)).unwrap();
    cfg.timeouts.handshake = handshake.parse().unwrap();
    cfg.listener[0].accept_proxy = accept_proxy;
    loopback(&mut cfg);
    let relay = start(cfg).await;
    Setup {
        relay,
        cover,
        up,
        dir,
    }
}

fn fill(b: &mut [u8]) {
    rand::thread_rng().fill_bytes(b);
}

/// A genuine client's first flight.
fn first_flight(s: &Secret, time: u64) -> Vec<u8> {
    let mut rec = template::build(&template::CHROME, DOMAIN, &mut fill).unwrap();
    tag::seal(&mut rec, s, time).unwrap();
    rec
}

/// Sends `hello` and checks the relay's reply: the record stream, or `None`
/// when the answer does not prove the secret (the cover answered).
async fn try_genuine(
    addr: SocketAddr,
    s: &Secret,
    hello: &[u8],
) -> Option<RecordStream<TcpStream>> {
    try_genuine_after(addr, &[], s, hello).await
}

/// [`try_genuine`] after `prefix` (a load balancer's PROXY header).
async fn try_genuine_after(
    addr: SocketAddr,
    prefix: &[u8],
    s: &Secret,
    hello: &[u8],
) -> Option<RecordStream<TcpStream>> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    let mut first = prefix.to_vec();
    first.extend_from_slice(hello);
    c.write_all(&first).await.ok()?;
    let sid: [u8; 32] = hello[44..76].try_into().ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let n = loop {
        if let Some(n) = reply::flight_len(&buf).ok()? {
            break n;
        }
        let got = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    };
    reply::verify(&buf[..n], &sid, s).ok()?;
    c.write_all(&CHANGE_CIPHER_SPEC).await.ok()?;
    Some(RecordStream::new(c, buf.split_off(n)))
}

async fn genuine(addr: SocketAddr, s: &Secret, hello: &[u8]) -> RecordStream<TcpStream> {
    try_genuine(addr, s, hello)
        .await
        .expect("the relay answers a genuine hello with a tagged flight")
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

#[tokio::test]
async fn genuine_client_reaches_the_upstream() {
    let s = setup().await;
    let mut c = genuine(s.relay(), &secret(2), &first_flight(&secret(2), now_unix())).await;
    echo(&mut c, b"hello through the stealth relay").await;
    // The preset's PROXY v1 header carries the client's address; nothing of
    // the TLS layer reaches the upstream (the echo is exact).
    let client = c.get_ref().local_addr().unwrap();
    match &s.up.seen()[..] {
        [Seen::Header(h)] => assert_eq!(h.tcp_source(), Some(client)),
        other => panic!("expected one PROXY header, got {other:?}"),
    }
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    echo(&mut c, &big).await;
    assert_eq!(
        s.relay.metric(
            "ponte_proxy_stealth_link_connections_total{listener=\"stealth\",label=\"family\"}"
        ),
        Some(1.0)
    );
    let (code, page) = s.relay.admin_get("/").await;
    assert_eq!(code, 200);
    assert!(page.contains("family") && page.contains("friends"));
    assert!(!page.contains(&secret(2).to_text()));
}

/// How a connection ended, and what came back before.
#[derive(Debug, PartialEq)]
enum Close {
    Fin,
    Reset,
    StillOpen,
}

#[derive(Debug)]
struct Answer {
    bytes: Vec<u8>,
    close: Close,
    after: Duration,
}

/// Sends `probe` (then stays silent) and collects the answer for up to 3 s.
async fn probe(addr: SocketAddr, probe: &[u8]) -> Answer {
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    if !probe.is_empty() {
        c.write_all(probe).await.unwrap();
    }
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    let close = loop {
        match tokio::time::timeout_at(end, c.read(&mut chunk)).await {
            Err(_) => break Close::StillOpen,
            Ok(Ok(0)) => break Close::Fin,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break Close::Reset,
        }
    };
    Answer {
        bytes,
        close,
        after: start.elapsed(),
    }
}

/// TLS answers differ in their random values: compare their record types
/// and lengths. Anything else byte for byte.
fn shape(b: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= b.len() {
        let len = usize::from(u16::from_be_bytes([b[at + 3], b[at + 4]]));
        out.push((b[at], len));
        at += 5 + len;
    }
    out
}

fn assert_same(name: &str, relay: &Answer, cover: &Answer) {
    assert_eq!(relay.close, cover.close, "{name}: close kind");
    if cover.bytes.first() == Some(&0x16) {
        let (r, c) = (shape(&relay.bytes), shape(&cover.bytes));
        assert_eq!(r.len(), c.len(), "{name}: TLS records {r:?} / {c:?}");
        for (a, b) in r.iter().zip(&c) {
            // An ECDSA signature's DER length varies by a few bytes between
            // two handshakes of the same server.
            assert!(
                a.0 == b.0 && a.1.abs_diff(b.1) <= 4,
                "{name}: TLS records {r:?} / {c:?}"
            );
        }
    } else {
        assert_eq!(relay.bytes, cover.bytes, "{name}: bytes");
    }
    let diff = relay.after.abs_diff(cover.after);
    assert!(
        diff < Duration::from_millis(400),
        "{name}: closed after {:?} via the relay, {:?} direct",
        relay.after,
        cover.after
    );
}

#[tokio::test]
async fn every_probe_sees_the_cover() {
    let s = setup().await;
    let genuine_hello = first_flight(&secret(1), now_unix());
    let mut live = genuine(s.relay(), &secret(1), &genuine_hello).await;
    echo(&mut live, b"genuine first").await;

    let mut flipped = first_flight(&secret(1), now_unix());
    flipped[20] ^= 0x01; // inside the client random
    let untagged = template::build(&template::CHROME, DOMAIN, &mut fill).unwrap();
    let mut random = vec![0u8; 3000];
    fill(&mut random);
    let probes: Vec<(&str, Vec<u8>)> = vec![
        ("silent connect", Vec::new()),
        ("one random byte", random[..1].to_vec()),
        ("random bytes", random[..100].to_vec()),
        ("many random bytes", random.clone()),
        (
            "HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: www.cover.example\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("half a TLS header", vec![0x16, 0x03]),
        ("ClientHello without a tag", untagged),
        ("replayed first flight", genuine_hello.clone()),
        ("one byte flipped", flipped),
        (
            "clock 10 min behind",
            first_flight(&secret(1), now_unix() - 600),
        ),
        ("unknown secret", first_flight(&secret(9), now_unix())),
    ];
    for (name, bytes) in &probes {
        let (via, direct) = tokio::join!(probe(s.relay(), bytes), probe(s.cover.addr, bytes));
        assert_same(name, &via, &direct);
    }
    echo(&mut live, b"the genuine connection is untouched").await;
    assert!(
        s.relay
            .metric("ponte_proxy_stealth_replays_total{listener=\"stealth\"}")
            .unwrap()
            >= 1.0
    );
}

/// A cover that gives up on silent clients sooner than the relay's
/// first-flight deadline: a silent probe and one that sent half a header
/// are closed when the cover closes, not at the relay's deadline.
#[tokio::test]
async fn probes_close_when_a_quick_cover_closes() {
    let s = setup_with(Cover::start_with(Duration::from_millis(300)).await, "3s").await;
    for (name, bytes) in [
        ("silent", Vec::new()),
        ("half a header", vec![0x16, 0x03, 0x01]),
    ] {
        let (via, direct) = tokio::join!(probe(s.relay(), &bytes), probe(s.cover.addr, &bytes));
        assert_same(name, &via, &direct);
        assert!(
            via.after < Duration::from_secs(1),
            "{name}: {:?}",
            via.after
        );
    }
}

/// A genuine first flight replayed to the relay after it restarted (its
/// replay cache empty) goes to the cover: tags older than the start are
/// refused.
#[tokio::test]
async fn first_flight_replayed_after_a_restart_sees_the_cover() {
    let first = setup().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hello = first_flight(&secret(1), now_unix());
    let mut c = genuine(first.relay(), &secret(1), &hello).await;
    echo(&mut c, b"recorded").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let restarted = setup().await;
    let (via, direct) = tokio::join!(
        probe(restarted.relay(), &hello),
        probe(restarted.cover.addr, &hello)
    );
    assert_same("replayed after a restart", &via, &direct);
    let fresh = first_flight(&secret(1), now_unix());
    let mut c = genuine(restarted.relay(), &secret(1), &fresh).await;
    echo(&mut c, b"a fresh flight still works").await;
}

/// Behind a load balancer (`accept_proxy`): the PROXY header is read
/// first; a genuine client's address from it reaches the upstream, and a
/// probe's bytes after it reach the cover as if the probe had connected
/// there directly (the header itself never does).
#[tokio::test]
async fn stealth_listener_behind_a_load_balancer() {
    let s = setup_full(Cover::start().await, RELAY_HANDSHAKE, true).await;
    let source: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut header = Vec::new();
    ponte_wire::proxy_header::encode_v2(source, "203.0.113.1:443".parse().unwrap(), &mut header);
    let hello = first_flight(&secret(1), now_unix());
    let mut c = try_genuine_after(s.relay(), &header, &secret(1), &hello)
        .await
        .expect("a genuine client behind the load balancer gets in");
    echo(&mut c, b"through the load balancer").await;
    match &s.up.seen()[..] {
        [Seen::Header(h)] => assert_eq!(h.tcp_source(), Some(source)),
        other => panic!("expected one PROXY header, got {other:?}"),
    }
    let request = b"GET / HTTP/1.1\r\nHost: www.cover.example\r\n\r\n".to_vec();
    let untagged = template::build(&template::CHROME, DOMAIN, &mut fill).unwrap();
    for (name, after) in [
        ("HTTP/1.1", request),
        ("silent", Vec::new()),
        ("ClientHello without a tag", untagged),
    ] {
        let mut sent = header.clone();
        sent.extend_from_slice(&after);
        let (via, direct) = tokio::join!(probe(s.relay(), &sent), probe(s.cover.addr, &after));
        assert_same(name, &via, &direct);
    }
    // No header: the connection ends (the load balancer always sends one).
    let no_header = probe(s.relay(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(no_header.bytes.is_empty(), "{no_header:?}");
}

#[tokio::test]
async fn https_session_through_the_relay_gets_the_cover_page() {
    let s = setup().await;
    let mut t = tls_connect(s.relay(), DOMAIN).await;
    t.write_all(b"GET / HTTP/1.1\r\nHost: www.cover.example\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_string(&mut page)).await;
    assert!(page.contains("<html>cover page</html>"), "{page}");
}

#[tokio::test]
async fn revoked_secret_goes_to_the_cover_and_other_links_stay_up() {
    let s = setup().await;
    let mut a = genuine(s.relay(), &secret(1), &first_flight(&secret(1), now_unix())).await;
    let mut b = genuine(s.relay(), &secret(2), &first_flight(&secret(2), now_unix())).await;
    echo(&mut a, b"a").await;
    echo(&mut b, b"b").await;
    write_secrets(&s.secrets(), &[("friends", &secret(1))]);
    s.relay.reload.reload();
    // The revoked link's connection ends; the other one goes on.
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(5), b.read(&mut buf)).await;
    assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "{ended:?}");
    echo(&mut a, b"still here").await;
    let hello = first_flight(&secret(2), now_unix());
    let (via, direct) = tokio::join!(probe(s.relay(), &hello), probe(s.cover.addr, &hello));
    assert_same("revoked secret", &via, &direct);
    // A new link is picked up by the timer, without SIGHUP.
    write_secrets(
        &s.secrets(),
        &[("friends", &secret(1)), ("new", &secret(3))],
    );
    let mut got_in = false;
    for _ in 0..60 {
        let hello = first_flight(&secret(3), now_unix());
        if let Some(mut g) = try_genuine(s.relay(), &secret(3), &hello).await {
            echo(&mut g, b"new link").await;
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got_in, "a new secret works within 5 s without SIGHUP");
}

#[tokio::test]
async fn stealth_config_is_checked() {
    let base = "[upstream.u]\nservers = [\"127.0.0.1:9\"]\n[[listener]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"u\"\n";
    let ok = format!(
        "{base}[listener.stealth]\ncover = \"127.0.0.1:8443\"\ndomain = \"www.example.com\"\n"
    );
    let cfg = Config::from_toml(&ok, None).unwrap();
    assert_eq!(
        cfg.listener[0].stealth,
        Some(StealthConfig {
            cover: "127.0.0.1:8443".parse().unwrap(),
            domain: "www.example.com".into(),
            secrets: None,
            site: None,
        })
    );
    assert_eq!(Config::from_toml(&cfg.to_toml(), None).unwrap(), cfg);
    // The preset: one stealth listener on 443 (both families), the admin
    // endpoint on loopback, nothing else.
    let preset = Config::stealth_preset(
        "127.0.0.1:5222".parse().unwrap(),
        "127.0.0.1:8443"
            .parse::<ponte_proxy::config::HostPort>()
            .unwrap(),
        "www.example.com",
        None,
    )
    .unwrap();
    assert_eq!(preset.listener.len(), 1);
    let ports: Vec<u16> = preset.listener[0]
        .listen
        .get_ref()
        .iter()
        .map(|a| a.0.port())
        .collect();
    assert_eq!(ports, [443, 443]);
    assert!(preset.listener[0].stealth.is_some());
    assert!(preset.admin.unwrap().listen.get_ref().0.ip().is_loopback());
    assert!(Config::preset(ponte_proxy::Preset::Stealth, None).is_err());
    let with_tls = format!("{base}tls = \"self-signed\"\n[listener.stealth]\ncover = \"127.0.0.1:8443\"\ndomain = \"www.example.com\"\n");
    let e = Config::from_toml(&with_tls, None).unwrap_err();
    assert!(e.message.contains("takes no tls"), "{e}");
    let ip_domain =
        format!("{base}[listener.stealth]\ncover = \"127.0.0.1:8443\"\ndomain = \"10.0.0.1\"\n");
    assert!(Config::from_toml(&ip_domain, None).is_err());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, &ok).unwrap();
    let loaded = Config::load(&file).unwrap();
    assert_eq!(
        loaded.listener[0]
            .stealth
            .as_ref()
            .unwrap()
            .secrets
            .as_deref(),
        Some(dir.path().join("secrets.toml").as_path())
    );
}

#[test]
fn secrets_file_is_private_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secrets.toml");
    write_secrets(&p, &[("a", &secret(1))]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let f = SecretsFile::load(&p).unwrap();
    assert_eq!(f.secret.len(), 1);
    assert_eq!(f.secret[0].label, "a");
    assert!(!format!("{:?}", f.secret[0]).contains(&secret(1).to_text()));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    std::fs::write(
        &p,
        "[[secret]]\nlabel = \"a\"\nsecret = \"short\"\ncreated = 1\n",
    )
    .unwrap();
    assert!(SecretsFile::load(&p).is_err());
}

//! ACME against Debian's Pebble, for real: a stealth listener with the
//! builtin cover site and a `tls = "acme"` listener get their certificate
//! from Pebble at start. Pebble validates TLS-ALPN-01 through the stealth
//! port itself (its DNS is `pebble-challtestsrv`, which answers 127.0.0.1
//! for every name), so the validation crosses the stealth listener to the
//! builtin site like any probe. A restart serves the stored certificate at
//! once; with `renew_before` longer than the certificate's life it is
//! renewed, and connections opened before the renewal (an HTTPS keep-alive
//! to the cover, a genuine stealth client) go on. Skipped, with a message,
//! when `/usr/bin/pebble` is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_proxy::stealth::secrets::{now_unix, SecretEntry, SecretsFile};
use ponte_proxy::stealth::stream::RecordStream;
use ponte_proxy::Config;
use ponte_wire::stealth::record::CHANGE_CIPHER_SPEC;
use ponte_wire::stealth::{reply, tag, template, Secret};
use rand::RngCore as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";
const DOMAIN: &str = "cover.ponte-relay.org";
const INDEX: &str = "<!doctype html><title>cover</title><p>the builtin cover</p>\n";
/// How long issuance may take.
const ISSUE_WAIT: Duration = Duration::from_secs(90);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a certificate for Pebble's own HTTPS (Debian ships none).
fn pebble_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ponte test ACME server CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("pebble-ca.pem"),
        dir.join("pebble-cert.pem"),
        dir.join("pebble-key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

/// Pebble and its fake DNS, validating TLS-ALPN-01 on `tls_port`.
struct Pebble {
    _dns: Killed,
    _pebble: Killed,
}

fn start_pebble(dir: &Path, acme_port: u16, tls_port: u16) -> Pebble {
    let (_, cert, key) = pebble_tls(dir);
    let (dns_port, mgmt, dns_mgmt) = (free_port(), free_port(), free_port());
    let dns = Killed(
        Command::new(CHALLTESTSRV)
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = dir.join("pebble.json");
    let json = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let pebble = Killed(
        Command::new(PEBBLE)
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    Pebble {
        _dns: dns,
        _pebble: pebble,
    }
}

fn relay_config(dir: &Path, acme_port: u16, up: &FakeUpstream, renew_before: &str) -> Config {
    let text = format!(
        "[acme]\ndirectory = \"https://127.0.0.1:{acme_port}/dir\"\ndomains = [\"{DOMAIN}\"]\n\
         directory_ca = \"pebble-ca.pem\"\nstate = \"acme\"\ncheck_interval = \"1s\"\n\
         renew_before = \"{renew_before}\"\n\n[timeouts]\ndrain = \"1s\"\n\n\
         [upstream.server]\nservers = [\"{}\"]\nsend_proxy = \"v1\"\nhealth_check_interval = \"0s\"\n\n\
         [[listener]]\nname = \"stealth\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"server\"\n\
         [listener.stealth]\ncover = \"builtin\"\ndomain = \"{DOMAIN}\"\nsite = \"site\"\n\n\
         [[listener]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"acme\"\nupstream = \"server\"\n",
        up.addr
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// A TLS connection to `addr` with SNI [`DOMAIN`], any certificate taken.
async fn tls(addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let cfg = any_cert_config(alpn);
    let c = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(DOMAIN.to_owned()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, c),
    )
    .await
    .unwrap()
    .unwrap()
}

/// The leaf certificate `addr` serves, and its issuer's common name.
async fn served(addr: SocketAddr) -> (Vec<u8>, String) {
    let t = tls(addr, &[b"http/1.1"]).await;
    let leaf = t.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned();
    (leaf, issuer)
}

/// Waits (bounded) until `addr` serves a certificate from Pebble other
/// than `not`.
async fn wait_for_pebble_cert(addr: SocketAddr, not: Option<&[u8]>) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + ISSUE_WAIT;
    loop {
        let (leaf, issuer) = served(addr).await;
        if issuer.starts_with("Pebble") && Some(&leaf[..]) != not {
            return leaf;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new certificate from Pebble within {ISSUE_WAIT:?} (issuer now: {issuer})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One HTTP/1.1 request on a kept-alive connection; the body.
async fn get(t: &mut TlsStream<TcpStream>) -> String {
    t.write_all(format!("GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: the answer is small; it ends with the page.
    for _ in 0..64 {
        let n = tokio::time::timeout(Duration::from_secs(10), t.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&chunk[..n]);
        if got.ends_with(INDEX.as_bytes()) {
            break;
        }
    }
    String::from_utf8(got).unwrap()
}

/// Sends `msg` and reads it back (the upstream echoes).
async fn echo(s: &mut RecordStream<TcpStream>, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

/// A genuine stealth client's stream.
async fn genuine(addr: SocketAddr, s: &Secret) -> RecordStream<TcpStream> {
    let mut fill = |b: &mut [u8]| rand::thread_rng().fill_bytes(b);
    let mut hello = template::build(&template::CHROME, DOMAIN, &mut fill).unwrap();
    tag::seal(&mut hello, s, now_unix()).unwrap();
    let sid: [u8; 32] = hello[44..76].try_into().unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&hello).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let n = loop {
        if let Some(n) = reply::flight_len(&buf).unwrap() {
            break n;
        }
        let got = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(got > 0);
        buf.extend_from_slice(&chunk[..got]);
    };
    reply::verify(&buf[..n], &sid, s).unwrap();
    c.write_all(&CHANGE_CIPHER_SPEC).await.unwrap();
    RecordStream::new(c, buf.split_off(n))
}

#[tokio::test]
async fn builtin_cover_gets_and_renews_its_certificate_from_pebble() {
    if !Path::new(PEBBLE).exists() || !Path::new(CHALLTESTSRV).exists() {
        eprintln!("skipped: {PEBBLE} is not installed (apt-get install pebble)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), INDEX).unwrap();
    let secret = Secret::from_bytes([5; 16]);
    SecretsFile {
        secret: vec![SecretEntry {
            label: "friends".into(),
            secret: secret.to_text(),
            created: now_unix(),
            expires: None,
            max_connections: None,
        }],
    }
    .save(&dir.join("secrets.toml"))
    .unwrap();
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let acme_port = free_port();

    // First start: a stand-in certificate until Pebble, started once the
    // relay's port is known, has validated the name through it.
    let mut cfg = relay_config(dir, acme_port, &up, "1d");
    // Loopback ports (0) but the admin endpoint off.
    cfg.admin = None;
    let mut relay = start(cfg).await;
    let (stealth, tls_port) = (relay.addr("stealth"), relay.addr("tls"));
    let _pebble = start_pebble(dir, acme_port, stealth.port());
    let first = wait_for_pebble_cert(stealth, None).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&first).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, [format!("DNSName({DOMAIN})")]);
    eprintln!(
        "issued by Pebble, valid {} to {}",
        cert.validity().not_before,
        cert.validity().not_after
    );
    // The page comes from the site folder, over the ACME certificate.
    let mut t = tls(stealth, &[b"h2", b"http/1.1"]).await;
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let page = get(&mut t).await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.ends_with(INDEX), "{page}");
    drop(t);
    // The relay's own TLS listener serves the same certificate.
    assert_eq!(served(tls_port).await.0, first);
    for f in ["cert.pem", "key.pem", "account.json"] {
        assert!(dir.join("acme").join(f).exists(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in ["key.pem", "account.json"] {
            let mode = std::fs::metadata(dir.join("acme").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    relay.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut relay.task).await;

    // Restart with renew_before longer than the certificate's life: the
    // stored certificate is served at once, then renewed; what was open
    // before the renewal stays open.
    let mut cfg = relay_config(dir, acme_port, &up, "100000d");
    cfg.admin = None;
    // The same ports: Pebble validates on the stealth port it was given.
    *cfg.listener[0].listen.get_mut() = vec![ponte_proxy::config::ListenAddr(stealth)];
    let relay = start(cfg).await;
    let mut kept = tls(stealth, &[b"http/1.1"]).await;
    let at_start = kept.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(at_start, first, "the stored certificate is served at start");
    assert!(get(&mut kept).await.ends_with(INDEX));
    let mut client = genuine(relay.addr("stealth"), &secret).await;
    echo(&mut client, b"before the renewal").await;
    let renewed = wait_for_pebble_cert(stealth, Some(&first)).await;
    assert_ne!(renewed, first);
    // Both connections opened before the renewal go on.
    assert!(get(&mut kept).await.ends_with(INDEX));
    echo(&mut client, b"after the renewal").await;
}

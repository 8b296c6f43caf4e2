//! Real tools against a stealth listener and, side by side, against its
//! cover site directly: `openssl s_client` and `curl -k` see the same
//! certificate chain, negotiated version, cipher and ALPN, and the same page
//! bytes; `nmap -sV` names the same server on both ports (the cover's, not a
//! proxy). Each test is skipped, with a message, when its tool is missing.
#![allow(clippy::unwrap_used)]

mod common;

use common::cover::*;
use common::*;
use ponte_proxy::stealth::secrets::{now_unix, SecretEntry, SecretsFile};
use ponte_proxy::Config;
use ponte_wire::stealth::Secret;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// How long one tool run may take.
const TOOL_WAIT: Duration = Duration::from_secs(180);

struct Setup {
    relay: Running,
    cover: Cover,
    _up: FakeUpstream,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn relay(&self) -> SocketAddr {
        self.relay.addr("stealth")
    }
}

async fn setup(cover_timeout: Duration) -> Setup {
    let cover = Cover::start_with(cover_timeout).await;
    let dir = tempfile::tempdir().unwrap();
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let secrets = dir.path().join("secrets.toml");
    SecretsFile {
        secret: vec![SecretEntry {
            label: "friends".into(),
            secret: Secret::from_bytes([1; 16]).to_text(),
            created: now_unix(),
            expires: None,
            max_connections: None,
        }],
    }
    .save(&secrets)
    .unwrap();
    let mut cfg =
        Config::stealth_preset(up.host_port(), cover.host_port(), DOMAIN, Some(secrets)).unwrap();
    loopback(&mut cfg);
    let relay = start(cfg).await;
    Setup {
        relay,
        cover,
        _up: up,
        _dir: dir,
    }
}

fn installed(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        eprintln!("skipped: `{tool}` is not installed (the probe needs the real tool)");
    }
    found
}

/// Runs a tool with stdin closed; its stdout and stderr.
async fn run(program: &str, args: &[String]) -> (String, String) {
    let out = tokio::time::timeout(
        TOOL_WAIT,
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} did not finish within {TOOL_WAIT:?}"))
    .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `openssl s_client` reports of one TLS session: the certificate
/// chain (PEM), the version and cipher line, the ALPN line, verification.
#[derive(Debug, PartialEq)]
struct Session {
    chain: Vec<String>,
    lines: Vec<String>,
}

async fn s_client(addr: SocketAddr) -> Session {
    let args: Vec<String> = [
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        DOMAIN,
        "-alpn",
        "h2,http/1.1",
        "-showcerts",
    ]
    .map(str::to_owned)
    .to_vec();
    let (out, err) = run("openssl", &args).await;
    let mut chain = Vec::new();
    let mut pem: Option<String> = None;
    let mut lines = Vec::new();
    for l in out.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            pem = Some(String::new());
        }
        if let Some(p) = &mut pem {
            p.push_str(l);
            p.push('\n');
            if l.starts_with("-----END CERTIFICATE") {
                chain.extend(pem.take());
            }
        }
        let l = l.trim();
        if l.starts_with("New, ")
            || l.starts_with("ALPN protocol")
            || l.starts_with("No ALPN")
            || l.starts_with("Verify return code")
            || l.starts_with("Server public key")
            || l.starts_with("Peer signature type")
        {
            // s_client prints the session (with `Protocol :`, left out
            // here) for each ticket that arrives before it stops: how many
            // is a matter of timing.
            if !lines.iter().any(|x| x == l) {
                lines.push(l.to_owned());
            }
        }
    }
    assert!(
        !chain.is_empty() && lines.iter().any(|l| l.starts_with("New, TLS")),
        "openssl s_client to {addr} made no TLS session:\n{out}\n{err}"
    );
    Session { chain, lines }
}

/// curl's response (headers and body) and the TLS lines of its `-v`.
async fn curl(addr: SocketAddr) -> (String, Vec<String>) {
    let args: Vec<String> = vec![
        "-k".into(),
        "-sS".into(),
        "-v".into(),
        "--max-time".into(),
        "30".into(),
        "-D".into(),
        "-".into(),
        "--resolve".into(),
        format!("{DOMAIN}:{}:127.0.0.1", addr.port()),
        format!("https://{DOMAIN}:{}/", addr.port()),
    ];
    let (out, err) = run("curl", &args).await;
    let port = format!(":{}", addr.port());
    // Alerts and session tickets are left out: whether the server's
    // close_notify or a ticket is read before curl stops is timing.
    let tls: Vec<String> = err
        .lines()
        .filter(|l| !l.contains("TLS alert") && !l.contains("Newsession Ticket"))
        .filter(|l| {
            l.contains("SSL connection using")
                || l.contains("ALPN")
                || l.contains("subject:")
                || l.contains("issuer:")
                || l.contains("expire date")
                || l.contains("start date")
                || l.contains("TLSv1")
        })
        .map(|l| l.replace(&port, ":PORT"))
        .collect();
    assert!(
        tls.iter().any(|l| l.contains("SSL connection using")),
        "curl to {addr} made no TLS session:\n{err}"
    );
    (out, tls)
}

#[tokio::test]
async fn openssl_and_curl_see_the_cover() {
    if !installed("openssl") || !installed("curl") {
        return;
    }
    let s = setup(COVER_TIMEOUT).await;
    let (via, direct) = tokio::join!(s_client(s.relay()), s_client(s.cover.addr));
    assert_eq!(via, direct, "openssl s_client: relay vs cover");
    assert!(
        via.lines.iter().any(|l| l.contains("TLSv1.3")),
        "{:?}",
        via.lines
    );
    assert!(
        via.lines.iter().any(|l| l == "ALPN protocol: http/1.1"),
        "{:?}",
        via.lines
    );

    let ((page_via, tls_via), (page_direct, tls_direct)) =
        tokio::join!(curl(s.relay()), curl(s.cover.addr));
    assert_eq!(page_via, page_direct, "curl: the page's bytes");
    assert!(page_via.ends_with(PAGE), "{page_via}");
    assert!(page_via.contains("Server: nginx/1.22.1"), "{page_via}");
    assert_eq!(tls_via, tls_direct, "curl: the TLS session");
    assert!(
        s.relay
            .metric("ponte_proxy_stealth_cover_connections_total{listener=\"stealth\"}")
            .unwrap()
            >= 2.0
    );
}

/// `nmap -sV` on both ports: per port, (state, service, version).
async fn nmap(ports: &[u16]) -> Vec<(u16, String)> {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let args: Vec<String> = vec![
        "-sV".into(),
        "-Pn".into(),
        "-n".into(),
        "-p".into(),
        list.join(","),
        "-oG".into(),
        "-".into(),
        "127.0.0.1".into(),
    ];
    let (out, err) = run("nmap", &args).await;
    let line = out
        .lines()
        .find(|l| l.contains("Ports: "))
        .unwrap_or_else(|| panic!("nmap printed no ports:\n{out}\n{err}"));
    let ports = line.split("Ports: ").nth(1).unwrap();
    let ports = ports.split('\t').next().unwrap();
    ports
        .split(", ")
        .map(|p| {
            // 41000/open/tcp//ssl|http//nginx 1.22.1/
            let (port, rest) = p.split_once('/').unwrap();
            (port.trim().parse().unwrap(), rest.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn nmap_names_the_covers_server() {
    if !installed("nmap") {
        return;
    }
    // nginx waits 60 s for a request; nmap's first probe waits 6 s for a
    // banner. A cover that waits 10 s is one nmap fingerprints as a server.
    let s = setup(Duration::from_secs(10)).await;
    let (relay, cover) = (s.relay().port(), s.cover.addr.port());
    let got = nmap(&[relay, cover]).await;
    let find = |port: u16| {
        got.iter()
            .find(|(p, _)| *p == port)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("nmap said nothing of port {port}: {got:?}"))
    };
    let (via, direct) = (find(relay), find(cover));
    eprintln!("nmap -sV: relay {via:?}, cover {direct:?}");
    assert_eq!(via, direct, "nmap -sV: relay vs cover");
    assert!(via.contains("nginx"), "{via}");
    let lower = via.to_lowercase();
    assert!(
        !lower.contains("proxy") && !lower.contains("ponte"),
        "{via}"
    );
}

//! The relay end to end over real loopback sockets.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ponte_proxy::config::{HostPort, ListenAddr, SendProxy, TlsMode};
use ponte_proxy::{Config, Preset};
use ponte_wire::proxy_header::{self, Addresses, ProxyHeader};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn set_upstream(cfg: &mut Config, name: &str, servers: Vec<HostPort>) {
    *cfg.upstream.get_mut(name).unwrap().servers.get_mut() = servers;
}

fn tcp_header(h: &Seen) -> (SocketAddr, SocketAddr) {
    match h {
        Seen::Header(ProxyHeader {
            addresses:
                Addresses::Tcp {
                    source,
                    destination,
                },
            ..
        }) => (*source, *destination),
        other => panic!("expected a TCP PROXY header, got {other:?}"),
    }
}

/// The whatsapp preset, every port, with its upstreams overridden by loopback
/// fakes: plain and TLS listeners send a v1 header with the real client,
/// load-balancer listeners carry the LB's client through, media sends none.
#[tokio::test]
async fn whatsapp_preset_layout_end_to_end() {
    let web = FakeUpstream::start("127.0.0.1:0", true).await;
    let chat = FakeUpstream::start("127.0.0.1:0", true).await;
    let media = FakeUpstream::start("127.0.0.1:0", false).await;
    let mut cfg = Config::preset(Preset::Whatsapp, None).unwrap();
    loopback(&mut cfg);
    set_upstream(&mut cfg, "web", vec![web.host_port()]);
    set_upstream(&mut cfg, "chat", vec![chat.host_port()]);
    set_upstream(&mut cfg, "media", vec![media.host_port()]);
    let relay = start(cfg).await;

    // Port 80 equivalent: plain, v1 header with our own address.
    let mut c = TcpStream::connect(relay.addr("http")).await.unwrap();
    echo(&mut c, b"GET / HTTP/1.1\r\n\r\n").await;
    let (src, dst) = tcp_header(&web.seen()[0]);
    assert_eq!(src, c.local_addr().unwrap());
    assert_eq!(dst, relay.addr("http"));

    // 443: TLS terminated, any SNI, v1 header to chat.
    let mut t = tls_connect(relay.addr("https"), "anything.example").await;
    echo(&mut t, b"chat over tls").await;
    let (src, _) = tcp_header(&chat.seen()[0]);
    assert_eq!(src, t.get_ref().0.local_addr().unwrap());

    // 5222: plain chat.
    let mut c = TcpStream::connect(relay.addr("chat")).await.unwrap();
    echo(&mut c, b"chat plain").await;
    assert_eq!(chat.seen().len(), 2);

    // 8222: a load balancer's v2 header (IPv6 client) is carried on as v1.
    let client: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let lb_dst: SocketAddr = "[2001:db8::1]:8222".parse().unwrap();
    let mut c = TcpStream::connect(relay.addr("chat-lb")).await.unwrap();
    let mut hdr = Vec::new();
    proxy_header::encode_v2(client, lb_dst, &mut hdr);
    hdr.extend_from_slice(b"first bytes ride with the header");
    c.write_all(&hdr).await.unwrap();
    let mut back = vec![0u8; 32];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"first bytes ride with the header");
    assert_eq!(tcp_header(&chat.seen()[2]), (client, lb_dst));

    // 8443: LB header, then TLS.
    let mut c = TcpStream::connect(relay.addr("https-lb")).await.unwrap();
    let client4: SocketAddr = "198.51.100.9:1234".parse().unwrap();
    let mut hdr = Vec::new();
    proxy_header::encode_v1(client4, "203.0.113.1:443".parse().unwrap(), &mut hdr);
    c.write_all(&hdr).await.unwrap();
    let mut t = tls_over(c, "x").await;
    echo(&mut t, b"lb tls").await;
    assert_eq!(tcp_header(&chat.seen()[3]).0, client4);

    // 8080: LB header to web.
    let mut c = TcpStream::connect(relay.addr("http-lb")).await.unwrap();
    let mut hdr = Vec::new();
    proxy_header::encode_v1(client4, "203.0.113.1:80".parse().unwrap(), &mut hdr);
    c.write_all(&hdr).await.unwrap();
    echo(&mut c, b"web via lb").await;
    assert_eq!(tcp_header(&web.seen()[1]).0, client4);

    // 587 and 7777: media, no header, bytes untouched.
    for name in ["media", "media-alt"] {
        let mut c = TcpStream::connect(relay.addr(name)).await.unwrap();
        echo(&mut c, b"\x16\x03\x01 client's own TLS passes through").await;
    }
    assert_eq!(media.seen(), vec![Seen::NoHeader, Seen::NoHeader]);

    let (code, body) = relay.admin_get("/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric_value(&body, "ponte_proxy_connections_total{listener=\"https\"}"),
        Some(1.0)
    );
    assert!(
        metric_value(
            &body,
            "ponte_proxy_bytes_total{listener=\"http\",direction=\"upstream\"}"
        )
        .unwrap()
            >= 18.0
    );
}

fn one_listener(up: &FakeUpstream, send: SendProxy, tls: TlsMode, accept_proxy: bool) -> Config {
    let mut cfg = Config::preset(Preset::Ponte, Some(up.host_port())).unwrap();
    loopback(&mut cfg);
    cfg.upstream.get_mut("server").unwrap().send_proxy = send;
    cfg.listener.retain(|l| l.name.get_ref() == "plain");
    cfg.listener[0].tls = tls;
    cfg.listener[0].accept_proxy = accept_proxy;
    cfg
}

/// v2 upstream headers, IPv4 and IPv6 clients, exact bytes.
#[tokio::test]
async fn sends_v2_for_ipv4_and_ipv6_clients() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let up = FakeUpstream::start("127.0.0.1:0", true).await;
        let mut cfg = one_listener(&up, SendProxy::V2, TlsMode::None, false);
        *cfg.listener[0].listen.get_mut() = vec![ListenAddr(bind.parse().unwrap())];
        let relay = start(cfg).await;
        let mut c = TcpStream::connect(relay.addr("plain")).await.unwrap();
        echo(&mut c, b"hello").await;
        let (src, dst) = tcp_header(&up.seen()[0]);
        assert_eq!(src, c.local_addr().unwrap());
        assert_eq!(dst, c.peer_addr().unwrap());
    }
}

/// relay A (send v2) -> relay B (accept_proxy, send v1) -> upstream sees the original client.
#[tokio::test]
async fn accept_proxy_chain_keeps_the_original_client() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let b = start(one_listener(&up, SendProxy::V1, TlsMode::SelfSigned, true)).await;
    let front = FakeUpstream::start("127.0.0.1:0", true).await; // placeholder to build config
    let mut a_cfg = one_listener(&front, SendProxy::V2, TlsMode::None, false);
    set_upstream(
        &mut a_cfg,
        "server",
        vec![HostPort {
            host: "127.0.0.1".into(),
            port: b.addr("plain").port(),
        }],
    );
    let a = start(a_cfg).await;
    // Client speaks TLS end to end through A to B (A just carries bytes).
    let tcp = TcpStream::connect(a.addr("plain")).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let mut t = tls_over(tcp, "relay.example").await;
    echo(&mut t, b"through two relays").await;
    let (src, _) = tcp_header(&up.seen()[0]);
    assert_eq!(src, me);
    assert!(front.seen().is_empty());
}

#[tokio::test]
async fn bad_proxy_headers_are_refused_and_counted() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::None, true);
    cfg.timeouts.handshake = "300ms".parse().unwrap();
    let relay = start(cfg).await;
    let addr = relay.addr("plain");
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 extra\r\n".to_vec(),
        b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 ".as_slice(), &[b'9'; 200]].concat(),
        {
            let mut v = proxy_header::V2_SIGNATURE.to_vec();
            v.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]); // length 65535: over the cap
            v
        },
    ];
    for bytes in &cases {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(bytes).await;
        assert!(closed(&mut c).await, "not closed after {bytes:?}");
    }
    // Truncated: half a header, then silence -> closed by the handshake timeout.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PROXY TCP4 1.2.3.4 ").await.unwrap();
    assert!(closed(&mut c).await);
    // A peer that closes mid-header.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PROXY TCP6 ").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = relay.metrics.encode();
    let invalid = metric_value(
        &m,
        "ponte_proxy_proxy_header_failures_total{listener=\"plain\",reason=\"invalid\"}",
    )
    .unwrap();
    let timeout = metric_value(
        &m,
        "ponte_proxy_proxy_header_failures_total{listener=\"plain\",reason=\"timeout\"}",
    )
    .unwrap();
    assert_eq!(invalid, 5.0, "{m}");
    assert_eq!(timeout, 1.0, "{m}");
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    // A good client is still served.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut h = Vec::new();
    proxy_header::encode_v1(
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
        &mut h,
    );
    c.write_all(&h).await.unwrap();
    echo(&mut c, b"ok").await;
}

#[tokio::test]
async fn tls_garbage_and_half_handshakes_are_counted_not_fatal() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::SelfSigned, false);
    cfg.timeouts.handshake = "500ms".parse().unwrap();
    let relay = start(cfg).await;
    let addr = relay.addr("plain");
    // Random bytes.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let bytes: Vec<u8> = (0..300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = c.write_all(&bytes).await;
        assert!(closed(&mut c).await);
    }
    // Many connections that never finish a handshake (a valid ClientHello prefix).
    let mut silent = Vec::new();
    for _ in 0..1000 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x50]).await.unwrap();
        silent.push(c);
    }
    // Others are still served meanwhile.
    let mut t = tls_connect(addr, "x").await;
    echo(&mut t, b"still served").await;
    // All silent ones are closed by the handshake timeout.
    for c in &mut silent {
        assert!(closed(c).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let timeouts = relay
        .metric("ponte_proxy_tls_handshake_failures_total{listener=\"plain\",reason=\"timeout\"}")
        .unwrap();
    assert_eq!(timeouts, 1000.0);
    let invalid = relay
        .metric("ponte_proxy_tls_handshake_failures_total{listener=\"plain\",reason=\"invalid\"}")
        .unwrap();
    assert_eq!(invalid, 20.0);
    assert_eq!(
        relay.metric("ponte_proxy_connections_open{listener=\"plain\"}"),
        Some(1.0)
    );
    assert_eq!(
        up.seen().len(),
        1,
        "only the real client reached the upstream"
    );
}

#[tokio::test]
async fn connection_caps_refuse_and_count() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::None, false);
    cfg.limits.max_connections = 2;
    let relay = start(cfg).await;
    let addr = relay.addr("plain");
    let mut a = TcpStream::connect(addr).await.unwrap();
    echo(&mut a, b"a").await;
    let mut b = TcpStream::connect(addr).await.unwrap();
    echo(&mut b, b"b").await;
    assert!(refused(addr).await, "third connection refused");
    drop(a);
    // Once a slot frees up, new clients get in again (bounded retry).
    let mut ok = false;
    for _ in 0..50 {
        let Ok(mut d) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if d.write_all(b"d").await.is_ok() {
            let mut x = [0u8; 1];
            if let Ok(Ok(1)) =
                tokio::time::timeout(Duration::from_millis(500), d.read(&mut x)).await
            {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    echo(&mut b, b"b still fine").await;
    assert!(
        relay
            .metric("ponte_proxy_refused_total{listener=\"plain\",reason=\"max_connections\"}")
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn per_source_and_listener_caps() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::None, false);
    cfg.limits.per_source_connections = 1;
    let relay = start(cfg).await;
    let mut a = TcpStream::connect(relay.addr("plain")).await.unwrap();
    echo(&mut a, b"a").await;
    assert!(refused(relay.addr("plain")).await);
    assert_eq!(
        relay.metric(
            "ponte_proxy_refused_total{listener=\"plain\",reason=\"per_source_connections\"}"
        ),
        Some(1.0)
    );

    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::None, false);
    cfg.listener[0].max_connections = Some(1);
    cfg.limits.per_source_rate = 1;
    cfg.limits.per_source_burst = 0;
    let relay = start(cfg).await;
    let mut a = TcpStream::connect(relay.addr("plain")).await.unwrap();
    echo(&mut a, b"a").await;
    assert!(refused(relay.addr("plain")).await);
    let m = relay.metrics.encode();
    let rate = metric_value(
        &m,
        "ponte_proxy_refused_total{listener=\"plain\",reason=\"per_source_rate\"}",
    )
    .unwrap();
    let cap = metric_value(
        &m,
        "ponte_proxy_refused_total{listener=\"plain\",reason=\"listener_max_connections\"}",
    )
    .unwrap();
    assert_eq!(rate + cap, 1.0, "{m}");
}

#[tokio::test]
async fn failover_and_unreachable_upstream() {
    // A port that refuses: bound, never listening, held for the test (a
    // released port could be given to another test's listener).
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = dead_socket.local_addr().unwrap();
    let live = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&live, SendProxy::V1, TlsMode::None, false);
    set_upstream(
        &mut cfg,
        "server",
        vec![
            HostPort {
                host: "127.0.0.1".into(),
                port: dead.port(),
            },
            live.host_port(),
        ],
    );
    let relay = start(cfg).await;
    let mut c = TcpStream::connect(relay.addr("plain")).await.unwrap();
    echo(&mut c, b"served by the second server").await;
    let (code, body) = relay.admin_get("/healthz").await;
    assert_eq!(code, 200, "{body}");

    // All servers down: the client is closed promptly and it is counted.
    let mut cfg = one_listener(&live, SendProxy::V1, TlsMode::None, false);
    set_upstream(
        &mut cfg,
        "server",
        vec![HostPort {
            host: "127.0.0.1".into(),
            port: dead.port(),
        }],
    );
    let relay = start(cfg).await;
    let started = std::time::Instant::now();
    let mut c = TcpStream::connect(relay.addr("plain")).await.unwrap();
    let _ = c.write_all(b"hello?").await;
    assert!(closed(&mut c).await);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        relay.metric(
            "ponte_proxy_refused_total{listener=\"plain\",reason=\"upstream_unavailable\"}"
        ),
        Some(1.0)
    );
    // The health check has seen it too.
    let mut code = 0;
    for _ in 0..50 {
        code = relay.admin_get("/healthz").await.0;
        if code == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, 503);
}

#[tokio::test]
async fn status_page_and_metrics_show_aggregates_only() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let relay = start(one_listener(&up, SendProxy::V1, TlsMode::None, false)).await;
    let mut c = TcpStream::connect(relay.addr("plain")).await.unwrap();
    echo(&mut c, b"status").await;
    let (code, html) = relay.admin_get("/").await;
    assert_eq!(code, 200);
    assert!(html.contains("users connected now"), "{html}");
    assert!(html.contains("healthy"));
    assert!(!html.contains("src="), "no external assets");
    let me = c.local_addr().unwrap();
    assert!(!html.contains(&me.port().to_string()) || !html.contains(&me.ip().to_string()));
    let (_, m) = relay.admin_get("/metrics").await;
    assert!(
        !m.contains(&format!("{}:{}", me.ip(), me.port())),
        "no client address in metrics"
    );
    for family in [
        "ponte_proxy_connections_open",
        "ponte_proxy_connections_handshaking",
        "ponte_proxy_bytes_total",
        "ponte_proxy_refused_total",
        "ponte_proxy_tls_handshake_failures_total",
        "ponte_proxy_proxy_header_failures_total",
        "ponte_proxy_upstream_healthy",
        "ponte_proxy_upstream_connect_seconds_bucket",
    ] {
        assert!(m.contains(family), "missing {family}");
    }
    assert_eq!(relay.admin_get("/nope").await.0, 404);
}

/// "Users connected now" (and `connections_open`) counts connections that
/// relay, "connections served" those that did; a flood of half-open TLS
/// handshakes shows as handshakes, apart.
#[tokio::test]
async fn users_connected_now_counts_established_connections_only() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let relay = start(one_listener(&up, SendProxy::V1, TlsMode::SelfSigned, false)).await;
    let addr = relay.addr("plain");
    let mut t = tls_connect(addr, "x").await;
    echo(&mut t, b"relaying").await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x50]).await.unwrap();
        silent.push(c);
    }
    let handshaking = "ponte_proxy_connections_handshaking{listener=\"plain\"}";
    for _ in 0..100 {
        if relay.metric(handshaking) == Some(50.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metric(handshaking), Some(50.0));
    assert_eq!(
        relay.metric("ponte_proxy_connections_open{listener=\"plain\"}"),
        Some(1.0)
    );
    let (_, html) = relay.admin_get("/").await;
    assert!(html.contains("1<small>users connected now"), "{html}");
    assert!(
        html.contains("50<small>connecting (in handshake)"),
        "{html}"
    );
    assert!(html.contains("1<small>connections served"), "{html}");
    assert!(
        html.contains("<td>plain</td><td>1</td><td>50</td><td>1</td><td>51</td>"),
        "{html}"
    );
    assert_eq!(
        relay.metric("ponte_proxy_connections_relayed_total{listener=\"plain\"}"),
        Some(1.0)
    );
    assert_eq!(
        relay.metric("ponte_proxy_connections_total{listener=\"plain\"}"),
        Some(51.0)
    );
    drop(silent);
    drop(t);
    for _ in 0..100 {
        if relay.metric(handshaking) == Some(0.0)
            && relay.metric("ponte_proxy_connections_open{listener=\"plain\"}") == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metric(handshaking), Some(0.0));
    assert_eq!(
        relay.metric("ponte_proxy_connections_open{listener=\"plain\"}"),
        Some(0.0)
    );
}

fn write_cert(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let (c, k) = (dir.join("relay.crt"), dir.join("relay.key"));
    // Write then rename, as certbot does, so a reader never sees half a file.
    std::fs::write(dir.join("tmp.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("tmp.key"), ck.key_pair.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tmp.key"), &k).unwrap();
    std::fs::rename(dir.join("tmp.crt"), &c).unwrap();
    (c, k)
}

fn peer_cert(t: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    t.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn certificate_reload_keeps_live_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "first.example");
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::Files { cert, key }, false);
    cfg.tls.reload_interval = "1h".parse().unwrap(); // only the explicit reload below
    let relay = start(cfg).await;
    let addr = relay.addr("plain");
    let mut live = tls_connect(addr, "x").await;
    echo(&mut live, b"before").await;
    let first = peer_cert(&live);
    write_cert(dir.path(), "second.example");
    relay.reload.reload();
    let mut changed = false;
    for _ in 0..100 {
        let mut t = tls_connect(addr, "x").await;
        echo(&mut t, b"new").await;
        if peer_cert(&t) != first {
            changed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(changed, "new handshakes get the new certificate");
    echo(&mut live, b"the old connection still works").await;
    assert_eq!(
        relay.metric("ponte_proxy_tls_cert_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn certificate_files_reload_on_change_by_timer() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "first.example");
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::Files { cert, key }, false);
    cfg.tls.reload_interval = "100ms".parse().unwrap();
    let relay = start(cfg).await;
    let first = peer_cert(&tls_connect(relay.addr("plain"), "x").await);
    // Make sure the modification time moves on coarse file systems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_cert(dir.path(), "second.example");
    let mut changed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if peer_cert(&tls_connect(relay.addr("plain"), "x").await) != first {
            changed = true;
            break;
        }
    }
    assert!(changed);
}

#[tokio::test]
async fn graceful_shutdown_drains_then_stops() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::None, false);
    cfg.timeouts.drain = "10s".parse().unwrap();
    let mut relay = start(cfg).await;
    let addr = relay.addr("plain");
    let mut c = TcpStream::connect(addr).await.unwrap();
    echo(&mut c, b"before").await;
    relay.shutdown();
    // No new connections once the listener is closed (bounded wait).
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused);
    // The open connection still works during the drain.
    echo(&mut c, b"during drain").await;
    assert!(!relay.task.is_finished());
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), &mut relay.task)
        .await
        .expect("stops once drained")
        .unwrap();
}

#[tokio::test]
async fn drain_deadline_ends_stuck_connections() {
    let up = FakeUpstream::start("127.0.0.1:0", true).await;
    let mut cfg = one_listener(&up, SendProxy::V1, TlsMode::None, false);
    cfg.timeouts.drain = "200ms".parse().unwrap();
    let mut relay = start(cfg).await;
    let mut c = TcpStream::connect(relay.addr("plain")).await.unwrap();
    echo(&mut c, b"x").await;
    relay.shutdown();
    tokio::time::timeout(Duration::from_secs(5), &mut relay.task)
        .await
        .expect("stops after the drain period")
        .unwrap();
}

#[tokio::test]
async fn custom_listener_config_from_toml() {
    let up = FakeUpstream::start("127.0.0.1:0", false).await;
    let text = format!(
        r#"
[tuning]
workers = 1
[upstream.media]
servers = ["{}"]
[[listener]]
name = "m"
listen = ["127.0.0.1:0"]
upstream = "media"
"#,
        up.addr
    );
    let cfg = Config::from_toml(&text, None).unwrap();
    assert!(cfg.admin.is_none());
    let relay = start(cfg).await;
    assert!(relay.admin.is_none());
    let mut c = TcpStream::connect(relay.addr("m")).await.unwrap();
    echo(&mut c, b"raw").await;
}

/// Sockets in LISTEN state on `port` (IPv4), from /proc/net/tcp.
#[cfg(target_os = "linux")]
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
        })
        .count()
}

/// Each worker has its own listening socket (`SO_REUSEPORT`): connections
/// spread over 4 workers are all served; and an address another process
/// holds is refused, not silently shared.
#[tokio::test]
async fn sharded_listeners_serve_and_a_taken_address_is_refused() {
    let up = FakeUpstream::start("127.0.0.1:0", false).await;
    let mut cfg = one_listener(&up, SendProxy::None, TlsMode::None, false);
    cfg.tuning.workers = 4;
    let relay = start(cfg).await;
    // One listening socket per worker (SO_REUSEPORT), not one shared socket.
    // The workers bind theirs as they start: wait (bounded) for all four.
    #[cfg(target_os = "linux")]
    {
        let port = relay.addr("plain").port();
        let mut seen = listening_sockets(port);
        for _ in 0..200 {
            if seen == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            seen = listening_sockets(port);
        }
        assert_eq!(seen, 4, "listening sockets on port {port}");
    }
    let mut clients = Vec::new();
    for i in 0..64u8 {
        let mut c = TcpStream::connect(relay.addr("plain")).await.unwrap();
        echo(&mut c, &[i; 3]).await;
        clients.push(c);
    }
    // Someone else holds a port: binding a relay there fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = one_listener(&up, SendProxy::None, TlsMode::None, false);
    *cfg.listener[0].listen.get_mut() = vec![ListenAddr(taken.local_addr().unwrap())];
    let err = ponte_proxy::Proxy::bind(cfg).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

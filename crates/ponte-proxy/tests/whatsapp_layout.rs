//! The WhatsApp preset, harder to spot: its self-signed certificate has a
//! small site's shape, and the single-port layout carries chat and media on
//! one TLS port, told apart by the server name before any byte is
//! forwarded. Loopback upstreams stand in for WhatsApp's: the chat one
//! records the PROXY header and echoes, the media one is an HTTPS server
//! whose own TLS session must reach the client untouched.
#![allow(clippy::unwrap_used)]

mod common;

use common::cover::{Cover, PAGE};
use common::*;
use ponte_proxy::link::ShareLink;
use ponte_proxy::Config;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "proxy.example.org";

fn subject_cn(der: &[u8]) -> (String, String, i64) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = |n: &x509_parser::x509::X509Name<'_>| {
        n.iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let v = cert.validity();
    (
        cn(cert.subject()),
        cn(cert.issuer()),
        v.not_after.timestamp() - v.not_before.timestamp(),
    )
}

#[tokio::test]
async fn single_port_splits_chat_and_media_by_server_name() {
    let chat = FakeUpstream::start("127.0.0.1:0", true).await;
    let media = Cover::start().await;
    let mut cfg = Config::whatsapp_single_port().unwrap();
    assert_eq!(cfg.listener.len(), 1, "one port");
    cfg.tls.self_signed_names = vec![NAME.into()];
    cfg.upstream.get_mut("chat").unwrap().servers =
        toml::Spanned::new(0..0, vec![chat.host_port()]);
    cfg.upstream.get_mut("media").unwrap().servers =
        toml::Spanned::new(0..0, vec![media.host_port()]);
    for u in cfg.upstream.values_mut() {
        u.health_check_interval = "0s".parse().unwrap();
    }
    loopback(&mut cfg);
    assert_eq!(
        ShareLink::for_config(&Config::whatsapp_single_port().unwrap(), NAME),
        Ok(ShareLink::WhatsApp(format!(
            "https://wa.me/proxy?host={NAME}&chatPort=443&mediaPort=443&chatTLS=true"
        )))
    );
    let relay = start(cfg).await;
    let port = relay.addr("https");

    // Media: the client's TLS session is with the media server itself.
    let mut m = tls_connect(port, "mmg.whatsapp.net").await;
    let (cn, _, _) = subject_cn(m.get_ref().1.peer_certificates().unwrap()[0].as_ref());
    assert_eq!(
        cn, "rcgen self signed cert",
        "the media server's own certificate"
    );
    m.write_all(b"GET / HTTP/1.1\r\nHost: mmg.whatsapp.net\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), m.read_to_string(&mut page)).await;
    assert!(page.ends_with(PAGE), "{page}");
    assert!(chat.seen().is_empty(), "nothing of the media went to chat");

    // Chat: TLS ends at the relay, whose certificate names the relay's host
    // and lasts a year; the chat upstream gets the PROXY header, then the
    // bytes.
    for sni in [NAME, "127.0.0.1"] {
        let mut c = tls_connect(port, sni).await;
        let (cn, issuer, life) = subject_cn(c.get_ref().1.peer_certificates().unwrap()[0].as_ref());
        assert_eq!((cn.as_str(), issuer.as_str()), (NAME, NAME));
        assert_eq!(life, 365 * 86_400);
        echo(&mut c, b"chat through the single port").await;
        let client = c.get_ref().0.local_addr().unwrap();
        let seen = chat.seen();
        match seen.last() {
            Some(Seen::Header(h)) => assert_eq!(h.tcp_source(), Some(client)),
            other => panic!("expected a PROXY header, got {other:?}"),
        }
    }
    assert_eq!(chat.seen().len(), 2);
}

#[tokio::test]
async fn sni_passthrough_is_checked() {
    let base = "[upstream.chat]\nservers = [\"127.0.0.1:9\"]\n[upstream.media]\nservers = [\"127.0.0.1:10\"]\n\
                [[listener]]\nname = \"https\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"chat\"\n";
    let ok = format!(
        "{base}tls = \"self-signed\"\n[listener.sni_passthrough]\nnames = [\"whatsapp.net\"]\nupstream = \"media\"\n"
    );
    let cfg = Config::from_toml(&ok, None).unwrap();
    let p = cfg.listener[0].sni_passthrough.clone().unwrap();
    assert!(p.matches("mmg.whatsapp.net"));
    assert!(p.matches("WhatsApp.NET."));
    assert!(!p.matches("notwhatsapp.net"));
    assert!(!p.matches("whatsapp.net.example.org"));
    assert_eq!(Config::from_toml(&cfg.to_toml(), None).unwrap(), cfg);
    let plain = format!(
        "{base}[listener.sni_passthrough]\nnames = [\"whatsapp.net\"]\nupstream = \"media\"\n"
    );
    let e = Config::from_toml(&plain, None).unwrap_err();
    assert!(e.message.contains("needs a TLS listener"), "{e}");
    let dangling = ok.replace("upstream = \"media\"", "upstream = \"nope\"");
    let e = Config::from_toml(&dangling, None).unwrap_err();
    assert!(e.message.contains("no upstream named `nope`"), "{e}");
    assert!(e.line > 0, "located: {e}");
}

//! The presets' command line for relays that should not stand out: the
//! stealth preset's builtin cover and ACME flags, the WhatsApp preset's
//! single-port layout, its --domain certificate and --port for every
//! listener. Checked through `--print-config` and `link` of the real binary.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

mod common;
use common::PONTE;

fn proxy(args: &[&str]) -> Output {
    Command::new(PONTE)
        .arg("proxy")
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = proxy(args);
    assert!(
        out.status.success(),
        "ponte proxy {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = proxy(args);
    assert!(!out.status.success(), "ponte proxy {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn config(text: &str) -> ponte_proxy::Config {
    ponte_proxy::Config::from_toml(text, None).unwrap()
}

#[test]
fn stealth_builtin_cover_gets_an_acme_certificate() {
    let base = [
        "--preset",
        "stealth",
        "--upstream",
        "127.0.0.1:5222",
        "--domain",
        "www.example.net",
        "--print-config",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--cover",
        "builtin",
        "--site",
        "/srv/cover",
        "--acme-contact",
        "mailto:op@example.net",
    ]);
    let cfg = config(&ok(&args));
    let st = cfg.listener[0].stealth.as_ref().unwrap();
    assert_eq!(st.cover, ponte_proxy::stealth::CoverSite::Builtin);
    assert_eq!(st.site.as_deref(), Some(std::path::Path::new("/srv/cover")));
    let acme = cfg.acme.unwrap();
    assert_eq!(
        acme.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(acme.domains, ["www.example.net"]);
    assert_eq!(acme.contact, ["mailto:op@example.net"]);

    args.push("--no-acme");
    let cfg = config(&ok(&args));
    assert!(cfg.acme.is_none(), "--no-acme: self-signed for the domain");

    let mut remote = base.to_vec();
    remote.extend([
        "--cover",
        "127.0.0.1:8443",
        "--acme-directory",
        "https://ca.example/dir",
    ]);
    let e = fails(&remote);
    assert!(e.contains("--acme-directory needs a certificate"), "{e}");
    let mut site = base.to_vec();
    site.extend(["--cover", "127.0.0.1:8443", "--site", "/srv"]);
    assert!(fails(&site).contains("--site goes with --cover builtin"));
}

#[test]
fn whatsapp_single_port_with_a_domain_and_every_port_settable() {
    let cfg = config(&ok(&[
        "--preset",
        "whatsapp",
        "--single-port",
        "--domain",
        "relay.example.org",
        "--port",
        "https=8443",
        "--print-config",
    ]));
    assert_eq!(cfg.listener.len(), 1);
    let l = &cfg.listener[0];
    assert!(l.listen.get_ref().iter().all(|a| a.0.port() == 8443));
    assert_eq!(l.tls, ponte_proxy::config::TlsMode::Acme);
    assert!(l.sni_passthrough.is_some());
    assert_eq!(cfg.acme.unwrap().domains, ["relay.example.org"]);

    let link = ok(&[
        "link",
        "--host",
        "relay.example.org",
        "--no-qr",
        "--preset",
        "whatsapp",
        "--single-port",
    ]);
    assert!(
        link.contains("chatPort=443&mediaPort=443&chatTLS=true"),
        "{link}"
    );

    // The usual layout, each port moved or dropped from the command line.
    let cfg = config(&ok(&[
        "--preset",
        "whatsapp",
        "--tls-name",
        "relay.example.org",
        "--port",
        "http=off",
        "--port",
        "chat=15222",
        "--port",
        "media=1587",
        "--port",
        "media-alt=off",
        "--port",
        "https-lb=18443",
        "--print-config",
    ]));
    let ports: Vec<(String, u16)> = cfg
        .listener
        .iter()
        .map(|l| (l.name.get_ref().clone(), l.listen.get_ref()[0].0.port()))
        .collect();
    let want: Vec<(String, u16)> = [
        ("https", 443),
        ("chat", 15222),
        ("http-lb", 8080),
        ("https-lb", 18443),
        ("chat-lb", 8222),
        ("media", 1587),
    ]
    .iter()
    .map(|(n, p)| ((*n).to_owned(), *p))
    .collect();
    assert_eq!(ports, want);
    assert_eq!(cfg.tls.self_signed_names, ["relay.example.org"]);
    assert!(cfg.acme.is_none(), "no --domain: self-signed");

    let e = fails(&["--preset", "whatsapp", "--port", "nope=1", "--print-config"]);
    assert!(e.contains("no listener `nope`"), "{e}");
    let e = fails(&[
        "--preset",
        "whatsapp",
        "--port",
        "https=0",
        "--print-config",
    ]);
    assert!(e.contains("1 to 65535"), "{e}");
    let e = fails(&[
        "--preset",
        "ponte",
        "--upstream",
        "127.0.0.1:1",
        "--single-port",
        "--print-config",
    ]);
    assert!(
        e.contains("--single-port goes with --preset whatsapp"),
        "{e}"
    );
}

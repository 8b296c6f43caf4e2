#![allow(clippy::unwrap_used)]
use super::*;

const ISSUE_EXAMPLE: &str = r#"
[admin]
listen = "127.0.0.1:8199"          # "/" status page, "/metrics" Prometheus, "/healthz"

[upstream.chat]
servers = ["g.whatsapp.net:5222", "g-fallback.whatsapp.net:5222"]
send_proxy = "v1"                  # "v1" | "v2" | "none"

[[listener]]
name = "chat-tls"
listen = ["0.0.0.0:443", "[::]:443"]
tls = "self-signed"                # "none" (default) | "self-signed" | { cert = "x.pem", key = "y.pem" }
accept_proxy = false               # expect a PROXY v1/v2 header from a load balancer
upstream = "chat"
"#;

#[test]
fn issue_schema_parses() {
    let c = Config::from_toml(ISSUE_EXAMPLE, None).unwrap();
    assert_eq!(c.listener.len(), 1);
    assert_eq!(c.listener[0].tls, TlsMode::SelfSigned);
    let ups = &c.upstream["chat"];
    assert_eq!(ups.send_proxy, SendProxy::V1);
    assert_eq!(ups.servers.get_ref()[1].host, "g-fallback.whatsapp.net");
    assert_eq!(c.limits.max_connections, 27_500);
}

#[test]
fn presets_round_trip_through_toml() {
    for (p, up) in [
        (Preset::Whatsapp, None),
        (Preset::Ponte, Some("server.example:5222".parse().unwrap())),
    ] {
        let c = Config::preset(p, up).unwrap();
        let text = c.to_toml();
        let back = Config::from_toml(&text, None).unwrap();
        assert_eq!(c, back, "{text}");
        assert_eq!(back.to_toml(), text);
    }
}

#[test]
fn whatsapp_preset_has_the_official_layout() {
    let c = Config::preset(Preset::Whatsapp, None).unwrap();
    let ports: Vec<(u16, bool, bool, &str)> = c
        .listener
        .iter()
        .map(|l| {
            (
                l.listen.get_ref()[0].0.port(),
                l.tls != TlsMode::None,
                l.accept_proxy,
                l.upstream.get_ref().as_str(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            (80, false, false, "web"),
            (443, true, false, "chat"),
            (5222, false, false, "chat"),
            (8080, false, true, "web"),
            (8443, true, true, "chat"),
            (8222, false, true, "chat"),
            (587, false, false, "media"),
            (7777, false, false, "media"),
        ]
    );
    assert_eq!(c.upstream["media"].send_proxy, SendProxy::None);
    assert_eq!(c.upstream["chat"].send_proxy, SendProxy::V1);
    assert_eq!(
        c.upstream["web"].servers.get_ref()[0].to_string(),
        "g.whatsapp.net:80"
    );
    assert_eq!(
        c.admin.unwrap().listen.get_ref().to_string(),
        "127.0.0.1:8199"
    );
}

#[test]
fn ponte_preset_needs_upstream() {
    let e = Config::preset(Preset::Ponte, None).unwrap_err();
    assert!(e.message.contains("--upstream"), "{e}");
}

fn err_of(text: &str) -> ConfigError {
    Config::from_toml(text, Some(Path::new("relay.toml"))).unwrap_err()
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = ISSUE_EXAMPLE.replace("accept_proxy = false", "acept_proxy = false");
    let e = err_of(&text);
    assert_eq!(e.line, 13, "{e}");
    assert!(e.to_string().starts_with("relay.toml:13:"), "{e}");
    assert!(e.message.contains("acept_proxy"), "{e}");
    assert_eq!(e.key, "listener[0].acept_proxy");
}

/// Every error from the parser names the key it is about, in the form a
/// volunteer can find in the file.
#[test]
fn parse_errors_name_the_key() {
    for (from, to, key, line) in [
        ("[admin]", "colour = \"red\"\n[admin]", "colour", 2),
        ("\"self-signed\"", "\"selfsigned\"", "listener[0].tls", 12),
        (
            "tls = \"self-signed\"",
            "tls = { cert = \"a.pem\", key = \"b.pem\", extra = 1 }",
            "listener[0].tls.extra",
            12,
        ),
        ("\"v1\"", "\"v3\"", "upstream.chat.send_proxy", 7),
        (
            "\"[::]:443\"",
            "\"[::]:99999\"",
            "listener[0].listen[1]",
            11,
        ),
        (
            "\"g-fallback.whatsapp.net:5222\"",
            "\"x\"",
            "upstream.chat.servers[1]",
            6,
        ),
        (
            "accept_proxy = false",
            "accept_proxy = \"no\"",
            "listener[0].accept_proxy",
            13,
        ),
    ] {
        let text = ISSUE_EXAMPLE.replace(from, to);
        assert_ne!(text, ISSUE_EXAMPLE, "{from}");
        let e = err_of(&text);
        assert_eq!(e.key, key, "{e}");
        assert_eq!(e.line, line, "{e}");
        assert!(
            e.to_string().starts_with(&format!("relay.toml:{line}:")),
            "{e}"
        );
        assert!(e.to_string().contains(&format!(": {key}: ")), "{e}");
    }
    let e = err_of("[limits]\nmax_connections = -1\n");
    assert_eq!(e.key, "limits.max_connections", "{e}");
    let e = err_of("[[listener]]\nname = \"l\"\nlisten = [\"127.0.0.1:1\"]\n");
    assert_eq!(e.key, "listener[0]", "{e}");
    assert!(e.message.contains("upstream"), "{e}");
    // Not about one key: no empty key in the text.
    let e = err_of("[admin\n");
    assert_eq!(e.key, "");
    assert!(!e.to_string().contains(": :"), "{e}");
    let e = Config::load(Path::new("/nonexistent/relay.toml")).unwrap_err();
    assert_eq!(e.to_string().matches(':').count(), 2, "{e}");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/relay.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn unknown_top_level_section_is_refused() {
    let e = err_of("[admn]\nlisten = \"127.0.0.1:1\"\n");
    assert!(e.message.contains("admn"), "{e}");
    assert_eq!(e.line, 1);
}

#[test]
fn bad_listen_address_is_located() {
    let text = ISSUE_EXAMPLE.replace("\"[::]:443\"", "\"localhost:443\"");
    let e = err_of(&text);
    assert_eq!(e.line, 11, "{e}");
    assert!(e.message.contains("localhost:443"), "{e}");
}

#[test]
fn bad_upstream_server_is_located() {
    let text = ISSUE_EXAMPLE.replace("g.whatsapp.net:5222\"", "g.whatsapp.net\"");
    let e = err_of(&text);
    assert_eq!(e.line, 6, "{e}");
    assert!(e.message.contains("needs a port"), "{e}");
    let text = ISSUE_EXAMPLE.replace("g.whatsapp.net:5222\"", "bad host!:5222\"");
    assert!(err_of(&text).message.contains("not a valid host"));
    let text = ISSUE_EXAMPLE.replace("g.whatsapp.net:5222\"", "g.whatsapp.net:0\"");
    assert!(err_of(&text).message.contains("1-65535"));
    for zero in ["127.0.0.1:0", "[::1]:0"] {
        let text = ISSUE_EXAMPLE.replace("g.whatsapp.net:5222", zero);
        let e = err_of(&text);
        assert!(e.message.contains("1-65535"), "{zero}: {e}");
        assert_eq!(e.line, 6, "{e}");
    }
}

#[test]
fn dangling_upstream_is_located() {
    let text = ISSUE_EXAMPLE.replace("upstream = \"chat\"", "upstream = \"chatt\"");
    let e = err_of(&text);
    assert_eq!(e.line, 14, "{e}");
    assert_eq!(e.key, "listener[0].upstream");
    assert!(
        e.message.contains("chatt") && e.message.contains("defined: chat"),
        "{e}"
    );
}

#[test]
fn bad_tls_and_durations() {
    let text = ISSUE_EXAMPLE.replace("\"self-signed\"", "\"selfsigned\"");
    assert_eq!(err_of(&text).line, 12);
    let text = ISSUE_EXAMPLE.replace(
        "tls = \"self-signed\"",
        "tls = { cert = \"a.pem\", key = \"b.pem\", extra = 1 }",
    );
    assert!(err_of(&text).message.contains("extra"));
    let e = err_of(&format!(
        "[timeouts]\nidle = \"5 minutes\"\n{ISSUE_EXAMPLE}"
    ));
    assert_eq!(e.line, 2, "{e}");
    let e = err_of(&format!("[timeouts]\nidle = \"0s\"\n{ISSUE_EXAMPLE}"));
    assert_eq!(e.key, "timeouts.idle");
}

#[test]
fn duplicate_listen_addresses_and_names() {
    let twice = format!(
        "{ISSUE_EXAMPLE}\n[[listener]]\nname = \"chat-tls\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"chat\"\n"
    );
    assert!(err_of(&twice).message.contains("used twice"));
    let same_addr = format!(
        "{ISSUE_EXAMPLE}\n[[listener]]\nname = \"b\"\nlisten = [\"0.0.0.0:443\"]\nupstream = \"chat\"\n"
    );
    let e = err_of(&same_addr);
    assert!(e.message.contains("0.0.0.0:443"), "{e}");
    assert_eq!(e.line, 18, "{e}");
    assert!(
        e.message
            .contains("also by listener[0].listen (`chat-tls`)"),
        "{e}"
    );
}

#[test]
fn an_address_taken_by_the_admin_endpoint_names_it() {
    let text = ISSUE_EXAMPLE.replace("\"0.0.0.0:443\"", "\"127.0.0.1:8199\"");
    let e = err_of(&text);
    assert_eq!(e.key, "listener[0].listen");
    assert!(
        e.message
            .contains("address 127.0.0.1:8199 is used twice: also by [admin] listen"),
        "{e}"
    );
    // The wildcard on the same port clashes at bind(2) too.
    let text = ISSUE_EXAMPLE.replace("\"0.0.0.0:443\"", "\"0.0.0.0:8199\"");
    let e = err_of(&text);
    assert!(
        e.message
            .contains("0.0.0.0:8199 overlaps 127.0.0.1:8199 of [admin] listen"),
        "{e}"
    );
    let both = format!(
        "{ISSUE_EXAMPLE}\n[[listener]]\nname = \"b\"\nlisten = [\"127.0.0.1:443\", \"[::1]:8199\"]\nupstream = \"chat\"\n"
    );
    assert!(err_of(&both)
        .message
        .contains("overlaps 0.0.0.0:443 of listener[0]"));
    // Other families and ports do not clash.
    let fine = format!(
        "{ISSUE_EXAMPLE}\n[[listener]]\nname = \"b\"\nlisten = [\"127.0.0.1:444\", \"[::1]:8199\"]\nupstream = \"chat\"\n"
    );
    Config::from_toml(&fine, None).unwrap();
}

#[test]
fn relative_certificate_paths_resolve_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("relay.toml");
    let text = ISSUE_EXAMPLE.replace(
        "tls = \"self-signed\"",
        "tls = { cert = \"certs/fullchain.pem\", key = \"/etc/ssl/privkey.pem\" }",
    );
    std::fs::write(&path, text).unwrap();
    let c = Config::load(&path).unwrap();
    let TlsMode::Files { cert, key } = &c.listener[0].tls else {
        panic!("{:?}", c.listener[0].tls);
    };
    assert_eq!(cert, &dir.path().join("conf/certs/fullchain.pem"));
    assert_eq!(
        key,
        Path::new("/etc/ssl/privkey.pem"),
        "absolute paths stay"
    );
}

#[test]
fn an_upstream_that_is_a_listener_of_this_relay_is_refused() {
    for server in ["127.0.0.1:443", "0.0.0.0:443", "[::1]:443"] {
        let text = ISSUE_EXAMPLE.replace("g.whatsapp.net:5222", server);
        let c = Config::from_toml(&text, None).unwrap();
        let e = c.check_forwarding().unwrap_err();
        assert_eq!(e.key, "upstream.chat.servers[0]", "{server}: {e}");
        assert!(e.message.contains("would forward to itself"), "{e}");
        assert!(e.message.contains("listener[0] (`chat-tls`"), "{e}");
    }
    // Another port, or another host behind the wildcard, is fine.
    for server in ["127.0.0.1:5222", "192.0.2.7:443"] {
        let text = ISSUE_EXAMPLE.replace("g.whatsapp.net:5222", server);
        let c = Config::from_toml(&text, None).unwrap();
        c.check_forwarding().unwrap();
    }
}

#[test]
fn an_admin_endpoint_off_loopback_is_warned_about() {
    let mut c = Config::from_toml(ISSUE_EXAMPLE, None).unwrap();
    assert!(c.warnings().is_empty());
    for (addr, warned) in [
        ("0.0.0.0:8199", true),
        ("[::]:8199", true),
        ("192.0.2.1:8199", true),
        ("[::1]:8199", false),
        ("[::ffff:127.0.0.1]:8199", false),
        ("127.0.0.2:8199", false),
    ] {
        c.admin = Some(AdminConfig::new(addr.parse().unwrap()));
        let w = c.warnings();
        assert_eq!(w.len(), usize::from(warned), "{addr}: {w:?}");
        if warned {
            assert!(w[0].contains("not on loopback"), "{w:?}");
        }
    }
    c.admin = None;
    assert!(c.warnings().is_empty());
}

#[test]
fn durations_parse_and_print() {
    for (s, d) in [
        ("250ms", Duration::from_millis(250)),
        ("5s", Duration::from_secs(5)),
        ("3m", Duration::from_secs(180)),
        ("1h", Duration::from_secs(3600)),
        ("30d", Duration::from_secs(30 * 86_400)),
    ] {
        assert_eq!(s.parse::<Dur>().unwrap().0, d);
    }
    assert_eq!(Dur(Duration::from_secs(180)).to_string(), "180s");
    assert!("5".parse::<Dur>().is_err());
    assert!("s".parse::<Dur>().is_err());
    assert!("5w".parse::<Dur>().is_err());
}

#[test]
fn hostports() {
    let h: HostPort = "[::1]:5222".parse().unwrap();
    assert_eq!(h.host, "::1");
    assert_eq!(h.to_string(), "[::1]:5222");
    let h: HostPort = "Example.ORG:80".parse().unwrap();
    assert_eq!(h.to_string(), "example.org:80");
    assert!("::1:80".parse::<HostPort>().is_err());
}

#[test]
fn a_server_address_in_place_of_host_port_says_what_to_write() {
    let key = "A".repeat(43);
    let e = format!("ponte://chat.example.org:5222#{key}")
        .parse::<HostPort>()
        .unwrap_err();
    assert!(
        e.contains("is a Ponte server address; give only its HOST:PORT: `chat.example.org:5222`"),
        "{e}"
    );
    let e = "ponte://[::1]#x".parse::<HostPort>().unwrap_err();
    assert!(e.contains("give only its HOST:PORT"), "{e}");
    let e = "https://chat.example.org:443"
        .parse::<HostPort>()
        .unwrap_err();
    assert!(e.contains("without `https://`"), "{e}");
    let text = ISSUE_EXAMPLE.replace(
        "g.whatsapp.net:5222\"",
        &format!("ponte://h.example:5222#{key}\""),
    );
    let e = err_of(&text);
    assert_eq!(
        (e.line, e.key.as_str()),
        (6, "upstream.chat.servers[0]"),
        "{e}"
    );
    assert!(e.message.contains("`h.example:5222`"), "{e}");
}

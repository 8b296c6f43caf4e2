//! `ponte proxy -c FILE secret add|list|revoke` on a stealth relay's config.
#![allow(clippy::unwrap_used)]

use ponte_wire::link::RelayLink;
use std::process::Command;

fn ponte(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn add_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "[upstream.server]\nservers = [\"127.0.0.1:7000\"]\n[[listener]]\nname = \"stealth\"\nlisten = [\"127.0.0.1:8443\"]\nupstream = \"server\"\n[listener.stealth]\ncover = \"127.0.0.1:9443\"\ndomain = \"www.example.com\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (ok, out, err) = ponte(&[
        "proxy",
        "-c",
        c,
        "secret",
        "add",
        "--host",
        "relay.example.org",
        "--label",
        "family",
        "--expires",
        "30d",
        "--max-connections",
        "5",
    ]);
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let app = RelayLink::parse(lines.next().unwrap()).unwrap();
    let web_text = lines.next().unwrap();
    assert!(
        web_text.starts_with("https://www.example.com/relay#"),
        "{web_text}"
    );
    let web = RelayLink::parse(web_text).unwrap();
    assert_eq!(app, web);
    assert_eq!(app.port, 8443);
    let stealth = app.stealth.clone().unwrap();
    assert_eq!(stealth.sni, "www.example.com");
    assert!(out.contains('█'), "a QR code is drawn");

    let secrets = dir.path().join("secrets.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secrets).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (ok, _, err) = ponte(&[
        "proxy",
        "-c",
        c,
        "secret",
        "add",
        "--host",
        "r.example",
        "--label",
        "family",
    ]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, out, _) = ponte(&[
        "proxy",
        "-c",
        c,
        "secret",
        "add",
        "--host",
        "r.example",
        "--no-qr",
        "--web-base",
        "https://join.example.net/p/relay",
    ]);
    assert!(ok);
    assert!(
        out.contains("https://join.example.net/p/relay#host=r.example"),
        "{out}"
    );

    let (ok, list, _) = ponte(&["proxy", "-c", c, "secret", "list"]);
    assert!(ok);
    assert!(list.contains("family") && list.contains("link-1"), "{list}");
    assert!(
        !list.contains(&stealth.secret.to_text()),
        "list never shows a secret"
    );

    let (ok, _, _) = ponte(&["proxy", "-c", c, "secret", "revoke", "family"]);
    assert!(ok);
    let (_, list, _) = ponte(&["proxy", "-c", c, "secret", "list"]);
    assert!(
        !list.contains("family") && list.contains("link-1"),
        "{list}"
    );
    let (ok, _, err) = ponte(&["proxy", "-c", c, "secret", "revoke", "family"]);
    assert!(!ok && err.contains("no link labelled"), "{err}");
    let (ok, _, err) = ponte(&["proxy", "link", "-c", c, "--host", "r.example"]);
    assert!(!ok && err.contains("secret add"), "{err}");
}

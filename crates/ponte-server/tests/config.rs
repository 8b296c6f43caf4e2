//! The config file refuses out-of-range values with file, line and key; the
//! data directory's small files (`server.key`, `server.address`) and the
//! refusal to make an invite where no server runs.
#![allow(clippy::unwrap_used)]

use ponte_server::config::FileConfig;
use ponte_server::keyfile::{self, KeyFileError};
use ponte_server::{ServerConfig, ServerError};
use ponte_wire::address::ServerAddress;
use std::net::SocketAddr;
use std::path::Path;

fn refused(text: &str) -> String {
    FileConfig::parse(text, Path::new("/etc/ponte/server.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn zero_and_absurd_values_are_refused_with_file_line_and_key() {
    for (key, value) in [
        ("retention", "\"0s\""),
        ("notice_retention", "\"0s\""),
        ("expiry_interval", "\"0s\""),
        ("handshake_timeout", "\"0s\""),
        ("unauthenticated_timeout", "\"0ms\""),
        ("idle_timeout", "\"0s\""),
        ("idle_timeout", "\"10s\""),
        ("idle_timeout", "\"400d\""),
        ("handshake_timeout", "\"1d\""),
        ("retention", "\"100000d\""),
        ("commit_interval", "\"2s\""),
        ("max_connections", "0"),
        ("max_pending", "0"),
        ("max_body_len", "0"),
        ("max_body_len", "1000000"),
        ("max_one_time_keys", "0"),
    ] {
        // On line 3, after two good lines.
        let msg = refused(&format!(
            "invite_only = true\nlisten = \"127.0.0.1:5222\"\n{key} = {value}\n"
        ));
        assert!(
            msg.starts_with("/etc/ponte/server.toml:3:")
                && msg.contains(&format!(": {key}: must be")),
            "{key} = {value}: {msg}"
        );
    }
    for table in ["register_limit", "register_limit_per_peer"] {
        let msg = refused(&format!("[{table}]\nburst = 5\nper_hour = 0\n"));
        assert!(
            msg.starts_with("/etc/ponte/server.toml:3:")
                && msg.contains(&format!(": {table}.per_hour: must be at least 1")),
            "{msg}"
        );
        let msg = refused(&format!("[{table}]\nburst = 0\nper_hour = 5\n"));
        assert!(
            msg.starts_with("/etc/ponte/server.toml:2:")
                && msg.contains(&format!(": {table}.burst: must be at least 1")),
            "{msg}"
        );
    }
    let msg = refused("\nadmin = \"nowhere\"\n");
    assert!(
        msg.starts_with("/etc/ponte/server.toml:2:") && msg.contains(": admin: "),
        "{msg}"
    );
}

/// Every parse error is one line naming the file, the position and the
/// key's full path, as the relay's do; one that is about no key has no
/// empty key in its text.
#[test]
fn parse_errors_name_the_key_path_on_one_line() {
    for (text, start, key, what) in [
        (
            "[register_limit]\nper_hour = 5\nburst = \"x\"\n",
            "/etc/ponte/server.toml:3:",
            "register_limit.burst",
            "invalid type",
        ),
        (
            "invite_only = true\n[register_limit_per_peer]\nburst = 1\nper_hour = -1\n",
            "/etc/ponte/server.toml:4:",
            "register_limit_per_peer.per_hour",
            "invalid value",
        ),
        (
            "[register_limit]\nburst = 1\nper_hour = 1\ncolour = 2\n",
            "/etc/ponte/server.toml:4:",
            "register_limit.colour",
            "unknown field",
        ),
        (
            "invite_only = \"yes\"\n",
            "/etc/ponte/server.toml:1:",
            "invite_only",
            "invalid type",
        ),
        (
            "data = \"/d\"\nretension = \"1d\"\n",
            "/etc/ponte/server.toml:2:",
            "retension",
            "unknown field",
        ),
        (
            "max_connections = \"many\"\n",
            "/etc/ponte/server.toml:1:",
            "max_connections",
            "invalid type",
        ),
        (
            "retention = 30\n",
            "/etc/ponte/server.toml:1:",
            "retention",
            "invalid type: integer `30`, expected a duration in quotes",
        ),
        (
            "register_limit = 5\n",
            "/etc/ponte/server.toml:1:",
            "register_limit",
            "invalid type",
        ),
    ] {
        let msg = refused(text);
        assert!(
            msg.starts_with(start) && msg.contains(&format!(": {key}: {what}")),
            "{text:?}: {msg}"
        );
        assert!(!msg.contains('\n'), "{text:?}: {msg}");
        // The key once: no `burst: burst:`.
        let leaf = key.rsplit('.').next().unwrap();
        assert_eq!(msg.matches(&format!("{leaf}:")).count(), 1, "{msg}");
    }
    // TOML syntax: about no key.
    let msg = refused("invite_only = true\n[register_limit\n");
    assert!(
        msg.starts_with("/etc/ponte/server.toml:2:") && !msg.contains(": :"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn values_at_the_bounds_are_accepted() {
    let f = FileConfig::parse(
        "retention = \"1m\"\nnotice_retention = \"3650d\"\nexpiry_interval = \"1s\"\n\
         handshake_timeout = \"1s\"\nunauthenticated_timeout = \"5m\"\nidle_timeout = \"90s\"\n\
         commit_interval = \"0ms\"\nmax_connections = 1\nmax_pending = 1\n\
         max_body_len = 1024\nmax_one_time_keys = 50\n\
         [register_limit]\nburst = 1\nper_hour = 1\n",
        Path::new("server.toml"),
    )
    .unwrap();
    let mut cfg = ServerConfig::new("d", "127.0.0.1:0".parse().unwrap());
    f.apply(&mut cfg);
    assert_eq!(cfg.idle_timeout.as_secs(), 90);
    assert_eq!(cfg.max_one_time_keys, 50);
}

#[test]
fn a_missing_config_file_names_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = FileConfig::load(&dir.path().join("none.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.ends_with("none.toml: No such file or directory (os error 2)"),
        "{msg}"
    );
    // Not repeated by reporters that print the source chain.
    assert!(std::error::Error::source(&e).is_none());
}

#[test]
fn admin_loopback_check() {
    for ip in ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"] {
        assert!(ponte_server::is_loopback(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "2001:db8::1"] {
        assert!(!ponte_server::is_loopback(ip.parse().unwrap()), "{ip}");
    }
}

#[test]
fn the_printed_host_for_a_wildcard_listen_is_the_machine_name() {
    let any: SocketAddr = "0.0.0.0:5222".parse().unwrap();
    assert_eq!(
        ponte_server::display_host(None, any),
        ponte_server::machine_host_name()
    );
    let any6: SocketAddr = "[::]:5222".parse().unwrap();
    assert_eq!(
        ponte_server::display_host(None, any6),
        ponte_server::machine_host_name()
    );
    let lo: SocketAddr = "127.0.0.1:5222".parse().unwrap();
    assert_eq!(ponte_server::display_host(None, lo), "127.0.0.1");
    assert_eq!(
        ponte_server::display_host(Some("h.example"), any),
        "h.example"
    );
}

#[test]
fn the_address_record_round_trips_and_overrides_apply() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (kp, created) = keyfile::load_or_create(&data).unwrap();
    assert!(created);
    // No record yet: today's defaults (machine name, port 5222).
    let a = ponte_server::server_address(&data, None, None).unwrap();
    assert_eq!(a.port, 5222);
    assert_eq!(a.host, ponte_server::machine_host_name());
    assert_eq!(a.key, kp.public());

    let printed = ServerAddress {
        host: "127.0.0.1".into(),
        port: 23101,
        key: kp.public(),
    };
    keyfile::write_address(&data, &printed).unwrap();
    assert_eq!(keyfile::read_address(&data).unwrap(), Some(printed.clone()));
    assert_eq!(
        ponte_server::server_address(&data, None, None).unwrap(),
        printed
    );
    let a = ponte_server::server_address(&data, Some("relay.example.net"), None).unwrap();
    assert_eq!((a.host.as_str(), a.port), ("relay.example.net", 23101));
    let a = ponte_server::server_address(&data, None, Some(443)).unwrap();
    assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 443));
    // Rewritten in place, no temporary file left behind.
    let again = ServerAddress {
        port: 23102,
        ..printed
    };
    keyfile::write_address(&data, &again).unwrap();
    assert_eq!(keyfile::read_address(&data).unwrap(), Some(again));
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join(keyfile::ADDRESS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    // A damaged record is reported, not guessed around ...
    std::fs::write(data.join(keyfile::ADDRESS_FILE), "garbage\n").unwrap();
    let e = ponte_server::server_address(&data, None, None).unwrap_err();
    assert!(
        matches!(e, ServerError::Key(KeyFileError::BadAddress(_))),
        "{e}"
    );
    // ... unless both overrides make it unnecessary.
    let a = ponte_server::server_address(&data, Some("h"), Some(1)).unwrap();
    assert_eq!((a.host.as_str(), a.port), ("h", 1));
}

#[test]
fn no_key_and_not_a_directory_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let e = ponte_server::server_address(&dir.path().join("typo"), None, None).unwrap_err();
    assert!(
        matches!(e, ServerError::Key(KeyFileError::Missing { .. })),
        "{e}"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = keyfile::load_or_create(&file).unwrap_err();
    assert!(matches!(e, KeyFileError::NotADirectory(_)), "{e}");
    assert!(e.to_string().ends_with("file: not a directory"), "{e}");
    let e = keyfile::load_or_create(&file.join("sub")).unwrap_err();
    assert!(matches!(e, KeyFileError::NotADirectory(_)), "{e}");
}

#[test]
fn an_invite_needs_a_server_database() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let e = ponte_server::create_invite(&typo).unwrap_err();
    assert!(matches!(e, ServerError::NoDatabase(_)), "{e}");
    assert!(e.to_string().contains("typo"), "{e}");
    assert!(!typo.exists(), "nothing created");
    // A directory with a key but no database (never started) is refused too.
    keyfile::load_or_create(&typo).unwrap();
    let e = ponte_server::create_invite(&typo).unwrap_err();
    assert!(matches!(e, ServerError::NoDatabase(_)), "{e}");
    assert!(!typo.join("ponte.db").exists());
    // Once the server has opened its database there, invites work.
    drop(ponte_server::store::SqliteStore::open(&typo).unwrap());
    let token = ponte_server::create_invite(&typo).unwrap();
    assert_eq!(token.len(), 32);
}

/// A first start that fails after creating the key (here: its database
/// cannot be opened) removes what it created, so the next start creates
/// the key again and says so, instead of quietly using a key nobody was
/// warned about.
#[tokio::test]
async fn a_failed_first_start_leaves_no_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("ponte.db")).unwrap();
    let cfg = ServerConfig::new(&data, "127.0.0.1:0".parse().unwrap());
    let e = ponte_server::Server::bind(cfg.clone(), None)
        .await
        .unwrap_err();
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(
        msg.ends_with("ponte.db: not a file, so not a server database: move it away"),
        "{msg}"
    );
    let names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ponte.db"], "{msg}");

    // Invites and backups say the same, not that there is no ponte.db.
    let e = ponte_server::create_invite(&data).unwrap_err();
    assert!(
        matches!(e, ServerError::DatabaseNotAFile(_)) && e.to_string().contains("not a file"),
        "{e}"
    );
    let e = ponte_server::backup::backup(&data, &dir.path().join("copy")).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("ponte.db: not a file, so not a server database"),
        "{e}"
    );
    assert!(!dir.path().join("copy").exists());

    std::fs::remove_dir(data.join("ponte.db")).unwrap();
    let server = ponte_server::Server::bind(cfg, None).await.unwrap();
    assert!(server.key_created());
    drop(server);
}

/// A relative `data` in a config file is the config file's folder's, as a
/// relay's relative certificate paths are: the file means the same whatever
/// the working directory (a service manager's is often `/`).
#[test]
fn a_relative_data_directory_is_resolved_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let path = etc.join("server.toml");
    std::fs::write(&path, "data = \"ponte-data\"\n").unwrap();
    let f = FileConfig::load(&path).unwrap();
    assert_eq!(
        f.data,
        Some(std::path::absolute(&etc).unwrap().join("ponte-data"))
    );
    std::fs::write(&path, "data = \"/var/lib/ponte\"\n").unwrap();
    let f = FileConfig::load(&path).unwrap();
    assert_eq!(f.data, Some(Path::new("/var/lib/ponte").to_owned()));
    // Text parsed without a file keeps it as written.
    let f = FileConfig::parse("data = \"d\"\n", Path::new("server.toml")).unwrap();
    assert_eq!(f.data, Some(Path::new("d").to_owned()));
}

#![allow(clippy::unwrap_used)]
use super::*;
use std::path::Path;

#[test]
fn durations() {
    assert_eq!(
        parse_duration("30d").unwrap(),
        Duration::from_secs(30 * 86400)
    );
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert!(parse_duration("5 weeks").is_err());
    assert!(parse_duration("x").is_err());
}

#[test]
fn durations_are_formatted_as_parsed() {
    for s in ["0s", "500ms", "45s", "90m", "12h", "30d", "1500ms"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
    assert_eq!(format_duration(Duration::from_secs(300)), "5m");
}

#[test]
fn bounds_name_the_range() {
    assert_eq!(
        IDLE_TIMEOUT.parse("0s").unwrap_err(),
        "must be 90s to 1d, not 0s"
    );
    assert_eq!(IDLE_TIMEOUT.parse("90s").unwrap(), Duration::from_secs(90));
    assert!(RETENTION.parse("3651d").is_err());
    assert!(COMMIT_INTERVAL.parse("0s").is_ok());
    assert_eq!(
        MAX_PENDING.parse::<u32>("0").unwrap_err(),
        "must be at least 1, not 0"
    );
    assert!(MAX_ONE_TIME_KEYS.check(10_001_u32).is_err());
    assert!(MAX_CONNECTIONS.parse::<usize>("many").is_err());
}

#[test]
fn the_defaults_are_within_the_bounds() {
    let c = ServerConfig::new("d", "0.0.0.0:5222".parse().unwrap());
    for (b, d) in [
        (RETENTION, c.retention),
        (NOTICE_RETENTION, c.notice_retention),
        (EXPIRY_INTERVAL, c.expiry_interval),
        (HANDSHAKE_TIMEOUT, c.handshake_timeout),
        (UNAUTHENTICATED_TIMEOUT, c.unauthenticated_timeout),
        (IDLE_TIMEOUT, c.idle_timeout),
        (COMMIT_INTERVAL, c.commit_interval),
    ] {
        assert!(b.check(d).is_ok(), "{}", b.key);
    }
    assert!(MAX_CONNECTIONS.check(c.max_connections).is_ok());
    assert!(MAX_PENDING.check(c.max_pending_per_mailbox).is_ok());
    assert!(MAX_BODY_LEN.check(c.max_body_len).is_ok());
    assert!(MAX_ONE_TIME_KEYS.check(c.max_one_time_keys).is_ok());
    assert!(MAX_BLOB_SIZE.check(c.max_blob_size).is_ok());
    assert!(BLOB_QUOTA_PER_ACCOUNT
        .check(c.blob_quota_per_account)
        .is_ok());
    assert!(BLOB_RETENTION.check(c.blob_retention()).is_ok());
    for r in [c.register_limit, c.register_limit_per_peer] {
        assert!(RATE_LIMIT_BURST.check(r.burst).is_ok());
        assert!(RATE_LIMIT_PER_HOUR.check(r.per_hour).is_ok());
    }
}

#[test]
fn commit_interval_is_a_setting_with_bounds() {
    let p = Path::new("server.toml");
    let mut cfg = ServerConfig::new("d", "0.0.0.0:5222".parse().unwrap());
    assert_eq!(cfg.commit_interval, Duration::from_millis(3));
    FileConfig::parse("commit_interval = \"0ms\"\n", p)
        .unwrap()
        .apply(&mut cfg);
    assert_eq!(cfg.commit_interval, Duration::ZERO);
    let e = FileConfig::parse("commit_interval = \"2s\"\n", p).unwrap_err();
    assert!(e.to_string().contains("commit_interval"), "{e}");
}

#[test]
fn blob_settings_apply_with_bounds() {
    let p = Path::new("server.toml");
    let mut cfg = ServerConfig::new("d", "0.0.0.0:5222".parse().unwrap());
    assert_eq!(cfg.max_blob_size, 100 * 1024 * 1024);
    assert_eq!(cfg.blob_retention(), cfg.retention);
    FileConfig::parse(
        "max_blob_size = 2048\nblob_quota_per_account = 4096\nblob_retention = \"2d\"\n",
        p,
    )
    .unwrap()
    .apply(&mut cfg);
    assert_eq!(cfg.max_blob_size, 2048);
    assert_eq!(cfg.blob_quota_per_account, 4096);
    assert_eq!(cfg.blob_retention(), Duration::from_secs(2 * 86400));
    let e = FileConfig::parse("max_blob_size = 10\n", p).unwrap_err();
    assert!(e.to_string().contains("max_blob_size"), "{e}");
}

#[test]
fn file_config_applies_and_refuses_unknown_keys() {
    let p = Path::new("server.toml");
    let f = FileConfig::parse(
        "listen = \"127.0.0.1:6000\"\ninvite_only = true\nretention = \"2d\"\nadmin = \"off\"\n\
         [register_limit]\nburst = 1\nper_hour = 2\n",
        p,
    )
    .unwrap();
    let mut cfg = ServerConfig::new("d", "0.0.0.0:5222".parse().unwrap());
    f.apply(&mut cfg);
    assert!(cfg.invite_only);
    assert_eq!(cfg.listen.port(), 6000);
    assert_eq!(cfg.retention, Duration::from_secs(2 * 86400));
    assert_eq!(cfg.register_limit.per_hour, 2);
    assert_eq!(f.admin_addr(), Some(None));
    let e = FileConfig::parse("invite_only = true\nretension = \"1d\"\n", p).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("server.toml:2:1: retension: unknown field"),
        "{msg}"
    );
    let e = FileConfig::parse("retention = \"soon\"\n", p).unwrap_err();
    assert!(e.to_string().contains("retention"), "{e}");
    assert!(FileConfig::parse("max_connections = 0\n", p).is_err());
    assert!(FileConfig::parse("max_pre_login_per_address = 0\n", p).is_err());
    let f = FileConfig::parse("max_pre_login_per_address = 16\n", p).unwrap();
    let mut c = ServerConfig::new("x", "127.0.0.1:1".parse().unwrap());
    assert_eq!(c.max_pre_login_per_address, 256);
    f.apply(&mut c);
    assert_eq!(c.max_pre_login_per_address, 16);
    assert!(FileConfig::parse("admin = \"nowhere\"\n", p).is_err());
}

/// `store` takes a PostgreSQL address and nothing else, without repeating
/// a refused value (it may hold a password); `blob_dir` is resolved from
/// the file's folder like `data`, and both reach the server config.
#[test]
fn store_and_blob_dir() {
    let path = Path::new("/etc/ponte/server.toml");
    let f = FileConfig::parse(
        "store = \"postgres://ponte@db.internal:5432/ponte\"\nblob_dir = \"/srv/blobs\"\n",
        path,
    )
    .unwrap();
    let mut cfg = ServerConfig::new("d", "127.0.0.1:0".parse().unwrap());
    f.apply(&mut cfg);
    assert_eq!(
        cfg.store.as_deref(),
        Some("postgres://ponte@db.internal:5432/ponte")
    );
    assert_eq!(cfg.blob_dir.as_deref(), Some(Path::new("/srv/blobs")));
    for bad in [
        "mysql://u:hunter2@h/db",
        "postgres://u:hunter2@h:notaport/db",
    ] {
        let e = FileConfig::parse(&format!("store = \"{bad}\"\n"), path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("store"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    assert!(check_store("postgresql://u@127.0.0.1/x").is_ok());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "blob_dir = \"blobs\"\n").unwrap();
    let f = FileConfig::load(&file).unwrap();
    assert_eq!(
        f.blob_dir.unwrap(),
        std::path::absolute(dir.path()).unwrap().join("blobs")
    );
}

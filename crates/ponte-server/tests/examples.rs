//! Every server example config parses and means what it says.
#![allow(clippy::unwrap_used)]

use ponte_server::config::FileConfig;
use ponte_server::ServerConfig;
use std::path::PathBuf;

#[test]
fn every_server_example_parses() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("server") && name.ends_with(".toml") {
            let f = FileConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let mut cfg = ServerConfig::new("x", "127.0.0.1:1".parse().unwrap());
            f.apply(&mut cfg);
            n += 1;
        }
    }
    assert!(n >= 1, "found {n} server examples");
    let f = FileConfig::load(&dir.join("server.toml")).unwrap();
    let mut cfg = ServerConfig::new("x", "127.0.0.1:1".parse().unwrap());
    f.apply(&mut cfg);
    assert_eq!(cfg.listen, "0.0.0.0:5222".parse().unwrap());
    assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/ponte"));
    assert_eq!(
        f.admin_addr(),
        Some(Some("127.0.0.1:8299".parse().unwrap()))
    );
    assert_eq!(cfg.register_limit.burst, 5);
}

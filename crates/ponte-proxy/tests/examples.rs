//! Every relay example config parses, and the written-out WhatsApp layout is
//! exactly the built-in preset.
#![allow(clippy::unwrap_used)]

use ponte_proxy::{Config, Preset};
use std::path::PathBuf;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_relay_example_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("relay-") && name.ends_with(".toml") {
            let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            // And it prints back to something that loads to the same config.
            assert_eq!(Config::from_toml(&cfg.to_toml(), None).unwrap(), cfg);
            n += 1;
        }
    }
    assert!(n >= 3, "found {n} relay examples");
}

#[test]
fn whatsapp_example_is_the_preset() {
    let file = Config::load(&examples().join("relay-whatsapp.toml")).unwrap();
    assert_eq!(file, Config::preset(Preset::Whatsapp, None).unwrap());
}

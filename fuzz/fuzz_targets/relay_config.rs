//! Fuzz target for the relay's config loader: any text gives a config or a
//! located error, never a panic; a config that loads prints to TOML that
//! loads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_proxy::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::from_toml(text, None) {
        let printed = cfg.to_toml();
        let back = Config::from_toml(&printed, None).expect("printed config loads");
        assert_eq!(back, cfg);
    }
});

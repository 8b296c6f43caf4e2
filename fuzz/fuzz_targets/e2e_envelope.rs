//! Fuzz target for the end-to-end decoders a client runs on what the server
//! hands it: `Ciphertext::from_bytes` (and the pre-key sender it exposes),
//! `GroupCiphertext::from_bytes`, `Envelope::decode` (versions 1 and 2,
//! the latter with a disappearing-message timer; every kind: text, read
//! receipt, file, group text, sender key, group op, timer setting, group
//! file, group log; with the extensions after the body, such as a reply's
//! quoted id, in 1:1 and group envelopes alike) and `TimerSetting::from_bytes`. No panic; whatever
//! decodes re-encodes to bytes that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_e2e::group::GroupCiphertext;
use ponte_e2e::{Ciphertext, Envelope, Identity, TimerSetting};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Ciphertext::from_bytes(data) {
        let _ = Identity::prekey_sender(&c);
        let again = Ciphertext::from_bytes(&c.to_bytes()).expect("re-encoded ciphertext decodes");
        assert_eq!(again, c);
    }
    if let Ok(c) = GroupCiphertext::from_bytes(data) {
        let again = GroupCiphertext::from_bytes(&c.to_bytes())
            .expect("re-encoded group ciphertext decodes");
        assert_eq!(again, c);
    }
    if let Ok((env, ext)) = Envelope::decode_with(data) {
        // Unknown extensions are skipped, so the known ones round-trip.
        let bytes = env.encode_with(&ext).expect("a decoded envelope re-encodes");
        assert_eq!(
            Envelope::decode_with(&bytes).expect("re-encoded envelope decodes"),
            (env.clone(), ext)
        );
        assert_eq!(Envelope::decode(data).expect("decodes without extensions"), env);
    }
    if let Ok(setting) = TimerSetting::from_bytes(data) {
        assert_eq!(
            TimerSetting::from_bytes(&setting.to_bytes()).expect("re-encoded setting decodes"),
            setting
        );
    }
});

//! Fuzz target for `SignedOp::decode` (a group op received pairwise from
//! any member) and `GroupState::apply` on what decodes. No panic; whatever
//! decodes re-encodes to the same bytes; a fuzzed op never applies to a
//! group whose admin did not sign it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ponte_e2e::group::{GroupState, SignedOp};
use ponte_e2e::Identity;
use std::sync::OnceLock;

fn group() -> &'static GroupState {
    static GROUP: OnceLock<GroupState> = OnceLock::new();
    GROUP.get_or_init(|| {
        let admin = Identity::generate();
        GroupState::create(&admin, "admin", "fuzz", 1)
            .expect("a fresh group")
            .0
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = SignedOp::decode(data) {
        let bytes = op.encode().expect("a decoded op re-encodes");
        assert_eq!(bytes, data);
        assert!(group().apply(&op).is_err(), "a forged op applied");
        let _ = GroupState::from_create(&op);
    }
});

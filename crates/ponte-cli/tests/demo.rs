//! `ponte demo` (the README's first command) runs by itself, on loopback
//! only, and exits 0 after showing a conversation through the relay.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{ok, wait_output, PONTE};

#[test]
fn demo_runs_a_conversation_through_the_relay_and_exits_0() {
    let child = Command::new(PONTE)
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = ok(&wait_output(child, Duration::from_secs(120)));
    // The direct route failed, the relay carried everything.
    assert!(stdout.contains("FAIL  direct tcp 127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains("in use: relay tls://127.0.0.1:"),
        "{stdout}"
    );
    // Both messages arrived, with their ticks.
    assert!(stdout.contains("(received)"), "{stdout}");
    assert!(stdout.contains("[✓✓ read]"), "{stdout}");
    // A sample of relay bytes, and nothing readable in them.
    assert!(
        stdout.contains("000000  0d 0a 0d 0a 00 0d 0a 51"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("not found").count(), 8, "{stdout}");
    assert!(!stdout.contains("FOUND"), "{stdout}");
    // The temporary directory is gone.
    let line = stdout.lines().find(|l| l.starts_with("Files: ")).unwrap();
    let dir = line
        .trim_start_matches("Files: ")
        .trim_end_matches(" (deleted at the end)");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

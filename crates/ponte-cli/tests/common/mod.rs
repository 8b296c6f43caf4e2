//! Helpers shared by the ponte-cli process tests.
//!
//! Relays bind port 0 and the test reads the ports they got from their log:
//! picking a "free" port first and handing it to the relay races with every
//! other socket on the machine (a parallel test, an outgoing connection's
//! local port), and the relay then exits with "address in use".
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `ponte proxy`, with the address each listener bound.
pub struct Proxy {
    pub child: Killed,
    pub listeners: HashMap<String, SocketAddr>,
    /// Everything the relay logged so far (kept draining in the background).
    pub log: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts `ponte proxy --no-admin --config cfg` and waits until every
    /// listener in `names` has logged its address. Panics with the relay's
    /// log if it exits first or `wait` runs out.
    pub fn start(cfg: &Path, names: &[&str], wait: Duration) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
            .args(["proxy", "--no-admin", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Killed(child);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<(String, SocketAddr)>();
        let log2 = log.clone();
        // Drains the pipe for the relay's whole life, so it never blocks on
        // a full stderr.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(found) = listening(&line) {
                    let _ = tx.send(found);
                }
                let mut log = log2.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let start = Instant::now();
        let mut listeners = HashMap::new();
        while !names.iter().all(|n| listeners.contains_key(*n)) {
            let left = wait.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok((name, addr)) => {
                    listeners.insert(name, addr);
                }
                Err(e) => panic!(
                    "relay {} did not bind {names:?} ({e}); its log:\n{}",
                    cfg.display(),
                    log.lock().unwrap()
                ),
            }
        }
        Self {
            child,
            listeners,
            log,
        }
    }

    /// The address listener `name` bound.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }
}

/// Parses `… listening on 127.0.0.1:PORT listener=NAME` (one address per
/// listener here).
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.split("listening on ").nth(1)?;
    let (addr, rest) = rest.split_once(' ')?;
    let name = rest.split("listener=").nth(1)?.split_whitespace().next()?;
    Some((name.to_owned(), addr.trim_end_matches(',').parse().ok()?))
}

//! Helpers for the multi-node tests (`scale_*.rs`): server nodes that
//! can be SIGKILLed and restarted on the same ports, TLS relays in front of
//! several nodes, a cluster of three nodes behind two relays, a
//! test-owned `nats-server` (restartable on its port; a test-owned
//! PostgreSQL is in `own_pg.rs`), `/healthz` and `/metrics` over plain HTTP, and senders
//! that send numbered messages in a loop and remember which ones the
//! server acknowledged. Included with `#[path]` by the tests that use it,
//! beside `mod common`.
#![allow(dead_code)]

use crate::common::{command, stderr, wait_output, Killed, Listen, Proxy, PONTE, WAIT};
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 100 ms until it holds; panics with `what` after
/// `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback port nothing listens on right now (for processes that cannot
/// bind port 0 and say which port they got).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lines of a child's pipe kept in a shared string (drained for the
/// child's whole life), each also offered to `tx`.
pub fn drain_into(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

// ---------------------------------------------------------------- nodes

/// `ponte server init --store URL --data first`, then a copy of the
/// service's key into every other directory (one service, one address).
pub fn init_service(store: &str, dirs: &[PathBuf]) {
    let child = Command::new(PONTE)
        .args(["server", "init", "--store", store, "--data"])
        .arg(&dirs[0])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, WAIT);
    assert!(out.status.success(), "init: {}", stderr(&out));
    for d in &dirs[1..] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(dirs[0].join("server.key"), d.join("server.key")).unwrap();
    }
}

/// One `ponte server` node, restartable on the same listen and admin ports.
pub struct Node {
    pub data: PathBuf,
    pub args: Vec<String>,
    pub child: Option<Killed>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub key: String,
    /// Its log (stderr), across restarts.
    pub log: Arc<Mutex<String>>,
}

impl Node {
    /// Starts a node on fresh loopback ports with an admin endpoint.
    pub fn start(data: &Path, args: &[&str]) -> Self {
        let mut n = Self {
            data: data.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            key: String::new(),
            log: Arc::new(Mutex::new(String::new())),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let mut child = Command::new(PONTE)
            .args(["server", "--listen", &self.addr.to_string()])
            .args(["--admin", &self.admin.to_string(), "--data"])
            .arg(&self.data)
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        drain_into(
            child.stdout.take().unwrap(),
            Arc::new(Mutex::new(String::new())),
            Some(tx.clone()),
        );
        drain_into(child.stderr.take().unwrap(), self.log.clone(), Some(tx));
        self.child = Some(Killed(child));
        let (mut addr, mut admin) = (None, None);
        let start = Instant::now();
        while addr.is_none() || admin.is_none() {
            let left = WAIT.saturating_sub(start.elapsed());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "node {} did not start; its log:\n{}",
                    self.data.display(),
                    self.log.lock().unwrap()
                );
            };
            if let Some(rest) = line.strip_prefix("ponte://") {
                let (hostport, key) = rest.split_once('#').unwrap();
                addr = Some(hostport.parse::<SocketAddr>().unwrap());
                self.key = key.to_owned();
            } else if let Some(rest) = line.split("admin endpoint on http://").nth(1) {
                admin = rest.split('/').next().and_then(|a| a.parse().ok());
            }
        }
        (self.addr, self.admin) = (addr.unwrap(), admin.unwrap());
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Its address, `ponte://IP:PORT#KEY`.
    pub fn address(&self) -> String {
        format!("ponte://{}#{}", self.addr, self.key)
    }

    /// `GET /healthz`: status code and body (`None` if it did not answer).
    pub fn healthz(&self) -> Option<(u16, String)> {
        http_get(self.admin, "/healthz")
    }
}

/// A plain HTTP/1.0 GET on loopback: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// A `ponte proxy` with one self-signed TLS listener whose upstream holds
/// `servers` in this order of preference, with a PROXY v2 header.
pub fn tls_relay(dir: &Path, name: &str, servers: &[SocketAddr]) -> (Proxy, String) {
    let cfg = dir.join(format!("{name}.toml"));
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [{}]\nsend_proxy = \"v2\"\n\
             health_check_interval = \"1s\"\n\n\
             [[listener]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\n\
             upstream = \"server\"\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let proxy = Proxy::start(&cfg, &["tls"], WAIT);
    let url = format!("tls://{}", proxy.addr("tls"));
    (proxy, url)
}

// ---------------------------------------------------------------- a cluster

/// Three nodes on one PostgreSQL database and one NATS, sharing one blob
/// directory, behind two TLS relays whose upstream lists hold all three:
/// relay A prefers node 1, relay B node 3, node 2 is second in both.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Relay A and relay B (kept running).
    pub relays: Vec<Proxy>,
    /// Their `tls://` URLs.
    pub vias: Vec<String>,
    /// The service's address with a refused direct route: a profile
    /// registered with it reaches the service through its relays only.
    pub nowhere: String,
    /// The blob directory every node shares (`--blob-dir`).
    pub blob_dir: PathBuf,
}

impl Cluster {
    /// Initialises the service in `store` and starts it in `dir`, on the
    /// bus `bus`; `config` is added to the nodes' config file (top-level
    /// keys). Registrations from 127.0.0.1 are allowed well beyond the
    /// default limit (which counts across the nodes).
    pub fn start(dir: &Path, store: &str, bus: &str, config: &str) -> Self {
        let dirs: Vec<_> = (1..=3).map(|i| dir.join(format!("node{i}"))).collect();
        init_service(store, &dirs);
        let blob_dir = dir.join("blobs");
        let cfg = dir.join("server.toml");
        std::fs::write(
            &cfg,
            format!("{config}\n[register_limit]\nburst = 50\nper_hour = 50\n"),
        )
        .unwrap();
        let args = [
            "--store",
            store,
            "--bus",
            bus,
            "--config",
            cfg.to_str().unwrap(),
            "--blob-dir",
            blob_dir.to_str().unwrap(),
        ];
        let nodes: Vec<Node> = dirs.iter().map(|d| Node::start(d, &args)).collect();
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
        let (relay_a, a) = tls_relay(dir, "a", &[addrs[0], addrs[1], addrs[2]]);
        let (relay_b, b) = tls_relay(dir, "b", &[addrs[2], addrs[1], addrs[0]]);
        let nowhere = format!(
            "ponte://127.0.0.1:{}#{}",
            crate::common::closed_port(),
            nodes[0].key
        );
        Self {
            nodes,
            relays: vec![relay_a, relay_b],
            vias: vec![a, b],
            nowhere,
            blob_dir,
        }
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// A counter of a node's `/metrics` (the sum of the lines whose name
/// contains `name`); 0 when the node does not answer.
pub fn metric(node: &Node, name: &str) -> u64 {
    let Some((200, body)) = http_get(node.admin, "/metrics") else {
        return 0;
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| k.split('{').next().is_some_and(|k| k.contains(name)))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `ponte register --server ADDRESS NAME --via URL…`, checked.
pub fn register_via(profile: &Path, address: &str, name: &str, vias: &[&str]) {
    let mut args = vec!["register", "--server", address, name, "--json"];
    for v in vias {
        args.extend(["--via", v]);
    }
    crate::common::assert_registered(&crate::common::ponte(profile, &args), name);
}

// ---------------------------------------------------------------- NATS

/// The NATS the tests share (`PONTE_TEST_NATS`, by default the local one).
pub fn nats_url() -> String {
    std::env::var("PONTE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Whether the shared NATS answers with its INFO line; prints why not (or
/// panics with `PONTE_REQUIRE_PG=1`).
pub fn nats_reachable() -> bool {
    let url = nats_url();
    let hostport = url.trim_start_matches("nats://").to_owned();
    let probe = || -> Result<(), String> {
        let addr: SocketAddr = hostport.parse().map_err(|e| format!("{e}"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("{e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| format!("{e}"))?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head).map_err(|e| format!("{e}"))?;
        if &head == b"INFO" {
            Ok(())
        } else {
            Err("not a NATS server".to_owned())
        }
    };
    match probe() {
        Ok(()) => true,
        Err(e) if std::env::var("PONTE_REQUIRE_PG").as_deref() == Ok("1") => {
            panic!("NATS at {url} is required (PONTE_REQUIRE_PG=1) but not reachable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: NATS at {url} is not reachable ({e}); set PONTE_TEST_NATS");
            false
        }
    }
}

/// The nats-server binary the test-owned NATS runs.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A `nats-server -js` of the test's own (never the machine's shared one),
/// with its store in a temp directory, restartable on the same port.
pub struct OwnNats {
    store: PathBuf,
    pub port: u16,
    child: Option<Killed>,
    pub log: Arc<Mutex<String>>,
}

impl OwnNats {
    /// Starts it on a port it picks (`-p -1`); `None` (with the reason
    /// printed) when the binary is not there.
    pub fn start(dir: &Path) -> Option<Self> {
        if !Path::new(NATS_SERVER).is_file() {
            eprintln!("skipped: {NATS_SERVER} is not installed");
            return None;
        }
        let mut n = Self {
            store: dir.join("nats-store"),
            port: 0,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        };
        n.spawn("-1");
        Some(n)
    }

    fn spawn(&mut self, port: &str) {
        let mut child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        drain_into(child.stderr.take().unwrap(), self.log.clone(), Some(tx));
        self.child = Some(Killed(child));
        let start = Instant::now();
        loop {
            let left = WAIT.saturating_sub(start.elapsed());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!("nats-server did not start:\n{}", self.log.lock().unwrap());
            };
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                self.port = rest.trim().rsplit(':').next().unwrap().parse().unwrap();
            }
            if line.contains("Server is ready") {
                break;
            }
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        self.spawn(&port);
    }
}

// ---------------------------------------------------------------- traffic

/// What one `ponte send` of a sender loop got.
#[derive(Clone, Debug)]
pub struct Sent {
    pub index: usize,
    pub text: String,
    /// The status it printed (`sent`, `queued`, …), or the failure.
    pub status: String,
}

impl Sent {
    /// The server made it durable (one tick or more).
    pub fn acknowledged(&self) -> bool {
        matches!(self.status.as_str(), "sent" | "delivered" | "read")
    }
}

/// A thread sending `PREFIX N` for N = 0, 1, … from a profile to a handle,
/// one `ponte send` at a time, until stopped.
pub struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    thread: Option<thread::JoinHandle<()>>,
    pub prefix: String,
}

impl Sender {
    pub fn start(profile: &Path, to: &str, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (s, log) = (stop.clone(), sent.clone());
        let (profile, to, p) = (profile.to_owned(), to.to_owned(), prefix.to_owned());
        let thread = thread::spawn(move || {
            let mut index = 0;
            while !s.load(Ordering::Relaxed) {
                let text = format!("{p} {index:04}");
                let child = command(&profile, &["send", &to, &text, "--json"])
                    .spawn()
                    .unwrap();
                let out = wait_output(child, WAIT);
                let status = crate::common::json_lines(&crate::common::stdout(&out))
                    .first()
                    .and_then(|v| v["status"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("exit {:?}: {}", out.status, stderr(&out)));
                log.lock().unwrap().push(Sent {
                    index,
                    text,
                    status,
                });
                index += 1;
            }
        });
        Self {
            stop,
            sent,
            thread: Some(thread),
            prefix: prefix.to_owned(),
        }
    }

    /// How many sends were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.acknowledged())
            .count()
    }

    /// Waits (up to `limit`) until `more` sends beyond the current count
    /// were acknowledged.
    pub fn wait_more(&self, more: usize, limit: Duration) {
        let target = self.acknowledged() + more;
        wait_until(
            limit,
            &format!("{} acknowledged sends", self.prefix),
            || self.acknowledged() >= target,
        );
    }

    /// Stops after the send in progress; every send made.
    pub fn stop(&mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.sent.lock().unwrap().clone()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `listen` shows the text of every acknowledged send of
/// `sent`.
pub fn wait_all(listen: &mut Listen, sent: &[Sent]) {
    for s in sent.iter().filter(|s| s.acknowledged()) {
        listen.wait_for(&s.text);
    }
}

/// The numbers of the `PREFIX N` messages from `from` that `seen` (a
/// listen's lines) shows, in the order shown.
pub fn shown(seen: &[serde_json::Value], from: &str, prefix: &str) -> Vec<usize> {
    seen.iter()
        .filter(|m| m["from"] == from)
        .filter_map(|m| {
            m["text"]
                .as_str()?
                .strip_prefix(prefix)?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// Every acknowledged message of `sent` is in `shown`, and `shown` is
/// strictly increasing (in order, none twice).
pub fn assert_once_in_order(sent: &[Sent], shown: &[usize], what: &str) {
    for w in shown.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: shown out of order or twice ({} then {}): {shown:?}",
            w[0],
            w[1]
        );
    }
    for s in sent.iter().filter(|s| s.acknowledged()) {
        assert!(
            shown.contains(&s.index),
            "{what}: acknowledged {:?} never shown; shown {shown:?}; sends {sent:?}",
            s.text
        );
    }
}

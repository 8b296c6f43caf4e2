//! Helpers shared by the ponte-cli process tests: a `ponte server` and
//! `ponte proxy` relays as child processes, a recording TCP forwarder, and
//! the client commands run with a deadline.
//!
//! Relays bind port 0 and the test reads the ports they got from their log:
//! picking a "free" port first and handing it to the relay races with every
//! other socket on the machine (a parallel test, an outgoing connection's
//! local port), and the relay then exits with "address in use".
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const PONTE: &str = env!("CARGO_BIN_EXE_ponte");
/// How long a process may take to start or a client command to finish.
pub const WAIT: Duration = Duration::from_secs(60);

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Killed {
    /// SIGKILL (no shutdown path runs), and wait until it is gone.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- server

/// A running `ponte server`, with the address it printed.
pub struct Server {
    pub child: Killed,
    pub addr: SocketAddr,
    pub key: String,
}

impl Server {
    /// `ponte server` on a fresh loopback port, data in `data`.
    pub fn start(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// The same with more arguments (`--invite-only`, `--config FILE`, …).
    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        Self::spawn(&mut Self::command(data, extra))
    }

    /// The command line of [`Server::start_with`], to adjust before
    /// [`Server::spawn`] (an environment variable, say).
    pub fn command(data: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(PONTE);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--no-admin", "--data"])
            .arg(data)
            .args(extra);
        cmd
    }

    /// Spawns a `ponte server` command and waits (up to [`WAIT`]) for the
    /// `ponte://IP:PORT#KEY` line it prints on stdout.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let child = Killed(child);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ponte://") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx.recv_timeout(WAIT).expect("server printed its address");
        let rest = line.strip_prefix("ponte://").unwrap();
        let (hostport, key) = rest.split_once('#').unwrap();
        Self {
            child,
            addr: hostport.parse().unwrap(),
            key: key.to_owned(),
        }
    }

    /// The address it printed, `ponte://IP:PORT#KEY`.
    pub fn address(&self) -> String {
        format!("ponte://{}#{}", self.addr, self.key)
    }

    /// The address users get when the route to the server is
    /// `127.0.0.1:port` (a forwarder or relay in front of it, or nothing).
    pub fn address_at(&self, port: u16) -> String {
        format!("ponte://127.0.0.1:{port}#{}", self.key)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        self.child.kill();
    }
}

// ---------------------------------------------------------------- forwarder

/// Copies `from` into `into` until either side ends, appending every byte
/// read to `log` before `edit(offset, bytes)` may change it on the way
/// (`offset`: where `bytes` start in this direction's stream).
pub fn pipe(
    mut from: TcpStream,
    mut into: TcpStream,
    log: Arc<Mutex<Vec<u8>>>,
    edit: impl Fn(usize, &mut [u8]),
) {
    let mut buf = [0u8; 16 * 1024];
    let mut offset = 0usize;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                edit(offset, &mut buf[..n]);
                offset += n;
                if into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = into.shutdown(std::net::Shutdown::Write);
}

/// Accepts on 127.0.0.1 and relays each connection to the current target,
/// so one server address can lead to different server processes; records
/// every byte in both directions.
pub struct Forwarder {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    log: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, l, s) = (target.clone(), log.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let to = *t.lock().unwrap();
                        let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        else {
                            continue; // server down: the client sees a closed connection
                        };
                        for (from, into) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let log = l.clone();
                            thread::spawn(move || pipe(from, into, log, |_, _| {}));
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            target,
            log,
            stop,
        }
    }

    /// Later connections go to `to`.
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    /// Every byte forwarded so far, both directions interleaved.
    pub fn captured(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- client commands

/// `ponte ARGS… --profile PROFILE`, with no passphrase or profile from the
/// environment, stdin closed and the output captured.
pub fn command(profile: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(PONTE);
    cmd.args(args)
        .arg("--profile")
        .arg(profile)
        .env_remove("PONTE_PASSPHRASE")
        .env_remove("PONTE_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a client command (see [`command`]) with a deadline of [`WAIT`].
pub fn ponte(profile: &Path, args: &[&str]) -> Output {
    wait_output(command(profile, args).spawn().unwrap(), WAIT)
}

/// The child's output once it exits; kills it and panics after `limit`.
/// Both pipes are read while it runs: a command can print more than a
/// pipe holds (a `sync` of long messages) and would block on a full one.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Its stdout, after checking it succeeded (else panics showing both streams).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// One JSON value a non-blank line (what `--json` prints).
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The messages among `lines` whose text is `text`.
pub fn with_text<'a>(lines: &'a [serde_json::Value], text: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|v| v["text"] == text).collect()
}

/// Checks the output of `ponte register … --json`: it succeeded, as `name`.
pub fn assert_registered(out: &Output, name: &str) {
    assert_eq!(json_lines(&ok(out))[0]["handle"], name);
}

/// `ponte register --server ADDRESS NAME` on `profile`, checked.
pub fn register(profile: &Path, address: &str, name: &str) {
    let out = ponte(profile, &["register", "--server", address, name, "--json"]);
    assert_registered(&out, name);
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------- relay

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
        let mut child = Command::new(PONTE)
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

// ---------------------------------------------------------------- listen

/// `ponte listen --json` on a profile, its lines read as they come and its
/// stderr kept (killed when dropped).
pub struct Listen {
    child: Option<Killed>,
    lines: mpsc::Receiver<String>,
    notices: Arc<Mutex<String>>,
    /// Every JSON line read so far.
    pub seen: Vec<serde_json::Value>,
}

impl Listen {
    pub fn start(profile: &Path) -> Self {
        Self::start_with(profile, &[])
    }

    /// [`Listen::start`] with more arguments for `ponte listen`.
    pub fn start_with(profile: &Path, args: &[&str]) -> Self {
        let args: Vec<&str> = ["listen", "--json"].iter().chain(args).copied().collect();
        let mut child = command(profile, &args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let notices = Arc::new(Mutex::new(String::new()));
        let n2 = notices.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut n = n2.lock().unwrap();
                n.push_str(&line);
                n.push('\n');
            }
        });
        Self {
            child: Some(Killed(child)),
            lines,
            notices,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one has `text` (at most [`WAIT`]).
    pub fn wait_for(&mut self, text: &str) {
        let start = Instant::now();
        while !self.seen.iter().any(|m| m["text"] == text) {
            let left = WAIT.saturating_sub(start.elapsed());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("listen never showed {text:?}: {:?}", self.seen));
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
    }

    /// Gives a duplicate 700 ms to show up, stops listening, reads what is
    /// left and returns the stderr notices.
    pub fn stop(&mut self) -> String {
        thread::sleep(Duration::from_millis(700));
        self.child.take();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
        self.notices.lock().unwrap().clone()
    }

    /// Waits (at most [`WAIT`]) until its stderr has `text` (e.g.
    /// "connected to"), and returns that stderr.
    pub fn wait_notice(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            let notices = self.notices.lock().unwrap().clone();
            if notices.contains(text) {
                return notices;
            }
            assert!(
                start.elapsed() < WAIT,
                "listen never said {text:?}: {notices}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many lines from `from` have `text`.
    pub fn count(&self, text: &str, from: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m["text"] == text && m["from"] == from)
            .count()
    }
}

/// A loopback port that refuses connections for the rest of the test
/// process: a socket is bound to it and never listens, and stays open, so
/// neither this process's other tests nor another process can be given the
/// port meanwhile (a port merely bound and released could be handed to
/// another test's server, and a client whose direct route is "closed"
/// would then reach the wrong server).
pub fn closed_port() -> u16 {
    use socket2::{Domain, Socket, Type};
    static HELD: std::sync::Mutex<Vec<Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    HELD.lock().unwrap().push(socket);
    port
}

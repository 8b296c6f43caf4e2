//! Helpers for the `ponte app` tests: the app as a real process, and raw
//! HTTP/1.1 requests to it (any Host, Origin or header a hostile page or
//! a rebound DNS name could send).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::common::{Killed, PONTE, WAIT};

pub mod browser;

/// A running `ponte app`, with the address and secret it printed.
pub struct App {
    pub child: Killed,
    pub addr: SocketAddr,
    pub secret: String,
    /// Its stderr, drained in the background.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl App {
    /// `ponte app --profile DIR --listen 127.0.0.1:0 --no-open`.
    pub fn start(profile: &Path) -> Self {
        Self::start_with(profile, &[])
    }

    pub fn start_with(profile: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(PONTE);
        cmd.args(["app", "--listen", "127.0.0.1:0", "--no-open", "--profile"])
            .arg(profile)
            .env_remove("PONTE_PASSPHRASE")
            .env_remove("PONTE_PROFILE")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "ponte_client=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Killed(child);
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("the app printed its address; log:\n{}", log.lock().unwrap())
        });
        let url = line
            .strip_prefix("Open http://")
            .unwrap_or_else(|| panic!("{line}"));
        let (addr, secret) = url.split_once("/#").unwrap();
        Self {
            child,
            addr: addr.parse().unwrap(),
            secret: secret.to_owned(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/#{}", self.addr, self.secret)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request as the app's own page sends it (exact Host, Origin, secret).
    pub fn call(&self, method: &str, path: &str, body: &str) -> Reply {
        let host = self.addr.to_string();
        let origin = self.origin();
        let mut headers = vec![
            ("Host", host.as_str()),
            ("Origin", origin.as_str()),
            ("X-Ponte-Secret", self.secret.as_str()),
        ];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        raw(self.addr, method, path, &headers, body.as_bytes())
    }

    /// [`App::call`], checked to succeed, as JSON.
    pub fn json(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let r = self.call(method, path, body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Polls `GET path` until `check` holds (at most [`WAIT`]).
    pub fn wait_for(
        &self,
        path: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.json("GET", path, "");
            if check(&v) {
                return v;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {v}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names lower-cased; repeated headers joined with ", ".
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection, written byte for byte as given.
pub fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    // Read until the answer is complete by its own framing (a server may
    // keep the connection open whatever `Connection: close` asked).
    let mut all = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if complete(&all) {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    parse(&all)
}

/// Whether `all` holds a whole response (head, and the body its
/// Content-Length or chunked framing announces).
fn complete(all: &[u8]) -> bool {
    let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
    let body = &all[end + 4..];
    for line in head.split("\r\n") {
        if let Some(v) = line.strip_prefix("content-length:") {
            return v.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

fn parse(all: &[u8]) -> Reply {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers: HashMap<String, String> = HashMap::new();
    for l in lines {
        let (k, v) = l.split_once(':').unwrap();
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_owned();
        headers
            .entry(k)
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let mut body = all[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = nl + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

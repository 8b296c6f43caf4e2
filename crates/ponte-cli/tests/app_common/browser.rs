//! The WebDriver client of the browser tests (the few commands they use,
//! over [`super::raw`]) and the steps they share: a TLS relay, the
//! first-run screen as a user fills it in, waiting for a tick.

use super::super::common::{Killed, Proxy, WAIT};
use super::{raw, App};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// ---------------------------------------------------------------- webdriver

pub struct Driver {
    _child: Killed,
    pub addr: SocketAddr,
}

impl Driver {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = Self {
            _child: Killed(child),
            addr,
        };
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                let v = driver.call("GET", "/status", None);
                if v["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(start.elapsed() < WAIT, "chromedriver did not start");
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|(status, v)| panic!("{method} {path}: {status} {v}"))
    }

    /// One WebDriver command; a non-200 answer is `Err((status, body))`.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (u16, Value)> {
        let host = self.addr.to_string();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = vec![("Host", host.as_str())];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        let r = raw(self.addr, method, path, &headers, body.as_bytes());
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{method} {path}: {}", r.text()));
        if r.status == 200 {
            Ok(v)
        } else {
            Err((r.status, v))
        }
    }

    pub fn session(&self, name: &str, profile_dir: &Path) -> Browser<'_> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,860", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile_dir.display()),
                ],
            },
        }}});
        let v = self.call("POST", "/session", Some(caps));
        Browser {
            driver: self,
            id: v["value"]["sessionId"].as_str().unwrap().to_owned(),
            name: name.to_owned(),
            log: None,
        }
    }
}

pub struct Browser<'a> {
    pub driver: &'a Driver,
    pub id: String,
    pub name: String,
    /// The app's log, shown when a wait times out.
    pub log: Option<std::sync::Arc<std::sync::Mutex<String>>>,
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let host = self.driver.addr.to_string();
        let _ = raw(
            self.driver.addr,
            "DELETE",
            &format!("/session/{}", self.id),
            &[("Host", &host)],
            b"",
        );
    }
}

impl Browser<'_> {
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)["value"]
            .clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, "click", json!({}));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({ "text": text }));
    }

    /// Finds `css` and sends it `action`. The app re-renders lists as
    /// events arrive (a tick, a new message), so the element found can be
    /// replaced before the action reaches it: a stale element is found
    /// again, a bounded number of times.
    pub fn on_element(&self, css: &str, action: &str, body: Value) {
        let mut tries = 0;
        loop {
            let e = self.find(css);
            let path = format!("/session/{}/element/{e}/{action}", self.id);
            match self.driver.try_call("POST", &path, Some(body.clone())) {
                Ok(_) => return,
                Err((_, v)) if v["value"]["error"] == "stale element reference" && tries < 20 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(50));
                }
                Err((status, v)) => panic!("POST {path}: {status} {v}"),
            }
        }
    }

    /// Picks the `<option>` `option` (CSS) once its select is enabled, and
    /// waits until `done` (a script) is truthy. A choice lost to a redraw
    /// (a live event rebuilt the panel, and its select, as it was clicked)
    /// is made again, as a person would, a bounded number of times; then
    /// it fails as [`Browser::wait`] does.
    pub fn choose(&self, option: &str, what: &str, done: &str) {
        let truthy = |v: &Value| !(v.is_null() || *v == false || *v == "" || *v == 0);
        for _ in 0..5 {
            let start = Instant::now();
            while start.elapsed() < WAIT {
                let ready = self.js(
                    "const o = document.querySelector(arguments[0]); \
                     return !!o && !o.parentElement.disabled",
                    json!([option]),
                );
                if ready == true {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let found = self.driver.try_call(
                "POST",
                &format!("/session/{}/element", self.id),
                Some(json!({ "using": "css selector", "value": option })),
            );
            if let Some(e) = found
                .ok()
                .and_then(|v| v["value"][ELEMENT].as_str().map(str::to_owned))
            {
                // A stale or no longer clickable option: chosen again below.
                let _ = self.driver.try_call(
                    "POST",
                    &format!("/session/{}/element/{e}/click", self.id),
                    Some(json!({})),
                );
            }
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if truthy(&self.js(done, json!([]))) {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.wait(what, done, json!([]));
    }

    /// Opens the chat with `peer` from the chat list, and waits until it
    /// is the open one. A click lands where the item was found, and the
    /// list re-sorts as events arrive (a tick, a group change), so the
    /// click can open the item that moved there instead: clicked again,
    /// a bounded number of times.
    pub fn open_chat(&self, peer: &str) {
        let item = format!("[data-testid=chat-item][data-peer='{peer}']");
        let open = "return state.open === arguments[0]";
        for _ in 0..5 {
            self.click(&item);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if self.js(open, json!([peer])) == true {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        self.wait(&format!("the chat with {peer} open"), open, json!([peer]));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` until it returns something truthy (at most [`WAIT`]).
    pub fn wait(&self, what: &str, script: &str, args: Value) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, args.clone());
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                start.elapsed() < WAIT,
                "{}: timed out waiting for {what}; page: {}\napp log:\n{}",
                self.name,
                self.js(
                    "return document.querySelector('[data-testid=route-status]').title + ' | ' \
                     + document.getElementById('conv-error').textContent + ' | ' \
                     + document.body.innerText.slice(0, 600)",
                    json!([])
                ),
                self.log
                    .as_ref()
                    .map(|l| l.lock().unwrap().clone())
                    .unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn size(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    pub fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let v = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

pub fn screenshots() -> PathBuf {
    // target/tmp -> target
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("app-screenshots")
}

// ---------------------------------------------------------------- setup

/// A `ponte proxy` with one TLS listener in front of `upstream`.
pub fn tls_relay(dir: &Path, name: &str, upstream: SocketAddr) -> Proxy {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{upstream}\"]\nsend_proxy = \"v2\"\n\
             health_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\nupstream = \"server\"\n"
        ),
    )
    .unwrap();
    Proxy::start(&cfg, &["tls"], WAIT)
}

pub fn visible(b: &Browser<'_>, id: &str) -> bool {
    b.js(
        "return !document.getElementById(arguments[0]).hidden",
        json!([id]),
    ) == true
}

/// The first-run screen, as a user fills it in.
pub fn first_run(
    b: &Browser<'_>,
    app: &App,
    server: &str,
    handle: &str,
    relay: &str,
    shot: Option<&str>,
) {
    b.goto(&app.url());
    b.wait(
        "the first-run screen",
        "return !document.getElementById('setup').hidden",
        json!([]),
    );
    // The secret left the address bar.
    assert_eq!(b.js("return location.hash", json!([])), "");
    b.type_into("[data-testid=setup-server]", server);
    b.type_into("[data-testid=setup-handle]", handle);
    b.type_into("[data-testid=setup-relay]", relay);
    if let Some(name) = shot {
        b.screenshot(name);
    }
    b.click("[data-testid=setup-submit]");
    b.wait(
        "the main screen",
        "return !document.getElementById('main').hidden",
        json!([]),
    );
    let route = b.wait(
        "the route indicator to show the relay",
        "const r = document.querySelector('[data-testid=route-status]'); \
         return r.dataset.state === 'online' && r.dataset.route.startsWith('relay tls://') && r.textContent",
        json!([]),
    );
    assert!(
        route.as_str().unwrap().contains("relay tls://127.0.0.1:"),
        "{route}"
    );
}

/// Status of the message with this text (`arguments[0]`), in the open chat.
pub const STATUS_OF: &str =
    "for (const m of document.querySelectorAll('[data-testid=message]')) { \
     const t = m.querySelector('[data-testid=message-text]'); \
     if (t && t.textContent === arguments[0]) return m.dataset.status; } return null";

/// Waits until the message with `text` has one of the statuses `want`.
pub fn wait_status(b: &Browser<'_>, text: &str, want: &[&str]) -> String {
    let script = format!(
        "const s = (function() {{ {STATUS_OF} }}).apply(null, arguments); \
         return arguments[1].includes(s) ? s : null"
    );
    let v = b.wait(
        &format!("{text:?} to be {want:?}"),
        &script,
        json!([text, want]),
    );
    v.as_str().unwrap().to_owned()
}

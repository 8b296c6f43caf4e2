//! The browser phase of `ponte-bench app`: Debian's headless Chromium,
//! driven over WebDriver (ChromeDriver), opens the long chat in the real
//! page and the page itself times it: from the click on the chat to the
//! frame painted after its newest message is in the document (the page's
//! fetch of the newest page, its rendering, layout and paint).

use super::http::request;
use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Debian's Chromium and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether this machine can run the browser phase.
pub fn available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// Runs in the page (WebDriver's asynchronous script): open `other`, wait
/// until its messages are shown, then click `chat` and answer the time
/// until the frame after `newest` appeared, and how many messages the
/// conversation then shows.
const OPEN_CHAT: &str = r#"
const [chat, other, newest, done] = arguments;
const item = (p) => document.querySelector(`[data-testid=chat-item][data-peer="${p}"]`);
const shows = (id) => document.querySelector(`#messages [data-testid=message][data-id="${id}"]`);
const when = (ready, then) => {
  if (ready()) return then();
  const o = new MutationObserver(() => { if (ready()) { o.disconnect(); then(); } });
  o.observe(document.body, { childList: true, subtree: true });
};
item(other).click();
when(() => !shows(newest) && document.querySelector('#messages [data-testid=message]'), () => {
  const t0 = performance.now();
  item(chat).click();
  when(() => shows(newest), () => requestAnimationFrame(() => requestAnimationFrame(() =>
    done([performance.now() - t0, document.querySelectorAll('#messages [data-testid=message]').length]))));
});
"#;

/// What the browser phase measured.
#[derive(Debug)]
pub struct Opened {
    /// Click to painted frame, one per run.
    pub samples: Vec<Duration>,
    /// Messages in the document after opening.
    pub shown: u64,
}

/// A ChromeDriver child and one browser session on it.
struct Session {
    driver: tokio::process::Child,
    host: String,
    id: String,
}

impl Session {
    async fn start(user_data: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = request(&host, "GET", "/status", &[], None).await {
                if body.contains("\"ready\":true") {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready on {host} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,860", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        }}});
        let mut s = Self {
            driver,
            host,
            id: String::new(),
        };
        let v = s.call("POST", "/session", caps).await?;
        s.id = v["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?
            .to_owned();
        s.command("timeouts", json!({ "script": 60_000 })).await?;
        Ok(s)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        let (status, text) = request(&self.host, method, path, &[], Some(body.to_string())).await?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: not JSON: {text}"))?;
        if status != 200 {
            bail!("{method} {path}: {status} {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    async fn command(&self, what: &str, body: Value) -> Result<Value> {
        self.call("POST", &format!("/session/{}/{what}", self.id), body)
            .await
    }

    async fn stop(mut self) {
        let _ = request(
            &self.host,
            "DELETE",
            &format!("/session/{}", self.id),
            &[],
            None,
        )
        .await;
        let _ = self.driver.kill().await;
    }
}

/// Opens the app at `http://HOST/#SECRET`, waits for its chat list, then
/// `runs` times (after one untimed) opens `other` and then `chat`, whose
/// newest message is `newest`.
pub async fn open_chat(
    app: &str,
    secret: &str,
    chat: &str,
    other: &str,
    newest: &str,
    runs: usize,
    user_data: &Path,
) -> Result<Opened> {
    let s = Session::start(user_data).await?;
    let out = measure(&s, app, secret, chat, other, newest, runs).await;
    s.stop().await;
    out
}

async fn measure(
    s: &Session,
    app: &str,
    secret: &str,
    chat: &str,
    other: &str,
    newest: &str,
    runs: usize,
) -> Result<Opened> {
    s.command("url", json!({ "url": format!("http://{app}/#{secret}") }))
        .await?;
    let listed = format!(
        "return !!document.querySelector('[data-testid=chat-item][data-peer=\"{chat}\"]') \
         && !!document.querySelector('[data-testid=chat-item][data-peer=\"{other}\"]');"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .command("execute/sync", json!({ "script": listed, "args": [] }))
        .await?
        != Value::Bool(true)
    {
        if Instant::now() > deadline {
            let page = s
                .command(
                    "execute/sync",
                    json!({ "script": "return location.href + ' | ' + document.body.innerText.slice(0, 400)", "args": [] }),
                )
                .await?;
            let probe = s
                .command(
                    "execute/async",
                    json!({ "script": "const done = arguments[0]; const t = performance.now(); \
                        fetch('/api/chats', { headers: { 'X-Ponte-Secret': sessionStorage.getItem('ponte-secret') || '' } }) \
                          .then(async (r) => done([r.status, performance.now() - t, (await r.text()).slice(0, 300)])) \
                          .catch((e) => done(['error', performance.now() - t, String(e)]));", "args": [] }),
                )
                .await?;
            bail!("the page did not list {chat} and {other} within 60 s: {page}; GET /api/chats from the page: {probe}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut samples = Vec::with_capacity(runs);
    let mut shown = 0;
    for run in 0..=runs {
        let v = s
            .command(
                "execute/async",
                json!({ "script": OPEN_CHAT, "args": [chat, other, newest] }),
            )
            .await?;
        let ms = v[0].as_f64().context("the page's timing")?;
        shown = v[1].as_u64().unwrap_or(0);
        if run > 0 {
            samples.push(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    Ok(Opened { samples, shown })
}

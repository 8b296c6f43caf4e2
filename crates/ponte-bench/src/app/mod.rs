//! `ponte-bench app`: what a person waits for in `ponte app` with a long
//! history. It registers a profile on a `ponte server` child, writes a
//! history of `--messages` messages into it (one chat of `--chat`
//! messages, the rest over 20 others), then measures:
//!
//! - indexing the whole history for search (what the first search after
//!   the upgrade to schema 5 does: the backfill);
//! - search latency through the library (`Client::search`, 50 hits), for
//!   a rare word, a common word, two words, a prefix (target < 50 ms);
//! - opening the long chat through the app's HTTP API (`ponte app` as a
//!   child process, `GET /api/chat/PEER`: its newest page of 200, time to
//!   the whole answer; target < 200 ms), and one search through the API;
//! - opening the long chat in the page itself ([`browser`]: Debian's
//!   headless Chromium over ChromeDriver), from the click to the frame
//!   painted with its newest message (target < 200 ms); skipped with a
//!   line in the report where Chromium is not installed, or with
//!   `--no-browser`.
//!
//! The profile lives under `/dev/shm` when it exists (building 100,000
//! messages one transaction each is otherwise bound by fsync, which is not
//! what is measured). Prints a Markdown report.

mod browser;
mod http;

use crate::server::procs;
use crate::stats::LatencySummary;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use ponte_client::client::RegisterOptions;
use ponte_client::profile::KeySource;
use ponte_client::Client;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Arguments of `ponte-bench app`.
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// The `ponte` binary (default: next to this one).
    #[arg(long)]
    pub ponte: Option<PathBuf>,
    /// Messages in the history.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Messages in the long chat (part of `--messages`).
    #[arg(long, default_value_t = 10_000)]
    pub chat: usize,
    /// Timed repetitions of each measurement.
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// Where to put the profile (default: /dev/shm if present, else the
    /// system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Skip the browser phase (opening the chat in headless Chromium).
    #[arg(long)]
    pub no_browser: bool,
}

const WORDS: &[&str] = &[
    "hello",
    "meet",
    "tomorrow",
    "lunch",
    "project",
    "quarterly",
    "report",
    "coffee",
    "train",
    "station",
    "weather",
    "photos",
    "weekend",
    "birthday",
    "present",
    "call",
    "later",
    "office",
    "document",
    "signed",
    "thanks",
    "great",
    "see",
    "you",
    "soon",
    "the",
    "a",
    "and",
    "to",
    "at",
    "in",
    "on",
    "for",
    "with",
    "news",
    "market",
    "bread",
    "milk",
    "garden",
    "river",
    "bridge",
    "relay",
    "server",
    "message",
    "phone",
    "ticket",
    "flight",
    "hotel",
    "dinner",
    "kids",
];

/// A history line: 4 to 15 words from [`WORDS`], and every 10,000th
/// message the rare word `zanzibar`.
fn line(i: usize, rng: &mut u64) -> String {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let n = 4 + (next() % 12) as usize;
    let mut words: Vec<&str> = (0..n)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect();
    if i % 10_000 == 7 {
        words.push("zanzibar");
    }
    words.join(" ")
}

fn log(msg: &str) {
    eprintln!("[app-bench] {msg}");
}

fn summary(samples: &[Duration]) -> LatencySummary {
    let mut us: Vec<u32> = samples
        .iter()
        .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
        .collect();
    LatencySummary::from_samples(&mut us)
}

/// Runs the app benchmark and prints its report.
pub fn run(a: AppArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: AppArgs) -> Result<()> {
    if a.chat > a.messages || a.messages == 0 || a.runs == 0 {
        bail!("--chat must be at most --messages, and both and --runs above 0");
    }
    let exe = std::env::current_exe()?;
    let ponte = match &a.ponte {
        Some(p) => p.clone(),
        None => exe.parent().context("executable directory")?.join("ponte"),
    };
    if !ponte.exists() {
        bail!(
            "{} not found: cargo build --release -p ponte-cli (or pass --ponte)",
            ponte.display()
        );
    }
    let base = a.dir.clone().unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        }
    });
    let tmp = tempfile::tempdir_in(&base)?;
    let dir = tmp.path();
    let config = dir.join("server.toml");
    std::fs::write(&config, "")?;
    let (server, address) =
        procs::start_ponte(&ponte, &dir.join("data"), &config, &dir.join("server.log")).await?;
    let result = measure(&a, &ponte, dir, &address).await;
    server.stop().await;
    let report = result?;
    print!("{report}");
    Ok(())
}

async fn measure(a: &AppArgs, ponte: &Path, dir: &Path, address: &str) -> Result<String> {
    let profile = dir.join("profile");
    let client = Client::register(
        &profile,
        KeySource::KeyFile,
        || Ok(String::new()),
        RegisterOptions::new(address, "benchme"),
    )
    .await
    .context("registering")?;

    // The history: the long chat with "alice", the rest over 20 others.
    log(&format!("writing {} messages", a.messages));
    let started = Instant::now();
    let store = client.store();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = Vec::with_capacity(1000);
    for i in 0..a.messages {
        let peer = if i % (a.messages / a.chat.max(1)).max(1) == 0 {
            "alice".to_owned()
        } else {
            format!("peer{:02}", i % 20)
        };
        let id = store.queue_text(&peer, &line(i, &mut rng))?;
        sent.push((peer, id));
        if sent.len() == 1000 {
            let items: Vec<(&str, &_)> = sent.iter().map(|(p, id)| (p.as_str(), id)).collect();
            store.mark_all_sent(&items)?;
            // Seen as they came, as in a real history (else the app's
            // first connection reports every status change to the page).
            for (peer, id) in &items {
                store.mark_status_shown(peer, id)?;
            }
            sent.clear();
        }
    }
    let items: Vec<(&str, &_)> = sent.iter().map(|(p, id)| (p.as_str(), id)).collect();
    store.mark_all_sent(&items)?;
    for (peer, id) in &items {
        store.mark_status_shown(peer, id)?;
    }
    let build = started.elapsed();
    let in_chat = client.conversation_page("alice", None, 1)?.older.is_some();
    if !in_chat {
        bail!("the long chat was not written");
    }

    // The backfill: everything is pending, as after the migration.
    let started = Instant::now();
    let indexed = store.index_pending()?;
    let index = started.elapsed();
    log(&format!("indexed {indexed} messages in {index:?}"));

    let queries = [
        ("a rare word", "zanzibar"),
        ("a common word", "coffee"),
        ("two words", "meet tomorrow"),
        ("a prefix", "quart"),
    ];
    let mut search_rows = Vec::new();
    for (what, q) in queries {
        let hits = client.search(q, 50)?.len();
        let mut samples = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            let t = Instant::now();
            let n = client.search(q, 50)?.len();
            samples.push(t.elapsed());
            if n != hits {
                bail!("{q:?}: {n} hits, then {hits}");
            }
        }
        search_rows.push((what, q, hits, summary(&samples)));
    }
    drop(client);

    // The app, on the same profile.
    log("starting ponte app");
    let mut app = tokio::process::Command::new(ponte)
        .args(["app", "--no-open", "--listen", "127.0.0.1:0", "--profile"])
        .arg(&profile)
        .env_remove("PONTE_PASSPHRASE")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("app.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting ponte app")?;
    let stdout = app.stdout.take().context("app stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("ponte app printed no address within 60 s")??
        .context("ponte app exited")?;
    let (host, secret) = first
        .strip_prefix("Open http://")
        .and_then(|r| r.split_once("/#"))
        .map(|(h, s)| (h.to_owned(), s.to_owned()))
        .with_context(|| format!("unexpected first line: {first:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&host, &secret, "/api/state").await?;
        if status == 200 && body.contains("\"phase\":\"ready\"") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the app did not open the profile within 60 s: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut api_rows = Vec::new();
    for (what, path) in [
        ("the chat list", "/api/chats".to_owned()),
        (
            "open the long chat (newest 200)",
            "/api/chat/alice".to_owned(),
        ),
        ("search a rare word", "/api/search?q=zanzibar".to_owned()),
        ("search a common word", "/api/search?q=coffee".to_owned()),
    ] {
        let (status, body) = get(&host, &secret, &path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        let mut samples = Vec::with_capacity(a.runs);
        let mut bytes = 0;
        for _ in 0..a.runs {
            let t = Instant::now();
            let (status, body) = get(&host, &secret, &path).await?;
            samples.push(t.elapsed());
            if status != 200 {
                bail!("GET {path}: {status}");
            }
            bytes = body.len();
        }
        api_rows.push((what, path, bytes, summary(&samples)));
    }
    let opened = if a.no_browser {
        Err("skipped (--no-browser)".to_owned())
    } else if !browser::available() {
        Err(format!(
            "skipped: {} or {} is not installed",
            browser::CHROMIUM,
            browser::CHROMEDRIVER
        ))
    } else {
        log("opening the long chat in headless Chromium");
        let newest = newest_id(&host, &secret, "alice").await?;
        let opened = browser::open_chat(
            &host,
            &secret,
            "alice",
            "peer01",
            &newest,
            a.runs,
            &dir.join("chromium"),
        )
        .await;
        match opened {
            Ok(o) => Ok(o),
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("app.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{e:#}\nthe app's log ends:\n{}", tail.join("\n"));
            }
        }
    };
    let _ = app.kill().await;

    let mut r = String::new();
    r.push_str(&format!(
        "### ponte app: {} messages, a chat of {}\n\n",
        a.messages, a.chat
    ));
    r.push_str(&format!(
        "History written in {:.1} s; indexed for search (the schema 5 backfill) in {:.1} s ({:.0} messages/s).\n\n",
        build.as_secs_f64(),
        index.as_secs_f64(),
        indexed as f64 / index.as_secs_f64().max(1e-9)
    ));
    r.push_str("| search (library, 50 hits at most) | query | hits | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
    for (what, q, hits, s) in &search_rows {
        r.push_str(&format!(
            "| {what} | `{q}` | {hits} | {:.1} | {:.1} | {:.1} |\n",
            s.p50_us as f64 / 1000.0,
            s.p99_us as f64 / 1000.0,
            s.max_us as f64 / 1000.0
        ));
    }
    r.push_str("\n| through the app's HTTP API | request | bytes | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
    for (what, path, bytes, s) in &api_rows {
        r.push_str(&format!(
            "| {what} | `GET {path}` | {bytes} | {:.1} | {:.1} | {:.1} |\n",
            s.p50_us as f64 / 1000.0,
            s.p99_us as f64 / 1000.0,
            s.max_us as f64 / 1000.0
        ));
    }
    match &opened {
        Ok(o) => {
            let s = summary(&o.samples);
            r.push_str(&format!(
                "\n| in the page (headless Chromium) | messages shown | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n\
                 | click on the long chat → frame painted with its newest message | {} | {:.1} | {:.1} | {:.1} |\n",
                o.shown,
                s.p50_us as f64 / 1000.0,
                s.p99_us as f64 / 1000.0,
                s.max_us as f64 / 1000.0
            ));
        }
        Err(why) => r.push_str(&format!("\nIn the page (headless Chromium): {why}.\n")),
    }
    r.push_str(&format!("\n{} runs of each.\n", a.runs));
    Ok(r)
}

/// The id of the newest message of `peer`'s chat, as the app's API gives
/// it.
async fn newest_id(host: &str, secret: &str, peer: &str) -> Result<String> {
    let (status, body) = get(host, secret, &format!("/api/chat/{peer}")).await?;
    if status != 200 {
        bail!("GET /api/chat/{peer}: {status} {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["id"].as_str())
        .map(str::to_owned)
        .context("the chat's page has no messages")
}

/// One `GET` to the app as its page sends it; the status and the body.
async fn get(host: &str, secret: &str, path: &str) -> Result<(u16, String)> {
    http::request(
        host,
        "GET",
        path,
        &[
            ("X-Ponte-Secret", secret),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        None,
    )
    .await
}

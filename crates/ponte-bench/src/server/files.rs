//! `ponte-bench server files`: one file through a TLS relay on loopback,
//! up and down, against the relay's raw TLS throughput in the same run,
//! and the server's memory while it takes the file.
//!
//! Per run, fresh: a `ponte server` (child process, its own data
//! directory), a `ponte proxy` (child process) with two TLS listeners —
//! `files` to the server, `raw` to the bench upstream's discard sink (in
//! this process) — and two client profiles (`ponte-client`, in this
//! process) whose only route is `tls://` to the relay. Then:
//!
//! 1. raw: one `ponte-bench client --test throughput --tls` process
//!    writes through the `raw` listener for `--raw-secs` (what the relay's
//!    TLS carries at best on this machine, now);
//! 2. warm-up: a 1 MiB file sent and fetched (sessions, first-use
//!    allocations), then the server's RSS is read;
//! 3. upload: `Client::send_file` of a `--size-mib` random file; timed
//!    from the first progress report (encrypted, `UploadCreate` answered)
//!    to the last (the server has it whole, checked);
//! 4. download: `Client::fetch_file` of it by the recipient; the transfer
//!    timed the same way, and the whole call (which checks the SHA-256 and
//!    decrypts) on its own; the bytes are compared with the original.
//!
//! The server's VmRSS is sampled every 20 ms from the warm-up to the end;
//! its growth over the warm-up value is the memory figure (target: under
//! 32 MiB for 100 MiB). CPU seconds of the server, the relay and this
//! process (the clients) per transfer say where the time went. MB are
//! 10^6 bytes, the size of the blob (ciphertext) transferred.

use super::procs::{self, System};
use crate::client::ClientReport;
use anyhow::{bail, Context as _};
use clap::Args;
use ponte_client::client::RegisterOptions;
use ponte_client::profile::KeySource;
use ponte_client::route::{RelayRoute, RelayUrl, Route};
use ponte_client::store::FileState;
use ponte_client::Client;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `ponte-bench server files …`.
#[derive(Debug, Clone, Args)]
pub struct FilesArgs {
    /// Size of the file, MiB.
    #[arg(long, default_value_t = 100)]
    size_mib: u64,
    /// Seconds of raw TLS throughput through the relay.
    #[arg(long, default_value_t = 5)]
    raw_secs: u64,
    /// How many times to run everything (reports each run and the median).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The `ponte` binary [default: `ponte` next to this executable].
    #[arg(long)]
    ponte: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Run {
    raw_mbs: f64,
    blob_bytes: u64,
    up_secs: f64,
    send_secs: f64,
    down_secs: f64,
    fetch_secs: f64,
    rss_base: u64,
    rss_peak: u64,
    hwm_growth: u64,
    up_cpu: Cpu,
    down_cpu: Cpu,
    load_before: String,
    load_after: String,
}

/// CPU seconds spent during a transfer.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: f64,
    relay: f64,
    clients: f64,
}

impl Run {
    fn up_mbs(&self) -> f64 {
        self.blob_bytes as f64 / self.up_secs / 1e6
    }
    fn down_mbs(&self) -> f64 {
        self.blob_bytes as f64 / self.down_secs / 1e6
    }
    fn growth(&self) -> u64 {
        self.rss_peak.saturating_sub(self.rss_base)
    }
}

fn log(msg: &str) {
    eprintln!("[files-bench] {msg}");
}

/// Runs the file benchmark and prints its report.
pub async fn run(a: FilesArgs) -> anyhow::Result<()> {
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
    let mut runs = Vec::new();
    for k in 0..a.runs.max(1) {
        log(&format!("run {} of {}", k + 1, a.runs.max(1)));
        runs.push(one_run(&a, &ponte, &exe).await?);
    }
    let report = report(&a, &ponte, &runs);
    print!("{report}");
    if let Some(path) = &a.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A `ponte proxy` child, killed when dropped.
struct Relay {
    child: Child,
    listeners: HashMap<String, SocketAddr>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `… listening on 127.0.0.1:PORT listener=NAME` from the relay's log.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.split("listening on ").nth(1)?;
    let (addr, rest) = rest.split_once(' ')?;
    let name = rest.split("listener=").nth(1)?.split_whitespace().next()?;
    Some((name.to_owned(), addr.trim_end_matches(',').parse().ok()?))
}

fn start_relay(ponte: &Path, dir: &Path, server: &str, sink: SocketAddr) -> anyhow::Result<Relay> {
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{server}\"]\nhealth_check_interval = \"0s\"\n\n\
             [upstream.sink]\nservers = [\"{sink}\"]\nhealth_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"files\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\nupstream = \"server\"\n\n\
             [[listener]]\nname = \"raw\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\nupstream = \"sink\"\n"
        ),
    )?;
    let mut child = Command::new(ponte)
        .args(["proxy", "--no-admin", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ponte proxy")?;
    let stderr = child.stderr.take().context("relay stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drained for the relay's whole life.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(found) = listening(&line) {
                let _ = tx.send(found);
            }
        }
    });
    let mut relay = Relay {
        child,
        listeners: HashMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.listeners.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (name, addr) = rx
            .recv_timeout(left)
            .context("the relay did not log its listeners within 60 s")?;
        relay.listeners.insert(name, addr);
    }
    Ok(relay)
}

/// One `ponte-bench client --test throughput --tls` through `target`:
/// MB/s the sink confirmed.
fn raw_tls(exe: &Path, target: SocketAddr, secs: u64) -> anyhow::Result<f64> {
    let out = Command::new(exe)
        .args(["client", "--tls", "--test", "throughput", "--conns", "1"])
        .arg("--target")
        .arg(target.to_string())
        .arg("--duration-ms")
        .arg((secs * 1000).to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the throughput client")?;
    if !out.status.success() {
        bail!("throughput client failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("no report line")?;
    let r: ClientReport = serde_json::from_str(line).context("throughput report")?;
    if r.errors > 0 || r.elapsed_s <= 0.0 {
        bail!("throughput client: {:?}", r.first_error);
    }
    Ok(r.bytes as f64 / r.elapsed_s / 1e6)
}

/// Writes `mib` MiB of random bytes to `path`.
fn random_file(path: &Path, mib: u64) -> anyhow::Result<()> {
    use rand::{RngCore as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        rng.fill_bytes(&mut block);
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Peak VmHWM of a process, bytes.
fn hwm_bytes(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kb * 1024)
}

/// Samples a process's VmRSS every 20 ms until dropped; keeps the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(rss) = procs::rss_bytes(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cpu_now(server: u32, relay: u32) -> Cpu {
    Cpu {
        server: procs::cpu_secs(server).unwrap_or(0.0),
        relay: procs::cpu_secs(relay).unwrap_or(0.0),
        clients: procs::cpu_secs(std::process::id()).unwrap_or(0.0),
    }
}

fn cpu_since(before: Cpu, server: u32, relay: u32) -> Cpu {
    let now = cpu_now(server, relay);
    Cpu {
        server: now.server - before.server,
        relay: now.relay - before.relay,
        clients: now.clients - before.clients,
    }
}

async fn register(
    dir: &Path,
    address: &str,
    handle: &str,
    via: &RelayUrl,
) -> anyhow::Result<Client> {
    let routes = || -> anyhow::Result<Vec<Box<dyn Route>>> {
        Ok(vec![Box::new(RelayRoute::new(via.clone())?)])
    };
    let mut client = Client::register(
        dir,
        KeySource::KeyFile,
        || Ok(String::new()),
        RegisterOptions::new(address, handle).routes(routes()?),
    )
    .await
    .with_context(|| format!("registering {handle}"))?;
    client.set_routes(routes()?);
    client.set_auto_download(0);
    Ok(client)
}

/// What one file's trip measured.
#[derive(Debug, Clone, Copy, Default)]
struct Trip {
    blob_bytes: u64,
    up_secs: f64,
    send_secs: f64,
    down_secs: f64,
    fetch_secs: f64,
    up_cpu: Cpu,
    down_cpu: Cpu,
}

/// Sends `path` from `alice` to `bob`, who fetches it to `out`.
async fn transfer(
    alice: &mut Client,
    bob: &mut Client,
    path: &Path,
    out: &Path,
    pids: (u32, u32),
) -> anyhow::Result<Trip> {
    let mut trip = Trip::default();
    let before = cpu_now(pids.0, pids.1);
    let (mut first, mut last) = (None, None);
    let mut blob_bytes = 0;
    let started = Instant::now();
    let sent = alice
        .send_file("bob", path, "", &mut |done, total| {
            let now = Instant::now();
            first.get_or_insert(now);
            if done == total {
                last = Some(now);
                blob_bytes = total;
            }
        })
        .await
        .context("send_file")?;
    trip.send_secs = started.elapsed().as_secs_f64();
    trip.up_cpu = cpu_since(before, pids.0, pids.1);
    trip.blob_bytes = blob_bytes;
    if let Some(note) = &sent.note {
        bail!("the file was not sent: {note}");
    }
    let (Some(f), Some(l)) = (first, last) else {
        bail!("no progress reported for the upload");
    };
    trip.up_secs = (l - f).as_secs_f64();
    bob.sync(&mut |_| {}).await.context("sync")?;
    let id = bob
        .store()
        .files_in_state(FileState::Pending)?
        .into_iter()
        .last()
        .context("the file message did not arrive")?
        .id;
    let before = cpu_now(pids.0, pids.1);
    let (mut first, mut last) = (None, None);
    let started = Instant::now();
    bob.fetch_file(&id, Some(out), &mut |done, total| {
        let now = Instant::now();
        first.get_or_insert(now);
        if done == total {
            last = Some(now);
        }
    })
    .await
    .context("fetch_file")?;
    trip.fetch_secs = started.elapsed().as_secs_f64();
    trip.down_cpu = cpu_since(before, pids.0, pids.1);
    let (Some(f), Some(l)) = (first, last) else {
        bail!("no progress reported for the download");
    };
    trip.down_secs = (l - f).as_secs_f64();
    if !same_bytes(path, out)? {
        bail!("the fetched file differs from the one sent");
    }
    Ok(trip)
}

async fn one_run(a: &FilesArgs, ponte: &Path, exe: &Path) -> anyhow::Result<Run> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let config = dir.join("server.toml");
    // Room for the padded blob of the file and the warm-up's.
    let max_blob = (a.size_mib + a.size_mib / 8 + 2) * 1024 * 1024;
    std::fs::write(
        &config,
        format!(
            "max_blob_size = {max_blob}\nblob_quota_per_account = {}\n",
            4 * max_blob
        ),
    )?;
    let (server, address) =
        procs::start_ponte(ponte, &dir.join("data"), &config, &dir.join("server.log")).await?;
    let server_addr = address
        .strip_prefix("ponte://")
        .and_then(|r| r.split_once('#'))
        .map(|(hp, _)| hp.to_owned())
        .context("server address")?;
    let sink = crate::upstream::bind("127.0.0.1:0".parse()?)?;
    let sink_addr = sink.local_addr()?;
    let sink_task = tokio::spawn(crate::upstream::accept_loop(sink, false, None));
    let result = measure(
        a,
        ponte,
        exe,
        dir,
        &server,
        &address,
        &server_addr,
        sink_addr,
    )
    .await;
    sink_task.abort();
    server.stop().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    a: &FilesArgs,
    ponte: &Path,
    exe: &Path,
    dir: &Path,
    server: &System,
    address: &str,
    server_addr: &str,
    sink: SocketAddr,
) -> anyhow::Result<Run> {
    let relay = start_relay(ponte, dir, server_addr, sink)?;
    let relay_pid = relay.child.id();
    let load_before = super::loadavg();
    log(&format!("raw TLS through the relay for {} s", a.raw_secs));
    let raw_mbs = raw_tls(exe, relay.listeners["raw"], a.raw_secs)?;
    log(&format!("raw TLS: {raw_mbs:.0} MB/s"));

    let via: RelayUrl = format!("tls://{}", relay.listeners["files"])
        .parse()
        .context("relay url")?;
    let mut alice = register(&dir.join("alice"), address, "alice", &via).await?;
    let mut bob = register(&dir.join("bob"), address, "bob", &via).await?;
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    let pids = (server.pid, relay_pid);
    let warm = src.join("warm.bin");
    random_file(&warm, 1)?;
    transfer(&mut alice, &mut bob, &warm, &dir.join("warm.out"), pids).await?;

    let big = src.join("big.bin");
    random_file(&big, a.size_mib)?;
    let rss_base = procs::rss_bytes(server.pid)?;
    let hwm_base = hwm_bytes(server.pid)?;
    let sampler = RssSampler::start(server.pid);
    log(&format!("{} MiB file: upload and download", a.size_mib));
    let trip = transfer(&mut alice, &mut bob, &big, &dir.join("big.out"), pids).await?;
    let rss_peak = sampler.peak().max(rss_base);
    drop(sampler);
    let hwm_growth = hwm_bytes(server.pid)?.saturating_sub(hwm_base);
    let r = Run {
        raw_mbs,
        blob_bytes: trip.blob_bytes,
        up_secs: trip.up_secs,
        send_secs: trip.send_secs,
        down_secs: trip.down_secs,
        fetch_secs: trip.fetch_secs,
        rss_base,
        rss_peak,
        hwm_growth,
        up_cpu: trip.up_cpu,
        down_cpu: trip.down_cpu,
        load_before,
        load_after: super::loadavg(),
    };
    log(&format!(
        "upload {:.0} MB/s, download {:.0} MB/s, server RSS +{:.1} MiB",
        r.up_mbs(),
        r.down_mbs(),
        r.growth() as f64 / 1048576.0
    ));
    drop(relay);
    Ok(r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

fn report(a: &FilesArgs, ponte: &Path, runs: &[Run]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## File transfer through a TLS relay (loopback)\n");
    let _ = writeln!(
        s,
        "- machine: {}, {} CPUs, {}; `ponte`: {}",
        super::report::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        super::report::mem_total(),
        ponte.display()
    );
    let _ = writeln!(
        s,
        "- file: {} MiB of random bytes, one `tls://` relay route; raw TLS: {} s of one connection through the same relay to a discard sink",
        a.size_mib, a.raw_secs
    );
    let _ = writeln!(
        s,
        "- MB/s: 10^6 bytes of the blob (ciphertext) per second, from the first progress report to the last; `send`/`fetch`: the whole call (encryption; SHA-256 check and decryption)\n"
    );
    let _ = writeln!(
        s,
        "| run | raw TLS MB/s | upload MB/s | ratio | download MB/s | ratio | send / fetch s | server RSS MiB: before, peak (+growth), HWM growth | CPU s up (server, relay, clients) | CPU s down | load before → after |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} / {:.2} | {}, {} (+{}), +{} | {:.2}, {:.2}, {:.2} | {:.2}, {:.2}, {:.2} | {} → {} |",
            k + 1,
            r.raw_mbs,
            r.up_mbs(),
            r.up_mbs() / r.raw_mbs,
            r.down_mbs(),
            r.down_mbs() / r.raw_mbs,
            r.send_secs,
            r.fetch_secs,
            mib(r.rss_base),
            mib(r.rss_peak),
            mib(r.growth()),
            mib(r.hwm_growth),
            r.up_cpu.server,
            r.up_cpu.relay,
            r.up_cpu.clients,
            r.down_cpu.server,
            r.down_cpu.relay,
            r.down_cpu.clients,
            r.load_before,
            r.load_after,
        );
    }
    let up = median(runs.iter().map(|r| r.up_mbs() / r.raw_mbs).collect());
    let down = median(runs.iter().map(|r| r.down_mbs() / r.raw_mbs).collect());
    let growth = median(runs.iter().map(|r| r.growth() as f64).collect());
    let pass = |ok: bool| if ok { "yes" } else { "**no**" };
    let _ = writeln!(s, "\n| target | median | met |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| upload ≥ 0.5 × raw TLS | {up:.2} | {} |",
        pass(up >= 0.5)
    );
    let _ = writeln!(
        s,
        "| download ≥ 0.5 × raw TLS | {down:.2} | {} |",
        pass(down >= 0.5)
    );
    let _ = writeln!(
        s,
        "| server RSS grows < 32 MiB | {:.1} MiB | {} |",
        growth / 1048576.0,
        pass(growth < 32.0 * 1048576.0)
    );
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_relays_listener_lines() {
        let line = "2026-12-06T23:00:00Z  INFO ponte_proxy::server: listening on 127.0.0.1:4242 listener=raw";
        assert_eq!(
            listening(line),
            Some(("raw".to_owned(), "127.0.0.1:4242".parse().unwrap()))
        );
        assert_eq!(listening("nothing here"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}

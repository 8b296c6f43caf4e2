//! `ponte-bench server`: the messaging-server benchmark — `ponte server`
//! and, in the same run, `nats-server` as the raw-routing reference.
//!
//! - `ponte-bench server run …` (this file) starts each system as a child
//!   process, drives the phases below with load-generator processes, reads
//!   the servers' memory and CPU time from /proc, and prints a Markdown
//!   report.
//! - `ponte-bench server client …` is one load-generator process
//!   (`ponte_load.rs` speaks the ponte protocol, `nats.rs` the NATS one).
//! - `ponte-bench server files …` sends a file through a TLS relay
//!   (`files.rs`).
//! - `ponte-bench server scale …` runs the traffic phases against one
//!   SQLite node and one, two and three PostgreSQL nodes (`scale.rs`).
//!
//! Phases, per system: N idle logged-in clients (server RSS delta / N, the
//! clients spread over processes of `--clients-per-proc` each), online
//! one-to-one pairs at full speed (delivered messages/s), the same pairs
//! paced at half that rate (one-way latency p50/p99), and for ponte durable
//! sends to offline recipients (`SendAck`s per second), and the group
//! fan-out (`group.rs`): a message to every member of a group, all online,
//! timed until the last member has it, and the database bytes stored per
//! group message for offline members.
//! See docs/BENCHMARKS-server.md.

mod common;
mod files;
mod group;
mod nats;
mod ponte_load;
pub(crate) mod procs;
mod report;
mod scale;
mod stats;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use common::LoadResult;
use procs::Loader;
use report::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `ponte-bench server …`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: ServerCommand,
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Run the messaging benchmark (ponte server and nats-server) and print
    /// a Markdown report.
    Run(RunArgs),
    /// The same workload against one SQLite node, one PostgreSQL node, and
    /// two and three PostgreSQL+NATS nodes, with the CPU spent per message
    /// in the nodes, PostgreSQL and NATS (`scale.rs`).
    Scale(scale::ScaleArgs),
    /// One load-generator process (started by `run`).
    Client(ClientArgs),
    /// A file through a TLS relay on loopback, up and down, against the
    /// relay's raw TLS throughput, and the server's memory meanwhile
    /// (`files.rs`).
    Files(files::FilesArgs),
}

/// Settings of a benchmark run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Smoke run under a minute: 200 idle clients, 4 pairs, 3 s phases.
    #[arg(long)]
    quick: bool,
    /// Idle client counts to measure, comma-separated [default: 1000,15000].
    #[arg(long, value_delimiter = ',')]
    idle: Option<Vec<u32>>,
    /// Idle clients per load-generator process (each stays under its
    /// open-file limit).
    #[arg(long, default_value_t = 4000)]
    clients_per_proc: u32,
    /// Sender/receiver pairs for the online and durable phases [default: 16].
    #[arg(long)]
    pairs: Option<u32>,
    /// Load-generator processes for the online and durable phases.
    #[arg(long, default_value_t = 2)]
    load_procs: u32,
    /// Message body (ponte) / payload (NATS) bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages a sender keeps unacknowledged (ponte: sends awaiting their
    /// SendAck; NATS: published and not yet flushed by a PING/PONG).
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Counted seconds per traffic phase [default: 10].
    #[arg(long)]
    duration: Option<u64>,
    /// Warm-up seconds before counting [default: 2].
    #[arg(long)]
    warmup: Option<u64>,
    /// Offline recipients for the durable phase [default: 1000].
    #[arg(long)]
    offline: Option<u32>,
    /// Members of the group in the fan-out phase [default: 1000].
    #[arg(long)]
    group_members: Option<u32>,
    /// Group messages sent in the fan-out phase, and again to offline
    /// members for the bytes stored [default: 200].
    #[arg(long)]
    group_messages: Option<u32>,
    /// How many times to run everything (reports each run and the median).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The `ponte` binary [default: `ponte` next to this executable].
    #[arg(long)]
    ponte: Option<PathBuf>,
    /// The `nats-server` binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// Skip the NATS reference.
    #[arg(long)]
    no_nats: bool,
    /// Also write the report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Ponte,
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Register,
    Idle,
    Online,
    Durable,
    Group,
}

/// Arguments of one load-generator process.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[arg(long, value_enum)]
    system: System,
    /// `ponte://HOST:PORT#KEY` or the NATS `HOST:PORT`.
    #[arg(long)]
    addr: String,
    /// ponte online mode: the receivers log in here instead (another node
    /// of the same service: cross-node delivery).
    #[arg(long)]
    recv_addr: Option<String>,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 1)]
    seed: u32,
    /// First account (register/idle) or first pair account (online/durable).
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Accounts (register/idle) or pairs (online/durable).
    #[arg(long)]
    count: u32,
    #[arg(long, default_value_t = 0)]
    offline_first: u32,
    #[arg(long, default_value_t = 0)]
    offline_count: u32,
    /// Messages per second per sender; 0 for unpaced.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 128)]
    window: usize,
    #[arg(long, default_value_t = 256)]
    size: usize,
    #[arg(long, default_value_t = 2000)]
    warmup_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Group messages to send (group mode; the sender is `first`, the
    /// members the `count` accounts after it).
    #[arg(long, default_value_t = 0)]
    messages: u32,
    /// Group mode: the members stay offline.
    #[arg(long)]
    members_offline: bool,
}

/// Runs `ponte-bench server …`.
pub fn run(a: ServerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match a.command {
        ServerCommand::Run(r) => rt.block_on(orchestrate(r)),
        ServerCommand::Client(c) => rt.block_on(client(c)),
        ServerCommand::Files(f) => rt.block_on(files::run(f)),
        ServerCommand::Scale(s) => rt.block_on(scale::run(s)),
    }
}

async fn client(c: ClientArgs) -> anyhow::Result<()> {
    let warmup = Duration::from_millis(c.warmup_ms);
    let duration = Duration::from_millis(c.duration_ms);
    match c.system {
        System::Ponte => {
            let addr: ponte_wire::address::ServerAddress =
                c.addr.parse().context("server address")?;
            match c.mode {
                Mode::Register => {
                    let n =
                        ponte_load::register_range(&addr, c.seed, c.first, c.count, c.concurrency)
                            .await?;
                    common::print_result(&LoadResult {
                        acked: n as u64,
                        ..LoadResult::default()
                    })
                }
                Mode::Idle => {
                    ponte_load::idle(&addr, c.seed, c.first, c.count, c.concurrency).await
                }
                Mode::Group => {
                    let plan = group::GroupPlan {
                        sender: c.first,
                        first_member: c.first + 1,
                        members: c.count,
                        messages: c.messages,
                        size: c.size,
                        online: !c.members_offline,
                        concurrency: c.concurrency,
                    };
                    let r = group::fan_out(&addr, c.seed, plan).await?;
                    common::print_result(&r)
                }
                Mode::Online | Mode::Durable => {
                    let durable = c.mode == Mode::Durable;
                    let plan = ponte_load::SendPlan {
                        sender: 0,
                        recipients: Vec::new(),
                        rate: c.rate,
                        window: c.window,
                        size: c.size,
                        count_acks: durable,
                    };
                    let recv_addr: Option<ponte_wire::address::ServerAddress> = c
                        .recv_addr
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .context("receivers' server address")?;
                    let r = ponte_load::traffic(
                        (&addr, recv_addr.as_ref().unwrap_or(&addr)),
                        c.seed,
                        c.first,
                        c.count,
                        durable,
                        (c.offline_first, c.offline_count),
                        plan,
                        warmup,
                        duration,
                    )
                    .await?;
                    common::print_result(&r)
                }
            }
        }
        System::Nats => match c.mode {
            Mode::Idle => nats::idle(&c.addr, c.count, c.concurrency).await,
            Mode::Online => {
                let r = nats::traffic(
                    &c.addr, c.first, c.count, c.rate, c.window, c.size, warmup, duration,
                )
                .await?;
                common::print_result(&r)
            }
            Mode::Register | Mode::Durable | Mode::Group => {
                bail!("core NATS has no accounts, durability or groups")
            }
        },
    }
}

/// Settled values of a run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    idle: &'static [u32],
    pairs: u32,
    duration: u64,
    warmup: u64,
    offline: u32,
    group_members: u32,
    group_messages: u32,
}

/// What one system measured in one run.
#[derive(Debug, Clone, Default)]
struct Measured {
    online: Option<f64>,
    online_cores: Option<f64>,
    half_offered: Option<f64>,
    half_achieved: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    /// ponte only: send → SendAck at half rate.
    ack_p50_us: Option<f64>,
    ack_p99_us: Option<f64>,
    durable: Option<f64>,
    durable_cores: Option<f64>,
    /// NATS only: latency when paced at ponte's half rate (same offered load).
    same_p50_us: Option<f64>,
    same_p99_us: Option<f64>,
    /// (N, bytes per idle client).
    idle: Vec<(u32, Option<f64>)>,
    /// ponte only: a group message's send until its last member has it.
    group_p50_us: Option<f64>,
    group_p99_us: Option<f64>,
    /// ponte only: database bytes per group message to offline members.
    group_bytes: Option<f64>,
    errors: u64,
}

#[derive(Debug, Clone, Default)]
struct RunOut {
    ponte: Measured,
    nats: Option<Measured>,
    load_before: String,
    load_after: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn split(total: u32, parts: u32) -> Vec<(u32, u32)> {
    let parts = parts.max(1).min(total.max(1));
    let mut out = Vec::new();
    let mut first = 0;
    for k in 0..parts {
        let n = total / parts + u32::from(k < total % parts);
        if n > 0 {
            out.push((first, n));
        }
        first += n;
    }
    out
}

fn log(msg: &str) {
    eprintln!("[server-bench] {msg}");
}

async fn orchestrate(a: RunArgs) -> anyhow::Result<()> {
    let idle: Vec<u32> = a.idle.clone().unwrap_or_else(|| {
        if a.quick {
            vec![200]
        } else {
            vec![1000, 15_000]
        }
    });
    let plan = Plan {
        idle: Box::leak(idle.into_boxed_slice()),
        pairs: a.pairs.unwrap_or(if a.quick { 4 } else { 16 }),
        duration: a.duration.unwrap_or(if a.quick { 3 } else { 10 }),
        warmup: a.warmup.unwrap_or(if a.quick { 1 } else { 2 }),
        offline: a.offline.unwrap_or(if a.quick { 100 } else { 1000 }).max(1),
        group_members: a
            .group_members
            .unwrap_or(if a.quick { 100 } else { 1000 })
            .clamp(1, ponte_wire::messages::MAX_GROUP_RECIPIENTS as u32),
        group_messages: a
            .group_messages
            .unwrap_or(if a.quick { 10 } else { 200 })
            .max(1),
    };
    let ponte_bin = match &a.ponte {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("ponte"),
    };
    if !ponte_bin.exists() {
        bail!(
            "{} not found: cargo build --release -p ponte-cli (or pass --ponte)",
            ponte_bin.display()
        );
    }
    let nats = !a.no_nats;
    if nats && !a.nats_server.exists() {
        bail!(
            "{} not found: apt-get install -y nats-server (or pass --no-nats)",
            a.nats_server.display()
        );
    }
    let mut runs = Vec::new();
    for k in 0..a.runs.max(1) {
        log(&format!("run {} of {}", k + 1, a.runs.max(1)));
        let load_before = loadavg();
        let ponte = run_ponte(&a, &plan, &ponte_bin, k + 1).await?;
        let nats = if nats {
            Some(run_nats(&a, &plan, ponte.half_offered).await?)
        } else {
            None
        };
        runs.push(RunOut {
            ponte,
            nats,
            load_before,
            load_after: loadavg(),
        });
    }
    let report = report(&a, &plan, &ponte_bin, &runs).await;
    print!("{report}");
    if let Some(path) = &a.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn base_client_args(system: &str, addr: &str, mode: &str, seed: u32) -> Vec<String> {
    vec![
        "--system".into(),
        system.into(),
        "--addr".into(),
        addr.into(),
        "--mode".into(),
        mode.into(),
        "--seed".into(),
        seed.to_string(),
    ]
}

/// Spawns one loader per argument set, waits until all are ready and
/// returns them.
async fn spawn_ready(sets: Vec<Vec<String>>, within: Duration) -> anyhow::Result<Vec<Loader>> {
    let mut loaders = Vec::new();
    for s in &sets {
        loaders.push(Loader::spawn(s)?);
    }
    let mut n = 0;
    for l in &mut loaders {
        n += l.ready(within).await?;
    }
    log(&format!("{n} connections ready"));
    Ok(loaders)
}

/// Idle phase: returns server RSS growth per connected client.
async fn idle_phase(pid: u32, sets: Vec<Vec<String>>, n: u32) -> anyhow::Result<Option<f64>> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = procs::rss_bytes(pid)?;
    let loaders = spawn_ready(sets, Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procs::rss_bytes(pid)?;
    for l in loaders {
        l.finish().await?;
    }
    log(&format!(
        "idle {n}: RSS {} -> {} KiB",
        before / 1024,
        after / 1024
    ));
    Ok(Some(
        after.saturating_sub(before) as f64 / f64::from(n.max(1)),
    ))
}

/// Traffic phase: all loaders ready, `go`, results summed; also the
/// server's CPU time (cores used over the phase).
async fn traffic_phase(
    pid: u32,
    sets: Vec<Vec<String>>,
    plan: &Plan,
) -> anyhow::Result<(LoadResult, Option<f64>)> {
    let mut loaders = spawn_ready(sets, Duration::from_secs(300)).await?;
    let cpu0 = procs::cpu_secs(pid).ok();
    let t0 = std::time::Instant::now();
    for l in &mut loaders {
        l.go().await?;
    }
    let within = Duration::from_secs(plan.warmup + plan.duration + 120);
    let mut total = LoadResult::default();
    for l in loaders {
        total.merge(l.result(within).await?);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cores = match (cpu0, procs::cpu_secs(pid).ok()) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall),
        _ => None,
    };
    Ok((total, cores))
}

#[allow(clippy::too_many_arguments)]
fn traffic_sets(
    system: &str,
    addr: &str,
    mode: &str,
    seed: u32,
    a: &RunArgs,
    plan: &Plan,
    first_account: u32,
    per_pair_accounts: u32,
    rate_per_sender: f64,
) -> Vec<Vec<String>> {
    split(plan.pairs, a.load_procs)
        .into_iter()
        .map(|(first, n)| {
            let mut v = base_client_args(system, addr, mode, seed);
            v.extend([
                "--first".into(),
                (first_account + first * per_pair_accounts).to_string(),
                "--count".into(),
                n.to_string(),
                "--offline-first".into(),
                "0".into(),
                "--offline-count".into(),
                plan.offline.to_string(),
                "--rate".into(),
                format!("{rate_per_sender:.3}"),
                "--window".into(),
                a.window.to_string(),
                "--size".into(),
                a.size.to_string(),
                "--warmup-ms".into(),
                (plan.warmup * 1000).to_string(),
                "--duration-ms".into(),
                (plan.duration * 1000).to_string(),
            ]);
            v
        })
        .collect()
}

fn idle_sets(system: &str, addr: &str, seed: u32, n: u32, per_proc: u32) -> Vec<Vec<String>> {
    let procs = n.div_ceil(per_proc.max(1));
    split(n, procs)
        .into_iter()
        .map(|(first, count)| {
            let mut v = base_client_args(system, addr, "idle", seed);
            v.extend([
                "--first".into(),
                first.to_string(),
                "--count".into(),
                count.to_string(),
            ]);
            v
        })
        .collect()
}

fn latency(m: &mut Measured, r: &mut LoadResult) {
    r.lat_us.sort_unstable();
    m.p50_us = stats::percentile(&r.lat_us, 50.0).map(f64::from);
    m.p99_us = stats::percentile(&r.lat_us, 99.0).map(f64::from);
    m.p999_us = stats::percentile(&r.lat_us, 99.9).map(f64::from);
    r.ack_lat_us.sort_unstable();
    m.ack_p50_us = stats::percentile(&r.ack_lat_us, 50.0).map(f64::from);
    m.ack_p99_us = stats::percentile(&r.ack_lat_us, 99.0).map(f64::from);
}

async fn run_ponte(a: &RunArgs, plan: &Plan, bin: &Path, seed: u32) -> anyhow::Result<Measured> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let config = tmp.path().join("server.toml");
    let logf = tmp.path().join("ponte-server.log");
    std::fs::write(
        &config,
        "# ponte-bench: bulk registration from one address, many connections.\n\
         max_connections = 60000\n\
         max_pending = 1000000\n\
         idle_timeout = \"1h\"\n\
         [register_limit]\nburst = 1000000\nper_hour = 1000000000\n\
         [register_limit_per_peer]\nburst = 1000000\nper_hour = 1000000000\n",
    )?;
    let max_idle = plan.idle.iter().copied().max().unwrap_or(0);
    let singles = max_idle.max(plan.offline);
    // Each traffic phase has its own pairs of accounts: an unpaced phase
    // ends with messages still queued for its receivers (senders only wait
    // for durability, not delivery), and the next phase must not start
    // behind that backlog.
    let online_base = singles;
    let half_base = singles + 2 * plan.pairs;
    let durable_base = singles + 4 * plan.pairs;
    // Two groups, each a sender and its members: one online, one offline
    // (its mailboxes keep what the bytes-stored phase sends).
    let group_online_base = singles + 6 * plan.pairs;
    let group_offline_base = group_online_base + plan.group_members + 1;
    let total = group_offline_base + plan.group_members + 1;
    let mut m = Measured::default();

    // Accounts.
    let (sys, addr) = procs::start_ponte(bin, &data, &config, &logf).await?;
    log(&format!(
        "ponte server at {addr}: registering {total} accounts"
    ));
    let t = std::time::Instant::now();
    let mut loaders = Vec::new();
    for (first, n) in split(total, a.load_procs) {
        let mut v = base_client_args("ponte", &addr, "register", seed);
        v.extend([
            "--first".into(),
            first.to_string(),
            "--count".into(),
            n.to_string(),
            "--concurrency".into(),
            "32".into(),
        ]);
        loaders.push(Loader::spawn(&v)?);
    }
    for l in loaders {
        l.result(Duration::from_secs(1800)).await?;
    }
    log(&format!("registered in {:.1} s", t.elapsed().as_secs_f64()));
    sys.stop().await;

    // Bytes per group message, on the database as registration left it
    // (nothing deleted yet, so no free pages for the new rows to reuse).
    let before = db_bytes(&data);
    let (sys, addr) = procs::start_ponte(bin, &data, &config, &logf).await?;
    let r = group_phase(&addr, seed, plan, a.size, group_offline_base, false).await?;
    sys.stop().await;
    let after = db_bytes(&data);
    m.errors += r.errors;
    if r.acked > 0 {
        let per = after.saturating_sub(before) as f64 / r.acked as f64;
        log(&format!(
            "ponte group to {} offline members: {per:.0} database bytes per message ({} of body)",
            plan.group_members, a.size
        ));
        m.group_bytes = Some(per);
    }

    // Idle clients, each N on a freshly started server.
    for &n in plan.idle {
        let (sys, addr) = procs::start_ponte(bin, &data, &config, &logf).await?;
        let sets = idle_sets("ponte", &addr, seed, n, a.clients_per_proc);
        let per = idle_phase(sys.pid, sets, n).await?;
        m.idle.push((n, per));
        sys.stop().await;
    }

    // Online pairs, full speed then half rate; durable sends.
    let (sys, addr) = procs::start_ponte(bin, &data, &config, &logf).await?;
    let sets = traffic_sets("ponte", &addr, "online", seed, a, plan, online_base, 2, 0.0);
    let (r, cores) = traffic_phase(sys.pid, sets, plan).await?;
    let rate = r.delivered as f64 / r.secs.max(1e-9);
    log(&format!(
        "ponte online: {rate:.0} msg/s ({} errors)",
        r.errors
    ));
    m.online = Some(rate);
    m.online_cores = cores;
    m.errors += r.errors;
    let half = rate / 2.0;
    m.half_offered = Some(half);
    let sets = traffic_sets(
        "ponte",
        &addr,
        "online",
        seed,
        a,
        plan,
        half_base,
        2,
        half / f64::from(plan.pairs.max(1)),
    );
    let (mut r, _) = traffic_phase(sys.pid, sets, plan).await?;
    m.half_achieved = Some(r.delivered as f64 / r.secs.max(1e-9));
    m.errors += r.errors;
    latency(&mut m, &mut r);
    log(&format!(
        "ponte half rate: p50 {:?} us, p99 {:?} us",
        m.p50_us, m.p99_us
    ));
    let sets = traffic_sets(
        "ponte",
        &addr,
        "durable",
        seed,
        a,
        plan,
        durable_base,
        2,
        0.0,
    );
    let (r, cores) = traffic_phase(sys.pid, sets, plan).await?;
    let durable = r.acked as f64 / r.secs.max(1e-9);
    log(&format!(
        "ponte durable: {durable:.0} msg/s ({} errors)",
        r.errors
    ));
    m.durable = Some(durable);
    m.durable_cores = cores;
    m.errors += r.errors;

    // Group fan-out to online members.
    let mut r = group_phase(&addr, seed, plan, a.size, group_online_base, true).await?;
    r.lat_us.sort_unstable();
    m.group_p50_us = stats::percentile(&r.lat_us, 50.0).map(f64::from);
    m.group_p99_us = stats::percentile(&r.lat_us, 99.0).map(f64::from);
    m.errors += r.errors;
    log(&format!(
        "ponte group fan-out to {} online members: p50 {:?} us, p99 {:?} us ({} of {} messages, {} errors)",
        plan.group_members,
        m.group_p50_us,
        m.group_p99_us,
        r.lat_us.len(),
        plan.group_messages,
        r.errors
    ));
    sys.stop().await;
    Ok(m)
}

/// Size of the server's database with its write-ahead log, in bytes.
fn db_bytes(data: &Path) -> u64 {
    ["ponte.db", "ponte.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// One group load process: the sender `base`, members `base + 1 ..`,
/// online or not.
async fn group_phase(
    addr: &str,
    seed: u32,
    plan: &Plan,
    size: usize,
    base: u32,
    online: bool,
) -> anyhow::Result<LoadResult> {
    let mut v = base_client_args("ponte", addr, "group", seed);
    v.extend([
        "--first".into(),
        base.to_string(),
        "--count".into(),
        plan.group_members.to_string(),
        "--messages".into(),
        plan.group_messages.to_string(),
        "--size".into(),
        size.to_string(),
    ]);
    if !online {
        v.push("--members-offline".into());
    }
    let mut loaders = spawn_ready(vec![v], Duration::from_secs(300)).await?;
    let mut total = LoadResult::default();
    for l in &mut loaders {
        l.go().await?;
    }
    // Each message waits at most 30 s.
    let within = Duration::from_secs(30 * u64::from(plan.group_messages) + 60);
    for l in loaders {
        total.merge(l.result(within).await?);
    }
    Ok(total)
}

async fn run_nats(a: &RunArgs, plan: &Plan, same_rate: Option<f64>) -> anyhow::Result<Measured> {
    let tmp = tempfile::tempdir()?;
    let logf = tmp.path().join("nats-server.log");
    let mut m = Measured::default();
    for &n in plan.idle {
        let (sys, addr) = procs::start_nats(&a.nats_server, &logf).await?;
        let sets = idle_sets("nats", &addr, 0, n, a.clients_per_proc);
        let per = idle_phase(sys.pid, sets, n).await?;
        m.idle.push((n, per));
        sys.stop().await;
    }
    let (sys, addr) = procs::start_nats(&a.nats_server, &logf).await?;
    let sets = traffic_sets("nats", &addr, "online", 0, a, plan, 0, 1, 0.0);
    let (r, cores) = traffic_phase(sys.pid, sets, plan).await?;
    let rate = r.delivered as f64 / r.secs.max(1e-9);
    log(&format!("nats online: {rate:.0} msg/s"));
    m.online = Some(rate);
    m.online_cores = cores;
    let half = rate / 2.0;
    m.half_offered = Some(half);
    let sets = traffic_sets(
        "nats",
        &addr,
        "online",
        0,
        a,
        plan,
        0,
        1,
        half / f64::from(plan.pairs.max(1)),
    );
    let (mut r, _) = traffic_phase(sys.pid, sets, plan).await?;
    m.half_achieved = Some(r.delivered as f64 / r.secs.max(1e-9));
    latency(&mut m, &mut r);
    log(&format!(
        "nats half rate: p50 {:?} us, p99 {:?} us",
        m.p50_us, m.p99_us
    ));
    if let Some(same) = same_rate {
        let sets = traffic_sets(
            "nats",
            &addr,
            "online",
            0,
            a,
            plan,
            0,
            1,
            same / f64::from(plan.pairs.max(1)),
        );
        let (mut r, _) = traffic_phase(sys.pid, sets, plan).await?;
        let mut same_m = Measured::default();
        latency(&mut same_m, &mut r);
        m.same_p50_us = same_m.p50_us;
        m.same_p99_us = same_m.p99_us;
        log(&format!(
            "nats at ponte's half rate ({same:.0} msg/s): p50 {:?} us, p99 {:?} us",
            m.same_p50_us, m.same_p99_us
        ));
    }
    sys.stop().await;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 4), vec![(0, 1), (1, 1)]);
        assert_eq!(split(15_000, 4).iter().map(|x| x.1).sum::<u32>(), 15_000);
        assert_eq!(split(0, 2), Vec::<(u32, u32)>::new());
    }

    #[test]
    fn idle_processes_stay_under_the_per_process_count() {
        let sets = idle_sets("ponte", "a", 1, 15_000, 4000);
        assert_eq!(sets.len(), 4);
        let sets = idle_sets("ponte", "a", 1, 1000, 4000);
        assert_eq!(sets.len(), 1);
    }
}

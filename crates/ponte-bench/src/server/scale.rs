//! `ponte-bench server scale`: the same workload against one SQLite node,
//! one PostgreSQL node, and two and three PostgreSQL+NATS nodes, in one
//! run. Each setup gets a fresh PostgreSQL database (dropped at the end)
//! and a `nats-server -js` of its own.
//!
//! Phases per setup: registration (through the first node), idle clients
//! spread over the nodes (RSS growth of all nodes per client), online
//! pairs at full speed (delivered msg/s), the same pairs paced at half that
//! rate (delivery p50/p99), paced at a fixed modest rate (`--modest-rate`,
//! the traffic a node sees from a few busy conversations: delivery p50/p99
//! without the queueing of a near-full writer), and durable sends to
//! offline recipients (acked msg/s). With several nodes every pair's
//! sender and receiver are on different nodes, so both latencies are
//! cross-node delivery latencies (commit, NATS wake-up, mailbox read on the
//! receiver's node).
//!
//! CPU: before and after each traffic phase the harness reads utime+stime
//! (/proc/PID/stat) of every node, of the PostgreSQL backends serving the
//! setup's database (the pids `pg_stat_activity` lists for it) and of the
//! setup's nats-server, and reports CPU microseconds per message for each.
//! PostgreSQL's shared background processes (WAL writer, checkpointer) are
//! not counted: they serve every database of the machine.

use super::common::LoadResult;
use super::procs::{self, Loader, System};
use super::{base_client_args, log, spawn_ready, split, stats};
use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings of `ponte-bench server scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Smoke run: 200 idle clients, 4 pairs, 3 s phases.
    #[arg(long)]
    quick: bool,
    /// The setups to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,pg1,pg2,pg3"
    )]
    setups: Vec<Setup>,
    /// PostgreSQL to create the fresh databases in (as a superuser).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg: String,
    /// Idle clients [default: 2000].
    #[arg(long)]
    idle: Option<u32>,
    /// Sender/receiver pairs [default: 16].
    #[arg(long)]
    pairs: Option<u32>,
    /// Load-generator processes per traffic phase (at least one per node).
    #[arg(long, default_value_t = 2)]
    load_procs: u32,
    /// Message body bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages per second of the modest-rate phase, all pairs together.
    #[arg(long, default_value_t = 100.0)]
    modest_rate: f64,
    /// Sends a sender keeps unacknowledged.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Counted seconds per traffic phase [default: 10].
    #[arg(long)]
    duration: Option<u64>,
    /// Warm-up seconds [default: 2].
    #[arg(long)]
    warmup: Option<u64>,
    /// Offline recipients of the durable phase [default: 1000].
    #[arg(long)]
    offline: Option<u32>,
    /// The `ponte` binary [default: next to this executable].
    #[arg(long)]
    ponte: Option<PathBuf>,
    /// The `nats-server` binary.
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats_server: PathBuf,
    /// Also write the report here.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// One configuration of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Setup {
    /// One node on SQLite.
    Sqlite,
    /// One node on PostgreSQL (no bus).
    Pg1,
    /// Two nodes on PostgreSQL and NATS.
    Pg2,
    /// Three nodes on PostgreSQL and NATS.
    Pg3,
}

impl Setup {
    fn nodes(self) -> usize {
        match self {
            Setup::Sqlite | Setup::Pg1 => 1,
            Setup::Pg2 => 2,
            Setup::Pg3 => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Setup::Sqlite => "1 node, SQLite",
            Setup::Pg1 => "1 node, PostgreSQL",
            Setup::Pg2 => "2 nodes, PostgreSQL + NATS",
            Setup::Pg3 => "3 nodes, PostgreSQL + NATS",
        }
    }
}

/// CPU seconds spent by each part over a phase.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    nodes: f64,
    pg: f64,
    nats: f64,
}

/// A traffic phase's messages and the CPU they cost.
#[derive(Debug, Clone, Copy, Default)]
struct Costed {
    per_sec: f64,
    messages: u64,
    cpu: Cpu,
}

#[derive(Debug, Clone, Default)]
struct Row {
    online: Costed,
    durable: Costed,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    modest_p50_us: Option<f64>,
    modest_p99_us: Option<f64>,
    idle_bytes: Option<f64>,
    errors: u64,
    db_bytes: Option<i64>,
}

/// The processes of a running setup.
struct Running {
    nodes: Vec<(System, String)>,
    nats: Option<System>,
    db: Option<(String, String)>,
    admin_pg: String,
}

impl Running {
    /// utime+stime of every part now (PostgreSQL: per backend pid of the
    /// setup's database).
    async fn sample(&self) -> (Vec<f64>, HashMap<i32, f64>, f64) {
        let nodes = self
            .nodes
            .iter()
            .map(|(s, _)| procs::cpu_secs(s.pid).unwrap_or(0.0))
            .collect();
        let mut pg = HashMap::new();
        if let Some((name, _)) = &self.db {
            if let Ok(pids) = backend_pids(&self.admin_pg, name).await {
                for pid in pids {
                    if let Ok(c) = procs::cpu_secs(u32::try_from(pid).unwrap_or(0)) {
                        pg.insert(pid, c);
                    }
                }
            }
        }
        let nats = self
            .nats
            .as_ref()
            .and_then(|n| procs::cpu_secs(n.pid).ok())
            .unwrap_or(0.0);
        (nodes, pg, nats)
    }
}

/// The CPU between two samples (a backend that appeared in between counts
/// from zero: all its time was spent in the phase).
fn cpu_between(
    a: &(Vec<f64>, HashMap<i32, f64>, f64),
    b: &(Vec<f64>, HashMap<i32, f64>, f64),
) -> Cpu {
    Cpu {
        nodes: b.0.iter().zip(&a.0).map(|(y, x)| (y - x).max(0.0)).sum(),
        pg: b
            .1
            .iter()
            .map(|(pid, y)| (y - a.1.get(pid).copied().unwrap_or(0.0)).max(0.0))
            .sum(),
        nats: (b.2 - a.2).max(0.0),
    }
}

/// A connection through the server's own connector (the same `sslmode`,
/// `sslrootcert`, … handling as the nodes'). The error never repeats the
/// URL (it may hold a password); it names the host and what failed.
async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    Ok(ponte_server::store::pg::connect(url).await?)
}

async fn backend_pids(admin: &str, db: &str) -> anyhow::Result<Vec<i32>> {
    let c = pg_connect(admin).await?;
    let rows = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The address `admin` points at, with database `db` instead (its
/// parameters, such as `sslmode` and `sslrootcert=/a/path`, kept).
fn url_with_db(admin: &str, db: &str) -> anyhow::Result<String> {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let (prefix, _) = base
        .rsplit_once('/')
        .context("PostgreSQL URL without a database")?;
    Ok(match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    })
}

/// Starts the nodes (and NATS) of `setup` in `dir`.
async fn start(setup: Setup, a: &ScaleArgs, bin: &Path, dir: &Path) -> anyhow::Result<Running> {
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        "# ponte-bench: bulk registration from one address, many connections.\n\
         max_connections = 60000\n\
         max_pending = 1000000\n\
         idle_timeout = \"1h\"\n\
         [register_limit]\nburst = 1000000\nper_hour = 1000000000\n\
         [register_limit_per_peer]\nburst = 1000000\nper_hour = 1000000000\n",
    )?;
    let logf = dir.join("ponte-server.log");
    let mut run = Running {
        nodes: Vec::new(),
        nats: None,
        db: None,
        admin_pg: a.pg.clone(),
    };
    let dirs: Vec<PathBuf> = (1..=setup.nodes())
        .map(|i| dir.join(format!("node{i}")))
        .collect();
    let mut extra: Vec<String> = Vec::new();
    if setup != Setup::Sqlite {
        let name = format!("ponte_bench_{:016x}", rand::random::<u64>());
        pg_connect(&a.pg)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = url_with_db(&a.pg, &name)?;
        run.db = Some((name, url.clone()));
        let out = tokio::process::Command::new(bin)
            .args(["server", "init", "--store", &url, "--data"])
            .arg(&dirs[0])
            .output()
            .await?;
        if !out.status.success() {
            bail!("server init: {}", String::from_utf8_lossy(&out.stderr));
        }
        for d in &dirs[1..] {
            std::fs::create_dir_all(d)?;
            std::fs::copy(dirs[0].join("server.key"), d.join("server.key"))?;
        }
        extra.extend(["--store".into(), url]);
    }
    if setup.nodes() > 1 {
        let (sys, addr) = procs::start_nats_js(&a.nats_server, dir, &dir.join("nats.log")).await?;
        run.nats = Some(sys);
        extra.extend(["--bus".into(), format!("nats://{addr}")]);
    }
    for d in &dirs {
        run.nodes
            .push(procs::start_node(bin, d, &config, &logf, &extra).await?);
    }
    Ok(run)
}

impl Running {
    async fn stop(self) {
        for (s, _) in self.nodes {
            s.stop().await;
        }
        if let Some(n) = self.nats {
            n.stop().await;
        }
        if let Some((name, _)) = self.db {
            if let Ok(c) = pg_connect(&self.admin_pg).await {
                let _ = c
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    }

    fn addr(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len()].1
    }
}

/// Load-generator argument sets for a traffic phase: process k sends
/// through node k and its receivers are on node k + 1 (the same node when
/// there is only one).
fn sets(
    run: &Running,
    a: &ScaleArgs,
    p: &Plan,
    mode: &str,
    base: u32,
    rate_per_sender: f64,
) -> Vec<Vec<String>> {
    let procs = a
        .load_procs
        .max(u32::try_from(run.nodes.len()).unwrap_or(1));
    split(p.pairs, procs)
        .into_iter()
        .enumerate()
        .map(|(k, (first, n))| {
            let mut v = base_client_args("ponte", run.addr(k), mode, 1);
            v.extend([
                "--recv-addr".into(),
                run.addr(k + 1).to_owned(),
                "--first".into(),
                (base + first * 2).to_string(),
                "--count".into(),
                n.to_string(),
                "--offline-first".into(),
                "0".into(),
                "--offline-count".into(),
                p.offline.to_string(),
                "--rate".into(),
                format!("{rate_per_sender:.3}"),
                "--window".into(),
                a.window.to_string(),
                "--size".into(),
                a.size.to_string(),
                "--warmup-ms".into(),
                (p.warmup * 1000).to_string(),
                "--duration-ms".into(),
                (p.duration * 1000).to_string(),
            ]);
            v
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    idle: u32,
    pairs: u32,
    duration: u64,
    warmup: u64,
    offline: u32,
}

/// One traffic phase with the CPU sampled around it.
async fn phase(
    run: &Running,
    sets: Vec<Vec<String>>,
    p: &Plan,
) -> anyhow::Result<(LoadResult, Cpu)> {
    let mut loaders = spawn_ready(sets, Duration::from_secs(300)).await?;
    let before = run.sample().await;
    for l in &mut loaders {
        l.go().await?;
    }
    let within = Duration::from_secs(p.warmup + p.duration + 120);
    let mut total = LoadResult::default();
    for l in loaders {
        total.merge(l.result(within).await?);
    }
    let after = run.sample().await;
    Ok((total, cpu_between(&before, &after)))
}

async fn measure(setup: Setup, a: &ScaleArgs, p: &Plan, bin: &Path) -> anyhow::Result<Row> {
    let tmp = tempfile::tempdir()?;
    let run = start(setup, a, bin, tmp.path()).await?;
    let result = measure_running(&run, a, p).await;
    run.stop().await;
    result
}

async fn measure_running(run: &Running, a: &ScaleArgs, p: &Plan) -> anyhow::Result<Row> {
    let mut row = Row::default();
    let singles = p.idle.max(p.offline);
    let (online_base, half_base, durable_base, modest_base) = (
        singles,
        singles + 2 * p.pairs,
        singles + 4 * p.pairs,
        singles + 6 * p.pairs,
    );
    let total = singles + 8 * p.pairs;
    let t = Instant::now();
    let mut loaders = Vec::new();
    for (first, n) in split(total, a.load_procs) {
        let mut v = base_client_args("ponte", run.addr(0), "register", 1);
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
    log(&format!(
        "registered {total} in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    // Idle clients, spread over the nodes.
    let rss = |run: &Running| -> u64 {
        run.nodes
            .iter()
            .map(|(s, _)| procs::rss_bytes(s.pid).unwrap_or(0))
            .sum()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(run);
    let mut idle_sets = Vec::new();
    for (k, (first, n)) in split(p.idle, run.nodes.len() as u32)
        .into_iter()
        .enumerate()
    {
        let mut v = base_client_args("ponte", run.addr(k), "idle", 1);
        v.extend([
            "--first".into(),
            first.to_string(),
            "--count".into(),
            n.to_string(),
        ]);
        idle_sets.push(v);
    }
    let holders = spawn_ready(idle_sets, Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(run);
    for h in holders {
        h.finish().await?;
    }
    row.idle_bytes = Some(after.saturating_sub(before) as f64 / f64::from(p.idle.max(1)));

    let (r, cpu) = phase(run, sets(run, a, p, "online", online_base, 0.0), p).await?;
    let rate = r.delivered as f64 / r.secs.max(1e-9);
    row.online = Costed {
        per_sec: rate,
        messages: r.delivered,
        cpu,
    };
    row.errors += r.errors;
    log(&format!("online {rate:.0} msg/s, cpu {cpu:?}"));
    let per_sender = rate / 2.0 / f64::from(p.pairs.max(1));
    let (mut r, _) = phase(run, sets(run, a, p, "online", half_base, per_sender), p).await?;
    r.lat_us.sort_unstable();
    row.p50_us = stats::percentile(&r.lat_us, 50.0).map(f64::from);
    row.p99_us = stats::percentile(&r.lat_us, 99.0).map(f64::from);
    row.errors += r.errors;
    log(&format!(
        "half rate p50 {:?} us p99 {:?} us",
        row.p50_us, row.p99_us
    ));
    let per_sender = a.modest_rate.max(0.001) / f64::from(p.pairs.max(1));
    let (mut r, _) = phase(run, sets(run, a, p, "online", modest_base, per_sender), p).await?;
    r.lat_us.sort_unstable();
    row.modest_p50_us = stats::percentile(&r.lat_us, 50.0).map(f64::from);
    row.modest_p99_us = stats::percentile(&r.lat_us, 99.0).map(f64::from);
    row.errors += r.errors;
    log(&format!(
        "{} msg/s p50 {:?} us p99 {:?} us",
        a.modest_rate, row.modest_p50_us, row.modest_p99_us
    ));
    let (r, cpu) = phase(run, sets(run, a, p, "durable", durable_base, 0.0), p).await?;
    row.durable = Costed {
        per_sec: r.acked as f64 / r.secs.max(1e-9),
        messages: r.acked,
        cpu,
    };
    row.errors += r.errors;
    log(&format!(
        "durable {:.0} msg/s, cpu {cpu:?}",
        row.durable.per_sec
    ));
    if let Some((name, _)) = &run.db {
        let c = pg_connect(&run.admin_pg).await?;
        row.db_bytes = c
            .query_one("SELECT pg_database_size($1)", &[name])
            .await
            .ok()
            .map(|r| r.get(0));
    }
    Ok(row)
}

/// Runs `ponte-bench server scale`.
pub async fn run(a: ScaleArgs) -> anyhow::Result<()> {
    let p = Plan {
        idle: a.idle.unwrap_or(if a.quick { 200 } else { 2000 }),
        pairs: a.pairs.unwrap_or(if a.quick { 4 } else { 16 }),
        duration: a.duration.unwrap_or(if a.quick { 3 } else { 10 }),
        warmup: a.warmup.unwrap_or(if a.quick { 1 } else { 2 }),
        offline: a.offline.unwrap_or(if a.quick { 100 } else { 1000 }).max(1),
    };
    let bin = match &a.ponte {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("ponte"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p ponte-cli",
            bin.display()
        );
    }
    let load_before = super::loadavg();
    let mut rows = Vec::new();
    for &setup in &a.setups {
        log(&format!("setup: {}", setup.name()));
        rows.push((setup, measure(setup, &a, &p, &bin).await?));
    }
    let report = report(&a, &p, &rows, &load_before);
    print!("{report}");
    if let Some(path) = &a.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn num(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{:.*}", digits, x / scale))
}

/// CPU µs per message of each part, and the shares of PostgreSQL and NATS.
fn costs(c: &Costed) -> (f64, f64, f64, f64) {
    let n = c.messages.max(1) as f64;
    let us = |s: f64| s * 1e6 / n;
    (
        us(c.cpu.nodes),
        us(c.cpu.pg),
        us(c.cpu.nats),
        us(c.cpu.nodes + c.cpu.pg + c.cpu.nats),
    )
}

fn report(a: &ScaleArgs, p: &Plan, rows: &[(Setup, Row)], load_before: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Setups: {} idle clients, {} pairs, {} B bodies, window {}, {} s phases after {} s \
         warm-up, {} offline recipients; load average before {load_before}, after {}.\n",
        p.idle,
        p.pairs,
        a.size,
        a.window,
        p.duration,
        p.warmup,
        p.offline,
        super::loadavg()
    );
    let _ = writeln!(
        s,
        "| setup | online msg/s | half rate p50 / p99 ms | {:.0} msg/s p50 / p99 ms | durable msg/s | KiB per idle client | errors |",
        a.modest_rate
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for (setup, r) in rows {
        let _ = writeln!(
            s,
            "| {}{} | {:.0} | {} / {} | {} / {} | {:.0} | {} | {} |",
            setup.name(),
            if setup.nodes() > 1 {
                " (cross-node)"
            } else {
                ""
            },
            r.online.per_sec,
            num(r.p50_us, 1000.0, 2),
            num(r.p99_us, 1000.0, 2),
            num(r.modest_p50_us, 1000.0, 2),
            num(r.modest_p99_us, 1000.0, 2),
            r.durable.per_sec,
            num(r.idle_bytes, 1024.0, 1),
            r.errors
        );
    }
    let _ = writeln!(
        s,
        "\nCPU microseconds per message (all nodes together; per node: divide by the node count), \
         and the share of PostgreSQL and NATS in the total:\n"
    );
    let _ = writeln!(
        s,
        "| setup | phase | nodes µs | per node µs | PostgreSQL µs | NATS µs | total µs | PostgreSQL share | NATS share |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (setup, r) in rows {
        for (phase, c) in [("online", &r.online), ("durable", &r.durable)] {
            let (nodes, pg, nats, total) = costs(c);
            // A part the setup does not run is a dash, not a zero.
            let part = |has: bool, x: f64| -> (String, String) {
                if !has {
                    return ("–".to_owned(), "–".to_owned());
                }
                let share = if total > 0.0 { x / total * 100.0 } else { 0.0 };
                (format!("{x:.1}"), format!("{share:.0}%"))
            };
            let (pg, pg_share) = part(*setup != Setup::Sqlite, pg);
            let (nats, nats_share) = part(setup.nodes() > 1, nats);
            let _ = writeln!(
                s,
                "| {} | {phase} | {nodes:.1} | {:.1} | {pg} | {nats} | {total:.1} | {pg_share} | {nats_share} |",
                setup.name(),
                nodes / setup.nodes() as f64,
            );
        }
    }
    let sizes: Vec<String> = rows
        .iter()
        .filter_map(|(setup, r)| {
            Some(format!(
                "{}: {:.1} MiB",
                setup.name(),
                r.db_bytes? as f64 / 1048576.0
            ))
        })
        .collect();
    if !sizes.is_empty() {
        let _ = writeln!(
            s,
            "\nPostgreSQL database size at the end ({} accounts, the durable phase's messages \
             still queued): {}.",
            p.idle.max(p.offline) + 8 * p.pairs,
            sizes.join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpu_counts_new_backends_from_zero() {
        let a = (vec![1.0, 2.0], HashMap::from([(10, 5.0)]), 1.0);
        let b = (vec![1.5, 2.5], HashMap::from([(10, 6.0), (11, 0.25)]), 1.5);
        let c = cpu_between(&a, &b);
        assert!((c.nodes - 1.0).abs() < 1e-9);
        assert!((c.pg - 1.25).abs() < 1e-9);
        assert!((c.nats - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_database_name_replaces_the_admin_one() {
        assert_eq!(
            url_with_db("postgres://postgres@127.0.0.1:5432/test", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_with_db(
                "postgres://p@db:5432/test?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "x"
            )
            .unwrap(),
            "postgres://p@db:5432/x?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        );
    }
}

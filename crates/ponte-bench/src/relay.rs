//! `ponte-bench relay`: one run, every system, one Markdown report.
//!
//! Order of a run:
//! 1. make a self-signed certificate, start the bench upstream (its own process);
//! 2. start every selected system on fresh ports, all at once;
//! 3. for each test, run it against each system in turn (interleaving keeps
//!    slow drifts of the shared machine from favouring one system);
//! 4. stop them; for each idle count, start each system fresh, measure its
//!    RSS before and after opening the connections, stop it;
//! 5. render the table (values, ratios to haproxy-official, target verdicts).

use crate::client::{ClientReport, Test};
use crate::report::{Metric, Results};
use crate::systems::{self, Env, Kind, Managed, Running, UpstreamAddrs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Connections per idle-test client process (each stays far below the
/// 20,000-descriptor limit).
const IDLE_PER_PROCESS: usize = 3000;
/// Extra time a client process gets beyond its test duration.
const CLIENT_SLACK: Duration = Duration::from_secs(60);

/// Arguments of `ponte-bench relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The `ponte` binary; without it the ponte row is skipped.
    #[arg(long)]
    pub ponte: Option<PathBuf>,
    /// The HAProxy binary.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    pub haproxy: PathBuf,
    /// Write the Markdown report here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Smoke run: 1 s per test and 500 idle connections (unless --idle is given).
    #[arg(long)]
    pub quick: bool,
    /// Idle connection counts for the memory test, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub idle: Vec<usize>,
    /// Seconds per timed test (default 5, or 1 with --quick).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Systems to run, comma separated (default: all; ponte only with --ponte).
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Keep configs and logs in this directory (default: a temporary one).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Also measure idle memory over TLS.
    #[arg(long)]
    pub idle_tls: bool,
    /// Repeat the timed tests this many times (interleaved) and report medians.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// Runs the whole comparison.
pub fn run(args: RelayArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

struct Plan {
    duration: Duration,
    rounds: usize,
    idle: Vec<usize>,
    kinds: Vec<Kind>,
}

fn plan(args: &RelayArgs) -> Result<Plan> {
    let secs = args.duration.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    if !(0.1..=600.0).contains(&secs) {
        bail!("--duration must be between 0.1 and 600 seconds");
    }
    let idle = if !args.idle.is_empty() {
        args.idle.clone()
    } else if args.quick {
        vec![500]
    } else {
        vec![3000, 9000]
    };
    let kinds = if args.systems.is_empty() {
        Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Ponte || args.ponte.is_some())
            .collect()
    } else {
        args.systems
            .iter()
            .map(|s| Kind::parse(s))
            .collect::<Result<Vec<_>>>()?
    };
    if kinds.contains(&Kind::Ponte) && args.ponte.is_none() {
        bail!("system ponte needs --ponte PATH");
    }
    let limit = nofile_limit().unwrap_or(20_000);
    for &n in &idle {
        // The relay holds two descriptors per relayed connection.
        if 2 * n + 200 > limit {
            bail!(
                "--idle {n}: a relay would need {} descriptors, the limit is {limit}",
                2 * n + 200
            );
        }
    }
    if !(1..=20).contains(&args.rounds) {
        bail!("--rounds must be between 1 and 20");
    }
    Ok(Plan {
        duration: Duration::from_secs_f64(secs),
        rounds: args.rounds,
        idle,
        kinds,
    })
}

fn nofile_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn run_async(args: RelayArgs) -> Result<()> {
    let plan = plan(&args)?;
    let _tmp;
    let workdir = match &args.workdir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let t = tempfile::tempdir()?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    eprintln!("ponte-bench: workdir {}", workdir.display());
    let cert = crate::tls::SelfSigned::generate()?;
    cert.write_to(&workdir)?;

    // The upstream: one process, three listeners.
    let ups = systems::free_addrs(3)?;
    let upstream = UpstreamAddrs {
        plain: ups[0],
        tls: ups[1],
        proxy: ups[2],
    };
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("upstream")
        .arg("--plain")
        .arg(upstream.plain.to_string())
        .arg("--tls")
        .arg(upstream.tls.to_string())
        .arg("--proxy")
        .arg(upstream.proxy.to_string())
        .arg("--cert")
        .arg(workdir.join("cert.der"))
        .arg("--key")
        .arg(workdir.join("key.der"));
    let mut upstream_proc = Managed::spawn("upstream", cmd, workdir.join("upstream.log"), true)?;
    upstream_proc
        .wait_ready(&[upstream.plain, upstream.tls, upstream.proxy])
        .await?;

    let env = Env {
        workdir: workdir.clone(),
        pem: workdir.join("combined.pem"),
        haproxy: args.haproxy.clone(),
        ponte: args.ponte.clone(),
        upstream,
        stealth_secret: Some(crate::stealth::write_secrets(&workdir)?),
    };
    let mut results = Results::new(plan.kinds.clone(), plan.idle.clone(), args.idle_tls);
    let load_before = loadavg();
    let machine0 = systems::machine_ticks();
    let own0 = systems::own_and_children_ticks();
    let mut outcome = measure(&plan, &env, &exe, &mut results).await;
    let mut stealth_section = String::new();
    if outcome.is_ok() && plan.kinds.contains(&Kind::Ponte) {
        let ms = plan.duration.as_millis() as u64;
        let idle = plan.idle.first().copied().unwrap_or(1000);
        match crate::stealth::measure(&env, &exe, ms, idle).await {
            Ok(section) => stealth_section = section,
            Err(e) => outcome = Err(e),
        }
    }
    upstream_proc
        .close_stdin_and_wait(Duration::from_secs(5))
        .await?;
    outcome?;
    // Every child has been waited for now, so its CPU time is in cutime/cstime.
    let machine1 = systems::machine_ticks();
    let own1 = systems::own_and_children_ticks();
    let background = match (machine0, machine1, own0, own1) {
        (Some((b0, t0)), Some((b1, t1)), Some(o0), Some(o1)) if t1 > t0 => {
            let others = (b1 - b0).saturating_sub(o1.saturating_sub(o0));
            format!(
                "{:.0}% of the machine's CPU time during the run was not accounted to the \
                 benchmark's processes (other programs, plus kernel interrupt work); \
                 load average {load_before} before, {} after",
                100.0 * others as f64 / (t1 - t0) as f64,
                loadavg()
            )
        }
        _ => "unknown".to_owned(),
    };

    let header = machine_header(&args, &plan, &env, &background).await;
    let table = results.render();
    let doc = format!("{header}\n{table}{stealth_section}");
    println!("{doc}");
    if let Some(out) = &args.out {
        std::fs::write(out, &doc).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("ponte-bench: wrote {}", out.display());
    }
    Ok(())
}

async fn measure(plan: &Plan, env: &Env, exe: &Path, results: &mut Results) -> Result<()> {
    // Phase 1: every system up at once, tests interleaved.
    let mut running = Vec::new();
    for &k in &plan.kinds {
        running.push(systems::start(k, env, "main").await?);
    }
    let mut phase1 = Ok(());
    for round in 1..=plan.rounds {
        eprintln!("ponte-bench: timed tests, round {round} of {}", plan.rounds);
        phase1 = timed_tests(plan, exe, &mut running, results).await;
        if phase1.is_err() {
            break;
        }
    }
    for r in running {
        r.stop().await?;
    }
    phase1?;

    // Phase 2: idle memory, each system fresh for each count.
    let mut idle_cases: Vec<(usize, bool)> = plan.idle.iter().map(|&n| (n, false)).collect();
    if results.idle_tls {
        idle_cases.extend(plan.idle.iter().map(|&n| (n, true)));
    }
    for (n, tls) in idle_cases {
        for &k in &plan.kinds {
            if k == Kind::Direct {
                continue;
            }
            let tag = format!("idle{n}{}", if tls { "tls" } else { "" });
            let sys = systems::start(k, env, &tag).await?;
            let target = if tls { sys.tls } else { sys.plain };
            let r = idle_memory(exe, &sys, target, n, tls, &[]).await;
            sys.stop().await?;
            match r {
                Ok((per_conn, note)) => {
                    results.set(k, Metric::IdleMem { n, tls }, per_conn);
                    if let Some(note) = note {
                        results.note(k, Metric::IdleMem { n, tls }, note);
                    }
                }
                Err(e) => results.note(k, Metric::IdleMem { n, tls }, format!("failed: {e:#}")),
            }
            eprintln!(
                "ponte-bench: {k} idle {n}{}: done",
                if tls { " tls" } else { "" }
            );
        }
    }
    Ok(())
}

async fn timed_tests(
    plan: &Plan,
    exe: &Path,
    running: &mut [Running],
    results: &mut Results,
) -> Result<()> {
    let ms = plan.duration.as_millis() as u64;
    for tls in [false, true] {
        for conns in [1usize, 64] {
            for sys in running.iter_mut() {
                let cpu0 = cpu_of(sys);
                let target = if tls { sys.tls } else { sys.plain };
                let rep = one_client(exe, target, tls, Test::Throughput, conns, ms, &[]).await;
                let cpu1 = cpu_of(sys);
                let metric = Metric::Throughput { conns, tls };
                match rep {
                    Ok(r) => {
                        let mbps = if r.elapsed_s > 0.0 {
                            r.bytes as f64 / r.elapsed_s / 1e6
                        } else {
                            0.0
                        };
                        results.set(sys.kind, metric, mbps);
                        note_errors(results, sys.kind, metric, &r);
                        if let (Some(a), Some(b)) = (cpu0, cpu1) {
                            if r.bytes > 0 {
                                results.set(
                                    sys.kind,
                                    Metric::CpuPerGb { conns, tls },
                                    (b - a) / (r.bytes as f64 / 1e9),
                                );
                            }
                        }
                    }
                    Err(e) => results.note(sys.kind, metric, format!("failed: {e:#}")),
                }
                check_alive(sys)?;
                eprintln!(
                    "ponte-bench: {} throughput {conns} conn{}: done",
                    sys.kind,
                    if tls { " tls" } else { "" }
                );
            }
        }
    }
    for tls in [false, true] {
        for sys in running.iter_mut() {
            let target = if tls { sys.tls } else { sys.plain };
            let metric = Metric::ConnRate { tls };
            let cpu0 = cpu_of(sys);
            let rep = one_client(exe, target, tls, Test::Connrate, 32, ms, &[]).await;
            let cpu1 = cpu_of(sys);
            match rep {
                Ok(r) => {
                    results.set(sys.kind, metric, r.ops as f64 / r.elapsed_s.max(1e-9));
                    if let (Some(a), Some(b), true) = (cpu0, cpu1, r.ops > 0) {
                        results.set(
                            sys.kind,
                            Metric::CpuPerConn { tls },
                            (b - a) * 1e6 / r.ops as f64,
                        );
                    }
                    note_errors(results, sys.kind, metric, &r);
                }
                Err(e) => results.note(sys.kind, metric, format!("failed: {e:#}")),
            }
            check_alive(sys)?;
            eprintln!(
                "ponte-bench: {} connrate{}: done",
                sys.kind,
                if tls { " tls" } else { "" }
            );
            // Let the TIME_WAIT churn of one system settle before the next.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for tls in [false, true] {
        for sys in running.iter_mut() {
            let target = if tls { sys.tls } else { sys.plain };
            let metric = Metric::RoundTrips { tls };
            let cpu0 = cpu_of(sys);
            let rep = one_client(exe, target, tls, Test::Latency, 64, ms, &[]).await;
            let cpu1 = cpu_of(sys);
            match rep {
                Ok(r) => {
                    if let (Some(a), Some(b), true) = (cpu0, cpu1, r.ops > 0) {
                        results.set(
                            sys.kind,
                            Metric::CpuPerRt { tls },
                            (b - a) * 1e6 / r.ops as f64,
                        );
                    }
                    results.set(sys.kind, metric, r.ops as f64 / r.elapsed_s.max(1e-9));
                    results.set(sys.kind, Metric::P50 { tls }, f64::from(r.latency.p50_us));
                    results.set(sys.kind, Metric::P99 { tls }, f64::from(r.latency.p99_us));
                    note_errors(results, sys.kind, metric, &r);
                }
                Err(e) => results.note(sys.kind, metric, format!("failed: {e:#}")),
            }
            check_alive(sys)?;
            eprintln!(
                "ponte-bench: {} latency{}: done",
                sys.kind,
                if tls { " tls" } else { "" }
            );
        }
    }
    Ok(())
}

fn cpu_of(sys: &Running) -> Option<f64> {
    sys.process.as_ref().and_then(|p| p.cpu_seconds().ok())
}

fn check_alive(sys: &mut Running) -> Result<()> {
    match sys.process.as_mut() {
        Some(p) => p.check_alive(),
        None => Ok(()),
    }
}

fn note_errors(results: &mut Results, kind: Kind, metric: Metric, r: &ClientReport) {
    if r.errors > 0 {
        results.note(
            kind,
            metric,
            format!(
                "{} errors (first: {})",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            ),
        );
    }
    if let Some(suite) = &r.tls_suite {
        results.suite(kind, suite);
    }
}

fn client_cmd(
    exe: &Path,
    target: SocketAddr,
    tls: bool,
    test: Test,
    conns: usize,
    ms: u64,
    extra: &[String],
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("client")
        .arg("--target")
        .arg(target.to_string())
        .arg("--test")
        .arg(match test {
            Test::Throughput => "throughput",
            Test::Connrate => "connrate",
            Test::Latency => "latency",
            Test::Idle => "idle",
            Test::Ttfb => "ttfb",
        })
        .arg("--conns")
        .arg(conns.to_string())
        .arg("--duration-ms")
        .arg(ms.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if tls {
        cmd.arg("--tls");
    }
    cmd
}

/// Runs one client process to completion and parses its report; `extra`
/// goes on its command line (`--stealth SECRET`).
pub(crate) async fn one_client(
    exe: &Path,
    target: SocketAddr,
    tls: bool,
    test: Test,
    conns: usize,
    ms: u64,
    extra: &[String],
) -> Result<ClientReport> {
    let child = client_cmd(exe, target, tls, test, conns, ms, extra)
        .stdin(Stdio::null())
        .spawn()?;
    let out = tokio::time::timeout(
        Duration::from_millis(ms) + CLIENT_SLACK,
        child.wait_with_output(),
    )
    .await
    .context("client process timed out")??;
    if !out.status.success() {
        bail!("client exited with {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("client printed nothing")?;
    serde_json::from_str(line).context("parsing client report")
}

/// Opens `n` held connections to `target` of `sys` from several client
/// processes (`extra` on their command line); returns bytes of relay RSS per
/// connection.
pub(crate) async fn idle_memory(
    exe: &Path,
    sys: &Running,
    target: SocketAddr,
    n: usize,
    tls: bool,
    extra: &[String],
) -> Result<(f64, Option<String>)> {
    let proc_ = sys
        .process
        .as_ref()
        .context("idle test needs a relay process")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_.rss_bytes()?;
    let nprocs = n.div_ceil(IDLE_PER_PROCESS).max(1);
    let mut children: Vec<(
        Child,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    )> = Vec::new();
    for i in 0..nprocs {
        let share = n / nprocs + usize::from(i < n % nprocs);
        let mut child = client_cmd(exe, target, tls, Test::Idle, share, 0, extra)
            .stdin(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("client stdout")?;
        children.push((child, BufReader::new(stdout).lines()));
    }
    let mut ok = 0u64;
    let mut errors = 0u64;
    let mut first_error = None;
    for (_, lines) in children.iter_mut() {
        let line = tokio::time::timeout(CLIENT_SLACK * 2, lines.next_line())
            .await
            .context("idle client did not report")??
            .context("idle client exited early")?;
        let r: ClientReport = serde_json::from_str(&line)?;
        ok += r.ok;
        errors += r.errors;
        first_error = first_error.or(r.first_error);
    }
    // Let the relay settle (lazy frees, deferred work) before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proc_.rss_bytes()?;
    for (mut child, _) in children {
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
        }
    }
    if ok == 0 {
        bail!("no connection established: {first_error:?}");
    }
    let per = after.saturating_sub(before) as f64 / ok as f64;
    let note = (errors > 0).then(|| {
        format!(
            "{ok} of {n} connections opened, {errors} failed (first: {})",
            first_error.as_deref().unwrap_or("?")
        )
    });
    Ok((per, note))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

async fn machine_header(args: &RelayArgs, plan: &Plan, env: &Env, background: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let haproxy = systems::version_line(&env.haproxy, "-v").await;
    let ponte = match &env.ponte {
        Some(p) => systems::version_line(p, "--version").await,
        None => "not run".to_owned(),
    };
    let argv: Vec<String> = std::env::args().collect();
    let _ = args;
    format!(
        "### Relay benchmark\n\n\
         - command: `{}`\n\
         - machine: {nproc} CPUs ({model}), Linux {kernel}, open-file limit {}\n\
         - haproxy: {haproxy}\n\
         - ponte: {ponte}\n\
         - timed tests: {:.1} s each, {} round(s) (median shown); idle counts: {:?}\n\
         - background: {background}\n",
        argv.join(" "),
        nofile_limit().map_or_else(|| "?".to_owned(), |n| n.to_string()),
        plan.duration.as_secs_f64(),
        plan.rounds,
        plan.idle,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: RelayArgs,
    }

    fn parse(argv: &[&str]) -> RelayArgs {
        Wrap::parse_from(std::iter::once("relay").chain(argv.iter().copied())).args
    }

    #[test]
    fn defaults_quick_and_explicit_idle() {
        let p = plan(&parse(&[])).unwrap();
        assert_eq!(p.idle, vec![3000, 9000]);
        assert_eq!(p.duration, Duration::from_secs(5));
        // Without --ponte, ponte is left out.
        assert_eq!(
            p.kinds,
            vec![Kind::Direct, Kind::HaproxyOfficial, Kind::HaproxyTuned]
        );
        let q = plan(&parse(&["--quick"])).unwrap();
        assert_eq!(
            (q.idle.clone(), q.duration),
            (vec![500], Duration::from_secs(1))
        );
        let e = plan(&parse(&["--quick", "--idle", "10,20", "--ponte", "/x"])).unwrap();
        assert_eq!(e.idle, vec![10, 20]);
        assert!(e.kinds.contains(&Kind::Ponte));
    }

    #[test]
    fn refuses_impossible_plans() {
        // A relay needs two descriptors per connection: 15,000 is over 20,000.
        assert!(
            plan(&parse(&["--idle", "15000"])).is_err() || nofile_limit().unwrap_or(0) > 30_200
        );
        assert!(plan(&parse(&["--systems", "ponte"])).is_err());
        assert!(plan(&parse(&["--systems", "nginx"])).is_err());
        assert!(plan(&parse(&["--rounds", "0"])).is_err());
        assert!(plan(&parse(&["--duration", "0"])).is_err());
    }
}

//! The run's report: the machine it ran on, the Markdown tables of each
//! run and of the medians, and whether each target is met.

use super::*;

pub(super) fn first_line(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
}

pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

pub(super) fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".to_owned())
}

pub(super) async fn nats_version(bin: &Path) -> String {
    match tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Err(_) => "?".to_owned(),
    }
}

pub(super) fn pass(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

pub(super) fn opt<T>(v: Option<f64>, f: T) -> String
where
    T: Fn(f64) -> String,
{
    v.map(f).unwrap_or_else(|| "—".to_owned())
}

/// One results table (a run, or the medians).
pub(super) fn table(
    out: &mut String,
    plan: &Plan,
    a: &RunArgs,
    p: &Measured,
    n: Option<&Measured>,
) {
    let nv = |f: &dyn Fn(&Measured) -> Option<f64>| n.and_then(f);
    let _ = writeln!(
        out,
        "| measure | ponte server | NATS core | ponte / NATS | target | ponte meets target |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|---|---|");
    let row = |out: &mut String,
               what: String,
               pv: Option<f64>,
               nvv: Option<f64>,
               fmt: &dyn Fn(f64) -> String,
               target: &str,
               ok: Option<bool>| {
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {target} | {} |",
            opt(pv, fmt),
            opt(nvv, fmt),
            stats::fmt_ratio(pv, nvv),
            pass(ok)
        );
    };
    row(
        out,
        format!(
            "online messages/s ({} pairs, {} B, delivered and acked)",
            plan.pairs, a.size
        ),
        p.online,
        nv(&|m| m.online),
        &stats::fmt_int,
        "≥ 50,000",
        p.online.map(|v| v >= 50_000.0),
    );
    row(
        out,
        "server CPU during that (cores busy)".into(),
        p.online_cores,
        nv(&|m| m.online_cores),
        &|v| format!("{v:.2}"),
        "",
        None,
    );
    row(
        out,
        "half-rate load: offered msg/s (each system: half its own maximum)".into(),
        p.half_offered,
        nv(&|m| m.half_offered),
        &stats::fmt_int,
        "",
        None,
    );
    row(
        out,
        "half-rate load: delivered msg/s".into(),
        p.half_achieved,
        nv(&|m| m.half_achieved),
        &stats::fmt_int,
        "",
        None,
    );
    row(
        out,
        "latency p50 at half rate (send → receive)".into(),
        p.p50_us,
        nv(&|m| m.p50_us),
        &stats::fmt_ms,
        "",
        None,
    );
    row(
        out,
        "latency p99 at half rate".into(),
        p.p99_us,
        nv(&|m| m.p99_us),
        &stats::fmt_ms,
        "< 20 ms",
        p.p99_us.map(|v| v < 20_000.0),
    );
    row(
        out,
        "latency p50, both paced at ponte's half rate (same offered load)".into(),
        p.p50_us,
        nv(&|m| m.same_p50_us),
        &stats::fmt_ms,
        "",
        None,
    );
    row(
        out,
        "latency p99, both paced at ponte's half rate".into(),
        p.p99_us,
        nv(&|m| m.same_p99_us),
        &stats::fmt_ms,
        "< 20 ms",
        p.p99_us.map(|v| v < 20_000.0),
    );
    row(
        out,
        "latency p99.9 at half rate".into(),
        p.p999_us,
        nv(&|m| m.p999_us),
        &stats::fmt_ms,
        "",
        None,
    );
    row(
        out,
        "send → SendAck (durably committed), p50 at half rate".into(),
        p.ack_p50_us,
        None,
        &stats::fmt_ms,
        "",
        None,
    );
    row(
        out,
        "send → SendAck, p99 at half rate".into(),
        p.ack_p99_us,
        None,
        &stats::fmt_ms,
        "",
        None,
    );
    let _ = writeln!(
        out,
        "| durable messages/s to offline recipients ({} senders → {} mailboxes) | {} | n/a (core NATS stores nothing) | — | ≥ 10,000 | {} |",
        plan.pairs,
        plan.offline,
        opt(p.durable, stats::fmt_int),
        pass(p.durable.map(|v| v >= 10_000.0))
    );
    row(
        out,
        "server CPU during that (cores busy)".into(),
        p.durable_cores,
        None,
        &|v| format!("{v:.2}"),
        "",
        None,
    );
    for (what, v, target, ok) in [
        ("p50", p.group_p50_us, "", None),
        (
            "p99",
            p.group_p99_us,
            "≤ 250 ms",
            p.group_p99_us.map(|v| v <= 250_000.0),
        ),
    ] {
        row(
            out,
            format!(
                "group message to {} online members, send until the last has it, {what}",
                plan.group_members
            ),
            v,
            None,
            &stats::fmt_ms,
            target,
            ok,
        );
    }
    row(
        out,
        format!(
            "database bytes per group message ({} B body, {} offline members)",
            a.size, plan.group_members
        ),
        p.group_bytes,
        None,
        &stats::fmt_int,
        "one body + small entries",
        None,
    );
    for (i, (count, pv)) in p.idle.iter().enumerate() {
        let nvv = n.and_then(|m| m.idle.get(i)).and_then(|x| x.1);
        row(
            out,
            format!(
                "server memory per idle connected client, N = {}",
                stats::fmt_int(f64::from(*count))
            ),
            *pv,
            nvv,
            &stats::fmt_kib,
            "≤ 8 KiB",
            pv.map(|v| v <= 8192.0),
        );
    }
}

pub(super) fn median_of(
    runs: &[RunOut],
    f: &dyn Fn(&Measured) -> Option<f64>,
    nats: bool,
) -> Option<f64> {
    let v: Vec<Option<f64>> = runs
        .iter()
        .map(|r| {
            if nats {
                r.nats.as_ref().and_then(f)
            } else {
                f(&r.ponte)
            }
        })
        .collect();
    stats::median(&v)
}

pub(super) fn medians(runs: &[RunOut], nats: bool) -> Measured {
    let f = |g: &dyn Fn(&Measured) -> Option<f64>| median_of(runs, g, nats);
    let idle_counts: Vec<u32> = runs
        .first()
        .map(|r| r.ponte.idle.iter().map(|x| x.0).collect())
        .unwrap_or_default();
    Measured {
        online: f(&|m| m.online),
        online_cores: f(&|m| m.online_cores),
        half_offered: f(&|m| m.half_offered),
        half_achieved: f(&|m| m.half_achieved),
        p50_us: f(&|m| m.p50_us),
        p99_us: f(&|m| m.p99_us),
        p999_us: f(&|m| m.p999_us),
        ack_p50_us: f(&|m| m.ack_p50_us),
        ack_p99_us: f(&|m| m.ack_p99_us),
        durable: f(&|m| m.durable),
        durable_cores: f(&|m| m.durable_cores),
        same_p50_us: f(&|m| m.same_p50_us),
        same_p99_us: f(&|m| m.same_p99_us),
        group_p50_us: f(&|m| m.group_p50_us),
        group_p99_us: f(&|m| m.group_p99_us),
        group_bytes: f(&|m| m.group_bytes),
        idle: idle_counts
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, f(&|m| m.idle.get(i).and_then(|x| x.1))))
            .collect(),
        errors: runs.iter().map(|r| r.ponte.errors).sum(),
    }
}

pub(super) async fn report(a: &RunArgs, plan: &Plan, ponte_bin: &Path, runs: &[RunOut]) -> String {
    let mut out = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    let _ = writeln!(out, "Command: `{}`\n", cmd.join(" "));
    let _ = writeln!(
        out,
        "Machine: {} × {}, {} RAM, Linux {}; open-file limit per process {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        mem_total(),
        first_line("/proc/sys/kernel/osrelease").unwrap_or_else(|| "?".into()),
        procs_nofile()
    );
    let _ = writeln!(
        out,
        "Systems: `{}` (release build), `{}`{}.\n",
        ponte_bin.display(),
        a.nats_server.display(),
        if a.no_nats {
            " (skipped)".to_owned()
        } else {
            format!(" ({})", nats_version(&a.nats_server).await)
        }
    );
    let _ = writeln!(
        out,
        "Settings: {} pairs over {} load processes, window {} per sender, {} s warm-up + {} s counted per phase, idle clients ≤ {} per load process.\n",
        plan.pairs, a.load_procs, a.window, plan.warmup, plan.duration, a.clients_per_proc
    );
    for (k, r) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "Run {} — load average before: {}, after: {}; errors answered by ponte: {}\n",
            k + 1,
            r.load_before,
            r.load_after,
            r.ponte.errors
        );
        table(&mut out, plan, a, &r.ponte, r.nats.as_ref());
        let _ = writeln!(out);
    }
    if runs.len() > 1 {
        let _ = writeln!(out, "Median of {} runs:\n", runs.len());
        let p = medians(runs, false);
        let n = runs
            .iter()
            .all(|r| r.nats.is_some())
            .then(|| medians(runs, true));
        table(&mut out, plan, a, &p, n.as_ref());
        let _ = writeln!(out);
    }
    out
}

pub(super) fn procs_nofile() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".to_owned())
}

//! The stealth listener's figures, in the same run as the relay comparison:
//! `ponte proxy`'s stealth listener against its own TLS listener (same
//! upstream, same process), and a prober's time to first byte through the
//! stealth listener against the cover site directly.
//!
//! | figure | how |
//! |---|---|
//! | throughput, 1 and 64 connections | `throughput` through the TLS listener, then through the stealth listener (`--stealth`) |
//! | new connections per second | `connrate`, 32 workers, each way |
//! | added time to first byte for a prober | `ttfb` (one prober, sequential) to the stealth port and to the cover (the bench upstream's TLS listener); the difference of the medians |
//! | memory per idle connection | the relay started fresh for each: RSS after opening N held connections minus before, over N, TLS and stealth |
//!
//! Client side of the stealth opening ([`open`]) and the `ttfb` prober
//! ([`ttfb`]) live here too; the client processes call them.

use crate::client::{merge, micros, ClientReport, Test};
use crate::relay::{idle_memory, one_client};
use crate::stats::LatencySummary;
use crate::systems::{self, Env, Kind};
use anyhow::{bail, Context, Result};
use ponte_wire::stealth::record::{CHANGE_CIPHER_SPEC, MAX_RECORD_PAYLOAD};
use ponte_wire::stealth::stream::RecordStream;
use ponte_wire::stealth::{reply, tag, template, Secret};
use rand::RngCore as _;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The name the bench's stealth listener and its cover answer to.
pub const SNI: &str = "bench.example";

fn fill(b: &mut [u8]) {
    rand::thread_rng().fill_bytes(b);
}

/// Opens the stealth layer as a Ponte client does: a tagged Chrome-shaped
/// ClientHello, the relay's flight checked, a ChangeCipherSpec.
pub async fn open(
    mut tcp: TcpStream,
    secret: &Secret,
    sni: &str,
) -> Result<RecordStream<TcpStream>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut hello = template::build(&template::CHROME, sni, &mut fill)?;
    tag::seal(&mut hello, secret, now)?;
    let at = template::SESSION_ID_OFFSET;
    let sid: [u8; 32] = hello[at..at + 32].try_into()?;
    tcp.write_all(&hello).await?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 4096];
    // Each round reads at least one byte or ends; the flight is capped.
    let n = loop {
        if let Some(n) = reply::flight_len(&buf).map_err(|e| anyhow::anyhow!("{e}"))? {
            break n;
        }
        if buf.len() > 3 * (5 + MAX_RECORD_PAYLOAD) {
            bail!("the stealth relay's flight is too long");
        }
        let got = tcp.read(&mut chunk).await?;
        if got == 0 {
            bail!("the stealth relay closed during the opening");
        }
        buf.extend_from_slice(&chunk[..got]);
    };
    reply::verify(&buf[..n], &sid, secret)
        .map_err(|_| anyhow::anyhow!("the stealth relay did not prove the secret"))?;
    tcp.write_all(&CHANGE_CIPHER_SPEC).await?;
    Ok(RecordStream::new(tcp, buf.split_off(n)))
}

/// `workers` probers, each in a loop for `duration`: connect, send an
/// untagged ClientHello, time the first byte back, close.
pub async fn ttfb(
    target: SocketAddr,
    sni: &str,
    workers: usize,
    duration: Duration,
) -> Result<ClientReport> {
    let hello = template::build(&template::CHROME, sni, &mut fill)?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let hello = hello.clone();
        set.spawn(async move {
            let mut local = ClientReport::default();
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let one = tokio::time::timeout(Duration::from_secs(15), async {
                    let mut s = TcpStream::connect(target).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&hello).await?;
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await? == 0 {
                        bail!("closed without a byte");
                    }
                    anyhow::Ok(t0.elapsed())
                })
                .await
                .context("probe timed out")
                .and_then(|r| r);
                match one {
                    Ok(d) => {
                        local.ok += 1;
                        samples.push(micros(d));
                    }
                    Err(e) => {
                        local.errors += 1;
                        local.first_error.get_or_insert_with(|| format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (local, samples)
        });
    }
    let mut report = ClientReport::default();
    let mut all = Vec::new();
    while let Some(res) = set.join_next().await {
        let (local, samples) = res.context("task")?;
        merge(&mut report, local);
        all.extend(samples);
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.ops = report.ok;
    report.latency = LatencySummary::from_samples(&mut all);
    Ok(report)
}

/// A fresh link secret and the secrets file `ponte proxy` reads.
pub fn write_secrets(workdir: &Path) -> Result<String> {
    let mut b = [0u8; 16];
    fill(&mut b);
    let secret = Secret::from_bytes(b).to_text();
    let created = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let path = workdir.join("secrets.toml");
    std::fs::write(
        &path,
        format!("[[secret]]\nlabel = \"bench\"\nsecret = \"{secret}\"\ncreated = {created}\n"),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// One figure: the TLS listener's, the stealth listener's.
#[derive(Debug, Default, Clone, Copy)]
struct Pair {
    tls: Option<f64>,
    stealth: Option<f64>,
}

fn rate(r: &ClientReport) -> f64 {
    r.ops as f64 / r.elapsed_s.max(1e-9)
}

fn mbps(r: &ClientReport) -> f64 {
    r.bytes as f64 / r.elapsed_s.max(1e-9) / 1e6
}

/// Runs the stealth figures against a fresh `ponte proxy` and renders their
/// Markdown section. `idle` is the held-connection count for memory.
pub async fn measure(env: &Env, exe: &Path, ms: u64, idle: usize) -> Result<String> {
    let secret = env.stealth_secret.clone().context("no stealth secret")?;
    let stealth_args = vec![
        "--stealth".to_owned(),
        secret,
        "--sni".to_owned(),
        SNI.to_owned(),
    ];
    let mut notes = Vec::new();
    let sys = systems::start(Kind::Ponte, env, "stealth").await?;
    let stealth_addr = sys
        .stealth
        .context("ponte started without its stealth listener")?;
    let mut throughput = [Pair::default(); 2];
    let mut connrate = Pair::default();
    let mut ttfb = (None, None);
    let mut outcome = async {
        for (i, conns) in [1usize, 64].into_iter().enumerate() {
            let r = one_client(exe, sys.tls, true, Test::Throughput, conns, ms, &[]).await?;
            throughput[i].tls = Some(mbps(&r));
            let r = one_client(
                exe,
                stealth_addr,
                false,
                Test::Throughput,
                conns,
                ms,
                &stealth_args,
            )
            .await?;
            if r.errors > 0 {
                notes.push(format!(
                    "stealth throughput {conns}: {} errors ({:?})",
                    r.errors, r.first_error
                ));
            }
            throughput[i].stealth = Some(mbps(&r));
            eprintln!("ponte-bench: stealth throughput {conns}: done");
        }
        let r = one_client(exe, sys.tls, true, Test::Connrate, 32, ms, &[]).await?;
        connrate.tls = Some(rate(&r));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = one_client(
            exe,
            stealth_addr,
            false,
            Test::Connrate,
            32,
            ms,
            &stealth_args,
        )
        .await?;
        if r.errors > 0 {
            notes.push(format!(
                "stealth connrate: {} errors ({:?})",
                r.errors, r.first_error
            ));
        }
        connrate.stealth = Some(rate(&r));
        eprintln!("ponte-bench: stealth connrate: done");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sni = ["--sni".to_owned(), SNI.to_owned()];
        let direct = one_client(exe, env.upstream.tls, false, Test::Ttfb, 1, ms, &sni).await?;
        let via = one_client(exe, stealth_addr, false, Test::Ttfb, 1, ms, &sni).await?;
        ttfb = (Some(direct.latency), Some(via.latency));
        eprintln!("ponte-bench: stealth ttfb: done");
        anyhow::Ok(())
    }
    .await;
    sys.stop().await?;
    if let Err(e) = &outcome {
        notes.push(format!("timed figures failed: {e:#}"));
    }
    let mut idle_mem = Pair::default();
    for stealth in [false, true] {
        let sys = systems::start(
            Kind::Ponte,
            env,
            if stealth { "idle-stealth" } else { "idle-tls" },
        )
        .await?;
        let r = match (stealth, sys.stealth) {
            (true, Some(a)) => idle_memory(exe, &sys, a, idle, false, &stealth_args).await,
            _ => idle_memory(exe, &sys, sys.tls, idle, true, &[]).await,
        };
        sys.stop().await?;
        match r {
            Ok((per, note)) => {
                if stealth {
                    idle_mem.stealth = Some(per);
                } else {
                    idle_mem.tls = Some(per);
                }
                notes.extend(note);
            }
            Err(e) => {
                notes.push(format!("idle memory failed: {e:#}"));
                outcome = Err(e);
            }
        }
        eprintln!("ponte-bench: stealth idle {idle}: done");
    }
    let _ = outcome;
    Ok(render(&throughput, connrate, ttfb, idle_mem, idle, &notes))
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(p: Pair) -> Option<f64> {
    match (p.tls, p.stealth) {
        (Some(t), Some(s)) if t > 0.0 => Some(s / t),
        _ => None,
    }
}

fn verdict(r: Option<f64>, target: f64) -> &'static str {
    match r {
        Some(r) if r >= target => "met",
        Some(_) => "**missed**",
        None => "—",
    }
}

fn render(
    throughput: &[Pair; 2],
    connrate: Pair,
    ttfb: (Option<LatencySummary>, Option<LatencySummary>),
    idle: Pair,
    idle_n: usize,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## Stealth listener (ponte)\n");
    let _ = writeln!(
        out,
        "The stealth listener against the same relay's TLS listener (same process, same upstream), \
         measured back to back.\n"
    );
    let _ = writeln!(
        out,
        "| figure | TLS listener | stealth listener | stealth / TLS | target |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|");
    for (p, conns) in throughput.iter().zip([1, 64]) {
        let r = ratio(*p);
        let _ = writeln!(
            out,
            "| throughput, {conns} conn (MB/s) | {} | {} | {} | ≥ 0.9×: {} |",
            cell(p.tls, 0),
            cell(p.stealth, 0),
            cell(r, 2),
            verdict(r, 0.9)
        );
    }
    let r = ratio(connrate);
    let _ = writeln!(
        out,
        "| new connections/s (32 workers) | {} | {} | {} | ≥ 1.0×: {} |",
        cell(connrate.tls, 0),
        cell(connrate.stealth, 0),
        cell(r, 2),
        verdict(r, 1.0)
    );
    let kib = |v: Option<f64>| v.map(|b| b / 1024.0);
    let _ = writeln!(
        out,
        "| memory per idle connection, {idle_n} held (KiB) | {} | {} | {} | — |",
        cell(kib(idle.tls), 2),
        cell(kib(idle.stealth), 2),
        cell(ratio(idle), 2)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| a prober's time to first byte (µs) | p50 | p99 | samples |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let (direct, via) = ttfb;
    for (name, l) in [
        ("cover directly", direct),
        ("through the stealth listener", via),
    ] {
        match l {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} |",
                    l.p50_us, l.p99_us, l.count
                );
            }
            None => {
                let _ = writeln!(out, "| {name} | — | — | — |");
            }
        }
    }
    if let (Some(d), Some(v)) = (direct, via) {
        let added = i64::from(v.p50_us) - i64::from(d.p50_us);
        let _ = writeln!(
            out,
            "\nAdded time to first byte (p50): {added} µs (target under 1,000 µs: {}).",
            if added < 1000 { "met" } else { "**missed**" }
        );
    }
    for n in notes {
        let _ = writeln!(out, "\n- {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn section_renders_ratios_and_verdicts() {
        let p = |t, s| Pair {
            tls: Some(t),
            stealth: Some(s),
        };
        let l = |p50| LatencySummary {
            count: 10,
            p50_us: p50,
            p99_us: p50 * 2,
            p999_us: p50 * 3,
            max_us: p50 * 4,
        };
        let out = render(
            &[p(100.0, 95.0), p(1000.0, 800.0)],
            p(5000.0, 5100.0),
            (Some(l(100)), Some(l(180))),
            p(2048.0, 3072.0),
            1000,
            &[],
        );
        assert!(out.contains("| throughput, 1 conn (MB/s) | 100 | 95 | 0.95 | ≥ 0.9×: met |"));
        assert!(out.contains("0.80 | ≥ 0.9×: **missed**"));
        assert!(out.contains("| 5000 | 5100 | 1.02 | ≥ 1.0×: met |"));
        assert!(out.contains("| 2.00 | 3.00 | 1.50 |"));
        assert!(out.contains("Added time to first byte (p50): 80 µs"));
    }

    #[test]
    fn secrets_file_is_what_the_relay_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = write_secrets(dir.path()).unwrap();
        assert!(Secret::from_text(&s).is_ok());
        let text = std::fs::read_to_string(dir.path().join("secrets.toml")).unwrap();
        assert!(text.contains(&s) && text.contains("label = \"bench\""));
    }
}

//! The systems under test and the child processes behind them: starting each
//! one fresh from a rendered config, waiting until it accepts, reading its
//! memory and CPU use from `/proc`, and stopping it.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const HAPROXY_OFFICIAL: &str = include_str!("../../../bench/haproxy-official.cfg.tmpl");
const HAPROXY_TUNED: &str = include_str!("../../../bench/haproxy-tuned.cfg.tmpl");
const PONTE: &str = include_str!("../../../bench/ponte.toml.tmpl");

/// How long a system gets to start accepting connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One of the systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Client straight to the upstream: the physical limit.
    Direct,
    /// HAProxy with WhatsApp's official tuning.
    HaproxyOfficial,
    /// HAProxy with default buffers and splicing.
    HaproxyTuned,
    /// `ponte proxy`.
    Ponte,
}

impl Kind {
    /// All systems, in table order.
    pub const ALL: [Kind; 4] = [
        Kind::Direct,
        Kind::HaproxyOfficial,
        Kind::HaproxyTuned,
        Kind::Ponte,
    ];

    /// Name used on the command line and in tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::HaproxyOfficial => "haproxy-official",
            Kind::HaproxyTuned => "haproxy-tuned",
            Kind::Ponte => "ponte",
        }
    }

    /// Parses a name from [`Kind::name`].
    pub fn parse(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| {
                format!(
                    "unknown system {s:?} (want direct, haproxy-official, haproxy-tuned, ponte)"
                )
            })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Fills `{{NAME}}` placeholders; fails if any is left.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(pos) = out.find("{{") {
        let rest: String = out[pos..].chars().take(24).collect();
        bail!("unfilled placeholder near {rest:?}");
    }
    Ok(out)
}

/// Picks `n` distinct free loopback ports (bound together, then released).
pub fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(Into::into))
        .collect()
}

/// A child process the harness started; killed if dropped.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Managed {
    /// Spawns `cmd` with stderr (and stdout) going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, keep_stdin: bool) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(file.try_clone()?)
            .stderr(file)
            .stdin(if keep_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    /// Waits until every address accepts a TCP connection.
    pub async fn wait_ready(&mut self, addrs: &[SocketAddr]) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for addr in addrs {
            loop {
                if let Some(status) = self.child.try_wait()? {
                    bail!(
                        "{} exited with {status} before listening on {addr}; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} did not listen on {addr} within {READY_TIMEOUT:?}; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Resident memory, bytes (`VmRSS`; threads share it, so one read covers
    /// a multi-threaded process).
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid)
    }

    /// User + system CPU time consumed so far, seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid)
    }

    /// Last lines of the process's log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.child.start_kill()?;
                let _ = self.child.wait().await;
                Ok(())
            }
        }
    }

    /// Closes the child's stdin (our "release" signal to bench children) and
    /// waits for it to exit.
    pub async fn close_stdin_and_wait(mut self, grace: Duration) -> Result<()> {
        drop(self.child.stdin.take());
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.child.start_kill()?;
            let _ = self.child.wait().await;
        }
        Ok(())
    }
}

/// `VmRSS` of `pid`, bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss(&status).context("no VmRSS line")
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime + stime of `pid`, seconds (USER_HZ is 100 on Linux for every
/// architecture the harness runs on).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|t| t as f64 / 100.0)
        .context("malformed /proc/PID/stat")
}

/// CPU ticks of this process plus all the children it has waited for
/// (utime + stime + cutime + cstime).
pub fn own_and_children_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (11..=14).map(|i| fields.get(i)?.parse::<u64>().ok()).sum()
}

/// Machine-wide (busy, total) CPU ticks from `/proc/stat`.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(stat.lines().next()?)
}

fn parse_machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut it = line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some((busy, busy + v[3] + v[4]))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces or parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the fields start at #3 (state); utime is #14, stime #15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Where the upstream listens.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAddrs {
    /// No PROXY header expected.
    pub plain: SocketAddr,
    /// TLS, no PROXY header.
    pub tls: SocketAddr,
    /// PROXY header required.
    pub proxy: SocketAddr,
}

/// What starting a system needs.
#[derive(Debug, Clone)]
pub struct Env {
    /// Scratch directory for configs and logs.
    pub workdir: PathBuf,
    /// `combined.pem` for HAProxy.
    pub pem: PathBuf,
    /// HAProxy binary.
    pub haproxy: PathBuf,
    /// Ponte binary, if ponte is benchmarked.
    pub ponte: Option<PathBuf>,
    /// The bench upstream.
    pub upstream: UpstreamAddrs,
    /// The link secret of ponte's stealth listener (in `secrets.toml` in the
    /// workdir).
    pub stealth_secret: Option<String>,
}

/// A started system: where clients connect, and its process (none for direct).
#[derive(Debug)]
pub struct Running {
    /// Which system.
    pub kind: Kind,
    /// Plain listener.
    pub plain: SocketAddr,
    /// TLS listener.
    pub tls: SocketAddr,
    /// Stealth listener (ponte only), its cover the upstream's TLS listener.
    pub stealth: Option<SocketAddr>,
    /// The relay process.
    pub process: Option<Managed>,
}

impl Running {
    /// Stops the relay process, if any.
    pub async fn stop(self) -> Result<()> {
        match self.process {
            Some(p) => p.stop().await,
            None => Ok(()),
        }
    }
}

/// Starts `kind` fresh on new ports; `tag` keeps config and log names apart.
pub async fn start(kind: Kind, env: &Env, tag: &str) -> Result<Running> {
    if kind == Kind::Direct {
        return Ok(Running {
            kind,
            plain: env.upstream.plain,
            tls: env.upstream.tls,
            stealth: None,
            process: None,
        });
    }
    let addrs = free_addrs(4)?;
    let (plain, tls, stats, stealth) = (addrs[0], addrs[1], addrs[2], addrs[3]);
    let vars = [
        ("PLAIN", plain.to_string()),
        ("TLS", tls.to_string()),
        ("STATS", stats.to_string()),
        ("UPSTREAM", env.upstream.proxy.to_string()),
        ("PEM", env.pem.display().to_string()),
        ("STEALTH", stealth.to_string()),
        ("COVER", env.upstream.tls.to_string()),
        (
            "SECRETS",
            env.workdir.join("secrets.toml").display().to_string(),
        ),
    ];
    let base = format!("{}-{tag}", kind.name());
    let log = env.workdir.join(format!("{base}.log"));
    let mut process = match kind {
        Kind::HaproxyOfficial | Kind::HaproxyTuned => {
            let template = if kind == Kind::HaproxyOfficial {
                HAPROXY_OFFICIAL
            } else {
                HAPROXY_TUNED
            };
            let cfg = env.workdir.join(format!("{base}.cfg"));
            std::fs::write(&cfg, render(template, &vars)?)?;
            let mut cmd = Command::new(&env.haproxy);
            // -db: foreground, no master process: one PID holds all threads.
            cmd.arg("-db").arg("-f").arg(&cfg);
            Managed::spawn(kind.name(), cmd, log, false)?
        }
        Kind::Ponte => {
            let bin = env
                .ponte
                .as_deref()
                .context("ponte selected but no --ponte binary given")?;
            let cfg = env.workdir.join(format!("{base}.toml"));
            std::fs::write(&cfg, render(PONTE, &vars)?)?;
            let mut cmd = Command::new(bin);
            cmd.arg("proxy").arg("--config").arg(&cfg);
            Managed::spawn(kind.name(), cmd, log, false)?
        }
        Kind::Direct => unreachable_direct()?,
    };
    let stealth = (kind == Kind::Ponte).then_some(stealth);
    let mut ready = vec![plain, tls];
    ready.extend(stealth);
    process.wait_ready(&ready).await?;
    Ok(Running {
        kind,
        plain,
        tls,
        stealth,
        process: Some(process),
    })
}

fn unreachable_direct() -> Result<Managed> {
    bail!("direct has no process")
}

/// First line of `haproxy -v`, or of `ponte --version`.
pub async fn version_line(bin: &Path, arg: &str) -> String {
    match Command::new(bin).arg(arg).output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("unavailable ({e})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn templates_render_completely() {
        let vars = [
            ("PLAIN", "127.0.0.1:1".to_owned()),
            ("TLS", "127.0.0.1:2".to_owned()),
            ("STATS", "127.0.0.1:3".to_owned()),
            ("UPSTREAM", "127.0.0.1:4".to_owned()),
            ("PEM", "/tmp/x.pem".to_owned()),
            ("STEALTH", "127.0.0.1:5".to_owned()),
            ("COVER", "127.0.0.1:6".to_owned()),
            ("SECRETS", "/tmp/secrets.toml".to_owned()),
        ];
        for t in [HAPROXY_OFFICIAL, HAPROXY_TUNED, PONTE] {
            let out = render(t, &vars).unwrap();
            assert!(out.contains("127.0.0.1:4"));
        }
        assert!(render(HAPROXY_OFFICIAL, &vars)
            .unwrap()
            .contains("tune.bufsize 4096"));
        assert!(render(HAPROXY_TUNED, &vars)
            .unwrap()
            .contains("splice-auto"));
        assert!(render("a {{MISSING}}", &vars).is_err());
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_vmrss("Name:\tx\nVmRSS:\t   1234 kB\nThreads: 2\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vmrss("Name: x\n"), None);
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 2 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(
            parse_machine_ticks("cpu  10 1 5 100 4 1 2 3 0 0"),
            Some((22, 126))
        );
        assert_eq!(parse_machine_ticks("cpu0 1 2"), None);
        assert!(machine_ticks().is_some());
        assert!(own_and_children_ticks().is_some());
        // Our own process has a readable RSS and CPU time.
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()).unwrap(), k);
        }
        assert!(Kind::parse("nginx").is_err());
    }
}

//! Child processes of the messaging bench: the systems under test (`ponte
//! server`, `nats-server`), the load-generator processes (`ponte-bench
//! server client …`), and what /proc says about them (RSS, CPU time).

use super::common::{LoadResult, READY_PREFIX, RESULT_PREFIX};
use anyhow::{bail, Context as _};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Resident set size of a process, bytes (`VmRSS` in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&s).context("no VmRSS line")
}

/// The `VmRSS:  1234 kB` line of /proc/PID/status, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU time of a process, seconds (/proc/PID/stat, fields 14
/// and 15, in clock ticks of 1/100 s).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&s)
        .map(|t| t as f64 / 100.0)
        .context("malformed /proc/PID/stat")
}

/// utime + stime from a /proc/PID/stat line (after the `(comm)` field,
/// which may contain spaces).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A system under test, stopped (SIGTERM, then SIGKILL) by [`System::stop`]
/// or killed when dropped.
#[derive(Debug)]
pub struct System {
    child: Child,
    /// Its process id.
    pub pid: u32,
}

impl System {
    /// Stops it: SIGTERM, up to 10 s, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Starts `ponte server` on 127.0.0.1 port 0 and returns it with the
/// address it printed (`ponte://127.0.0.1:PORT#KEY`).
pub async fn start_ponte(
    bin: &Path,
    data: &Path,
    config: &Path,
    log: &Path,
) -> anyhow::Result<(System, String)> {
    start_node(bin, data, config, log, &[]).await
}

/// [`start_ponte`] with more arguments (`--store URL`, `--bus URL`).
pub async fn start_node(
    bin: &Path,
    data: &Path,
    config: &Path,
    log: &Path,
    extra: &[String],
) -> anyhow::Result<(System, String)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin)
        .arg("server")
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--no-admin"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("ponte server exited at once")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("ponte server printed no address within 60 s")??
        .context("ponte server exited without printing its address")?;
    let addr = line.trim().to_owned();
    if !addr.starts_with("ponte://") {
        bail!("unexpected first line from ponte server: {addr:?}");
    }
    Ok((System { child, pid }, addr))
}

/// Starts `nats-server` on a free loopback port and waits until it accepts.
pub async fn start_nats(bin: &Path, log: &Path) -> anyhow::Result<(System, String)> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("nats-server exited at once")?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok((System { child, pid }, addr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nats-server did not accept connections on {addr} within 10 s")
}

/// Starts `nats-server -js` (its store under `dir`) on a free loopback
/// port: the bus of a multi-node setup.
pub async fn start_nats_js(bin: &Path, dir: &Path, log: &Path) -> anyhow::Result<(System, String)> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats-store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("nats-server exited at once")?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok((System { child, pid }, addr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nats-server did not accept connections on {addr} within 10 s")
}

/// A load-generator process.
#[derive(Debug)]
pub struct Loader {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Loader {
    /// Starts `ponte-bench server client ARGS…`.
    pub fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating ponte-bench")?;
        let mut child = Command::new(exe)
            .args(["server", "client"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a load generator")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Waits for a line starting with `prefix` and returns the rest.
    async fn expect(&mut self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let work = async {
            loop {
                match self.lines.next_line().await? {
                    Some(l) => {
                        if let Some(rest) = l.strip_prefix(prefix) {
                            return Ok(rest.to_owned());
                        }
                    }
                    None => bail!("load generator exited before {prefix:?}"),
                }
            }
        };
        tokio::time::timeout(within, work)
            .await
            .with_context(|| format!("load generator: no {prefix:?} within {within:?}"))?
    }

    /// Waits for `READY n`.
    pub async fn ready(&mut self, within: Duration) -> anyhow::Result<u64> {
        let n = self.expect(READY_PREFIX, within).await?;
        n.trim().parse().context("READY count")
    }

    /// Sends `go`.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the result line, then for the process to exit.
    pub async fn result(mut self, within: Duration) -> anyhow::Result<LoadResult> {
        let r = self.expect(RESULT_PREFIX, within).await?;
        let r: LoadResult = serde_json::from_str(&r).context("RESULT line")?;
        self.finish().await?;
        Ok(r)
    }

    /// Closes stdin (idle holders exit) and waits for the exit status.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("load generator did not exit")??;
        if !status.success() {
            bail!("load generator failed: {status}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_rss_and_cpu_lines() {
        let status = "Name:\tponte\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let stat = "4242 (tokio (rt) w) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_secs(pid).unwrap() >= 0.0);
    }
}

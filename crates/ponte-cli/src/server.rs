//! `ponte server`: argument parsing over `ponte-server`.
//!
//! - `ponte server [--data DIR] [--listen ADDR] …` runs the service and
//!   prints its address `ponte://HOST:PORT#KEY` on stdout (one line).
//! - `ponte server address --data DIR [--host NAME] [--port N]` prints it again.
//! - `ponte server invite --data DIR` prints a one-use invite token.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ponte_server::config::{DEFAULT_ADMIN, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use ponte_server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `ponte server`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Print the server address users need: ponte://HOST:PORT#KEY.
    Address(AddressArgs),
    /// Create a one-use invite token (for --invite-only servers).
    Invite(InviteArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Data directory: server.key (Noise static key, 0600) and ponte.db.
    #[arg(long, env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Address to listen on for clients and relays.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Admin endpoint (/metrics, /healthz); keep it on loopback.
    #[arg(long, default_value = DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// Do not serve the admin endpoint.
    #[arg(long)]
    no_admin: bool,
    /// Host name to print in the server address (default: the listen IP, or
    /// this machine's host name when listening on all addresses).
    #[arg(long)]
    host: Option<String>,
    /// Only register users who present an invite (`ponte server invite`).
    #[arg(long)]
    invite_only: bool,
    /// Keep undelivered messages this long, then tell the sender they
    /// expired (e.g. 30d, 12h, 90m, 45s).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    retention: Duration,
    /// How often to look for expired messages.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    expiry_interval: Duration,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most undelivered messages per recipient.
    #[arg(long, default_value_t = 10_000)]
    max_pending: u32,
    /// Deadline for the PROXY header and Noise handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Close logged-in connections silent for this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
}

#[derive(Debug, Args)]
struct AddressArgs {
    /// Data directory of the server.
    #[arg(long, env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Host name users reach the server (or a relay in front of it) by.
    #[arg(long)]
    host: Option<String>,
    /// Port users connect to.
    #[arg(long, default_value_t = ponte_wire::address::DEFAULT_PORT)]
    port: u16,
}

#[derive(Debug, Args)]
struct InviteArgs {
    /// Data directory of the server.
    #[arg(long, env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
}

/// Parses `500ms`, `45s`, `90m`, `12h`, `30d` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m, h, d)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: too large"))
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn display_host(host: Option<&str>, listen: SocketAddr) -> String {
    match host {
        Some(h) => h.to_owned(),
        None if listen.ip().is_unspecified() => machine_host_name(),
        None => listen.ip().to_string(),
    }
}

/// Runs `ponte server …`.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ServerCommand::Address(a)) => address(&a),
        Some(ServerCommand::Invite(i)) => invite(&i.data),
        None => serve(args.run),
    }
}

fn address(a: &AddressArgs) -> anyhow::Result<ExitCode> {
    let host = a.host.clone().unwrap_or_else(machine_host_name);
    let addr = ponte_server::server_address(&a.data, &host, a.port).with_context(|| {
        format!(
            "no server key in {}: start the server once (ponte server --data {})",
            a.data.display(),
            a.data.display()
        )
    })?;
    crate::write_stdout(&format!("{addr}\n"))?;
    Ok(ExitCode::SUCCESS)
}

fn invite(data: &Path) -> anyhow::Result<ExitCode> {
    let token = ponte_server::create_invite(data)
        .with_context(|| format!("creating an invite in {}", data.display()))?;
    crate::write_stdout(&format!("{token}\n"))?;
    Ok(ExitCode::SUCCESS)
}

fn serve(a: RunArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let mut cfg = ServerConfig::new(a.data.clone(), a.listen);
    cfg.invite_only = a.invite_only;
    cfg.retention = a.retention;
    cfg.expiry_interval = a.expiry_interval.max(Duration::from_millis(10));
    cfg.max_connections = a.max_connections;
    cfg.max_pending_per_mailbox = a.max_pending;
    cfg.handshake_timeout = a.handshake_timeout;
    cfg.idle_timeout = a.idle_timeout;
    let admin = (!a.no_admin).then_some(a.admin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let server = Server::bind(cfg, admin)
            .await
            .with_context(|| format!("starting the server in {}", a.data.display()))?;
        let local = server.local_addr()?;
        let host = display_host(a.host.as_deref(), local);
        if server.key_created() {
            tracing::info!(
                "created a new server key in {}",
                a.data.join(ponte_server::keyfile::KEY_FILE).display()
            );
        }
        tracing::info!("listening on {local}");
        if let Some(admin) = server.admin_addr() {
            tracing::info!("admin endpoint on http://{admin}/metrics");
        }
        if a.host.is_none() && local.ip().is_unspecified() {
            tracing::info!("set --host to the name users reach this server by");
        }
        crate::write_stdout(&format!("{}\n", server.address(&host)))?;
        server.run(shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("x").is_err());
    }
}

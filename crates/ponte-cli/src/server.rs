//! `ponte server`: argument parsing over `ponte-server`.
//!
//! - `ponte server [--data DIR] [--listen ADDR] …` runs the service and
//!   prints its address `ponte://HOST:PORT#KEY` on stdout (one line).
//! - `ponte server address --data DIR [--host NAME] [--port N]` prints it
//!   again: what the server printed at its last start (recorded in
//!   `DIR/server.address`), with `--host`/`--port` overriding.
//! - `ponte server invite --data DIR` prints a one-use invite token (only
//!   for a directory a server has started in), with a note on stderr when
//!   the server last started without `--invite-only` (the token is not
//!   needed then).
//! - `ponte server backup --data DIR DEST` copies the data directory while
//!   the server runs (`ponte_server::backup`).
//! - `ponte server init --store postgres://… --data DIR` prepares a service
//!   on PostgreSQL: the schema, and the service's key in `DIR` (copied to
//!   every other node), recorded in the database. `ponte server invite
//!   --store postgres://…` makes an invite there.
//!
//! The first two refuse a host or port no client would accept in the
//! printed address, and `--listen`/`--admin` take an IP address and port
//! (as the config file does): a host name there is refused with a hint,
//! not resolved.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ponte_server::config::{
    FileConfig, DEFAULT_ADMIN, DEFAULT_DATA_DIR, DEFAULT_LISTEN, EXPIRY_INTERVAL,
    HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_PENDING, RETENTION,
};
use ponte_server::keyfile::KeyFileError;
use ponte_server::{Server, ServerConfig, ServerError};
use std::net::{IpAddr, SocketAddr};
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
    /// Copy the data directory into a new one, consistently, while the
    /// server runs (restore: start a server with --data on the copy).
    Backup(BackupArgs),
    /// Prepare a service on PostgreSQL: create the schema, and the
    /// service's key in --data (copy server.key to every other node).
    Init(InitArgs),
    /// Move a stopped SQLite server's data (accounts, keys, queued
    /// messages, blob records) into an empty PostgreSQL database; the
    /// server address stays the same.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Data directory of the SQLite server (stopped).
    #[arg(long, value_name = "DIR", env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// The empty PostgreSQL database to move it into.
    #[arg(long, value_name = "ADDRESS", value_parser = check_store)]
    to: String,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The PostgreSQL database every node of the service shares:
    /// postgres://USER[:PASSWORD]@HOST:PORT/DATABASE.
    #[arg(long, value_name = "ADDRESS", env = "PONTE_STORE", value_parser = check_store)]
    store: String,
    /// Data directory of this node: the service's key goes there.
    #[arg(long, value_name = "DIR", env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML config file (keys as the flags below, with underscores; unknown
    /// keys are errors). Flags given on the command line win.
    #[arg(long, value_name = "FILE", env = "PONTE_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: server.key (Noise static key, 0600) and ponte.db
    /// [default: ponte-data].
    #[arg(long, value_name = "DIR", env = "PONTE_DATA")]
    data: Option<PathBuf>,
    /// Keep accounts and mailboxes in this PostgreSQL database, shared by
    /// every node of the service (postgres://USER@HOST:PORT/DATABASE, with
    /// ?sslmode=verify-full&sslrootcert=CA.pem for TLS with the database's
    /// certificate checked; prepare it with `ponte server init`)
    /// [default: SQLite, ponte.db in the data directory].
    #[arg(long, value_name = "ADDRESS", env = "PONTE_STORE", value_parser = check_store)]
    store: Option<String>,
    /// Directory of uploaded files; with PostgreSQL, one every node shares
    /// [default: DATA_DIR/blobs].
    #[arg(long, value_name = "DIR")]
    blob_dir: Option<PathBuf>,
    /// NATS with JetStream carrying wake-ups and presence between the
    /// nodes of a service on PostgreSQL: nats://HOST:PORT.
    #[arg(long, value_name = "ADDRESS", env = "PONTE_BUS", value_parser = ponte_server::bus::check_address)]
    bus: Option<String>,
    /// IP address and port to listen on for clients and relays (port 0: any
    /// free port) [default: 0.0.0.0:5222].
    #[arg(long, value_name = "IP:PORT", value_parser = parse_listen)]
    listen: Option<SocketAddr>,
    /// Admin endpoint (/metrics, /healthz): an IP address and port, or
    /// "off" (as --no-admin); keep it on loopback [default: 127.0.0.1:8299].
    #[arg(long, value_name = "IP:PORT|off", value_parser = parse_admin)]
    admin: Option<AdminFlag>,
    /// Do not serve the admin endpoint.
    #[arg(long)]
    no_admin: bool,
    /// Host name (or IP address) to print in the server address, without a
    /// port (default: the listen IP, or this machine's host name when
    /// listening on all addresses).
    #[arg(long, value_name = "NAME", value_parser = parse_host)]
    host: Option<String>,
    /// Only register users who present an invite (`ponte server invite`).
    #[arg(long)]
    invite_only: bool,
    /// Keep undelivered messages this long, then tell the sender they
    /// expired (e.g. 30d, 12h, 90m; 1m to 3650d) [default: 30d].
    #[arg(long, value_name = "DUR", value_parser = |s: &str| RETENTION.parse(s))]
    retention: Option<Duration>,
    /// How often to look for expired messages (1s to 1d) [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = |s: &str| EXPIRY_INTERVAL.parse(s))]
    expiry_interval: Option<Duration>,
    /// Most simultaneous connections [default: 10000].
    #[arg(long, value_name = "N", value_parser = |s: &str| MAX_CONNECTIONS.parse::<usize>(s))]
    max_connections: Option<usize>,
    /// Most undelivered messages per recipient [default: 10000].
    #[arg(long, value_name = "N", value_parser = |s: &str| MAX_PENDING.parse::<u32>(s))]
    max_pending: Option<u32>,
    /// Deadline for the PROXY header and Noise handshake (1s to 300s)
    /// [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = |s: &str| HANDSHAKE_TIMEOUT.parse(s))]
    handshake_timeout: Option<Duration>,
    /// Close logged-in connections silent for this long (90s to 1d; clients
    /// ping every 60s) [default: 300s].
    #[arg(long, value_name = "DUR", value_parser = |s: &str| IDLE_TIMEOUT.parse(s))]
    idle_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
struct AddressArgs {
    /// Data directory of the server.
    #[arg(long, value_name = "DIR", env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Host name (or IP address) users reach the server (or a relay in
    /// front of it) by [default: the host printed at the server's last
    /// start].
    #[arg(long, value_name = "NAME", value_parser = parse_host)]
    host: Option<String>,
    /// Port users connect to, 1 to 65535 [default: the port printed at the
    /// server's last start].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
}

#[derive(Debug, Args)]
struct InviteArgs {
    /// Data directory of the server.
    #[arg(long, value_name = "DIR", env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// The service's PostgreSQL database (instead of the data directory's
    /// SQLite one).
    #[arg(long, value_name = "ADDRESS", env = "PONTE_STORE", value_parser = check_store)]
    store: Option<String>,
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// Data directory of the server.
    #[arg(long, value_name = "DIR", env = "PONTE_DATA", default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Where to put the copy: a directory that does not exist yet (or is
    /// empty).
    dest: PathBuf,
}

/// `--admin`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum AdminFlag {
    Off,
    At(SocketAddr),
}

/// `--listen`: an IP address and port.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(s, "0.0.0.0:5222 or [::]:5222")
}

/// `--admin`: an IP address and port, or `off`.
fn parse_admin(s: &str) -> Result<AdminFlag, String> {
    if s == "off" {
        return Ok(AdminFlag::Off);
    }
    parse_socket_addr(s, "127.0.0.1:8299 or [::1]:8299")
        .map(AdminFlag::At)
        .map_err(|e| format!("{e}, or off"))
}

/// An IP address and port, as the config file takes them. A host name is
/// refused rather than resolved: `localhost` may resolve to `::1` or to
/// `127.0.0.1`, and a name to several addresses or to another one after
/// the next DNS change, so what the server binds would depend on the
/// resolver; an IP address says exactly which interface is exposed.
fn parse_socket_addr(s: &str, examples: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let why = if s.parse::<IpAddr>().is_ok() {
        "no port"
    } else {
        "not an IP address and port (host names such as localhost are not resolved)"
    };
    Err(format!(
        "{why}: use an IP address and port, e.g. {examples}"
    ))
}

/// A host for the printed server address (`--host`, and the host of
/// `ponte server address`): see [`ponte_server::config::check_host`].
fn parse_host(s: &str) -> Result<String, String> {
    ponte_server::config::check_host(s)
}

/// Runs `ponte server …`.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ServerCommand::Address(a)) => address(&a),
        Some(ServerCommand::Invite(i)) => match &i.store {
            Some(store) => invite_postgres(store),
            None => invite(&i.data),
        },
        Some(ServerCommand::Backup(b)) => backup(&b),
        Some(ServerCommand::Init(i)) => init(&i),
        Some(ServerCommand::Migrate(m)) => migrate(&m),
        None => serve(args.run),
    }
}

/// Adds what to do to the errors of a data directory no server has started
/// in (a mistyped `--data`, usually).
fn explain_data_dir(e: ServerError, data: &Path, what: &str) -> anyhow::Error {
    match e {
        ServerError::NoDatabase(_) | ServerError::Key(KeyFileError::Missing { .. }) => {
            anyhow::anyhow!(
                "{e}: start the server there first (ponte server --data {}), or check --data",
                data.display()
            )
        }
        ServerError::Key(KeyFileError::NotADirectory(_)) => {
            anyhow::anyhow!("{e}: check --data")
        }
        e => anyhow::Error::new(e).context(format!("{what} in {}", data.display())),
    }
}

fn address(a: &AddressArgs) -> anyhow::Result<ExitCode> {
    let addr = ponte_server::server_address(&a.data, a.host.as_deref(), a.port)
        .map_err(|e| explain_data_dir(e, &a.data, "reading the server address"))?;
    // --host is checked by clap; a recorded host was parsed, but without a
    // record the host is this machine's name, which may be anything.
    if a.host.is_none() {
        parse_host(&addr.host)
            .map_err(|e| anyhow::anyhow!("the host to print: {e}; give one with --host"))?;
    }
    crate::write_stdout(&format!("{addr}\n"))?;
    Ok(ExitCode::SUCCESS)
}

fn invite(data: &Path) -> anyhow::Result<ExitCode> {
    let token = ponte_server::create_invite(data)
        .map_err(|e| explain_data_dir(e, data, "creating an invite"))?;
    crate::write_stdout(&format!("{token}\n"))?;
    // On stderr: stdout stays the token alone, for scripts.
    if ponte_server::keyfile::read_registration(data) == Some(false) {
        eprintln!(
            "ponte: note: the server in {} was last started without --invite-only: anyone can \
             register without an invite, so this token is not needed (it works once the server \
             runs with --invite-only)",
            data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_store(s: &str) -> Result<String, String> {
    ponte_server::config::check_store(s)
}

fn invite_postgres(store: &str) -> anyhow::Result<ExitCode> {
    let token = ponte_server::create_invite_postgres(store)
        .context("creating an invite in the PostgreSQL database")?;
    crate::write_stdout(&format!("{token}\n"))?;
    Ok(ExitCode::SUCCESS)
}

fn init(i: &InitArgs) -> anyhow::Result<ExitCode> {
    let done = ponte_server::init_postgres(&i.data, &i.store).map_err(|e| match e {
        ServerError::AddressKeyMismatch(_) => anyhow::anyhow!("{e}"),
        e => anyhow::Error::new(e).context("preparing the PostgreSQL database"),
    })?;
    let key = ponte_server::keyfile::KEY_FILE;
    let file = i.data.join(key);
    eprintln!(
        "the database is ready and records this service's key{}: {}\n\
         start every node with --store and a data directory holding a copy of {} \
         (keep it secret: whoever has it can pose as this service)",
        if done.key_created {
            " (created now)"
        } else {
            ""
        },
        file.display(),
        key,
    );
    Ok(ExitCode::SUCCESS)
}

fn migrate(m: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let summary = ponte_server::migrate_to_postgres(&m.data, &m.to).map_err(|e| match e {
        ServerError::DataDirInUse(_) | ServerError::AddressKeyMismatch(_) => {
            anyhow::anyhow!("{e}")
        }
        e => explain_data_dir(e, &m.data, "migrating to PostgreSQL"),
    })?;
    let copied: Vec<String> = summary
        .tables
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    eprintln!(
        "moved to PostgreSQL: {}\n\
         {} is now {} (kept as a backup); start the server with --store and the same --data \
         (same key, same address)",
        copied.join(", "),
        m.data.join("ponte.db").display(),
        ponte_server::MIGRATED_DB_FILE,
    );
    Ok(ExitCode::SUCCESS)
}

fn backup(b: &BackupArgs) -> anyhow::Result<ExitCode> {
    use ponte_server::backup::BackupError;
    let summary = ponte_server::backup::backup(&b.data, &b.dest).map_err(|e| match e {
        BackupError::NoDatabase(_) | BackupError::Key(KeyFileError::Missing { .. }) => {
            anyhow::anyhow!("{e}: nothing to back up; check --data (the server's data directory)")
        }
        // These name the path they are about, and what to do.
        BackupError::Key(KeyFileError::NotADirectory(_)) => anyhow::anyhow!("{e}: check --data"),
        BackupError::DestinationNotEmpty(_) | BackupError::DestinationNotADirectory(_) => {
            anyhow::anyhow!("{e}")
        }
        e => anyhow::Error::new(e).context(format!(
            "backing up {} to {}",
            b.data.display(),
            b.dest.display()
        )),
    })?;
    crate::write_stdout(&format!(
        "backed up {} to {}: {} accounts, {} undelivered messages, {} KiB; integrity checked\n\
         restore: stop the server and start it with --data {} (same key and address)\n",
        b.data.display(),
        b.dest.display(),
        summary.accounts,
        summary.undelivered,
        summary.bytes.div_ceil(1024),
        b.dest.display(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn serve(a: RunArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging();
    let file = match &a.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    // Checked as the file was read (a bad one is refused with its line).
    let file_host = file.host.clone();
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse()?;
    let mut cfg = ServerConfig::new(PathBuf::from(DEFAULT_DATA_DIR), default_listen);
    file.apply(&mut cfg);
    if let Some(v) = a.data {
        cfg.data_dir = v;
    }
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = a.store {
        cfg.store = Some(v);
    }
    if let Some(v) = a.blob_dir {
        cfg.blob_dir = Some(v);
    }
    if let Some(v) = a.bus {
        cfg.bus = Some(v);
    }
    if a.invite_only {
        cfg.invite_only = true;
    }
    if let Some(v) = a.retention {
        cfg.retention = v;
    }
    if let Some(v) = a.expiry_interval {
        cfg.expiry_interval = v;
    }
    if let Some(v) = a.max_connections {
        cfg.max_connections = v;
    }
    if let Some(v) = a.max_pending {
        cfg.max_pending_per_mailbox = v;
    }
    if let Some(v) = a.handshake_timeout {
        cfg.handshake_timeout = v;
    }
    if let Some(v) = a.idle_timeout {
        cfg.idle_timeout = v;
    }
    let admin = if a.no_admin {
        None
    } else if let Some(v) = a.admin {
        match v {
            AdminFlag::Off => None,
            AdminFlag::At(v) => Some(v),
        }
    } else {
        match file.admin_addr() {
            Some(v) => v,
            None => Some(DEFAULT_ADMIN.parse()?),
        }
    };
    let host_arg = a.host.clone().or(file_host);
    // The listen IP is the bound one: the host is known (and checked)
    // before anything is created.
    let host = ponte_server::display_host(host_arg.as_deref(), cfg.listen);
    if host_arg.is_none() {
        parse_host(&host).map_err(|e| {
            anyhow::anyhow!("this machine's host name {e}; set --host (or host in the config file)")
        })?;
    }
    let data = cfg.data_dir.clone();
    let invite_only = cfg.invite_only;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let server = Server::bind(cfg, admin).await.map_err(|e| match e {
            // These name the data directory already.
            ServerError::Key(KeyFileError::NotADirectory(_)) => {
                anyhow::anyhow!("{e}: check --data")
            }
            ServerError::Key(KeyFileError::LostKey { .. })
            | ServerError::DataDirInUse(_)
            | ServerError::AddressKeyMismatch(_) => anyhow::anyhow!("{e}"),
            ServerError::AdminBind { addr, error } => anyhow::anyhow!(
                "cannot listen on {addr} for the admin endpoint: {error}; give it another address \
                 with --admin IP:PORT (config key admin), or turn it off with --no-admin"
            ),
            e => {
                anyhow::Error::new(e).context(format!("starting the server in {}", data.display()))
            }
        })?;
        let local = server.local_addr()?;
        let address = server.address(&host);
        if server.key_created() {
            // A new identity: right on a first start, wrong on a restart
            // with a mistyped --data (every registered client refuses it).
            tracing::warn!(
                "created a NEW server key in {}: this is a new server identity, {address}; \
                 clients that know this server by another key refuse it. If this server ran \
                 before, stop it and check --data (the old key is in the old data directory)",
                data.join(ponte_server::keyfile::KEY_FILE).display()
            );
        }
        tracing::info!("listening on {local}");
        if let Some(admin) = server.admin_addr() {
            tracing::info!("admin endpoint on http://{admin}/metrics");
        }
        if host_arg.is_none() && local.ip().is_unspecified() {
            tracing::info!("set --host to the name users reach this server by");
        }
        // For `ponte server address`, which prints it again.
        ponte_server::keyfile::write_address(&data, &address)
            .with_context(|| format!("recording the server address in {}", data.display()))?;
        // For `ponte server invite`, which notes when a token is not needed.
        ponte_server::keyfile::write_registration(&data, invite_only)
            .with_context(|| format!("recording the registration mode in {}", data.display()))?;
        crate::write_stdout(&format!("{address}\n"))?;
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

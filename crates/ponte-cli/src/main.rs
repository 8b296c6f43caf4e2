//! The `ponte` binary: one executable, a subcommand per role.
//!
//! - `ponte proxy …`  — run a volunteer relay (see `proxy.rs`, over `ponte-proxy`).
//! - `ponte server …` — run the messaging service (see `server.rs`, over `ponte-server`).
//! - `ponte register | send | sync | listen | file | history | contacts | timer | verify |
//!   status | via | group` — the messaging client (see `client.rs`, over `ponte-client`).
//! - `ponte app` — the messenger in the browser, served on loopback (see `app/`).
//! - `ponte demo` — server, relay and two users on loopback (see `demo.rs`).
//!
//! Each role lives in its own module here and stays thin over its library
//! crate: argument parsing, terminal output and exit codes only.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc rather than the system allocator: a relay holds thousands of
/// small, long-lived objects per worker (tokio aligns each socket's state to
/// 128 bytes, which glibc's allocator pads heavily); measured in
/// docs/BENCHMARKS.md as memory per idle connection. Its arenas are
/// committed lazily (`.cargo/config.toml` sets mimalloc's default), which
/// keeps an idle server or relay about 7 MB smaller.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod app;
mod client;
mod demo;
mod proxy;
mod qr;
mod server;

#[derive(Debug, Parser)]
#[command(name = "ponte", version, about = "Ponte: messaging that gets through.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a volunteer relay (drop-in for WhatsApp's proxy, front door of a Ponte server).
    Proxy(proxy::ProxyArgs),
    /// Run the messaging service (`ponte server --data DIR`), print its address or an invite, or back it up.
    Server(server::ServerArgs),
    /// The messenger in your browser: serves the app on 127.0.0.1 and opens it.
    App(app::AppArgs),
    /// See it work: a server, a relay and two users chatting on this machine, then exit.
    Demo,
    /// Client commands: register, send, sync, listen, file, history, contacts, timer, verify, status, via, group.
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Log to stderr; `RUST_LOG` filters (default `info`). Client addresses are
/// never logged unless the operator turned that on in the relay config.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Write to stdout; a closed pipe (`ponte … | head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn main() -> ExitCode {
    // Before anything else (no thread exists yet): see its docs.
    ponte_proxy::restart_with_fast_memcpy();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => proxy::run(args),
        Command::Server(args) => server::run(args),
        Command::App(args) => app::run(args),
        Command::Demo => demo::run(),
        Command::Client(cmd) => client::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ponte: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_invite_token_starting_with_a_hyphen_is_a_value_not_a_flag() {
        // Older servers issued base64url tokens; one in 64 starts with `-`.
        let cli = Cli::try_parse_from([
            "ponte",
            "register",
            "--server",
            "ponte://127.0.0.1:5222#key",
            "--invite",
            "-uE4l1Vw8YbqL0c9JdWzQw",
            "carol",
        ])
        .unwrap();
        let Command::Client(client::ClientCommand::Register { invite, name, .. }) = cli.command
        else {
            panic!("parsed as another command");
        };
        assert_eq!(invite.as_deref(), Some("-uE4l1Vw8YbqL0c9JdWzQw"));
        assert_eq!(name, "carol");
    }
}

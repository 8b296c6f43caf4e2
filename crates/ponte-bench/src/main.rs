//! `ponte-bench`: load generators and the relay comparison harness.
//!
//! - `ponte-bench relay …`    — one run comparing direct, HAProxy (official and
//!   tuned) and `ponte proxy`; prints a Markdown table (`relay.rs`, `report.rs`).
//! - `ponte-bench upstream …` — the sink/echo/hold server relays forward to
//!   (`upstream.rs`, PROXY header handling in `proxy_header.rs`).
//! - `ponte-bench client …`   — one load-generator process (`client.rs`).
//! - the stealth listener's figures, in the same `relay` run (`stealth.rs`).
//! - `ponte-bench app …`      — `ponte app` with a long history: search
//!   latency and opening a long chat through its HTTP API (`app.rs`).
//!
//! Systems under test are child processes (`systems.rs`); TLS material and
//! client config live in `tls.rs`; percentiles in `stats.rs`.
//! See docs/BENCHMARKS.md for what is measured and how.

#![forbid(unsafe_code)]

mod app;
mod client;
mod proxy_header;
mod relay;
mod report;
mod server;
mod stats;
mod stealth;
mod systems;
mod tls;
mod upstream;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "ponte-bench",
    about = "Relay benchmark harness: ponte proxy vs HAProxy vs direct."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the full comparison and print a Markdown report.
    Relay(relay::RelayArgs),
    /// Run the bench upstream (started by `relay`).
    Upstream(upstream::UpstreamArgs),
    /// Run one load-generator process (started by `relay`).
    Client(client::ClientArgs),
    /// Messaging-server benchmark: `server run` (ponte server vs nats-server)
    /// and its load-generator processes (`server client`).
    Server(server::ServerArgs),
    /// `ponte app` with a long history: search latency, opening a long chat.
    App(app::AppArgs),
}

fn main() -> ExitCode {
    // As `ponte` does, so the bench's clients copy as the real ones do.
    ponte_proxy::restart_with_fast_memcpy();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Relay(a) => relay::run(a),
        Command::Upstream(a) => upstream::run(a),
        Command::Client(a) => client::run(a),
        Command::Server(a) => server::run(a),
        Command::App(a) => app::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ponte-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

//! The `ponte` binary: one executable, a subcommand per role.
//!
//! - `ponte proxy …`  — run a volunteer relay (see `proxy.rs`, over `ponte-proxy`).
//!
//! Each role lives in its own module here and stays thin over its library
//! crate: argument parsing, terminal output and exit codes only.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod proxy;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => proxy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ponte: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

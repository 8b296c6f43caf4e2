//! `ponte proxy`: argument parsing over `ponte-proxy`.
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ProxyArgs {}

pub fn run(_args: ProxyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

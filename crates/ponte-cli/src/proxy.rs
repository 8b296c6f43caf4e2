//! `ponte proxy`: run a relay, check or print its config, print a share link.

use crate::qr;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ponte_proxy::config::{HostPort, ListenAddr};
use ponte_proxy::link::ShareLink;
use ponte_proxy::{Config, Preset, Proxy};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    #[command(flatten)]
    source: ConfigSource,
    /// Check the configuration and exit (0 when valid).
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Args)]
struct ConfigSource {
    /// Built-in layout: `whatsapp` (WhatsApp's official proxy) or `ponte`
    /// (in front of a Ponte server; needs --upstream).
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    preset: Option<Preset>,
    /// A TOML configuration file (see examples/).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The Ponte server to front (preset `ponte`): HOST:PORT, or the
    /// server's ponte://HOST:PORT#KEY address (only its host and port are used).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_upstream)]
    upstream: Option<HostPort>,
    /// Admin endpoint address (status page, /metrics, /healthz).
    #[arg(long, value_name = "ADDR", conflicts_with = "no_admin")]
    admin: Option<ListenAddr>,
    /// Run without the admin endpoint.
    #[arg(long)]
    no_admin: bool,
    /// Name (DNS or IP) to put in the self-signed certificate; repeatable.
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// Global connection cap.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Write client IP addresses into the logs (off by default: your users may be at risk).
    #[arg(long)]
    log_client_addresses: bool,
}

#[derive(Debug, Subcommand)]
enum ProxyCommand {
    /// Print the share link users open to use this relay, with a QR code.
    Link(LinkArgs),
}

#[derive(Debug, Args)]
struct LinkArgs {
    /// The relay's public host name or IP address, as users will reach it.
    #[arg(long)]
    host: String,
    #[command(flatten)]
    source: ConfigSource,
    /// Draw the QR code for a terminal with dark text on a light background.
    #[arg(long)]
    light: bool,
    /// Print only the link, without the QR code.
    #[arg(long)]
    no_qr: bool,
}

/// `--upstream`: HOST:PORT, or the `ponte://HOST:PORT#KEY` address operators
/// hand out, of which the relay needs only the host and port (clients check
/// the key end to end through the relay).
fn parse_upstream(s: &str) -> Result<HostPort, String> {
    match s.parse::<ponte_wire::address::ServerAddress>() {
        Ok(a) => a.socket_addr_string().parse(),
        Err(_) => s.parse(),
    }
}

impl ConfigSource {
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match (&self.config, self.preset) {
            (Some(path), _) => {
                if self.upstream.is_some() {
                    bail!("--upstream goes with --preset ponte; with --config, set upstreams in the file");
                }
                Config::load(path)?
            }
            (None, preset) => {
                let preset = preset.unwrap_or(if self.upstream.is_some() {
                    Preset::Ponte
                } else {
                    Preset::Whatsapp
                });
                if preset == Preset::Whatsapp && self.upstream.is_some() {
                    bail!(
                        "--upstream is for --preset ponte; the whatsapp preset has fixed upstreams"
                    );
                }
                Config::preset(preset, self.upstream.clone())?
            }
        };
        if let Some(a) = self.admin {
            cfg.admin = Some(ponte_proxy::config::AdminConfig::new(a.0));
        }
        if self.no_admin {
            cfg.admin = None;
        }
        if !self.tls_names.is_empty() {
            cfg.tls.self_signed_names = self.tls_names.clone();
        }
        if let Some(n) = self.max_connections {
            cfg.limits.max_connections = n;
        }
        if self.log_client_addresses {
            cfg.log.client_addresses = true;
        }
        cfg.validate(None, self.config.as_deref())?;
        Ok(cfg)
    }
}

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    if let Some(ProxyCommand::Link(l)) = args.command {
        return print_link(l);
    }
    let cfg = args.source.load()?;
    if args.print_config {
        crate::write_stdout(&cfg.to_toml())?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.check_config {
        let n = cfg.listener.len();
        let what = args
            .source
            .config
            .as_ref()
            .map_or_else(|| "preset".to_owned(), |p| p.display().to_string());
        // Everything the start does short of binding: certificate files
        // loaded, the self-signed certificate made.
        Proxy::check(&cfg).with_context(|| what.clone())?;
        for w in cfg.warnings().into_iter().chain(nofile_warning(&cfg)) {
            eprintln!("ponte: warning: {w}");
        }
        crate::write_stdout(&format!(
            "{what}: ok ({n} listeners, {} upstreams)\n",
            cfg.upstream.len()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    crate::init_logging();
    // This runtime runs the control plane (admin, health checks, reloads);
    // connections run on the relay's own worker threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(cfg))?;
    Ok(ExitCode::SUCCESS)
}

/// Raise the open-file limit to the hard limit; what to say when that is
/// still below what `max_connections` needs (two descriptors a connection).
fn nofile_warning(cfg: &Config) -> Option<String> {
    let needed = u64::from(cfg.limits.max_connections) * 2 + 64;
    match ponte_proxy::raise_nofile_limit() {
        Ok(n) if n < needed => Some(format!(
            "the open-file limit ({n}) is below what max_connections needs ({needed}); \
             raise it (systemd: LimitNOFILE) or lower max_connections"
        )),
        Ok(_) => None,
        Err(e) => Some(format!("cannot raise the open-file limit: {e}")),
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Before anything is logged: a SIGTERM sent as soon as the relay says
    // it listens stops it gracefully instead of killing it.
    let signals = Signals::install();
    if let Some(w) = nofile_warning(&cfg) {
        tracing::warn!("{w}");
    }
    let proxy = Proxy::bind(cfg).await?;
    for (name, addrs) in proxy.listener_addrs() {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        tracing::info!(listener = %name, "listening on {}", list.join(", "));
    }
    if let Some(a) = proxy.admin_addr() {
        tracing::info!("status page http://{a}/ (metrics at /metrics)");
    }
    let reload = proxy.reload_handle();
    proxy.run(signals.shutdown(reload)).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGHUP handlers, installed before the relay starts.
struct Signals {
    /// SIGTERM, SIGINT, SIGHUP.
    #[cfg(unix)]
    unix: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
                _ => {
                    tracing::error!("cannot install signal handlers; stop with Ctrl-C");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on SIGTERM or SIGINT; SIGHUP reloads certificates meanwhile.
    async fn shutdown(self, reload: ponte_proxy::ReloadHandle) {
        #[cfg(unix)]
        {
            let Some([mut term, mut int, mut hup]) = self.unix else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = int.recv() => return,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading certificates");
                        reload.reload();
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (self, reload);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn print_link(args: LinkArgs) -> anyhow::Result<ExitCode> {
    ponte_wire::link::validate_host(&args.host)?;
    let cfg = args.source.load()?;
    let theme = if args.light {
        qr::Theme::LightTerminal
    } else {
        qr::Theme::DarkTerminal
    };
    let qr = |text: &str| {
        qr::draw(text, theme).map_err(|e| anyhow::anyhow!("cannot draw a QR code: {e}"))
    };
    let out = match ShareLink::for_config(&cfg, &args.host)? {
        ShareLink::Ponte(relay) => {
            let web = relay.web_link();
            let mut out = format!("{}\n{web}\n", relay.app_link());
            if !args.no_qr {
                out.push('\n');
                out.push_str(&qr(&web)?);
                out.push_str(
                    "\nPonte users: `ponte via add 'LINK'` (either link), or scan the code.\n",
                );
            }
            out
        }
        ShareLink::WhatsApp(url) => {
            let mut out = format!("{url}\n");
            if !args.no_qr {
                out.push('\n');
                out.push_str(&qr(&url)?);
                out.push_str(
                    "\nWhatsApp users: open the link, or Settings > Storage and data > Proxy > Use proxy.\n",
                );
            }
            out
        }
    };
    crate::write_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_takes_host_and_port_of_a_server_address() {
        let key = "A".repeat(43);
        for (arg, want) in [
            ("chat.example.org:5222", "chat.example.org:5222"),
            (
                &*format!("ponte://chat.example.org:6000#{key}"),
                "chat.example.org:6000",
            ),
            (
                &*format!("ponte://chat.example.org#{key}"),
                "chat.example.org:5222",
            ),
            (
                &*format!("ponte://[2001:db8::1]:443#{key}"),
                "[2001:db8::1]:443",
            ),
        ] {
            assert_eq!(parse_upstream(arg).unwrap().to_string(), want, "{arg}");
        }
        let e = parse_upstream("ponte://chat.example.org:5222#short").unwrap_err();
        assert!(e.contains("give only its HOST:PORT"), "{e}");
    }
}

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
    /// Built-in layout: `whatsapp` (WhatsApp's official proxy), `ponte`
    /// (in front of a Ponte server; needs --upstream) or `stealth` (a Ponte
    /// server's front door that probes see as the --cover site; needs
    /// --upstream, --cover and --domain).
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    preset: Option<Preset>,
    /// A TOML configuration file (see examples/).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The Ponte server to front (presets `ponte` and `stealth`): HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    upstream: Option<HostPort>,
    /// The HTTPS site that everyone without a link's secret is handed to
    /// (preset `stealth`): HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    cover: Option<HostPort>,
    /// The DNS name the cover site answers to (preset `stealth`).
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// The link secrets file (preset `stealth`; default `secrets.toml` in the
    /// working directory).
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
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
                if preset != Preset::Stealth
                    && (self.cover.is_some() || self.domain.is_some() || self.secrets.is_some())
                {
                    bail!("--cover, --domain and --secrets go with --preset stealth");
                }
                if preset == Preset::Stealth {
                    match (&self.upstream, &self.cover, &self.domain) {
                        (Some(up), Some(cover), Some(domain)) => Config::stealth_preset(
                            up.clone(),
                            cover.clone(),
                            domain,
                            self.secrets.clone(),
                        )?,
                        _ => bail!("--preset stealth needs --upstream HOST:PORT, --cover HOST:PORT and --domain NAME"),
                    }
                } else {
                    Config::preset(preset, self.upstream.clone())?
                }
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

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let needed = u64::from(cfg.limits.max_connections) * 2 + 64;
    match ponte_proxy::raise_nofile_limit() {
        Ok(n) if n < needed => tracing::warn!(
            limit = n,
            needed,
            "the open-file limit is below what max_connections needs; raise it (systemd: LimitNOFILE) or lower max_connections"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
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
    proxy.run(shutdown_signal(reload)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT; SIGHUP reloads certificates meanwhile.
async fn shutdown_signal(reload: ponte_proxy::ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading certificates");
                    reload.reload();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
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

//! `ponte proxy`: run a relay, check or print its config, print a share link.

use crate::qr;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ponte_proxy::acme::AcmeConfig;
use ponte_proxy::config::{HostPort, ListenAddr, TlsMode};
use ponte_proxy::link::ShareLink;
use ponte_proxy::stealth::CoverSite;
use ponte_proxy::{Config, Preset, Proxy};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
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
    /// The Ponte server to front (presets `ponte` and `stealth`): HOST:PORT, or the
    /// server's ponte://HOST:PORT#KEY address (only its host and port are used).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_upstream)]
    upstream: Option<HostPort>,
    /// The HTTPS site that everyone without a link's secret is handed to
    /// (preset `stealth`): HOST:PORT, or `builtin` for the relay's own small
    /// site (its certificate from --acme-directory).
    #[arg(long, value_name = "HOST:PORT|builtin")]
    cover: Option<CoverSite>,
    /// The builtin cover site and its ACME certificate (boxed: rarely set).
    #[command(flatten)]
    builtin: Box<BuiltinArgs>,
    /// The DNS name the cover site answers to (preset `stealth`); preset
    /// `whatsapp`: the relay's name, on an ACME certificate for its TLS
    /// listeners (see --acme-directory, --no-acme).
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

/// The presets' less common options: the builtin cover site, ACME, the
/// WhatsApp layouts and ports.
#[derive(Debug, Args)]
struct BuiltinArgs {
    /// Preset `whatsapp`: one port for chat and media (443), told apart by
    /// the TLS server name; the share link names 443 for both.
    #[arg(long)]
    single_port: bool,
    /// A listener's port (repeatable): `https=8443`, or `media-alt=off` to
    /// drop that listener. Names as in --print-config.
    #[arg(long = "port", value_name = "NAME=PORT|off")]
    ports: Vec<String>,
    /// Serve a self-signed certificate for --domain instead of getting one
    /// by ACME.
    #[arg(long, conflicts_with = "acme_directory")]
    no_acme: bool,
    /// The builtin cover's folder of static files (with --cover builtin;
    /// default: one plain page).
    #[arg(long, value_name = "DIR")]
    site: Option<PathBuf>,
    /// The ACME CA's directory URL for the certificate for --domain (the
    /// builtin cover's, or the whatsapp preset's TLS listeners'), renewed
    /// before it expires; default Let's Encrypt.
    #[arg(long, value_name = "URL")]
    acme_directory: Option<String>,
    /// Contact for the ACME account (mailto:you@example.org); repeatable.
    #[arg(long, value_name = "URL")]
    acme_contact: Vec<String>,
    /// Folder for the ACME account and certificate (default `acme` in the
    /// working directory).
    #[arg(long, value_name = "DIR")]
    acme_state: Option<PathBuf>,
    /// A PEM root certificate to trust for the ACME CA's own HTTPS (a test
    /// CA such as Pebble).
    #[arg(long, value_name = "FILE", requires = "acme_directory")]
    acme_ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ProxyCommand {
    /// Print the share link users open to use this relay, with a QR code.
    Link(LinkArgs),
    /// Manage the links of a stealth relay: each has its own secret.
    Secret(SecretArgs),
}

#[derive(Debug, Args)]
struct SecretArgs {
    /// The relay's configuration file (its stealth listener names the
    /// secrets file).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: SecretAction,
}

#[derive(Debug, Subcommand)]
enum SecretAction {
    /// Make a new link with its own secret and print it, with a QR code.
    Add(SecretAdd),
    /// Show the links: label, creation, expiry, connections open now.
    List,
    /// Cut a link: new connections with it go to the cover site, and a
    /// running relay ends its open connections (within 5 s, or on SIGHUP).
    Revoke {
        /// The link's label.
        label: String,
    },
}

#[derive(Debug, Args)]
struct SecretAdd {
    /// The relay's public host name or IP address, as users will reach it.
    #[arg(long)]
    host: String,
    /// A name for the link (letters, digits, -, _ and .; default link-N).
    #[arg(long)]
    label: Option<String>,
    /// The link stops working after this long: 30d, 12h, 90m.
    #[arg(long, value_name = "DURATION")]
    expires: Option<String>,
    /// Connections open at once with this link.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Base of the https:// form (the link's details stay after `#`, which
    /// no web server receives); default https://DOMAIN/relay.
    #[arg(long, value_name = "URL")]
    web_base: Option<String>,
    /// Draw the QR code for a terminal with dark text on a light background.
    #[arg(long)]
    light: bool,
    /// Print only the links, without the QR code.
    #[arg(long)]
    no_qr: bool,
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
    /// Also print the link's https:// form on this base, a page you run
    /// that tells people how to install Ponte (the relay's details stay
    /// after `#`, which no web server receives). Without it only the
    /// ponte:// form is printed: Ponte owns no web domain to point at.
    #[arg(long, value_name = "URL")]
    web_base: Option<String>,
}

/// The base of a link's https:// form: https, no fragment, at most
/// [`ponte_wire::link::MAX_WEB_BASE_LEN`] bytes.
fn check_web_base(base: &str) -> anyhow::Result<()> {
    if !base.starts_with("https://") || base.contains('#') {
        bail!("--web-base must be an https:// URL without #");
    }
    if base.len() > ponte_wire::link::MAX_WEB_BASE_LEN {
        bail!(
            "--web-base is {} bytes long, at most {} are allowed",
            base.len(),
            ponte_wire::link::MAX_WEB_BASE_LEN
        );
    }
    Ok(())
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

/// Let's Encrypt's production directory, the ACME default.
const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `--port NAME=PORT|off`: every address of listener NAME gets PORT, or the
/// listener goes.
fn set_port(cfg: &mut Config, spec: &str) -> anyhow::Result<()> {
    let Some((name, port)) = spec.split_once('=') else {
        bail!("--port {spec}: write NAME=PORT or NAME=off");
    };
    let Some(at) = cfg.listener.iter().position(|l| l.name.get_ref() == name) else {
        let names: Vec<&str> = cfg
            .listener
            .iter()
            .map(|l| l.name.get_ref().as_str())
            .collect();
        bail!(
            "--port {spec}: no listener `{name}` (this layout has {})",
            names.join(", ")
        );
    };
    if port == "off" {
        cfg.listener.remove(at);
        return Ok(());
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => bail!("--port {spec}: the port must be 1 to 65535, or off"),
    };
    for a in cfg.listener[at].listen.get_mut() {
        a.0.set_port(port);
    }
    Ok(())
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
                let b = &self.builtin;
                if preset != Preset::Stealth
                    && (self.cover.is_some() || self.secrets.is_some() || b.site.is_some())
                {
                    bail!("--cover, --secrets and --site go with --preset stealth");
                }
                if preset == Preset::Ponte && self.domain.is_some() {
                    bail!("--domain goes with --preset stealth or whatsapp");
                }
                if preset != Preset::Whatsapp && b.single_port {
                    bail!("--single-port goes with --preset whatsapp");
                }
                // Whether the layout serves a certificate for --domain.
                let mut wants_cert = false;
                let mut cfg = match preset {
                    Preset::Stealth => {
                        let mut cfg = match (&self.upstream, &self.cover, &self.domain) {
                            (Some(up), Some(cover), Some(domain)) => Config::stealth_preset(
                                up.clone(),
                                cover.clone(),
                                domain,
                                self.secrets.clone(),
                            )?,
                            _ => bail!("--preset stealth needs --upstream HOST:PORT, --cover HOST:PORT|builtin and --domain NAME"),
                        };
                        wants_cert = self.cover == Some(CoverSite::Builtin);
                        if !wants_cert && b.site.is_some() {
                            bail!("--site goes with --cover builtin (the relay's own site)");
                        }
                        if let Some(st) = cfg.listener[0].stealth.as_mut() {
                            st.site = b.site.clone();
                        }
                        cfg
                    }
                    Preset::Whatsapp => {
                        let mut cfg = if b.single_port {
                            Config::whatsapp_single_port()?
                        } else {
                            Config::preset(preset, None)?
                        };
                        if let Some(domain) = &self.domain {
                            cfg.tls.self_signed_names = vec![domain.clone()];
                            wants_cert = true;
                        }
                        cfg
                    }
                    Preset::Ponte => Config::preset(preset, self.upstream.clone())?,
                };
                match (&self.domain, wants_cert && !b.no_acme) {
                    (Some(domain), true) => {
                        cfg.acme = Some(AcmeConfig {
                            directory: b
                                .acme_directory
                                .clone()
                                .unwrap_or_else(|| LETS_ENCRYPT.to_owned()),
                            domains: vec![domain.clone()],
                            contact: b.acme_contact.clone(),
                            state: b.acme_state.clone(),
                            directory_ca: b.acme_ca.clone(),
                            renew_before: "30d".parse().map_err(anyhow::Error::msg)?,
                            check_interval: "12h".parse().map_err(anyhow::Error::msg)?,
                        });
                        if preset == Preset::Whatsapp {
                            for l in &mut cfg.listener {
                                if l.tls != TlsMode::None {
                                    l.tls = TlsMode::Acme;
                                }
                            }
                        }
                    }
                    _ if b.acme_directory.is_some() => bail!(
                        "--acme-directory needs a certificate to get: --cover builtin with \
                         --preset stealth, or --domain with --preset whatsapp"
                    ),
                    _ => {}
                }
                for p in &b.ports {
                    set_port(&mut cfg, p)?;
                }
                cfg
            }
        };
        if self.config.is_some() && !self.builtin.ports.is_empty() {
            bail!("--port goes with a preset; with --config, set the ports in the file");
        }
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
    match args.command {
        Some(ProxyCommand::Link(l)) => {
            if args.source.config.is_some() || args.source.preset.is_some() {
                bail!("put the relay's options after `link`: ponte proxy link -c FILE --host HOST");
            }
            return print_link(l);
        }
        Some(ProxyCommand::Secret(s)) => return secret(s, args.source.config),
        None => {}
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

    /// Resolves on SIGTERM or SIGINT; SIGHUP reloads certificates and link
    /// secrets meanwhile.
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
                        tracing::info!("SIGHUP: reloading certificates and link secrets");
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
    if cfg.listener.iter().any(|l| l.stealth.is_some()) {
        bail!("each link of a stealth relay carries its own secret: ponte proxy -c FILE secret add --host {}", args.host);
    }
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
            let app = relay.app_link();
            let mut out = format!("{app}\n");
            // The QR code holds the https:// form when there is one (a phone's
            // camera opens it), else the ponte:// form.
            let scanned = match &args.web_base {
                Some(base) => {
                    check_web_base(base)?;
                    let web = relay.web_link_with_base(base);
                    out.push_str(&web);
                    out.push('\n');
                    web
                }
                None => app,
            };
            if !args.no_qr {
                out.push('\n');
                out.push_str(&qr(&scanned)?);
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

/// The stealth listener of the configuration at `path`: its secrets file,
/// port and cover name.
fn stealth_listener(path: &std::path::Path) -> anyhow::Result<(PathBuf, u16, String)> {
    let cfg = Config::load(path)?;
    let l = cfg
        .listener
        .iter()
        .find(|l| l.stealth.is_some())
        .with_context(|| {
            format!(
                "{}: no stealth listener ([listener.stealth])",
                path.display()
            )
        })?;
    let st = l.stealth.as_ref().context("stealth listener")?;
    let port = l.listen.get_ref().first().map_or(443, |a| a.0.port());
    Ok((st.secrets_path(Some(path)), port, st.domain.clone()))
}

/// `30d`, `12h`, `90m`, `45s`, `2w` in seconds.
fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("duration `{text}` needs a unit (s, m, h, d, w)"))?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("duration `{text}` must start with a whole number"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("duration `{text}`: unknown unit `{unit}` (s, m, h, d, w)"),
    };
    Ok(n.saturating_mul(unit))
}

/// `YYYY-MM-DD HH:MM` UTC for unix seconds.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Open connections per label from a running relay's /metrics; empty when
/// it cannot be reached.
fn open_counts(path: &std::path::Path) -> std::collections::HashMap<String, String> {
    use std::io::{Read as _, Write as _};
    let mut out = std::collections::HashMap::new();
    let Ok(cfg) = Config::load(path) else {
        return out;
    };
    let Some(admin) = cfg.admin.as_ref().map(|a| a.listen.get_ref().0) else {
        return out;
    };
    let timeout = std::time::Duration::from_secs(2);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, timeout) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return out;
    }
    let mut text = String::new();
    let _ = s.take(4 << 20).read_to_string(&mut text);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ponte_proxy_stealth_link_connections_open{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        if let Some(label) = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("label=\""))
            .and_then(|v| v.strip_suffix('"'))
        {
            let n: u64 = value.trim().parse().unwrap_or(0);
            let total = out
                .get(label)
                .and_then(|v: &String| v.parse::<u64>().ok())
                .unwrap_or(0);
            out.insert(label.to_owned(), (total + n).to_string());
        }
    }
    out
}

fn secret(args: SecretArgs, top_config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use ponte_proxy::stealth::secrets::SecretsFile;
    let path = args
        .config
        .or(top_config)
        .context("give the relay's configuration: ponte proxy -c FILE secret ...")?;
    let (file, port, domain) = stealth_listener(&path)?;
    let mut secrets = SecretsFile::load(&file)?;
    match args.action {
        SecretAction::Add(a) => {
            ponte_wire::link::validate_host(&a.host)?;
            let label = a.label.unwrap_or_else(|| secrets.free_label());
            if !ponte_proxy::stealth::secrets::valid_label(&label) {
                bail!("label `{label}`: use 1 to 64 letters, digits, -, _ and .");
            }
            let expires = match &a.expires {
                Some(d) => Some(ponte_proxy::stealth::secrets::now_unix() + parse_duration(d)?),
                None => None,
            };
            if a.max_connections == Some(0) {
                bail!("--max-connections must be at least 1");
            }
            let secret = secrets
                .add(&label, expires, a.max_connections)
                .with_context(|| format!("a link labelled `{label}` exists already"))?;
            let link = ponte_wire::link::RelayLink::new(&a.host, port, true)?
                .with_stealth(secret, &domain)?;
            let base = a
                .web_base
                .unwrap_or_else(|| format!("https://{domain}/relay"));
            check_web_base(&base)?;
            secrets.save(&file)?;
            let web = link.web_link_with_base(&base);
            let mut out = format!("{}\n{web}\n", link.app_link());
            if !a.no_qr {
                let theme = if a.light {
                    qr::Theme::LightTerminal
                } else {
                    qr::Theme::DarkTerminal
                };
                out.push('\n');
                out.push_str(
                    &qr::draw(&web, theme)
                        .map_err(|e| anyhow::anyhow!("cannot draw a QR code: {e}"))?,
                );
                out.push_str(&format!(
                    "\nLink `{label}`: give it to one circle of people; `ponte proxy -c {} secret revoke {label}` cuts it.\n",
                    path.display()
                ));
            }
            crate::write_stdout(&out)?;
        }
        SecretAction::List => {
            let open = open_counts(&path);
            let mut out = String::from("LABEL\tCREATED (UTC)\tEXPIRES (UTC)\tMAX\tOPEN NOW\n");
            for e in &secrets.secret {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    e.label,
                    utc(e.created),
                    e.expires.map_or_else(|| "never".to_owned(), utc),
                    e.max_connections
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    open.get(&e.label).map_or("-", String::as_str),
                ));
            }
            if secrets.secret.is_empty() {
                eprintln!(
                    "no links yet: ponte proxy -c {} secret add --host PUBLIC_HOST",
                    path.display()
                );
            }
            crate::write_stdout(&out)?;
        }
        SecretAction::Revoke { label } => {
            if !secrets.revoke(&label) {
                bail!("no link labelled `{label}` in {}", file.display());
            }
            secrets.save(&file)?;
            crate::write_stdout(&format!(
                "revoked `{label}`; a running relay drops it within 5 s\n"
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dates_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_800_000_000), "2027-01-15 08:00");
        assert_eq!(utc(951_825_600), "2000-02-29 12:00");
        assert_eq!(parse_duration("30d").ok(), Some(30 * 86_400));
        assert_eq!(parse_duration("2w").ok(), Some(14 * 86_400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
    }

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

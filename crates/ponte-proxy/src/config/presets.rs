//! The built-in layouts: WhatsApp's official proxy (several ports, or one
//! with SNI passthrough), a Ponte server's front door, and the stealth one.

use super::*;

/// The built-in layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// WhatsApp's official proxy layout.
    Whatsapp,
    /// The front door of a Ponte server.
    Ponte,
    /// A Ponte server's front door that looks like a website
    /// ([`Config::stealth_preset`]).
    Stealth,
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "whatsapp" => Ok(Preset::Whatsapp),
            "ponte" => Ok(Preset::Ponte),
            "stealth" => Ok(Preset::Stealth),
            _ => Err(format!("unknown preset `{s}` (whatsapp, ponte, stealth)")),
        }
    }
}

fn listener(
    name: &str,
    port: u16,
    tls: TlsMode,
    accept_proxy: bool,
    upstream: &str,
) -> ListenerConfig {
    ListenerConfig {
        name: sp(name.to_owned()),
        listen: sp(vec![
            ListenAddr(SocketAddr::from(([0, 0, 0, 0], port))),
            ListenAddr(SocketAddr::from(([0u16; 8], port))),
        ]),
        tls,
        accept_proxy,
        upstream: sp(upstream.to_owned()),
        max_connections: None,
        stealth: None,
        sni_passthrough: None,
    }
}

fn upstream(servers: &[HostPort], send_proxy: SendProxy) -> UpstreamConfig {
    UpstreamConfig {
        servers: sp(servers.to_vec()),
        send_proxy,
        health_check_interval: default_health_interval(),
        resolve_interval: default_resolve_interval(),
    }
}

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.to_owned(),
        port,
    }
}

impl Config {
    /// The configuration of a preset. `ponte` needs the server's address.
    pub fn preset(preset: Preset, ponte_upstream: Option<HostPort>) -> Result<Config, ConfigError> {
        let admin = Some(AdminConfig {
            listen: sp(ListenAddr(SocketAddr::from(([127, 0, 0, 1], 8199)))),
        });
        let mut cfg = Config {
            admin,
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            tuning: TuningConfig::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            acme: None,
            upstream: BTreeMap::new(),
            listener: Vec::new(),
        };
        match preset {
            Preset::Whatsapp => {
                let chat = hp("g.whatsapp.net", 5222);
                cfg.upstream.insert(
                    "web".into(),
                    upstream(&[hp("g.whatsapp.net", 80)], SendProxy::V1),
                );
                cfg.upstream
                    .insert("chat".into(), upstream(&[chat], SendProxy::V1));
                cfg.upstream.insert(
                    "media".into(),
                    upstream(&[hp("whatsapp.net", 443)], SendProxy::None),
                );
                cfg.listener = vec![
                    listener("http", 80, TlsMode::None, false, "web"),
                    listener("https", 443, TlsMode::SelfSigned, false, "chat"),
                    listener("chat", 5222, TlsMode::None, false, "chat"),
                    listener("http-lb", 8080, TlsMode::None, true, "web"),
                    listener("https-lb", 8443, TlsMode::SelfSigned, true, "chat"),
                    listener("chat-lb", 8222, TlsMode::None, true, "chat"),
                    listener("media", 587, TlsMode::None, false, "media"),
                    listener("media-alt", 7777, TlsMode::None, false, "media"),
                ];
            }
            Preset::Ponte => {
                let server = ponte_upstream.ok_or_else(|| ConfigError {
                    file: None,
                    line: 0,
                    column: 0,
                    key: "upstream".into(),
                    message: "the ponte preset needs the server address: --upstream HOST:PORT"
                        .into(),
                })?;
                cfg.upstream
                    .insert("server".into(), upstream(&[server], SendProxy::V1));
                cfg.listener = vec![
                    listener("tls", 443, TlsMode::SelfSigned, false, "server"),
                    listener("plain", 5222, TlsMode::None, false, "server"),
                    listener("http", 80, TlsMode::None, false, "server"),
                ];
            }
            Preset::Stealth => {
                return Err(ConfigError {
                    file: None,
                    line: 0,
                    column: 0,
                    key: "listener.stealth".into(),
                    message: "the stealth preset needs --upstream HOST:PORT, --cover HOST:PORT and --domain NAME".into(),
                })
            }
        }
        cfg.validate(None, None)?;
        Ok(cfg)
    }

    /// WhatsApp's layout on one port: chat over TLS on 443, and WhatsApp's
    /// media on the same port, told apart by the TLS server name (the
    /// media servers' names, under `whatsapp.net`, pass through untouched to
    /// `whatsapp.net:443`; everything else is chat, TLS terminated here).
    pub fn whatsapp_single_port() -> Result<Config, ConfigError> {
        let mut cfg = Config::preset(Preset::Whatsapp, None)?;
        cfg.upstream.remove("web");
        let mut https = listener("https", 443, TlsMode::SelfSigned, false, "chat");
        https.sni_passthrough = Some(SniPassthrough {
            names: vec!["whatsapp.net".into()],
            upstream: sp("media".into()),
        });
        cfg.listener = vec![https];
        cfg.validate(None, None)?;
        Ok(cfg)
    }

    /// The stealth preset: one stealth listener on port 443 in front of the
    /// Ponte server `upstream`, handing probes to `cover`, whose name is
    /// `domain`; secrets in `secrets` (`secrets.toml` in the working
    /// directory when absent).
    pub fn stealth_preset(
        upstream: HostPort,
        cover: impl Into<crate::stealth::CoverSite>,
        domain: &str,
        secrets: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::preset(Preset::Ponte, Some(upstream))?;
        let mut l = listener("stealth", 443, TlsMode::None, false, "server");
        l.stealth = Some(crate::stealth::StealthConfig {
            cover: cover.into(),
            domain: domain.to_owned(),
            secrets,
            site: None,
        });
        cfg.listener = vec![l];
        cfg.validate(None, None)?;
        Ok(cfg)
    }
}

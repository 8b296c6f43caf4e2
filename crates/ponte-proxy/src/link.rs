//! The share link for a relay configuration: which listener clients use and
//! the link that names it.
//!
//! The link formats, and the one check of the host users reach the relay
//! at, live in [`ponte_wire::link`]; this module only reads the layout:
//!
//! - a layout with WhatsApp's media listener (an upstream that takes no
//!   PROXY header, as in the preset `whatsapp`) gets the WhatsApp link, its
//!   chat port the first client-facing TLS listener whose upstream is not
//!   the media one (else the first plain one); in the single-port layout
//!   the media port is the chat listener's own, whose `sni_passthrough`
//!   sends WhatsApp's media servers' names to the media upstream;
//! - any other layout (preset `ponte`) gets a Ponte relay link to the first
//!   client-facing listener with TLS, else the first plain one.
//!
//! Client-facing means the listener does not expect a PROXY header itself
//! (`accept_proxy = false`): clients cannot send one.

use crate::config::{Config, ListenerConfig, SendProxy, TlsMode};
use ponte_wire::link::{self as wire, HostError, LinkError, RelayLink};

/// What users of a relay open to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareLink {
    /// The `https://wa.me/proxy?...` link of [`wire::whatsapp_link`].
    WhatsApp(String),
    /// A Ponte relay, written in the two forms of [`RelayLink`].
    Ponte(RelayLink),
}

/// Why no share link could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareLinkError {
    /// The host fails [`wire::validate_host`].
    #[error(transparent)]
    Host(#[from] HostError),
    /// Every listener expects a PROXY header (or has no address).
    #[error("this configuration has no listener a client can reach (all expect a PROXY header)")]
    NoClientListener,
    /// The listener's port cannot be put in a link (port 0).
    #[error("the client-facing listener has port {0}, which no link can name")]
    Port(u16),
}

impl ShareLink {
    /// The link that reaches the relay configured by `cfg` at `host` (its
    /// public host name or IP address).
    ///
    /// # Errors
    ///
    /// [`ShareLinkError`] for a bad host, a layout without a client-facing
    /// listener, or one on port 0.
    pub fn for_config(cfg: &Config, host: &str) -> Result<Self, ShareLinkError> {
        wire::validate_host(host)?;
        if let Some((chat, media, tls)) = whatsapp_ports(cfg) {
            return Ok(ShareLink::WhatsApp(wire::whatsapp_link(
                host, chat, media, tls,
            )));
        }
        let (port, tls) = ponte_port(cfg).ok_or(ShareLinkError::NoClientListener)?;
        match RelayLink::new(host, port, tls) {
            Ok(link) => Ok(ShareLink::Ponte(link)),
            Err(LinkError::BadHost(e)) => Err(ShareLinkError::Host(e)),
            Err(_) => Err(ShareLinkError::Port(port)),
        }
    }
}

fn port(l: &ListenerConfig) -> Option<u16> {
    l.listen.get_ref().first().map(|a| a.0.port())
}

/// The listener a WhatsApp client uses for chat (TLS preferred) and for
/// media, when the layout has a media listener.
fn whatsapp_ports(cfg: &Config) -> Option<(u16, u16, bool)> {
    let direct = || cfg.listener.iter().filter(|l| !l.accept_proxy);
    let media_upstream = |name: &str| {
        cfg.upstream
            .get(name)
            .is_some_and(|u| u.send_proxy == SendProxy::None)
    };
    let is_media = |l: &ListenerConfig| media_upstream(l.upstream.get_ref());
    let media = match direct().find(|l| is_media(l)) {
        Some(l) => port(l)?,
        None => direct()
            .find(|l| {
                l.sni_passthrough
                    .as_ref()
                    .is_some_and(|p| media_upstream(p.upstream.get_ref()))
            })
            .and_then(port)?,
    };
    let tls_chat = direct().find(|l| l.tls != TlsMode::None && !is_media(l));
    let (chat, tls) = match tls_chat {
        Some(l) => (port(l)?, true),
        None => (direct().find(|l| !is_media(l)).and_then(port)?, false),
    };
    Some((chat, media, tls))
}

/// The listener a Ponte client uses (TLS preferred).
fn ponte_port(cfg: &Config) -> Option<(u16, bool)> {
    let direct = || cfg.listener.iter().filter(|l| !l.accept_proxy);
    match direct().find(|l| l.tls != TlsMode::None) {
        Some(l) => Some((port(l)?, true)),
        None => Some((direct().next().and_then(port)?, false)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Preset;

    #[test]
    fn whatsapp_preset_ports() {
        let cfg = Config::preset(Preset::Whatsapp, None).unwrap();
        assert_eq!(whatsapp_ports(&cfg), Some((443, 587, true)));
        let cfg = Config::preset(Preset::Ponte, Some("s.example:5222".parse().unwrap())).unwrap();
        assert_eq!(whatsapp_ports(&cfg), None);
        assert_eq!(ponte_port(&cfg), Some((443, true)));
    }

    #[test]
    fn single_port_layout_gets_one_port_for_chat_and_media() {
        let cfg = Config::whatsapp_single_port().unwrap();
        assert_eq!(whatsapp_ports(&cfg), Some((443, 443, true)));
        assert_eq!(
            ShareLink::for_config(&cfg, "proxy.example.org"),
            Ok(ShareLink::WhatsApp(
                "https://wa.me/proxy?host=proxy.example.org&chatPort=443&mediaPort=443&chatTLS=true"
                    .into()
            ))
        );
    }

    #[test]
    fn each_preset_gets_its_link() {
        let cfg = Config::preset(Preset::Whatsapp, None).unwrap();
        assert_eq!(
            ShareLink::for_config(&cfg, "proxy.example.org"),
            Ok(ShareLink::WhatsApp(
                "https://wa.me/proxy?host=proxy.example.org&chatPort=443&mediaPort=587&chatTLS=true"
                    .into()
            ))
        );
        let cfg = Config::preset(Preset::Ponte, Some("s.example:5222".parse().unwrap())).unwrap();
        let Ok(ShareLink::Ponte(link)) = ShareLink::for_config(&cfg, "[2001:db8::1]") else {
            panic!("not a Ponte link");
        };
        assert_eq!(
            link.app_link(),
            "ponte://relay?host=2001%3Adb8%3A%3A1&port=443&tls=1"
        );
        assert_eq!(
            ShareLink::for_config(&cfg, "relay.example.org:443"),
            Err(ShareLinkError::Host(HostError::BadHostCharacter {
                ch: ':',
                at: 17
            }))
        );
        let mut behind = cfg.clone();
        for l in &mut behind.listener {
            l.accept_proxy = true;
        }
        assert_eq!(
            ShareLink::for_config(&behind, "relay.example.org"),
            Err(ShareLinkError::NoClientListener)
        );
    }
}

//! Share links: the text users open, paste or scan to use a relay.
//!
//! For Ponte clients, one relay ([`RelayLink`]) with its port and whether it
//! speaks TLS, in two forms that carry the same parameters:
//!
//! ```text
//! ponte://relay?host=HOST&port=443&tls=1
//! https://SITE/PATH/relay#host=HOST&port=443&tls=1
//! ```
//!
//! The `https://` form is the one a messenger renders as a link; its relay
//! details sit after `#`, which browsers never send to the web server, so the
//! page behind the base (the operator's choice, see [`WEB_LINK_BASE`]) cannot
//! learn or log which relay was shared.
//! When reading, any `https://` host is accepted as long as the path ends in
//! `/relay` and the parameters follow `#`; `ponte://relay` also takes them
//! after `#`. Neither form carries the server's key: the user's server
//! address (`ponte://HOST:PORT#KEY`, [`crate::address`]) already holds it,
//! and a relay is untrusted.
//!
//! For WhatsApp ([`whatsapp_link`]):
//!
//! ```text
//! https://wa.me/proxy?host=HOST&chatPort=443&mediaPort=587&chatTLS=true
//! ```
//!
//! # Parameters
//!
//! `host` (required), `port` (required, `1..=65535`), `tls` (`1`/`true` or
//! `0`/`false`; `1` when absent), written in that order. A stealth relay's
//! link adds `secret` (the link's 22-character secret,
//! [`crate::stealth::Secret`]) and `sni` (the cover site's DNS name, which
//! the client sends as its TLS server name), both or neither:
//!
//! ```text
//! ponte://relay?host=HOST&port=443&tls=1&secret=SECRET&sni=NAME
//! https://NAME/relay#host=HOST&port=443&tls=1&secret=SECRET&sni=NAME
//! ```
//!
//! The `https://` form's base is the caller's choice
//! ([`RelayLink::web_link_with_base`]); everything stays in the fragment. Readers ignore
//! parameters they do not know, so later fields (a per-link secret, a TLS
//! server name for stealth relays) are appended as new optional parameters
//! and old readers still take the relay from a new link; a link without them
//! means what it always meant. Empty pairs (`&&`) are skipped and a repeated
//! key keeps its last value.
//!
//! # Hosts
//!
//! [`validate_host`] is the one rule for a relay's host, when building and
//! when reading: a DNS name (ASCII letters and digits, `-`, `.`, `_`;
//! internationalised names as typed, in letters and digits of any script),
//! an IPv4 address, or an IPv6 address plain or in brackets, at most
//! [`MAX_HOST_LEN`] bytes.
//!
//! The host goes into a query value, so it is percent-encoded: every byte
//! but the URL's unreserved characters (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`.
//! A host name or IPv4 address passes unchanged; an IPv6 address is written
//! in its canonical text form without brackets and with its colons encoded
//! (`2001%3Adb8%3A%3A1`), which any URL parser decodes back to the plain
//! address. The builders do not validate (call [`validate_host`] on operator
//! input first), but whatever they are given stays inside the `host` value.
//!
//! Reading caps the text at [`MAX_LINK_LEN`] bytes before any work, decodes
//! `%XX` (exactly two hex digits, UTF-8 result) and never panics.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest host accepted (the DNS limit for a name in text form).
pub const MAX_HOST_LEN: usize = 253;

/// Longest share link read; longer text is refused before it is looked at.
/// A link to any valid host fits: a host of [`MAX_HOST_LEN`] bytes that are
/// all percent-encoded takes 759 characters, the rest of the web form 47.
/// A stealth link's `sni` adds at most 258 (an ASCII name) and its `secret`
/// 30, and a base of up to 256 bytes may replace the default one.
pub const MAX_LINK_LEN: usize = 1600;

/// The start of the app form of a Ponte relay link.
pub const APP_LINK_BASE: &str = "ponte://relay";

/// The base [`RelayLink::web_link`] writes, as an example only: the project
/// runs no web site, so the tools never print it; they take the base from
/// the operator ([`RelayLink::web_link_with_base`]: `ponte proxy link
/// --web-base`, or a stealth relay's own cover site).
pub const WEB_LINK_BASE: &str = "https://ponte.link/relay";

/// Longest base accepted for a link's `https://` form.
pub const MAX_WEB_BASE_LEN: usize = 256;

/// Why a host cannot be a relay's host ([`validate_host`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host is empty.
    #[error("proxy host is empty: give the relay's public host name or IP address")]
    EmptyHost,
    /// The host is longer than [`MAX_HOST_LEN`] bytes.
    #[error("proxy host is {len} bytes long, at most {MAX_HOST_LEN} are allowed")]
    HostTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The host contains a character no host name or IP address has.
    #[error(
        "proxy host contains {ch:?} at byte {at}: give only a host name or an IP \
         address, without scheme, port, path or spaces"
    )]
    BadHostCharacter {
        /// The offending character.
        ch: char,
        /// Its byte offset in the host.
        at: usize,
    },
}

/// Why a text is not a Ponte relay link ([`RelayLink::parse`]). The texts
/// are short reasons, meant to follow the link a program quotes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Longer than [`MAX_LINK_LEN`].
    #[error("too long")]
    TooLong,
    /// Starts with neither `ponte://relay` nor `https://`.
    #[error("not a share link")]
    NotALink,
    /// `ponte://relay` without `?` or `#` parameters.
    #[error("the link has no parameters")]
    NoParameters,
    /// An `https://` link without a `#` part.
    #[error("the link has no #host=… part")]
    NoFragment,
    /// An `https://` link whose path does not end in `/relay`.
    #[error("not a Ponte relay link")]
    NotRelay,
    /// A malformed `%XX` escape, or one that decodes to invalid UTF-8.
    #[error("bad %-escape")]
    BadEscape,
    /// No `host` parameter.
    #[error("the link has no host")]
    NoHost,
    /// The host fails [`validate_host`].
    #[error("bad host")]
    BadHost(HostError),
    /// No `port` parameter.
    #[error("the link has no port")]
    NoPort,
    /// The port is not a number in `1..=65535`.
    #[error("bad port")]
    BadPort,
    /// `tls` is neither `1`/`true` nor `0`/`false`.
    #[error("tls must be 1 or 0")]
    BadTls,
    /// `secret` without `sni` or the other way round, a secret that is not
    /// 22 characters of base64url, or an `sni` that is not an ASCII DNS name.
    #[error("bad stealth relay parameters (secret and sni)")]
    BadStealth,
}

/// What a client needs to pass a stealth relay: the link's secret and the
/// cover site's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StealthParams {
    /// The link's secret.
    pub secret: crate::stealth::Secret,
    /// The cover site's DNS name (ASCII), sent as the TLS server name.
    pub sni: String,
}

/// An ASCII DNS name (not an IP address) a TLS server name may be.
pub fn valid_sni(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks that `host` is a DNS name, an IPv4 address or an IPv6 address
/// (with or without brackets): see the module docs.
///
/// # Errors
///
/// [`HostError::EmptyHost`], [`HostError::HostTooLong`] or
/// [`HostError::BadHostCharacter`] (the first character that does not fit).
pub fn validate_host(host: &str) -> Result<(), HostError> {
    if host.is_empty() {
        return Err(HostError::EmptyHost);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(HostError::HostTooLong { len: host.len() });
    }
    if ipv6_literal(host).is_some() {
        return Ok(());
    }
    match host.char_indices().find(|&(_, ch)| !host_char(ch)) {
        Some((at, ch)) => Err(HostError::BadHostCharacter { ch, at }),
        None => Ok(()),
    }
}

/// A character of a host name (IPv4 addresses are made of them too).
fn host_char(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_')
    } else {
        ch.is_alphanumeric()
    }
}

/// The IPv6 address in `host`, written plain or in brackets.
fn ipv6_literal(host: &str) -> Option<Ipv6Addr> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    inner.parse().ok()
}

/// Appends `host` as a query value: an IPv6 address canonical and without
/// brackets, then every byte outside RFC 3986's unreserved set as `%XX`.
fn push_host(host: &str, out: &mut String) {
    match ipv6_literal(host) {
        Some(ip) => percent_encode_into(&ip.to_string(), out),
        None => percent_encode_into(host, out),
    }
}

/// Appends `text` with every byte outside RFC 3986's unreserved set written
/// as `%XX`.
fn percent_encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex_digit(*bytes.get(i + 1)?)?;
            let lo = hex_digit(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `host=…&port=…&tls=1|0`, the parameters of both Ponte link forms.
fn relay_params(host: &str, port: u16, tls: bool) -> String {
    let mut out = String::with_capacity(32 + 3 * host.len());
    out.push_str("host=");
    push_host(host, &mut out);
    out.push_str("&port=");
    out.push_str(&port.to_string());
    out.push_str(if tls { "&tls=1" } else { "&tls=0" });
    out
}

/// The `ponte://relay?host=…&port=…&tls=1|0` link for a Ponte relay. The
/// host is not validated here (see the module docs).
#[must_use]
pub fn ponte_relay_link(host: &str, port: u16, tls: bool) -> String {
    format!("{APP_LINK_BASE}?{}", relay_params(host, port, tls))
}

/// The `https://ponte.link/relay#host=…&port=…&tls=1|0` form of
/// [`ponte_relay_link`], for messengers that only make `https` clickable.
#[must_use]
pub fn ponte_relay_web_link(host: &str, port: u16, tls: bool) -> String {
    format!("{WEB_LINK_BASE}#{}", relay_params(host, port, tls))
}

/// The `https://wa.me/proxy?...` link that configures WhatsApp to use the
/// relay at `host`. The host is encoded as for [`ponte_relay_link`] and not
/// validated here.
#[must_use]
pub fn whatsapp_link(host: &str, chat_port: u16, media_port: u16, chat_tls: bool) -> String {
    let mut link = String::with_capacity(96 + 3 * host.len());
    link.push_str("https://wa.me/proxy?host=");
    push_host(host, &mut link);
    link.push_str("&chatPort=");
    link.push_str(&chat_port.to_string());
    link.push_str("&mediaPort=");
    link.push_str(&media_port.to_string());
    link.push_str(if chat_tls {
        "&chatTLS=true"
    } else {
        "&chatTLS=false"
    });
    link
}

/// One Ponte relay as a share link carries it.
///
/// Made by [`RelayLink::new`] or [`RelayLink::parse`], so its host always
/// passes [`validate_host`], is stored without brackets (an IPv6 address in
/// canonical form) and its port is not 0. `Display` writes the app form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct RelayLink {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
    /// Whether the relay's listener speaks TLS.
    pub tls: bool,
    /// A stealth relay's secret and cover name.
    pub stealth: Option<StealthParams>,
}

impl RelayLink {
    /// A link to the relay at `host:port`.
    ///
    /// # Errors
    ///
    /// [`LinkError::BadHost`] or [`LinkError::BadPort`] (port 0).
    pub fn new(host: &str, port: u16, tls: bool) -> Result<Self, LinkError> {
        validate_host(host).map_err(LinkError::BadHost)?;
        if port == 0 {
            return Err(LinkError::BadPort);
        }
        let host = match ipv6_literal(host) {
            Some(ip) => ip.to_string(),
            None => host.to_owned(),
        };
        Ok(Self {
            host,
            port,
            tls,
            stealth: None,
        })
    }

    /// The same relay as a stealth relay (`tls` set): clients send `sni`
    /// and prove `secret`.
    ///
    /// # Errors
    ///
    /// [`LinkError::BadStealth`] when `sni` is not an ASCII DNS name.
    pub fn with_stealth(
        mut self,
        secret: crate::stealth::Secret,
        sni: &str,
    ) -> Result<Self, LinkError> {
        if !valid_sni(sni) {
            return Err(LinkError::BadStealth);
        }
        self.tls = true;
        self.stealth = Some(StealthParams {
            secret,
            sni: sni.to_ascii_lowercase(),
        });
        Ok(self)
    }

    fn stealth_params(&self) -> String {
        match &self.stealth {
            None => String::new(),
            Some(s) => format!("&secret={}&sni={}", s.secret.to_text(), s.sni),
        }
    }

    /// The `ponte://relay?…` form.
    #[must_use]
    pub fn app_link(&self) -> String {
        ponte_relay_link(&self.host, self.port, self.tls) + &self.stealth_params()
    }

    /// The `https://ponte.link/relay#…` form.
    #[must_use]
    pub fn web_link(&self) -> String {
        ponte_relay_web_link(&self.host, self.port, self.tls) + &self.stealth_params()
    }

    /// The `https://` form under another base (`https://HOST/…/relay`); the
    /// parameters stay in the fragment, which no web server receives.
    #[must_use]
    pub fn web_link_with_base(&self, base: &str) -> String {
        format!(
            "{}#{}{}",
            base.trim_end_matches('/'),
            relay_params(&self.host, self.port, self.tls),
            self.stealth_params()
        )
    }

    /// Reads either form (see the module docs). Surrounding whitespace is
    /// not trimmed here.
    ///
    /// # Errors
    ///
    /// [`LinkError::NotALink`] when `text` starts with neither
    /// `ponte://relay` (followed by `/`, `?`, `#` or nothing) nor
    /// `https://`; another [`LinkError`] when it does but is malformed.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        if text.len() > MAX_LINK_LEN {
            return Err(LinkError::TooLong);
        }
        if let Some(rest) = text.strip_prefix(APP_LINK_BASE) {
            if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
                return Err(LinkError::NotALink);
            }
            let rest = rest.trim_start_matches('/');
            let params = rest
                .strip_prefix('?')
                .or_else(|| rest.strip_prefix('#'))
                .ok_or(LinkError::NoParameters)?;
            return Self::from_params(params);
        }
        if let Some(rest) = text.strip_prefix("https://") {
            let (path, params) = rest.split_once('#').ok_or(LinkError::NoFragment)?;
            if !path.trim_end_matches('/').ends_with("/relay") {
                return Err(LinkError::NotRelay);
            }
            return Self::from_params(params);
        }
        Err(LinkError::NotALink)
    }

    /// `host=…&port=…&tls=…`, unknown keys skipped.
    fn from_params(params: &str) -> Result<Self, LinkError> {
        let (mut host, mut port, mut tls) = (None, None, None);
        let (mut secret, mut sni) = (None, None);
        for pair in params.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "host" => &mut host,
                "port" => &mut port,
                "tls" => &mut tls,
                "secret" => &mut secret,
                "sni" => &mut sni,
                _ => continue,
            };
            *slot = Some(percent_decode(value).ok_or(LinkError::BadEscape)?);
        }
        let host = host.ok_or(LinkError::NoHost)?;
        validate_host(&host).map_err(LinkError::BadHost)?;
        let port = port
            .ok_or(LinkError::NoPort)?
            .parse::<u16>()
            .map_err(|_| LinkError::BadPort)?;
        let tls = match tls.as_deref() {
            None | Some("1" | "true") => true,
            Some("0" | "false") => false,
            Some(_) => return Err(LinkError::BadTls),
        };
        let link = Self::new(&host, port, tls)?;
        match (secret, sni) {
            (None, None) => Ok(link),
            (Some(secret), Some(sni)) => {
                let secret = crate::stealth::Secret::from_text(&secret)
                    .map_err(|_| LinkError::BadStealth)?;
                link.with_stealth(secret, &sni)
            }
            _ => Err(LinkError::BadStealth),
        }
    }
}

impl fmt::Display for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.app_link())
    }
}

impl std::str::FromStr for RelayLink {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests;

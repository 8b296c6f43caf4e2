//! The share links users open to use this relay, and a QR code of them
//! drawn with Unicode characters for the terminal.
//!
//! For WhatsApp (preset `whatsapp`):
//!
//! ```text
//! https://wa.me/proxy?host=HOST&chatPort=443&mediaPort=587&chatTLS=true
//! ```
//!
//! For Ponte clients (preset `ponte`; [`ponte_relay_link`] and
//! [`ponte_relay_web_link`]), one relay with its port and whether it speaks
//! TLS — the `ponte` client's `ponte via add LINK` and `--via LINK` read both:
//!
//! ```text
//! ponte://relay?host=HOST&port=443&tls=1
//! https://ponte.link/relay#host=HOST&port=443&tls=1
//! ```
//!
//! The `https://` form is the one a messenger renders as a link; its relay
//! details sit after `#`, which browsers never send to the web server, so the
//! page behind [`PONTE_WEB_LINK_BASE`] cannot learn or log which relay was
//! shared. Neither form carries the server's key: the user's server address
//! (`ponte://HOST:PORT#KEY`) already holds it, and a relay is untrusted.
//!
//! The host goes into a query value, so it is percent-encoded: everything
//! but the URL's unreserved characters (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`.
//! A host name or IPv4 address passes unchanged; an IPv6 address is written
//! without brackets and with its colons encoded (`2001%3Adb8%3A%3A1`), which
//! any URL parser decodes back to the plain address the app expects. Call
//! [`validate_host`] on operator input first: it refuses what is plainly not a
//! host (empty, spaces or control characters, a scheme, a port or a path).
//!
//! The QR code uses half blocks (`▀`, `▄`, `█`), two module rows per text
//! line, with the standard 4-module quiet zone. [`qr_terminal`] draws the
//! *light* modules (and the quiet zone) with the terminal's foreground colour
//! and leaves dark modules as spaces, so the code has the right polarity on
//! the usual light-on-dark terminal; [`QrTheme::LightTerminal`] does the
//! reverse for dark-on-light terminals. No colour escapes are written, so the
//! output also survives logs and copy-paste.

use std::net::Ipv6Addr;

use qrcode::types::{Color, QrError};
use qrcode::QrCode;

/// Longest host name accepted (the DNS limit for a name in text form).
pub const MAX_HOST_LEN: usize = 253;

/// Modules of light margin around the QR code (the standard's minimum).
pub const QUIET_ZONE: usize = 4;

/// Longest text [`qr_terminal`] tries to encode; longer input is refused
/// without work (a QR code holds at most 2953 bytes, fewer at the error
/// correction level used).
pub const MAX_QR_TEXT: usize = 2953;

/// Why a share link or QR code could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
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
    /// The text does not fit in a QR code.
    #[error("cannot draw a QR code: {0}")]
    Qr(#[from] QrError),
}

/// Checks that `host` looks like a host name, an IPv4 address or an IPv6
/// address (with or without brackets) for [`whatsapp_link`].
///
/// Internationalised names are allowed as typed (they are UTF-8 encoded and
/// percent-encoded in the link).
///
/// # Errors
///
/// [`LinkError::EmptyHost`], [`LinkError::HostTooLong`] or
/// [`LinkError::BadHostCharacter`].
pub fn validate_host(host: &str) -> Result<(), LinkError> {
    if host.is_empty() {
        return Err(LinkError::EmptyHost);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(LinkError::HostTooLong { len: host.len() });
    }
    if ipv6_literal(host).is_some() {
        return Ok(());
    }
    match host
        .char_indices()
        .find(|&(_, ch)| ch.is_whitespace() || ch.is_control() || BAD_HOST_CHARS.contains(ch))
    {
        Some((at, ch)) => Err(LinkError::BadHostCharacter { ch, at }),
        None => Ok(()),
    }
}

/// Characters that cannot be part of a host (outside an IPv6 literal): URL
/// delimiters, a port separator, quoting.
const BAD_HOST_CHARS: &str = "/?#@:[]%&=+\\\"'<>^`{}|,;";

/// The IPv6 address in `host`, written plain or in brackets.
fn ipv6_literal(host: &str) -> Option<Ipv6Addr> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    inner.parse().ok()
}

/// The `https://wa.me/proxy?...` link that configures WhatsApp to use the
/// relay at `host` (see the module docs for how the host is encoded).
///
/// The host is not validated here: call [`validate_host`] on operator input.
#[must_use]
pub fn whatsapp_link(host: &str, chat_port: u16, media_port: u16, chat_tls: bool) -> String {
    let mut link = String::with_capacity(96 + 3 * host.len());
    link.push_str("https://wa.me/proxy?host=");
    match ipv6_literal(host) {
        Some(ip) => percent_encode_into(&ip.to_string(), &mut link),
        None => percent_encode_into(host, &mut link),
    }
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

/// Where the `https://` form of a Ponte relay link points (a page that
/// explains how to install Ponte and add the relay).
pub const PONTE_WEB_LINK_BASE: &str = "https://ponte.link/relay";

fn ponte_relay_params(host: &str, port: u16, tls: bool) -> String {
    let mut out = String::with_capacity(32 + 3 * host.len());
    out.push_str("host=");
    match ipv6_literal(host) {
        Some(ip) => percent_encode_into(&ip.to_string(), &mut out),
        None => percent_encode_into(host, &mut out),
    }
    out.push_str("&port=");
    out.push_str(&port.to_string());
    out.push_str(if tls { "&tls=1" } else { "&tls=0" });
    out
}

/// The `ponte://relay?host=…&port=…&tls=1|0` link for a Ponte relay (see
/// the module docs). The host is percent-encoded as for [`whatsapp_link`];
/// call [`validate_host`] on operator input first.
#[must_use]
pub fn ponte_relay_link(host: &str, port: u16, tls: bool) -> String {
    format!("ponte://relay?{}", ponte_relay_params(host, port, tls))
}

/// The `https://ponte.link/relay#host=…&port=…&tls=1|0` form of
/// [`ponte_relay_link`], for messengers that only make `https` clickable.
#[must_use]
pub fn ponte_relay_web_link(host: &str, port: u16, tls: bool) -> String {
    format!(
        "{PONTE_WEB_LINK_BASE}#{}",
        ponte_relay_params(host, port, tls)
    )
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

/// Which modules the terminal's foreground colour draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QrTheme {
    /// Light text on a dark background (the usual console): light modules
    /// are drawn as blocks, dark modules are left blank.
    #[default]
    DarkTerminal,
    /// Dark text on a light background: dark modules are drawn as blocks.
    LightTerminal,
}

/// Draws `text` as a QR code for a light-on-dark terminal
/// ([`QrTheme::DarkTerminal`]); see [`qr_terminal_themed`].
///
/// # Errors
///
/// [`LinkError::Qr`] if the text does not fit in a QR code.
pub fn qr_terminal(text: &str) -> Result<String, LinkError> {
    qr_terminal_themed(text, QrTheme::DarkTerminal)
}

/// Draws `text` as a QR code (error correction level M) with Unicode half
/// blocks: each line of the result holds two rows of modules, each character
/// one column; a [`QUIET_ZONE`]-module light margin surrounds the code. Every
/// line ends with `\n`.
///
/// # Errors
///
/// [`LinkError::Qr`] if the text does not fit in a QR code.
pub fn qr_terminal_themed(text: &str, theme: QrTheme) -> Result<String, LinkError> {
    if text.len() > MAX_QR_TEXT {
        return Err(LinkError::Qr(QrError::DataTooLong));
    }
    let code = QrCode::new(text.as_bytes())?;
    let width = code.width();
    let colors = code.to_colors();
    let side = width + 2 * QUIET_ZONE;
    let drawn_color = match theme {
        QrTheme::DarkTerminal => Color::Light,
        QrTheme::LightTerminal => Color::Dark,
    };
    // Whether the module at (x, y) of the padded square is drawn; rows past
    // the square (the lower half of the last line when `side` is odd) are
    // left to the terminal's background.
    let drawn = |x: usize, y: usize| -> bool {
        if y >= side {
            return false;
        }
        let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&x)
            && (QUIET_ZONE..QUIET_ZONE + width).contains(&y);
        let color = if inside {
            colors
                .get((y - QUIET_ZONE) * width + (x - QUIET_ZONE))
                .copied()
                .unwrap_or(Color::Light)
        } else {
            Color::Light
        };
        color == drawn_color
    };
    let lines = side.div_ceil(2);
    let mut out = String::with_capacity(lines * (side * 3 + 1));
    for line in 0..lines {
        let (top, bottom) = (2 * line, 2 * line + 1);
        for x in 0..side {
            out.push(match (drawn(x, top), drawn(x, bottom)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ponte_relay_links_are_exactly_the_documented_ones() {
        assert_eq!(
            ponte_relay_link("relay.example.org", 443, true),
            "ponte://relay?host=relay.example.org&port=443&tls=1"
        );
        assert_eq!(
            ponte_relay_web_link("relay.example.org", 443, true),
            "https://ponte.link/relay#host=relay.example.org&port=443&tls=1"
        );
        assert_eq!(
            ponte_relay_link("[2001:db8::1]", 5222, false),
            "ponte://relay?host=2001%3Adb8%3A%3A1&port=5222&tls=0"
        );
        // Unvalidated input cannot add parameters.
        assert_eq!(
            ponte_relay_link("a&port=1", 2, true),
            "ponte://relay?host=a%26port%3D1&port=2&tls=1"
        );
    }

    #[test]
    fn default_link_is_exactly_the_documented_one() {
        assert_eq!(
            whatsapp_link("proxy.example.org", 443, 587, true),
            "https://wa.me/proxy?host=proxy.example.org&chatPort=443&mediaPort=587&chatTLS=true"
        );
        assert_eq!(
            whatsapp_link("203.0.113.9", 5222, 7777, false),
            "https://wa.me/proxy?host=203.0.113.9&chatPort=5222&mediaPort=7777&chatTLS=false"
        );
    }

    #[test]
    fn host_is_percent_encoded() {
        let link = whatsapp_link("[2001:db8::1]", 443, 587, true);
        assert_eq!(
            link,
            "https://wa.me/proxy?host=2001%3Adb8%3A%3A1&chatPort=443&mediaPort=587&chatTLS=true"
        );
        // The same without brackets, and in a non-canonical spelling.
        assert_eq!(whatsapp_link("2001:DB8:0::1", 443, 587, true), link);
        // Unvalidated input cannot break out of the query value.
        let link = whatsapp_link("a&b=c #d/é", 1, 2, true);
        assert_eq!(
            link,
            "https://wa.me/proxy?host=a%26b%3Dc%20%23d%2F%C3%A9&chatPort=1&mediaPort=2&chatTLS=true"
        );
        assert!(link.is_ascii());
        assert_eq!(link.matches('&').count(), 3);
    }

    #[test]
    fn host_validation() {
        for good in [
            "proxy.example.org",
            "proxy.example.org.",
            "203.0.113.9",
            "2001:db8::1",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
            "bücher.example",
            "localhost",
        ] {
            assert_eq!(validate_host(good), Ok(()), "{good}");
        }
        assert_eq!(validate_host(""), Err(LinkError::EmptyHost));
        let long = "a".repeat(MAX_HOST_LEN + 1);
        assert_eq!(
            validate_host(&long),
            Err(LinkError::HostTooLong { len: 254 })
        );
        assert_eq!(validate_host(&long[1..]), Ok(()));
        for (bad, ch, at) in [
            ("proxy example.org", ' ', 5),
            ("proxy.example.org\n", '\n', 17),
            ("a\u{7}b", '\u{7}', 1),
            ("https://proxy.example.org", ':', 5),
            ("proxy.example.org:443", ':', 17),
            ("proxy.example.org/", '/', 17),
            ("[proxy.example.org]", '[', 0),
            ("[2001:db8::1", '[', 0),
            ("user@host", '@', 4),
            ("a\u{a0}b", '\u{a0}', 1),
        ] {
            assert_eq!(
                validate_host(bad),
                Err(LinkError::BadHostCharacter { ch, at }),
                "{bad:?}"
            );
        }
        // The message tells the operator what to do.
        let msg = validate_host("host:443").unwrap_err().to_string();
        assert!(msg.contains("without scheme, port"), "{msg}");
    }

    /// Reads a rendering back into a matrix of drawn/not drawn modules.
    fn read_back(rendered: &str, side: usize) -> Vec<Vec<bool>> {
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), side.div_ceil(2));
        assert!(rendered.ends_with('\n'));
        let mut rows = vec![vec![false; side]; 2 * lines.len()];
        for (i, line) in lines.iter().enumerate() {
            let chars: Vec<char> = line.chars().collect();
            assert_eq!(chars.len(), side, "line {i}");
            for (x, ch) in chars.into_iter().enumerate() {
                let (top, bottom) = match ch {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                rows[2 * i][x] = top;
                rows[2 * i + 1][x] = bottom;
            }
        }
        rows
    }

    fn check_against_qrcode(text: &str, theme: QrTheme) {
        let rendered = qr_terminal_themed(text, theme).unwrap();
        let code = QrCode::new(text.as_bytes()).unwrap();
        let width = code.width();
        let colors = code.to_colors();
        let side = width + 2 * QUIET_ZONE;
        let rows = read_back(&rendered, side);
        let drawn_color = match theme {
            QrTheme::DarkTerminal => Color::Light,
            QrTheme::LightTerminal => Color::Dark,
        };
        for (y, row) in rows.iter().enumerate() {
            for (x, &drawn) in row.iter().enumerate() {
                let expected = if y >= side {
                    false // past the square: terminal background
                } else if x < QUIET_ZONE
                    || y < QUIET_ZONE
                    || x >= QUIET_ZONE + width
                    || y >= QUIET_ZONE + width
                {
                    drawn_color == Color::Light // the quiet zone is light
                } else {
                    colors[(y - QUIET_ZONE) * width + (x - QUIET_ZONE)] == drawn_color
                };
                assert_eq!(drawn, expected, "module ({x}, {y}) of {text:?}");
            }
        }
    }

    #[test]
    fn qr_matches_qrcode_modules_both_themes() {
        let link = whatsapp_link("proxy.example.org", 443, 587, true);
        for text in [link.as_str(), "x", &"ponte ".repeat(100)] {
            check_against_qrcode(text, QrTheme::DarkTerminal);
            check_against_qrcode(text, QrTheme::LightTerminal);
        }
    }

    #[test]
    fn qr_dimensions_and_polarity() {
        let link = whatsapp_link("proxy.example.org", 443, 587, true);
        let dark = qr_terminal(&link).unwrap();
        let width = QrCode::new(link.as_bytes()).unwrap().width();
        let side = width + 2 * QUIET_ZONE;
        assert_eq!(dark.lines().count(), side.div_ceil(2));
        assert!(dark.lines().all(|l| l.chars().count() == side));
        // Dark terminal: the quiet zone is drawn, so the first line is all
        // full blocks; light terminal: it is blank.
        let first = dark.lines().next().unwrap();
        assert!(first.chars().all(|c| c == '█'));
        let light = qr_terminal_themed(&link, QrTheme::LightTerminal).unwrap();
        assert!(light.lines().next().unwrap().chars().all(|c| c == ' '));
        assert_ne!(dark, light);
    }

    #[test]
    fn qr_refuses_text_that_does_not_fit() {
        let huge = "a".repeat(MAX_QR_TEXT + 1);
        assert_eq!(qr_terminal(&huge), Err(LinkError::Qr(QrError::DataTooLong)));
        // Under the byte cap but over level M's capacity: qrcode refuses.
        let big = "\u{7f}".repeat(2400);
        assert_eq!(qr_terminal(&big), Err(LinkError::Qr(QrError::DataTooLong)));
    }
}

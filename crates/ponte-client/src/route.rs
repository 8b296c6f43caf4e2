//! Routes: how the client's bytes reach a Ponte server.
//!
//! A [`Route`] opens a byte stream ([`RouteStream`]: `AsyncRead + AsyncWrite`)
//! towards the server; the Noise channel runs inside it and authenticates the
//! server end to end, so a route needs no trust. Two kinds exist:
//!
//! - [`DirectRoute`]: plain TCP to the server's own address;
//! - [`RelayRoute`]: through a `ponte proxy` relay, given as a [`RelayUrl`]:
//!   `tcp://HOST:PORT` (plain TCP) or `tls://HOST:PORT` (TLS to the relay,
//!   *any* certificate accepted: the TLS layer only makes the connection look
//!   like ordinary HTTPS; the Noise layer inside authenticates the server).
//!
//! A relay can also be given as a share link, which [`RelayUrl`] parses too
//! (through [`ponte_wire::link::RelayLink`], where the format and the one
//! host check live). A link with `secret` and `sni` is a stealth relay: the
//! route opens with [`crate::stealth::open`] (a browser-shaped TLS opening
//! that proves the secret; a relay that fails to prove it back is a
//! security error) and runs Noise inside TLS records.
//!
//! ```text
//! ponte://relay?host=HOST&port=PORT&tls=1[&secret=SECRET&sni=NAME]
//! https://ponte.link/relay#host=HOST&port=PORT&tls=1   (any https host; the
//!                                                       part after # never
//!                                                       reaches a web server)
//! ```
//!
//! [`race`] tries routes in order with a short head start each (happy
//! eyeballs): the first route starts at once; every [`HEAD_START`] without a
//! winner, or as soon as a running attempt fails, the next one starts. The
//! first attempt that succeeds wins and the others are dropped. An attempt
//! that fails with a *security* error (the server key is wrong, the bytes
//! were altered) ends the whole race at once: the client fails closed and
//! never falls back silently past an attacker.

use crate::{ClientError, Result};
use futures::stream::{FuturesUnordered, StreamExt as _};
use ponte_wire::link::{self, LinkError, RelayLink, StealthParams};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to the server.
pub trait RouteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RouteStream for T {}

/// A boxed stream, as routes return it.
pub type BoxStream = Box<dyn RouteStream>;

/// A boxed future, as routes return it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a route runs alone before the next one starts too.
pub const HEAD_START: Duration = Duration::from_millis(300);

/// Longest relay URL or share link accepted (checked before parsing).
pub const MAX_RELAY_URL_LEN: usize = link::MAX_LINK_LEN;

/// One way to reach the server.
pub trait Route: std::fmt::Debug + Send + Sync {
    /// Open a stream; the caller applies the overall timeout.
    fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxStream>>;
    /// A short description for messages (no secrets; host and port only).
    /// It also names the route in the profile ("what worked last").
    fn describe(&self) -> String;
    /// Whether this is the direct route (no relay).
    fn is_direct(&self) -> bool {
        false
    }
}

async fn tcp(target: &str) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Plain TCP straight to the server.
#[derive(Debug, Clone)]
pub struct DirectRoute {
    /// `host:port` (IPv6 bracketed).
    pub target: String,
}

impl Route for DirectRoute {
    fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxStream>> {
        Box::pin(async move { Ok(Box::new(tcp(&self.target).await?) as BoxStream) })
    }

    fn describe(&self) -> String {
        format!("direct tcp {}", self.target)
    }

    fn is_direct(&self) -> bool {
        true
    }
}

/// A relay's address: `tcp://HOST:PORT` or `tls://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayUrl {
    /// TLS to the relay (any certificate accepted).
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// A stealth relay's secret and cover name (from a share link).
    pub stealth: Option<StealthParams>,
}

impl RelayUrl {
    /// `host:port`, with IPv6 addresses bracketed.
    pub fn host_port(&self) -> String {
        ponte_wire::address::join_host_port(&self.host, self.port)
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.stealth {
            // Only a share link carries the secret: write one.
            let link = RelayLink::new(&self.host, self.port, true)
                .and_then(|l| l.with_stealth(s.secret.clone(), &s.sni))
                .map_err(|_| fmt::Error)?;
            return f.write_str(&link.app_link());
        }
        let scheme = if self.tls { "tls" } else { "tcp" };
        write!(f, "{scheme}://{}", self.host_port())
    }
}

fn bad(text: &str, why: &str) -> ClientError {
    let shown: String = text.chars().take(80).collect();
    ClientError::Invalid(format!(
        "relay {shown:?}: {why} (expected tls://HOST:PORT, tcp://HOST:PORT, or a share link \
         ponte://relay?host=…&port=…&tls=1)"
    ))
}

fn parse_host_port(text: &str, hp: &str) -> Result<(String, u16)> {
    if let Some((hp, _)) = hp.split_once(['/', '?', '#']) {
        let url = text.split_once("://").map_or("", |(scheme, _)| scheme);
        return Err(bad(
            text,
            &format!("a relay URL has no path or query (give {url}://{hp})"),
        ));
    }
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| bad(text, "IPv6 address needs [ADDR]:PORT"))?;
        (h, p)
    } else {
        hp.rsplit_once(':')
            .ok_or_else(|| bad(text, "the port is missing"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(text, "bad port"))?;
    // Brackets belong to the URL, not to the host inside them.
    if host.starts_with('[') || link::validate_host(host).is_err() {
        return Err(bad(text, "bad host"));
    }
    Ok((host.to_owned(), port))
}

impl From<RelayLink> for RelayUrl {
    fn from(link: RelayLink) -> Self {
        RelayUrl {
            tls: link.tls,
            host: link.host,
            port: link.port,
            stealth: link.stealth,
        }
    }
}

impl FromStr for RelayUrl {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        if text.len() > MAX_RELAY_URL_LEN {
            return Err(bad(&text[..0], "too long"));
        }
        if let Some(rest) = text.strip_prefix("tls://") {
            let (host, port) = parse_host_port(text, rest.trim_end_matches('/'))?;
            return Ok(RelayUrl {
                tls: true,
                host,
                port,
                stealth: None,
            });
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = parse_host_port(text, rest.trim_end_matches('/'))?;
            return Ok(RelayUrl {
                tls: false,
                host,
                port,
                stealth: None,
            });
        }
        match RelayLink::parse(text) {
            Ok(link) => return Ok(link.into()),
            Err(LinkError::NotALink) => {}
            Err(e) => return Err(bad(text, &e.to_string())),
        }
        if text.starts_with("ponte://") {
            return Err(bad(
                text,
                "this is a server address, not a relay (give it to `register --server`)",
            ));
        }
        Err(bad(text, "unknown scheme"))
    }
}

/// Through a `ponte proxy` relay, plain or with TLS.
#[derive(Clone)]
pub struct RelayRoute {
    url: RelayUrl,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl fmt::Debug for RelayRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayRoute")
            .field("url", &self.url)
            .finish()
    }
}

/// Accepts any certificate: a relay's TLS is camouflage, not security (the
/// Noise channel inside authenticates the server). Signatures are still
/// checked so the handshake is well formed.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl RelayRoute {
    /// A route through the relay at `url`.
    pub fn new(url: RelayUrl) -> Result<Self> {
        let tls = if url.tls && url.stealth.is_none() {
            Some(tls_connector()?)
        } else {
            None
        };
        Ok(Self { url, tls })
    }

    /// The relay's URL.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }
}

impl Route for RelayRoute {
    fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = tcp(&self.url.host_port()).await?;
            if let Some(params) = &self.url.stealth {
                let s = crate::stealth::open(stream, params).await?;
                return Ok(Box::new(s) as BoxStream);
            }
            let Some(connector) = &self.tls else {
                return Ok(Box::new(stream) as BoxStream);
            };
            // SNI: the relay's name when it has one (what a browser would
            // send); IP addresses are not sent as SNI.
            let name = rustls_pki_types::ServerName::try_from(self.url.host.clone())
                .unwrap_or_else(|_| {
                    rustls_pki_types::ServerName::DnsName(
                        rustls_pki_types::DnsName::try_from("localhost")
                            .expect("static DNS name is valid"),
                    )
                });
            let tls = connector
                .connect(name, stream)
                .await
                .map_err(|e| tls_failed(&self.url, e))?;
            Ok(Box::new(tls) as BoxStream)
        })
    }

    fn describe(&self) -> String {
        match &self.url.stealth {
            // Never the secret: host, port and the cover's name.
            Some(s) => format!("stealth relay {} ({})", self.url.host_port(), s.sni),
            None => format!("relay {}", self.url),
        }
    }
}

/// The client error for a route that failed to open: a stealth relay that
/// did not prove the link's secret is [`ClientError::Tampered`], anything
/// else [`ClientError::Unreachable`].
pub fn connect_error(e: std::io::Error) -> ClientError {
    if crate::stealth::is_auth_error(&e) {
        ClientError::Tampered(e.to_string())
    } else {
        ClientError::Unreachable(e.to_string())
    }
}

/// A TLS handshake with the relay at `url` that failed, said in the
/// user's terms: a relay that closes during the TLS handshake most likely
/// does not speak TLS on that port (a plain relay, the reverse of the
/// mistake the Noise handshake recognises).
fn tls_failed(url: &RelayUrl, e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    let plain = RelayUrl {
        tls: false,
        ..url.clone()
    };
    let text = match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            format!(
                "the relay closed the connection during the TLS handshake: it does not seem to \
                 speak TLS on this port (for a plain relay, use {plain})"
            )
        }
        _ => format!(
            "the TLS handshake with the relay failed ({e}): is it a TLS relay? (for a plain \
             relay, use {plain})"
        ),
    };
    std::io::Error::new(e.kind(), text)
}

/// Whether an error means "an attacker is in the way" rather than "this
/// route does not work": such an error ends a [`race`] at once.
pub fn is_security_error(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::ServerKeyMismatch(_) | ClientError::Tampered(_)
    )
}

/// Race `routes` (see the module docs): `attempt` runs on each route, each
/// bounded by `timeout`; the first success wins and is returned with its
/// route's index. All failing gives [`ClientError::Unreachable`] naming each
/// route's reason; a security error on any route is returned at once.
pub async fn race<'r, T, F>(
    routes: &'r [Box<dyn Route>],
    head_start: Duration,
    timeout: Duration,
    attempt: F,
) -> Result<(usize, T)>
where
    F: Fn(&'r dyn Route) -> BoxFuture<'r, Result<T>>,
{
    let mut running = FuturesUnordered::new();
    let mut errors: Vec<Option<String>> = vec![None; routes.len()];
    let mut next = 0usize;
    let start = |i: usize| {
        let route: &'r dyn Route = routes[i].as_ref();
        let fut = attempt(route);
        async move {
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Unreachable(format!(
                    "no answer within {timeout:?}"
                ))),
            };
            (i, r)
        }
    };
    loop {
        if running.is_empty() {
            if next >= routes.len() {
                break;
            }
            running.push(start(next));
            next += 1;
        }
        let more = next < routes.len();
        tokio::select! {
            Some((i, r)) = running.next() => match r {
                Ok(v) => return Ok((i, v)),
                Err(e) if is_security_error(&e) => return Err(e),
                Err(e) => {
                    let why = match e {
                        ClientError::Unreachable(m) => m,
                        other => other.to_string(),
                    };
                    errors[i] = Some(format!("{}: {why}", routes[i].describe()));
                    // A failure hands over at once.
                    if more {
                        running.push(start(next));
                        next += 1;
                    }
                }
            },
            () = tokio::time::sleep(head_start), if more => {
                running.push(start(next));
                next += 1;
            }
        }
    }
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    if errors.is_empty() {
        return Err(ClientError::Unreachable("no route configured".into()));
    }
    Err(ClientError::Unreachable(errors.join("; ")))
}

/// Open a bare stream over the first route that answers (a [`race`] of
/// TCP/TLS connects only; [`crate::connection::Connection::open`] races the
/// Noise handshake too, which also catches routes that accept and then stay
/// silent).
pub async fn connect_any(routes: &[Box<dyn Route>], timeout: Duration) -> Result<BoxStream> {
    race(routes, HEAD_START, timeout, |r| {
        Box::pin(async move {
            r.connect()
                .await
                .map_err(|e| ClientError::Unreachable(e.to_string()))
        })
    })
    .await
    .map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn direct_route_connects_and_falls_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // A port that refuses: bound, never listening, held for the test.
        let dead = tokio::net::TcpSocket::new_v4().unwrap();
        dead.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dead_addr = dead.local_addr().unwrap();
        let routes: Vec<Box<dyn Route>> = vec![
            Box::new(DirectRoute {
                target: dead_addr.to_string(),
            }),
            Box::new(DirectRoute {
                target: good.to_string(),
            }),
        ];
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let mut stream = connect_any(&routes, Duration::from_secs(5)).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(&accept.await.unwrap(), b"ping");

        let only_dead: Vec<Box<dyn Route>> = vec![Box::new(DirectRoute {
            target: dead_addr.to_string(),
        })];
        let err = connect_any(&only_dead, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Unreachable(ref m) if m.contains("direct tcp")),
            "{err}"
        );
    }

    #[test]
    fn a_relay_url_with_a_path_says_so_and_names_the_url_to_give() {
        for (text, give) in [
            (
                "tls://relay.example.org:443/path",
                "tls://relay.example.org:443",
            ),
            ("tcp://203.0.113.7:80/x/y", "tcp://203.0.113.7:80"),
            ("tls://[2001:db8::1]:443?a=b", "tls://[2001:db8::1]:443"),
        ] {
            let err = text.parse::<RelayUrl>().unwrap_err().to_string();
            assert!(err.contains("has no path"), "{text}: {err}");
            assert!(err.contains(&format!("give {give})")), "{text}: {err}");
            assert!(!err.contains("bad port"), "{text}: {err}");
        }
        let u: RelayUrl = "tls://relay.example.org:443/".parse().unwrap();
        assert_eq!(u.port, 443);
    }

    #[test]
    fn relay_urls_and_links_parse() {
        let u: RelayUrl = "tls://relay.example.org:443".parse().unwrap();
        assert_eq!(
            u,
            RelayUrl {
                tls: true,
                host: "relay.example.org".into(),
                port: 443,
                stealth: None,
            }
        );
        assert_eq!(u.to_string(), "tls://relay.example.org:443");
        let u: RelayUrl = "tcp://[2001:db8::1]:5222".parse().unwrap();
        assert_eq!(u.host, "2001:db8::1");
        assert!(!u.tls);
        assert_eq!(u.to_string(), "tcp://[2001:db8::1]:5222");
        let u: RelayUrl = "ponte://relay?host=203.0.113.7&port=443&tls=1"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "tls://203.0.113.7:443");
        let u: RelayUrl = "https://ponte.link/relay#host=2001%3Adb8%3A%3A1&port=80&tls=0"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "tcp://[2001:db8::1]:80");
        for bad in [
            "",
            "relay.example.org:443",
            "udp://h:1",
            "tls://h",
            "tls://h:0",
            "tls://h:99999",
            "tls://bad host:1",
            "ponte://h:1#AAAA",
            "ponte://relay?port=1",
            "ponte://relay?host=h&port=1&tls=maybe",
            "https://example.org/other#host=h&port=1",
            "https://ponte.link/relay?host=h&port=1",
        ] {
            assert!(bad.parse::<RelayUrl>().is_err(), "{bad:?} accepted");
        }
        let long = format!("tls://{}:1", "a".repeat(600));
        assert!(long.parse::<RelayUrl>().is_err());
    }

    /// A link `ponte proxy link` prints for a host it accepts is a link the
    /// client reads back (one host check for both).
    #[test]
    fn stealth_links_parse_into_stealth_routes_and_save_back() {
        let secret = ponte_wire::stealth::Secret::from_bytes([9; 16]);
        let link = RelayLink::new("relay.example.org", 443, true)
            .unwrap()
            .with_stealth(secret.clone(), "www.cover.example")
            .unwrap();
        for text in [
            link.app_link(),
            link.web_link_with_base("https://www.cover.example/relay"),
        ] {
            let u: RelayUrl = text.parse().unwrap();
            let s = u.stealth.clone().unwrap();
            assert_eq!(s.secret, secret);
            assert_eq!(s.sni, "www.cover.example");
            // Saved as text and read back (the profile's relay list).
            assert_eq!(u.to_string().parse::<RelayUrl>().unwrap(), u);
            let route = RelayRoute::new(u).unwrap();
            let d = route.describe();
            assert_eq!(d, "stealth relay relay.example.org:443 (www.cover.example)");
            assert!(!format!("{route:?}").contains(&secret.to_text()));
        }
    }

    #[test]
    fn every_link_a_relay_prints_is_read() {
        for (host, want) in [
            ("bücher.example", "tls://bücher.example:443"),
            ("[2001:DB8::1]", "tls://[2001:db8::1]:443"),
            ("203.0.113.7", "tls://203.0.113.7:443"),
            ("_relay.example.org.", "tls://_relay.example.org.:443"),
        ] {
            ponte_wire::link::validate_host(host).unwrap();
            for text in [
                ponte_wire::link::ponte_relay_link(host, 443, true),
                ponte_wire::link::ponte_relay_web_link(host, 443, true),
            ] {
                let u: RelayUrl = text.parse().unwrap();
                assert_eq!(u.to_string(), want, "{text}");
            }
        }
        // A server address whose host starts with "relay" is named as one.
        let err = "ponte://relay.example.org:443#AAAA"
            .parse::<RelayUrl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("server address, not a relay"), "{err}");
        let err = "ponte://relay?host=h&port=1&tls=maybe"
            .parse::<RelayUrl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls must be 1 or 0"), "{err}");
    }

    /// A black hole (accepts, never answers) on the first route: the second
    /// starts after the head start and wins; a refused first route hands
    /// over at once.
    #[tokio::test(start_paused = true)]
    async fn race_gives_each_route_a_head_start() {
        #[derive(Debug)]
        struct Fake {
            name: &'static str,
            delay: Option<Duration>,
        }
        impl Route for Fake {
            fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxStream>> {
                Box::pin(async move {
                    match self.delay {
                        Some(d) => {
                            tokio::time::sleep(d).await;
                            Ok(Box::new(tokio::io::empty()) as BoxStream)
                        }
                        None => Err(std::io::ErrorKind::ConnectionRefused.into()),
                    }
                })
            }
            fn describe(&self) -> String {
                self.name.into()
            }
        }
        let routes: Vec<Box<dyn Route>> = vec![
            Box::new(Fake {
                name: "hole",
                delay: Some(Duration::from_secs(3600)),
            }),
            Box::new(Fake {
                name: "refused",
                delay: None,
            }),
            Box::new(Fake {
                name: "good",
                delay: Some(Duration::from_millis(10)),
            }),
        ];
        let t0 = tokio::time::Instant::now();
        let (i, ()) = race(&routes, HEAD_START, Duration::from_secs(10), |r| {
            Box::pin(async move {
                r.connect()
                    .await
                    .map(|_| ())
                    .map_err(|e| ClientError::Unreachable(e.to_string()))
            })
        })
        .await
        .unwrap();
        assert_eq!(i, 2);
        // hole alone for the head start, refused fails at once, good takes 10 ms.
        assert_eq!(t0.elapsed(), HEAD_START + Duration::from_millis(10));

        // Everything fails: each reason is named; the hole times out.
        let err = race(&routes[..2], HEAD_START, Duration::from_secs(2), |r| {
            Box::pin(async move {
                r.connect()
                    .await
                    .map(|_| ())
                    .map_err(|e| ClientError::Unreachable(e.to_string()))
            })
        })
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hole: no answer within 2s"), "{msg}");
        assert!(msg.contains("refused:"), "{msg}");

        // A security error ends the race at once, even if another would work.
        let err = race(&routes, HEAD_START, Duration::from_secs(10), |r| {
            Box::pin(async move {
                if r.describe() == "refused" {
                    Err(ClientError::Tampered("test".into()))
                } else {
                    r.connect()
                        .await
                        .map(|_| ())
                        .map_err(|e| ClientError::Unreachable(e.to_string()))
                }
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::Tampered(_)), "{err}");
    }
}

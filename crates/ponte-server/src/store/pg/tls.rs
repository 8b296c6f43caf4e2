//! TLS to PostgreSQL, with libpq's connection settings: every connection
//! the service makes to its database (the nodes' writers and readers,
//! `ponte server init`, `migrate --to`, `invite --store`, the bench) goes
//! through [`Target::connector`].
//!
//! | `sslmode` | TLS | checks the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it, else plain | no |
//! | `require` | always | no (as libpq; with `sslrootcert` it checks as `verify-ca`, as libpq does) |
//! | `verify-ca` | always | issued by a CA in `sslrootcert` (or the system's) |
//! | `verify-full` | always | as `verify-ca`, and valid for the host name connected to |
//!
//! `sslrootcert=FILE` (PEM) names the CAs to trust; `system`, or no
//! `sslrootcert`, means the system's CA certificates. `sslcert` and `sslkey`
//! (PEM files, both or neither) give a client certificate. `allow` is not
//! supported (it tries plain first, which buys nothing here).
//!
//! tokio-postgres parses `sslmode` itself only for `disable`, `prefer` and
//! `require`, refuses `verify-ca`/`verify-full` as an invalid value without
//! naming it, and refuses `sslrootcert`, `sslcert` and `sslkey` as unknown
//! options. So these four settings are taken out of the address here, the
//! rest goes to tokio-postgres, and it is told `require` for the verifying
//! modes (TLS or nothing); the checks are the rustls configuration's.
//! The TLS stream itself is `tokio-postgres-rustls` (which also gives
//! tokio-postgres the server certificate's hash for SCRAM channel binding).

use super::PgError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode as DriverMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as far as it is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, no certificate check.
    Prefer,
    /// TLS, no certificate check.
    Require,
    /// TLS, the certificate issued by a trusted CA.
    VerifyCa,
    /// TLS, the certificate issued by a trusted CA and valid for the host.
    VerifyFull,
}

impl SslMode {
    const NAMES: &'static str = "disable, prefer, require, verify-ca or verify-full";

    fn parse(value: &str) -> Result<Self, PgError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(PgError::Setting(format!(
                    "sslmode=allow is not supported: use prefer (TLS when offered) or disable \
                     (one of {})",
                    Self::NAMES
                )))
            }
            other => {
                return Err(PgError::Setting(format!(
                    "sslmode={other:?} is not a known sslmode: give one of {}",
                    Self::NAMES
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The system's CA certificates (`sslrootcert=system`, or none given).
    System,
    /// A PEM file (`sslrootcert=FILE`).
    File(PathBuf),
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("the system's CA certificates"),
            Self::File(p) => write!(f, "sslrootcert={}", p.display()),
        }
    }
}

/// The TLS settings of a store address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tls {
    /// As given (`prefer` when not).
    mode: SslMode,
    /// `sslrootcert`, if given.
    root_cert: Option<Roots>,
    /// `sslcert` and `sslkey`.
    client: Option<(PathBuf, PathBuf)>,
}

impl Tls {
    /// The check that is made: `require` with `sslrootcert` checks as
    /// `verify-ca` (as libpq does).
    fn effective(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(Roots::File(_))) => SslMode::VerifyCa,
            (m, _) => m,
        }
    }

    fn roots(&self) -> Roots {
        self.root_cert.clone().unwrap_or(Roots::System)
    }
}

/// A parsed store address: tokio-postgres's settings and the TLS ones.
#[derive(Debug, Clone)]
pub struct Target {
    pub(super) cfg: tokio_postgres::Config,
    tls: Tls,
}

/// The settings this module takes out of an address.
const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Target {
    /// Parses `postgres://…[?k=v&…]` or libpq's `k=v k=v` form.
    pub fn parse(address: &str) -> Result<Self, PgError> {
        let is_url = address.starts_with("postgres://") || address.starts_with("postgresql://");
        let (rest, ours) = if is_url {
            split_url(address)?
        } else {
            split_key_values(address)?
        };
        let mut mode = None;
        let (mut root_cert, mut cert, mut key) = (None, None, None);
        for (k, v) in ours {
            match k {
                "sslmode" => mode = Some(SslMode::parse(&v)?),
                "sslrootcert" if v == "system" => root_cert = Some(Roots::System),
                "sslrootcert" => root_cert = Some(Roots::File(non_empty("sslrootcert", v)?)),
                "sslcert" => cert = Some(non_empty("sslcert", v)?),
                _ => key = Some(non_empty("sslkey", v)?),
            }
        }
        let client =
            match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => return Err(PgError::Setting(
                    "sslcert is given without sslkey: give both (a client certificate and its key)"
                        .into(),
                )),
                (None, Some(_)) => return Err(PgError::Setting(
                    "sslkey is given without sslcert: give both (a client certificate and its key)"
                        .into(),
                )),
            };
        let mut cfg: tokio_postgres::Config = rest.parse().map_err(PgError::Address)?;
        let tls = Tls {
            mode: mode.unwrap_or(SslMode::Prefer),
            root_cert,
            client,
        };
        cfg.ssl_mode(match tls.mode {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            _ => DriverMode::Require,
        });
        Ok(Self { cfg, tls })
    }

    /// The `sslmode` given (or `prefer`).
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    /// The TLS connector for this address's settings: reads the CA,
    /// client certificate and key files.
    pub fn connector(&self) -> Result<MakeRustlsConnect, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Setting(format!("TLS: {e}")))?;
        let mode = self.tls.effective();
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            // `disable` never calls the connector; `prefer` and `require`
            // check nothing, as in libpq.
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(NoCheck(Arc::clone(&provider)))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(load_roots(&self.tls.roots())?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| PgError::Setting(format!("TLS: {e}")))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.tls.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_certs("sslcert", cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| PgError::TlsFile {
                    setting: "sslkey",
                    path: key.clone(),
                    what: format!("no private key read: {e}"),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| PgError::TlsFile {
                        setting: "sslkey",
                        path: cert.clone(),
                        what: format!("does not fit sslcert: {e}"),
                    })?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// Says what failed in a first connection that failed with `e`.
    pub(super) fn connect_error(
        &self,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> PgError {
        PgError::Connect {
            at: self.hosts(),
            mode: self.tls.mode,
            failure: ConnectFailure::of(&e, &self.tls),
            source: Box::new(e),
        }
    }

    /// `HOST:PORT` of every host in the address, for messages.
    fn hosts(&self) -> String {
        let ports = self.cfg.get_ports();
        let port = |i: usize| {
            ports
                .get(i)
                .or_else(|| (ports.len() == 1).then(|| &ports[0]))
                .copied()
                .unwrap_or(5432)
        };
        let hosts: Vec<String> = self
            .cfg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                Host::Unix(path) => format!("{}/.s.PGSQL.{}", path.display(), port(i)),
            })
            .collect();
        if hosts.is_empty() {
            "(no host)".into()
        } else {
            hosts.join(", ")
        }
    }
}

/// What went wrong connecting, as far as can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The server answered that it does not do TLS.
    TlsRefused,
    /// Its certificate is not issued by a trusted CA (or is expired, …).
    NotTrusted {
        /// The trusted CAs, as said.
        roots: String,
        /// rustls's reason.
        reason: String,
    },
    /// Its certificate is not valid for the host name connected to.
    WrongName,
    /// Another TLS failure (handshake, protocol).
    Tls(String),
    /// Anything else (unreachable, authentication, timeout): the cause says.
    Other,
}

impl ConnectFailure {
    fn of(e: &(dyn std::error::Error + 'static), tls: &Tls) -> Self {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(r) = rustls_error(c) {
                return match r {
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ) => Self::WrongName,
                    rustls::Error::InvalidCertificate(why) => Self::NotTrusted {
                        roots: tls.roots().to_string(),
                        reason: format!("{why:?}"),
                    },
                    other => Self::Tls(other.to_string()),
                };
            }
            // tokio-postgres's own words when the server answers `N` to
            // the TLS request (pinned by the tests).
            if c.to_string().contains("server does not support TLS") {
                return Self::TlsRefused;
            }
            cause = c.source();
        }
        Self::Other
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TlsRefused => f.write_str("refused TLS"),
            Self::NotTrusted { roots, reason } => write!(
                f,
                "presented a certificate that is not trusted ({reason}; trusted: {roots})"
            ),
            Self::WrongName => f.write_str(
                "presented a certificate that is not valid for the host name connected to",
            ),
            Self::Tls(why) => write!(f, "failed the TLS handshake ({why})"),
            Self::Other => f.write_str("could not be connected to"),
        }
    }
}

/// The rustls error `e` is, or holds (tokio-rustls wraps it in an
/// `io::Error`, whose `source` skips it).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

fn non_empty(setting: &'static str, v: String) -> Result<PathBuf, PgError> {
    if v.is_empty() {
        return Err(PgError::Setting(format!("{setting} is empty: give a file")));
    }
    Ok(PathBuf::from(v))
}

fn load_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let file_error = |what: String| PgError::TlsFile {
        setting,
        path: path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(format!("cannot be read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            for c in load_certs("sslrootcert", path)? {
                store.add(c).map_err(|e| PgError::TlsFile {
                    setting: "sslrootcert",
                    path: path.clone(),
                    what: format!("holds a certificate that is not a usable CA: {e}"),
                })?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(PgError::Setting(format!(
                    "no sslrootcert is given and no system CA certificates were found{why}: \
                     give sslrootcert=FILE with the CA that issued PostgreSQL's certificate"
                )));
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: the connection is encrypted but the server is
/// not authenticated (libpq's meaning of these modes). The handshake's
/// signatures are still checked, against the certificate presented.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the whole webpki check (chain to a trusted CA, validity
/// dates, key usage) but the host name. webpki checks the name last, after
/// the chain, so a name error means everything else passed.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// An address without our settings, and our settings (name, value).
type Split = (String, Vec<(&'static str, String)>);

/// A URL's query split into ours (decoded) and the rest (as written).
fn split_url(address: &str) -> Result<Split, PgError> {
    let Some((base, query)) = address.split_once('?') else {
        return Ok((address.to_owned(), Vec::new()));
    };
    let mut rest = Vec::new();
    let mut ours = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        match OURS
            .iter()
            .find(|o| percent_decode(k).as_deref() == Some(**o))
        {
            Some(o) => {
                let v = percent_decode(v).ok_or_else(|| {
                    PgError::Setting(format!("{o}: the value is not valid percent-encoded UTF-8"))
                })?;
                ours.push((*o, v));
            }
            None => rest.push(param),
        }
    }
    let address = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((address, ours))
}

/// `%XX`-decoding (`+` stays `+`, as in libpq's URIs); `None` for a bad
/// escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// libpq's `key=value` form split into ours and the rest (written again,
/// every value quoted).
fn split_key_values(address: &str) -> Result<Split, PgError> {
    let mut rest = String::new();
    let mut ours = Vec::new();
    let mut it = address.chars().peekable();
    let bad = |why: &str| PgError::Setting(format!("not a PostgreSQL address: {why}"));
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            it.next();
        }
        if key.is_empty() {
            if it.peek().is_some() {
                return Err(bad("a setting without a name"));
            }
            break;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(bad(&format!("`=` expected after {key}")));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let quoted = it.peek() == Some(&'\'');
        if quoted {
            it.next();
        }
        let mut value = String::new();
        let mut closed = false;
        while let Some(c) = it.next() {
            match c {
                '\\' => value.extend(it.next()),
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c if !quoted && c.is_whitespace() => break,
                c => value.push(c),
            }
        }
        if quoted && !closed {
            return Err(bad(&format!("the quoted value of {key} is not closed")));
        }
        match OURS.iter().find(|o| **o == key) {
            Some(o) => ours.push((*o, value)),
            None => {
                let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
                rest.push_str(&format!("{key}='{escaped}' "));
            }
        }
    }
    Ok((rest, ours))
}

#[cfg(test)]
mod tests;

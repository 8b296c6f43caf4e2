//! Inbound TLS: a self-signed certificate made at start, the operator's
//! PEM files reloaded without a restart, or an ACME certificate
//! ([`crate::acme`]) swapped in when it is issued or renewed.
//!
//! TLS here is camouflage (the relay should look like any HTTPS server), not
//! the users' security: Ponte's Noise layer and WhatsApp's own encryption run
//! inside it. So any SNI is accepted and the same certificate is served to all.
//!
//! Reloading swaps the certificate used for *new* handshakes; established
//! connections keep theirs and are never dropped. Files are checked on a
//! timer (modification time and size) and on SIGHUP. A timer rather than
//! inotify: it works the same on bind mounts, network file systems and the
//! symlink swaps that certbot and Kubernetes secrets do.

use crate::acme::{Challenges, ACME_TLS_ALPN};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

/// A certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading a PEM file failed or it holds no usable item.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The private key is not one rustls can sign with, or does not match.
    #[error("{path}: unusable private key: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// rustls' reason.
        reason: rustls::Error,
    },
    /// The self-signed certificate could not be generated.
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

type Stamp = Option<(SystemTime, u64)>;

/// How long a self-signed certificate is made valid for: a year, as
/// `openssl req -x509 -days 365` and most small sites' certificates have;
/// a running relay makes a new one when less than a month is left.
pub const SELF_SIGNED_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

#[derive(Debug)]
enum Source {
    SelfSigned(Vec<String>),
    Files {
        cert: PathBuf,
        key: PathBuf,
        seen: Mutex<(Stamp, Stamp)>,
    },
}

/// The certificate in use, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    source: Source,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl CertStore {
    /// A fresh self-signed certificate for `names` (DNS names or IP
    /// addresses), shaped like any small site's: the first name as its
    /// subject, valid from an hour ago for [`SELF_SIGNED_VALIDITY`].
    pub fn self_signed(names: &[String]) -> Result<CertStore, TlsError> {
        let certified = make_self_signed(names)?;
        Ok(CertStore {
            current: RwLock::new(Arc::new(certified)),
            source: Source::SelfSigned(names.to_vec()),
        })
    }

    /// Load the operator's PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<CertStore, TlsError> {
        let seen = (stamp(cert), stamp(key));
        let certified = load_files(cert, key)?;
        Ok(CertStore {
            current: RwLock::new(Arc::new(certified)),
            source: Source::Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                seen: Mutex::new(seen),
            },
        })
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reload the files if they changed since last time (or always, with
    /// `force`). Returns `Ok(true)` when a new certificate is in use. A broken
    /// new file leaves the old certificate in place and is not tried again
    /// until it changes (or `force`), so it is reported once.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let (cert, key, seen) = match &self.source {
            Source::Files { cert, key, seen } => (cert, key, seen),
            Source::SelfSigned(names) => {
                let current = self.current();
                let ends = current.cert.first().and_then(|c| crate::acme::not_after(c));
                let month = std::time::Duration::from_secs(30 * 86_400);
                if ends.is_some_and(|e| !crate::acme::due(e, SystemTime::now(), month)) {
                    return Ok(false);
                }
                let fresh = make_self_signed(names)?;
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(fresh),
                    Err(p) => *p.into_inner() = Arc::new(fresh),
                }
                return Ok(true);
            }
        };
        let now = (stamp(cert), stamp(key));
        {
            let mut seen = match seen.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !force && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let certified = load_files(cert, key)?;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(certified),
            Err(p) => *p.into_inner() = Arc::new(certified),
        }
        Ok(true)
    }

    /// Serve the certificate in these files to new handshakes from now on
    /// (an ACME order's result); connections already open keep theirs.
    pub fn replace_from_files(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let certified = load_files(cert, key)?;
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(certified),
            Err(p) => *p.into_inner() = Arc::new(certified),
        }
        Ok(())
    }

    /// True when backed by files, or self-signed (made anew before it
    /// expires): reloading means something.
    pub fn is_file_backed(&self) -> bool {
        matches!(self.source, Source::Files { .. } | Source::SelfSigned(_))
    }

    /// A rustls server config serving this store's certificate for any SNI.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        // Resumption makes reconnecting clients cheap.
        cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A listener's TLS handshake: the store's certificate for everyone, and,
/// with ACME on, the TLS-ALPN-01 answer (RFC 8737) for a CA validating a
/// pending name.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<rustls::ServerConfig>,
    acme: Option<Arc<Challenges>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("acme", &self.acme.is_some())
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Serves `config`; answers `acme` challenges when given.
    pub fn new(config: Arc<rustls::ServerConfig>, acme: Option<Arc<Challenges>>) -> Self {
        Acceptor { config, acme }
    }

    /// The handshake. `Ok(None)`: it was an ACME validation, answered with
    /// the challenge certificate and closed.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<Option<TlsStream<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(challenges) = &self.acme else {
            return TlsAcceptor::from(Arc::clone(&self.config))
                .accept(io)
                .await
                .map(Some);
        };
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let hello = start.client_hello();
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        let answer = hello
            .server_name()
            .filter(|_| validation)
            .and_then(|name| challenges.get(name));
        if let Some(ck) = answer {
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Fixed(ck)));
            cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            let mut s = start.into_stream(Arc::new(cfg)).await?;
            let _ = s.shutdown().await;
            return Ok(None);
        }
        start.into_stream(Arc::clone(&self.config)).await.map(Some)
    }
}

fn make_self_signed(names: &[String]) -> Result<CertifiedKey, TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.as_str());
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = params.not_before + SELF_SIGNED_VALIDITY;
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let key_pair = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key_pair).map_err(gen)?;
    let der = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let key = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], key))
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A PEM file that could not be read or parsed. `what` names the item
/// looked for (`CERTIFICATE`, `PRIVATE KEY`).
fn pem_err(path: &Path, what: &str, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => file_err(
            path,
            "no such file (a relative path in a config file is taken from the file's folder)",
        ),
        pem::Error::Io(io) => file_err(path, format!("cannot read: {io}")),
        pem::Error::NoItemsFound => file_err(path, format!("no {what} in the file")),
        other => file_err(path, format!("not a PEM {what} file: {other}")),
    }
}

fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, "CERTIFICATE", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, "CERTIFICATE", e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no CERTIFICATE in the file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, "PRIVATE KEY", e))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|reason| TlsError::Key {
            path: key.to_path_buf(),
            reason,
        })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|reason| TlsError::Key {
        path: key.to_path_buf(),
        reason,
    })?;
    Ok(ck)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_and_reloads_files() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "one.example");
        let store = CertStore::from_files(&c, &k).unwrap();
        let first = store.current();
        assert!(
            !store.reload(false).unwrap(),
            "unchanged files do not reload"
        );
        let (c2, k2) = write_pair(dir.path(), "two.example");
        std::fs::rename(&c2, &c).unwrap();
        std::fs::rename(&k2, &k).unwrap();
        assert!(store.reload(true).unwrap());
        assert_ne!(first.cert[0], store.current().cert[0]);
    }

    #[test]
    fn broken_reload_keeps_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "one.example");
        let store = CertStore::from_files(&c, &k).unwrap();
        let first = store.current();
        std::fs::write(&c, "not a pem").unwrap();
        assert!(store.reload(true).is_err());
        assert_eq!(first.cert[0], store.current().cert[0]);
        // Not retried (nor reported again) on every timer tick.
        assert!(!store.reload(false).unwrap());
        let (c2, _) = write_pair(dir.path(), "two.example");
        std::fs::rename(&c2, &c).unwrap();
        assert!(
            store.reload(false).is_err(),
            "a changed file is tried again"
        );
        assert!(!store.reload(false).unwrap());
    }

    #[test]
    fn mismatched_or_missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = write_pair(dir.path(), "one.example");
        let (_, k2) = write_pair(dir.path(), "two.example");
        let e = CertStore::from_files(&c1, &k2).unwrap_err();
        assert!(e.to_string().contains("two.example.key"), "{e}");
        let e = CertStore::from_files(&dir.path().join("nope.crt"), &k2).unwrap_err();
        assert!(e.to_string().contains("nope.crt"), "{e}");
        assert!(e.to_string().contains("no such file"), "{e}");
        std::fs::write(dir.path().join("junk.key"), "not a key").unwrap();
        let e = CertStore::from_files(&c1, &dir.path().join("junk.key")).unwrap_err();
        assert!(e.to_string().contains("no PRIVATE KEY in the file"), "{e}");
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        let e = CertStore::from_files(&dir.path().join("empty.crt"), &k2).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    }

    #[test]
    fn self_signed_looks_like_a_small_sites() {
        let s = CertStore::self_signed(&["relay.example".into(), "192.0.2.1".into()]).unwrap();
        assert_eq!(s.current().cert.len(), 1);
        let der = s.current().cert[0].to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["relay.example"]);
        assert_eq!(cert.subject(), cert.issuer());
        let v = cert.validity();
        let life = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(life, 365 * 86_400);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now - 7200..=now).contains(&v.not_before.timestamp()));
        // Not due for a month and more: a reload keeps it.
        assert!(!s.reload(false).unwrap());
        assert_eq!(s.current().cert[0].to_vec(), der);
    }
}

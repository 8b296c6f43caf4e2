//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, or Debian's
//! Pebble in the tests) for the relay's own TLS: listeners with
//! `tls = "acme"` and the builtin cover site of a stealth listener.
//!
//! At start the stored certificate (`STATE/cert.pem`, `STATE/key.pem`) is
//! served when there is one; otherwise a self-signed stand-in for the
//! names until the first certificate is issued, which the background task
//! ([`Acme::run`]) asks for at once. It proves control of each name with
//! TLS-ALPN-01 (RFC 8737) on the relay's own port: while an order is open,
//! a handshake that offers only the `acme-tls/1` protocol and names a
//! pending domain gets that domain's challenge certificate ([`Challenges`],
//! answered by [`crate::tls::Acceptor`]); everyone else gets the current
//! certificate as usual. The task checks every `check_interval` and orders
//! a new certificate once the current one has less than `renew_before`
//! left. A new certificate is used for new handshakes only; connections
//! already open keep theirs, so a renewal drops nothing. A failed order is
//! retried with a growing delay (1 minute, doubling, at most the check
//! interval) while the old certificate stays in use.
//!
//! The account key (`STATE/account.json`) and the certificate's key are
//! written with mode 0600.

use crate::config::Dur;
use crate::tls::CertStore;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The default state folder, beside the configuration file.
pub const DEFAULT_STATE: &str = "acme";

/// `[acme]`: where certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (Let's Encrypt:
    /// `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// The DNS names the certificate is for; the first is its subject.
    pub domains: Vec<String>,
    /// Contact URLs given to the CA (`mailto:you@example.org`); optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// Folder for the account key and the certificate; relative paths are
    /// relative to the configuration file. Absent: `acme` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
    /// A PEM root certificate to trust for the CA's own HTTPS, instead of
    /// the system's (a test CA such as Pebble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<PathBuf>,
    /// Order a new certificate once the current one has less than this left.
    #[serde(default = "default_renew_before")]
    pub renew_before: Dur,
    /// How often the certificate's remaining time is checked.
    #[serde(default = "default_check_interval")]
    pub check_interval: Dur,
}

fn default_renew_before() -> Dur {
    Dur(Duration::from_secs(30 * 86_400))
}

fn default_check_interval() -> Dur {
    Dur(Duration::from_secs(12 * 3600))
}

impl AcmeConfig {
    /// The state folder for a configuration loaded from `config_file`.
    pub fn state_path(&self, config_file: Option<&Path>) -> PathBuf {
        let dir = config_file
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty());
        let name = self
            .state
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE));
        match dir {
            Some(d) if name.is_relative() => d.join(name),
            _ => name,
        }
    }
}

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The CA refused or could not be reached.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// A state file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// A key or certificate could not be made or used.
    #[error("certificate: {0}")]
    Cert(String),
    /// The order did not go as RFC 8555 says it should.
    #[error("ACME order: {0}")]
    Order(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |error| AcmeError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// TLS-ALPN-01 answers waiting for the CA's validation, by domain.
#[derive(Debug, Default)]
pub struct Challenges(RwLock<HashMap<String, Arc<CertifiedKey>>>);

impl Challenges {
    /// The challenge certificate for `name`, while its order is open.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = match self.0.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.get(&name.to_ascii_lowercase()).cloned()
    }

    fn set(&self, name: &str, ck: Option<CertifiedKey>) {
        let mut map = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match ck {
            Some(ck) => map.insert(name.to_ascii_lowercase(), Arc::new(ck)),
            None => map.remove(&name.to_ascii_lowercase()),
        };
    }
}

/// A TLS-ALPN-01 certificate for `domain`: self-signed, with the
/// acmeIdentifier extension holding SHA-256 of the key authorization.
pub fn challenge_cert(domain: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    if digest.len() != 32 {
        return Err(AcmeError::Cert(
            "the key authorization digest is not 32 bytes".into(),
        ));
    }
    let cert_err = |e: rcgen::Error| AcmeError::Cert(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(cert_err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(cert_err)?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Cert(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// When a DER certificate stops being valid.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Whether a certificate valid until `not_after` should be replaced at
/// `now`: less than `renew_before` is left (or it has expired).
pub fn due(not_after: SystemTime, now: SystemTime, renew_before: Duration) -> bool {
    match not_after.duration_since(now) {
        Ok(left) => left < renew_before,
        Err(_) => true,
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// reader never sees half a file; `private` files get mode 0600.
fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), AcmeError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    {
        use std::io::Write as _;
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// One `[acme]` section at work: the certificate store it keeps current,
/// the challenges it answers, the account it orders with.
#[derive(Debug)]
pub struct Acme {
    cfg: AcmeConfig,
    state: PathBuf,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// Serving an issued certificate (not the stand-in).
    issued: AtomicBool,
}

impl Acme {
    /// Serves the stored certificate when there is a readable one, else a
    /// self-signed stand-in for the domains. `state` is the state folder
    /// ([`AcmeConfig::state_path`]); it is created when missing.
    pub fn new(cfg: &AcmeConfig, state: PathBuf) -> Result<Acme, AcmeError> {
        std::fs::create_dir_all(&state).map_err(io_err(&state))?;
        let (cert, key) = (state.join("cert.pem"), state.join("key.pem"));
        let (store, issued) = match CertStore::from_files(&cert, &key) {
            Ok(s) => (s, true),
            Err(e) => {
                if cert.exists() {
                    tracing::warn!("ACME: the stored certificate is unusable ({e}); ordering anew");
                }
                let s = CertStore::self_signed(&cfg.domains)
                    .map_err(|e| AcmeError::Cert(e.to_string()))?;
                (s, false)
            }
        };
        Ok(Acme {
            cfg: cfg.clone(),
            state,
            store: Arc::new(store),
            challenges: Arc::new(Challenges::default()),
            issued: AtomicBool::new(issued),
        })
    }

    /// The certificate store the listeners serve from.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// The TLS-ALPN-01 challenges the listeners answer.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// Whether the certificate in use should be replaced now: a stand-in,
    /// or less than `renew_before` left.
    pub fn needs_certificate(&self) -> bool {
        if !self.issued.load(Ordering::Relaxed) {
            return true;
        }
        let current = self.store.current();
        match current.cert.first().and_then(|c| not_after(c.as_ref())) {
            Some(end) => due(end, SystemTime::now(), self.cfg.renew_before.0),
            None => true,
        }
    }

    /// Keeps the certificate current until `stop` (see the module docs).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let check = self.cfg.check_interval.0;
        let mut retry = Duration::from_secs(60).min(check);
        loop {
            let mut wait = check;
            if self.needs_certificate() {
                match self.issue().await {
                    Ok(()) => {
                        tracing::info!(domains = ?self.cfg.domains, "ACME certificate issued");
                        retry = Duration::from_secs(60).min(check);
                    }
                    Err(e) => {
                        tracing::warn!(
                            "ACME: no new certificate ({e}); the current one stays in use, \
                             next attempt in {}s",
                            retry.as_secs()
                        );
                        wait = retry;
                        retry = (retry * 2).min(check);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.state.join("account.json");
        let builder = || match &self.cfg.directory_ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            let creds: AccountCredentials = serde_json::from_str(&text)
                .map_err(|e| AcmeError::Cert(format!("{}: {e}", path.display())))?;
            return Ok(builder()?.from_credentials(creds).await?);
        }
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.cfg.directory.clone(),
                None,
            )
            .await?;
        let text = serde_json::to_string(&creds)
            .map_err(|e| AcmeError::Cert(format!("account credentials: {e}")))?;
        write_atomic(&path, text.as_bytes(), true)?;
        Ok(account)
    }

    /// Orders, proves and fetches one certificate, stores it and serves it
    /// from now on.
    pub async fn issue(&self) -> Result<(), AcmeError> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .cfg
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut pending = Vec::new();
        let result = async {
            let mut authz = order.authorizations();
            while let Some(a) = authz.next().await {
                let mut a = a?;
                match a.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(AcmeError::Order(format!("authorization is {other:?}")));
                    }
                }
                let mut ch = a.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
                    AcmeError::Order("the CA offers no tls-alpn-01 challenge".into())
                })?;
                let Identifier::Dns(domain) = ch.identifier().identifier.clone() else {
                    return Err(AcmeError::Order("not a DNS identifier".into()));
                };
                let digest = ch.key_authorization().digest();
                let ck = challenge_cert(&domain, digest.as_ref())?;
                self.challenges.set(&domain, Some(ck));
                pending.push(domain);
                ch.set_ready().await?;
            }
            let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
            match order.poll_ready(&retries).await? {
                OrderStatus::Ready => Ok(()),
                other => Err(AcmeError::Order(format!(
                    "the order is {other:?}, not ready"
                ))),
            }
        }
        .await;
        for d in &pending {
            self.challenges.set(d, None);
        }
        result?;

        let cert_err = |e: rcgen::Error| AcmeError::Cert(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(cert_err)?;
        let mut params =
            rcgen::CertificateParams::new(self.cfg.domains.clone()).map_err(cert_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(cert_err)?;
        order.finalize_csr(csr.der()).await?;
        let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
        let chain = order.poll_certificate(&retries).await?;

        let (cert_path, key_path) = (self.state.join("cert.pem"), self.state.join("key.pem"));
        // The key first: a crash between the two leaves a new key with the
        // old certificate, which `CertStore` refuses (keys must match) and
        // the next start orders again.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_atomic(&cert_path, chain.as_bytes(), false)?;
        self.store
            .replace_from_files(&cert_path, &key_path)
            .map_err(|e| AcmeError::Cert(e.to_string()))?;
        self.issued.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renewal_is_due_when_little_time_is_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let month = 30 * day;
        assert!(!due(now + 60 * day, now, month));
        assert!(due(now + 29 * day, now, month));
        assert!(due(now - day, now, month), "expired");
        assert!(!due(now + day, now, Duration::ZERO));
    }

    #[test]
    fn challenge_certificate_carries_the_digest() {
        let ck = challenge_cert("relay.example.org", &[7u8; 32]).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        // id-pe-acmeIdentifier, critical, OCTET STRING of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        assert!(challenge_cert("relay.example.org", &[7u8; 31]).is_err());
        let end = not_after(ck.cert[0].as_ref()).unwrap();
        assert!(end > SystemTime::now());
    }

    #[test]
    fn challenges_are_found_by_name_in_any_case() {
        let c = Challenges::default();
        c.set(
            "Relay.Example.org",
            Some(challenge_cert("relay.example.org", &[1u8; 32]).unwrap()),
        );
        assert!(c.get("relay.example.ORG").is_some());
        c.set("relay.example.org", None);
        assert!(c.get("relay.example.org").is_none());
    }

    #[test]
    fn state_files_are_written_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_atomic(&p, b"secret", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

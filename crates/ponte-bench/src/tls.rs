//! TLS pieces of the harness: the self-signed certificate given to HAProxy and
//! the bench upstream, the upstream's server config, and the load generators'
//! client config that accepts any certificate (as WhatsApp and Ponte clients
//! do towards a relay: the outer TLS is camouflage, not security).

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;

/// A generated self-signed certificate and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Certificate, DER.
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
}

impl SelfSigned {
    /// Makes a fresh ECDSA P-256 certificate for `localhost` (rcgen's
    /// default key type, the same kind `ponte proxy` makes for itself).
    pub fn generate() -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .context("generating self-signed certificate")?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.key_pair.serialize_der(),
        })
    }

    /// Writes `cert.der`, `key.der` (for the bench upstream) and
    /// `combined.pem` (cert then key, the form HAProxy's `crt` wants) into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("cert.der"), &self.cert_der)?;
        std::fs::write(dir.join("key.der"), &self.key_der)?;
        std::fs::write(
            dir.join("combined.pem"),
            format!("{}{}", self.cert_pem, self.key_pem),
        )?;
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server config for the bench upstream's direct-TLS listener.
pub fn server_config(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<Arc<ServerConfig>> {
    let cert = CertificateDer::from(cert_der);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("building TLS server config")?;
    Ok(Arc::new(cfg))
}

/// Client config that accepts any server certificate and never resumes a
/// session, so every connection in the connection-rate test pays a full
/// handshake (the worst case for the relay, and the same for every system).
pub fn client_config() -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The name the client puts in SNI.
pub fn server_name() -> Result<ServerName<'static>> {
    ServerName::try_from("localhost").context("SNI name")
}

/// Certificate verifier that accepts every certificate but still checks the
/// handshake signatures (so the TLS work done is the real work).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_cert_builds_server_and_client_configs() {
        let ss = SelfSigned::generate().unwrap();
        assert!(ss.cert_pem.contains("BEGIN CERTIFICATE"));
        server_config(ss.cert_der.clone(), ss.key_der.clone()).unwrap();
        server_name().unwrap();
        client_config().unwrap();
        let dir = tempfile::tempdir().unwrap();
        ss.write_to(dir.path()).unwrap();
        let combined = std::fs::read_to_string(dir.path().join("combined.pem")).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"));
    }
}

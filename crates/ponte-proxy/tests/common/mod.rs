//! Test support: fake upstreams that record the PROXY header and echo, a
//! relay started on loopback ports, and a TLS client that accepts any cert.
#![allow(clippy::unwrap_used, dead_code)]

pub mod cover;

use ponte_proxy::config::{HostPort, ListenAddr};
use ponte_proxy::{Config, Proxy};
use ponte_wire::proxy_header::{self, Parsed, ProxyHeader};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What one upstream connection started with.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Header(ProxyHeader),
    NoHeader,
}

/// A fake upstream: optionally parses a PROXY header, records it, echoes.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub async fn start(bind: &str, expect_header: bool) -> FakeUpstream {
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let seen = Arc::clone(&s2);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    if expect_header {
                        loop {
                            let Ok(n) = s.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            match proxy_header::parse(&buf) {
                                Ok(Parsed::Complete {
                                    header, consumed, ..
                                }) => {
                                    seen.lock().unwrap().push(Seen::Header(header));
                                    buf.drain(..consumed);
                                    break;
                                }
                                Ok(Parsed::Incomplete) => continue,
                                Err(e) => panic!("upstream got a bad PROXY header: {e}"),
                            }
                        }
                    } else {
                        // Health checks connect and close without a byte: not recorded.
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        seen.lock().unwrap().push(Seen::NoHeader);
                    }
                    if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                        return;
                    }
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                let _ = s.shutdown().await;
                                return;
                            }
                            Ok(n) => {
                                if s.write_all(&chunk[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn host_port(&self) -> HostPort {
        HostPort {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }
}

/// Point every listener at 127.0.0.1:0 and the admin endpoint too.
pub fn loopback(cfg: &mut Config) {
    for l in &mut cfg.listener {
        *l.listen.get_mut() = vec![ListenAddr("127.0.0.1:0".parse().unwrap())];
    }
    if cfg.admin.is_some() {
        cfg.admin = Some(ponte_proxy::config::AdminConfig::new(
            "127.0.0.1:0".parse().unwrap(),
        ));
    }
}

/// A relay running in the background.
pub struct Running {
    pub addrs: Vec<(String, Vec<SocketAddr>)>,
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<ponte_proxy::metrics::Metrics>,
    pub reload: ponte_proxy::ReloadHandle,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl Running {
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| a[0])
            .unwrap()
    }
    /// Trigger graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin.unwrap(), path).await
    }
    pub fn metric(&self, needle: &str) -> Option<f64> {
        metric_value(&self.metrics.encode(), needle)
    }
}

/// Value of the first metric line starting with `needle`.
pub fn metric_value(text: &str, needle: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn start(cfg: Config) -> Running {
    let proxy = Proxy::bind(cfg).await.unwrap();
    let addrs = proxy.listener_addrs();
    let admin = proxy.admin_addr();
    let metrics = proxy.metrics();
    let reload = proxy.reload_handle();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    Running {
        addrs,
        admin,
        metrics,
        reload,
        stop: Some(tx),
        task,
    }
}

/// Minimal HTTP/1.0 GET (the admin endpoint is ours; no client dep needed).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (code, body)
}

/// Send `msg` and expect it echoed back.
pub async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(back, msg);
}

/// True when the peer closed (EOF or reset) within 5 s. Bytes before the
/// close (a TLS alert, say) are read and ignored; at most 64 KiB of them.
pub async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for _ in 0..64 {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// True when a new connection is refused: reset during connect (the relay's
/// reset can beat the end of `connect`), or closed right after.
pub async fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Err(_) => true,
        Ok(mut c) => closed(&mut c).await,
    }
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS connect accepting any certificate, with the given SNI.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls_over(tcp, sni).await
}

/// A TLS client configuration that takes any certificate, offering `alpn`.
pub fn any_cert_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

pub async fn tls_over(tcp: TcpStream, sni: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(any_cert_config(&[])));
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

//! A small HTTPS site for the stealth tests: TLS (rustls) with a
//! self-signed certificate for [`DOMAIN`], one page served like nginx
//! serves it, and a handshake/request timeout after which it closes.

use ponte_proxy::config::HostPort;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The name the cover answers to.
pub const DOMAIN: &str = "www.cover.example";
/// How long the cover waits for a TLS handshake or a request.
pub const COVER_TIMEOUT: Duration = Duration::from_millis(1500);
/// The page it serves.
pub const PAGE: &str = "<html>cover page</html>";

/// A small HTTPS site: TLS with a self-signed certificate, one page, and a
/// handshake/request timeout after which it closes.
pub struct Cover {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cover {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cover {
    pub async fn start() -> Cover {
        Self::start_with(COVER_TIMEOUT).await
    }

    pub async fn start_with(timeout: Duration) -> Cover {
        let ck = rcgen::generate_simple_self_signed(vec![DOMAIN.to_owned()]).unwrap();
        let cert = rustls_pki_types::CertificateDer::from(ck.cert.der().to_vec());
        let key = rustls_pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + timeout;
                    let Ok(Ok(mut t)) = tokio::time::timeout_at(deadline, acceptor.accept(s)).await
                    else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                        match tokio::time::timeout_at(deadline, t.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => req.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    );
                    let _ = t.write_all(resp.as_bytes()).await;
                    let _ = t.shutdown().await;
                });
            }
        });
        Cover { addr, task }
    }

    pub fn host_port(&self) -> HostPort {
        HostPort {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }
    }
}

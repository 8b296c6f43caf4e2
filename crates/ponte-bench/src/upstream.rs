//! `ponte-bench upstream`: the server every system under test forwards to.
//!
//! Each connection optionally starts with a PROXY header (listeners given with
//! `--proxy` require one: a relay that forgets it fails the run), then one mode
//! byte chosen by the load generator, then payload:
//!
//! | mode | upstream does |
//! |---|---|
//! | `D` discard | reads to EOF, then writes the payload byte count (u64 BE) and closes |
//! | `E` echo | writes back every byte until EOF |
//! | `C` connect | reads 1 byte, writes it back, closes first (TIME_WAIT lands here) |
//! | `H` hold | writes `h` (so the client knows the path is up), then reads to EOF |
//!
//! The process exits when its standard input reaches EOF, so it never
//! outlives the harness that started it.

use crate::proxy_header::{self, HeaderStatus};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Time a peer gets to send the PROXY header and the mode byte.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer for the discard and echo modes.
const BULK_BUF: usize = 64 * 1024;

/// Arguments of `ponte-bench upstream`.
#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// Plain listener, no PROXY header expected (the `direct` system).
    #[arg(long)]
    pub plain: Vec<SocketAddr>,
    /// Plain listener that requires a PROXY v1/v2 header (what relays forward to).
    #[arg(long)]
    pub proxy: Vec<SocketAddr>,
    /// TLS listener, no PROXY header (the `direct` system's TLS path).
    #[arg(long)]
    pub tls: Vec<SocketAddr>,
    /// DER certificate for `--tls`.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// DER PKCS#8 key for `--tls`.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Binds a listener with a deep backlog (connection-rate and idle tests open
/// thousands of connections in bursts).
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    sock.listen(4096)?;
    Ok(TcpListener::from_std(sock.into())?)
}

/// Runs the upstream until standard input closes.
pub fn run(args: UpstreamArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let acceptor = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => {
                let cfg = crate::tls::server_config(std::fs::read(c)?, std::fs::read(k)?)?;
                Some(TlsAcceptor::from(cfg))
            }
            _ if !args.tls.is_empty() => bail!("--tls needs --cert and --key"),
            _ => None,
        };
        for addr in &args.plain {
            tokio::spawn(accept_loop(bind(*addr)?, false, None));
        }
        for addr in &args.proxy {
            tokio::spawn(accept_loop(bind(*addr)?, true, None));
        }
        for addr in &args.tls {
            tokio::spawn(accept_loop(bind(*addr)?, false, acceptor.clone()));
        }
        // Exit when the harness goes away (or closes our stdin on purpose).
        let mut stdin = tokio::io::stdin();
        let mut sink = [0u8; 64];
        while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
        Ok(())
    })
}

pub(crate) async fn accept_loop(listener: TcpListener, want_proxy: bool, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of fds or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acc) => match tokio::time::timeout(PREAMBLE_TIMEOUT, acc.accept(stream)).await
                {
                    Ok(Ok(s)) => serve(s, want_proxy).await,
                    _ => Ok(()),
                },
                None => serve(stream, want_proxy).await,
            };
            if let Err(e) = result {
                eprintln!("ponte-bench upstream: connection error: {e:#}");
            }
        });
    }
}

/// Reads the optional PROXY header and the mode byte; returns the mode and
/// any payload bytes that arrived with them.
async fn preamble<S: AsyncRead + Unpin>(
    s: &mut S,
    want_proxy: bool,
) -> Result<Option<(u8, Vec<u8>)>> {
    let mut buf = [0u8; proxy_header::MAX_HEADER_LEN + 64];
    let mut filled = 0;
    let mut start = 0;
    if want_proxy {
        loop {
            match proxy_header::parse(&buf[..filled]) {
                HeaderStatus::Complete { len, .. } => {
                    start = len;
                    break;
                }
                HeaderStatus::Invalid => bail!("connection did not start with a PROXY header"),
                HeaderStatus::Incomplete => {
                    let n = s.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        // Readiness probes and health checks: nothing to do.
                        return Ok(None);
                    }
                    filled += n;
                }
            }
        }
    }
    while filled <= start {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
    }
    Ok(Some((buf[start], buf[start + 1..filled].to_vec())))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, want_proxy: bool) -> Result<()> {
    let Some((mode, early)) = tokio::time::timeout(PREAMBLE_TIMEOUT, preamble(&mut s, want_proxy))
        .await
        .context("preamble timed out")??
    else {
        return Ok(());
    };
    match mode {
        b'D' => {
            let mut count = early.len() as u64;
            let mut buf = vec![0u8; BULK_BUF];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                count += n as u64;
            }
            s.write_all(&count.to_be_bytes()).await?;
            s.shutdown().await?;
        }
        b'E' => {
            if !early.is_empty() {
                s.write_all(&early).await?;
            }
            let mut buf = vec![0u8; BULK_BUF];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await?;
            }
            s.shutdown().await?;
        }
        b'C' => {
            let byte = match early.first() {
                Some(b) => *b,
                None => {
                    let mut one = [0u8; 1];
                    s.read_exact(&mut one).await?;
                    one[0]
                }
            };
            s.write_all(&[byte]).await?;
            s.shutdown().await?;
        }
        b'H' => {
            s.write_all(b"h").await?;
            let mut buf = [0u8; 64];
            while s.read(&mut buf).await? > 0 {}
        }
        other => bail!("unknown mode byte {other:#04x}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpStream;

    async fn start(want_proxy: bool) -> SocketAddr {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(accept_loop(l, want_proxy, None));
        addr
    }

    #[tokio::test]
    async fn discard_counts_payload_after_proxy_header() {
        let addr = start(true).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nDhello")
            .await
            .unwrap();
        s.write_all(&[0u8; 1000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut count = [0u8; 8];
        s.read_exact(&mut count).await.unwrap();
        assert_eq!(u64::from_be_bytes(count), 1005);
    }

    #[tokio::test]
    async fn echo_and_connect_modes_without_header() {
        let addr = start(false).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"Eping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");

        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"Cx").await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"x");
    }

    #[tokio::test]
    async fn missing_proxy_header_is_refused() {
        let addr = start(true).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"Eping").await.unwrap();
        let mut rest = Vec::new();
        // The upstream drops the connection without echoing anything.
        let _ = s.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn hold_acknowledges_then_waits() {
        let addr = start(true).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PROXY UNKNOWN\r\nH").await.unwrap();
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"h");
    }
}

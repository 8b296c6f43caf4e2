//! The life of one accepted connection: limits, PROXY header in, TLS or
//! the stealth opening, upstream connect, PROXY header out, then the data
//! path (`relay`).

use super::*;

/// Close at once with a reset: the client learns immediately, and the
/// socket does not linger in TIME_WAIT on our side.
pub(super) fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Read an inbound PROXY header. Returns it and any payload bytes read past it.
async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<(ProxyHeader, Vec<u8>), HandshakeFailure> {
    let mut reader = HeaderReader::required();
    // Each round brings at least one byte or ends: the reader caps the total.
    loop {
        let n = stream
            .read(reader.unfilled())
            .await
            .map_err(|_| HandshakeFailure::Closed)?;
        match reader.advance(n) {
            Ok(Step::NeedMore) => {}
            Ok(Step::Done(Received {
                header: Some(header),
                rest,
            })) => return Ok((header, rest)),
            Err(ReadError::Closed) => return Err(HandshakeFailure::Closed),
            Ok(Step::Done(_)) | Err(_) => return Err(HandshakeFailure::Invalid),
        }
    }
}

/// A client after its handshakes.
enum Client {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>),
    Stealth(
        Box<crate::stealth::stream::RecordStream<TcpStream>>,
        crate::stealth::Connection,
    ),
}

/// The task of one connection. The handshakes run in their own heap
/// allocation, freed before the data path starts: an established connection
/// keeps only the relay state (async fn arguments would stay in the task for
/// its whole life, hence the split).
pub(super) fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    l: Arc<ListenerShared>,
    shared: Arc<Shared>,
    permit: crate::limits::Permit,
) -> impl Future<Output = ()> + Send {
    let open = OpenGuard::new(&l.metrics.handshaking);
    let setup = Box::pin(setup(
        stream,
        peer,
        Arc::clone(&l),
        Arc::clone(&shared),
        permit,
    ));
    established(setup, l, shared, open)
}

type Setup =
    Pin<Box<dyn Future<Output = (crate::limits::Permit, Option<(Client, TcpStream)>)> + Send>>;

/// Counts a connection in a gauge until dropped (also when its task
/// panics): first as handshaking, then as open once it relays.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl OpenGuard {
    fn new(g: &prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        OpenGuard(g.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn established(
    setup: Setup,
    l: Arc<ListenerShared>,
    shared: Arc<Shared>,
    mut open: OpenGuard,
) {
    let (permit, ready) = setup.await;
    if let Some((client, up)) = ready {
        // Users connected now are the ones relaying, not handshakes that
        // may never finish.
        open = OpenGuard::new(&l.metrics.open);
        l.metrics.relayed.inc();
        let out = match client {
            Client::Plain(c) => relay::relay_tcp(c, up, &shared.relay, &l.counters).await,
            Client::Tls(t) => relay::relay_stream(t, up, &shared.relay, &l.counters).await,
            Client::Stealth(s, conn) => {
                // Boxed: only stealth connections pay for the revocation wait.
                Box::pin(async {
                    tokio::select! {
                        out = relay::relay_stream(s, up, &shared.relay, &l.counters) => out,
                        _ = conn.revoked() => Outcome::Finished,
                    }
                })
                .await
            }
        };
        match out {
            Outcome::IdleTimeout => {
                l.metrics.idle_timeouts.inc();
            }
            Outcome::Error(e) => tracing::trace!("connection ended: {e}"),
            _ => {}
        }
    }
    drop(open);
    drop(permit);
}

/// PROXY header in, TLS, upstream connect, PROXY header out.
async fn setup(
    stream: TcpStream,
    peer: SocketAddr,
    l: Arc<ListenerShared>,
    shared: Arc<Shared>,
    mut permit: crate::limits::Permit,
) -> (crate::limits::Permit, Option<(Client, TcpStream)>) {
    let ready = handshakes(stream, peer, &l, &shared, &mut permit).await;
    (permit, ready)
}

async fn handshakes(
    mut stream: TcpStream,
    peer: SocketAddr,
    l: &ListenerShared,
    shared: &Shared,
    permit: &mut crate::limits::Permit,
) -> Option<(Client, TcpStream)> {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + shared.handshake;
    let local = stream.local_addr().unwrap_or(peer);
    let (mut source, mut destination) = (peer, local);
    let mut early = Vec::new();
    if l.accept_proxy {
        match timeout_at(deadline, read_proxy_header(&mut stream)).await {
            Ok(Ok((header, rest))) => {
                if let Some((s, d)) = header
                    .addresses
                    .tcp()
                    .filter(|_| header.tcp_source().is_some())
                {
                    source = s;
                    destination = d;
                }
                early = rest;
            }
            Ok(Err(kind)) => {
                l.metrics.proxy_failed(kind);
                return None;
            }
            Err(_) => {
                l.metrics.proxy_failed(HandshakeFailure::Timeout);
                return None;
            }
        }
        if let Err(r) = shared.limits.admit_source(permit, source.ip()) {
            l.metrics.refuse(r);
            reset(stream);
            return None;
        }
        if shared.log_addresses {
            tracing::debug!(client = %source, "PROXY header");
        }
    }
    let mut header = Vec::new();
    match l.upstream.send_proxy {
        SendProxy::None => {}
        SendProxy::V1 => proxy_header::encode_v1(source, destination, &mut header),
        SendProxy::V2 => proxy_header::encode_v2(source, destination, &mut header),
    }
    if let Some(st) = &l.stealth {
        return match st.accept(stream, early, deadline).await {
            Accepted::Genuine(s, conn) => {
                let mut up = connect(l).await?;
                if !header.is_empty() && up.write_all(&header).await.is_err() {
                    return None;
                }
                Some((Client::Stealth(s, conn), up))
            }
            Accepted::Cover(client, cover) => Some((Client::Plain(client), cover)),
            Accepted::Closed => None,
        };
    }
    let client = match &l.tls {
        None => {
            header.extend_from_slice(&early);
            Client::Plain(stream)
        }
        Some(acceptor) => {
            let inner = Prefixed {
                prefix: early,
                pos: 0,
                inner: stream,
            };
            match timeout_at(deadline, acceptor.accept(inner)).await {
                Ok(Ok(Some(t))) => Client::Tls(Box::new(t)),
                // An ACME validation, answered.
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    let kind = match e.kind() {
                        io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                        _ => HandshakeFailure::Invalid,
                    };
                    l.metrics.tls_failed(kind);
                    return None;
                }
                Err(_) => {
                    l.metrics.tls_failed(HandshakeFailure::Timeout);
                    return None;
                }
            }
        }
    };
    let mut up = connect(l).await?;
    if !header.is_empty() && up.write_all(&header).await.is_err() {
        return None;
    }
    Some((client, up))
}

async fn connect(l: &ListenerShared) -> Option<TcpStream> {
    match l.upstream.connect().await {
        Ok(s) => Some(s),
        Err(e) => {
            l.metrics.refuse(Refusal::UpstreamUnavailable);
            tracing::debug!("{e}");
            None
        }
    }
}

/// A stream that first yields bytes already read (after a PROXY header).
#[derive(Debug)]
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

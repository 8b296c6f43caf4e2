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
    if let Some((names, media)) = &l.passthrough {
        match timeout_at(deadline, read_first_record(&mut stream, &mut early)).await {
            Ok(true) => {}
            // Closed, or the deadline: nothing to relay.
            _ => {
                l.metrics.tls_failed(HandshakeFailure::Timeout);
                return None;
            }
        }
        let name = ponte_wire::stealth::hello::parse(&early)
            .ok()
            .and_then(|h| h.server_name.map(str::to_owned));
        if name.is_some_and(|n| names.matches(&n)) {
            // Not ours: the bytes read so far, then everything, untouched.
            let mut up = match media.connect().await {
                Ok(s) => s,
                Err(e) => {
                    l.metrics.refuse(Refusal::UpstreamUnavailable);
                    tracing::debug!("{e}");
                    return None;
                }
            };
            let mut first = Vec::new();
            match media.send_proxy {
                SendProxy::None => {}
                SendProxy::V1 => proxy_header::encode_v1(source, destination, &mut first),
                SendProxy::V2 => proxy_header::encode_v2(source, destination, &mut first),
            }
            first.extend_from_slice(&early);
            if up.write_all(&first).await.is_err() {
                return None;
            }
            return Some((Client::Plain(stream), up));
        }
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

/// Reads until `buf` holds the whole first TLS record (a ClientHello fits
/// in one: at most 16 KiB), or shows it is not one. `false` when the client
/// closed first.
async fn read_first_record(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    use ponte_wire::stealth::hello::{peek, Peek, MAX_HELLO_RECORD, RECORD_HEADER_LEN};
    let cap = RECORD_HEADER_LEN + MAX_HELLO_RECORD;
    // Each round reads at least one byte or ends; the record is capped.
    loop {
        let want = match peek(buf) {
            Peek::NotHello => return true,
            Peek::Record(n) if buf.len() >= n => return true,
            Peek::Record(n) | Peek::NeedMore(n) => n.min(cap).saturating_sub(buf.len()).max(1),
        };
        let start = buf.len();
        buf.resize(start + want, 0);
        match stream.read(&mut buf[start..]).await {
            Ok(n) if n > 0 => buf.truncate(start + n),
            _ => {
                buf.truncate(start);
                return false;
            }
        }
    }
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

//! A byte stream carried in TLS application-data records, over any tokio
//! stream (feature `io`): reads unwrap them ([`Deframer`]), writes wrap each
//! write in one record of at most [`MAX_WRITE_PAYLOAD`] bytes. The relay's
//! data path and the client's Noise channel run on it like on any other
//! stream. It does no I/O of its own: it only adapts the stream it is given.

use super::record::{app_data_header, Deframer, MAX_WRITE_PAYLOAD};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read buffer: one full record and its header.
const READ_BUF: usize = 5 + super::record::MAX_RECORD_PAYLOAD;

/// A stream of application-data records over `S`.
#[derive(Debug)]
pub struct RecordStream<S> {
    inner: S,
    deframer: Deframer,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<S> RecordStream<S> {
    /// Wraps `inner`; `early` holds bytes already read from it (records).
    pub fn new(inner: S, early: Vec<u8>) -> Self {
        RecordStream {
            inner,
            deframer: Deframer::new(),
            rbuf: early,
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<S: AsyncWrite + Unpin> RecordStream<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 2 * 1024 {
            // An idle connection keeps no large buffer.
            self.wbuf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Each round takes buffered bytes or reads more; a read of 0 ends.
        loop {
            let mut produced = false;
            while me.rpos < me.rbuf.len() && out.remaining() > 0 {
                let end = me.rbuf.len().min(me.rpos + out.remaining());
                let input = &me.rbuf[me.rpos..end];
                let (n, payload) = me.deframer.step(input).map_err(invalid)?;
                if let Some(r) = payload {
                    out.put_slice(&input[r]);
                    produced = true;
                }
                me.rpos += n;
            }
            if me.rpos >= me.rbuf.len() {
                me.rbuf.clear();
                me.rpos = 0;
            }
            if produced {
                if me.rbuf.is_empty() && me.rbuf.capacity() > 2 * 1024 {
                    me.rbuf = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if me.rbuf.capacity() < READ_BUF {
                me.rbuf.reserve_exact(READ_BUF - me.rbuf.len());
            }
            let start = me.rbuf.len();
            me.rbuf.resize(READ_BUF, 0);
            let mut rb = ReadBuf::new(&mut me.rbuf[start..]);
            let polled = Pin::new(&mut me.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            me.rbuf.truncate(start + n);
            match polled {
                Poll::Pending => {
                    if me.rbuf.is_empty() {
                        me.rbuf = Vec::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if n == 0 => {
                    me.rbuf = Vec::new();
                    return if me.deframer.at_boundary() {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                    };
                }
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(MAX_WRITE_PAYLOAD);
        me.wbuf.extend_from_slice(&app_data_header(n));
        me.wbuf.extend_from_slice(&data[..n]);
        // The bytes are taken; a pending drain finishes on the next call.
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

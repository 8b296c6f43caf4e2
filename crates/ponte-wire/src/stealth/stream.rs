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
///
/// Reads go through one buffer of a full record, allocated (zeroed by the
/// allocator) when a read starts and freed when the stream has nothing
/// buffered and would wait: an idle connection holds no buffer. Writes go
/// out as one vectored write of the header and the caller's bytes; only
/// what the socket does not take at once is copied, and written first on
/// the next call.
#[derive(Debug)]
pub struct RecordStream<S> {
    inner: S,
    deframer: Deframer,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<S> RecordStream<S> {
    /// Wraps `inner`; `early` holds bytes already read from it (records).
    pub fn new(inner: S, early: Vec<u8>) -> Self {
        let rlen = early.len();
        RecordStream {
            inner,
            deframer: Deframer::new(),
            rbuf: early,
            rpos: 0,
            rlen,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
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
        self.wpos = 0;
        if self.wbuf.capacity() > 2 * 1024 {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.clear();
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
            while me.rpos < me.rlen && out.remaining() > 0 {
                let end = me.rlen.min(me.rpos + out.remaining());
                let input = &me.rbuf[me.rpos..end];
                let (n, payload) = me.deframer.step(input).map_err(invalid)?;
                if let Some(r) = payload {
                    out.put_slice(&input[r]);
                    produced = true;
                }
                me.rpos += n;
            }
            if me.rpos >= me.rlen {
                me.rpos = 0;
                me.rlen = 0;
            }
            if produced {
                return Poll::Ready(Ok(()));
            }
            if me.rbuf.len() < READ_BUF {
                // Fresh (or the early bytes, all taken): a zeroed buffer.
                me.rbuf = vec![0u8; READ_BUF];
            }
            let mut rb = ReadBuf::new(&mut me.rbuf[me.rlen..]);
            let polled = Pin::new(&mut me.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            me.rlen += n;
            match polled {
                Poll::Pending => {
                    if me.rlen == 0 {
                        // Idle: no buffer while waiting.
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
        let header = app_data_header(n);
        let parts = [io::IoSlice::new(&header), io::IoSlice::new(&data[..n])];
        let wrote = ready!(Pin::new(&mut me.inner).poll_write_vectored(cx, &parts))?;
        if wrote == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        // The record is taken whole: what the socket did not take now goes
        // out first on the next call.
        if wrote < header.len() {
            me.wbuf.extend_from_slice(&header[wrote..]);
            me.wbuf.extend_from_slice(&data[..n]);
        } else if wrote < header.len() + n {
            me.wbuf.extend_from_slice(&data[wrote - header.len()..n]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Bytes written through one record stream come out of another in the
    /// same order, across partial socket writes and reads (a small duplex
    /// pipe forces both).
    #[tokio::test]
    async fn round_trip_through_a_small_pipe() {
        let (a, b) = tokio::io::duplex(1000);
        let mut w = RecordStream::new(a, Vec::new());
        let mut r = RecordStream::new(b, Vec::new());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(40_000) {
                w.write_all(chunk).await.expect("write");
            }
            w.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn truncated_record_is_an_error() {
        let mut wire = Vec::new();
        super::super::record::frame(b"hello", &mut wire);
        wire.truncate(wire.len() - 1);
        let mut r = RecordStream::new(&wire[..], Vec::new());
        let mut got = Vec::new();
        let e = r.read_to_end(&mut got).await.err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::UnexpectedEof));
    }
}

//! The opening of a stealth relay route: to the network, a browser starting
//! HTTPS with the relay's cover site; to the relay, proof of the link's
//! secret.
//!
//! [`open`] sends a ClientHello shaped like current Chrome's
//! ([`ponte_wire::stealth::template::CHROME`]) with the cover's name as its
//! TLS server name and the link's tag in its session id, reads the relay's
//! first flight and checks its tag, sends the ChangeCipherSpec a TLS 1.3
//! client sends, and returns the stream inside application-data records, on
//! which the Noise handshake then runs as on any route. A reply whose tag is
//! wrong means that whoever answered does not hold the link's secret (the
//! cover site itself, another server, or an interceptor): the route fails
//! with [`AuthError`], which the client treats as a security failure and
//! does not fall back past ([`crate::route::is_security_error`]).

use ponte_wire::link::StealthParams;
use ponte_wire::stealth::record::{CHANGE_CIPHER_SPEC, MAX_RECORD_PAYLOAD};
use ponte_wire::stealth::stream::RecordStream;
use ponte_wire::stealth::{reply, tag, template};
use rand::RngCore as _;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest server flight read: three records of the largest size.
const MAX_FLIGHT: usize = 3 * (5 + MAX_RECORD_PAYLOAD);

/// The relay's reply does not prove the link's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the stealth relay did not prove the link's secret (another server answers at that \
     address, or the connection is intercepted)"
)]
pub struct AuthError;

/// Whether `e` is an [`AuthError`] from [`open`].
pub fn is_auth_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<AuthError>())
}

fn auth_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, AuthError)
}

/// The first flight for `params` at `unix_time`, and its session id.
fn hello(params: &StealthParams, unix_time: u64) -> io::Result<(Vec<u8>, [u8; 32])> {
    let mut rng = rand::thread_rng();
    let mut rec = template::build(&template::CHROME, &params.sni, &mut |b: &mut [u8]| {
        rng.fill_bytes(b)
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tag::seal(&mut rec, &params.secret, unix_time)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let at = template::SESSION_ID_OFFSET;
    let mut sid = [0u8; 32];
    sid.copy_from_slice(&rec[at..at + 32]);
    Ok((rec, sid))
}

/// Opens the stealth layer on `stream` (see the module docs).
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    params: &StealthParams,
) -> io::Result<RecordStream<S>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (first, sid) = hello(params, now)?;
    stream.write_all(&first).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 4096];
    // Each round reads at least one byte or ends; the flight is capped.
    let n = loop {
        match reply::flight_len(&buf) {
            Ok(Some(n)) => break n,
            Ok(None) if buf.len() < MAX_FLIGHT => {}
            _ => return Err(auth_error()),
        }
        let got = stream.read(&mut chunk).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..got]);
    };
    reply::verify(&buf[..n], &sid, &params.secret).map_err(|_| auth_error())?;
    stream.write_all(&CHANGE_CIPHER_SPEC).await?;
    Ok(RecordStream::new(stream, buf.split_off(n)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ponte_wire::stealth::{hello as parse, Secret};

    fn params() -> StealthParams {
        StealthParams {
            secret: Secret::from_bytes([3; 16]),
            sni: "www.cover.example".into(),
        }
    }

    #[test]
    fn hello_carries_the_cover_name_and_a_valid_tag() {
        let p = params();
        let (rec, sid) = hello(&p, 1_800_000_000).unwrap();
        let h = parse::parse(&rec).unwrap();
        assert_eq!(h.server_name, Some("www.cover.example"));
        assert_eq!(h.session_id, sid);
        assert!(tag::verify(&h, [&p.secret], 1_800_000_010).is_ok());
    }

    /// A relay that answers with a flight tagged under another secret fails
    /// authentication; one that answers correctly gives a working stream.
    #[tokio::test]
    async fn server_tag_is_checked() {
        for (server_secret, ok) in [([3u8; 16], true), ([4u8; 16], false)] {
            let (client, mut server) = tokio::io::duplex(64 * 1024);
            let relay = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                let total = loop {
                    let n = server.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                    if let parse::Peek::Record(t) = parse::peek(&got) {
                        if got.len() >= t {
                            break t;
                        }
                    }
                };
                let h = parse::parse(&got[..total]).unwrap();
                let sid: [u8; 32] = h.session_id.try_into().unwrap();
                let flight = {
                    let mut rng = rand::thread_rng();
                    reply::build(
                        &reply::TLS13_SERVER,
                        &sid,
                        &Secret::from_bytes(server_secret),
                        &mut |b: &mut [u8]| rng.fill_bytes(b),
                    )
                };
                server.write_all(&flight).await.unwrap();
                let mut rs = RecordStream::new(server, Vec::new());
                let mut ping = [0u8; 4];
                if rs.read_exact(&mut ping).await.is_ok() {
                    rs.write_all(&ping).await.unwrap();
                    rs.flush().await.unwrap();
                }
            });
            let r = open(client, &params()).await;
            if ok {
                let mut s = r.unwrap();
                s.write_all(b"ping").await.unwrap();
                s.flush().await.unwrap();
                let mut back = [0u8; 4];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(&back, b"ping");
            } else {
                let e = r.err().unwrap();
                assert!(is_auth_error(&e), "{e}");
            }
            drop(relay);
        }
    }
}

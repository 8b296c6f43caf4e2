//! Routes: how the client's bytes reach a Ponte server.
//!
//! A [`Route`] opens a byte stream ([`RouteStream`]: `AsyncRead + AsyncWrite`)
//! towards the server; the Noise channel runs inside it and authenticates the
//! server end to end, so a route needs no trust. Today there is one route,
//! [`DirectRoute`] (plain TCP to the server's own address). Relays
//! (`tcp://` and `tls://` through `ponte proxy`) are further `Route`
//! implementations; [`connect_any`] tries a list of routes and is where
//! racing them (happy eyeballs) belongs.

use crate::{ClientError, Result};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to the server.
pub trait RouteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RouteStream for T {}

/// A boxed stream, as routes return it.
pub type BoxStream = Box<dyn RouteStream>;

/// A boxed future, as routes return it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One way to reach the server.
pub trait Route: std::fmt::Debug + Send + Sync {
    /// Open a stream; the caller applies the overall timeout.
    fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxStream>>;
    /// A short description for messages (no secrets; host and port only).
    fn describe(&self) -> String;
}

/// Plain TCP straight to the server.
#[derive(Debug, Clone)]
pub struct DirectRoute {
    /// `host:port` (IPv6 bracketed).
    pub target: String,
}

impl Route for DirectRoute {
    fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&self.target).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn describe(&self) -> String {
        format!("direct tcp {}", self.target)
    }
}

/// Try each route in order, each bounded by `timeout`; the first stream
/// wins. (With several routes, a later version starts the next attempt
/// after a short head start instead of waiting: happy eyeballs.)
pub async fn connect_any(routes: &[Box<dyn Route>], timeout: Duration) -> Result<BoxStream> {
    let mut errors = Vec::new();
    for route in routes {
        match tokio::time::timeout(timeout, route.connect()).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => errors.push(format!("{}: {e}", route.describe())),
            Err(_) => errors.push(format!("{}: timed out after {timeout:?}", route.describe())),
        }
    }
    if errors.is_empty() {
        errors.push("no route configured".into());
    }
    Err(ClientError::Unreachable(errors.join("; ")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn direct_route_connects_and_falls_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // A port with nothing listening: bind, note, close.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let routes: Vec<Box<dyn Route>> = vec![
            Box::new(DirectRoute {
                target: dead_addr.to_string(),
            }),
            Box::new(DirectRoute {
                target: good.to_string(),
            }),
        ];
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let mut stream = connect_any(&routes, Duration::from_secs(5)).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(&accept.await.unwrap(), b"ping");

        let only_dead: Vec<Box<dyn Route>> = vec![Box::new(DirectRoute {
            target: dead_addr.to_string(),
        })];
        let err = connect_any(&only_dead, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Unreachable(ref m) if m.contains("direct tcp")),
            "{err}"
        );
    }
}

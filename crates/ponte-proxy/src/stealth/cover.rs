//! The cover: the real HTTPS site every connection that does not prove a
//! link's secret is handed to.
//!
//! The relay connects to the cover as soon as it accepts a connection, while
//! it reads the first flight, so the cover's own timers start when the
//! client's connection did. Whatever the client sent before the decision is
//! written to the cover first; the data path then passes every byte both
//! ways until either side closes, as for any relayed connection. The relay
//! itself never writes a byte of its own to a probe.

use crate::config::HostPort;
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Connects to the cover within `timeout`.
pub async fn connect(cover: &HostPort, timeout: Duration) -> io::Result<TcpStream> {
    let target = (cover.host.as_str(), cover.port);
    let s = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Writes the bytes already read from the client to the cover.
pub async fn replay_prefix(cover: &mut TcpStream, prefix: &[u8]) -> io::Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    cover.write_all(prefix).await
}

//! One HTTP/1.1 request over a fresh loopback connection (hyper's client),
//! for the app's API and for ChromeDriver.

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// How long one request may take before the benchmark gives up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// `method path` to `host` (`IP:PORT`, also the `Host` header) with these
/// headers and an optional JSON body; the status and the body.
pub async fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<String>,
) -> Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if json.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(json.unwrap_or_default())))?;
    let answer = async {
        let res = sender.send_request(req).await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let out = tokio::time::timeout(TIMEOUT, answer)
        .await
        .with_context(|| format!("{method} {host}{path}: no answer within {TIMEOUT:?}"))?;
    driver.abort();
    out
}

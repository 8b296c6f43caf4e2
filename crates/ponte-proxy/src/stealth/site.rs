//! The builtin cover site (`cover = "builtin"`): a small static HTTPS site
//! the relay serves itself, for a volunteer with a domain and no website.
//!
//! It listens on a loopback port of its own, and the stealth listener hands
//! probes to it exactly as it hands them to an outside cover (the same
//! byte-for-byte relay), so what a prober meets is a real TLS server: the
//! certificate is the ACME one for the domain when `[acme]` is configured
//! ([`crate::acme`], which also answers the CA's TLS-ALPN-01 validation
//! here), else a self-signed one for the domain. HTTP/1.1 (hyper), `GET`
//! and `HEAD` only: files under the `site` folder (`/` and any path ending
//! in `/` serve `index.html`), or, without a folder, one plain page. No
//! `Server` header, no directory listings, nothing outside the folder
//! (`..` is refused and symbolic links that lead out are not followed),
//! files up to 16 MiB.

use crate::tls::Acceptor;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest file served.
pub const MAX_FILE: u64 = 16 << 20;

/// How long a connection may take for its TLS handshake and for each
/// request's headers.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the site serves.
#[derive(Debug)]
pub struct Site {
    domain: String,
    root: Option<PathBuf>,
}

fn page(status: StatusCode, mime: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(mime));
    r
}

fn not_found() -> Response<Full<Bytes>> {
    page(
        StatusCode::NOT_FOUND,
        "text/html; charset=utf-8",
        Bytes::from_static(
            b"<!doctype html>\n<html><head><title>404 Not Found</title></head>\n\
              <body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n",
        ),
    )
}

/// `%XX` escapes decoded; `None` when one is malformed or the result is not
/// UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file a request path names under the root, as a relative path:
/// `None` for anything that could step outside it.
fn relative(path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let mut rel = PathBuf::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.contains('\\') || s.contains('\0') => return None,
            s => rel.push(s),
        }
    }
    if decoded.ends_with('/') || rel.as_os_str().is_empty() {
        rel.push("index.html");
    }
    Some(rel)
}

fn mime(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

impl Site {
    /// A site for `domain`, serving the files under `root` (or one plain
    /// page when `None`).
    pub fn new(domain: &str, root: Option<PathBuf>) -> Site {
        Site {
            domain: domain.to_owned(),
            root,
        }
    }

    fn default_page(&self) -> Response<Full<Bytes>> {
        let d = &self.domain;
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{d}</title></head>\n\
             <body><h1>{d}</h1><p>This site is being set up.</p></body></html>\n"
        );
        page(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(body),
        )
    }

    /// The answer to one request.
    pub async fn respond<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = page(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"Method Not Allowed\n"),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let Some(rel) = relative(req.uri().path()) else {
            return not_found();
        };
        let Some(root) = &self.root else {
            return if rel == Path::new("index.html") {
                self.default_page()
            } else {
                not_found()
            };
        };
        match read_under(root, &rel).await {
            Some(bytes) => page(StatusCode::OK, mime(&rel), Bytes::from(bytes)),
            None => not_found(),
        }
    }
}

/// The bytes of `root/rel` when it is a file of at most [`MAX_FILE`] bytes
/// that really lies under `root` (symbolic links resolved).
async fn read_under(root: &Path, rel: &Path) -> Option<Vec<u8>> {
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let file = tokio::fs::canonicalize(root.join(rel)).await.ok()?;
    if !file.starts_with(&root) {
        return None;
    }
    let meta = tokio::fs::metadata(&file).await.ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return None;
    }
    tokio::fs::read(&file).await.ok()
}

/// Serves the site on `listener` with TLS from `acceptor` until `stop`.
pub async fn serve(
    listener: TcpListener,
    acceptor: Acceptor,
    site: Arc<Site>,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!("builtin cover site: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, site, stop) = (acceptor.clone(), Arc::clone(&site), stop.clone());
        conns.spawn(async move {
            let tls = match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(Some(t))) => t,
                _ => return,
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let site = Arc::clone(&site);
                async move { Ok::<_, Infallible>(site.respond(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn paths_stay_under_the_root() {
        assert_eq!(relative("/"), Some(PathBuf::from("index.html")));
        assert_eq!(relative("/a/b.css"), Some(PathBuf::from("a/b.css")));
        assert_eq!(relative("/a/"), Some(PathBuf::from("a/index.html")));
        assert_eq!(relative("/a%20b.txt"), Some(PathBuf::from("a b.txt")));
        assert_eq!(relative("/../etc/passwd"), None);
        assert_eq!(relative("/a/%2e%2e/%2e%2e/x"), None);
        assert_eq!(relative("/a%5c..%5cx"), None);
        assert_eq!(relative("/%zz"), None);
        assert_eq!(relative("/%00"), None);
    }

    #[tokio::test]
    async fn serves_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("css")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("css/a.css"), "body{}").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("link.txt")).unwrap();
        let site = Site::new("www.example.org", Some(root));

        let r = site.respond(get("/")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let r = site.respond(get("/css/a.css")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/css; charset=utf-8");
        for p in ["/nope.html", "/../outside.txt", "/link.txt", "/css"] {
            assert_eq!(
                site.respond(get(p)).await.status(),
                StatusCode::NOT_FOUND,
                "{p}"
            );
        }
        let post = Request::post("/").body(()).unwrap();
        let r = site.respond(post).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");

        let plain = Site::new("www.example.org", None);
        assert_eq!(plain.respond(get("/")).await.status(), StatusCode::OK);
        assert_eq!(
            plain.respond(get("/x")).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}

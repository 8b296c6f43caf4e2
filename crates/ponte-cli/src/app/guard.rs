//! What every request must pass, and what every response carries.
//!
//! Loopback is not a boundary: any page the user visits can send requests
//! to `127.0.0.1`, and a DNS name can be rebound to it. So:
//! - `Host` must be exactly the address the app printed (`127.0.0.1:PORT`):
//!   a rebound name carries its own name and is refused;
//! - every request that is not a plain `GET` must carry `Origin`, equal to
//!   `http://127.0.0.1:PORT` (browsers always send it on `POST`; the live
//!   channel is a `POST` too), and a `Sec-Fetch-Site` other than
//!   `same-origin` is refused wherever a browser sends it;
//! - every `/api/` request must carry the per-launch secret in the
//!   `X-Ponte-Secret` header. The page reads it from the URL fragment
//!   (never sent to the server, so never in a log or a `Referer`), keeps it
//!   in the tab's `sessionStorage` (scoped to this exact origin, port
//!   included, unlike a cookie) and removes it from the address bar. A
//!   custom header cannot be sent cross-origin without a CORS preflight,
//!   which this server never grants: it sends no CORS header at all.
//!
//! Responses: a Content-Security-Policy that allows only this origin's
//! script and style (no inline script, no external origin), `nosniff`,
//! `Referrer-Policy: no-referrer`, no framing, no caching of API answers.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The header that carries the per-launch secret.
pub const SECRET_HEADER: &str = "x-ponte-secret";

/// The policy: this origin's script, style, images (and `blob:` images
/// decrypted locally), fetches to this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob:; connect-src 'self'; font-src 'none'; object-src 'none'; \
     media-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the guard checks against.
#[derive(Debug)]
pub struct Expect {
    /// `127.0.0.1:PORT` as printed.
    pub host: String,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    /// The per-launch secret.
    pub secret: String,
}

/// Why a request was refused.
pub type Refusal = (StatusCode, &'static str);

fn refuse(status: StatusCode, why: &'static str) -> Refusal {
    (status, why)
}

/// Equal in constant time (the secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn one(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&[u8]> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    // Two of them: nothing to trust.
    if all.next().is_some() {
        return Some(b"");
    }
    Some(first.as_bytes())
}

/// Checks a request before any handler sees it.
pub fn check(
    expect: &Expect,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    match one(headers, header::HOST) {
        Some(h) if h == expect.host.as_bytes() => {}
        _ => return Err(refuse(StatusCode::MISDIRECTED_REQUEST, "wrong Host")),
    }
    let plain_get = method == Method::GET || method == Method::HEAD;
    match one(headers, header::ORIGIN) {
        Some(o) if o == expect.origin.as_bytes() => {}
        None if plain_get => {}
        _ => return Err(refuse(StatusCode::FORBIDDEN, "foreign or missing Origin")),
    }
    if let Some(site) = one(headers, "sec-fetch-site") {
        // `none`: the user typed the address or opened it from outside.
        if site != b"same-origin" && !(plain_get && site == b"none") {
            return Err(refuse(StatusCode::FORBIDDEN, "cross-site request"));
        }
    }
    if path.starts_with("/api/") {
        match one(headers, SECRET_HEADER) {
            Some(s) if same(s, expect.secret.as_bytes()) => {}
            _ => {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong secret: open the address `ponte app` printed",
                ))
            }
        }
    } else if !plain_get {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    Ok(())
}

/// Adds the security headers to every response.
pub fn harden(response: &mut Response, api: bool) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // Never any CORS header, whatever a handler set.
    let cors: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for k in cors {
        h.remove(k);
    }
}

/// The middleware: [`check`], then the handler, then [`harden`].
pub async fn layer(
    State(expect): State<Arc<Expect>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let api = path.starts_with("/api/");
    let mut response = match check(&expect, request.method(), &path, request.headers()) {
        Ok(()) => next.run(request).await,
        Err((status, why)) => (status, format!("{why}\n")).into_response(),
    };
    harden(&mut response, api);
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn expect() -> Expect {
        Expect {
            host: "127.0.0.1:8080".into(),
            origin: "http://127.0.0.1:8080".into(),
            secret: "s3cret".into(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(r: Result<(), Refusal>) -> u16 {
        r.map(|()| 200).unwrap_or_else(|e| e.0.as_u16())
    }

    #[test]
    fn only_the_exact_host_origin_and_secret_pass() {
        let e = expect();
        let good = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("x-ponte-secret", "s3cret"),
        ];
        assert_eq!(
            status(check(&e, &Method::POST, "/api/send", &headers(&good))),
            200
        );
        for (what, h, want) in [
            (
                "rebound name",
                vec![("host", "evil.example:8080"), good[1], good[2]],
                421,
            ),
            (
                "localhost",
                vec![("host", "localhost:8080"), good[1], good[2]],
                421,
            ),
            (
                "other port",
                vec![("host", "127.0.0.1:8081"), good[1], good[2]],
                421,
            ),
            ("two hosts", vec![good[0], good[0], good[1], good[2]], 421),
            (
                "foreign origin",
                vec![good[0], ("origin", "http://evil.example"), good[2]],
                403,
            ),
            (
                "null origin",
                vec![good[0], ("origin", "null"), good[2]],
                403,
            ),
            ("no origin", vec![good[0], good[2]], 403),
            ("no secret", vec![good[0], good[1]], 401),
            (
                "wrong secret",
                vec![good[0], good[1], ("x-ponte-secret", "s3creT")],
                401,
            ),
            (
                "cross-site",
                vec![good[0], good[1], good[2], ("sec-fetch-site", "cross-site")],
                403,
            ),
        ] {
            assert_eq!(
                status(check(&e, &Method::POST, "/api/send", &headers(&h))),
                want,
                "{what}"
            );
        }
        // The page itself: GET without Origin or secret, exact Host still.
        assert_eq!(
            status(check(&e, &Method::GET, "/", &headers(&good[..1]))),
            200
        );
        assert_eq!(
            status(check(
                &e,
                &Method::GET,
                "/",
                &headers(&[("host", "evil.example:8080")])
            )),
            421
        );
        // API reads need the secret too.
        assert_eq!(
            status(check(&e, &Method::GET, "/api/chats", &headers(&good[..1]))),
            401
        );
    }

    #[test]
    fn no_cors_header_leaves() {
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        harden(&mut r, true);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert_eq!(r.headers()["content-security-policy"], CSP);
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    }
}

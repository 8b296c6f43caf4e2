//! The admin endpoint (loopback by default): `/` a status page a volunteer
//! can read at a glance, `/metrics` in Prometheus text format, `/healthz`
//! (503 when some listener has no healthy upstream server).
//!
//! The page is self-contained HTML (no scripts, fonts or images from
//! anywhere) and shows only aggregates: never a client address.

use crate::metrics::{ListenerMetrics, Metrics};
use crate::upstream::Upstream;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Every upstream.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Every listener.
    pub listeners: Vec<ListenerView>,
}

/// One listener, as the status page sees it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    /// Name.
    pub name: String,
    /// Its upstream.
    pub upstream: Arc<Upstream>,
    /// Its counters.
    pub metrics: ListenerMetrics,
    /// Its stealth state, for a stealth listener.
    pub stealth: Option<Arc<crate::stealth::StealthListener>>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Arc::new(state))
}

/// Serve until cancelled.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!("admin endpoint stopped: {e}");
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    let down: Vec<&str> = s
        .listeners
        .iter()
        .filter(|l| !l.upstream.is_healthy())
        .map(|l| l.name.as_str())
        .collect();
    if down.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream for: {}\n", down.join(", ")),
        )
            .into_response()
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min {} s", secs % 60)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status(State(s): State<Arc<AdminState>>) -> Html<String> {
    let users: i64 = s.listeners.iter().map(|l| l.metrics.open.get()).sum();
    let handshaking: i64 = s
        .listeners
        .iter()
        .map(|l| l.metrics.handshaking.get())
        .sum();
    let served: u64 = s.listeners.iter().map(|l| l.metrics.relayed.get()).sum();
    let up: u64 = s.listeners.iter().map(|l| l.metrics.bytes_up.get()).sum();
    let down: u64 = s.listeners.iter().map(|l| l.metrics.bytes_down.get()).sum();
    let healthy = s.listeners.iter().all(|l| l.upstream.is_healthy());
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="10"><title>Ponte relay</title>
<style>body{{font:16px/1.4 system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em;color:#222}}
.big{{display:flex;gap:2em;flex-wrap:wrap}}.big div{{font-size:1.6em}}.big small{{display:block;font-size:.55em;color:#666}}
table{{border-collapse:collapse;width:100%;margin:1em 0}}td,th{{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}}
.ok{{color:#17702f}}.bad{{color:#b00020}}</style></head><body>
<h1>Ponte relay <span class="{cls}">{state}</span></h1>
<div class="big"><div>{users}<small>users connected now</small></div>
<div>{handshaking}<small>connecting (in handshake)</small></div>
<div>{uptime}<small>uptime</small></div>
<div>{traffic}<small>relayed ({up} up, {down} down)</small></div>
<div>{served}<small>connections served</small></div></div>
<h2>Upstreams</h2><table><tr><th>upstream</th><th>server</th><th>health</th></tr>"#,
        cls = if healthy { "ok" } else { "bad" },
        state = if healthy {
            "● working"
        } else {
            "● upstream down"
        },
        uptime = human_duration(s.metrics.uptime().as_secs()),
        traffic = human_bytes(up + down),
        up = human_bytes(up),
        down = human_bytes(down),
    );
    for u in &s.upstreams {
        for (server, ok) in u.server_health() {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td>{}</td><td class="{}">{}</td></tr>"#,
                esc(&u.name),
                esc(&server),
                if ok { "ok" } else { "bad" },
                if ok { "healthy" } else { "unreachable" }
            );
        }
    }
    h.push_str("</table><h2>Listeners</h2><table><tr><th>listener</th><th>open</th><th>in handshake</th><th>served</th><th>accepted</th><th>traffic</th></tr>");
    for l in &s.listeners {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.name),
            l.metrics.open.get(),
            l.metrics.handshaking.get(),
            l.metrics.relayed.get(),
            l.metrics.total.get(),
            human_bytes(l.metrics.bytes_up.get() + l.metrics.bytes_down.get())
        );
    }
    if s.listeners.iter().any(|l| l.stealth.is_some()) {
        h.push_str("</table><h2>Links</h2><table><tr><th>listener</th><th>link</th><th>open</th><th>total</th></tr>");
        for l in &s.listeners {
            let Some(st) = &l.stealth else { continue };
            for (label, open, total) in st.links() {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{open}</td><td>{total}</td></tr>",
                    esc(&l.name),
                    esc(&label),
                );
            }
        }
    }
    h.push_str("</table><p><a href=\"/metrics\">Prometheus metrics</a> · <a href=\"/healthz\">health</a></p></body></html>\n");
    Html(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_duration(59), "0 min 59 s");
        assert_eq!(human_duration(3 * 86400 + 7200), "3 d 2 h");
        assert_eq!(esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}

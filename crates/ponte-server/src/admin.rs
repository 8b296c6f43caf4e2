//! The admin endpoint (loopback by default): `/metrics` in Prometheus text
//! format and `/healthz` (200 `ok` while the database answers and takes
//! writes, else 503).

use crate::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    if s.store.stats().failed.get() != 0 {
        // Reads still work, but no message can be made durable.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage failed (a flush to disk failed); restart the server\n",
        )
            .into_response();
    }
    if s.store.stats().commit_failing.get() != 0 {
        // Sends are refused with "try again later" until a commit succeeds;
        // a full disk is the usual cause.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the latest commit failed (is the disk full?); sends are refused until one succeeds\n",
        )
            .into_response();
    }
    match s.store.mailbox_len(0).await {
        Ok(_) => {
            let mut body = String::from("ok\n");
            // Without NATS a node keeps working, with catch-up reads only.
            match &s.bus {
                Some(bus) if !bus.connected() => body.push_str(
                    "bus: disconnected (other nodes' messages arrive at catch-up reads)\n",
                ),
                Some(_) => body.push_str("bus: connected\n"),
                None => {}
            }
            // Messages are unaffected: a warning, not a failure.
            if let Some(w) = &s.blob_dir_warning {
                body.push_str(&format!("blob_dir: not shared: {w}\n"));
            }
            (StatusCode::OK, body).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}

/// Serves the admin endpoint until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    if let Err(e) = axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!("admin endpoint stopped: {e}");
    }
}

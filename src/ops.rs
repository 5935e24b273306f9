//! The ops listener: `/healthz`, `/readyz` and `/metrics`, without authentication.
//!
//! This module owns the HTTP surface that probes and Prometheus use. It reads the same
//! published snapshot the DNS path answers from.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::dns::index::Readiness;
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::snapshot::SharedSnapshot;

#[derive(Clone)]
struct OpsState {
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
}

/// Binds the ops listener; the returned future serves until `cancel` fires.
pub async fn bind(
    addr: SocketAddr,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("ops.listen {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { snapshot, metrics });
    let stop = cancel.clone();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
    Ok((local, drain(server, cancel, "ops")))
}

/// How long open HTTP requests may take to finish once the peer stops.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs an HTTP server (with its graceful shutdown on `cancel`) and, once `cancel`
/// fires, gives open requests [`DRAIN`] to finish: a client that stalls mid-request
/// must not keep the peer from stopping.
pub(crate) async fn drain<F>(server: F, cancel: CancellationToken, listener: &'static str)
where
    F: std::future::IntoFuture<Output = std::io::Result<()>>,
{
    let server = server.into_future();
    tokio::pin!(server);
    let deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        result = &mut server => {
            if let Err(e) = result {
                tracing::error!(listener, error = %e, "HTTP listener stopped");
            }
        }
        () = deadline => tracing::warn!(listener, "requests still open after the drain; closing them"),
    }
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let snap = state.snapshot.load();
    match snap.readiness {
        Readiness::Ready => (
            StatusCode::OK,
            format!("ready (generation {})\n", snap.generation),
        ),
        Readiness::NotReady => {
            let mut body = String::from("not ready; waiting for:\n");
            for w in &snap.waiting_for {
                body.push_str("- ");
                body.push_str(w);
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

//! The admin query API on `admin.listen` (DESIGN.md §3): read-only JSON under `/v1`.
//!
//! This module owns the HTTP edge: routes, the bearer-token check, optional TLS, and
//! the request counters. Every handler loads the published snapshot once and hands it
//! to [`api`], which builds the document, so one response never mixes generations
//! and the API can never disagree with the DNS server about what is served.

pub mod api;
pub mod client;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{AdminToken, ConfigError};
use crate::dns::index::ReplySettings;
use crate::model::{Namespace, ServiceKey, ServiceName};
use crate::snapshot::SharedSnapshot;
use api::ErrorDoc;

/// The endpoints, as the bounded `endpoint` label of the request counter.
const ENDPOINTS: [&str; 6] = [
    "clusters", "peers", "services", "service", "resolve", "other",
];

/// `fleetdns_admin_requests_total{endpoint, code}`.
#[derive(Clone, Debug)]
pub struct AdminMetrics {
    requests: Family<[(&'static str, String); 2], Counter>,
}

impl AdminMetrics {
    /// Registers the admin counters once, at startup.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register(
            "admin_requests",
            "Admin API requests, by endpoint and HTTP status code",
            requests.clone(),
        );
        Self { requests }
    }

    fn count(&self, endpoint: &'static str, status: StatusCode) {
        self.requests
            .get_or_create(&[
                ("endpoint", endpoint.into()),
                ("code", status.as_u16().to_string()),
            ])
            .inc();
    }
}

/// The admin token, read from its file if it has one (a mounted Secret), and checked.
pub fn read_token(token: &AdminToken) -> Result<String, ConfigError> {
    let (value, key) = match token {
        AdminToken::Value(t) => (t.clone(), "admin.token".to_string()),
        AdminToken::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
                path: path.display().to_string(),
                error,
            })?;
            let key = format!("admin.token_file ({})", path.display());
            (text.trim().to_string(), key)
        }
    };
    crate::config::check_token(&value).map_err(|message| ConfigError::Invalid {
        path: "config".into(),
        key,
        message,
    })?;
    Ok(value)
}

/// What the handlers share.
#[derive(Clone)]
struct AdminState {
    snapshot: SharedSnapshot,
    clock: Arc<dyn Clock>,
    reply: ReplySettings,
    token: Option<Arc<str>>,
    metrics: AdminMetrics,
}

/// Everything the admin listener needs besides the snapshot.
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// The bearer token, already read from its file.
    pub token: Option<String>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub reply: ReplySettings,
}

/// Binds the admin listener; the returned future serves until `cancel` fires.
pub async fn bind(
    settings: AdminSettings,
    snapshot: SharedSnapshot,
    clock: Arc<dyn Clock>,
    metrics: AdminMetrics,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listen = settings.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin.listen {listen}: {e}")))?;
    let local = listener.local_addr()?;
    let state = AdminState {
        snapshot,
        clock,
        reply: settings.reply,
        token: settings.token.map(Arc::from),
        metrics,
    };
    let app = router(state);
    let tls = settings.tls;
    let serve = async move {
        let stop = cancel.clone();
        let stopped = async move { stop.cancelled().await };
        match tls {
            None => {
                let server = axum::serve(listener, app).with_graceful_shutdown(stopped);
                crate::ops::drain(server, cancel, "admin").await;
            }
            Some(config) => {
                let server = axum::serve(tls::TlsListener::new(listener, config), app)
                    .with_graceful_shutdown(stopped);
                crate::ops::drain(server, cancel, "admin").await;
            }
        }
    };
    Ok((local, serve))
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/clusters", get(clusters))
        .route("/v1/peers", get(peers))
        .route("/v1/services", get(services))
        .route("/v1/services/{namespace}/{name}", get(service))
        .route("/v1/resolve", get(resolve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Checks the bearer token (when one is set) and counts every request by endpoint
/// and status.
async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let endpoint = endpoint_label(request.uri().path());
    let response = match &state.token {
        Some(token) if !authorized(&request, token) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: send Authorization: Bearer <admin.token>".into(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fleetdns\""),
            );
            response
        }
        _ => next.run(request).await,
    };
    state.metrics.count(endpoint, response.status());
    response
}

fn endpoint_label(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/v1/clusters" => ENDPOINTS[0],
        "/v1/peers" => ENDPOINTS[1],
        "/v1/services" => ENDPOINTS[2],
        p if p.starts_with("/v1/services/") => ENDPOINTS[3],
        "/v1/resolve" => ENDPOINTS[4],
        _ => ENDPOINTS[5],
    }
}

fn authorized(request: &Request, token: &str) -> bool {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let Some((scheme, presented)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(presented.trim().as_bytes(), token.as_bytes())
}

/// Compares without returning early, so response time does not tell how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ErrorDoc { error: message })).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see openapi.yaml: /v1/clusters, /v1/peers, /v1/services, \
         /v1/services/{namespace}/{name}, /v1/resolve?name=&type="
            .into(),
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "the admin API is read-only: GET only".into(),
    )
}

/// Endpoints without parameters refuse unknown ones, as the others do: a typo such
/// as `?namepsace=` must not be silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

async fn clusters(State(state): State<AdminState>, query: QueryResult<NoQuery>) -> Response {
    if let Err(e) = query {
        return error(StatusCode::BAD_REQUEST, e.body_text());
    }
    let snap = state.snapshot.load();
    axum::Json(api::clusters(&snap, state.clock.unix_millis())).into_response()
}

async fn peers(State(state): State<AdminState>, query: QueryResult<NoQuery>) -> Response {
    if let Err(e) = query {
        return error(StatusCode::BAD_REQUEST, e.body_text());
    }
    axum::Json(api::peers(&state.snapshot.load())).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicesQuery {
    namespace: Option<String>,
    cluster: Option<String>,
}

async fn services(State(state): State<AdminState>, query: QueryResult<ServicesQuery>) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // A filter that can never match is a mistake worth naming, not an empty list.
    if let Some(ns) = &q.namespace
        && let Err(e) = Namespace::parse(ns)
    {
        return error(StatusCode::BAD_REQUEST, format!("namespace: {e}"));
    }
    if let Some(cluster) = &q.cluster
        && let Err(e) = crate::model::ClusterId::parse(cluster)
    {
        return error(StatusCode::BAD_REQUEST, format!("cluster: {e}"));
    }
    let snap = state.snapshot.load();
    axum::Json(api::services(
        &snap,
        q.namespace.as_deref(),
        q.cluster.as_deref(),
    ))
    .into_response()
}

async fn service(
    State(state): State<AdminState>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Response {
    // A segment that does not decode (e.g. invalid UTF-8) gets the JSON error
    // document too, not axum's plain-text rejection.
    let Path((namespace, name)) = match path {
        Ok(path) => path,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let key = match (Namespace::parse(&namespace), ServiceName::parse(&name)) {
        (Ok(namespace), Ok(name)) => ServiceKey { name, namespace },
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match api::service(&state.snapshot.load(), &key) {
        Some(doc) => axum::Json(doc).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no cluster exports service {name} in namespace {namespace}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveQuery {
    name: String,
    #[serde(rename = "type")]
    qtype: Option<String>,
}

async fn resolve(State(state): State<AdminState>, query: QueryResult<ResolveQuery>) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let snap = state.snapshot.load();
    let qtype = q.qtype.as_deref().unwrap_or("A");
    match api::resolve(&snap, state.reply, &q.name, qtype) {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e @ api::ResolveError::Internal(_)) => {
            tracing::error!(error = %e, "admin resolve");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

mod tls {
    //! A TLS listener for `axum::serve`: handshakes run in their own tasks, so a slow
    //! or silent client never holds up the next one.

    use super::*;
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;

    /// How long a client may take to finish its handshake.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    pub struct TlsListener {
        local: SocketAddr,
        ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
        _accept: tokio::task::JoinHandle<()>,
    }

    impl TlsListener {
        pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
            let local = listener
                .local_addr()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
            let (tx, ready) = mpsc::channel(64);
            let acceptor = TlsAcceptor::from(config);
            let accept = tokio::spawn(async move {
                loop {
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, don't spin.
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, peer)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                        }
                    });
                }
            });
            Self {
                local,
                ready,
                _accept: accept,
            }
        }
    }

    impl Drop for TlsListener {
        fn drop(&mut self) {
            self._accept.abort();
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<tokio::net::TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.ready.recv().await {
                Some(accepted) => accepted,
                // The accept task only ends when the listener is dropped.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.local)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            read_token(&AdminToken::File(path.clone())).unwrap(),
            "0123456789abcdef0123"
        );
        std::fs::write(&path, "short\n").unwrap();
        let err = read_token(&AdminToken::File(path.clone())).unwrap_err();
        assert!(err.to_string().contains("token_file"), "{err}");
        let missing = read_token(&AdminToken::File(dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn endpoint_labels_are_bounded() {
        assert_eq!(endpoint_label("/v1/clusters"), "clusters");
        assert_eq!(endpoint_label("/v1/services/default/web"), "service");
        assert_eq!(endpoint_label("/v1/services/"), "services");
        assert_eq!(endpoint_label("/anything/else/10.1.2.3"), "other");
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let with = |value: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let token = "0123456789abcdef";
        assert!(authorized(&with("Bearer 0123456789abcdef"), token));
        assert!(authorized(&with("bearer 0123456789abcdef"), token));
        assert!(!authorized(&with("Basic 0123456789abcdef"), token));
        assert!(!authorized(&with("Bearer 0123456789abcdeF"), token));
        assert!(!authorized(&with("Bearer"), token));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcde", b"0123456789abcdef"));
    }
}

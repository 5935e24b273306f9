//! Watch streams as the API server's watch cache serves them: HTTP 200 with one JSON event
//! per line, replayed from the history after the requested resourceVersion and then live.
//!
//! What a client sees, and kube's watcher branches on:
//! - ADDED / MODIFIED / DELETED, filtered by namespace and selectors; an object that starts
//!   or stops matching a selector is ADDED / DELETED (the last matching state, with the new
//!   resourceVersion), as the cacher sends it;
//! - BOOKMARK (only `apiVersion`, `kind`, `metadata.resourceVersion`) when
//!   `allowWatchBookmarks=true`: periodically, on request, and, with `sendInitialEvents`,
//!   once after the initial ADDED events with the `k8s.io/initial-events-end` annotation;
//! - an expired resourceVersion is not an HTTP error but an `ERROR` event with a 410
//!   Expired Status on HTTP 200, then the end of the stream — kube relists only then;
//! - the stream ends cleanly after `timeoutSeconds`, and is cut mid-body (no terminating
//!   chunk) by `drop_watches`/`go_down`.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::watch as signal;
use tokio::time::Instant;

use super::api::{ApiError, Filter, Query, Shape, Target, parse_rv, present};
use super::store::{Event, EventType};
use super::{Kind, RequestRecord, Shared};

/// The API server's default watch length when the client sets no timeoutSeconds
/// (`--min-request-timeout`, 1800 s; it randomizes up to twice that).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// One open watch.
struct Watch {
    shared: Arc<Shared>,
    kind: Kind,
    version: String,
    shape: Shape,
    filter: Filter,
    bookmarks: bool,
    /// Every event up to here has been considered for this watch.
    pos: u64,
    pending: VecDeque<Bytes>,
    finished: bool,
    deadline: Instant,
    next_bookmark: Option<Instant>,
    changes: signal::Receiver<u64>,
    kill: signal::Receiver<u64>,
    bookmark_now: signal::Receiver<u64>,
    _open: OpenGuard,
}

/// Counts open watches for `FakeKube::open_watches`.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn line(ty: &str, object: Value) -> Bytes {
    let mut text = json!({"type": ty, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

impl Watch {
    fn event_line(&self, event: &Event) -> Option<Bytes> {
        if event.kind != self.kind {
            return None;
        }
        let now = self.filter.matches(&event.object);
        let before = event.prev.as_ref().is_some_and(|p| self.filter.matches(p));
        let present = |obj: &Value| present(self.kind, obj, &self.version, self.shape, false);
        match event.ty {
            EventType::Added if now => Some(line("ADDED", present(&event.object))),
            EventType::Modified => match (before, now) {
                (true, true) => Some(line("MODIFIED", present(&event.object))),
                (false, true) => Some(line("ADDED", present(&event.object))),
                (true, false) => {
                    // Left the selector: its last matching state, at the new version.
                    let mut last = event.prev.clone().unwrap_or_default();
                    last["metadata"]["resourceVersion"] = json!(event.rv.to_string());
                    Some(line("DELETED", present(&last)))
                }
                (false, false) => None,
            },
            EventType::Deleted if before => Some(line("DELETED", present(&event.object))),
            _ => None,
        }
    }

    fn error(&mut self, error: &ApiError) {
        self.pending.push_back(line("ERROR", error.status()));
        self.finished = true;
    }

    /// Queues the events after `pos` and moves `pos` to now.
    fn catch_up(&mut self) {
        let shared = self.shared.clone();
        let state = shared.lock();
        match state.store.events_after(self.pos) {
            Ok(events) => {
                let lines: Vec<Bytes> = events.iter().filter_map(|e| self.event_line(e)).collect();
                self.pending.extend(lines);
                self.pos = state.store.resource_version();
            }
            // Compacted past this watch before it caught up: what etcd tells a watcher
            // that fell behind compaction.
            Err(compacted) => {
                let error = ApiError::too_old(self.pos, &compacted);
                drop(state);
                self.error(&error);
            }
        }
    }

    fn bookmark(&mut self, annotations: Option<Value>) {
        if !self.bookmarks || self.finished {
            return;
        }
        let mut metadata = json!({
            "resourceVersion": self.pos.to_string(),
            "creationTimestamp": null,
        });
        if let Some(a) = annotations {
            metadata["annotations"] = a;
        }
        let object = match self.shape {
            Shape::Full => json!({
                "kind": self.kind.name(),
                "apiVersion": self.kind.api_version(&self.version),
                "metadata": metadata,
            }),
            Shape::Meta => json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
            }),
        };
        self.pending.push_back(line("BOOKMARK", object));
    }

    /// The current objects as ADDED events (a watch from "now" or with initial events).
    fn initial_events(&mut self, objects: Vec<Value>) {
        for obj in objects {
            if self.filter.matches(&obj) {
                let p = present(self.kind, &obj, &self.version, self.shape, false);
                self.pending.push_back(line("ADDED", p));
            }
        }
    }

    /// The next chunk of the body, or None at the end.
    async fn next_chunk(mut self) -> Option<(Result<Bytes, io::Error>, Watch)> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some((Ok(chunk), self));
            }
            if self.finished {
                return None;
            }
            let periodic = self.next_bookmark;
            tokio::select! {
                biased;
                _ = self.kill.changed() => {
                    self.finished = true;
                    // An error from the body makes hyper abort the connection without
                    // the terminating chunk: the client sees the stream cut.
                    let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "watch dropped by fake-kube");
                    return Some((Err(cut), self));
                }
                _ = tokio::time::sleep_until(self.deadline) => self.finished = true,
                _ = self.changes.changed() => self.catch_up(),
                _ = self.bookmark_now.changed() => {
                    self.catch_up();
                    self.bookmark(None);
                }
                _ = sleep_until_some(periodic) => {
                    self.catch_up();
                    self.bookmark(None);
                    self.next_bookmark = self.shared.bookmark_interval.map(|i| Instant::now() + i);
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Answers a watch request.
pub(crate) fn start(
    shared: Arc<Shared>,
    target: &Target,
    query: &Query,
    shape: Shape,
    injected: Option<ApiError>,
    record: &mut RequestRecord,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(target, query)?;
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let rv_param = query.get("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|s| !s.is_empty());
    let timeout = match query.get("timeoutSeconds").filter(|s| !s.is_empty()) {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t}")))?,
        None => 0,
    };
    let timeout = if timeout == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_secs(timeout)
    };
    let invalid =
        |field: &str, detail: &str| ApiError::invalid("ListOptions.meta.k8s.io", "", field, detail);
    if send_initial {
        if rv_match != Some("NotOlderThan") {
            return Err(invalid(
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks",
                "Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
    } else if rv_match.is_some() {
        return Err(invalid(
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let requested = match rv_param {
        None | Some("0") => None,
        Some(rv) => Some(parse_rv(rv)?),
    };

    let watch = {
        // Subscribing under the lock: a write after our read of the store is always
        // signalled to us.
        let state = shared.lock();
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        let current = state.store.resource_version();
        let mut watch = Watch {
            shared: shared.clone(),
            kind: target.kind,
            version: target.version.clone(),
            shape,
            filter,
            bookmarks,
            pos: current,
            pending: VecDeque::new(),
            finished: false,
            deadline: Instant::now() + timeout,
            next_bookmark: shared.bookmark_interval.map(|i| Instant::now() + i),
            changes: shared.changes.subscribe(),
            kill: shared.kill.subscribe(),
            bookmark_now: shared.bookmarks.subscribe(),
            _open: OpenGuard(shared.clone()),
        };
        let current_objects = || -> Vec<Value> {
            state
                .store
                .all(target.kind)
                .map(|(_, v)| v.clone())
                .collect()
        };
        match requested {
            _ if let Some(error) = &injected => {
                record.watch_error = Some(error.code);
                watch.error(error);
            }
            Some(rv) if rv > current => watch.error(&ApiError::too_large(rv, current)),
            _ if send_initial => {
                watch.initial_events(current_objects());
                watch.bookmark(Some(json!({"k8s.io/initial-events-end": "true"})));
            }
            // No resourceVersion, or "0": the current state as ADDED events, then changes.
            None => watch.initial_events(current_objects()),
            Some(rv) => match state.store.events_after(rv) {
                Ok(events) => {
                    let lines: Vec<Bytes> =
                        events.iter().filter_map(|e| watch.event_line(e)).collect();
                    watch.pending.extend(lines);
                }
                Err(compacted) => {
                    record.watch_error = Some(410);
                    watch.error(&ApiError::too_old(rv, &compacted));
                }
            },
        }
        watch
    };

    let stream = futures::stream::unfold(watch, Watch::next_chunk);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    let content_type = match shape {
        Shape::Full => "application/json",
        Shape::Meta => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    };
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(response)
}

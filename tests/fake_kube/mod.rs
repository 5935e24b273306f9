//! A fake Kubernetes API server, in process, for integration tests that drive the real
//! `kube` 5 client (`Api`, `watcher`, `reflector`, `Discovery`) or `kubectl` against it.
//! No kube-apiserver binary can be installed on these machines (DESIGN.md §5), so this is
//! what stands in for one.
//!
//! It owns the API server's side of the wire for the kinds fleetdns touches: core/v1
//! Services, discovery.k8s.io/v1 EndpointSlices, multicluster.x-k8s.io ServiceExports (the
//! CRD's served versions configurable, or absent) and coordination.k8s.io/v1 Leases:
//!
//! - HTTPS on 127.0.0.1 (a throwaway CA), a bearer token required on every request, and a
//!   kubeconfig file that `kube::Config::from_custom_kubeconfig` and kubectl accept;
//! - LIST with label/field selectors, `limit`/`continue` pagination over a consistent
//!   snapshot, `resourceVersion`/`resourceVersionMatch`, expired continue tokens (410);
//! - WATCH as newline-delimited JSON events on HTTP 200: ADDED/MODIFIED/DELETED (objects
//!   entering or leaving a selector as ADDED/DELETED), BOOKMARKs, resume from a
//!   resourceVersion, `ERROR` 410 Expired for one older than the compacted history,
//!   `timeoutSeconds`, `sendInitialEvents`;
//! - metadata-only answers (PartialObjectMetadata[List]) when the Accept header asks;
//! - GET, POST, PUT and merge PATCH with the API server's optimistic concurrency (409
//!   Conflict on a stale resourceVersion, 409 AlreadyExists, per-kind rules for a PUT
//!   without resourceVersion or of a missing object), DELETE with preconditions;
//! - legacy and aggregated (apidiscovery.k8s.io/v2) discovery, `/version`;
//! - errors as `Status` objects with the matching HTTP code, never a panic on bad input.
//!
//! Tests steer it through [`FakeKube`]: change objects, compact the history, cut watches,
//! take the whole server down and bring it back on the same port, inject one-shot
//! failures, read the request log.
//!
//! Deliberately not covered: admission and defaulting (a POSTed Service gets no ClusterIP;
//! builders here make complete objects), server-side apply, JSON and strategic-merge
//! patches, subresources (`/status`), deletecollection, managedFields, protobuf, Table
//! output, other kinds (no Namespaces, Pods), RBAC (every authenticated request is allowed
//! unless a 403 is injected), HTTP/2. History is kept until [`FakeKube::compact`] (no
//! sliding watch-cache window) and continue tokens expire only then, not after 5 minutes.
//! Field selectors know `metadata.name` and `metadata.namespace` only.
//!
//! Like the real API server, list items of built-in kinds carry no apiVersion/kind
//! (kubernetes/kubernetes#3030); single objects, watch events and custom resources do.
//!
//! Use from a test crate: `#[path = "fake_kube/mod.rs"] mod fake_kube;`.
#![allow(dead_code)]

mod api;
mod builders;
mod discovery;
mod net;
mod selector;
mod store;
mod watch;

pub use builders::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch as signal;

use store::Store;

/// The bearer token the fake accepts unless [`Options::token`] says otherwise.
pub const TOKEN: &str = "fake-kube-token";

/// The kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    ServiceExport,
    Lease,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ServiceExport,
        Kind::Lease,
    ];

    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Service => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::ServiceExport => "multicluster.x-k8s.io",
            Kind::Lease => "coordination.k8s.io",
        }
    }

    /// The resource name in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::ServiceExport => "serviceexports",
            Kind::Lease => "leases",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::ServiceExport => "serviceexport",
            Kind::Lease => "lease",
        }
    }

    /// The `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceExport => "ServiceExport",
            Kind::Lease => "Lease",
        }
    }

    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["svc"],
            Kind::ServiceExport => &["svcex", "svcexport"],
            Kind::EndpointSlice | Kind::Lease => &[],
        }
    }

    pub(crate) fn categories(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["all"],
            _ => &[],
        }
    }

    /// `group/version`, or `version` for core.
    pub fn api_version(self, version: &str) -> String {
        match self.group() {
            "" => version.to_owned(),
            group => format!("{group}/{version}"),
        }
    }

    /// How the API server names the resource in messages: `services`,
    /// `leases.coordination.k8s.io`.
    pub(crate) fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// Built-in kinds are typed in the API server: their list items come back without
    /// apiVersion/kind (kubernetes/kubernetes#3030); custom resources keep them.
    pub(crate) fn is_builtin(self) -> bool {
        self != Kind::ServiceExport
    }

    /// Whether the registry strategy maintains metadata.generation.
    pub(crate) fn has_generation(self) -> bool {
        matches!(self, Kind::EndpointSlice | Kind::ServiceExport)
    }

    /// Whether a PUT of a missing object creates it (registry `AllowCreateOnUpdate`).
    pub(crate) fn allow_create_on_update(self) -> bool {
        matches!(self, Kind::Service | Kind::Lease)
    }

    /// Whether a PUT without metadata.resourceVersion is accepted
    /// (`AllowUnconditionalUpdate`; Leases and custom resources say no).
    pub(crate) fn allow_unconditional_update(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice)
    }

    pub(crate) fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }
}

/// Which versions of the MCS ServiceExport CRD the fake serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum McsCrd {
    /// No CRD: every path of the group is 404 and discovery does not list it.
    Absent,
    /// The CRD serves these versions (discovery orders them by version priority, so
    /// `v1beta1` is preferred over `v1alpha1`).
    Served(Vec<&'static str>),
}

impl McsCrd {
    /// MCS API ≤ v0.4: `v1alpha1` only.
    pub fn v1alpha1() -> McsCrd {
        McsCrd::Served(vec!["v1alpha1"])
    }

    /// MCS API v0.5.0: `v1alpha1` and `v1beta1` (storage).
    pub fn v0_5() -> McsCrd {
        McsCrd::Served(vec!["v1beta1", "v1alpha1"])
    }

    pub(crate) fn versions(&self) -> &[&'static str] {
        match self {
            McsCrd::Absent => &[],
            McsCrd::Served(v) => v,
        }
    }
}

/// How to start the fake.
#[derive(Clone, Debug)]
pub struct Options {
    /// The bearer token clients must present.
    pub token: String,
    pub mcs: McsCrd,
    /// Every open watch that allows bookmarks gets one this often (the API server sends
    /// about one a minute). `None`: only when a test calls [`FakeKube::send_bookmarks`].
    pub bookmark_interval: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: TOKEN.to_owned(),
            mcs: McsCrd::v1alpha1(),
            bookmark_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// The API verbs, for failure injection and the request log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    /// As RBAC spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query as sent.
    pub uri: String,
    /// Whether it carried `Authorization: Bearer <the token>`.
    pub bearer: bool,
    pub accept: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// For a resource request: its kind and verb.
    pub kind: Option<Kind>,
    pub verb: Option<Verb>,
    /// The `code` of an `ERROR` event a watch was answered with right away (410 when
    /// resuming from a compacted resourceVersion).
    pub watch_error: Option<u16>,
}

impl RequestRecord {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, key: &str) -> Option<String> {
        api::Query::parse(self.uri.split_once('?').map(|(_, q)| q))
            .get(key)
            .map(str::to_owned)
    }

    pub fn is(&self, kind: Kind, verb: Verb) -> bool {
        self.kind == Some(kind) && self.verb == Some(verb)
    }
}

/// The current state of a Lease, for tests that check who leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub resource_version: String,
    pub transitions: Option<i64>,
}

/// State shared by the HTTP handlers, open watches and the control handle.
pub(crate) struct Shared {
    pub token: String,
    pub bookmark_interval: Option<Duration>,
    state: Mutex<State>,
    /// The latest resourceVersion, sent after every write: wakes open watches.
    pub changes: signal::Sender<u64>,
    /// Bumped to cut every open watch.
    pub kill: signal::Sender<u64>,
    /// Bumped to make every open watch send a bookmark now.
    pub bookmarks: signal::Sender<u64>,
    pub open_watches: AtomicUsize,
}

pub(crate) struct State {
    pub store: Store,
    pub mcs: McsCrd,
    pub log: Vec<RequestRecord>,
    pub failures: Vec<(Verb, Kind, u16)>,
}

impl Shared {
    /// The lock is never held across an await; a panicking holder (a test assertion)
    /// leaves consistent data, so poisoning is ignored rather than spread.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells open watches a write happened. Call after releasing the lock.
    pub(crate) fn notify(&self, rv: u64) {
        self.changes.send_replace(rv);
    }

    fn bump(sender: &signal::Sender<u64>) {
        sender.send_modify(|n| *n += 1);
    }
}

/// The control handle: cheap to clone; the server runs until the test's runtime ends.
#[derive(Clone)]
pub struct FakeKube {
    shared: Arc<Shared>,
    net: Arc<net::Net>,
    ca_pem: Arc<str>,
}

impl FakeKube {
    /// Starts a fake with default [`Options`] (MCS `v1alpha1`, bookmarks every minute).
    pub async fn start() -> FakeKube {
        FakeKube::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> FakeKube {
        let pki = net::Pki::new();
        let shared = Arc::new(Shared {
            token: options.token,
            bookmark_interval: options.bookmark_interval,
            state: Mutex::new(State {
                store: Store::new(),
                mcs: options.mcs,
                log: Vec::new(),
                failures: Vec::new(),
            }),
            changes: signal::channel(0).0,
            kill: signal::channel(0).0,
            bookmarks: signal::channel(0).0,
            open_watches: AtomicUsize::new(0),
        });
        let (net, incoming) = net::Net::start(pki.server).await;
        let router = axum::Router::new()
            .fallback(api::handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            // Runs as long as the runtime: `Incoming` never fails.
            let _ = axum::serve(incoming, router).await;
        });
        FakeKube {
            shared,
            net,
            ca_pem: pki.ca_pem.into(),
        }
    }

    pub fn port(&self) -> u16 {
        self.net.port()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes `dir/kubeconfig` (server, CA data, token; context `fake`, namespace
    /// `default`) and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {
                "server": self.url(),
                "certificate-authority-data":
                    base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes()),
            }}],
            "users": [{"name": "fake", "user": {"token": self.token()}}],
            "contexts": [{"name": "fake", "context": {
                "cluster": "fake", "user": "fake", "namespace": "default",
            }}],
            "current-context": "fake",
            "preferences": {},
        });
        let path = dir.join("kubeconfig");
        let text = serde_yaml::to_string(&config).expect("a JSON value serializes as YAML");
        std::fs::write(&path, text).expect("writing the fake's kubeconfig");
        path
    }

    /// A kube client configured the way a user's would be: from the kubeconfig file.
    pub async fn client(&self, dir: &Path) -> kube::Client {
        let path = self.kubeconfig(dir);
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&path).expect("reading the fake's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kube accepts the fake's kubeconfig");
        kube::Client::try_from(config).expect("building a kube client")
    }

    /// Creates or updates an object, as another writer in the cluster would: ADDED or
    /// MODIFIED reaches watches; an update that changes nothing is not a write (no new
    /// resourceVersion, no event), as with the real API server. The object must have the
    /// real API's shape (checked against the k8s-openapi types); a missing
    /// metadata.namespace means `default`. Returns the stored object. Panics on a malformed
    /// object: that is a bug in the test, not input the server must survive.
    pub fn apply(&self, obj: Value) -> Value {
        let (kind, obj) = builders::check_shape(obj).unwrap_or_else(|e| panic!("apply: {e}"));
        let (stored, rv) = {
            let mut state = self.shared.lock();
            if kind == Kind::ServiceExport {
                let version = obj["apiVersion"].as_str().unwrap_or_default();
                let served = state.mcs.versions().iter().any(|v| version.ends_with(v));
                assert!(
                    served,
                    "apply: the ServiceExport CRD does not serve {version}"
                );
            }
            let stored = state.store.put(kind, obj, true);
            (stored, state.store.resource_version())
        };
        self.shared.notify(rv);
        stored
    }

    /// Deletes an object (DELETED reaches watches); returns its last state, if it existed.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let (last, rv) = {
            let mut state = self.shared.lock();
            let last = state.store.remove(kind, namespace, name);
            (last, state.store.resource_version())
        };
        self.shared.notify(rv);
        last
    }

    /// The stored object (in its storage version).
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().store.get(kind, namespace, name).cloned()
    }

    /// The objects of a kind, sorted by namespace/name.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.shared
            .lock()
            .store
            .all(kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.resource_version()
    }

    /// Forgets the event history: a watch resuming from an older resourceVersion gets an
    /// `ERROR` 410 Expired event, a continue token from before gets HTTP 410.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Cuts every open watch stream mid-body (no terminating chunk), as a dropped
    /// connection looks to the client. Clients reconnect and resume.
    pub fn drop_watches(&self) {
        Shared::bump(&self.shared.kill);
    }

    /// Makes every open watch that allows bookmarks send one now.
    pub fn send_bookmarks(&self) {
        Shared::bump(&self.shared.bookmarks);
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// The API server goes away: the port refuses connections, every open connection
    /// (watches included) is cut. The store is kept. When this returns, no watch is open.
    pub async fn go_down(&self) {
        Shared::bump(&self.shared.kill);
        self.net.go_down().await;
        // A cut stream is dropped once hyper has seen its connection fail, a moment
        // later. Bounded, so that a wedged connection cannot hang a test here.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.open_watches() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Listens again on the same port.
    pub async fn come_back(&self) {
        self.net.come_back().await;
    }

    pub fn is_up(&self) -> bool {
        self.net.is_up()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// The next `verb` request on `kind` is answered with an error Status of HTTP `code`
    /// (e.g. 500, 503, 429 with `Retry-After: 1`, 403 as RBAC words it) instead.
    pub fn fail_next(&self, verb: Verb, kind: Kind, code: u16) {
        self.shared.lock().failures.push((verb, kind, code));
    }

    /// Installs, changes or removes the ServiceExport CRD. Removing it deletes every
    /// ServiceExport (DELETED reaches watches), as deleting a CRD does.
    pub fn set_mcs(&self, crd: McsCrd) {
        let rv = {
            let mut state = self.shared.lock();
            if crd == McsCrd::Absent {
                let names: Vec<(String, String)> = state
                    .store
                    .all(Kind::ServiceExport)
                    .map(|(_, v)| store::namespace_and_name(v))
                    .collect();
                for (ns, name) in names {
                    state.store.remove(Kind::ServiceExport, &ns, &name);
                }
            }
            state.mcs = crd;
            state.store.resource_version()
        };
        self.shared.notify(rv);
    }

    /// The Lease's holder and resourceVersion, if it exists.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<LeaseView> {
        let lease = self.get(Kind::Lease, namespace, name)?;
        Some(LeaseView {
            holder: lease["spec"]["holderIdentity"].as_str().map(str::to_owned),
            resource_version: lease["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            transitions: lease["spec"]["leaseTransitions"].as_i64(),
        })
    }
}

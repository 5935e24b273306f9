//! The Kubernetes source: this cluster's Services, EndpointSlices and MCS
//! ServiceExports, watched through `kube` 5, turned into the cluster's exports.
//!
//! This module owns every conversation with the Kubernetes API except the Lease
//! (`source::lease`). One reflector per kind lists, then watches with bookmarks; kube's
//! watcher relists by itself after a 410 and backs off on errors, and its store swaps a
//! relist in atomically, so a relist in flight never shows an empty cluster. Errors are
//! counted and logged, never returned: the watch keeps going and the last good exports
//! keep being served while the API server is away. Which MCS version is served is
//! discovered at start and every five minutes; without the CRD the source runs in
//! annotation-only mode and readiness does not wait for it. The exports themselves are
//! computed by the pure [`crate::export::compute`] on every change (debounced), and
//! published as a [`SourceState`] only when they differ.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::SourceState;
use crate::config::KubeSourceConfig;
use crate::export::{ExportContext, ExportRefusal, McsExports};
use crate::model::ClusterId;

/// The MCS API group (KEP-1645).
const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// How often the served MCS version is looked up again (a CRD installed later).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(300);
/// How soon discovery is retried after a failure that was not "absent".
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);
/// Changes arriving together are computed once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often hostname-only LoadBalancer ingress is resolved again. getaddrinfo does
/// not report TTLs, so this is DESIGN.md §5's upper bound of 60 s.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading the kubeconfig {path}: {error}")]
    Kubeconfig { path: String, error: String },
    #[error("no Kubernetes API: not in a pod ({0}); set source.kubernetes.kubeconfig")]
    InCluster(String),
    #[error("making the Kubernetes client: {0}")]
    Client(String),
}

/// Makes the client: from the kubeconfig when one is configured, else the pod's
/// service account.
pub async fn client(config: &KubeSourceConfig) -> Result<Client, KubeSourceError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let err = |e: &dyn std::fmt::Display| KubeSourceError::Kubeconfig {
                path: path.display().to_string(),
                error: e.to_string(),
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::incluster().map_err(|e| KubeSourceError::InCluster(e.to_string()))?,
    };
    Client::try_from(kube_config).map_err(|e| KubeSourceError::Client(e.to_string()))
}

/// The kinds watched, as the bounded `kind` label.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    EndpointSlice,
    ServiceExport,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::EndpointSlice => "endpointslice",
            Self::ServiceExport => "serviceexport",
        }
    }
}

/// The source's metrics: watch events, relists and errors per kind, refused exports
/// by reason.
#[derive(Debug, Clone)]
pub struct KubeMetrics {
    events: Family<[(&'static str, &'static str); 2], Counter>,
    relists: Family<[(&'static str, &'static str); 1], Counter>,
    errors: Family<[(&'static str, &'static str); 1], Counter>,
    refused: Family<[(&'static str, &'static str); 1], Counter>,
}

impl KubeMetrics {
    /// Registers the families once, at startup.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "source_kube_events",
            "Kubernetes watch events applied, by kind and event (apply, delete)",
            metrics.events.clone(),
        );
        registry.register(
            "source_kube_relists",
            "Full lists of a kind (the first one, and after a 410 or a lost watch)",
            metrics.relists.clone(),
        );
        registry.register(
            "source_kube_errors",
            "Kubernetes API errors while watching, by kind (retried with backoff)",
            metrics.errors.clone(),
        );
        registry.register(
            "source_exports_refused",
            "Exports asked for (ServiceExport or annotation) and refused, by reason; each once",
            metrics.refused.clone(),
        );
        metrics
    }

    /// Counters that go nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self {
            events: Family::default(),
            relists: Family::default(),
            errors: Family::default(),
            refused: Family::default(),
        }
    }

    fn event(&self, kind: Kind, event: &'static str) {
        self.events
            .get_or_create(&[("kind", kind.as_str()), ("event", event)])
            .inc();
    }

    fn relist(&self, kind: Kind) {
        self.relists.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    fn error(&self, kind: Kind) {
        self.errors.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    fn refused(&self, reason: ExportRefusal) {
        self.refused
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }
}

/// Counts one watcher item and wakes the exporter; errors are logged and counted, and
/// the stream goes on (the watcher retries them with backoff).
fn observe<K>(
    kind: Kind,
    item: &Result<Event<K>, watcher::Error>,
    metrics: &KubeMetrics,
    changed: &Notify,
) {
    match item {
        Ok(Event::Apply(_)) => metrics.event(kind, "apply"),
        Ok(Event::Delete(_)) => metrics.event(kind, "delete"),
        Ok(Event::Init) => metrics.relist(kind),
        Ok(Event::InitApply(_)) => return,
        Ok(Event::InitDone) => {}
        Err(error) => {
            metrics.error(kind);
            tracing::warn!(kind = kind.as_str(), %error, "Kubernetes watch error; retrying");
            return;
        }
    }
    changed.notify_one();
}

/// Drives one reflector until cancelled.
async fn drive<S, K>(
    kind: Kind,
    stream: S,
    metrics: KubeMetrics,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            item = stream.next() => match item {
                Some(item) => observe(kind, &item, &metrics, &changed),
                None => return,
            },
        }
    }
}

fn watch_config() -> watcher::Config {
    // Bookmarks keep the resume point fresh, so a reconnect rarely needs a relist.
    watcher::Config::default().page_size(500)
}

/// What the MCS ServiceExport watch knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mcs {
    /// Discovery has not answered yet.
    Unknown,
    /// The CRD is not served: annotation-only mode.
    Absent,
    /// Served; `None` until the first full list arrived.
    Served(Option<BTreeSet<(String, String)>>),
}

/// Follows which ServiceExports exist: discovers the served version, watches them as
/// metadata, and looks again every [`DISCOVERY_INTERVAL`].
async fn follow_service_exports(
    client: Client,
    state: watch::Sender<Mcs>,
    metrics: KubeMetrics,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        let resource = match kube::discovery::group(&client, MCS_GROUP).await {
            Ok(group) => group.recommended_kind("ServiceExport").map(|(ar, _)| ar),
            Err(e) if absent(&e) => None,
            Err(error) => {
                metrics.error(Kind::ServiceExport);
                tracing::warn!(%error, "MCS API discovery failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(DISCOVERY_RETRY) => continue,
                }
            }
        };
        let Some(resource) = resource else {
            if state.send_if_modified(|s| std::mem::replace(s, Mcs::Absent) != Mcs::Absent) {
                tracing::info!("no ServiceExport CRD served: exporting by annotation only");
                changed.notify_one();
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(DISCOVERY_INTERVAL) => continue,
            }
        };
        tracing::info!(version = %resource.version, "watching MCS ServiceExports");
        let rediscover = tokio::time::Instant::now() + DISCOVERY_INTERVAL;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(rediscover) => {}
            () = watch_service_exports(&client, &resource, &state, &metrics, &changed) => {}
        }
    }
}

/// Whether a discovery error means "the group or kind is not served".
fn absent(error: &kube::Error) -> bool {
    match error {
        kube::Error::Discovery(_) => true,
        kube::Error::Api(status) => status.code == 404,
        _ => false,
    }
}

async fn watch_service_exports(
    client: &Client,
    resource: &ApiResource,
    state: &watch::Sender<Mcs>,
    metrics: &KubeMetrics,
    changed: &Notify,
) {
    // Metadata only: the set of (namespace, name) is all an export needs.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), resource);
    let stream = watcher::watcher(api, watch_config()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // The set being relisted, swapped in whole at InitDone like kube's own stores.
    let mut relisting: Option<BTreeSet<(String, String)>> = None;
    loop {
        let Some(item) = stream.next().await else {
            return;
        };
        observe(Kind::ServiceExport, &item, metrics, changed);
        let key = |m: &PartialObjectMeta<DynamicObject>| {
            (
                m.metadata.namespace.clone().unwrap_or_default(),
                m.metadata.name.clone().unwrap_or_default(),
            )
        };
        match item {
            Ok(Event::Init) => relisting = Some(BTreeSet::new()),
            Ok(Event::InitApply(m)) => {
                if let Some(set) = &mut relisting {
                    set.insert(key(&m));
                }
            }
            Ok(Event::InitDone) => {
                let set = relisting.take().unwrap_or_default();
                state.send_replace(Mcs::Served(Some(set)));
            }
            Ok(Event::Apply(m)) => {
                state.send_modify(|s| {
                    if let Mcs::Served(Some(set)) = s {
                        set.insert(key(&m));
                    }
                });
            }
            Ok(Event::Delete(m)) => {
                state.send_modify(|s| {
                    if let Mcs::Served(Some(set)) = s {
                        set.remove(&key(&m));
                    }
                });
            }
            Err(_) => {}
        }
    }
}

/// Resolves the hostnames of hostname-only LoadBalancer ingress (AWS ELBs) on the
/// exporting peer, so peers get addresses (DESIGN.md §5).
async fn resolve_hostnames(
    mut wanted: watch::Receiver<BTreeSet<String>>,
    resolved: Arc<Mutex<BTreeMap<String, Vec<IpAddr>>>>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut every = tokio::time::interval(RESOLVE_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
            r = wanted.changed() => if r.is_err() { return },
        }
        let hosts = wanted.borrow_and_update().clone();
        let mut next = BTreeMap::new();
        for host in &hosts {
            match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(addrs) => {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    next.insert(host.clone(), ips);
                }
                Err(error) => {
                    tracing::warn!(%host, %error, "LoadBalancer hostname does not resolve");
                    // Keep the last addresses: a resolver blip must not drop an export.
                    if let Some(old) = lock(&resolved).get(host) {
                        next.insert(host.clone(), old.clone());
                    }
                }
            }
        }
        let differs = *lock(&resolved) != next;
        if differs {
            *lock(&resolved) = next;
            changed.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts watching and returns the exports as they change. `labels` are the
/// cluster's inventory labels from the config.
pub fn spawn(
    client: Client,
    cluster: ClusterId,
    labels: BTreeMap<String, String>,
    config: &KubeSourceConfig,
    metrics: KubeMetrics,
    cancel: CancellationToken,
) -> watch::Receiver<SourceState> {
    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let stream = reflector::reflector(
        services_writer,
        watcher::watcher(Api::<Service>::all(client.clone()), watch_config()).default_backoff(),
    );
    tokio::spawn(drive(
        Kind::Service,
        stream,
        metrics.clone(),
        changed.clone(),
        cancel.clone(),
    ));
    let stream = reflector::reflector(
        slices_writer,
        watcher::watcher(Api::<EndpointSlice>::all(client.clone()), watch_config())
            .default_backoff(),
    );
    tokio::spawn(drive(
        Kind::EndpointSlice,
        stream,
        metrics.clone(),
        changed.clone(),
        cancel.clone(),
    ));
    let (mcs_tx, mcs) = watch::channel(Mcs::Unknown);
    tokio::spawn(follow_service_exports(
        client,
        mcs_tx,
        metrics.clone(),
        changed.clone(),
        cancel.clone(),
    ));
    let (wanted_tx, wanted) = watch::channel(BTreeSet::new());
    let resolved = Arc::new(Mutex::new(BTreeMap::new()));
    tokio::spawn(resolve_hostnames(
        wanted,
        resolved.clone(),
        changed.clone(),
        cancel.clone(),
    ));

    let mut state = SourceState::default();
    state.pending.insert(
        cluster.clone(),
        "the first list of Services, EndpointSlices and ServiceExports from the Kubernetes API"
            .into(),
    );
    let (tx, rx) = watch::channel(state);
    let exporter = Exporter {
        cluster,
        labels,
        settings: config.export.clone(),
        services,
        slices,
        mcs,
        resolved,
        wanted: wanted_tx,
        metrics,
        refused_before: HashSet::new(),
        tx,
    };
    tokio::spawn(exporter.run(changed, cancel));
    rx
}

/// The one writer of the source's state.
struct Exporter {
    cluster: ClusterId,
    labels: BTreeMap<String, String>,
    settings: crate::export::ExportSettings,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    mcs: watch::Receiver<Mcs>,
    resolved: Arc<Mutex<BTreeMap<String, Vec<IpAddr>>>>,
    wanted: watch::Sender<BTreeSet<String>>,
    metrics: KubeMetrics,
    /// Refusals already logged and counted: each is reported once while it lasts.
    refused_before: HashSet<(String, String, ExportRefusal)>,
    tx: watch::Sender<SourceState>,
}

impl Exporter {
    async fn run(mut self, changed: Arc<Notify>, cancel: CancellationToken) {
        // Ready once every watched kind has been listed in full (the ServiceExports
        // only where the CRD is served).
        let first_lists = async {
            let _ = self.services.wait_until_ready().await;
            let _ = self.slices.wait_until_ready().await;
            let mut mcs = self.mcs.clone();
            let _ = mcs
                .wait_for(|m| matches!(m, Mcs::Absent | Mcs::Served(Some(_))))
                .await;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = first_lists => {}
        }
        tracing::info!(cluster = %self.cluster, "listed the cluster's Services and EndpointSlices");
        loop {
            self.publish();
            tokio::select! {
                () = cancel.cancelled() => return,
                () = changed.notified() => {}
            }
            // Let a burst of events (a rollout, a relist) land before computing.
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
    }

    fn publish(&mut self) {
        let mcs = match &*self.mcs.borrow() {
            Mcs::Served(Some(set)) => McsExports::Served(set.clone()),
            // Between a rediscovery and its first list, keep exporting by annotation
            // only rather than dropping every ServiceExport: the set was just listed
            // a moment ago and comes back at the next list.
            _ => McsExports::NotServed,
        };
        let resolved = lock(&self.resolved).clone();
        let services = self.services.state();
        let slices = self.slices.state();
        let ctx = ExportContext {
            cluster: &self.cluster,
            labels: &self.labels,
            settings: &self.settings,
            mcs: &mcs,
            resolved: &resolved,
        };
        let outcome = crate::export::compute(&ctx, services, slices);
        let mut now_refused = HashSet::new();
        for refused in &outcome.refused {
            let key = (
                refused.namespace.clone(),
                refused.name.clone(),
                refused.reason,
            );
            if !self.refused_before.contains(&key) {
                self.metrics.refused(refused.reason);
                tracing::warn!(
                    namespace = %refused.namespace,
                    service = %refused.name,
                    reason = refused.reason.as_str(),
                    detail = %refused.detail,
                    "export refused"
                );
            }
            now_refused.insert(key);
        }
        self.refused_before = now_refused;
        self.wanted.send_if_modified(|w| {
            let differs = *w != outcome.wanted_hostnames;
            if differs {
                w.clone_from(&outcome.wanted_hostnames);
            }
            differs
        });
        let exports = outcome.exports;
        self.tx.send_if_modified(|state| {
            let same = state.pending.is_empty()
                && state.loaded.get(&self.cluster).is_some_and(|e| **e == exports);
            if !same {
                tracing::info!(cluster = %self.cluster, services = exports.services.len(), "exports changed");
                state.pending.clear();
                state.loaded.insert(self.cluster.clone(), Arc::new(exports.clone()));
            }
            !same
        });
    }
}

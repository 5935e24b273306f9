//! One mesh peer at run time: the chitchat node and the loop that feeds it and reads it.
//!
//! This module owns the chitchat handle of a running peer (the only one in the
//! process's mesh) and its observe loop. The loop publishes the local cluster's exports
//! when the services file changes (if this replica is elected to), stamps `m:alive`
//! every `alive_interval`, rereads its credentials every `reload_interval`, restarts a
//! stopped gossip task with a new generation, and on every 100 ms tick or `m:root`
//! change adopts other clusters' verified exports, pushes new versions to a few peers,
//! runs the liveness state machine and hands the result to the snapshot publisher as
//! [`SourceView`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chitchat::transport::Transport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ListenerHandle, NodeState,
    Serializable, spawn_chitchat,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{ROOT_KEY, RootRejection, RootRole, VERSION_KEY, node_cluster};
use super::liveness::{self, LivenessSettings, Tracked};
use super::metrics::MeshMetrics;
use super::peer::{Observer, PeerIdentity, Publisher};
use super::push::Pusher;
use super::tls::MeshTls;
use super::transport::{StreamTransport, TransportSettings};
use crate::clock::Clock;
use crate::config::{DEAD_NODE_GRACE_PERIOD, MeshConfig};
use crate::dns::index::Readiness;
use crate::identity::{FleetName, FleetTrust, TrustBundle};
use crate::model::{ClusterId, LocalExports};
use crate::source::SourceState;
use crate::status::{self, ClusterMesh, Member, MeshStatus, Role, RootSummary, StateChanges};
use crate::view::{ClusterInput, ClusterState};

/// What the snapshot publisher builds from: every cluster's input and readiness.
#[derive(Debug, Clone, Default)]
pub struct SourceView {
    pub inputs: BTreeMap<ClusterId, ClusterInput>,
    pub ready: bool,
    pub waiting_for: Vec<String>,
    /// Members, replicas and roots (empty for a static fleet).
    pub status: Arc<MeshStatus>,
}

impl SourceView {
    pub fn readiness(&self) -> Readiness {
        if self.ready {
            Readiness::Ready
        } else {
            Readiness::NotReady
        }
    }
}

/// How often the observe loop looks at chitchat's state.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);
/// How often the view is rebuilt when nothing it depends on changed, for the state
/// changes that time alone makes (a stamp ageing out).
const LIVENESS_EVERY: Duration = Duration::from_millis(250);
/// Longest wait between attempts to restart a stopped gossip task.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a peer needs to join the mesh.
#[derive(Debug, Clone)]
pub struct MeshParams {
    pub config: MeshConfig,
    pub fleet: FleetName,
    pub cluster: ClusterId,
    pub node_id: String,
    pub election: Election,
}

/// How the replicas of a cluster pick the one that publishes.
#[derive(Debug, Clone, Default)]
pub enum Election {
    /// Without Kubernetes: the live replica with the lowest node id.
    #[default]
    LowestNodeId,
    /// The holder of the cluster's Kubernetes Lease (`true` while this replica holds it).
    Lease(watch::Receiver<bool>),
}

/// A peer's own certificate chain and key, and what it trusts, as read and checked.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    /// The texts of the `mesh.trust_bundle` files, to notice when they change.
    pub bundle_pems: Vec<String>,
    pub trust: FleetTrust,
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

impl Credentials {
    /// Reads `mesh.cert`, `mesh.key` and `mesh.trust_bundle`; see [`Credentials::new`].
    pub fn load(params: &MeshParams, unix_now: u64) -> anyhow::Result<Self> {
        let mesh = &params.config;
        let cert_pem = read(&mesh.cert)?;
        let key_pem = read(&mesh.key)?;
        let bundle_pems = mesh
            .trust_bundle
            .iter()
            .map(|p| read(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::new(params, cert_pem, key_pem, bundle_pems, unix_now).with_context(|| {
            format!(
                "checking {} against mesh.trust_bundle",
                params.config.cert.display()
            )
        })
    }

    /// Checks that the certificate is one peers will accept for this cluster:
    /// otherwise nobody would ever adopt this peer, and that is better said at once.
    pub fn new(
        params: &MeshParams,
        cert_pem: String,
        key_pem: String,
        bundle_pems: Vec<String>,
        unix_now: u64,
    ) -> anyhow::Result<Self> {
        let trust = FleetTrust {
            fleet: params.fleet.clone(),
            bundle: TrustBundle::from_pems(&bundle_pems)?,
            revoked: params.config.revoked_clusters.clone(),
        };
        let me = trust.verify_pem(&cert_pem, unix_now)?;
        // A key that is not the certificate's would sign roots every reader refuses.
        let probe = b"fleetdns key check";
        let signature = crate::identity::sign(&key_pem, probe)?;
        if me.verify_signature(probe, &signature).is_err() {
            anyhow::bail!(
                "{} is not the key of the certificate in {}",
                params.config.key.display(),
                params.config.cert.display()
            );
        }
        if me.cluster != params.cluster {
            anyhow::bail!(
                "the certificate is one of cluster {}, not of {}",
                me.cluster,
                params.cluster
            );
        }
        Ok(Self {
            cert_pem,
            key_pem,
            bundle_pems,
            trust,
        })
    }

    fn same_as(&self, other: &Self) -> bool {
        self.cert_pem == other.cert_pem
            && self.key_pem == other.key_pem
            && self.bundle_pems == other.bundle_pems
            && self.trust.revoked == other.trust.revoked
    }
}

/// chitchat's settings for one node of this fleet (the fleet name is chitchat's
/// cluster id: nodes of another fleet are refused at the first SYN).
fn chitchat_config(
    mesh: &MeshConfig,
    fleet: &FleetName,
    node_id: &str,
    generation: u64,
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(node_id.to_string(), generation, mesh.advertise),
        cluster_id: fleet.as_str().to_string(),
        gossip_interval: mesh.gossip_interval,
        listen_addr: mesh.listen,
        seed_nodes: mesh.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: mesh.phi_threshold,
            initial_interval: mesh.gossip_interval,
            dead_node_grace_period: DEAD_NODE_GRACE_PERIOD,
            ..Default::default()
        },
        marked_for_deletion_grace_period: DEAD_NODE_GRACE_PERIOD,
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}

fn role(role: RootRole) -> Role {
    match role {
        RootRole::Publisher => Role::Publisher,
        RootRole::Standby => Role::Standby,
        RootRole::Decommissioned => Role::Decommissioned,
    }
}

/// The keys a node holds from its first heartbeat.
fn initial_keys() -> Vec<(String, String)> {
    vec![(VERSION_KEY.to_string(), status::VERSION.to_string())]
}

/// Joins the mesh over the stream transport with the credentials named in the
/// config; see [`spawn`].
pub async fn start(
    params: MeshParams,
    local: watch::Receiver<SourceState>,
    clock: Arc<dyn Clock>,
    metrics: MeshMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<(watch::Receiver<SourceView>, tokio::task::JoinHandle<()>)> {
    let credentials = Credentials::load(&params, clock.unix_seconds())?;
    let (transport, tls) = tls_transport(&params, &credentials, &clock, &metrics)?;
    spawn(
        params,
        credentials,
        Arc::new(transport),
        Some(tls),
        local,
        clock,
        metrics,
        cancel,
    )
    .await
}

/// The mutual-TLS stream transport for `credentials`, counting into `metrics`, and the
/// TLS state it shares with the node (which reloads it).
fn tls_transport(
    params: &MeshParams,
    credentials: &Credentials,
    clock: &Arc<dyn Clock>,
    metrics: &MeshMetrics,
) -> anyhow::Result<(StreamTransport, Arc<MeshTls>)> {
    let tls = Arc::new(MeshTls::new(
        &credentials.cert_pem,
        &credentials.key_pem,
        credentials.trust.clone(),
        clock.clone(),
        metrics.cert_rejections(),
    )?);
    let transport = StreamTransport::tls(
        transport_settings(&params.config),
        metrics.transport_stats(),
        tls.clone(),
    );
    Ok((transport, tls))
}

/// The transport's settings for this mesh's timing.
fn transport_settings(mesh: &MeshConfig) -> TransportSettings {
    TransportSettings {
        max_connection_age: mesh.max_connection_age,
        // Ten rounds without a word: this peer no longer gossips with that one.
        idle_timeout: (mesh.gossip_interval * 10).max(Duration::from_secs(1)),
        ..TransportSettings::default()
    }
}

/// Joins the mesh over `transport` and starts the observe loop; the returned
/// receiver carries the fleet's inputs. Fails if the first gossip socket cannot be
/// opened; later failures of the gossip task are restarted with a new generation.
/// Credentials are read again every `mesh.reload_interval`; a change goes to the
/// observer, the publisher and `tls`. The loop ends, leaving the mesh, when `cancel`
/// fires.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    params: MeshParams,
    credentials: Credentials,
    transport: Arc<dyn Transport>,
    tls: Option<Arc<MeshTls>>,
    local: watch::Receiver<SourceState>,
    clock: Arc<dyn Clock>,
    metrics: MeshMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<(watch::Receiver<SourceView>, tokio::task::JoinHandle<()>)> {
    let generation = clock.unix_millis();
    let handle = spawn_chitchat(
        chitchat_config(&params.config, &params.fleet, &params.node_id, generation),
        initial_keys(),
        transport.as_ref(),
    )
    .await
    .with_context(|| format!("joining the mesh on mesh.listen {}", params.config.listen))?;
    let publisher = Publisher::new(identity(&params, &credentials), generation, generation);
    let observer = Observer::new(credentials.trust.clone());
    let (tx, rx) = watch::channel(SourceView::default());
    let node = Node {
        settings: LivenessSettings {
            alive_interval: params.config.alive_interval,
            clock_skew: params.config.clock_skew,
            max_stale: params.config.max_stale,
            rejoin_after: params.config.rejoin_after,
        },
        params,
        credentials,
        transport,
        tls,
        clock,
        metrics,
        handle,
        generation,
        publisher,
        observer,
        trackers: BTreeMap::new(),
        sightings: HashMap::new(),
        pusher: Pusher::default(),
        last_live: HashSet::new(),
        local_dirty: true,
        view_due: Instant::now(),
        pending_exports: BTreeMap::new(),
        started: Instant::now(),
        was_ready: false,
        state_changes: StateChanges::default(),
        local,
        tx,
    };
    Ok((rx, tokio::spawn(node.run(cancel))))
}

fn identity(params: &MeshParams, credentials: &Credentials) -> PeerIdentity {
    PeerIdentity {
        fleet: params.fleet.clone(),
        node_id: params.node_id.clone(),
        cert_chain_pem: credentials.cert_pem.clone(),
        key_pem: credentials.key_pem.clone(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    first_seen: Instant,
    judged: bool,
}

/// The running peer: the one owner of its chitchat handle, publisher, observer and
/// cluster trackers.
struct Node {
    params: MeshParams,
    credentials: Credentials,
    transport: Arc<dyn Transport>,
    tls: Option<Arc<MeshTls>>,
    clock: Arc<dyn Clock>,
    metrics: MeshMetrics,
    handle: ChitchatHandle,
    generation: u64,
    publisher: Publisher,
    observer: Observer,
    settings: LivenessSettings,
    trackers: BTreeMap<ClusterId, Tracked>,
    /// When each node id was first seen, and whether chitchat has reported it live.
    sightings: HashMap<String, Sighting>,
    pusher: Pusher,
    /// The reported-or-presumed live nodes the view was last built with.
    last_live: HashSet<Arc<str>>,
    /// The local export changed since the view was last built.
    local_dirty: bool,
    /// When the view is rebuilt at the latest.
    view_due: Instant,
    /// The empty export of each pending cluster (see `build_view`).
    pending_exports: BTreeMap<ClusterId, Arc<LocalExports>>,
    started: Instant,
    was_ready: bool,
    /// When each cluster's state last changed (shown by the admin API).
    state_changes: StateChanges,
    local: watch::Receiver<SourceState>,
    tx: watch::Sender<SourceView>,
}

impl Node {
    async fn run(mut self, cancel: CancellationToken) {
        let mut observe = tokio::time::interval(OBSERVE_EVERY);
        let mut alive = tokio::time::interval(self.params.config.alive_interval);
        let mut reload = tokio::time::interval(self.params.config.reload_interval);
        reload.tick().await;
        let mut terminated = Box::pin(self.handle.termination_watcher());
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel(1);
        let mut _listener = self.wake_on_roots(&wake_tx).await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = self.local.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.local.borrow_and_update();
                    self.local_dirty = true;
                    // A new local export: publish it now if this replica publishes.
                    self.republish_local().await;
                }
                _ = alive.tick() => self.stamp_alive().await,
                _ = reload.tick() => self.reload_credentials().await,
                result = &mut terminated => {
                    let error = result.err().map(|e| e.to_string());
                    tracing::error!(error = ?error, generation = self.generation, "the gossip task stopped; restarting it");
                    if !self.restart(&cancel).await {
                        break;
                    }
                    terminated = Box::pin(self.handle.termination_watcher());
                    _listener = self.wake_on_roots(&wake_tx).await;
                    continue;
                }
                _ = observe.tick() => {}
                Some(()) = wake.recv() => {}
            }
            self.observe().await;
        }
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(error = %e, "mesh shutdown");
        }
    }

    /// Wakes the loop as soon as chitchat applies a changed `m:root`, instead of at
    /// the next tick. The callback runs under chitchat's lock: it only pokes.
    async fn wake_on_roots(&self, wake: &tokio::sync::mpsc::Sender<()>) -> ListenerHandle {
        let wake = wake.clone();
        let chitchat = self.handle.chitchat();
        let guard = chitchat.lock().await;
        guard.subscribe_event(ROOT_KEY, move |_| {
            let _ = wake.try_send(());
        })
    }

    /// Starts a new gossip task with a new generation: peers replace everything they
    /// held of the old one (never mixing the two), so this node writes its keys, root
    /// and stamp again. Retries with backoff until it works or `cancel` fires.
    async fn restart(&mut self, cancel: &CancellationToken) -> bool {
        let mut backoff = self.params.config.gossip_interval;
        loop {
            // Generations must grow even if the wall clock stepped back.
            let generation = self.clock.unix_millis().max(self.generation + 1);
            let config = chitchat_config(
                &self.params.config,
                &self.params.fleet,
                &self.params.node_id,
                generation,
            );
            match spawn_chitchat(config, initial_keys(), self.transport.as_ref()).await {
                Ok(handle) => {
                    let old = std::mem::replace(&mut self.handle, handle);
                    old.abort();
                    self.generation = generation;
                    // Keep outranking the roots this node wrote before.
                    let epoch = self.publisher.epoch().max(generation);
                    self.publisher = Publisher::new(
                        identity(&self.params, &self.credentials),
                        generation,
                        epoch,
                    );
                    self.metrics.gossip_restarted();
                    self.stamp_alive().await;
                    tracing::info!(generation, "gossip restarted");
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "cannot restart the gossip task");
                    tokio::select! {
                        () = cancel.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
                }
            }
        }
    }

    /// Reads the credential files again; on a change that checks out, every part of
    /// the peer uses the new ones: handshakes from now on, the observer (which drops
    /// exports whose certificate is no longer trusted), and a fresh root and stamp
    /// signed with the new key. A bad change is logged and the old ones stay.
    async fn reload_credentials(&mut self) {
        let now = self.clock.unix_seconds();
        // mesh.revoked_clusters takes effect without a restart: it is read again from
        // the config file (the other settings need a restart).
        if let Some(path) = &self.params.config.config_file {
            match crate::config::Config::load(path) {
                Ok(config) => {
                    if let Some(mesh) = config.mesh {
                        self.params.config.revoked_clusters = mesh.revoked_clusters;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "config not reread; keeping mesh.revoked_clusters");
                }
            }
        }
        let loaded = match Credentials::load(&self.params, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "mesh credentials not reloaded; keeping the current ones"
                );
                return;
            }
        };
        if loaded.same_as(&self.credentials) {
            return;
        }
        if let Some(tls) = &self.tls
            && let Err(e) = tls.reload(&loaded.cert_pem, &loaded.key_pem, loaded.trust.clone())
        {
            tracing::error!(error = %e, "mesh credentials not reloaded; keeping the current ones");
            return;
        }
        self.credentials = loaded;
        for cluster in self.observer.set_trust(self.credentials.trust.clone(), now) {
            tracing::warn!(%cluster, "dropped a cluster whose certificate is no longer trusted");
        }
        self.publisher
            .set_identity(identity(&self.params, &self.credentials));
        if let Some(role) = self.publisher.role() {
            let chitchat = self.handle.chitchat();
            let mut guard = chitchat.lock().await;
            self.write_role(guard.self_node_state(), role);
        }
        self.stamp_alive().await;
        tracing::info!("mesh credentials reloaded");
    }

    async fn stamp_alive(&mut self) {
        let now = self.clock.unix_millis();
        let publisher = &self.publisher;
        let stamped = self
            .handle
            .with_chitchat(|c| publisher.stamp_alive(c.self_node_state(), now))
            .await;
        if let Err(e) = stamped {
            tracing::error!(error = %e, "cannot sign the alive stamp");
        }
    }

    async fn republish_local(&mut self) {
        if self.publisher.role() != Some(RootRole::Publisher) {
            return;
        }
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        self.write_role(guard.self_node_state(), RootRole::Publisher);
    }

    /// Writes this node's keys and root for `role`.
    fn write_role(&mut self, state: &mut NodeState, role: RootRole) {
        let now = self.clock.unix_millis();
        let written = match role {
            RootRole::Publisher => {
                let Some(exports) = self
                    .local
                    .borrow()
                    .loaded
                    .get(&self.params.cluster)
                    .cloned()
                else {
                    // Nothing read yet: publish once the services file is loaded.
                    return;
                };
                self.publisher.publish(state, &exports, now).map(|refused| {
                    for (key, reason) in refused {
                        tracing::warn!(service = %key, %reason, "export not gossiped");
                    }
                })
            }
            RootRole::Standby => self.publisher.stand_by(state, now),
            RootRole::Decommissioned => self.publisher.decommission(state, now),
        };
        match written {
            Ok(()) => self.metrics.set_publishing(role == RootRole::Publisher),
            Err(e) => tracing::error!(error = %e, "cannot sign the export root"),
        }
    }

    /// Who publishes (DESIGN.md §4, §5): with a Lease, its holder; without
    /// Kubernetes, a replica publishes unless a live replica of its cluster with a
    /// lower node id has a verified root. Whoever publishes outranks every root of the
    /// cluster seen so far. Returns whether this node's role changed.
    fn elect(&mut self, state: &mut NodeState, live: &HashSet<Arc<str>>, now_ms: u64) -> bool {
        let lifetime =
            u64::try_from(self.settings.stamp_lifetime().as_millis()).unwrap_or(u64::MAX);
        let me = self.params.node_id.as_str();
        let defer_to = match &self.params.election {
            Election::Lease(held) => (!*held.borrow()).then(|| "the lease holder".to_string()),
            Election::LowestNodeId => self
                .observer
                .replicas_of(&self.params.cluster)
                .find(|(node, r)| {
                    *node < me
                        && live.contains(*node)
                        && now_ms.saturating_sub(r.alive_ms) < lifetime
                })
                .map(|(node, _)| node.to_string()),
        };
        let role = if defer_to.is_some() {
            RootRole::Standby
        } else {
            RootRole::Publisher
        };
        let raised = role == RootRole::Publisher
            && self
                .observer
                .highest_other_epoch(&self.params.cluster, me)
                .is_some_and(|seen| self.publisher.raise_epoch_above(seen));
        let changed = self.publisher.role() != Some(role) || raised;
        if changed {
            if self.publisher.role().is_some() {
                tracing::info!(role = ?role, publisher = ?defer_to, epoch = self.publisher.epoch(), "publisher role changed");
            }
            self.write_role(state, role);
        }
        changed
    }

    /// One pass: adopt what arrived, elect, run the liveness state machine, update
    /// the metrics, and hand a new view to the snapshot publisher if it changed.
    async fn observe(&mut self) {
        let now_ms = self.clock.unix_millis();
        let chitchat = self.handle.chitchat();
        let mut guard = chitchat.lock().await;
        let reported_live: HashSet<Arc<str>> =
            guard.live_nodes().map(|id| id.node_id.clone()).collect();
        self.metrics
            .set_members(reported_live.len(), guard.dead_nodes().count());
        // chitchat reports a node it just learned of as dead until it has two
        // heartbeats from it. Until chitchat has once reported a node live (for at
        // most one stamp lifetime), its signed stamp alone decides, so a newly seen
        // cluster is not served stale.
        let known: HashSet<&str> = guard.node_states().keys().map(|id| &*id.node_id).collect();
        self.sightings
            .retain(|node, _| known.contains(node.as_str()));
        let now = Instant::now();
        let grace = self.settings.stamp_lifetime();
        let live: HashSet<Arc<str>> = guard
            .node_states()
            .keys()
            .map(|id| &id.node_id)
            .filter(|node| {
                if !self.sightings.contains_key(&***node) {
                    let first = Sighting {
                        first_seen: now,
                        judged: false,
                    };
                    self.sightings.insert(node.to_string(), first);
                }
                let sighting = self.sightings.get_mut(&***node).expect("just inserted");
                let reported = reported_live.contains(&***node);
                sighting.judged |= reported;
                reported || (!sighting.judged && now.duration_since(sighting.first_seen) < grace)
            })
            .cloned()
            .collect();
        self.metrics
            .set_digest_bytes(digest_len(guard.node_states()));
        let nodes = guard
            .node_states()
            .iter()
            .map(|(id, s)| (&*id.node_id, id.generation_id, s));
        let observation = self.observer.observe(nodes, now_ms);
        for (node, reason) in &observation.rejected {
            self.metrics.root_rejected(*reason);
            if *reason != RootRejection::Incomplete {
                tracing::warn!(%node, reason = reason.as_str(), "root not adopted");
            }
        }
        for (cluster, update) in &observation.adopted {
            let adopted = &self.observer.adopted()[cluster];
            if *cluster == self.params.cluster {
                continue;
            }
            let update = *update;
            self.metrics.root_adopted(
                update.then(|| adopted.adopted_ms.saturating_sub(adopted.claim.origin_ms)),
            );
            tracing::info!(%cluster, node = %adopted.node_id, epoch = adopted.claim.epoch, seq = adopted.claim.seq, role = ?adopted.claim.role, "adopted a new export");
        }
        let role_changed = self.elect(guard.self_node_state(), &live, now_ms);
        // Gossip-on-change: a new export version anywhere (ours included) goes to a
        // few live peers now rather than at their next round.
        // While catching up, everything is news: anti-entropy brings it, and pushing
        // each first sighting would only storm the mesh with handshakes.
        let push_to = if observation.new_root && self.was_ready {
            let me = guard.self_chitchat_id().gossip_advertise_addr;
            let peers: Vec<SocketAddr> = guard
                .node_states()
                .keys()
                .filter(|id| live.contains(&*id.node_id))
                .map(|id| id.gossip_advertise_addr)
                .filter(|addr| *addr != me)
                .collect();
            self.pusher.targets(&peers, Instant::now())
        } else {
            Vec::new()
        };
        // The view is rebuilt when something it depends on moved, and otherwise every
        // LIVENESS_EVERY for the time-driven state changes: at a hundred peers, a
        // rebuild every pass was most of the mesh's CPU.
        let live_changed = live != self.last_live;
        let dirty = !observation.adopted.is_empty()
            || live_changed
            || role_changed
            || std::mem::take(&mut self.local_dirty)
            || !self.was_ready
            || now >= self.view_due
            || !observation.rejected.is_empty();
        if !dirty {
            drop(guard);
            self.send_pushes(push_to);
            return;
        }
        self.view_due = now + LIVENESS_EVERY;
        if live_changed {
            self.last_live = live.clone();
        }
        let mut waiting_roots: Vec<String> = guard
            .node_states()
            .iter()
            // DESIGN.md §1: a root adopted for every cluster whose *live* nodes hold
            // one; a dead node's root does not hold readiness up.
            .filter(|(id, s)| {
                s.get(ROOT_KEY).is_some()
                    && live.contains(&*id.node_id)
                    && node_cluster(&id.node_id).is_some_and(|c| {
                        c != self.params.cluster && !self.observer.adopted().contains_key(&c)
                    })
            })
            .map(|(id, _)| format!("a verified root of node {}", id.node_id))
            .collect();
        // Clusters none of whose roots is adopted yet while a live node's root waits
        // for keys still arriving. (A root refused for its certificate makes nothing
        // pending: that node is no member.)
        let pending: BTreeSet<ClusterId> = self
            .observer
            .awaiting_keys()
            .filter(|node| live.contains(*node))
            .filter_map(node_cluster)
            .filter(|c| *c != self.params.cluster && !self.observer.adopted().contains_key(c))
            .collect();
        let met_a_peer = guard
            .node_states()
            .keys()
            .any(|id| *id.node_id != self.params.node_id);
        let members = self.members(guard.node_states(), &live);
        drop(guard);
        self.send_pushes(push_to);
        if !met_a_peer && !self.params.config.seeds.is_empty() {
            waiting_roots.push("a first exchange with a mesh peer".into());
        }
        let missing = waiting_roots.clone();
        let mut view = self.build_view(&live, now_ms, waiting_roots, pending);
        view.status = Arc::new(self.mesh_status(members, &view.inputs, now_ms));
        if view.ready && !self.was_ready {
            if missing.is_empty() {
                tracing::info!("caught up with the mesh; ready");
            } else {
                tracing::warn!(
                    ?missing,
                    "ready after mesh.bootstrap_timeout without everything from the mesh"
                );
            }
        }
        self.metrics
            .set_clusters(view.inputs.values().map(|input| input.state));
        // Once ready, a peer never becomes unready because others are unreachable.
        let view = SourceView {
            ready: view.ready || self.was_ready,
            ..view
        };
        self.was_ready = view.ready;
        self.tx.send_if_modified(|current| {
            let same = current.ready == view.ready
                && current.inputs.len() == view.inputs.len()
                && current
                    .inputs
                    .iter()
                    .zip(&view.inputs)
                    .all(|((a, x), (b, y))| {
                        a == b && x.state == y.state && Arc::ptr_eq(&x.exports, &y.exports)
                    })
                && current.status == view.status;
            if !same {
                *current = view;
            }
            !same
        });
    }

    /// Every node chitchat holds, as the admin API shows it.
    fn members(
        &self,
        nodes: &BTreeMap<ChitchatId, NodeState>,
        live: &HashSet<Arc<str>>,
    ) -> Vec<Member> {
        nodes
            .iter()
            .map(|(id, state)| {
                let verified = self.observer.verified(&id.node_id, id.generation_id);
                Member {
                    node_id: id.node_id.to_string(),
                    generation: id.generation_id,
                    address: id.gossip_advertise_addr,
                    live: live.contains(&id.node_id),
                    cluster: verified.map(|r| r.cluster.clone()),
                    role: verified.map(|r| role(r.role)),
                    version: state.get(VERSION_KEY).and_then(status::sanitize_version),
                }
            })
            .collect()
    }

    /// The mesh facts behind a view: members, and per cluster its replicas, adopted
    /// root and when its state last changed.
    fn mesh_status(
        &mut self,
        members: Vec<Member>,
        inputs: &BTreeMap<ClusterId, ClusterInput>,
        now_ms: u64,
    ) -> MeshStatus {
        self.state_changes.retain(|c| inputs.contains_key(c));
        let mut clusters = BTreeMap::new();
        for (cluster, input) in inputs {
            self.state_changes.record(cluster, input.state, now_ms);
            let root = self
                .observer
                .adopted()
                .get(cluster)
                .filter(|_| *cluster != self.params.cluster)
                .map(|a| RootSummary {
                    node_id: a.node_id.clone(),
                    epoch: a.claim.epoch,
                    seq: a.claim.seq,
                    origin_ms: a.claim.origin_ms,
                    adopted_ms: a.adopted_ms,
                });
            let replicas = self
                .observer
                .replicas_of(cluster)
                .map(|(node, _)| node.to_string())
                .collect();
            clusters.insert(
                cluster.clone(),
                ClusterMesh {
                    replicas,
                    root,
                    state_since_ms: self.state_changes.since_ms(cluster),
                },
            );
        }
        MeshStatus {
            self_node: Some(self.params.node_id.clone()),
            members,
            clusters,
        }
    }

    fn send_pushes(&self, peers: Vec<SocketAddr>) {
        for peer in peers {
            if let Err(e) = self.handle.gossip(peer) {
                tracing::debug!(%peer, error = %e, "gossip-on-change not sent");
            }
        }
    }

    fn build_view(
        &mut self,
        live: &HashSet<Arc<str>>,
        now_ms: u64,
        waiting_roots: Vec<String>,
        pending: BTreeSet<ClusterId>,
    ) -> SourceView {
        let local = self.local.borrow();
        let mut inputs = BTreeMap::new();
        // The local cluster comes from the local source, never from gossip.
        if let Some(exports) = local.loaded.get(&self.params.cluster) {
            inputs.insert(
                self.params.cluster.clone(),
                ClusterInput {
                    exports: exports.clone(),
                    state: ClusterState::Live,
                },
            );
        }
        let observations = self
            .observer
            .observations_by_cluster(|node| live.contains(node));
        for (cluster, adopted) in self.observer.adopted() {
            // A cluster that left (fleetdns leave) is dropped at once, not aged out.
            if *cluster == self.params.cluster || adopted.claim.role == RootRole::Decommissioned {
                continue;
            }
            let replicas = observations.get(cluster).map_or(&[][..], Vec::as_slice);
            let prev = self.trackers.get(cluster).copied().unwrap_or_default();
            let next = liveness::next(prev, replicas, now_ms, &self.settings);
            if next.state != prev.state {
                tracing::info!(%cluster, state = ?next.state, "cluster state changed");
            }
            self.trackers.insert(cluster.clone(), next);
            inputs.insert(
                cluster.clone(),
                ClusterInput {
                    exports: adopted.exports.clone(),
                    state: next.state,
                },
            );
        }
        // A cluster with live nodes but no adopted root answers SERVFAIL (EDE 14) until
        // one is adopted: its names may exist, so NXDOMAIN would be false. The empty
        // export is kept across passes so an unchanged view is not republished.
        self.pending_exports.retain(|c, _| pending.contains(c));
        for cluster in pending {
            let exports = self
                .pending_exports
                .entry(cluster.clone())
                .or_insert_with(|| {
                    Arc::new(LocalExports {
                        cluster: cluster.clone(),
                        labels: BTreeMap::new(),
                        services: BTreeMap::new(),
                    })
                })
                .clone();
            inputs.insert(
                cluster,
                ClusterInput {
                    exports,
                    state: ClusterState::Pending,
                },
            );
        }
        let mut waiting_for: Vec<String> = local
            .pending
            .iter()
            .map(|(c, why)| format!("the source of cluster {c}: {why}"))
            .collect();
        if self.started.elapsed() < self.params.config.bootstrap_timeout {
            waiting_for.extend(waiting_roots);
        }
        SourceView {
            ready: waiting_for.is_empty(),
            inputs,
            waiting_for,
            status: Arc::default(),
        }
    }
}

/// The size of the digest chitchat sends each round: a count, then per known node
/// its id and three u64s. 0.11.1 does not compress it, and with the deltas it must fit
/// one 65,507-byte message, so it bounds the mesh's size.
fn digest_len(nodes: &BTreeMap<ChitchatId, NodeState>) -> usize {
    2 + nodes
        .keys()
        .map(|id| id.serialized_len() + 3 * 8)
        .sum::<usize>()
}

/// `fleetdns leave`: joins the mesh as `<cluster>/leave`, publishes a signed
/// decommissioned root, lets it spread for a few gossip rounds, and leaves. Readers drop
/// the cluster at once. Run it after stopping the cluster's peers (it binds
/// `mesh.listen`); a peer started later rejoins with a newer epoch.
pub async fn leave(
    config: MeshConfig,
    fleet: FleetName,
    cluster: ClusterId,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<usize> {
    let node_id = format!("{cluster}/leave");
    let params = MeshParams {
        config: config.clone(),
        fleet: fleet.clone(),
        cluster: cluster.clone(),
        node_id: node_id.clone(),
        election: Election::LowestNodeId,
    };
    let credentials = Credentials::load(&params, clock.unix_seconds())?;
    let generation = clock.unix_millis();
    let chitchat_config = chitchat_config(&config, &fleet, &node_id, generation);
    let (transport, _) =
        tls_transport(&params, &credentials, &clock, &MeshMetrics::unregistered())?;
    let handle = spawn_chitchat(chitchat_config, Vec::new(), &transport)
        .await
        .with_context(|| {
            format!(
                "joining the mesh on mesh.listen {} (stop this cluster's peers first)",
                config.listen
            )
        })?;
    let mut publisher = Publisher::new(identity(&params, &credentials), generation, generation);
    let now = clock.unix_millis();
    handle
        .with_chitchat(|c| publisher.decommission(c.self_node_state(), now))
        .await?;
    // Wait for live peers, then give the root a few rounds to spread.
    let deadline = Instant::now() + config.bootstrap_timeout + Duration::from_secs(10);
    let mut peers = 0;
    while Instant::now() < deadline {
        peers = {
            let chitchat = handle.chitchat();
            let guard = chitchat.lock().await;
            guard
                .live_nodes()
                .filter(|id| *id.node_id != node_id)
                .count()
        };
        if peers > 0 {
            tokio::time::sleep(config.gossip_interval * 5).await;
            break;
        }
        tokio::time::sleep(config.gossip_interval).await;
    }
    handle.shutdown().await?;
    Ok(peers)
}

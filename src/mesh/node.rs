//! One mesh peer at run time: the chitchat node and the loop that feeds it and reads it.
//!
//! This module owns the chitchat handle of a running peer (the only one in the
//! process's mesh) and its observe loop: it publishes the local cluster's exports when
//! the services file changes, stamps `m:alive` every `alive_interval`, and every 100 ms
//! adopts other clusters' verified exports, runs the liveness state machine and hands
//! the result to the snapshot publisher as [`SourceView`]s.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::liveness::{self, LivenessSettings, Tracked};
use super::peer::{Observer, PeerIdentity, Publisher};
use super::transport::{StreamTransport, TransportSettings};
use crate::clock::Clock;
use crate::config::{DEAD_NODE_GRACE_PERIOD, MeshConfig};
use crate::dns::index::Readiness;
use crate::identity::FleetName;
use crate::model::ClusterId;
use crate::source::file::FileSourceState;
use crate::view::{ClusterInput, ClusterState};

/// What the snapshot publisher builds from: every cluster's input and readiness.
#[derive(Debug, Clone, Default)]
pub struct SourceView {
    pub inputs: BTreeMap<ClusterId, ClusterInput>,
    pub ready: bool,
    pub waiting_for: Vec<String>,
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

/// Everything a peer needs to join the mesh.
#[derive(Debug, Clone)]
pub struct MeshParams {
    pub config: MeshConfig,
    pub fleet: FleetName,
    pub cluster: ClusterId,
    pub node_id: String,
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
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
            initial_interval: mesh.gossip_interval,
            dead_node_grace_period: DEAD_NODE_GRACE_PERIOD,
            ..Default::default()
        },
        marked_for_deletion_grace_period: DEAD_NODE_GRACE_PERIOD,
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}

/// Joins the mesh and starts the observe loop; the returned receiver carries the
/// fleet's inputs. The loop ends, leaving the mesh, when `cancel` fires.
pub async fn start(
    params: MeshParams,
    local: watch::Receiver<FileSourceState>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) -> anyhow::Result<(watch::Receiver<SourceView>, tokio::task::JoinHandle<()>)> {
    let mesh = &params.config;
    let cert = read(&mesh.cert)?;
    let key = read(&mesh.key)?;
    let bundle = mesh
        .trust_bundle
        .iter()
        .map(|p| read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Our own credentials must be what peers will accept, or nobody adopts us.
    let me = crate::identity::verify_chain(&cert, &bundle, &params.fleet, clock.unix_seconds())
        .with_context(|| format!("checking {} against mesh.trust_bundle", mesh.cert.display()))?;
    if me.cluster != params.cluster {
        anyhow::bail!(
            "{} is a certificate of cluster {}, not of {}",
            mesh.cert.display(),
            me.cluster,
            params.cluster
        );
    }
    let generation = clock.unix_millis();
    let chitchat_config = chitchat_config(mesh, &params.fleet, &params.node_id, generation);
    let transport = StreamTransport::new(TransportSettings::default());
    let handle = spawn_chitchat(chitchat_config, Vec::new(), &transport)
        .await
        .with_context(|| format!("joining the mesh on mesh.listen {}", mesh.listen))?;
    let publisher = Publisher::new(
        PeerIdentity {
            fleet: params.fleet.clone(),
            node_id: params.node_id.clone(),
            cert_chain_pem: cert,
            key_pem: key,
        },
        generation,
        generation,
    );
    let observer = Observer::new(params.fleet.clone(), bundle);
    let (tx, rx) = watch::channel(SourceView::default());
    let task = tokio::spawn(observe_loop(
        params, handle, publisher, observer, local, tx, clock, cancel,
    ));
    Ok((rx, task))
}

#[allow(clippy::too_many_arguments)]
async fn observe_loop(
    params: MeshParams,
    handle: ChitchatHandle,
    mut publisher: Publisher,
    mut observer: Observer,
    mut local: watch::Receiver<FileSourceState>,
    tx: watch::Sender<SourceView>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let settings = LivenessSettings {
        alive_interval: params.config.alive_interval,
        clock_skew: params.config.clock_skew,
        max_stale: params.config.max_stale,
        rejoin_after: params.config.rejoin_after,
    };
    let started = Instant::now();
    let mut trackers: BTreeMap<ClusterId, Tracked> = BTreeMap::new();
    let mut observe = tokio::time::interval(OBSERVE_EVERY);
    let mut alive = tokio::time::interval(params.config.alive_interval);
    let mut was_ready = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = local.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = local.borrow_and_update().clone();
                if let Some(exports) = state.loaded.get(&params.cluster).cloned() {
                    let now = clock.unix_seconds();
                    let published = handle
                        .with_chitchat(|c| publisher.publish(c.self_node_state(), &exports, now))
                        .await;
                    match published {
                        Ok(refused) => {
                            for (key, reason) in refused {
                                tracing::warn!(service = %key, %reason, "export not gossiped");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot sign the export root"),
                    }
                }
            }
            _ = alive.tick() => {
                let now = clock.unix_millis();
                let stamped = handle
                    .with_chitchat(|c| publisher.stamp_alive(c.self_node_state(), now))
                    .await;
                if let Err(e) = stamped {
                    tracing::error!(error = %e, "cannot sign the alive stamp");
                }
            }
            _ = observe.tick() => {}
        }
        let view = {
            let chitchat = handle.chitchat();
            let guard = chitchat.lock().await;
            let live: HashSet<String> = guard
                .live_nodes()
                .map(|id| id.node_id.to_string())
                .collect();
            let nodes = guard.node_states().iter().map(|(id, s)| (&*id.node_id, s));
            let (changed, rejected) = observer.observe(nodes, clock.unix_seconds());
            for (node, reason) in rejected {
                tracing::debug!(%node, reason = reason.as_str(), "root not adopted");
            }
            for cluster in changed {
                tracing::info!(%cluster, "adopted a new export");
            }
            let waiting_roots: Vec<String> = guard
                .node_states()
                .iter()
                .filter(|(id, s)| {
                    s.get(super::codec::ROOT_KEY).is_some()
                        && super::codec::node_cluster(&id.node_id)
                            .is_some_and(|c| !observer.adopted().contains_key(&c))
                })
                .map(|(id, _)| format!("a verified root of node {}", id.node_id))
                .collect();
            let mut waiting_roots = waiting_roots;
            let met_a_peer = guard
                .node_states()
                .keys()
                .any(|id| *id.node_id != params.node_id);
            if !met_a_peer && !params.config.seeds.is_empty() {
                waiting_roots.push("a first exchange with a mesh peer".into());
            }
            build_view(
                &params,
                &mut trackers,
                &observer,
                &live,
                &local.borrow(),
                &settings,
                clock.unix_millis(),
                waiting_roots,
                started.elapsed(),
            )
        };
        let view = SourceView {
            // Once ready, a peer never becomes unready because others are unreachable.
            ready: view.ready || was_ready,
            ..view
        };
        was_ready = view.ready;
        tx.send_if_modified(|current| {
            let same = current.ready == view.ready
                && current.inputs.len() == view.inputs.len()
                && current
                    .inputs
                    .iter()
                    .zip(&view.inputs)
                    .all(|((a, x), (b, y))| {
                        a == b && x.state == y.state && Arc::ptr_eq(&x.exports, &y.exports)
                    });
            if !same {
                *current = view;
            }
            !same
        });
    }
    if let Err(e) = handle.shutdown().await {
        tracing::warn!(error = %e, "mesh shutdown");
    }
}

#[allow(clippy::too_many_arguments)]
fn build_view(
    params: &MeshParams,
    trackers: &mut BTreeMap<ClusterId, Tracked>,
    observer: &Observer,
    live: &HashSet<String>,
    local: &FileSourceState,
    settings: &LivenessSettings,
    now_ms: u64,
    waiting_roots: Vec<String>,
    since_start: Duration,
) -> SourceView {
    let mut inputs = BTreeMap::new();
    // The local cluster comes from the local source, never from gossip.
    if let Some(exports) = local.loaded.get(&params.cluster) {
        inputs.insert(
            params.cluster.clone(),
            ClusterInput {
                exports: exports.clone(),
                state: ClusterState::Live,
            },
        );
    }
    for (cluster, adopted) in observer.adopted() {
        // A cluster that left (fleetdns leave) is dropped at once, not aged out.
        if *cluster == params.cluster || adopted.claim.decommissioned {
            continue;
        }
        let replicas = observer.replica_observations(cluster, |node| live.contains(node));
        let prev = trackers.get(cluster).copied().unwrap_or_default();
        let next = liveness::next(prev, &replicas, now_ms, settings);
        if next.state != prev.state {
            tracing::info!(%cluster, state = ?next.state, "cluster state changed");
        }
        trackers.insert(cluster.clone(), next);
        inputs.insert(
            cluster.clone(),
            ClusterInput {
                exports: adopted.exports.clone(),
                state: next.state,
            },
        );
    }
    let mut waiting_for: Vec<String> = local
        .pending
        .iter()
        .map(|(c, why)| format!("services file of cluster {c}: {why}"))
        .collect();
    let bootstrapped = since_start >= params.config.bootstrap_timeout;
    if !bootstrapped {
        waiting_for.extend(waiting_roots);
    }
    SourceView {
        ready: waiting_for.is_empty(),
        inputs,
        waiting_for,
    }
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
    let cert = read(&config.cert)?;
    let key = read(&config.key)?;
    let node_id = format!("{cluster}/leave");
    let generation = clock.unix_millis();
    let chitchat_config = chitchat_config(&config, &fleet, &node_id, generation);
    let transport = StreamTransport::new(TransportSettings::default());
    let handle = spawn_chitchat(chitchat_config, Vec::new(), &transport)
        .await
        .with_context(|| {
            format!(
                "joining the mesh on mesh.listen {} (stop this cluster's peers first)",
                config.listen
            )
        })?;
    let mut publisher = Publisher::new(
        PeerIdentity {
            fleet,
            node_id: node_id.clone(),
            cert_chain_pem: cert,
            key_pem: key,
        },
        generation,
        generation,
    );
    let now = clock.unix_seconds();
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

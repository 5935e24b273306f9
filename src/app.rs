//! Wiring: binds the sockets, spawns every task under one cancellation tree, publishes
//! snapshots, and drains on shutdown.
//!
//! This module owns the one writer of the published snapshot: the publish task turns
//! each new source state into a snapshot and swaps it in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::config::SourceConfig;
use crate::dns::index::{Readiness, ReplySettings};
use crate::dns::server::{BoundDns, TcpLimits};
use crate::mesh::metrics::MeshMetrics;
use crate::mesh::node::SourceView;
use crate::metrics::Metrics;
use crate::snapshot::{Engine, SharedSnapshot, Snapshot, SnapshotSettings};
use crate::source::SourceState;
use crate::source::file::spawn_file_source;
use crate::source::watch::WatchSettings;
use crate::view::{ClusterInput, ClusterState};

/// Knobs tests and the demo set; production uses the defaults.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub clock: Arc<dyn Clock>,
    pub watch: WatchSettings,
    /// The mesh node id (`<cluster>/<replica>`); default `<cluster>/0`.
    pub node_id: Option<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            watch: WatchSettings::default(),
            node_id: None,
        }
    }
}

/// A running peer.
pub struct App {
    pub dns_addrs: Vec<SocketAddr>,
    /// DNS-over-TLS addresses (`dns.tls_listen`), if any.
    pub dot_addrs: Vec<SocketAddr>,
    pub ops_addr: Option<SocketAddr>,
    /// The admin API's address (`admin.listen`), if configured.
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    snapshot: SharedSnapshot,
    generation: watch::Receiver<u64>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl App {
    /// Binds every listener (failing fast on a taken address) and starts serving.
    pub async fn start(config: Config, options: StartOptions) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        let mut engine = Engine::new(SnapshotSettings::from_config(&config));
        let initial = engine.apply(
            BTreeMap::new(),
            Readiness::NotReady,
            vec!["the first read of every services file".into()],
            options.clock.unix_seconds(),
        );
        let (generation_tx, generation) = watch::channel(initial.generation);
        let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(initial));
        let mut metrics = Metrics::new();
        let scraped = snapshot.clone();
        metrics.register_scrape_gauges(
            "memory_estimated_bytes",
            "Approximate heap bytes of the served snapshot, by part (computed at scrape).",
            "part",
            move || {
                let snap = scraped.load();
                let (view, model) = snap.view.estimated_bytes();
                vec![
                    ("index", snap.index.estimated_bytes() as u64),
                    ("view", view as u64),
                    ("model", model as u64),
                ]
            },
        );
        let mesh_metrics = config
            .mesh
            .as_ref()
            .map(|_| MeshMetrics::register(metrics.registry_mut()));
        let source_stats = Arc::new(crate::source::file::SourceStats::default());
        let read = source_stats.clone();
        metrics.register_scrape_counters(
            "source_file_reads",
            "Services-file reads, by outcome (loaded, invalid, unreadable)",
            "outcome",
            move || {
                use std::sync::atomic::Ordering::Relaxed;
                vec![
                    ("loaded", read.loaded.load(Relaxed)),
                    ("invalid", read.invalid.load(Relaxed)),
                    ("unreadable", read.unreadable.load(Relaxed)),
                ]
            },
        );
        let admin_metrics = config
            .admin
            .as_ref()
            .map(|_| crate::admin::AdminMetrics::register(metrics.registry_mut()));
        register_refusals(&mut metrics, &snapshot);
        let kube_metrics = match &config.source {
            SourceConfig::Kubernetes(_) => Some((
                crate::source::kube::KubeMetrics::register(metrics.registry_mut()),
                crate::source::lease::LeaseMetrics::register(metrics.registry_mut()),
            )),
            _ => None,
        };
        let metrics = Arc::new(metrics);

        let mut dns = BoundDns::bind(&config.dns.listen, config.dns.udp_workers).await?;
        if let Some(tls) = &config.dns.tls {
            let server = crate::dns::dot::server_config(&tls.cert, &tls.key)?;
            dns.bind_tls(&tls.listen, server).await?;
        }
        let dns_addrs = dns.local_addrs();
        let dot_addrs = dns.tls_addrs();
        let mut tasks = JoinSet::new();
        // Dropping the JoinSet aborts tasks but not the UDP worker threads: if starting
        // fails from here on, cancel so that they stop and release their sockets.
        let stop_on_error = cancel.clone().drop_guard();
        dns.spawn(
            snapshot.clone(),
            ReplySettings {
                max_udp_payload: config.dns.max_udp_payload,
            },
            TcpLimits {
                idle_timeout: config.dns.tcp_idle_timeout,
                max_connections: config.dns.max_tcp_connections,
                max_per_client: config.dns.max_tcp_per_client,
            },
            metrics.clone(),
            cancel.clone(),
            &mut tasks,
        )
        .context("starting the UDP workers")?;

        let ops_addr = match config.ops_listen {
            Some(addr) => {
                let (bound, serve) =
                    crate::ops::bind(addr, snapshot.clone(), metrics.clone(), cancel.clone())
                        .await
                        .context("starting the ops listener")?;
                tasks.spawn(serve);
                Some(bound)
            }
            None => None,
        };

        let reply = ReplySettings {
            max_udp_payload: config.dns.max_udp_payload,
        };
        let admin_addr = match (&config.admin, admin_metrics) {
            (Some(admin), Some(admin_metrics)) => {
                let token = admin
                    .token
                    .as_ref()
                    .map(crate::admin::read_token)
                    .transpose()?;
                let tls = admin
                    .tls
                    .as_ref()
                    .map(|t| crate::dns::dot::tls_server(&t.cert, &t.key, &[b"http/1.1"]))
                    .transpose()
                    .context("admin.tls")?;
                let settings = crate::admin::AdminSettings {
                    listen: admin.listen,
                    token,
                    tls,
                    reply,
                };
                let (bound, serve) = crate::admin::bind(
                    settings,
                    snapshot.clone(),
                    options.clock.clone(),
                    admin_metrics,
                    cancel.clone(),
                )
                .await
                .context("starting the admin API")?;
                tasks.spawn(serve);
                Some(bound)
            }
            _ => None,
        };

        let mut election = crate::mesh::node::Election::LowestNodeId;
        let files = match (&config.source, kube_metrics) {
            (SourceConfig::Kubernetes(kube), Some((kube_metrics, lease_metrics))) => {
                let client = crate::source::kube::client(kube).await?;
                if config.mesh.is_some() {
                    // Only a mesh peer publishes, so only it needs the lease.
                    let identity = node_id_of(&config, options.node_id.clone())?;
                    let (held, task) = crate::source::lease::spawn(
                        client.clone(),
                        kube.lease.clone(),
                        identity,
                        options.clock.clone(),
                        lease_metrics,
                        cancel.child_token(),
                    );
                    // Shutdown waits for it: a held lease is released on the way out.
                    tasks.spawn(async move {
                        let _ = task.await;
                    });
                    election = crate::mesh::node::Election::Lease(held);
                }
                crate::source::kube::spawn(
                    client,
                    config.cluster.clone(),
                    config.cluster_labels.clone(),
                    kube,
                    kube_metrics,
                    cancel.child_token(),
                )
            }
            _ => spawn_file_source(
                config.source.files(&config.cluster),
                options.watch.clone(),
                source_stats,
                cancel.child_token(),
            ),
        };
        let source = match &config.mesh {
            None => spawn_static_view(files, cancel.child_token()),
            Some(mesh) => {
                let mut params = mesh_params(&config, mesh, options.node_id.clone())?;
                params.election = election;
                let (view, task) = crate::mesh::node::start(
                    params,
                    files,
                    options.clock.clone(),
                    mesh_metrics
                        .clone()
                        .unwrap_or_else(MeshMetrics::unregistered),
                    cancel.child_token(),
                )
                .await?;
                tasks.spawn(async move {
                    let _ = task.await;
                });
                view
            }
        };
        tasks.spawn(publish_loop(
            source,
            engine,
            snapshot.clone(),
            generation_tx,
            metrics.clone(),
            options.clock.clone(),
            cancel.clone(),
        ));
        let ops_text = ops_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        let admin_text = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
        tracing::info!(dns = ?dns_addrs, dot = ?dot_addrs, ops = %ops_text, admin = %admin_text, cluster = %config.cluster, zone = %config.zone.as_str(), "fleetdns serving");
        stop_on_error.disarm();
        Ok(Self {
            dns_addrs,
            dot_addrs,
            ops_addr,
            admin_addr,
            metrics,
            snapshot,
            generation,
            cancel,
            tasks,
        })
    }

    /// The snapshot answering right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Waits until a snapshot satisfying `pred` is published.
    pub async fn wait_for(&self, mut pred: impl FnMut(&Snapshot) -> bool) {
        let mut rx = self.generation.clone();
        loop {
            if pred(&self.snapshot.load()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A token that stops the app when cancelled (e.g. from a signal handler).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops every task and waits for them: UDP workers stop (their threads are joined),
    /// TCP connections finish the query in hand.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                tracing::error!(error = %e, "task panicked");
            }
        }
    }

    /// Runs until the token is cancelled, then drains.
    pub async fn run_until_cancelled(self) {
        self.cancel.cancelled().await;
        self.shutdown().await;
    }
}

impl Drop for App {
    /// An app dropped without `shutdown` still stops: its tasks are aborted with the
    /// JoinSet, and the cancellation stops the UDP worker threads, which are not tasks.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `fleetdns_refused_addresses{reason}` and `fleetdns_unserved_exports{reason}`, read
/// off the served view at scrape time: what other clusters export that this peer does
/// not answer, and why (the admin API shows which).
fn register_refusals(metrics: &mut Metrics, snapshot: &SharedSnapshot) {
    use crate::view::{Refusal, Served};
    let count = |snapshot: &SharedSnapshot, addresses: bool| {
        let snap = snapshot.load();
        let mut counts = [0u64; Refusal::ALL.len()];
        for cluster in snap.view.clusters.values() {
            for served in cluster.services.values() {
                if addresses {
                    for (_, reason) in &served.refused {
                        counts[*reason as usize] += 1;
                    }
                } else if let Served::Nothing { reason } = served.served {
                    counts[reason as usize] += 1;
                }
            }
        }
        Refusal::ALL
            .iter()
            .map(|r| (r.as_str(), counts[*r as usize]))
            .collect()
    };
    let scraped = snapshot.clone();
    metrics.register_scrape_gauges(
        "refused_addresses",
        "Exported addresses this peer does not serve, by reason (in the served view)",
        "reason",
        move || count(&scraped, true),
    );
    let scraped = snapshot.clone();
    metrics.register_scrape_gauges(
        "unserved_exports",
        "Exports this peer gives no names, by reason (in the served view)",
        "reason",
        move || count(&scraped, false),
    );
}

/// A static fleet: every services file is a live cluster.
fn spawn_static_view(
    mut files: watch::Receiver<SourceState>,
    cancel: CancellationToken,
) -> watch::Receiver<SourceView> {
    let (tx, rx) = watch::channel(SourceView::default());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = files.changed() => if changed.is_err() { return },
            }
            let state = files.borrow_and_update().clone();
            let inputs = state
                .loaded
                .into_iter()
                .map(|(id, exports)| {
                    let input = ClusterInput {
                        exports,
                        state: ClusterState::Live,
                    };
                    (id, input)
                })
                .collect();
            let waiting_for: Vec<String> = state
                .pending
                .iter()
                .map(|(cluster, why)| format!("the source of cluster {cluster}: {why}"))
                .collect();
            tx.send_replace(SourceView {
                inputs,
                ready: waiting_for.is_empty(),
                waiting_for,
                status: Default::default(),
            });
        }
    });
    rx
}

async fn publish_loop(
    mut source: watch::Receiver<SourceView>,
    mut engine: Engine,
    snapshot: SharedSnapshot,
    generation: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    metrics.set_ready(false);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = source.changed() => if changed.is_err() { return },
        }
        let view = source.borrow_and_update().clone();
        let readiness = view.readiness();
        let (inputs, waiting_for) = (view.inputs, view.waiting_for);
        engine.set_status(view.status);
        let now = clock.unix_seconds();
        // A first build of a large fleet takes seconds: keep it off the runtime's
        // workers, which also serve TCP and the ops listener.
        let built = tokio::task::spawn_blocking(move || {
            let next = engine.apply(inputs, readiness, waiting_for, now);
            (engine, next)
        })
        .await;
        let next = match built {
            Ok((returned, next)) => {
                engine = returned;
                next
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot build failed; publishing stops");
                return;
            }
        };
        let per_cluster: Vec<(String, u64)> = next
            .view
            .clusters
            .iter()
            .map(|(id, c)| (id.to_string(), c.services.len() as u64))
            .collect();
        metrics.set_view(next.generation, &per_cluster);
        metrics.set_ready(next.readiness == Readiness::Ready);
        tracing::info!(
            generation = next.generation,
            serial = next.serial,
            names = next.index.name_count(),
            "published snapshot"
        );
        let g = next.generation;
        snapshot.store(Arc::new(next));
        generation.send_replace(g);
    }
}

/// What `fleetdns check` reports about a valid config.
#[derive(Debug)]
pub struct CheckSummary {
    pub cluster: String,
    pub zone: String,
    pub lines: Vec<String>,
}

/// Loads every services file a config names, as the file source would.
fn load_all(config: &Config) -> anyhow::Result<BTreeMap<crate::model::ClusterId, ClusterInput>> {
    let mut inputs = BTreeMap::new();
    for (cluster, path) in config.source.files(&config.cluster) {
        let key = match &config.source {
            crate::config::SourceConfig::File(_) => "source.file".to_string(),
            _ => format!("source.files.{cluster}"),
        };
        let exports = crate::source::file::load_services_file(&path, &cluster)
            .with_context(|| key.clone())?;
        inputs.insert(
            cluster,
            ClusterInput {
                exports: Arc::new(exports),
                state: ClusterState::Live,
            },
        );
    }
    Ok(inputs)
}

/// This replica's node id: `--node-id`, default `<cluster>/0`, checked to be of the
/// config's cluster.
fn node_id_of(config: &Config, node_id: Option<String>) -> anyhow::Result<String> {
    let node_id = node_id.unwrap_or_else(|| format!("{}/0", config.cluster));
    if crate::mesh::codec::node_cluster(&node_id).as_ref() != Some(&config.cluster) {
        anyhow::bail!("--node-id {node_id:?} must be {}/<replica>", config.cluster);
    }
    Ok(node_id)
}

/// What a peer of `config` joins the mesh with, as node `node_id` (default
/// `<cluster>/0`), which must be one of the config's cluster.
fn mesh_params(
    config: &Config,
    mesh: &crate::config::MeshConfig,
    node_id: Option<String>,
) -> anyhow::Result<crate::mesh::node::MeshParams> {
    let node_id = node_id_of(config, node_id)?;
    Ok(crate::mesh::node::MeshParams {
        config: mesh.clone(),
        fleet: crate::identity::FleetName::parse(&config.fleet)?,
        cluster: config.cluster.clone(),
        node_id,
        election: crate::mesh::node::Election::LowestNodeId,
    })
}

/// `fleetdns check`: validates the config and every services file it names.
pub fn check(path: &std::path::Path) -> anyhow::Result<CheckSummary> {
    let config = Config::load(path)?;
    let inputs = load_all(&config)?;
    if let Some(mesh) = &config.mesh {
        // The credentials must be ones peers will accept, as `run` requires.
        let params = mesh_params(&config, mesh, None)?;
        crate::mesh::node::Credentials::load(&params, SystemClock.unix_seconds())?;
    }
    let mut lines: Vec<String> = inputs
        .iter()
        .map(|(id, input)| format!("cluster {id}: {} services", input.exports.services.len()))
        .collect();
    if let SourceConfig::Kubernetes(kube) = &config.source {
        // The API itself is not contacted (check must work offline); the kubeconfig
        // must at least be one kube can read.
        let from = match &kube.kubeconfig {
            Some(path) => {
                kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("source.kubernetes.kubeconfig: {}", path.display()))?;
                format!("kubeconfig {}", path.display())
            }
            None => "the pod's service account".to_string(),
        };
        lines.push(format!(
            "cluster {}: Kubernetes API from {from}; publisher chosen by Lease {}/{}",
            config.cluster, kube.lease.namespace, kube.lease.name
        ));
    }
    if let Some(admin) = &config.admin {
        if let Some(token) = &admin.token {
            crate::admin::read_token(token)?;
        }
        lines.push(format!("admin API on {}", admin.listen));
    }
    Ok(CheckSummary {
        cluster: config.cluster.to_string(),
        zone: config.zone.as_str().to_string(),
        lines,
    })
}

/// `fleetdns dump-zone`: the zone this config serves, as an RFC 1035 zone file.
pub fn dump_zone(path: &std::path::Path) -> anyhow::Result<String> {
    let config = Config::load(path)?;
    let inputs = load_all(&config)?;
    let settings = SnapshotSettings::from_config(&config);
    let view = settings.view(&inputs);
    let serial = u32::try_from(SystemClock.unix_seconds()).unwrap_or(u32::MAX);
    let zone = crate::dns::zone::Zone::build(&view, &settings.zone_params(serial));
    Ok(zone.to_zone_file())
}

/// What `fleetdns keygen` wrote.
#[derive(Debug)]
pub struct KeygenReport {
    pub ca_created: bool,
    pub files: Vec<std::path::PathBuf>,
}

/// Writes a private key readable by its owner only.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `fleetdns keygen`: makes (or reuses) the fleet CA in `out` and issues a leaf per
/// cluster. Never overwrites a leaf: reissuing means deleting it first.
pub fn keygen(
    fleet: &str,
    clusters: &[String],
    out: &std::path::Path,
    days: u32,
    unix_now: u64,
) -> anyhow::Result<KeygenReport> {
    use crate::identity::{Credentials, FleetName, issue_leaf, new_ca};
    let fleet = FleetName::parse(fleet)?;
    if clusters.is_empty() {
        anyhow::bail!("name at least one cluster id to issue a certificate for");
    }
    let ids = clusters
        .iter()
        .map(|c| crate::model::ClusterId::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    for id in &ids {
        for ext in ["pem", "key"] {
            let path = out.join(format!("{id}.{ext}"));
            if path.exists() {
                anyhow::bail!(
                    "{} exists: delete it to reissue the {id} certificate",
                    path.display()
                );
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (ca_cert, ca_key) = (out.join("ca.pem"), out.join("ca.key"));
    let mut files = Vec::new();
    let ca_created;
    let ca = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            ca_created = false;
            Credentials {
                cert_pem: std::fs::read_to_string(&ca_cert)
                    .with_context(|| format!("reading {}", ca_cert.display()))?,
                key_pem: std::fs::read_to_string(&ca_key)
                    .with_context(|| format!("reading {}", ca_key.display()))?,
            }
        }
        (false, false) => {
            ca_created = true;
            let ca = new_ca(&fleet, unix_now, 3650)?;
            std::fs::write(&ca_cert, &ca.cert_pem)
                .with_context(|| format!("writing {}", ca_cert.display()))?;
            write_private(&ca_key, &ca.key_pem)?;
            files.extend([ca_cert.clone(), ca_key.clone()]);
            ca
        }
        _ => anyhow::bail!(
            "{} and {} must both exist (reuse the CA) or both be absent (make one)",
            ca_cert.display(),
            ca_key.display()
        ),
    };
    if let Some(other) = crate::identity::ca_fleet(&ca.cert_pem)?
        && other != fleet.as_str()
    {
        anyhow::bail!(
            "{} is the CA of fleet {other:?}, not of {:?}: use another --out directory",
            ca_cert.display(),
            fleet.as_str()
        );
    }
    // A bundle may hold an old and a new CA during a rotation: never overwrite it.
    let bundle = out.join("trust-bundle.pem");
    if !bundle.exists() {
        std::fs::write(&bundle, &ca.cert_pem)
            .with_context(|| format!("writing {}", bundle.display()))?;
        files.push(bundle);
    }
    for id in &ids {
        let leaf = issue_leaf(&ca, &fleet, id, unix_now, days).with_context(|| {
            format!("issuing the {id} certificate (is ca.pem/ca.key a fleetdns CA?)")
        })?;
        let (cert, key) = (out.join(format!("{id}.pem")), out.join(format!("{id}.key")));
        std::fs::write(&cert, &leaf.cert_pem)
            .with_context(|| format!("writing {}", cert.display()))?;
        write_private(&key, &leaf.key_pem)?;
        files.extend([cert, key]);
    }
    Ok(KeygenReport { ca_created, files })
}

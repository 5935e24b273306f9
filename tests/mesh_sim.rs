//! Deterministic mesh tests: whole peers (the real observe loop, publisher election,
//! observer and liveness state machine) gossiping over chitchat's in-process
//! `ChannelTransport` under paused tokio time, with link cuts, message loss through
//! our own `Transport` wrapper, gossip tasks that fail and restart, and forged state.
//! Every wait is for a state under a (virtual) timeout.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::{ChitchatHandle, ChitchatMessage};
use common::mesh::bare_chitchat_config;
use fleetdns::clock::Clock;
use fleetdns::config::MeshConfig;
use fleetdns::identity::{Credentials as Leaf, FleetName, issue_leaf, new_ca};
use fleetdns::mesh::metrics::MeshMetrics;
use fleetdns::mesh::node::{Credentials, MeshParams, SourceView, spawn};
use fleetdns::mesh::peer::{PeerIdentity, Publisher};
use fleetdns::model::{ClusterId, LocalExports};
use fleetdns::source::SourceState;
use fleetdns::source::file::parse_services_file;
use fleetdns::view::ClusterState;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Virtual wall-clock start (ms): 2026-11-18.
const BASE_MS: u64 = 1_795_000_000_000;
/// Long enough for anything a test waits for, in virtual time.
const WAIT: Duration = Duration::from_secs(300);

/// The wall clock of every simulated peer: follows tokio's paused clock.
#[derive(Debug)]
struct VirtualClock {
    start: Instant,
}

impl Clock for VirtualClock {
    fn unix_seconds(&self) -> u64 {
        self.unix_millis() / 1000
    }

    fn unix_millis(&self) -> u64 {
        BASE_MS + u64::try_from(self.start.elapsed().as_millis()).unwrap()
    }
}

/// chitchat's channel transport with faults: a share of sends lost (deterministic
/// pseudo-random), and listeners that can be broken so `recv` fails and chitchat's
/// task stops.
#[derive(Clone, Default)]
struct FaultyTransport {
    inner: ChannelTransport,
    loss_per_mille: Arc<AtomicU32>,
    rng: Arc<Mutex<u64>>,
    breakers: Arc<Mutex<HashMap<SocketAddr, Arc<Notify>>>>,
}

impl FaultyTransport {
    fn set_loss(&self, per_mille: u32) {
        self.loss_per_mille.store(per_mille, Ordering::Relaxed);
    }

    /// The listener at `addr` fails its next `recv`, as if its socket were gone.
    fn break_listener(&self, addr: SocketAddr) {
        self.breaker(addr).notify_one();
    }

    fn breaker(&self, addr: SocketAddr) -> Arc<Notify> {
        self.breakers
            .lock()
            .unwrap()
            .entry(addr)
            .or_default()
            .clone()
    }

    fn lose(&self) -> bool {
        let per_mille = self.loss_per_mille.load(Ordering::Relaxed);
        if per_mille == 0 {
            return false;
        }
        let mut state = self.rng.lock().unwrap();
        // xorshift64: deterministic for a given sequence of sends.
        let mut x = if *state == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            *state
        };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        (x % 1000) < u64::from(per_mille)
    }

    async fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.inner.remove_link(a, b).await;
    }

    async fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.inner.add_link(a, b).await;
    }
}

#[async_trait]
impl Transport for FaultyTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(FaultySocket {
            inner,
            transport: self.clone(),
            breaker: self.breaker(listen_addr),
        }))
    }
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    transport: FaultyTransport,
    breaker: Arc<Notify>,
}

#[async_trait]
impl Socket for FaultySocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        if self.transport.lose() {
            return Ok(());
        }
        self.inner.send(to, msg).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        tokio::select! {
            received = self.inner.recv() => received,
            () = self.breaker.notified() => anyhow::bail!("listener broken by the test"),
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// The test's fleet: a CA, leaves per cluster, one transport, one clock.
struct Sim {
    fleet: FleetName,
    ca: Leaf,
    leaves: Mutex<BTreeMap<String, Leaf>>,
    transport: FaultyTransport,
    clock: Arc<VirtualClock>,
    /// Peers' anti-entropy interval (fast by default).
    gossip_interval: Duration,
}

/// One running peer.
struct Peer {
    node_id: String,
    addr: SocketAddr,
    local: watch::Sender<SourceState>,
    view: watch::Receiver<SourceView>,
    registry: Registry,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn exports(cluster: &str, services: &[(&str, &str)]) -> LocalExports {
    let mut yaml = String::from("services:\n");
    for (name, ip) in services {
        yaml.push_str(&format!(
            "  - {{name: {name}, namespace: default, ingress: [{ip}], endpoints: [{{address: 10.0.0.1}}]}}\n"
        ));
    }
    parse_services_file(&yaml, "test", &cluster_id(cluster)).unwrap()
}

fn cluster_id(c: &str) -> ClusterId {
    ClusterId::parse(c).unwrap()
}

fn local_state(cluster: &str, exports: LocalExports) -> SourceState {
    SourceState {
        loaded: BTreeMap::from([(cluster_id(cluster), Arc::new(exports))]),
        pending: BTreeMap::new(),
    }
}

/// Fast settings (DESIGN.md §7): everything scaled down, the rules unchanged.
fn mesh_config(port: u16, seeds: &[u16], gossip_interval: Duration) -> MeshConfig {
    MeshConfig {
        listen: addr(port),
        advertise: addr(port),
        seeds: seeds.iter().map(|p| addr(*p).to_string()).collect(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
        trust_bundle: Vec::new(),
        gossip_interval,
        alive_interval: Duration::from_millis(500),
        clock_skew: Duration::ZERO,
        max_stale: Duration::from_secs(5),
        rejoin_after: Duration::from_secs(3),
        bootstrap_timeout: Duration::from_secs(1),
        max_connection_age: Duration::from_secs(600),
        revoked_clusters: BTreeSet::new(),
        reload_interval: Duration::from_secs(3600),
        phi_threshold: 8.0,
        config_file: None,
    }
}

impl Sim {
    fn new() -> Self {
        let fleet = FleetName::parse("sim").unwrap();
        let ca = new_ca(&fleet, BASE_MS / 1000, 30).unwrap();
        Self {
            fleet,
            ca,
            leaves: Mutex::default(),
            transport: FaultyTransport::default(),
            clock: Arc::new(VirtualClock {
                start: Instant::now(),
            }),
            gossip_interval: Duration::from_millis(100),
        }
    }

    fn leaf(&self, cluster: &str) -> Leaf {
        self.leaves
            .lock()
            .unwrap()
            .entry(cluster.to_string())
            .or_insert_with(|| {
                issue_leaf(
                    &self.ca,
                    &self.fleet,
                    &cluster_id(cluster),
                    BASE_MS / 1000,
                    30,
                )
                .unwrap()
            })
            .clone()
    }

    /// Starts peer `node_id` (`<cluster>/<replica>`) on `port`, exporting `exports`.
    async fn start(&self, node_id: &str, port: u16, seeds: &[u16], exports: LocalExports) -> Peer {
        let cluster = node_id.split('/').next().unwrap();
        let leaf = self.leaf(cluster);
        let (local, local_rx) = watch::channel(local_state(cluster, exports));
        let mut registry = Registry::with_prefix("fleetdns");
        let metrics = MeshMetrics::register(&mut registry);
        let cancel = CancellationToken::new();
        let params = MeshParams {
            config: mesh_config(port, seeds, self.gossip_interval),
            fleet: self.fleet.clone(),
            cluster: cluster_id(cluster),
            node_id: node_id.to_string(),
            election: Default::default(),
        };
        let credentials = Credentials::new(
            &params,
            leaf.cert_pem,
            leaf.key_pem,
            vec![self.ca.cert_pem.clone()],
            self.clock.unix_seconds(),
        )
        .unwrap();
        // The in-process transport carries no TLS: what these tests check is what
        // peers make of the state gossip brings, whoever relays it.
        let (view, task) = spawn(
            params,
            credentials,
            Arc::new(self.transport.clone()),
            None,
            local_rx,
            self.clock.clone(),
            metrics,
            cancel.clone(),
        )
        .await
        .unwrap();
        Peer {
            node_id: node_id.to_string(),
            addr: addr(port),
            local,
            view,
            registry,
            cancel,
            task,
        }
    }

    /// The observing peer of most tests: `west/0`, exporting one service `w`.
    async fn west(&self, port: u16, seeds: &[u16]) -> Peer {
        let ex = exports("west", &[("w", "192.0.2.9")]);
        self.start("west/0", port, seeds, ex).await
    }

    /// A bare chitchat node that is not a fleetdns peer: the tests' forger.
    async fn raw_node(
        &self,
        node_id: &str,
        generation: u64,
        port: u16,
        seeds: &[u16],
    ) -> ChitchatHandle {
        let seeds = seeds.iter().map(|p| addr(*p).to_string()).collect();
        let config =
            bare_chitchat_config(self.fleet.as_str(), node_id, generation, addr(port), seeds);
        chitchat::spawn_chitchat(config, Vec::new(), &self.transport)
            .await
            .unwrap()
    }
}

impl Peer {
    /// Waits (virtual time) until this peer's view satisfies `pred`.
    async fn wait(&mut self, what: &str, mut pred: impl FnMut(&SourceView) -> bool) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                if pred(&self.view.borrow_and_update()) {
                    return;
                }
                self.view.changed().await.expect("peer stopped");
            }
        })
        .await;
        assert!(waited.is_ok(), "{}: never {what}", self.node_id);
    }

    /// Stops the peer as a crash would: its gossip socket goes away with it.
    async fn kill(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line_prefix} not in\n{text}"))
    }
}

/// The service names and addresses a view holds for `cluster`, and its state.
fn seen(view: &SourceView, cluster: &str) -> Option<(BTreeMap<String, String>, ClusterState)> {
    let input = view.inputs.get(&cluster_id(cluster))?;
    let services = input
        .exports
        .services
        .iter()
        .map(|(k, s)| (k.name.to_string(), format!("{:?}", s.ingress)))
        .collect();
    Some((services, input.state))
}

fn names(view: &SourceView, cluster: &str) -> Option<BTreeSet<String>> {
    seen(view, cluster).map(|(s, _)| s.into_keys().collect())
}

fn state(view: &SourceView, cluster: &str) -> Option<ClusterState> {
    seen(view, cluster).map(|(_, s)| s)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Records every view `peer` hands out from now on, for invariants over all of them.
fn record(peer: &Peer) -> (Arc<Mutex<Vec<SourceView>>>, tokio::task::JoinHandle<()>) {
    let mut rx = peer.view.clone();
    let log = Arc::new(Mutex::new(vec![rx.borrow_and_update().clone()]));
    let sink = log.clone();
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            sink.lock().unwrap().push(rx.borrow_and_update().clone());
        }
    });
    (log, task)
}

#[tokio::test(start_paused = true)]
async fn peers_converge_under_loss_and_a_deletion_never_returns_after_a_partition_heals() {
    let sim = Sim::new();
    sim.transport.set_loss(200);
    let clusters = ["east", "west", "central", "north"];
    let mut peers = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let ip = format!("192.0.2.{}", i + 1);
        let ex = exports(
            c,
            &[("web", &ip), (&format!("only-{c}"), &ip), ("gone", &ip)],
        );
        peers.push(
            sim.start(&format!("{c}/0"), 20_000 + i as u16, &[20_000], ex)
                .await,
        );
    }
    for peer in &mut peers {
        peer.wait("saw every cluster live with its exports", |v| {
            clusters.iter().all(|c| {
                names(v, c) == Some(set(&["web", &format!("only-{c}"), "gone"]))
                    && state(v, c) == Some(ClusterState::Live)
            })
        })
        .await;
    }

    // West is cut off from everyone; east deletes `gone` meanwhile.
    let west = peers[1].addr;
    for other in [peers[0].addr, peers[2].addr, peers[3].addr] {
        sim.transport.cut(west, other).await;
    }
    peers[0].local.send_replace(local_state(
        "east",
        exports("east", &[("web", "192.0.2.1"), ("only-east", "192.0.2.1")]),
    ));
    peers[2]
        .wait("saw east's deletion", |v| {
            names(v, "east") == Some(set(&["web", "only-east"]))
        })
        .await;
    assert_eq!(
        names(&peers[1].view.borrow(), "east"),
        Some(set(&["web", "only-east", "gone"])),
        "west is partitioned and still holds east's old export"
    );

    // Healed: west learns the deletion, and from then on `gone` never comes back.
    for other in [peers[0].addr, peers[2].addr, peers[3].addr] {
        sim.transport.heal(west, other).await;
    }
    peers[1]
        .wait("saw east's deletion after the heal", |v| {
            names(v, "east") == Some(set(&["web", "only-east"]))
        })
        .await;
    let (log, recorder) = record(&peers[1]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    recorder.abort();
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .all(|v| names(v, "east") == Some(set(&["web", "only-east"]))),
        "a deleted service came back in one of {} views",
        log.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stopped_gossip_task_restarts_with_a_new_generation_that_never_mixes_with_the_old() {
    let sim = Sim::new();
    let v1 = exports("east", &[("a", "192.0.2.1"), ("b", "192.0.2.1")]);
    let mut east = sim.start("east/0", 21_000, &[], v1).await;
    let mut west = sim.west(21_001, &[21_000]).await;
    west.wait("adopted east v1", |v| {
        names(v, "east") == Some(set(&["a", "b"]))
    })
    .await;
    let (log, recorder) = record(&west);

    // East's listener fails: chitchat's loop stops for good, our supervisor starts a
    // new one with a new generation, and east publishes a new version through it.
    sim.transport.break_listener(east.addr);
    let restarted = tokio::time::timeout(WAIT, async {
        while east.metric("fleetdns_mesh_gossip_restarts_total") < 1.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(restarted.is_ok(), "east's gossip task was never restarted");
    east.local
        .send_replace(local_state("east", exports("east", &[("c", "192.0.2.3")])));
    west.wait("adopted east v2 from the new generation", |v| {
        names(v, "east") == Some(set(&["c"])) && state(v, "east") == Some(ClusterState::Live)
    })
    .await;
    east.wait("saw west again from its new generation", |v| {
        names(v, "west") == Some(set(&["w"]))
    })
    .await;
    recorder.abort();
    for view in log.lock().unwrap().iter() {
        let east_names = names(view, "east");
        assert!(
            east_names == Some(set(&["a", "b"])) || east_names == Some(set(&["c"])),
            "west served a mix of east's generations: {east_names:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_export_arriving_over_several_rounds_replaces_the_old_one_at_once() {
    let sim = Sim::new();
    let east = sim
        .start(
            "east/0",
            22_000,
            &[],
            exports("east", &[("small", "192.0.2.1")]),
        )
        .await;
    let mut west = sim.west(22_001, &[22_000]).await;
    west.wait("adopted east v1", |v| {
        names(v, "east") == Some(set(&["small"]))
    })
    .await;
    let (log, recorder) = record(&west);

    // About 600 KiB of keys: chitchat sends at most 65,507 bytes per message, so
    // west receives them over many rounds.
    let mut yaml = String::from("services:\n");
    for s in 0..400 {
        yaml.push_str(&format!(
            "  - {{name: svc-{s}, namespace: default, endpoints: ["
        ));
        for e in 0..60 {
            yaml.push_str(&format!(
                "{{address: 10.{}.{}.{}, hostname: pod-{e}}}, ",
                s / 200,
                s % 200,
                e + 1
            ));
        }
        yaml.push_str("]}\n");
    }
    let big = parse_services_file(&yaml, "test", &cluster_id("east")).unwrap();
    east.local.send_replace(local_state("east", big));
    west.wait("adopted the big export", |v| {
        names(v, "east").is_some_and(|n| n.len() == 400)
    })
    .await;
    recorder.abort();
    for view in log.lock().unwrap().iter() {
        let n = names(view, "east").map_or(0, |n| n.len());
        assert!(
            n == 1 || n == 400,
            "west served a partial export of east ({n} services)"
        );
    }
    assert!(
        west.metric("fleetdns_mesh_roots_rejected_total{reason=\"incomplete\"}") >= 1.0,
        "west never saw the new root before all its keys: the test did not exercise partial arrival"
    );
    let _ = east;
}

#[tokio::test(start_paused = true)]
async fn forged_state_under_east_changes_nothing_and_east_still_goes_unreachable_then_withdrawn() {
    let sim = Sim::new();
    let v1 = exports("east", &[("web", "192.0.2.1")]);
    let east = sim.start("east/0", 23_000, &[], v1).await;
    let mut west = sim.west(23_001, &[23_000]).await;
    west.wait("adopted east", |v| names(v, "east") == Some(set(&["web"])))
        .await;
    let (log, recorder) = record(&west);
    let west_leaf = sim.leaf("west");
    let evil = exports(
        "east",
        &[("web", "198.51.100.66"), ("evil", "198.51.100.66")],
    );
    let forger_identity = |node: &str| PeerIdentity {
        fleet: sim.fleet.clone(),
        node_id: node.to_string(),
        cert_chain_pem: west_leaf.cert_pem.clone(),
        key_pem: west_leaf.key_pem.clone(),
    };

    // A peer holding west's key, calling itself east/9, publishes a root for east.
    let east9 = sim.raw_node("east/9", 1, 23_009, &[23_000]).await;
    let mut forger = Publisher::new(forger_identity("east/9"), 1, u64::MAX / 2);
    east9
        .with_chitchat(|c| forger.publish(c.self_node_state(), &evil, BASE_MS).unwrap())
        .await;
    let rejected = tokio::time::timeout(WAIT, async {
        while west.metric("fleetdns_mesh_roots_rejected_total{reason=\"cert-cluster-mismatch\"}")
            < 1.0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(rejected.is_ok(), "west never examined the forged root");

    // A forger takes the id east/0 with a newer generation while east runs: its own
    // values and tombstones for east's keys, a root and an alive stamp signed with
    // west's key, and heartbeats that keep chitchat reporting east/0 live. East's
    // own generation still counts: it stays live with its export.
    let east0 = sim.raw_node("east/0", BASE_MS * 2, 23_010, &[23_001]).await;
    let mut forger0 = Publisher::new(forger_identity("east/0"), BASE_MS * 2, u64::MAX / 2);
    east0
        .with_chitchat(|c| {
            let state = c.self_node_state();
            state.set("s:default/web/0", "forged");
            state.set("s:default/evil/0", "forged");
            state.delete("s:default/web/0");
            forger0.publish(state, &evil, BASE_MS * 2).unwrap();
            forger0.stamp_alive(state, BASE_MS * 3).unwrap();
        })
        .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|v| state(v, "east") == Some(ClusterState::Live)),
        "the forger made east look down while it ran"
    );

    // East is killed: the forger's heartbeats keep nothing live.
    east.kill().await;
    west.wait("saw east unreachable", |v| {
        state(v, "east") == Some(ClusterState::Unreachable)
    })
    .await;
    west.wait("saw east withdrawn", |v| {
        state(v, "east") == Some(ClusterState::Withdrawn)
    })
    .await;
    recorder.abort();
    for view in log.lock().unwrap().iter() {
        let (services, _) = seen(view, "east").expect("east stays in the view");
        assert_eq!(
            services.keys().collect::<Vec<_>>(),
            ["web"],
            "a forged export reached west's view"
        );
        assert!(
            services["web"].contains("192.0.2.1"),
            "forged address: {services:?}"
        );
    }
    let _ = (east9, east0);
}

#[tokio::test(start_paused = true)]
async fn a_killed_cluster_goes_unreachable_then_withdrawn_and_returns_only_after_damping() {
    let sim = Sim::new();
    let east = sim
        .start(
            "east/0",
            24_000,
            &[],
            exports("east", &[("web", "192.0.2.1")]),
        )
        .await;
    let mut west = sim.west(24_001, &[24_000]).await;
    west.wait("adopted east live", |v| {
        state(v, "east") == Some(ClusterState::Live)
    })
    .await;
    east.kill().await;
    west.wait("saw east unreachable", |v| {
        state(v, "east") == Some(ClusterState::Unreachable)
    })
    .await;
    let unreachable_at = Instant::now();
    west.wait("saw east withdrawn", |v| {
        state(v, "east") == Some(ClusterState::Withdrawn)
    })
    .await;
    // The staleness clock is east's last signed stamp, not when west noticed: east is
    // withdrawn max_stale (5 s, virtual) after that stamp, which was already a stamp
    // lifetime old when it turned unreachable. A clock started on noticing would
    // take the full 5 s from there.
    assert!(unreachable_at.elapsed() < Duration::from_secs(5));

    let (log, recorder) = record(&west);
    let restarted_at = Instant::now();
    let _east = sim
        .start(
            "east/0",
            24_000,
            &[24_001],
            exports("east", &[("web", "192.0.2.1")]),
        )
        .await;
    west.wait("saw east live again", |v| {
        state(v, "east") == Some(ClusterState::Live)
    })
    .await;
    recorder.abort();
    // Flap damping: back in merged names only after rejoin_after (3 s) of liveness.
    assert!(restarted_at.elapsed() >= Duration::from_secs(3));
    let states: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|v| state(v, "east"))
        .collect();
    assert!(
        !states.contains(&ClusterState::Unreachable),
        "a withdrawn cluster must not pass through unreachable on its way back: {states:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_replica_publishes_and_another_takes_over_without_the_cluster_leaving() {
    let sim = Sim::new();
    let by = |replica: &str| exports("east", &[("web", "192.0.2.1"), (replica, "192.0.2.1")]);
    let mut west = sim.west(25_002, &[]).await;
    // From the first view on, east never looks empty or not live on west, even while
    // both replicas start by publishing and one of them then stands by.
    let (log, recorder) = record(&west);
    let mut east0 = sim.start("east/0", 25_000, &[25_002], by("from-0")).await;
    west.wait("adopted east/0's export", |v| {
        names(v, "east") == Some(set(&["web", "from-0"]))
    })
    .await;
    // east/1 starts later, cut off, so it publishes with an epoch above east/0's; once
    // linked, west adopts it, and east/0 must raise its epoch to be adopted again.
    for other in [25_000, 25_002] {
        sim.transport.cut(addr(25_001), addr(other)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut east1 = sim.start("east/1", 25_001, &[25_002], by("from-1")).await;
    let published = tokio::time::timeout(WAIT, async {
        while east1.metric("fleetdns_mesh_publishing") != 1.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(published.is_ok(), "east/1 never published on its own");
    // Linked to west while east/0 is not: west adopts east/1's root, and east/0 can
    // outrank it only once it is linked again.
    sim.transport.cut(addr(25_000), addr(25_002)).await;
    sim.transport.heal(addr(25_001), addr(25_002)).await;
    west.wait("adopted east/1's higher epoch", |v| {
        names(v, "east") == Some(set(&["web", "from-1"]))
    })
    .await;
    sim.transport.heal(addr(25_000), addr(25_002)).await;
    west.wait("adopted east/0's export", |v| {
        names(v, "east") == Some(set(&["web", "from-0"]))
    })
    .await;
    // east/1 stands by: it sees east/0 live with a verified root.
    let standing_by = tokio::time::timeout(WAIT, async {
        while east1.metric("fleetdns_mesh_publishing") != 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(standing_by.is_ok(), "east/1 never stood by");
    assert_eq!(east0.metric("fleetdns_mesh_publishing"), 1.0);
    east0
        .wait("sees west", |v| names(v, "west").is_some())
        .await;
    east1
        .wait("sees west", |v| names(v, "west").is_some())
        .await;

    // east/0 dies: east/1 takes over, and east never leaves west's view.
    east0.kill().await;
    west.wait("adopted east/1's export", |v| {
        names(v, "east") == Some(set(&["web", "from-1"]))
    })
    .await;
    // east/0 comes back: the lowest id publishes again, with an epoch readers take.
    let _east0 = sim
        .start("east/0", 25_000, &[25_002], by("from-0-again"))
        .await;
    west.wait("adopted the restarted east/0's export", |v| {
        names(v, "east") == Some(set(&["web", "from-0-again"]))
    })
    .await;
    recorder.abort();
    for view in log.lock().unwrap().iter() {
        if let Some((services, state)) = seen(view, "east") {
            assert!(
                services.len() == 2 && state == ClusterState::Live,
                "west served east as {state:?} with {services:?} during a start or failover"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cluster_with_a_live_node_but_no_adopted_root_is_pending_not_absent() {
    let sim = Sim::new();
    let mut west = sim.west(26_000, &[]).await;
    // north/0 holds a valid root whose keys never all arrive (one is deleted after
    // the root was signed): its names may exist, so readers answer SERVFAIL "Not
    // Ready" under north rather than NXDOMAIN.
    let north_leaf = sim.leaf("north");
    let north = sim.raw_node("north/0", 1, 26_001, &[26_000]).await;
    let mut publisher = Publisher::new(
        PeerIdentity {
            fleet: sim.fleet.clone(),
            node_id: "north/0".into(),
            cert_chain_pem: north_leaf.cert_pem.clone(),
            key_pem: north_leaf.key_pem.clone(),
        },
        1,
        1,
    );
    let north_exports = exports("north", &[("n", "192.0.2.7"), ("m", "192.0.2.8")]);
    north
        .with_chitchat(|c| {
            let state = c.self_node_state();
            publisher.publish(state, &north_exports, BASE_MS).unwrap();
            let key = state
                .key_values()
                .find(|(k, _)| k.starts_with("s:default/m/"))
                .map(|(k, _)| k.to_string())
                .unwrap();
            state.delete(&key);
        })
        .await;
    west.wait("saw north pending", |v| {
        seen(v, "north") == Some((BTreeMap::new(), ClusterState::Pending))
    })
    .await;
    // Once north's only node is dead, there is nothing to wait for: north is absent.
    north.shutdown().await.unwrap();
    west.wait("dropped north", |v| seen(v, "north").is_none())
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_change_is_pushed_to_every_peer_long_before_the_next_gossip_round() {
    // Anti-entropy every 5 s: only gossip-on-change can bring a change to every peer
    // within a second. With three others, the origin's own pushes (to three random
    // live peers) reach them all, so the outcome does not hang on the random picks.
    let sim = Sim {
        gossip_interval: Duration::from_secs(5),
        ..Sim::new()
    };
    let clusters = ["east", "west", "central", "north"];
    let mut peers = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let seeds: Vec<u16> = (0..i as u16).map(|j| 27_000 + j).collect();
        let ex = exports(c, &[(&format!("only-{c}"), "192.0.2.1")]);
        peers.push(
            sim.start(&format!("{c}/0"), 27_000 + i as u16, &seeds, ex)
                .await,
        );
    }
    for peer in &mut peers {
        peer.wait("converged", |v| {
            clusters.iter().all(|c| names(v, c).is_some())
        })
        .await;
    }
    // Past the burst of first sights: every peer has pushed and settled.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let changed_at = Instant::now();
    peers[0].local.send_replace(local_state(
        "east",
        exports("east", &[("only-east", "192.0.2.1"), ("new", "192.0.2.1")]),
    ));
    for peer in &mut peers[1..] {
        peer.wait("adopted east's change", |v| {
            names(v, "east") == Some(set(&["only-east", "new"]))
        })
        .await;
    }
    let took = changed_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a change took {took:?} to reach every peer (anti-entropy alone: one 5 s round per hop)"
    );
}

//! Snapshots: the immutable unit the DNS path, the ops listener and (later) the admin
//! API read together.
//!
//! This module owns how a set of cluster inputs becomes one [`Snapshot`] (view → zone →
//! answer index) and the zone serial rule. It is pure; `app` owns the single writer that
//! publishes snapshots, readers load them atomically through [`SharedSnapshot`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, NetworkConfig, ZoneName};
use crate::dns::index::{AnswerIndex, IndexBuilder, Readiness};
use crate::dns::zone::{GroupId, ZoneParams, build_group};
use crate::model::{ClusterId, ServiceExport, ServiceKey};
use crate::status::MeshStatus;
use crate::view::{ClusterInput, FleetView};

/// One generation of everything served. Never mutated after it is published.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot (shown by the admin API).
    pub generation: u64,
    /// The SOA serial of this snapshot's zone.
    pub serial: u32,
    pub readiness: Readiness,
    /// What the peer still waits for before it is ready (empty when ready).
    pub waiting_for: Vec<String>,
    pub view: Arc<FleetView>,
    pub index: Arc<AnswerIndex>,
    /// The mesh's members, replicas and adopted roots behind this view.
    pub status: Arc<MeshStatus>,
}

/// The published snapshot: one writer swaps, every reader loads without a lock.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// The parts of the config that shape a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub local: ClusterId,
    pub zone: ZoneName,
    pub network: NetworkConfig,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub advertise: Option<IpAddr>,
    /// Inventory labels of the local cluster from the config; they win over the
    /// services file's own `labels`.
    pub local_labels: BTreeMap<String, String>,
}

impl SnapshotSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            local: config.cluster.clone(),
            zone: config.zone.clone(),
            network: config.network.clone(),
            ttl: config.dns.ttl,
            negative_ttl: config.dns.negative_ttl,
            advertise: config.dns.advertise,
            local_labels: config.cluster_labels.clone(),
        }
    }
}

impl SnapshotSettings {
    /// Zone parameters for a serial.
    pub fn zone_params(&self, serial: u32) -> ZoneParams {
        ZoneParams {
            apex: self.zone.clone(),
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            serial,
            advertise: self.advertise,
        }
    }

    /// The whole view of `inputs` as seen from the local cluster (for `dump-zone`).
    pub fn view(&self, inputs: &BTreeMap<ClusterId, ClusterInput>) -> FleetView {
        let mut view = FleetView::build(&self.local, &self.network, inputs);
        self.overlay_local_labels(&mut view);
        view
    }

    fn overlay_local_labels(&self, view: &mut FleetView) {
        if let Some(local) = view.clusters.get_mut(&self.local) {
            for (k, v) in &self.local_labels {
                local.labels.insert(k.clone(), v.clone());
            }
        }
    }
}

/// What changed between two source states.
#[derive(Debug, Default)]
struct Delta {
    /// Clusters whose inventory TXT may have changed (came, went, new labels).
    clusters: BTreeSet<ClusterId>,
    /// Service keys whose names may have changed.
    keys: BTreeSet<ServiceKey>,
}

impl Delta {
    fn between(
        old: &BTreeMap<ClusterId, ClusterInput>,
        new: &BTreeMap<ClusterId, ClusterInput>,
    ) -> Self {
        let mut delta = Delta::default();
        let all_keys = |i: &ClusterInput, d: &mut Delta| {
            d.keys.extend(i.exports.services.keys().cloned());
        };
        for (id, old_input) in old {
            if !new.contains_key(id) {
                delta.clusters.insert(id.clone());
                all_keys(old_input, &mut delta);
            }
        }
        for (id, input) in new {
            let Some(old_input) = old.get(id) else {
                delta.clusters.insert(id.clone());
                all_keys(input, &mut delta);
                continue;
            };
            if Arc::ptr_eq(&old_input.exports, &input.exports) && old_input.state == input.state {
                continue;
            }
            if old_input.exports.labels != input.exports.labels {
                delta.clusters.insert(id.clone());
            }
            if old_input.state != input.state {
                delta.clusters.insert(id.clone());
                all_keys(old_input, &mut delta);
                all_keys(input, &mut delta);
                continue;
            }
            diff_services(
                &old_input.exports.services,
                &input.exports.services,
                &mut delta.keys,
            );
        }
        delta
    }
}

/// Adds every key whose export differs between `old` and `new` (both sorted maps).
fn diff_services(
    old: &BTreeMap<ServiceKey, Arc<ServiceExport>>,
    new: &BTreeMap<ServiceKey, Arc<ServiceExport>>,
    out: &mut BTreeSet<ServiceKey>,
) {
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((k, _)), None) => {
                out.insert((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                out.insert((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        out.insert((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// The single writer of snapshots: it holds the current inputs, view and index, applies
/// each change incrementally (only the changed keys' names are re-derived and
/// re-encoded) and publishes a new snapshot that shares everything else with the last.
#[derive(Debug)]
pub struct Engine {
    settings: SnapshotSettings,
    generation: u64,
    serial: u32,
    inputs: BTreeMap<ClusterId, ClusterInput>,
    view: FleetView,
    index: IndexBuilder,
    /// The readiness of the last snapshot, kept by single-service updates.
    readiness: Readiness,
    waiting_for: Vec<String>,
    /// The last published view and index, reused when only the mesh status changed.
    published: Option<(Arc<FleetView>, Arc<AnswerIndex>)>,
    status: Arc<MeshStatus>,
}

impl Engine {
    pub fn new(settings: SnapshotSettings) -> Self {
        let view = FleetView::empty(&settings.local);
        let index = IndexBuilder::new(&settings.zone_params(0).apex_name());
        Self {
            settings,
            generation: 0,
            serial: 0,
            inputs: BTreeMap::new(),
            view,
            index,
            readiness: Readiness::NotReady,
            waiting_for: Vec::new(),
            published: None,
            status: Arc::default(),
        }
    }

    /// The mesh status that goes into the next snapshot.
    pub fn set_status(&mut self, status: Arc<MeshStatus>) {
        self.status = status;
    }

    /// Applies a whole new source state, diffed against the current one.
    pub fn apply(
        &mut self,
        inputs: BTreeMap<ClusterId, ClusterInput>,
        readiness: Readiness,
        waiting_for: Vec<String>,
        unix_now: u64,
    ) -> Snapshot {
        let delta = Delta::between(&self.inputs, &inputs);
        self.inputs = inputs;
        if delta.clusters.is_empty()
            && delta.keys.is_empty()
            && readiness == self.readiness
            && waiting_for == self.waiting_for
            && let Some((view, index)) = &self.published
        {
            // Only the mesh status moved: same zone, same serial, new generation.
            self.generation += 1;
            return Snapshot {
                generation: self.generation,
                serial: self.serial,
                readiness,
                waiting_for,
                view: view.clone(),
                index: index.clone(),
                status: self.status.clone(),
            };
        }
        self.apply_delta(delta, readiness, waiting_for, unix_now)
    }

    /// One cluster's export of one service changed (`Some`) or went away (`None`).
    pub fn update_service(
        &mut self,
        cluster: &ClusterId,
        key: &ServiceKey,
        export: Option<Arc<ServiceExport>>,
        unix_now: u64,
    ) -> Snapshot {
        if let Some(input) = self.inputs.get_mut(cluster) {
            let exports = Arc::make_mut(&mut input.exports);
            match export {
                Some(e) => exports.services.insert(key.clone(), e),
                None => exports.services.remove(key),
            };
        }
        let delta = Delta {
            clusters: BTreeSet::new(),
            keys: BTreeSet::from([key.clone()]),
        };
        let (readiness, waiting_for) = (self.readiness, self.waiting_for.clone());
        self.apply_delta(delta, readiness, waiting_for, unix_now)
    }

    fn apply_delta(
        &mut self,
        delta: Delta,
        readiness: Readiness,
        waiting_for: Vec<String>,
        unix_now: u64,
    ) -> Snapshot {
        self.generation += 1;
        self.readiness = readiness;
        self.waiting_for.clone_from(&waiting_for);
        let now = u32::try_from(unix_now).unwrap_or(u32::MAX);
        self.serial = now.max(self.serial.wrapping_add(1));
        let params = self.settings.zone_params(self.serial);

        if !delta.clusters.is_empty() {
            self.view.sync_clusters(&self.inputs);
            self.settings.overlay_local_labels(&mut self.view);
            let unavailable = self
                .view
                .clusters
                .values()
                .filter_map(|c| Some((c.id.as_str(), c.state.unavailable_ede()?)));
            self.index.set_unavailable(unavailable);
        }
        self.view
            .update_keys(&self.settings.network, &self.inputs, &delta.keys);

        let mut groups = vec![GroupId::Apex];
        groups.extend(delta.clusters.into_iter().map(GroupId::Cluster));
        groups.extend(delta.keys.into_iter().map(GroupId::Service));
        for id in groups {
            let group = build_group(&self.view, &params, &id);
            for skipped in &group.skipped {
                tracing::warn!(name = %skipped, "name not served");
            }
            self.index.replace_group(id, &group);
        }
        let view = Arc::new(self.view.clone());
        let index = Arc::new(self.index.publish());
        self.published = Some((view.clone(), index.clone()));
        Snapshot {
            generation: self.generation,
            serial: self.serial,
            readiness,
            waiting_for,
            view,
            index,
            status: self.status.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use hickory_proto::op::{Edns, Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use proptest::prelude::*;

    use super::*;
    use crate::config::ZoneName;
    use crate::dns::index::{Outcome, ReplySettings, Transport};
    use crate::dns::zone::Zone;
    use crate::model::{
        Endpoint, LocalExports, Namespace, Policy, PortName, Protocol, ServiceName, ServicePort,
    };
    use crate::view::ClusterState;

    fn settings() -> SnapshotSettings {
        SnapshotSettings {
            local: ClusterId::parse("c0").unwrap(),
            zone: ZoneName::parse("fleet.").unwrap(),
            network: NetworkConfig::default(),
            ttl: 5,
            negative_ttl: 5,
            advertise: Some("127.0.0.1".parse().unwrap()),
            local_labels: BTreeMap::from([("owner".into(), "me".into())]),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert {
            cluster: u8,
            name: u8,
            ns: u8,
            headless: bool,
            addr: u8,
            ready: bool,
            ports: u8,
            all: bool,
        },
        Remove {
            cluster: u8,
            name: u8,
            ns: u8,
        },
        Labels {
            cluster: u8,
            value: u8,
        },
        DropCluster {
            cluster: u8,
        },
        State {
            cluster: u8,
            state: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u8..4, 0u8..2, any::<bool>(), 1u8..5, any::<bool>(), 0u8..3, any::<bool>())
                .prop_map(|(cluster, name, ns, headless, addr, ready, ports, all)| Op::Upsert { cluster, name, ns, headless, addr, ready, ports, all }),
            2 => (0u8..3, 0u8..4, 0u8..2).prop_map(|(cluster, name, ns)| Op::Remove { cluster, name, ns }),
            1 => (0u8..3, 0u8..3).prop_map(|(cluster, value)| Op::Labels { cluster, value }),
            1 => (1u8..3).prop_map(|cluster| Op::DropCluster { cluster }),
            2 => (1u8..3, 0u8..4).prop_map(|(cluster, state)| Op::State { cluster, state }),
        ]
    }

    /// A ready, non-headless service in namespace n0: the common case of the
    /// hand-written scenarios below.
    fn vip(cluster: u8, name: u8, addr: u8, ports: u8) -> Op {
        Op::Upsert {
            cluster,
            name,
            ns: 0,
            headless: false,
            addr,
            ready: true,
            ports,
            all: false,
        }
    }

    fn key(name: u8, ns: u8) -> ServiceKey {
        ServiceKey {
            name: ServiceName::parse(&format!("s{name}")).unwrap(),
            namespace: Namespace::parse(&format!("n{ns}")).unwrap(),
        }
    }

    fn cid(c: u8) -> ClusterId {
        ClusterId::parse(&format!("c{c}")).unwrap()
    }

    fn entry(inputs: &mut BTreeMap<ClusterId, ClusterInput>, c: u8) -> &mut LocalExports {
        let input = inputs.entry(cid(c)).or_insert_with(|| ClusterInput {
            exports: Arc::new(LocalExports::empty(cid(c))),
            state: ClusterState::Live,
        });
        Arc::make_mut(&mut input.exports)
    }

    fn apply_op(inputs: &mut BTreeMap<ClusterId, ClusterInput>, op: &Op) {
        match *op {
            Op::Upsert {
                cluster,
                name,
                ns,
                headless,
                addr,
                ready,
                ports,
                all,
            } => {
                let k = key(name, ns);
                let ip = |last: u8| IpAddr::from([10, cluster, name, last]);
                let export = ServiceExport {
                    key: k.clone(),
                    ports: (0..ports)
                        .map(|p| ServicePort {
                            name: Some(PortName::parse(&format!("p{p}")).unwrap()),
                            port: 80 + u16::from(p),
                            protocol: Protocol::Tcp,
                        })
                        .collect(),
                    cluster_ips: if headless { vec![] } else { vec![ip(200)] },
                    ingress: vec![ip(100 + addr)],
                    endpoints: (0..addr)
                        .map(|i| Endpoint {
                            address: ip(i + 1),
                            hostname: None,
                            pod_name: None,
                            ready: ready || i > 0,
                            zone: None,
                        })
                        .collect(),
                    headless,
                    addresses: if headless {
                        Some(crate::model::AddressKind::Endpoints)
                    } else {
                        None
                    },
                    policy: if all {
                        Policy::All
                    } else {
                        Policy::LocalPreferred
                    },
                };
                entry(inputs, cluster).services.insert(k, Arc::new(export));
            }
            Op::Remove { cluster, name, ns } => {
                entry(inputs, cluster).services.remove(&key(name, ns));
            }
            Op::Labels { cluster, value } => {
                entry(inputs, cluster)
                    .labels
                    .insert("v".into(), value.to_string());
            }
            Op::DropCluster { cluster } => {
                inputs.remove(&cid(cluster));
            }
            Op::State { cluster, state } => {
                entry(inputs, cluster);
                let input = inputs.get_mut(&cid(cluster)).expect("just made");
                input.state = [
                    ClusterState::Live,
                    ClusterState::Unreachable,
                    ClusterState::Withdrawn,
                    ClusterState::Pending,
                ][usize::from(state)];
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// After any sequence of changes, the incrementally maintained view and index
        /// equal a full rebuild from the same inputs.
        #[test]
        fn incremental_updates_equal_a_full_rebuild(ops in proptest::collection::vec(op(), 1..25)) {
            let mut engine = Engine::new(settings());
            let mut inputs = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                apply_op(&mut inputs, op);
                let snap = engine.apply(inputs.clone(), Readiness::Ready, vec![], 1000 + i as u64);
                let full_view = settings().view(&inputs);
                prop_assert_eq!(&*snap.view, &full_view);
                let zone = Zone::build(&full_view, &settings().zone_params(snap.serial));
                let full_index = AnswerIndex::build(&zone);
                prop_assert!(snap.index.same_answers(&full_index), "index differs after {:?}", op);
            }
        }
    }

    /// Asks `snap` one question with EDNS: the outcome, the reply, and its EDE code.
    fn ask(snap: &Snapshot, name: &str, qtype: RecordType) -> (Outcome, Message, Option<u16>) {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.set_edns(Edns::new());
        let mut out = Vec::new();
        let settings = ReplySettings {
            max_udp_payload: 1232,
        };
        let outcome = snap.index.respond(
            Readiness::Ready,
            settings,
            &m.to_vec().unwrap(),
            Transport::Udp,
            &mut out,
        );
        // Our OPT is the last record: its EDE option, if any, ends the message.
        let ede = (out[out.len() - 2..] != [0, 0]).then(|| {
            let len = out.len();
            let text_start = (0..len)
                .rev()
                .find(|&i| out[i..].starts_with(&[0, 15]))
                .unwrap();
            u16::from_be_bytes([out[text_start + 4], out[text_start + 5]])
        });
        (outcome, Message::from_vec(&out).unwrap(), ede)
    }

    #[test]
    fn a_cluster_with_a_root_not_yet_adopted_answers_servfail_not_ready() {
        let mut engine = Engine::new(settings());
        let mut inputs = BTreeMap::new();
        for op in [
            vip(0, 1, 0, 0),
            Op::State {
                cluster: 1,
                state: 3,
            },
        ] {
            apply_op(&mut inputs, &op);
        }
        let snap = engine.apply(inputs, Readiness::Ready, vec![], 7000);
        for name in ["s1.n0.c1.fleet.", "nope.n0.c1.fleet.", "c1.fleet."] {
            let (outcome, m, ede) = ask(&snap, name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
            assert_eq!((outcome.rcode, ede), (2, Some(14)), "{name}");
        }
        let (_, m, ede) = ask(&snap, "s1.n0.c0.fleet.", RecordType::A);
        assert_eq!((m.answers.len(), ede), (1, None));
        let (_, m, _) = ask(&snap, "nope.n0.c0.fleet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    /// The answers a reader gives while clusters are unreachable or withdrawn.
    #[test]
    fn unreachable_clusters_answer_stale_and_withdrawn_ones_servfail() {
        let mut engine = Engine::new(settings());
        let mut inputs = BTreeMap::new();
        // s1 exported by c0 (local, live) and c1; s2 only by c1; s3 by c1 and c2.
        for op in [
            vip(0, 1, 1, 0),
            vip(1, 1, 1, 0),
            vip(1, 2, 1, 1),
            vip(1, 3, 1, 0),
            vip(2, 3, 2, 0),
            Op::State {
                cluster: 1,
                state: 1,
            },
            Op::State {
                cluster: 2,
                state: 2,
            },
        ] {
            apply_op(&mut inputs, &op);
        }
        let snap = engine.apply(inputs, Readiness::Ready, vec![], 7000);
        let ask = |name: &str, qtype: RecordType| ask(&snap, name, qtype);
        // A live local export wins: no staleness.
        let (_, m, ede) = ask("s1.n0.svc.fleet.", RecordType::A);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(ede, None);
        // Only an unreachable cluster can answer: its last export, TTL ≤ 5, EDE 3.
        let (_, m, ede) = ask("s2.n0.svc.fleet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert!(m.answers[0].ttl <= 5);
        assert_eq!(ede, Some(3));
        let (_, _, ede) = ask("_p0._tcp.s2.n0.c1.fleet.", RecordType::SRV);
        assert_eq!(
            ede,
            Some(3),
            "per-cluster names of an unreachable cluster are stale too"
        );
        // A withdrawn cluster never contributes; its names answer SERVFAIL + EDE 22.
        let (_, m, ede) = ask("s3.n0.svc.fleet.", RecordType::A);
        assert_eq!(
            m.answers.len(),
            1,
            "c1's stale answer only, not withdrawn c2's"
        );
        assert_eq!(ede, Some(3));
        for name in ["s3.n0.c2.fleet.", "nope.n0.c2.fleet.", "c2.fleet."] {
            let (outcome, m, ede) = ask(name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
            assert!(!m.metadata.authoritative);
            assert_eq!((outcome.rcode, ede), (2, Some(22)), "{name}");
        }
        // Other clusters' absent names stay NXDOMAIN.
        let (_, m, _) = ask("nope.n0.c0.fleet.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn update_service_changes_only_that_service_and_bumps_the_serial() {
        let mut engine = Engine::new(settings());
        let mut inputs = BTreeMap::new();
        for op in [
            vip(0, 1, 2, 1),
            Op::Upsert {
                cluster: 1,
                name: 1,
                ns: 0,
                headless: true,
                addr: 3,
                ready: true,
                ports: 2,
                all: false,
            },
        ] {
            apply_op(&mut inputs, &op);
        }
        let first = engine.apply(inputs.clone(), Readiness::Ready, vec![], 5000);
        apply_op(
            &mut inputs,
            &Op::Upsert {
                cluster: 1,
                name: 1,
                ns: 0,
                headless: true,
                addr: 1,
                ready: true,
                ports: 1,
                all: false,
            },
        );
        let changed = inputs[&cid(1)].exports.services[&key(1, 0)].clone();
        let snap = engine.update_service(&cid(1), &key(1, 0), Some(changed), 5000);
        assert_eq!(snap.serial, first.serial + 1);
        assert_eq!(snap.readiness, Readiness::Ready);
        let full_view = settings().view(&inputs);
        assert_eq!(*snap.view, full_view);
        let zone = Zone::build(&full_view, &settings().zone_params(snap.serial));
        assert!(snap.index.same_answers(&AnswerIndex::build(&zone)));
    }
}

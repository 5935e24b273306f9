//! The answer path and the update path, measured (figures, not assertions):
//! - one query answered from a published index: A hit, SRV with additionals, NXDOMAIN;
//! - a snapshot built from nothing for 1k, 10k and 100k services;
//! - one service change at 100k services, end to end: from the change to a new root
//!   stored where the DNS workers load it, with all its names re-encoded.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fleetdns::config::{NetworkConfig, ZoneName};
use fleetdns::dns::index::{Readiness, ReplySettings, Transport};
use fleetdns::model::{
    ClusterId, Endpoint, LocalExports, Namespace, Policy, PortName, Protocol, ServiceExport,
    ServiceKey, ServiceName, ServicePort,
};
use fleetdns::snapshot::{Engine, SnapshotSettings};
use fleetdns::view::{ClusterInput, ClusterState};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

const CLUSTERS: usize = 10;

fn settings() -> SnapshotSettings {
    SnapshotSettings {
        local: ClusterId::parse("c0").unwrap(),
        zone: ZoneName::parse("fleet.").unwrap(),
        network: NetworkConfig::default(),
        ttl: 5,
        negative_ttl: 5,
        advertise: Some("127.0.0.1".parse().unwrap()),
        local_labels: BTreeMap::new(),
    }
}

fn key(i: usize) -> ServiceKey {
    ServiceKey {
        name: ServiceName::parse(&format!("svc-{i}")).unwrap(),
        namespace: Namespace::parse(&format!("ns-{}", i % 100)).unwrap(),
    }
}

fn export(i: usize, cluster: usize, salt: u8) -> ServiceExport {
    let octets = |net: u8| IpAddr::from([net, cluster as u8, (i >> 8) as u8, i as u8]);
    ServiceExport {
        key: key(i),
        ports: vec![ServicePort {
            name: Some(PortName::parse("http").unwrap()),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        cluster_ips: vec![octets(10)],
        ingress: vec![IpAddr::from([100, salt, (i >> 8) as u8, i as u8])],
        endpoints: vec![Endpoint {
            address: octets(11),
            hostname: None,
            pod_name: None,
            ready: true,
            zone: None,
        }],
        headless: false,
        addresses: None,
        policy: Policy::LocalPreferred,
    }
}

/// `n` services over 10 clusters; every 10th is also exported by the next two clusters.
fn fleet(n: usize) -> BTreeMap<ClusterId, ClusterInput> {
    let mut clusters: Vec<LocalExports> = (0..CLUSTERS)
        .map(|c| LocalExports::empty(ClusterId::parse(&format!("c{c}")).unwrap()))
        .collect();
    for i in 0..n {
        let home = i % CLUSTERS;
        let copies = if i % 10 == 0 { 3 } else { 1 };
        for c in 0..copies {
            let cluster = (home + c) % CLUSTERS;
            clusters[cluster]
                .services
                .insert(key(i), Arc::new(export(i, cluster, 0)));
        }
    }
    clusters
        .into_iter()
        .map(|e| {
            (
                e.cluster.clone(),
                ClusterInput {
                    exports: Arc::new(e),
                    state: ClusterState::Live,
                },
            )
        })
        .collect()
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.set_edns(Edns::new());
    m.to_vec().unwrap()
}

fn lookups(c: &mut Criterion) {
    let mut engine = Engine::new(settings());
    let snap = engine.apply(fleet(10_000), Readiness::Ready, vec![], 1);
    let settings = ReplySettings {
        max_udp_payload: 1232,
    };
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("lookup_10k");
    for (label, name, qtype) in [
        ("a_hit", "svc-1234.ns-34.c4.fleet.", RecordType::A),
        ("merged_a_hit", "svc-1230.ns-30.svc.fleet.", RecordType::A),
        ("srv", "_http._tcp.svc-1234.ns-34.c4.fleet.", RecordType::SRV),
        ("nxdomain", "nope-1234.ns-34.c4.fleet.", RecordType::A),
    ] {
        let packet = query(name, qtype);
        group.bench_function(label, |b| {
            b.iter(|| {
                black_box(snap.index.respond(
                    Readiness::Ready,
                    settings,
                    black_box(&packet),
                    Transport::Udp,
                    &mut out,
                ))
            })
        });
    }
    group.finish();
}

fn builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10);
    for n in [1_000, 10_000, 100_000] {
        let inputs = fleet(n);
        group.bench_function(format!("{n}_services"), |b| {
            b.iter_batched(
                || inputs.clone(),
                |inputs| {
                    let mut engine = Engine::new(settings());
                    black_box(engine.apply(inputs, Readiness::Ready, vec![], 1))
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn one_change(c: &mut Criterion) {
    let mut engine = Engine::new(settings());
    let first = engine.apply(fleet(100_000), Readiness::Ready, vec![], 1);
    let published = ArcSwap::from_pointee(first);
    let cluster = ClusterId::parse("c7").unwrap();
    let i = 54_327; // homed in c7, exported by c7 only
    let mut salt = 0u8;
    c.bench_function("one_service_change_at_100k", |b| {
        b.iter_with_large_drop(|| {
            salt = salt.wrapping_add(1);
            let changed = Arc::new(export(i, 7, salt));
            let snap = engine.update_service(&cluster, &key(i), Some(changed), 2);
            // The DNS workers load this pointer for every query.
            published.swap(Arc::new(snap))
        })
    });
}

criterion_group!(benches, lookups, builds, one_change);
criterion_main!(benches);

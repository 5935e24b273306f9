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

/// `cargo bench` passes `--bench`; the test runner (`cargo nextest run --all-targets`)
/// does not, and runs each benchmark once as a smoke test. Then the fleets shrink 100×
/// so the suite stays fast; the benchmark names stay the same.
fn scaled(n: usize) -> usize {
    static FULL: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::args().any(|a| a == "--bench"));
    if *FULL { n } else { (n / 100).max(10) }
}

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
    let n = scaled(10_000);
    let snap = engine.apply(fleet(n), Readiness::Ready, vec![], 1);
    // Service i is homed in cluster i % 10; every 10th is exported by three clusters.
    let home4 = n / 20 * 10 + 4;
    let shared = n / 20 * 10;
    let (a, srv, nx, merged) = (
        format!("svc-{home4}.ns-{}.c4.fleet.", home4 % 100),
        format!("_http._tcp.svc-{home4}.ns-{}.c4.fleet.", home4 % 100),
        format!("nope-{home4}.ns-{}.c4.fleet.", home4 % 100),
        format!("svc-{shared}.ns-{}.svc.fleet.", shared % 100),
    );
    let settings = ReplySettings {
        max_udp_payload: 1232,
    };
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("lookup_10k");
    for (label, name, qtype, rcode) in [
        ("a_hit", &a, RecordType::A, 0),
        ("merged_a_hit", &merged, RecordType::A, 0),
        ("srv", &srv, RecordType::SRV, 0),
        ("nxdomain", &nx, RecordType::A, 3),
    ] {
        let packet = query(name, qtype);
        // Measure what we mean to: the name answers as intended.
        let outcome = snap.index.respond(
            Readiness::Ready,
            settings,
            &packet,
            Transport::Udp,
            &mut out,
        );
        assert_eq!(outcome.rcode, rcode, "{name}");
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
        let inputs = fleet(scaled(n));
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
    let n = scaled(100_000);
    let first = engine.apply(fleet(n), Readiness::Ready, vec![], 1);
    let published = ArcSwap::from_pointee(first);
    let cluster = ClusterId::parse("c7").unwrap();
    let i = n / 20 * 10 + 7; // homed in c7 (i % 10 == 7), exported there only
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

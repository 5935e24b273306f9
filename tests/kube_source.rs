//! The Kubernetes source against the fake API server (tests/fake_kube), through the
//! real `kube` client and a kubeconfig with a bearer token: every export rule and
//! address mode as DNS answers it, not-ready and terminating endpoints, several slices
//! and dual-stack, a deleted service, a 410 in the middle of a burst of changes, the API
//! server gone for a while and back, a cluster without the MCS CRD, and Lease failover
//! between two replicas seen from a third peer.

mod common;
#[path = "fake_kube/mod.rs"]
mod fake_kube;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::mesh::*;
use common::*;
use fake_kube::*;
use fleetdns::app::{App, StartOptions};
use fleetdns::config::Config;
use fleetdns::dns::index::Readiness;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// A peer of cluster `east` reading the fake's API, without a mesh.
async fn start_kube_peer(dir: &Path, fake: &FakeKube, extra: &str) -> App {
    let kubeconfig = fake.kubeconfig(dir);
    let text = format!(
        "fleet: test\ncluster: east\ndns: {{listen: [\"127.0.0.1:0\"], advertise: 127.0.0.1}}\nops: {{listen: \"127.0.0.1:0\"}}\nadmin: {{listen: \"127.0.0.1:0\"}}\nnetwork: {{service_cidrs: [10.96.0.0/12]}}\nsource:\n  kubernetes:\n    kubeconfig: {}\n    export: {{namespaces: {{deny: [kube-system]}}}}\n{extra}",
        kubeconfig.display()
    );
    let path = dir.join("fleet.yaml");
    std::fs::write(&path, text).unwrap();
    let app = App::start(Config::load(&path).unwrap(), fast_options())
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, app.wait_for(|s| s.readiness == Readiness::Ready))
        .await
        .expect("ready after the first lists");
    app
}

/// A: and AAAA answers of `name` at `dns`, sorted; the rcode.
async fn lookup(dns: SocketAddr, name: &str, qtype: RecordType) -> (ResponseCode, Vec<String>) {
    let m = tcp(dns, &Q::new(name, qtype).edns(1232)).await;
    (m.metadata.response_code, answers(&m))
}

/// Polls until `name` answers exactly `want` (sorted), or NXDOMAIN when `want` is empty.
async fn wait_answers(dns: SocketAddr, name: &str, qtype: RecordType, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let poll = async {
        loop {
            let (rcode, got) = lookup(dns, name, qtype).await;
            let done = if want.is_empty() {
                rcode == ResponseCode::NXDomain
            } else {
                got == want
            };
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(TIMEOUT, poll).await.is_err() {
        let last = lookup(dns, name, qtype).await;
        panic!("{name} {qtype}: wanted {want:?}, last answer {last:?}");
    }
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn export(builder: ServiceBuilder) -> serde_json::Value {
    builder.annotation("fleetdns.io/export", "true").build()
}

/// The cluster's objects for the export-rule test.
fn seed(fake: &FakeKube) {
    // A ClusterIP service exported by annotation, with a ready and a not-ready pod.
    fake.apply(export(
        cluster_ip_service("default", "web", &["10.96.0.10"]).port("http", 80, "TCP"),
    ));
    fake.apply(
        endpoint_slice("default", "web", "web-abc", AddressType::IPv4)
            .endpoint(endpoint("10.1.0.5").pod("web-1"))
            .endpoint(endpoint("10.1.0.6").pod("web-2").not_ready())
            .port("http", 8080, "TCP")
            .build(),
    );
    // Dual-stack, exported by an MCS ServiceExport.
    fake.apply(
        cluster_ip_service("default", "api", &["10.96.0.20", "fd00:10:96::20"])
            .port("grpc", 9090, "TCP")
            .build(),
    );
    fake.apply(service_export("default", "api"));
    fake.apply(
        endpoint_slice("default", "api", "api-v6", AddressType::IPv6)
            .endpoint(endpoint("fd00:1::20").pod("api-1"))
            .port("grpc", 9090, "TCP")
            .build(),
    );
    // Headless, two IPv4 slices with a duplicate and a terminating pod, one IPv6 slice,
    // and an FQDN slice consumers must skip.
    fake.apply(export(
        headless_service("default", "db").port("postgres", 5432, "TCP"),
    ));
    fake.apply(
        endpoint_slice("default", "db", "db-v4a", AddressType::IPv4)
            .endpoint(endpoint("10.1.1.1").hostname("db-0").pod("db-0"))
            .endpoint(
                endpoint("10.1.1.2")
                    .hostname("db-1")
                    .pod("db-1")
                    .terminating(),
            )
            .port("postgres", 5432, "TCP")
            .build(),
    );
    fake.apply(
        endpoint_slice("default", "db", "db-v4b", AddressType::IPv4)
            .endpoint(endpoint("10.1.1.3").hostname("db-2").pod("db-2"))
            .endpoint(endpoint("10.1.1.1").hostname("db-0").pod("db-0"))
            .port("postgres", 5432, "TCP")
            .build(),
    );
    fake.apply(
        endpoint_slice("default", "db", "db-v6", AddressType::IPv6)
            .endpoint(endpoint("fd00:1::3").hostname("db-2").pod("db-2"))
            .port("postgres", 5432, "TCP")
            .build(),
    );
    fake.apply(
        endpoint_slice("default", "db", "db-fqdn", AddressType::Fqdn)
            .endpoint(endpoint("db.example.com"))
            .build(),
    );
    // A LoadBalancer whose ingress is a hostname the exporting peer resolves.
    fake.apply(export(
        load_balancer_service(
            "default",
            "edge",
            "10.96.0.30",
            &[LbIngress::Hostname("localhost")],
        )
        .port("https", 443, "TCP"),
    ));
    // A pending LoadBalancer: still exported, with no ingress address yet.
    fake.apply(export(load_balancer_service(
        "default",
        "pending",
        "10.96.0.31",
        &[],
    )));
    // Refused: ExternalName, a denied namespace, a ServiceExport without its Service.
    fake.apply(export(external_name_service(
        "default",
        "ext",
        "db.example.com",
    )));
    fake.apply(export(cluster_ip_service(
        "kube-system",
        "sys",
        &["10.96.0.40"],
    )));
    fake.apply(service_export("default", "ghost"));
    // Not marked: not exported, not refused.
    fake.apply(cluster_ip_service("default", "plain", &["10.96.0.50"]).build());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_kubernetes_objects_become_exports_as_design_section_5_says() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start().await;
    seed(&fake);
    let app = start_kube_peer(dir.path(), &fake, "").await;
    let dns = app.dns_addrs[0];

    // Own cluster: ClusterIPs for VIP services (both families for dual-stack).
    wait_answers(
        dns,
        "web.default.east.fleet.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;
    wait_answers(
        dns,
        "api.default.east.fleet.",
        RecordType::A,
        &["10.96.0.20"],
    )
    .await;
    wait_answers(
        dns,
        "api.default.east.fleet.",
        RecordType::AAAA,
        &["fd00:10:96::20"],
    )
    .await;
    // The merged name needs a ready endpoint (DESIGN.md §1); web's VIP has one.
    wait_answers(
        dns,
        "api.default.svc.fleet.",
        RecordType::AAAA,
        &["fd00:10:96::20"],
    )
    .await;
    wait_answers(
        dns,
        "web.default.svc.fleet.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;
    // Headless: ready endpoints across slices, deduplicated; the terminating pod and
    // the FQDN slice are left out; per-endpoint names; one SRV per ready pod.
    wait_answers(
        dns,
        "db.default.east.fleet.",
        RecordType::A,
        &["10.1.1.1", "10.1.1.3"],
    )
    .await;
    wait_answers(
        dns,
        "db.default.east.fleet.",
        RecordType::AAAA,
        &["fd00:1::3"],
    )
    .await;
    wait_answers(
        dns,
        "db-0.db.default.east.fleet.",
        RecordType::A,
        &["10.1.1.1"],
    )
    .await;
    wait_answers(dns, "db-1.db.default.east.fleet.", RecordType::A, &[]).await;
    let srv = tcp(
        dns,
        &Q::new("_postgres._tcp.db.default.east.fleet.", RecordType::SRV),
    )
    .await;
    let mut targets: Vec<String> = srv.answers.iter().map(|r| r.data.to_string()).collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            "0 100 5432 db-0.db.default.east.fleet.",
            "0 100 5432 db-2.db.default.east.fleet."
        ]
    );
    // Refused and unmarked services have no names.
    for name in ["ext", "plain", "ghost"] {
        wait_answers(
            dns,
            &format!("{name}.default.east.fleet."),
            RecordType::A,
            &[],
        )
        .await;
    }
    wait_answers(dns, "sys.kube-system.east.fleet.", RecordType::A, &[]).await;

    // What other clusters get: the admin API shows every address kind exported.
    let admin = fleetdns::admin::client::Target {
        admin: app.admin_addr.unwrap().to_string(),
        token: None,
        ca: None,
    };
    let edge = loop {
        let body = fleetdns::admin::client::get(&admin, "/v1/services/default/edge")
            .await
            .unwrap();
        let doc: fleetdns::admin::api::ServiceOneDoc = serde_json::from_str(&body).unwrap();
        if !doc.service.clusters[0].ingress.is_empty() {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let edge = &edge.service.clusters[0];
    assert!(
        edge.ingress.iter().all(|ip| ip.is_loopback()),
        "{:?}",
        edge.ingress
    );
    assert_eq!(
        edge.cluster_ips,
        vec!["10.96.0.30".parse::<std::net::IpAddr>().unwrap()]
    );
    let body = fleetdns::admin::client::get(&admin, "/v1/services/default/pending")
        .await
        .unwrap();
    let pending: fleetdns::admin::api::ServiceOneDoc = serde_json::from_str(&body).unwrap();
    assert!(pending.service.clusters[0].ingress.is_empty());

    // Each refusal is counted once, by reason.
    let metrics = http_get(app.ops_addr.unwrap(), "/metrics").await.body;
    for reason in ["external-name", "namespace-denied", "no-service"] {
        let series = format!("fleetdns_source_exports_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&metrics, &series), 1, "{series}\n{metrics}");
    }
    // Every request carried the kubeconfig's bearer token.
    assert!(
        fake.requests().iter().all(|r| r.bearer),
        "unauthenticated requests"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_deletions_a_410_mid_burst_and_an_absent_api_server_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start().await;
    seed(&fake);
    let app = start_kube_peer(dir.path(), &fake, "").await;
    let dns = app.dns_addrs[0];
    wait_answers(
        dns,
        "web.default.east.fleet.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;

    // A deleted service goes away.
    fake.delete(Kind::Service, "default", "web");
    wait_answers(dns, "web.default.east.fleet.", RecordType::A, &[]).await;

    // The history is compacted and every watch cut in the middle of a burst: the
    // watchers resume with a too-old resourceVersion, get 410, relist, and end with
    // every change of the burst.
    let relists_before = counter(
        &http_get(app.ops_addr.unwrap(), "/metrics").await.body,
        "fleetdns_source_kube_relists_total{kind=\"service\"}",
    );
    for i in 0..5 {
        fake.apply(export(cluster_ip_service(
            "default",
            &format!("burst{i}"),
            &[&format!("10.96.1.{i}")],
        )));
        if i == 2 {
            fake.compact();
            fake.drop_watches();
        }
    }
    fake.delete(Kind::Service, "default", "burst1");
    for i in [0, 2, 3, 4] {
        wait_answers(
            dns,
            &format!("burst{i}.default.east.fleet."),
            RecordType::A,
            &[&format!("10.96.1.{i}")],
        )
        .await;
    }
    wait_answers(dns, "burst1.default.east.fleet.", RecordType::A, &[]).await;
    let metrics = http_get(app.ops_addr.unwrap(), "/metrics").await.body;
    assert!(
        counter(
            &metrics,
            "fleetdns_source_kube_relists_total{kind=\"service\"}"
        ) > relists_before,
        "no relist after the 410:\n{metrics}"
    );

    // The API server goes away: every record keeps being served, errors are counted.
    fake.go_down().await;
    let errors = async {
        loop {
            let m = http_get(app.ops_addr.unwrap(), "/metrics").await.body;
            if counter(&m, "fleetdns_source_kube_errors_total{kind=\"service\"}") > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, errors)
        .await
        .expect("watch errors counted");
    for i in [0, 2, 3, 4] {
        let (rcode, got) =
            lookup(dns, &format!("burst{i}.default.east.fleet."), RecordType::A).await;
        assert_eq!(
            (rcode, got),
            (ResponseCode::NoError, vec![format!("10.96.1.{i}")])
        );
    }
    wait_answers(
        dns,
        "db.default.east.fleet.",
        RecordType::A,
        &["10.1.1.1", "10.1.1.3"],
    )
    .await;
    assert_eq!(app.snapshot().readiness, Readiness::Ready);
    // It comes back; what changed meanwhile arrives.
    fake.apply(export(cluster_ip_service(
        "default",
        "after",
        &["10.96.2.1"],
    )));
    fake.come_back().await;
    wait_answers(
        dns,
        "after.default.east.fleet.",
        RecordType::A,
        &["10.96.2.1"],
    )
    .await;
    wait_answers(
        dns,
        "burst0.default.east.fleet.",
        RecordType::A,
        &["10.96.1.0"],
    )
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_without_the_mcs_crd_the_annotation_alone_exports() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start_with(Options {
        mcs: McsCrd::Absent,
        ..Options::default()
    })
    .await;
    fake.apply(export(cluster_ip_service(
        "default",
        "web",
        &["10.96.0.10"],
    )));
    fake.apply(cluster_ip_service("default", "api", &["10.96.0.20"]).build());
    // Ready without waiting for a CRD that is not there.
    let app = start_kube_peer(dir.path(), &fake, "").await;
    let dns = app.dns_addrs[0];
    wait_answers(
        dns,
        "web.default.east.fleet.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;
    wait_answers(dns, "api.default.east.fleet.", RecordType::A, &[]).await;
    app.shutdown().await;
}

/// East's two replicas read the same API server; west (a services file) reads east
/// through the mesh.
struct LeaseFleet {
    _dir: tempfile::TempDir,
    east: Vec<Option<App>>,
    west: App,
}

async fn lease_fleet(fake: &FakeKube) -> LeaseFleet {
    let dir = tempfile::tempdir().unwrap();
    let mesh = [free_addr(), free_addr(), free_addr()];
    let fleet = FleetDir::new(dir.path());
    fleet.write_leaf("ca", "east");
    fleet.write_leaf("ca", "west");
    fleet.write_services("west", "192.0.2.2");
    let kubeconfig = fake.kubeconfig(dir.path());
    let mut east = Vec::new();
    for (i, replica) in ["a", "b"].iter().enumerate() {
        let seeds = [mesh[2], mesh[1 - i]];
        let path = fleet.write_config(&PeerConfig::new("east", mesh[i], &seeds));
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "source: {file: east.yaml}",
            &format!(
                "source: {{kubernetes: {{kubeconfig: {}, lease: {{namespace: fleetdns, name: fleetdns-east, duration: 3s}}}}}}\nops: {{listen: \"127.0.0.1:0\"}}",
                kubeconfig.display()
            ),
        );
        let path = dir.path().join(format!("east-{replica}.yaml"));
        std::fs::write(&path, text).unwrap();
        let options = StartOptions {
            node_id: Some(format!("east/{replica}")),
            ..fast_options()
        };
        east.push(Some(
            App::start(Config::load(&path).unwrap(), options)
                .await
                .unwrap(),
        ));
    }
    let path = fleet.write_config(&PeerConfig::new("west", mesh[2], &mesh[..2]));
    let west = start_peer(&path).await;
    LeaseFleet {
        _dir: dir,
        east,
        west,
    }
}

async fn held(app: &App) -> bool {
    let m = http_get(app.ops_addr.unwrap(), "/metrics").await.body;
    m.lines().any(|l| l == "fleetdns_lease_held 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_one_replica_holds_the_lease_and_a_new_holder_takes_over_seamlessly() {
    let fake = FakeKube::start().await;
    fake.apply(export(
        cluster_ip_service("default", "web", &["10.96.0.10"]).port("http", 80, "TCP"),
    ));
    fake.apply(
        load_balancer_service(
            "default",
            "edge",
            "10.96.0.30",
            &[LbIngress::Ip("203.0.113.30")],
        )
        .annotation("fleetdns.io/export", "true")
        .build(),
    );
    let mut fleet = lease_fleet(&fake).await;
    let west_dns = fleet.west.dns_addrs[0];
    wait_answers(
        west_dns,
        "edge.default.east.fleet.",
        RecordType::A,
        &["203.0.113.30"],
    )
    .await;

    // Exactly one replica holds the lease, and it is the one the API server names.
    let holder = fake
        .lease("fleetdns", "fleetdns-east")
        .and_then(|l| l.holder)
        .expect("a lease holder");
    let index = if holder == "east/a" { 0 } else { 1 };
    let other = 1 - index;
    assert!(held(fleet.east[index].as_ref().unwrap()).await);
    assert!(!held(fleet.east[other].as_ref().unwrap()).await);

    // The holder stops (releasing the lease); the other takes over and publishes,
    // and west never loses the cluster meanwhile.
    let stopping = fleet.east[index].take().unwrap();
    let watching = async {
        let mut polls = 0u32;
        loop {
            let snap = fleet.west.snapshot();
            let state = snap
                .view
                .clusters
                .get(&fleetdns::model::ClusterId::parse("east").unwrap())
                .map(|c| c.state);
            // The standby replica keeps east live throughout: never stale, never gone.
            assert_eq!(
                state,
                Some(fleetdns::view::ClusterState::Live),
                "east was not live in west's view during the failover"
            );
            let survivor = fleet.east[other].as_ref().unwrap();
            if held(survivor).await && polls > 0 {
                return;
            }
            polls += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    stopping.shutdown().await;
    tokio::time::timeout(TIMEOUT, watching)
        .await
        .expect("the other replica took the lease");
    assert_eq!(
        fake.lease("fleetdns", "fleetdns-east")
            .and_then(|l| l.holder)
            .as_deref(),
        Some(if other == 0 { "east/a" } else { "east/b" })
    );
    // The new holder publishes: a change reaches west.
    fake.apply(
        load_balancer_service(
            "default",
            "edge",
            "10.96.0.30",
            &[LbIngress::Ip("203.0.113.31")],
        )
        .annotation("fleetdns.io/export", "true")
        .build(),
    );
    wait_answers(
        west_dns,
        "edge.default.east.fleet.",
        RecordType::A,
        &["203.0.113.31"],
    )
    .await;

    // Someone else takes the lease: the holder notices within a lease period and stops
    // publishing.
    fake.apply(lease("fleetdns", "fleetdns-east", "east/intruder", 3600));
    let survivor = fleet.east[other].as_ref().unwrap();
    let stepped_down = async {
        while held(survivor).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), stepped_down)
        .await
        .expect("the replica stopped holding the lease within the lease duration");
    let standing_by = async {
        loop {
            let m = http_get(survivor.ops_addr.unwrap(), "/metrics").await.body;
            if m.lines().any(|l| l == "fleetdns_mesh_publishing 0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, standing_by)
        .await
        .expect("the replica that lost the lease stopped publishing");
    for app in fleet.east.into_iter().flatten() {
        app.shutdown().await;
    }
    fleet.west.shutdown().await;
}

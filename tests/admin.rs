//! The admin query API and `fleetdns query` against real peers: three mesh peers in
//! one process, each with its admin listener, queried over HTTP and through the CLI
//! binary; `resolve` checked against a real DNS query of the same peer; a stopped
//! cluster shown as unreachable and its answers as stale; a refused address shown with
//! its reason; and a token-protected API over TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use common::mesh::*;
use common::*;
use fleetdns::admin::api::{ClustersDoc, PeersDoc, ResolveDoc, ServiceOneDoc, ServicesDoc};
use fleetdns::admin::client::{self, ClientError, Target};
use fleetdns::app::App;
use fleetdns::view::{ClusterState, Refusal};
use hickory_proto::rr::RecordType;

const CLUSTERS: [&str; 3] = ["east", "west", "central"];

/// East's own services and what west and central export. West's `web` has an ingress
/// address inside east's service CIDR, so east refuses it (`address-overlap`).
fn services_of(cluster: &str) -> String {
    match cluster {
        "east" => "services:\n  - {name: web, namespace: default, ports: [{name: http, port: 80}], cluster_ips: [10.96.0.10], ingress: [203.0.113.1], endpoints: [{address: 10.1.0.5}]}\n  - {name: big, namespace: default, headless: true, ports: [{name: http, port: 80}], endpoints: [EPS]}\n".replace(
            "EPS",
            &(1..=120)
                .map(|i| format!("{{address: 10.1.1.{i}, hostname: pod-{i}}}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        "west" => "services:\n  - {name: web, namespace: default, ports: [{name: http, port: 80}], ingress: [198.51.100.7, 10.96.5.5], endpoints: [{address: 10.2.0.5}]}\n  - {name: only-west, namespace: shop, ingress: [198.51.100.8], endpoints: [{address: 10.2.0.6}]}\n".into(),
        _ => "services:\n  - {name: web, namespace: default, ports: [{name: http, port: 80}], ingress: [192.0.2.30], endpoints: [{address: 10.3.0.5}]}\n".into(),
    }
}

/// Writes a fleet whose peers serve their admin API on a free loopback port; east
/// owns the service CIDR 10.96.0.0/12.
fn write_fleet(dir: &Path, mesh: &[SocketAddr; 3]) -> Vec<std::path::PathBuf> {
    let fleet = FleetDir::new(dir);
    let mut paths = Vec::new();
    for (i, cluster) in CLUSTERS.iter().enumerate() {
        fleet.write_leaf("ca", cluster);
        std::fs::write(dir.join(format!("{cluster}.yaml")), services_of(cluster)).unwrap();
        let seeds: Vec<SocketAddr> = mesh
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        let path = fleet.write_config(&PeerConfig::new(cluster, mesh[i], &seeds));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(
            "admin: {listen: \"127.0.0.1:0\"}\nnetwork: {service_cidrs: [10.96.0.0/12]}\n",
        );
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    paths
}

fn target(app: &App) -> Target {
    Target {
        admin: app.admin_addr.expect("admin listener").to_string(),
        token: None,
        ca: None,
    }
}

async fn get<T: serde::de::DeserializeOwned>(target: &Target, path: &str) -> T {
    let body = client::get(target, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Polls `path` until `ok` holds for its document.
async fn wait_doc<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    target: &Target,
    path: &str,
    what: &str,
    ok: impl Fn(&T) -> bool,
) -> T {
    let poll = async {
        loop {
            let doc: T = get(target, path).await;
            if ok(&doc) {
                return doc;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, poll)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what} at {path}"))
}

/// Runs the `fleetdns` binary with `args`, off the runtime's threads.
async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetdns"))
            .args(&args)
            .env_remove("FLEETDNS_ADMIN")
            .env_remove("FLEETDNS_TOKEN")
            .output()
            .expect("run fleetdns")
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Sorted record data of one section.
fn data(records: &[fleetdns::admin::api::RecordDoc]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| r.data.clone()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_admin_api_and_cli_explain_the_fleet_as_dns_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = [free_addr(), free_addr(), free_addr()];
    let paths = write_fleet(dir.path(), &mesh);
    let east = start_peer(&paths[0]).await;
    let west = start_peer(&paths[1]).await;
    let central = start_peer(&paths[2]).await;
    let api = target(&east);

    // Clusters: all three live, with their replica, version and adopted root.
    let clusters: ClustersDoc = wait_doc(
        &api,
        "/v1/clusters",
        "three live clusters",
        |d: &ClustersDoc| {
            d.clusters.len() == 3
                && d.clusters
                    .iter()
                    .all(|c| c.state == ClusterState::Live && !c.replicas.is_empty())
                && d.clusters
                    .iter()
                    .filter(|c| !c.local)
                    .all(|c| c.root.is_some())
        },
    )
    .await;
    assert_eq!(clusters.local, "east");
    let west_doc = clusters.clusters.iter().find(|c| c.id == "west").unwrap();
    assert_eq!(west_doc.replicas[0].node_id, "west/0");
    assert_eq!(
        west_doc.replicas[0].version.as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let root = west_doc.root.as_ref().unwrap();
    assert_eq!(root.node_id, "west/0");
    assert!(root.adopted_ms >= root.origin_ms, "{root:?}");
    assert_eq!(west_doc.services, 2);
    let east_doc = clusters.clusters.iter().find(|c| c.id == "east").unwrap();
    assert!(east_doc.local && east_doc.root.is_none());

    // Peers: every member, live, at its mesh address.
    let peers: PeersDoc = wait_doc(&api, "/v1/peers", "three live peers", |d: &PeersDoc| {
        d.peers.len() == 3 && d.peers.iter().all(|p| p.live && p.cluster.is_some())
    })
    .await;
    assert_eq!(peers.self_node.as_deref(), Some("east/0"));
    let mut addrs: Vec<SocketAddr> = peers.peers.iter().map(|p| p.address).collect();
    addrs.sort();
    let mut want = mesh.to_vec();
    want.sort();
    assert_eq!(addrs, want);

    // Services: west's overlapping address is shown refused, with its reason.
    let services: ServicesDoc = get(&api, "/v1/services?namespace=default").await;
    assert!(services.services.iter().all(|s| s.namespace == "default"));
    let web = services.services.iter().find(|s| s.name == "web").unwrap();
    let west_web = web.clusters.iter().find(|c| c.cluster == "west").unwrap();
    assert_eq!(west_web.mode, "ingress");
    assert_eq!(
        west_web.served,
        vec!["198.51.100.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(west_web.refused.len(), 1);
    assert_eq!(west_web.refused[0].address.to_string(), "10.96.5.5");
    assert_eq!(west_web.refused[0].reason, Refusal::AddressOverlap);
    let merged = web.merged.as_ref().unwrap();
    assert_eq!(merged.chosen, vec!["east"]);
    let only_west: ServicesDoc = get(&api, "/v1/services?cluster=west&namespace=shop").await;
    assert_eq!(only_west.services.len(), 1);
    assert_eq!(only_west.services[0].clusters.len(), 1);
    let one: ServiceOneDoc = get(&api, "/v1/services/default/web").await;
    assert_eq!(one.service.clusters.len(), 3);

    // Errors are JSON with a status a client can act on.
    let missing = client::get(&api, "/v1/services/default/nope")
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ClientError::Status { status: 404, .. }),
        "{missing}"
    );
    let bad = client::get(&api, "/v1/resolve?name=web..fleet&type=A")
        .await
        .unwrap_err();
    assert!(
        matches!(bad, ClientError::Status { status: 400, .. }),
        "{bad}"
    );
    let bad_type = client::get(&api, "/v1/resolve?name=web.default.svc.fleet&type=BOGUS")
        .await
        .unwrap_err();
    assert!(bad_type.to_string().contains("BOGUS"), "{bad_type}");

    // Mistakes are named, never silently ignored; the API is read-only.
    let admin_addr = east.admin_addr.unwrap();
    for (path, needle) in [
        ("/v1/clusters?x=1", "unknown field"),
        ("/v1/services?cluster=East", "East"),
        ("/v1/services?namespace=Bad_NS", "Bad_NS"),
        ("/v1/resolve?name=", "name is required"),
    ] {
        let r = http_get(admin_addr, path).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(r.body.contains(needle), "{path}: {}", r.body);
        serde_json::from_str::<fleetdns::admin::api::ErrorDoc>(&r.body).expect("a JSON error");
    }
    let post = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
        stream
            .write_all(b"POST /v1/clusters HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        raw
    };
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.contains("read-only"), "{post}");

    // resolve gives exactly what the DNS server answers.
    for (name, qtype) in [
        ("web.default.svc.fleet.", RecordType::A),
        ("web.default.west.fleet.", RecordType::A),
        ("_http._tcp.web.default.svc.fleet.", RecordType::SRV),
        ("nope.default.svc.fleet.", RecordType::A),
        ("east.fleet.", RecordType::TXT),
    ] {
        let doc: ResolveDoc = get(&api, &format!("/v1/resolve?name={name}&type={qtype}")).await;
        let dns = tcp(east.dns_addrs[0], &Q::new(name, qtype).edns(1232)).await;
        assert_eq!(
            doc.rcode,
            match u16::from(dns.metadata.response_code) {
                0 => "NOERROR",
                3 => "NXDOMAIN",
                _ => "other",
            },
            "{name}"
        );
        assert_eq!(data(&doc.answer), answers(&dns), "{name}");
        assert_eq!(doc.authority.len(), dns.authorities.len(), "{name}");
        assert_eq!(
            doc.additional.len() + 1,
            dns.additionals.len() + usize::from(dns.edns.is_some()),
            "{name}"
        );
        assert!(doc.flags.aa, "{name}");
    }
    let merged: ResolveDoc = get(&api, "/v1/resolve?name=web.default.svc.fleet&type=A").await;
    assert_eq!(merged.explanation.kind, "merged-service");
    assert_eq!(
        merged.explanation.policy.as_deref(),
        Some("local-preferred")
    );
    assert_eq!(merged.explanation.contributed, vec!["east"]);
    assert!(
        merged
            .explanation
            .skipped
            .iter()
            .any(|s| s.cluster == "west" && s.reason == "not-chosen"),
        "{:?}",
        merged.explanation
    );
    // A headless answer too large for UDP says so.
    let big: ResolveDoc = get(&api, "/v1/resolve?name=big.default.east.fleet&type=A").await;
    assert!(
        big.udp_truncated && big.answer.len() == 120,
        "{}",
        big.answer.len()
    );

    // The CLI: tables and JSON for each command.
    let admin = east.admin_addr.unwrap().to_string();
    for (command, expect) in [
        (vec!["clusters"], "west/0"),
        (vec!["peers"], "east/0*"),
        (vec!["services"], "10.96.5.5 refused: address-overlap"),
        (vec!["services", "default/web"], "ports: http 80/tcp"),
        (
            vec!["resolve", "web.default.svc.fleet"],
            "why (merged-service):",
        ),
        (
            vec!["resolve", "_http._tcp.web.default.svc.fleet", "SRV"],
            "answer:",
        ),
    ] {
        let mut a = args(&["query", "--admin", &admin]);
        a.extend(command.iter().map(|s| s.to_string()));
        let out = cli(a).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(expect),
            "{command:?} lacks {expect:?}:\n{stdout}"
        );
    }
    let out = cli(args(&["query", "--admin", &admin, "--json", "clusters"])).await;
    assert!(out.status.success());
    let doc: ClustersDoc = serde_json::from_slice(&out.stdout).expect("--json prints the document");
    assert_eq!(doc.clusters.len(), 3);
    let out = cli(args(&[
        "query",
        "--admin",
        &admin,
        "--json",
        "resolve",
        "web.default.west.fleet",
        "A",
    ]))
    .await;
    let doc: ResolveDoc = serde_json::from_slice(&out.stdout).expect("--json resolve");
    assert_eq!(data(&doc.answer), vec!["198.51.100.7"]);

    // A stopped cluster is shown unreachable, its answers stale, in API and DNS alike.
    west.shutdown().await;
    let clusters: ClustersDoc = wait_doc(
        &api,
        "/v1/clusters",
        "west unreachable",
        |d: &ClustersDoc| {
            d.clusters
                .iter()
                .any(|c| c.id == "west" && c.state == ClusterState::Unreachable)
        },
    )
    .await;
    let west_doc = clusters.clusters.iter().find(|c| c.id == "west").unwrap();
    assert!(west_doc.state_since_ms.is_some());
    // The replica's own liveness is the failure detector's: it follows soon after
    // (the cluster's state is decided by its signed stamps, which may age first).
    wait_doc(&api, "/v1/clusters", "west/0 dead", |d: &ClustersDoc| {
        d.clusters
            .iter()
            .any(|c| c.id == "west" && c.replicas.iter().all(|r| !r.live))
    })
    .await;
    let one: ServiceOneDoc = get(&api, "/v1/services/default/web").await;
    let west_web = one.service.clusters.iter().find(|c| c.cluster == "west");
    if let Some(west_web) = west_web {
        // (It may already be withdrawn: max_stale is 2 s in these tests.)
        assert!(west_web.stale || west_web.state == ClusterState::Withdrawn);
    }
    let doc: ResolveDoc = get(&api, "/v1/resolve?name=web.default.west.fleet&type=A").await;
    let dns = tcp(
        east.dns_addrs[0],
        &Q::new("web.default.west.fleet.", RecordType::A).edns(1232),
    )
    .await;
    let ede_codes: Vec<u16> = doc.ede.iter().map(|e| e.code).collect();
    assert_eq!(
        ede_codes.first().copied(),
        ede(&dns),
        "API and DNS agree on the EDE"
    );
    assert!(matches!(ede_codes.as_slice(), [3] | [22]), "{ede_codes:?}");
    drop(central);
    east.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_token_protected_api_over_tls_answers_only_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a server certificate for 127.0.0.1 (the API's TLS identity).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("admin.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path().join("admin.key"), key.serialize_pem()).unwrap();
    let token = "s3cret-token-0123456789";
    let extra = format!(
        "admin: {{listen: \"127.0.0.1:0\", token: {token}, tls: {{cert: {d}/admin.pem, key: {d}/admin.key}}}}",
        d = dir.path().display()
    );
    let peer = TestPeer::start(
        "east",
        &[("east", "services:\n  - {name: web, namespace: default, cluster_ips: [10.96.0.10], endpoints: [{address: 10.1.0.5}]}\n")],
        &extra,
    )
    .await;
    let admin = format!("https://{}", peer.app.admin_addr.unwrap());
    let ca_path = dir.path().join("ca.pem");
    let with = Target {
        admin: admin.clone(),
        token: Some(token.into()),
        ca: Some(ca_path.clone()),
    };
    let doc: ClustersDoc = get(&with, "/v1/clusters").await;
    assert_eq!(doc.clusters.len(), 1);
    let peers: PeersDoc = get(&with, "/v1/peers").await;
    assert_eq!(peers.self_node, None, "a static fleet has no mesh");

    let without = Target {
        token: None,
        ..with.clone()
    };
    let err = client::get(&without, "/v1/clusters").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 401, .. }),
        "{err}"
    );
    let wrong = Target {
        token: Some("not-the-token-at-all".into()),
        ..with.clone()
    };
    let err = client::get(&wrong, "/v1/clusters").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 401, .. }),
        "{err}"
    );

    // The CLI with --token/--ca, and FLEETDNS_TOKEN from the environment.
    let out = cli(args(&[
        "query",
        "--admin",
        &admin,
        "--ca",
        ca_path.to_str().unwrap(),
        "--token",
        token,
        "clusters",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("east*"));
    let out = cli(args(&[
        "query",
        "--admin",
        &admin,
        "--ca",
        ca_path.to_str().unwrap(),
        "clusters",
    ]))
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Requests are counted by endpoint and status.
    let metrics = http_get(peer.ops(), "/metrics").await.body;
    assert!(
        metrics.contains("fleetdns_admin_requests_total{endpoint=\"clusters\",code=\"401\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn query_fails_clearly_when_nothing_listens() {
    let port = free_addr();
    let out = cli(args(&["query", "--admin", &port.to_string(), "clusters"])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("no admin API answers at {port}")),
        "{stderr}"
    );
    let out = cli(args(&["query", "--admin", "nonsense", "peers"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nonsense\""));
}

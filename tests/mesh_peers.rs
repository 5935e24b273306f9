//! Three peers in one process, each exporting its own services file over a real mesh
//! (chitchat over the stream transport on loopback, signed roots), answering real DNS:
//! every cluster sees the others, edits propagate, and a stopped cluster goes stale,
//! then withdrawn.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::mesh::*;
use common::*;
use fleetdns::clock::SystemClock;
use fleetdns::config::Config;
use fleetdns::identity::FleetName;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const CLUSTERS: [&str; 3] = ["east", "west", "central"];

/// Writes credentials, services files and configs for the three peers; returns the
/// config paths.
fn write_fleet(dir: &Path, mesh: &[SocketAddr; 3]) -> Vec<std::path::PathBuf> {
    write_fleet_with(dir, mesh, "2s")
}

fn write_fleet_with(
    dir: &Path,
    mesh: &[SocketAddr; 3],
    max_stale: &str,
) -> Vec<std::path::PathBuf> {
    let fleet = FleetDir::new(dir);
    let mut paths = Vec::new();
    for (i, cluster) in CLUSTERS.iter().enumerate() {
        fleet.write_leaf("ca", cluster);
        fleet.write_services(cluster, &format!("192.0.2.{}", i + 1));
        let seeds: Vec<SocketAddr> = mesh
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        paths.push(fleet.write_config(&PeerConfig {
            max_stale,
            ..PeerConfig::new(cluster, mesh[i], &seeds)
        }));
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_three_peers_share_their_exports_and_a_stopped_one_is_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = [free_addr(), free_addr(), free_addr()];
    let paths = write_fleet(dir.path(), &mesh);
    let east = start_peer(&paths[0]).await;
    let west = start_peer(&paths[1]).await;
    let central = start_peer(&paths[2]).await;
    let (east_dns, west_dns) = (east.dns_addrs[0], west.dns_addrs[0]);

    // Each peer sees the others' exports, per cluster and merged.
    wait_reply(
        west_dns,
        "only-east.default.east.fleet.",
        "answered east's export",
        |m| answers(m) == vec!["192.0.2.1"],
    )
    .await;
    wait_reply(
        east_dns,
        "only-central.default.svc.fleet.",
        "answered central's export",
        |m| answers(m) == vec!["192.0.2.3"],
    )
    .await;
    // local-preferred: every peer answers its own cluster for the shared service.
    let m = udp(west_dns, &Q::new("web.default.svc.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["192.0.2.2"]);

    // An edit on east reaches west.
    replace_file(
        &dir.path().join("east.yaml"),
        &services("east", "192.0.2.99"),
    );
    wait_reply(
        west_dns,
        "only-east.default.east.fleet.",
        "saw east's edit",
        |m| answers(m) == vec!["192.0.2.99"],
    )
    .await;

    // West's mesh metrics say what it sees: three live clusters, three live members
    // (itself included), east's update timed from its origin, gossip both ways.
    let expected = |text: &str| {
        let metric = |series: &str| metric_value(text, series).unwrap_or(f64::NAN);
        metric("fleetdns_mesh_clusters{state=\"live\"}") == 3.0
            && metric("fleetdns_mesh_members{state=\"live\"}") == 3.0
            && metric("fleetdns_mesh_roots_adopted_total") >= 3.0
            && metric("fleetdns_mesh_propagation_seconds_count") >= 1.0
            && metric("fleetdns_mesh_publishing") == 1.0
            && metric("fleetdns_mesh_digest_bytes") > 0.0
            && metric("fleetdns_mesh_bytes_total{direction=\"in\"}") > 0.0
            && metric("fleetdns_mesh_bytes_total{direction=\"out\"}") > 0.0
    };
    let settled = tokio::time::timeout(TIMEOUT, async {
        while !expected(&west.metrics.encode()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "west's mesh metrics never showed the fleet:\n{}",
        west.metrics.encode()
    );

    // Stop central: its names go stale (EDE 3), then withdrawn (SERVFAIL, EDE 22).
    central.shutdown().await;
    wait_reply(
        west_dns,
        "only-central.default.central.fleet.",
        "answered stale",
        |m| ede(m) == Some(3),
    )
    .await;
    let m = wait_reply(
        west_dns,
        "only-central.default.central.fleet.",
        "was withdrawn",
        |m| m.metadata.response_code == ResponseCode::ServFail,
    )
    .await;
    assert_eq!(ede(&m), Some(22));
    let m = udp(
        west_dns,
        &Q::new("nope.default.central.fleet.", RecordType::A).edns(1232),
    )
    .await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "never NXDOMAIN"
    );

    // Restarted (a new generation), it returns after rejoin_after.
    let central = start_peer(&paths[2]).await;
    wait_reply(
        west_dns,
        "only-central.default.central.fleet.",
        "saw central return",
        |m| answers(m) == vec!["192.0.2.3"] && ede(m).is_none(),
    )
    .await;

    for app in [east, west, central] {
        app.shutdown().await;
    }
}

/// `leave`: a stopped cluster that leaves is dropped by the others at once (NXDOMAIN),
/// long before max_stale would have withdrawn it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_cluster_that_leaves_is_dropped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = [free_addr(), free_addr(), free_addr()];
    let paths = write_fleet_with(dir.path(), &mesh, "60s");
    let east = start_peer(&paths[0]).await;
    let west = start_peer(&paths[1]).await;
    let east_dns = east.dns_addrs[0];
    wait_reply(
        east_dns,
        "only-west.default.west.fleet.",
        "answered west's export",
        |m| answers(m) == vec!["192.0.2.2"],
    )
    .await;

    west.shutdown().await;
    let config = Config::load(&paths[1]).unwrap();
    let peers = fleetdns::mesh::node::leave(
        config.mesh.clone().unwrap(),
        FleetName::parse("test").unwrap(),
        config.cluster.clone(),
        std::sync::Arc::new(SystemClock),
    )
    .await
    .unwrap();
    assert_eq!(peers, 1, "east heard it");
    wait_reply(
        east_dns,
        "only-west.default.west.fleet.",
        "dropped west",
        |m| m.metadata.response_code == ResponseCode::NXDomain,
    )
    .await;
    let m = udp(east_dns, &Q::new("west.fleet.", RecordType::TXT)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    east.shutdown().await;
}

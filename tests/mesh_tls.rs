//! Mutual TLS in the mesh over real sockets: only a process with a current leaf from
//! the trust bundle, for a cluster not revoked, gets in; the others are refused and
//! counted, learn nothing and inject nothing, and gossip goes on. A CA rotation keeps
//! the fleet converged, and removing the old CA cuts its peers off.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatHandle, spawn_chitchat};
use common::mesh::*;
use common::*;
use fleetdns::app::App;
use fleetdns::clock::{Clock, SystemClock};
use fleetdns::identity::{Credentials, FleetTrust};
use fleetdns::mesh::peer::{PeerIdentity, Publisher};
use fleetdns::mesh::tls::MeshTls;
use fleetdns::mesh::transport::{StreamTransport, TransportSettings};
use fleetdns::model::ClusterId;
use fleetdns::source::file::parse_services_file;
use hickory_proto::op::ResponseCode;

/// Waits until `app`'s metrics satisfy `ok`.
async fn wait_metrics(app: &App, what: &str, ok: impl Fn(&dyn Fn(&str) -> f64) -> bool) {
    let settled = tokio::time::timeout(TIMEOUT, async {
        loop {
            let text = app.metrics.encode();
            let metric = |series: &str| metric_value(&text, series).unwrap_or(0.0);
            if ok(&metric) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "never {what}:\n{}", app.metrics.encode());
}

/// The clusters `app` serves.
fn clusters(app: &App) -> Vec<String> {
    app.snapshot()
        .view
        .clusters
        .keys()
        .map(|c| c.to_string())
        .collect()
}

/// A bare chitchat node dialling `seed`: over mutual TLS with `leaf` (trusting the
/// fleet's real CA, so only the other side can refuse), or over plain TCP. It
/// publishes a root for its cluster signed with its own key, which a reader would
/// adopt if the node ever got in.
async fn intruder(
    fleet: &FleetDir,
    node_id: &str,
    leaf: &Credentials,
    tls: bool,
    seed: SocketAddr,
) -> ChitchatHandle {
    let listen = free_addr();
    let settings = TransportSettings::default();
    let transport = if tls {
        let trust = FleetTrust::new(fleet.fleet.clone(), &[fleet.ca("ca").cert_pem]).unwrap();
        let tls = MeshTls::new(
            &leaf.cert_pem,
            &leaf.key_pem,
            trust,
            Arc::new(SystemClock),
            Arc::default(),
        )
        .unwrap();
        StreamTransport::tls(settings, Arc::default(), Arc::new(tls))
    } else {
        StreamTransport::new(settings)
    };
    let config = bare_chitchat_config(
        fleet.fleet.as_str(),
        node_id,
        1,
        listen,
        vec![seed.to_string()],
    );
    let handle = spawn_chitchat(config, Vec::new(), &transport)
        .await
        .unwrap();
    let cluster = node_id.split('/').next().unwrap();
    let exports = parse_services_file(
        &services(cluster, "198.51.100.66"),
        "intruder",
        &ClusterId::parse(cluster).unwrap(),
    )
    .unwrap();
    let mut publisher = Publisher::new(
        PeerIdentity {
            fleet: fleet.fleet.clone(),
            node_id: node_id.to_string(),
            cert_chain_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
        },
        1,
        1,
    );
    let now = SystemClock.unix_millis();
    handle
        .with_chitchat(|c| {
            publisher
                .publish(c.self_node_state(), &exports, now)
                .unwrap();
        })
        .await;
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_only_peers_with_a_trusted_current_unrevoked_certificate_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FleetDir::new(dir.path());
    let (east_addr, west_addr) = (free_addr(), free_addr());
    let mut leaves = Vec::new();
    for (cluster, ip) in [("east", "192.0.2.1"), ("west", "192.0.2.2")] {
        leaves.push(fleet.write_leaf("ca", cluster));
        fleet.write_services(cluster, ip);
    }
    let revoke = "  revoked_clusters: [north]\n";
    let east = start_peer(&fleet.write_config(&PeerConfig {
        extra: revoke,
        ..PeerConfig::new("east", east_addr, &[])
    }))
    .await;
    let west = start_peer(&fleet.write_config(&PeerConfig {
        extra: revoke,
        ..PeerConfig::new("west", west_addr, &[east_addr])
    }))
    .await;
    let east_dns = east.dns_addrs[0];
    wait_reply(east_dns, "only-west.default.west.fleet.", "saw west", |m| {
        fresh(m, "192.0.2.2")
    })
    .await;

    // A foreign CA's leaf, an expired leaf, a revoked cluster's leaf, and a valid
    // leaf over plain TCP.
    fleet.write_ca("foreign");
    let foreign = fleet.write_leaf("foreign", "foreign");
    let stale = fleet.write_leaf_at("ca", "stale", FleetDir::now() - 10 * 86_400, 1);
    let north = fleet.write_leaf("ca", "north");
    let plain = fleet.write_leaf("ca", "plain");
    let intruders = [
        intruder(&fleet, "foreign/0", &foreign, true, east_addr).await,
        intruder(&fleet, "stale/0", &stale, true, east_addr).await,
        intruder(&fleet, "north/0", &north, true, east_addr).await,
        intruder(&fleet, "plain/0", &plain, false, east_addr).await,
    ];
    // A member with west's certificate calling itself east/0 gets in (it may relay),
    // but its root for east is refused and its heartbeats keep nothing alive.
    let impostor = intruder(&fleet, "east/0", &leaves[1], true, west_addr).await;
    wait_metrics(&west, "refused the impostor's root", |metric| {
        metric("fleetdns_mesh_roots_rejected_total{reason=\"cert-cluster-mismatch\"}") >= 1.0
    })
    .await;
    wait_metrics(&east, "counted every intruder", |metric| {
        metric("fleetdns_mesh_peer_certs_rejected_total{reason=\"untrusted\"}") >= 1.0
            && metric("fleetdns_mesh_peer_certs_rejected_total{reason=\"expired\"}") >= 1.0
            && metric("fleetdns_mesh_peer_certs_rejected_total{reason=\"revoked\"}") >= 1.0
            && metric("fleetdns_mesh_handshake_failures_total") >= 4.0
    })
    .await;

    // Gossip goes on between the members...
    replace_file(
        &dir.path().join("west.yaml"),
        &services("west", "192.0.2.22"),
    );
    wait_reply(
        east_dns,
        "only-west.default.west.fleet.",
        "saw west's edit",
        |m| fresh(m, "192.0.2.22"),
    )
    .await;
    // ...and the intruders got nothing in and nothing out.
    for app in [&east, &west] {
        assert_eq!(clusters(app), ["east", "west"]);
    }
    for cluster in ["foreign", "stale", "north", "plain"] {
        let m = udp(
            east_dns,
            &Q::new(
                &format!("only-{cluster}.default.{cluster}.fleet."),
                hickory_proto::rr::RecordType::A,
            ),
        )
        .await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{cluster}"
        );
    }
    for handle in intruders {
        let known = handle.with_chitchat(|c| c.node_states().len()).await;
        assert_eq!(known, 1, "an intruder learned of other nodes");
        handle.shutdown().await.unwrap();
    }
    let relayed = impostor.with_chitchat(|c| c.node_states().len()).await;
    assert!(relayed >= 3, "the impostor is a member and relays");
    wait_reply(
        west.dns_addrs[0],
        "only-east.default.east.fleet.",
        "kept east's own export",
        |m| fresh(m, "192.0.2.1"),
    )
    .await;
    impostor.shutdown().await.unwrap();
    east.shutdown().await;
    west.shutdown().await;
}

/// Once east and central (apps 0 and 2) no longer accept west: both drop its export at
/// once (NXDOMAIN, not stale), east counts a refused handshake with `reason`, and an
/// edit on central still reaches east.
async fn west_is_cut_off(apps: &[App], dir: &std::path::Path, reason: &str) {
    for i in [0, 2] {
        wait_reply(
            apps[i].dns_addrs[0],
            "only-west.default.west.fleet.",
            "dropped west",
            |m| m.metadata.response_code == ResponseCode::NXDomain,
        )
        .await;
    }
    let series = format!("fleetdns_mesh_peer_certs_rejected_total{{reason=\"{reason}\"}}");
    wait_metrics(&apps[0], "refused west's handshake", |metric| {
        metric(&series) >= 1.0
    })
    .await;
    replace_file(
        &dir.join("central.yaml"),
        &services("central", "192.0.2.33"),
    );
    wait_reply(
        apps[0].dns_addrs[0],
        "only-central.default.central.fleet.",
        "saw central's edit",
        |m| fresh(m, "192.0.2.33"),
    )
    .await;
    assert_eq!(clusters(&apps[0]), ["central", "east"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_ca_rotation_keeps_the_fleet_converged_then_cuts_off_the_old_ca() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FleetDir::new(dir.path());
    let old = fleet.ca("ca");
    let new = fleet.write_ca("new");
    let both = format!("{}{}", old.cert_pem, new.cert_pem);
    // east and central already have leaves of the new CA, west still one of the old.
    let peers = [("east", "new"), ("west", "ca"), ("central", "new")];
    let addrs = [free_addr(), free_addr(), free_addr()];
    let mut apps = Vec::new();
    for (i, (cluster, ca)) in peers.iter().enumerate() {
        fleet.write_leaf(ca, cluster);
        fleet.write_services(cluster, &format!("192.0.2.{}", i + 1));
        let bundle = format!("{cluster}-bundle.pem");
        std::fs::write(dir.path().join(&bundle), &both).unwrap();
        let seeds: Vec<SocketAddr> = addrs[..i].to_vec();
        let config = fleet.write_config(&PeerConfig {
            trust_bundle: &[bundle.as_str()],
            extra: "  max_connection_age: 1s\n  reload_interval: 200ms\n",
            ..PeerConfig::new(cluster, addrs[i], &seeds)
        });
        apps.push(start_peer(&config).await);
    }
    for app in &apps {
        for (i, (cluster, _)) in peers.iter().enumerate() {
            let name = format!("only-{cluster}.default.{cluster}.fleet.");
            let ip = format!("192.0.2.{}", i + 1);
            wait_reply(app.dns_addrs[0], &name, "converged", |m| fresh(m, &ip)).await;
        }
    }

    // The old CA leaves east's and central's bundles: west is dropped at once and
    // refused from then on, while east and central keep gossiping.
    for cluster in ["east", "central"] {
        replace_file(
            &dir.path().join(format!("{cluster}-bundle.pem")),
            &new.cert_pem,
        );
    }
    west_is_cut_off(&apps, dir.path(), "untrusted").await;
    for app in apps {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_cluster_revoked_at_run_time_is_cut_off_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FleetDir::new(dir.path());
    let clusters = ["east", "west", "central"];
    let addrs = [free_addr(), free_addr(), free_addr()];
    let fast = "  max_connection_age: 1s\n  reload_interval: 200ms\n";
    let revoking = format!("{fast}  revoked_clusters: [west]\n");
    let config = |i: usize, extra: &str| {
        fleet.write_config(&PeerConfig {
            extra,
            ..PeerConfig::new(clusters[i], addrs[i], &addrs[..i])
        })
    };
    let mut apps = Vec::new();
    for (i, cluster) in clusters.iter().enumerate() {
        fleet.write_leaf("ca", cluster);
        fleet.write_services(cluster, &format!("192.0.2.{}", i + 1));
        apps.push(start_peer(&config(i, fast)).await);
    }
    for app in &apps {
        wait_reply(
            app.dns_addrs[0],
            "only-west.default.west.fleet.",
            "saw west",
            |m| fresh(m, "192.0.2.2"),
        )
        .await;
    }

    // east and central revoke west in their config files; they reread them.
    for i in [0, 2] {
        config(i, &revoking);
    }
    west_is_cut_off(&apps, dir.path(), "revoked").await;
    for app in apps {
        app.shutdown().await;
    }
}

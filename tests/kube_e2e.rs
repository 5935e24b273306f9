//! End to end, as a pod in another cluster resolves a service: the fake API server
//! feeds peer `east` (Kubernetes source), peer `west` serves a services file, both in
//! one mesh; in front of west, a real forwarder (unbound, standing in for CoreDNS's
//! forward stub) runs inside a network namespace on port 53, where that namespace's
//! resolv.conf points. `dig` through it gets east's services, including a headless
//! answer too large for UDP (fetched over TCP), and glibc's resolver (`getent ahosts`)
//! resolves `web.default.east.fleet` as a pod would, search list and all.

mod common;
#[path = "fake_kube/mod.rs"]
mod fake_kube;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common::mesh::*;
use common::*;
use fake_kube::*;
use fleetdns::app::{App, StartOptions};
use fleetdns::config::Config;

/// What a pod's resolv.conf says (ndots:5 and the cluster's search list).
const POD_RESOLV_CONF: &str = "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n";

const ENDPOINTS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_pod_resolves_another_clusters_services_through_a_forwarder() {
    let netns = support::NetNs::create("e2e", POD_RESOLV_CONF);
    let fake = FakeKube::start().await;
    fake.apply(
        cluster_ip_service("default", "web", &["10.96.0.10"])
            .port("http", 80, "TCP")
            .annotation("fleetdns.io/export", "true")
            .build(),
    );
    fake.apply(
        endpoint_slice("default", "web", "web-1", AddressType::IPv4)
            .endpoint(endpoint("10.1.0.5").pod("web-1"))
            .build(),
    );
    fake.apply(
        headless_service("default", "big")
            .port("http", 80, "TCP")
            .annotation("fleetdns.io/export", "true")
            .build(),
    );
    let mut slice = endpoint_slice("default", "big", "big-1", AddressType::IPv4);
    for i in 0..ENDPOINTS {
        slice = slice.endpoint(
            endpoint(&format!("10.2.{}.{}", i / 200, i % 200 + 1)).pod(&format!("big-{i}")),
        );
    }
    fake.apply(slice.port("http", 80, "TCP").build());

    let dir = tempfile::tempdir().unwrap();
    let mesh = [free_addr(), free_addr()];
    let fleet = FleetDir::new(dir.path());
    fleet.write_leaf("ca", "east");
    fleet.write_leaf("ca", "west");
    fleet.write_services("west", "192.0.2.2");
    let kubeconfig = fake.kubeconfig(dir.path());
    let path = fleet.write_config(&PeerConfig::new("east", mesh[0], &mesh[1..]));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "source: {file: east.yaml}",
        &format!(
            "source: {{kubernetes: {{kubeconfig: {}}}}}",
            kubeconfig.display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    let east = App::start(
        Config::load(&path).unwrap(),
        StartOptions {
            node_id: Some("east/fleetdns-0".into()),
            ..fast_options()
        },
    )
    .await
    .unwrap();
    // West serves DNS on the link the namespace reaches; pods there reach other
    // clusters' ClusterIPs and pod IPs (`connected`), so headless names are served.
    let path = fleet.write_config(&PeerConfig::new("west", mesh[1], &mesh[..1]));
    let host = netns.host_ip;
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "dns: {listen: [\"127.0.0.1:0\"], advertise: 127.0.0.1}",
        &format!("dns: {{listen: [\"{host}:0\"], advertise: {host}}}\nnetwork: {{connected: true}}\nops: {{listen: \"127.0.0.1:0\"}}"),
    );
    std::fs::write(&path, text).unwrap();
    let west = start_peer(&path).await;
    let west_dns: SocketAddr = west.dns_addrs[0];
    let unbound = netns.start_unbound("fleet", west_dns);

    // dig through the forwarder, from inside the namespace.
    let dig = |args: &[&str]| {
        let mut all = vec!["+time=2", "+tries=1", "@127.0.0.1"];
        all.extend_from_slice(args);
        support::parse_dig(&String::from_utf8_lossy(&netns.exec("dig", &all).stdout))
    };
    let web = support::wait_until(TIMEOUT, "east's web through the forwarder", || {
        let answer = dig(&["web.default.east.fleet", "A"]);
        (answer.answer_rdata("A") == vec!["10.96.0.10"]).then_some(answer)
    });
    assert_eq!(web.rcode, "NOERROR");
    // A headless answer of 150 A records: over UDP west sets TC and unbound asks
    // again over TCP; dig gets all of them (itself over TCP from unbound).
    let big = tokio::task::spawn_blocking({
        let name = netns.name.clone();
        move || {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    "dig",
                    "+time=5",
                    "+tries=2",
                    "@127.0.0.1",
                    "big.default.east.fleet",
                    "A",
                ])
                .output()
                .unwrap();
            support::parse_dig(&String::from_utf8_lossy(&out.stdout))
        }
    })
    .await
    .unwrap();
    assert_eq!(big.rcode, "NOERROR", "{}", unbound.log());
    assert_eq!(big.answer_rdata("A").len(), ENDPOINTS);
    let metrics = http_get(west.ops_addr.unwrap(), "/metrics").await.body;
    let truncated = metrics
        .lines()
        .find(|l| l.starts_with("fleetdns_dns_responses_truncated_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        truncated >= 1.0,
        "west never truncated a UDP answer:\n{metrics}"
    );
    let srv = dig(&["_http._tcp.web.default.svc.fleet", "SRV"]);
    assert_eq!(srv.answer_rdata("SRV").len(), 1, "{srv:?}");

    // glibc, as a pod resolves: the search list first (NXDOMAIN from cluster.local),
    // then the name itself.
    let getent = tokio::task::spawn_blocking({
        let name = netns.name.clone();
        move || {
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    "getent",
                    "ahosts",
                    "web.default.east.fleet",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&getent.stdout);
    assert!(
        getent.status.success(),
        "getent failed: {text}\n{}",
        unbound.log()
    );
    assert!(text.lines().any(|l| l.starts_with("10.96.0.10 ")), "{text}");
    // A name that does not exist fails as NXDOMAIN does for a pod (exit 2: not found).
    let missing = netns.exec("getent", &["ahosts", "nope.default.east.fleet"]);
    assert_eq!(missing.status.code(), Some(2));

    // A change in east's cluster reaches the pod.
    fake.delete(Kind::Service, "default", "web");
    support::wait_until(
        Duration::from_secs(30),
        "web gone through the forwarder",
        || {
            // unbound caches the positive answer for its TTL (5 s), then asks again.
            (dig(&["web.default.east.fleet", "A"]).rcode == "NXDOMAIN").then_some(())
        },
    );
    drop(unbound);
    west.shutdown().await;
    east.shutdown().await;
}

//! Three `fleetdns run` processes on loopback, with credentials from `fleetdns keygen`,
//! forming a real mesh and answering real DNS over UDP: every process serves the
//! others' exports, an edit to a services file reaches the other processes, and a
//! process killed with SIGKILL goes stale, then withdrawn, then returns once restarted.

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::mesh::{ede, fresh, services, wait_reply};
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const CLUSTERS: [&str; 3] = ["east", "west", "central"];
const EAST: usize = 0;
const WEST: usize = 1;
const CENTRAL: usize = 2;

fn fleetdns(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetdns"))
        .args(args)
        .output()
        .expect("run fleetdns")
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` distinct loopback ports, each free for both TCP and UDP when picked (the DNS
/// listener takes a port on both). The sockets are held until all are picked.
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    while held.len() < n {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            held.push((port, tcp, udp));
        }
    }
    held.into_iter().map(|(port, _, _)| port).collect()
}

fn address(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

/// `only-<cluster>.default.<cluster>.fleet.`: the per-cluster name of a cluster's own
/// service (the zone is the default, `fleet.`).
fn own_name(cluster: &str) -> String {
    format!("only-{cluster}.default.{cluster}.fleet.")
}

struct Peer {
    cluster: &'static str,
    config: PathBuf,
    dns: SocketAddr,
    ops: SocketAddr,
}

/// The fleet's files and its running processes. Dropping it kills (SIGKILL) and reaps
/// every process still running; if the test is panicking it prints every log first.
struct Fleet {
    dir: tempfile::TempDir,
    peers: Vec<Peer>,
    running: Vec<Option<Child>>,
    /// (label, path) of every stdout/stderr file written so far.
    logs: Vec<(String, PathBuf)>,
}

impl Fleet {
    /// Makes credentials with `fleetdns keygen`, then a services file and a config per
    /// cluster, each checked with `fleetdns check`.
    fn write() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let out = fleetdns(&[
            "keygen",
            "--fleet",
            "test",
            "--out",
            dir.path().to_str().unwrap(),
            "east",
            "west",
            "central",
        ]);
        assert_success("fleetdns keygen", &out);
        for file in ["trust-bundle.pem"].into_iter().map(String::from).chain(
            CLUSTERS
                .iter()
                .flat_map(|c| [format!("{c}.pem"), format!("{c}.key")]),
        ) {
            assert!(dir.path().join(&file).is_file(), "keygen wrote no {file}");
        }

        let ports = free_ports(3 * CLUSTERS.len());
        let port = |i: usize, k: usize| ports[3 * i + k];
        let mesh: Vec<SocketAddr> = (0..CLUSTERS.len())
            .map(|i| SocketAddr::from(([127, 0, 0, 1], port(i, 1))))
            .collect();
        let mut peers = Vec::new();
        for (i, cluster) in CLUSTERS.into_iter().enumerate() {
            let dns = SocketAddr::from(([127, 0, 0, 1], port(i, 0)));
            let ops = SocketAddr::from(([127, 0, 0, 1], port(i, 2)));
            std::fs::write(
                dir.path().join(format!("{cluster}.yaml")),
                services(cluster, &address(i)),
            )
            .unwrap();
            let seeds: Vec<String> = mesh
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| format!("\"{a}\""))
                .collect();
            let config_text = format!(
                "fleet: test\ncluster: {cluster}\ndns: {{listen: [\"{dns}\"], advertise: 127.0.0.1}}\nops: {{listen: \"{ops}\"}}\nsource: {{file: {cluster}.yaml}}\nmesh:\n  listen: \"{listen}\"\n  seeds: [{seeds}]\n  cert: {cluster}.pem\n  key: {cluster}.key\n  trust_bundle: [trust-bundle.pem]\n  gossip_interval: 100ms\n  alive_interval: 200ms\n  clock_skew: 0s\n  max_stale: 2s\n  rejoin_after: 1s\n  bootstrap_timeout: 1s\n",
                listen = mesh[i],
                seeds = seeds.join(", "),
            );
            let config = dir.path().join(format!("{cluster}-fleet.yaml"));
            std::fs::write(&config, config_text).unwrap();
            let out = fleetdns(&["check", "--config", config.to_str().unwrap()]);
            assert_success(&format!("fleetdns check ({cluster})"), &out);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("ok (cluster {cluster}, zone fleet.)")),
                "{stdout}"
            );
            peers.push(Peer {
                cluster,
                config,
                dns,
                ops,
            });
        }
        Fleet {
            dir,
            running: peers.iter().map(|_| None).collect(),
            peers,
            logs: Vec::new(),
        }
    }

    /// Starts `fleetdns run` for peer `i`, its output in files named after the start.
    fn spawn(&mut self, i: usize) {
        assert!(
            self.running[i].is_none(),
            "{} already runs",
            self.peers[i].cluster
        );
        let peer = &self.peers[i];
        let starts = self
            .logs
            .iter()
            .filter(|(l, _)| l.starts_with(&format!("{}-", peer.cluster)))
            .count()
            / 2;
        let label = format!("{}-run{}", peer.cluster, starts + 1);
        let stdout = self.dir.path().join(format!("{label}.stdout"));
        let stderr = self.dir.path().join(format!("{label}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_fleetdns"))
            .args(["run", "--config", peer.config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            // Plain text logs: tracing writes colour codes even into a file otherwise.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn fleetdns run");
        self.logs.push((format!("{label} stdout"), stdout));
        self.logs.push((format!("{label} stderr"), stderr));
        self.running[i] = Some(child);
    }

    /// Sends SIGKILL to peer `i` and reaps it.
    fn kill(&mut self, i: usize) {
        let mut child = self.running[i].take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Waits until peer `i` answers `/readyz` with 200, failing at once if it exits.
    async fn wait_ready(&mut self, i: usize) {
        let cluster = self.peers[i].cluster;
        let ops = self.peers[i].ops;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.running[i].as_mut().unwrap().try_wait().unwrap() {
                panic!("{cluster} exited before it was ready: {status}");
            }
            // Connect first: `http_get` panics on a refused connection.
            if tokio::net::TcpStream::connect(ops).await.is_ok()
                && http_get(ops, "/readyz").await.status == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{cluster} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts every peer, then waits until each is ready.
    async fn start_all(&mut self) {
        for i in 0..self.peers.len() {
            self.spawn(i);
        }
        for i in 0..self.peers.len() {
            self.wait_ready(i).await;
        }
    }

    fn dns(&self, i: usize) -> SocketAddr {
        self.peers[i].dns
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.running.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for (label, path) in &self.logs {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("===== {label} ({}) =====\n{text}", path.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_three_processes_share_exports_and_a_killed_one_goes_stale_then_withdrawn_then_returns()
 {
    let mut fleet = Fleet::write();
    fleet.start_all().await;

    // Every process answers every cluster's per-cluster name: its own export, and the
    // others' as seen over the mesh.
    for i in 0..CLUSTERS.len() {
        for (j, cluster) in CLUSTERS.into_iter().enumerate() {
            let ip = address(j);
            wait_reply(
                fleet.dns(i),
                &own_name(cluster),
                &format!("answered {ip} fresh"),
                |m| fresh(m, &ip),
            )
            .await;
        }
    }

    // An edit to east's services file (temp file + rename) reaches west and central.
    replace_file(
        &fleet.dir.path().join("east.yaml"),
        &services("east", "192.0.2.99"),
    );
    for i in [EAST, WEST, CENTRAL] {
        wait_reply(
            fleet.dns(i),
            &own_name("east"),
            "answered east's edit",
            |m| fresh(m, "192.0.2.99"),
        )
        .await;
    }

    // SIGKILL west: no goodbye, so the others notice only by its silence. Its names go
    // stale (NOERROR, the last address, EDE 3 Stale Answer, TTL ≤ 5), then withdrawn
    // (SERVFAIL, EDE 22 No Reachable Authority), never NXDOMAIN. Both survivors are
    // polled at once so neither misses the stale window while the other is waited on.
    fleet.kill(WEST);
    let west = own_name("west");
    let west_ip = address(WEST);
    let stale = |dns| {
        wait_reply(dns, &west, "answered stale", |m| {
            m.metadata.response_code != ResponseCode::NoError || ede(m).is_some()
        })
    };
    let (east_stale, central_stale) =
        tokio::join!(stale(fleet.dns(EAST)), stale(fleet.dns(CENTRAL)));
    for m in [east_stale, central_stale] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert_eq!(ede(&m), Some(3), "stale answer: {m:?}");
        assert_eq!(answers(&m), vec![west_ip.clone()], "{m:?}");
        assert!(m.answers.iter().all(|r| r.ttl <= 5), "stale TTL: {m:?}");
    }
    let withdrawn = |dns| {
        wait_reply(dns, &west, "was withdrawn", |m| {
            m.metadata.response_code == ResponseCode::ServFail
        })
    };
    let (east_gone, central_gone) =
        tokio::join!(withdrawn(fleet.dns(EAST)), withdrawn(fleet.dns(CENTRAL)));
    for m in [east_gone, central_gone] {
        assert_eq!(ede(&m), Some(22), "withdrawn: {m:?}");
        assert!(m.answers.is_empty(), "{m:?}");
    }
    for i in [EAST, CENTRAL] {
        let m = udp(
            fleet.dns(i),
            &Q::new("nope.default.west.fleet.", RecordType::A).edns(1232),
        )
        .await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "never NXDOMAIN"
        );
        // The survivors still serve each other, fresh.
        let (other, ip) = if i == EAST {
            ("central", address(CENTRAL))
        } else {
            ("east", "192.0.2.99".to_string())
        };
        let m = udp(
            fleet.dns(i),
            &Q::new(&own_name(other), RecordType::A).edns(1232),
        )
        .await;
        assert!(fresh(&m, &ip), "{other} at {}: {m:?}", CLUSTERS[i]);
    }

    // Restarted with the same config and ports (a new generation), west returns on the
    // others after rejoin_after, and it serves the fleet again itself.
    fleet.spawn(WEST);
    fleet.wait_ready(WEST).await;
    for i in [EAST, CENTRAL] {
        wait_reply(fleet.dns(i), &west, "saw west return", |m| {
            fresh(m, &west_ip)
        })
        .await;
    }
    wait_reply(
        fleet.dns(WEST),
        &own_name("east"),
        "answered east's edit after the restart",
        |m| fresh(m, "192.0.2.99"),
    )
    .await;
    wait_reply(
        fleet.dns(WEST),
        &own_name("central"),
        "answered central after the restart",
        |m| fresh(m, &address(CENTRAL)),
    )
    .await;
}

//! The UDP serving path over real sockets: several workers per address, batches of
//! queries, oversized datagrams, binding rules and shutdown (DESIGN.md §6).
//!
//! On Linux these exercise the `recvmmsg`/`sendmmsg` worker threads; elsewhere the portable
//! loop (the tests that depend on Linux behaviour are marked).

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fleetdns::app::{App, StartOptions};
use fleetdns::config::Config;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

/// Services `s0` … `s{SERVICES-1}` in cluster `east`, each with its own ClusterIP, so that a
/// reply sent to the wrong query would show.
const SERVICES: usize = 50;

fn services_file() -> String {
    let mut text = String::from("services:\n");
    for i in 0..SERVICES {
        text.push_str(&format!(
            "  - {{name: s{i}, namespace: default, ports: [{{name: http, port: 80}}], cluster_ips: [{}]}}\n",
            cluster_ip(i)
        ));
    }
    text
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 1, i as u8)
}

/// A peer of cluster `east` serving [`services_file`], with `dns` extra keys.
async fn peer(dns: &str) -> TestPeer {
    let file = services_file();
    TestPeer::start_opts(
        "east",
        &[("east", file.as_str())],
        PeerOptions {
            dns,
            wait_ready: true,
            ..PeerOptions::default()
        },
    )
    .await
}

/// An A query for service `i` with message id `id`.
fn query(i: usize, id: u16) -> Vec<u8> {
    let mut bytes = Q::new(&format!("s{i}.default.east.fleet."), RecordType::A).to_bytes();
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes
}

/// Checks that `reply` is the right answer to `query(i, id)`.
fn assert_answer(reply: &[u8], i: usize, id: u16) {
    let m = Message::from_vec(reply).expect("reply decodes");
    assert_eq!(m.metadata.id, id);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert_eq!(
        m.queries[0].name().to_ascii(),
        format!("s{i}.default.east.fleet.")
    );
    assert_eq!(answers(&m), vec![cluster_ip(i).to_string()]);
}

/// Receives one datagram; panics after [`TIMEOUT`].
async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
        .await
        .expect("a reply in time")
        .expect("recv");
    buf.truncate(n);
    buf
}

/// Threads of this process named like UDP workers.
#[cfg(target_os = "linux")]
fn udp_worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("fleetdns-udp-"))
        .count()
}

/// True when this test has the process to itself (nextest's default), so counting
/// threads of the whole process counts only this test's.
fn own_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_answer_twenty_clients() {
    let peer = peer("udp_workers: 4").await;
    #[cfg(target_os = "linux")]
    {
        let expected = 4;
        wait_for("4 UDP worker threads", || async {
            let n = udp_worker_threads();
            (if own_process() {
                n == expected
            } else {
                n >= expected
            })
            .then_some(())
        })
        .await;
    }
    let before = peer.app.metrics.dns_totals().total_queries();
    let server = peer.dns;
    let mut clients = JoinSet::new();
    for client in 0..20 {
        clients.spawn(async move {
            // Each client its own socket (own source port): SO_REUSEPORT hashes the
            // clients over the workers, and each must get only its own replies.
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            socket.connect(server).await.expect("connect");
            for k in 0..10 {
                let i = (client * 7 + k) % SERVICES;
                let id = (client * 100 + k) as u16;
                socket.send(&query(i, id)).await.expect("send");
                assert_answer(&recv(&socket).await, i, id);
            }
        });
    }
    while let Some(r) = clients.join_next().await {
        r.expect("client");
    }
    let after = peer.app.metrics.dns_totals().total_queries();
    assert_eq!(after - before, 200);
}

/// Queries sent back to back without waiting queue up on the server's socket, so one
/// `recvmmsg` takes many of them: every one must get its own reply. Runts mixed in get
/// none, which shifts replies against receive slots within a batch.
#[tokio::test]
async fn a_burst_of_queries_from_one_socket_is_answered_in_full() {
    let peer = peer("udp_workers: 2").await;
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    socket.connect(peer.dns).await.expect("connect");
    let malformed = "fleetdns_dns_malformed_packets_total{transport=\"udp\"}";
    let malformed_before = peer.metric(malformed).await;
    let mut runts = 0;
    // Bursts of one batch (64 datagrams) each: more at once could overflow the
    // sockets' receive buffers (about 200 small datagrams by default) on a busy machine.
    for burst in 0..4u16 {
        let mut expected = BTreeMap::new();
        let reader = {
            let socket = socket.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for _ in 0..56 {
                    replies.push(recv(&socket).await);
                }
                replies
            })
        };
        for k in 0..64u16 {
            if k % 8 == 5 {
                socket.send(&[0u8; 11]).await.expect("send runt");
                runts += 1;
                continue;
            }
            let id = burst * 1000 + k;
            let i = usize::from(id) % SERVICES;
            expected.insert(id, i);
            socket.send(&query(i, id)).await.expect("send");
        }
        assert_eq!(expected.len(), 56);
        for reply in reader.await.expect("reader") {
            let id = u16::from_be_bytes([reply[0], reply[1]]);
            let i = expected
                .remove(&id)
                .unwrap_or_else(|| panic!("unexpected or repeated reply id {id}"));
            assert_answer(&reply, i, id);
        }
    }
    assert_eq!(
        peer.metric(malformed).await - malformed_before,
        runts as f64
    );
}

/// A query of `len` octets: `s0`'s A question and an OPT record padded (RFC 7830) to size.
fn padded_query(id: u16, len: usize) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in ["s0", "default", "east", "fleet"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    // OPT: root owner, type 41, payload size 1232, no extended rcode/flags.
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]);
    let option_len = len - q.len() - 2 - 4;
    q.extend_from_slice(&((option_len + 4) as u16).to_be_bytes());
    q.extend_from_slice(&12u16.to_be_bytes()); // option code: Padding
    q.extend_from_slice(&(option_len as u16).to_be_bytes());
    q.resize(len, 0);
    q
}

/// The Linux workers receive into 4096-octet buffers: a larger datagram is not a query
/// they answer. It is counted as malformed (and dropped), and the worker goes on.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn oversized_datagrams_are_malformed_and_dropped() {
    let peer = peer("udp_workers: 1").await;
    let series = |name: &str| format!("fleetdns_dns_{name}_packets_total{{transport=\"udp\"}}");
    let malformed_before = peer.metric(&series("malformed")).await;
    let dropped_before = peer.metric(&series("dropped")).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(peer.dns).await.expect("connect");

    // Exactly 4096 octets still fit, and are answered.
    let fits = padded_query(1, 4096);
    assert_eq!(fits.len(), 4096);
    socket.send(&fits).await.expect("send");
    let reply = recv(&socket).await;
    assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), 1);
    assert_eq!(
        answers(&Message::from_vec(&reply).expect("decodes")),
        vec![cluster_ip(0).to_string()]
    );

    // One octet more, and far more: no reply. The query that follows on the same socket
    // (same worker, same order) is answered, so the first reply must be its.
    for (n, len) in [(2u16, 4097), (3, 9000), (4, 65_000)] {
        socket
            .send(&padded_query(n, len))
            .await
            .expect("send oversized");
        socket.send(&query(1, 100 + n)).await.expect("send");
        assert_answer(&recv(&socket).await, 1, 100 + n);
    }
    assert_eq!(
        peer.metric(&series("malformed")).await - malformed_before,
        3.0
    );
    assert_eq!(peer.metric(&series("dropped")).await - dropped_before, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_and_joins_the_udp_workers() {
    let peer = peer("udp_workers: 3").await;
    assert_answer(
        &udp_raw(peer.dns, &query(3, 7), TIMEOUT).await.unwrap(),
        3,
        7,
    );
    let dns = peer.dns;
    #[cfg(target_os = "linux")]
    if own_process() {
        wait_for("3 UDP worker threads", || async {
            (udp_worker_threads() == 3).then_some(())
        })
        .await;
    }
    // Idle workers sit in `recvmmsg` and notice the cancellation by its receive timeout.
    tokio::time::timeout(Duration::from_secs(10), peer.app.shutdown())
        .await
        .expect("shutdown completes");
    // Every worker's socket is closed: a plain bind (no SO_REUSEPORT) gets the port.
    std::net::UdpSocket::bind(dns).expect("the UDP port is free after shutdown");
    #[cfg(target_os = "linux")]
    if own_process() {
        // A joined thread can linger in /proc for a moment while the kernel reaps it.
        wait_for("no UDP worker thread left", || async {
            (udp_worker_threads() == 0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_udp_port_held_without_reuseport_makes_the_start_fail() {
    // A port free for TCP and held for UDP by a socket without SO_REUSEPORT.
    let (holder, addr) = loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let addr: SocketAddr = tcp.local_addr().unwrap();
        if let Ok(udp) = std::net::UdpSocket::bind(addr) {
            break (udp, addr);
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "fleet: f\ncluster: east\ndns: {{listen: [\"{addr}\"], udp_workers: 2}}\nsource: {{file: a.yaml}}\n"
    );
    let config = Config::parse(&text, "test.yaml", dir.path()).expect("valid config");
    let err = match App::start(config, StartOptions::default()).await {
        Ok(_) => panic!("started on a UDP port another socket holds"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("dns.listen") && err.contains(&addr.to_string()) && err.contains("in use"),
        "{err}"
    );
    drop(holder);
}

//! The mesh transport over real loopback sockets: reply routing, bad peers, unreachable
//! peers, and two real chitchat nodes converging over it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatMessage, spawn_chitchat};
use common::mesh::bare_chitchat_config;
use fleetdns::mesh::transport::{StreamTransport, TransportSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn serial_mesh_replies_travel_back_over_the_inbound_connection() {
    let transport = StreamTransport::default();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = transport.open(a_addr).await.unwrap();
    let mut b = transport.open(b_addr).await.unwrap();

    a.send(b_addr, ChitchatMessage::BadCluster).await.unwrap();
    let (from, msg) = tokio::time::timeout(TIMEOUT, b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg, ChitchatMessage::BadCluster);
    // From the connection's address (a's ephemeral port), not a's listen address.
    assert_ne!(from, a_addr);
    b.send(from, ChitchatMessage::BadCluster).await.unwrap();
    let (reply_from, _) = tokio::time::timeout(TIMEOUT, a.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply_from, b_addr,
        "the reply came back over a's own connection"
    );
    let stats = transport.stats();
    assert_eq!(stats.frames_out.load(Ordering::Relaxed), 2);
    assert_eq!(stats.frames_in.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn serial_mesh_garbage_and_oversize_frames_close_only_their_connection() {
    let transport = StreamTransport::default();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = transport.open(a_addr).await.unwrap();
    let mut b = transport.open(b_addr).await.unwrap();

    // A peer that sends garbage, and one that announces a 2 GiB frame.
    for junk in [
        b"\x00\x00\x00\x05hello".to_vec(),
        0x8000_0000u32.to_be_bytes().to_vec(),
    ] {
        let mut rogue = tokio::net::TcpStream::connect(b_addr).await.unwrap();
        rogue.write_all(&junk).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(TIMEOUT, rogue.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "the rogue connection is closed"
        );
    }
    assert_eq!(transport.stats().bad_frames.load(Ordering::Relaxed), 2);

    // Gossip carries on.
    a.send(b_addr, ChitchatMessage::BadCluster).await.unwrap();
    let (_, msg) = tokio::time::timeout(TIMEOUT, b.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg, ChitchatMessage::BadCluster);
}

#[tokio::test]
async fn serial_mesh_send_to_an_unreachable_peer_returns_at_once_and_is_counted() {
    let transport = StreamTransport::new(TransportSettings {
        queue_len: 4,
        connect_timeout: Duration::from_secs(3),
        ..TransportSettings::default()
    });
    let mut a = transport.open(free_addr()).await.unwrap();
    let nobody = free_addr();
    for _ in 0..10 {
        // Never waits on the network; the queue keeps the newest 4.
        tokio::time::timeout(
            Duration::from_secs(1),
            a.send(nobody, ChitchatMessage::BadCluster),
        )
        .await
        .expect("send does not block")
        .unwrap();
    }
    let stats = transport.stats();
    tokio::time::timeout(TIMEOUT, async {
        while stats.connect_failures.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the failed dial is counted");
}

fn config(node: &str, listen: SocketAddr, seeds: Vec<String>) -> ChitchatConfig {
    bare_chitchat_config("test-fleet", node, 1, listen, seeds)
}

/// Two real chitchat 0.11.1 nodes converge over the stream transport, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_mesh_chitchat_nodes_converge_over_the_stream_transport() {
    let transport = StreamTransport::default();
    let (east_addr, west_addr) = (free_addr(), free_addr());
    let east = spawn_chitchat(
        config("east/0", east_addr, vec![]),
        vec![("s:default/web/0".into(), "east-value".into())],
        &transport,
    )
    .await
    .unwrap();
    let west = spawn_chitchat(
        config("west/0", west_addr, vec![east_addr.to_string()]),
        vec![("s:default/api/0".into(), "west-value".into())],
        &transport,
    )
    .await
    .unwrap();

    let sees = |handle: &chitchat::ChitchatHandle,
                node: &'static str,
                key: &'static str,
                value: &'static str| {
        let chitchat = handle.chitchat();
        async move {
            loop {
                let found = {
                    let guard = chitchat.lock().await;
                    guard
                        .node_states()
                        .iter()
                        .any(|(id, state)| &*id.node_id == node && state.get(key) == Some(value))
                };
                if found {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(
        TIMEOUT,
        sees(&east, "west/0", "s:default/api/0", "west-value"),
    )
    .await
    .expect("east sees west's key");
    tokio::time::timeout(
        TIMEOUT,
        sees(&west, "east/0", "s:default/web/0", "east-value"),
    )
    .await
    .expect("west sees east's key");

    // A change propagates too.
    east.with_chitchat(|c| c.self_node_state().set("s:default/web/0", "east-value-2"))
        .await;
    tokio::time::timeout(
        TIMEOUT,
        sees(&west, "east/0", "s:default/web/0", "east-value-2"),
    )
    .await
    .expect("west sees east's change");
    east.shutdown().await.unwrap();
    west.shutdown().await.unwrap();
}

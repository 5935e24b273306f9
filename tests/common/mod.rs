//! In-process fleetdns for integration tests: a peer on 127.0.0.1 port 0 serving
//! services files from a temporary directory, and a small DNS client over real sockets
//! (hickory-proto messages on tokio UDP/TCP sockets).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetdns::app::{App, StartOptions};
use fleetdns::config::Config;
use fleetdns::dns::index::Readiness;
use fleetdns::source::watch::WatchSettings;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A running peer and the directory holding its config and services files.
pub struct TestPeer {
    pub app: App,
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
}

impl TestPeer {
    /// Starts a peer of cluster `local` over `files` (cluster id → services file text).
    /// `extra` is appended to the config (e.g. `network: {connected: true}`).
    pub async fn start(local: &str, files: &[(&str, &str)], extra: &str) -> TestPeer {
        Self::start_with(local, files, extra, true).await
    }

    /// Like `start`; with `wait_ready = false` it returns before the first snapshot.
    pub async fn start_with(
        local: &str,
        files: &[(&str, &str)],
        extra: &str,
        wait_ready: bool,
    ) -> TestPeer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = String::from("source:\n  files:\n");
        for (cluster, text) in files {
            std::fs::write(dir.path().join(format!("{cluster}.yaml")), text).expect("write");
            source.push_str(&format!("    {cluster}: {cluster}.yaml\n"));
        }
        let config_text = format!(
            "fleet: test\ncluster: {local}\ndns: {{listen: [\"127.0.0.1:0\"], advertise: 127.0.0.1}}\nops: {{listen: \"127.0.0.1:0\"}}\n{extra}\n{source}"
        );
        let config_path = dir.path().join("fleet.yaml");
        std::fs::write(&config_path, &config_text).expect("write config");
        let config = Config::load(&config_path).expect("valid test config");
        let options = StartOptions {
            watch: WatchSettings {
                debounce: Duration::from_millis(20),
                poll_interval: Duration::from_millis(500),
                use_notify: true,
            },
            ..StartOptions::default()
        };
        let app = App::start(config, options).await.expect("start");
        let dns = app.dns_addrs[0];
        let peer = TestPeer { app, dir, dns };
        if wait_ready {
            peer.wait_ready().await;
        }
        peer
    }

    pub async fn wait_ready(&self) {
        tokio::time::timeout(
            TIMEOUT,
            self.app.wait_for(|s| s.readiness == Readiness::Ready),
        )
        .await
        .expect("peer became ready");
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ops(&self) -> SocketAddr {
        self.app.ops_addr.expect("ops listener configured")
    }
}

/// A query as a test wants to send it.
#[derive(Clone)]
pub struct Q {
    pub name: String,
    pub qtype: RecordType,
    pub edns: Option<u16>,
    pub rd: bool,
}

impl Q {
    pub fn new(name: &str, qtype: RecordType) -> Q {
        Q {
            name: name.into(),
            qtype,
            edns: None,
            rd: true,
        }
    }

    pub fn edns(mut self, size: u16) -> Q {
        self.edns = Some(size);
        self
    }

    pub fn no_rd(mut self) -> Q {
        self.rd = false;
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = self.rd;
        m.add_query(Query::query(
            Name::from_ascii(&self.name).expect("name"),
            self.qtype,
        ));
        if let Some(size) = self.edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().expect("encode")
    }
}

/// Sends raw bytes over UDP and returns the raw reply, or `None` after `wait`.
pub async fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(bytes, server).await.expect("send");
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// One UDP query; panics if no reply comes within the timeout.
pub async fn udp(server: SocketAddr, q: &Q) -> Message {
    let bytes = q.to_bytes();
    let reply = udp_raw(server, &bytes, TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no UDP reply for {}", q.name));
    Message::from_vec(&reply).expect("reply decodes")
}

/// Sends raw bytes over a new TCP connection and returns the raw reply.
pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    tcp_send(&mut stream, bytes).await;
    tcp_recv(&mut stream).await.expect("tcp reply")
}

pub async fn tcp_send(stream: &mut TcpStream, bytes: &[u8]) {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.expect("tcp write");
}

/// Reads one framed message; `None` when the server closed the connection.
pub async fn tcp_recv(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len))
        .await
        .expect("tcp read timed out")
        .ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut buf))
        .await
        .expect("tcp read timed out")
        .ok()?;
    Some(buf)
}

pub async fn tcp(server: SocketAddr, q: &Q) -> Message {
    Message::from_vec(&tcp_raw(server, &q.to_bytes()).await).expect("reply decodes")
}

/// The answer section's rdata as sorted strings, for set comparison.
pub fn answers(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

pub fn additionals(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    v.sort();
    v
}

/// Writes `text` to `path` atomically (temp file + rename), as editors and ConfigMaps do.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The demo fleet's services files (east, west, central), a realistic fixture.
pub fn demo_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("east", include_str!("../../config/demo/east.yaml")),
        ("west", include_str!("../../config/demo/west.yaml")),
        ("central", include_str!("../../config/demo/central.yaml")),
    ]
}

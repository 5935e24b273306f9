//! In-process fleetdns for integration tests: a peer on 127.0.0.1 port 0 serving
//! services files from a temporary directory, and a small DNS client over real sockets
//! (hickory-proto messages on tokio UDP/TCP sockets).
#![allow(dead_code)]

pub mod mesh;

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

/// Start options for tests: file changes are noticed within tens of milliseconds.
pub fn fast_options() -> StartOptions {
    StartOptions {
        watch: WatchSettings {
            debounce: Duration::from_millis(20),
            poll_interval: Duration::from_millis(500),
            use_notify: true,
        },
        ..StartOptions::default()
    }
}

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
        Self::start_opts(
            local,
            files,
            PeerOptions {
                extra,
                wait_ready,
                ..PeerOptions::default()
            },
        )
        .await
    }

    /// Like `start_with`, with the rarer knobs of [`PeerOptions`].
    pub async fn start_opts(
        local: &str,
        files: &[(&str, &str)],
        opts: PeerOptions<'_>,
    ) -> TestPeer {
        let PeerOptions {
            dns,
            extra,
            missing,
            wait_ready,
        } = opts;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut source = String::from("source:\n  files:\n");
        for (cluster, text) in files {
            std::fs::write(dir.path().join(format!("{cluster}.yaml")), text).expect("write");
            source.push_str(&format!("    {cluster}: {cluster}.yaml\n"));
        }
        for cluster in missing {
            source.push_str(&format!("    {cluster}: {cluster}.yaml\n"));
        }
        let dns_extra = if dns.is_empty() {
            String::new()
        } else {
            format!(", {dns}")
        };
        let config_text = format!(
            "fleet: test\ncluster: {local}\ndns: {{listen: [\"127.0.0.1:0\"], advertise: 127.0.0.1{dns_extra}}}\nops: {{listen: \"127.0.0.1:0\"}}\n{extra}\n{source}"
        );
        let config_path = dir.path().join("fleet.yaml");
        std::fs::write(&config_path, &config_text).expect("write config");
        let config = Config::load(&config_path).expect("valid test config");
        let app = App::start(config, fast_options()).await.expect("start");
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

/// The rarer knobs of [`TestPeer::start_opts`]; `Default` gives what `start_with(.., false)`
/// does.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerOptions<'a> {
    /// Extra keys inside the `dns:` mapping, e.g. `tcp_idle_timeout: 300ms`.
    pub dns: &'a str,
    /// Appended to the config, as `extra` of [`TestPeer::start`].
    pub extra: &'a str,
    /// Clusters whose services file (`<cluster>.yaml` in the peer's directory) the config
    /// names but which is not created: write it later at `peer.path("<cluster>.yaml")`.
    pub missing: &'a [&'a str],
    /// Return only once the peer is ready.
    pub wait_ready: bool,
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

/// An HTTP response as the ops listener sent it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 GET over a raw TCP stream (`Connection: close`), chunked bodies
/// decoded. Panics on any I/O error or after [`TIMEOUT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers, e.g. `("Authorization", "Bearer ...")`.
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let fetch = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to the HTTP listener");
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .expect("HTTP response in time");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of HTTP headers");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_text = std::str::from_utf8(&rest[..eol]).expect("chunk size");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("hex chunk size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = decoded;
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// The value of one series in OpenMetrics text, e.g.
/// `fleetdns_dns_malformed_packets_total{transport="udp"}`; `None` if absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(
            value
                .split(' ')
                .next()?
                .parse()
                .unwrap_or_else(|_| panic!("bad sample {line:?}")),
        )
    })
}

impl TestPeer {
    /// `/metrics` from the ops listener, as text.
    pub async fn metrics_text(&self) -> String {
        let r = http_get(self.ops(), "/metrics").await;
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        r.body
    }

    /// One series from `/metrics`; panics if the series is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }
}

/// Polls `probe` (every 20 ms) until it returns `Some`, panicking with `what` after
/// [`TIMEOUT`]. For waiting on a state, never for asserting on timing.
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The header bits of a raw DNS message, for checks hickory's decoder would hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    pub id: u16,
    pub qr: bool,
    pub opcode: u8,
    pub aa: bool,
    pub tc: bool,
    pub rd: bool,
    pub ra: bool,
    pub z: bool,
    pub ad: bool,
    pub cd: bool,
    /// The 4-bit header rcode.
    pub rcode: u8,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl RawHeader {
    pub fn parse(msg: &[u8]) -> RawHeader {
        assert!(msg.len() >= 12, "message shorter than a header: {msg:?}");
        let count = |i: usize| u16::from_be_bytes([msg[4 + 2 * i], msg[5 + 2 * i]]);
        RawHeader {
            id: u16::from_be_bytes([msg[0], msg[1]]),
            qr: msg[2] & 0x80 != 0,
            opcode: (msg[2] >> 3) & 0xF,
            aa: msg[2] & 0x04 != 0,
            tc: msg[2] & 0x02 != 0,
            rd: msg[2] & 0x01 != 0,
            ra: msg[3] & 0x80 != 0,
            z: msg[3] & 0x40 != 0,
            ad: msg[3] & 0x20 != 0,
            cd: msg[3] & 0x10 != 0,
            rcode: msg[3] & 0xF,
            qdcount: count(0),
            ancount: count(1),
            nscount: count(2),
            arcount: count(3),
        }
    }
}

/// Skips a (possibly compressed) name at `pos`; returns the position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> usize {
    loop {
        let len = msg[pos] as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return pos + 1,
            0x00 => pos += 1 + len,
            0xC0 => return pos + 2,
            _ => panic!("bad label type at {pos}"),
        }
    }
}

/// An OPT record found in a raw message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOpt {
    pub udp_size: u16,
    pub extended_rcode: u8,
    pub version: u8,
    pub flags: u16,
    /// (option code, option data)
    pub options: Vec<(u16, Vec<u8>)>,
}

/// Every OPT record in the additional section of a raw message.
pub fn raw_opts(msg: &[u8]) -> Vec<RawOpt> {
    let h = RawHeader::parse(msg);
    let mut pos = 12;
    for _ in 0..h.qdcount {
        pos = skip_name(msg, pos) + 4;
    }
    let mut opts = Vec::new();
    let records = usize::from(h.ancount) + usize::from(h.nscount) + usize::from(h.arcount);
    for i in 0..records {
        pos = skip_name(msg, pos);
        let f = &msg[pos..pos + 10];
        let rtype = u16::from_be_bytes([f[0], f[1]]);
        let rdlen = u16::from_be_bytes([f[8], f[9]]) as usize;
        let rdata = &msg[pos + 10..pos + 10 + rdlen];
        if rtype == 41 && i >= usize::from(h.ancount) + usize::from(h.nscount) {
            let mut options = Vec::new();
            let mut r = rdata;
            while r.len() >= 4 {
                let code = u16::from_be_bytes([r[0], r[1]]);
                let len = u16::from_be_bytes([r[2], r[3]]) as usize;
                options.push((code, r[4..4 + len].to_vec()));
                r = &r[4 + len..];
            }
            opts.push(RawOpt {
                udp_size: u16::from_be_bytes([f[2], f[3]]),
                extended_rcode: f[4],
                version: f[5],
                flags: u16::from_be_bytes([f[6], f[7]]),
                options,
            });
        }
        pos += 10 + rdlen;
    }
    assert_eq!(pos, msg.len(), "trailing bytes after the last record");
    opts
}

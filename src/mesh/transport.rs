//! The mesh transport: chitchat messages over mutually authenticated TLS streams
//! (DESIGN.md §4 "Transport contract"; plain TCP only in transport tests).
//!
//! This module owns the mesh's sockets and connections. Each message travels as one
//! [`frame`](super::frame). `recv` reports a message as coming from the address of the
//! connection it arrived on, and `send` to that address goes back over the same
//! connection: chitchat replies to whoever sent, and a peer behind NAT or a load
//! balancer is reachable only that way. `send` never waits on the network: every peer
//! has a bounded queue (drop-oldest, counted) drained by its own writer task, and a
//! dialer task connects with a timeout. A bad frame or a failed handshake closes only
//! that connection, is counted, and is logged once per peer per 10 minutes; `recv` fails
//! only when the listener itself is gone, because chitchat stops gossiping for good on
//! a `recv` error.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use dashmap::DashMap;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame;
use super::tls::MeshTls;

/// Knobs of the transport.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// Frames queued per peer before the oldest is dropped.
    pub queue_len: usize,
    /// Time for a dialer's TCP connect plus TLS handshake, and for an accepted
    /// connection's handshake.
    pub connect_timeout: Duration,
    /// Connections are closed (and redialled on the next send) after about this long,
    /// so changed credentials, trust and revocations reach every connection.
    pub max_connection_age: Duration,
    /// A connection nothing arrived on for this long is closed (a large mesh would
    /// otherwise hold a socket per peer ever gossiped with).
    pub idle_timeout: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            queue_len: 64,
            connect_timeout: Duration::from_secs(3),
            max_connection_age: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of the transport, read by the metrics collector.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Frames dropped because a peer's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Connections closed because of a bad frame or an undecodable message.
    pub bad_frames: AtomicU64,
    pub connect_failures: AtomicU64,
    /// TLS handshakes that failed, inbound and outbound (not TLS, refused
    /// certificate, timeout).
    pub handshake_failures: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Errors are logged once per peer per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(600);
/// Peers whose last logged error is remembered.
const MAX_LOGGED_PEERS: usize = 4096;
/// Messages received but not yet taken by chitchat.
const INBOX_LEN: usize = 1024;

/// The frames waiting for one connection.
#[derive(Debug, Default)]
struct Outbox {
    frames: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
    closed: AtomicBool,
}

impl Outbox {
    fn push(&self, frame: Vec<u8>, cap: usize, stats: &TransportStats) {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if frames.len() >= cap {
            frames.pop_front();
            add(&stats.dropped_queue_full, 1);
        }
        frames.push_back(frame);
        drop(frames);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Vec<u8>> {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

struct Shared {
    /// Address → the connection that reaches it (inbound: the peer's address as seen
    /// on the connection; outbound: the address dialed).
    peers: DashMap<SocketAddr, Arc<Outbox>>,
    inbox: mpsc::Sender<(SocketAddr, ChitchatMessage)>,
    stats: Arc<TransportStats>,
    settings: TransportSettings,
    cancel: CancellationToken,
    last_logged: DashMap<SocketAddr, Instant>,
    tls: Option<Arc<MeshTls>>,
}

impl Shared {
    /// Logs a connection problem at most once per peer per [`LOG_INTERVAL`].
    /// Peers sharing an IP (several on one host) are told apart by port; the map is
    /// bounded so a stream of new connections cannot grow it without limit.
    fn log_once(&self, peer: SocketAddr, what: &str, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        if self.last_logged.len() >= MAX_LOGGED_PEERS {
            self.last_logged
                .retain(|_, at| now.duration_since(*at) <= LOG_INTERVAL);
            if self.last_logged.len() >= MAX_LOGGED_PEERS {
                return;
            }
        }
        let mut last = self
            .last_logged
            .entry(peer)
            .or_insert(now - LOG_INTERVAL - Duration::from_secs(1));
        if now.duration_since(*last) > LOG_INTERVAL {
            *last = now;
            tracing::warn!(%peer, %error, "{what}");
        }
    }

    fn handshake_failed(
        &self,
        peer: SocketAddr,
        outbox: &Arc<Outbox>,
        error: &dyn std::fmt::Display,
    ) {
        add(&self.stats.handshake_failures, 1);
        self.log_once(
            peer,
            "mesh TLS handshake failed; closing the connection",
            error,
        );
        self.forget(peer, outbox);
    }

    /// Forgets `outbox` as the way to `addr`, unless it was replaced meanwhile.
    fn forget(&self, addr: SocketAddr, outbox: &Arc<Outbox>) {
        outbox.closed.store(true, Ordering::Relaxed);
        self.peers.remove_if(&addr, |_, o| Arc::ptr_eq(o, outbox));
    }
}

/// The chitchat [`Transport`] over TCP streams, with mutual TLS when given.
#[derive(Debug, Clone, Default)]
pub struct StreamTransport {
    settings: TransportSettings,
    stats: Arc<TransportStats>,
    tls: Option<Arc<MeshTls>>,
}

impl StreamTransport {
    /// Plain TCP: for tests of the transport itself; peers always use [`Self::tls`].
    pub fn new(settings: TransportSettings) -> Self {
        Self::with_stats(settings, Arc::default())
    }

    /// Plain TCP counting into `stats` (shared with the metrics collector).
    pub fn with_stats(settings: TransportSettings, stats: Arc<TransportStats>) -> Self {
        Self {
            settings,
            stats,
            tls: None,
        }
    }

    /// Mutual TLS on every connection, both ways, with `tls`'s current credentials.
    pub fn tls(settings: TransportSettings, stats: Arc<TransportStats>, tls: Arc<MeshTls>) -> Self {
        Self {
            settings,
            stats,
            tls: Some(tls),
        }
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl Transport for StreamTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let listener = TcpListener::bind(listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("mesh.listen {listen_addr}: {e}"))?;
        let (inbox, inbox_rx) = mpsc::channel(INBOX_LEN);
        let shared = Arc::new(Shared {
            peers: DashMap::new(),
            inbox,
            stats: self.stats.clone(),
            settings: self.settings,
            cancel: CancellationToken::new(),
            last_logged: DashMap::new(),
            tls: self.tls.clone(),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Box::new(StreamSocket { shared, inbox_rx }))
    }
}

struct StreamSocket {
    shared: Arc<Shared>,
    inbox_rx: mpsc::Receiver<(SocketAddr, ChitchatMessage)>,
}

impl Drop for StreamSocket {
    fn drop(&mut self) {
        // chitchat dropped us (shutdown or restart): close the listener and every
        // connection, so a new socket can bind the address at once.
        self.shared.cancel.cancel();
    }
}

#[async_trait]
impl Socket for StreamSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let frame = match frame::encode(&msg.serialize_to_vec()) {
            Ok(f) => f,
            Err(e) => {
                // Our own state too large to send: nothing a retry would fix.
                self.shared.log_once(to, "mesh message not sent", &e);
                return Ok(());
            }
        };
        let shared = &self.shared;
        let outbox = match shared.peers.get(&to) {
            Some(o) if !o.closed.load(Ordering::Relaxed) => o.clone(),
            _ => {
                let outbox = Arc::new(Outbox::default());
                shared.peers.insert(to, outbox.clone());
                tokio::spawn(dial(to, outbox.clone(), shared.clone()));
                outbox
            }
        };
        outbox.push(frame, shared.settings.queue_len, &shared.stats);
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inbox_rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the mesh listener is gone"))
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                let outbox = Arc::new(Outbox::default());
                shared.peers.insert(remote, outbox.clone());
                tokio::spawn(accept(stream, remote, outbox, shared.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: back off, keep listening.
                tracing::warn!(error = %e, "mesh accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Completes an inbound connection's handshake (mutual TLS unless the transport is
/// plain), then serves it.
async fn accept(stream: TcpStream, remote: SocketAddr, outbox: Arc<Outbox>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = &shared.tls else {
        return run_connection(stream, remote, outbox, shared).await;
    };
    let handshake = tokio::time::timeout(
        shared.settings.connect_timeout,
        tls.acceptor().accept(stream),
    );
    let result = tokio::select! {
        () = shared.cancel.cancelled() => return,
        r = handshake => r,
    };
    match result {
        Ok(Ok(stream)) => run_connection(stream, remote, outbox, shared).await,
        Ok(Err(e)) => shared.handshake_failed(remote, &outbox, &e),
        Err(_) => shared.handshake_failed(remote, &outbox, &"handshake timed out"),
    }
}

async fn dial(to: SocketAddr, outbox: Arc<Outbox>, shared: Arc<Shared>) {
    let tls = shared.tls.clone();
    let connect = tokio::time::timeout(shared.settings.connect_timeout, async move {
        let stream = TcpStream::connect(to).await.map_err(DialError::Connect)?;
        let _ = stream.set_nodelay(true);
        match tls {
            None => Ok(Stream::Plain(stream)),
            Some(tls) => tls
                .connector()
                // Peers are verified by their certificate's URI SAN; the name given
                // here is only what TLS requires to have.
                .connect(ServerName::IpAddress(to.ip().into()), stream)
                .await
                .map(|s| Stream::Tls(Box::new(s)))
                .map_err(DialError::Handshake),
        }
    });
    let stream = tokio::select! {
        () = shared.cancel.cancelled() => return,
        r = connect => r,
    };
    match stream {
        Ok(Ok(Stream::Plain(stream))) => run_connection(stream, to, outbox, shared).await,
        Ok(Ok(Stream::Tls(stream))) => run_connection(*stream, to, outbox, shared).await,
        Ok(Err(DialError::Connect(e))) => {
            add(&shared.stats.connect_failures, 1);
            shared.log_once(to, "mesh peer unreachable", &e);
            shared.forget(to, &outbox);
        }
        Ok(Err(DialError::Handshake(e))) => shared.handshake_failed(to, &outbox, &e),
        Err(_) => {
            add(&shared.stats.connect_failures, 1);
            shared.log_once(to, "mesh peer unreachable", &"connect timed out");
            shared.forget(to, &outbox);
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

enum DialError {
    Connect(std::io::Error),
    Handshake(std::io::Error),
}

/// Serves one connection until either side fails: frames from `outbox` out, messages
/// in, reported as from `peer`.
async fn run_connection<S>(stream: S, peer: SocketAddr, outbox: Arc<Outbox>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        loop {
            while let Some(frame) = outbox.pop() {
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
                add(&shared.stats.frames_out, 1);
                add(&shared.stats.bytes_out, frame.len() as u64);
            }
            // TLS may hold the last record back until a flush.
            if writer.flush().await.is_err() {
                return;
            }
            outbox.ready.notified().await;
        }
    };
    let read = async {
        let mut decoder = frame::Decoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Idle connections close: the next send dials again.
            let n = match tokio::time::timeout(shared.settings.idle_timeout, reader.read(&mut buf))
                .await
            {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(n)) => n,
            };
            add(&shared.stats.bytes_in, n as u64);
            decoder.push(&buf[..n]);
            loop {
                let message = match decoder.next_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        add(&shared.stats.bad_frames, 1);
                        shared.log_once(peer, "bad mesh frame; closing the connection", &e);
                        return;
                    }
                };
                let mut cursor: &[u8] = &message;
                let msg = match ChitchatMessage::deserialize(&mut cursor) {
                    Ok(m) => m,
                    Err(e) => {
                        add(&shared.stats.bad_frames, 1);
                        shared.log_once(
                            peer,
                            "undecodable mesh message; closing the connection",
                            &e,
                        );
                        return;
                    }
                };
                add(&shared.stats.frames_in, 1);
                if shared.inbox.send((peer, msg)).await.is_err() {
                    return;
                }
            }
        }
    };
    // Spread redials out, so connections made together are not all closed together.
    let age = shared
        .settings
        .max_connection_age
        .mul_f64(0.9 + jitter() * 0.2);
    tokio::select! {
        () = shared.cancel.cancelled() => {}
        () = write => {}
        () = read => {}
        () = tokio::time::sleep(age) => {}
    }
    shared.forget(peer, &outbox);
}

/// A number in [0, 1) that differs between calls (not for cryptography).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(std::time::Instant::now());
    (n >> 11) as f64 / (1u64 << 53) as f64
}

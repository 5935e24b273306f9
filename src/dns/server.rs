//! DNS sockets: UDP workers and TCP framing (RFC 7766) over the same answer index.
//!
//! This module owns the listening sockets, the binding rules for `dns.listen`, and the TCP
//! loops. UDP is served on Linux by `dns.udp_workers` threads per address, each with its own
//! SO_REUSEPORT socket and batched `recvmmsg`/`sendmmsg` (see `dns::mmsg`); elsewhere by one
//! portable tokio loop per address. Every query is answered by `AnswerIndex::respond` on the
//! currently published snapshot, loaded once per packet without a lock; counters go to the
//! worker's own `WorkerStats`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::dns::index::{Outcome, ReplySettings, Transport};
use crate::metrics::{self, Metrics, TcpReject, WorkerStats};
use crate::snapshot::SharedSnapshot;

/// Limits of the TCP listener (RFC 7766 §6.2).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_per_client: usize,
}

/// The UDP sockets of one address: one per worker thread on Linux.
#[cfg(target_os = "linux")]
type UdpSockets = Vec<std::net::UdpSocket>;
/// The UDP socket of one address, served by one tokio task.
#[cfg(not(target_os = "linux"))]
type UdpSockets = tokio::net::UdpSocket;

/// Sockets bound for every `dns.listen` address, UDP and TCP on the same port.
#[derive(Debug)]
pub struct BoundDns {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSockets>,
    /// DNS over TLS listeners and their acceptor (`dns.tls_listen`).
    tls: Vec<TcpListener>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
}

impl BoundDns {
    /// Binds TCP first, without SO_REUSEPORT, so a second instance on the same address
    /// fails with "address in use"; then UDP on the port TCP got (port 0 picks one).
    ///
    /// On Linux that is `udp_workers` sockets per address with SO_REUSEPORT, which would
    /// let a second instance share the UDP port silently: the plain TCP bind is what stops
    /// it. A process holding the UDP port without SO_REUSEPORT still makes the bind fail.
    pub async fn bind(listen: &[SocketAddr], udp_workers: usize) -> io::Result<Self> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for addr in listen {
            // With port 0 the kernel may hand TCP a port that is taken for UDP: retry.
            let mut attempts = if addr.port() == 0 { 20 } else { 1 };
            loop {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("dns.listen {addr} (TCP): {e}"))
                })?;
                let bound = listener.local_addr()?;
                match bind_udp(bound, udp_workers).await {
                    Ok(sockets) => {
                        tcp.push(listener);
                        udp.push(sockets);
                        break;
                    }
                    Err(e) if attempts > 1 && e.kind() == io::ErrorKind::AddrInUse => {
                        attempts -= 1;
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("dns.listen {bound} (UDP): {e}"),
                        ));
                    }
                }
            }
        }
        Ok(Self {
            tcp,
            udp,
            tls: Vec::new(),
            tls_config: None,
        })
    }

    /// Binds the DNS-over-TLS listeners; their connections are served like TCP ones
    /// after the handshake.
    pub async fn bind_tls(
        &mut self,
        listen: &[SocketAddr],
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<()> {
        for addr in listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("dns.tls_listen {addr}: {e}")))?;
            self.tls.push(listener);
        }
        self.tls_config = Some(config);
        Ok(())
    }

    /// The bound DNS-over-TLS addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound addresses (UDP and TCP share each one).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Starts every loop: tasks on `tasks`, and on Linux the UDP worker threads, each with
    /// a task on `tasks` that ends once its thread is joined. Everything stops when
    /// `cancel` fires. Fails if a thread cannot be started; the caller must then cancel
    /// `cancel` to stop the workers already running.
    pub fn spawn(
        self,
        snapshot: SharedSnapshot,
        settings: ReplySettings,
        limits: TcpLimits,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> io::Result<()> {
        let mut worker = 0;
        for sockets in self.udp {
            spawn_udp(
                sockets,
                &mut worker,
                &snapshot,
                settings,
                &metrics,
                &cancel,
                tasks,
            )?;
        }
        let plain = self.tcp.into_iter().map(|l| (l, None));
        let acceptor = self.tls_config.map(TlsAcceptor::from);
        let tls = self.tls.into_iter().map(|l| (l, acceptor.clone()));
        for (listener, acceptor) in plain.chain(tls) {
            let transport = if acceptor.is_some() {
                metrics::Transport::Tls
            } else {
                metrics::Transport::Tcp
            };
            tasks.spawn(tcp_accept_loop(
                listener,
                acceptor,
                snapshot.clone(),
                settings,
                limits,
                metrics.dns_worker(transport),
                metrics.clone(),
                cancel.clone(),
            ));
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
async fn bind_udp(addr: SocketAddr, workers: usize) -> io::Result<UdpSockets> {
    (0..workers)
        .map(|_| super::mmsg::bind_reuseport(addr))
        .collect()
}

#[cfg(not(target_os = "linux"))]
async fn bind_udp(addr: SocketAddr, _workers: usize) -> io::Result<UdpSockets> {
    tokio::net::UdpSocket::bind(addr).await
}

/// Starts the workers of one address; `next_worker` numbers them across addresses.
#[cfg(target_os = "linux")]
fn spawn_udp(
    sockets: UdpSockets,
    next_worker: &mut usize,
    snapshot: &SharedSnapshot,
    settings: ReplySettings,
    metrics: &Metrics,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> io::Result<()> {
    for socket in sockets {
        let context = super::mmsg::WorkerContext {
            snapshot: snapshot.clone(),
            settings,
            stats: metrics.dns_worker(metrics::Transport::Udp),
            cancel: cancel.clone(),
        };
        super::mmsg::spawn(*next_worker, socket, context, tasks)?;
        *next_worker += 1;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn spawn_udp(
    socket: UdpSockets,
    _next_worker: &mut usize,
    snapshot: &SharedSnapshot,
    settings: ReplySettings,
    metrics: &Metrics,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> io::Result<()> {
    let stats = metrics.dns_worker(metrics::Transport::Udp);
    tasks.spawn(udp_loop(
        socket,
        snapshot.clone(),
        settings,
        stats,
        cancel.clone(),
    ));
    Ok(())
}

/// Counts one query's outcome on its worker's stats.
/// Answers one packet from the snapshot being served into `reply`, and counts it.
pub(super) fn answer(
    snapshot: &SharedSnapshot,
    settings: ReplySettings,
    packet: &[u8],
    transport: Transport,
    reply: &mut Vec<u8>,
    stats: &WorkerStats,
) -> Outcome {
    let started = std::time::Instant::now();
    let snap = snapshot.load();
    let outcome = snap
        .index
        .respond(snap.readiness, settings, packet, transport, reply);
    count(stats, &outcome, started);
    outcome
}

/// Counts one packet's outcome; `started` is when its answer began.
fn count(stats: &WorkerStats, outcome: &Outcome, started: std::time::Instant) {
    // Before the early return: a packet too short to parse is dropped *and* malformed.
    if outcome.malformed {
        stats.malformed();
    }
    if !outcome.replied {
        stats.dropped();
        return;
    }
    stats.query(outcome.qtype, outcome.rcode);
    stats.answered_in(started.elapsed());
    if outcome.truncated {
        stats.truncated();
    }
    if outcome.capped {
        stats.tcp_capped();
    }
}

/// The portable UDP loop, for systems without the `recvmmsg` worker threads.
#[cfg(not(target_os = "linux"))]
async fn udp_loop(
    socket: tokio::net::UdpSocket,
    snapshot: SharedSnapshot,
    settings: ReplySettings,
    stats: Arc<WorkerStats>,
    cancel: CancellationToken,
) {
    let mut packet = vec![0u8; 65_535];
    let mut reply = Vec::with_capacity(4096);
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut packet) => r,
        };
        let (len, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends can surface here; keep serving.
                tracing::debug!(error = %e, "udp receive error");
                continue;
            }
        };
        let outcome = answer(
            &snapshot,
            settings,
            &packet[..len],
            Transport::Udp,
            &mut reply,
            &stats,
        );
        if outcome.replied
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!(error = %e, %peer, "udp send error");
        }
    }
}

/// Open connections per client address, to enforce `max_per_client`.
#[derive(Debug, Default)]
struct ClientTable {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Releases a connection's slot in the table when the connection ends.
struct Slot {
    table: Arc<Mutex<ClientTable>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.total -= 1;
        if let Some(n) = t.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                t.per_client.remove(&self.client);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn tcp_accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    snapshot: SharedSnapshot,
    settings: ReplySettings,
    limits: TcpLimits,
    stats: Arc<WorkerStats>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let table = Arc::new(Mutex::new(ClientTable::default()));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(error = %e, "tcp accept error");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let rejected = {
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            let mine = t.per_client.get(&peer.ip()).copied().unwrap_or(0);
            if t.total >= limits.max_connections {
                Some(TcpReject::TooMany)
            } else if mine >= limits.max_per_client {
                Some(TcpReject::PerClient)
            } else {
                t.total += 1;
                *t.per_client.entry(peer.ip()).or_default() += 1;
                None
            }
        };
        if let Some(reason) = rejected {
            // Closing at once tells the client to go elsewhere (RFC 7766 §6.2.2).
            metrics.tcp_connection_rejected(reason);
            drop(stream);
            continue;
        }
        let slot = Slot {
            table: table.clone(),
            client: peer.ip(),
        };
        let guard = metrics.tcp_connection();
        let _ = stream.set_nodelay(true);
        let serve = Serve {
            snapshot: snapshot.clone(),
            settings,
            idle_timeout: limits.idle_timeout,
            stats: stats.clone(),
            cancel: cancel.clone(),
        };
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _release_on_drop = (slot, guard);
            match acceptor {
                None => serve.connection(stream).await,
                Some(acceptor) => {
                    // A client that does not finish its handshake in time is dropped
                    // like an idle one.
                    let handshake =
                        tokio::time::timeout(serve.idle_timeout, acceptor.accept(stream));
                    let tls = tokio::select! {
                        _ = serve.cancel.cancelled() => return,
                        r = handshake => r,
                    };
                    if let Ok(Ok(tls)) = tls {
                        serve.connection(tls).await;
                    }
                }
            }
        });
    }
    // Drain: connections finish the query in hand and close.
    while connections.join_next().await.is_some() {}
}

/// What serving one stream connection needs.
struct Serve {
    snapshot: SharedSnapshot,
    settings: ReplySettings,
    idle_timeout: Duration,
    stats: Arc<WorkerStats>,
    cancel: CancellationToken,
}

impl Serve {
    /// Answers length-prefixed queries (RFC 7766; RFC 7858 inside TLS) until the
    /// client closes, idles out, or the server stops.
    async fn connection<S: AsyncRead + AsyncWrite + Unpin>(self, mut stream: S) {
        let Self {
            snapshot,
            settings,
            idle_timeout,
            stats,
            cancel,
        } = self;
        let mut packet = vec![0u8; 65_535];
        let mut reply = Vec::with_capacity(4096);
        let mut framed = Vec::with_capacity(4096);
        loop {
            let mut len_buf = [0u8; 2];
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(idle_timeout, stream.read_exact(&mut len_buf)) => r,
            };
            match read {
                Ok(Ok(_)) => {}
                // Idle timeout, EOF or reset: close.
                _ => return,
            }
            let len = usize::from(u16::from_be_bytes(len_buf));
            // A message announced but not delivered within the idle timeout is abandoned.
            match tokio::time::timeout(idle_timeout, stream.read_exact(&mut packet[..len])).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let outcome = answer(
                &snapshot,
                settings,
                &packet[..len],
                Transport::Tcp,
                &mut reply,
                &stats,
            );
            if !outcome.replied {
                continue;
            }
            framed.clear();
            framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
            framed.extend_from_slice(&reply);
            // A client that stops reading stalls this write once the socket buffers are
            // full; without a bound it would hold its connection slot (and the drain on
            // shutdown) forever.
            match tokio::time::timeout(idle_timeout, stream.write_all(&framed)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

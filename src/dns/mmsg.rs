//! The Linux UDP fast path: worker threads answering batches with `recvmmsg`/`sendmmsg`.
//!
//! This module owns, per worker, one UDP socket bound with SO_REUSEPORT to a `dns.listen`
//! address, the OS thread that serves it, and every buffer that thread uses. Buffers are
//! allocated once when the worker starts; per query there is no allocation, no lock and no
//! syscall of its own: one `recvmmsg` takes up to [`BATCH`] datagrams, each is answered by
//! `AnswerIndex::respond` on the snapshot loaded for it, and one `sendmmsg` (more if the
//! kernel takes only part of the batch) sends the replies.
//!
//! Why threads and not tokio: about 90% of a query's cost is the kernel's UDP path
//! (DESIGN.md §6), so what is left to save is per-packet overhead, and a blocking batch loop
//! has the least. SO_REUSEPORT lets the kernel spread clients over the workers by flow hash,
//! so workers share nothing but the snapshot pointer.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dns::index::{ReplySettings, Transport};
use crate::dns::server::answer;
use crate::metrics::WorkerStats;
use crate::snapshot::SharedSnapshot;

/// Datagrams taken per `recvmmsg`.
const BATCH: usize = 64;
/// Receive buffer per datagram. A query that does not fit is not one we answer (a question
/// and an OPT record take a few hundred octets); 64 KiB buffers would cost 4 MiB per worker.
const RECV_SIZE: usize = 4096;
/// Initial capacity of each reply buffer: replies above it (only with a `max_udp_payload`
/// above 4096) make the buffer grow once and keep its capacity.
const REPLY_CAPACITY: usize = 4096;
/// SO_RCVTIMEO: an idle worker wakes this often to look at the cancellation token, so
/// shutdown never waits more than about this long for a worker.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// At most one error report per worker per this interval: errors can be caused by clients
/// (a spoofed broadcast source makes `sendmmsg` fail) and must not flood the log.
const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Pause after an unexpected receive error, so a persistent one (ENOMEM) does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Immediate retries of one reply that failed with EAGAIN or ENOBUFS before it is dropped.
const SEND_RETRIES: u32 = 3;

/// Binds one worker's socket: SO_REUSEPORT so every worker of the address (and nothing else
/// that did not set it too) can bind it, and SO_RCVTIMEO of [`RECV_TIMEOUT`].
pub(super) fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Everything a worker needs besides its socket.
pub(super) struct WorkerContext {
    pub snapshot: SharedSnapshot,
    pub settings: ReplySettings,
    pub stats: Arc<WorkerStats>,
    pub cancel: CancellationToken,
}

/// Starts worker `index` on its own OS thread, and a task on `tasks` that finishes when the
/// thread has been joined, so that draining `tasks` (`App::shutdown`) waits for the thread.
pub(super) fn spawn(
    index: usize,
    socket: std::net::UdpSocket,
    context: WorkerContext,
    tasks: &mut JoinSet<()>,
) -> io::Result<()> {
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<()>();
    let name = format!("fleetdns-udp-{index}");
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Locals drop in reverse order, also when unwinding: the socket is closed
            // first, then the sender tells the joining task that `join` will not block.
            let _exited = exited_tx;
            let socket = socket;
            serve(&socket, index, &context);
        })?;
    tasks.spawn(async move {
        // An error here only means the sender is gone, which is the signal.
        let _ = exited_rx.await;
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!(thread = %name, "udp worker panicked"),
            Err(e) => tracing::error!(thread = %name, error = %e, "joining a udp worker failed"),
        }
    });
    Ok(())
}

/// The worker loop: receive a batch, answer it, send the replies, until cancelled.
fn serve(socket: &std::net::UdpSocket, index: usize, context: &WorkerContext) {
    let fd = socket.as_raw_fd();
    let mut buffers = Buffers::new();
    let mut errors = ErrorLog::new(index);
    while !context.cancel.is_cancelled() {
        let received = match buffers.receive(fd) {
            Ok(n) => n,
            Err(e) => {
                match e.raw_os_error() {
                    // The receive timeout (idle) or a signal: look at the token again.
                    // ECONNREFUSED is an ICMP error about an earlier reply (Linux reports
                    // those on unconnected sockets only with IP_RECVERR): not ours to fix.
                    Some(libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => {}
                    _ => {
                        errors.report("receive", &e);
                        std::thread::sleep(ERROR_BACKOFF);
                    }
                }
                continue;
            }
        };
        let queued = buffers.answer(received, context);
        buffers.send(fd, queued, &mut errors);
    }
}

/// A worker's preallocated batch state.
///
/// `recv_hdrs` hold raw pointers into `packets`, `peers` and `recv_iovs`, set once in
/// [`Buffers::new`]: every field is a heap allocation that is never resized, so the pointers
/// stay valid however the struct itself moves. `send_hdrs` and `send_iovs` are rewritten for
/// each reply queued.
struct Buffers {
    /// `BATCH` receive buffers of `RECV_SIZE` octets, back to back.
    packets: Box<[u8]>,
    /// The sender of each received datagram, written by the kernel.
    peers: Box<[libc::sockaddr_storage]>,
    recv_iovs: Box<[libc::iovec]>,
    recv_hdrs: Box<[libc::mmsghdr]>,
    /// One reply buffer per queued reply, reused across batches.
    replies: Box<[Vec<u8>]>,
    send_iovs: Box<[libc::iovec]>,
    send_hdrs: Box<[libc::mmsghdr]>,
}

const SOCKADDR_LEN: libc::socklen_t = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// An all-zero C struct.
fn zeroed<T>() -> T {
    // SAFETY: only called for `sockaddr_storage`, `iovec` and `mmsghdr`: plain C structs of
    // integers and raw pointers, for which all-zero bytes (null pointers, zero lengths) are
    // a valid value.
    unsafe { mem::zeroed() }
}

impl Buffers {
    fn new() -> Self {
        let mut b = Self {
            packets: vec![0u8; BATCH * RECV_SIZE].into_boxed_slice(),
            peers: (0..BATCH).map(|_| zeroed()).collect(),
            recv_iovs: (0..BATCH).map(|_| zeroed()).collect(),
            recv_hdrs: (0..BATCH).map(|_| zeroed()).collect(),
            replies: (0..BATCH)
                .map(|_| Vec::with_capacity(REPLY_CAPACITY))
                .collect(),
            send_iovs: (0..BATCH).map(|_| zeroed()).collect(),
            send_hdrs: (0..BATCH).map(|_| zeroed()).collect(),
        };
        for (iov, packet) in b
            .recv_iovs
            .iter_mut()
            .zip(b.packets.chunks_exact_mut(RECV_SIZE))
        {
            iov.iov_base = packet.as_mut_ptr().cast();
            iov.iov_len = RECV_SIZE;
        }
        for ((hdr, iov), peer) in b
            .recv_hdrs
            .iter_mut()
            .zip(&mut b.recv_iovs)
            .zip(&mut b.peers)
        {
            hdr.msg_hdr.msg_name = (peer as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = SOCKADDR_LEN;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        b
    }

    /// Waits (up to the socket's receive timeout) for at least one datagram, then takes
    /// every datagram already queued, up to `BATCH`. Returns how many it took.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        // The kernel overwrites each address length with the sender's: give back the room.
        for hdr in self.recv_hdrs.iter_mut() {
            hdr.msg_hdr.msg_namelen = SOCKADDR_LEN;
        }
        // SAFETY: `recv_hdrs` holds `BATCH` initialized headers whose name and iovec
        // pointers point into `peers`, `recv_iovs` and `packets` (see `new`), all owned by
        // `self`, alive and unmoved for the call; the kernel writes at most `msg_namelen`
        // octets of address and `iov_len` octets of data through them, and the header's own
        // length and flag fields. A null timeout means "use the socket's SO_RCVTIMEO".
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        // A negative count is an error, reported in errno.
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Answers the first `received` datagrams and queues the replies for [`Buffers::send`];
    /// returns how many were queued.
    fn answer(&mut self, received: usize, context: &WorkerContext) -> usize {
        let mut queued = 0;
        // The kernel never returns more than the `BATCH` headers it was given.
        let received = received.min(BATCH);
        for (hdr, packet) in self.recv_hdrs[..received]
            .iter()
            .zip(self.packets.chunks_exact(RECV_SIZE))
        {
            if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                // Larger than `RECV_SIZE`: only the start arrived, so it cannot be parsed
                // faithfully. Dropped, and counted like a runt.
                context.stats.malformed();
                context.stats.dropped();
                continue;
            }
            let packet = &packet[..(hdr.msg_len as usize).min(RECV_SIZE)];
            let reply = &mut self.replies[queued];
            let outcome = answer(
                &context.snapshot,
                context.settings,
                packet,
                Transport::Udp,
                reply,
                &context.stats,
            );
            if !outcome.replied {
                continue;
            }
            let iov = &mut self.send_iovs[queued];
            iov.iov_base = reply.as_mut_ptr().cast();
            iov.iov_len = reply.len();
            let send = &mut self.send_hdrs[queued].msg_hdr;
            // The reply goes to the address the kernel wrote for this datagram.
            send.msg_name = hdr.msg_hdr.msg_name;
            send.msg_namelen = hdr.msg_hdr.msg_namelen;
            send.msg_iov = iov;
            send.msg_iovlen = 1;
            queued += 1;
        }
        queued
    }

    /// Sends the first `queued` replies. The kernel may take only part of a batch: the rest
    /// is sent by the next call. A reply the kernel refuses is dropped (UDP may lose it
    /// anyway) so that the others still go out.
    fn send(&mut self, fd: RawFd, queued: usize, errors: &mut ErrorLog) {
        let mut sent = 0;
        let mut retries = 0;
        while sent < queued {
            let pending = &mut self.send_hdrs[sent..queued];
            // SAFETY: `answer` filled every header in `pending`: the name points into
            // `peers` with the length the kernel wrote there, and the iovec (in `send_iovs`)
            // describes the initialized part of one of `replies`. None of these is touched
            // until the call returns; the kernel only reads them and writes `msg_len`.
            let n = unsafe {
                libc::sendmmsg(fd, pending.as_mut_ptr(), pending.len() as libc::c_uint, 0)
            };
            if n > 0 {
                sent += n as usize;
                retries = 0;
                continue;
            }
            // `sendmmsg` fails only if the first message of the call fails; it returns 0
            // only for an empty vector, which `pending` never is.
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN | libc::ENOBUFS) if retries < SEND_RETRIES => retries += 1,
                _ => {
                    errors.report("send", &error);
                    sent += 1;
                    retries = 0;
                }
            }
        }
    }
}

/// Rate-limited reporting of unexpected socket errors.
struct ErrorLog {
    worker: usize,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(worker: usize) -> Self {
        Self {
            worker,
            last: None,
            suppressed: 0,
        }
    }

    fn report(&mut self, operation: &'static str, error: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            worker = self.worker,
            operation,
            %error,
            suppressed_since_last_report = self.suppressed,
            "udp socket error (reported at most once a minute per worker)"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

//! The fake's network side: a TLS listener on 127.0.0.1 that can go away and come back on
//! the same port, with every live connection cut when it goes away (an API server that
//! restarts or a control-plane network partition, as a client sees it).
//!
//! axum serves HTTP/1.1 over connections this module hands it. Each connection's I/O is
//! tied to the "epoch" it was accepted in; going down cancels the epoch, which makes the
//! connection's reads and writes fail, so hyper drops it (axum spawns connection tasks we
//! cannot abort ourselves).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost.
pub(crate) struct Pki {
    pub ca_pem: String,
    pub server: Arc<ServerConfig>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "fake-kube CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("generating the fake CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("self-signing the fake CA");
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf = CertificateParams::default();
        leaf.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        leaf.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().expect("a valid DNS name")),
        ];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().expect("generating the fake server key");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("signing the fake server certificate");

        let chain = vec![CertificateDer::from(leaf_cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("a matching certificate and key");
        // HTTP/1.1 only: watch streams are chunked HTTP/1.1 bodies, as kube and kubectl
        // read them from a real API server when h2 is not negotiated.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pki {
            ca_pem,
            server: Arc::new(server),
        }
    }
}

/// The listener half the fake controls: binding, accepting and TLS, per epoch.
pub(crate) struct Net {
    port: u16,
    tls: TlsAcceptor,
    conns: mpsc::Sender<(KillableIo, SocketAddr)>,
    up: Mutex<Option<Up>>,
}

/// One period during which the fake accepts connections.
struct Up {
    epoch: CancellationToken,
    accept: JoinHandle<()>,
}

/// What axum accepts from: connections the current epoch's accept loop has finished the
/// TLS handshake of.
pub(crate) struct Incoming {
    conns: mpsc::Receiver<(KillableIo, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Incoming {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(conn) => conn,
            // Net (the only sender) is gone: the fake is being dropped; accept nothing.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Net {
    /// Binds 127.0.0.1 on a free port and starts accepting.
    pub(crate) async fn start(server: Arc<ServerConfig>) -> (Arc<Net>, Incoming) {
        let listener = bind(0).expect("binding 127.0.0.1:0 for the fake API server");
        let local = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (tx, rx) = mpsc::channel(64);
        let net = Arc::new(Net {
            port: local.port(),
            tls: TlsAcceptor::from(server),
            conns: tx,
            up: Mutex::new(None),
        });
        net.listen(listener);
        (net, Incoming { conns: rx, local })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn listen(&self, listener: tokio::net::TcpListener) {
        let epoch = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            self.tls.clone(),
            self.conns.clone(),
            epoch.clone(),
        ));
        *self.up.lock().unwrap_or_else(|e| e.into_inner()) = Some(Up { epoch, accept });
    }

    /// Stops listening (the port refuses connections) and cuts every live connection.
    pub(crate) async fn go_down(&self) {
        let up = self.up.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(up) = up {
            up.epoch.cancel();
            // The listener is dropped when the accept loop ends: wait for it, so the port
            // is closed when this returns.
            let _ = up.accept.await;
        }
    }

    /// Listens again on the same port.
    pub(crate) async fn come_back(&self) {
        if self.is_up() {
            return;
        }
        // The port was ours a moment ago; connections we closed may linger in TIME_WAIT,
        // which SO_REUSEADDR allows. Retry briefly in case the kernel is still releasing it.
        let mut attempts = 0;
        let listener = loop {
            match bind(self.port) {
                Ok(l) => break l,
                Err(e) if attempts < 50 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!(
                    "rebinding 127.0.0.1:{} for the fake API server: {e}",
                    self.port
                ),
            }
        };
        self.listen(listener);
    }
}

fn bind(port: u16) -> io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(128)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: TlsAcceptor,
    conns: mpsc::Sender<(KillableIo, SocketAddr)>,
    epoch: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = epoch.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, peer)) = accepted else {
            // Transient (e.g. too many open files): try again, as a server would.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Handshake off the accept loop, so a client that connects and says nothing
        // cannot stall everyone else.
        let (tls, conns, epoch) = (tls.clone(), conns.clone(), epoch.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp));
            let stream = tokio::select! {
                _ = epoch.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                },
            };
            let io = KillableIo {
                io: stream,
                killed: Box::pin(epoch.cancelled_owned()),
            };
            let _ = conns.send((io, peer)).await;
        });
    }
}

/// A server-side TLS connection whose reads and writes fail once its epoch is cancelled.
pub(crate) struct KillableIo {
    io: TlsStream<TcpStream>,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableIo {
    /// Polling the cancellation also registers the waker, so a connection hyper is idly
    /// reading from wakes up when the fake goes down.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the fake API server went down",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

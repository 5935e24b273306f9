//! Mutual TLS for the mesh (DESIGN.md §4 "Identity").
//!
//! This module owns one peer's rustls configurations: its own certificate chain and
//! key, and a verifier that accepts the other side (client or server alike) only by
//! its certificate's URI SAN `fleetdns://<fleet>/cluster/<cluster>`, chained to the
//! trust bundle and not revoked; never by host name or IP. The configurations are
//! swapped whole when credentials are reloaded: connections keep the handshake they
//! made until `mesh.max_connection_age` closes them. Every refused certificate is
//! counted by reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::clock::Clock;
use crate::identity::{FleetTrust, IdentityError};

/// Why a peer's certificate was refused in a handshake. Bounded: metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRejection {
    /// Not signed by any CA of the bundle (a foreign CA, or one removed from it).
    Untrusted,
    Expired,
    /// Its cluster is in `mesh.revoked_clusters`.
    Revoked,
    /// No URI SAN naming a cluster of this fleet.
    NoClusterName,
    /// Undecodable certificate.
    Malformed,
}

impl CertRejection {
    pub const ALL: [Self; 5] = [
        Self::Untrusted,
        Self::Expired,
        Self::Revoked,
        Self::NoClusterName,
        Self::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::NoClusterName => "no-cluster-name",
            Self::Malformed => "malformed",
        }
    }

    fn of(error: &IdentityError) -> Self {
        match error {
            IdentityError::Untrusted(_) => Self::Untrusted,
            IdentityError::Expired(_) => Self::Expired,
            IdentityError::Revoked(_) => Self::Revoked,
            IdentityError::NoClusterName { .. } => Self::NoClusterName,
            _ => Self::Malformed,
        }
    }

    /// The TLS alert the other side gets.
    fn tls_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(match self {
            Self::Untrusted => CertificateError::UnknownIssuer,
            Self::Expired => CertificateError::Expired,
            Self::Revoked => CertificateError::Revoked,
            Self::NoClusterName => CertificateError::NotValidForName,
            Self::Malformed => CertificateError::BadEncoding,
        })
    }
}

/// Refused certificates by reason; shared with the metrics and kept across reloads.
#[derive(Debug, Default)]
pub struct CertRejections {
    counts: [AtomicU64; CertRejection::ALL.len()],
}

impl CertRejections {
    fn count(&self, reason: CertRejection) {
        let i = CertRejection::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(CertRejection, u64)> {
        CertRejection::ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Checks the other side of a mesh connection, in either role.
#[derive(Debug)]
struct PeerVerifier {
    trust: FleetTrust,
    clock: Arc<dyn Clock>,
    algorithms: WebPkiSupportedAlgorithms,
    rejections: Arc<CertRejections>,
}

impl PeerVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        // Our clock, not rustls's: tests set the wall clock, and so may operators.
        match self
            .trust
            .verify_der(end_entity, intermediates, self.clock.unix_seconds())
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let reason = CertRejection::of(&e);
                self.rejections.count(reason);
                Err(reason.tls_error())
            }
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The two sides of one set of credentials.
#[derive(Debug)]
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A peer's mesh TLS: what its listener accepts with and its dialers connect with.
#[derive(Debug)]
pub struct MeshTls {
    current: ArcSwap<Configs>,
    clock: Arc<dyn Clock>,
    rejections: Arc<CertRejections>,
}

impl MeshTls {
    /// Builds the configurations from a chain (leaf first) and key, both PEM.
    pub fn new(
        chain_pem: &str,
        key_pem: &str,
        trust: FleetTrust,
        clock: Arc<dyn Clock>,
        rejections: Arc<CertRejections>,
    ) -> Result<Self, TlsError> {
        let configs = build(chain_pem, key_pem, trust, &clock, &rejections)?;
        Ok(Self {
            current: ArcSwap::from_pointee(configs),
            clock,
            rejections,
        })
    }

    /// New credentials or trust for the handshakes from now on.
    pub fn reload(
        &self,
        chain_pem: &str,
        key_pem: &str,
        trust: FleetTrust,
    ) -> Result<(), TlsError> {
        let configs = build(chain_pem, key_pem, trust, &self.clock, &self.rejections)?;
        self.current.store(Arc::new(configs));
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load().server.clone())
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current.load().client.clone())
    }
}

fn build(
    chain_pem: &str,
    key_pem: &str,
    trust: FleetTrust,
    clock: &Arc<dyn Clock>,
    rejections: &Arc<CertRejections>,
) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = crate::identity::chain_and_key_der(chain_pem, key_pem)?;
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let verifier = Arc::new(PeerVerifier {
        trust,
        clock: clock.clone(),
        algorithms: provider.signature_verification_algorithms,
        rejections: rejections.clone(),
    });
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain.clone(), key.clone_key())?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

//! DNS over TLS (RFC 7858): the server's TLS configuration.
//!
//! This module owns what a DoT client sees of TLS: the certificate chain and key from
//! `dns.tls_cert` and `dns.tls_key`, TLS 1.2 and 1.3, and the ALPN id `dot` (RFC
//! 8310). The connections themselves are the TCP server's: after the handshake a DoT
//! connection carries the same length-prefixed messages, answered by the same code.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum DotError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Pem {
        path: String,
        error: crate::identity::IdentityError,
    },
    #[error("the certificate and key do not make a TLS server: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<String, DotError> {
    std::fs::read_to_string(path).map_err(|error| DotError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// The TLS server for DoT connections, from PEM files (chain leaf first; PKCS#8 key).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, DotError> {
    tls_server(cert, key, &[b"dot"])
}

/// A TLS server from PEM files offering `alpn` (the admin API uses it for HTTPS).
pub fn tls_server(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, DotError> {
    let (chain, key_der) =
        crate::identity::chain_and_key_der(&read(cert)?, &read(key)?).map_err(|error| {
            DotError::Pem {
                path: format!("{} / {}", cert.display(), key.display()),
                error,
            }
        })?;
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

//! The admin API client behind `fleetdns query`: one GET, optionally over TLS, with
//! the bearer token, and a clear error when nothing answers.
//!
//! This module owns the CLI's side of the wire. It returns the response body as
//! text for `--json` and deserializes it for the tables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long the whole request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the daemon's admin API is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `HOST:PORT`, or an `http://` / `https://` URL of the API's root.
    pub admin: String,
    pub token: Option<String>,
    /// A PEM CA that signed the API's TLS certificate; implies HTTPS.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "no admin API answers at {addr}: {error} (is fleetdns running with an admin: section? \
         pass --admin HOST:PORT or set FLEETDNS_ADMIN)"
    )]
    Unreachable { addr: String, error: String },
    #[error("{addr}: {error}")]
    Protocol { addr: String, error: String },
    #[error("{addr} answered {status}: {message}")]
    Status {
        addr: String,
        status: u16,
        message: String,
    },
}

struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

fn parse_admin(target: &Target) -> Result<Endpoint, ClientError> {
    let (tls, rest) = if let Some(rest) = target.admin.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = target.admin.strip_prefix("http://") {
        (target.ca.is_some(), rest)
    } else {
        (target.ca.is_some(), target.admin.as_str())
    };
    let rest = rest.trim_end_matches('/');
    let bad = || {
        ClientError::Usage(format!(
            "--admin {:?} is not HOST:PORT or an http(s):// URL",
            target.admin
        ))
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok(Endpoint {
        host: host.to_string(),
        port,
        tls,
    })
}

/// GETs `path_and_query` and returns the body of a 2xx answer.
pub async fn get(target: &Target, path_and_query: &str) -> Result<String, ClientError> {
    let endpoint = parse_admin(target)?;
    let addr = format!("{}:{}", endpoint.host, endpoint.port);
    match tokio::time::timeout(TIMEOUT, fetch(target, &endpoint, &addr, path_and_query)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Unreachable {
            addr,
            error: format!("no answer within {TIMEOUT:?}"),
        }),
    }
}

async fn fetch(
    target: &Target,
    endpoint: &Endpoint,
    addr: &str,
    path_and_query: &str,
) -> Result<String, ClientError> {
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| ClientError::Unreachable {
            addr: addr.to_string(),
            error: e.to_string(),
        })?;
    if endpoint.tls {
        let config = tls_config(target)?;
        let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
            ClientError::Usage(format!("{:?} is not a TLS server name: {e}", endpoint.host))
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Protocol {
                addr: addr.to_string(),
                error: format!("TLS: {e}"),
            })?;
        exchange(stream, target, addr, &host, endpoint.port, path_and_query).await
    } else {
        exchange(tcp, target, addr, &host, endpoint.port, path_and_query).await
    }
}

fn tls_config(target: &Target) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &target.ca {
        let text = std::fs::read_to_string(ca)
            .map_err(|e| ClientError::Usage(format!("--ca {}: {e}", ca.display())))?;
        let certs: Vec<CertificateDer<'static>> = pem::parse_many(&text)
            .map_err(|e| ClientError::Usage(format!("--ca {}: {e}", ca.display())))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect();
        if certs.is_empty() {
            return Err(ClientError::Usage(format!(
                "--ca {}: no PEM certificate in it",
                ca.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Usage(format!("--ca {}: {e}", ca.display())))?;
        }
    } else {
        return Err(ClientError::Usage(
            "https needs --ca FILE: the CA that signed the admin API's certificate".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Usage(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn exchange<S>(
    stream: S,
    target: &Target,
    addr: &str,
    host: &str,
    port: u16,
    path_and_query: &str,
) -> Result<String, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol {
        addr: addr.to_string(),
        error: e.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&e))?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::get(path_and_query)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(token) = &target.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(&e))?
        .to_bytes();
    driver.abort();
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        let message = serde_json::from_str::<super::api::ErrorDoc>(&text)
            .map_or_else(|_| text.trim().to_string(), |doc| doc.error);
        return Err(ClientError::Status {
            addr: addr.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(admin: &str, ca: bool) -> Target {
        Target {
            admin: admin.into(),
            token: None,
            ca: ca.then(|| "ca.pem".into()),
        }
    }

    #[test]
    fn admin_addresses_parse_as_host_port_or_url() {
        let e = parse_admin(&target("127.0.0.1:8053", false)).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 8053, false));
        let e = parse_admin(&target("https://admin.example:443/", false)).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("admin.example", 443, true)
        );
        let e = parse_admin(&target("[::1]:8053", true)).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("::1", 8053, true));
        for bad in ["8053", "host:port", ":8053", "http://a/b:1"] {
            let err = parse_admin(&target(bad, false)).err().unwrap();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}

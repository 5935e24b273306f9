//! Mesh identity: the fleet CA and per-cluster leaf certificates (DESIGN.md §4).
//!
//! This module owns what a fleetdns certificate says: a leaf names its cluster with the
//! URI SAN `fleetdns://<fleet>/cluster/<cluster>`, and peers are verified by that SAN,
//! never by host name or IP. It is pure: it makes and reads PEM text; `fleetdns keygen`
//! (in `app`) writes the files. Validity comes from the caller's wall clock, so tests
//! can set it.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::model::{ClusterId, NameError, Namespace};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("fleet name {0:?} must be one DNS label (lowercase letters, digits and '-')")]
    BadFleet(String),
    #[error("validity of {days} days is out of range 1-3650")]
    BadValidity { days: u32 },
    #[error("{what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the wall clock ({0} s since 1970) is not a valid time")]
    BadClock(u64),
}

/// The fleet's name as it appears in certificates: one DNS label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetName(String);

impl FleetName {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        // Same rules as a namespace: one RFC 1123 label.
        Namespace::parse(s)
            .map(|_| Self(s.to_string()))
            .map_err(|_: NameError| IdentityError::BadFleet(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The URI SAN that names a cluster of a fleet.
pub fn cluster_uri(fleet: &FleetName, cluster: &ClusterId) -> String {
    format!("fleetdns://{}/cluster/{cluster}", fleet.as_str())
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Clock skew tolerated on `not_before`, so a peer whose clock runs slightly behind
/// accepts a certificate made just now.
const BACKDATE: Duration = Duration::hours(1);

fn now(unix_seconds: u64) -> Result<OffsetDateTime, IdentityError> {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(IdentityError::BadClock(unix_seconds))
}

fn cert_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> IdentityError {
    let what = what.into();
    move |source| IdentityError::Certificate { what, source }
}

/// Makes a new fleet CA, valid for `days` from `unix_now`. Its key signs leaves and never
/// goes into a cluster.
pub fn new_ca(fleet: &FleetName, unix_now: u64, days: u32) -> Result<Credentials, IdentityError> {
    let (not_before, not_after) = validity(unix_now, days)?;
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("fleetdns CA {}", fleet.as_str()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(cert_error("signing the CA certificate"))?;
    Ok(Credentials {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the leaf of `cluster`, signed by `ca`, valid for `days` from `unix_now`. The
/// certificate PEM holds the leaf then the CA, the chain a peer presents.
pub fn issue_leaf(
    ca: &Credentials,
    fleet: &FleetName,
    cluster: &ClusterId,
    unix_now: u64,
    days: u32,
) -> Result<Credentials, IdentityError> {
    let (not_before, not_after) = validity(unix_now, days)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(cert_error("reading the CA certificate"))?;
    let uri = cluster_uri(fleet, cluster);
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("fleetdns {} {cluster}", fleet.as_str()),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(cert_error(format!("the URI {uri}")))?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every connection is mutual TLS: a peer is a server and a client.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(cert_error(format!("generating the {cluster} key")))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_error(format!("signing the {cluster} certificate")))?;
    Ok(Credentials {
        cert_pem: format!("{}{}", cert.pem(), ca.cert_pem),
        key_pem: key.serialize_pem(),
    })
}

fn validity(unix_now: u64, days: u32) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
    if !(1..=3650).contains(&days) {
        return Err(IdentityError::BadValidity { days });
    }
    let now = now(unix_now)?;
    Ok((now - BACKDATE, now + Duration::days(i64::from(days))))
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::{CertificateDer, UnixTime};
    use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};

    use super::*;

    const NOW: u64 = 1_795_000_000;

    fn der_chain(pem: &str) -> Vec<Vec<u8>> {
        ::pem::parse_many(pem)
            .unwrap()
            .into_iter()
            .map(|p| p.contents().to_vec())
            .collect()
    }

    /// Verifies a leaf chain against the CA as a mesh peer would, at `at` (unix s).
    fn verify(
        ca: &Credentials,
        leaf: &Credentials,
        at: u64,
        usage: KeyUsage,
    ) -> Result<(), webpki::Error> {
        let ca_der = CertificateDer::from(der_chain(&ca.cert_pem).remove(0));
        let anchors = [anchor_from_trusted_cert(&ca_der).unwrap().to_owned()];
        let chain = der_chain(&leaf.cert_pem);
        let leaf_der = CertificateDer::from(chain[0].clone());
        let cert = EndEntityCert::try_from(&leaf_der).unwrap();
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(at)),
            usage,
            None,
            None,
        )
        .map(|_| ())
    }

    fn uris(pem: &str) -> Vec<String> {
        let der = der_chain(pem).remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn leaves_chain_to_their_ca_and_name_their_cluster() {
        let fleet = FleetName::parse("prod").unwrap();
        let ca = new_ca(&fleet, NOW, 3650).unwrap();
        let east = ClusterId::parse("east").unwrap();
        let leaf = issue_leaf(&ca, &fleet, &east, NOW, 365).unwrap();
        assert_eq!(uris(&leaf.cert_pem), vec!["fleetdns://prod/cluster/east"]);
        assert_eq!(der_chain(&leaf.cert_pem).len(), 2, "leaf then CA");
        verify(&ca, &leaf, NOW + 60, KeyUsage::server_auth()).unwrap();
        verify(&ca, &leaf, NOW + 60, KeyUsage::client_auth()).unwrap();

        // Validity comes from the given clock.
        assert!(verify(&ca, &leaf, NOW + 366 * 86_400, KeyUsage::server_auth()).is_err());
        assert!(verify(&ca, &leaf, NOW - 2 * 3600, KeyUsage::server_auth()).is_err());

        // A leaf of another fleet's CA does not chain.
        let other_ca = new_ca(&fleet, NOW, 3650).unwrap();
        assert!(verify(&other_ca, &leaf, NOW + 60, KeyUsage::server_auth()).is_err());
    }

    #[test]
    fn bad_inputs_name_the_value() {
        for bad in ["Prod", "a.b", "", "-x"] {
            let err = FleetName::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let fleet = FleetName::parse("prod").unwrap();
        let err = new_ca(&fleet, NOW, 0).unwrap_err().to_string();
        assert!(err.contains('0'), "{err}");
        let err = new_ca(&fleet, u64::MAX, 10).unwrap_err().to_string();
        assert!(err.contains(&u64::MAX.to_string()), "{err}");
    }
}

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
    #[error("not a PEM certificate chain or key: {0}")]
    Pem(String),
    #[error("certificate not trusted by the bundle: {0}")]
    Untrusted(String),
    #[error("certificate expired or not yet valid: {0}")]
    Expired(String),
    #[error("cluster {0} is revoked (mesh.revoked_clusters)")]
    Revoked(ClusterId),
    #[error("certificate names no cluster of fleet {fleet:?} (URI SANs: {uris:?})")]
    NoClusterName { fleet: String, uris: Vec<String> },
    #[error("signature does not verify")]
    BadSignature,
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
    let mut params = base_params(unix_now, days, format!("fleetdns CA {}", fleet.as_str()))?;
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
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(cert_error("reading the CA certificate"))?;
    let uri = cluster_uri(fleet, cluster);
    let mut params = base_params(
        unix_now,
        days,
        format!("fleetdns {} {cluster}", fleet.as_str()),
    )?;
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

/// What a verified certificate chain proves: the peer holds a key certified by the
/// fleet's trust bundle for this cluster.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    pub cluster: ClusterId,
    leaf_der: Vec<u8>,
}

fn pem_ders(text: &str, tag: &str) -> Result<Vec<Vec<u8>>, IdentityError> {
    let parsed = pem::parse_many(text).map_err(|e| IdentityError::Pem(e.to_string()))?;
    let ders: Vec<Vec<u8>> = parsed
        .into_iter()
        .filter(|p| p.tag() == tag)
        .map(|p| p.contents().to_vec())
        .collect();
    if ders.is_empty() {
        return Err(IdentityError::Pem(format!("no {tag} block")));
    }
    Ok(ders)
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The fleet's trust anchors, parsed once from `mesh.trust_bundle` (a list, so an old
/// and a new CA can overlap during a rotation).
#[derive(Debug, Clone)]
pub struct TrustBundle {
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Every CERTIFICATE block of every PEM text is a trusted CA.
    pub fn from_pems(pems: &[String]) -> Result<Self, IdentityError> {
        let mut anchors = Vec::new();
        for pem in pems {
            for der in pem_ders(pem, "CERTIFICATE")? {
                let der = rustls_pki_types::CertificateDer::from(der);
                let anchor = webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| IdentityError::Pem(format!("bad CA in the bundle: {e}")))?;
                anchors.push(anchor.to_owned());
            }
        }
        Ok(Self { anchors })
    }
}

/// Verifies a peer's chain (DER, leaf first, as a TLS handshake presents it) against
/// any CA of `bundle` at `unix_now`, and returns the cluster its URI SAN names in
/// `fleet`.
fn verify_chain_der(
    leaf: &[u8],
    intermediates: &[impl AsRef<[u8]>],
    bundle: &TrustBundle,
    fleet: &FleetName,
    unix_now: u64,
) -> Result<VerifiedPeer, IdentityError> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let leaf_der = CertificateDer::from(leaf);
    let intermediates: Vec<CertificateDer> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_ref()))
        .collect();
    let cert = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| IdentityError::Untrusted(e.to_string()))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &bundle.anchors,
        &intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(unix_now)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            IdentityError::Expired(e.to_string())
        }
        _ => IdentityError::Untrusted(e.to_string()),
    })?;
    let uris = uri_sans(leaf);
    let prefix = format!("fleetdns://{}/cluster/", fleet.as_str());
    let cluster = uris
        .iter()
        .find_map(|u| ClusterId::parse(u.strip_prefix(&prefix)?).ok())
        .ok_or_else(|| IdentityError::NoClusterName {
            fleet: fleet.as_str().to_string(),
            uris: uris.clone(),
        })?;
    Ok(VerifiedPeer {
        cluster,
        leaf_der: leaf.to_vec(),
    })
}

/// Everything a peer trusts: its fleet's name, the CAs of the bundle, and the clusters
/// revoked by configuration (`mesh.revoked_clusters`) whatever their certificates say.
#[derive(Debug, Clone)]
pub struct FleetTrust {
    pub fleet: FleetName,
    pub bundle: TrustBundle,
    pub revoked: std::collections::BTreeSet<ClusterId>,
}

impl FleetTrust {
    /// Trust in the CAs of `bundle_pems` for `fleet`, nothing revoked.
    pub fn new(fleet: FleetName, bundle_pems: &[String]) -> Result<Self, IdentityError> {
        Ok(Self {
            fleet,
            bundle: TrustBundle::from_pems(bundle_pems)?,
            revoked: std::collections::BTreeSet::new(),
        })
    }

    /// Verifies a chain (DER, leaf first) and that its cluster is not revoked.
    pub fn verify_der(
        &self,
        leaf: &[u8],
        intermediates: &[impl AsRef<[u8]>],
        unix_now: u64,
    ) -> Result<VerifiedPeer, IdentityError> {
        let peer = verify_chain_der(leaf, intermediates, &self.bundle, &self.fleet, unix_now)?;
        if self.revoked.contains(&peer.cluster) {
            return Err(IdentityError::Revoked(peer.cluster));
        }
        Ok(peer)
    }

    /// [`FleetTrust::verify_der`] on a PEM chain.
    pub fn verify_pem(
        &self,
        chain_pem: &str,
        unix_now: u64,
    ) -> Result<VerifiedPeer, IdentityError> {
        let chain = pem_ders(chain_pem, "CERTIFICATE")?;
        self.verify_der(&chain[0], &chain[1..], unix_now)
    }
}

/// The fleet a CA certificate made by [`new_ca`] is for (from its common name), or
/// `None` for a CA made otherwise.
pub fn ca_fleet(cert_pem: &str) -> Result<Option<String>, IdentityError> {
    let der = pem_ders(cert_pem, "CERTIFICATE")?.remove(0);
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Err(IdentityError::Pem("not an X.509 certificate".into()));
    };
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    Ok(name
        .and_then(|n| n.strip_prefix("fleetdns CA "))
        .map(str::to_string))
}

/// A certificate chain (leaf first) and its PKCS#8 key as DER, for a TLS config.
pub fn chain_and_key_der(
    chain_pem: &str,
    key_pem: &str,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), IdentityError> {
    let chain = pem_ders(chain_pem, "CERTIFICATE")?;
    let key = pem_ders(key_pem, "PRIVATE KEY")?.remove(0);
    Ok((chain, key))
}

impl VerifiedPeer {
    /// Checks `signature` over `message` by this peer's certified key.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let der = rustls_pki_types::CertificateDer::from(self.leaf_der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| IdentityError::Untrusted(e.to_string()))?;
        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
            .map_err(|_| IdentityError::BadSignature)
    }
}

/// Signs `message` with a leaf's private key (PEM, PKCS#8 ECDSA P-256, as `keygen`
/// writes it).
pub fn sign(key_pem: &str, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let der = pem_ders(key_pem, "PRIVATE KEY")?.remove(0);
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
        .map_err(|e| IdentityError::Pem(format!("not an ECDSA P-256 key: {e}")))?;
    key.sign(&rng, message)
        .map(|sig| sig.as_ref().to_vec())
        .map_err(|_| IdentityError::BadSignature)
}

/// Parameters every fleetdns certificate shares: validity from the caller's clock and
/// a common name for humans (peers go by the URI SAN).
fn base_params(
    unix_now: u64,
    days: u32,
    common_name: String,
) -> Result<CertificateParams, IdentityError> {
    let (not_before, not_after) = validity(unix_now, days)?;
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    Ok(params)
}

/// The URI SANs of the first certificate of a PEM chain (for `keygen`'s checks and
/// operators' tools).
pub fn certificate_uris(chain_pem: &str) -> Result<Vec<String>, IdentityError> {
    Ok(uri_sans(&pem_ders(chain_pem, "CERTIFICATE")?[0]))
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

    #[test]
    fn leaves_chain_to_their_ca_and_name_their_cluster() {
        let fleet = FleetName::parse("prod").unwrap();
        let ca = new_ca(&fleet, NOW, 3650).unwrap();
        let east = ClusterId::parse("east").unwrap();
        let leaf = issue_leaf(&ca, &fleet, &east, NOW, 365).unwrap();
        assert_eq!(
            certificate_uris(&leaf.cert_pem).unwrap(),
            vec!["fleetdns://prod/cluster/east"]
        );
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
    fn chains_are_verified_by_bundle_and_uri_and_signatures_by_the_leaf_key() {
        let fleet = FleetName::parse("prod").unwrap();
        let ca = new_ca(&fleet, NOW, 3650).unwrap();
        let west = ClusterId::parse("west").unwrap();
        let leaf = issue_leaf(&ca, &fleet, &west, NOW, 365).unwrap();
        let bundle = vec![ca.cert_pem.clone()];
        let verify_chain = |chain: &str, bundle: &[String], fleet: &FleetName, now: u64| {
            FleetTrust::new(fleet.clone(), bundle)?.verify_pem(chain, now)
        };
        let peer = verify_chain(&leaf.cert_pem, &bundle, &fleet, NOW + 60).unwrap();
        assert_eq!(peer.cluster, west);

        let sig = sign(&leaf.key_pem, b"root").unwrap();
        peer.verify_signature(b"root", &sig).unwrap();
        assert!(peer.verify_signature(b"rooT", &sig).is_err());
        let other = issue_leaf(&ca, &fleet, &west, NOW, 365).unwrap();
        let forged = sign(&other.key_pem, b"root").unwrap();
        assert!(
            peer.verify_signature(b"root", &forged).is_err(),
            "another key"
        );

        // A foreign CA, an expired leaf, another fleet: refused with a reason.
        let foreign = new_ca(&fleet, NOW, 3650).unwrap();
        let err = verify_chain(
            &leaf.cert_pem,
            std::slice::from_ref(&foreign.cert_pem),
            &fleet,
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::Untrusted(_)), "{err}");
        let err = verify_chain(&leaf.cert_pem, &bundle, &fleet, NOW + 400 * 86_400).unwrap_err();
        assert!(matches!(err, IdentityError::Expired(_)), "{err}");
        let staging = FleetName::parse("staging").unwrap();
        let err = verify_chain(&leaf.cert_pem, &bundle, &staging, NOW).unwrap_err();
        assert!(
            err.to_string().contains("fleetdns://prod/cluster/west"),
            "{err}"
        );
        // Both CAs in the bundle (rotation overlap): trusted.
        let both = vec![foreign.cert_pem.clone(), ca.cert_pem.clone()];
        assert!(verify_chain(&leaf.cert_pem, &both, &fleet, NOW).is_ok());
        assert!(verify_chain("garbage", &bundle, &fleet, NOW).is_err());
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

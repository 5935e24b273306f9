//! The mesh's key/value codec: a cluster's exports as chitchat keys and string values.
//!
//! This module is the only place where gossip strings meet fleetdns types (DESIGN.md §4).
//! It is pure. One key per exported service chunk, `s:<namespace>/<name>/<chunk>`;
//! each value is a schema-version character followed by base64url of a compact binary
//! encoding (postcard). Exports are split so that no chunk holds more than 100 endpoints
//! or exceeds 8 KiB: chitchat 0.11's digest is uncompressed, and a value that does not
//! fit a message would stall that node's replication forever. Decoding is strict and
//! never panics: anything malformed, oversized or inconsistent is rejected with a
//! bounded reason, and a service is only decoded when every chunk of it is present.
//! [`digest`] is the hash a signed root commits to.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::{
    AddressKind, ClusterId, Endpoint, HostLabel, LocalExports, Namespace, Policy, PortName,
    Protocol, ServiceExport, ServiceKey, ServiceName, ServicePort,
};

/// The schema version this build writes. Readers accept it and the next one, whose
/// changes must be additive (postcard ignores trailing fields it does not know).
pub const SCHEMA: char = '1';
const SCHEMA_NEXT: char = '2';
/// Largest value written or accepted.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// Most endpoints in one chunk.
pub const MAX_ENDPOINTS_PER_CHUNK: usize = 100;
/// Prefix of every service key.
pub const SERVICE_PREFIX: &str = "s:";

/// Why a key or value was rejected. Bounded: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Rejection {
    #[error("value larger than 8 KiB")]
    TooLarge,
    #[error("unknown schema version")]
    Schema,
    #[error("not base64url")]
    Base64,
    #[error("undecodable value")]
    Decode,
    #[error("malformed key")]
    Key,
    #[error("invalid name or address in the value")]
    Invalid,
    #[error("chunks missing or inconsistent")]
    Incomplete,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too-large",
            Self::Schema => "schema",
            Self::Base64 => "base64",
            Self::Decode => "decode",
            Self::Key => "key",
            Self::Invalid => "invalid",
            Self::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireHeader {
    ports: Vec<(Option<String>, u16, u8)>,
    cluster_ips: Vec<IpAddr>,
    ingress: Vec<IpAddr>,
    headless: bool,
    addresses: Option<u8>,
    policy: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireEndpoint {
    address: IpAddr,
    hostname: Option<String>,
    pod: Option<String>,
    ready: bool,
    zone: Option<String>,
}

/// One value: chunk `index` of `count`; the header travels in chunk 0 only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireChunk {
    index: u16,
    count: u16,
    header: Option<WireHeader>,
    endpoints: Vec<WireEndpoint>,
}

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

fn kind_code(k: AddressKind) -> u8 {
    match k {
        AddressKind::Ingress => 0,
        AddressKind::ClusterIp => 1,
        AddressKind::Endpoints => 2,
        AddressKind::None => 3,
    }
}

/// The key of chunk `chunk` of a service.
pub fn service_key(key: &ServiceKey, chunk: u16) -> String {
    format!("{SERVICE_PREFIX}{}/{}/{chunk}", key.namespace, key.name)
}

fn parse_key(key: &str) -> Option<(ServiceKey, u16)> {
    let rest = key.strip_prefix(SERVICE_PREFIX)?;
    let mut parts = rest.split('/');
    let (ns, name, chunk) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((
        ServiceKey {
            namespace: Namespace::parse(ns).ok()?,
            name: ServiceName::parse(name).ok()?,
        },
        chunk.parse().ok()?,
    ))
}

fn encode_value(chunk: &WireChunk) -> String {
    let bytes = postcard::to_stdvec(chunk).expect("encoding plain data into a Vec cannot fail");
    let mut out = String::with_capacity(1 + bytes.len() * 4 / 3 + 4);
    out.push(SCHEMA);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    out
}

fn decode_value(value: &str) -> Result<WireChunk, Rejection> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Rejection::TooLarge);
    }
    let mut chars = value.chars();
    match chars.next() {
        Some(SCHEMA | SCHEMA_NEXT) => {}
        _ => return Err(Rejection::Schema),
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(chars.as_str())
        .map_err(|_| Rejection::Base64)?;
    postcard::from_bytes(&bytes).map_err(|_| Rejection::Decode)
}

fn wire_endpoint(e: &Endpoint) -> WireEndpoint {
    WireEndpoint {
        address: e.address,
        hostname: e.hostname.as_ref().map(|h| h.to_string()),
        pod: e.pod_name.as_ref().map(|h| h.to_string()),
        ready: e.ready,
        zone: e.zone.clone(),
    }
}

/// Encodes one export into its chunk values, or says why it cannot be gossiped.
pub fn encode_service(export: &ServiceExport) -> Result<Vec<(String, String)>, Rejection> {
    let header = WireHeader {
        ports: export
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.as_ref().map(|n| n.to_string()),
                    p.port,
                    protocol_code(p.protocol),
                )
            })
            .collect(),
        cluster_ips: export.cluster_ips.clone(),
        ingress: export.ingress.clone(),
        headless: export.headless,
        addresses: export.addresses.map(kind_code),
        policy: match export.policy {
            Policy::LocalPreferred => 0,
            Policy::All => 1,
        },
    };
    // Fill chunks greedily: at most 100 endpoints, at most 8 KiB once encoded. Sizes are
    // summed per endpoint (postcard concatenates fields), so filling is linear; the
    // exact size of every value is checked below.
    let encoded_len = |raw: usize| 1 + raw.div_ceil(3) * 4;
    let mut chunks: Vec<WireChunk> = vec![WireChunk {
        index: 0,
        count: 0,
        header: Some(header),
        endpoints: Vec::new(),
    }];
    // Raw size of the last chunk so far; 3 + 3 octets cover index and count, 2 the
    // endpoint count's growth.
    let empty_len = |c: &WireChunk| postcard::to_stdvec(c).map_or(0, |b| b.len()) + 8;
    let mut raw = empty_len(&chunks[0]);
    for e in &export.endpoints {
        let wire = wire_endpoint(e);
        let size = postcard::to_stdvec(&wire).map_or(0, |b| b.len());
        let last = chunks.last_mut().expect("there is always a chunk");
        if last.endpoints.len() == MAX_ENDPOINTS_PER_CHUNK
            || (!last.endpoints.is_empty() && encoded_len(raw + size) > MAX_VALUE_BYTES)
        {
            let next = WireChunk {
                index: 0,
                count: 0,
                header: None,
                endpoints: Vec::new(),
            };
            raw = empty_len(&next);
            chunks.push(next);
        }
        raw += size;
        chunks.last_mut().expect("just pushed").endpoints.push(wire);
    }
    let count = u16::try_from(chunks.len()).map_err(|_| Rejection::TooLarge)?;
    chunks
        .iter_mut()
        .enumerate()
        .map(|(i, chunk)| {
            chunk.index = i as u16;
            chunk.count = count;
            let value = encode_value(chunk);
            if value.len() > MAX_VALUE_BYTES {
                // A header alone (thousands of ports or addresses) or one endpoint with
                // huge strings: refuse rather than stall replication.
                return Err(Rejection::TooLarge);
            }
            Ok((service_key(&export.key, i as u16), value))
        })
        .collect()
}

/// Every key/value of a cluster's exports, and the services that could not be encoded.
pub fn encode_exports(
    exports: &LocalExports,
) -> (BTreeMap<String, String>, Vec<(ServiceKey, Rejection)>) {
    let mut kvs = BTreeMap::new();
    let mut refused = Vec::new();
    for (key, export) in &exports.services {
        match encode_service(export) {
            Ok(values) => kvs.extend(values),
            Err(reason) => refused.push((key.clone(), reason)),
        }
    }
    (kvs, refused)
}

fn to_export(
    key: ServiceKey,
    header: WireHeader,
    endpoints: Vec<WireEndpoint>,
) -> Option<ServiceExport> {
    let ports = header
        .ports
        .into_iter()
        .map(|(name, port, protocol)| {
            Some(ServicePort {
                name: name.map(|n| PortName::parse(&n)).transpose().ok()?,
                port,
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                    .get(usize::from(protocol))
                    .copied()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let addresses = match header.addresses {
        None => None,
        Some(code) => Some(
            [
                AddressKind::Ingress,
                AddressKind::ClusterIp,
                AddressKind::Endpoints,
                AddressKind::None,
            ]
            .get(usize::from(code))
            .copied()?,
        ),
    };
    let policy = [Policy::LocalPreferred, Policy::All]
        .get(usize::from(header.policy))
        .copied()?;
    let endpoints = endpoints
        .into_iter()
        .map(|e| {
            Some(Endpoint {
                address: e.address,
                hostname: e.hostname.map(|h| HostLabel::parse(&h)).transpose().ok()?,
                pod_name: e.pod.map(|h| HostLabel::parse(&h)).transpose().ok()?,
                ready: e.ready,
                zone: e.zone,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ServiceExport {
        key,
        ports,
        cluster_ips: header.cluster_ips,
        ingress: header.ingress,
        endpoints,
        headless: header.headless,
        addresses,
        policy,
    })
}

/// Decodes a node's keys into a cluster's exports. Keys outside the service namespace
/// are ignored (they belong to other layers: `m:root`, `m:alive`...). Each rejected key
/// or incomplete service is reported once with its reason.
pub fn decode_exports<'a>(
    cluster: &ClusterId,
    kvs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (LocalExports, Vec<(String, Rejection)>) {
    let mut rejected = Vec::new();
    let mut by_service: BTreeMap<ServiceKey, BTreeMap<u16, WireChunk>> = BTreeMap::new();
    for (key, value) in kvs {
        if !key.starts_with(SERVICE_PREFIX) {
            continue;
        }
        let Some((service, index)) = parse_key(key) else {
            rejected.push((key.to_string(), Rejection::Key));
            continue;
        };
        match decode_value(value) {
            Ok(chunk) if chunk.index == index => {
                by_service.entry(service).or_default().insert(index, chunk);
            }
            Ok(_) => rejected.push((key.to_string(), Rejection::Incomplete)),
            Err(reason) => rejected.push((key.to_string(), reason)),
        }
    }
    let mut exports = LocalExports::empty(cluster.clone());
    for (service, mut chunks) in by_service {
        let count = chunks.get(&0).map(|c| c.count).unwrap_or(0);
        let complete = count > 0
            && chunks.len() == usize::from(count)
            && chunks.keys().copied().eq(0..count)
            && chunks.values().all(|c| c.count == count);
        let header = chunks.get_mut(&0).and_then(|c| c.header.take());
        let (true, Some(header)) = (complete, header) else {
            rejected.push((service_key(&service, 0), Rejection::Incomplete));
            continue;
        };
        let endpoints = chunks.into_values().flat_map(|c| c.endpoints).collect();
        match to_export(service.clone(), header, endpoints) {
            Some(export) => {
                exports.services.insert(service, Arc::new(export));
            }
            None => rejected.push((service_key(&service, 0), Rejection::Invalid)),
        }
    }
    (exports, rejected)
}

/// SHA-256 over the sorted (key, SHA-256(value)) pairs of a node's service keys: what a
/// signed root commits to, so a reader can tell it holds exactly the published set.
pub fn digest<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut pairs: Vec<(&str, [u8; 32])> = kvs
        .into_iter()
        .filter(|(k, _)| k.starts_with(SERVICE_PREFIX))
        .map(|(k, v)| (k, Sha256::digest(v.as_bytes()).into()))
        .collect();
    pairs.sort_unstable();
    let mut h = Sha256::new();
    for (k, v) in pairs {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") never hash alike.
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update(v);
    }
    h.finalize().into()
}

/// The key of a node's signed root.
pub const ROOT_KEY: &str = "m:root";

/// What a publisher's root commits to (DESIGN.md §4 "Origin authenticity").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootClaim {
    pub fleet: String,
    pub node_id: String,
    pub generation: u64,
    pub epoch: u64,
    pub seq: u64,
    /// Wall-clock milliseconds of the change, from the publisher's clock: orders
    /// roots of one epoch and starts the propagation-latency measurement.
    pub origin_ms: u64,
    pub key_count: u32,
    pub digest: [u8; 32],
    pub role: RootRole,
    /// The cluster's labels (`<cluster>.fleet TXT`), signed with the rest.
    pub labels: BTreeMap<String, String>,
}

/// What a verified root says about its node's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootRole {
    /// The node publishes its cluster's exports: readers may adopt them.
    Publisher,
    /// A replica that serves and stamps `m:alive` but leaves publishing to a replica
    /// with a lower node id; it holds no service keys and is never adopted. Its root
    /// makes it a replica, so the cluster stays live while any replica is.
    Standby,
    /// `fleetdns leave`: the cluster left the fleet; readers drop it at once.
    Decommissioned,
}

#[derive(Serialize, Deserialize)]
struct SealedRoot {
    claim: Vec<u8>,
    signature: Vec<u8>,
}

/// Why a root is not adopted. Bounded: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RootRejection {
    #[error("undecodable root")]
    Decode,
    #[error("node id is not <cluster>/<replica>")]
    NodeId,
    #[error("certificate not trusted")]
    CertUntrusted,
    #[error("certificate expired or not yet valid")]
    CertExpired,
    #[error("the certificate's cluster is revoked (mesh.revoked_clusters)")]
    CertRevoked,
    #[error("certificate names another cluster than the node id")]
    CertClusterMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("root is for another fleet or node")]
    WrongOrigin,
    #[error("held keys do not hash to the root")]
    Incomplete,
}

impl RootRejection {
    pub const ALL: [Self; 9] = [
        Self::Decode,
        Self::NodeId,
        Self::CertUntrusted,
        Self::CertExpired,
        Self::CertRevoked,
        Self::CertClusterMismatch,
        Self::BadSignature,
        Self::WrongOrigin,
        Self::Incomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::NodeId => "node-id",
            Self::CertUntrusted => "cert-untrusted",
            Self::CertExpired => "cert-expired",
            Self::CertRevoked => "cert-revoked",
            Self::CertClusterMismatch => "cert-cluster-mismatch",
            Self::BadSignature => "bad-signature",
            Self::WrongOrigin => "wrong-origin",
            Self::Incomplete => "incomplete",
        }
    }
}

/// The cluster a node id claims: `<cluster>/<replica>`.
pub fn node_cluster(node_id: &str) -> Option<ClusterId> {
    let (cluster, replica) = node_id.split_once('/')?;
    if replica.is_empty() {
        return None;
    }
    ClusterId::parse(cluster).ok()
}

/// Signs `claim` with the publisher's leaf key: the `m:root` value.
pub fn seal_root(
    claim: &RootClaim,
    key_pem: &str,
) -> Result<String, crate::identity::IdentityError> {
    let claim = postcard::to_stdvec(claim).expect("encoding plain data into a Vec cannot fail");
    let signature = crate::identity::sign(key_pem, &claim)?;
    let sealed = postcard::to_stdvec(&SealedRoot { claim, signature })
        .expect("encoding plain data into a Vec cannot fail");
    let mut out = String::from(SCHEMA);
    URL_SAFE_NO_PAD.encode_string(sealed, &mut out);
    Ok(out)
}

/// The adoption rule: node `node_id`'s keys are cluster C's export only when the id is
/// `C/<replica>`, its certificate chains to the bundle and names C, the root's
/// signature verifies under that certificate, the root is this fleet's and this node's,
/// and the service keys held for the node hash to it (none missing, none extra).
pub fn verify_root<'a>(
    root_value: &str,
    cert_chain_pem: &str,
    trust: &crate::identity::FleetTrust,
    node_id: &str,
    held: impl IntoIterator<Item = (&'a str, &'a str)>,
    unix_now: u64,
) -> Result<VerifiedRoot, RootRejection> {
    use crate::identity::IdentityError;
    let fleet = &trust.fleet;
    let cluster = node_cluster(node_id).ok_or(RootRejection::NodeId)?;
    let peer = trust
        .verify_pem(cert_chain_pem, unix_now)
        .map_err(|e| match e {
            IdentityError::NoClusterName { .. } => RootRejection::CertClusterMismatch,
            IdentityError::Expired(_) => RootRejection::CertExpired,
            IdentityError::Revoked(_) => RootRejection::CertRevoked,
            _ => RootRejection::CertUntrusted,
        })?;
    if peer.cluster != cluster {
        return Err(RootRejection::CertClusterMismatch);
    }
    if root_value.len() > MAX_VALUE_BYTES {
        return Err(RootRejection::Decode);
    }
    let mut chars = root_value.chars();
    if !matches!(chars.next(), Some(SCHEMA | SCHEMA_NEXT)) {
        return Err(RootRejection::Decode);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(chars.as_str())
        .map_err(|_| RootRejection::Decode)?;
    let sealed: SealedRoot = postcard::from_bytes(&bytes).map_err(|_| RootRejection::Decode)?;
    peer.verify_signature(&sealed.claim, &sealed.signature)
        .map_err(|_| RootRejection::BadSignature)?;
    let claim: RootClaim =
        postcard::from_bytes(&sealed.claim).map_err(|_| RootRejection::Decode)?;
    if claim.fleet != fleet.as_str() || claim.node_id != node_id {
        return Err(RootRejection::WrongOrigin);
    }
    let held: Vec<(&str, &str)> = held
        .into_iter()
        .filter(|(k, _)| k.starts_with(SERVICE_PREFIX))
        .collect();
    if held.len() != claim.key_count as usize || digest(held) != claim.digest {
        return Err(RootRejection::Incomplete);
    }
    Ok(VerifiedRoot {
        cluster,
        claim,
        peer,
    })
}

/// A root that passed [`verify_root`], with the certified peer that signed it.
#[derive(Debug, Clone)]
pub struct VerifiedRoot {
    pub cluster: ClusterId,
    pub claim: RootClaim,
    pub peer: crate::identity::VerifiedPeer,
}

/// The key of a node's signed liveness stamp.
pub const ALIVE_KEY: &str = "m:alive";
/// The fleetdns version a node runs (unsigned, for display: `fleetdns query peers`).
pub const VERSION_KEY: &str = "m:version";

#[derive(Serialize, Deserialize)]
struct AliveStamp {
    node_id: String,
    time_ms: u64,
    signature: Vec<u8>,
}

fn alive_message(node_id: &str, time_ms: u64) -> Vec<u8> {
    let mut m = b"fleetdns-alive\0".to_vec();
    m.extend_from_slice(node_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&time_ms.to_be_bytes());
    m
}

/// Signs a liveness stamp: the `m:alive` value. Unlike chitchat's heartbeats, which any
/// peer can relay or raise, only the holder of the node's key can make a fresh one.
pub fn seal_alive(
    node_id: &str,
    time_ms: u64,
    key_pem: &str,
) -> Result<String, crate::identity::IdentityError> {
    let signature = crate::identity::sign(key_pem, &alive_message(node_id, time_ms))?;
    let stamp = AliveStamp {
        node_id: node_id.to_string(),
        time_ms,
        signature,
    };
    let mut out = String::from(SCHEMA);
    URL_SAFE_NO_PAD.encode_string(
        postcard::to_stdvec(&stamp).expect("encoding plain data into a Vec cannot fail"),
        &mut out,
    );
    Ok(out)
}

/// The time of a node's stamp, if `peer` (the node's verified certificate) signed it
/// for this node id; `None` for anything else.
pub fn open_alive(value: &str, node_id: &str, peer: &crate::identity::VerifiedPeer) -> Option<u64> {
    if value.len() > MAX_VALUE_BYTES {
        return None;
    }
    let mut chars = value.chars();
    if !matches!(chars.next(), Some(SCHEMA | SCHEMA_NEXT)) {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(chars.as_str()).ok()?;
    let stamp: AliveStamp = postcard::from_bytes(&bytes).ok()?;
    if stamp.node_id != node_id {
        return None;
    }
    peer.verify_signature(&alive_message(node_id, stamp.time_ms), &stamp.signature)
        .ok()?;
    Some(stamp.time_ms)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn export(name: &str, endpoints: usize, host_len: usize) -> ServiceExport {
        ServiceExport {
            key: ServiceKey {
                namespace: Namespace::parse("shop").unwrap(),
                name: ServiceName::parse(name).unwrap(),
            },
            ports: vec![
                ServicePort {
                    name: Some(PortName::parse("http").unwrap()),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                ServicePort {
                    name: None,
                    port: 53,
                    protocol: Protocol::Udp,
                },
            ],
            cluster_ips: vec!["10.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            ingress: vec!["203.0.113.1".parse().unwrap()],
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    address: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
                    hostname: Some(
                        HostLabel::parse(&format!("h{i:0>width$}", width = host_len)).unwrap(),
                    ),
                    pod_name: None,
                    ready: i % 7 != 0,
                    zone: Some("us-east-1a".into()),
                })
                .collect(),
            headless: endpoints > 0,
            addresses: Some(AddressKind::Endpoints),
            policy: Policy::All,
        }
    }

    fn exports_of(list: Vec<ServiceExport>) -> LocalExports {
        let mut e = LocalExports::empty(ClusterId::parse("east").unwrap());
        for s in list {
            e.services.insert(s.key.clone(), Arc::new(s));
        }
        e
    }

    fn roundtrip(exports: &LocalExports) -> (LocalExports, Vec<(String, Rejection)>) {
        let (kvs, refused) = encode_exports(exports);
        assert!(refused.is_empty(), "{refused:?}");
        decode_exports(
            &exports.cluster,
            kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    #[test]
    fn exports_round_trip_and_big_ones_are_chunked_under_the_limits() {
        let exports = exports_of(vec![
            export("web", 0, 1),
            export("db", 250, 4),
            export("wide", 90, 60),
        ]);
        let (kvs, _) = encode_exports(&exports);
        assert!(kvs.values().all(|v| v.len() <= MAX_VALUE_BYTES));
        let db_chunks = kvs.keys().filter(|k| k.starts_with("s:shop/db/")).count();
        assert_eq!(db_chunks, 3, "250 endpoints make 3 chunks of at most 100");
        let wide_chunks = kvs.keys().filter(|k| k.starts_with("s:shop/wide/")).count();
        assert!(wide_chunks > 1, "long hostnames split by size");
        let (decoded, rejected) = roundtrip(&exports);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(decoded, exports);
    }

    #[test]
    fn a_service_with_a_missing_chunk_is_not_decoded() {
        let exports = exports_of(vec![export("db", 250, 4), export("web", 1, 1)]);
        let (mut kvs, _) = encode_exports(&exports);
        kvs.remove("s:shop/db/1");
        let (decoded, rejected) = decode_exports(
            &exports.cluster,
            kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        assert_eq!(decoded.services.len(), 1, "web only");
        assert_eq!(
            rejected,
            vec![("s:shop/db/0".to_string(), Rejection::Incomplete)]
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_reason_and_other_layers_ignored() {
        let cluster = ClusterId::parse("east").unwrap();
        let good = encode_service(&export("web", 2, 1)).unwrap();
        let big = format!("1{}", "A".repeat(MAX_VALUE_BYTES));
        let cases: Vec<(&str, String, Rejection)> = vec![
            ("s:shop/web/0", "9AAAA".into(), Rejection::Schema),
            ("s:shop/web/0", "1***".into(), Rejection::Base64),
            ("s:shop/web/0", "1AAAA".into(), Rejection::Decode),
            ("s:shop/web/0", big, Rejection::TooLarge),
            ("s:Shop/web/0", good[0].1.clone(), Rejection::Key),
            ("s:shop/web", good[0].1.clone(), Rejection::Key),
            ("s:shop/web/7", good[0].1.clone(), Rejection::Incomplete),
        ];
        for (key, value, reason) in cases {
            let kvs = [(key, value.as_str()), ("m:root", "whatever")];
            let (decoded, rejected) = decode_exports(&cluster, kvs);
            assert!(decoded.services.is_empty(), "{key}");
            assert_eq!(
                rejected,
                vec![(key.to_string(), reason)],
                "{key} {value:.20}"
            );
        }
    }

    #[test]
    fn the_next_schema_version_is_read() {
        let (key, value) = encode_service(&export("web", 1, 1)).unwrap().remove(0);
        let next = format!("2{}", &value[1..]);
        let (decoded, rejected) = decode_exports(
            &ClusterId::parse("east").unwrap(),
            [(key.as_str(), next.as_str())],
        );
        assert!(rejected.is_empty());
        assert_eq!(decoded.services.len(), 1);
    }

    #[test]
    fn digest_covers_exactly_the_service_keys() {
        let (kvs, _) = encode_exports(&exports_of(vec![export("web", 3, 1), export("db", 120, 2)]));
        let d = digest(kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let with_other = kvs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("m:alive", "x")]);
        assert_eq!(digest(with_other), d, "other layers' keys do not count");
        let mut changed = kvs.clone();
        changed.insert(
            "s:shop/web/0".into(),
            encode_service(&export("web", 4, 1)).unwrap().remove(0).1,
        );
        assert_ne!(
            digest(changed.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            d
        );
        let mut fewer = kvs.clone();
        fewer.remove("s:shop/db/1");
        assert_ne!(
            digest(fewer.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            d
        );
    }

    /// The adoption rule, case by case: what a reader does with each kind of root.
    #[test]
    fn roots_are_adopted_only_from_their_own_cluster_and_complete() {
        use crate::identity::{FleetName, FleetTrust, issue_leaf, new_ca};
        const NOW: u64 = 1_795_000_000;
        let fleet = FleetName::parse("prod").unwrap();
        let ca = new_ca(&fleet, NOW, 3650).unwrap();
        let east = ClusterId::parse("east").unwrap();
        let west = ClusterId::parse("west").unwrap();
        let east_leaf = issue_leaf(&ca, &fleet, &east, NOW, 365).unwrap();
        let west_leaf = issue_leaf(&ca, &fleet, &west, NOW, 365).unwrap();
        let bundle = vec![ca.cert_pem.clone()];
        let exports = exports_of(vec![export("web", 3, 1), export("db", 150, 2)]);
        let (kvs, _) = encode_exports(&exports);
        let held = || kvs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let claim = |node: &str| RootClaim {
            fleet: "prod".into(),
            node_id: node.into(),
            generation: 1,
            epoch: 1,
            seq: 7,
            origin_ms: NOW * 1000,
            key_count: kvs.len() as u32,
            digest: digest(held()),
            role: RootRole::Publisher,
            labels: BTreeMap::new(),
        };
        let verify = |root: &str, chain: &str, node: &str, held: Vec<(&str, &str)>| {
            let trust = FleetTrust::new(fleet.clone(), &bundle).unwrap();
            verify_root(root, chain, &trust, node, held, NOW + 10)
        };

        let root = seal_root(&claim("east/0"), &east_leaf.key_pem).unwrap();
        let adopted = verify(&root, &east_leaf.cert_pem, "east/0", held().collect()).unwrap();
        assert_eq!(
            (adopted.cluster.clone(), adopted.claim.seq),
            (east.clone(), 7)
        );

        // Alive stamps: only the node's own key makes one that opens.
        let stamp = seal_alive("east/0", 123_456, &east_leaf.key_pem).unwrap();
        assert_eq!(open_alive(&stamp, "east/0", &adopted.peer), Some(123_456));
        assert_eq!(
            open_alive(&stamp, "east/1", &adopted.peer),
            None,
            "another node id"
        );
        let forged = seal_alive("east/0", 999_999, &west_leaf.key_pem).unwrap();
        assert_eq!(
            open_alive(&forged, "east/0", &adopted.peer),
            None,
            "west's key"
        );
        assert_eq!(open_alive("garbage", "east/0", &adopted.peer), None);

        // west's key and certificate writing under east/*: never east's.
        let forged = seal_root(&claim("east/0"), &west_leaf.key_pem).unwrap();
        assert_eq!(
            verify(&forged, &west_leaf.cert_pem, "east/0", held().collect()).unwrap_err(),
            RootRejection::CertClusterMismatch
        );
        // Presenting east's certificate does not help without east's key.
        assert_eq!(
            verify(&forged, &east_leaf.cert_pem, "east/0", held().collect()).unwrap_err(),
            RootRejection::BadSignature
        );
        // A root replayed under another node id of the cluster.
        assert_eq!(
            verify(&root, &east_leaf.cert_pem, "east/1", held().collect()).unwrap_err(),
            RootRejection::WrongOrigin
        );
        // Half-received keys: a chunk missing, or one extra value planted.
        let mut partial: Vec<_> = held().collect();
        partial.pop();
        assert_eq!(
            verify(&root, &east_leaf.cert_pem, "east/0", partial).unwrap_err(),
            RootRejection::Incomplete
        );
        let extra_value = encode_service(&export("evil", 1, 1)).unwrap().remove(0);
        let mut planted: Vec<_> = held().collect();
        planted.push((extra_value.0.as_str(), extra_value.1.as_str()));
        assert_eq!(
            verify(&root, &east_leaf.cert_pem, "east/0", planted).unwrap_err(),
            RootRejection::Incomplete
        );
        // A certificate from another CA, a bad node id, garbage.
        let foreign = new_ca(&fleet, NOW, 3650).unwrap();
        let foreign_leaf = issue_leaf(&foreign, &fleet, &east, NOW, 365).unwrap();
        assert_eq!(
            verify(&root, &foreign_leaf.cert_pem, "east/0", held().collect()).unwrap_err(),
            RootRejection::CertUntrusted
        );
        assert_eq!(
            verify(&root, &east_leaf.cert_pem, "east", held().collect()).unwrap_err(),
            RootRejection::NodeId
        );
        assert_eq!(
            verify("1***", &east_leaf.cert_pem, "east/0", held().collect()).unwrap_err(),
            RootRejection::Decode
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Arbitrary strings from a peer never panic the decoder.
        #[test]
        fn arbitrary_values_never_panic(key in "s:[a-z/0-9]{0,20}", value in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let cluster = ClusterId::parse("east").unwrap();
            let b64 = format!("1{}", URL_SAFE_NO_PAD.encode(&bytes));
            let _ = decode_exports(&cluster, [(key.as_str(), value.as_str()), ("s:shop/web/0", b64.as_str())]);
        }

        /// Any export shape round-trips, every value within the limits.
        #[test]
        fn exports_round_trip(endpoints in 0usize..400, host_len in 1usize..60) {
            let exports = exports_of(vec![export("svc", endpoints, host_len)]);
            let (kvs, _) = encode_exports(&exports);
            prop_assert!(kvs.values().all(|v| v.len() <= MAX_VALUE_BYTES));
            let (decoded, rejected) = roundtrip(&exports);
            prop_assert!(rejected.is_empty());
            prop_assert_eq!(decoded, exports);
        }
    }
}

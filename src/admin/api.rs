//! The `/v1` response documents and how each is read off one [`Snapshot`].
//!
//! This module owns the admin API's JSON shapes (`openapi.yaml` describes the same
//! ones; `fleetdns query` deserializes them) and the pure functions that fill them.
//! Every document carries the snapshot's `generation`, so an operator can tell that a
//! DNS answer and an explanation came from the same view. Nothing here decides what
//! is served: the view and the answer index already did; this only reports it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, Record, RecordType};
use serde::{Deserialize, Serialize};

use crate::dns::index::{ReplySettings, Transport};
use crate::dns::names::{FleetName, Tree};
use crate::model::{AddressKind, ClusterId, ServiceKey};
use crate::snapshot::Snapshot;
use crate::status::Role;
use crate::view::{ClusterState, ClusterView, Refusal, Served, ServedService};

/// `GET /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClustersDoc {
    pub generation: u64,
    pub local: String,
    pub clusters: Vec<ClusterDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterDoc {
    pub id: String,
    pub local: bool,
    pub labels: BTreeMap<String, String>,
    pub state: ClusterState,
    /// Wall-clock ms of the last state change this peer saw, if any.
    pub state_since_ms: Option<u64>,
    pub replicas: Vec<ReplicaDoc>,
    /// The adopted root (other clusters only).
    pub root: Option<RootDoc>,
    pub services: usize,
    /// Seconds since the served export was published (other clusters only).
    pub last_update_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDoc {
    pub node_id: String,
    /// The mesh's failure detector counts it alive. (The cluster's `state` is decided
    /// by its replicas' signed stamps, so it may turn unreachable a moment before
    /// this turns false.)
    pub live: bool,
    pub role: Option<Role>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootDoc {
    pub node_id: String,
    pub epoch: u64,
    pub seq: u64,
    pub origin_ms: u64,
    pub adopted_ms: u64,
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersDoc {
    pub generation: u64,
    /// This peer's node id; `None` for a static fleet (no mesh).
    pub self_node: Option<String>,
    pub peers: Vec<PeerDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerDoc {
    pub node_id: String,
    pub generation: u64,
    pub address: SocketAddr,
    pub live: bool,
    pub cluster: Option<String>,
    pub role: Option<Role>,
    pub version: Option<String>,
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesDoc {
    pub generation: u64,
    pub services: Vec<ServiceDoc>,
}

/// One service across the fleet (`GET /v1/services/{ns}/{name}` returns it with the
/// generation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDoc {
    pub namespace: String,
    pub name: String,
    /// The merged `<svc>.<ns>.svc` name: `None` when no cluster gives it names.
    pub merged: Option<MergedDoc>,
    pub clusters: Vec<ServiceInClusterDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOneDoc {
    pub generation: u64,
    #[serde(flatten)]
    pub service: ServiceDoc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedDoc {
    pub policy: String,
    pub contributing: Vec<String>,
    pub chosen: Vec<String>,
    /// No live cluster contributes: the chosen clusters are unreachable ones.
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInClusterDoc {
    pub cluster: String,
    pub state: ClusterState,
    /// Answers for it are stale (the cluster is unreachable).
    pub stale: bool,
    /// `clusterip`, `ingress`, `endpoints`, or `none` when nothing is served.
    pub mode: String,
    /// The addresses its names answer here.
    pub served: Vec<IpAddr>,
    /// Why nothing is served (when `mode` is `none`).
    pub reason: Option<Refusal>,
    /// Addresses of the chosen kind that are not served, and why.
    pub refused: Vec<RefusedDoc>,
    pub cluster_ips: Vec<IpAddr>,
    pub ingress: Vec<IpAddr>,
    pub endpoints: Vec<EndpointDoc>,
    pub headless: bool,
    pub ports: Vec<PortDoc>,
    pub ready: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedDoc {
    pub address: IpAddr,
    pub reason: Refusal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointDoc {
    pub address: IpAddr,
    pub label: String,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortDoc {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
}

/// `GET /v1/resolve`: the DNS server's exact answer and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolveDoc {
    pub generation: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub qtype: String,
    pub rcode: String,
    pub flags: FlagsDoc,
    pub answer: Vec<RecordDoc>,
    pub authority: Vec<RecordDoc>,
    pub additional: Vec<RecordDoc>,
    pub ede: Vec<EdeDoc>,
    /// Over UDP with a 1232-octet EDNS buffer the answer is truncated (TC): clients
    /// retry over TCP. The records above are the full (TCP) answer.
    pub udp_truncated: bool,
    pub explanation: Explanation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagsDoc {
    pub aa: bool,
    pub tc: bool,
    pub rd: bool,
    pub ra: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdeDoc {
    pub code: u16,
    pub text: String,
}

/// Why a name answers the way it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// What kind of name it is: `out-of-zone`, `apex`, `ns`, `dns-version`,
    /// `cluster`, `merged-service`, `cluster-service`, `endpoint`, `merged-srv`,
    /// `cluster-srv`, or `not-a-fleet-name`.
    pub kind: String,
    /// One sentence per fact, for people.
    pub reasons: Vec<String>,
    /// For merged names: the service's policy.
    pub policy: Option<String>,
    /// Clusters whose addresses are in the answer.
    pub contributed: Vec<String>,
    /// Clusters that export the service but are not in the answer, and why.
    pub skipped: Vec<SkippedDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedDoc {
    pub cluster: String,
    /// Bounded reason: a [`Refusal`] code, `not-live` (the cluster's state), or
    /// `not-chosen` (the policy preferred others), or `no-ready-endpoint`.
    pub reason: String,
}

/// An error document (`{"error": "..."}`) for every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDoc {
    pub error: String,
}

/// Reads `/v1/clusters` off a snapshot; `now_ms` only ages the roots.
pub fn clusters(snap: &Snapshot, now_ms: u64) -> ClustersDoc {
    let view = &snap.view;
    let status = &snap.status;
    let clusters = view
        .clusters
        .values()
        .map(|c| {
            let mesh = status.clusters.get(&c.id);
            let replicas = mesh
                .map(|m| {
                    m.replicas
                        .iter()
                        .map(|node| replica(status, node))
                        .collect()
                })
                .unwrap_or_default();
            let root = mesh.and_then(|m| m.root.as_ref()).map(|r| RootDoc {
                node_id: r.node_id.clone(),
                epoch: r.epoch,
                seq: r.seq,
                origin_ms: r.origin_ms,
                adopted_ms: r.adopted_ms,
            });
            let age = root
                .as_ref()
                .map(|r| now_ms.saturating_sub(r.origin_ms) as f64 / 1000.0);
            ClusterDoc {
                id: c.id.to_string(),
                local: c.id == view.local,
                labels: c.labels.clone(),
                state: c.state,
                state_since_ms: mesh.and_then(|m| m.state_since_ms),
                replicas,
                root,
                services: c.services.len(),
                last_update_age_seconds: age,
            }
        })
        .collect();
    ClustersDoc {
        generation: snap.generation,
        local: view.local.to_string(),
        clusters,
    }
}

/// A replica as `/v1/clusters` shows it: its newest generation decides.
fn replica(status: &crate::status::MeshStatus, node: &str) -> ReplicaDoc {
    let member = status
        .members
        .iter()
        .filter(|m| m.node_id == node)
        .max_by_key(|m| m.generation);
    ReplicaDoc {
        node_id: node.to_string(),
        live: member.is_some_and(|m| m.live),
        role: member.and_then(|m| m.role),
        version: member.and_then(|m| m.version.clone()),
    }
}

/// Reads `/v1/peers` off a snapshot.
pub fn peers(snap: &Snapshot) -> PeersDoc {
    PeersDoc {
        generation: snap.generation,
        self_node: snap.status.self_node.clone(),
        peers: snap
            .status
            .members
            .iter()
            .map(|m| PeerDoc {
                node_id: m.node_id.clone(),
                generation: m.generation,
                address: m.address,
                live: m.live,
                cluster: m.cluster.as_ref().map(ToString::to_string),
                role: m.role,
                version: m.version.clone(),
            })
            .collect(),
    }
}

/// Reads `/v1/services`, filtered by namespace and cluster when given.
pub fn services(snap: &Snapshot, namespace: Option<&str>, cluster: Option<&str>) -> ServicesDoc {
    let mut keys: Vec<&ServiceKey> = snap
        .view
        .clusters
        .values()
        .filter(|c| cluster.is_none_or(|want| c.id.as_str() == want))
        .flat_map(|c| c.services.keys())
        .filter(|k| namespace.is_none_or(|want| k.namespace.as_str() == want))
        .collect();
    keys.sort();
    keys.dedup();
    ServicesDoc {
        generation: snap.generation,
        services: keys
            .into_iter()
            .map(|k| service_doc(snap, k, cluster))
            .collect(),
    }
}

/// Reads `/v1/services/{ns}/{name}`; `None` when no cluster exports it.
pub fn service(snap: &Snapshot, key: &ServiceKey) -> Option<ServiceOneDoc> {
    let exported = snap
        .view
        .clusters
        .values()
        .any(|c| c.services.contains_key(key));
    exported.then(|| ServiceOneDoc {
        generation: snap.generation,
        service: service_doc(snap, key, None),
    })
}

fn service_doc(snap: &Snapshot, key: &ServiceKey, cluster: Option<&str>) -> ServiceDoc {
    let merged = snap.view.merged.get(key).map(|m| MergedDoc {
        policy: m.policy.as_str().to_string(),
        contributing: m.contributing.iter().map(ToString::to_string).collect(),
        chosen: m.chosen.iter().map(ToString::to_string).collect(),
        stale: m.stale,
    });
    let clusters = snap
        .view
        .clusters
        .values()
        .filter(|c| cluster.is_none_or(|want| c.id.as_str() == want))
        .filter_map(|c| Some(in_cluster(c, c.services.get(key)?)))
        .collect();
    ServiceDoc {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        merged,
        clusters,
    }
}

fn in_cluster(cluster: &ClusterView, served: &ServedService) -> ServiceInClusterDoc {
    let export = &served.export;
    let (mode, reason) = match &served.served {
        Served::Vip { kind, .. } => (kind.as_str().to_string(), None),
        Served::Endpoints { .. } => (AddressKind::Endpoints.as_str().to_string(), None),
        Served::Nothing { reason } => ("none".to_string(), Some(*reason)),
    };
    ServiceInClusterDoc {
        cluster: cluster.id.to_string(),
        state: cluster.state,
        stale: cluster.state == ClusterState::Unreachable,
        mode,
        served: served.addresses(),
        reason,
        refused: served
            .refused
            .iter()
            .map(|(address, reason)| RefusedDoc {
                address: *address,
                reason: *reason,
            })
            .collect(),
        cluster_ips: export.cluster_ips.clone(),
        ingress: export.ingress.clone(),
        endpoints: export
            .endpoints
            .iter()
            .map(|e| EndpointDoc {
                address: e.address,
                label: e.label().to_string(),
                ready: e.ready,
            })
            .collect(),
        headless: export.headless,
        ports: export
            .ports
            .iter()
            .map(|p| PortDoc {
                name: p.name.as_ref().map(ToString::to_string),
                port: p.port,
                protocol: p.protocol.srv_label().to_string(),
            })
            .collect(),
        ready: export.ready_count(),
    }
}

/// Why `/v1/resolve` refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("name {0:?} is not a domain name: {1}")]
    BadName(String, String),
    #[error("type {0:?} is not a DNS record type such as A, AAAA, SRV or TXT")]
    BadType(String),
    #[error("name is required")]
    NoName,
    /// A reply this server wrote could not be read back: a bug, not bad input.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Answers `name`/`qtype` exactly as the DNS server does from this snapshot (the
/// same index, the same reply writer), decodes the reply, and explains it.
pub fn resolve(
    snap: &Snapshot,
    settings: ReplySettings,
    name: &str,
    qtype: &str,
) -> Result<ResolveDoc, ResolveError> {
    if name.is_empty() {
        return Err(ResolveError::NoName);
    }
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let qname = Name::from_ascii(&fqdn)
        .map_err(|e| ResolveError::BadName(name.to_string(), e.to_string()))?;
    let rtype: RecordType = qtype
        .to_ascii_uppercase()
        .parse()
        .ok()
        .filter(|t| !matches!(t, RecordType::Unknown(_)))
        .ok_or_else(|| ResolveError::BadType(qtype.to_string()))?;

    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(qname.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    let packet = query
        .to_vec()
        .map_err(|e| ResolveError::Internal(format!("encoding the query: {e}")))?;

    let mut reply = Vec::new();
    let readiness = snap.readiness;
    snap.index
        .respond(readiness, settings, &packet, Transport::Udp, &mut reply);
    let udp_truncated = reply.len() > 2 && reply[2] & 0x02 != 0;
    snap.index
        .respond(readiness, settings, &packet, Transport::Tcp, &mut reply);
    // Our own writer produced it; a decode failure would be a bug worth showing.
    let message = Message::from_vec(&reply)
        .map_err(|e| ResolveError::Internal(format!("reading our own reply: {e}")))?;

    let records = |rs: &[Record]| rs.iter().map(record_doc).collect::<Vec<_>>();
    Ok(ResolveDoc {
        generation: snap.generation,
        name: qname.to_ascii().to_ascii_lowercase(),
        qtype: rtype.to_string(),
        rcode: crate::metrics::rcode_label(u16::from(message.metadata.response_code)).to_string(),
        flags: FlagsDoc {
            aa: message.metadata.authoritative,
            tc: message.metadata.truncation,
            rd: message.metadata.recursion_desired,
            ra: message.metadata.recursion_available,
        },
        answer: records(&message.answers),
        authority: records(&message.authorities),
        additional: records(&message.additionals),
        ede: ede(&message),
        udp_truncated,
        explanation: explain(snap, &qname),
    })
}

fn record_doc(r: &Record) -> RecordDoc {
    RecordDoc {
        name: r.name.to_ascii(),
        rtype: r.record_type().to_string(),
        ttl: r.ttl,
        data: r.data.to_string(),
    }
}

/// Extended DNS errors (RFC 8914, option 15) in the reply's OPT record.
fn ede(message: &Message) -> Vec<EdeDoc> {
    let Some(edns) = message.edns.as_ref() else {
        return Vec::new();
    };
    edns.options()
        .as_ref()
        .iter()
        .filter_map(|(code, option)| match option {
            EdnsOption::Unknown(_, data) if u16::from(*code) == 15 && data.len() >= 2 => {
                Some(EdeDoc {
                    code: u16::from_be_bytes([data[0], data[1]]),
                    text: String::from_utf8_lossy(&data[2..]).into_owned(),
                })
            }
            _ => None,
        })
        .collect()
}

/// Why `qname` answers as it does, from the view the answer was built from.
pub fn explain(snap: &Snapshot, qname: &Name) -> Explanation {
    let mut out = Explanation {
        kind: String::new(),
        reasons: Vec::new(),
        policy: None,
        contributed: Vec::new(),
        skipped: Vec::new(),
    };
    let apex = snap.index.apex_labels();
    let lower = qname.to_lowercase();
    let labels: Vec<String> = lower
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    if labels.len() < apex.len() || labels[labels.len() - apex.len()..] != apex[..] {
        out.kind = "out-of-zone".into();
        out.reasons.push(format!(
            "not under the zone {}.: refused, this server is authoritative for its zone only",
            apex.join(".")
        ));
        return out;
    }
    let under: Vec<&str> = labels[..labels.len() - apex.len()]
        .iter()
        .map(String::as_str)
        .collect();
    let view = &snap.view;
    match FleetName::parse(&under) {
        None => {
            out.kind = "not-a-fleet-name".into();
            out.reasons.push(
                "no name of this shape exists in the zone (DESIGN: service, cluster, endpoint \
                 and SRV names only)"
                    .into(),
            );
        }
        Some(FleetName::Apex) => out.kind = "apex".into(),
        Some(FleetName::Ns) => {
            out.kind = "ns".into();
            out.reasons
                .push("the address this peer advertises for its DNS (dns.advertise)".into());
        }
        Some(FleetName::DnsVersion) => out.kind = "dns-version".into(),
        Some(FleetName::Cluster(id)) => {
            out.kind = "cluster".into();
            cluster_reason(&mut out, view.clusters.get(&id), &id);
        }
        Some(FleetName::Service { tree, key }) => {
            explain_service(&mut out, snap, tree, &key, false)
        }
        Some(FleetName::Srv { tree, key, .. }) => explain_service(&mut out, snap, tree, &key, true),
        Some(FleetName::Endpoint { cluster, key, host }) => {
            out.kind = "endpoint".into();
            explain_in_cluster(&mut out, view.clusters.get(&cluster), &cluster, &key);
            out.reasons.push(format!(
                "the endpoint label {host} names the ready endpoints that share it"
            ));
        }
    }
    out
}

/// A service name or its SRV names, merged or per cluster.
fn explain_service(
    out: &mut Explanation,
    snap: &Snapshot,
    tree: Tree,
    key: &ServiceKey,
    srv: bool,
) {
    match tree {
        Tree::Merged => {
            out.kind = if srv { "merged-srv" } else { "merged-service" }.into();
            explain_merged(out, snap, key);
        }
        Tree::Cluster(id) => {
            out.kind = if srv {
                "cluster-srv"
            } else {
                "cluster-service"
            }
            .into();
            explain_in_cluster(out, snap.view.clusters.get(&id), &id, key);
        }
    }
}

fn cluster_reason(out: &mut Explanation, cluster: Option<&ClusterView>, id: &ClusterId) {
    match cluster {
        None => out
            .reasons
            .push(format!("cluster {id} is not in this peer's fleet view")),
        Some(c) => out
            .reasons
            .push(format!("cluster {id} is {}", state_sentence(c.state))),
    }
}

fn state_sentence(state: ClusterState) -> &'static str {
    match state {
        ClusterState::Live => "live",
        ClusterState::Unreachable => {
            "unreachable: its last export is served as stale data (EDE 3, short TTL)"
        }
        ClusterState::Withdrawn => {
            "withdrawn (unreachable longer than mesh.max_stale): its names answer SERVFAIL with EDE 22"
        }
        ClusterState::Pending => {
            "pending (its export is still arriving): its names answer SERVFAIL with EDE 14"
        }
    }
}

fn explain_in_cluster(
    out: &mut Explanation,
    cluster: Option<&ClusterView>,
    id: &ClusterId,
    key: &ServiceKey,
) {
    cluster_reason(out, cluster, id);
    let Some(served) = cluster.and_then(|c| c.services.get(key)) else {
        if cluster.is_some() {
            out.reasons
                .push(format!("cluster {id} does not export {key}"));
        }
        return;
    };
    match &served.served {
        Served::Nothing { reason } => {
            out.skipped.push(SkippedDoc {
                cluster: id.to_string(),
                reason: reason.as_str().to_string(),
            });
            out.reasons.push(format!(
                "{key} in {id} has no names here: {}",
                reason.as_str()
            ));
        }
        Served::Vip { kind, addresses } => {
            out.contributed.push(id.to_string());
            out.reasons.push(format!(
                "{key} in {id} answers its {} addresses {addresses:?}",
                kind.as_str()
            ));
        }
        Served::Endpoints { endpoints } => {
            out.contributed.push(id.to_string());
            out.reasons.push(format!(
                "{key} in {id} answers its {} ready endpoint names",
                endpoints.len()
            ));
        }
    }
    for (address, reason) in &served.refused {
        out.reasons.push(format!(
            "address {address} is not served: {}",
            reason.as_str()
        ));
    }
}

fn explain_merged(out: &mut Explanation, snap: &Snapshot, key: &ServiceKey) {
    let view = &snap.view;
    let merged = view.merged.get(key);
    if let Some(m) = merged {
        out.policy = Some(m.policy.as_str().to_string());
        out.contributed = m.chosen.iter().map(ToString::to_string).collect();
        out.reasons.push(format!(
            "policy {}: clusters {:?} contribute, {:?} chosen",
            m.policy.as_str(),
            m.contributing
                .iter()
                .map(ClusterId::as_str)
                .collect::<Vec<_>>(),
            m.chosen.iter().map(ClusterId::as_str).collect::<Vec<_>>()
        ));
        if m.stale {
            out.reasons.push(
                "no live cluster contributes: the answer is unreachable clusters' last export (stale)"
                    .into(),
            );
        }
    } else {
        out.reasons
            .push(format!("no cluster gives {key} a merged name"));
    }
    for cluster in view.clusters.values() {
        let Some(served) = cluster.services.get(key) else {
            continue;
        };
        if out.contributed.iter().any(|c| c == cluster.id.as_str()) {
            continue;
        }
        let reason = match (&served.served, cluster.state) {
            (Served::Nothing { reason }, _) => reason.as_str().to_string(),
            (_, ClusterState::Withdrawn | ClusterState::Pending) => "not-live".into(),
            (_, ClusterState::Unreachable) if !merged.is_some_and(|m| m.stale) => "not-live".into(),
            _ if served.export.ready_count() == 0 => "no-ready-endpoint".into(),
            _ => "not-chosen".into(),
        };
        out.skipped.push(SkippedDoc {
            cluster: cluster.id.to_string(),
            reason,
        });
    }
}

//! The fleet view: every cluster's exports merged, as this peer may serve them.
//!
//! This module owns the pure decisions between "what clusters export" and "what names
//! exist": which address kind this peer serves for each export (DESIGN.md §5), which
//! addresses it must refuse and why, which clusters contribute to a merged name, and
//! which of them the service's policy chooses (DESIGN.md §1). The DNS index and the
//! admin API both read a `FleetView`; neither decides any of this again.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::NetworkConfig;
use crate::model::{
    AddressKind, ClusterId, HostLabel, LocalExports, Policy, ServiceExport, ServiceKey,
};

/// A cluster's liveness as this peer sees it (DESIGN.md §4 "Cluster states"). A static
/// fleet's clusters are always live; the mesh decides the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Live,
    /// No replica is live, for less than `max_stale`: its last export still answers,
    /// as stale data (TTL ≤ 5 s, EDE 3), and merged names use it only when no live
    /// cluster can answer.
    Unreachable,
    /// Unreachable for more than `max_stale`: its names answer SERVFAIL with EDE 22,
    /// never NXDOMAIN, and it contributes to no merged name.
    Withdrawn,
    /// Live nodes of it hold a root but none has been adopted yet (its keys are still
    /// arriving, or its roots do not verify): its names answer SERVFAIL with EDE 14
    /// "Not Ready", never a false NXDOMAIN. Its input carries no exports.
    Pending,
}

impl ClusterState {
    pub const ALL: [Self; 4] = [
        Self::Live,
        Self::Unreachable,
        Self::Withdrawn,
        Self::Pending,
    ];

    /// The name the admin API, the CLI and the metric labels use (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Unreachable => "unreachable",
            Self::Withdrawn => "withdrawn",
            Self::Pending => "pending",
        }
    }

    /// Whether the cluster's names are in the zone (possibly as stale data).
    pub fn has_names(self) -> bool {
        matches!(self, Self::Live | Self::Unreachable)
    }

    /// The EDE code of the SERVFAIL that answers everything under a cluster without
    /// names.
    pub fn unavailable_ede(self) -> Option<u16> {
        match self {
            Self::Live | Self::Unreachable => None,
            Self::Withdrawn => Some(crate::dns::wire::ede::NO_REACHABLE_AUTHORITY),
            Self::Pending => Some(crate::dns::wire::ede::NOT_READY),
        }
    }
}

/// One cluster's input to the view.
#[derive(Debug, Clone)]
pub struct ClusterInput {
    pub exports: Arc<LocalExports>,
    pub state: ClusterState,
}

/// Why an address or a whole export is not served here. Bounded: these are metric labels.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Another cluster's address inside this peer's own service or pod CIDRs.
    AddressOverlap,
    /// ClusterIP or endpoint addresses of another cluster without `network.connected`.
    NotConnected,
    /// No ingress address (e.g. a pending LoadBalancer).
    NoIngress,
    /// The export has no address of the kind this peer serves.
    NoAddress,
    /// A headless export with no ready endpoint.
    NoReadyEndpoint,
    /// `addresses: none`.
    AddressesNone,
}

impl Refusal {
    pub const ALL: [Self; 6] = [
        Self::AddressOverlap,
        Self::NotConnected,
        Self::NoIngress,
        Self::NoAddress,
        Self::NoReadyEndpoint,
        Self::AddressesNone,
    ];

    /// The metric label and admin API code (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddressOverlap => "address-overlap",
            Self::NotConnected => "not-connected",
            Self::NoIngress => "no-ingress",
            Self::NoAddress => "no-address",
            Self::NoReadyEndpoint => "no-ready-endpoint",
            Self::AddressesNone => "addresses-none",
        }
    }
}

/// One per-endpoint name: the endpoints sharing a label are one name with several
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServedEndpoint {
    pub label: HostLabel,
    pub addresses: Vec<IpAddr>,
}

/// What this peer serves for one export.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Served {
    /// A virtual address set (ClusterIP or ingress): the service name answers them.
    Vip {
        kind: AddressKind,
        addresses: Vec<IpAddr>,
    },
    /// Ready endpoints: the service name answers all of them, and each has its own name.
    Endpoints { endpoints: Vec<ServedEndpoint> },
    /// Nothing: the export has no names here.
    Nothing { reason: Refusal },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServedService {
    pub export: Arc<ServiceExport>,
    pub served: Served,
    /// Addresses of the chosen kind that were refused, with the reason.
    pub refused: Vec<(IpAddr, Refusal)>,
}

impl ServedService {
    /// Every address the service name answers here, in export order.
    pub fn addresses(&self) -> Vec<IpAddr> {
        match &self.served {
            Served::Vip { addresses, .. } => addresses.clone(),
            Served::Endpoints { endpoints } => endpoints
                .iter()
                .flat_map(|e| e.addresses.iter().copied())
                .collect(),
            Served::Nothing { .. } => Vec::new(),
        }
    }

    pub fn has_names(&self) -> bool {
        !matches!(self.served, Served::Nothing { .. })
    }

    /// Contributes to the merged name: servable addresses and at least one ready endpoint.
    pub fn contributes(&self) -> bool {
        self.has_names() && self.export.ready_count() > 0
    }
}

/// Persistent (structurally shared) ordered map: one change copies a path, not the map,
/// so every snapshot can keep its own view cheaply.
pub type SharedMap<K, V> = imbl::OrdMap<K, V>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterView {
    pub id: ClusterId,
    pub labels: BTreeMap<String, String>,
    pub state: ClusterState,
    pub services: SharedMap<ServiceKey, Arc<ServedService>>,
}

/// The merged `<svc>.<ns>.svc` name of one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergedService {
    pub policy: Policy,
    /// Clusters that contribute (live, servable addresses, ≥ 1 ready endpoint).
    pub contributing: Vec<ClusterId>,
    /// The policy's choice among them, local cluster first.
    pub chosen: Vec<ClusterId>,
    /// No live cluster contributes: `chosen` are unreachable clusters' last exports.
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetView {
    pub local: ClusterId,
    pub clusters: BTreeMap<ClusterId, ClusterView>,
    pub merged: SharedMap<ServiceKey, Arc<MergedService>>,
}

impl FleetView {
    /// An empty view as seen from `local`.
    pub fn empty(local: &ClusterId) -> Self {
        Self {
            local: local.clone(),
            clusters: BTreeMap::new(),
            merged: SharedMap::new(),
        }
    }

    /// Merges every cluster's exports as seen from `local`.
    pub fn build(
        local: &ClusterId,
        network: &NetworkConfig,
        inputs: &BTreeMap<ClusterId, ClusterInput>,
    ) -> Self {
        let mut view = Self::empty(local);
        view.sync_clusters(inputs);
        let keys: std::collections::BTreeSet<&ServiceKey> = inputs
            .values()
            .flat_map(|i| i.exports.services.keys())
            .collect();
        view.update_keys(network, inputs, keys);
        view
    }

    /// Makes the cluster set, labels and states those of `inputs`. Services are not
    /// touched: the caller updates the keys of clusters that came, went or changed state.
    pub fn sync_clusters(&mut self, inputs: &BTreeMap<ClusterId, ClusterInput>) {
        self.clusters.retain(|id, _| inputs.contains_key(id));
        for (id, input) in inputs {
            let cluster = self
                .clusters
                .entry(id.clone())
                .or_insert_with(|| ClusterView {
                    id: id.clone(),
                    labels: BTreeMap::new(),
                    state: input.state,
                    services: SharedMap::new(),
                });
            cluster.labels = input.exports.labels.clone();
            cluster.state = input.state;
        }
    }

    /// Recomputes what every cluster serves for `keys`, and their merged names, from
    /// `inputs`. The cost is proportional to the keys and the number of clusters.
    pub fn update_keys<'a>(
        &mut self,
        network: &NetworkConfig,
        inputs: &BTreeMap<ClusterId, ClusterInput>,
        keys: impl IntoIterator<Item = &'a ServiceKey>,
    ) {
        for key in keys {
            for (id, cluster) in self.clusters.iter_mut() {
                let export = inputs.get(id).and_then(|i| i.exports.services.get(key));
                match export {
                    Some(export) => {
                        let served = serve(export, *id == self.local, network);
                        cluster.services.insert(key.clone(), Arc::new(served));
                    }
                    // Removing an absent key would still copy the map's path.
                    None if cluster.services.contains_key(key) => {
                        cluster.services.remove(key);
                    }
                    None => {}
                }
            }
            match self.merge(key) {
                Some(m) => {
                    self.merged.insert(key.clone(), Arc::new(m));
                }
                None => {
                    self.merged.remove(key);
                }
            }
        }
    }

    /// The merged name of `key`, or `None` when no cluster is chosen.
    fn merge(&self, key: &ServiceKey) -> Option<MergedService> {
        let mut merged = MergedService {
            policy: Policy::default(),
            contributing: Vec::new(),
            chosen: Vec::new(),
            stale: false,
        };
        let mut unreachable = Vec::new();
        // Local cluster first, then the others in id order: the policy order.
        let order = self
            .clusters
            .get_key_value(&self.local)
            .into_iter()
            .chain(self.clusters.iter().filter(|(id, _)| **id != self.local));
        for (id, cluster) in order {
            let Some(svc) = cluster.services.get(key) else {
                continue;
            };
            if *id == self.local {
                // The local export's policy decides; without a local export both
                // policies choose every contributing cluster anyway.
                merged.policy = svc.export.policy;
            }
            if svc.contributes() {
                match cluster.state {
                    ClusterState::Live => merged.contributing.push(id.clone()),
                    ClusterState::Unreachable => unreachable.push(id.clone()),
                    ClusterState::Withdrawn | ClusterState::Pending => {}
                }
            }
        }
        if merged.contributing.is_empty() && !unreachable.is_empty() {
            // Better a stale answer, marked as such, than none.
            merged.contributing = unreachable;
            merged.stale = true;
        }
        let local_contributes = merged.contributing.first() == Some(&self.local);
        merged.chosen = match merged.policy {
            Policy::LocalPreferred if local_contributes => vec![self.local.clone()],
            _ => merged.contributing.clone(),
        };
        (!merged.chosen.is_empty()).then_some(merged)
    }

    /// Approximate heap bytes of (the view's own structures, the exports they hold).
    /// Walks every service, so it is for scrapes, not the answer path.
    pub fn estimated_bytes(&self) -> (usize, usize) {
        use std::mem::size_of;
        // Per persistent-map entry: key, value pointer and node overhead.
        let map_entry = size_of::<ServiceKey>() + size_of::<usize>() * 2;
        let ip = size_of::<IpAddr>();
        let (mut view, mut model) = (0, 0);
        for cluster in self.clusters.values() {
            for svc in cluster.services.values() {
                view += map_entry + size_of::<ServedService>() + 16;
                view += svc.refused.len() * size_of::<(IpAddr, Refusal)>();
                view += match &svc.served {
                    Served::Vip { addresses, .. } => addresses.len() * ip,
                    Served::Endpoints { endpoints } => endpoints
                        .iter()
                        .map(|e| size_of::<ServedEndpoint>() + e.addresses.len() * ip)
                        .sum(),
                    Served::Nothing { .. } => 0,
                };
                let e = &svc.export;
                model += size_of::<ServiceExport>()
                    + 16
                    + e.key.name.as_str().len()
                    + e.key.namespace.as_str().len()
                    + e.ports.len() * (size_of::<crate::model::ServicePort>() + 16)
                    + (e.cluster_ips.len() + e.ingress.len()) * ip
                    + e.endpoints.len() * size_of::<crate::model::Endpoint>();
            }
        }
        for merged in self.merged.values() {
            view += map_entry
                + size_of::<MergedService>()
                + (merged.contributing.len() + merged.chosen.len()) * size_of::<ClusterId>();
        }
        (view, model)
    }

    pub fn service_count(&self, cluster: &ClusterId) -> usize {
        self.clusters.get(cluster).map_or(0, |c| c.services.len())
    }
}

/// Which address kind this peer serves for an export (DESIGN.md §5).
fn chosen_kind(
    export: &ServiceExport,
    is_local: bool,
    connected: bool,
) -> Result<AddressKind, Refusal> {
    if let Some(kind) = export.addresses {
        return match kind {
            AddressKind::None => Err(Refusal::AddressesNone),
            kind => Ok(kind),
        };
    }
    let direct_ok = is_local || connected;
    if export.headless {
        return if direct_ok {
            Ok(AddressKind::Endpoints)
        } else {
            Err(Refusal::NotConnected)
        };
    }
    if direct_ok && !export.cluster_ips.is_empty() {
        return Ok(AddressKind::ClusterIp);
    }
    if !export.ingress.is_empty() {
        return Ok(AddressKind::Ingress);
    }
    if !export.cluster_ips.is_empty() {
        return Err(Refusal::NotConnected);
    }
    Err(Refusal::NoIngress)
}

fn serve(export: &Arc<ServiceExport>, is_local: bool, network: &NetworkConfig) -> ServedService {
    let mut refused = Vec::new();
    // Another cluster's address inside our own ranges would route to the wrong place.
    let mut admit = |ip: IpAddr| {
        if !is_local && network.overlaps_own(ip) {
            refused.push((ip, Refusal::AddressOverlap));
            false
        } else {
            true
        }
    };
    let served = match chosen_kind(export, is_local, network.connected) {
        Err(reason) => Served::Nothing { reason },
        Ok(AddressKind::Endpoints) => {
            let mut by_label: BTreeMap<HostLabel, Vec<IpAddr>> = BTreeMap::new();
            for e in export.ready_endpoints() {
                if admit(e.address) {
                    by_label.entry(e.label()).or_default().push(e.address);
                }
            }
            if by_label.is_empty() {
                let reason = if refused.is_empty() {
                    Refusal::NoReadyEndpoint
                } else {
                    Refusal::AddressOverlap
                };
                Served::Nothing { reason }
            } else {
                Served::Endpoints {
                    endpoints: by_label
                        .into_iter()
                        .map(|(label, addresses)| ServedEndpoint { label, addresses })
                        .collect(),
                }
            }
        }
        Ok(kind) => {
            let source = if kind == AddressKind::Ingress {
                &export.ingress
            } else {
                &export.cluster_ips
            };
            let addresses: Vec<IpAddr> = source.iter().copied().filter(|ip| admit(*ip)).collect();
            if addresses.is_empty() {
                let reason = if !refused.is_empty() {
                    Refusal::AddressOverlap
                } else if kind == AddressKind::Ingress {
                    Refusal::NoIngress
                } else {
                    Refusal::NoAddress
                };
                Served::Nothing { reason }
            } else {
                Served::Vip { kind, addresses }
            }
        }
    };
    ServedService {
        export: export.clone(),
        served,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;
    use crate::source::file::parse_services_file;

    fn cluster(id: &str, yaml: &str) -> (ClusterId, ClusterInput) {
        let id = ClusterId::parse(id).unwrap();
        let exports = parse_services_file(yaml, "test", &id).unwrap();
        (
            id,
            ClusterInput {
                exports: Arc::new(exports),
                state: ClusterState::Live,
            },
        )
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.parse().unwrap(),
            name: name.parse().unwrap(),
        }
    }

    const WEB_EAST: &str = "services:\n  - {name: web, namespace: default, cluster_ips: [10.96.0.10], ingress: [203.0.113.10], endpoints: [{address: 10.1.0.5}]}\n";
    const WEB_WEST: &str = "services:\n  - {name: web, namespace: default, cluster_ips: [10.97.0.10], ingress: [198.51.100.10], endpoints: [{address: 10.2.0.5}]}\n";

    #[test]
    fn local_serves_clusterip_remote_serves_ingress() {
        let inputs = BTreeMap::from([cluster("east", WEB_EAST), cluster("west", WEB_WEST)]);
        let east = ClusterId::parse("east").unwrap();
        let view = FleetView::build(&east, &NetworkConfig::default(), &inputs);
        let k = key("default", "web");
        assert_eq!(
            view.clusters[&east].services[&k].addresses(),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        let west = ClusterId::parse("west").unwrap();
        assert_eq!(
            view.clusters[&west].services[&k].addresses(),
            vec!["198.51.100.10".parse::<IpAddr>().unwrap()]
        );
        // local-preferred: east alone.
        assert_eq!(view.merged[&k].chosen, vec![east.clone()]);
        assert_eq!(view.merged[&k].contributing.len(), 2);

        let connected = NetworkConfig {
            connected: true,
            ..Default::default()
        };
        let view = FleetView::build(&east, &connected, &inputs);
        assert_eq!(
            view.clusters[&west].services[&k].addresses(),
            vec!["10.97.0.10".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn all_policy_and_fallback_when_local_has_no_ready_endpoint() {
        let east_all = "services:\n  - {name: web, namespace: default, cluster_ips: [10.96.0.10], endpoints: [{address: 10.1.0.5}], policy: all}\n";
        let inputs = BTreeMap::from([cluster("east", east_all), cluster("west", WEB_WEST)]);
        let east = ClusterId::parse("east").unwrap();
        let view = FleetView::build(&east, &NetworkConfig::default(), &inputs);
        assert_eq!(view.merged[&key("default", "web")].chosen.len(), 2);

        let east_down = "services:\n  - {name: web, namespace: default, cluster_ips: [10.96.0.10], endpoints: [{address: 10.1.0.5, ready: false}]}\n";
        let inputs = BTreeMap::from([cluster("east", east_down), cluster("west", WEB_WEST)]);
        let view = FleetView::build(&east, &NetworkConfig::default(), &inputs);
        let west = ClusterId::parse("west").unwrap();
        assert_eq!(view.merged[&key("default", "web")].chosen, vec![west]);
        // The VIP with zero ready endpoints still has its per-cluster name.
        assert!(view.clusters[&east].services[&key("default", "web")].has_names());
    }

    #[test]
    fn overlapping_and_unconnected_addresses_are_refused_with_reasons() {
        let inputs = BTreeMap::from([
            cluster("east", "services: []\n"),
            cluster(
                "west",
                "services:\n  - {name: db, namespace: d, cluster_ips: [10.200.0.1]}\n  - {name: h, namespace: d, headless: true, endpoints: [{address: 10.244.0.9}]}\n  - {name: lb, namespace: d, cluster_ips: [10.97.0.2], ingress: [10.96.5.5], addresses: ingress}\n",
            ),
        ]);
        let east = ClusterId::parse("east").unwrap();
        let west = ClusterId::parse("west").unwrap();
        let net = NetworkConfig {
            connected: false,
            service_cidrs: vec![Cidr::parse("10.96.0.0/12").unwrap()],
            pod_cidrs: vec![Cidr::parse("10.244.0.0/16").unwrap()],
        };
        let view = FleetView::build(&east, &net, &inputs);
        let w = &view.clusters[&west].services;
        assert_eq!(
            w[&key("d", "db")].served,
            Served::Nothing {
                reason: Refusal::NotConnected
            }
        );
        assert_eq!(
            w[&key("d", "h")].served,
            Served::Nothing {
                reason: Refusal::NotConnected
            }
        );
        assert_eq!(
            w[&key("d", "lb")].served,
            Served::Nothing {
                reason: Refusal::AddressOverlap
            }
        );
        assert_eq!(w[&key("d", "lb")].refused.len(), 1);
        assert!(view.merged.is_empty());

        let net = NetworkConfig {
            connected: true,
            ..net
        };
        let view = FleetView::build(&east, &net, &inputs);
        let w = &view.clusters[&west].services;
        assert!(w[&key("d", "db")].has_names());
        assert_eq!(
            w[&key("d", "h")].served,
            Served::Nothing {
                reason: Refusal::AddressOverlap
            }
        );
    }

    #[test]
    fn endpoints_sharing_a_label_are_one_name() {
        let yaml = "services:\n  - {name: h, namespace: d, headless: true, endpoints: [{address: 10.0.0.1, hostname: a}, {address: 'fd00::1', hostname: a}, {address: 10.0.0.2}]}\n";
        let inputs = BTreeMap::from([cluster("east", yaml)]);
        let east = ClusterId::parse("east").unwrap();
        let view = FleetView::build(&east, &NetworkConfig::default(), &inputs);
        let Served::Endpoints { endpoints } = &view.clusters[&east].services[&key("d", "h")].served
        else {
            panic!("expected endpoints mode");
        };
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[1].label.as_str(), "a");
        assert_eq!(endpoints[1].addresses.len(), 2);
    }
}

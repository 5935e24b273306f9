//! The `fleet.` zone as RRsets, derived from a [`FleetView`].
//!
//! This module owns the name grammar of DESIGN.md §1 in the producing direction: which
//! owner names and RRsets a view gives (apex SOA/NS, `ns` glue, `dns-version`, cluster
//! TXT, per-cluster, merged, per-endpoint and SRV names). It is pure. `dns::index`
//! encodes these RRsets for the wire, and [`Zone::to_zone_file`] writes them as an
//! RFC 1035 zone file, so what another server loads is exactly what we serve.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::ZoneName;
use crate::dns::names::{FleetName, Tree};
use crate::model::{ClusterId, ServiceKey};
use crate::view::{ClusterState, FleetView, MergedService, Served, ServedEndpoint, ServedService};

/// Zone-wide parameters that are not part of the view.
#[derive(Debug, Clone)]
pub struct ZoneParams {
    pub apex: ZoneName,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub serial: u32,
    /// The peer's advertised DNS address: `ns.<zone>` and the apex NS target.
    pub advertise: Option<IpAddr>,
}

/// The TXT string of `dns-version.<zone>`.
pub const DNS_VERSION: &str = "fleetdns-1";

/// Largest TTL of stale data (DESIGN.md §4): a resolver must come back soon.
pub const STALE_TTL: u32 = 5;

/// SRV priorities of merged names: the local cluster first, then the rest.
const SRV_PRIORITY_LOCAL: u16 = 0;
const SRV_PRIORITY_OTHER: u16 = 10;
const SRV_WEIGHT: u16 = 100;

/// One owner name's RRsets, records in policy order.
pub type NameRrsets = BTreeMap<RecordType, Vec<Record>>;

#[derive(Debug, Clone)]
pub struct Zone {
    pub apex: Name,
    pub negative_ttl: u32,
    pub names: BTreeMap<Name, NameRrsets>,
    /// Names that could not be made (longer than 255 octets), with the reason.
    pub skipped: Vec<String>,
    /// Names whose answers are stale data (EDE 3).
    pub stale: BTreeSet<Name>,
    /// Clusters without names (withdrawn, pending): everything under them answers
    /// SERVFAIL with this EDE code.
    pub unavailable: Vec<(ClusterId, u16)>,
}

struct Builder {
    apex: Name,
    ttl: u32,
    names: BTreeMap<Name, NameRrsets>,
    /// Every (owner, data) added, so that keeping RRsets sets stays linear.
    seen: HashSet<(Name, RData)>,
    skipped: Vec<String>,
    /// While set, records are stale data: TTL capped, owner recorded in `stale`.
    stale_mode: bool,
    stale: BTreeSet<Name>,
}

impl Builder {
    /// The owner name of `name` under the apex; `None` (and recorded) when it would be
    /// longer than 255 octets.
    fn name(&mut self, name: &FleetName) -> Option<Name> {
        let labels = name.labels();
        let mut owner = self.apex.clone();
        for label in labels.iter().rev() {
            match owner.prepend_label(label.as_str()) {
                Ok(n) => owner = n,
                Err(_) => {
                    self.skipped.push(format!(
                        "{}.{}: longer than 255 octets",
                        labels.join("."),
                        self.apex
                    ));
                    return None;
                }
            }
        }
        Some(owner)
    }

    fn add(&mut self, owner: &Name, ttl: u32, rdata: RData) {
        // An RRset is a set: the same address from two clusters is one record.
        if !self.seen.insert((owner.clone(), rdata.clone())) {
            return;
        }
        let ttl = if self.stale_mode {
            self.stale.insert(owner.clone());
            ttl.min(STALE_TTL)
        } else {
            ttl
        };
        self.names
            .entry(owner.clone())
            .or_default()
            .entry(rdata.record_type())
            .or_default()
            .push(Record::from_rdata(owner.clone(), ttl, rdata));
    }

    fn add_addresses(&mut self, owner: &Name, addresses: impl IntoIterator<Item = IpAddr>) {
        for ip in addresses {
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            self.add(owner, self.ttl, rdata);
        }
    }
}

/// Which part of the view a set of names comes from. Every owner name belongs to exactly
/// one group, so a change to one service re-derives only its own group's names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupId {
    /// Apex SOA and NS, `ns` and `dns-version`.
    Apex,
    /// A cluster's inventory TXT.
    Cluster(ClusterId),
    /// Every per-cluster and merged name of one service key.
    Service(ServiceKey),
}

/// The names of one group.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub names: BTreeMap<Name, NameRrsets>,
    /// Names that could not be made (longer than 255 octets).
    pub skipped: Vec<String>,
    /// Names whose answers are stale data (EDE 3).
    pub stale: BTreeSet<Name>,
}

impl ZoneParams {
    pub fn apex_name(&self) -> Name {
        Name::from_ascii(self.apex.as_str()).expect("ZoneName is a valid name")
    }
}

/// Derives the names of one group from the view.
pub fn build_group(view: &FleetView, params: &ZoneParams, id: &GroupId) -> Group {
    let mut b = Builder {
        apex: params.apex_name(),
        ttl: params.ttl,
        names: BTreeMap::new(),
        seen: HashSet::new(),
        skipped: Vec::new(),
        stale_mode: false,
        stale: BTreeSet::new(),
    };
    match id {
        GroupId::Apex => add_apex(&mut b, params),
        GroupId::Cluster(cluster) => {
            // A withdrawn or pending cluster has no names: the index answers SERVFAIL
            // under it.
            if let Some(c) = view.clusters.get(cluster)
                && c.state.has_names()
                && let Some(owner) = b.name(&FleetName::Cluster(cluster.clone()))
            {
                b.stale_mode = c.state == ClusterState::Unreachable;
                let mut strings = vec![format!("cluster={cluster}")];
                strings.extend(c.labels.iter().map(|(k, v)| format!("{k}={v}")));
                b.add(&owner, params.ttl, RData::TXT(TXT::new(strings)));
            }
        }
        GroupId::Service(key) => {
            for (id, cluster) in &view.clusters {
                if !cluster.state.has_names() {
                    continue;
                }
                if let Some(svc) = cluster.services.get(key) {
                    b.stale_mode = cluster.state == ClusterState::Unreachable;
                    add_cluster_service(&mut b, id, key, svc);
                }
            }
            if let Some(merged) = view.merged.get(key) {
                b.stale_mode = merged.stale;
                add_merged(&mut b, view, key, merged);
            }
        }
    }
    Group {
        names: b.names,
        skipped: b.skipped,
        stale: b.stale,
    }
}

fn add_apex(b: &mut Builder, params: &ZoneParams) {
    let apex = b.apex.clone();
    let ns_name = b
        .name(&FleetName::Ns)
        .expect("ns under a validated apex fits");
    let hostmaster = apex
        .prepend_label("hostmaster")
        .expect("fits under a validated apex");
    // The SOA's own TTL is the negative TTL everywhere (DESIGN.md §1, RFC 2308 §3).
    b.add(
        &apex,
        params.negative_ttl,
        RData::SOA(SOA::new(
            ns_name.clone(),
            hostmaster,
            params.serial,
            7200,
            1800,
            86400,
            params.negative_ttl,
        )),
    );
    b.add(&apex, params.ttl, RData::NS(NS(ns_name.clone())));
    b.add_addresses(&ns_name, params.advertise);
    let version = b.name(&FleetName::DnsVersion).expect("fits");
    b.add(
        &version,
        params.ttl,
        RData::TXT(TXT::new(vec![DNS_VERSION.into()])),
    );
}

fn add_merged(b: &mut Builder, view: &FleetView, key: &ServiceKey, merged: &MergedService) {
    let merged_name = FleetName::Service {
        tree: Tree::Merged,
        key: key.clone(),
    };
    let Some(owner) = b.name(&merged_name) else {
        return;
    };
    for cluster_id in &merged.chosen {
        let Some(svc) = view
            .clusters
            .get(cluster_id)
            .and_then(|c| c.services.get(key))
        else {
            continue;
        };
        b.add_addresses(&owner, svc.addresses());
        let priority = if *cluster_id == view.local {
            SRV_PRIORITY_LOCAL
        } else {
            SRV_PRIORITY_OTHER
        };
        add_srv(b, Tree::Merged, cluster_id, key, svc, priority);
    }
}

/// Every group of a view: the apex, each cluster, each service key.
pub fn group_ids(view: &FleetView) -> Vec<GroupId> {
    let mut ids = vec![GroupId::Apex];
    ids.extend(view.clusters.keys().cloned().map(GroupId::Cluster));
    let keys: std::collections::BTreeSet<&ServiceKey> = view
        .clusters
        .values()
        .flat_map(|c| c.services.keys())
        .collect();
    ids.extend(keys.into_iter().cloned().map(GroupId::Service));
    ids
}

impl Zone {
    /// The whole zone of a view (for `dump-zone` and tests; serving is incremental).
    pub fn build(view: &FleetView, params: &ZoneParams) -> Self {
        let mut names = BTreeMap::new();
        let mut skipped = Vec::new();
        let mut stale = BTreeSet::new();
        for id in group_ids(view) {
            let group = build_group(view, params, &id);
            names.extend(group.names);
            skipped.extend(group.skipped);
            stale.extend(group.stale);
        }
        Zone {
            apex: params.apex_name(),
            negative_ttl: params.negative_ttl,
            names,
            skipped,
            stale,
            unavailable: view
                .clusters
                .values()
                .filter_map(|c| Some((c.id.clone(), c.state.unavailable_ede()?)))
                .collect(),
        }
    }

    /// The RFC 1035 zone file of this zone: one record per line, absolute names.
    pub fn to_zone_file(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "$ORIGIN {}", self.apex);
        // SOA first, as zone files require.
        let apex_rrsets = self.names.get(&self.apex);
        let soa = apex_rrsets.and_then(|r| r.get(&RecordType::SOA));
        for record in soa.into_iter().flatten() {
            write_record(&mut out, record);
        }
        for rrsets in self.names.values() {
            for (rtype, records) in rrsets {
                if *rtype == RecordType::SOA {
                    continue;
                }
                for record in records {
                    write_record(&mut out, record);
                }
            }
        }
        out
    }
}

fn add_cluster_service(
    b: &mut Builder,
    cluster: &ClusterId,
    key: &ServiceKey,
    svc: &ServedService,
) {
    let service_name = FleetName::Service {
        tree: Tree::Cluster(cluster.clone()),
        key: key.clone(),
    };
    let Some(owner) = b.name(&service_name) else {
        return;
    };
    match &svc.served {
        Served::Nothing { .. } => return,
        Served::Vip { addresses, .. } => b.add_addresses(&owner, addresses.iter().copied()),
        Served::Endpoints { endpoints } => {
            for e in endpoints {
                b.add_addresses(&owner, e.addresses.iter().copied());
                if let Some(host) = b.name(&endpoint_name(e, cluster, key)) {
                    b.add_addresses(&host, e.addresses.iter().copied());
                }
            }
        }
    }
    add_srv(
        b,
        Tree::Cluster(cluster.clone()),
        cluster,
        key,
        svc,
        SRV_PRIORITY_LOCAL,
    );
}

fn endpoint_name(e: &ServedEndpoint, cluster: &ClusterId, key: &ServiceKey) -> FleetName {
    FleetName::Endpoint {
        host: e.label.clone(),
        cluster: cluster.clone(),
        key: key.clone(),
    }
}

/// SRV records in `tree` for one cluster's export: one per named port, × per-endpoint
/// name in endpoints mode. Targets are always that cluster's own names.
fn add_srv(
    b: &mut Builder,
    tree: Tree,
    cluster: &ClusterId,
    key: &ServiceKey,
    svc: &ServedService,
    priority: u16,
) {
    let targets: Vec<Name> = match &svc.served {
        Served::Nothing { .. } => return,
        Served::Vip { .. } => b
            .name(&FleetName::Service {
                tree: Tree::Cluster(cluster.clone()),
                key: key.clone(),
            })
            .into_iter()
            .collect(),
        Served::Endpoints { endpoints } => endpoints
            .iter()
            .filter_map(|e| b.name(&endpoint_name(e, cluster, key)))
            .collect(),
    };
    for port in &svc.export.ports {
        let Some(port_name) = &port.name else {
            continue;
        };
        let srv_name = FleetName::Srv {
            port: port_name.clone(),
            protocol: port.protocol,
            tree: tree.clone(),
            key: key.clone(),
        };
        let Some(owner) = b.name(&srv_name) else {
            continue;
        };
        for target in &targets {
            b.add(
                &owner,
                b.ttl,
                RData::SRV(SRV::new(priority, SRV_WEIGHT, port.port, target.clone())),
            );
        }
    }
}

fn write_record(out: &mut String, record: &Record) {
    let data = match &record.data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::NS(ns) => ns.0.to_string(),
        RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
        RData::SOA(s) => format!(
            "{} {} {} {} {} {} {}",
            s.mname, s.rname, s.serial, s.refresh, s.retry, s.expire, s.minimum
        ),
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|s| {
                let text = String::from_utf8_lossy(s);
                format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "{} {} IN {} {}",
        record.name,
        record.ttl,
        record.record_type(),
        data
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::config::NetworkConfig;
    use crate::dns::names::FleetName;
    use crate::model::{
        Endpoint, HostLabel, LocalExports, Namespace, Policy, PortName, Protocol, ServiceExport,
        ServiceName, ServicePort,
    };
    use crate::view::{ClusterInput, ClusterState};

    fn export(
        name: &str,
        ns: &str,
        headless: bool,
        hosts: &[(String, u8)],
        ports: &[String],
    ) -> ServiceExport {
        ServiceExport {
            key: ServiceKey {
                name: ServiceName::parse(name).unwrap(),
                namespace: Namespace::parse(ns).unwrap(),
            },
            ports: ports
                .iter()
                .enumerate()
                .map(|(i, p)| ServicePort {
                    name: Some(PortName::parse(p).unwrap()),
                    port: 1000 + i as u16,
                    protocol: if i % 2 == 0 {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    },
                })
                .collect(),
            cluster_ips: if headless {
                vec![]
            } else {
                vec!["10.96.0.1".parse().unwrap()]
            },
            ingress: vec!["203.0.113.1".parse().unwrap()],
            endpoints: hosts
                .iter()
                .map(|(h, last)| Endpoint {
                    address: IpAddr::from([10, 1, 0, *last]),
                    hostname: Some(HostLabel::parse(h).unwrap()),
                    pod_name: None,
                    ready: true,
                    zone: None,
                })
                .collect(),
            headless,
            addresses: None,
            policy: Policy::All,
        }
    }

    fn params() -> ZoneParams {
        ZoneParams {
            apex: ZoneName::parse("fleet.").unwrap(),
            ttl: 5,
            negative_ttl: 5,
            serial: 1,
            advertise: Some("127.0.0.1".parse().unwrap()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every owner name the zone produces is a name of the grammar, and reads back.
        #[test]
        fn every_owner_name_parses_back(
            services in proptest::collection::vec(
                ("[a-z][a-z0-9]{0,8}", "[a-z][a-z0-9]{0,8}", any::<bool>(),
                 proptest::collection::vec(("[a-z][a-z0-9-]{0,6}[a-z0-9]", 1u8..250), 0..4),
                 proptest::collection::vec("[a-z]{1,6}", 0..3)),
                1..8),
            clusters in proptest::collection::btree_set("[a-z][a-z0-9]{0,6}", 1..4),
        ) {
            let mut inputs = BTreeMap::new();
            for c in &clusters {
                let Ok(id) = ClusterId::parse(c) else { continue };
                let mut exports = LocalExports::empty(id.clone());
                for (name, ns, headless, hosts, ports) in &services {
                    let mut ports = ports.clone();
                    ports.sort();
                    ports.dedup();
                    let e = export(name, ns, *headless, hosts, &ports);
                    exports.services.insert(e.key.clone(), Arc::new(e));
                }
                inputs.insert(id, ClusterInput { exports: Arc::new(exports), state: ClusterState::Live });
            }
            let Some(local) = inputs.keys().next().cloned() else { return Ok(()) };
            let view = FleetView::build(&local, &NetworkConfig { connected: true, ..Default::default() }, &inputs);
            let zone = Zone::build(&view, &params());
            let apex_labels = zone.apex.num_labels() as usize;
            for owner in zone.names.keys() {
                let labels: Vec<String> = owner
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect();
                let relative: Vec<&str> = labels[..labels.len() - apex_labels].iter().map(String::as_str).collect();
                let parsed = FleetName::parse(&relative);
                prop_assert!(parsed.is_some(), "{} is not a grammar name", owner);
                prop_assert_eq!(parsed.unwrap().labels(), relative.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn zone_file_lists_the_soa_first_and_quotes_txt() {
        let id = ClusterId::parse("east").unwrap();
        let mut exports = LocalExports::empty(id.clone());
        exports.labels.insert("note".into(), "say \"hi\"".into());
        let inputs = BTreeMap::from([(
            id.clone(),
            ClusterInput {
                exports: Arc::new(exports),
                state: ClusterState::Live,
            },
        )]);
        let view = FleetView::build(&id, &NetworkConfig::default(), &inputs);
        let text = Zone::build(&view, &params()).to_zone_file();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("$ORIGIN fleet."));
        assert_eq!(
            lines.next(),
            Some("fleet. 5 IN SOA ns.fleet. hostmaster.fleet. 1 7200 1800 86400 5")
        );
        assert!(
            text.contains(r#"east.fleet. 5 IN TXT "cluster=east" "note=say \"hi\"""#),
            "{text}"
        );
    }
}

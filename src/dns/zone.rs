//! The `fleet.` zone as RRsets, derived from a [`FleetView`].
//!
//! This module owns the name grammar of DESIGN.md §1 in the producing direction: which
//! owner names and RRsets a view gives (apex SOA/NS, `ns` glue, `dns-version`, cluster
//! TXT, per-cluster, merged, per-endpoint and SRV names). It is pure. `dns::index`
//! encodes these RRsets for the wire, and [`Zone::to_zone_file`] writes them as an
//! RFC 1035 zone file, so what another server loads is exactly what we serve.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::config::ZoneName;
use crate::model::{ClusterId, ServiceKey, ServicePort};
use crate::view::{FleetView, Served, ServedService};

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
}

struct Builder {
    apex: Name,
    ttl: u32,
    names: BTreeMap<Name, NameRrsets>,
    skipped: Vec<String>,
}

impl Builder {
    /// `labels` are relative to the apex, leftmost first.
    fn name(&mut self, labels: &[&str]) -> Option<Name> {
        let mut name = self.apex.clone();
        for label in labels.iter().rev() {
            match name.prepend_label(*label) {
                Ok(n) => name = n,
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
        Some(name)
    }

    fn add(&mut self, owner: &Name, ttl: u32, rdata: RData) {
        let rtype = rdata.record_type();
        let rrset = self
            .names
            .entry(owner.clone())
            .or_default()
            .entry(rtype)
            .or_default();
        // An RRset is a set: the same address from two clusters is one record.
        if !rrset.iter().any(|r| r.data == rdata) {
            rrset.push(Record::from_rdata(owner.clone(), ttl, rdata));
        }
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

fn srv_labels(port: &ServicePort) -> Option<(String, String)> {
    let name = port.name.as_ref()?;
    Some((
        format!("_{name}"),
        format!("_{}", port.protocol.srv_label()),
    ))
}

impl Zone {
    pub fn build(view: &FleetView, params: &ZoneParams) -> Self {
        let apex = Name::from_ascii(params.apex.as_str()).expect("ZoneName is a valid name");
        let mut b = Builder {
            apex: apex.clone(),
            ttl: params.ttl,
            names: BTreeMap::new(),
            skipped: Vec::new(),
        };
        let ns_name = b.name(&["ns"]).expect("ns under a validated apex fits");
        let hostmaster = b.name(&["hostmaster"]).expect("fits");
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
        let version = b.name(&["dns-version"]).expect("fits");
        b.add(
            &version,
            params.ttl,
            RData::TXT(TXT::new(vec![DNS_VERSION.into()])),
        );

        for (id, cluster) in &view.clusters {
            if let Some(owner) = b.name(&[id.as_str()]) {
                let mut strings = vec![format!("cluster={id}")];
                strings.extend(cluster.labels.iter().map(|(k, v)| format!("{k}={v}")));
                b.add(&owner, params.ttl, RData::TXT(TXT::new(strings)));
            }
            for (key, svc) in &cluster.services {
                add_cluster_service(&mut b, id, key, svc);
            }
        }

        for (key, merged) in &view.merged {
            let Some(owner) = b.name(&[key.name.as_str(), key.namespace.as_str(), "svc"]) else {
                continue;
            };
            for cluster_id in &merged.chosen {
                let svc = &view.clusters[cluster_id].services[key];
                b.add_addresses(&owner, svc.addresses());
                let priority = if *cluster_id == view.local {
                    SRV_PRIORITY_LOCAL
                } else {
                    SRV_PRIORITY_OTHER
                };
                add_srv(&mut b, &owner, cluster_id, key, svc, priority);
            }
        }

        Zone {
            apex,
            negative_ttl: params.negative_ttl,
            names: b.names,
            skipped: b.skipped,
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
    let labels = [key.name.as_str(), key.namespace.as_str(), cluster.as_str()];
    let Some(owner) = b.name(&labels) else { return };
    match &svc.served {
        Served::Nothing { .. } => return,
        Served::Vip { addresses, .. } => b.add_addresses(&owner, addresses.iter().copied()),
        Served::Endpoints { endpoints } => {
            for e in endpoints {
                b.add_addresses(&owner, e.addresses.iter().copied());
                if let Some(host) = b.name(&[e.label.as_str(), labels[0], labels[1], labels[2]]) {
                    b.add_addresses(&host, e.addresses.iter().copied());
                }
            }
        }
    }
    add_srv(b, &owner, cluster, key, svc, SRV_PRIORITY_LOCAL);
}

/// SRV records under `owner` (a per-cluster or merged service name) for one cluster's
/// export: one per named port, × per-endpoint name in endpoints mode.
fn add_srv(
    b: &mut Builder,
    owner_service: &Name,
    cluster: &ClusterId,
    key: &ServiceKey,
    svc: &ServedService,
    priority: u16,
) {
    let service_labels = [key.name.as_str(), key.namespace.as_str(), cluster.as_str()];
    let targets: Vec<Name> = match &svc.served {
        Served::Nothing { .. } => return,
        Served::Vip { .. } => b.name(&service_labels).into_iter().collect(),
        Served::Endpoints { endpoints } => endpoints
            .iter()
            .filter_map(|e| {
                b.name(&[
                    e.label.as_str(),
                    service_labels[0],
                    service_labels[1],
                    service_labels[2],
                ])
            })
            .collect(),
    };
    for port in &svc.export.ports {
        let Some((port_label, proto_label)) = srv_labels(port) else {
            continue;
        };
        let Ok(owner) = owner_service
            .prepend_label(proto_label.as_str())
            .and_then(|n| n.prepend_label(port_label.as_str()))
        else {
            b.skipped.push(format!(
                "{port_label}.{proto_label}.{owner_service}: longer than 255 octets"
            ));
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

//! Kubernetes objects → the set of services this cluster exports.
//!
//! This module owns one decision (DESIGN.md §5): given everything the cluster's API
//! holds (Services, EndpointSlices, which MCS ServiceExports exist) and the export
//! settings, which services does this cluster export, with which addresses, and which
//! exports were asked for but refused, and why. It is pure and level-triggered:
//! [`compute`] sees the whole state every time, so a deleted object is simply absent
//! from the next result, and the same input in any order gives the same output.
//!
//! It does not decide what a peer *serves*: a pending LoadBalancer, an export with no
//! address of the kind a reader wants, or an address inside a reader's own CIDRs are
//! `view.rs`'s business. An export carries every address it has; this module only
//! refuses exports that must not exist at all (wrong namespace, ExternalName, invalid
//! names or annotations, a ServiceExport without its Service).
//!
//! Resolving hostname-only LoadBalancer ingress is I/O: [`compute`] reports the
//! hostnames it wants in [`ExportOutcome::wanted_hostnames`] and uses whatever the
//! caller has resolved so far ([`ExportContext::resolved`]).

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    AddressKind, ClusterId, Endpoint, HostLabel, LocalExports, Namespace, Policy, PortName,
    Protocol, ServiceExport, ServiceKey, ServiceName, ServicePort,
};

/// `"true"` exports the Service (as a ServiceExport would); `"false"` does not.
pub const EXPORT_ANNOTATION: &str = "fleetdns.io/export";
/// Overrides which address kind peers serve: `ingress|clusterip|endpoints|none`.
pub const ADDRESSES_ANNOTATION: &str = "fleetdns.io/addresses";
/// The merged-name policy: `local-preferred|all`.
pub const POLICY_ANNOTATION: &str = "fleetdns.io/policy";
/// The label that ties an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What marks a Service as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// An MCS ServiceExport (when the CRD is served) or the `fleetdns.io/export`
    /// annotation.
    #[default]
    Auto,
    /// The annotation only; ServiceExports are ignored even where the CRD is served.
    Annotation,
}

/// The export settings of one cluster (built and validated by the config layer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportSettings {
    pub mode: ExportMode,
    /// Namespaces that may export; empty means all.
    pub allow_namespaces: Vec<Namespace>,
    /// Namespaces that may never export; wins over `allow_namespaces`.
    pub deny_namespaces: Vec<Namespace>,
}

impl ExportSettings {
    /// Why `namespace` may not export, or `None` when it may.
    fn namespace_denial(&self, namespace: &str) -> Option<String> {
        let listed = |list: &[Namespace]| list.iter().any(|n| n.as_str() == namespace);
        if listed(&self.deny_namespaces) {
            Some(format!(
                "namespace {namespace:?} is in export.namespaces.deny"
            ))
        } else if !self.allow_namespaces.is_empty() && !listed(&self.allow_namespaces) {
            Some(format!(
                "namespace {namespace:?} is not in export.namespaces.allow"
            ))
        } else {
            None
        }
    }
}

/// The MCS ServiceExports of the cluster, as the I/O edge found them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum McsExports {
    /// No `multicluster.x-k8s.io` ServiceExport resource is served: annotation-only.
    #[default]
    NotServed,
    /// The resource is served; these `(namespace, name)` have a ServiceExport.
    Served(BTreeSet<(String, String)>),
}

/// Everything besides the objects themselves that decides a cluster's exports.
#[derive(Debug, Clone, Copy)]
pub struct ExportContext<'a> {
    pub cluster: &'a ClusterId,
    /// The cluster's inventory labels, copied into [`LocalExports::labels`].
    pub labels: &'a BTreeMap<String, String>,
    pub settings: &'a ExportSettings,
    pub mcs: &'a McsExports,
    /// Addresses resolved so far for hostname-only LoadBalancer ingress, keyed by the
    /// hostname exactly as [`ExportOutcome::wanted_hostnames`] reported it.
    pub resolved: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// Why an export that was asked for (by a ServiceExport or the annotation) does not
/// exist. Bounded: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportRefusal {
    /// The namespace is denied, or not allowed, by the export settings.
    NamespaceDenied,
    /// A ServiceExport without a Service of the same namespace and name (MCS
    /// `NoService`).
    NoService,
    /// An ExternalName Service (MCS `InvalidServiceType`): it has no address to export.
    ExternalName,
    /// The namespace or Service name is not a valid DNS label for our names.
    InvalidName,
    /// A `fleetdns.io/*` annotation has a value we do not understand.
    InvalidAnnotation,
}

impl ExportRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NamespaceDenied => "namespace-denied",
            Self::NoService => "no-service",
            Self::ExternalName => "external-name",
            Self::InvalidName => "invalid-name",
            Self::InvalidAnnotation => "invalid-annotation",
        }
    }
}

/// An export that was asked for and refused. Namespace and name are the raw strings:
/// they may be exactly what failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct RefusedExport {
    pub namespace: String,
    pub name: String,
    pub reason: ExportRefusal,
    /// One log-ready sentence naming the offending value.
    pub detail: String,
}

/// Something an admin may want to know about an export that is still exported.
/// Bounded: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// A LoadBalancer Service without any ingress yet: it exports no ingress address.
    LbPending,
    /// A hostname-only ingress entry whose addresses are not (yet) resolved.
    IngressUnresolved,
    /// An address that does not parse (or is of the wrong family for its slice); skipped.
    InvalidAddress,
    /// A port with an invalid number or protocol; skipped.
    InvalidPort,
    /// A port whose name is not an IANA service name: it is exported unnamed, so it
    /// gets no SRV record.
    PortWithoutSrv,
}

impl NoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LbPending => "lb-pending",
            Self::IngressUnresolved => "ingress-unresolved",
            Self::InvalidAddress => "invalid-address",
            Self::InvalidPort => "invalid-port",
            Self::PortWithoutSrv => "port-without-srv",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ExportNote {
    pub key: ServiceKey,
    pub kind: NoteKind,
    pub detail: String,
}

/// The result of one [`compute`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportOutcome {
    pub exports: LocalExports,
    /// Sorted by namespace, name, reason.
    pub refused: Vec<RefusedExport>,
    /// Informational, about exported services only; sorted.
    pub notes: Vec<ExportNote>,
    /// Hostname-only ingress entries of exported services, for the I/O edge to resolve
    /// and hand back through [`ExportContext::resolved`].
    pub wanted_hostnames: BTreeSet<String>,
}

/// Computes the cluster's exports from all its Services and EndpointSlices.
///
/// Takes anything that borrows as the objects (`&Service`, `Arc<Service>` from a
/// reflector store, ...), so nothing is cloned. Never panics, whatever the objects hold.
pub fn compute<S, E>(ctx: &ExportContext<'_>, services: S, slices: E) -> ExportOutcome
where
    S: IntoIterator,
    S::Item: Borrow<Service>,
    E: IntoIterator,
    E::Item: Borrow<EndpointSlice>,
{
    let services: Vec<S::Item> = services.into_iter().collect();
    let slices: Vec<E::Item> = slices.into_iter().collect();
    let services: Vec<&Service> = services.iter().map(Borrow::borrow).collect();
    let slices: Vec<&EndpointSlice> = slices.iter().map(Borrow::borrow).collect();
    compute_refs(ctx, &services, &slices)
}

/// Orders two objects with the same namespace and name, for a choice independent of
/// input order.
fn version(svc: &Service) -> (Option<&str>, Option<&str>) {
    (
        svc.metadata.uid.as_deref(),
        svc.metadata.resource_version.as_deref(),
    )
}

/// The annotation's verdict on a Service.
enum Marked {
    No,
    Yes,
    Invalid(String),
}

fn export_annotation(svc: &Service) -> Marked {
    match annotation(svc, EXPORT_ANNOTATION) {
        None | Some("false") => Marked::No,
        Some("true") => Marked::Yes,
        // Someone who wrote the annotation meant something: refusing loudly beats
        // guessing whether "yes" or "True" was meant to export.
        Some(other) => Marked::Invalid(format!(
            "{EXPORT_ANNOTATION} {other:?} is not \"true\" or \"false\""
        )),
    }
}

fn annotation<'s>(svc: &'s Service, key: &str) -> Option<&'s str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn compute_refs(
    ctx: &ExportContext<'_>,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> ExportOutcome {
    let mut out = Outcome::default();

    // Services by (namespace, name). A Service being deleted (deletionTimestamp set,
    // e.g. held by the LoadBalancer cleanup finalizer) is treated as gone: its owner
    // asked for it to go, and other clusters should stop sending traffic to it before
    // its load balancer is torn down.
    let mut by_key: BTreeMap<(&str, &str), &Service> = BTreeMap::new();
    for &svc in services {
        let meta = &svc.metadata;
        if meta.deletion_timestamp.is_some() {
            continue;
        }
        let Some(name) = meta.name.as_deref() else {
            continue;
        };
        let key = (meta.namespace.as_deref().unwrap_or(""), name);
        // A store holds one object per key; should a caller pass two, keep the same
        // one whatever the order (by uid, then resourceVersion).
        match by_key.get(&key) {
            Some(prev) if version(prev) >= version(svc) => {}
            _ => {
                by_key.insert(key, svc);
            }
        }
    }

    // Slices by the Service they belong to.
    let mut slices_of: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for &slice in slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        slices_of.entry((ns, svc.as_str())).or_default().push(slice);
    }

    // ServiceExports count only in Auto mode with the CRD served; in annotation mode
    // the operator chose to ignore MCS, so they are not even refusals.
    let mcs: BTreeSet<(&str, &str)> = match (ctx.settings.mode, ctx.mcs) {
        (ExportMode::Auto, McsExports::Served(set)) => set
            .iter()
            .map(|(ns, name)| (ns.as_str(), name.as_str()))
            .collect(),
        _ => BTreeSet::new(),
    };
    for &(ns, name) in &mcs {
        if by_key.contains_key(&(ns, name)) {
            continue;
        }
        let (reason, detail) = match ctx.settings.namespace_denial(ns) {
            Some(why) => (ExportRefusal::NamespaceDenied, why),
            None => (
                ExportRefusal::NoService,
                format!(
                    "ServiceExport {ns}/{name} has no Service of the same name (or it is being deleted)"
                ),
            ),
        };
        out.refuse(ns, name, reason, detail);
    }

    let mut services_out = BTreeMap::new();
    for (&(ns, name), &svc) in &by_key {
        let invalid_marker = match export_annotation(svc) {
            Marked::Yes => None,
            Marked::Invalid(why) => Some(why),
            Marked::No if mcs.contains(&(ns, name)) => None,
            // Not asked to export: not a refusal either.
            Marked::No => continue,
        };
        // The operator's namespace policy comes first: whatever else is wrong, this
        // Service may not export from here.
        if let Some(why) = ctx.settings.namespace_denial(ns) {
            out.refuse(ns, name, ExportRefusal::NamespaceDenied, why);
            continue;
        }
        let key = match (Namespace::parse(ns), ServiceName::parse(name)) {
            (Ok(namespace), Ok(name)) => ServiceKey { namespace, name },
            (Err(e), _) | (_, Err(e)) => {
                out.refuse(ns, name, ExportRefusal::InvalidName, e.to_string());
                continue;
            }
        };
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let target = spec.and_then(|s| s.external_name.as_deref()).unwrap_or("");
            out.refuse(
                ns,
                name,
                ExportRefusal::ExternalName,
                format!(
                    "type ExternalName (an alias of {target:?}) has no address to export (MCS InvalidServiceType)"
                ),
            );
            continue;
        }
        let (addresses, policy) = match parse_overrides(svc, invalid_marker) {
            Ok(v) => v,
            Err(why) => {
                out.refuse(ns, name, ExportRefusal::InvalidAnnotation, why);
                continue;
            }
        };
        let slices = slices_of.get(&(ns, name)).map_or(&[][..], Vec::as_slice);
        let export = build_export(ctx, &mut out, key, svc, slices, addresses, policy);
        services_out.insert(export.key.clone(), Arc::new(export));
    }

    let mut exports = LocalExports::empty(ctx.cluster.clone());
    exports.labels = ctx.labels.clone();
    exports.services = services_out;
    out.refused.sort();
    out.refused.dedup();
    out.notes.sort();
    out.notes.dedup();
    ExportOutcome {
        exports,
        refused: out.refused,
        notes: out.notes,
        wanted_hostnames: out.wanted,
    }
}

#[derive(Default)]
struct Outcome {
    refused: Vec<RefusedExport>,
    notes: Vec<ExportNote>,
    wanted: BTreeSet<String>,
}

impl Outcome {
    fn refuse(&mut self, ns: &str, name: &str, reason: ExportRefusal, detail: String) {
        self.refused.push(RefusedExport {
            namespace: ns.into(),
            name: name.into(),
            reason,
            detail,
        });
    }

    fn note(&mut self, key: &ServiceKey, kind: NoteKind, detail: String) {
        self.notes.push(ExportNote {
            key: key.clone(),
            kind,
            detail,
        });
    }
}

/// The `addresses` and `policy` overrides, or every annotation problem in one sentence.
fn parse_overrides(
    svc: &Service,
    invalid_marker: Option<String>,
) -> Result<(Option<AddressKind>, Policy), String> {
    let mut problems: Vec<String> = invalid_marker.into_iter().collect();
    let addresses = match annotation(svc, ADDRESSES_ANNOTATION) {
        None => None,
        Some(v) => AddressKind::parse(v).or_else(|| {
            problems.push(format!(
                "{ADDRESSES_ANNOTATION} {v:?} is not one of ingress, clusterip, endpoints, none"
            ));
            None
        }),
    };
    let policy = match annotation(svc, POLICY_ANNOTATION) {
        None => Policy::default(),
        Some(v) => Policy::parse(v).unwrap_or_else(|| {
            problems.push(format!(
                "{POLICY_ANNOTATION} {v:?} is not one of local-preferred, all"
            ));
            Policy::default()
        }),
    };
    if problems.is_empty() {
        Ok((addresses, policy))
    } else {
        Err(problems.join("; "))
    }
}

fn build_export(
    ctx: &ExportContext<'_>,
    out: &mut Outcome,
    key: ServiceKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    addresses: Option<AddressKind>,
    policy: Policy,
) -> ServiceExport {
    let spec = svc.spec.as_ref();
    let cluster_ip = spec.and_then(|s| s.cluster_ip.as_deref());
    let cluster_ip_list = spec.and_then(|s| s.cluster_ips.as_deref()).unwrap_or(&[]);
    let headless =
        cluster_ip == Some("None") || cluster_ip_list.first().map(String::as_str) == Some("None");

    // spec.clusterIPs holds every family's VIP (dual-stack); spec.clusterIP is its first
    // entry, kept for objects written before clusterIPs existed.
    let raw_ips: Vec<&str> = if cluster_ip_list.is_empty() {
        cluster_ip.into_iter().collect()
    } else {
        cluster_ip_list.iter().map(String::as_str).collect()
    };
    let mut cluster_ips = Vec::new();
    for raw in raw_ips {
        if raw.is_empty() || raw == "None" {
            continue;
        }
        match raw.parse::<IpAddr>() {
            Ok(ip) => cluster_ips.push(ip),
            Err(_) => out.note(
                &key,
                NoteKind::InvalidAddress,
                format!("cluster IP {raw:?} is not an IP address; skipped"),
            ),
        }
    }
    cluster_ips.sort();
    cluster_ips.dedup();

    let ingress = ingress_addresses(ctx, out, &key, svc);
    let (endpoints, slice_ports) = collect_endpoints(out, &key, slices);

    // SRV records carry the port a client connects to. Through a VIP that is the
    // Service port; straight to a pod (headless, or `addresses: endpoints`) it is the
    // endpoint's target port, which only the slices know (a named targetPort resolves
    // per pod).
    let serves_endpoints = match addresses {
        Some(kind) => kind == AddressKind::Endpoints,
        None => headless,
    };
    let ports = service_ports(out, &key, svc, serves_endpoints.then_some(&slice_ports));

    ServiceExport {
        key,
        ports,
        cluster_ips,
        ingress,
        endpoints,
        headless,
        addresses,
        policy,
    }
}

/// LoadBalancer ingress addresses: each entry's IP, or for a hostname-only entry (AWS
/// ELB) the addresses the I/O edge resolved for it. A LoadBalancer without ingress yet
/// exports none (DESIGN.md §5), which is noted, not refused: the export still exists
/// and the readers decide what to serve.
fn ingress_addresses(
    ctx: &ExportContext<'_>,
    out: &mut Outcome,
    key: &ServiceKey,
    svc: &Service,
) -> Vec<IpAddr> {
    // Only a LoadBalancer's status is its ingress; a stale status left on a Service
    // whose type changed is not an address anyone provisioned for it.
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    if !is_lb {
        return Vec::new();
    }
    let entries = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[]);
    let mut ingress = Vec::new();
    let mut any_entry = false;
    for entry in entries {
        let ip = entry.ip.as_deref().filter(|s| !s.is_empty());
        let hostname = entry.hostname.as_deref().filter(|s| !s.is_empty());
        match (ip, hostname) {
            (Some(raw), _) => {
                any_entry = true;
                match raw.parse::<IpAddr>() {
                    Ok(ip) => ingress.push(ip),
                    Err(_) => out.note(
                        key,
                        NoteKind::InvalidAddress,
                        format!("ingress IP {raw:?} is not an IP address; skipped"),
                    ),
                }
            }
            (None, Some(host)) => {
                any_entry = true;
                out.wanted.insert(host.to_string());
                match ctx.resolved.get(host) {
                    Some(ips) if !ips.is_empty() => ingress.extend(ips.iter().copied()),
                    _ => out.note(
                        key,
                        NoteKind::IngressUnresolved,
                        format!("ingress hostname {host:?} has no resolved address yet"),
                    ),
                }
            }
            (None, None) => {}
        }
    }
    if !any_entry {
        out.note(
            key,
            NoteKind::LbPending,
            "LoadBalancer has no ingress yet; no ingress address is exported".into(),
        );
    }
    ingress.sort();
    ingress.dedup();
    ingress
}

/// Port numbers seen in slices for one (port name, protocol), with the addresses of the
/// endpoints behind each number (all, and ready).
type SlicePorts = BTreeMap<(String, Protocol), BTreeMap<u16, PortUse>>;

#[derive(Default)]
struct PortUse {
    all: BTreeSet<IpAddr>,
    ready: BTreeSet<IpAddr>,
}

/// The union of every IPv4/IPv6 slice's endpoints, deduplicated by address, sorted by
/// address; and the target ports the slices carry.
fn collect_endpoints(
    out: &mut Outcome,
    key: &ServiceKey,
    slices: &[&EndpointSlice],
) -> (Vec<Endpoint>, SlicePorts) {
    let mut by_addr: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    let mut ports = SlicePorts::new();
    for slice in slices {
        // FQDN slices have no defined semantics (and the controller never writes them);
        // anything else unknown is skipped the same way.
        let want_v4 = match slice.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            _ => continue,
        };
        let slice_ports: Vec<((String, Protocol), u16)> = slice
            .ports
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .filter_map(|p| {
                let protocol = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?;
                let number = u16::try_from(p.port?).ok().filter(|n| *n != 0)?;
                Some(((p.name.clone().unwrap_or_default(), protocol), number))
            })
            .collect();
        for e in &slice.endpoints {
            // nil means ready (the API's own rule). A terminating pod is ready=false
            // unless the Service publishes not-ready addresses, in which case the
            // controller writes ready=true: honouring `ready` alone gets both right.
            let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            let hostname = e.hostname.as_deref().and_then(|h| HostLabel::parse(h).ok());
            let pod_name = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref())
                .and_then(|n| HostLabel::parse(n).ok());
            for raw in &e.addresses {
                let address = match raw.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv4() == want_v4 => ip,
                    _ => {
                        out.note(
                            key,
                            NoteKind::InvalidAddress,
                            format!(
                                "endpoint address {raw:?} is not an {} address; skipped",
                                slice.address_type
                            ),
                        );
                        continue;
                    }
                };
                for (port_key, number) in &slice_ports {
                    let used = ports
                        .entry(port_key.clone())
                        .or_default()
                        .entry(*number)
                        .or_default();
                    used.all.insert(address);
                    if ready {
                        used.ready.insert(address);
                    }
                }
                let candidate = Endpoint {
                    address,
                    hostname: hostname.clone(),
                    pod_name: pod_name.clone(),
                    ready,
                    zone: e.zone.clone(),
                };
                match by_addr.get(&address) {
                    Some(kept) if !replaces(&candidate, kept) => {}
                    _ => {
                        by_addr.insert(address, candidate);
                    }
                }
            }
        }
    }
    (by_addr.into_values().collect(), ports)
}

/// Whether `new` should replace `kept` for the same address.
///
/// The same address in two slices is one endpoint caught mid-move (the controller
/// writes its new slice before it prunes the old one), so the copies describe two
/// moments and neither is known to be newer. Ready wins, as in the file source: a
/// stale not-ready copy must not hide a serving pod, while a stale ready copy lasts
/// only until the old slice is pruned. Then the copy that says more (hostname, pod,
/// zone), and last the smaller by `Ord`, so the choice never depends on input order.
fn replaces(new: &Endpoint, kept: &Endpoint) -> bool {
    let rank = |e: &Endpoint| {
        (
            e.ready,
            e.hostname.is_some(),
            e.pod_name.is_some(),
            e.zone.is_some(),
        )
    };
    match rank(new).cmp(&rank(kept)) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => new < kept,
    }
}

/// The Service's ports in spec order. With `target` (the export serves pods directly),
/// each port number is the endpoints' target port for that port name and protocol.
fn service_ports(
    out: &mut Outcome,
    key: &ServiceKey,
    svc: &Service,
    target: Option<&SlicePorts>,
) -> Vec<ServicePort> {
    let spec_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let mut ports = Vec::new();
    for p in spec_ports {
        let raw_name = p.name.as_deref().unwrap_or("");
        let raw_protocol = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(raw_protocol) else {
            out.note(
                key,
                NoteKind::InvalidPort,
                format!(
                    "port {raw_name:?} protocol {raw_protocol:?} is not TCP, UDP or SCTP; skipped"
                ),
            );
            continue;
        };
        let Some(service_port) = u16::try_from(p.port).ok().filter(|n| *n != 0) else {
            out.note(
                key,
                NoteKind::InvalidPort,
                format!("port {raw_name:?} number {} is not a port; skipped", p.port),
            );
            continue;
        };
        let port = match target {
            None => service_port,
            Some(slice_ports) => target_port(slice_ports, raw_name, protocol)
                .or_else(|| match &p.target_port {
                    // No endpoint carries the port yet (then there is no endpoint to
                    // answer for either): a numeric targetPort says it; a named one
                    // resolves per pod, so the Service port stands in.
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
                    _ => None,
                })
                .unwrap_or(service_port),
        };
        let name = if raw_name.is_empty() {
            None
        } else {
            match PortName::parse(raw_name) {
                Ok(name) => Some(name),
                Err(e) => {
                    // Kubernetes allows any DNS label; SRV owner names need an IANA
                    // service name (model.rs). The port stays, without SRV.
                    out.note(key, NoteKind::PortWithoutSrv, e.to_string());
                    None
                }
            }
        };
        ports.push(ServicePort {
            name,
            port,
            protocol,
        });
    }
    ports
}

/// The target port for one Service port, from the slices. A named targetPort can
/// resolve to different numbers on different pods (mid-rollout), but an export has one
/// number per port: take the one behind the most ready endpoints, then the most
/// endpoints, then the lowest number.
fn target_port(slice_ports: &SlicePorts, name: &str, protocol: Protocol) -> Option<u16> {
    slice_ports
        .get(&(name.to_string(), protocol))?
        .iter()
        .max_by_key(|(number, used)| (used.ready.len(), used.all.len(), Reverse(**number)))
        .map(|(number, _)| *number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: Namespace::parse(ns).unwrap(),
            name: ServiceName::parse(name).unwrap(),
        }
    }

    const EXPORT: &str = "fleetdns.io/export";

    fn exported() -> Value {
        json!({ EXPORT: "true" })
    }

    /// A Service as the API server returns it; `spec` and `status` are merged over a
    /// plain single-stack ClusterIP Service with one named port.
    fn service(ns: &str, name: &str, annotations: Value, spec: Value, status: Value) -> Service {
        let mut base_spec = json!({
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster"
        });
        if let (Some(base), Some(over)) = (base_spec.as_object_mut(), spec.as_object()) {
            for (k, v) in over {
                base.insert(k.clone(), v.clone());
            }
        }
        let mut status_json = json!({"loadBalancer": {}});
        if !status.is_null() {
            status_json = status;
        }
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": format!("0000-{ns}-{name}"),
                "resourceVersion": "1234",
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "annotations": annotations
            },
            "spec": base_spec,
            "status": status_json
        }))
        .expect("Service JSON")
    }

    fn plain(ns: &str, name: &str, annotations: Value) -> Service {
        service(ns, name, annotations, json!({}), Value::Null)
    }

    fn slice(
        ns: &str,
        name: &str,
        svc: &str,
        family: &str,
        ports: Value,
        endpoints: Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": ns,
                "generateName": format!("{svc}-"),
                "labels": {
                    "kubernetes.io/service-name": svc,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc, "uid": "x"}]
            },
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints
        }))
        .expect("EndpointSlice JSON")
    }

    fn http_port() -> Value {
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    }

    /// An endpoint as the EndpointSlice controller writes it for a pod.
    fn pod(addr: &str, pod: &str, ready: bool, terminating: bool) -> Value {
        json!({
            "addresses": [addr],
            "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod, "uid": "u"},
            "zone": "us-east-1a"
        })
    }

    struct Fixture {
        cluster: ClusterId,
        labels: BTreeMap<String, String>,
        settings: ExportSettings,
        mcs: McsExports,
        resolved: BTreeMap<String, Vec<IpAddr>>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                cluster: ClusterId::parse("east").unwrap(),
                labels: BTreeMap::from([("region".to_string(), "us-east".to_string())]),
                settings: ExportSettings::default(),
                mcs: McsExports::NotServed,
                resolved: BTreeMap::new(),
            }
        }

        fn with_service_exports(mut self, keys: &[(&str, &str)]) -> Self {
            self.mcs = McsExports::Served(
                keys.iter()
                    .map(|(ns, n)| (ns.to_string(), n.to_string()))
                    .collect(),
            );
            self
        }

        fn run(&self, services: &[Service], slices: &[EndpointSlice]) -> ExportOutcome {
            let ctx = ExportContext {
                cluster: &self.cluster,
                labels: &self.labels,
                settings: &self.settings,
                mcs: &self.mcs,
                resolved: &self.resolved,
            };
            compute(&ctx, services, slices)
        }
    }

    fn exported_keys(out: &ExportOutcome) -> Vec<String> {
        out.exports.services.keys().map(|k| k.to_string()).collect()
    }

    fn refusals(out: &ExportOutcome) -> Vec<(String, ExportRefusal)> {
        out.refused
            .iter()
            .map(|r| (format!("{}/{}", r.namespace, r.name), r.reason))
            .collect()
    }

    fn notes(out: &ExportOutcome, kind: NoteKind) -> Vec<String> {
        out.notes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| format!("{}: {}", n.key, n.detail))
            .collect()
    }

    fn export<'o>(out: &'o ExportOutcome, ns: &str, name: &str) -> &'o ServiceExport {
        out.exports
            .services
            .get(&key(ns, name))
            .unwrap_or_else(|| panic!("{ns}/{name} not exported: {out:#?}"))
    }

    #[test]
    fn an_annotated_service_exports_its_vip_ports_endpoints_and_cluster_labels() {
        let out = Fixture::new().run(
            &[plain("default", "web", exported())],
            &[slice(
                "default",
                "web-abc12",
                "web",
                "IPv4",
                http_port(),
                json!([
                    pod("10.1.0.6", "web-7d9f-b", true, false),
                    pod("10.1.0.5", "web-7d9f-a", true, false)
                ]),
            )],
        );
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(out.exports.cluster.as_str(), "east");
        assert_eq!(out.exports.labels["region"], "us-east");
        let web = export(&out, "default", "web");
        assert_eq!(web.cluster_ips, ips(&["10.96.0.10"]));
        assert!(web.ingress.is_empty());
        assert!(!web.headless);
        assert_eq!(web.addresses, None);
        assert_eq!(web.policy, Policy::LocalPreferred);
        // Through the VIP a client connects to the Service port, not the target port.
        assert_eq!(
            web.ports,
            vec![ServicePort {
                name: Some(PortName::parse("http").unwrap()),
                port: 80,
                protocol: Protocol::Tcp
            }]
        );
        let addrs: Vec<IpAddr> = web.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(addrs, ips(&["10.1.0.5", "10.1.0.6"]), "sorted by address");
        let first = &web.endpoints[0];
        assert_eq!(first.pod_name.as_ref().unwrap().as_str(), "web-7d9f-a");
        assert_eq!(first.hostname, None);
        assert_eq!(first.zone.as_deref(), Some("us-east-1a"));
        assert!(first.ready);
    }

    #[test]
    fn unmarked_services_are_neither_exported_nor_refused() {
        let out = Fixture::new().with_service_exports(&[]).run(
            &[
                plain("default", "web", json!({})),
                plain("default", "api", json!({EXPORT: "false"})),
                plain("default", "db", Value::Null),
            ],
            &[],
        );
        assert!(out.exports.services.is_empty());
        assert!(out.refused.is_empty(), "{:?}", out.refused);
    }

    #[test]
    fn a_service_export_exports_in_auto_mode_when_the_crd_is_served() {
        let fx = Fixture::new().with_service_exports(&[("default", "web")]);
        let out = fx.run(
            &[
                plain("default", "web", json!({})),
                plain("default", "api", json!({})),
            ],
            &[],
        );
        assert_eq!(exported_keys(&out), ["default/web"]);
        // A ServiceExport exports whatever the annotation says: it is the MCS
        // declaration, and the annotation is only the way without MCS.
        let out = fx.run(&[plain("default", "web", json!({EXPORT: "false"}))], &[]);
        assert_eq!(exported_keys(&out), ["default/web"]);
    }

    #[test]
    fn service_exports_are_ignored_in_annotation_mode() {
        let mut fx =
            Fixture::new().with_service_exports(&[("default", "web"), ("default", "gone")]);
        fx.settings.mode = ExportMode::Annotation;
        let out = fx.run(
            &[
                plain("default", "web", json!({})),
                plain("default", "api", exported()),
            ],
            &[],
        );
        assert_eq!(exported_keys(&out), ["default/api"]);
        assert!(
            out.refused.is_empty(),
            "not even no-service: {:?}",
            out.refused
        );
    }

    #[test]
    fn the_annotation_exports_in_both_modes_with_or_without_the_crd() {
        for mode in [ExportMode::Auto, ExportMode::Annotation] {
            for mcs in [McsExports::NotServed, McsExports::Served(BTreeSet::new())] {
                let mut fx = Fixture::new();
                fx.settings.mode = mode;
                fx.mcs = mcs.clone();
                let out = fx.run(&[plain("default", "web", exported())], &[]);
                assert_eq!(exported_keys(&out), ["default/web"], "{mode:?} {mcs:?}");
            }
        }
    }

    #[test]
    fn a_service_export_without_its_service_is_refused_no_service() {
        let out = Fixture::new()
            .with_service_exports(&[("default", "gone")])
            .run(&[plain("default", "web", json!({}))], &[]);
        assert!(out.exports.services.is_empty());
        assert_eq!(
            refusals(&out),
            [("default/gone".to_string(), ExportRefusal::NoService)]
        );
        assert!(
            out.refused[0].detail.contains("default/gone"),
            "{:?}",
            out.refused
        );
    }

    #[test]
    fn a_garbage_export_annotation_is_refused_naming_the_value() {
        let out = Fixture::new().run(&[plain("default", "web", json!({EXPORT: "yes"}))], &[]);
        assert!(out.exports.services.is_empty());
        assert_eq!(
            refusals(&out),
            [("default/web".to_string(), ExportRefusal::InvalidAnnotation)]
        );
        assert!(
            out.refused[0].detail.contains("\"yes\""),
            "{:?}",
            out.refused
        );
    }

    #[test]
    fn denied_namespaces_refuse_marked_services_and_deny_wins_over_allow() {
        let mut fx =
            Fixture::new().with_service_exports(&[("kube-system", "dns"), ("kube-system", "gone")]);
        fx.settings.allow_namespaces = vec![
            Namespace::parse("kube-system").unwrap(),
            Namespace::parse("default").unwrap(),
        ];
        fx.settings.deny_namespaces = vec![Namespace::parse("kube-system").unwrap()];
        let out = fx.run(
            &[
                plain("kube-system", "dns", json!({})),
                plain("kube-system", "metrics", exported()),
                plain("kube-system", "unmarked", json!({})),
                plain("default", "web", exported()),
            ],
            &[],
        );
        assert_eq!(exported_keys(&out), ["default/web"]);
        assert_eq!(
            refusals(&out),
            [
                (
                    "kube-system/dns".to_string(),
                    ExportRefusal::NamespaceDenied
                ),
                (
                    "kube-system/gone".to_string(),
                    ExportRefusal::NamespaceDenied
                ),
                (
                    "kube-system/metrics".to_string(),
                    ExportRefusal::NamespaceDenied
                ),
            ]
        );
        assert!(
            out.refused[0].detail.contains("export.namespaces.deny"),
            "{:?}",
            out.refused
        );
    }

    #[test]
    fn an_allow_list_limits_exports_to_its_namespaces() {
        let mut fx = Fixture::new();
        fx.settings.allow_namespaces = vec![Namespace::parse("shop").unwrap()];
        let out = fx.run(
            &[
                plain("shop", "cart", exported()),
                plain("default", "web", exported()),
            ],
            &[],
        );
        assert_eq!(exported_keys(&out), ["shop/cart"]);
        assert_eq!(
            refusals(&out),
            [("default/web".to_string(), ExportRefusal::NamespaceDenied)]
        );
        assert!(
            out.refused[0].detail.contains("export.namespaces.allow"),
            "{:?}",
            out.refused
        );
    }

    #[test]
    fn external_name_services_are_refused() {
        let svc = service(
            "default",
            "ext",
            exported(),
            json!({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": null, "clusterIPs": null, "ports": null, "selector": null}),
            json!({}),
        );
        let out = Fixture::new().run(&[svc], &[]);
        assert!(out.exports.services.is_empty());
        assert_eq!(
            refusals(&out),
            [("default/ext".to_string(), ExportRefusal::ExternalName)]
        );
        assert!(
            out.refused[0].detail.contains("db.example.com"),
            "{:?}",
            out.refused
        );
    }

    #[test]
    fn invalid_names_are_refused_naming_the_value() {
        let out = Fixture::new().run(
            &[
                plain("default", "Web_1", exported()),
                plain("Team.A", "web", exported()),
            ],
            &[],
        );
        assert!(out.exports.services.is_empty());
        assert_eq!(
            refusals(&out),
            [
                ("Team.A/web".to_string(), ExportRefusal::InvalidName),
                ("default/Web_1".to_string(), ExportRefusal::InvalidName),
            ]
        );
        assert!(
            out.refused[0].detail.contains("Team.A"),
            "{:?}",
            out.refused
        );
        assert!(out.refused[1].detail.contains("Web_1"), "{:?}", out.refused);
    }

    #[test]
    fn addresses_and_policy_annotations_set_the_export() {
        let out = Fixture::new().run(
            &[
                plain("default", "a", json!({EXPORT: "true", "fleetdns.io/addresses": "ingress", "fleetdns.io/policy": "all"})),
                plain("default", "b", json!({EXPORT: "true", "fleetdns.io/addresses": "none"})),
                plain("default", "c", json!({EXPORT: "true", "fleetdns.io/addresses": "clusterip", "fleetdns.io/policy": "local-preferred"})),
            ],
            &[],
        );
        assert_eq!(
            export(&out, "default", "a").addresses,
            Some(AddressKind::Ingress)
        );
        assert_eq!(export(&out, "default", "a").policy, Policy::All);
        assert_eq!(
            export(&out, "default", "b").addresses,
            Some(AddressKind::None)
        );
        assert_eq!(
            export(&out, "default", "c").addresses,
            Some(AddressKind::ClusterIp)
        );
        assert_eq!(export(&out, "default", "c").policy, Policy::LocalPreferred);
    }

    #[test]
    fn bad_addresses_or_policy_annotations_are_refused_naming_the_value() {
        let out = Fixture::new().run(
            &[
                plain(
                    "default",
                    "a",
                    json!({EXPORT: "true", "fleetdns.io/addresses": "public"}),
                ),
                plain(
                    "default",
                    "b",
                    json!({EXPORT: "true", "fleetdns.io/policy": "nearest"}),
                ),
                // Annotations of a Service nobody exports are nobody's business.
                plain("default", "c", json!({"fleetdns.io/policy": "nearest"})),
            ],
            &[],
        );
        assert!(out.exports.services.is_empty());
        assert_eq!(
            refusals(&out),
            [
                ("default/a".to_string(), ExportRefusal::InvalidAnnotation),
                ("default/b".to_string(), ExportRefusal::InvalidAnnotation),
            ]
        );
        assert!(
            out.refused[0].detail.contains("\"public\""),
            "{:?}",
            out.refused
        );
        assert!(
            out.refused[1].detail.contains("\"nearest\""),
            "{:?}",
            out.refused
        );
    }

    #[test]
    fn not_ready_and_terminating_endpoints_are_not_ready() {
        let out = Fixture::new().run(
            &[plain("default", "web", exported())],
            &[slice(
                "default",
                "web-1",
                "web",
                "IPv4",
                http_port(),
                json!([
                    pod("10.1.0.1", "ok", true, false),
                    pod("10.1.0.2", "starting", false, false),
                    // Terminating: the controller writes ready=false.
                    pod("10.1.0.3", "leaving", false, true),
                    // publishNotReadyAddresses: the controller writes ready=true even
                    // while terminating, and the Service owner asked for it.
                    pod("10.1.0.4", "published", true, true),
                    // The API says a nil condition means ready.
                    {"addresses": ["10.1.0.5"]},
                    {"addresses": ["10.1.0.6"], "conditions": {"serving": false}}
                ]),
            )],
        );
        let web = export(&out, "default", "web");
        let ready: Vec<(String, bool)> = web
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.ready))
            .collect();
        assert_eq!(
            ready,
            [
                ("10.1.0.1".to_string(), true),
                ("10.1.0.2".to_string(), false),
                ("10.1.0.3".to_string(), false),
                ("10.1.0.4".to_string(), true),
                ("10.1.0.5".to_string(), true),
                ("10.1.0.6".to_string(), true),
            ]
        );
        assert_eq!(web.ready_count(), 4);
    }

    #[test]
    fn endpoints_duplicated_across_slices_are_one_endpoint_and_ready_wins() {
        // Mid-move: the same pods appear in the slice they are leaving and the one
        // they are joining, with different readiness.
        let slices = [
            slice(
                "default",
                "web-a",
                "web",
                "IPv4",
                http_port(),
                json!([
                    pod("10.1.0.1", "web-0", false, false),
                    pod("10.1.0.2", "web-1", true, false),
                ]),
            ),
            slice(
                "default",
                "web-b",
                "web",
                "IPv4",
                http_port(),
                json!([
                    pod("10.1.0.1", "web-0", true, false),
                    pod("10.1.0.2", "web-1", false, false),
                    pod("10.1.0.3", "web-2", true, false),
                ]),
            ),
        ];
        for order in [[0, 1], [1, 0]] {
            let input = [slices[order[0]].clone(), slices[order[1]].clone()];
            let out = Fixture::new().run(&[plain("default", "web", exported())], &input);
            let web = export(&out, "default", "web");
            assert_eq!(web.endpoints.len(), 3, "{:?}", web.endpoints);
            assert!(web.endpoints.iter().all(|e| e.ready), "{:?}", web.endpoints);
        }
    }

    #[test]
    fn a_dual_stack_service_exports_both_families() {
        let svc = service(
            "default",
            "web",
            exported(),
            json!({
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ipFamilyPolicy": "RequireDualStack"
            }),
            Value::Null,
        );
        let slices = [
            slice(
                "default",
                "web-v4",
                "web",
                "IPv4",
                http_port(),
                json!([pod("10.1.0.5", "web-a", true, false)]),
            ),
            slice(
                "default",
                "web-v6",
                "web",
                "IPv6",
                http_port(),
                json!([pod("fd00:1::5", "web-a", true, false)]),
            ),
        ];
        let out = Fixture::new().run(&[svc], &slices);
        let web = export(&out, "default", "web");
        assert_eq!(web.cluster_ips, ips(&["10.96.0.10", "fd00:96::10"]));
        let addrs: Vec<IpAddr> = web.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(addrs, ips(&["10.1.0.5", "fd00:1::5"]));
        // One pod, two addresses: one per-endpoint name with both.
        assert!(web.endpoints.iter().all(|e| e.label().as_str() == "web-a"));
    }

    #[test]
    fn fqdn_slices_and_other_services_slices_are_not_mixed_in() {
        let slices = [
            slice(
                "default",
                "web-fqdn",
                "web",
                "FQDN",
                http_port(),
                json!([{"addresses": ["db.example.com"]}]),
            ),
            slice(
                "default",
                "web-v4",
                "web",
                "IPv4",
                http_port(),
                json!([pod("10.1.0.5", "web-a", true, false)]),
            ),
            slice(
                "default",
                "api-v4",
                "api",
                "IPv4",
                http_port(),
                json!([pod("10.1.0.6", "api-a", true, false)]),
            ),
            slice(
                "other",
                "web-v4",
                "web",
                "IPv4",
                http_port(),
                json!([pod("10.1.0.7", "web-b", true, false)]),
            ),
        ];
        let out = Fixture::new().run(&[plain("default", "web", exported())], &slices);
        let web = export(&out, "default", "web");
        let addrs: Vec<IpAddr> = web.endpoints.iter().map(|e| e.address).collect();
        assert_eq!(addrs, ips(&["10.1.0.5"]));
        assert!(
            out.notes.is_empty(),
            "an FQDN slice is not an error: {:?}",
            out.notes
        );
    }

    #[test]
    fn a_headless_service_exports_hostnames_pod_names_and_target_ports() {
        let svc = service(
            "shop",
            "db",
            exported(),
            json!({
                "clusterIP": "None",
                "clusterIPs": ["None"],
                "ports": [
                    {"name": "postgres", "port": 5432, "protocol": "TCP", "targetPort": "pg"},
                    {"name": "metrics", "port": 9000, "protocol": "TCP", "targetPort": 9187}
                ]
            }),
            Value::Null,
        );
        let ports = json!([
            {"name": "postgres", "port": 15432, "protocol": "TCP"},
            {"name": "metrics", "port": 9187, "protocol": "TCP"}
        ]);
        let mut with_hostname = pod("10.1.0.5", "db-0", true, false);
        with_hostname["hostname"] = json!("db-0");
        let mut bad_hostname = pod("10.1.0.6", "db-1", true, false);
        bad_hostname["hostname"] = json!("Not_A_Label");
        let long_pod = pod("10.1.0.7", &"p".repeat(64), true, false);
        let out = Fixture::new().run(
            &[svc],
            &[slice(
                "shop",
                "db-x",
                "db",
                "IPv4",
                ports,
                json!([with_hostname, bad_hostname, long_pod]),
            )],
        );
        let db = export(&out, "shop", "db");
        assert!(db.headless);
        assert!(db.cluster_ips.is_empty(), "\"None\" is not an address");
        let labels: Vec<String> = db.endpoints.iter().map(|e| e.label().to_string()).collect();
        assert_eq!(labels, ["db-0", "db-1", "10-1-0-7"]);
        // SRV to a pod carries the port the pod listens on.
        let numbers: Vec<(String, u16)> = db
            .ports
            .iter()
            .map(|p| (p.name.as_ref().unwrap().to_string(), p.port))
            .collect();
        assert_eq!(
            numbers,
            [
                ("postgres".to_string(), 15432),
                ("metrics".to_string(), 9187)
            ]
        );
    }

    #[test]
    fn a_headless_target_port_follows_the_ready_majority_mid_rollout() {
        // A named targetPort moved from 5432 to 6432: old pods and new pods sit in
        // different slices (the controller groups endpoints by port set).
        let svc = service(
            "shop",
            "db",
            exported(),
            json!({"clusterIP": "None", "clusterIPs": ["None"],
                   "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": "pg"}]}),
            Value::Null,
        );
        let old = |ready| {
            slice(
                "shop",
                "db-old",
                "db",
                "IPv4",
                json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
                json!([
                    pod("10.1.0.1", "db-a", ready, false),
                    pod("10.1.0.2", "db-b", ready, false)
                ]),
            )
        };
        let new = slice(
            "shop",
            "db-new",
            "db",
            "IPv4",
            json!([{"name": "pg", "port": 6432, "protocol": "TCP"}]),
            json!([pod("10.1.0.3", "db-c", true, false)]),
        );
        let port = |out: &ExportOutcome| export(out, "shop", "db").ports[0].port;
        let out = Fixture::new().run(std::slice::from_ref(&svc), &[old(true), new.clone()]);
        assert_eq!(port(&out), 5432);
        let out = Fixture::new().run(std::slice::from_ref(&svc), &[old(false), new]);
        assert_eq!(port(&out), 6432);
        // No endpoint carries the port: the spec's numeric targetPort, else the port.
        let out = Fixture::new().run(std::slice::from_ref(&svc), &[]);
        assert_eq!(port(&out), 5432);
    }

    #[test]
    fn an_endpoints_override_exports_target_ports_too() {
        let svc = plain(
            "default",
            "web",
            json!({EXPORT: "true", "fleetdns.io/addresses": "endpoints"}),
        );
        let out = Fixture::new().run(&[svc], &[]);
        assert_eq!(
            export(&out, "default", "web").ports[0].port,
            8080,
            "spec targetPort"
        );
    }

    fn load_balancer(ingress: Value) -> Service {
        service(
            "default",
            "web",
            exported(),
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": true,
                   "externalTrafficPolicy": "Cluster",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 31080}]}),
            json!({"loadBalancer": ingress}),
        )
    }

    #[test]
    fn a_pending_load_balancer_exports_no_ingress_and_is_noted_not_refused() {
        let out = Fixture::new().run(&[load_balancer(json!({}))], &[]);
        let web = export(&out, "default", "web");
        assert!(web.ingress.is_empty());
        assert_eq!(web.cluster_ips, ips(&["10.96.0.10"]));
        assert!(out.refused.is_empty());
        assert_eq!(notes(&out, NoteKind::LbPending).len(), 1, "{:?}", out.notes);
        assert!(out.wanted_hostnames.is_empty());
    }

    #[test]
    fn load_balancer_ingress_ips_are_exported() {
        let out = Fixture::new().run(
            &[load_balancer(json!({"ingress": [
                {"ip": "203.0.113.10", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]},
                {"ip": "2001:db8::10"}
            ]}))],
            &[],
        );
        assert_eq!(
            export(&out, "default", "web").ingress,
            ips(&["203.0.113.10", "2001:db8::10"])
        );
        assert!(out.notes.is_empty(), "{:?}", out.notes);
    }

    #[test]
    fn a_hostname_only_ingress_is_wanted_then_exported_once_resolved() {
        const ELB: &str = "a1b2-123.us-east-1.elb.amazonaws.com";
        let lb = load_balancer(json!({"ingress": [{"hostname": ELB}]}));
        let mut fx = Fixture::new();
        let out = fx.run(std::slice::from_ref(&lb), &[]);
        assert_eq!(out.wanted_hostnames, BTreeSet::from([ELB.to_string()]));
        assert!(export(&out, "default", "web").ingress.is_empty());
        assert_eq!(
            notes(&out, NoteKind::IngressUnresolved).len(),
            1,
            "{:?}",
            out.notes
        );
        assert!(notes(&out, NoteKind::LbPending).is_empty());

        fx.resolved
            .insert(ELB.to_string(), ips(&["198.51.100.7", "198.51.100.6"]));
        let out = fx.run(std::slice::from_ref(&lb), &[]);
        assert_eq!(
            out.wanted_hostnames,
            BTreeSet::from([ELB.to_string()]),
            "still re-resolved"
        );
        assert_eq!(
            export(&out, "default", "web").ingress,
            ips(&["198.51.100.6", "198.51.100.7"])
        );
        assert!(out.notes.is_empty(), "{:?}", out.notes);
    }

    #[test]
    fn ingress_status_counts_only_for_load_balancers_and_only_exported_ones_are_resolved() {
        let mut not_lb = load_balancer(json!({"ingress": [{"ip": "203.0.113.10"}]}));
        not_lb.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let mut unexported = load_balancer(json!({"ingress": [{"hostname": "x.example"}]}));
        unexported.metadata.name = Some("other".into());
        unexported.metadata.annotations = None;
        let out = Fixture::new().run(&[not_lb, unexported], &[]);
        assert!(export(&out, "default", "web").ingress.is_empty());
        assert!(out.wanted_hostnames.is_empty());
    }

    #[test]
    fn a_service_with_no_address_at_all_is_still_exported() {
        // Selector-less, headless, no slices: nothing to answer, but the export
        // exists and the admin API must show it (the reader says why it has no names).
        let svc = service(
            "default",
            "empty",
            exported(),
            json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": null, "ports": null}),
            Value::Null,
        );
        let out = Fixture::new().run(&[svc], &[]);
        let e = export(&out, "default", "empty");
        assert!(e.cluster_ips.is_empty() && e.ingress.is_empty() && e.endpoints.is_empty());
        assert!(e.ports.is_empty());
    }

    #[test]
    fn a_deleted_service_is_absent_from_the_next_output() {
        let fx = Fixture::new();
        let web = plain("default", "web", exported());
        let api = plain("default", "api", exported());
        let slices = [slice(
            "default",
            "web-1",
            "web",
            "IPv4",
            http_port(),
            json!([pod("10.1.0.5", "w", true, false)]),
        )];
        let before = fx.run(&[web.clone(), api.clone()], &slices);
        assert_eq!(exported_keys(&before), ["default/api", "default/web"]);
        // Gone from the store (its slices may linger a moment: they do not resurrect it).
        let after = fx.run(std::slice::from_ref(&api), &slices);
        assert_eq!(exported_keys(&after), ["default/api"]);
        // Being deleted (held by a finalizer): already withdrawn.
        let mut deleting = web;
        deleting.metadata.deletion_timestamp =
            serde_json::from_value(json!("2025-01-02T00:00:00Z")).unwrap();
        let during = fx.run(&[deleting, api], &slices);
        assert_eq!(exported_keys(&during), ["default/api"]);
    }

    #[test]
    fn garbage_addresses_are_skipped_and_noted() {
        let svc = service(
            "default",
            "web",
            exported(),
            json!({"clusterIP": "10.96.0.300", "clusterIPs": ["10.96.0.300", "fd00::10"]}),
            Value::Null,
        );
        let slices = [
            slice(
                "default",
                "v4",
                "web",
                "IPv4",
                http_port(),
                json!([
                    {"addresses": ["not-an-ip", "10.1.0.5", "fd00::1"]}
                ]),
            ),
            slice(
                "default",
                "v6",
                "web",
                "IPv6",
                http_port(),
                json!([{"addresses": ["fe80::1%eth0"]}]),
            ),
        ];
        let out = Fixture::new().run(&[svc], &slices);
        let web = export(&out, "default", "web");
        assert_eq!(web.cluster_ips, ips(&["fd00::10"]));
        assert_eq!(web.endpoints.len(), 1);
        assert_eq!(web.endpoints[0].address, ip("10.1.0.5"));
        let bad = notes(&out, NoteKind::InvalidAddress);
        assert_eq!(bad.len(), 4, "{bad:?}");
        for value in ["10.96.0.300", "not-an-ip", "fd00::1", "fe80::1%eth0"] {
            assert!(
                bad.iter().any(|n| n.contains(value)),
                "{value} not named in {bad:?}"
            );
        }
    }

    #[test]
    fn port_names_that_are_not_srv_labels_export_unnamed_and_are_noted() {
        let svc = service(
            "default",
            "web",
            exported(),
            json!({"ports": [
                {"name": "http-metrics-port", "port": 9090, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 8443}
            ]}),
            Value::Null,
        );
        let out = Fixture::new().run(&[svc], &[]);
        let web = export(&out, "default", "web");
        let ports: Vec<(Option<String>, u16, Protocol)> = web
            .ports
            .iter()
            .map(|p| (p.name.as_ref().map(|n| n.to_string()), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (None, 9090, Protocol::Tcp),
                (Some("dns".to_string()), 53, Protocol::Udp),
                (None, 8443, Protocol::Tcp),
            ]
        );
        let noted = notes(&out, NoteKind::PortWithoutSrv);
        assert!(
            noted.len() == 1 && noted[0].contains("http-metrics-port"),
            "{noted:?}"
        );
    }

    #[test]
    fn objects_missing_spec_metadata_or_fields_do_not_panic() {
        let bare_service: Service = serde_json::from_value(json!({"metadata": {}})).unwrap();
        let no_spec: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "annotations": {EXPORT: "true"}}
        }))
        .unwrap();
        let no_ns: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {EXPORT: "true"}}
        }))
        .unwrap();
        let bare_slice: EndpointSlice =
            serde_json::from_value(json!({"metadata": {}, "addressType": "IPv4", "endpoints": []}))
                .unwrap();
        let weird_slice = slice(
            "default",
            "s",
            "web",
            "IPv4",
            json!([{"port": -1}, {"name": "x", "port": 70000}, {}]),
            json!([{"addresses": []}, {"addresses": ["10.1.0.1"], "targetRef": {"kind": "Node"}}]),
        );
        let out = Fixture::new().run(&[bare_service, no_spec, no_ns], &[bare_slice, weird_slice]);
        let web = export(&out, "default", "web");
        assert!(web.ports.is_empty() && web.cluster_ips.is_empty() && !web.headless);
        assert_eq!(web.endpoints.len(), 1);
        assert_eq!(web.endpoints[0].pod_name, None, "a Node is not a pod");
        assert_eq!(
            refusals(&out),
            [("/web".to_string(), ExportRefusal::InvalidName)]
        );
    }

    #[test]
    fn reflector_store_arcs_are_accepted_without_cloning_the_objects() {
        let services = [Arc::new(plain("default", "web", exported()))];
        let slices = [Arc::new(slice(
            "default",
            "web-1",
            "web",
            "IPv4",
            http_port(),
            json!([pod("10.1.0.5", "w", true, false)]),
        ))];
        let fx = Fixture::new();
        let ctx = ExportContext {
            cluster: &fx.cluster,
            labels: &fx.labels,
            settings: &fx.settings,
            mcs: &fx.mcs,
            resolved: &fx.resolved,
        };
        let from_arcs = compute(&ctx, services.iter().cloned(), slices.iter().cloned());
        let from_refs = compute(
            &ctx,
            services.iter().map(|s| &**s),
            slices.iter().map(|s| &**s),
        );
        assert_eq!(from_arcs, from_refs);
        assert_eq!(from_arcs.exports.services.len(), 1);
    }

    #[test]
    fn reasons_and_notes_serialize_as_their_metric_labels() {
        for r in [
            ExportRefusal::NamespaceDenied,
            ExportRefusal::NoService,
            ExportRefusal::ExternalName,
            ExportRefusal::InvalidName,
            ExportRefusal::InvalidAnnotation,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
        }
        for n in [
            NoteKind::LbPending,
            NoteKind::IngressUnresolved,
            NoteKind::InvalidAddress,
            NoteKind::InvalidPort,
            NoteKind::PortWithoutSrv,
        ] {
            assert_eq!(serde_json::to_value(n).unwrap(), json!(n.as_str()));
        }
    }

    // ---- properties ----

    /// An endpoint drawn from a small pool so that slices share addresses.
    fn arb_endpoint(v6: bool) -> impl Strategy<Value = Value> {
        (
            0u8..6,
            prop::option::of(any::<bool>()),
            prop::option::of(0u8..3),
            prop::option::of(0u8..3),
            prop::option::of(0u8..2),
        )
            .prop_map(move |(a, ready, host, pod, zone)| {
                let address = if v6 {
                    format!("fd00::{a}")
                } else {
                    format!("10.1.0.{a}")
                };
                let mut e = json!({"addresses": [address]});
                if let Some(ready) = ready {
                    e["conditions"] = json!({"ready": ready});
                }
                if let Some(h) = host {
                    e["hostname"] = json!(format!("h{h}"));
                }
                if let Some(p) = pod {
                    e["targetRef"] = json!({"kind": "Pod", "name": format!("p{p}")});
                }
                if let Some(z) = zone {
                    e["zone"] = json!(format!("z{z}"));
                }
                e
            })
    }

    fn arb_slice() -> impl Strategy<Value = EndpointSlice> {
        (
            prop::sample::select(vec!["web", "db", "gone"]),
            prop::sample::select(vec!["IPv4", "IPv6", "FQDN"]),
            prop::sample::select(vec![5432u16, 6432]),
            0u32..1000,
        )
            .prop_flat_map(|(svc, family, port, id)| {
                prop::collection::vec(arb_endpoint(family == "IPv6"), 0..5).prop_map(move |eps| {
                    slice(
                        "default",
                        &format!("{svc}-{id}"),
                        svc,
                        family,
                        json!([{"name": "pg", "port": port, "protocol": "TCP"}]),
                        Value::Array(eps),
                    )
                })
            })
    }

    fn fleet_services() -> Vec<Service> {
        vec![
            service(
                "default",
                "web",
                exported(),
                json!({"clusterIPs": ["10.96.0.10", "fd00::10"]}),
                Value::Null,
            ),
            service(
                "default",
                "db",
                exported(),
                json!({"clusterIP": "None", "clusterIPs": ["None"],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP", "targetPort": "pg"}]}),
                Value::Null,
            ),
            service(
                "default",
                "lb",
                exported(),
                json!({"type": "LoadBalancer"}),
                json!({"loadBalancer": {"ingress": [{"hostname": "b.example"}, {"ip": "203.0.113.9"}, {"hostname": "a.example"}]}}),
            ),
            plain("default", "svcexp", json!({})),
            plain(
                "default",
                "bad",
                json!({EXPORT: "maybe", "fleetdns.io/policy": "nearest"}),
            ),
            plain("denied", "web", exported()),
            plain("default", "quiet", json!({})),
        ]
    }

    proptest! {
        #[test]
        fn shuffling_the_input_never_changes_the_output(
            (slices, shuffled_slices) in prop::collection::vec(arb_slice(), 0..8)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            shuffled_services in Just(fleet_services()).prop_shuffle(),
        ) {
            let mut fx = Fixture::new().with_service_exports(&[("default", "svcexp"), ("default", "missing"), ("denied", "x")]);
            fx.settings.deny_namespaces = vec![Namespace::parse("denied").unwrap()];
            fx.resolved.insert("a.example".into(), ips(&["198.51.100.2", "198.51.100.1"]));
            let expected = fx.run(&fleet_services(), &slices);
            let got = fx.run(&shuffled_services, &shuffled_slices);
            prop_assert_eq!(&expected, &got);
            for e in expected.exports.services.values() {
                prop_assert!(e.endpoints.windows(2).all(|w| w[0].address < w[1].address));
            }
        }

        #[test]
        fn garbage_objects_never_panic(
            text in prop::collection::vec(prop_oneof![
                Just(String::new()), Just("None".to_string()), Just("true".to_string()),
                Just("IPv4".to_string()), Just("IPv6".to_string()), Just("LoadBalancer".to_string()),
                Just("ExternalName".to_string()), Just("10.0.0.1".to_string()), Just("::".to_string()),
                ".{0,12}",
            ], 16),
            numbers in prop::collection::vec(any::<i32>(), 3),
            ready in prop::option::of(any::<bool>()),
        ) {
            let t = |i: usize| text[i].clone();
            let svc: Result<Service, _> = serde_json::from_value(json!({
                "metadata": {"name": t(0), "namespace": t(1),
                    "annotations": {EXPORT: t(2), "fleetdns.io/addresses": t(3), "fleetdns.io/policy": t(4)}},
                "spec": {"type": t(5), "clusterIP": t(6), "clusterIPs": [t(7), t(6)], "externalName": t(8),
                    "ports": [{"name": t(9), "port": numbers[0], "protocol": t(10), "targetPort": numbers[1]}]},
                "status": {"loadBalancer": {"ingress": [{"ip": t(11)}, {"hostname": t(12)}]}}
            }));
            let sl: Result<EndpointSlice, _> = serde_json::from_value(json!({
                "metadata": {"namespace": t(1), "labels": {SERVICE_NAME_LABEL: t(0)}},
                "addressType": t(13),
                "ports": [{"name": t(9), "port": numbers[2], "protocol": t(10)}],
                "endpoints": [{"addresses": [t(14), t(7)], "hostname": t(15), "conditions": {"ready": ready},
                    "targetRef": {"kind": "Pod", "name": t(15)}}]
            }));
            // Real API JSON with odd values: it must parse, so compute sees it.
            let (svc, sl) = (svc.expect("Service JSON"), sl.expect("EndpointSlice JSON"));
            let mut fx = Fixture::new().with_service_exports(&[(&text[1], &text[0])]);
            fx.resolved.insert(t(12), vec![ip("192.0.2.1")]);
            let _ = fx.run(&[svc], &[sl]);
        }
    }
}

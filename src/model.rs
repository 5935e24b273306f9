//! Validated names and the export data model.
//!
//! This module owns every type that carries a name or an address into the rest of
//! fleetdns. Parsing happens once, here ("parse, don't validate"): a `ClusterId` or a
//! `ServiceName` that exists is a valid DNS label, lowercase, and safe to put into a
//! domain name without further checks.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a name or value was rejected. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {value:?} is empty")]
    Empty { what: &'static str, value: String },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{what} {value:?} is not a DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    BadLabel { what: &'static str, value: String },
    #[error("{what} {value:?} must start with a letter")]
    MustStartWithLetter { what: &'static str, value: String },
    #[error(
        "cluster id {value:?} is reserved (svc, ns and dns-version name other trees of the zone)"
    )]
    ReservedCluster { value: String },
    #[error(
        "port name {value:?} is not an IANA service name: at most 15 lowercase letters, digits and single '-', with at least one letter"
    )]
    BadPortName { value: String },
}

fn check_label(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty {
            what,
            value: value.into(),
        });
    }
    if value.len() > 63 {
        return Err(NameError::TooLong {
            what,
            value: value.into(),
            max: 63,
        });
    }
    let bytes = value.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(ok_char) || !ok_edge(&bytes[0]) || !ok_edge(&bytes[bytes.len() - 1]) {
        return Err(NameError::BadLabel {
            what,
            value: value.into(),
        });
    }
    Ok(())
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        // `Arc<str>`: names are cloned into every persistent-map node a change copies,
        // so a clone must be a reference count, not an allocation.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

label_newtype!(
    /// A cluster id: exactly one RFC 1123 label (KEP-2149), never `svc`, `ns` or `dns-version`.
    ClusterId,
    "cluster id"
);
label_newtype!(
    /// A Kubernetes namespace name: one RFC 1123 label.
    Namespace,
    "namespace"
);
label_newtype!(
    /// A Kubernetes Service name: one RFC 1035 label (starts with a letter).
    ServiceName,
    "service name"
);
label_newtype!(
    /// One label naming a single endpoint (`web-0`, `10-1-0-5`).
    HostLabel,
    "endpoint hostname"
);
label_newtype!(
    /// A named port: an IANA service name (RFC 6335 §5.1), used as `_<port>` in SRV names.
    PortName,
    "port name"
);

/// The labels directly under the apex that are not cluster ids.
pub const RESERVED_CLUSTER_IDS: [&str; 3] = ["svc", "ns", "dns-version"];

impl ClusterId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_label("cluster id", s)?;
        if RESERVED_CLUSTER_IDS.contains(&s) {
            return Err(NameError::ReservedCluster { value: s.into() });
        }
        Ok(Self(s.into()))
    }
}

impl Namespace {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_label("namespace", s)?;
        Ok(Self(s.into()))
    }
}

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_label("service name", s)?;
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return Err(NameError::MustStartWithLetter {
                what: "service name",
                value: s.into(),
            });
        }
        Ok(Self(s.into()))
    }
}

impl HostLabel {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check_label("endpoint hostname", s)?;
        Ok(Self(s.into()))
    }

    /// The label of an endpoint without a hostname: its address with dashes
    /// (`10-1-0-5`; IPv6 `fd00::5` becomes `fd00--5`).
    pub fn from_address(addr: IpAddr) -> Self {
        let text = addr.to_string().replace(['.', ':'], "-");
        // An IPv6 address may start or end with "::" (e.g. "::1"), which would give a
        // label starting with '-'; pad with '0' so the label stays valid and unique.
        let text = match (text.starts_with('-'), text.ends_with('-')) {
            (true, true) => format!("0{text}0"),
            (true, false) => format!("0{text}"),
            (false, true) => format!("{text}0"),
            (false, false) => text,
        };
        Self(text.into())
    }
}

impl PortName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= 15
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b.iter().any(|c| c.is_ascii_lowercase())
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && !s.contains("--");
        if !valid {
            return Err(NameError::BadPortName { value: s.into() });
        }
        Ok(Self(s.into()))
    }
}

/// A service's identity inside one cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServiceKey {
    pub namespace: Namespace,
    pub name: ServiceName,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a port, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The SRV label for this protocol, without the underscore.
    pub fn srv_label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServicePort {
    /// Unnamed ports get no SRV record.
    pub name: Option<PortName>,
    pub port: u16,
    pub protocol: Protocol,
}

/// One backend address of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// The EndpointSlice `hostname`, if any.
    pub hostname: Option<HostLabel>,
    /// The `targetRef` pod name, kept only when it is usable as one DNS label.
    pub pod_name: Option<HostLabel>,
    pub ready: bool,
    pub zone: Option<String>,
}

impl Endpoint {
    /// The per-endpoint DNS label: hostname, else pod name, else the address with dashes.
    pub fn label(&self) -> HostLabel {
        self.hostname
            .clone()
            .or_else(|| self.pod_name.clone())
            .unwrap_or_else(|| HostLabel::from_address(self.address))
    }
}

/// Which of an export's address kinds a peer serves (the `fleetdns.io/addresses` override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressKind {
    Ingress,
    ClusterIp,
    Endpoints,
    None,
}

impl AddressKind {
    /// The spelling of the services file, the annotation and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::ClusterIp => "clusterip",
            Self::Endpoints => "endpoints",
            Self::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingress" => Some(Self::Ingress),
            "clusterip" => Some(Self::ClusterIp),
            "endpoints" => Some(Self::Endpoints),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// How the merged name `<svc>.<ns>.svc.<zone>` chooses clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The local cluster alone when it contributes, else every contributing cluster.
    #[default]
    LocalPreferred,
    /// Every contributing cluster.
    All,
}

impl Policy {
    /// The spelling of the services file, the annotation and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalPreferred => "local-preferred",
            Self::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local-preferred" => Some(Self::LocalPreferred),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

/// Everything one cluster says about one exported service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceExport {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    pub cluster_ips: Vec<IpAddr>,
    pub ingress: Vec<IpAddr>,
    /// Every endpoint, ready or not, deduplicated by address.
    pub endpoints: Vec<Endpoint>,
    pub headless: bool,
    pub addresses: Option<AddressKind>,
    pub policy: Policy,
}

impl ServiceExport {
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    pub fn ready_count(&self) -> usize {
        self.ready_endpoints().count()
    }
}

/// Whether `key=value` can be a cluster inventory label: one TXT character-string
/// (at most 255 octets) with a non-empty key that holds no '='.
pub fn valid_label(key: &str, value: &str) -> bool {
    !key.is_empty() && !key.contains('=') && key.len() + value.len() < 255
}

/// The set of services one cluster exports, plus its inventory labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalExports {
    pub cluster: ClusterId,
    pub labels: BTreeMap<String, String>,
    pub services: BTreeMap<ServiceKey, Arc<ServiceExport>>,
}

impl LocalExports {
    pub fn empty(cluster: ClusterId) -> Self {
        Self {
            cluster,
            labels: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cluster_ids_follow_rfc1123_and_reject_reserved() {
        assert!(ClusterId::parse("east").is_ok());
        assert!(ClusterId::parse("us-east-1").is_ok());
        assert!(ClusterId::parse("1st").is_ok());
        for bad in ["", "East", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(ClusterId::parse(bad).is_err(), "{bad:?} accepted");
        }
        for reserved in RESERVED_CLUSTER_IDS {
            let err = ClusterId::parse(reserved).unwrap_err();
            assert!(err.to_string().contains(reserved), "{err}");
        }
    }

    #[test]
    fn service_names_start_with_a_letter() {
        assert!(ServiceName::parse("web").is_ok());
        assert!(ServiceName::parse("1web").is_err());
    }

    #[test]
    fn port_names_are_iana_service_names() {
        assert!(PortName::parse("http").is_ok());
        assert!(PortName::parse("h2c-8080").is_ok());
        for bad in ["", "8080", "a--b", "-a", "Http", "sixteen-chars-xx"] {
            assert!(PortName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn endpoint_label_prefers_hostname_then_pod_then_address() {
        let mut e = Endpoint {
            address: "10.1.0.5".parse().unwrap(),
            hostname: None,
            pod_name: None,
            ready: true,
            zone: None,
        };
        assert_eq!(e.label().as_str(), "10-1-0-5");
        e.pod_name = Some(HostLabel::parse("web-abc").unwrap());
        assert_eq!(e.label().as_str(), "web-abc");
        e.hostname = Some(HostLabel::parse("web-0").unwrap());
        assert_eq!(e.label().as_str(), "web-0");
    }

    proptest! {
        #[test]
        fn address_labels_are_valid_and_distinct(a in any::<std::net::Ipv6Addr>(), b in any::<std::net::Ipv6Addr>(), v4 in any::<std::net::Ipv4Addr>()) {
            let la = HostLabel::from_address(IpAddr::V6(a));
            let lb = HostLabel::from_address(IpAddr::V6(b));
            let l4 = HostLabel::from_address(IpAddr::V4(v4));
            prop_assert!(HostLabel::parse(la.as_str()).is_ok(), "{}", la);
            prop_assert!(HostLabel::parse(l4.as_str()).is_ok(), "{}", l4);
            if a != b { prop_assert_ne!(la, lb.clone()); }
            prop_assert_ne!(l4, lb);
        }
    }
}

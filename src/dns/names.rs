//! The name grammar of the zone (DESIGN.md §1), in both directions.
//!
//! This module owns which owner names exist in principle: [`FleetName`] is every kind
//! of name fleetdns produces, [`FleetName::labels`] spells one under the apex and
//! [`FleetName::parse`] reads one back. The first label under the apex decides the tree:
//! `svc` is the merged tree, `ns` and `dns-version` are special, anything else is a
//! cluster id. Property tests prove that every produced name parses back to itself, so
//! no two kinds of names can collide.

use crate::model::{ClusterId, HostLabel, Namespace, PortName, Protocol, ServiceKey, ServiceName};

/// The merged tree's label under the apex.
pub const MERGED: &str = "svc";
pub const NS: &str = "ns";
pub const DNS_VERSION: &str = "dns-version";

/// Which tree a service name lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tree {
    /// `<svc>.<ns>.svc.<zone>`: the service across the fleet.
    Merged,
    /// `<svc>.<ns>.<cluster>.<zone>`: what one cluster exports.
    Cluster(ClusterId),
}

impl Tree {
    fn label(&self) -> &str {
        match self {
            Tree::Merged => MERGED,
            Tree::Cluster(c) => c.as_str(),
        }
    }
}

/// Every kind of owner name in the zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FleetName {
    Apex,
    /// `ns.<zone>`: the peer's advertised address.
    Ns,
    /// `dns-version.<zone>`.
    DnsVersion,
    /// `<cluster>.<zone>`: the cluster inventory TXT.
    Cluster(ClusterId),
    /// `<svc>.<ns>.(svc|<cluster>).<zone>`.
    Service {
        tree: Tree,
        key: ServiceKey,
    },
    /// `<host>.<svc>.<ns>.<cluster>.<zone>`: one endpoint, endpoints mode only.
    Endpoint {
        host: HostLabel,
        cluster: ClusterId,
        key: ServiceKey,
    },
    /// `_<port>._<proto>.<svc>.<ns>.(svc|<cluster>).<zone>`.
    Srv {
        port: PortName,
        protocol: Protocol,
        tree: Tree,
        key: ServiceKey,
    },
}

impl FleetName {
    /// The labels under the apex, leftmost first (empty for the apex).
    pub fn labels(&self) -> Vec<String> {
        match self {
            FleetName::Apex => vec![],
            FleetName::Ns => vec![NS.into()],
            FleetName::DnsVersion => vec![DNS_VERSION.into()],
            FleetName::Cluster(c) => vec![c.to_string()],
            FleetName::Service { tree, key } => vec![
                key.name.to_string(),
                key.namespace.to_string(),
                tree.label().into(),
            ],
            FleetName::Endpoint { host, cluster, key } => vec![
                host.to_string(),
                key.name.to_string(),
                key.namespace.to_string(),
                cluster.to_string(),
            ],
            FleetName::Srv {
                port,
                protocol,
                tree,
                key,
            } => vec![
                format!("_{port}"),
                format!("_{}", protocol.srv_label()),
                key.name.to_string(),
                key.namespace.to_string(),
                tree.label().into(),
            ],
        }
    }

    /// Reads lowercase labels under the apex (leftmost first) back into a name kind.
    /// `None` for a name fleetdns never produces.
    pub fn parse(labels: &[&str]) -> Option<FleetName> {
        let tree_of = |label: &str| -> Option<Tree> {
            if label == MERGED {
                Some(Tree::Merged)
            } else {
                ClusterId::parse(label).ok().map(Tree::Cluster)
            }
        };
        let key = |name: &str, ns: &str| -> Option<ServiceKey> {
            Some(ServiceKey {
                name: ServiceName::parse(name).ok()?,
                namespace: Namespace::parse(ns).ok()?,
            })
        };
        match labels {
            [] => Some(FleetName::Apex),
            [one] if *one == NS => Some(FleetName::Ns),
            [one] if *one == DNS_VERSION => Some(FleetName::DnsVersion),
            [one] => ClusterId::parse(one).ok().map(FleetName::Cluster),
            [name, ns, tree] => Some(FleetName::Service {
                tree: tree_of(tree)?,
                key: key(name, ns)?,
            }),
            [host, name, ns, cluster] => Some(FleetName::Endpoint {
                host: HostLabel::parse(host).ok()?,
                cluster: ClusterId::parse(cluster).ok()?,
                key: key(name, ns)?,
            }),
            [port, proto, name, ns, tree] => {
                let protocol = match *proto {
                    "_tcp" => Protocol::Tcp,
                    "_udp" => Protocol::Udp,
                    "_sctp" => Protocol::Sctp,
                    _ => return None,
                };
                Some(FleetName::Srv {
                    port: PortName::parse(port.strip_prefix('_')?).ok()?,
                    protocol,
                    tree: tree_of(tree)?,
                    key: key(name, ns)?,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
    }

    fn service_key() -> impl Strategy<Value = ServiceKey> {
        ("[a-z]([a-z0-9-]{0,20}[a-z0-9])?", label()).prop_map(|(n, ns)| ServiceKey {
            name: ServiceName::parse(&n).unwrap(),
            namespace: Namespace::parse(&ns).unwrap(),
        })
    }

    fn cluster() -> impl Strategy<Value = ClusterId> {
        label().prop_filter_map("reserved", |l| ClusterId::parse(&l).ok())
    }

    fn tree() -> impl Strategy<Value = Tree> {
        prop_oneof![Just(Tree::Merged), cluster().prop_map(Tree::Cluster)]
    }

    fn fleet_name() -> impl Strategy<Value = FleetName> {
        let port = "[a-z]{1,6}(-[a-z0-9]{1,4})?".prop_map(|p| PortName::parse(&p).unwrap());
        let protocol = prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ];
        prop_oneof![
            Just(FleetName::Apex),
            Just(FleetName::Ns),
            Just(FleetName::DnsVersion),
            cluster().prop_map(FleetName::Cluster),
            (tree(), service_key()).prop_map(|(tree, key)| FleetName::Service { tree, key }),
            (label(), cluster(), service_key()).prop_map(|(h, cluster, key)| FleetName::Endpoint {
                host: HostLabel::parse(&h).unwrap(),
                cluster,
                key
            }),
            (port, protocol, tree(), service_key()).prop_map(|(port, protocol, tree, key)| {
                FleetName::Srv {
                    port,
                    protocol,
                    tree,
                    key,
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Every produced name parses back to itself.
        #[test]
        fn produced_names_parse_back(name in fleet_name()) {
            let labels = name.labels();
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            prop_assert_eq!(FleetName::parse(&refs), Some(name));
        }

        /// Two different names never spell the same owner name.
        #[test]
        fn no_two_names_collide(a in fleet_name(), b in fleet_name()) {
            if a != b {
                prop_assert_ne!(a.labels(), b.labels());
            }
        }
    }

    #[test]
    fn the_first_label_under_the_apex_decides_the_tree() {
        let parsed = FleetName::parse(&["web", "default", "svc"]).unwrap();
        assert!(matches!(
            parsed,
            FleetName::Service {
                tree: Tree::Merged,
                ..
            }
        ));
        let parsed = FleetName::parse(&["web", "default", "east"]).unwrap();
        assert!(matches!(
            parsed,
            FleetName::Service {
                tree: Tree::Cluster(_),
                ..
            }
        ));
        // Reserved labels are never clusters.
        assert_eq!(FleetName::parse(&["web", "default", "ns"]), None);
        assert_eq!(FleetName::parse(&["a", "web", "default", "svc"]), None);
        assert_eq!(FleetName::parse(&["x", "dns-version"]), None);
    }
}

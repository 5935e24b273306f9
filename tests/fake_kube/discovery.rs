//! Discovery documents: the legacy ones (`/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//! `/apis/{group}/{version}`) that kube's `Discovery::run` and `discovery::group` read, and
//! the aggregated apidiscovery.k8s.io/v2 lists at `/api` and `/apis` that
//! `Discovery::run_aggregated` and kubectl ask for first. Only what is served is listed:
//! without the ServiceExport CRD its group is simply absent.

use serde_json::{Value, json};

use super::{Kind, McsCrd};

/// The verbs the fake implements for every kind (no deletecollection).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The versions of `kind` served now, most preferred first.
pub(crate) fn versions(kind: Kind, mcs: &McsCrd) -> Vec<&'static str> {
    match kind {
        Kind::ServiceExport => {
            let mut v = mcs.versions().to_vec();
            // Kubernetes version priority: GA > beta > alpha, then by number.
            v.sort_by_key(|v| std::cmp::Reverse(priority(v)));
            v
        }
        _ => vec!["v1"],
    }
}

fn priority(version: &str) -> (u8, u32, u32) {
    let rest = version.strip_prefix('v').unwrap_or(version);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
        (1, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (0, n)
    } else {
        (2, "0")
    };
    (stage, major, n.parse().unwrap_or(0))
}

/// The kinds of `group` served now.
fn kinds_in(group: &str, mcs: &McsCrd) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group && !versions(*k, mcs).is_empty())
        .collect()
}

/// Non-core groups served now, in the API server's order (built-ins, then CRDs).
fn groups(mcs: &McsCrd) -> Vec<&'static str> {
    let mut groups = Vec::new();
    for kind in [Kind::EndpointSlice, Kind::Lease, Kind::ServiceExport] {
        if !versions(kind, mcs).is_empty() && !groups.contains(&kind.group()) {
            groups.push(kind.group());
        }
    }
    groups
}

/// The versions of a group, most preferred first (empty if the group is not served).
fn group_versions(group: &str, mcs: &McsCrd) -> Vec<&'static str> {
    kinds_in(group, mcs)
        .first()
        .map(|k| versions(*k, mcs))
        .unwrap_or_default()
}

/// `/api`.
pub(crate) fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group_version_for_discovery(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn api_group(group: &str, mcs: &McsCrd) -> Value {
    let versions = group_versions(group, mcs);
    json!({
        "name": group,
        "versions": versions.iter().map(|v| group_version_for_discovery(group, v)).collect::<Vec<_>>(),
        "preferredVersion": group_version_for_discovery(group, versions[0]),
    })
}

/// `/apis`.
pub(crate) fn group_list(mcs: &McsCrd) -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups(mcs).iter().map(|g| api_group(g, mcs)).collect::<Vec<_>>(),
    })
}

/// `/apis/{group}`, if served.
pub(crate) fn group(group: &str, mcs: &McsCrd) -> Option<Value> {
    if group_versions(group, mcs).is_empty() {
        return None;
    }
    let mut doc = api_group(group, mcs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` (group "") or `/apis/{group}/{version}`, if served.
pub(crate) fn resource_list(group: &str, version: &str, mcs: &McsCrd) -> Option<Value> {
    let kinds: Vec<Kind> = kinds_in(group, mcs)
        .into_iter()
        .filter(|k| versions(*k, mcs).contains(&version))
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let resources: Vec<Value> = kinds
        .iter()
        .map(|k| {
            let mut r = json!({
                "name": k.plural(),
                "singularName": k.singular(),
                "namespaced": true,
                "kind": k.name(),
                "verbs": VERBS,
            });
            if !k.short_names().is_empty() {
                r["shortNames"] = json!(k.short_names());
            }
            if !k.categories().is_empty() {
                r["categories"] = json!(k.categories());
            }
            r
        })
        .collect();
    let mut doc = json!({
        "kind": "APIResourceList",
        "groupVersion": kinds[0].api_version(version),
        "resources": resources,
    });
    // The core list has no apiVersion on the wire; group lists say v1.
    if !group.is_empty() {
        doc["apiVersion"] = json!("v1");
    }
    Some(doc)
}

/// The aggregated discovery list for `/api` (`core`) or `/apis`, in `api_version`
/// (`apidiscovery.k8s.io/v2` or `v2beta1`).
pub(crate) fn aggregated(core: bool, api_version: &str, mcs: &McsCrd) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { groups(mcs) };
    let items: Vec<Value> = groups
        .iter()
        .map(|group| {
            let versions: Vec<Value> = group_versions(group, mcs)
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = kinds_in(group, mcs)
                        .iter()
                        .map(|k| {
                            let mut r = json!({
                                "resource": k.plural(),
                                "responseKind": {"group": group, "version": version, "kind": k.name()},
                                "scope": "Namespaced",
                                "singularResource": k.singular(),
                                "verbs": VERBS,
                            });
                            if !k.short_names().is_empty() {
                                r["shortNames"] = json!(k.short_names());
                            }
                            if !k.categories().is_empty() {
                                r["categories"] = json!(k.categories());
                            }
                            r
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    })
}

/// `/version`: a v1.33 server, the version the product builds k8s-openapi for.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_by_priority() {
        let mcs = McsCrd::Served(vec!["v1alpha1", "v1beta1", "v1", "v2beta2"]);
        assert_eq!(
            versions(Kind::ServiceExport, &mcs),
            ["v1", "v2beta2", "v1beta1", "v1alpha1"]
        );
    }
}

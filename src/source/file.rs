//! Services files: the file source for static fleets, VMs and the demo.
//!
//! This module owns the services-file format ([`parse_services_file`], pure) and the
//! task that keeps every configured file's latest *good* content in a `watch` channel
//! ([`spawn_file_source`], the edge). An invalid edit is logged with its line and column
//! and the last good state keeps serving; nothing is ever published for a file that
//! has not parsed once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{
    AddressKind, ClusterId, Endpoint, HostLabel, LocalExports, Namespace, Policy, PortName,
    Protocol, ServiceExport, ServiceKey, ServiceName, ServicePort,
};
use crate::source::SourceState;
use crate::source::watch::{FileEvent, WatchSettings, spawn_file_watch};

#[derive(Debug, thiserror::Error)]
pub enum ServicesFileError {
    #[error("{path}: {error}")]
    Syntax {
        path: String,
        error: serde_yaml::Error,
    },
    #[error("{path}: service {service}: {message}")]
    Invalid {
        path: String,
        service: String,
        message: String,
    },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Inventory labels of the cluster this file describes (a static fleet's other
    /// clusters have no config of their own to carry them).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Required, even when empty (`services: []`): an empty or truncated file, as a
    /// reader can catch mid-write, must be an error that keeps the last good state,
    /// never an empty fleet that withdraws every service.
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: ServiceName,
    namespace: Namespace,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    cluster_ips: Vec<Ip>,
    #[serde(default)]
    ingress: Vec<Ip>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    headless: bool,
    #[serde(default)]
    addresses: Option<String>,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    #[serde(default)]
    name: Option<PortName>,
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: String,
}

fn default_protocol() -> String {
    "TCP".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: Ip,
    #[serde(default)]
    hostname: Option<HostLabel>,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default = "default_ready")]
    ready: bool,
    #[serde(default)]
    zone: Option<String>,
}

/// An IP address whose parse error names the offending text.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "String")]
struct Ip(IpAddr);

impl TryFrom<String> for Ip {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
            .map(Ip)
            .map_err(|_| format!("{s:?} is not an IP address"))
    }
}

fn ips(list: Vec<Ip>) -> Vec<IpAddr> {
    list.into_iter().map(|ip| ip.0).collect()
}

fn default_ready() -> bool {
    true
}

/// Parses one services file's text into the exports of `cluster`.
pub fn parse_services_file(
    text: &str,
    origin: &str,
    cluster: &ClusterId,
) -> Result<LocalExports, ServicesFileError> {
    let raw: RawFile = serde_yaml::from_str(text).map_err(|error| ServicesFileError::Syntax {
        path: origin.into(),
        error,
    })?;
    let mut exports = LocalExports::empty(cluster.clone());
    for (k, v) in &raw.labels {
        if !crate::model::valid_label(k, v) {
            return Err(ServicesFileError::Invalid {
                path: origin.into(),
                service: "-".into(),
                message: format!(
                    "label {k:?}={v:?} must be a non-empty key without '=' and at most 254 octets together"
                ),
            });
        }
    }
    exports.labels = raw.labels;
    for svc in raw.services {
        let key = ServiceKey {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        };
        let invalid = |message: String| ServicesFileError::Invalid {
            path: origin.into(),
            service: key.to_string(),
            message,
        };
        let export = convert_service(svc).map_err(invalid)?;
        if exports.services.contains_key(&key) {
            return Err(invalid("is listed twice".into()));
        }
        exports.services.insert(key, Arc::new(export));
    }
    Ok(exports)
}

fn convert_service(svc: RawService) -> Result<ServiceExport, String> {
    let mut ports = Vec::new();
    let mut seen_names = BTreeSet::new();
    for p in svc.ports {
        let protocol = Protocol::parse(&p.protocol)
            .ok_or_else(|| format!("port protocol {:?} is not TCP, UDP or SCTP", p.protocol))?;
        if p.port == 0 {
            return Err("port 0 is not a port".into());
        }
        if let Some(name) = &p.name
            && !seen_names.insert((name.clone(), protocol))
        {
            return Err(format!("port name {name:?} is used twice for {protocol:?}"));
        }
        ports.push(ServicePort {
            name: p.name,
            port: p.port,
            protocol,
        });
    }
    let addresses = svc
        .addresses
        .as_deref()
        .map(|s| {
            AddressKind::parse(s).ok_or_else(|| {
                format!("addresses {s:?} is not one of ingress, clusterip, endpoints, none")
            })
        })
        .transpose()?;
    let policy = svc
        .policy
        .as_deref()
        .map(|s| {
            Policy::parse(s)
                .ok_or_else(|| format!("policy {s:?} is not one of local-preferred, all"))
        })
        .transpose()?
        .unwrap_or_default();
    let cluster_ips = ips(svc.cluster_ips);
    if svc.headless && !cluster_ips.is_empty() {
        return Err("a headless service has no cluster_ips".into());
    }

    // Deduplicate endpoints by address (the same pod may appear in several slices); a
    // ready copy wins over a not-ready one.
    let mut by_addr: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for e in svc.endpoints {
        let address = e.address.0;
        let endpoint = Endpoint {
            address,
            hostname: e.hostname,
            pod_name: e.pod.and_then(|p| HostLabel::parse(&p).ok()),
            ready: e.ready,
            zone: e.zone,
        };
        match by_addr.get(&address) {
            Some(prev) if prev.ready && !endpoint.ready => {}
            _ => {
                by_addr.insert(address, endpoint);
            }
        }
    }
    let endpoints: Vec<Endpoint> = by_addr.into_values().collect();

    let mut ingress = ips(svc.ingress);
    // A VM or static member lists only its endpoints: they are reachable by definition,
    // so they are its ingress (DESIGN.md §3).
    if cluster_ips.is_empty() && ingress.is_empty() && !svc.headless {
        ingress = endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| e.address)
            .collect();
    }
    ingress.sort();
    ingress.dedup();
    let mut cluster_ips = cluster_ips;
    cluster_ips.sort();
    cluster_ips.dedup();
    Ok(ServiceExport {
        key: ServiceKey {
            namespace: svc.namespace,
            name: svc.name,
        },
        ports,
        cluster_ips,
        ingress,
        endpoints,
        headless: svc.headless,
        addresses,
        policy,
    })
}

/// Reads and parses a services file from disk (for `check` and `dump-zone`).
pub fn load_services_file(
    path: &Path,
    cluster: &ClusterId,
) -> Result<LocalExports, ServicesFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| ServicesFileError::Io {
        path: path.display().to_string(),
        error,
    })?;
    parse_services_file(&text, &path.display().to_string(), cluster)
}

/// Watches every file and publishes the latest good state of all of them together.
/// What the file source read, by outcome; shared with the metrics collector.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub loaded: std::sync::atomic::AtomicU64,
    pub invalid: std::sync::atomic::AtomicU64,
    pub unreadable: std::sync::atomic::AtomicU64,
}

impl SourceStats {
    fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn spawn_file_source(
    files: BTreeMap<ClusterId, PathBuf>,
    settings: WatchSettings,
    stats: Arc<SourceStats>,
    cancel: CancellationToken,
) -> watch::Receiver<SourceState> {
    let mut state = SourceState::default();
    for (cluster, path) in &files {
        state
            .pending
            .insert(cluster.clone(), format!("{}: not read yet", path.display()));
    }
    let (tx, rx) = watch::channel(state.clone());
    let (merge_tx, mut merge_rx) =
        tokio::sync::mpsc::channel::<(ClusterId, Result<LocalExports, String>)>(16);
    for (cluster, path) in files {
        let mut events = spawn_file_watch(path.clone(), settings.clone(), cancel.clone());
        let merge_tx = merge_tx.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let origin = path.display().to_string();
            while let Some(event) = events.recv().await {
                let result = match event {
                    FileEvent::Content(bytes) => {
                        let text = String::from_utf8_lossy(&bytes);
                        match parse_services_file(&text, &origin, &cluster) {
                            Ok(exports) => {
                                SourceStats::count(&stats.loaded);
                                tracing::info!(
                                    cluster = %cluster,
                                    path = %origin,
                                    services = exports.services.len(),
                                    "services file loaded"
                                );
                                Ok(exports)
                            }
                            Err(err) => {
                                SourceStats::count(&stats.invalid);
                                tracing::error!(
                                    cluster = %cluster,
                                    error = %err,
                                    "invalid services file; keeping the last good state"
                                );
                                Err(err.to_string())
                            }
                        }
                    }
                    FileEvent::Unreadable(err) => {
                        SourceStats::count(&stats.unreadable);
                        tracing::warn!(
                            cluster = %cluster,
                            path = %origin,
                            error = %err,
                            "services file unreadable; keeping the last good state"
                        );
                        Err(format!("{origin}: {err}"))
                    }
                };
                if merge_tx.send((cluster.clone(), result)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(merge_tx);
    tokio::spawn(async move {
        while let Some((cluster, result)) = merge_rx.recv().await {
            match result {
                Ok(exports) => {
                    state.pending.remove(&cluster);
                    state.loaded.insert(cluster, Arc::new(exports));
                }
                // A file that parsed once keeps its last good state; one that never
                // did says why it is still pending.
                Err(reason) if !state.loaded.contains_key(&cluster) => {
                    state.pending.insert(cluster, reason);
                }
                Err(_) => continue,
            }
            tx.send_replace(state.clone());
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn east() -> ClusterId {
        ClusterId::parse("east").unwrap()
    }

    #[test]
    fn parses_the_documented_shape() {
        let text = r#"
labels: {region: us-east}
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80, protocol: TCP}, {port: 8080}]
    cluster_ips: [10.96.0.10]
    ingress: [203.0.113.10]
    endpoints:
      - {address: 10.1.0.5, hostname: web-0, ready: true, zone: us-east-1a}
      - {address: "fd00::5", ready: true}
      - {address: 10.1.0.6, ready: false}
    addresses: ingress
    policy: all
"#;
        let e = parse_services_file(text, "east.yaml", &east()).unwrap();
        assert_eq!(e.labels["region"], "us-east");
        let web = e.services.values().next().unwrap();
        assert_eq!(web.ports.len(), 2);
        assert_eq!(web.ports[1].protocol, Protocol::Tcp);
        assert_eq!(web.ready_count(), 2);
        assert_eq!(web.addresses, Some(AddressKind::Ingress));
        assert_eq!(web.policy, Policy::All);
    }

    #[test]
    fn endpoint_only_entries_export_endpoints_as_ingress() {
        let text = "services:\n  - {name: vm, namespace: default, endpoints: [{address: 192.0.2.1}, {address: 192.0.2.2, ready: false}]}\n";
        let e = parse_services_file(text, "f", &east()).unwrap();
        let vm = e.services.values().next().unwrap();
        assert_eq!(vm.ingress, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn errors_name_line_column_or_service() {
        let err = parse_services_file(
            "services:\n  - {name: Web, namespace: default}\n",
            "f.yaml",
            &east(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Web") && err.contains("line 2"), "{err}");
        let err = parse_services_file(
            "services:\n  - {name: web, namespace: default, colour: red}\n",
            "f.yaml",
            &east(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("colour") && err.contains("line 2"), "{err}");
        let err = parse_services_file(
            "services:\n  - {name: web, namespace: default}\n  - {name: web, namespace: default}\n",
            "f.yaml",
            &east(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("default/web") && err.contains("twice"),
            "{err}"
        );
        let err = parse_services_file(
            "services:\n  - {name: web, namespace: default, ports: [{port: 80, protocol: QUIC}]}\n",
            "f.yaml",
            &east(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("QUIC"), "{err}");
        let err = parse_services_file(
            "services:\n  - {name: web, namespace: default, addresses: public}\n",
            "f.yaml",
            &east(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("public"), "{err}");
    }

    #[test]
    fn an_empty_or_half_written_file_is_an_error_not_an_empty_fleet() {
        // An in-place write can be read between truncate and write: that must keep the
        // last good state (an error), never withdraw every service.
        for text in ["", "services:\n  - {name: web, namespace: def"] {
            assert!(parse_services_file(text, "f", &east()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn duplicate_endpoints_are_merged_ready_wins() {
        let text = "services:\n  - {name: h, namespace: d, headless: true, endpoints: [{address: 10.0.0.1, ready: false}, {address: 10.0.0.1}]}\n";
        let e = parse_services_file(text, "f", &east()).unwrap();
        let h = e.services.values().next().unwrap();
        assert_eq!(h.endpoints.len(), 1);
        assert!(h.endpoints[0].ready);
    }

    #[tokio::test]
    async fn source_is_complete_once_every_file_parsed_and_keeps_the_last_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let west = ClusterId::parse("west").unwrap();
        std::fs::write(dir.path().join("east.yaml"), "services: []\n").unwrap();
        let files = BTreeMap::from([
            (east(), dir.path().join("east.yaml")),
            (west.clone(), dir.path().join("west.yaml")),
        ]);
        let settings = WatchSettings {
            debounce: std::time::Duration::from_millis(10),
            poll_interval: std::time::Duration::from_millis(100),
            use_notify: true,
        };
        let cancel = CancellationToken::new();
        let mut rx = spawn_file_source(files, settings, Arc::default(), cancel.clone());
        let wait = |rx: &mut watch::Receiver<SourceState>,
                    what: &'static str,
                    f: fn(&SourceState) -> bool| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(f))
                    .await
                    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                    .unwrap()
                    .clone()
            }
        };
        let s = wait(&mut rx, "east loaded", |s| {
            s.loaded.len() == 1 && s.pending.values().any(|w| !w.contains("not read yet"))
        })
        .await;
        assert!(!s.complete());
        assert!(s.pending[&west].contains("west.yaml"), "{:?}", s.pending);

        std::fs::write(
            dir.path().join("west.yaml"),
            "services:\n  - {name: web, namespace: default, ingress: [192.0.2.1]}\n",
        )
        .unwrap();
        let s = wait(&mut rx, "complete", SourceState::complete).await;
        assert_eq!(s.loaded[&west].services.len(), 1);

        std::fs::write(dir.path().join("west.yaml"), "services: [oops\n").unwrap();
        std::fs::write(
            dir.path().join("east.yaml"),
            "services:\n  - {name: api, namespace: default, ingress: [192.0.2.2]}\n",
        )
        .unwrap();
        let s = wait(&mut rx, "east edit", |s| {
            s.loaded[&ClusterId::parse("east").unwrap()].services.len() == 1
        })
        .await;
        assert!(s.complete());
        assert_eq!(
            s.loaded[&west].services.len(),
            1,
            "west keeps its last good state"
        );
        cancel.cancel();
    }
}

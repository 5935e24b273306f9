//! The configuration file: raw serde shape → validated [`Config`].
//!
//! This module owns the config's syntax and every rule about its values. It is pure:
//! the caller reads the file; [`Config::parse`] turns text into a `Config` or an error
//! that names the offending key and value (with line and column for syntax errors and
//! unknown keys).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{ClusterId, NameError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Syntax {
        path: String,
        error: serde_yaml::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// An IP prefix such as `10.96.0.0/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What this peer may serve of other clusters' addresses (DESIGN.md §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Pods here can reach other clusters' ClusterIPs and pod IPs directly.
    pub connected: bool,
    pub service_cidrs: Vec<Cidr>,
    pub pod_cidrs: Vec<Cidr>,
}

impl NetworkConfig {
    /// True when `ip` falls inside this peer's own service or pod ranges, where another
    /// cluster's address would be routed to the wrong place.
    pub fn overlaps_own(&self, ip: IpAddr) -> bool {
        self.service_cidrs
            .iter()
            .chain(&self.pod_cidrs)
            .any(|c| c.contains(ip))
    }
}

/// The DNS zone apex, lowercase, always with a trailing dot (`fleet.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneName(String);

impl ZoneName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
        if trimmed.is_empty() {
            return Err("the root zone cannot be served; use a name such as fleet.".into());
        }
        for label in trimmed.split('.') {
            crate::model::Namespace::parse(label).map_err(|e: NameError| {
                format!("{s:?} has an invalid label: {e}").replace("namespace", "zone label")
            })?;
        }
        // The longest names we produce put 4 labels of up to 63 octets under the apex
        // (host.svc.ns.cluster); keep room for service, namespace and cluster at least.
        if trimmed.len() > 100 {
            return Err(format!(
                "{s:?} is longer than 100 characters, leaving too little room for service names"
            ));
        }
        Ok(Self(format!("{trimmed}.")))
    }

    /// The apex with its trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// One services file for this peer's own cluster.
    File(PathBuf),
    /// A static fleet: every cluster's services file, no mesh.
    Files(BTreeMap<ClusterId, PathBuf>),
    /// This cluster's Services and EndpointSlices, from its Kubernetes API.
    Kubernetes(KubeSourceConfig),
}

/// `source.kubernetes` (DESIGN.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSourceConfig {
    /// A kubeconfig file; `None` means the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub export: crate::export::ExportSettings,
    pub lease: LeaseConfig,
}

/// The `coordination.k8s.io/v1` Lease that picks the one replica that publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// How long a holder keeps the lease without renewing it. A holder that cannot
    /// renew stops publishing before this runs out.
    pub duration: Duration,
}

impl SourceConfig {
    /// Every (cluster, file) pair this source reads.
    pub fn files(&self, local: &ClusterId) -> BTreeMap<ClusterId, PathBuf> {
        match self {
            Self::File(p) => BTreeMap::from([(local.clone(), p.clone())]),
            Self::Files(m) => m.clone(),
            Self::Kubernetes(_) => BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    pub advertise: Option<IpAddr>,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub max_udp_payload: u16,
    pub tcp_idle_timeout: Duration,
    pub max_tcp_connections: usize,
    pub max_tcp_per_client: usize,
    /// UDP worker threads (one SO_REUSEPORT socket each) per `listen` address, on Linux.
    pub udp_workers: usize,
    /// DNS over TLS (RFC 7858), when `dns.tls_listen` is set.
    pub tls: Option<DnsTlsConfig>,
}

/// `dns.tls_listen`, `dns.tls_cert`, `dns.tls_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTlsConfig {
    pub listen: Vec<SocketAddr>,
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM PKCS#8 key.
    pub key: PathBuf,
}

/// The admin query API (`admin:`, DESIGN.md §3): read-only JSON under `/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token every request must carry. Without one the API binds loopback
    /// only: what it shows (every cluster, address and peer) is for operators.
    pub token: Option<AdminToken>,
    /// TLS for the API (only with a token: on loopback it would protect nothing).
    pub tls: Option<TlsFiles>,
}

/// Where the admin token comes from: inline (usually `${ENV}`) or a file (a mounted
/// Secret), read when the API starts (`admin::read_token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    Value(String),
    File(PathBuf),
}

/// Whether a token is one the admin API accepts (the file source of a token is read,
/// and checked with this, by the admin listener at start).
pub fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be at least 16 printable characters without spaces".into());
    }
    Ok(())
}

/// A PEM certificate chain (leaf first) and its PKCS#8 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub fleet: String,
    pub cluster: ClusterId,
    pub zone: ZoneName,
    pub cluster_labels: BTreeMap<String, String>,
    pub network: NetworkConfig,
    pub dns: DnsConfig,
    pub ops_listen: Option<SocketAddr>,
    /// The admin API; `None` when the config has no `admin:` section.
    pub admin: Option<AdminConfig>,
    pub source: SourceConfig,
    /// The peer mesh; `None` for a static fleet.
    pub mesh: Option<MeshConfig>,
}

/// The mesh (DESIGN.md §4): where this peer gossips, with whom, and its credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub listen: SocketAddr,
    /// The address other peers reach this one at.
    pub advertise: SocketAddr,
    pub seeds: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: Vec<PathBuf>,
    pub gossip_interval: Duration,
    pub alive_interval: Duration,
    pub clock_skew: Duration,
    pub max_stale: Duration,
    pub rejoin_after: Duration,
    pub bootstrap_timeout: Duration,
    /// Connections older than this are closed and redialled, so a revocation or a
    /// CA removed from the bundle takes effect within it.
    pub max_connection_age: Duration,
    /// Clusters cut off whatever their certificates say: their connections are
    /// refused and their roots dropped.
    pub revoked_clusters: std::collections::BTreeSet<ClusterId>,
    /// How often `cert`, `key` and `trust_bundle` are read again for changes.
    pub reload_interval: Duration,
    /// chitchat's failure-detector threshold: lower notices a dead peer sooner and
    /// risks calling a slow one dead.
    pub phi_threshold: f64,
    /// The file this came from (set by [`Config::load`]): `revoked_clusters` is read
    /// from it again with the credentials.
    pub config_file: Option<PathBuf>,
}

/// chitchat forgets a dead node after this; `max_stale` must stay well below it.
pub const DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(15 * 60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    listen: String,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    cert: String,
    key: String,
    trust_bundle: Vec<String>,
    #[serde(default)]
    gossip_interval: Option<String>,
    #[serde(default)]
    alive_interval: Option<String>,
    #[serde(default)]
    clock_skew: Option<String>,
    #[serde(default)]
    max_stale: Option<String>,
    #[serde(default)]
    rejoin_after: Option<String>,
    #[serde(default)]
    bootstrap_timeout: Option<String>,
    #[serde(default)]
    max_connection_age: Option<String>,
    #[serde(default)]
    revoked_clusters: Vec<String>,
    #[serde(default)]
    reload_interval: Option<String>,
    #[serde(default)]
    phi_threshold: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    fleet: String,
    cluster: String,
    #[serde(default = "default_zone")]
    zone: String,
    #[serde(default)]
    cluster_labels: BTreeMap<String, String>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    ops: Option<RawOps>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    source: RawSource,
    #[serde(default)]
    mesh: Option<RawMesh>,
}

fn default_zone() -> String {
    "fleet.".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    connected: bool,
    #[serde(default)]
    service_cidrs: Vec<String>,
    #[serde(default)]
    pod_cidrs: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    listen: Option<Vec<String>>,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    negative_ttl: Option<String>,
    #[serde(default)]
    max_udp_payload: Option<u16>,
    #[serde(default)]
    tcp_idle_timeout: Option<String>,
    #[serde(default)]
    max_tcp_connections: Option<usize>,
    #[serde(default)]
    max_tcp_per_client: Option<usize>,
    #[serde(default)]
    udp_workers: Option<usize>,
    #[serde(default)]
    tls_listen: Option<Vec<String>>,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default)]
    tls: Option<RawTlsFiles>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsFiles {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    files: Option<BTreeMap<String, String>>,
    #[serde(default)]
    kubernetes: Option<RawKube>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKube {
    #[serde(default)]
    kubeconfig: Option<String>,
    #[serde(default)]
    export: RawKubeExport,
    #[serde(default)]
    lease: RawLease,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKubeExport {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    namespaces: RawNamespaces,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNamespaces {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLease {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

/// Parses a duration such as `5s`, `500ms` or `1m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration such as 5s or 500ms ({e})"))
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.display().to_string(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let origin = path.display().to_string();
        let text = expand_env(&text, |name| std::env::var(name).ok()).map_err(|message| {
            ConfigError::Invalid {
                path: origin.clone(),
                key: "${...}".into(),
                message,
            }
        })?;
        let mut config = Self::parse(&text, &origin, base)?;
        if let Some(mesh) = &mut config.mesh {
            mesh.config_file = Some(path.to_path_buf());
        }
        Ok(config)
    }

    /// Validates config text; `origin` names it in errors, `base` anchors relative paths.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|error| ConfigError::Syntax {
            path: origin.into(),
            error,
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.into(),
            key: key.into(),
            message,
        };

        // The fleet name goes into every certificate's URI SAN: one DNS label.
        crate::identity::FleetName::parse(&raw.fleet)
            .map_err(|e| invalid("fleet", e.to_string()))?;
        let cluster =
            ClusterId::parse(&raw.cluster).map_err(|e| invalid("cluster", e.to_string()))?;
        let zone = ZoneName::parse(&raw.zone).map_err(|e| invalid("zone", e))?;
        for (k, v) in &raw.cluster_labels {
            // Each label becomes one TXT character-string "key=value" (≤ 255 octets).
            if !crate::model::valid_label(k, v) {
                return Err(invalid(
                    &format!("cluster_labels.{k}"),
                    format!(
                        "{k:?}={v:?} must be a non-empty key without '=' and at most 254 octets together"
                    ),
                ));
            }
        }

        let mut network = NetworkConfig {
            connected: raw.network.connected,
            ..Default::default()
        };
        for (key, list, out) in [
            (
                "network.service_cidrs",
                &raw.network.service_cidrs,
                &mut network.service_cidrs,
            ),
            (
                "network.pod_cidrs",
                &raw.network.pod_cidrs,
                &mut network.pod_cidrs,
            ),
        ] {
            for s in list {
                out.push(Cidr::parse(s).ok_or_else(|| {
                    invalid(key, format!("{s:?} is not a CIDR such as 10.96.0.0/12"))
                })?);
            }
        }

        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let dns = DnsConfig {
            tls: parse_dns_tls(&raw.dns, &resolve, &invalid)?,
            ..parse_dns(&raw.dns, &invalid)?
        };
        let ops_listen = raw
            .ops
            .map(|o| {
                o.listen
                    .parse()
                    .map_err(|_| invalid("ops.listen", format!("{:?} is not HOST:PORT", o.listen)))
            })
            .transpose()?;

        let admin = raw
            .admin
            .map(|a| parse_admin(a, &resolve, &invalid))
            .transpose()?;

        let kinds = usize::from(raw.source.file.is_some())
            + usize::from(raw.source.files.is_some())
            + usize::from(raw.source.kubernetes.is_some());
        if kinds > 1 {
            return Err(invalid(
                "source",
                "set exactly one of file, files and kubernetes".into(),
            ));
        }
        let source = match (raw.source.file, raw.source.files) {
            _ if raw.source.kubernetes.is_some() => {
                let kube = raw.source.kubernetes.unwrap_or_default();
                SourceConfig::Kubernetes(parse_kube(kube, &cluster, &resolve, &invalid)?)
            }
            (Some(f), None) => SourceConfig::File(resolve(&f)),
            (None, Some(files)) => {
                if files.is_empty() {
                    return Err(invalid(
                        "source.files",
                        "must name at least one cluster".into(),
                    ));
                }
                let mut map = BTreeMap::new();
                for (id, f) in files {
                    let id = ClusterId::parse(&id)
                        .map_err(|e| invalid(&format!("source.files.{id}"), e.to_string()))?;
                    map.insert(id, resolve(&f));
                }
                SourceConfig::Files(map)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "source",
                    "set either file or files, not both".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "source",
                    "set file (this cluster's services file), files (cluster id → services file) \
                     or kubernetes (this cluster's API)"
                        .into(),
                ));
            }
        };

        let mesh = raw
            .mesh
            .map(|m| parse_mesh(m, &resolve, &invalid))
            .transpose()?;
        if mesh.is_some() && matches!(source, SourceConfig::Files(_)) {
            return Err(invalid(
                "source",
                "a mesh peer serves its own cluster: use source.file or source.kubernetes, \
                 not source.files"
                    .into(),
            ));
        }
        Ok(Self {
            fleet: raw.fleet,
            cluster,
            zone,
            cluster_labels: raw.cluster_labels,
            network,
            dns,
            ops_listen,
            admin,
            source,
            mesh,
        })
    }
}

/// Replaces `${NAME}` with the variable's value (DESIGN.md §5: the Deployment passes
/// `POD_IP` and `POD_NAME` this way); `$${` is a literal `${`. An unset variable is an
/// error naming it and its line: silently empty would make an address like `:7950`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let line = text[..text.len() - tail.len()].matches('\n').count() + 1;
            let end = after
                .find('}')
                .ok_or_else(|| format!("line {line}: \"${{\" without a closing \"}}\""))?;
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "line {line}: {name:?} is not an environment variable name"
                ));
            }
            let value = lookup(name)
                .ok_or_else(|| format!("line {line}: environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_kube(
    raw: RawKube,
    cluster: &ClusterId,
    resolve: &impl Fn(&str) -> PathBuf,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<KubeSourceConfig, ConfigError> {
    use crate::export::{ExportMode, ExportSettings};
    use crate::model::Namespace;
    let mode = match raw.export.mode.as_deref() {
        None | Some("auto") => ExportMode::Auto,
        Some("annotation") => ExportMode::Annotation,
        Some(other) => {
            return Err(invalid(
                "source.kubernetes.export.mode",
                format!("{other:?} is not auto or annotation"),
            ));
        }
    };
    let namespaces = |key: &str, list: &[String]| {
        list.iter()
            .map(|n| Namespace::parse(n).map_err(|e| invalid(key, format!("{n:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    let export = ExportSettings {
        mode,
        allow_namespaces: namespaces(
            "source.kubernetes.export.namespaces.allow",
            &raw.export.namespaces.allow,
        )?,
        deny_namespaces: namespaces(
            "source.kubernetes.export.namespaces.deny",
            &raw.export.namespaces.deny,
        )?,
    };
    let lease_namespace = raw.lease.namespace.unwrap_or_else(|| "fleetdns".into());
    Namespace::parse(&lease_namespace)
        .map_err(|e| invalid("source.kubernetes.lease.namespace", e.to_string()))?;
    let lease_name = raw
        .lease
        .name
        .unwrap_or_else(|| format!("fleetdns-{cluster}"));
    // A Lease name is a DNS subdomain: lowercase labels joined by dots.
    let name_ok = lease_name.len() <= 253
        && lease_name
            .split('.')
            .all(|l| crate::model::Namespace::parse(l).is_ok());
    if !name_ok {
        return Err(invalid(
            "source.kubernetes.lease.name",
            format!("{lease_name:?} is not a Kubernetes object name"),
        ));
    }
    let duration = match &raw.lease.duration {
        None => Duration::from_secs(15),
        Some(s) => parse_duration(s).map_err(|e| invalid("source.kubernetes.lease.duration", e))?,
    };
    if duration < Duration::from_secs(2) || duration.subsec_nanos() != 0 {
        return Err(invalid(
            "source.kubernetes.lease.duration",
            format!("{duration:?} must be whole seconds, at least 2s"),
        ));
    }
    Ok(KubeSourceConfig {
        kubeconfig: raw.kubeconfig.map(|k| resolve(&k)),
        export,
        lease: LeaseConfig {
            namespace: lease_namespace,
            name: lease_name,
            duration,
        },
    })
}

fn parse_admin(
    raw: RawAdmin,
    resolve: &impl Fn(&str) -> PathBuf,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<AdminConfig, ConfigError> {
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|_| invalid("admin.listen", format!("{:?} is not HOST:PORT", raw.listen)))?;
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "admin.token",
                "set either token or token_file, not both".into(),
            ));
        }
        (Some(t), None) => {
            check_token(&t).map_err(|e| invalid("admin.token", e))?;
            Some(AdminToken::Value(t))
        }
        (None, Some(f)) => Some(AdminToken::File(resolve(&f))),
        (None, None) => None,
    };
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(invalid(
            "admin.listen",
            format!(
                "{listen} is not a loopback address: without admin.token the admin API \
                 binds loopback only"
            ),
        ));
    }
    let tls = raw.tls.map(|t| TlsFiles {
        cert: resolve(&t.cert),
        key: resolve(&t.key),
    });
    if tls.is_some() && token.is_none() {
        return Err(invalid(
            "admin.tls",
            "needs admin.token: TLS without authentication would let anyone read".into(),
        ));
    }
    Ok(AdminConfig { listen, token, tls })
}

fn parse_mesh(
    raw: RawMesh,
    resolve: &impl Fn(&str) -> PathBuf,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<MeshConfig, ConfigError> {
    let addr = |key: &str, s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|_| invalid(key, format!("{s:?} is not HOST:PORT")))
    };
    let listen = addr("mesh.listen", &raw.listen)?;
    let advertise = match &raw.advertise {
        Some(a) => addr("mesh.advertise", a)?,
        None if listen.ip().is_unspecified() => {
            return Err(invalid(
                "mesh.advertise",
                "is required when mesh.listen is a wildcard address".into(),
            ));
        }
        None => listen,
    };
    if raw.trust_bundle.is_empty() {
        return Err(invalid(
            "mesh.trust_bundle",
            "must name at least one CA certificate file".into(),
        ));
    }
    let duration = |key: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|e| invalid(key, e)),
    };
    let mesh = MeshConfig {
        listen,
        advertise,
        seeds: raw.seeds,
        cert: resolve(&raw.cert),
        key: resolve(&raw.key),
        trust_bundle: raw.trust_bundle.iter().map(|p| resolve(p)).collect(),
        gossip_interval: duration(
            "mesh.gossip_interval",
            &raw.gossip_interval,
            Duration::from_secs(1),
        )?,
        alive_interval: duration(
            "mesh.alive_interval",
            &raw.alive_interval,
            Duration::from_secs(10),
        )?,
        clock_skew: duration("mesh.clock_skew", &raw.clock_skew, Duration::from_secs(5))?,
        max_stale: duration("mesh.max_stale", &raw.max_stale, Duration::from_secs(60))?,
        rejoin_after: duration(
            "mesh.rejoin_after",
            &raw.rejoin_after,
            Duration::from_secs(10),
        )?,
        bootstrap_timeout: duration(
            "mesh.bootstrap_timeout",
            &raw.bootstrap_timeout,
            Duration::from_secs(15),
        )?,
        max_connection_age: duration(
            "mesh.max_connection_age",
            &raw.max_connection_age,
            Duration::from_secs(600),
        )?,
        revoked_clusters: raw
            .revoked_clusters
            .iter()
            .map(|c| {
                ClusterId::parse(c)
                    .map_err(|e| invalid("mesh.revoked_clusters", format!("{c:?}: {e}")))
            })
            .collect::<Result<_, _>>()?,
        reload_interval: duration(
            "mesh.reload_interval",
            &raw.reload_interval,
            Duration::from_secs(5),
        )?,
        config_file: None,
        phi_threshold: match raw.phi_threshold {
            None => 8.0,
            Some(phi) if (1.0..=32.0).contains(&phi) => phi,
            Some(phi) => {
                return Err(invalid(
                    "mesh.phi_threshold",
                    format!("{phi} must be between 1 and 32"),
                ));
            }
        },
    };
    if mesh.max_connection_age.is_zero() || mesh.reload_interval.is_zero() {
        return Err(invalid(
            "mesh.max_connection_age",
            "max_connection_age and reload_interval must be above 0s".into(),
        ));
    }
    if mesh.gossip_interval.is_zero() || mesh.alive_interval.is_zero() {
        return Err(invalid(
            "mesh.gossip_interval",
            "gossip_interval and alive_interval must be above 0s".into(),
        ));
    }
    if mesh.max_stale < mesh.alive_interval * 2 || mesh.max_stale >= DEAD_NODE_GRACE_PERIOD / 2 {
        return Err(invalid(
            "mesh.max_stale",
            format!(
                "{:?} must be at least 2 x alive_interval ({:?}) and below {:?}",
                mesh.max_stale,
                mesh.alive_interval * 2,
                DEAD_NODE_GRACE_PERIOD / 2
            ),
        ));
    }
    Ok(mesh)
}

/// The most UDP worker threads per address `dns.udp_workers` accepts.
pub const MAX_UDP_WORKERS: usize = 1024;

fn parse_dns(
    raw: &RawDns,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<DnsConfig, ConfigError> {
    let listen = match &raw.listen {
        None => vec!["127.0.0.1:8853".parse().expect("literal address")],
        Some(list) => {
            if list.is_empty() {
                return Err(invalid(
                    "dns.listen",
                    "must name at least one HOST:PORT".into(),
                ));
            }
            list.iter()
                .map(|s| {
                    s.parse::<SocketAddr>()
                        .map_err(|_| invalid("dns.listen", format!("{s:?} is not HOST:PORT")))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let advertise = raw
        .advertise
        .as_deref()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| invalid("dns.advertise", format!("{s:?} is not an IP address")))
        })
        .transpose()?;
    let advertise = match advertise {
        Some(a) => Some(a),
        None if listen.iter().all(|a| a.ip().is_unspecified()) => {
            return Err(invalid(
                "dns.advertise",
                "is required when dns.listen is a wildcard address".into(),
            ));
        }
        None => listen
            .iter()
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified()),
    };
    let ttl_secs = |key: &str, v: &Option<String>| -> Result<u32, ConfigError> {
        let d = match v {
            None => Duration::from_secs(5),
            Some(s) => parse_duration(s).map_err(|e| invalid(key, e))?,
        };
        if d > Duration::from_secs(3600) || d.subsec_nanos() != 0 {
            return Err(invalid(
                key,
                format!(
                    "{} must be whole seconds between 0s and 3600s",
                    v.as_deref().unwrap_or_default()
                ),
            ));
        }
        Ok(d.as_secs() as u32)
    };
    let max_udp_payload = raw.max_udp_payload.unwrap_or(1232);
    if max_udp_payload < 512 {
        return Err(invalid(
            "dns.max_udp_payload",
            format!("{max_udp_payload} is below the DNS minimum of 512"),
        ));
    }
    let tcp_idle_timeout = match &raw.tcp_idle_timeout {
        None => Duration::from_secs(10),
        Some(s) => parse_duration(s).map_err(|e| invalid("dns.tcp_idle_timeout", e))?,
    };
    let positive = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(invalid(key, "0 would refuse every connection".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    // One worker per CPU by default: each worker is a thread that saturates about one core.
    let udp_workers = match raw.udp_workers {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(n @ 1..=MAX_UDP_WORKERS) => n,
        // Each worker preallocates about half a MiB of buffers; a typo such as 10000 would
        // otherwise cost gigabytes and thousands of threads.
        Some(n) => {
            return Err(invalid(
                "dns.udp_workers",
                format!("{n} must be between 1 and {MAX_UDP_WORKERS}"),
            ));
        }
    };
    Ok(DnsConfig {
        listen,
        advertise,
        ttl: ttl_secs("dns.ttl", &raw.ttl)?,
        negative_ttl: ttl_secs("dns.negative_ttl", &raw.negative_ttl)?,
        max_udp_payload,
        tcp_idle_timeout,
        max_tcp_connections: positive("dns.max_tcp_connections", raw.max_tcp_connections, 256)?,
        max_tcp_per_client: positive("dns.max_tcp_per_client", raw.max_tcp_per_client, 16)?,
        udp_workers,
        tls: None,
    })
}

fn parse_dns_tls(
    raw: &RawDns,
    resolve: &impl Fn(&str) -> PathBuf,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<DnsTlsConfig>, ConfigError> {
    let (listen, cert, key) = match (&raw.tls_listen, &raw.tls_cert, &raw.tls_key) {
        (None, None, None) => return Ok(None),
        (Some(listen), Some(cert), Some(key)) => (listen, cert, key),
        (None, _, _) => {
            return Err(invalid(
                "dns.tls_listen",
                "is required with dns.tls_cert and dns.tls_key".into(),
            ));
        }
        (Some(_), None, _) => {
            return Err(invalid(
                "dns.tls_cert",
                "is required with dns.tls_listen".into(),
            ));
        }
        (Some(_), Some(_), None) => {
            return Err(invalid(
                "dns.tls_key",
                "is required with dns.tls_listen".into(),
            ));
        }
    };
    if listen.is_empty() {
        return Err(invalid(
            "dns.tls_listen",
            "must name at least one HOST:PORT".into(),
        ));
    }
    let listen = listen
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| invalid("dns.tls_listen", format!("{s:?} is not HOST:PORT")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(DnsTlsConfig {
        listen,
        cert: resolve(cert),
        key: resolve(key),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml", Path::new("/etc/fleetdns"))
    }

    const MINIMAL: &str = "fleet: f\ncluster: east\nsource: {file: s.yaml}\n";

    #[test]
    fn a_kubernetes_source_gets_defaults_and_checked_values() {
        let text = "fleet: f\ncluster: east\nsource: {kubernetes: {}}\n";
        let SourceConfig::Kubernetes(k) = parse(text).unwrap().source else {
            panic!("not a kubernetes source");
        };
        assert_eq!(k.kubeconfig, None);
        assert_eq!(k.export.mode, crate::export::ExportMode::Auto);
        assert_eq!(k.lease.namespace, "fleetdns");
        assert_eq!(k.lease.name, "fleetdns-east");
        assert_eq!(k.lease.duration, Duration::from_secs(15));
        let text = "fleet: f\ncluster: east\nsource:\n  kubernetes:\n    kubeconfig: kc.yaml\n    export: {mode: annotation, namespaces: {allow: [a], deny: [kube-system]}}\n    lease: {namespace: ops, name: dns.lease, duration: 9s}\n";
        let SourceConfig::Kubernetes(k) = parse(text).unwrap().source else {
            panic!("not a kubernetes source");
        };
        assert_eq!(k.kubeconfig, Some("/etc/fleetdns/kc.yaml".into()));
        assert_eq!(k.export.mode, crate::export::ExportMode::Annotation);
        assert_eq!(k.export.deny_namespaces[0].as_str(), "kube-system");
        assert_eq!(
            (k.lease.namespace.as_str(), k.lease.name.as_str()),
            ("ops", "dns.lease")
        );
        for (bad, key) in [
            ("{kubernetes: {export: {mode: all}}}", "export.mode"),
            (
                "{kubernetes: {export: {namespaces: {deny: [Bad_NS]}}}}",
                "namespaces.deny",
            ),
            ("{kubernetes: {lease: {duration: 500ms}}}", "lease.duration"),
            ("{kubernetes: {lease: {name: Not_A_Name}}}", "lease.name"),
            ("{kubernetes: {}, file: s.yaml}", "exactly one"),
            ("{kubernetes: {bogus: 1}}", "bogus"),
        ] {
            let err = parse(&format!("fleet: f\ncluster: east\nsource: {bad}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn admin_without_a_token_stays_on_loopback() {
        assert_eq!(parse(MINIMAL).unwrap().admin, None);
        let c = parse(&format!("{MINIMAL}admin: {{listen: \"127.0.0.1:8053\"}}\n")).unwrap();
        let admin = c.admin.unwrap();
        assert_eq!(admin.listen, "127.0.0.1:8053".parse().unwrap());
        assert_eq!(admin.token, None);
        let err = parse(&format!("{MINIMAL}admin: {{listen: \"0.0.0.0:8053\"}}\n")).unwrap_err();
        assert!(err.to_string().contains("admin.listen"), "{err}");
        assert!(err.to_string().contains("0.0.0.0:8053"), "{err}");
    }

    #[test]
    fn admin_with_a_token_may_listen_anywhere_and_use_tls() {
        let text = format!(
            "{MINIMAL}admin: {{listen: \"0.0.0.0:8053\", token: 0123456789abcdef, tls: {{cert: a.pem, key: a.key}}}}\n"
        );
        let admin = parse(&text).unwrap().admin.unwrap();
        assert_eq!(
            admin.token,
            Some(AdminToken::Value("0123456789abcdef".into()))
        );
        assert_eq!(
            admin.tls,
            Some(TlsFiles {
                cert: "/etc/fleetdns/a.pem".into(),
                key: "/etc/fleetdns/a.key".into()
            })
        );
        let file = format!("{MINIMAL}admin: {{listen: \"[::]:8053\", token_file: t}}\n");
        let admin = parse(&file).unwrap().admin.unwrap();
        assert_eq!(
            admin.token,
            Some(AdminToken::File("/etc/fleetdns/t".into()))
        );
        for (bad, key) in [
            ("{listen: \"127.0.0.1:8053\", token: short}", "admin.token"),
            (
                "{listen: \"127.0.0.1:8053\", token: 0123456789abcdef, token_file: t}",
                "admin.token",
            ),
            (
                "{listen: \"127.0.0.1:8053\", tls: {cert: a, key: b}}",
                "admin.tls",
            ),
            ("{listen: localhost}", "admin.listen"),
        ] {
            let err = parse(&format!("{MINIMAL}admin: {bad}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn environment_variables_expand_and_unset_ones_are_named() {
        let env = |name: &str| match name {
            "POD_IP" => Some("10.1.2.3".to_string()),
            _ => None,
        };
        assert_eq!(
            expand_env("advertise: \"${POD_IP}:7950\"", env).unwrap(),
            "advertise: \"10.1.2.3:7950\""
        );
        assert_eq!(
            expand_env("a: $${POD_IP} $5", env).unwrap(),
            "a: ${POD_IP} $5"
        );
        let err = expand_env("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert!(err.contains("line 2") && err.contains("NOPE"), "{err}");
        assert!(
            expand_env("a: ${POD_IP", env)
                .unwrap_err()
                .contains("line 1")
        );
        assert!(expand_env("a: ${1X}", env).unwrap_err().contains("\"1X\""));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.zone.as_str(), "fleet.");
        assert_eq!(c.dns.ttl, 5);
        assert_eq!(c.dns.negative_ttl, 5);
        assert_eq!(c.dns.max_udp_payload, 1232);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.dns.udp_workers, cpus);
        assert_eq!(c.dns.listen, vec!["127.0.0.1:8853".parse().unwrap()]);
        assert_eq!(c.dns.advertise, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(c.source, SourceConfig::File("/etc/fleetdns/s.yaml".into()));
        let three = parse("fleet: f\ncluster: east\ndns: {udp_workers: 3}\nsource: {file: s}\n");
        assert_eq!(three.unwrap().dns.udp_workers, 3);
    }

    #[test]
    fn unknown_keys_name_the_key_with_line_and_column() {
        let err = parse("fleet: f\ncluster: east\ndns: {ttll: 5s}\nsource: {file: s}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttll"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn reserved_and_invalid_cluster_ids_are_rejected() {
        for id in ["svc", "ns", "dns-version", "East", "a.b"] {
            let err = parse(&format!("fleet: f\ncluster: {id}\nsource: {{file: s}}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("cluster") && err.contains(id), "{err}");
        }
        let err = parse("fleet: f\ncluster: east\nsource: {files: {svc: a.yaml}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.files.svc") && err.contains("reserved"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            ("dns: {ttl: 2h}", "dns.ttl"),
            ("dns: {ttl: fast}", "fast"),
            ("dns: {negative_ttl: 1.5s}", "dns.negative_ttl"),
            ("dns: {listen: [\"nowhere\"]}", "nowhere"),
            ("dns: {listen: [\"0.0.0.0:53\"]}", "dns.advertise"),
            ("dns: {max_udp_payload: 100}", "dns.max_udp_payload"),
            ("dns: {udp_workers: 0}", "dns.udp_workers"),
            ("dns: {udp_workers: 1025}", "dns.udp_workers"),
            ("dns: {udp_workers: -1}", "udp_workers"),
            ("network: {pod_cidrs: [10.0.0.0/33]}", "10.0.0.0/33"),
            ("zone: \"fl_eet.\"", "zone"),
            ("ops: {listen: \"x\"}", "ops.listen"),
        ];
        for (line, needle) in cases {
            let text = format!("fleet: f\ncluster: east\n{line}\nsource: {{file: s}}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }

    #[test]
    fn dns_over_tls_needs_listen_cert_and_key_together() {
        let base = "fleet: f\ncluster: east\nsource: {file: s}\n";
        let c = parse(&format!(
            "{base}dns: {{tls_listen: [\"127.0.0.1:853\"], tls_cert: d.pem, tls_key: d.key}}\n"
        ))
        .unwrap();
        let tls = c.dns.tls.unwrap();
        assert_eq!(tls.listen, vec!["127.0.0.1:853".parse().unwrap()]);
        assert_eq!(tls.key, PathBuf::from("/etc/fleetdns/d.key"));
        for (dns, needle) in [
            (
                "tls_listen: [\"127.0.0.1:853\"], tls_key: d.key",
                "dns.tls_cert",
            ),
            (
                "tls_listen: [\"127.0.0.1:853\"], tls_cert: d.pem",
                "dns.tls_key",
            ),
            ("tls_cert: d.pem, tls_key: d.key", "dns.tls_listen"),
            (
                "tls_listen: [nope], tls_cert: d.pem, tls_key: d.key",
                "\"nope\"",
            ),
        ] {
            let err = parse(&format!("{base}dns: {{{dns}}}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{dns}: {err}");
        }
    }

    #[test]
    fn mesh_settings_are_checked() {
        let base = "fleet: f\ncluster: east\nsource: {file: s}\n";
        let mesh =
            "mesh: {listen: \"127.0.0.1:7950\", cert: e.pem, key: e.key, trust_bundle: [ca.pem]";
        let c = parse(&format!("{base}{mesh}}}\n")).unwrap();
        let m = c.mesh.unwrap();
        assert_eq!(m.advertise, "127.0.0.1:7950".parse().unwrap());
        assert_eq!(m.max_stale, Duration::from_secs(60));
        assert_eq!(m.cert, PathBuf::from("/etc/fleetdns/e.pem"));
        assert_eq!(m.max_connection_age, Duration::from_secs(600));
        assert!(m.revoked_clusters.is_empty());
        for (extra, needle) in [
            (", revoked_clusters: [Bad_Name]", "mesh.revoked_clusters"),
            (", max_connection_age: 0s", "mesh.max_connection_age"),
            (", max_stale: 5s", "mesh.max_stale"),
            (", max_stale: 1h", "mesh.max_stale"),
            (", gossip_interval: 0s", "mesh.gossip_interval"),
            (", trust_bundle: []", "mesh.trust_bundle"),
        ] {
            let text = format!(
                "{base}{}{extra}}}\n",
                mesh.replace(
                    ", trust_bundle: [ca.pem]",
                    if extra.contains("trust_bundle") {
                        ""
                    } else {
                        ", trust_bundle: [ca.pem]"
                    }
                )
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        let wild =
            "mesh: {listen: \"0.0.0.0:7950\", cert: e.pem, key: e.key, trust_bundle: [ca.pem]}\n";
        assert!(
            parse(&format!("{base}{wild}"))
                .unwrap_err()
                .to_string()
                .contains("mesh.advertise")
        );
        let files = "fleet: f\ncluster: east\nsource: {files: {east: a}}\n";
        assert!(
            parse(&format!("{files}{mesh}}}\n"))
                .unwrap_err()
                .to_string()
                .contains("source.file")
        );
    }

    #[test]
    fn fleet_is_one_dns_label() {
        let err = parse("fleet: Prod Fleet\ncluster: east\nsource: {file: s}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fleet") && err.contains("Prod Fleet"), "{err}");
    }

    #[test]
    fn source_needs_exactly_one_kind() {
        assert!(parse("fleet: f\ncluster: east\nsource: {}\n").is_err());
        assert!(parse("fleet: f\ncluster: east\nsource: {file: a, files: {east: a}}\n").is_err());
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.96.0.0/12").unwrap();
        assert!(c.contains("10.100.1.1".parse().unwrap()));
        assert!(!c.contains("10.112.0.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn zone_is_lowercased_with_trailing_dot() {
        assert_eq!(
            ZoneName::parse("Fleet.Example.com").unwrap().as_str(),
            "fleet.example.com."
        );
        assert!(ZoneName::parse(".").is_err());
    }
}

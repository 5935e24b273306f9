//! `fleetdns demo`: the embedded default fleet as three real mesh peers.
//!
//! This module owns the demo's setup: the services files come from `config/demo/`
//! under the current directory when it exists (so edits to those files show up live),
//! else from the copies embedded in the binary; the fleet CA, each peer's certificate
//! and each peer's config are made fresh in a temporary directory.

use std::path::{Path, PathBuf};

/// The demo's files, embedded so `fleetdns demo` works from any directory.
pub const FILES: [(&str, &str); 4] = [
    ("fleet.yaml", include_str!("../config/demo/fleet.yaml")),
    ("east.yaml", include_str!("../config/demo/east.yaml")),
    ("west.yaml", include_str!("../config/demo/west.yaml")),
    ("central.yaml", include_str!("../config/demo/central.yaml")),
];

/// The three demo peers: (cluster, DNS port, ops port, mesh port, admin port).
pub const PEERS: [(&str, u16, u16, u16, u16); 3] = [
    ("east", 8853, 9153, 7950, 8053),
    ("west", 8854, 9154, 7951, 8054),
    ("central", 8855, 9155, 7952, 8055),
];

/// The demo's working files: a temporary directory (credentials, peer configs, and the
/// services files when `config/demo/` is not here), removed on drop.
#[derive(Debug)]
pub struct DemoFiles {
    /// Where the services files are (edit them: answers follow).
    pub services_dir: PathBuf,
    /// One config per peer, in [`PEERS`] order.
    pub configs: Vec<PathBuf>,
    work_dir: PathBuf,
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// Writes the demo's fleet CA, each peer's certificate and config. Services files come
/// from `config/demo/` when it exists, else from the copies embedded in the binary.
pub fn files(unix_now: u64) -> anyhow::Result<DemoFiles> {
    use crate::identity::{FleetName, issue_leaf, new_ca};
    let work_dir = std::env::temp_dir().join(format!("fleetdns-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let local = Path::new("config/demo");
    let services_dir = if local.join("east.yaml").is_file() {
        std::fs::canonicalize(local)?
    } else {
        for (name, text) in FILES {
            std::fs::write(work_dir.join(name), text)?;
        }
        work_dir.clone()
    };
    let mut files = DemoFiles {
        services_dir,
        configs: Vec::new(),
        work_dir: work_dir.clone(),
    };
    let fleet = FleetName::parse("demo")?;
    let ca = new_ca(&fleet, unix_now, 30)?;
    std::fs::write(work_dir.join("ca.pem"), &ca.cert_pem)?;
    for (cluster, dns, ops, mesh, admin) in PEERS {
        let id = crate::model::ClusterId::parse(cluster)?;
        let leaf = issue_leaf(&ca, &fleet, &id, unix_now, 30)?;
        std::fs::write(work_dir.join(format!("{cluster}.pem")), &leaf.cert_pem)?;
        crate::app::write_private(&work_dir.join(format!("{cluster}.key")), &leaf.key_pem)?;
        let seeds: Vec<String> = PEERS
            .iter()
            .filter(|p| p.0 != cluster)
            .map(|p| format!("\"127.0.0.1:{}\"", p.3))
            .collect();
        let config = format!(
            "fleet: demo\ncluster: {cluster}\nzone: fleet.\ndns: {{listen: [\"127.0.0.1:{dns}\"], advertise: 127.0.0.1}}\nops: {{listen: \"127.0.0.1:{ops}\"}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\nsource: {{file: \"{services}\"}}\nmesh:\n  listen: \"127.0.0.1:{mesh}\"\n  seeds: [{seeds}]\n  cert: {cluster}.pem\n  key: {cluster}.key\n  trust_bundle: [ca.pem]\n  gossip_interval: 200ms\n  alive_interval: 1s\n  max_stale: 10s\n  rejoin_after: 2s\n  bootstrap_timeout: 3s\n",
            services = files.services_dir.join(format!("{cluster}.yaml")).display(),
            seeds = seeds.join(", "),
        );
        let path = work_dir.join(format!("{cluster}-fleet.yaml"));
        std::fs::write(&path, config)?;
        files.configs.push(path);
    }
    Ok(files)
}

/// The commands the demo prints for a user to try.
pub fn try_commands(dns: std::net::SocketAddr) -> Vec<String> {
    let at = format!("dig @{} -p {}", dns.ip(), dns.port());
    vec![
        format!("{at} web.default.svc.fleet          # merged: east's own VIP (local-preferred)"),
        format!("{at} web.default.west.fleet         # west's web, as east may serve it (ingress)"),
        format!("{at} catalog.shop.svc.fleet AAAA    # only west exports it"),
        format!("{at} _http._tcp.web.default.svc.fleet SRV"),
        format!("{at} _postgres._tcp.db.shop.east.fleet SRV   # headless: one SRV per ready pod"),
        format!("{at} db-0.db.shop.east.fleet        # a per-endpoint name"),
        format!("{at} east.fleet TXT                 # cluster inventory"),
        format!("{at} nope.default.svc.fleet         # NXDOMAIN, SOA in authority"),
        format!("{at} +tcp api.shop.east.fleet AAAA"),
        "fleetdns query clusters                 # east's admin API (127.0.0.1:8053)".into(),
        "fleetdns query resolve web.default.svc.fleet   # the answer, and why".into(),
    ]
}

//! `fleetdns demo`: the embedded default fleet.
//!
//! This module owns where the demo's files come from: `config/demo/` under the current
//! directory when it exists (so edits to those files show up live), else the copies
//! embedded in the binary, written to a temporary directory.

use std::path::{Path, PathBuf};

/// The demo's files, embedded so `fleetdns demo` works from any directory.
pub const FILES: [(&str, &str); 4] = [
    ("fleet.yaml", include_str!("../config/demo/fleet.yaml")),
    ("east.yaml", include_str!("../config/demo/east.yaml")),
    ("west.yaml", include_str!("../config/demo/west.yaml")),
    ("central.yaml", include_str!("../config/demo/central.yaml")),
];

/// The demo's config file; a temporary copy of the embedded files is removed on drop.
#[derive(Debug)]
pub struct DemoFiles {
    pub config: PathBuf,
    temp_dir: Option<PathBuf>,
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The demo config file to run: `config/demo/fleet.yaml` if present, else the embedded
/// copy materialized under the system's temporary directory.
pub fn files() -> std::io::Result<DemoFiles> {
    let local = Path::new("config/demo/fleet.yaml");
    if local.is_file() {
        return Ok(DemoFiles {
            config: local.to_path_buf(),
            temp_dir: None,
        });
    }
    let dir = std::env::temp_dir().join(format!("fleetdns-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let files = DemoFiles {
        config: dir.join("fleet.yaml"),
        temp_dir: Some(dir.clone()),
    };
    for (name, text) in FILES {
        std::fs::write(dir.join(name), text)?;
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
    ]
}

//! What the mesh tests share: a fleet's credentials, services files and peer configs
//! written to a directory, and DNS waits that see Extended DNS Errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetdns::app::App;
use fleetdns::clock::{Clock, SystemClock};
use fleetdns::config::Config;
use fleetdns::dns::index::Readiness;
use fleetdns::identity::{Credentials, FleetName, issue_leaf, new_ca};
use fleetdns::model::ClusterId;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use super::{Q, TIMEOUT, answers, udp_raw};

/// Starts a peer from a config file with the tests' fast options; waits until ready.
pub async fn start_peer(path: &Path) -> App {
    let app = App::start(Config::load(path).unwrap(), super::fast_options())
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, app.wait_for(|s| s.readiness == Readiness::Ready))
        .await
        .expect("peer ready");
    app
}

/// chitchat settings for a node that is no fleetdns peer (the tests' forgers and the
/// transport's own tests): fast rounds, no fleetdns logic.
pub fn bare_chitchat_config(
    fleet: &str,
    node_id: &str,
    generation: u64,
    listen: SocketAddr,
    seeds: Vec<String>,
) -> chitchat::ChitchatConfig {
    chitchat::ChitchatConfig {
        chitchat_id: chitchat::ChitchatId::new(node_id.to_string(), generation, listen),
        cluster_id: fleet.to_string(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: listen,
        seed_nodes: seeds,
        failure_detector_config: chitchat::FailureDetectorConfig {
            initial_interval: Duration::from_millis(100),
            ..Default::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(900),
        catchup_callback: None,
        extra_liveness_predicate: None,
    }
}

/// A loopback address free when picked.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A services file: `web` (shared by every cluster) and `only-<cluster>`, both at `ip`.
pub fn services(cluster: &str, ip: &str) -> String {
    format!(
        "services:\n  - {{name: web, namespace: default, ports: [{{name: http, port: 80}}], ingress: [{ip}], endpoints: [{{address: 10.0.0.1}}]}}\n  - {{name: only-{cluster}, namespace: default, ingress: [{ip}], endpoints: [{{address: 10.0.0.2}}]}}\n"
    )
}

/// Queries `name` (A, with EDNS so EDE is visible) at `dns` until `ok` holds for the
/// reply; panics after [`TIMEOUT`] with the last reply.
pub async fn wait_reply(
    dns: SocketAddr,
    name: &str,
    what: &str,
    ok: impl Fn(&Message) -> bool,
) -> Message {
    let bytes = Q::new(name, RecordType::A).edns(1232).to_bytes();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last = None;
    loop {
        if let Some(reply) = udp_raw(dns, &bytes, Duration::from_secs(2)).await {
            let m = Message::from_vec(&reply).expect("reply decodes");
            if ok(&m) {
                return m;
            }
            last = Some(m);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} at {dns}: never {what}; last reply: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The INFO-CODE of the first Extended DNS Error option (RFC 8914), if any.
pub fn ede(m: &Message) -> Option<u16> {
    let edns = m.edns.as_ref()?;
    edns.options().as_ref().iter().find_map(|(code, opt)| {
        (u16::from(*code) == 15).then(|| match opt {
            hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, data) if data.len() >= 2 => {
                u16::from_be_bytes([data[0], data[1]])
            }
            _ => 0,
        })
    })
}

/// A fresh answer: NOERROR with exactly `ip` and no EDE.
pub fn fresh(m: &Message, ip: &str) -> bool {
    m.metadata.response_code == ResponseCode::NoError && answers(m) == vec![ip] && ede(m).is_none()
}

/// A fleet's files in one directory: CAs, leaves, services files and peer configs.
pub struct FleetDir {
    pub dir: PathBuf,
    pub fleet: FleetName,
}

/// Knobs of one peer's config beyond the fast defaults.
#[derive(Debug, Clone)]
pub struct PeerConfig<'a> {
    pub cluster: &'a str,
    pub listen: SocketAddr,
    pub seeds: &'a [SocketAddr],
    /// File names (in the fleet directory) of the peer's trust bundle.
    pub trust_bundle: &'a [&'a str],
    pub max_stale: &'a str,
    /// More `mesh:` keys, as YAML lines indented by two spaces.
    pub extra: &'a str,
}

impl<'a> PeerConfig<'a> {
    pub fn new(cluster: &'a str, listen: SocketAddr, seeds: &'a [SocketAddr]) -> Self {
        Self {
            cluster,
            listen,
            seeds,
            trust_bundle: &["ca.pem"],
            max_stale: "2s",
            extra: "",
        }
    }
}

impl FleetDir {
    /// A fleet `test` with a CA in `ca.pem`/`ca.key`.
    pub fn new(dir: &Path) -> Self {
        let fleet = FleetDir {
            dir: dir.to_path_buf(),
            fleet: FleetName::parse("test").unwrap(),
        };
        fleet.write_ca("ca");
        fleet
    }

    pub fn now() -> u64 {
        SystemClock.unix_seconds()
    }

    /// A new CA in `<name>.pem` and `<name>.key`.
    pub fn write_ca(&self, name: &str) -> Credentials {
        let ca = new_ca(&self.fleet, Self::now(), 30).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), &ca.cert_pem).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), &ca.key_pem).unwrap();
        ca
    }

    pub fn ca(&self, name: &str) -> Credentials {
        Credentials {
            cert_pem: std::fs::read_to_string(self.dir.join(format!("{name}.pem"))).unwrap(),
            key_pem: std::fs::read_to_string(self.dir.join(format!("{name}.key"))).unwrap(),
        }
    }

    /// A leaf of `cluster` signed by CA `ca`, valid from `not_before` (Unix seconds)
    /// for `days`, in `<cluster>.pem`/`<cluster>.key`.
    pub fn write_leaf_at(
        &self,
        ca: &str,
        cluster: &str,
        not_before: u64,
        days: u32,
    ) -> Credentials {
        let leaf = issue_leaf(
            &self.ca(ca),
            &self.fleet,
            &ClusterId::parse(cluster).unwrap(),
            not_before,
            days,
        )
        .unwrap();
        std::fs::write(self.dir.join(format!("{cluster}.pem")), &leaf.cert_pem).unwrap();
        std::fs::write(self.dir.join(format!("{cluster}.key")), &leaf.key_pem).unwrap();
        leaf
    }

    pub fn write_leaf(&self, ca: &str, cluster: &str) -> Credentials {
        self.write_leaf_at(ca, cluster, Self::now(), 30)
    }

    /// Writes `<cluster>.yaml` with [`services`] at `ip`.
    pub fn write_services(&self, cluster: &str, ip: &str) {
        std::fs::write(
            self.dir.join(format!("{cluster}.yaml")),
            services(cluster, ip),
        )
        .unwrap();
    }

    /// Writes `<cluster>-fleet.yaml`: DNS on a free loopback port, the services file
    /// `<cluster>.yaml`, and a mesh with fast settings (DESIGN.md §7).
    pub fn write_config(&self, peer: &PeerConfig) -> PathBuf {
        let seeds: Vec<String> = peer.seeds.iter().map(|a| format!("\"{a}\"")).collect();
        let config = format!(
            "fleet: test\ncluster: {cluster}\ndns: {{listen: [\"127.0.0.1:0\"], advertise: 127.0.0.1}}\nsource: {{file: {cluster}.yaml}}\nmesh:\n  listen: \"{listen}\"\n  seeds: [{seeds}]\n  cert: {cluster}.pem\n  key: {cluster}.key\n  trust_bundle: [{bundle}]\n  gossip_interval: 100ms\n  alive_interval: 200ms\n  clock_skew: 0s\n  max_stale: {max_stale}\n  rejoin_after: 1s\n  bootstrap_timeout: 1s\n{extra}",
            cluster = peer.cluster,
            listen = peer.listen,
            seeds = seeds.join(", "),
            bundle = peer.trust_bundle.join(", "),
            max_stale = peer.max_stale,
            extra = peer.extra,
        );
        let path = self.dir.join(format!("{}-fleet.yaml", peer.cluster));
        std::fs::write(&path, config).unwrap();
        path
    }
}

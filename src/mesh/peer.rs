//! Publishing a cluster's exports into chitchat, and adopting other clusters' exports
//! from it (DESIGN.md §4 "Origin authenticity and completeness").
//!
//! This module owns the two halves of the adoption protocol over chitchat node states:
//! the [`Publisher`] writes a node's service keys, then its certificate, then one
//! signed root over them (root last, so a reader never sees a root for keys it cannot
//! have yet); the [`Observer`] adopts, per cluster, the verified root with the highest
//! (epoch, origin time, seq) and keeps the previously adopted export while a newer one
//! is incomplete. Both work on chitchat's `NodeState` and are driven by the observe
//! loop; the decisions themselves are `codec::verify_root`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chitchat::NodeState;

use super::codec::{
    self, ALIVE_KEY, ROOT_KEY, RootClaim, RootRejection, SERVICE_PREFIX, VerifiedRoot,
    decode_exports, digest, encode_exports, open_alive, seal_alive, seal_root, verify_root,
};
use crate::identity::{FleetName, IdentityError};
use crate::model::{ClusterId, LocalExports, ServiceKey};

/// The key of a node's certificate chain (PEM). Certificates are public; chitchat
/// values are strings, and a chain of two P-256 certificates is about 1.3 KiB.
pub const CERT_KEY: &str = "m:cert";

/// What a node signs and proves with.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub fleet: FleetName,
    pub node_id: String,
    pub cert_chain_pem: String,
    pub key_pem: String,
}

/// Writes one node's exports; owns its root sequence.
#[derive(Debug)]
pub struct Publisher {
    identity: PeerIdentity,
    generation: u64,
    epoch: u64,
    seq: u64,
}

impl Publisher {
    /// `generation` is the chitchat generation of this run; `epoch` orders publishers
    /// across restarts and replicas (a Lease's, or the start time).
    pub fn new(identity: PeerIdentity, generation: u64, epoch: u64) -> Self {
        Self {
            identity,
            generation,
            epoch,
            seq: 0,
        }
    }

    /// Writes `exports` into the node's own state: service keys first, stale ones
    /// deleted, then the certificate, then the signed root. Returns the services that
    /// could not be encoded, with why.
    pub fn publish(
        &mut self,
        state: &mut NodeState,
        exports: &LocalExports,
        unix_now: u64,
    ) -> Result<Vec<(ServiceKey, codec::Rejection)>, IdentityError> {
        let (kvs, refused) = encode_exports(exports);
        let stale: Vec<String> = state
            .key_values()
            .filter(|(k, _)| k.starts_with(SERVICE_PREFIX) && !kvs.contains_key(*k))
            .map(|(k, _)| k.to_string())
            .collect();
        for key in stale {
            state.delete(&key);
        }
        for (key, value) in &kvs {
            if state.get(key) != Some(value.as_str()) {
                state.set(key, value);
            }
        }
        if state.get(CERT_KEY) != Some(self.identity.cert_chain_pem.as_str()) {
            state.set(CERT_KEY, &self.identity.cert_chain_pem);
        }
        let digest = digest(kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.write_root(state, kvs.len() as u32, digest, false, unix_now)?;
        Ok(refused)
    }

    /// Signs and writes the next root; always the last write of a publication.
    fn write_root(
        &mut self,
        state: &mut NodeState,
        key_count: u32,
        digest: [u8; 32],
        decommissioned: bool,
        unix_now: u64,
    ) -> Result<(), IdentityError> {
        self.seq += 1;
        let claim = RootClaim {
            fleet: self.identity.fleet.as_str().to_string(),
            node_id: self.identity.node_id.clone(),
            generation: self.generation,
            epoch: self.epoch,
            seq: self.seq,
            origin_time: unix_now,
            key_count,
            digest,
            decommissioned,
        };
        state.set(ROOT_KEY, seal_root(&claim, &self.identity.key_pem)?);
        Ok(())
    }

    /// `fleetdns leave`: a signed, empty root saying the cluster left the fleet. Its
    /// epoch must order after every root the cluster's publishers wrote.
    pub fn decommission(
        &mut self,
        state: &mut NodeState,
        unix_now: u64,
    ) -> Result<(), IdentityError> {
        state.set(CERT_KEY, &self.identity.cert_chain_pem);
        self.write_root(state, 0, digest(std::iter::empty()), true, unix_now)?;
        Ok(())
    }
}

impl Publisher {
    /// Writes a fresh signed `m:alive` stamp; every replica does this each
    /// `mesh.alive_interval`, publisher or not.
    pub fn stamp_alive(&self, state: &mut NodeState, unix_ms: u64) -> Result<(), IdentityError> {
        state.set(
            ALIVE_KEY,
            seal_alive(&self.identity.node_id, unix_ms, &self.identity.key_pem)?,
        );
        Ok(())
    }
}

/// One cluster's adopted export and the root that vouches for it.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub node_id: String,
    pub claim: RootClaim,
    pub exports: Arc<LocalExports>,
}

/// What the observer knows of one node with a verified root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub cluster: ClusterId,
    /// Wall-clock ms of its last stamp signed by its own certified key.
    pub alive_ms: Option<u64>,
}

/// Adopts other clusters' exports from chitchat node states; one per peer.
#[derive(Debug)]
pub struct Observer {
    fleet: FleetName,
    bundle: Vec<String>,
    adopted: BTreeMap<ClusterId, Adopted>,
    replicas: BTreeMap<String, Replica>,
}

/// What one observation found wrong, per node (bounded reasons).
pub type Rejections = Vec<(String, RootRejection)>;

fn order(claim: &RootClaim) -> (u64, u64, u64) {
    (claim.epoch, claim.origin_time, claim.seq)
}

impl Observer {
    pub fn new(fleet: FleetName, bundle: Vec<String>) -> Self {
        Self {
            fleet,
            bundle,
            adopted: BTreeMap::new(),
            replicas: BTreeMap::new(),
        }
    }

    /// What the liveness state machine needs of `cluster`'s replicas; `reported_live`
    /// says whether chitchat's failure detector reports a node live.
    pub fn replica_observations(
        &self,
        cluster: &ClusterId,
        reported_live: impl Fn(&str) -> bool,
    ) -> Vec<super::liveness::ReplicaObservation> {
        self.replicas
            .iter()
            .filter(|(_, r)| r.cluster == *cluster)
            .map(|(node, r)| super::liveness::ReplicaObservation {
                reported_live: reported_live(node),
                alive_stamp_ms: r.alive_ms.unwrap_or(0),
            })
            .collect()
    }

    /// Looks at every node's state and adopts, per cluster, the newest verified root.
    /// Returns the clusters whose adopted export changed and the roots rejected.
    pub fn observe<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (&'a str, &'a NodeState)>,
        unix_now: u64,
    ) -> (BTreeSet<ClusterId>, Rejections) {
        let mut rejected = Vec::new();
        let mut best: BTreeMap<ClusterId, Adopted> = BTreeMap::new();
        let mut present = BTreeSet::new();
        for (node_id, state) in nodes {
            let Some(root) = state.get(ROOT_KEY) else {
                continue;
            };
            let cert = state.get(CERT_KEY).unwrap_or_default();
            let held = state.key_values();
            let verified = match verify_root(
                root,
                cert,
                &self.bundle,
                &self.fleet,
                node_id,
                held,
                unix_now,
            ) {
                Ok(verified) => verified,
                Err(reason) => {
                    // A node whose newer root is still arriving keeps what was last
                    // learned of it, alive stamp included.
                    rejected.push((node_id.to_string(), reason));
                    present.insert(node_id.to_string());
                    continue;
                }
            };
            let VerifiedRoot {
                cluster,
                claim,
                peer,
            } = verified;
            // A node is a replica of its cluster only once it has a verified root;
            // its liveness comes from its own signed stamp, never from heartbeats.
            // A verified root is signed proof of life at its origin time too, so a
            // cluster adopted before its first stamp arrives is not taken for dead.
            let stamp = state
                .get(ALIVE_KEY)
                .and_then(|v| open_alive(v, node_id, &peer));
            let alive_ms = Some(
                stamp
                    .unwrap_or(0)
                    .max(claim.origin_time.saturating_mul(1000)),
            );
            present.insert(node_id.to_string());
            self.replicas.insert(
                node_id.to_string(),
                Replica {
                    cluster: cluster.clone(),
                    alive_ms,
                },
            );
            if best
                .get(&cluster)
                .is_some_and(|b| order(&b.claim) >= order(&claim))
            {
                continue;
            }
            let (exports, _) = decode_exports(&cluster, state.key_values());
            best.insert(
                cluster,
                Adopted {
                    node_id: node_id.to_string(),
                    claim,
                    exports: Arc::new(exports),
                },
            );
        }
        // Nodes chitchat no longer knows are no replicas.
        self.replicas.retain(|node, _| present.contains(node));
        let mut changed = BTreeSet::new();
        for (cluster, candidate) in best {
            let newer = self
                .adopted
                .get(&cluster)
                .is_none_or(|current| order(&candidate.claim) > order(&current.claim));
            if newer {
                changed.insert(cluster.clone());
                self.adopted.insert(cluster, candidate);
            }
        }
        (changed, rejected)
    }

    /// The adopted export of every cluster seen so far.
    pub fn adopted(&self) -> &BTreeMap<ClusterId, Adopted> {
        &self.adopted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chitchat::transport::ChannelTransport;
    use chitchat::{
        ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat,
    };

    use super::*;
    use crate::identity::{issue_leaf, new_ca};
    use crate::source::file::parse_services_file;

    const NOW: u64 = 1_795_000_000;

    async fn node(
        transport: &ChannelTransport,
        node_id: &str,
        port: u16,
        seeds: Vec<String>,
    ) -> ChitchatHandle {
        let addr = ([127, 0, 0, 1], port).into();
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.to_string(), 1, addr),
            cluster_id: "prod".into(),
            gossip_interval: Duration::from_millis(50),
            listen_addr: addr,
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig {
                initial_interval: Duration::from_millis(50),
                ..Default::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        spawn_chitchat(config, Vec::new(), transport).await.unwrap()
    }

    /// Observes `handle`'s view until `done` holds (paused time makes gossip instant).
    async fn observe_until(
        handle: &ChitchatHandle,
        observer: &mut Observer,
        mut done: impl FnMut(&Observer, &Rejections) -> bool,
    ) {
        for _ in 0..2000 {
            let rejected = {
                let chitchat = handle.chitchat();
                let guard = chitchat.lock().await;
                let nodes = guard.node_states().iter().map(|(id, s)| (&*id.node_id, s));
                observer.observe(nodes, NOW).1
            };
            if done(observer, &rejected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the observer never reached the expected state");
    }

    fn exports(cluster: &str, yaml: &str) -> LocalExports {
        parse_services_file(yaml, "test", &ClusterId::parse(cluster).unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn readers_adopt_only_verified_complete_roots_of_the_right_cluster() {
        let fleet = FleetName::parse("prod").unwrap();
        let ca = new_ca(&fleet, NOW, 3650).unwrap();
        let creds =
            |c: &str| issue_leaf(&ca, &fleet, &ClusterId::parse(c).unwrap(), NOW, 365).unwrap();
        let (east_creds, west_creds) = (creds("east"), creds("west"));
        let transport = ChannelTransport::default();
        let east = node(&transport, "east/0", 10_001, vec![]).await;
        let west = node(&transport, "west/0", 10_002, vec!["127.0.0.1:10001".into()]).await;
        let identity = |node: &str, c: &crate::identity::Credentials| PeerIdentity {
            fleet: fleet.clone(),
            node_id: node.into(),
            cert_chain_pem: c.cert_pem.clone(),
            key_pem: c.key_pem.clone(),
        };

        let mut publisher = Publisher::new(identity("east/0", &east_creds), 1, 1);
        let v1 = exports(
            "east",
            "services:\n  - {name: web, namespace: default, ingress: [192.0.2.1]}\n",
        );
        east.with_chitchat(|c| publisher.publish(c.self_node_state(), &v1, NOW).unwrap())
            .await;

        east.with_chitchat(|c| {
            publisher
                .stamp_alive(c.self_node_state(), (NOW + 5) * 1000)
                .unwrap()
        })
        .await;
        let mut observer = Observer::new(fleet.clone(), vec![ca.cert_pem.clone()]);
        let east_id = ClusterId::parse("east").unwrap();
        observe_until(&west, &mut observer, |o, _| {
            o.adopted()
                .get(&east_id)
                .is_some_and(|a| a.exports.services.len() == 1)
                && o.replica_observations(&east_id, |_| true)
                    .iter()
                    .any(|r| r.alive_stamp_ms == (NOW + 5) * 1000)
        })
        .await;

        // A new version replaces the old one; a deleted service does not come back.
        let v2 = exports(
            "east",
            "services:\n  - {name: api, namespace: default, ingress: [192.0.2.2]}\n",
        );
        east.with_chitchat(|c| {
            publisher
                .publish(c.self_node_state(), &v2, NOW + 1)
                .unwrap()
        })
        .await;
        observe_until(&west, &mut observer, |o, _| {
            o.adopted().get(&east_id).is_some_and(|a| {
                a.exports
                    .services
                    .keys()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    == ["api"]
            })
        })
        .await;

        // A node with west's credentials claiming to be east/9 changes nothing.
        let impostor = node(&transport, "east/9", 10_003, vec!["127.0.0.1:10001".into()]).await;
        let mut forger = Publisher::new(identity("east/9", &west_creds), 1, 99);
        let evil = exports(
            "east",
            "services:\n  - {name: evil, namespace: default, ingress: [198.51.100.66]}\n",
        );
        impostor
            .with_chitchat(|c| forger.publish(c.self_node_state(), &evil, NOW + 2).unwrap())
            .await;
        observe_until(&west, &mut observer, |_, rejected| {
            rejected.contains(&("east/9".to_string(), RootRejection::CertClusterMismatch))
        })
        .await;
        let adopted = &observer.adopted()[&east_id];
        assert_eq!(adopted.node_id, "east/0");
        // The impostor is no replica of east: east's liveness is east/0's stamps alone.
        let replicas = observer.replica_observations(&east_id, |_| true);
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].alive_stamp_ms, (NOW + 5) * 1000);
        assert!(
            adopted
                .exports
                .services
                .keys()
                .all(|k| k.name.as_str() == "api")
        );
    }
}

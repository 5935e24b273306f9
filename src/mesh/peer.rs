//! Publishing a cluster's exports into chitchat, and adopting other clusters' exports
//! from it (DESIGN.md §4 "Origin authenticity and completeness").
//!
//! This module owns the two halves of the adoption protocol over chitchat node states:
//! the [`Publisher`] writes a node's service keys, then its certificate, then one
//! signed root over them (root last, so a reader never sees a root for keys it cannot
//! have yet), or a standby root when another replica publishes; the [`Observer`]
//! verifies every generation of every node once per change, adopts, per cluster, the
//! verified publisher root with the highest (epoch, origin time, seq), keeps the
//! previously adopted export while a newer one is incomplete, and knows each node's
//! last signed stamp for the liveness state machine. Both work on chitchat's `NodeState` and are driven by the observe
//! loop; the decisions themselves are `codec::verify_root`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chitchat::NodeState;

use super::codec::{
    self, ALIVE_KEY, ROOT_KEY, RootClaim, RootRejection, RootRole, SERVICE_PREFIX, VerifiedRoot,
    decode_exports, digest, encode_exports, open_alive, seal_alive, seal_root, verify_root,
};
use crate::identity::{FleetName, FleetTrust, IdentityError};
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

/// Writes one node's exports; owns its root sequence and its epoch.
#[derive(Debug)]
pub struct Publisher {
    identity: PeerIdentity,
    generation: u64,
    epoch: u64,
    seq: u64,
    role: Option<RootRole>,
}

impl Publisher {
    /// `generation` is the chitchat generation of this run; `epoch` orders publishers
    /// across restarts and replicas (a Lease's, or the start time in ms).
    pub fn new(identity: PeerIdentity, generation: u64, epoch: u64) -> Self {
        Self {
            identity,
            generation,
            epoch,
            seq: 0,
            role: None,
        }
    }

    /// New credentials: the next root and stamps are signed with them.
    pub fn set_identity(&mut self, identity: PeerIdentity) {
        self.identity = identity;
    }

    /// The role of the last root written, if any.
    pub fn role(&self) -> Option<RootRole> {
        self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes the next root order after a root of this cluster with epoch `seen`: a
    /// replica taking over must outrank every root readers may have adopted, or they
    /// would keep the old publisher's version. Returns whether the epoch moved.
    pub fn raise_epoch_above(&mut self, seen: u64) -> bool {
        if seen >= self.epoch {
            self.epoch = seen.saturating_add(1);
            true
        } else {
            false
        }
    }

    /// Writes `exports` into the node's own state: service keys first, stale ones
    /// deleted, then the certificate, then the signed root. Returns the services that
    /// could not be encoded, with why.
    pub fn publish(
        &mut self,
        state: &mut NodeState,
        exports: &LocalExports,
        unix_ms: u64,
    ) -> Result<Vec<(ServiceKey, codec::Rejection)>, IdentityError> {
        let (kvs, refused) = encode_exports(exports);
        self.write_keys(state, &kvs);
        let digest = digest(kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.write_root(
            state,
            kvs.len() as u32,
            digest,
            RootRole::Publisher,
            exports.labels.clone(),
            unix_ms,
        )?;
        Ok(refused)
    }

    /// Steps back: deletes the service keys and writes a standby root, so this node
    /// stays a replica (its stamps keep the cluster live) without being adopted.
    pub fn stand_by(&mut self, state: &mut NodeState, unix_ms: u64) -> Result<(), IdentityError> {
        self.write_keys(state, &BTreeMap::new());
        self.write_root(
            state,
            0,
            digest(std::iter::empty()),
            RootRole::Standby,
            BTreeMap::new(),
            unix_ms,
        )
    }

    /// `fleetdns leave`: a signed, empty root saying the cluster left the fleet. Its
    /// epoch must order after every root the cluster's publishers wrote.
    pub fn decommission(
        &mut self,
        state: &mut NodeState,
        unix_ms: u64,
    ) -> Result<(), IdentityError> {
        self.write_keys(state, &BTreeMap::new());
        self.write_root(
            state,
            0,
            digest(std::iter::empty()),
            RootRole::Decommissioned,
            BTreeMap::new(),
            unix_ms,
        )
    }

    /// Makes the node's service keys exactly `kvs` (unchanged values are not rewritten,
    /// so they cost no gossip) and its certificate current.
    fn write_keys(&self, state: &mut NodeState, kvs: &BTreeMap<String, String>) {
        let stale: Vec<String> = state
            .key_values()
            .filter(|(k, _)| k.starts_with(SERVICE_PREFIX) && !kvs.contains_key(*k))
            .map(|(k, _)| k.to_string())
            .collect();
        for key in stale {
            state.delete(&key);
        }
        for (key, value) in kvs {
            if state.get(key) != Some(value.as_str()) {
                state.set(key, value);
            }
        }
        if state.get(CERT_KEY) != Some(self.identity.cert_chain_pem.as_str()) {
            state.set(CERT_KEY, &self.identity.cert_chain_pem);
        }
    }

    /// Signs and writes the next root; always the last write of a publication.
    fn write_root(
        &mut self,
        state: &mut NodeState,
        key_count: u32,
        digest: [u8; 32],
        role: RootRole,
        labels: BTreeMap<String, String>,
        unix_ms: u64,
    ) -> Result<(), IdentityError> {
        self.seq += 1;
        let claim = RootClaim {
            fleet: self.identity.fleet.as_str().to_string(),
            node_id: self.identity.node_id.clone(),
            generation: self.generation,
            epoch: self.epoch,
            seq: self.seq,
            origin_ms: unix_ms,
            key_count,
            digest,
            role,
            labels,
        };
        state.set(ROOT_KEY, seal_root(&claim, &self.identity.key_pem)?);
        self.role = Some(role);
        Ok(())
    }

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
    /// The certificate chain that vouched for it (checked again when trust changes).
    pub cert: String,
    /// Wall-clock ms when this peer adopted it.
    pub adopted_ms: u64,
}

/// What the observer knows of one node with a verified root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub cluster: ClusterId,
    /// Wall-clock ms of its last stamp signed by its own certified key.
    pub alive_ms: u64,
    /// Its last verified root.
    pub epoch: u64,
    pub role: RootRole,
}

/// The last verification of one node's state, reused while the state is unchanged:
/// checking a chain and two signatures for every node every 100 ms would cost more
/// than everything else the loop does.
#[derive(Debug)]
struct Checked {
    max_version: u64,
    /// The highest version of any key but `m:alive`: unchanged, only a stamp moved.
    content_version: u64,
    /// The certified peer of a verified root, to open its next stamps with.
    peer: Option<crate::identity::VerifiedPeer>,
    origin_ms: u64,
    root: String,
    checked_at: u64,
    outcome: Result<ClusterId, RootRejection>,
    /// What the last verified root of this generation made of the node.
    replica: Option<Replica>,
}

/// How long a verification is reused at most (certificates expire).
const RECHECK_AFTER_SECS: u64 = 60;

/// Adopts other clusters' exports from chitchat node states; one per peer.
#[derive(Debug)]
pub struct Observer {
    trust: FleetTrust,
    adopted: BTreeMap<ClusterId, Adopted>,
    replicas: BTreeMap<String, Replica>,
    /// Per (node id, chitchat generation).
    checked: BTreeMap<(String, u64), Checked>,
}

/// What one observation found wrong, per node (bounded reasons). Each root is
/// reported once, not on every pass that still sees it.
pub type Rejections = Vec<(String, RootRejection)>;

/// What one observation changed.
#[derive(Debug, Default)]
pub struct Observation {
    /// Clusters whose adopted export changed, each with whether it replaced an
    /// earlier one (an update) or is the cluster's first.
    pub adopted: BTreeMap<ClusterId, bool>,
    pub rejected: Rejections,
    /// Some node generation showed a root not seen before (a new export version,
    /// or a node first seen): what gossip-on-change pushes.
    pub new_root: bool,
}

fn order(claim: &RootClaim) -> (u64, u64, u64) {
    (claim.epoch, claim.origin_ms, claim.seq)
}

impl Observer {
    pub fn new(trust: FleetTrust) -> Self {
        Self {
            trust,
            adopted: BTreeMap::new(),
            replicas: BTreeMap::new(),
            checked: BTreeMap::new(),
        }
    }

    /// What the liveness state machine needs of every cluster's replicas, in one pass;
    /// `reported_live` says whether chitchat's failure detector reports a node live.
    pub fn observations_by_cluster(
        &self,
        reported_live: impl Fn(&str) -> bool,
    ) -> BTreeMap<&ClusterId, Vec<super::liveness::ReplicaObservation>> {
        let mut by_cluster: BTreeMap<&ClusterId, Vec<_>> = BTreeMap::new();
        for (node, r) in &self.replicas {
            by_cluster
                .entry(&r.cluster)
                .or_default()
                .push(super::liveness::ReplicaObservation {
                    reported_live: reported_live(node),
                    alive_stamp_ms: r.alive_ms,
                });
        }
        by_cluster
    }

    /// What the verified root of one generation of `node_id` made of it, if any.
    pub fn verified(&self, node_id: &str, generation: u64) -> Option<&Replica> {
        self.checked
            .get(&(node_id.to_string(), generation))
            .and_then(|c| c.replica.as_ref())
    }

    /// Every node with a verified root of `cluster`.
    pub fn replicas_of<'a>(
        &'a self,
        cluster: &'a ClusterId,
    ) -> impl Iterator<Item = (&'a str, &'a Replica)> + 'a {
        self.replicas
            .iter()
            .filter(move |(_, r)| r.cluster == *cluster)
            .map(|(node, r)| (node.as_str(), r))
    }

    /// The highest epoch of any root of `cluster` not written by `node_id`: adopted
    /// here, or held by another replica now.
    pub fn highest_other_epoch(&self, cluster: &ClusterId, node_id: &str) -> Option<u64> {
        let adopted = self
            .adopted
            .get(cluster)
            .filter(|a| a.node_id != node_id)
            .map(|a| a.claim.epoch);
        self.replicas_of(cluster)
            .filter(|(node, _)| *node != node_id)
            .map(|(_, r)| r.epoch)
            .chain(adopted)
            .max()
    }

    /// Looks at every node's state (each generation chitchat holds of it) and adopts,
    /// per cluster, the newest verified publisher root (or decommissioned root).
    pub fn observe<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (&'a str, u64, &'a NodeState)>,
        unix_ms: u64,
    ) -> Observation {
        let unix_now = unix_ms / 1000;
        let mut observation = Observation::default();
        let mut best: BTreeMap<ClusterId, (&'a str, &'a NodeState, RootClaim)> = BTreeMap::new();
        let mut present = BTreeSet::new();
        for (node_id, generation, state) in nodes {
            let key = (node_id.to_string(), generation);
            present.insert(key.clone());
            let Some(root) = state.get(ROOT_KEY) else {
                continue;
            };
            let cert = state.get(CERT_KEY).unwrap_or_default();
            let alive = state.get(ALIVE_KEY);
            // Within one generation, chitchat's versions only grow: the same max
            // version is the same keys, root, certificate and stamp.
            let unchanged = self.checked.get(&key).is_some_and(|c| {
                c.max_version == state.max_version()
                    && unix_now.saturating_sub(c.checked_at) < RECHECK_AFTER_SECS
            });
            if unchanged {
                continue;
            }
            let content_version = state
                .key_values_including_deleted()
                .filter(|(k, _)| *k != ALIVE_KEY)
                .map(|(_, v)| v.version)
                .max()
                .unwrap_or(0);
            // Only the stamp moved (every replica's, every alive_interval): open it
            // with the peer already verified instead of checking the chain and the
            // root again, which costs three signature checks.
            if let Some(c) = self.checked.get_mut(&key)
                && c.content_version == content_version
                && unix_now.saturating_sub(c.checked_at) < RECHECK_AFTER_SECS
                && let (Some(peer), Some(replica)) = (&c.peer, &mut c.replica)
            {
                if let Some(stamp) = alive.and_then(|a| open_alive(a, node_id, peer)) {
                    replica.alive_ms = replica.alive_ms.max(stamp.max(c.origin_ms));
                }
                c.max_version = state.max_version();
                continue;
            }
            let verified = verify_root(
                root,
                cert,
                &self.trust,
                node_id,
                state.key_values(),
                unix_now,
            );
            let previous = self.checked.remove(&key);
            observation.new_root |= previous.as_ref().is_none_or(|p| p.root != root);
            let replica = match &verified {
                // A node is a replica of its cluster only once it has a verified
                // root; its liveness comes from its own signed stamp, never from
                // heartbeats. A verified root is signed proof of life at its origin
                // time too, so a cluster adopted before its first stamp arrives is
                // not taken for dead.
                Ok(v) => Some(Replica {
                    cluster: v.cluster.clone(),
                    alive_ms: alive
                        .and_then(|a| open_alive(a, node_id, &v.peer))
                        .unwrap_or(0)
                        .max(v.claim.origin_ms),
                    epoch: v.claim.epoch,
                    role: v.claim.role,
                }),
                // A newer root still arriving, or a forged one: what was last
                // learned of this generation stays, alive stamp included.
                Err(_) => previous.as_ref().and_then(|p| p.replica.clone()),
            };
            if let Err(reason) = &verified {
                let reported = previous
                    .as_ref()
                    .is_some_and(|p| p.root == root && p.outcome == Err(*reason));
                if !reported {
                    observation.rejected.push((node_id.to_string(), *reason));
                }
            }
            self.checked.insert(
                key,
                Checked {
                    max_version: state.max_version(),
                    content_version,
                    peer: verified.as_ref().ok().map(|v| v.peer.clone()),
                    origin_ms: verified.as_ref().map_or(0, |v| v.claim.origin_ms),
                    root: root.to_string(),
                    checked_at: unix_now,
                    outcome: verified.as_ref().map(|v| v.cluster.clone()).map_err(|e| *e),
                    replica,
                },
            );
            let Ok(VerifiedRoot { cluster, claim, .. }) = verified else {
                continue;
            };
            if claim.role == RootRole::Standby
                || best
                    .get(&cluster)
                    .is_some_and(|(_, _, b)| order(b) >= order(&claim))
            {
                continue;
            }
            best.insert(cluster, (node_id, state, claim));
        }
        // Generations chitchat no longer knows are forgotten. Every generation it
        // still holds keeps what was learned of it: a new generation without a
        // verified root (arriving, or forged by another peer under this node's id)
        // neither hides the old one's stamps nor makes the cluster look withdrawn
        // before its last signed stamp says so.
        self.checked.retain(|key, _| present.contains(key));
        self.replicas.clear();
        for ((node_id, _), checked) in &self.checked {
            let Some(replica) = &checked.replica else {
                continue;
            };
            // Generations come in ascending order: the newest root decides the
            // role and epoch; the freshest stamp of any of them, the liveness.
            let merged = match self.replicas.get(node_id) {
                Some(older) => Replica {
                    alive_ms: older.alive_ms.max(replica.alive_ms),
                    ..replica.clone()
                },
                None => replica.clone(),
            };
            self.replicas.insert(node_id.clone(), merged);
        }
        for (cluster, (node_id, state, claim)) in best {
            let newer = self
                .adopted
                .get(&cluster)
                .is_none_or(|current| order(&claim) > order(&current.claim));
            if newer {
                let (mut exports, _) = decode_exports(&cluster, state.key_values());
                // Signed, but written by another peer: only what a services file
                // could hold gets into a TXT record.
                exports.labels = claim
                    .labels
                    .iter()
                    .filter(|(k, v)| crate::model::valid_label(k, v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let update = self.adopted.contains_key(&cluster);
                observation.adopted.insert(cluster.clone(), update);
                self.adopted.insert(
                    cluster,
                    Adopted {
                        node_id: node_id.to_string(),
                        claim,
                        exports: Arc::new(exports),
                        cert: state.get(CERT_KEY).unwrap_or_default().to_string(),
                        adopted_ms: unix_ms,
                    },
                );
            }
        }
        observation
    }

    /// New trust (a reloaded bundle, changed revocations): every node is verified
    /// again on the next pass, and adopted exports whose certificate is no longer
    /// trusted are dropped at once.
    pub fn set_trust(&mut self, trust: FleetTrust, unix_now: u64) -> Vec<ClusterId> {
        self.trust = trust;
        self.checked.clear();
        self.replicas.clear();
        let trust = &self.trust;
        let mut dropped = Vec::new();
        self.adopted.retain(|cluster, adopted| {
            let kept = trust.verify_pem(&adopted.cert, unix_now).is_ok();
            if !kept {
                dropped.push(cluster.clone());
            }
            kept
        });
        dropped
    }

    /// Nodes whose current root is waiting for keys that have not all arrived.
    pub fn awaiting_keys(&self) -> impl Iterator<Item = &str> {
        self.checked
            .iter()
            .filter(|(_, c)| c.outcome == Err(RootRejection::Incomplete))
            .map(|((node, _), _)| node.as_str())
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
                let nodes = guard
                    .node_states()
                    .iter()
                    .map(|(id, s)| (&*id.node_id, id.generation_id, s));
                observer.observe(nodes, NOW * 1000).rejected
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
            "labels: {region: us-east-1}\nservices:\n  - {name: web, namespace: default, ingress: [192.0.2.1]}\n",
        );
        east.with_chitchat(|c| {
            publisher
                .publish(c.self_node_state(), &v1, NOW * 1000)
                .unwrap()
        })
        .await;

        east.with_chitchat(|c| {
            publisher
                .stamp_alive(c.self_node_state(), (NOW + 5) * 1000)
                .unwrap()
        })
        .await;
        let mut observer = Observer::new(
            FleetTrust::new(fleet.clone(), std::slice::from_ref(&ca.cert_pem)).unwrap(),
        );
        let east_id = ClusterId::parse("east").unwrap();
        observe_until(&west, &mut observer, |o, _| {
            o.adopted().get(&east_id).is_some_and(|a| {
                a.exports.services.len() == 1
                    && a.exports.labels.get("region").map(String::as_str) == Some("us-east-1")
            }) && o
                .replicas_of(&east_id)
                .any(|(_, r)| r.alive_ms == (NOW + 5) * 1000)
        })
        .await;

        // A new version replaces the old one; a deleted service does not come back.
        let v2 = exports(
            "east",
            "services:\n  - {name: api, namespace: default, ingress: [192.0.2.2]}\n",
        );
        east.with_chitchat(|c| {
            publisher
                .publish(c.self_node_state(), &v2, (NOW + 1) * 1000)
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

        // A second replica that published with a higher epoch and then stood by is a
        // replica (its stamps count) but never adopted: its root outranks east/0's,
        // yet it vouches for no keys.
        let east1 = node(&transport, "east/1", 10_004, vec!["127.0.0.1:10001".into()]).await;
        let mut standby = Publisher::new(identity("east/1", &east_creds), 1, 50);
        east1
            .with_chitchat(|c| {
                standby
                    .publish(c.self_node_state(), &v1, (NOW + 2) * 1000)
                    .unwrap();
                standby
                    .stand_by(c.self_node_state(), (NOW + 3) * 1000)
                    .unwrap();
            })
            .await;
        observe_until(&west, &mut observer, |o, _| {
            o.replicas_of(&east_id)
                .any(|(node, r)| node == "east/1" && r.role == RootRole::Standby)
        })
        .await;
        assert_eq!(observer.adopted()[&east_id].node_id, "east/0");
        assert_eq!(observer.highest_other_epoch(&east_id, "east/0"), Some(50));
        east1.shutdown().await.unwrap();

        // A node with west's credentials claiming to be east/9 changes nothing.
        let impostor = node(&transport, "east/9", 10_003, vec!["127.0.0.1:10001".into()]).await;
        let mut forger = Publisher::new(identity("east/9", &west_creds), 1, 99);
        let evil = exports(
            "east",
            "services:\n  - {name: evil, namespace: default, ingress: [198.51.100.66]}\n",
        );
        impostor
            .with_chitchat(|c| {
                forger
                    .publish(c.self_node_state(), &evil, (NOW + 2) * 1000)
                    .unwrap()
            })
            .await;
        observe_until(&west, &mut observer, |_, rejected| {
            rejected.contains(&("east/9".to_string(), RootRejection::CertClusterMismatch))
        })
        .await;
        let adopted = &observer.adopted()[&east_id];
        assert_eq!(adopted.node_id, "east/0");
        // The impostor is no replica of east: east's liveness is its replicas' stamps.
        let replicas: Vec<&str> = observer.replicas_of(&east_id).map(|(n, _)| n).collect();
        assert_eq!(replicas, ["east/0", "east/1"]);
        assert_eq!(
            observer.replicas_of(&east_id).next().unwrap().1.alive_ms,
            (NOW + 5) * 1000
        );
        assert!(
            adopted
                .exports
                .services
                .keys()
                .all(|k| k.name.as_str() == "api")
        );
    }
}

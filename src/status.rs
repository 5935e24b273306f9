//! What this peer knows of the mesh beyond exports: its members and, per cluster, the
//! replicas and the root whose export is served.
//!
//! This module owns that record's shape. The mesh node fills it on each view rebuild;
//! it travels in the [`crate::snapshot::Snapshot`] next to the view, so the admin API
//! shows members and roots from the same generation the DNS server answers from. It
//! holds only facts that change at moments that matter (a member going dead, a new
//! root, a state change), never ages or clocks: an age is computed when it is shown,
//! so an unchanged mesh publishes no new snapshots.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::model::ClusterId;
use crate::view::ClusterState;

/// The version this build writes into the mesh (`m:version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The longest version string read from a peer; longer or odd ones are shown as
/// `None` (the key is unsigned gossip: it is for display only).
const MAX_VERSION_LEN: usize = 32;

/// A peer's `m:version` value, if it looks like a version.
pub fn sanitize_version(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_VERSION_LEN
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    ok.then(|| raw.to_string())
}

/// The mesh as this peer sees it. Empty for a static fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshStatus {
    /// This peer's own node id, when it is in a mesh.
    pub self_node: Option<String>,
    /// Every node chitchat knows, by node id then generation.
    pub members: Vec<Member>,
    /// Every cluster some member belongs to, or whose export is adopted.
    pub clusters: BTreeMap<ClusterId, ClusterMesh>,
}

/// One chitchat node (one generation of one replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node_id: String,
    pub generation: u64,
    /// Where it gossips (its `mesh.advertise`).
    pub address: SocketAddr,
    /// Live as this peer judges it (failure detector, or a fresh sighting).
    pub live: bool,
    /// The cluster of a verified root; `None` for a node without one (a relay, a
    /// node whose certificate was refused, or one not verified yet).
    pub cluster: Option<ClusterId>,
    pub role: Option<Role>,
    /// The fleetdns version it announces, if any.
    pub version: Option<String>,
}

/// What a replica's verified root makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It publishes its cluster's exports.
    Publisher,
    /// It serves and keeps the cluster live, leaving publishing to another replica.
    Standby,
    /// It wrote the cluster's leave.
    Decommissioned,
}

impl Role {
    /// As serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Standby => "standby",
            Self::Decommissioned => "decommissioned",
        }
    }
}

/// One cluster's mesh facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterMesh {
    /// Node ids with a verified root of this cluster.
    pub replicas: Vec<String>,
    /// The root whose export is served; `None` for the local cluster (served from its
    /// own source) and for a pending one.
    pub root: Option<RootSummary>,
    /// The state and the wall-clock ms this peer last saw it change (`None` when it
    /// has not changed since this peer started).
    pub state_since_ms: Option<u64>,
}

/// The adopted root of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootSummary {
    pub node_id: String,
    pub epoch: u64,
    pub seq: u64,
    /// The publisher's wall-clock ms of the change this root carries.
    pub origin_ms: u64,
    /// This peer's wall-clock ms when it adopted the root.
    pub adopted_ms: u64,
}

/// When each cluster last changed state, as the liveness loop saw it.
#[derive(Debug, Clone, Default)]
pub struct StateChanges {
    since: BTreeMap<ClusterId, (ClusterState, u64)>,
}

impl StateChanges {
    /// Records `state` at `now_ms`; keeps the earlier time while the state holds.
    pub fn record(&mut self, cluster: &ClusterId, state: ClusterState, now_ms: u64) {
        match self.since.get(cluster) {
            Some((seen, _)) if *seen == state => {}
            Some(_) => {
                self.since.insert(cluster.clone(), (state, now_ms));
            }
            // First sight: no change observed yet, only a starting state.
            None => {
                self.since.insert(cluster.clone(), (state, 0));
            }
        }
    }

    /// The ms of the last observed change, if one was observed.
    pub fn since_ms(&self, cluster: &ClusterId) -> Option<u64> {
        self.since
            .get(cluster)
            .map(|(_, ms)| *ms)
            .filter(|ms| *ms != 0)
    }

    /// Forgets clusters no longer in the view.
    pub fn retain(&mut self, keep: impl Fn(&ClusterId) -> bool) {
        self.since.retain(|c, _| keep(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_peers_are_shown_only_when_they_look_like_versions() {
        assert_eq!(sanitize_version("0.1.0"), Some("0.1.0".into()));
        assert_eq!(
            sanitize_version("1.2.3-rc.1+g1a2b"),
            Some("1.2.3-rc.1+g1a2b".into())
        );
        for bad in ["", "0.1 ; rm", "<script>", &"9".repeat(33), "é"] {
            assert_eq!(sanitize_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_state_change_is_timed_from_when_it_was_seen_not_from_first_sight() {
        let east = ClusterId::parse("east").unwrap();
        let mut changes = StateChanges::default();
        changes.record(&east, ClusterState::Live, 1_000);
        assert_eq!(changes.since_ms(&east), None);
        changes.record(&east, ClusterState::Live, 2_000);
        changes.record(&east, ClusterState::Unreachable, 3_000);
        changes.record(&east, ClusterState::Unreachable, 4_000);
        assert_eq!(changes.since_ms(&east), Some(3_000));
        changes.retain(|_| false);
        assert_eq!(changes.since_ms(&east), None);
    }
}

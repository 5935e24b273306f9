//! Gossip-on-change (DESIGN.md §4 "Latency"): anti-entropy runs every gossip interval,
//! and on top of it a new export version is pushed at once.
//!
//! This module owns the decision, and it is pure: it remembers the `m:root` value it
//! last saw of every node generation, says when one changed (a new export version;
//! `m:alive` refreshes, heartbeats and `m:cert` do not count), and picks [`fanout`]
//! random live peers to gossip with, each at most once per [`MIN_INTERVAL`]. The
//! observe loop does the gossiping.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Peers pushed to per change, at least.
pub const FANOUT: usize = 3;

/// Peers pushed to per change in a mesh of `peers` others: three (DESIGN.md), or
/// ln(peers) + 1 when that is more. Every peer that learns a change pushes it on, so
/// a peer is missed by every push with a chance of about e^-fanout and then waits
/// for an anti-entropy round; with three, about five of a hundred peers do, and the
/// change's time to all is that round.
pub fn fanout(peers: usize) -> usize {
    let scaled = (peers.max(1) as f64).ln().ceil() as usize + 1;
    FANOUT.max(scaled)
}
/// Least time between two pushes to one peer.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What was seen and pushed; one per peer.
#[derive(Debug, Default)]
pub struct Pusher {
    /// Max version and hash of the `m:root` value last seen, per (node id,
    /// generation).
    roots: HashMap<(String, u64), (u64, u64)>,
    pushed_at: HashMap<SocketAddr, Instant>,
    hasher: RandomState,
    picks: u64,
}

impl Pusher {
    /// Records the roots of this pass, given as (node id, generation, the node's max
    /// version, root); true if any is new or changed. A root is hashed only when its
    /// node's version moved. Generations no longer listed are forgotten.
    pub fn roots_changed<'a>(
        &mut self,
        roots: impl IntoIterator<Item = (&'a str, u64, u64, &'a str)>,
    ) -> bool {
        let mut changed = false;
        let mut seen = HashSet::new();
        for (node, generation, max_version, root) in roots {
            let key = (node.to_string(), generation);
            match self.roots.get_mut(&key) {
                Some((version, _)) if *version == max_version => {}
                Some((version, hash)) => {
                    let new = self.hasher.hash_one(root);
                    changed |= new != *hash;
                    (*version, *hash) = (max_version, new);
                }
                None => {
                    let hash = self.hasher.hash_one(root);
                    self.roots.insert(key.clone(), (max_version, hash));
                    changed = true;
                }
            }
            seen.insert(key);
        }
        self.roots.retain(|key, _| seen.contains(key));
        changed
    }

    /// Up to [`fanout`] of `peers`, picked at random among those not pushed to within
    /// [`MIN_INTERVAL`] of `now`; they count as pushed to.
    pub fn targets(&mut self, peers: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        self.pushed_at
            .retain(|_, at| now.saturating_duration_since(*at) < MIN_INTERVAL);
        let mut ready: Vec<(u64, SocketAddr)> = peers
            .iter()
            .filter(|p| !self.pushed_at.contains_key(p))
            .map(|p| {
                self.picks += 1;
                (self.hasher.hash_one((p, self.picks)), *p)
            })
            .collect();
        // Sorting by a keyed hash is a shuffle.
        ready.sort_unstable();
        ready.dedup_by_key(|(_, p)| *p);
        let picked: Vec<SocketAddr> = ready
            .into_iter()
            .take(fanout(peers.len()))
            .map(|(_, p)| p)
            .collect();
        for peer in &picked {
            self.pushed_at.insert(*peer, now);
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    #[test]
    fn the_fanout_grows_with_the_log_of_the_mesh() {
        assert_eq!(fanout(0), 3);
        assert_eq!(fanout(5), 3);
        assert_eq!(fanout(20), 4);
        assert_eq!(fanout(100), 6);
        assert_eq!(fanout(1000), 8);
    }

    #[test]
    fn only_a_new_or_changed_root_counts() {
        let mut p = Pusher::default();
        assert!(p.roots_changed([("east/0", 1, 3, "r1"), ("west/0", 1, 3, "w1")]));
        assert!(!p.roots_changed([("east/0", 1, 3, "r1"), ("west/0", 1, 3, "w1")]));
        // An alive stamp moved the version, not the root.
        assert!(!p.roots_changed([("east/0", 1, 4, "r1"), ("west/0", 1, 3, "w1")]));
        assert!(p.roots_changed([("east/0", 1, 6, "r2"), ("west/0", 1, 3, "w1")]));
        // A new generation is new even with the same text.
        assert!(p.roots_changed([("east/0", 2, 1, "r2"), ("west/0", 1, 3, "w1")]));
        // west vanished, then comes back: new again.
        assert!(!p.roots_changed([("east/0", 2, 1, "r2")]));
        assert!(p.roots_changed([("east/0", 2, 1, "r2"), ("west/0", 1, 3, "w1")]));
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_go_to_at_most_three_peers_each_once_per_interval() {
        let mut p = Pusher::default();
        let peers: Vec<SocketAddr> = (1..=5).map(addr).collect();
        let first = p.targets(&peers, Instant::now());
        assert_eq!(first.len(), FANOUT);
        // The two left are the only ones ready within the interval.
        let second = p.targets(&peers, Instant::now());
        assert_eq!(second.len(), 2);
        assert!(second.iter().all(|s| !first.contains(s)));
        assert!(p.targets(&peers, Instant::now()).is_empty());
        tokio::time::advance(MIN_INTERVAL).await;
        assert_eq!(p.targets(&peers, Instant::now()).len(), FANOUT);
        assert!(p.targets(&[], Instant::now()).is_empty());
    }

    #[test]
    fn the_picks_are_spread_over_the_peers() {
        let peers: Vec<SocketAddr> = (1..=20).map(addr).collect();
        let mut hit = HashSet::new();
        for round in 0..50 {
            let mut p = Pusher::default();
            let start = Instant::now() + Duration::from_secs(round);
            hit.extend(p.targets(&peers, start));
        }
        assert!(hit.len() > 15, "only {} of 20 peers ever picked", hit.len());
    }
}

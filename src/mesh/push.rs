//! Gossip-on-change (DESIGN.md §4 "Latency"): anti-entropy runs every gossip interval,
//! and on top of it a new export version is pushed at once.
//!
//! This module owns whom to push to, and it is pure: when the observer reports a root
//! it had not seen (a new export version; `m:alive` refreshes, heartbeats and
//! `m:cert` do not count), it picks [`fanout`] random live peers to gossip with, each
//! at most once per [`MIN_INTERVAL`]. The observe loop does the gossiping.

use std::collections::HashMap;
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

/// When each peer was last pushed to; one per peer.
#[derive(Debug, Default)]
pub struct Pusher {
    pushed_at: HashMap<SocketAddr, Instant>,
    hasher: RandomState,
    picks: u64,
}

impl Pusher {
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
    use std::collections::HashSet;

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

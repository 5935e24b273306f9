//! Cluster liveness: live, unreachable, withdrawn, with flap damping (DESIGN.md §4).
//!
//! This module owns the state machine, and it is pure: the observe loop feeds it, for
//! every cluster, what it knows of each replica (does chitchat report it live, when did
//! it last sign an `m:alive` stamp) and the wall-clock time; it answers the cluster's
//! state. The staleness clock is the cluster's own last signed stamp, not when this peer
//! noticed, so a peer that restarts does not restart the clock. chitchat's heartbeats
//! are unsigned and any peer can relay a higher one, so they are a hint: a replica is
//! live only while chitchat says so *and* its own stamp is fresh.

use std::time::Duration;

use crate::view::ClusterState;

/// The timing rules, from `mesh.*` in the config.
#[derive(Debug, Clone, Copy)]
pub struct LivenessSettings {
    pub alive_interval: Duration,
    pub clock_skew: Duration,
    pub max_stale: Duration,
    pub rejoin_after: Duration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        Self {
            alive_interval: Duration::from_secs(10),
            clock_skew: Duration::from_secs(5),
            max_stale: Duration::from_secs(60),
            rejoin_after: Duration::from_secs(10),
        }
    }
}

impl LivenessSettings {
    /// How old a signed `m:alive` stamp may be for its replica to count as live.
    pub fn stamp_lifetime(&self) -> Duration {
        self.alive_interval * 3 + self.clock_skew
    }
}

/// What the observe loop knows of one replica with a verified root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaObservation {
    /// chitchat's failure detector reports the node live.
    pub reported_live: bool,
    /// Wall-clock milliseconds of the replica's last signed `m:alive` stamp.
    pub alive_stamp_ms: u64,
}

/// A cluster's state and what the damping needs to remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub state: ClusterState,
    /// Since when (wall-clock ms) a replica has been live without a break.
    pub live_since_ms: Option<u64>,
}

impl Tracked {
    /// A cluster first seen with a verified root.
    pub fn new() -> Self {
        Self {
            state: ClusterState::Live,
            live_since_ms: None,
        }
    }
}

impl Default for Tracked {
    fn default() -> Self {
        Self::new()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The next state of a cluster given its replicas at wall-clock `now_ms`.
pub fn next(
    prev: Tracked,
    replicas: &[ReplicaObservation],
    now_ms: u64,
    settings: &LivenessSettings,
) -> Tracked {
    let lifetime = millis(settings.stamp_lifetime());
    let any_live = replicas
        .iter()
        .any(|r| r.reported_live && now_ms.saturating_sub(r.alive_stamp_ms) < lifetime);
    if any_live {
        let live_since = prev.live_since_ms.unwrap_or(now_ms);
        // Flap damping: a withdrawn cluster comes back only after `rejoin_after` of
        // uninterrupted liveness, so one that flaps does not churn every merged name.
        let state = if prev.state == ClusterState::Withdrawn
            && now_ms.saturating_sub(live_since) < millis(settings.rejoin_after)
        {
            ClusterState::Withdrawn
        } else {
            ClusterState::Live
        };
        return Tracked {
            state,
            live_since_ms: Some(live_since),
        };
    }
    let last_stamp = replicas.iter().map(|r| r.alive_stamp_ms).max().unwrap_or(0);
    // Withdrawn is sticky until a replica is live again (then damping applies).
    let state = if prev.state == ClusterState::Withdrawn
        || now_ms.saturating_sub(last_stamp) > millis(settings.max_stale)
    {
        ClusterState::Withdrawn
    } else {
        ClusterState::Unreachable
    };
    Tracked {
        state,
        live_since_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The fast settings DESIGN.md §7 gives the mesh tests.
    fn fast() -> LivenessSettings {
        LivenessSettings {
            alive_interval: Duration::from_millis(200),
            clock_skew: Duration::ZERO,
            max_stale: Duration::from_secs(2),
            rejoin_after: Duration::from_secs(1),
        }
    }

    fn replica(reported_live: bool, alive_stamp_ms: u64) -> ReplicaObservation {
        ReplicaObservation {
            reported_live,
            alive_stamp_ms,
        }
    }

    #[test]
    fn a_killed_cluster_goes_unreachable_then_withdrawn_then_rejoins_after_damping() {
        let s = fast();
        let t0 = 1_000_000;
        let mut t = Tracked::new();
        t = next(t, &[replica(true, t0)], t0, &s);
        assert_eq!(t.state, ClusterState::Live);

        // Killed at t0: its stamp ages out after 3 × 200 ms.
        t = next(t, &[replica(true, t0)], t0 + 500, &s);
        assert_eq!(t.state, ClusterState::Live, "stamp still fresh");
        t = next(t, &[replica(true, t0)], t0 + 700, &s);
        assert_eq!(
            t.state,
            ClusterState::Unreachable,
            "stale stamp, even if reported live"
        );
        t = next(t, &[replica(false, t0)], t0 + 2_000, &s);
        assert_eq!(t.state, ClusterState::Unreachable);
        t = next(t, &[replica(false, t0)], t0 + 2_001, &s);
        assert_eq!(
            t.state,
            ClusterState::Withdrawn,
            "max_stale after its last own stamp"
        );

        // Back with fresh stamps: withdrawn until rejoin_after of liveness.
        let back = t0 + 5_000;
        t = next(t, &[replica(true, back)], back, &s);
        assert_eq!(t.state, ClusterState::Withdrawn);
        t = next(t, &[replica(true, back + 900)], back + 999, &s);
        assert_eq!(t.state, ClusterState::Withdrawn);
        t = next(t, &[replica(true, back + 900)], back + 1_000, &s);
        assert_eq!(t.state, ClusterState::Live);
    }

    #[test]
    fn a_flap_restarts_the_damping_clock() {
        let s = fast();
        let mut t = Tracked {
            state: ClusterState::Withdrawn,
            live_since_ms: None,
        };
        t = next(t, &[replica(true, 10_000)], 10_000, &s);
        t = next(t, &[replica(false, 10_000)], 10_500, &s);
        assert_eq!(t.state, ClusterState::Withdrawn);
        t = next(t, &[replica(true, 10_600)], 10_600, &s);
        t = next(t, &[replica(true, 11_400)], 11_500, &s);
        assert_eq!(
            t.state,
            ClusterState::Withdrawn,
            "only 900 ms since the flap"
        );
        t = next(t, &[replica(true, 11_600)], 11_600, &s);
        assert_eq!(t.state, ClusterState::Live);
    }

    #[test]
    fn relayed_heartbeats_without_fresh_signed_stamps_keep_nothing_live() {
        // Another peer can make chitchat report east/0 live forever; its signed stamp
        // still ages, so east still goes unreachable, then withdrawn.
        let s = fast();
        let mut t = Tracked::new();
        for now in [0u64, 1_000, 2_000, 2_700] {
            t = next(t, &[replica(true, 0)], now, &s);
        }
        assert_eq!(t.state, ClusterState::Withdrawn);
    }

    #[test]
    fn one_live_replica_keeps_the_cluster_live() {
        let s = fast();
        let t = next(
            Tracked::new(),
            &[replica(false, 0), replica(true, 9_900)],
            10_000,
            &s,
        );
        assert_eq!(t.state, ClusterState::Live);
    }

    proptest! {
        /// A cluster with a fresh, reported-live replica is never unreachable, and one
        /// that was live is never withdrawn in a single step while a replica is live.
        #[test]
        fn live_replicas_are_never_unreachable(
            prev_state in 0u8..3, since in proptest::option::of(0u64..100_000),
            stamp_age in 0u64..599, now in 100_000u64..200_000,
        ) {
            let prev = Tracked {
                state: [ClusterState::Live, ClusterState::Unreachable, ClusterState::Withdrawn][usize::from(prev_state)],
                live_since_ms: since,
            };
            let t = next(prev, &[replica(true, now - stamp_age)], now, &fast());
            prop_assert_ne!(t.state, ClusterState::Unreachable);
            if prev.state != ClusterState::Withdrawn {
                prop_assert_eq!(t.state, ClusterState::Live);
            }
        }
    }
}

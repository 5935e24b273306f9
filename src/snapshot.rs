//! Snapshots: the immutable unit the DNS path, the ops listener and (later) the admin
//! API read together.
//!
//! This module owns how a set of cluster inputs becomes one [`Snapshot`] (view → zone →
//! answer index) and the zone serial rule. It is pure; `app` owns the single writer that
//! publishes snapshots, readers load them atomically through [`SharedSnapshot`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, NetworkConfig, ZoneName};
use crate::dns::index::{AnswerIndex, Readiness};
use crate::dns::zone::{Zone, ZoneParams};
use crate::model::ClusterId;
use crate::view::{ClusterInput, FleetView};

/// One generation of everything served. Never mutated after it is published.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot (shown by the admin API).
    pub generation: u64,
    /// The SOA serial of this snapshot's zone.
    pub serial: u32,
    pub readiness: Readiness,
    /// What the peer still waits for before it is ready (empty when ready).
    pub waiting_for: Vec<String>,
    pub view: Arc<FleetView>,
    pub index: Arc<AnswerIndex>,
}

/// The published snapshot: one writer swaps, every reader loads without a lock.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// The parts of the config that shape a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotSettings {
    pub local: ClusterId,
    pub zone: ZoneName,
    pub network: NetworkConfig,
    pub ttl: u32,
    pub negative_ttl: u32,
    pub advertise: Option<IpAddr>,
    /// Inventory labels of the local cluster from the config; they win over the
    /// services file's own `labels`.
    pub local_labels: BTreeMap<String, String>,
}

impl SnapshotSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            local: config.cluster.clone(),
            zone: config.zone.clone(),
            network: config.network.clone(),
            ttl: config.dns.ttl,
            negative_ttl: config.dns.negative_ttl,
            advertise: config.dns.advertise,
            local_labels: config.cluster_labels.clone(),
        }
    }
}

/// Makes successive snapshots; owns the generation counter and the serial rule.
#[derive(Debug)]
pub struct SnapshotBuilder {
    settings: SnapshotSettings,
    generation: u64,
    serial: u32,
}

impl SnapshotBuilder {
    pub fn new(settings: SnapshotSettings) -> Self {
        Self {
            settings,
            generation: 0,
            serial: 0,
        }
    }

    /// The zone of a view under these settings (also what `dump-zone` writes).
    pub fn zone(&self, view: &FleetView, serial: u32) -> Zone {
        Zone::build(
            view,
            &ZoneParams {
                apex: self.settings.zone.clone(),
                ttl: self.settings.ttl,
                negative_ttl: self.settings.negative_ttl,
                serial,
                advertise: self.settings.advertise,
            },
        )
    }

    /// The view of `inputs` as seen from the local cluster.
    pub fn view(&self, inputs: &BTreeMap<ClusterId, ClusterInput>) -> FleetView {
        let mut view = FleetView::build(&self.settings.local, &self.settings.network, inputs);
        if let Some(local) = view.clusters.get_mut(&self.settings.local) {
            for (k, v) in &self.settings.local_labels {
                local.labels.insert(k.clone(), v.clone());
            }
        }
        view
    }

    /// The next snapshot. `unix_now` is the wall-clock time of the change: the serial is
    /// max(unix seconds, previous + 1), so it always increases, even within a second.
    pub fn next(
        &mut self,
        inputs: &BTreeMap<ClusterId, ClusterInput>,
        readiness: Readiness,
        waiting_for: Vec<String>,
        unix_now: u64,
    ) -> Snapshot {
        let view = self.view(inputs);
        self.generation += 1;
        let now = u32::try_from(unix_now).unwrap_or(u32::MAX);
        self.serial = now.max(self.serial.wrapping_add(1));
        let zone = self.zone(&view, self.serial);
        for skipped in &zone.skipped {
            tracing::warn!(name = %skipped, "name not served");
        }
        Snapshot {
            generation: self.generation,
            serial: self.serial,
            readiness,
            waiting_for,
            index: Arc::new(AnswerIndex::build(&zone)),
            view: Arc::new(view),
        }
    }
}

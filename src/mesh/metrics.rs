//! The mesh's metrics: members and clusters by state, adopted and rejected roots,
//! propagation latency, the digest size, restarts, and the transport's frame counters.
//!
//! This module owns the mesh's metric handles. They are registered once at startup in
//! the process registry ([`MeshMetrics::register`]); the observe loop is their only
//! writer (a few updates per 100 ms pass, never per DNS query), and the transport's
//! atomics are read at scrape time. Every label value comes from a fixed set.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::codec::RootRejection;
use super::tls::CertRejections;
use super::transport::TransportStats;
use crate::metrics::{encode_counter, encode_labelled_counter};
use crate::view::ClusterState;

type StateLabels = [(&'static str, &'static str); 1];

/// Propagation buckets in seconds: sub-second gossip-on-change up to anti-entropy
/// rounds on a large or partitioned mesh.
const PROPAGATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// Handles to every mesh metric; cheap to clone (each is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct MeshMetrics {
    members: Family<StateLabels, Gauge>,
    clusters: Family<StateLabels, Gauge>,
    roots_adopted: Counter,
    roots_rejected: Family<StateLabels, Counter>,
    propagation: Histogram,
    digest_bytes: Gauge,
    publishing: Gauge,
    restarts: Counter,
    transport: Arc<TransportStats>,
    cert_rejections: Arc<CertRejections>,
}

impl MeshMetrics {
    /// Creates and registers every mesh metric (names get the registry's prefix; the
    /// registry ends each help text with a period).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "mesh_members",
            "Mesh members chitchat knows, this peer included, by failure-detector state (live, dead)",
            metrics.members.clone(),
        );
        registry.register(
            "mesh_clusters",
            "Clusters in this peer's view, own included, by state",
            metrics.clusters.clone(),
        );
        registry.register(
            "mesh_roots_adopted",
            "Verified roots adopted as another cluster's export",
            metrics.roots_adopted.clone(),
        );
        registry.register(
            "mesh_roots_rejected",
            "Roots not adopted, by reason (each root counted once)",
            metrics.roots_rejected.clone(),
        );
        registry.register(
            "mesh_propagation_seconds",
            "From a change's origin time (publisher's clock) to its adoption here, for \
             updates of clusters already adopted",
            metrics.propagation.clone(),
        );
        registry.register(
            "mesh_digest_bytes",
            "Size of the digest this peer sends in each gossip round",
            metrics.digest_bytes.clone(),
        );
        registry.register(
            "mesh_publishing",
            "1 while this replica publishes its cluster's exports, 0 while it stands by",
            metrics.publishing.clone(),
        );
        registry.register(
            "mesh_gossip_restarts",
            "Times the gossip task stopped and was restarted with a new generation",
            metrics.restarts.clone(),
        );
        registry.register_collector(Box::new(TransportCollector {
            stats: metrics.transport.clone(),
            cert_rejections: metrics.cert_rejections.clone(),
        }));
        metrics
    }

    /// Handles recording into nothing a scrape sees (tests, `fleetdns leave`).
    pub fn unregistered() -> Self {
        let roots_rejected = Family::<StateLabels, Counter>::default();
        for reason in RootRejection::ALL {
            roots_rejected.get_or_create_owned(&[("reason", reason.as_str())]);
        }
        let members = Family::<StateLabels, Gauge>::default();
        for state in ["live", "dead"] {
            members.get_or_create_owned(&[("state", state)]);
        }
        let clusters = Family::<StateLabels, Gauge>::default();
        for state in ClusterState::ALL {
            clusters.get_or_create_owned(&[("state", state.as_str())]);
        }
        Self {
            members,
            clusters,
            roots_adopted: Counter::default(),
            roots_rejected,
            propagation: Histogram::new(PROPAGATION_BUCKETS),
            digest_bytes: Gauge::default(),
            publishing: Gauge::default(),
            restarts: Counter::default(),
            transport: Arc::default(),
            cert_rejections: Arc::default(),
        }
    }

    /// The counters of certificates refused in TLS handshakes.
    pub fn cert_rejections(&self) -> Arc<CertRejections> {
        self.cert_rejections.clone()
    }

    /// The counters the stream transport writes into.
    pub fn transport_stats(&self) -> Arc<TransportStats> {
        self.transport.clone()
    }

    pub fn set_members(&self, live: usize, dead: usize) {
        self.members
            .get_or_create(&[("state", "live")])
            .set(gauge(live));
        self.members
            .get_or_create(&[("state", "dead")])
            .set(gauge(dead));
    }

    pub fn set_clusters(&self, states: impl IntoIterator<Item = ClusterState>) {
        let mut counts = [0usize; ClusterState::ALL.len()];
        for state in states {
            if let Some(i) = ClusterState::ALL.iter().position(|s| *s == state) {
                counts[i] += 1;
            }
        }
        for (state, count) in ClusterState::ALL.iter().zip(counts) {
            self.clusters
                .get_or_create(&[("state", state.as_str())])
                .set(gauge(count));
        }
    }

    pub fn root_adopted(&self, propagation_ms: Option<u64>) {
        self.roots_adopted.inc();
        if let Some(ms) = propagation_ms {
            self.propagation.observe(ms as f64 / 1000.0);
        }
    }

    pub fn root_rejected(&self, reason: RootRejection) {
        self.roots_rejected
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    pub fn set_digest_bytes(&self, bytes: usize) {
        self.digest_bytes.set(gauge(bytes));
    }

    pub fn set_publishing(&self, publishing: bool) {
        self.publishing.set(i64::from(publishing));
    }

    pub fn gossip_restarted(&self) {
        self.restarts.inc();
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads the transport's atomics at scrape time.
#[derive(Debug)]
struct TransportCollector {
    stats: Arc<TransportStats>,
    cert_rejections: Arc<CertRejections>,
}

impl Collector for TransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.stats;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, [inbound, outbound]) in [
            (
                "mesh_frames",
                "Gossip frames carried by the mesh transport, by direction.",
                [read(&s.frames_in), read(&s.frames_out)],
            ),
            (
                "mesh_bytes",
                "Gossip bytes carried by the mesh transport (framing included), by direction.",
                [read(&s.bytes_in), read(&s.bytes_out)],
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            encode_labelled_counter(&mut metric, &[("direction", "in")], inbound)?;
            encode_labelled_counter(&mut metric, &[("direction", "out")], outbound)?;
        }
        {
            let mut metric = encoder.encode_descriptor(
                "mesh_frames_dropped",
                "Gossip frames dropped, by reason: a peer's send queue was full, or a \
                 frame was oversized or undecodable (its connection is closed).",
                None,
                MetricType::Counter,
            )?;
            encode_labelled_counter(
                &mut metric,
                &[("reason", "queue-full")],
                read(&s.dropped_queue_full),
            )?;
            encode_labelled_counter(&mut metric, &[("reason", "bad-frame")], read(&s.bad_frames))?;
        }
        encode_counter(
            &mut encoder,
            "mesh_connect_failures",
            "Dials to a mesh peer that failed or timed out.",
            read(&s.connect_failures),
        )?;
        encode_counter(
            &mut encoder,
            "mesh_handshake_failures",
            "Mesh TLS handshakes that failed, inbound and outbound (not TLS, a refused \
             certificate, a timeout).",
            read(&s.handshake_failures),
        )?;
        let mut metric = encoder.encode_descriptor(
            "mesh_peer_certs_rejected",
            "Certificates a mesh peer presented in a handshake and this peer refused, by \
             reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in self.cert_rejections.snapshot() {
            encode_labelled_counter(&mut metric, &[("reason", reason.as_str())], count)?;
        }
        Ok(())
    }
}

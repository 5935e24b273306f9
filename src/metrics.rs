//! Process metrics: the prometheus-client [`Registry`] and everything fleetdns
//! exports through it, encoded as OpenMetrics text for the `/metrics` endpoint.
//!
//! # What this module owns
//!
//! * [`Metrics`]: the one [`Registry`] of the process (prefix `fleetdns`), the
//!   TCP connection gauge and counters, the view gauges and the readiness gauge.
//!   Later modules add their own metrics through [`Metrics::registry_mut`] at
//!   startup.
//! * [`WorkerStats`]: the DNS-path counters of one DNS worker (a UDP worker, or
//!   the TCP listener). Every worker gets its own instance from
//!   [`Metrics::dns_worker`].
//!
//! # Why DNS-path counters are per worker
//!
//! The query path must not take a lock or contend on a shared cache line
//! (DESIGN.md §6). prometheus-client's `Histogram` takes a mutex on every
//! `observe`, and `Family::get_or_create` takes a read lock on every call,
//! so neither is used per query. Instead each worker owns plain relaxed
//! [`AtomicU64`]s (a fixed qtype × rcode array and a few scalars); only that
//! worker writes them, so the increments stay in its own cache (the struct is
//! aligned to 128 bytes so two workers never share a line). A custom
//! [`Collector`] sums all workers at scrape time; the list of workers sits
//! behind a mutex that only registration (startup) and scrapes touch.
//!
//! # Exported series
//!
//! All names carry the `fleetdns_` prefix; counters get `_total` from the
//! encoder. Label sets are bounded: no IP address or service name is ever a
//! label.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fleetdns_dns_queries` | counter | `qtype` ∈ A, AAAA, SRV, TXT, SOA, NS, ANY, OTHER; `rcode` ∈ NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS, OTHER |
//! | `fleetdns_dns_responses_truncated` | counter | none (UDP replies with TC=1) |
//! | `fleetdns_dns_tcp_answers_capped` | counter | none (TCP answers cut to fit 65,535 octets) |
//! | `fleetdns_dns_malformed_packets` | counter | `transport` ∈ udp, tcp |
//! | `fleetdns_dns_dropped_packets` | counter | `transport` ∈ udp, tcp |
//! | `fleetdns_dns_tcp_connections` | gauge | |
//! | `fleetdns_dns_tcp_connections_accepted` | counter | |
//! | `fleetdns_dns_tcp_connections_rejected` | counter | `reason` ∈ too_many, per_client |
//! | `fleetdns_view_generation` | gauge | |
//! | `fleetdns_view_services` | gauge | `cluster` (cluster ids of the current view) |
//! | `fleetdns_ready` | gauge | none (0 or 1) |
//!
//! Every qtype × rcode pair (8 × 8 = 64 series) and every `transport` /
//! `reason` value is always emitted, zeros included: the set is small and
//! fixed, and a series that exists from the first scrape lets `rate()` see
//! its first increment. `fleetdns_view_services` has exactly one series per
//! cluster of the current view; clusters that leave the view leave the metric.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name in the registry.
const PREFIX: &str = "fleetdns";

/// `qtype` label values, in index order (see [`qtype_index`]).
const QTYPE_LABELS: [&str; 8] = ["A", "AAAA", "SRV", "TXT", "SOA", "NS", "ANY", "OTHER"];
/// `rcode` label values, in index order (see [`rcode_index`]).
const RCODE_LABELS: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];
const N_QTYPE: usize = QTYPE_LABELS.len();
const N_RCODE: usize = RCODE_LABELS.len();

/// Index into [`QTYPE_LABELS`] for a wire qtype; anything not listed is OTHER.
const fn qtype_index(qtype: u16) -> usize {
    match qtype {
        1 => 0,   // A
        28 => 1,  // AAAA
        33 => 2,  // SRV
        16 => 3,  // TXT
        6 => 4,   // SOA
        2 => 5,   // NS
        255 => 6, // ANY
        _ => 7,
    }
}

/// The RFC mnemonic of a full 12-bit rcode as dig prints it (`NOERROR`, `NXDOMAIN`,
/// ...); `OTHER` for one fleetdns never sends.
pub fn rcode_label(rcode: u16) -> &'static str {
    RCODE_LABELS[rcode_index(rcode)]
}

/// Index into [`RCODE_LABELS`] for a full 12-bit rcode (header rcode plus the
/// EDNS extended bits); anything not listed is OTHER.
const fn rcode_index(rcode: u16) -> usize {
    match rcode {
        0 => 0,  // NOERROR
        1 => 1,  // FORMERR
        2 => 2,  // SERVFAIL
        3 => 3,  // NXDOMAIN
        4 => 4,  // NOTIMP
        5 => 5,  // REFUSED
        16 => 6, // BADVERS
        _ => 7,
    }
}

/// The transport a DNS worker serves; the `transport` label of the
/// malformed/dropped packet counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// The label value: `udp`, `tcp` or `tls`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    const fn index(self) -> usize {
        match self {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        }
    }
}

/// Why a TCP connection was refused; the `reason` label of
/// `fleetdns_dns_tcp_connections_rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpReject {
    /// The global limit on open TCP connections was reached.
    TooMany,
    /// The per-client-address limit was reached.
    PerClient,
}

impl TcpReject {
    const ALL: [TcpReject; 2] = [TcpReject::TooMany, TcpReject::PerClient];

    /// The label value: `too_many` or `per_client`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TcpReject::TooMany => "too_many",
            TcpReject::PerClient => "per_client",
        }
    }

    const fn index(self) -> usize {
        match self {
            TcpReject::TooMany => 0,
            TcpReject::PerClient => 1,
        }
    }
}

/// Counters owned by one DNS worker (a UDP worker thread/task, or the TCP
/// listener). Relaxed [`AtomicU64`]s, no locks; only the owning worker is
/// expected to write, though concurrent writers still count exactly.
///
/// Obtained from [`Metrics::dns_worker`], which registers it with the scrape
/// collector for the life of the process (counters never go backwards).
/// Upper bounds (nanoseconds) of the answer-time histogram's buckets; a last,
/// unbounded bucket follows. An answer from the index takes tens to hundreds of
/// nanoseconds; the upper buckets catch a worker that was preempted mid-answer.
pub const ANSWER_BUCKETS_NS: [u64; 10] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 1_000_000, 10_000_000,
];
const N_ANSWER_BUCKETS: usize = ANSWER_BUCKETS_NS.len() + 1;

#[derive(Debug)]
#[repr(align(128))] // own cache lines: no false sharing with another worker
pub struct WorkerStats {
    transport: Transport,
    queries: [[AtomicU64; N_RCODE]; N_QTYPE],
    /// Answers by time taken (from the parsed packet to the encoded reply).
    answer_buckets: [AtomicU64; N_ANSWER_BUCKETS],
    answer_ns_sum: AtomicU64,
    truncated: AtomicU64,
    tcp_capped: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
}

impl WorkerStats {
    fn new(transport: Transport) -> Self {
        Self {
            transport,
            queries: [const { [const { AtomicU64::new(0) }; N_RCODE] }; N_QTYPE],
            answer_buckets: [const { AtomicU64::new(0) }; N_ANSWER_BUCKETS],
            answer_ns_sum: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            tcp_capped: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// The transport this worker serves.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// A query answered with `rcode` (the full 12-bit rcode, 16 = BADVERS).
    /// Unlisted qtypes and rcodes count as `OTHER`.
    #[inline]
    pub fn query(&self, qtype: u16, rcode: u16) {
        self.queries[qtype_index(qtype)][rcode_index(rcode)].fetch_add(1, Ordering::Relaxed);
    }

    /// One answer made in `elapsed`.
    #[inline]
    pub fn answered_in(&self, elapsed: std::time::Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = ANSWER_BUCKETS_NS.partition_point(|bound| *bound < ns);
        self.answer_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.answer_ns_sum.fetch_add(ns, Ordering::Relaxed);
    }

    /// A UDP reply sent with TC=1.
    #[inline]
    pub fn truncated(&self) {
        self.truncated.fetch_add(1, Ordering::Relaxed);
    }

    /// A TCP answer that had to drop records to fit 65,535 octets.
    #[inline]
    pub fn tcp_capped(&self) {
        self.tcp_capped.fetch_add(1, Ordering::Relaxed);
    }

    /// A packet dropped or answered FORMERR because it could not be parsed.
    #[inline]
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    /// A packet dropped without a reply (QR=1, shorter than 12 octets).
    #[inline]
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A point-in-time copy of this worker's counters.
    pub fn snapshot(&self) -> DnsCounts {
        let mut counts = DnsCounts::default();
        self.add_to(&mut counts);
        counts
    }

    fn add_to(&self, counts: &mut DnsCounts) {
        for (sum_row, row) in counts.queries.iter_mut().zip(&self.queries) {
            for (sum, cell) in sum_row.iter_mut().zip(row) {
                *sum += cell.load(Ordering::Relaxed);
            }
        }
        for (sum, cell) in counts.answer_buckets.iter_mut().zip(&self.answer_buckets) {
            *sum += cell.load(Ordering::Relaxed);
        }
        counts.answer_ns_sum += self.answer_ns_sum.load(Ordering::Relaxed);
        counts.truncated += self.truncated.load(Ordering::Relaxed);
        counts.tcp_capped += self.tcp_capped.load(Ordering::Relaxed);
        counts.malformed += self.malformed.load(Ordering::Relaxed);
        counts.dropped += self.dropped.load(Ordering::Relaxed);
    }
}

/// A copy of DNS-path counters: one worker's ([`WorkerStats::snapshot`]) or
/// all workers' summed ([`Metrics::dns_totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    queries: [[u64; N_RCODE]; N_QTYPE],
    /// Answers per [`ANSWER_BUCKETS_NS`] bucket (not cumulative), then the rest.
    pub answer_buckets: [u64; N_ANSWER_BUCKETS],
    pub answer_ns_sum: u64,
    /// UDP replies sent with TC=1.
    pub truncated: u64,
    /// TCP answers cut to fit 65,535 octets.
    pub tcp_capped: u64,
    /// Packets that could not be parsed.
    pub malformed: u64,
    /// Packets dropped without a reply.
    pub dropped: u64,
}

impl DnsCounts {
    fn add(&mut self, other: &DnsCounts) {
        for (sum_row, row) in self.queries.iter_mut().zip(&other.queries) {
            for (s, v) in sum_row.iter_mut().zip(row) {
                *s += v;
            }
        }
        for (s, v) in self.answer_buckets.iter_mut().zip(&other.answer_buckets) {
            *s += v;
        }
        self.answer_ns_sum += other.answer_ns_sum;
        self.truncated += other.truncated;
        self.tcp_capped += other.tcp_capped;
        self.malformed += other.malformed;
        self.dropped += other.dropped;
    }

    /// Queries in the (qtype, rcode) bucket that `qtype`/`rcode` map to; an
    /// unlisted value reads its `OTHER` bucket.
    pub fn queries(&self, qtype: u16, rcode: u16) -> u64 {
        self.queries[qtype_index(qtype)][rcode_index(rcode)]
    }

    /// All queries, over every qtype and rcode.
    pub fn total_queries(&self) -> u64 {
        self.queries.iter().flatten().sum()
    }
}

/// Locks a mutex; a poisoned one (a panic elsewhere while it was held) still
/// holds consistent data here, since every critical section is a plain
/// push/replace.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Workers = Arc<Mutex<Vec<Arc<WorkerStats>>>>;

/// Sums every registered worker's counters at scrape time.
#[derive(Debug)]
struct DnsCollector {
    workers: Workers,
}

impl DnsCollector {
    /// Per-transport sums, indexed by [`Transport::index`].
    fn totals(workers: &Mutex<Vec<Arc<WorkerStats>>>) -> [DnsCounts; 3] {
        let mut totals = [DnsCounts::default(); 3];
        for worker in lock(workers).iter() {
            worker.add_to(&mut totals[worker.transport.index()]);
        }
        totals
    }
}

pub(crate) fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

pub(crate) fn encode_labelled_counter(
    metric: &mut MetricEncoder,
    labels: &[(&str, &str)],
    value: u64,
) -> fmt::Result {
    ConstCounter::new(value).encode(metric.encode_family(&labels)?)
}

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let per_transport = Self::totals(&self.workers);
        let mut all = DnsCounts::default();
        for counts in &per_transport {
            all.add(counts);
        }

        {
            let mut metric = encoder.encode_descriptor(
                "dns_queries",
                "DNS queries answered, by query type and response code.",
                None,
                MetricType::Counter,
            )?;
            for (q, qtype) in QTYPE_LABELS.iter().enumerate() {
                for (r, rcode) in RCODE_LABELS.iter().enumerate() {
                    let value = all.queries[q][r];
                    encode_labelled_counter(
                        &mut metric,
                        &[("qtype", qtype), ("rcode", rcode)],
                        value,
                    )?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "dns_answer_duration_seconds",
                "Time from a parsed query to its encoded answer, per answer (summed over \
                 workers at scrape).",
                None,
                MetricType::Histogram,
            )?;
            let buckets: Vec<(f64, u64)> = ANSWER_BUCKETS_NS
                .iter()
                .map(|ns| *ns as f64 / 1e9)
                .chain([f64::INFINITY])
                .zip(all.answer_buckets)
                .collect();
            let count = all.answer_buckets.iter().sum();
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                all.answer_ns_sum as f64 / 1e9,
                count,
                &buckets,
                None,
            )?;
        }
        encode_counter(
            &mut encoder,
            "dns_responses_truncated",
            "UDP responses sent with the TC bit set.",
            all.truncated,
        )?;
        encode_counter(
            &mut encoder,
            "dns_tcp_answers_capped",
            "TCP answers that dropped records to fit 65535 octets.",
            all.tcp_capped,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "dns_malformed_packets",
                "Packets dropped or answered FORMERR because they could not be parsed.",
                None,
                MetricType::Counter,
            )?;
            for t in Transport::ALL {
                let value = per_transport[t.index()].malformed;
                encode_labelled_counter(&mut metric, &[("transport", t.as_str())], value)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "dns_dropped_packets",
                "Packets dropped without a reply (responses, or shorter than a header).",
                None,
                MetricType::Counter,
            )?;
            for t in Transport::ALL {
                let value = per_transport[t.index()].dropped;
                encode_labelled_counter(&mut metric, &[("transport", t.as_str())], value)?;
            }
        }
        Ok(())
    }
}

/// The view's generation and services per cluster, replaced as a whole by
/// [`Metrics::set_view`] so a scrape never sees half of an update.
#[derive(Debug, Default)]
struct ViewState {
    generation: u64,
    /// Sorted by cluster id, ids unique.
    services: Vec<(String, u64)>,
}

#[derive(Debug)]
struct ViewCollector {
    state: Arc<Mutex<ViewState>>,
}

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = lock(&self.state);
        {
            let metric = encoder.encode_descriptor(
                "view_generation",
                "Generation of the view being served.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(state.generation).encode(metric)?;
        }
        let mut metric = encoder.encode_descriptor(
            "view_services",
            "Services in the view being served, by cluster.",
            None,
            MetricType::Gauge,
        )?;
        for (cluster, count) in &state.services {
            let labels = [("cluster", cluster.as_str())];
            ConstGauge::new(*count).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A gauge or counter family whose values are computed when `/metrics` is scraped:
/// figures too costly to keep current on every change (memory estimates that walk a
/// snapshot), or counters kept as atomics by another module.
struct ScrapeFamily {
    /// Gauge or counter.
    kind: MetricType,
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: ScrapeValues,
}

type ScrapeValues = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

impl fmt::Debug for ScrapeFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeFamily")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for ScrapeFamily {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (value_label, value) in (self.values)() {
            let labels = [(self.label, value_label)];
            if matches!(self.kind, MetricType::Counter) {
                encode_labelled_counter(&mut metric, &labels, value)?;
            } else {
                ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

type RejectLabels = [(&'static str, &'static str); 1];

/// The process's metrics: owns the prometheus-client [`Registry`] (prefix
/// `fleetdns`), with every metric of this module registered once in
/// [`Metrics::new`].
///
/// Share it as `Arc<Metrics>` once startup registration is done; all the
/// recording methods take `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    workers: Workers,
    tcp_open: Gauge,
    tcp_accepted: Counter,
    /// Indexed by [`TcpReject::index`]; handles into the registered family,
    /// created up front so a rejection never takes the family's lock.
    tcp_rejected: [Counter; 2],
    view: Arc<Mutex<ViewState>>,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry and registers everything, under prefix `fleetdns`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        let tcp_open = Gauge::default();
        registry.register(
            "dns_tcp_connections",
            "Open DNS TCP connections",
            tcp_open.clone(),
        );
        let tcp_accepted = Counter::default();
        registry.register(
            "dns_tcp_connections_accepted",
            "DNS TCP connections accepted and served",
            tcp_accepted.clone(),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        let tcp_rejected =
            TcpReject::ALL.map(|r| rejected.get_or_create_owned(&[("reason", r.as_str())]));
        registry.register(
            "dns_tcp_connections_rejected",
            "DNS TCP connections refused, by reason",
            rejected,
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the server has a view and answers queries, else 0",
            ready.clone(),
        );

        let workers = Workers::default();
        registry.register_collector(Box::new(DnsCollector {
            workers: Arc::clone(&workers),
        }));
        let view = Arc::new(Mutex::new(ViewState::default()));
        registry.register_collector(Box::new(ViewCollector {
            state: Arc::clone(&view),
        }));

        Self {
            registry,
            workers,
            tcp_open,
            tcp_accepted,
            tcp_rejected,
            view,
            ready,
        }
    }

    /// Creates a new worker's counters and registers them with the scrape
    /// collector. Call once per worker at startup; the stats live as long as
    /// the process (so counters never go backwards), never call it per packet.
    pub fn dns_worker(&self, transport: Transport) -> Arc<WorkerStats> {
        let stats = Arc::new(WorkerStats::new(transport));
        lock(&self.workers).push(Arc::clone(&stats));
        stats
    }

    /// The DNS-path counters summed over every worker (of both transports).
    pub fn dns_totals(&self) -> DnsCounts {
        let mut sum = DnsCounts::default();
        for counts in &DnsCollector::totals(&self.workers) {
            sum.add(counts);
        }
        sum
    }

    /// A TCP connection was accepted: open-connections gauge +1, accepted
    /// counter +1. Pair with [`Metrics::tcp_connection_closed`], or use
    /// [`Metrics::tcp_connection`] instead.
    pub fn tcp_connection_opened(&self) {
        self.tcp_open.inc();
        self.tcp_accepted.inc();
    }

    /// A connection counted by [`Metrics::tcp_connection_opened`] closed.
    pub fn tcp_connection_closed(&self) {
        self.tcp_open.dec();
    }

    /// Like [`Metrics::tcp_connection_opened`], returning a guard that calls
    /// the matching [`Metrics::tcp_connection_closed`] when dropped (`'static`,
    /// so it can move into the connection's task).
    pub fn tcp_connection(&self) -> TcpConnectionGuard {
        self.tcp_connection_opened();
        TcpConnectionGuard {
            open: self.tcp_open.clone(),
        }
    }

    /// A TCP connection was refused (and is not counted as accepted).
    pub fn tcp_connection_rejected(&self, reason: TcpReject) {
        self.tcp_rejected[reason.index()].inc();
    }

    /// Publishes the view being served: its generation, and its number of
    /// services per cluster id. Replaces the previous set entirely: a cluster
    /// absent from `services_per_cluster` has no series afterwards. A cluster
    /// id listed more than once gets the sum of its counts.
    pub fn set_view(&self, generation: u64, services_per_cluster: &[(String, u64)]) {
        let mut merged: BTreeMap<&str, u64> = BTreeMap::new();
        for (cluster, count) in services_per_cluster {
            *merged.entry(cluster.as_str()).or_default() += count;
        }
        let services = merged
            .into_iter()
            .map(|(cluster, count)| (cluster.to_owned(), count))
            .collect();
        *lock(&self.view) = ViewState {
            generation,
            services,
        };
    }

    /// Sets the readiness gauge (1 = ready, 0 = not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The registry, for later modules to register their own metrics at
    /// startup. Names registered here get the `fleetdns_` prefix.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Registers a gauge family `fleetdns_<name>{<label>=...}` whose values `values`
    /// computes at scrape time. Label values must come from a fixed set.
    pub fn register_scrape_gauges(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) {
        self.register_scrape(MetricType::Gauge, name, help, label, Box::new(values));
    }

    /// Like [`Metrics::register_scrape_gauges`], for counters (`_total` is added)
    /// whose values `values` reads at scrape time from atomics kept elsewhere.
    pub fn register_scrape_counters(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) {
        self.register_scrape(MetricType::Counter, name, help, label, Box::new(values));
    }

    fn register_scrape(
        &mut self,
        kind: MetricType,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: ScrapeValues,
    ) {
        self.registry.register_collector(Box::new(ScrapeFamily {
            kind,
            name,
            help,
            label,
            values,
        }));
    }

    /// The whole registry as OpenMetrics text, ending with `# EOF\n`
    /// (serve it with [`CONTENT_TYPE`]).
    ///
    /// Writing to a `String` cannot fail, so an error can only come from a
    /// collector registered elsewhere; it is logged and the partial text is
    /// returned without `# EOF`, which a scraper rejects as incomplete.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        out
    }
}

/// Counts one open TCP connection until dropped; see [`Metrics::tcp_connection`].
#[derive(Debug)]
#[must_use = "the connection counts as open only while the guard lives"]
pub struct TcpConnectionGuard {
    open: Gauge,
}

impl Drop for TcpConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// One sample line: metric name, labels in order, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// Parses a label set `k="v",k2="v2"` (the text between the braces).
    fn parse_labels(mut s: &str, line: &str) -> Vec<(String, String)> {
        let mut labels = Vec::new();
        while !s.is_empty() {
            let (key, rest) = s
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label in {line:?}"));
            assert!(valid_name(key), "bad label name {key:?} in {line:?}");
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key.to_owned(), value));
            s = &rest[end + 1..];
            if let Some(next) = s.strip_prefix(',') {
                s = next;
                assert!(!s.is_empty(), "trailing comma in {line:?}");
            } else {
                assert!(s.is_empty(), "junk after label in {line:?}");
            }
        }
        labels
    }

    fn valid_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// A structural OpenMetrics text check: `# HELP`/`# TYPE` before each
    /// family's samples, each family declared once and its samples contiguous,
    /// sample names matching their family (`_total` for counters), labels and
    /// values well formed, no duplicate series, and `# EOF\n` at the very end.
    /// Returns the samples and each family's type.
    fn parse_openmetrics(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
        let body = text
            .strip_suffix("# EOF\n")
            .expect("exposition must end with \"# EOF\\n\"");
        assert!(!body.contains("# EOF"), "# EOF before the end");
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        let mut series = HashSet::new();
        let mut current: Option<(String, String)> = None; // (family, type)
        let mut pending_help: Option<String> = None;
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _help) = rest.split_once(' ').expect("HELP without text");
                assert!(valid_name(name), "bad family name in {line:?}");
                pending_help = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE without type");
                assert_eq!(pending_help.as_deref(), Some(name), "TYPE without HELP");
                assert!(
                    ["counter", "gauge", "histogram", "info", "unknown"].contains(&ty),
                    "bad type in {line:?}"
                );
                assert!(
                    types.insert(name.to_owned(), ty.to_owned()).is_none(),
                    "family {name} declared twice"
                );
                current = Some((name.to_owned(), ty.to_owned()));
            } else if line.starts_with('#') {
                assert!(line.starts_with("# UNIT "), "unknown comment {line:?}");
            } else {
                let (family, ty) = current.as_ref().expect("sample before any TYPE");
                let (series_part, value) = line.rsplit_once(' ').expect("sample without value");
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}"));
                let (name, labels) = match series_part.split_once('{') {
                    Some((name, rest)) => {
                        let inner = rest.strip_suffix('}').expect("unclosed label set");
                        (name, parse_labels(inner, line))
                    }
                    None => (series_part, Vec::new()),
                };
                let expected = match ty.as_str() {
                    "counter" => format!("{family}_total"),
                    _ => family.clone(),
                };
                if ty == "counter" || ty == "gauge" {
                    assert_eq!(name, expected, "sample outside its family: {line:?}");
                    assert!(value >= 0.0 || ty == "gauge", "negative counter {line:?}");
                } else {
                    assert!(name.starts_with(family.as_str()), "{line:?}");
                }
                assert!(
                    series.insert(series_part.to_owned()),
                    "duplicate series {series_part}"
                );
                samples.push(Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                });
            }
        }
        (samples, types)
    }

    /// The value of the series `name{labels}` (labels in any order).
    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (samples, _) = parse_openmetrics(text);
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        samples.into_iter().find_map(|s| {
            let mut got = s.labels.clone();
            got.sort();
            (s.name == name && got == want).then_some(s.value)
        })
    }

    #[test]
    fn validator_rejects_broken_expositions() {
        let bad = [
            "# HELP x_a A.\n# TYPE x_a gauge\nx_a 1\n", // no EOF
            "# HELP x_a A.\n# TYPE x_a counter\nx_a 1\n# EOF\n", // no _total
            "# HELP x_a A.\n# TYPE x_a gauge\nx_a{k=\"v\"} 1\nx_a{k=\"v\"} 2\n# EOF\n", // duplicate series
            "# HELP x_a A.\n# TYPE x_a gauge\nx_a{k=v} 1\n# EOF\n",                     // unquoted
            "# HELP x_a A.\n# TYPE x_a gauge\nx_a one\n# EOF\n",                        // bad value
            "x_a 1\n# EOF\n",                                                           // no TYPE
        ];
        for text in bad {
            let caught = std::panic::catch_unwind(|| parse_openmetrics(text));
            assert!(caught.is_err(), "accepted {text:?}");
        }
        parse_openmetrics("# HELP x_a A.\n# TYPE x_a gauge\nx_a{k=\"v\\\"\"} 1\n# EOF\n");
    }

    #[test]
    fn qtype_mapping() {
        let cases = [
            (1, "A"),
            (28, "AAAA"),
            (33, "SRV"),
            (16, "TXT"),
            (6, "SOA"),
            (2, "NS"),
            (255, "ANY"),
            (0, "OTHER"),
            (5, "OTHER"),   // CNAME
            (252, "OTHER"), // AXFR
            (65, "OTHER"),  // HTTPS
            (u16::MAX, "OTHER"),
        ];
        for (qtype, label) in cases {
            assert_eq!(QTYPE_LABELS[qtype_index(qtype)], label, "qtype {qtype}");
        }
    }

    #[test]
    fn rcode_mapping() {
        let cases = [
            (0, "NOERROR"),
            (1, "FORMERR"),
            (2, "SERVFAIL"),
            (3, "NXDOMAIN"),
            (4, "NOTIMP"),
            (5, "REFUSED"),
            (16, "BADVERS"),
            (6, "OTHER"),  // YXDOMAIN
            (9, "OTHER"),  // NOTAUTH
            (15, "OTHER"), // unassigned 4-bit value
            (17, "OTHER"), // BADKEY
            (4095, "OTHER"),
            (u16::MAX, "OTHER"),
        ];
        for (rcode, label) in cases {
            assert_eq!(RCODE_LABELS[rcode_index(rcode)], label, "rcode {rcode}");
        }
    }

    #[test]
    fn unknown_types_and_codes_count_as_other() {
        let metrics = Metrics::new();
        let w = metrics.dns_worker(Transport::Udp);
        w.query(5, 0); // CNAME, NOERROR
        w.query(65, 0); // HTTPS, NOERROR
        w.query(1, 9); // A, NOTAUTH
        w.query(99, 23); // both unknown
        let text = metrics.encode();
        let q = |qtype, rcode| {
            value(
                &text,
                "fleetdns_dns_queries_total",
                &[("qtype", qtype), ("rcode", rcode)],
            )
        };
        assert_eq!(q("OTHER", "NOERROR"), Some(2.0));
        assert_eq!(q("A", "OTHER"), Some(1.0));
        assert_eq!(q("OTHER", "OTHER"), Some(1.0));
        assert_eq!(q("A", "NOERROR"), Some(0.0));
        assert_eq!(
            w.snapshot().queries(5, 0),
            2,
            "CNAME reads the OTHER bucket"
        );
        assert_eq!(w.snapshot().total_queries(), 4);
    }

    #[test]
    fn answer_times_fall_into_their_buckets() {
        let metrics = Metrics::new();
        let w = metrics.dns_worker(Transport::Tcp);
        for ns in [100, 250, 251, 20_000_000] {
            w.answered_in(std::time::Duration::from_nanos(ns));
        }
        let counts = metrics.dns_totals();
        assert_eq!(counts.answer_buckets[0], 2, "≤ 250 ns, bound included");
        assert_eq!(counts.answer_buckets[1], 1);
        assert_eq!(
            counts.answer_buckets[ANSWER_BUCKETS_NS.len()],
            1,
            "above every bound"
        );
        assert_eq!(counts.answer_ns_sum, 100 + 250 + 251 + 20_000_000);
    }

    #[test]
    fn exposition_is_well_formed_openmetrics() {
        let metrics = Metrics::new();
        let w = metrics.dns_worker(Transport::Udp);
        for _ in 0..3 {
            w.query(1, 0);
        }
        metrics.set_view(7, &[("eu-1".to_owned(), 4)]);
        metrics.set_ready(true);
        let text = metrics.encode();

        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("\n# TYPE fleetdns_dns_queries counter\n"));
        assert!(text.contains("\nfleetdns_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"} 3\n"));

        let (samples, types) = parse_openmetrics(&text);
        let expected_types = [
            ("fleetdns_dns_queries", "counter"),
            ("fleetdns_dns_answer_duration_seconds", "histogram"),
            ("fleetdns_dns_responses_truncated", "counter"),
            ("fleetdns_dns_tcp_answers_capped", "counter"),
            ("fleetdns_dns_malformed_packets", "counter"),
            ("fleetdns_dns_dropped_packets", "counter"),
            ("fleetdns_dns_tcp_connections", "gauge"),
            ("fleetdns_dns_tcp_connections_accepted", "counter"),
            ("fleetdns_dns_tcp_connections_rejected", "counter"),
            ("fleetdns_view_generation", "gauge"),
            ("fleetdns_view_services", "gauge"),
            ("fleetdns_ready", "gauge"),
        ];
        for (name, ty) in expected_types {
            assert_eq!(types.get(name).map(String::as_str), Some(ty), "{name}");
        }
        assert_eq!(types.len(), expected_types.len(), "{types:?}");

        // Every qtype × rcode pair, zeros included, and nothing else.
        let queries: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "fleetdns_dns_queries_total")
            .collect();
        assert_eq!(queries.len(), N_QTYPE * N_RCODE);
        for s in &queries {
            assert_eq!(s.labels.len(), 2);
            assert_eq!(s.labels[0].0, "qtype");
            assert_eq!(s.labels[1].0, "rcode");
            assert!(QTYPE_LABELS.contains(&s.labels[0].1.as_str()));
            assert!(RCODE_LABELS.contains(&s.labels[1].1.as_str()));
        }
        assert_eq!(queries.iter().map(|s| s.value).sum::<f64>(), 3.0);

        assert_eq!(value(&text, "fleetdns_view_generation", &[]), Some(7.0));
        assert_eq!(
            value(&text, "fleetdns_view_services", &[("cluster", "eu-1")]),
            Some(4.0)
        );
        assert_eq!(value(&text, "fleetdns_ready", &[]), Some(1.0));
    }

    #[test]
    fn counts_from_several_workers_are_summed() {
        let metrics = Metrics::new();
        let udp1 = metrics.dns_worker(Transport::Udp);
        let udp2 = metrics.dns_worker(Transport::Udp);
        let tcp = metrics.dns_worker(Transport::Tcp);

        udp1.query(1, 0);
        udp1.query(1, 0);
        udp2.query(1, 0);
        tcp.query(1, 0);
        udp2.query(33, 3);
        tcp.query(28, 16);
        udp1.truncated();
        udp2.truncated();
        tcp.tcp_capped();
        udp1.malformed();
        udp2.malformed();
        tcp.malformed();
        udp2.dropped();
        tcp.dropped();
        tcp.dropped();

        let text = metrics.encode();
        let q = |qtype, rcode| {
            value(
                &text,
                "fleetdns_dns_queries_total",
                &[("qtype", qtype), ("rcode", rcode)],
            )
        };
        assert_eq!(q("A", "NOERROR"), Some(4.0));
        assert_eq!(q("SRV", "NXDOMAIN"), Some(1.0));
        assert_eq!(q("AAAA", "BADVERS"), Some(1.0));
        let v = |name, labels: &[(&str, &str)]| value(&text, name, labels);
        assert_eq!(v("fleetdns_dns_responses_truncated_total", &[]), Some(2.0));
        assert_eq!(v("fleetdns_dns_tcp_answers_capped_total", &[]), Some(1.0));
        let malformed = "fleetdns_dns_malformed_packets_total";
        assert_eq!(v(malformed, &[("transport", "udp")]), Some(2.0));
        assert_eq!(v(malformed, &[("transport", "tcp")]), Some(1.0));
        let dropped = "fleetdns_dns_dropped_packets_total";
        assert_eq!(v(dropped, &[("transport", "udp")]), Some(1.0));
        assert_eq!(v(dropped, &[("transport", "tcp")]), Some(2.0));

        let totals = metrics.dns_totals();
        assert_eq!(totals.queries(1, 0), 4);
        assert_eq!(totals.total_queries(), 6);
        assert_eq!(
            (
                totals.truncated,
                totals.tcp_capped,
                totals.malformed,
                totals.dropped
            ),
            (2, 1, 3, 3)
        );
        assert_eq!(udp1.snapshot().queries(1, 0), 2);
        assert_eq!(tcp.transport(), Transport::Tcp);
    }

    #[test]
    fn concurrent_increments_sum_exactly() {
        const THREADS: usize = 8;
        const PER_THREAD: u64 = 20_000;
        let metrics = Metrics::new();
        // Half the threads own a worker each; the other half share one, which
        // must also count exactly.
        let shared = metrics.dns_worker(Transport::Tcp);
        std::thread::scope(|s| {
            for i in 0..THREADS {
                let stats = if i % 2 == 0 {
                    metrics.dns_worker(Transport::Udp)
                } else {
                    Arc::clone(&shared)
                };
                s.spawn(move || {
                    for n in 0..PER_THREAD {
                        stats.query(1, 0);
                        stats.query(if n % 2 == 0 { 16 } else { 999 }, 3);
                        stats.malformed();
                    }
                });
            }
            // Scrapes racing the workers must not block them or misparse.
            s.spawn(|| {
                for _ in 0..20 {
                    parse_openmetrics(&metrics.encode());
                }
            });
        });

        let n = (THREADS as u64 * PER_THREAD) as f64;
        let text = metrics.encode();
        let q = |qtype, rcode| {
            value(
                &text,
                "fleetdns_dns_queries_total",
                &[("qtype", qtype), ("rcode", rcode)],
            )
        };
        assert_eq!(q("A", "NOERROR"), Some(n));
        assert_eq!(q("TXT", "NXDOMAIN"), Some(n / 2.0));
        assert_eq!(q("OTHER", "NXDOMAIN"), Some(n / 2.0));
        let malformed = "fleetdns_dns_malformed_packets_total";
        let half = (THREADS as u64 / 2 * PER_THREAD) as f64;
        assert_eq!(value(&text, malformed, &[("transport", "udp")]), Some(half));
        assert_eq!(value(&text, malformed, &[("transport", "tcp")]), Some(half));
        assert_eq!(
            metrics.dns_totals().total_queries(),
            2 * THREADS as u64 * PER_THREAD
        );
    }

    #[test]
    fn removed_clusters_disappear() {
        let metrics = Metrics::new();
        let services = "fleetdns_view_services";
        metrics.set_view(1, &[("eu-1".to_owned(), 10), ("us-2".to_owned(), 3)]);
        let text = metrics.encode();
        assert_eq!(value(&text, services, &[("cluster", "eu-1")]), Some(10.0));
        assert_eq!(value(&text, services, &[("cluster", "us-2")]), Some(3.0));

        metrics.set_view(2, &[("eu-1".to_owned(), 11), ("ap-3".to_owned(), 0)]);
        let text = metrics.encode();
        assert_eq!(value(&text, "fleetdns_view_generation", &[]), Some(2.0));
        assert_eq!(value(&text, services, &[("cluster", "eu-1")]), Some(11.0));
        assert_eq!(value(&text, services, &[("cluster", "ap-3")]), Some(0.0));
        assert_eq!(value(&text, services, &[("cluster", "us-2")]), None);
        assert!(!text.contains("us-2"), "{text}");

        metrics.set_view(3, &[]);
        let text = metrics.encode();
        let (samples, types) = parse_openmetrics(&text);
        assert!(samples.iter().all(|s| s.name != services), "{text}");
        assert_eq!(types.get(services).map(String::as_str), Some("gauge"));
    }

    #[test]
    fn duplicate_and_odd_cluster_ids() {
        let metrics = Metrics::new();
        let odd = "a\"b\\c".to_owned();
        metrics.set_view(
            4,
            &[("x".to_owned(), 2), (odd.clone(), 1), ("x".to_owned(), 5)],
        );
        let text = metrics.encode();
        let services = "fleetdns_view_services";
        assert_eq!(value(&text, services, &[("cluster", "x")]), Some(7.0));
        assert_eq!(
            value(&text, services, &[("cluster", odd.as_str())]),
            Some(1.0)
        );
    }

    #[test]
    fn tcp_connections_and_rejections() {
        let metrics = Metrics::new();
        metrics.tcp_connection_opened();
        metrics.tcp_connection_opened();
        metrics.tcp_connection_closed();
        let guard = metrics.tcp_connection();
        metrics.tcp_connection_rejected(TcpReject::TooMany);
        metrics.tcp_connection_rejected(TcpReject::PerClient);
        metrics.tcp_connection_rejected(TcpReject::PerClient);

        let text = metrics.encode();
        let v = |name, labels: &[(&str, &str)]| value(&text, name, labels);
        assert_eq!(v("fleetdns_dns_tcp_connections", &[]), Some(2.0));
        assert_eq!(
            v("fleetdns_dns_tcp_connections_accepted_total", &[]),
            Some(3.0)
        );
        let rejected = "fleetdns_dns_tcp_connections_rejected_total";
        assert_eq!(v(rejected, &[("reason", "too_many")]), Some(1.0));
        assert_eq!(v(rejected, &[("reason", "per_client")]), Some(2.0));

        drop(guard);
        let text = metrics.encode();
        assert_eq!(value(&text, "fleetdns_dns_tcp_connections", &[]), Some(1.0));
    }

    #[test]
    fn fresh_metrics_export_zeros() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        let v = |name, labels: &[(&str, &str)]| value(&text, name, labels);
        assert_eq!(v("fleetdns_ready", &[]), Some(0.0));
        assert_eq!(v("fleetdns_view_generation", &[]), Some(0.0));
        assert_eq!(v("fleetdns_dns_tcp_connections", &[]), Some(0.0));
        let rejected = "fleetdns_dns_tcp_connections_rejected_total";
        assert_eq!(v(rejected, &[("reason", "too_many")]), Some(0.0));
        assert_eq!(v(rejected, &[("reason", "per_client")]), Some(0.0));
        let dropped = "fleetdns_dns_dropped_packets_total";
        assert_eq!(v(dropped, &[("transport", "udp")]), Some(0.0));
        assert_eq!(v(dropped, &[("transport", "tcp")]), Some(0.0));
        assert_eq!(
            v(
                "fleetdns_dns_queries_total",
                &[("qtype", "ANY"), ("rcode", "REFUSED")]
            ),
            Some(0.0)
        );
    }

    #[test]
    fn ready_toggles() {
        let metrics = Metrics::new();
        metrics.set_ready(true);
        assert_eq!(value(&metrics.encode(), "fleetdns_ready", &[]), Some(1.0));
        metrics.set_ready(false);
        assert_eq!(value(&metrics.encode(), "fleetdns_ready", &[]), Some(0.0));
    }

    #[test]
    fn other_modules_register_under_the_prefix() {
        let mut metrics = Metrics::new();
        let reloads = Counter::<u64>::default();
        metrics
            .registry_mut()
            .register("config_reloads", "Config reloads", reloads.clone());
        reloads.inc();
        let text = metrics.encode();
        assert_eq!(
            value(&text, "fleetdns_config_reloads_total", &[]),
            Some(1.0)
        );
    }

    #[test]
    fn worker_stats_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<WorkerStats>(), 128);
        assert_eq!(std::mem::size_of::<WorkerStats>() % 128, 0);
    }

    #[test]
    fn metrics_is_shareable() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Metrics>();
        assert_send_sync::<WorkerStats>();
        assert_send_sync::<TcpConnectionGuard>();
    }
}

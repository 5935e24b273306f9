//! fleetdns behind real forwarders, the way a cluster's CoreDNS reaches it (a forward
//! stub for the `fleet` zone; CoreDNS itself cannot be installed here, DESIGN.md §7):
//! unbound with a `stub-zone` (a resolver: qname minimisation walks the empty
//! non-terminals, caches positive and negative answers) and dnsmasq with
//! `server=/fleet/...` (a forwarding cache). A pod's stub resolver asks them with RD set.
//! Resolvers rotate RRsets, so answers are compared as sets, never in order.

mod common;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestPeer, demo_files, replace_file};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use support::{
    DigAnswer, Dnsmasq, RCODE_NOERROR, TYPE_A, Unbound, dig, parse_dig, query_udp, wait_until,
};

/// Long enough for a forwarder's cache (TTL 5 s, negative TTL 5 s) to expire, with
/// room for a slow machine; the waits end as soon as the state is reached.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A forwarder under test.
enum Forwarder {
    Unbound(Unbound),
    Dnsmasq(Dnsmasq),
}

impl Forwarder {
    fn start(kind: &str, upstream: SocketAddr) -> Forwarder {
        let forwarder = match kind {
            "unbound" => Forwarder::Unbound(Unbound::start_stub("fleet", upstream)),
            "dnsmasq" => Forwarder::Dnsmasq(Dnsmasq::start_forwarder("fleet", upstream)),
            other => panic!("unknown forwarder {other}"),
        };
        // The forwarder answers before it has reached the upstream (unbound: SERVFAIL).
        wait_until(
            Duration::from_secs(10),
            &format!("{kind} to get NOERROR from fleetdns"),
            || {
                query_udp(forwarder.addr(), "web.default.svc.fleet.", TYPE_A)
                    .filter(|r| r.rcode == RCODE_NOERROR && r.ancount > 0)
            },
        );
        forwarder
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Forwarder::Unbound(u) => u.addr(),
            Forwarder::Dnsmasq(d) => d.addr(),
        }
    }

    fn log(&self) -> String {
        match self {
            Forwarder::Unbound(u) => u.log(),
            Forwarder::Dnsmasq(d) => d.log(),
        }
    }

    /// `dig` through the forwarder (RD set, as a pod's stub resolver sends).
    fn dig(&self, name: &str, qtype: &str) -> DigAnswer {
        let out = dig(self.addr(), &["+recurse", name, qtype]);
        let answer = parse_dig(&out);
        assert!(answer.has_flag("rd"), "{out}");
        answer
    }
}

/// The A rdata of a reply of `query_udp`, sorted; `None` unless NOERROR.
fn a_records(reply: &[u8]) -> Option<Vec<String>> {
    let m = Message::from_vec(reply).ok()?;
    if m.metadata.response_code != ResponseCode::NoError {
        return None;
    }
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    Some(v)
}

/// Through the forwarder: a merged name, per-cluster names (both families), an SRV,
/// NXDOMAIN and NODATA, the cluster TXT. A forwarder answers with RA and without AA.
fn assert_resolves_demo(kind: &str, f: &Forwarder) {
    let ctx = |a: &DigAnswer| format!("{kind}: {a:?}\nlog:\n{}", f.log());

    let a = f.dig("web.default.svc.fleet.", "A");
    assert_eq!(a.rcode, "NOERROR", "{}", ctx(&a));
    assert!(a.has_flag("ra") && !a.has_flag("aa"), "{}", ctx(&a));
    assert_eq!(a.answer_rdata("A"), ["10.96.0.10"], "{}", ctx(&a));

    // Merged, only west exports it: west's ingress in both families.
    let a = f.dig("catalog.shop.svc.fleet.", "A");
    assert_eq!(a.answer_rdata("A"), ["198.51.100.30"], "{}", ctx(&a));
    let a = f.dig("catalog.shop.svc.fleet.", "AAAA");
    assert_eq!(a.answer_rdata("AAAA"), ["2001:db8:b::30"], "{}", ctx(&a));

    // Per-cluster names: a multi-address VM member and a dual-stack VIP.
    let a = f.dig("ledger.finance.central.fleet.", "A");
    assert_eq!(a.rcode, "NOERROR", "{}", ctx(&a));
    assert_eq!(
        a.answer_rdata("A"),
        ["192.0.2.50", "192.0.2.51"],
        "{}",
        ctx(&a)
    );
    let a = f.dig("api.shop.east.fleet.", "AAAA");
    assert_eq!(a.answer_rdata("AAAA"), ["fd00:10:96::20"], "{}", ctx(&a));

    // Headless per-cluster SRV (one per ready endpoint) and a merged remote SRV.
    let a = f.dig("_broker._tcp.kafka.data.west.fleet.", "SRV");
    assert_eq!(a.rcode, "NOERROR", "{}", ctx(&a));
    assert_eq!(
        a.answer_rdata("SRV"),
        [
            "0 100 9092 kafka-0.kafka.data.west.fleet.",
            "0 100 9092 kafka-1.kafka.data.west.fleet."
        ],
        "{}",
        ctx(&a)
    );
    let a = f.dig("_https._tcp.ledger.finance.svc.fleet.", "SRV");
    assert_eq!(
        a.answer_rdata("SRV"),
        ["10 100 8443 ledger.finance.central.fleet."],
        "{}",
        ctx(&a)
    );

    let a = f.dig("west.fleet.", "TXT");
    assert_eq!(
        a.answer_rdata("TXT"),
        [r#""cluster=west" "env=demo" "owner=platform-team" "region=us-west" "zone=us-west-2""#],
        "{}",
        ctx(&a)
    );

    // Negative answers: NXDOMAIN under each tree, NODATA for a missing family and an
    // empty non-terminal. The SOA the forwarder passes on has at most the negative TTL.
    for (name, qtype, rcode) in [
        ("nope.default.svc.fleet.", "A", "NXDOMAIN"),
        ("nope.default.east.fleet.", "A", "NXDOMAIN"),
        ("_nope._tcp.web.default.east.fleet.", "SRV", "NXDOMAIN"),
        ("nope.fleet.", "A", "NXDOMAIN"),
        ("web.default.west.fleet.", "AAAA", "NOERROR"),
        ("default.east.fleet.", "A", "NOERROR"),
    ] {
        let a = f.dig(name, qtype);
        assert_eq!(a.rcode, rcode, "{name} {qtype}: {}", ctx(&a));
        assert!(a.answer.is_empty(), "{name} {qtype}: {}", ctx(&a));
        assert_negative_soa(&a, &ctx(&a));
    }
    // The NXDOMAIN did not poison the names next to it (RFC 8020 done right).
    let a = f.dig("web.default.east.fleet.", "A");
    assert_eq!(a.answer_rdata("A"), ["10.96.0.10"], "{}", ctx(&a));
}

/// The authority SOA of a negative answer through a forwarder: the zone's SOA with a TTL
/// of at most `negative_ttl` (5 s).
fn assert_negative_soa(a: &DigAnswer, ctx: &str) {
    assert_eq!(a.authority.len(), 1, "{ctx}");
    let fields: Vec<&str> = a.authority[0].split(' ').collect();
    assert_eq!(fields[0], "fleet.", "{ctx}");
    assert_eq!(fields[3], "SOA", "{ctx}");
    let ttl: u32 = fields[1].parse().expect("a TTL");
    assert!(ttl <= 5, "negative TTL ≤ 5 s: {ctx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_unbound_stub_resolves_fleet_names() {
    let peer = TestPeer::start("east", &demo_files(), "").await;
    let unbound = Forwarder::start("unbound", peer.dns);
    assert_resolves_demo("unbound", &unbound);
    drop(unbound);
    peer.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_dnsmasq_forwards_fleet_names() {
    let peer = TestPeer::start("east", &demo_files(), "").await;
    let dnsmasq = Forwarder::start("dnsmasq", peer.dns);
    assert_resolves_demo("dnsmasq", &dnsmasq);
    drop(dnsmasq);
    peer.app.shutdown().await;
}

/// After the services file changes, both forwarders return the new data once their cache
/// entries expire: web's new ClusterIP (per-cluster and merged names), and a service that
/// was NXDOMAIN (negatively cached) when the change happened. The TTLs the forwarders
/// pass on are never above 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_forwarders_follow_a_services_file_change() {
    const WEB: &str = "web.default.east.fleet.";
    const MERGED: &str = "web.default.svc.fleet.";
    const NEW: &str = "late.default.east.fleet.";
    let peer = TestPeer::start("east", &demo_files(), "").await;
    let forwarders = [
        ("unbound", Forwarder::start("unbound", peer.dns)),
        ("dnsmasq", Forwarder::start("dnsmasq", peer.dns)),
    ];

    // Prime the caches with the old answers, positive and negative.
    for (kind, f) in &forwarders {
        for name in [WEB, MERGED] {
            let a = f.dig(name, "A");
            assert_eq!(a.answer_rdata("A"), ["10.96.0.10"], "{kind}: {a:?}");
            let ttl: u32 = a.answer[0]
                .split(' ')
                .nth(1)
                .expect("ttl")
                .parse()
                .expect("ttl");
            assert!(ttl <= 5, "{kind}: TTL ≤ 5 s: {a:?}");
        }
        let a = f.dig(NEW, "A");
        assert_eq!(a.rcode, "NXDOMAIN", "{kind}: {a:?}");
        assert_negative_soa(&a, &format!("{kind}: {a:?}"));
    }

    let east = include_str!("../config/demo/east.yaml");
    let changed = east.replacen(
        "    cluster_ips: [10.96.0.10]\n",
        "    cluster_ips: [10.96.0.99]\n",
        1,
    );
    assert_ne!(changed, east, "fixture edit applied");
    let changed = format!(
        "{changed}  - name: late\n    namespace: default\n    ports: [{{name: http, port: 80, protocol: TCP}}]\n    cluster_ips: [10.96.0.77]\n    endpoints: [{{address: 10.1.9.9, ready: true}}]\n"
    );
    replace_file(&peer.path("east.yaml"), &changed);

    // fleetdns itself serves the change first (the file watch), then the forwarders once
    // their cached entries expire.
    let direct = peer.dns;
    wait_until(CHANGE_TIMEOUT, "fleetdns to serve the new address", || {
        query_udp(direct, WEB, TYPE_A)
            .and_then(|r| a_records(&r.bytes))
            .filter(|a| *a == ["10.96.0.99"])
    });
    for (kind, f) in &forwarders {
        for (name, address) in [
            (WEB, "10.96.0.99"),
            (MERGED, "10.96.0.99"),
            (NEW, "10.96.0.77"),
        ] {
            wait_until(
                CHANGE_TIMEOUT,
                &format!("{kind} to return {address} for {name}"),
                || {
                    query_udp(f.addr(), name, TYPE_A)
                        .and_then(|r| a_records(&r.bytes))
                        .filter(|a| *a == [address])
                },
            );
            let a = f.dig(name, "A");
            assert_eq!(a.rcode, "NOERROR", "{kind}: {a:?}");
            assert_eq!(a.answer_rdata("A"), [address], "{kind}: {a:?}");
        }
    }
    drop(forwarders);
    peer.app.shutdown().await;
}

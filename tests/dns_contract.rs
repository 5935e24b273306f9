//! The DNS contract of DESIGN.md §1, rule by rule, over real UDP and TCP sockets.

mod common;

use std::time::Duration;

use common::*;
use fleetdns::app::{App, StartOptions};
use fleetdns::config::Config;
use fleetdns::dns::index::Readiness;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const EAST: &str = r#"
labels: {region: us-east, owner: team-a}
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80}, {port: 8080}]
    cluster_ips: [10.96.0.10]
    ingress: [203.0.113.10]
    endpoints: [{address: 10.1.0.5}]
  - name: api
    namespace: shop
    ports: [{name: https, port: 443}, {name: grpc, port: 9090}]
    cluster_ips: [10.96.0.20, "fd00::20"]
    endpoints: [{address: 10.1.1.5}]
  - name: db
    namespace: shop
    headless: true
    ports: [{name: postgres, port: 5432}, {name: metrics, port: 9187}]
    endpoints:
      - {address: 10.1.2.10, hostname: db-0}
      - {address: 10.1.2.11, hostname: db-1}
      - {address: "fd00::2:11", hostname: db-1}
      - {address: 10.1.2.12, hostname: db-2, ready: false}
  - name: down
    namespace: default
    cluster_ips: [10.96.0.40]
    endpoints: [{address: 10.1.4.1, ready: false}]
  - name: both
    namespace: default
    ports: [{name: http, port: 80}]
    cluster_ips: [10.96.0.50]
    endpoints: [{address: 10.1.5.1}]
    policy: all
"#;

const WEST: &str = r#"
labels: {region: us-west}
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80}]
    cluster_ips: [10.97.0.10]
    ingress: [198.51.100.10]
    endpoints: [{address: 10.2.0.5}]
  - name: down
    namespace: default
    ingress: [198.51.100.40]
    endpoints: [{address: 10.2.4.1}]
  - name: both
    namespace: default
    ports: [{name: http, port: 8081}]
    ingress: [198.51.100.50]
    endpoints: [{address: 10.2.5.1}]
  - name: v6only
    namespace: default
    ingress: ["2001:db8::60"]
    endpoints: [{address: 10.2.6.1}]
"#;

async fn fleet() -> TestPeer {
    TestPeer::start("east", &[("east", EAST), ("west", WEST)], "").await
}

fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

/// Asserts a negative answer: rcode, AA, no answers, the zone SOA in authority.
fn assert_negative(m: &Message, expected: ResponseCode, negative_ttl: u32) {
    assert_eq!(rcode(m), expected, "{m:?}");
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1, "{m:?}");
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_ascii(), "fleet.");
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.ttl, negative_ttl);
}

#[tokio::test]
async fn per_cluster_names_answer_what_each_cluster_exports_as_this_peer_may_serve() {
    let f = fleet().await;
    for (name, qtype, expected) in [
        ("web.default.east.fleet.", RecordType::A, vec!["10.96.0.10"]),
        // Another cluster's service: its ingress, since the network is not connected.
        (
            "web.default.west.fleet.",
            RecordType::A,
            vec!["198.51.100.10"],
        ),
        ("api.shop.east.fleet.", RecordType::A, vec!["10.96.0.20"]),
        ("api.shop.east.fleet.", RecordType::AAAA, vec!["fd00::20"]),
        // A VIP with zero ready endpoints still answers (Kubernetes semantics).
        (
            "down.default.east.fleet.",
            RecordType::A,
            vec!["10.96.0.40"],
        ),
        (
            "v6only.default.west.fleet.",
            RecordType::AAAA,
            vec!["2001:db8::60"],
        ),
    ] {
        for m in [
            udp(f.dns, &Q::new(name, qtype)).await,
            tcp(f.dns, &Q::new(name, qtype)).await,
        ] {
            assert_eq!(rcode(&m), ResponseCode::NoError, "{name}");
            assert!(m.metadata.authoritative, "{name}");
            assert_eq!(answers(&m), expected, "{name} {qtype}");
            assert!(m.answers.iter().all(|r| r.ttl == 5));
        }
    }
}

#[tokio::test]
async fn merged_names_follow_the_policy_per_name_not_per_family() {
    let f = fleet().await;
    // local-preferred: east contributes, so east alone.
    let m = udp(f.dns, &Q::new("web.default.svc.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
    // east has no ready endpoint: every other contributing cluster.
    let m = udp(f.dns, &Q::new("down.default.svc.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["198.51.100.40"]);
    // policy all: every contributing cluster.
    let m = udp(f.dns, &Q::new("both.default.svc.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.96.0.50", "198.51.100.50"]);
    // A family the chosen clusters lack is NODATA, the other family answers.
    let m = udp(f.dns, &Q::new("v6only.default.svc.fleet.", RecordType::A)).await;
    assert_negative(&m, ResponseCode::NoError, 5);
    let m = udp(
        f.dns,
        &Q::new("v6only.default.svc.fleet.", RecordType::AAAA),
    )
    .await;
    assert_eq!(answers(&m), vec!["2001:db8::60"]);
    // The dual-stack local service answers both families from east only.
    let m = udp(f.dns, &Q::new("api.shop.svc.fleet.", RecordType::AAAA)).await;
    assert_eq!(answers(&m), vec!["fd00::20"]);
}

#[tokio::test]
async fn srv_per_cluster_and_merged_with_priorities_and_additionals() {
    let f = fleet().await;
    let m = udp(
        f.dns,
        &Q::new("_http._tcp.web.default.east.fleet.", RecordType::SRV).edns(1232),
    )
    .await;
    assert_eq!(answers(&m), vec!["0 100 80 web.default.east.fleet."]);
    assert_eq!(additionals(&m), vec!["web.default.east.fleet. 10.96.0.10"]);

    // Merged with policy all: local priority 0, others 10, weights 100.
    let m = udp(
        f.dns,
        &Q::new("_http._tcp.both.default.svc.fleet.", RecordType::SRV).edns(1232),
    )
    .await;
    assert_eq!(
        answers(&m),
        vec![
            "0 100 80 both.default.east.fleet.",
            "10 100 8081 both.default.west.fleet."
        ]
    );
    assert_eq!(
        additionals(&m),
        vec![
            "both.default.east.fleet. 10.96.0.50",
            "both.default.west.fleet. 198.51.100.50"
        ]
    );

    // Unnamed ports get no SRV: web has exactly one SRV name.
    let m = udp(
        f.dns,
        &Q::new("_tcp.web.default.east.fleet.", RecordType::SRV),
    )
    .await;
    assert_negative(&m, ResponseCode::NoError, 5);
    let m = udp(
        f.dns,
        &Q::new("_grpc._tcp.api.shop.svc.fleet.", RecordType::SRV),
    )
    .await;
    assert_eq!(answers(&m), vec!["0 100 9090 api.shop.east.fleet."]);
}

#[tokio::test]
async fn headless_services_get_per_endpoint_names_and_n_by_m_srv() {
    let f = fleet().await;
    let m = udp(f.dns, &Q::new("db-0.db.shop.east.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.1.2.10"]);
    // Endpoints sharing a label are one name with several addresses.
    let m = udp(f.dns, &Q::new("db-1.db.shop.east.fleet.", RecordType::AAAA)).await;
    assert_eq!(answers(&m), vec!["fd00::2:11"]);
    // A not-ready endpoint has no name.
    let m = udp(f.dns, &Q::new("db-2.db.shop.east.fleet.", RecordType::A)).await;
    assert_negative(&m, ResponseCode::NXDomain, 5);
    // The service name answers every ready endpoint.
    let m = udp(f.dns, &Q::new("db.shop.east.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.1.2.10", "10.1.2.11"]);
    // N endpoints × M named ports.
    let mut total = 0;
    for port in ["_postgres", "_metrics"] {
        let m = tcp(
            f.dns,
            &Q::new(&format!("{port}._tcp.db.shop.east.fleet."), RecordType::SRV),
        )
        .await;
        let targets: Vec<String> = answers(&m)
            .iter()
            .map(|s| s.rsplit(' ').next().unwrap().to_string())
            .collect();
        assert_eq!(
            targets,
            vec!["db-0.db.shop.east.fleet.", "db-1.db.shop.east.fleet."]
        );
        assert!(additionals(&m).contains(&"db-1.db.shop.east.fleet. fd00::2:11".to_string()));
        total += m.answers.len();
    }
    assert_eq!(total, 4);
}

#[tokio::test]
async fn cluster_inventory_version_and_apex() {
    let f = fleet().await;
    let txt = |m: &Message| -> Vec<String> {
        assert_eq!(m.answers.len(), 1, "{m:?}");
        let RData::TXT(t) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        t.txt_data
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let m = udp(f.dns, &Q::new("east.fleet.", RecordType::TXT)).await;
    assert_eq!(
        txt(&m),
        vec!["cluster=east", "owner=team-a", "region=us-east"]
    );
    let m = udp(f.dns, &Q::new("west.fleet.", RecordType::TXT)).await;
    assert_eq!(txt(&m), vec!["cluster=west", "region=us-west"]);
    let m = udp(f.dns, &Q::new("dns-version.fleet.", RecordType::TXT)).await;
    assert_eq!(txt(&m), vec!["fleetdns-1"]);

    let m = udp(f.dns, &Q::new("fleet.", RecordType::SOA)).await;
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(soa.mname.to_ascii(), "ns.fleet.");
    assert_eq!(soa.rname.to_ascii(), "hostmaster.fleet.");
    assert_eq!(
        (soa.refresh, soa.retry, soa.expire, soa.minimum),
        (7200, 1800, 86400, 5)
    );
    assert_eq!(m.answers[0].ttl, 5);
    assert!(
        soa.serial > 1_700_000_000,
        "serial is unix seconds: {}",
        soa.serial
    );

    let m = udp(f.dns, &Q::new("fleet.", RecordType::NS).edns(1232)).await;
    assert_eq!(answers(&m), vec!["ns.fleet."]);
    assert_eq!(additionals(&m), vec!["ns.fleet. 127.0.0.1"]);
    let m = udp(f.dns, &Q::new("ns.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["127.0.0.1"]);
    let m = udp(f.dns, &Q::new("ns.fleet.", RecordType::AAAA)).await;
    assert_negative(&m, ResponseCode::NoError, 5);
}

#[tokio::test]
async fn empty_non_terminals_are_nodata_and_absent_names_nxdomain_whatever_the_type() {
    let f = fleet().await;
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::MX,
        RecordType::Unknown(999),
    ];
    for ent in [
        "svc.fleet.",
        "default.svc.fleet.",
        "default.east.fleet.",
        "shop.east.fleet.",
        "_tcp.web.default.east.fleet.",
        "_tcp.db.shop.east.fleet.",
        "_tcp.both.default.svc.fleet.",
    ] {
        for t in types {
            let m = udp(f.dns, &Q::new(ent, t)).await;
            assert_negative(&m, ResponseCode::NoError, 5);
        }
    }
    for absent in [
        "nope.fleet.",
        "nope.default.svc.fleet.",
        "nope.default.east.fleet.",
        "web.nope.east.fleet.",
        "_nope._tcp.web.default.east.fleet.",
        "x.db-0.db.shop.east.fleet.",
        "x.dns-version.fleet.",
        // The first label under the apex decides the tree: `svc` is never a cluster.
        "web.default.svc.svc.fleet.",
    ] {
        for t in types {
            let m = udp(f.dns, &Q::new(absent, t)).await;
            assert_negative(&m, ResponseCode::NXDomain, 5);
        }
    }
    // An existing name without the type, including unknown types: NODATA.
    let m = udp(
        f.dns,
        &Q::new("web.default.east.fleet.", RecordType::Unknown(999)),
    )
    .await;
    assert_negative(&m, ResponseCode::NoError, 5);
}

#[tokio::test]
async fn any_gets_the_a_rrset_else_the_smallest_else_nodata() {
    let f = fleet().await;
    let m = udp(f.dns, &Q::new("api.shop.east.fleet.", RecordType::ANY)).await;
    assert!(m.answers.iter().all(|r| r.record_type() == RecordType::A));
    assert_eq!(answers(&m), vec!["10.96.0.20"]);
    let m = udp(
        f.dns,
        &Q::new("v6only.default.west.fleet.", RecordType::ANY),
    )
    .await;
    assert_eq!(answers(&m), vec!["2001:db8::60"]);
    let m = udp(f.dns, &Q::new("default.east.fleet.", RecordType::ANY)).await;
    assert_negative(&m, ResponseCode::NoError, 5);
}

#[tokio::test]
async fn header_rules_and_out_of_zone_refusal() {
    let f = fleet().await;
    for rd in [true, false] {
        let mut q = Q::new("web.default.east.fleet.", RecordType::A);
        q.rd = rd;
        let bytes = q.to_bytes();
        let raw = udp_raw(f.dns, &bytes, TIMEOUT).await.unwrap();
        assert_eq!(raw[..2], bytes[..2], "ID echoed");
        let m = Message::from_vec(&raw).unwrap();
        let md = &m.metadata;
        assert_eq!(md.recursion_desired, rd, "RD copied");
        assert!(
            md.authoritative
                && !md.recursion_available
                && !md.authentic_data
                && !md.checking_disabled
        );
        assert_eq!(raw[3] & 0x70, 0, "Z, AD and CD clear");
    }
    for (name, qtype) in [
        ("example.com.", RecordType::A),
        (".", RecordType::NS),
        ("fleet.example.", RecordType::A),
    ] {
        let m = udp(f.dns, &Q::new(name, qtype)).await;
        assert_eq!(rcode(&m), ResponseCode::Refused, "{name}");
        assert!(!m.metadata.authoritative && !m.metadata.recursion_available);
        assert!(m.answers.is_empty() && m.authorities.is_empty());
    }
}

#[tokio::test]
async fn question_case_is_echoed_byte_for_byte() {
    let f = fleet().await;
    for name in ["WeB.DeFaUlT.EaSt.FlEeT.", "NOPE.Default.SVC.fleet."] {
        let bytes = Q::new(name, RecordType::A).to_bytes();
        for raw in [
            udp_raw(f.dns, &bytes, TIMEOUT).await.unwrap(),
            tcp_raw(f.dns, &bytes).await,
        ] {
            let qlen = bytes.len() - 12;
            assert_eq!(raw[12..12 + qlen], bytes[12..], "question echoed as sent");
            let m = Message::from_vec(&raw).unwrap();
            assert!(m.metadata.authoritative);
        }
    }
    let m = udp(f.dns, &Q::new("WeB.DeFaUlT.EaSt.FlEeT.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
}

fn headless_with(n: usize) -> String {
    let mut s = String::from(
        "services:\n  - name: big\n    namespace: default\n    headless: true\n    ports: [{name: http, port: 80}]\n    endpoints:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "      - {{address: 10.9.{}.{}, hostname: big-{i}}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    s
}

#[tokio::test]
async fn edns_sizing_and_truncation_drop_additionals_first() {
    // 8 SRV records fit in 512 octets (SRV targets are never compressed), their 8 A
    // additionals do not.
    let f = TestPeer::start("east", &[("east", &headless_with(8))], "").await;
    let srv = "_http._tcp.big.default.east.fleet.";
    let plain = udp(f.dns, &Q::new(srv, RecordType::SRV)).await;
    assert!(!plain.metadata.truncation);
    assert_eq!(plain.answers.len(), 8);
    assert!(
        plain.additionals.is_empty(),
        "additionals dropped before truncating"
    );
    assert!(plain.edns.is_none(), "no OPT without one in the query");
    let edns = udp(f.dns, &Q::new(srv, RecordType::SRV).edns(4096)).await;
    assert_eq!(edns.answers.len(), 8);
    assert_eq!(edns.additionals.len(), 8);
    assert_eq!(
        edns.edns.as_ref().map(|e| e.max_payload()),
        Some(1232),
        "our OPT advertises 1232"
    );

    // 40 A records do not fit in 512: TC with header, question and OPT only.
    let f = TestPeer::start("east", &[("east", &headless_with(40))], "").await;
    let name = "big.default.east.fleet.";
    let raw = udp_raw(f.dns, &Q::new(name, RecordType::A).to_bytes(), TIMEOUT)
        .await
        .unwrap();
    assert!(raw.len() <= 512);
    let m = Message::from_vec(&raw).unwrap();
    assert!(m.metadata.truncation && m.metadata.authoritative);
    assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());
    assert_eq!(m.queries[0].name().to_ascii(), name);
    // A requester's size below 512 still gets 512; above our maximum gets 1232.
    let m = udp(f.dns, &Q::new(name, RecordType::A).edns(100)).await;
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some(), "OPT in the TC reply");
    let raw = udp_raw(
        f.dns,
        &Q::new(name, RecordType::A).edns(65000).to_bytes(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(raw.len() <= 1232);
    assert_eq!(Message::from_vec(&raw).unwrap().answers.len(), 40);
    // TCP carries it whole.
    let m = tcp(f.dns, &Q::new(name, RecordType::A)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
}

async fn wait_answer(f: &TestPeer, name: &str, expected: Vec<&str>) {
    let expected: Vec<String> = expected.into_iter().map(String::from).collect();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let m = udp(f.dns, &Q::new(name, RecordType::A)).await;
            if answers(&m) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never answered {expected:?}"));
}

#[tokio::test]
async fn file_edits_are_served_and_invalid_edits_keep_the_last_good_state() {
    let f = fleet().await;
    let serial = |m: &Message| match &m.answers[0].data {
        RData::SOA(s) => s.serial,
        _ => panic!("not a SOA"),
    };
    let before = serial(&udp(f.dns, &Q::new("fleet.", RecordType::SOA)).await);

    // An atomic replace (editor save, ConfigMap update): the new address is served.
    replace_file(
        &f.path("east.yaml"),
        &EAST.replace("10.96.0.10", "10.96.0.11"),
    );
    wait_answer(&f, "web.default.east.fleet.", vec!["10.96.0.11"]).await;
    let after = serial(&udp(f.dns, &Q::new("fleet.", RecordType::SOA)).await);
    assert!(after > before, "serial increases: {before} → {after}");

    // An invalid edit keeps the last good state; a later valid edit of another file is
    // still picked up, which proves the invalid one was read and rejected.
    replace_file(
        &f.path("east.yaml"),
        "services:\n  - {name: Web!, namespace: default}\n",
    );
    replace_file(
        &f.path("west.yaml"),
        &WEST.replace("198.51.100.10", "198.51.100.11"),
    );
    wait_answer(&f, "web.default.west.fleet.", vec!["198.51.100.11"]).await;
    let m = udp(f.dns, &Q::new("web.default.east.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.96.0.11"]);

    // Fixing it serves the fix; removing a service removes its names.
    replace_file(&f.path("east.yaml"), &EAST.replace("  - name: down\n    namespace: default\n    cluster_ips: [10.96.0.40]\n    endpoints: [{address: 10.1.4.1, ready: false}]\n", ""));
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let m = udp(f.dns, &Q::new("down.default.east.fleet.", RecordType::A)).await;
            if rcode(&m) == ResponseCode::NXDomain {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("removed service disappears");
    let m = udp(f.dns, &Q::new("web.default.east.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
}

#[tokio::test]
async fn ttls_come_from_the_config_and_the_soa_carries_the_negative_ttl() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("east.yaml"), EAST).unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(
        &path,
        "fleet: t\ncluster: east\nzone: Fleet.Example.\ndns: {listen: [\"127.0.0.1:0\"], advertise: \"::1\", ttl: 30s, negative_ttl: 7s}\nsource: {file: east.yaml}\n",
    )
    .unwrap();
    let app = App::start(Config::load(&path).unwrap(), StartOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, app.wait_for(|s| s.readiness == Readiness::Ready))
        .await
        .unwrap();
    let dns = app.dns_addrs[0];
    let m = udp(
        dns,
        &Q::new("web.default.east.fleet.example.", RecordType::A),
    )
    .await;
    assert_eq!(m.answers[0].ttl, 30);
    let m = udp(dns, &Q::new("nope.fleet.example.", RecordType::A)).await;
    assert_eq!(rcode(&m), ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].ttl, 7);
    assert_eq!(m.authorities[0].name.to_ascii(), "fleet.example.");
    let m = udp(dns, &Q::new("fleet.example.", RecordType::SOA)).await;
    assert_eq!(
        m.answers[0].ttl, 7,
        "the SOA RRset's TTL is negative_ttl everywhere"
    );
    let m = udp(dns, &Q::new("ns.fleet.example.", RecordType::AAAA)).await;
    assert_eq!(answers(&m), vec!["::1"]);
    // The default zone is not served by this peer.
    let m = udp(dns, &Q::new("web.default.east.fleet.", RecordType::A)).await;
    assert_eq!(rcode(&m), ResponseCode::Refused);
    app.shutdown().await;
}

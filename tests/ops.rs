//! The ops listener (`/healthz`, `/readyz`, `/metrics`) as probes and Prometheus see it,
//! and what DNS answers while the peer is not ready yet.

mod common;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

const EAST: &str = r#"
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80}]
    cluster_ips: [10.96.0.10]
    endpoints: [{address: 10.1.0.5}]
  - name: api
    namespace: shop
    cluster_ips: [10.96.0.20]
    endpoints: [{address: 10.1.1.5}]
  - name: db
    namespace: shop
    headless: true
    endpoints: [{address: 10.1.2.10, hostname: db-0}]
"#;

const WEST: &str = r#"
services:
  - name: web
    namespace: default
    ingress: [198.51.100.10]
    endpoints: [{address: 10.2.0.5}]
"#;

const EDE_OPTION: u16 = 15;
const EDE_NOT_READY: u16 = 14;

/// Checks a not-ready reply: SERVFAIL, AA clear, the question echoed, no records, and
/// with EDNS an OPT carrying EDE 14 "Not Ready" (RFC 8914).
fn assert_not_ready(reply: &[u8], q: &Q) {
    let h = RawHeader::parse(reply);
    assert!(h.qr);
    assert_eq!(h.rcode, 2, "SERVFAIL expected for {}: {h:?}", q.name);
    assert!(!h.aa, "AA set on a not-ready SERVFAIL: {h:?}");
    assert_eq!(h.rd, q.rd);
    assert!(!h.ra && !h.ad && !h.cd && !h.z);
    assert_eq!((h.qdcount, h.ancount, h.nscount), (1, 0, 0));
    let m = Message::from_vec(reply).expect("decodes");
    assert_eq!(m.queries[0].name().to_ascii(), q.name);
    let opts = raw_opts(reply);
    match q.edns {
        None => assert!(opts.is_empty(), "an OPT without EDNS: {opts:?}"),
        Some(_) => {
            assert_eq!(opts.len(), 1, "{h:?}");
            let ede: Vec<_> = opts[0]
                .options
                .iter()
                .filter(|(code, _)| *code == EDE_OPTION)
                .collect();
            assert_eq!(ede.len(), 1, "one EDE option in {opts:?}");
            let data = &ede[0].1;
            assert!(data.len() >= 2);
            assert_eq!(u16::from_be_bytes([data[0], data[1]]), EDE_NOT_READY);
            assert_eq!(std::str::from_utf8(&data[2..]).unwrap(), "Not Ready");
        }
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let peer = TestPeer::start("east", &[("east", EAST)], "").await;
    let r = http_get(peer.ops(), "/healthz").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn until_the_services_file_exists_the_peer_is_unready_and_never_says_nxdomain() {
    let peer = TestPeer::start_opts(
        "east",
        &[],
        PeerOptions {
            missing: &["east"],
            ..PeerOptions::default()
        },
    )
    .await;

    // Alive, but not ready, and it says what it waits for.
    assert_eq!(http_get(peer.ops(), "/healthz").await.status, 200);
    // Once the source has looked, /readyz names the missing file.
    let body = wait_for("/readyz to name the missing file", || async {
        let r = http_get(peer.ops(), "/readyz").await;
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.body.contains("waiting for"), "{:?}", r.body);
        r.body.contains("east.yaml").then_some(r.body)
    })
    .await;
    assert!(body.contains("source of cluster east"), "{body:?}");
    assert_eq!(peer.metric("fleetdns_ready").await, 0.0);

    // Names that will exist and names that will not: SERVFAIL either way, over UDP and
    // TCP, with EDE 14 when the query has EDNS.
    let names = [
        ("web.default.east.fleet.", RecordType::A),
        ("nope.default.east.fleet.", RecordType::A),
        ("fleet.", RecordType::SOA),
        ("_http._tcp.web.default.svc.fleet.", RecordType::SRV),
    ];
    for (name, qtype) in names {
        for q in [Q::new(name, qtype), Q::new(name, qtype).edns(1232).no_rd()] {
            let bytes = q.to_bytes();
            let over_udp = udp_raw(peer.dns, &bytes, TIMEOUT).await.expect("reply");
            assert_not_ready(&over_udp, &q);
            let over_tcp = tcp_raw(peer.dns, &bytes).await;
            assert_not_ready(&over_tcp, &q);
        }
    }
    // Out of zone is still REFUSED: not being ready is about our zone only.
    let m = udp(peer.dns, &Q::new("example.com.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // The file appears; the name resolves, and in the meantime nothing says NXDOMAIN.
    replace_file(&peer.path("east.yaml"), EAST);
    let web = Q::new("web.default.east.fleet.", RecordType::A).edns(1232);
    let m = wait_for("web.default.east.fleet. to resolve", || async {
        let reply = udp_raw(peer.dns, &web.to_bytes(), TIMEOUT)
            .await
            .expect("reply");
        let m = Message::from_vec(&reply).expect("decodes");
        match m.metadata.response_code {
            ResponseCode::ServFail => {
                assert_not_ready(&reply, &web);
                None
            }
            ResponseCode::NoError => Some(m),
            other => panic!("{other:?} while becoming ready: {m:?}"),
        }
    })
    .await;
    assert!(m.metadata.authoritative);
    assert_eq!(answers(&m), vec!["10.96.0.10"]);

    // The ops listener reads the snapshot DNS answered from: ready now.
    let r = http_get(peer.ops(), "/readyz").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(peer.metric("fleetdns_ready").await, 1.0);
    // And a name that does not exist is now, and only now, NXDOMAIN.
    let m = udp(peer.dns, &Q::new("nope.default.east.fleet.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn metrics_are_openmetrics_and_count_what_was_served() {
    let peer = TestPeer::start("east", &[("east", EAST), ("west", WEST)], "").await;
    let r = http_get(peer.ops(), "/metrics").await;
    assert_eq!(r.status, 200);
    let content_type = r.header("content-type").expect("a content type");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(r.body.ends_with("# EOF\n"), "no # EOF at the end");

    let a_noerror = "fleetdns_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}";
    let a_nxdomain = "fleetdns_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\"}";
    let srv_noerror = "fleetdns_dns_queries_total{qtype=\"SRV\",rcode=\"NOERROR\"}";
    let answers_count = "fleetdns_dns_answer_duration_seconds_count";
    let answers_inf = "fleetdns_dns_answer_duration_seconds_bucket{le=\"+Inf\"}";
    let before = |series| metric_value(&r.body, series).expect("series present from the start");
    let (a0, nx0, srv0) = (before(a_noerror), before(a_nxdomain), before(srv_noerror));
    let answered0 = before(answers_count);

    let web = Q::new("web.default.east.fleet.", RecordType::A);
    for _ in 0..3 {
        assert_eq!(answers(&udp(peer.dns, &web).await), vec!["10.96.0.10"]);
    }
    for _ in 0..2 {
        assert_eq!(answers(&tcp(peer.dns, &web).await), vec!["10.96.0.10"]);
    }
    let m = udp(peer.dns, &Q::new("nope.default.east.fleet.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(
        peer.dns,
        &Q::new("_http._tcp.web.default.east.fleet.", RecordType::SRV),
    )
    .await;
    assert_eq!(m.answers.len(), 1);

    let text = peer.metrics_text().await;
    let value = |series| metric_value(&text, series).unwrap_or_else(|| panic!("{series}"));
    assert_eq!(value(a_noerror) - a0, 5.0);
    assert_eq!(value(a_nxdomain) - nx0, 1.0);
    assert_eq!(value(srv_noerror) - srv0, 1.0);
    // Every answer is timed once; the histogram's buckets are cumulative.
    assert_eq!(value(answers_count) - answered0, 7.0);
    assert_eq!(value(answers_inf), value(answers_count));
    assert!(value("fleetdns_dns_answer_duration_seconds_sum") > 0.0);

    // The view: its generation (the one the peer serves) and services per cluster.
    let generation = peer.app.snapshot().generation;
    assert!(generation >= 1);
    assert_eq!(value("fleetdns_view_generation"), generation as f64);
    assert_eq!(value("fleetdns_view_services{cluster=\"east\"}"), 3.0);
    assert_eq!(value("fleetdns_view_services{cluster=\"west\"}"), 1.0);
    assert_eq!(value("fleetdns_ready"), 1.0);
    // Memory by part, estimated from the served snapshot.
    for part in ["index", "view", "model"] {
        let series = format!("fleetdns_memory_estimated_bytes{{part=\"{part}\"}}");
        let bytes = metric_value(&text, &series).unwrap_or_else(|| panic!("{series}"));
        assert!(bytes > 0.0, "{part}: {bytes}");
    }
    assert!(text.ends_with("# EOF\n"));

    // Services-file reads by outcome: both files loaded; a broken edit is counted
    // as invalid (and the last good state keeps answering).
    let reads =
        |outcome: &str| format!("fleetdns_source_file_reads_total{{outcome=\"{outcome}\"}}");
    let read_count = |outcome: &str| metric_value(&text, &reads(outcome)).expect("read counters");
    assert!(read_count("loaded") >= 2.0);
    assert_eq!(read_count("invalid"), 0.0);
    replace_file(&peer.path("east.yaml"), "services: [ {name: \n");
    let counted = tokio::time::timeout(TIMEOUT, async {
        loop {
            let text = peer.metrics_text().await;
            if metric_value(&text, &reads("invalid")).is_some_and(|n| n >= 1.0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the broken edit was never counted");
    assert_eq!(answers(&udp(peer.dns, &web).await), vec!["10.96.0.10"]);
}

/// A client stalled in the middle of a request does not keep the peer from stopping:
/// open HTTP requests get a bounded drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http_client_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt as _;
    let peer = TestPeer::start("east", &[("east", "services: []\n")], "").await;
    let mut stalled = tokio::net::TcpStream::connect(peer.ops()).await.unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The request is in the server's hands (half its headers read) before the stop.
    assert_eq!(http_get(peer.ops(), "/healthz").await.status, 200);
    let TestPeer { app, dir, .. } = peer;
    tokio::time::timeout(std::time::Duration::from_secs(20), app.shutdown())
        .await
        .expect("shutdown finished despite the stalled client");
    drop((stalled, dir));
}

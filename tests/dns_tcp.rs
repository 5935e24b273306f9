//! DNS over TCP (RFC 7766) against a real listener: pipelining, the idle timeout,
//! per-client connection limits, and answers too large for UDP or even for one
//! 65,535-octet TCP message.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EAST: &str = r#"
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80}]
    cluster_ips: [10.96.0.10]
    endpoints: [{address: 10.1.0.5}]
  - name: api
    namespace: shop
    ports: [{name: https, port: 443}]
    cluster_ips: [10.96.0.20, "fd00::20"]
    endpoints: [{address: 10.1.1.5}]
"#;

/// Frames `bytes` for TCP (two-octet length prefix).
fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A query's bytes with a chosen ID.
fn with_id(q: &Q, id: u16) -> Vec<u8> {
    let mut bytes = q.to_bytes();
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes
}

/// Waits (up to `limit`) for the server to close `stream`: EOF or a reset. Panics if
/// data arrives or the connection is still open after `limit`.
async fn expect_closed(stream: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("expected a close, got {n} octets: {:?}", &buf[..n]),
        Err(_) => panic!("connection still open after {limit:?}"),
    }
}

/// One query on an open connection: `Some(reply)`, or `None` if the server closed it.
async fn ask(stream: &mut TcpStream, q: &Q) -> Option<Message> {
    // A write may fail if the server already reset the connection.
    stream.write_all(&frame(&q.to_bytes())).await.ok()?;
    let reply = tcp_recv(stream).await?;
    Some(Message::from_vec(&reply).expect("reply decodes"))
}

fn web() -> Q {
    Q::new("web.default.east.fleet.", RecordType::A)
}

#[tokio::test]
async fn pipelined_queries_on_one_connection_are_all_answered() {
    let peer = TestPeer::start("east", &[("east", EAST)], "").await;
    let cases: Vec<(Q, Vec<&str>)> = vec![
        (web(), vec!["10.96.0.10"]),
        (
            Q::new("api.shop.east.fleet.", RecordType::A).edns(1232),
            vec!["10.96.0.20"],
        ),
        (
            Q::new("api.shop.east.fleet.", RecordType::AAAA),
            vec!["fd00::20"],
        ),
        (
            Q::new("_http._tcp.web.default.east.fleet.", RecordType::SRV),
            vec!["0 100 80 web.default.east.fleet."],
        ),
        (Q::new("nope.default.east.fleet.", RecordType::A), vec![]),
        (
            Q::new("dns-version.fleet.", RecordType::TXT),
            vec!["fleetdns-1"],
        ),
    ];
    // Every case several times, all written at once before reading anything.
    let mut expected: HashMap<u16, (String, Vec<&str>)> = HashMap::new();
    let mut out = Vec::new();
    for round in 0..5u16 {
        for (i, (q, answer)) in cases.iter().enumerate() {
            let id = 0x1000 + round * 0x100 + i as u16;
            out.extend(frame(&with_id(q, id)));
            expected.insert(id, (q.name.clone(), answer.clone()));
        }
    }
    let mut stream = TcpStream::connect(peer.dns).await.expect("connect");
    stream.write_all(&out).await.expect("write");
    // And one more query written an octet at a time, split across segments.
    let last_id = 0x2222;
    for b in frame(&with_id(&web(), last_id)) {
        stream.write_all(&[b]).await.expect("write");
        stream.flush().await.expect("flush");
    }
    expected.insert(last_id, (web().name, vec!["10.96.0.10"]));

    while !expected.is_empty() {
        let reply = tcp_recv(&mut stream)
            .await
            .expect("the server closed the connection early");
        let m = Message::from_vec(&reply).expect("reply decodes");
        let (name, answer) = expected
            .remove(&m.metadata.id)
            .unwrap_or_else(|| panic!("unexpected or repeated ID {}", m.metadata.id));
        assert_eq!(m.queries[0].name().to_ascii(), name);
        assert!(m.metadata.authoritative);
        assert_eq!(answers(&m), answer, "{name}");
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let peer = TestPeer::start_opts(
        "east",
        &[("east", EAST)],
        PeerOptions {
            dns: "tcp_idle_timeout: 300ms",
            wait_ready: true,
            ..PeerOptions::default()
        },
    )
    .await;
    // Generous next to the configured 300 ms, and still half the 10 s default, so a
    // close within it shows that the setting took effect.
    let limit = Duration::from_secs(5);

    // Never a query.
    let mut silent = TcpStream::connect(peer.dns).await.expect("connect");
    // Answered, then idle.
    let mut used = TcpStream::connect(peer.dns).await.expect("connect");
    let m = ask(&mut used, &web()).await.expect("an answer");
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
    // A length announced, the message never sent.
    let mut stalled = TcpStream::connect(peer.dns).await.expect("connect");
    stalled.write_all(&[0, 40, 0, 1]).await.expect("write");

    expect_closed(&mut silent, limit).await;
    expect_closed(&mut used, limit).await;
    expect_closed(&mut stalled, limit).await;

    // The server released them: no connection counts as open any more.
    wait_for("the open-connection gauge to drop to 0", || async {
        (peer.metric("fleetdns_dns_tcp_connections").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        peer.metric("fleetdns_dns_tcp_connections_accepted_total")
            .await,
        3.0
    );
    // The listener itself still serves.
    assert_eq!(answers(&tcp(peer.dns, &web()).await), vec!["10.96.0.10"]);
}

#[tokio::test]
async fn a_client_over_its_connection_limit_is_refused_until_it_closes_one() {
    let peer = TestPeer::start_opts(
        "east",
        &[("east", EAST)],
        PeerOptions {
            dns: "max_tcp_per_client: 2",
            wait_ready: true,
            ..PeerOptions::default()
        },
    )
    .await;
    let rejected = "fleetdns_dns_tcp_connections_rejected_total{reason=\"per_client\"}";
    assert_eq!(peer.metric(rejected).await, 0.0);

    let mut first = TcpStream::connect(peer.dns).await.expect("connect");
    let mut second = TcpStream::connect(peer.dns).await.expect("connect");
    for c in [&mut first, &mut second] {
        let m = ask(c, &web()).await.expect("an answer within the limit");
        assert_eq!(answers(&m), vec!["10.96.0.10"]);
    }

    // The third is closed without an answer.
    let mut third = TcpStream::connect(peer.dns).await.expect("connect");
    assert!(
        ask(&mut third, &web()).await.is_none(),
        "a third connection from the same client was served"
    );
    assert_eq!(peer.metric(rejected).await, 1.0);

    // The first two are unaffected.
    for c in [&mut first, &mut second] {
        let m = ask(c, &web()).await.expect("still served");
        assert_eq!(answers(&m), vec!["10.96.0.10"]);
    }

    // The limit is per client address: another client (127.0.0.2 is loopback too) is
    // served meanwhile.
    let other = tokio::net::TcpSocket::new_v4().expect("socket");
    other
        .bind("127.0.0.2:0".parse().unwrap())
        .expect("bind 127.0.0.2");
    let mut other = other.connect(peer.dns).await.expect("connect");
    let m = ask(&mut other, &web())
        .await
        .expect("another client is served");
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
    assert_eq!(peer.metric(rejected).await, 1.0);

    // Once one closes, a new connection is served (as soon as the server has seen the
    // close).
    drop(first);
    let m = wait_for("a new connection to be served", || async {
        let mut c = TcpStream::connect(peer.dns).await.expect("connect");
        ask(&mut c, &web()).await
    })
    .await;
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
    assert!(peer.metric(rejected).await >= 1.0);
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_does_not_keep_its_slot() {
    // Answers of ~16 kB each, asked for over and over by a client that never reads:
    // the server's writes stall once the socket buffers are full. (No ports: no SRV
    // names to build.)
    let text = headless_file("big", 1_000, v4, |_| None)
        .replace("    ports: [{name: http, port: 80}]\n", "");
    let peer = TestPeer::start_opts(
        "east",
        &[("east", &text)],
        PeerOptions {
            dns: "tcp_idle_timeout: 300ms, max_tcp_per_client: 1",
            wait_ready: true,
            ..PeerOptions::default()
        },
    )
    .await;
    let big = Q::new("big.default.east.fleet.", RecordType::A);
    let mut hog = TcpStream::connect(peer.dns).await.expect("connect");
    let m = ask(&mut hog, &big).await.expect("an answer");
    assert_eq!(m.answers.len(), 1_000);
    // 2,000 queries, 32 MB of answers: far more than the socket buffers hold. Written
    // from a task, since the server may stop reading (and then this write stalls).
    let mut out = Vec::new();
    for _ in 0..2_000 {
        out.extend(frame(&big.to_bytes()));
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let _ = hog.write_all(&out).await;
        // Keep the connection open (and unread) until the test is over.
        let _ = done_rx.await;
        drop(hog);
    });

    // The stalled connection must not hold the client's only slot forever: the server
    // gives up on it and serves a new connection.
    let m = wait_for("a new connection to be served", || async {
        let mut c = TcpStream::connect(peer.dns).await.expect("connect");
        ask(&mut c, &big).await
    })
    .await;
    assert_eq!(m.answers.len(), 1_000);
    let _ = done_tx.send(());
    writer.await.expect("writer task");
}

/// A services file with one headless service of `n` ready endpoints; `address(i)` and
/// `hostname(i)` give each endpoint.
fn headless_file(
    name: &str,
    n: usize,
    address: impl Fn(usize) -> IpAddr,
    hostname: impl Fn(usize) -> Option<String>,
) -> String {
    let mut text = format!(
        "services:\n  - name: {name}\n    namespace: default\n    headless: true\n    ports: [{{name: http, port: 80}}]\n    endpoints:\n"
    );
    for i in 0..n {
        let host = hostname(i)
            .map(|h| format!(", hostname: {h}"))
            .unwrap_or_default();
        text.push_str(&format!("      - {{address: \"{}\"{host}}}\n", address(i)));
    }
    text
}

fn v4(i: usize) -> IpAddr {
    IpAddr::from([10, 3, (i / 250) as u8, (i % 250 + 1) as u8])
}

#[tokio::test]
async fn a_headless_service_with_1000_endpoints_resolves_completely_over_tcp() {
    let text = headless_file("big", 1_000, v4, |_| None);
    let peer = TestPeer::start("east", &[("east", &text)], "").await;
    let all: BTreeSet<IpAddr> = (0..1_000).map(v4).collect();

    let a = Q::new("big.default.east.fleet.", RecordType::A);
    let m = tcp(peer.dns, &a).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.truncation);
    let got: BTreeSet<IpAddr> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            other => panic!("not an A record: {other:?}"),
        })
        .collect();
    assert_eq!(m.answers.len(), 1_000);
    assert_eq!(got, all);

    let srv = Q::new("_http._tcp.big.default.east.fleet.", RecordType::SRV);
    let m = tcp(peer.dns, &srv).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1_000);
    let targets: BTreeSet<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => {
                assert_eq!(s.port, 80);
                s.target.to_ascii()
            }
            other => panic!("not an SRV record: {other:?}"),
        })
        .collect();
    let expected: BTreeSet<String> = all
        .iter()
        .map(|ip| {
            format!(
                "{}.big.default.east.fleet.",
                ip.to_string().replace('.', "-")
            )
        })
        .collect();
    assert_eq!(targets, expected);

    // Over UDP the same answer does not fit: TC=1, AA, the question echoed, nothing
    // else (with an OPT when the query had one).
    for q in [a.clone(), a.clone().edns(1232), srv.clone()] {
        let bytes = q.to_bytes();
        let reply = udp_raw(peer.dns, &bytes, TIMEOUT).await.expect("a reply");
        let h = RawHeader::parse(&reply);
        assert!(h.tc, "TC expected for {}", q.name);
        assert!(h.aa);
        assert_eq!(h.rcode, 0);
        assert_eq!((h.qdcount, h.ancount, h.nscount), (1, 0, 0));
        let question_end = 12 + Message::from_vec(&bytes).unwrap().queries[0].name().len() + 1 + 4;
        assert_eq!(
            reply[12..question_end],
            bytes[12..question_end],
            "question echoed"
        );
        assert_eq!(raw_opts(&reply).len(), usize::from(q.edns.is_some()));
        assert_eq!(h.arcount, u16::from(q.edns.is_some()));
    }
    assert_eq!(
        peer.metric("fleetdns_dns_responses_truncated_total").await,
        3.0
    );
}

fn v6(i: usize) -> IpAddr {
    format!("fd00:5::{:x}", i + 1).parse().unwrap()
}

/// A 61-octet label, the same length for every endpoint.
fn long_host(i: usize) -> String {
    format!("host-{i:05}-{}", "x".repeat(50))
}

#[tokio::test]
async fn an_answer_over_65535_octets_is_capped_over_tcp_and_counted() {
    // Each SRV record carries its whole 87-octet target (RFC 2782: no compression), so
    // 1,000 of them are over 100,000 octets; the AAAA RRset (28 octets a record) fits.
    const N: usize = 1_000;
    let text = headless_file("huge", N, v6, |i| Some(long_host(i)));
    let peer = TestPeer::start("east", &[("east", &text)], "").await;
    let capped = "fleetdns_dns_tcp_answers_capped_total";
    assert_eq!(peer.metric(capped).await, 0.0);

    let srv = Q::new("_http._tcp.huge.default.east.fleet.", RecordType::SRV).edns(1232);
    let reply = tcp_raw(peer.dns, &srv.to_bytes()).await;
    assert!(reply.len() <= 65_535);
    let m = Message::from_vec(&reply).expect("decodes");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.truncation, "TC is a UDP signal");
    assert!(m.edns.is_some(), "the OPT survives the cap");
    assert!(m.additionals.is_empty(), "additionals are dropped first");
    let n = m.answers.len();
    assert!(n > 0 && n < N, "{n} SRV records");
    let hosts: BTreeSet<String> = (0..N)
        .map(|i| format!("{}.huge.default.east.fleet.", long_host(i)))
        .collect();
    let mut seen = BTreeSet::new();
    for r in &m.answers {
        let RData::SRV(s) = &r.data else {
            panic!("not an SRV record: {r:?}")
        };
        assert_eq!(s.port, 80);
        let target = s.target.to_ascii();
        assert!(hosts.contains(&target), "unknown target {target}");
        assert!(seen.insert(target), "duplicate SRV record");
    }
    // As many as fit: every SRV record has the same size here, and one more would not.
    let header_question_opt = 12 + (srv.name.len() + 1 + 4) + 11;
    let per_record = (reply.len() - header_question_opt) / n;
    assert_eq!(reply.len(), header_question_opt + n * per_record);
    assert!(
        reply.len() + per_record > 65_535,
        "room for more SRV records: {} octets, {n} records",
        reply.len()
    );
    assert_eq!(peer.metric(capped).await, 1.0);
    // A capped answer is still a NOERROR answer.
    assert_eq!(
        peer.metric("fleetdns_dns_queries_total{qtype=\"SRV\",rcode=\"NOERROR\"}")
            .await,
        1.0
    );

    // The same service's AAAA RRset fits whole, and is not counted as capped.
    let aaaa = Q::new("huge.default.east.fleet.", RecordType::AAAA).edns(1232);
    let m = tcp(peer.dns, &aaaa).await;
    let got: BTreeSet<IpAddr> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::AAAA(a) => IpAddr::V6(a.0),
            other => panic!("not an AAAA record: {other:?}"),
        })
        .collect();
    assert_eq!(got, (0..N).map(v6).collect());
    assert_eq!(peer.metric(capped).await, 1.0);
}

//! DNS over TLS (RFC 7858) with Knot's `kdig +tls` as the client: a DoT listener
//! answers exactly what TCP answers, large answers included, and a client that does
//! not speak TLS gets nothing.

mod common;
mod support;

use std::time::Duration;

use common::{PeerOptions, TestPeer, demo_files, metric_value};
use support::{kdig, parse_dig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A headless service with enough ready pods that its SRV answer needs a stream.
fn big_headless() -> String {
    let mut yaml = String::from(
        "services:\n  - name: big\n    namespace: default\n    headless: true\n    ports: [{name: http, port: 80}]\n    endpoints:\n",
    );
    for i in 0..200 {
        yaml.push_str(&format!(
            "      - {{address: 10.9.{}.{}, hostname: pod-{i}, ready: true}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_answers_exactly_what_tcp_answers() {
    let certs = tempfile::tempdir().unwrap();
    let server = rcgen::generate_simple_self_signed(vec!["dns.fleet.test".to_string()]).unwrap();
    let cert = certs.path().join("dot.pem");
    let key = certs.path().join("dot.key");
    std::fs::write(&cert, server.cert.pem()).unwrap();
    std::fs::write(&key, server.signing_key.serialize_pem()).unwrap();
    let big = big_headless();
    let mut files = demo_files();
    files.push(("north", &big));
    let dns = format!(
        "tls_listen: [\"127.0.0.1:0\"], tls_cert: \"{}\", tls_key: \"{}\"",
        cert.display(),
        key.display()
    );
    let peer = TestPeer::start_opts(
        "east",
        &files,
        PeerOptions {
            dns: &dns,
            // Pod addresses of other clusters are served on a connected network only.
            extra: "network: {connected: true}",
            wait_ready: true,
            ..PeerOptions::default()
        },
    )
    .await;
    let dot = peer.app.dot_addrs[0];

    for (name, qtype, rcode) in [
        ("web.default.svc.fleet.", "A", "NOERROR"),
        ("web.default.west.fleet.", "A", "NOERROR"),
        ("catalog.shop.svc.fleet.", "AAAA", "NOERROR"),
        ("_http._tcp.web.default.svc.fleet.", "SRV", "NOERROR"),
        ("_postgres._tcp.db.shop.east.fleet.", "SRV", "NOERROR"),
        ("east.fleet.", "TXT", "NOERROR"),
        ("nope.default.svc.fleet.", "A", "NXDOMAIN"),
        ("fleet.", "SOA", "NOERROR"),
        ("_http._tcp.big.default.north.fleet.", "SRV", "NOERROR"),
    ] {
        let tcp = parse_dig(&kdig(peer.dns, &["+tcp", name, qtype]));
        let tls = parse_dig(&kdig(dot, &["+tls", name, qtype]));
        assert_eq!(tcp.rcode, rcode, "{name} {qtype} over TCP");
        assert_eq!(tls, tcp, "{name} {qtype}");
    }
    let big = parse_dig(&kdig(
        dot,
        &["+tls", "_http._tcp.big.default.north.fleet.", "SRV"],
    ));
    assert_eq!(
        big.answer.len(),
        200,
        "the whole answer, no truncation: {big:?}"
    );
    assert!(!big.has_flag("tc"));

    // Plain DNS over TCP to the DoT port: the handshake fails and no answer comes.
    let mut stream = tokio::net::TcpStream::connect(dot).await.unwrap();
    let query =
        common::Q::new("web.default.svc.fleet.", hickory_proto::rr::RecordType::A).to_bytes();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await.unwrap();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server closes the connection");
    // A TLS alert at most, never a DNS message.
    if let Ok(n) = read {
        assert!(n == 0 || buf[0] == 0x15, "not a TLS alert: {:?}", &buf[..n]);
    }

    let text = peer.app.metrics.encode();
    assert_eq!(
        metric_value(
            &text,
            "fleetdns_dns_malformed_packets_total{transport=\"tls\"}"
        ),
        Some(0.0)
    );
    assert!(
        metric_value(
            &text,
            "fleetdns_dns_queries_total{qtype=\"SRV\",rcode=\"NOERROR\"}"
        )
        .unwrap()
            >= 7.0
    );
}

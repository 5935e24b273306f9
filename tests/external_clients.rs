//! Real DNS clients (`dig` from BIND, `kdig` from Knot) against a running fleetdns peer
//! over the demo fleet: what a pod's tools and an operator see (DESIGN.md §1, §7).
//! Record order is never compared: answers are sets.

mod common;
mod support;

use std::fmt::Write as _;

use common::{TestPeer, demo_files};
use support::{DigAnswer, dig, kdig, parse_dig};

/// The apex SOA without its serial (which is the wall-clock second of the view change).
const SOA_PREFIX: &str = "fleet. 5 IN SOA ns.fleet. hostmaster.fleet. ";
const SOA_SUFFIX: &str = " 7200 1800 86400 5";

/// Whether a dig/kdig output shows an OPT record in the reply (dig: `OPT PSEUDOSECTION`,
/// kdig: `EDNS PSEUDOSECTION`), and the UDP size it advertises.
fn opt_udp_size(output: &str) -> Option<u16> {
    let reply = first_message(output);
    if !reply.contains("OPT PSEUDOSECTION:") && !reply.contains("EDNS PSEUDOSECTION:") {
        return None;
    }
    let size = reply
        .split_once("udp: ")
        .or_else(|| reply.split_once("UDP size: "))
        .map(|(_, rest)| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .expect("an OPT line with the UDP size");
    Some(size.parse().expect("a UDP size"))
}

/// The text of the first message of an output (kdig prints a second one after a TCP retry
/// only with `+ignore` off; dig may print more with `+qr`).
fn first_message(output: &str) -> &str {
    let start = output.find("->>HEADER<<-").expect("a header");
    let rest = &output[start + 1..];
    match rest.find("->>HEADER<<-") {
        Some(next) => &output[start..start + 1 + next],
        None => &output[start..],
    }
}

/// The transport the reply came over, from dig's `;; SERVER: ...(UDP)` or kdig's
/// `;; From ...(UDP)` line.
fn transport(output: &str) -> &'static str {
    let line = output
        .lines()
        .find(|l| l.starts_with(";; SERVER:") || l.starts_with(";; From "))
        .unwrap_or_else(|| panic!("no server line in:\n{output}"));
    if line.contains("(UDP)") {
        "UDP"
    } else if line.contains("(TCP)") {
        "TCP"
    } else {
        panic!("unknown transport in {line}")
    }
}

/// An authoritative answer from fleetdns: `aa` set, `ra` clear (no recursion), `rd`
/// echoed (dig and kdig set it).
fn assert_authoritative(a: &DigAnswer, what: &str) {
    assert!(a.has_flag("qr") && a.has_flag("aa"), "{what}: {a:?}");
    assert!(a.has_flag("rd"), "{what}: RD is copied: {a:?}");
    assert!(!a.has_flag("ra"), "{what}: no recursion available: {a:?}");
    assert!(!a.has_flag("tc"), "{what}: {a:?}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Runs dig with `args` (plus `+tcp` when asked), checks the transport, and parses.
fn dig_over(peer: &TestPeer, tcp: bool, args: &[&str]) -> (DigAnswer, String) {
    let mut all = Vec::from(args);
    if tcp {
        all.insert(0, "+tcp");
    }
    let out = dig(peer.dns, &all);
    assert_eq!(
        transport(&out),
        if tcp { "TCP" } else { "UDP" },
        "{args:?}:\n{out}"
    );
    (parse_dig(&out), out)
}

/// dig over UDP and TCP: merged and per-cluster names (both families), SRV with the
/// targets' addresses in the additional section, the cluster TXT, NXDOMAIN and NODATA
/// with the SOA (TTL 5) in authority, AA on and RA off everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_dig_answers_over_udp_and_tcp() {
    let peer = TestPeer::start("east", &demo_files(), "").await;
    for tcp in [false, true] {
        let over = if tcp { "TCP" } else { "UDP" };

        // Merged, local-preferred: east's ClusterIP only.
        let (a, out) = dig_over(&peer, tcp, &["web.default.svc.fleet.", "A"]);
        assert_eq!(a.rcode, "NOERROR", "{over}:\n{out}");
        assert_authoritative(&a, &out);
        assert_eq!(
            a.answer,
            ["web.default.svc.fleet. 5 IN A 10.96.0.10"],
            "{out}"
        );
        assert_eq!(opt_udp_size(&out), Some(1232), "dig sends EDNS:\n{out}");

        // Merged, exported by west only (policy all): west's ingress, both families.
        let (a, out) = dig_over(&peer, tcp, &["catalog.shop.svc.fleet.", "AAAA"]);
        assert_eq!(a.rcode, "NOERROR", "{over}:\n{out}");
        assert_authoritative(&a, &out);
        assert_eq!(a.answer_rdata("AAAA"), ["2001:db8:b::30"], "{out}");

        // Per-cluster AAAA of the dual-stack service; its A is there too.
        let (a, out) = dig_over(&peer, tcp, &["api.shop.east.fleet.", "AAAA"]);
        assert_eq!(a.rcode, "NOERROR", "{over}:\n{out}");
        assert_authoritative(&a, &out);
        assert_eq!(
            a.answer,
            ["api.shop.east.fleet. 5 IN AAAA fd00:10:96::20"],
            "{out}"
        );
        let (a, out) = dig_over(&peer, tcp, &["api.shop.east.fleet.", "A"]);
        assert_eq!(a.answer_rdata("A"), ["10.96.0.20"], "{out}");

        // Headless SRV: one record per ready endpoint, the targets' A in additional.
        let (a, out) = dig_over(&peer, tcp, &["_postgres._tcp.db.shop.east.fleet.", "SRV"]);
        assert_eq!(a.rcode, "NOERROR", "{over}:\n{out}");
        assert_authoritative(&a, &out);
        assert_eq!(
            a.answer_rdata("SRV"),
            [
                "0 100 5432 db-0.db.shop.east.fleet.",
                "0 100 5432 db-1.db.shop.east.fleet."
            ],
            "{out}"
        );
        assert_eq!(
            sorted(a.additional.clone()),
            [
                "db-0.db.shop.east.fleet. 5 IN A 10.1.2.10",
                "db-1.db.shop.east.fleet. 5 IN A 10.1.2.11"
            ],
            "{out}"
        );

        // A multi-port VIP service's SRV: target the service name, its A and AAAA added.
        let (a, out) = dig_over(&peer, tcp, &["_https._tcp.api.shop.east.fleet.", "SRV"]);
        assert_eq!(
            a.answer,
            ["_https._tcp.api.shop.east.fleet. 5 IN SRV 0 100 443 api.shop.east.fleet."],
            "{out}"
        );
        assert_eq!(
            sorted(a.additional.clone()),
            [
                "api.shop.east.fleet. 5 IN A 10.96.0.20",
                "api.shop.east.fleet. 5 IN AAAA fd00:10:96::20"
            ],
            "{out}"
        );

        // The cluster inventory TXT.
        let (a, out) = dig_over(&peer, tcp, &["east.fleet.", "TXT"]);
        assert_eq!(a.rcode, "NOERROR", "{over}:\n{out}");
        assert_authoritative(&a, &out);
        assert_eq!(
            a.answer_rdata("TXT"),
            [
                r#""cluster=east" "env=demo" "owner=platform-team" "region=us-east" "zone=us-east-1""#
            ],
            "{out}"
        );

        // NXDOMAIN and NODATA (an empty non-terminal): no answer, the SOA in authority.
        for (name, rcode) in [
            ("nope.default.svc.fleet.", "NXDOMAIN"),
            ("_nope._tcp.web.default.east.fleet.", "NXDOMAIN"),
            ("default.east.fleet.", "NOERROR"),
        ] {
            let (a, out) = dig_over(&peer, tcp, &[name, "A"]);
            assert_eq!(a.rcode, rcode, "{name} over {over}:\n{out}");
            assert_authoritative(&a, &out);
            assert!(a.answer.is_empty(), "{out}");
            assert_eq!(a.authority.len(), 1, "{out}");
            let soa = &a.authority[0];
            assert!(
                soa.starts_with(SOA_PREFIX) && soa.ends_with(SOA_SUFFIX),
                "negative TTL 5 SOA: {soa}\n{out}"
            );
        }
    }
    peer.app.shutdown().await;
}

/// kdig with and without EDNS, and the version TXT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_kdig_edns_and_version() {
    let peer = TestPeer::start("east", &demo_files(), "").await;

    let out = kdig(peer.dns, &["+edns", "web.default.svc.fleet.", "A"]);
    let a = parse_dig(&out);
    assert_eq!(a.rcode, "NOERROR", "{out}");
    assert_authoritative(&a, &out);
    assert_eq!(
        a.answer,
        ["web.default.svc.fleet. 5 IN A 10.96.0.10"],
        "{out}"
    );
    assert_eq!(
        opt_udp_size(&out),
        Some(1232),
        "our OPT advertises 1232:\n{out}"
    );

    let out = kdig(peer.dns, &["+noedns", "web.default.svc.fleet.", "A"]);
    let a = parse_dig(&out);
    assert_eq!(a.rcode, "NOERROR", "{out}");
    assert_authoritative(&a, &out);
    assert_eq!(a.answer_rdata("A"), ["10.96.0.10"], "{out}");
    assert_eq!(
        opt_udp_size(&out),
        None,
        "no OPT without one in the query:\n{out}"
    );

    for args in [
        &["dns-version.fleet.", "TXT"][..],
        &["+edns", "dns-version.fleet.", "TXT"],
        &["+tcp", "dns-version.fleet.", "TXT"],
    ] {
        let out = kdig(peer.dns, args);
        let a = parse_dig(&out);
        assert_eq!(a.rcode, "NOERROR", "{out}");
        assert_authoritative(&a, &out);
        assert_eq!(
            a.answer,
            [r#"dns-version.fleet. 5 IN TXT "fleetdns-1""#],
            "{out}"
        );
    }

    // kdig's NXDOMAIN, with EDNS: the OPT comes back on negative answers too.
    let out = kdig(peer.dns, &["+edns", "nope.fleet.", "AAAA"]);
    let a = parse_dig(&out);
    assert_eq!(a.rcode, "NXDOMAIN", "{out}");
    assert_authoritative(&a, &out);
    assert!(opt_udp_size(&out).is_some(), "{out}");
    peer.app.shutdown().await;
}

/// A query with EDNS options fleetdns does not implement (NSID, an unknown option code,
/// a cookie) still gets an OPT back, on every kind of reply; EDNS version 1 gets BADVERS
/// with an OPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_dig_edns_options_still_get_opt() {
    let peer = TestPeer::start("east", &demo_files(), "").await;
    let options: [&[&str]; 4] = [
        &["+nsid"],
        &["+ednsopt=65001:abcd"],
        &["+nsid", "+ednsopt=65001:abcd", "+nocookie"],
        &["+cookie", "+ednsopt=65002"],
    ];
    for opts in options {
        for (name, rcode) in [
            ("web.default.svc.fleet.", "NOERROR"),
            ("nope.fleet.", "NXDOMAIN"),
            ("example.com.", "REFUSED"),
        ] {
            let mut args = opts.to_vec();
            args.extend([name, "A"]);
            let out = dig(peer.dns, &args);
            let a = parse_dig(&out);
            assert_eq!(a.rcode, rcode, "{args:?}:\n{out}");
            assert_eq!(opt_udp_size(&out), Some(1232), "{args:?}:\n{out}");
            assert_eq!(a.has_flag("aa"), rcode != "REFUSED", "{args:?}:\n{out}");
            assert!(!a.has_flag("ra"), "{args:?}:\n{out}");
            if rcode == "NOERROR" {
                assert_eq!(a.answer_rdata("A"), ["10.96.0.10"], "{out}");
            }
        }
    }

    let out = dig(
        peer.dns,
        &[
            "+edns=1",
            "+noednsnegotiation",
            "web.default.svc.fleet.",
            "A",
        ],
    );
    let a = parse_dig(&out);
    assert_eq!(a.rcode, "BADVERS", "{out}");
    assert!(a.answer.is_empty(), "{out}");
    assert_eq!(opt_udp_size(&out), Some(1232), "{out}");
    peer.app.shutdown().await;
}

/// A services file with one headless service of `count` ready endpoints.
fn headless_service(name: &str, count: usize) -> (String, Vec<String>) {
    let mut text = format!(
        "services:\n  - name: {name}\n    namespace: default\n    headless: true\n    addresses: endpoints\n    ports: [{{name: http, port: 80, protocol: TCP}}]\n    endpoints:\n"
    );
    let mut addresses = Vec::new();
    for i in 0..count {
        let address = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        writeln!(
            text,
            "      - {{address: {address}, hostname: {name}-{i}, ready: true}}"
        )
        .expect("write");
        addresses.push(address);
    }
    addresses.sort();
    (text, addresses)
}

/// A 100-address answer (about 1.6 kB): over UDP with a 512-octet buffer kdig sees TC
/// (with `+ignore`, which stops its TCP retry) and no partial RRset; without `+ignore` it
/// retries over TCP by itself and gets the whole set, as does `+tcp`; dig the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_kdig_large_answer_truncates_then_tcp() {
    let (big, addresses) = headless_service("big", 100);
    let peer = TestPeer::start("east", &[("east", &big)], "").await;

    for name in ["big.default.east.fleet.", "big.default.svc.fleet."] {
        for args in [
            &["+bufsize=512", "+ignore"][..],
            &["+noedns", "+ignore"],
            &["+edns", "+ignore"],
        ] {
            let mut all = args.to_vec();
            all.extend([name, "A"]);
            let out = kdig(peer.dns, &all);
            let a = parse_dig(&out);
            assert_eq!(transport(&out), "UDP", "{out}");
            assert_eq!(a.rcode, "NOERROR", "{all:?}:\n{out}");
            assert!(a.has_flag("tc") && a.has_flag("aa"), "{all:?}:\n{out}");
            assert!(a.answer.is_empty(), "no partial RRset: {all:?}:\n{out}");
            assert_eq!(
                opt_udp_size(&out).is_some(),
                args[0] != "+noedns",
                "{all:?}:\n{out}"
            );
        }

        for args in [&["+bufsize=512"][..], &["+tcp"], &["+tcp", "+noedns"]] {
            let mut all = args.to_vec();
            all.extend([name, "A"]);
            let out = kdig(peer.dns, &all);
            let a = parse_dig(&out);
            assert_eq!(transport(&out), "TCP", "{all:?}:\n{out}");
            assert_eq!(a.rcode, "NOERROR", "{all:?}:\n{out}");
            assert_authoritative(&a, &out);
            assert_eq!(a.answer_rdata("A"), addresses, "{all:?}:\n{out}");
        }

        // dig retries over TCP on TC the same way.
        let out = dig(peer.dns, &["+bufsize=512", name, "A"]);
        let a = parse_dig(&out);
        assert_eq!(transport(&out), "TCP", "{out}");
        assert_eq!(a.answer_rdata("A"), addresses, "{out}");
        let out = dig(peer.dns, &["+bufsize=512", "+ignore", name, "A"]);
        let a = parse_dig(&out);
        assert!(a.has_flag("tc") && a.answer.is_empty(), "{out}");
    }

    // The headless SRV set (100 records, targets' addresses in additional) over TCP.
    let out = kdig(
        peer.dns,
        &["+tcp", "_http._tcp.big.default.east.fleet.", "SRV"],
    );
    let a = parse_dig(&out);
    let mut targets: Vec<String> = (0..100)
        .map(|i| format!("0 100 80 big-{i}.big.default.east.fleet."))
        .collect();
    targets.sort();
    assert_eq!(a.answer_rdata("SRV"), targets, "{out}");
    peer.app.shutdown().await;
}

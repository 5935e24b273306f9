//! Smoke test of the external-tools harness, using only the real tools:
//! Knot serves a tiny `fleet.` zone, dig and kdig query it directly, and
//! unbound and dnsmasq resolve through it. Every test here is named
//! `external_*` so the group can be selected with `-E 'test(/^external_/)'`.

mod support;

use std::time::Duration;

use support::{
    DigAnswer, Dnsmasq, Knot, RCODE_NOERROR, TYPE_A, Unbound, dig, kdig, parse_dig, query_udp,
    wait_until,
};

const ZONE: &str = "$ORIGIN fleet.
$TTL 5
@                        5 IN SOA ns.fleet. hostmaster.fleet. 1 7200 1800 86400 5
@                          IN NS  ns.fleet.
ns                         IN A   127.0.0.1
web.default.east.fleet.  5 IN A   10.0.0.1
_http._tcp.web.default.east.fleet. 5 IN SRV 0 100 80 web.default.east.fleet.
";

const WEB: &str = "web.default.east.fleet.";
const SOA: &str = "fleet. 5 IN SOA ns.fleet. hostmaster.fleet. 1 7200 1800 86400 5";

fn assert_web_answer(answer: &DigAnswer, expect_aa: bool) {
    assert_eq!(answer.rcode, "NOERROR", "{answer:?}");
    assert_eq!(answer.has_flag("aa"), expect_aa, "{answer:?}");
    assert_eq!(answer.answer_rdata("A"), ["10.0.0.1"], "{answer:?}");
}

fn assert_nxdomain_with_soa(answer: &DigAnswer) {
    assert_eq!(answer.rcode, "NXDOMAIN", "{answer:?}");
    assert!(answer.has_flag("aa"), "{answer:?}");
    assert!(answer.answer.is_empty(), "{answer:?}");
    assert_eq!(answer.authority, [SOA], "{answer:?}");
}

#[test]
fn external_knot_answers_dig() {
    let knot = Knot::start("fleet.", ZONE);

    let web = parse_dig(&dig(knot.addr(), &[WEB, "A"]));
    assert_web_answer(&web, true);
    assert_eq!(web.answer, ["web.default.east.fleet. 5 IN A 10.0.0.1"]);

    let over_tcp = parse_dig(&dig(knot.addr(), &["+tcp", WEB, "A"]));
    assert_web_answer(&over_tcp, true);

    assert_nxdomain_with_soa(&parse_dig(&dig(knot.addr(), &["nope.fleet.", "A"])));
}

#[test]
fn external_knot_answers_kdig() {
    let knot = Knot::start("fleet", ZONE);

    let web = parse_dig(&kdig(knot.addr(), &[WEB, "A"]));
    assert_web_answer(&web, true);
    assert_eq!(web.answer, ["web.default.east.fleet. 5 IN A 10.0.0.1"]);

    let srv = parse_dig(&kdig(
        knot.addr(),
        &["+tcp", "_http._tcp.web.default.east.fleet.", "SRV"],
    ));
    assert_eq!(srv.rcode, "NOERROR", "{srv:?}");
    assert_eq!(
        srv.answer_rdata("SRV"),
        ["0 100 80 web.default.east.fleet."]
    );
    assert_eq!(srv.additional, ["web.default.east.fleet. 5 IN A 10.0.0.1"]);

    assert_nxdomain_with_soa(&parse_dig(&kdig(knot.addr(), &["nope.fleet.", "A"])));
}

#[test]
fn external_unbound_stub_resolves_through_knot() {
    let knot = Knot::start("fleet.", ZONE);
    let unbound = Unbound::start_stub("fleet.", knot.addr());
    wait_until(
        Duration::from_secs(10),
        "unbound to get NOERROR from knot",
        || query_udp(unbound.addr(), WEB, TYPE_A).filter(|r| r.rcode == RCODE_NOERROR),
    );

    assert_web_answer(&parse_dig(&dig(unbound.addr(), &[WEB, "A"])), false);
    assert_web_answer(&parse_dig(&kdig(unbound.addr(), &[WEB, "A"])), false);
    let absent = parse_dig(&dig(unbound.addr(), &["nope.fleet.", "A"]));
    assert_eq!(absent.rcode, "NXDOMAIN", "{absent:?}\n{}", unbound.log());
}

#[test]
fn external_dnsmasq_forwards_to_knot() {
    let knot = Knot::start("fleet.", ZONE);
    let dnsmasq = Dnsmasq::start_forwarder("fleet", knot.addr());
    wait_until(
        Duration::from_secs(10),
        "dnsmasq to get NOERROR from knot",
        || query_udp(dnsmasq.addr(), WEB, TYPE_A).filter(|r| r.rcode == RCODE_NOERROR),
    );

    let web = parse_dig(&dig(dnsmasq.addr(), &[WEB, "A"]));
    assert_eq!(web.rcode, "NOERROR", "{web:?}\n{}", dnsmasq.log());
    assert_eq!(web.answer_rdata("A"), ["10.0.0.1"], "{web:?}");
    let web = parse_dig(&kdig(dnsmasq.addr(), &["+tcp", WEB, "A"]));
    assert_eq!(web.answer_rdata("A"), ["10.0.0.1"], "{web:?}");
}

#[test]
fn external_knot_check_zone() {
    assert_eq!(Knot::check_zone("fleet.", ZONE), Ok(()));
    let broken = format!("{ZONE}web.default.east.fleet. 5 IN CNAME ns.fleet.\n");
    let err = Knot::check_zone("fleet.", &broken).expect_err("CNAME next to A must be rejected");
    assert!(err.contains("fleet."), "{err}");
}

#[test]
fn external_parse_dig_reads_both_output_formats() {
    let dig_out = ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 11174
;; flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;nope.fleet.\t\t\tIN\tA

;; AUTHORITY SECTION:
fleet.\t\t\t5\tIN\tSOA\tns.fleet. hostmaster.fleet. 1 7200 1800 86400 5

;; Query time: 0 msec
";
    let kdig_out = ";; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 984
;; Flags: qr aa rd; QUERY: 1; ANSWER: 2; AUTHORITY: 0; ADDITIONAL: 1

;; EDNS PSEUDOSECTION:
;; Version: 0; flags: ; UDP size: 1232 B; ext-rcode: NOERROR

;; QUESTION SECTION:
;; web.default.east.fleet.\t\tIN\tA

;; ANSWER SECTION:
web.default.east.fleet.\t5\tIN\tA\t10.0.0.2
web.default.east.fleet.\t5\tIN\tA\t10.0.0.1

;; ADDITIONAL SECTION:
ns.fleet.           \t5\tIN\tA\t127.0.0.1

;; Received 56 B
";
    assert_nxdomain_with_soa(&parse_dig(dig_out));
    let parsed = parse_dig(kdig_out);
    assert_eq!(parsed.rcode, "NOERROR");
    assert_eq!(parsed.flags, ["qr", "aa", "rd"]);
    assert_eq!(parsed.answer_rdata("A"), ["10.0.0.1", "10.0.0.2"]);
    assert!(parsed.authority.is_empty());
    assert_eq!(parsed.additional, ["ns.fleet. 5 IN A 127.0.0.1"]);
}

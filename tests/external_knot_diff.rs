//! Zone-file equivalence with Knot DNS: what a running fleetdns peer answers must be
//! what Knot answers when it serves the zone file `fleetdns::app::dump_zone` writes for
//! the same config (DESIGN.md §1: "`dump-zone` loaded into another server gives the same
//! rcodes"; §7: a real, independently written server as the oracle).
//!
//! Knot gets exactly the zone the peer serves: the dumped file with the live peer's SOA
//! serial (dump_zone stamps its own second), and it must pass Knot's semantic checks.
//!
//! For every owner name of the zone file, every empty non-terminal above one (e.g.
//! `default.east.fleet.`, `_tcp.web.default.svc.fleet.`), and absent names (a `nope`
//! child of each of those names, and `_nope` service labels under every `_tcp`), both
//! servers get the same UDP queries: A, AAAA, SRV, TXT, SOA, NS and the absent type MX;
//! without EDNS and with EDNS sizes 512 and 1232; with and without RD. They must give the
//! same rcode, the same QR/AA/TC/RD/RA flags, an OPT exactly when the query had one, the
//! same answer RRset as a set (name, TTL, class, type, rdata: sorted, never in order), the
//! same authority SOA in negative answers, and the same additional records as a set,
//! except where not all additional records fit (see [`additional_cut_for_space`]).
//!
//! Out of the comparison, because both servers' answers are valid and differ by design:
//! class ANY, qtypes OPT and ANY, QDCOUNT ≠ 1 and opcodes other than QUERY. Every
//! difference is collected and reported at once, never just the first one.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Q, TestPeer, demo_files, udp_raw};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use support::Knot;

const APEX: &str = "fleet.";

/// The query types compared, MX standing for "a type no name has".
const QTYPES: [RecordType; 7] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::SOA,
    RecordType::NS,
    RecordType::MX,
];

/// A reply reduced to what both servers must agree on; sections are sorted sets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Canonical {
    rcode: ResponseCode,
    qr: bool,
    aa: bool,
    tc: bool,
    rd: bool,
    ra: bool,
    opt: bool,
    answer: Vec<String>,
    /// The authority SOA of a negative answer (NXDOMAIN or NODATA); other authority
    /// records (e.g. an NS set some servers add to positive answers) are not compared.
    negative_soa: Vec<String>,
    additional: Vec<String>,
}

impl Canonical {
    fn without_additional(&self) -> Canonical {
        Canonical {
            additional: Vec::new(),
            ..self.clone()
        }
    }
}

/// Additional data is optional (RFC 2181 §9): when it does not all fit, a server may
/// send part of it (Knot fills what fits) or none (fleetdns drops the section, DESIGN.md
/// §1), without TC. A differing additional section is accepted only when both are
/// subsets of the complete one (Knot's over TCP) and fleetdns's reply with the complete
/// section would not fit this query's UDP limit.
async fn additional_cut_for_space(
    ours: &Message,
    theirs: &Message,
    knot: SocketAddr,
    q: &Q,
) -> bool {
    let complete = common::tcp(knot, q).await;
    let complete_set: BTreeSet<String> = sorted(&complete.additionals).into_iter().collect();
    let within = |m: &Message| {
        sorted(&m.additionals)
            .iter()
            .all(|r| complete_set.contains(r))
    };
    let mut full = ours.clone();
    full.additionals = complete.additionals.clone();
    let full_size = full.to_vec().expect("encode").len();
    let limit = q
        .edns
        .map_or(512, |size| usize::from(size.clamp(512, 1232)));
    within(ours) && within(theirs) && full_size > limit
}

fn record_text(r: &Record) -> String {
    format!(
        "{} {} {} {} {}",
        r.name.to_ascii().to_ascii_lowercase(),
        r.ttl,
        r.dns_class,
        r.record_type(),
        r.data
    )
}

fn sorted(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(record_text).collect();
    v.sort();
    v
}

fn canonical(m: &Message) -> Canonical {
    let rcode = m.metadata.response_code;
    let negative =
        rcode == ResponseCode::NXDomain || (rcode == ResponseCode::NoError && m.answers.is_empty());
    let negative_soa = if negative {
        let soa: Vec<Record> = m
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .cloned()
            .collect();
        sorted(&soa)
    } else {
        Vec::new()
    };
    Canonical {
        rcode,
        qr: m.metadata.message_type == hickory_proto::op::MessageType::Response,
        aa: m.metadata.authoritative,
        tc: m.metadata.truncation,
        rd: m.metadata.recursion_desired,
        ra: m.metadata.recursion_available,
        opt: m.edns.is_some(),
        answer: sorted(&m.answers),
        negative_soa,
        additional: sorted(&m.additionals),
    }
}

/// One UDP query with a per-try timeout and retries (loopback UDP is not lossless
/// under load), checking the reply's ID.
async fn ask(server: SocketAddr, q: &Q) -> Message {
    let bytes = q.to_bytes();
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    for _ in 0..5 {
        if let Some(reply) = udp_raw(server, &bytes, Duration::from_secs(2)).await {
            let m = Message::from_vec(&reply)
                .unwrap_or_else(|e| panic!("{server} {} {}: undecodable: {e}", q.name, q.qtype));
            assert_eq!(m.metadata.id, id, "{server} {} {}", q.name, q.qtype);
            return m;
        }
    }
    panic!("no UDP reply from {server} for {} {}", q.name, q.qtype);
}

/// The owner names of an RFC 1035 zone file, absolute and lowercase. Handles `$ORIGIN`,
/// `@`, relative owners and blank-owner continuation lines.
fn owner_names(zone: &str) -> BTreeSet<String> {
    let mut origin = APEX.to_string();
    let mut last: Option<String> = None;
    let mut owners = BTreeSet::new();
    for line in zone.lines() {
        let content = line.split(';').next().unwrap_or_default();
        if content.trim().is_empty() {
            continue;
        }
        if let Some(rest) = content.strip_prefix("$ORIGIN") {
            origin = rest.trim().to_ascii_lowercase();
            continue;
        }
        if content.starts_with('$') {
            continue;
        }
        if content.starts_with(char::is_whitespace) {
            let owner = last.clone().expect("a continuation line after an owner");
            owners.insert(owner);
            continue;
        }
        let first = content.split_whitespace().next().expect("an owner");
        let owner = if first == "@" {
            origin.clone()
        } else if first.ends_with('.') {
            first.to_ascii_lowercase()
        } else {
            format!("{}.{origin}", first.to_ascii_lowercase())
        };
        last = Some(owner.clone());
        owners.insert(owner);
    }
    owners
}

/// Every name of the zone (owners and every ancestor down to the apex: the empty
/// non-terminals), and one absent child of each.
fn query_names(owners: &BTreeSet<String>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut existing = BTreeSet::new();
    for owner in owners {
        assert!(owner.ends_with(APEX), "owner {owner} outside the zone");
        let mut name = owner.as_str();
        loop {
            existing.insert(name.to_string());
            if name == APEX {
                break;
            }
            name = name.split_once('.').expect("a label").1;
        }
    }
    let mut absent: BTreeSet<String> = existing.iter().map(|n| format!("nope.{n}")).collect();
    // An absent service-port name under a service that has SRV records.
    for n in &existing {
        if n.starts_with("_tcp.") {
            absent.insert(format!("_nope.{n}"));
            absent.insert(format!(
                "_nope._tcp.{}",
                n.strip_prefix("_tcp.").expect("prefix")
            ));
        }
    }
    absent.retain(|n| !existing.contains(n));
    (existing, absent)
}

/// Rewrites the SOA serial of a zone file, so the zone Knot serves is byte for byte the
/// zone the live peer serves (dump_zone stamps its own wall-clock second).
fn with_serial(zone: &str, serial: u32) -> String {
    let mut out = String::new();
    let mut replaced = 0;
    for line in zone.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = fields.iter().position(|f| *f == "SOA") {
            assert!(fields.len() >= i + 8, "SOA line: {line}");
            let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            fields[i + 3] = serial.to_string();
            out.push_str(&fields.join(" "));
            replaced += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert_eq!(replaced, 1, "exactly one SOA line in:\n{zone}");
    out
}

async fn live_serial(server: SocketAddr) -> u32 {
    let m = ask(server, &Q::new(APEX, RecordType::SOA)).await;
    match m.answers.first().map(|r| &r.data) {
        Some(RData::SOA(soa)) => soa.serial,
        other => panic!("apex SOA from the peer: {other:?}"),
    }
}

/// What a comparison covered.
#[derive(Debug, Default)]
struct Stats {
    compared: usize,
    truncated: usize,
    with_additional: usize,
    /// Replies whose additional sections differ only because not all of it fit.
    additional_cut: usize,
    /// fleetdns's replies (equal to Knot's), by (name, qtype, EDNS size, RD).
    replies: BTreeMap<(String, u16, Option<u16>, bool), Canonical>,
}

impl Stats {
    fn reply(&self, name: &str, qtype: RecordType, edns: Option<u16>) -> &Canonical {
        self.replies
            .get(&(name.to_string(), u16::from(qtype), edns, true))
            .unwrap_or_else(|| panic!("{name} {qtype} was not queried"))
    }
}

/// Starts a peer over `files`, loads its dumped zone into Knot and compares the two
/// servers on every query; panics with the list of differences.
async fn compare_with_knot(
    label: &str,
    files: &[(&str, &str)],
    extra: &str,
    expect_names: &[&str],
    expect_absent: &[&str],
) -> Stats {
    let peer = TestPeer::start("east", files, extra).await;
    let serial = live_serial(peer.dns).await;
    let dumped = fleetdns::app::dump_zone(&peer.path("fleet.yaml")).expect("dump_zone");
    let zone = with_serial(&dumped, serial);
    Knot::check_zone(APEX, &zone)
        .unwrap_or_else(|e| panic!("[{label}] Knot rejects the dumped zone: {e}\n{zone}"));
    let knot = tokio::task::spawn_blocking({
        let zone = zone.clone();
        move || Knot::start(APEX, &zone)
    })
    .await
    .expect("knot start");

    let owners = owner_names(&zone);
    let (existing, absent) = query_names(&owners);
    for must in expect_names {
        assert!(existing.contains(*must), "[{label}] {must} is a name");
    }
    for must in expect_absent {
        assert!(absent.contains(*must), "[{label}] {must} is queried");
    }

    let mut differences = Vec::new();
    let mut stats = Stats::default();
    let mut kinds = BTreeSet::new();
    for name in existing.iter().chain(&absent) {
        for qtype in QTYPES {
            for edns in [None, Some(512), Some(1232)] {
                for rd in [true, false] {
                    let q = Q {
                        name: name.clone(),
                        qtype,
                        edns,
                        rd,
                    };
                    let ours_msg = ask(peer.dns, &q).await;
                    let theirs_msg = ask(knot.addr(), &q).await;
                    let ours = canonical(&ours_msg);
                    let theirs = canonical(&theirs_msg);
                    stats.compared += 1;
                    stats.truncated += usize::from(ours.tc);
                    stats.with_additional += usize::from(!ours.additional.is_empty());
                    stats
                        .replies
                        .insert((name.clone(), u16::from(qtype), edns, rd), ours.clone());
                    kinds.insert((u16::from(ours.rcode), ours.answer.is_empty()));
                    let same = if ours.additional == theirs.additional {
                        ours == theirs
                    } else {
                        let cut = ours.without_additional() == theirs.without_additional()
                            && additional_cut_for_space(&ours_msg, &theirs_msg, knot.addr(), &q)
                                .await;
                        stats.additional_cut += usize::from(cut);
                        cut
                    };
                    if !same {
                        differences.push(format!(
                            "{name} {qtype} edns={edns:?} rd={rd}\n  fleetdns: {ours:?}\n  knot:     {theirs:?}"
                        ));
                    }
                }
            }
        }
    }
    // The comparison covered positive, NODATA and NXDOMAIN answers.
    for kind in [
        (ResponseCode::NoError, false),
        (ResponseCode::NoError, true),
        (ResponseCode::NXDomain, true),
    ] {
        let key = (u16::from(kind.0), kind.1);
        assert!(kinds.contains(&key), "[{label}] no answer of kind {kind:?}");
    }
    if !differences.is_empty() {
        let mut report = format!(
            "[{label}] {} of {} replies differ between fleetdns and Knot:\n",
            differences.len(),
            stats.compared
        );
        for d in &differences {
            writeln!(report, "{d}").expect("write");
        }
        write!(report, "zone:\n{zone}knot log:\n{}", knot.log()).expect("write");
        panic!("{report}");
    }
    eprintln!(
        "[{label}] all equal: {} replies, {} with TC, {} with additionals, {} with additionals cut for space",
        stats.compared, stats.truncated, stats.with_additional, stats.additional_cut
    );
    drop(knot);
    peer.app.shutdown().await;
    stats
}

/// Names of the demo zone the comparison must cover: empty non-terminals of each tree.
const DEMO_NAMES: &[&str] = &[
    "default.east.fleet.",
    "default.svc.fleet.",
    "svc.fleet.",
    "_tcp.web.default.svc.fleet.",
    "_udp.catalog.shop.west.fleet.",
];

/// Absent names of the demo zone the comparison must cover, one under each tree.
const DEMO_ABSENT: &[&str] = &[
    "nope.default.svc.fleet.",
    "nope.default.east.fleet.",
    "_nope._tcp.web.default.east.fleet.",
    "nope.fleet.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_knot_diff_demo_fleet() {
    let stats = compare_with_knot("demo", &demo_files(), "", DEMO_NAMES, DEMO_ABSENT).await;
    let srv = stats.reply("_postgres._tcp.db.shop.east.fleet.", RecordType::SRV, None);
    assert_eq!(srv.additional.len(), 2, "{srv:?}");
    let web = stats.reply("web.default.svc.fleet.", RecordType::A, None);
    assert_eq!(web.answer.len(), 1, "local-preferred: {web:?}");
}

/// Connected networks (other clusters' ClusterIPs and pod IPs are served) and a merged
/// name whose local export chooses policy `all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_knot_diff_connected_policy_all() {
    let files = demo_files();
    let east = files
        .iter()
        .find(|(c, _)| *c == "east")
        .expect("east")
        .1
        .replacen(
            "    cluster_ips: [10.96.0.10]\n",
            "    cluster_ips: [10.96.0.10]\n    policy: all\n",
            1,
        );
    assert!(east.contains("policy: all"), "fixture edit applied");
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(c, text)| (*c, if *c == "east" { east.as_str() } else { *text }))
        .collect();
    let stats = compare_with_knot(
        "connected+all",
        &files,
        "network: {connected: true}",
        DEMO_NAMES,
        DEMO_ABSENT,
    )
    .await;
    // Policy `all` with connected networks: every cluster's ClusterIP.
    let web = stats.reply("web.default.svc.fleet.", RecordType::A, None);
    assert_eq!(web.answer.len(), 3, "{web:?}");
}

/// Headless services with 100 and 8 ready endpoints. `big`'s A and SRV RRsets fit
/// neither 512 octets (no EDNS) nor 1232 (EDNS): both servers set TC. `mid`'s SRV RRset
/// fits 512 octets only without its additional A records: both servers drop the
/// additional section and do not set TC (RFC 2181 §9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_knot_diff_large_answers() {
    let mut east = String::from("services:\n");
    for (name, count) in [("big", 100), ("mid", 8)] {
        writeln!(
            east,
            "  - name: {name}\n    namespace: default\n    headless: true\n    addresses: endpoints\n    ports: [{{name: http, port: 80, protocol: TCP}}]\n    endpoints:"
        )
        .expect("write");
        for i in 0..count {
            let subnet = if name == "big" { 1 } else { 2 };
            writeln!(
                east,
                "      - {{address: 10.{subnet}.{}.{}, hostname: {name}-{i}, ready: true}}",
                i / 50,
                i % 50 + 1
            )
            .expect("write");
        }
    }
    let stats = compare_with_knot(
        "large",
        &[("east", &east)],
        "",
        &[
            "big-99.big.default.east.fleet.",
            "_tcp.big.default.svc.fleet.",
        ],
        &["nope.big.default.east.fleet.", "nope.default.svc.fleet."],
    )
    .await;
    // The fixture exercises what it claims to.
    let big = stats.reply("big.default.east.fleet.", RecordType::A, Some(1232));
    assert!(big.tc && big.answer.is_empty(), "{big:?}");
    let mid_srv = "_http._tcp.mid.default.east.fleet.";
    let small = stats.reply(mid_srv, RecordType::SRV, None);
    assert!(
        !small.tc && small.answer.len() == 8 && small.additional.is_empty(),
        "{small:?}"
    );
    let edns = stats.reply(mid_srv, RecordType::SRV, Some(1232));
    assert!(
        !edns.tc && edns.answer.len() == 8 && edns.additional.len() == 8,
        "{edns:?}"
    );
}

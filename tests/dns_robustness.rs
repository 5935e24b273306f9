//! Bad input over real sockets: every malformed, unsupported or hostile packet gets
//! exactly the reply DESIGN.md §1 prescribes, or none at all, and the server goes on
//! answering valid queries (every test ends by proving that).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

const EAST: &str = r#"
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80}]
    cluster_ips: [10.96.0.10]
    endpoints: [{address: 10.1.0.5}]
"#;

/// How long to wait for a reply that must not come.
const NO_REPLY_WAIT: Duration = Duration::from_millis(300);

const A: u16 = 1;
const TXT: u16 = 16;
const OPT: u16 = 41;
const IXFR: u16 = 251;
const AXFR: u16 = 252;
const IN: u16 = 1;
const CH: u16 = 3;
const ANY_CLASS: u16 = 255;

const FORMERR: u16 = 1;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;
const BADVERS: u16 = 16;

/// Flags of a plain query with RD set.
const RD: u16 = 0x0100;

async fn peer() -> TestPeer {
    TestPeer::start("east", &[("east", EAST)], "").await
}

/// The server still answers: a valid query gets its right answer over UDP and TCP.
async fn assert_alive(peer: &TestPeer) {
    let q = Q::new("web.default.east.fleet.", RecordType::A);
    for m in [udp(peer.dns, &q).await, tcp(peer.dns, &q).await] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert!(m.metadata.authoritative);
        assert_eq!(answers(&m), vec!["10.96.0.10"]);
    }
}

// ---- building raw packets ----------------------------------------------------------

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn question(name: &[u8], qtype: u16, qclass: u16) -> Vec<u8> {
    let mut out = name.to_vec();
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&qclass.to_be_bytes());
    out
}

/// An OPT record with `owner`, payload size 1232, `version`, no options.
fn opt(owner: &[u8], version: u8) -> Vec<u8> {
    let mut out = owner.to_vec();
    out.extend_from_slice(&OPT.to_be_bytes());
    out.extend_from_slice(&1232u16.to_be_bytes());
    out.extend_from_slice(&[0, version, 0, 0]);
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// A one-question query: header + question (+ `additional` records, counted in ARCOUNT).
fn query(
    id: u16,
    flags: u16,
    name: &[u8],
    qtype: u16,
    qclass: u16,
    additional: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = header(id, flags, [1, 0, 0, additional.len() as u16]);
    out.extend(question(name, qtype, qclass));
    for r in additional {
        out.extend_from_slice(r);
    }
    out
}

// ---- checking replies --------------------------------------------------------------

/// The rules every reply follows (DESIGN.md §1): QR=1, ID and opcode echoed, RD copied,
/// RA, AD, CD and Z clear.
fn assert_reply_rules(reply: &[u8], request: &[u8]) -> RawHeader {
    let h = RawHeader::parse(reply);
    let q = RawHeader::parse(request);
    assert!(h.qr, "QR clear in {h:?}");
    assert_eq!(h.id, q.id, "ID not echoed: {h:?}");
    assert_eq!(h.opcode, q.opcode, "opcode not echoed: {h:?}");
    assert_eq!(h.rd, q.rd, "RD not copied: {h:?}");
    assert!(!h.ra && !h.ad && !h.cd && !h.z, "RA/AD/CD/Z set: {h:?}");
    h
}

/// An error reply: the reply rules, `rcode` (BADVERS split between header and OPT), AA
/// clear, no records but an OPT when `with_opt`.
fn assert_error_reply(reply: &[u8], request: &[u8], rcode: u16, with_opt: bool) -> RawHeader {
    let h = assert_reply_rules(reply, request);
    assert_eq!(u16::from(h.rcode), rcode & 0xF, "header rcode of {h:?}");
    assert!(!h.aa, "AA set on an error: {h:?}");
    assert!(!h.tc, "TC set on an error: {h:?}");
    assert_eq!((h.ancount, h.nscount), (0, 0), "records in an error: {h:?}");
    let opts = raw_opts(reply);
    if with_opt {
        assert_eq!(opts.len(), 1, "expected one OPT in {h:?}");
        assert_eq!(u16::from(opts[0].extended_rcode), rcode >> 4, "{opts:?}");
        assert_eq!(opts[0].version, 0);
        assert_eq!(h.arcount, 1);
    } else {
        assert!(opts.is_empty(), "unexpected OPT: {opts:?}");
        assert_eq!(h.arcount, 0);
    }
    h
}

/// Sends `request` over UDP and over TCP; both must reply, with the same bytes.
async fn error_exchange(peer: &TestPeer, request: &[u8]) -> Vec<u8> {
    let over_udp = udp_raw(peer.dns, request, TIMEOUT)
        .await
        .expect("a UDP reply");
    let over_tcp = tcp_raw(peer.dns, request).await;
    assert_eq!(over_udp, over_tcp, "UDP and TCP replies differ");
    over_udp
}

// ---- probing for "reply or no reply" without waiting out a timeout -------------------

/// The valid query a prober sends after each probe, and the answer that proves the probe
/// has been processed. Its mixed case is echoed byte for byte, which no reply to another
/// packet can imitate.
const SENTINEL_NAME: &str = "WeB.dEfAuLt.EaSt.FlEeT.";

fn sentinel(id: u16) -> Vec<u8> {
    query(id, RD, &wire_name(SENTINEL_NAME), A, IN, &[])
}

fn is_sentinel_reply(reply: &[u8], id: u16) -> bool {
    let q = sentinel(id);
    reply.len() >= q.len() && reply[..2] == q[..2] && reply[12..q.len()] == q[12..]
}

/// Sends a packet, then a sentinel query from the same socket, and collects what came
/// before the sentinel's answer. The server handles one socket's packets in order, so
/// an empty result proves "no reply" without waiting for a timeout.
struct UdpProber {
    socket: UdpSocket,
    server: SocketAddr,
    next_id: u16,
    buf: Vec<u8>,
}

impl UdpProber {
    async fn new(server: SocketAddr) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            server,
            next_id: 0,
            buf: vec![0; 65_535],
        }
    }

    async fn exchange(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.socket
            .send_to(packet, self.server)
            .await
            .expect("send");
        self.socket
            .send_to(&sentinel(id), self.server)
            .await
            .expect("send sentinel");
        let mut before = Vec::new();
        loop {
            let (n, _) = tokio::time::timeout(TIMEOUT, self.socket.recv_from(&mut self.buf))
                .await
                .expect("the server stopped answering")
                .expect("recv");
            let reply = &self.buf[..n];
            if is_sentinel_reply(reply, id) {
                assert_eq!(
                    answers(&Message::from_vec(reply).expect("sentinel decodes")),
                    vec!["10.96.0.10"]
                );
                break;
            }
            before.push(reply.to_vec());
        }
        assert!(before.len() <= 1, "{} replies to one packet", before.len());
        before.pop()
    }
}

/// The same over one TCP connection: each probe is framed, followed by a sentinel.
struct TcpProber {
    stream: TcpStream,
    next_id: u16,
}

impl TcpProber {
    async fn new(server: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(server).await.expect("connect"),
            next_id: 0,
        }
    }

    async fn exchange(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let mut out = Vec::with_capacity(packet.len() + 64);
        for p in [packet, &sentinel(id)] {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        self.stream.write_all(&out).await.expect("tcp write");
        let mut before = Vec::new();
        loop {
            let reply = tcp_recv(&mut self.stream)
                .await
                .expect("the server closed the connection");
            if is_sentinel_reply(&reply, id) {
                break;
            }
            before.push(reply);
        }
        assert!(before.len() <= 1, "{} replies to one packet", before.len());
        before.pop()
    }
}

// ---- the tests ---------------------------------------------------------------------

#[tokio::test]
async fn short_packets_and_responses_get_no_reply() {
    let peer = peer().await;
    let valid = query(
        0x1111,
        RD,
        &wire_name("web.default.east.fleet."),
        A,
        IN,
        &[],
    );
    let mut response = valid.clone();
    response[2] |= 0x80; // QR=1
    let mut packets: Vec<Vec<u8>> = (0..12).map(|n| valid[..n].to_vec()).collect();
    packets.push(response.clone());
    // Each from its own socket, all waiting at once.
    let mut waits = tokio::task::JoinSet::new();
    for p in packets.clone() {
        let server = peer.dns;
        waits.spawn(async move { (udp_raw(server, &p, NO_REPLY_WAIT).await, p) });
    }
    while let Some(done) = waits.join_next().await {
        let (reply, p) = done.expect("probe task");
        assert_eq!(reply, None, "reply to {p:?}");
    }
    // Over TCP the connection stays usable and the next reply is the sentinel's.
    let mut tcp = TcpProber::new(peer.dns).await;
    for p in &packets {
        assert_eq!(tcp.exchange(p).await, None, "TCP reply to {p:?}");
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn every_truncation_of_a_valid_query_is_formerr_or_dropped() {
    let peer = peer().await;
    let full = query(
        0xBEEF,
        RD,
        &wire_name("web.default.east.fleet."),
        A,
        IN,
        &[opt(&[0], 0)],
    );
    let mut over_udp = UdpProber::new(peer.dns).await;
    let mut over_tcp = TcpProber::new(peer.dns).await;
    for cut in 0..full.len() {
        let packet = &full[..cut];
        let from_udp = over_udp.exchange(packet).await;
        let from_tcp = over_tcp.exchange(packet).await;
        assert_eq!(from_udp, from_tcp, "cut at {cut}: UDP and TCP differ");
        match from_udp {
            None => assert!(cut < 12, "no reply to a {cut}-octet prefix"),
            Some(reply) => {
                assert!(cut >= 12, "reply to a {cut}-octet packet");
                // Nothing parseable: no question echoed, no OPT.
                let h = assert_error_reply(&reply, packet, FORMERR, false);
                assert_eq!(h.qdcount, 0, "cut at {cut}");
            }
        }
    }
    // The whole query is answered.
    let reply = over_udp.exchange(&full).await.expect("a reply");
    let m = Message::from_vec(&reply).expect("decodes");
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
    assert_alive(&peer).await;
}

/// A seeded xorshift64*: reproducible "random" packets without a new dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Half pure noise, half valid queries with a few bytes flipped, cut or extended: the
/// noise mostly dies in the header, the mutants reach the name, OPT and lookup code.
fn random_packets(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let names = [
        "web.default.east.fleet.",
        "fleet.",
        "_http._tcp.web.default.east.fleet.",
        "nope.fleet.",
        "example.com.",
    ];
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let len = rng.below(300);
                return rng.bytes(len);
            }
            let name = wire_name(names[rng.below(names.len())]);
            let qtype = [1u16, 28, 33, 16, 6, 2, 255, 41, 252, 0, 65535][rng.below(11)];
            let additional = if rng.below(2) == 0 {
                vec![opt(&[0], 0)]
            } else {
                vec![]
            };
            let mut p = query(rng.next() as u16, RD, &name, qtype, IN, &additional);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(p.len());
                p[at] = rng.next() as u8;
            }
            match rng.below(4) {
                0 => p.truncate(rng.below(p.len() + 1)),
                1 => {
                    let extra = rng.below(40);
                    p.extend(rng.bytes(extra));
                }
                _ => {}
            }
            p
        })
        .collect()
}

/// A packet gets a reply if and only if it is at least a header and not a response.
fn expect_reply(packet: &[u8]) -> bool {
    packet.len() >= 12 && packet[2] & 0x80 == 0
}

fn check_random_reply(packet: &[u8], reply: Option<Vec<u8>>) {
    match (expect_reply(packet), reply) {
        (false, None) => {}
        (false, Some(r)) => panic!("reply {r:?} to a packet that gets none: {packet:?}"),
        (true, None) => panic!("no reply to {packet:?}"),
        (true, Some(r)) => {
            assert_reply_rules(&r, packet);
            if let Err(e) = Message::from_vec(&r) {
                panic!("reply {r:?} to {packet:?} does not decode: {e}");
            }
        }
    }
}

#[tokio::test]
async fn two_thousand_random_packets_over_udp() {
    let peer = peer().await;
    let mut prober = UdpProber::new(peer.dns).await;
    for packet in random_packets(0x5EED_0001, 2_000) {
        let reply = prober.exchange(&packet).await;
        check_random_reply(&packet, reply);
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn two_thousand_random_packets_over_tcp() {
    let peer = peer().await;
    let mut prober = TcpProber::new(peer.dns).await;
    for packet in random_packets(0x5EED_0002, 2_000) {
        let reply = prober.exchange(&packet).await;
        check_random_reply(&packet, reply);
    }
    // Unframed noise: the server may close that connection, but must not stop serving.
    let mut rng = Rng(0x5EED_0003);
    for _ in 0..20 {
        let mut stream = TcpStream::connect(peer.dns).await.expect("connect");
        let len = 1 + rng.below(4_000);
        let noise = rng.bytes(len);
        let _ = stream.write_all(&noise).await;
        drop(stream);
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn compression_pointer_loops_in_the_question_are_formerr() {
    let peer = peer().await;
    let loops: [&[u8]; 3] = [
        &[0xC0, 12],                      // points at itself
        &[3, b'w', b'e', b'b', 0xC0, 12], // back to its own start: web.web.web...
        &[0xC0, 14, 0xC0, 12],            // two pointers chasing each other
    ];
    for name in loops {
        let request = query(0x2222, RD, name, A, IN, &[]);
        let reply = error_exchange(&peer, &request).await;
        assert_error_reply(&reply, &request, FORMERR, false);
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn a_pointer_in_the_question_name_is_formerr() {
    let peer = peer().await;
    // Offset 4 holds QDCOUNT's high octet, 0: a lenient decoder reads "web." there.
    let request = query(0x3333, 0, &[3, b'w', b'e', b'b', 0xC0, 4], A, IN, &[]);
    let reply = error_exchange(&peer, &request).await;
    assert_error_reply(&reply, &request, FORMERR, false);
    // The same with EDNS: still FORMERR. (Whether the OPT behind an unusable question
    // name is answered with one is not pinned down here: the name is where parsing
    // stops.)
    let request = query(
        0x3334,
        RD,
        &[3, b'w', b'e', b'b', 0xC0, 4],
        A,
        IN,
        &[opt(&[0], 0)],
    );
    let reply = error_exchange(&peer, &request).await;
    let with_opt = !raw_opts(&reply).is_empty();
    assert_error_reply(&reply, &request, FORMERR, with_opt);
    assert_alive(&peer).await;
}

/// A wire name under `fleet.` of exactly `len` octets.
fn name_of_len(len: usize) -> Vec<u8> {
    let suffix = wire_name("fleet.");
    let mut rest = len - suffix.len();
    let mut out = Vec::new();
    while rest > 0 {
        let label = (rest - 1).min(63);
        assert!(label > 0, "cannot make a name of {len} octets");
        out.push(label as u8);
        out.extend(std::iter::repeat_n(b'a', label));
        rest -= label + 1;
    }
    out.extend(suffix);
    assert_eq!(out.len(), len);
    out
}

#[tokio::test]
async fn a_255_octet_name_is_valid_and_a_256_octet_one_is_formerr() {
    let peer = peer().await;
    let request = query(0x4444, RD, &name_of_len(255), A, IN, &[]);
    let reply = udp_raw(peer.dns, &request, TIMEOUT).await.expect("reply");
    assert_eq!(reply, tcp_raw(peer.dns, &request).await);
    let h = assert_reply_rules(&reply, &request);
    assert_eq!(h.rcode, 3, "NXDOMAIN expected: {h:?}");
    assert!(h.aa, "AA expected on NXDOMAIN");
    let m = Message::from_vec(&reply).expect("decodes");
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].name().len(), 255 - 1, "question echoed");
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    let request = query(0x4445, RD, &name_of_len(256), A, IN, &[]);
    let reply = error_exchange(&peer, &request).await;
    assert_error_reply(&reply, &request, FORMERR, false);
    assert_alive(&peer).await;
}

#[tokio::test]
async fn qdcount_other_than_one_is_formerr() {
    let peer = peer().await;
    let web = question(&wire_name("web.default.east.fleet."), A, IN);
    for (qdcount, flags) in [(0u16, RD), (0, 0), (10, RD), (10, 0), (2, RD)] {
        let mut request = header(0x5500 + qdcount, flags, [qdcount, 0, 0, 0]);
        for _ in 0..qdcount {
            request.extend_from_slice(&web);
        }
        let reply = error_exchange(&peer, &request).await;
        let h = assert_error_reply(&reply, &request, FORMERR, false);
        assert_eq!(h.qdcount, 0, "QDCOUNT {qdcount}: no question echoed");
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn classes_other_than_in_are_refused_without_aa() {
    let peer = peer().await;
    for (name, qtype, class) in [
        ("web.default.east.fleet.", A, CH),
        ("version.bind.", TXT, CH),
        ("web.default.east.fleet.", A, ANY_CLASS),
        ("fleet.", 6, ANY_CLASS),
    ] {
        for additional in [vec![], vec![opt(&[0], 0)]] {
            let request = query(0x6600, RD, &wire_name(name), qtype, class, &additional);
            let reply = error_exchange(&peer, &request).await;
            let h = assert_error_reply(&reply, &request, REFUSED, !additional.is_empty());
            assert_eq!(h.qdcount, 1, "the question is echoed");
            let q_end = 12 + question(&wire_name(name), qtype, class).len();
            assert_eq!(reply[12..q_end], request[12..q_end]);
        }
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn opcodes_other_than_query_are_notimp() {
    let peer = peer().await;
    for opcode in 1u16..16 {
        for additional in [vec![], vec![opt(&[0], 0)]] {
            let flags = RD | (opcode << 11);
            let request = query(
                0x7700 + opcode,
                flags,
                &wire_name("web.default.east.fleet."),
                A,
                IN,
                &additional,
            );
            let reply = error_exchange(&peer, &request).await;
            let h = assert_error_reply(&reply, &request, NOTIMP, !additional.is_empty());
            assert_eq!(u16::from(h.opcode), opcode);
        }
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn qtype_opt_is_formerr() {
    let peer = peer().await;
    for additional in [vec![], vec![opt(&[0], 0)]] {
        let request = query(
            0x8800,
            RD,
            &wire_name("web.default.east.fleet."),
            OPT,
            IN,
            &additional,
        );
        let reply = error_exchange(&peer, &request).await;
        assert_error_reply(&reply, &request, FORMERR, !additional.is_empty());
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn zone_transfers_are_refused() {
    let peer = peer().await;
    for qtype in [AXFR, IXFR] {
        for name in ["fleet.", "web.default.east.fleet."] {
            let request = query(0x9900, 0, &wire_name(name), qtype, IN, &[]);
            let reply = error_exchange(&peer, &request).await;
            let h = assert_error_reply(&reply, &request, REFUSED, false);
            assert_eq!(h.qdcount, 1);
        }
    }
    assert_alive(&peer).await;
}

#[tokio::test]
async fn two_opts_are_formerr_with_an_opt() {
    let peer = peer().await;
    let name = wire_name("web.default.east.fleet.");
    let two = query(0xAA01, RD, &name, A, IN, &[opt(&[0], 0), opt(&[0], 0)]);
    let reply = error_exchange(&peer, &two).await;
    assert_error_reply(&reply, &two, FORMERR, true);
    assert_alive(&peer).await;
}

fn non_root_opt_query() -> Vec<u8> {
    let name = wire_name("web.default.east.fleet.");
    query(0xAA02, RD, &name, A, IN, &[opt(&wire_name("fleet."), 0)])
}

#[tokio::test]
async fn a_non_root_opt_owner_is_formerr() {
    let peer = peer().await;
    let request = non_root_opt_query();
    let reply = error_exchange(&peer, &request).await;
    let with_opt = !raw_opts(&reply).is_empty();
    assert_error_reply(&reply, &request, FORMERR, with_opt);
    assert_alive(&peer).await;
}

/// DESIGN.md §1: a query with a parseable OPT gets an OPT in every reply, FORMERR
/// included. `dns::wire::parse` records EDNS only from a root-owned OPT, so this reply
/// has none.
#[tokio::test]
async fn a_non_root_opt_owner_gets_an_opt_in_its_formerr() {
    let peer = peer().await;
    let request = non_root_opt_query();
    let reply = error_exchange(&peer, &request).await;
    assert_error_reply(&reply, &request, FORMERR, true);
    assert_alive(&peer).await;
}

#[tokio::test]
async fn edns_version_1_is_badvers_with_an_opt_and_no_answer() {
    let peer = peer().await;
    let request = query(
        0xBB01,
        RD,
        &wire_name("web.default.east.fleet."),
        A,
        IN,
        &[opt(&[0], 1)],
    );
    let reply = error_exchange(&peer, &request).await;
    let h = assert_error_reply(&reply, &request, BADVERS, true);
    assert_eq!(h.rcode, 0, "BADVERS is all in the OPT");
    let m = Message::from_vec(&reply).expect("decodes");
    // hickory-proto decodes the full rcode 16 as BADSIG, BADVERS's twin (RFC 6891 and
    // RFC 8945 share the value); the number is what a client sees.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(u16::from(ResponseCode::BADVERS), 16);
    assert!(m.answers.is_empty());
    let edns = m.edns.as_ref().expect("an OPT");
    assert_eq!(edns.version(), 0, "we speak EDNS version 0");
    assert_alive(&peer).await;
}

#[tokio::test]
async fn malformed_packets_are_counted_in_metrics() {
    let peer = peer().await;
    let series = |t: &str| format!("fleetdns_dns_malformed_packets_total{{transport=\"{t}\"}}");
    let udp_before = peer.metric(&series("udp")).await;
    let tcp_before = peer.metric(&series("tcp")).await;

    let valid = query(
        0xCC01,
        RD,
        &wire_name("web.default.east.fleet."),
        A,
        IN,
        &[opt(&[0], 0)],
    );
    let malformed: Vec<Vec<u8>> = vec![
        valid[..5].to_vec(),                              // shorter than a header
        valid[..20].to_vec(),                             // cut in the question
        query(0xCC02, RD, &[0xC0, 12], A, IN, &[]),       // pointer loop
        query(0xCC03, RD, &name_of_len(256), A, IN, &[]), // name too long
        query(
            0xCC04,
            RD,
            &wire_name("fleet."),
            A,
            IN,
            &[opt(&[0], 0), opt(&[0], 0)],
        ), // two OPTs
    ];
    let mut over_udp = UdpProber::new(peer.dns).await;
    let mut over_tcp = TcpProber::new(peer.dns).await;
    for p in &malformed {
        over_udp.exchange(p).await;
        over_tcp.exchange(p).await;
    }
    // Valid queries (the probers' sentinels among them) are not malformed.
    over_udp.exchange(&valid).await.expect("a reply");
    over_tcp.exchange(&valid).await.expect("a reply");
    let n = malformed.len() as f64;
    assert_eq!(peer.metric(&series("udp")).await - udp_before, n);
    assert_eq!(peer.metric(&series("tcp")).await - tcp_before, n);
    // The short one was also dropped without a reply.
    let dropped = |t: &str| format!("fleetdns_dns_dropped_packets_total{{transport=\"{t}\"}}");
    assert_eq!(peer.metric(&dropped("udp")).await, 1.0);
    assert_eq!(peer.metric(&dropped("tcp")).await, 1.0);
    assert_alive(&peer).await;
}

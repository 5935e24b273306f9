//! The hand-written query parser and the reply writers of the DNS hot path.
//!
//! This module owns the DNS wire format on the query path: it parses a request into the
//! few fields an authoritative answer needs (id, opcode, RD, question, OPT) without
//! allocating, and writes reply headers, echoed questions and OPT records. Answers
//! themselves are pre-encoded by `dns::index`; nothing here knows about the zone.
//! hickory-proto's decoder is the oracle for this parser in the property tests.

/// Record types and classes this module needs by number.
pub mod types {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const CLASS_IN: u16 = 1;
}

/// Response codes, including the extended BADVERS.
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const BADVERS: u16 = 16;
}

/// Extended DNS Error info codes (RFC 8914) that fleetdns sends.
pub mod ede {
    pub const STALE_ANSWER: u16 = 3;
    pub const NOT_READY: u16 = 14;
    pub const NO_REACHABLE_AUTHORITY: u16 = 22;
}

pub const HEADER_LEN: usize = 12;
/// Wire length of a domain name, root label included.
pub const MAX_NAME_LEN: usize = 255;
/// The OPT record fleetdns appends, without options.
pub const OPT_LEN: usize = 11;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;

/// The EDNS facts of a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// The parsed form of a well-formed query with exactly one question.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: u16,
    pub rd: bool,
    /// End of the question section: `packet[12..question_end]` is the question as sent.
    pub question_end: usize,
    /// Wire length of the question name (it starts at offset 12, uncompressed).
    pub qname_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query {
    /// The question name in wire form, ASCII-lowercased into `buf` (on the caller's
    /// stack, so parsing never allocates).
    pub fn qname_lower<'a>(&self, packet: &[u8], buf: &'a mut [u8; MAX_NAME_LEN]) -> &'a [u8] {
        let name = &packet[HEADER_LEN..HEADER_LEN + self.qname_len];
        for (dst, src) in buf.iter_mut().zip(name) {
            *dst = src.to_ascii_lowercase();
        }
        &buf[..self.qname_len]
    }
}

/// Why a query is answered with an error before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub id: u16,
    pub opcode: u8,
    pub rd: bool,
    pub rcode: u16,
    /// `Some(end)` when the reply echoes `packet[12..end]` as its one question.
    pub question_end: Option<usize>,
    pub edns: Option<Edns>,
    /// The packet could not be parsed (as opposed to a valid but unsupported query).
    pub malformed: bool,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    Query(Query),
    Reject(Rejection),
    /// No reply at all: shorter than a header, or a response (QR=1).
    Drop,
}

/// Where a name ends and how long it is once decompressed.
struct NameSpan {
    end: usize,
    wire_len: usize,
    compressed: bool,
}

/// Walks a (possibly compressed) name starting at `start`. Pointers must point strictly
/// backwards into the message body, which also rules out loops.
fn scan_name(packet: &[u8], start: usize) -> Option<NameSpan> {
    let mut pos = start;
    let mut end = None;
    let mut wire_len = 0usize;
    let mut lowest_target = start;
    loop {
        let len = *packet.get(pos)? as usize;
        match len & 0xC0 {
            0x00 => {
                wire_len += len + 1;
                if wire_len > MAX_NAME_LEN {
                    return None;
                }
                if len == 0 {
                    return Some(NameSpan {
                        end: end.unwrap_or(pos + 1),
                        wire_len,
                        compressed: end.is_some(),
                    });
                }
                if pos + 1 + len > packet.len() {
                    return None;
                }
                pos += 1 + len;
            }
            0xC0 => {
                let lo = *packet.get(pos + 1)? as usize;
                let target = ((len & 0x3F) << 8) | lo;
                if target < HEADER_LEN || target >= lowest_target {
                    return None;
                }
                lowest_target = target;
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return None,
        }
    }
}

/// Parses a query. Never panics and never allocates, whatever the input.
pub fn parse(packet: &[u8]) -> Parsed {
    if packet.len() < HEADER_LEN {
        return Parsed::Drop;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & FLAG_QR != 0 {
        return Parsed::Drop;
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    let rd = flags & FLAG_RD != 0;
    let count = |i: usize| u16::from_be_bytes([packet[4 + 2 * i], packet[5 + 2 * i]]) as usize;
    let (qdcount, ancount, nscount, arcount) = (count(0), count(1), count(2), count(3));
    let reject = |rcode, question_end, edns, malformed| {
        Parsed::Reject(Rejection {
            id,
            opcode,
            rd,
            rcode,
            question_end,
            edns,
            malformed,
        })
    };

    // Walk the whole message structurally first, so every reply can carry an OPT when
    // the query had a parseable one.
    let mut pos = HEADER_LEN;
    let mut first_question: Option<(NameSpan, u16, u16, usize)> = None;
    for _ in 0..qdcount {
        let Some(span) = scan_name(packet, pos) else {
            return reject(rcode::FORMERR, None, None, true);
        };
        let Some(tail) = packet.get(span.end..span.end + 4) else {
            return reject(rcode::FORMERR, None, None, true);
        };
        let qtype = u16::from_be_bytes([tail[0], tail[1]]);
        let qclass = u16::from_be_bytes([tail[2], tail[3]]);
        pos = span.end + 4;
        if first_question.is_none() {
            first_question = Some((span, qtype, qclass, pos));
        }
    }
    let mut edns = None;
    let mut opt_error = false;
    for section_index in 0..ancount + nscount + arcount {
        let Some(span) = scan_name(packet, pos) else {
            return reject(rcode::FORMERR, None, None, true);
        };
        let Some(fixed) = packet.get(span.end..span.end + 10) else {
            return reject(rcode::FORMERR, None, None, true);
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let rdata_start = span.end + 10;
        let Some(rdata) = packet.get(rdata_start..rdata_start + rdlen) else {
            return reject(rcode::FORMERR, None, None, true);
        };
        if rtype == types::OPT {
            let in_additional = section_index >= ancount + nscount;
            let root_owner = span.wire_len == 1;
            if !in_additional || !root_owner || edns.is_some() || !options_well_formed(rdata) {
                opt_error = true;
            }
            // A malformed OPT still tells us the requester speaks EDNS: its FORMERR
            // carries our OPT too (DESIGN.md §1).
            if edns.is_none() {
                edns = Some(Edns {
                    udp_size: class,
                    version: (ttl >> 16) as u8,
                    dnssec_ok: ttl & 0x8000 != 0,
                });
            }
        }
        pos = rdata_start + rdlen;
    }

    let question = first_question
        .as_ref()
        .filter(|(span, ..)| qdcount == 1 && !span.compressed);
    let question_end = question.map(|q| q.3);
    if opcode != 0 {
        return reject(rcode::NOTIMP, question_end, edns, false);
    }
    let Some((span, qtype, qclass, question_end)) = question else {
        // QDCOUNT ≠ 1, or a question name with a (necessarily invalid) pointer.
        return reject(rcode::FORMERR, None, edns, qdcount == 1);
    };
    if opt_error {
        return reject(rcode::FORMERR, Some(*question_end), edns, true);
    }
    if edns.is_some_and(|e| e.version > 0) {
        return reject(rcode::BADVERS, Some(*question_end), edns, false);
    }
    if *qtype == types::OPT {
        return reject(rcode::FORMERR, Some(*question_end), edns, false);
    }

    Parsed::Query(Query {
        id,
        rd,
        question_end: *question_end,
        qname_len: span.wire_len,
        qtype: *qtype,
        qclass: *qclass,
        edns,
    })
}

fn options_well_formed(mut rdata: &[u8]) -> bool {
    while !rdata.is_empty() {
        if rdata.len() < 4 {
            return false;
        }
        let len = u16::from_be_bytes([rdata[2], rdata[3]]) as usize;
        if rdata.len() < 4 + len {
            return false;
        }
        rdata = &rdata[4 + len..];
    }
    true
}

/// The UDP reply size limit for a query (RFC 6891 §6.2.5; DESIGN.md §1).
pub fn udp_limit(edns: Option<Edns>, max_udp_payload: u16) -> usize {
    match edns {
        None => 512,
        Some(e) => usize::from(e.udp_size.min(max_udp_payload)).max(512),
    }
}

/// Header fields of a reply.
#[derive(Debug, Clone, Copy)]
pub struct ReplyHeader {
    pub id: u16,
    pub opcode: u8,
    pub rd: bool,
    pub aa: bool,
    pub tc: bool,
    /// Full rcode; the upper 8 bits travel in the OPT record.
    pub rcode: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

/// Writes a 12-octet reply header. RA, AD, CD and Z are always clear.
pub fn write_header(out: &mut Vec<u8>, h: &ReplyHeader) {
    let mut flags = FLAG_QR | (u16::from(h.opcode & 0xF) << 11) | (h.rcode & 0xF);
    if h.aa {
        flags |= FLAG_AA;
    }
    if h.tc {
        flags |= FLAG_TC;
    }
    if h.rd {
        flags |= FLAG_RD;
    }
    out.extend_from_slice(&h.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in [h.qdcount, h.ancount, h.nscount, h.arcount] {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// An Extended DNS Error to put in the reply's OPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ede {
    pub code: u16,
    pub text: &'static str,
}

/// Wire length of the OPT record fleetdns writes with `ede`.
pub fn opt_len(ede: Option<Ede>) -> usize {
    OPT_LEN + ede.map_or(0, |e| 6 + e.text.len())
}

/// Writes our OPT record: our payload size, version 0, DO clear, the upper rcode bits.
pub fn write_opt(out: &mut Vec<u8>, max_udp_payload: u16, rcode: u16, ede: Option<Ede>) {
    out.push(0); // root owner
    out.extend_from_slice(&types::OPT.to_be_bytes());
    out.extend_from_slice(&max_udp_payload.to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.push(0); // version
    out.extend_from_slice(&0u16.to_be_bytes()); // flags: DO clear
    match ede {
        None => out.extend_from_slice(&0u16.to_be_bytes()),
        Some(e) => {
            let len = 4 + 2 + e.text.len();
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&15u16.to_be_bytes()); // option code: EDE
            out.extend_from_slice(&((2 + e.text.len()) as u16).to_be_bytes());
            out.extend_from_slice(&e.code.to_be_bytes());
            out.extend_from_slice(e.text.as_bytes());
        }
    }
}

/// Writes a reply with no records: header, the echoed question if any, and an OPT when
/// the query had one. Used for every error, for TC replies and for SERVFAIL.
#[allow(clippy::too_many_arguments)]
pub fn write_bare_reply(
    out: &mut Vec<u8>,
    packet: &[u8],
    id: u16,
    opcode: u8,
    rd: bool,
    aa: bool,
    tc: bool,
    rcode: u16,
    question_end: Option<usize>,
    edns: Option<Edns>,
    ede: Option<Ede>,
    max_udp_payload: u16,
) {
    out.clear();
    write_header(
        out,
        &ReplyHeader {
            id,
            opcode,
            rd,
            aa,
            tc,
            rcode,
            qdcount: u16::from(question_end.is_some()),
            ancount: 0,
            nscount: 0,
            arcount: u16::from(edns.is_some()),
        },
    );
    if let Some(end) = question_end {
        out.extend_from_slice(&packet[HEADER_LEN..end]);
    }
    if edns.is_some() {
        write_opt(out, max_udp_payload, rcode, ede);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns as HEdns, Message, Query as HQuery};
    use hickory_proto::rr::{DNSClass, Name, RecordType};
    use proptest::prelude::*;

    fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = HEdns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn expect_query(p: Parsed) -> Query {
        match p {
            Parsed::Query(q) => q,
            other => panic!("expected a query, got {other:?}"),
        }
    }

    fn expect_reject(p: Parsed) -> Rejection {
        match p {
            Parsed::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_plain_query_and_lowercases_the_name() {
        let bytes = query_bytes("WeB.Default.EAST.fleet.", RecordType::A, None);
        let q = expect_query(parse(&bytes));
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        let mut buf = [0u8; MAX_NAME_LEN];
        assert_eq!(
            q.qname_lower(&bytes, &mut buf),
            b"\x03web\x07default\x04east\x05fleet\x00"
        );
        assert_eq!(q.qtype, types::A);
        assert_eq!(q.question_end, bytes.len());
        assert_eq!(&bytes[12..16], b"\x03WeB");
        assert!(q.edns.is_none());
    }

    #[test]
    fn reads_edns() {
        let bytes = query_bytes("fleet.", RecordType::SOA, Some(4096));
        let q = expect_query(parse(&bytes));
        assert_eq!(q.edns.map(|e| e.udp_size), Some(4096));
        assert_eq!(udp_limit(q.edns, 1232), 1232);
        assert_eq!(
            udp_limit(
                Some(Edns {
                    udp_size: 100,
                    version: 0,
                    dnssec_ok: false
                }),
                1232
            ),
            512
        );
        assert_eq!(udp_limit(None, 1232), 512);
    }

    #[test]
    fn header_rules() {
        assert!(matches!(parse(&[0u8; 11]), Parsed::Drop));
        let mut resp = query_bytes("fleet.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(matches!(parse(&resp), Parsed::Drop));

        let mut notify = query_bytes("fleet.", RecordType::SOA, Some(1232));
        notify[2] |= 4 << 3; // opcode NOTIFY
        let r = expect_reject(parse(&notify));
        assert_eq!(r.rcode, rcode::NOTIMP);
        assert!(r.edns.is_some());

        let mut none = query_bytes("fleet.", RecordType::A, None);
        none[5] = 0;
        none.truncate(12);
        assert_eq!(expect_reject(parse(&none)).rcode, rcode::FORMERR);

        let opt = query_bytes("fleet.", RecordType::OPT, None);
        assert_eq!(expect_reject(parse(&opt)).rcode, rcode::FORMERR);
    }

    #[test]
    fn two_opts_and_badvers() {
        let mut two = query_bytes("fleet.", RecordType::A, Some(1232));
        let opt = two[two.len() - 11..].to_vec();
        two.extend_from_slice(&opt);
        two[11] = 2;
        assert_eq!(expect_reject(parse(&two)).rcode, rcode::FORMERR);

        // An OPT owned by a non-root name: FORMERR, still with our OPT in the reply.
        let mut owned = query_bytes("fleet.", RecordType::A, None);
        owned[11] = 1;
        owned.extend_from_slice(&[1, b'x', 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        let r = expect_reject(parse(&owned));
        assert_eq!(r.rcode, rcode::FORMERR);
        assert!(r.edns.is_some());

        let mut v1 = query_bytes("fleet.", RecordType::A, Some(1232));
        let n = v1.len();
        v1[n - 5] = 1; // version byte of the OPT TTL
        let r = expect_reject(parse(&v1));
        assert_eq!(r.rcode, rcode::BADVERS);
        assert!(r.question_end.is_some());
    }

    #[test]
    fn name_length_limits() {
        // 255 octets in wire form: 3 labels of 63 + one of 61 + root.
        let l63 = "a".repeat(63);
        let ok = format!("{l63}.{l63}.{l63}.{}.", "b".repeat(61));
        let mut bytes = query_bytes("fleet.", RecordType::A, None);
        bytes.truncate(12);
        let mut wire = Vec::new();
        for label in ok.trim_end_matches('.').split('.') {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        assert_eq!(wire.len(), 255);
        let mut q = bytes.clone();
        q.extend_from_slice(&wire);
        q.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(expect_query(parse(&q)).qname_len, 255);

        let mut long = bytes.clone();
        let mut wire256 = wire.clone();
        wire256.pop();
        wire256.extend_from_slice(&[1, b'c', 0]); // 257 octets
        long.extend_from_slice(&wire256);
        long.extend_from_slice(&[0, 1, 0, 1]);
        let r = expect_reject(parse(&long));
        assert_eq!(r.rcode, rcode::FORMERR);
        assert!(r.malformed);
    }

    #[test]
    fn pointer_loops_and_garbage_are_formerr() {
        let mut q = query_bytes("fleet.", RecordType::A, None);
        q.truncate(12);
        q.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]); // points at itself
        assert_eq!(expect_reject(parse(&q)).rcode, rcode::FORMERR);
        let mut q2 = q.clone();
        q2.truncate(12);
        q2.extend_from_slice(&[0x45, b'x', 0, 0, 1, 0, 1]); // extended label type
        assert_eq!(expect_reject(parse(&q2)).rcode, rcode::FORMERR);
    }

    #[test]
    fn writes_opt_with_ede() {
        let mut out = Vec::new();
        write_opt(
            &mut out,
            1232,
            rcode::BADVERS,
            Some(Ede {
                code: ede::NOT_READY,
                text: "x",
            }),
        );
        assert_eq!(
            out.len(),
            opt_len(Some(Ede {
                code: 14,
                text: "x"
            }))
        );
        assert_eq!(out[5], 1); // extended rcode 16 >> 4
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// On every generated query, the parser agrees with hickory-proto's decoder.
        #[test]
        fn agrees_with_hickory(
            labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,20}", 0..6),
            qtype in prop_oneof![Just(1u16), Just(28), Just(33), Just(16), Just(6), Just(2), Just(255), 1u16..300],
            qclass in prop_oneof![Just(1u16), Just(3), Just(255)],
            id in any::<u16>(),
            rd in any::<bool>(),
            edns in proptest::option::of(0u16..9000),
        ) {
            let mut qname = Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap();
            qname.set_fqdn(true);
            let mut m = Message::query();
            m.metadata.id = id;
            m.metadata.recursion_desired = rd;
            let mut hq = HQuery::query(qname, RecordType::from(qtype));
            hq.set_query_class(DNSClass::from(qclass));
            m.add_query(hq);
            if let Some(size) = edns {
                let mut e = HEdns::new();
                e.set_max_payload(size.max(512));
                m.set_edns(e);
            }
            let bytes = m.to_vec().unwrap();
            let oracle = Message::from_vec(&bytes).unwrap();
            match parse(&bytes) {
                Parsed::Query(q) => {
                    prop_assert_eq!(q.id, oracle.metadata.id);
                    prop_assert_eq!(q.rd, oracle.metadata.recursion_desired);
                    let oq = &oracle.queries[0];
                    prop_assert_eq!(q.qtype, u16::from(oq.query_type()));
                    prop_assert_eq!(q.qclass, u16::from(oq.query_class()));
                    let lower = oq.name().to_lowercase();
                    let mut expected = Vec::new();
                    for label in lower.iter() {
                        expected.push(label.len() as u8);
                        expected.extend_from_slice(label);
                    }
                    expected.push(0);
                    let mut buf = [0u8; MAX_NAME_LEN];
                    prop_assert_eq!(q.qname_lower(&bytes, &mut buf), &expected[..]);
                    prop_assert_eq!(q.edns.map(|e| e.udp_size), oracle.edns.as_ref().map(|e| e.max_payload()));
                }
                Parsed::Reject(r) => {
                    // Only qtype OPT is rejected among well-formed single-question queries.
                    prop_assert_eq!(qtype, 41);
                    prop_assert_eq!(r.rcode, rcode::FORMERR);
                }
                Parsed::Drop => prop_assert!(false, "dropped a valid query"),
            }
        }

        /// Random bytes never panic, and whatever hickory cannot decode we do not accept
        /// as a query either.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ours = parse(&bytes);
            if let Parsed::Query(q) = &ours {
                prop_assert!(q.question_end <= bytes.len());
                prop_assert!(q.qname_len <= MAX_NAME_LEN);
            }
        }

        /// A large corpus of mutated valid queries (bit flips, byte overwrites, cuts,
        /// insertions): never a panic, and whenever hickory-proto also decodes a packet
        /// we accept, both read the same id and question. (hickory is stricter about
        /// records we only skip, such as an unknown type in the additional section.)
        #[test]
        fn mutated_queries_agree_with_hickory_when_accepted(
            seed_name in prop_oneof![Just("web.default.east.fleet."), Just("_http._tcp.web.default.svc.fleet."), Just("fleet."), Just("x.y.")],
            edns in proptest::option::of(512u16..4096),
            mutations in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..6),
        ) {
            let mut bytes = query_bytes(seed_name, RecordType::A, edns);
            for (pos, value, kind) in mutations {
                let pos = usize::from(pos) % (bytes.len() + 1);
                match kind {
                    0 if pos < bytes.len() => bytes[pos] ^= 1 << (value % 8),
                    1 if pos < bytes.len() => bytes[pos] = value,
                    2 => bytes.truncate(pos),
                    _ => bytes.insert(pos, value),
                }
            }
            if let (Parsed::Query(q), Ok(oracle)) = (parse(&bytes), Message::from_vec(&bytes)) {
                prop_assert_eq!(q.id, oracle.metadata.id);
                prop_assert_eq!(oracle.queries.len(), 1);
                prop_assert_eq!(q.qtype, u16::from(oracle.queries[0].query_type()));
                let mut buf = [0u8; MAX_NAME_LEN];
                let ours = q.qname_lower(&bytes, &mut buf).to_vec();
                let theirs = oracle.queries[0].name().to_lowercase();
                let mut expected = Vec::new();
                for label in theirs.iter() {
                    expected.push(label.len() as u8);
                    expected.extend_from_slice(label);
                }
                expected.push(0);
                prop_assert_eq!(ours, expected);
            }
        }

        /// Truncating a valid query anywhere never yields a query that reads past the end.
        #[test]
        fn truncated_queries_are_rejected(cut in 0usize..40) {
            let bytes = query_bytes("web.default.east.fleet.", RecordType::A, Some(1232));
            let cut = cut.min(bytes.len() - 1);
            match parse(&bytes[..cut]) {
                Parsed::Drop => prop_assert!(cut < 12),
                Parsed::Reject(r) => prop_assert_eq!(r.rcode, rcode::FORMERR),
                Parsed::Query(_) => prop_assert!(false, "accepted a truncated query"),
            }
        }
    }
}

//! The answer index: (name, type) → a pre-encoded answer, NODATA or NXDOMAIN.
//!
//! This module owns the encoded form of the zone and the one function the DNS path calls
//! per query, [`AnswerIndex::respond`]. Answers are built with hickory-proto when a
//! snapshot is made and stored as the bytes that follow the question, so a reply is a
//! header, the question copied as the client sent it (0x20 case echo), the stored bytes
//! and an OPT. Every name that exists is a key, empty non-terminals included, so
//! NXDOMAIN versus NODATA is one hash lookup. It is pure: no I/O, no locks.

use std::sync::Arc;

use std::collections::{BTreeMap, HashSet};
use std::hash::Hasher as _;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustc_hash::FxHashMap;

use crate::dns::encode::{MessageWriter, wire_name};
use crate::dns::wire::{self, Ede, Parsed, ReplyHeader, rcode, types};
use crate::dns::zone::{Group, GroupId, NameRrsets, Zone};

/// Largest DNS message over TCP.
pub const TCP_MAX: usize = 65_535;

/// Records after the question, ready to copy: a prefix of an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Form<'a> {
    /// ANCOUNT, NSCOUNT, ARCOUNT.
    counts: [u16; 3],
    body: &'a [u8],
}

/// One (name, type) answer, encoded once. Records are written answers first, then
/// additionals, and compression pointers only point backwards, so every form the size
/// rules need (RFC 2181 §9) is a prefix of the one body: the full answer, the answer
/// section alone, and the first answer records that fit a 65,535-octet TCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    qtype: u16,
    ancount: u16,
    arcount: u16,
    /// Octets of the answer section (the body without additionals).
    answer_len: u32,
    /// (records, octets) of the TCP-capped form, when even the answer section does not
    /// fit 65,535 octets.
    capped: Option<(u16, u32)>,
    /// Stale data of an unreachable cluster: the reply carries EDE 3.
    stale: bool,
    body: Box<[u8]>,
}

impl Answer {
    fn full(&self) -> Form<'_> {
        Form {
            counts: [self.ancount, 0, self.arcount],
            body: &self.body,
        }
    }

    /// Without the additional section, when there is one.
    fn minimal(&self) -> Option<Form<'_>> {
        (self.arcount > 0).then(|| Form {
            counts: [self.ancount, 0, 0],
            body: &self.body[..self.answer_len as usize],
        })
    }

    fn capped(&self) -> Option<Form<'_>> {
        self.capped.map(|(n, len)| Form {
            counts: [n, 0, 0],
            body: &self.body[..len as usize],
        })
    }

    /// Size of the answer section, to pick the smallest RRset for ANY.
    fn answer_size(&self) -> usize {
        self.answer_len as usize
    }
}

/// Every RRset a name owns, one answer per type; empty for an empty non-terminal. One
/// allocation per name: the ANY answer is chosen at query time (RFC 8482: the A RRset,
/// else the smallest), which costs a scan of a handful of types on a rare query.
type NameEntry = [Answer];

fn any_answer(entry: &NameEntry) -> Option<&Answer> {
    entry
        .iter()
        .find(|a| a.qtype == types::A)
        .or_else(|| entry.iter().min_by_key(|a| a.answer_size()))
}

/// The transport a query came in on: it sets the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Whether the peer may answer yet, and what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
}

/// What happened to one query, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `false` when no reply is sent at all.
    pub replied: bool,
    pub qtype: u16,
    pub rcode: u16,
    pub truncated: bool,
    pub capped: bool,
    pub malformed: bool,
}

/// Settings the reply writer needs besides the zone.
#[derive(Debug, Clone, Copy)]
pub struct ReplySettings {
    pub max_udp_payload: u16,
}

const STALE_ANSWER: Ede = Ede {
    code: wire::ede::STALE_ANSWER,
    text: "Stale Answer",
};

const NO_REACHABLE_AUTHORITY: Ede = Ede {
    code: wire::ede::NO_REACHABLE_AUTHORITY,
    text: "No Reachable Authority",
};

const NOT_READY: Ede = Ede {
    code: wire::ede::NOT_READY,
    text: "Not Ready",
};

/// Cluster labels whose subtree answers SERVFAIL, with the EDE code.
type Unavailable = Arc<[(Box<[u8]>, u16)]>;

/// A published, immutable index: the DNS workers' view of the zone.
#[derive(Debug)]
pub struct AnswerIndex {
    /// The apex in lowercase wire form.
    apex: Arc<[u8]>,
    shards: Shards,
    /// The SOA record after its owner name (type, class, TTL, RDATA), for negative
    /// answers, whose owner is a pointer to the apex inside the echoed question.
    soa_tail: Arc<[u8]>,
    names: usize,
    /// Labels (directly under the apex) of clusters without names (withdrawn,
    /// pending), with the EDE of the SERVFAIL under them; usually empty.
    unavailable: Unavailable,
}

/// The budget for records in a TCP reply: the message cap minus header, question and
/// the largest OPT we may append.
fn tcp_budget(question_len: usize) -> usize {
    TCP_MAX - wire::HEADER_LEN - question_len - wire::opt_len(None)
}

fn build_answer(
    owner: &Name,
    rtype: RecordType,
    answers: &[Record],
    additionals: &[Record],
    stale: bool,
) -> Answer {
    let budget = tcp_budget(owner.len() + 1 + 4);
    let mut w = MessageWriter::new(owner, u16::from(rtype));
    let mut capped = None;
    for (i, r) in answers.iter().enumerate() {
        let before = w.body_len();
        w.record(r);
        if capped.is_none() && w.body_len() > budget {
            // Keep records in policy order while they fit.
            capped = Some((i as u16, before as u32));
        }
    }
    let answer_len = w.body_len() as u32;
    for r in additionals {
        w.record(r);
    }
    Answer {
        qtype: u16::from(rtype),
        ancount: answers.len() as u16,
        arcount: additionals.len() as u16,
        answer_len,
        capped,
        stale,
        body: w.into_body(),
    }
}

/// The A/AAAA records of `targets` among `names`, for the additional section. Each
/// target once, in first-seen order.
fn glue<'a>(
    names: &BTreeMap<Name, NameRrsets>,
    targets: impl Iterator<Item = &'a Name>,
) -> Vec<Record> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for target in targets.filter(|t| seen.insert(*t)) {
        if let Some(rrsets) = names.get(target) {
            for t in [RecordType::A, RecordType::AAAA] {
                out.extend(rrsets.get(&t).into_iter().flatten().cloned());
            }
        }
    }
    out
}

/// Encodes one owner name's RRsets. Additional-section glue comes from `names`, the
/// owner's own group: SRV targets and the NS target always live in the same group.
fn build_entry(
    owner: &Name,
    rrsets: &NameRrsets,
    names: &BTreeMap<Name, NameRrsets>,
    stale: bool,
) -> Arc<NameEntry> {
    rrsets
        .iter()
        .map(|(rtype, records)| {
            let additionals = glue(
                names,
                records.iter().filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(&srv.target),
                    RData::NS(ns) => Some(&ns.0),
                    _ => None,
                }),
            );
            build_answer(owner, *rtype, records, &additionals, stale)
        })
        .collect()
}

/// The SOA record after its owner name, for negative answers.
fn soa_tail(soa: &Record) -> Box<[u8]> {
    let RData::SOA(soa_data) = &soa.data else {
        unreachable!("the SOA RRset holds SOA data")
    };
    let mut rdata = wire_name(&soa_data.mname);
    rdata.extend(wire_name(&soa_data.rname));
    for v in [
        soa_data.serial,
        soa_data.refresh as u32,
        soa_data.retry as u32,
        soa_data.expire as u32,
        soa_data.minimum,
    ] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    let mut tail = Vec::with_capacity(10 + rdata.len());
    tail.extend_from_slice(&types::SOA.to_be_bytes());
    tail.extend_from_slice(&types::CLASS_IN.to_be_bytes());
    tail.extend_from_slice(&soa.ttl.to_be_bytes());
    tail.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    tail.extend_from_slice(&rdata);
    tail.into()
}

/// Shards are grouped under `GROUPS` groups of `PER_GROUP` leaves. A publish copies
/// the root (one pointer per group), every group it touched (one pointer per leaf) and
/// every leaf it touched: microseconds at any zone size, where copying one flat table
/// of pointers per publish would cost tens of them at 100k services.
const GROUPS: usize = 64;
const PER_GROUP: usize = 64;

/// One shard of the index: lowercase wire name → its answers.
type Shard = FxHashMap<Arc<[u8]>, Arc<NameEntry>>;
type ShardGroup = [Arc<Shard>; PER_GROUP];
type Shards = Arc<[Arc<ShardGroup>; GROUPS]>;

/// The (group, leaf) of a name. A seeded hash, so that within a shard the map's own
/// hash bits stay uniform.
fn shard_of(name: &[u8]) -> (usize, usize) {
    let mut h = rustc_hash::FxHasher::with_seed(0x243f_6a88_85a3_08d3);
    h.write(name);
    let bits = h.finish() >> 52;
    ((bits >> 6) as usize % GROUPS, bits as usize % PER_GROUP)
}

fn lookup<'a>(shards: &'a [Arc<ShardGroup>; GROUPS], name: &[u8]) -> Option<&'a Arc<NameEntry>> {
    let (g, l) = shard_of(name);
    shards[g][l].get(name)
}

/// The strict ancestors of a wire name below the apex (empty non-terminal candidates).
fn ancestors<'a>(name: &'a [u8], apex_len: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut pos = 0;
    std::iter::from_fn(move || {
        pos += 1 + *name.get(pos)? as usize;
        (name.len() - pos > apex_len).then(|| &name[pos..])
    })
}

/// The single writer of the answer index. It keeps, besides the shards, which names
/// each group owns and how many owned names sit below each name, so that replacing a
/// group touches only that group's names and their empty non-terminals.
#[derive(Debug)]
pub struct IndexBuilder {
    apex: Arc<[u8]>,
    shards: Shards,
    groups: FxHashMap<GroupId, Vec<Arc<[u8]>>>,
    /// Owned names below each name (RFC 8020: a name with descendants exists).
    below: FxHashMap<Arc<[u8]>, u32>,
    soa_tail: Arc<[u8]>,
    names: usize,
    empty: Arc<NameEntry>,
    unavailable: Unavailable,
}

impl IndexBuilder {
    pub fn new(apex: &Name) -> Self {
        Self {
            apex: wire_name(apex).into(),
            shards: Arc::new(std::array::from_fn(|_| {
                Arc::new(std::array::from_fn(|_| Arc::new(Shard::default())))
            })),
            groups: FxHashMap::default(),
            below: FxHashMap::default(),
            soa_tail: Arc::from(&[][..]),
            names: 0,
            empty: Arc::from(Vec::new()),
            unavailable: Arc::from(Vec::new()),
        }
    }

    fn shard_mut(&mut self, name: &[u8]) -> &mut Shard {
        let (g, l) = shard_of(name);
        let group = &mut Arc::make_mut(&mut self.shards)[g];
        Arc::make_mut(&mut Arc::make_mut(group)[l])
    }

    fn get(&self, name: &[u8]) -> Option<&Arc<NameEntry>> {
        lookup(&self.shards, name)
    }

    fn insert(&mut self, name: Arc<[u8]>, entry: Arc<NameEntry>) {
        if self.shard_mut(&name).insert(name, entry).is_none() {
            self.names += 1;
        }
    }

    fn remove(&mut self, name: &[u8]) {
        if self.shard_mut(name).remove(name).is_some() {
            self.names -= 1;
        }
    }

    /// Replaces every name of group `id` with `group`'s names.
    pub fn replace_group(&mut self, id: GroupId, group: &Group) {
        let old = self.groups.remove(&id).unwrap_or_default();
        let mut new = Vec::with_capacity(group.names.len());
        for (owner, rrsets) in &group.names {
            let key: Arc<[u8]> = wire_name(owner).into();
            let entry = build_entry(owner, rrsets, &group.names, group.stale.contains(owner));
            let existing = self.get(&key);
            let was_owned = existing.is_some_and(|e| !e.is_empty());
            // Most of a group's names survive a change unchanged (the SRV name when
            // only an address moved, `ns` when only the serial did): leaving them in
            // place spares copying their shard.
            if existing.is_none_or(|e| **e != *entry) {
                self.insert(key.clone(), entry);
            }
            if !was_owned {
                self.claim_ancestors(&key);
            }
            if let Some(soa) = rrsets.get(&RecordType::SOA).and_then(|r| r.first())
                && key == self.apex
            {
                self.soa_tail = soa_tail(soa).into();
            }
            new.push(key);
        }
        let kept: rustc_hash::FxHashSet<&[u8]> = new.iter().map(|k| &k[..]).collect();
        for key in old.iter().filter(|k| !kept.contains(&k[..])) {
            if self.below.contains_key(&key[..]) {
                let empty = self.empty.clone();
                self.insert(key.clone(), empty);
            } else {
                self.remove(key);
            }
            self.release_ancestors(key);
        }
        if !new.is_empty() {
            self.groups.insert(id, new);
        }
    }

    fn claim_ancestors(&mut self, name: &[u8]) {
        let apex_len = self.apex.len();
        for ancestor in ancestors(name, apex_len) {
            if let Some(n) = self.below.get_mut(ancestor) {
                *n += 1;
                continue;
            }
            let key: Arc<[u8]> = ancestor.into();
            self.below.insert(key.clone(), 1);
            if self.get(ancestor).is_none() {
                let empty = self.empty.clone();
                self.insert(key, empty);
            }
        }
    }

    fn release_ancestors(&mut self, name: &[u8]) {
        let apex_len = self.apex.len();
        for ancestor in ancestors(name, apex_len) {
            let Some(n) = self.below.get_mut(ancestor) else {
                continue;
            };
            *n -= 1;
            if *n == 0 {
                self.below.remove(ancestor);
                if self.get(ancestor).is_some_and(|e| e.is_empty()) {
                    self.remove(ancestor);
                }
            }
        }
    }

    /// The clusters whose whole subtree answers SERVFAIL, with its EDE code (22 for
    /// withdrawn, 14 for pending).
    pub fn set_unavailable<'a>(&mut self, clusters: impl IntoIterator<Item = (&'a str, u16)>) {
        self.unavailable = clusters
            .into_iter()
            .map(|(c, ede)| (c.to_ascii_lowercase().into_bytes().into_boxed_slice(), ede))
            .collect();
    }

    /// The index as it stands: shares every shard with the builder.
    pub fn publish(&self) -> AnswerIndex {
        AnswerIndex {
            apex: self.apex.clone(),
            shards: self.shards.clone(),
            soa_tail: self.soa_tail.clone(),
            names: self.names,
            unavailable: self.unavailable.clone(),
        }
    }
}

impl AnswerIndex {
    /// The index of a whole zone at once (dump-zone checks and tests).
    pub fn build(zone: &Zone) -> Self {
        let mut builder = IndexBuilder::new(&zone.apex);
        let group = Group {
            names: zone.names.clone(),
            stale: zone.stale.clone(),
            ..Group::default()
        };
        builder.replace_group(GroupId::Apex, &group);
        builder.set_unavailable(zone.unavailable.iter().map(|(c, ede)| (c.as_str(), *ede)));
        builder.publish()
    }

    fn get(&self, name: &[u8]) -> Option<&NameEntry> {
        lookup(&self.shards, name).map(|e| &**e)
    }

    /// Approximate heap bytes of the index: keys, answers, bodies and table slots.
    /// Walks every name, so it is for scrapes, not the answer path.
    pub fn estimated_bytes(&self) -> usize {
        const ARC_HEADER: usize = 16;
        let slot = std::mem::size_of::<(Arc<[u8]>, Arc<NameEntry>)>() + 1;
        self.shards
            .iter()
            .flat_map(|g| g.iter())
            .map(|shard| {
                shard.capacity() * slot
                    + shard
                        .iter()
                        .map(|(k, e)| {
                            ARC_HEADER * 2
                                + k.len()
                                + e.iter()
                                    .map(|a| std::mem::size_of::<Answer>() + a.body.len())
                                    .sum::<usize>()
                        })
                        .sum::<usize>()
            })
            .sum()
    }

    /// True when both indexes answer every query the same way (tests: incremental
    /// updates against a full rebuild).
    pub fn same_answers(&self, other: &AnswerIndex) -> bool {
        let entries = |idx: &AnswerIndex| -> BTreeMap<Vec<u8>, Arc<NameEntry>> {
            idx.shards
                .iter()
                .flat_map(|g| g.iter())
                .flat_map(|s| s.iter().map(|(k, v)| (k.to_vec(), v.clone())))
                .collect()
        };
        self.apex == other.apex
            && self.unavailable == other.unavailable
            && self.soa_tail == other.soa_tail
            && self.names == other.names
            && entries(self) == entries(other)
    }

    /// Number of names (owner names and empty non-terminals).
    /// The apex's labels, lowercase, leftmost first (`["fleet"]`).
    pub fn apex_labels(&self) -> Vec<String> {
        let mut labels = Vec::new();
        let mut pos = 0;
        while let Some(&len) = self.apex.get(pos) {
            if len == 0 {
                break;
            }
            let end = (pos + 1 + len as usize).min(self.apex.len());
            labels.push(String::from_utf8_lossy(&self.apex[pos + 1..end]).into_owned());
            pos = end;
        }
        labels
    }

    pub fn name_count(&self) -> usize {
        self.names
    }

    /// The EDE code if `qname` (apex at `apex_offset`) is an unavailable cluster's name
    /// or below it.
    fn under_unavailable(&self, qname: &[u8], apex_offset: usize) -> Option<u16> {
        // Find the label just before the apex: the first label under it.
        let mut pos = 0;
        let mut last = None;
        while pos < apex_offset {
            last = Some(pos);
            pos += 1 + qname[pos] as usize;
        }
        let at = last?;
        let label = &qname[at + 1..at + 1 + qname[at] as usize];
        self.unavailable
            .iter()
            .find(|(cluster, _)| **cluster == *label)
            .map(|(_, ede)| *ede)
    }

    /// Offset of the apex inside a lowercase wire name, if the name is in the zone.
    fn apex_offset(&self, qname: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while pos < qname.len() {
            if qname.len() - pos == self.apex.len() {
                return (qname[pos..] == *self.apex).then_some(pos);
            }
            if qname.len() - pos < self.apex.len() {
                return None;
            }
            pos += 1 + qname[pos] as usize;
        }
        None
    }

    /// Answers one packet into `out` (cleared first). Pure and allocation-free once
    /// `out` has grown to its working size.
    pub fn respond(
        &self,
        readiness: Readiness,
        settings: ReplySettings,
        packet: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        let query = match wire::parse(packet) {
            Parsed::Drop => {
                return Outcome {
                    replied: false,
                    qtype: 0,
                    rcode: 0,
                    truncated: false,
                    capped: false,
                    // A response (QR=1) is dropped but well-formed; a runt is not.
                    malformed: packet.len() < wire::HEADER_LEN,
                };
            }
            Parsed::Reject(r) => {
                wire::write_bare_reply(
                    out,
                    packet,
                    r.id,
                    r.opcode,
                    r.rd,
                    false,
                    false,
                    r.rcode,
                    r.question_end,
                    r.edns,
                    None,
                    settings.max_udp_payload,
                );
                return Outcome {
                    replied: true,
                    qtype: 0,
                    rcode: r.rcode,
                    truncated: false,
                    capped: false,
                    malformed: r.malformed,
                };
            }
            Parsed::Query(q) => q,
        };
        let limit = match transport {
            Transport::Udp => wire::udp_limit(query.edns, settings.max_udp_payload),
            Transport::Tcp => TCP_MAX,
        };
        let mut outcome = Outcome {
            replied: true,
            qtype: query.qtype,
            rcode: rcode::NOERROR,
            truncated: false,
            capped: false,
            malformed: false,
        };
        let bare = |out: &mut Vec<u8>, aa: bool, tc: bool, rc: u16, ede: Option<Ede>| {
            wire::write_bare_reply(
                out,
                packet,
                query.id,
                0,
                query.rd,
                aa,
                tc,
                rc,
                Some(query.question_end),
                query.edns,
                ede,
                settings.max_udp_payload,
            );
        };

        let refused = query.qclass != types::CLASS_IN
            || query.qtype == types::AXFR
            || query.qtype == types::IXFR;
        let mut qname_buf = [0u8; wire::MAX_NAME_LEN];
        let qname = query.qname_lower(packet, &mut qname_buf);
        let apex_offset = if refused {
            None
        } else {
            self.apex_offset(qname)
        };
        let Some(apex_offset) = apex_offset else {
            outcome.rcode = rcode::REFUSED;
            bare(out, false, false, rcode::REFUSED, None);
            return outcome;
        };
        if readiness == Readiness::NotReady {
            outcome.rcode = rcode::SERVFAIL;
            bare(out, false, false, rcode::SERVFAIL, Some(NOT_READY));
            return outcome;
        }
        if !self.unavailable.is_empty()
            && let Some(code) = self.under_unavailable(qname, apex_offset)
        {
            // A cluster that left without saying so, or one whose export has not
            // arrived: never a false NXDOMAIN.
            let ede = if code == wire::ede::NOT_READY {
                NOT_READY
            } else {
                NO_REACHABLE_AUTHORITY
            };
            outcome.rcode = rcode::SERVFAIL;
            bare(out, false, false, rcode::SERVFAIL, Some(ede));
            return outcome;
        }

        let question_len = query.question_end - wire::HEADER_LEN;
        let opt_len = if query.edns.is_some() {
            wire::OPT_LEN
        } else {
            0
        };
        let fits = |f: &Form| wire::HEADER_LEN + question_len + f.body.len() + opt_len <= limit;
        let entry = self.get(qname);
        let answer = entry.and_then(|entry| {
            if query.qtype == types::ANY {
                any_answer(entry)
            } else {
                entry.iter().find(|a| a.qtype == query.qtype)
            }
        });

        let (rc, form) = match (entry, answer) {
            (Some(_), Some(answer)) => {
                let full = answer.full();
                let chosen = if fits(&full) {
                    Some(full)
                } else if let Some(m) = answer.minimal().filter(|m| fits(m)) {
                    Some(m)
                } else if transport == Transport::Tcp {
                    outcome.capped = true;
                    answer.capped()
                } else {
                    None
                };
                match chosen {
                    Some(f) => (rcode::NOERROR, f),
                    None => {
                        outcome.truncated = true;
                        bare(out, true, true, rcode::NOERROR, None);
                        return outcome;
                    }
                }
            }
            (entry, _) => {
                // NODATA or NXDOMAIN: the SOA in authority, owner pointing at the apex
                // inside the echoed question.
                let rc = if entry.is_some() {
                    rcode::NOERROR
                } else {
                    rcode::NXDOMAIN
                };
                outcome.rcode = rc;
                write_reply_start(out, packet, &query, rc, [0, 1, 0], opt_len > 0);
                let pointer = 0xC000 | (wire::HEADER_LEN + apex_offset) as u16;
                out.extend_from_slice(&pointer.to_be_bytes());
                out.extend_from_slice(&self.soa_tail);
                if query.edns.is_some() {
                    wire::write_opt(out, settings.max_udp_payload, rc, None);
                }
                return outcome;
            }
        };
        write_reply_start(out, packet, &query, rc, form.counts, opt_len > 0);
        out.extend_from_slice(form.body);
        if query.edns.is_some() {
            let ede = answer.filter(|a| a.stale).map(|_| STALE_ANSWER);
            wire::write_opt(out, settings.max_udp_payload, rc, ede);
        }
        outcome
    }
}

/// Header (AA set) and the question exactly as the client sent it.
fn write_reply_start(
    out: &mut Vec<u8>,
    packet: &[u8],
    query: &wire::Query,
    rc: u16,
    counts: [u16; 3],
    with_opt: bool,
) {
    wire::write_header(
        out,
        &ReplyHeader {
            id: query.id,
            opcode: 0,
            rd: query.rd,
            aa: true,
            tc: false,
            rcode: rc,
            qdcount: 1,
            ancount: counts[0],
            nscount: counts[1],
            arcount: counts[2] + u16::from(with_opt),
        },
    );
    out.extend_from_slice(&packet[wire::HEADER_LEN..query.question_end]);
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::AAAA;

    use super::*;

    fn index_with(owner: &str, records: Vec<Record>) -> AnswerIndex {
        let apex = Name::from_ascii("fleet.").unwrap();
        let mut names = std::collections::BTreeMap::new();
        let soa = Record::from_rdata(
            apex.clone(),
            5,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(
                Name::from_ascii("ns.fleet.").unwrap(),
                Name::from_ascii("hostmaster.fleet.").unwrap(),
                1,
                7200,
                1800,
                86400,
                5,
            )),
        );
        names.insert(
            apex.clone(),
            [(RecordType::SOA, vec![soa])].into_iter().collect(),
        );
        let owner = Name::from_ascii(owner).unwrap();
        let rtype = records[0].record_type();
        names.insert(owner, [(rtype, records)].into_iter().collect());
        AnswerIndex::build(&Zone {
            apex,
            negative_ttl: 5,
            names,
            skipped: vec![],
            stale: Default::default(),
            unavailable: vec![],
        })
    }

    fn wire(name: &str) -> Vec<u8> {
        wire_name(&Name::from_ascii(name).unwrap())
    }

    #[test]
    fn apex_offset_is_label_aligned() {
        let idx = index_with(
            "a.b.fleet.",
            vec![Record::from_rdata(
                Name::from_ascii("a.b.fleet.").unwrap(),
                5,
                RData::A(hickory_proto::rr::rdata::A([10, 0, 0, 1].into())),
            )],
        );
        assert_eq!(idx.apex_offset(&wire("fleet.")), Some(0));
        assert_eq!(idx.apex_offset(&wire("x.fleet.")), Some(2));
        assert_eq!(idx.apex_offset(&wire("xfleet.")), None);
        assert_eq!(idx.apex_offset(&wire("fleet.x.")), None);
        assert_eq!(idx.apex_offset(&wire(".")), None);
        // Every ancestor of an owner exists: b.fleet. is an empty non-terminal.
        assert!(idx.get(&wire("b.fleet.")).unwrap().is_empty());
    }

    #[test]
    fn oversized_rrsets_get_a_capped_tcp_form_that_fits() {
        let owner = "big.default.east.fleet.";
        let records: Vec<Record> = (0..5000u32)
            .map(|i| {
                Record::from_rdata(
                    Name::from_ascii(owner).unwrap(),
                    5,
                    RData::AAAA(AAAA(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)))),
                )
            })
            .collect();
        let idx = index_with(owner, records);
        let entry = idx.get(&wire(owner)).unwrap();
        let answer = &entry[0];
        let capped = answer
            .capped()
            .expect("5,000 AAAA records exceed 65,535 octets");
        let question_len = wire(owner).len() + 4;
        assert!(capped.body.len() <= tcp_budget(question_len));
        // 28 octets per compressed AAAA record: as many as fit, no fewer.
        let n = usize::from(capped.counts[0]);
        assert_eq!(capped.body.len(), n * 28);
        assert!(
            capped.body.len() + 28 > tcp_budget(question_len),
            "{n} records"
        );
    }
}

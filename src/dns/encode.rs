//! Wire encoding of pre-built answers, with name compression on every name.
//!
//! This module owns how an answer's records become the bytes that follow the question.
//! hickory-proto's encoder stops compressing after 120 names and 64 pointer candidates,
//! which makes a 1,000-endpoint headless answer more than twice its size and pushes SRV
//! sets of that size past the 65,535-octet TCP limit. Here every owner name and every
//! name in NS/SOA data is compressed (RFC 1035 §4.1.4); SRV targets are written in full
//! (RFC 2782) but later names may point at them. Pure, used at snapshot time only.

use hickory_proto::rr::{Name, RData, Record};
use rustc_hash::FxHashMap;

use crate::dns::wire::{self, types};

/// Pointers can only reach the first 16 KiB of a message.
const MAX_POINTER: usize = 0x3FFF;

/// Writes a message from the question on, remembering where every name suffix is.
pub struct MessageWriter {
    buf: Vec<u8>,
    suffixes: FxHashMap<Box<[u8]>, u16>,
    question_end: usize,
}

/// The lowercase wire form of a name.
pub fn wire_name(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

impl MessageWriter {
    /// Starts a message whose question is `(qname, qtype, IN)` after a 12-octet header.
    pub fn new(qname: &Name, qtype: u16) -> Self {
        let mut w = Self {
            buf: vec![0; wire::HEADER_LEN],
            suffixes: FxHashMap::default(),
            question_end: 0,
        };
        w.name(qname, true);
        w.buf.extend_from_slice(&qtype.to_be_bytes());
        w.buf.extend_from_slice(&types::CLASS_IN.to_be_bytes());
        w.question_end = w.buf.len();
        w
    }

    /// Bytes written after the question.
    pub fn body_len(&self) -> usize {
        self.buf.len() - self.question_end
    }

    /// Everything after the question.
    pub fn into_body(self) -> Box<[u8]> {
        self.buf[self.question_end..].into()
    }

    /// Writes a name, compressed against earlier names when `compress`; its suffixes
    /// become pointer targets either way.
    fn name(&mut self, name: &Name, compress: bool) {
        let full = wire_name(name);
        let mut boundary = 0;
        while full[boundary] != 0 {
            let suffix = &full[boundary..];
            if compress && let Some(&at) = self.suffixes.get(suffix) {
                self.write_labels(&full[..boundary], &full);
                self.buf.extend_from_slice(&(0xC000 | at).to_be_bytes());
                return;
            }
            boundary += 1 + full[boundary] as usize;
        }
        self.write_labels(&full[..full.len() - 1], &full);
        self.buf.push(0);
    }

    /// Writes `labels` (a prefix of `full`) and registers each suffix of `full` that
    /// starts inside them.
    fn write_labels(&mut self, labels: &[u8], full: &[u8]) {
        let start = self.buf.len();
        let mut pos = 0;
        while pos < labels.len() {
            if start + pos <= MAX_POINTER {
                self.suffixes
                    .entry(full[pos..].into())
                    .or_insert((start + pos) as u16);
            }
            pos += 1 + labels[pos] as usize;
        }
        self.buf.extend_from_slice(labels);
    }

    /// Appends one record.
    pub fn record(&mut self, r: &Record) {
        self.name(&r.name, true);
        self.buf
            .extend_from_slice(&u16::from(r.record_type()).to_be_bytes());
        self.buf.extend_from_slice(&types::CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&r.ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        match &r.data {
            RData::A(a) => self.buf.extend_from_slice(&a.0.octets()),
            RData::AAAA(a) => self.buf.extend_from_slice(&a.0.octets()),
            RData::NS(ns) => self.name(&ns.0, true),
            RData::SOA(soa) => {
                self.name(&soa.mname, true);
                self.name(&soa.rname, true);
                for v in [
                    soa.serial,
                    soa.refresh as u32,
                    soa.retry as u32,
                    soa.expire as u32,
                    soa.minimum,
                ] {
                    self.buf.extend_from_slice(&v.to_be_bytes());
                }
            }
            RData::SRV(srv) => {
                for v in [srv.priority, srv.weight, srv.port] {
                    self.buf.extend_from_slice(&v.to_be_bytes());
                }
                // RFC 2782: the target is never compressed.
                self.name(&srv.target, false);
            }
            RData::TXT(txt) => {
                for s in txt.txt_data.iter() {
                    // Character-strings are at most 255 octets; the config and
                    // services-file checks keep them so.
                    let s = &s[..s.len().min(255)];
                    self.buf.push(s.len() as u8);
                    self.buf.extend_from_slice(s);
                }
            }
            other => unreachable!("the zone never holds {:?} records", other.record_type()),
        }
        let rdlen = (self.buf.len() - len_at - 2) as u16;
        self.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;
    use hickory_proto::rr::rdata::{A, NS, SOA, SRV, TXT};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// Builds a full message (header with counts + question + body) for hickory to decode.
    fn message(qname: &str, qtype: RecordType, records: &[Record]) -> Message {
        let mut w = MessageWriter::new(&name(qname), u16::from(qtype));
        for r in records {
            w.record(r);
        }
        let mut bytes = w.buf.clone();
        bytes[2] = 0x84; // QR, AA
        bytes[5] = 1;
        bytes[7] = records.len() as u8;
        Message::from_vec(&bytes).expect("hickory decodes our encoding")
    }

    #[test]
    fn every_owner_name_is_compressed_and_decodes_back() {
        let owner = name("big.default.east.fleet.");
        let records: Vec<Record> = (0..200u32)
            .map(|i| {
                Record::from_rdata(
                    owner.clone(),
                    5,
                    RData::A(A(Ipv4Addr::from(0x0a00_0000 + i))),
                )
            })
            .collect();
        let mut w = MessageWriter::new(&owner, 1);
        for r in &records {
            w.record(r);
        }
        // 2 (pointer) + 10 (fixed) + 4 (address) per record, for all 200.
        assert_eq!(w.body_len(), 200 * 16);
        let m = message("big.default.east.fleet.", RecordType::A, &records);
        assert_eq!(m.answers, records);
    }

    #[test]
    fn srv_targets_are_written_in_full_and_other_rdata_round_trips() {
        let records = vec![
            Record::from_rdata(
                name("_http._tcp.web.default.svc.fleet."),
                5,
                RData::SRV(SRV::new(0, 100, 80, name("web.default.east.fleet."))),
            ),
            Record::from_rdata(
                name("web.default.east.fleet."),
                5,
                RData::A(A([10, 0, 0, 1].into())),
            ),
            Record::from_rdata(name("fleet."), 5, RData::NS(NS(name("ns.fleet.")))),
            Record::from_rdata(
                name("fleet."),
                5,
                RData::SOA(SOA::new(
                    name("ns.fleet."),
                    name("hostmaster.fleet."),
                    7,
                    7200,
                    1800,
                    86400,
                    5,
                )),
            ),
            Record::from_rdata(
                name("east.fleet."),
                5,
                RData::TXT(TXT::new(vec!["cluster=east".into(), "a=b".into()])),
            ),
        ];
        let m = message(
            "_http._tcp.web.default.svc.fleet.",
            RecordType::SRV,
            &records,
        );
        assert_eq!(m.answers, records);
        let mut w = MessageWriter::new(&name("_http._tcp.web.default.svc.fleet."), 33);
        w.record(&records[0]);
        let body = w.into_body();
        let target = wire_name(&name("web.default.east.fleet."));
        assert!(
            body.windows(target.len()).any(|win| win == &target[..]),
            "SRV target uncompressed"
        );
    }
}

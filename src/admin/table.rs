//! `fleetdns query` as people read it: the admin API's documents as aligned tables.
//!
//! This module owns the human output of the CLI. It is pure (documents in, text
//! out), so the tests pin the exact layout; `--json` prints the documents instead.

use std::fmt::Write as _;

use super::api::{ClustersDoc, PeersDoc, RecordDoc, ResolveDoc, ServiceDoc, ServicesDoc};

/// Columns padded to their widest cell, two spaces apart; the last is not padded.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

/// An age in seconds as `12s`, `5m`, `3h`.
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// `fleetdns query clusters`; `now_ms` ages the state changes.
pub fn clusters(doc: &ClustersDoc, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = doc
        .clusters
        .iter()
        .map(|c| {
            let since = c
                .state_since_ms
                .map(|ms| age(now_ms.saturating_sub(ms) as f64 / 1000.0));
            let state = match since {
                Some(since) => format!("{} ({since})", c.state.as_str()),
                None => c.state.as_str().to_string(),
            };
            let replicas = c
                .replicas
                .iter()
                .map(|r| {
                    let mut s = r.node_id.clone();
                    if !r.live {
                        s.push_str(" (dead)");
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut versions: Vec<String> = c
                .replicas
                .iter()
                .filter_map(|r| r.version.clone())
                .collect();
            versions.sort();
            versions.dedup();
            let labels = c
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                if c.local {
                    format!("{}*", c.id)
                } else {
                    c.id.clone()
                },
                state,
                c.services.to_string(),
                if replicas.is_empty() {
                    "-".into()
                } else {
                    replicas
                },
                or_dash(c.root.as_ref().map(|r| format!("{}/{}", r.epoch, r.seq))),
                or_dash(c.last_update_age_seconds.map(|a| format!("{} ago", age(a)))),
                if versions.is_empty() {
                    "-".into()
                } else {
                    versions.join(",")
                },
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels
                },
            ]
        })
        .collect();
    let mut out = render(
        &[
            "CLUSTER", "STATE", "SERVICES", "REPLICAS", "ROOT", "UPDATED", "VERSION", "LABELS",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "(* local cluster; ROOT is epoch/seq of the adopted export; generation {})",
        doc.generation
    );
    out
}

/// `fleetdns query peers`.
pub fn peers(doc: &PeersDoc) -> String {
    if doc.self_node.is_none() {
        return format!(
            "no mesh: this peer serves a static fleet (generation {})\n",
            doc.generation
        );
    }
    let rows: Vec<Vec<String>> = doc
        .peers
        .iter()
        .map(|p| {
            let me = doc.self_node.as_deref() == Some(p.node_id.as_str());
            vec![
                if me {
                    format!("{}*", p.node_id)
                } else {
                    p.node_id.clone()
                },
                p.address.to_string(),
                if p.live { "live" } else { "dead" }.into(),
                or_dash(p.cluster.clone()),
                or_dash(p.role.map(|r| r.as_str().to_string())),
                or_dash(p.version.clone()),
                p.generation.to_string(),
            ]
        })
        .collect();
    let mut out = render(
        &[
            "NODE",
            "ADDRESS",
            "LIVENESS",
            "CLUSTER",
            "ROLE",
            "VERSION",
            "GENERATION",
        ],
        &rows,
    );
    let _ = writeln!(out, "(* this peer; generation {})", doc.generation);
    out
}

fn service_rows(s: &ServiceDoc, rows: &mut Vec<Vec<String>>) {
    let name = format!("{}/{}", s.namespace, s.name);
    let merged = s.merged.as_ref().map_or_else(
        || "no merged name".to_string(),
        |m| {
            let mut text = format!("{} → {}", m.policy, m.chosen.join(","));
            if m.stale {
                text.push_str(" (stale)");
            }
            text
        },
    );
    rows.push(vec![
        name,
        "svc".into(),
        "-".into(),
        "merged".into(),
        merged,
        "-".into(),
        String::new(),
    ]);
    for c in &s.clusters {
        let served = if c.served.is_empty() {
            "-".to_string()
        } else {
            c.served
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut notes: Vec<String> = Vec::new();
        if let Some(reason) = c.reason {
            notes.push(format!("not served: {}", reason.as_str()));
        }
        notes.extend(
            c.refused
                .iter()
                .map(|r| format!("{} refused: {}", r.address, r.reason.as_str())),
        );
        if c.stale {
            notes.push("stale".into());
        }
        rows.push(vec![
            String::new(),
            c.cluster.clone(),
            c.state.as_str().into(),
            c.mode.clone(),
            served,
            format!("{}/{}", c.ready, c.endpoints.len()),
            notes.join("; "),
        ]);
    }
}

const SERVICE_HEADER: [&str; 7] = [
    "SERVICE", "CLUSTER", "STATE", "MODE", "SERVED", "READY", "NOTES",
];

/// `fleetdns query services`.
pub fn services(doc: &ServicesDoc) -> String {
    let mut rows = Vec::new();
    for s in &doc.services {
        service_rows(s, &mut rows);
    }
    let mut out = render(&SERVICE_HEADER, &rows);
    let _ = writeln!(
        out,
        "({} services; generation {})",
        doc.services.len(),
        doc.generation
    );
    out
}

/// `fleetdns query services NAMESPACE/NAME`.
pub fn service(doc: &ServiceDoc, generation: u64) -> String {
    let mut rows = Vec::new();
    service_rows(doc, &mut rows);
    let mut out = render(&SERVICE_HEADER, &rows);
    let ports = doc
        .clusters
        .first()
        .map(|c| {
            c.ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n} {}/{}", p.port, p.protocol),
                    None => format!("{}/{}", p.port, p.protocol),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if !ports.is_empty() {
        let _ = writeln!(out, "ports: {ports}");
    }
    let _ = writeln!(out, "(generation {generation})");
    out
}

fn section(out: &mut String, title: &str, records: &[RecordDoc]) {
    if records.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}:");
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                format!("  {}", r.name),
                r.ttl.to_string(),
                r.rtype.clone(),
                r.data.clone(),
            ]
        })
        .collect();
    // No header: the sections read like dig's.
    let table = render(&["", "", "", ""], &rows);
    out.push_str(table.split_once('\n').map_or("", |(_, rest)| rest));
}

/// `fleetdns query resolve NAME [TYPE]`.
pub fn resolve(doc: &ResolveDoc) -> String {
    let mut out = String::new();
    let mut flags = Vec::new();
    for (on, name) in [
        (doc.flags.aa, "aa"),
        (doc.flags.tc, "tc"),
        (doc.flags.rd, "rd"),
        (doc.flags.ra, "ra"),
    ] {
        if on {
            flags.push(name);
        }
    }
    let _ = writeln!(
        out,
        "{} {}: {} (flags: {}; generation {})",
        doc.name,
        doc.qtype,
        doc.rcode,
        flags.join(" "),
        doc.generation
    );
    section(&mut out, "answer", &doc.answer);
    section(&mut out, "authority", &doc.authority);
    section(&mut out, "additional", &doc.additional);
    for e in &doc.ede {
        let _ = writeln!(out, "extended error {}: {}", e.code, e.text);
    }
    if doc.udp_truncated {
        let _ = writeln!(
            out,
            "over UDP the answer is truncated (TC): clients retry over TCP"
        );
    }
    let why = &doc.explanation;
    let _ = writeln!(out, "why ({}):", why.kind);
    for reason in &why.reasons {
        let _ = writeln!(out, "  {reason}");
    }
    for s in &why.skipped {
        let _ = writeln!(out, "  skipped {}: {}", s.cluster, s.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::{
        ClusterDoc, EdeDoc, Explanation, FlagsDoc, ReplicaDoc, RootDoc, SkippedDoc,
    };
    use crate::status::Role;
    use crate::view::ClusterState;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let text = render(
            &["A", "BB"],
            &[
                vec!["long-cell".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A          BB\nlong-cell  x\ns          y\n");
    }

    #[test]
    fn clusters_table_shows_state_age_root_and_versions() {
        let doc = ClustersDoc {
            generation: 7,
            local: "east".into(),
            clusters: vec![
                ClusterDoc {
                    id: "east".into(),
                    local: true,
                    labels: [("region".to_string(), "us-east".to_string())].into(),
                    state: ClusterState::Live,
                    state_since_ms: None,
                    replicas: vec![ReplicaDoc {
                        node_id: "east/0".into(),
                        live: true,
                        role: Some(Role::Publisher),
                        version: Some("0.1.0".into()),
                    }],
                    root: None,
                    services: 4,
                    last_update_age_seconds: None,
                },
                ClusterDoc {
                    id: "west".into(),
                    local: false,
                    labels: Default::default(),
                    state: ClusterState::Unreachable,
                    state_since_ms: Some(10_000),
                    replicas: vec![ReplicaDoc {
                        node_id: "west/0".into(),
                        live: false,
                        role: Some(Role::Publisher),
                        version: Some("0.1.0".into()),
                    }],
                    root: Some(RootDoc {
                        node_id: "west/0".into(),
                        epoch: 3,
                        seq: 5,
                        origin_ms: 1_000,
                        adopted_ms: 1_100,
                    }),
                    services: 2,
                    last_update_age_seconds: Some(300.0),
                },
            ],
        };
        let text = clusters(&doc, 25_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("CLUSTER  STATE"), "{text}");
        assert!(
            lines[1].starts_with("east*  ") && lines[1].contains("region=us-east"),
            "{text}"
        );
        assert!(lines[2].contains("unreachable (15s)"), "{text}");
        assert!(
            lines[2].contains("west/0 (dead)") && lines[2].contains("3/5"),
            "{text}"
        );
        assert!(
            lines[2].contains("5m ago") && lines[2].contains("0.1.0"),
            "{text}"
        );
        assert!(lines[3].contains("generation 7"), "{text}");
    }

    #[test]
    fn resolve_shows_records_ede_and_reasons() {
        let doc = ResolveDoc {
            generation: 3,
            name: "web.default.west.fleet.".into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            flags: FlagsDoc {
                aa: true,
                tc: false,
                rd: true,
                ra: false,
            },
            answer: vec![RecordDoc {
                name: "web.default.west.fleet.".into(),
                rtype: "A".into(),
                ttl: 5,
                data: "203.0.113.20".into(),
            }],
            authority: vec![],
            additional: vec![],
            ede: vec![EdeDoc {
                code: 3,
                text: "Stale Answer".into(),
            }],
            udp_truncated: false,
            explanation: Explanation {
                kind: "cluster-service".into(),
                reasons: vec!["cluster west is unreachable".into()],
                policy: None,
                contributed: vec!["west".into()],
                skipped: vec![SkippedDoc {
                    cluster: "central".into(),
                    reason: "not-connected".into(),
                }],
            },
        };
        let text = resolve(&doc);
        assert!(
            text.starts_with("web.default.west.fleet. A: NOERROR (flags: aa rd; generation 3)\n"),
            "{text}"
        );
        assert!(
            text.contains("answer:\n  web.default.west.fleet.  5  A  203.0.113.20\n"),
            "{text}"
        );
        assert!(text.contains("extended error 3: Stale Answer"), "{text}");
        assert!(text.contains("why (cluster-service):\n  cluster west is unreachable\n  skipped central: not-connected\n"), "{text}");
    }
}

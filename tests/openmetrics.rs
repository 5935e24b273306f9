//! `/metrics` read by a real OpenMetrics parser: the Python `prometheus-client`
//! package's strict `openmetrics.parser` (from PyPI, in a virtualenv under the target
//! directory), before and after queries, with counters moving by what was served.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Q, TestPeer, answers, demo_files, tcp, udp};
use hickory_proto::rr::RecordType;

/// A virtualenv with `prometheus-client`, made once per target directory.
fn python() -> PathBuf {
    support::python_venv("openmetrics", &["prometheus-client==0.21.1"]).join("bin/python")
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// One parsed sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Every sample of an exposition, by the strict parser (which refuses a malformed
/// exposition, so a parse is itself the format check).
fn parse(python: &Path, exposition: &str) -> Vec<Sample> {
    let mut command = Command::new(python);
    command.args(["-c", PARSE]);
    let stdout = support::filter_through(
        command,
        exposition.as_bytes(),
        "the OpenMetrics parser (refusing /metrics)",
    );
    let rows: Vec<(String, std::collections::BTreeMap<String, String>, f64)> =
        serde_yaml::from_slice(&stdout).expect("the parser's JSON");
    rows.into_iter()
        .map(|(name, labels, value)| (name, labels.into_iter().collect(), value))
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("{name} {labels:?} not parsed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_openmetrics_parser_reads_metrics_and_counters_move() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let peer = TestPeer::start("east", &demo_files(), "").await;
    let before = parse(&python, &peer.metrics_text().await);

    let web = Q::new("web.default.east.fleet.", RecordType::A);
    for _ in 0..4 {
        assert_eq!(answers(&udp(peer.dns, &web).await), vec!["10.96.0.10"]);
    }
    assert_eq!(answers(&tcp(peer.dns, &web).await), vec!["10.96.0.10"]);
    let after = parse(&python, &peer.metrics_text().await);

    let a_noerror = [("qtype", "A"), ("rcode", "NOERROR")];
    assert_eq!(
        value(&after, "fleetdns_dns_queries_total", &a_noerror)
            - value(&before, "fleetdns_dns_queries_total", &a_noerror),
        5.0
    );
    let answered = |s| value(s, "fleetdns_dns_answer_duration_seconds_count", &[]);
    assert_eq!(answered(&after) - answered(&before), 5.0);
    assert_eq!(
        value(&after, "fleetdns_dns_tcp_connections_accepted_total", &[])
            - value(&before, "fleetdns_dns_tcp_connections_accepted_total", &[]),
        1.0
    );
    assert_eq!(value(&after, "fleetdns_ready", &[]), 1.0);
}

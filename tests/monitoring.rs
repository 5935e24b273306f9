//! The monitoring kit in `deploy/monitoring/`: the alert rules pass `promtool check
//! rules`, each alert fires on synthetic series (`promtool test rules`), and every
//! metric the rules and the Grafana dashboard use appears in a live `/metrics` scrape
//! of `fleetdns demo`.

mod common;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TIMEOUT, http_get, metric_value};
use support::require_tool;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn promtool(args: &[&str]) {
    let out = Command::new(require_tool("promtool", "prometheus"))
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_each_fires_on_synthetic_series() {
    promtool(&["check", "rules", "alerts.yaml"]);
    promtool(&["test", "rules", "alerts.test.yaml"]);
}

/// Every `fleetdns_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("fleetdns_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Stops the demo however the test ends.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        // Bounded: a demo that does not stop must not hang the test run.
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_every_metric_the_dashboard_and_rules_use_is_served() {
    let dashboard = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    let json: serde_yaml::Value = serde_yaml::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(json["panels"].as_sequence().is_some_and(|p| p.len() >= 10));
    let rules = std::fs::read_to_string(monitoring().join("alerts.yaml")).unwrap();
    let mut used = metric_names(&dashboard);
    used.extend(metric_names(&rules));
    assert!(used.len() >= 15, "{used:?}");

    let _demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_fleetdns"))
            .arg("demo")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo"),
    );
    let ops = "127.0.0.1:9153".parse().unwrap();
    let admin = "127.0.0.1:8053".parse().unwrap();
    // Once east sees the whole fleet live (and its admin API has been asked once),
    // every series has been written.
    let scrape = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::spawn(http_get(ops, "/metrics")),
            )
            .await
                && metric_value(&r.body, "fleetdns_mesh_clusters{state=\"live\"}") == Some(3.0)
                && r.body.contains("fleetdns_admin_requests_total{")
            {
                return r.body;
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::spawn(http_get(admin, "/v1/clusters")),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the demo serves /metrics with three live clusters");
    let served: Vec<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in &used {
        assert!(
            served.iter().any(|s| s == name),
            "{name} (used by the dashboard or the rules) is not in the scrape"
        );
    }
}

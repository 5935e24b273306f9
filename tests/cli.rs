//! The `fleetdns` command as a user runs it: check, dump-zone, run and demo.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use hickory_proto::rr::RecordType;

fn fleetdns() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetdns"))
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo/fleet.yaml")
}

fn run(args: &[&str]) -> Output {
    fleetdns().args(args).output().expect("run fleetdns")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_the_demo_config() {
    let out = run(&["check", "--config", demo_config().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("cluster west: 3 services"), "{stdout}");
}

fn write_config(dir: &Path, config: &str, files: &[(&str, &str)]) -> PathBuf {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let path = dir.join("fleet.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn check_names_the_bad_key_or_value_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    // (config, services files to write, what the error must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 9] = [
        (
            "fleet: f\ncluster: east\nsource: {kubernetes: {kubeconfig: nokube.yaml}}\n",
            &[],
            &["source.kubernetes.kubeconfig", "nokube.yaml"],
        ),
        (
            "fleet: f\ncluster: east\nsource: {file: a.yaml}\nadmin: {listen: \"127.0.0.1:1\", token_file: notoken}\n",
            &[("a.yaml", "services: []\n")],
            &["notoken"],
        ),
        (
            "fleet: f\ncluster: east\nsource: {file: a.yaml}\ndns: {advertise: \"${FLEETDNS_TEST_UNSET}\"}\n",
            &[("a.yaml", "services: []\n")],
            &["FLEETDNS_TEST_UNSET", "line 4"],
        ),
        (
            "fleet: f\ncluster: svc\nsource: {file: a.yaml}\n",
            &[],
            &["cluster", "svc", "reserved"],
        ),
        (
            "fleet: f\ncluster: east\nsource: {files: {east: a.yaml, dns-version: b.yaml}}\n",
            &[],
            &["source.files.dns-version", "reserved"],
        ),
        (
            "fleet: f\ncluster: east\ndns: {ttl: forever}\nsource: {file: a.yaml}\n",
            &[],
            &["dns.ttl", "forever"],
        ),
        (
            "fleet: f\ncluster: east\nsource: {file: a.yaml}\n",
            &[(
                "a.yaml",
                "services:\n  - name: web\n    namespace: default\n    cluster_ips: [10.0.0.300]\n",
            )],
            &["a.yaml", "10.0.0.300", "line 4"],
        ),
        (
            "fleet: f\ncluster: east\nsource: {file: missing.yaml}\n",
            &[],
            &["source.file", "missing.yaml"],
        ),
        (
            "fleet: f\ncluster: east\nsource: {files: {east: e.yaml, west: nowhere.yaml}}\n",
            &[("e.yaml", "services: []\n")],
            &["source.files.west", "nowhere.yaml"],
        ),
    ];
    for (config, files, needles) in cases {
        let path = write_config(dir.path(), config, files);
        let out = run(&["check", "--config", path.to_str().unwrap()]);
        assert!(!out.status.success(), "accepted: {config}");
        let err = stderr(&out);
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }
}

#[test]
fn check_accepts_a_kubernetes_source_without_contacting_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n";
    let path = write_config(
        dir.path(),
        "fleet: f\ncluster: east\nsource: {kubernetes: {kubeconfig: kc.yaml}}\n",
        &[("kc.yaml", kubeconfig)],
    );
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Kubernetes API from kubeconfig")
            && stdout.contains("fleetdns/fleetdns-east"),
        "{stdout}"
    );
}

#[test]
fn dump_zone_writes_a_zone_file() {
    let out = run(&["dump-zone", "--config", demo_config().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let zone = String::from_utf8_lossy(&out.stdout);
    let first_record = zone.lines().find(|l| !l.starts_with('$')).unwrap();
    assert!(
        first_record.starts_with("fleet. 5 IN SOA ns.fleet. hostmaster.fleet. "),
        "{first_record}"
    );
    for line in [
        "web.default.svc.fleet. 5 IN A 10.96.0.10",
        "web.default.west.fleet. 5 IN A 198.51.100.10",
        "_postgres._tcp.db.shop.east.fleet. 5 IN SRV 0 100 5432 db-0.db.shop.east.fleet.",
        "dns-version.fleet. 5 IN TXT \"fleetdns-1\"",
    ] {
        assert!(
            zone.lines().any(|l| l == line),
            "missing {line:?} in\n{zone}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.zone");
    let out = run(&[
        "dump-zone",
        "--config",
        demo_config().to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(
        std::fs::read_to_string(file)
            .unwrap()
            .contains("east.fleet. 5 IN TXT")
    );
}

#[tokio::test]
async fn a_second_instance_on_the_same_address_fails_loudly() {
    let peer = TestPeer::start("east", &demo_files(), "").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "fleet: f\ncluster: east\ndns: {{listen: [\"{}\"]}}\nsource: {{file: a.yaml}}\n",
        peer.dns
    );
    let path = write_config(dir.path(), &config, &[("a.yaml", "services: []\n")]);
    let out =
        tokio::task::spawn_blocking(move || run(&["run", "--config", path.to_str().unwrap()]))
            .await
            .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("in use") && err.contains(&peer.dns.to_string()),
        "{err}"
    );
    // The first instance keeps serving.
    let m = udp(peer.dns, &Q::new("web.default.svc.fleet.", RecordType::A)).await;
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
}

/// `fleetdns demo` from a directory without `config/demo`: the embedded files, served on
/// 127.0.0.1:8853, stopped cleanly by Ctrl-C (SIGINT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_demo_serves_the_embedded_fleet_and_stops_on_ctrl_c() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = fleetdns()
        .arg("demo")
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Drain its logs: a full stderr pipe would block the demo on its next log line.
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let printed = tokio::time::timeout(TIMEOUT, printed)
        .await
        .expect("demo printed its banner")
        .unwrap();
    assert!(
        printed.iter().any(|l| l.contains("dig @127.0.0.1 -p 8853")),
        "{printed:?}"
    );

    let dns = "127.0.0.1:8853".parse().unwrap();
    let m = tokio::time::timeout(TIMEOUT, async {
        loop {
            let m = udp(dns, &Q::new("web.default.svc.fleet.", RecordType::A)).await;
            if m.metadata.response_code == hickory_proto::op::ResponseCode::NoError {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("demo became ready");
    assert_eq!(answers(&m), vec!["10.96.0.10"]);
    let m = tcp(dns, &Q::new("catalog.shop.svc.fleet.", RecordType::AAAA)).await;
    assert_eq!(answers(&m), vec!["2001:db8:b::30"]);

    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let pid = child.id() as i32;
    let exited =
        tokio::time::timeout(TIMEOUT, tokio::task::spawn_blocking(move || child.wait())).await;
    let Ok(status) = exited else {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!(
            "the demo did not stop within {TIMEOUT:?} of Ctrl-C; its log:\n{}",
            logs.join().unwrap()
        );
    };
    let status = status.unwrap().unwrap();
    assert!(
        status.success(),
        "demo exits 0 on Ctrl-C: {status:?}\n{}",
        logs.join().unwrap()
    );
    // The embedded files it wrote to a temporary directory are gone.
    let dir = printed
        .iter()
        .find_map(|l| l.strip_prefix("services files: "))
        .and_then(|rest| rest.split(' ').next())
        .expect("the demo names its files' directory");
    assert!(dir.contains("fleetdns-demo-"), "{dir}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

#[test]
fn keygen_makes_a_ca_and_leaves_that_name_their_cluster() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("creds");
    let out_s = out.to_str().unwrap();
    let o = run(&["keygen", "--fleet", "prod", "--out", out_s, "east", "west"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("new fleet CA"));
    for key in ["ca.key", "east.key", "west.key"] {
        let mode = std::fs::metadata(out.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is private: {mode:o}");
    }
    let east = std::fs::read_to_string(out.join("east.pem")).unwrap();
    assert_eq!(
        fleetdns::identity::certificate_uris(&east).unwrap(),
        vec!["fleetdns://prod/cluster/east"]
    );
    assert_eq!(::pem::parse_many(&east).unwrap().len(), 2, "leaf then CA");
    let ca = std::fs::read_to_string(out.join("ca.pem")).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("trust-bundle.pem")).unwrap(),
        ca
    );

    // A later run reuses the CA for a new cluster, and never overwrites a leaf or
    // the bundle (which may hold a second CA during a rotation).
    let rotated = format!("{ca}# and a new CA would follow here\n");
    std::fs::write(out.join("trust-bundle.pem"), &rotated).unwrap();
    let o = run(&["keygen", "--fleet", "prod", "--out", out_s, "central"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("reused the fleet CA"));
    assert_eq!(std::fs::read_to_string(out.join("ca.pem")).unwrap(), ca);
    let central = std::fs::read_to_string(out.join("central.pem")).unwrap();
    assert!(
        central.ends_with(&ca),
        "central's chain ends with the same CA"
    );
    let o = run(&["keygen", "--fleet", "prod", "--out", out_s, "east"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("east.pem exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(out.join("east.pem")).unwrap(), east);

    assert_eq!(
        std::fs::read_to_string(out.join("trust-bundle.pem")).unwrap(),
        rotated
    );
    // Another fleet's CA is not reused.
    let o = run(&["keygen", "--fleet", "staging", "--out", out_s, "north"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("CA of fleet \"prod\""),
        "{}",
        stderr(&o)
    );

    // check refuses a mesh config whose key is not its certificate's.
    let config = out.join("east-fleet.yaml");
    std::fs::write(out.join("east.yaml"), "services: []\n").unwrap();
    std::fs::write(
        &config,
        "fleet: prod\ncluster: east\nsource: {file: east.yaml}\nmesh: {listen: \"127.0.0.1:7999\", cert: east.pem, key: west.key, trust_bundle: [ca.pem]}\n",
    )
    .unwrap();
    let o = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("west.key is not the key of the certificate"),
        "{}",
        stderr(&o)
    );

    // Bad input names the value.
    for (args, needle) in [
        (vec!["--fleet", "Prod", "east"], "\"Prod\""),
        (vec!["--fleet", "prod", "svc"], "svc"),
        (vec!["--fleet", "prod", "East"], "East"),
    ] {
        let mut all = vec!["keygen", "--out", out_s];
        all.extend(args);
        let o = run(&all);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
}

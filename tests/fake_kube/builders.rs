//! Realistic objects for tests, shaped as the API server returns them after defaulting
//! (field names and types as in k8s-openapi 0.29 / the MCS CRDs), and the shape check
//! that [`super::FakeKube::apply`] runs on everything a test stores.

use serde_json::{Map, Value, json};

use super::Kind;

/// One `status.loadBalancer.ingress` entry.
#[derive(Clone, Copy, Debug)]
pub enum LbIngress<'a> {
    /// An address (`ipMode: VIP`, the default since 1.30).
    Ip(&'a str),
    /// A DNS name only, as AWS load balancers publish.
    Hostname(&'a str),
}

/// A Service under construction; [`ServiceBuilder::build`] gives the JSON.
#[derive(Clone, Debug)]
pub struct ServiceBuilder(Value);

fn family(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

fn service_base(namespace: &str, name: &str, spec: Value) -> ServiceBuilder {
    ServiceBuilder(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": {"loadBalancer": {}},
    }))
}

/// A ClusterIP Service with one address, or two for dual-stack (the family order follows
/// `cluster_ips`; two addresses get `ipFamilyPolicy: PreferDualStack`).
pub fn cluster_ip_service(namespace: &str, name: &str, cluster_ips: &[&str]) -> ServiceBuilder {
    let policy = if cluster_ips.len() > 1 {
        "PreferDualStack"
    } else {
        "SingleStack"
    };
    service_base(
        namespace,
        name,
        json!({
            "type": "ClusterIP",
            "clusterIP": cluster_ips.first().copied().unwrap_or_default(),
            "clusterIPs": cluster_ips,
            "ipFamilies": cluster_ips.iter().map(|ip| family(ip)).collect::<Vec<_>>(),
            "ipFamilyPolicy": policy,
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": {"app": name},
        }),
    )
}

/// A headless Service (`clusterIP: None`): DNS answers with its endpoints.
pub fn headless_service(namespace: &str, name: &str) -> ServiceBuilder {
    service_base(
        namespace,
        name,
        json!({
            "type": "ClusterIP",
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": {"app": name},
        }),
    )
}

/// A LoadBalancer Service; an empty `ingress` is a load balancer still pending.
pub fn load_balancer_service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ingress: &[LbIngress<'_>],
) -> ServiceBuilder {
    let mut svc = service_base(
        namespace,
        name,
        json!({
            "type": "LoadBalancer",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": [family(cluster_ip)],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "externalTrafficPolicy": "Cluster",
            "allocateLoadBalancerNodePorts": true,
            "sessionAffinity": "None",
            "selector": {"app": name},
        }),
    );
    if !ingress.is_empty() {
        let ingress: Vec<Value> = ingress
            .iter()
            .map(|i| match i {
                LbIngress::Ip(ip) => json!({"ip": ip, "ipMode": "VIP"}),
                LbIngress::Hostname(host) => json!({"hostname": host}),
            })
            .collect();
        svc.0["status"] = json!({"loadBalancer": {"ingress": ingress}});
    }
    svc
}

/// An ExternalName Service (a CNAME; no cluster IP, no selector).
pub fn external_name_service(namespace: &str, name: &str, external_name: &str) -> ServiceBuilder {
    service_base(
        namespace,
        name,
        json!({
            "type": "ExternalName",
            "externalName": external_name,
            "sessionAffinity": "None",
        }),
    )
}

fn insert_str(map: &mut Value, key: &str, value: &str) {
    if !map.is_object() {
        *map = Value::Object(Map::new());
    }
    map[key] = Value::String(value.to_owned());
}

impl ServiceBuilder {
    /// A port; the target port is the same number, and a LoadBalancer Service gets a
    /// node port, as the API server allocates one.
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        let mut p = json!({"protocol": protocol, "port": port, "targetPort": port});
        if !name.is_empty() {
            p["name"] = json!(name);
        }
        if self.0["spec"]["type"] == "LoadBalancer" {
            p["nodePort"] = json!(30000 + port.rem_euclid(2768));
        }
        let spec = &mut self.0["spec"];
        match spec["ports"].as_array_mut() {
            Some(ports) => ports.push(p),
            None => spec["ports"] = json!([p]),
        }
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        insert_str(&mut self.0["metadata"]["labels"], key, value);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        insert_str(&mut self.0["metadata"]["annotations"], key, value);
        self
    }

    /// Replaces the default `app: <name>` selector with this one entry.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.0["spec"]["selector"] = json!({ key: value });
        self
    }

    pub fn publish_not_ready_addresses(mut self) -> Self {
        self.0["spec"]["publishNotReadyAddresses"] = json!(true);
        self
    }

    pub fn build(self) -> Value {
        self.0
    }
}

/// An EndpointSlice's `addressType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    IPv4,
    IPv6,
    /// Deprecated, never made by the controller; consumers must skip it.
    Fqdn,
}

impl AddressType {
    fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        }
    }
}

/// An EndpointSlice under construction.
#[derive(Clone, Debug)]
pub struct SliceBuilder {
    obj: Value,
    endpoints: Vec<EndpointBuilder>,
}

/// A slice of `service`, labelled and named as the EndpointSlice controller does.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    address_type: AddressType,
) -> SliceBuilder {
    SliceBuilder {
        obj: json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "generateName": format!("{service}-"),
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": address_type.as_str(),
        }),
        endpoints: Vec::new(),
    }
}

impl SliceBuilder {
    pub fn endpoint(mut self, endpoint: EndpointBuilder) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        let mut p = json!({"protocol": protocol, "port": port});
        if !name.is_empty() {
            p["name"] = json!(name);
        }
        match self.obj["ports"].as_array_mut() {
            Some(ports) => ports.push(p),
            None => self.obj["ports"] = json!([p]),
        }
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        insert_str(&mut self.obj["metadata"]["labels"], key, value);
        self
    }

    /// The owner reference the controller sets to its Service.
    pub fn owned_by_service(mut self, service_uid: &str) -> Self {
        let service = self.obj["metadata"]["labels"]["kubernetes.io/service-name"].clone();
        self.obj["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Service",
            "name": service,
            "uid": service_uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
        self
    }

    pub fn build(self) -> Value {
        let namespace = self.obj["metadata"]["namespace"].clone();
        let mut obj = self.obj;
        // A slice without endpoints has `endpoints: null` on the wire (a nil Go slice).
        obj["endpoints"] = if self.endpoints.is_empty() {
            Value::Null
        } else {
            self.endpoints
                .into_iter()
                .map(|e| e.into_json(&namespace))
                .collect()
        };
        obj
    }
}

/// One endpoint of a slice. [`endpoint`] starts it ready (a ready, running pod:
/// `ready: true, serving: true, terminating: false`, as the controller writes it).
#[derive(Clone, Debug)]
pub struct EndpointBuilder {
    obj: Value,
    pod: Option<String>,
}

pub fn endpoint(address: &str) -> EndpointBuilder {
    EndpointBuilder {
        obj: json!({
            "addresses": [address],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        }),
        pod: None,
    }
}

impl EndpointBuilder {
    /// A further address (the API allows up to 100; consumers use all).
    pub fn address(mut self, address: &str) -> Self {
        if let Some(a) = self.obj["addresses"].as_array_mut() {
            a.push(json!(address));
        }
        self
    }

    /// A pod that is not ready (failing its readiness probe): not ready, not serving.
    pub fn not_ready(mut self) -> Self {
        self.obj["conditions"] = json!({"ready": false, "serving": false, "terminating": false});
        self
    }

    /// A pod shutting down and still passing readiness: serving, terminating, not ready.
    pub fn terminating(mut self) -> Self {
        self.obj["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
        self
    }

    /// No conditions at all (slices written by other controllers or people): consumers
    /// must read a missing `ready` as true.
    pub fn no_conditions(mut self) -> Self {
        self.obj["conditions"] = json!({});
        self
    }

    /// Sets the three conditions; `None` leaves one out.
    pub fn conditions(
        mut self,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        let mut c = Map::new();
        for (key, value) in [
            ("ready", ready),
            ("serving", serving),
            ("terminating", terminating),
        ] {
            if let Some(v) = value {
                c.insert(key.to_owned(), Value::Bool(v));
            }
        }
        self.obj["conditions"] = Value::Object(c);
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.obj["hostname"] = json!(hostname);
        self
    }

    /// The backing pod (`targetRef`, in the slice's namespace).
    pub fn pod(mut self, name: &str) -> Self {
        self.pod = Some(name.to_owned());
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.obj["nodeName"] = json!(node);
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.obj["zone"] = json!(zone);
        self
    }

    fn into_json(mut self, namespace: &Value) -> Value {
        if let Some(pod) = self.pod {
            self.obj["targetRef"] = json!({
                "kind": "Pod",
                "namespace": namespace,
                "name": pod,
                "uid": super::store::new_uid(),
            });
        }
        self.obj
    }
}

/// An MCS ServiceExport (`v1alpha1` objects carry no spec).
pub fn service_export(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceExport",
        "metadata": {"name": name, "namespace": namespace},
    })
}

/// A Lease held by `holder` (a leader-election lock as client-go writes it).
pub fn lease(namespace: &str, name: &str, holder: &str, duration_seconds: i32) -> Value {
    let now = super::store::now_rfc3339().replace('Z', ".000000Z");
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        },
    })
}

/// Checks an object a test stores has the real API's shape and returns its kind: known
/// apiVersion/kind, a name, a namespace (`default` if missing), and for built-in kinds
/// nothing the k8s-openapi type would drop or read differently (a misspelt field, a
/// string where the API has a number).
pub(crate) fn check_shape(mut obj: Value) -> Result<(Kind, Value), String> {
    let kind_name = obj["kind"]
        .as_str()
        .ok_or("the object has no kind")?
        .to_owned();
    let kind = Kind::from_name(&kind_name).ok_or_else(|| format!("unknown kind {kind_name}"))?;
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
    let versions: &[&str] = match kind {
        Kind::ServiceExport => &["v1alpha1", "v1beta1"],
        _ => &["v1"],
    };
    if !versions.iter().any(|v| kind.api_version(v) == api_version) {
        return Err(format!("{kind_name} with apiVersion {api_version:?}"));
    }
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        return Err(format!("{kind_name} without metadata.name"));
    }
    if obj["metadata"]["namespace"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        obj["metadata"]["namespace"] = json!("default");
    }
    let typed = match kind {
        Kind::Service => roundtrip::<k8s_openapi::api::core::v1::Service>(&obj),
        Kind::EndpointSlice => roundtrip::<k8s_openapi::api::discovery::v1::EndpointSlice>(&obj),
        Kind::Lease => roundtrip::<k8s_openapi::api::coordination::v1::Lease>(&obj),
        Kind::ServiceExport => Ok(without_nulls(&obj)),
    }?;
    if let Some(path) = first_difference(&without_nulls(&obj), &typed, String::new()) {
        return Err(format!(
            "{kind_name} {}: {path} is not what the API type reads back",
            obj["metadata"]["name"]
        ));
    }
    Ok((kind, obj))
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(typed).map_err(|e| e.to_string())?;
    Ok(without_nulls(&back))
}

/// Drops null and empty members: the API's nil slices and maps, `[]` and `{}` mean the
/// same to it (Go's omitempty), and the typed round trip writes them differently.
fn without_nulls(v: &Value) -> Value {
    let empty = |v: &Value| {
        v.is_null()
            || v.as_array().is_some_and(Vec::is_empty)
            || v.as_object().is_some_and(Map::is_empty)
    };
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .filter(|(_, v)| !empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    const NULL: Value = Value::Null;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            let (p, q) = (x.get(k).unwrap_or(&NULL), y.get(k).unwrap_or(&NULL));
            first_difference(p, q, format!("{path}.{k}"))
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(if path.is_empty() {
            ".".to_owned()
        } else {
            path
        }),
    }
}

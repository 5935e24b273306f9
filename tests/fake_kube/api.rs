//! The HTTP side of the fake: authentication, routing, content negotiation, and the
//! non-watch verbs (GET, LIST, POST, PUT, merge PATCH, DELETE) with the API server's
//! semantics and error Statuses. Watches are in `watch.rs`, documents in `discovery.rs`.
//!
//! Every failure is a `Status` object with the matching HTTP code; nothing a client sends
//! (bad JSON, bad selectors, bad tokens, unknown paths) can panic the handler.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::selector::{FieldSelector, LabelSelector};
use super::store::{self, Compacted};
use super::{Kind, McsCrd, RequestRecord, Shared, Verb, discovery, watch};

/// The API server's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A failure, answered as a `Status` object.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    pub(crate) fn response(&self) -> Response {
        let mut resp = json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.status(),
            "application/json",
        );
        if let Some(secs) = self.retry_after
            && let Ok(value) = secs.to_string().parse()
        {
            resp.headers_mut().insert(header::RETRY_AFTER, value);
        }
        resp
    }

    /// A path the server does not serve (including every path of an absent CRD).
    pub(crate) fn path_not_found() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    fn object_details(kind: Kind, name: &str) -> Value {
        let mut details = json!({"name": name, "kind": kind.plural()});
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        details
    }

    pub(crate) fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified()),
        )
        .with_details(ApiError::object_details(kind, name))
    }

    pub(crate) fn already_exists(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified()),
        )
        .with_details(ApiError::object_details(kind, name))
    }

    /// The optimistic-concurrency failure, worded as the API server words it.
    pub(crate) fn conflict(kind: Kind, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                kind.qualified()
            ),
        )
        .with_details(ApiError::object_details(kind, name))
    }

    fn stale(kind: Kind, name: &str) -> ApiError {
        ApiError::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 for one invalid field. `what` names the object as the API server does:
    /// `Service` for validation, `leases.coordination.k8s.io` for registry checks.
    pub(crate) fn invalid(what: &str, name: &str, field: &str, detail: &str) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!("{what} \"{name}\" is invalid: {field}: {detail}"),
        )
        .with_details(json!({
            "name": name,
            "kind": what,
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}],
        }))
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", message)
    }

    fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json (got {content_type:?}; the fake implements no other patch type)"
            ),
        )
    }

    fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub(crate) fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// A watch or read at a resourceVersion the history no longer has.
    pub(crate) fn too_old(rv: u64, compacted: &Compacted) -> ApiError {
        ApiError::expired(format!(
            "too old resource version: {rv} ({})",
            compacted.oldest
        ))
    }

    /// A read at a resourceVersion the server has not reached (it waits ~3 s, then this).
    pub(crate) fn too_large(rv: u64, current: u64) -> ApiError {
        let mut e = ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {rv}, current: {current}"),
        )
        .with_details(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        }));
        e.retry_after = Some(1);
        e
    }

    fn internal(message: &str) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
        .with_details(json!({"causes": [{"message": message}]}))
    }

    /// The answer to a failure a test injected with `FakeKube::fail_next`.
    fn injected(code: u16, verb: Verb, kind: Kind, namespace: Option<&str>) -> ApiError {
        match code {
            401 => ApiError::unauthorized(),
            403 => {
                let scope = match namespace {
                    Some(ns) => format!("in the namespace \"{ns}\""),
                    None => "at the cluster scope".to_owned(),
                };
                ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} is forbidden: User \"system:serviceaccount:fleetdns:fleetdns\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
                        kind.qualified(),
                        verb.as_str(),
                        kind.plural(),
                        kind.group()
                    ),
                )
                .with_details(json!({"group": kind.group(), "kind": kind.plural()}))
            }
            404 => ApiError::path_not_found(),
            410 => ApiError::expired("injected by fake-kube"),
            429 => {
                let mut e = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                )
                .with_details(json!({"retryAfterSeconds": 1}));
                e.retry_after = Some(1);
                e
            }
            503 => ApiError::new(503, "ServiceUnavailable", "injected by fake-kube"),
            504 => ApiError::new(504, "Timeout", "injected by fake-kube"),
            _ => ApiError {
                code: if (400..600).contains(&code) {
                    code
                } else {
                    500
                },
                ..ApiError::internal("injected by fake-kube")
            },
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value, content_type: &str) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        resp.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    resp
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body, "application/json")
}

/// Query parameters, percent-decoded (`+` is a space, as in form encoding).
#[derive(Clone, Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `key`, as the API server (Go's `url.Values.Get`) reads it.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// Decodes `%XX` and `+`; a malformed escape stays as it was.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a response body is: the objects themselves, or their metadata only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Full,
    /// PartialObjectMetadata (single objects and watch events) or PartialObjectMetadataList.
    Meta,
}

/// What the request reads, for content negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reads {
    Object,
    List,
    Watch,
}

/// The media ranges of an Accept header: (type, parameters).
fn media_ranges(accept: &str) -> Vec<(String, Vec<(String, String)>)> {
    accept
        .split(',')
        .map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let params = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            (media, params)
        })
        .collect()
}

/// Picks the first representation in the Accept header the fake can produce, as the API
/// server does: plain JSON, or PartialObjectMetadata[List] in meta.k8s.io/v1. Tables,
/// protobuf and YAML are not produced; asking only for those is 406.
pub(crate) fn negotiate(accept: Option<&str>, reads: Reads) -> Result<Shape, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Shape::Full);
    };
    for (media, params) in media_ranges(accept) {
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let param = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        match param("as") {
            None => return Ok(Shape::Full),
            Some(target) => {
                if param("g") != Some("meta.k8s.io") || param("v") != Some("v1") {
                    continue;
                }
                let fits = match target {
                    "PartialObjectMetadata" => reads != Reads::List,
                    "PartialObjectMetadataList" => reads == Reads::List,
                    _ => false,
                };
                if fits {
                    return Ok(Shape::Meta);
                }
            }
        }
    }
    Err(ApiError::not_acceptable(
        "only the following media types are accepted: application/json, application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
    ))
}

/// The aggregated discovery version the Accept header asks for, if any.
fn wants_aggregated(accept: Option<&str>) -> Option<&'static str> {
    for (media, params) in media_ranges(accept?) {
        if media != "application/json" {
            continue;
        }
        let param = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        match (param("as"), param("g"), param("v")) {
            // Plain JSON comes first: the client prefers the legacy documents.
            (None, _, _) => return None,
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2")) => {
                return Some("v2");
            }
            (Some("APIGroupDiscoveryList"), Some("apidiscovery.k8s.io"), Some("v2beta1")) => {
                return Some("v2beta1");
            }
            _ => {}
        }
    }
    None
}

/// Presents a stored object in `version` and `shape`. Built-in list items lose
/// apiVersion/kind, as on the wire (kubernetes/kubernetes#3030).
pub(crate) fn present(
    kind: Kind,
    obj: &Value,
    version: &str,
    shape: Shape,
    in_list: bool,
) -> Value {
    match shape {
        Shape::Meta => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
        Shape::Full => {
            let mut obj = obj.clone();
            if let Some(map) = obj.as_object_mut() {
                if in_list && kind.is_builtin() {
                    map.remove("apiVersion");
                    map.remove("kind");
                } else {
                    map.insert("apiVersion".into(), json!(kind.api_version(version)));
                    map.insert("kind".into(), json!(kind.name()));
                }
            }
            obj
        }
    }
}

/// Where a resource request points.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub kind: Kind,
    pub version: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

enum Route {
    Version,
    Health,
    CoreVersions,
    CoreResources,
    Groups,
    Group(String),
    GroupResources(String, String),
    Resource(Target),
    NotFound,
}

fn route(path: &str, mcs: &McsCrd) -> Route {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["api", "v1"] => Route::CoreResources,
        ["api", "v1", rest @ ..] => resource_route("", "v1", rest, mcs),
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group((*group).to_owned()),
        ["apis", group, version] => {
            Route::GroupResources((*group).to_owned(), (*version).to_owned())
        }
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest, mcs),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str], mcs: &McsCrd) -> Route {
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        // Cluster-scoped item paths of namespaced kinds, subresources, other kinds.
        _ => return Route::NotFound,
    };
    let Some(kind) = Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && k.plural() == plural)
    else {
        return Route::NotFound;
    };
    if !discovery::versions(kind, mcs).contains(&version) {
        return Route::NotFound;
    }
    Route::Resource(Target {
        kind,
        version: version.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

/// The fallback handler: every request of the fake comes through here.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let accept = header_str(&parts.headers, header::ACCEPT);
    let bearer = header_str(&parts.headers, header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.token);
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        uri,
        bearer,
        accept: accept.map(str::to_owned),
        status: 0,
        kind: None,
        verb: None,
        watch_error: None,
    };
    let response = if bearer {
        serve(
            &shared,
            &parts.method,
            &parts.uri,
            &parts.headers,
            body,
            &mut record,
        )
        .await
        .unwrap_or_else(|e| e.response())
    } else {
        ApiError::unauthorized().response()
    };
    record.status = response.status().as_u16();
    shared.lock().log.push(record);
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Body,
    record: &mut RequestRecord,
) -> Result<Response, ApiError> {
    let query = Query::parse(uri.query());
    let accept = header_str(headers, header::ACCEPT);
    let mcs = shared.lock().mcs.clone();
    let route = route(uri.path(), &mcs);
    let target = match route {
        Route::Resource(target) => target,
        other => {
            if method != Method::GET {
                return Err(match other {
                    Route::NotFound => ApiError::path_not_found(),
                    _ => ApiError::method_not_allowed(),
                });
            }
            return document(other, accept, &mcs, headers);
        }
    };
    let verb = match (method, &target.name) {
        (&Method::GET, None) if query.flag("watch") => Verb::Watch,
        (&Method::GET, None) => Verb::List,
        // The legacy watch of one object by its path: a watch with a name selector.
        (&Method::GET, Some(_)) if query.flag("watch") => Verb::Watch,
        (&Method::GET, Some(_)) => Verb::Get,
        (&Method::POST, None) if target.namespace.is_some() => Verb::Create,
        (&Method::PUT, Some(_)) => Verb::Update,
        (&Method::PATCH, Some(_)) => Verb::Patch,
        (&Method::DELETE, Some(_)) => Verb::Delete,
        _ => return Err(ApiError::method_not_allowed()),
    };
    record.kind = Some(target.kind);
    record.verb = Some(verb);
    let mut injected = take_failure(shared, verb, target.kind)
        .map(|code| ApiError::injected(code, verb, target.kind, target.namespace.as_deref()));
    // Past authentication and authorization, the API server reports a watch's failures
    // (410 Expired above all) as an ERROR event on HTTP 200, never as the HTTP status.
    if let Some(error) = injected.take_if(|e| verb != Verb::Watch || e.code != 410) {
        return Err(error);
    }
    match verb {
        Verb::Watch => {
            let shape = negotiate(accept, Reads::Watch)?;
            watch::start(shared.clone(), &target, &query, shape, injected, record)
        }
        Verb::List => list(shared, &target, &query, negotiate(accept, Reads::List)?),
        Verb::Get => get(shared, &target, negotiate(accept, Reads::Object)?),
        Verb::Create | Verb::Update | Verb::Patch | Verb::Delete => {
            let shape = negotiate(accept, Reads::Object)?;
            let content_type = header_str(headers, header::CONTENT_TYPE)
                .unwrap_or("application/json")
                .to_owned();
            let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
                ApiError::new(413, "RequestEntityTooLarge", "request entity too large")
            })?;
            write(shared, verb, &target, &content_type, &bytes, shape)
        }
    }
}

fn take_failure(shared: &Shared, verb: Verb, kind: Kind) -> Option<u16> {
    let mut state = shared.lock();
    let at = state
        .failures
        .iter()
        .position(|(v, k, _)| *v == verb && *k == kind)?;
    Some(state.failures.remove(at).2)
}

fn document(
    route: Route,
    accept: Option<&str>,
    mcs: &McsCrd,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let aggregated = |core: bool| {
        wants_aggregated(accept).map(|v| {
            let api_version = format!("apidiscovery.k8s.io/{v}");
            json_response(
                StatusCode::OK,
                &discovery::aggregated(core, &api_version, mcs),
                &format!("application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"),
            )
        })
    };
    match route {
        Route::Version => Ok(ok(&discovery::version())),
        Route::Health => {
            let mut resp = Response::new(Body::from("ok"));
            if let Ok(v) = "text/plain; charset=utf-8".parse() {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            Ok(resp)
        }
        Route::CoreVersions => Ok(aggregated(true).unwrap_or_else(|| {
            let host = header_str(headers, header::HOST).unwrap_or("127.0.0.1");
            ok(&discovery::core_versions(host))
        })),
        Route::CoreResources => discovery::resource_list("", "v1", mcs)
            .map(|d| ok(&d))
            .ok_or_else(ApiError::path_not_found),
        Route::Groups => Ok(aggregated(false).unwrap_or_else(|| ok(&discovery::group_list(mcs)))),
        Route::Group(group) => discovery::group(&group, mcs)
            .map(|d| ok(&d))
            .ok_or_else(ApiError::path_not_found),
        Route::GroupResources(group, version) => discovery::resource_list(&group, &version, mcs)
            .map(|d| ok(&d))
            .ok_or_else(ApiError::path_not_found),
        Route::Resource(_) | Route::NotFound => Err(ApiError::path_not_found()),
    }
}

/// A continue token as the API server makes one: base64url (no padding) of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key after the last returned>"}`.
fn encode_continue(rv: u64, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad("not base64"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))?;
    if value["v"] != "meta.k8s.io/v1" {
        return Err(bad("unsupported version"));
    }
    let rv = value["rv"]
        .as_u64()
        .filter(|rv| *rv > 0)
        .ok_or_else(|| bad("no resourceVersion"))?;
    let start = value["start"].as_str().ok_or_else(|| bad("no start key"))?;
    Ok((rv, start.to_owned()))
}

/// What a list or watch selects: the namespace of its path, the name of a single-object
/// watch, and its label and field selectors.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub(crate) fn parse(target: &Target, query: &Query) -> Result<Filter, ApiError> {
        Ok(Filter {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?,
        })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"] == ns)
            && self
                .name
                .as_deref()
                .is_none_or(|name| obj["metadata"]["name"] == name)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    fn has_selectors(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }
}

/// Parses a resourceVersion query value (non-empty).
pub(crate) fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &Query,
    shape: Shape,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(target, query)?;
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
        None => 0,
    };
    let rv_param = query.get("resourceVersion").filter(|rv| !rv.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let continue_token = query.get("continue").filter(|c| !c.is_empty());
    if let Some(m) = rv_match {
        if rv_param.is_none() {
            return Err(ApiError::invalid(
                "ListOptions.meta.k8s.io",
                "",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if m != "NotOlderThan" && m != "Exact" {
            return Err(ApiError::invalid(
                "ListOptions.meta.k8s.io",
                "",
                "resourceVersionMatch",
                &format!(
                    "Unsupported value: \"{m}\": supported values: \"Exact\", \"NotOlderThan\""
                ),
            ));
        }
    }

    let state = shared.lock();
    let current = state.store.resource_version();
    let (at, start) = if let Some(token) = continue_token {
        if rv_param.is_some_and(|rv| rv != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let (rv, start) = decode_continue(token)?;
        if rv < state.store.oldest_readable() {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        (rv, Some(start))
    } else {
        let at = match rv_param {
            // Unset: the most recent state (a quorum read). "0": any state; ours is current.
            None | Some("0") => current,
            Some(rv) => {
                let rv = parse_rv(rv)?;
                if rv > current {
                    return Err(ApiError::too_large(rv, current));
                }
                // Exact when asked, and (legacy semantics) for a paginated list.
                let exact = rv_match == Some("Exact") || (rv_match.is_none() && limit > 0);
                if exact { rv } else { current }
            }
        };
        (at, None)
    };
    let snapshot = state
        .store
        .snapshot(target.kind, at)
        .map_err(|c| ApiError::too_old(at, &c))?;
    drop(state);

    let matching: Vec<(&String, &Value)> = snapshot
        .iter()
        .filter(|(key, _)| start.as_deref().is_none_or(|s| key.as_str() >= s))
        .filter(|(_, obj)| filter.matches(obj))
        .collect();
    let take = if limit == 0 {
        matching.len()
    } else {
        matching
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX))
    };
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if take < matching.len() {
        metadata["continue"] = json!(encode_continue(at, matching[take - 1].0));
        if !filter.has_selectors() {
            metadata["remainingItemCount"] = json!(matching.len() - take);
        }
    }
    let items: Vec<Value> = matching[..take]
        .iter()
        .map(|(_, obj)| present(target.kind, obj, &target.version, shape, true))
        .collect();
    let (kind, api_version, content_type) = match shape {
        Shape::Full => (
            format!("{}List", target.kind.name()),
            target.kind.api_version(&target.version),
            "application/json",
        ),
        Shape::Meta => (
            "PartialObjectMetadataList".to_owned(),
            "meta.k8s.io/v1".to_owned(),
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        ),
    };
    let body = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body, content_type))
}

fn object_response(status: StatusCode, target: &Target, obj: &Value, shape: Shape) -> Response {
    let content_type = match shape {
        Shape::Full => "application/json",
        Shape::Meta => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
    };
    json_response(
        status,
        &present(target.kind, obj, &target.version, shape, false),
        content_type,
    )
}

fn get(shared: &Shared, target: &Target, shape: Shape) -> Result<Response, ApiError> {
    let namespace = target.namespace.as_deref().unwrap_or_default();
    let name = target.name.as_deref().unwrap_or_default();
    let state = shared.lock();
    let obj = state
        .store
        .get(target.kind, namespace, name)
        .ok_or_else(|| ApiError::not_found(target.kind, name))?;
    Ok(object_response(StatusCode::OK, target, obj, shape))
}

/// Reads a request body as an object of the target's kind, the way the API server
/// decodes one: missing apiVersion/kind default to the URL's, a different kind or group is
/// refused, built-in kinds must decode as their type (unknown fields are dropped, as the
/// API server prunes them), and the namespace must agree with the URL.
fn decode_body(target: &Target, bytes: &Bytes) -> Result<Value, ApiError> {
    let kind = target.kind;
    let unrecognized = |why: String| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): {why}",
            kind.name()
        ))
    };
    let mut obj: Value = serde_json::from_slice(bytes)
        .map_err(|e| unrecognized(format!("couldn't get version/kind; json parse error: {e}")))?;
    let Some(map) = obj.as_object_mut() else {
        return Err(unrecognized(
            "couldn't get version/kind; json parse error: not an object".into(),
        ));
    };
    let expected = kind.api_version(&target.version);
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(expected));
        }
        Some(v) if v == expected => {}
        // A custom resource may be sent in any served version of its group; the API
        // server converts it.
        Some(v)
            if kind == Kind::ServiceExport
                && ["v1alpha1", "v1beta1"]
                    .iter()
                    .any(|ver| kind.api_version(ver) == v) => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(kind.name()));
        }
        Some(k) if k == kind.name() => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{k} in version \"{}\" cannot be handled as a {}: the kind in the data does not match the URL",
                target.version,
                kind.name()
            )));
        }
    }
    // Decode as the typed object (as Go would), keeping what the type knows.
    let typed = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            kind.name(),
            target.version,
            kind.name()
        ))
    };
    let mut obj = match kind {
        Kind::Service => serde_json::to_value(
            serde_json::from_value::<k8s_openapi::api::core::v1::Service>(obj).map_err(typed)?,
        ),
        Kind::EndpointSlice => serde_json::to_value(
            serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(obj)
                .map_err(typed)?,
        ),
        Kind::Lease => serde_json::to_value(
            serde_json::from_value::<k8s_openapi::api::coordination::v1::Lease>(obj)
                .map_err(typed)?,
        ),
        Kind::ServiceExport => {
            for field in ["metadata", "spec", "status"] {
                if obj
                    .get(field)
                    .is_some_and(|v| !v.is_object() && !v.is_null())
                {
                    return Err(typed(serde::de::Error::custom(format!(
                        "{field} must be an object"
                    ))));
                }
            }
            Ok(obj)
        }
    }
    .map_err(|e| ApiError::internal(&e.to_string()))?;

    let url_namespace = target.namespace.as_deref().unwrap_or_default();
    let meta = store::metadata_mut(&mut obj);
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(url_namespace));
        }
        Some(ns) if ns == url_namespace => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(obj)
}

/// Checks metadata.name as the kind's validation does: Services need a DNS-1035 label
/// (it becomes a DNS name), the others a DNS-1123 subdomain.
fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(
            kind.name(),
            name,
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let (ok, rule) = if kind == Kind::Service {
        (
            label_ok(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        )
    } else {
        (
            name.len() <= 253 && name.split('.').all(label_ok),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            kind.name(),
            name,
            "metadata.name",
            &format!("Invalid value: \"{name}\": {rule}"),
        ))
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(map) = target.as_object_mut() {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn write(
    shared: &Shared,
    verb: Verb,
    target: &Target,
    content_type: &str,
    bytes: &Bytes,
    shape: Shape,
) -> Result<Response, ApiError> {
    let kind = target.kind;
    let namespace = target.namespace.clone().unwrap_or_default();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match verb {
        Verb::Create | Verb::Update if media != "application/json" => {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        Verb::Patch if media != "application/merge-patch+json" => {
            return Err(ApiError::unsupported_media_type(content_type));
        }
        _ => {}
    }
    let url_name = target.name.clone().unwrap_or_default();

    let (response, rv) = match verb {
        Verb::Create => {
            let mut obj = decode_body(target, bytes)?;
            if meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty() {
                let name = format!("{}{}", meta_str(&obj, "generateName"), store::name_suffix());
                store::metadata_mut(&mut obj).insert("name".into(), json!(name));
            }
            let name = meta_str(&obj, "name").to_owned();
            validate_name(kind, &name)?;
            if !meta_str(&obj, "resourceVersion").is_empty() {
                return Err(ApiError::internal(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            let mut state = shared.lock();
            if state.store.get(kind, &namespace, &name).is_some() {
                return Err(ApiError::already_exists(kind, &name));
            }
            let stored = state.store.put(kind, obj, false);
            (
                object_response(StatusCode::CREATED, target, &stored, shape),
                state.store.resource_version(),
            )
        }
        Verb::Update | Verb::Patch => {
            let mut state = shared.lock();
            let existing = state.store.get(kind, &namespace, &url_name).cloned();
            let obj = if verb == Verb::Patch {
                let patch: Value = serde_json::from_slice(bytes)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                let Some(mut merged) = existing.clone() else {
                    return Err(ApiError::not_found(kind, &url_name));
                };
                // A resourceVersion in the patch is a precondition, like in a PUT.
                let wanted = patch["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_owned);
                merge_patch(&mut merged, &patch);
                let current =
                    meta_str(existing.as_ref().unwrap_or(&Value::Null), "resourceVersion");
                if wanted.as_deref().is_some_and(|w| w != current) {
                    return Err(ApiError::stale(kind, &url_name));
                }
                store::metadata_mut(&mut merged).insert("resourceVersion".into(), json!(current));
                decode_body(target, &Bytes::from(merged.to_string()))?
            } else {
                decode_body(target, bytes)?
            };
            let name = meta_str(&obj, "name").to_owned();
            if name != url_name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({url_name})"
                )));
            }
            let sent_rv = meta_str(&obj, "resourceVersion").to_owned();
            let status = match &existing {
                None if kind.allow_create_on_update() => {
                    validate_name(kind, &name)?;
                    StatusCode::CREATED
                }
                None => return Err(ApiError::not_found(kind, &name)),
                Some(old) => {
                    if sent_rv.is_empty() {
                        if !kind.allow_unconditional_update() {
                            return Err(ApiError::invalid(
                                &kind.qualified(),
                                &name,
                                "metadata.resourceVersion",
                                "Invalid value: 0x0: must be specified for an update",
                            ));
                        }
                    } else {
                        parse_rv(&sent_rv)?;
                        if sent_rv != meta_str(old, "resourceVersion") {
                            return Err(ApiError::stale(kind, &name));
                        }
                    }
                    StatusCode::OK
                }
            };
            let stored = state.store.put(kind, obj, false);
            (
                object_response(status, target, &stored, shape),
                state.store.resource_version(),
            )
        }
        Verb::Delete => {
            // DeleteOptions are optional; their preconditions must hold.
            let options: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(bytes).map_err(|e| {
                    ApiError::bad_request(format!("error decoding DeleteOptions: {e}"))
                })?
            };
            let mut state = shared.lock();
            let Some(existing) = state.store.get(kind, &namespace, &url_name) else {
                return Err(ApiError::not_found(kind, &url_name));
            };
            let preconditions = &options["preconditions"];
            for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
                if let Some(wanted) = preconditions[field].as_str() {
                    let actual = meta_str(existing, field);
                    if wanted != actual {
                        return Err(ApiError::conflict(
                            kind,
                            &url_name,
                            &format!(
                                "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"
                            ),
                        ));
                    }
                }
            }
            let last = state
                .store
                .remove(kind, &namespace, &url_name)
                .unwrap_or_default();
            let mut details = ApiError::object_details(kind, &url_name);
            details["uid"] = json!(meta_str(&last, "uid"));
            let body = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            });
            (ok(&body), state.store.resource_version())
        }
        Verb::Get | Verb::List | Verb::Watch => return Err(ApiError::method_not_allowed()),
    };
    shared.notify(rv);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_never_panics() {
        assert_eq!(percent_decode("a%3Db%2Cc+d"), "a=b,c d");
        for s in ["%", "%4", "%zz", "a%", "%%%", "%e2%82", "%C3%A9"] {
            let _ = percent_decode(s);
        }
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(1234, "default/web");
        let (rv, start) = decode_continue(&token).unwrap();
        assert_eq!(rv, 1234);
        assert!(start.as_str() > "default/web" && start.as_str() < "default/web-");
        assert!(decode_continue("!!!").is_err());
        assert!(decode_continue(&URL_SAFE_NO_PAD.encode("{}")).is_err());
    }

    #[test]
    fn negotiation() {
        let meta = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        let meta_list = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        assert_eq!(negotiate(None, Reads::List).unwrap(), Shape::Full);
        assert_eq!(negotiate(Some(meta), Reads::Watch).unwrap(), Shape::Meta);
        assert_eq!(
            negotiate(Some(meta_list), Reads::List).unwrap(),
            Shape::Meta
        );
        assert!(negotiate(Some(meta), Reads::List).is_err());
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(table), Reads::List).unwrap(), Shape::Full);
        assert!(negotiate(Some("application/vnd.kubernetes.protobuf"), Reads::List).is_err());
    }
}

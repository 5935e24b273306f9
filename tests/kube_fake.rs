//! The fake API server (tests/fake_kube) against the real kube 5 client: `Api`, the
//! runtime's `watcher` and `reflector`, `Discovery`, and kubectl. Each test proves one
//! behaviour of the API server that kube parses or branches on; none scripts the client.

#[path = "fake_kube/mod.rs"]
mod fake_kube;

use std::fmt::Debug;
use std::hash::Hash;
use std::path::Path;
use std::time::Duration;

use fake_kube::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PartialObjectMeta, PostParams, Preconditions,
    ResourceExt, WatchEvent, WatchParams,
};
use kube::core::{GroupVersion, GroupVersionKind};
use kube::discovery::{self, Discovery};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A fake with default options, a kube client for it (built from its kubeconfig file),
/// and the directory holding that file.
async fn setup() -> (FakeKube, kube::Client, tempfile::TempDir) {
    setup_with(Options::default()).await
}

async fn setup_with(options: Options) -> (FakeKube, kube::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fake = FakeKube::start_with(options).await;
    let client = fake.client(dir.path()).await;
    (fake, client, dir)
}

/// Polls `probe` until it gives a value, failing the test after `TIMEOUT`.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(value) = probe() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

/// A reflector as the product runs one: watcher, default backoff, store; the stream is
/// driven by a task and never stopped by its (retryable) errors.
fn start_reflector<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(stream.for_each(|_| std::future::ready(())));
    reader
}

async fn ready<K>(store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    tokio::time::timeout(TIMEOUT, store.wait_until_ready())
        .await
        .expect("the store became ready in time")
        .expect("the reflector is running");
}

/// `namespace/name` of everything in a store, sorted.
fn names<K>(store: &Store<K>) -> Vec<String>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut names: Vec<String> = store
        .state()
        .iter()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    names.sort();
    names
}

fn in_store<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<std::sync::Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// The requests of one verb on one kind.
fn requests(fake: &FakeKube, kind: Kind, verb: Verb) -> Vec<RequestRecord> {
    fake.requests()
        .into_iter()
        .filter(|r| r.is(kind, verb))
        .collect()
}

/// The API error Status a call failed with.
fn status<T>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        Err(other) => panic!("expected an API error Status, got {other:?}"),
        Ok(_) => panic!("expected an API error Status, the call succeeded"),
    }
}

fn web(namespace: &str, name: &str, ip: &str) -> Value {
    cluster_ip_service(namespace, name, &[ip])
        .port("http", 80, "TCP")
        .build()
}

#[tokio::test]
async fn reflector_lists_then_follows_adds_modifies_and_deletes() {
    let (fake, client, _dir) = setup().await;
    fake.apply(web("default", "web", "10.96.0.10"));
    fake.apply(
        cluster_ip_service("prod", "api", &["10.96.0.11", "fd00::11"])
            .port("grpc", 9090, "TCP")
            .build(),
    );
    fake.apply(
        headless_service("prod", "db")
            .port("pg", 5432, "TCP")
            .build(),
    );
    fake.apply(
        load_balancer_service(
            "prod",
            "edge",
            "10.96.0.12",
            &[
                LbIngress::Ip("203.0.113.7"),
                LbIngress::Hostname("edge.elb.example.com"),
            ],
        )
        .port("https", 443, "TCP")
        .build(),
    );
    fake.apply(external_name_service("prod", "ext", "db.example.com").build());

    let store = start_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    ready(&store).await;
    assert_eq!(
        names(&store),
        [
            "default/web",
            "prod/api",
            "prod/db",
            "prod/edge",
            "prod/ext"
        ]
    );
    // Every object carries what the API server stamps, and typed fields came through.
    for svc in store.state() {
        let meta = &svc.metadata;
        assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
        assert!(
            meta.resource_version
                .as_deref()
                .is_some_and(|rv| !rv.is_empty())
        );
    }
    let api = in_store(&store, "prod", "api").unwrap();
    let spec = api.spec.as_ref().unwrap();
    assert_eq!(
        spec.cluster_ips.as_deref(),
        Some(&["10.96.0.11".to_owned(), "fd00::11".to_owned()][..])
    );
    assert_eq!(
        spec.ip_families.as_deref(),
        Some(&["IPv4".to_owned(), "IPv6".to_owned()][..])
    );
    let db = in_store(&store, "prod", "db").unwrap();
    assert_eq!(
        db.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    let edge = in_store(&store, "prod", "edge").unwrap();
    let ingress = edge
        .status
        .as_ref()
        .unwrap()
        .load_balancer
        .as_ref()
        .unwrap();
    let ingress = ingress.ingress.as_ref().unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(ingress[1].hostname.as_deref(), Some("edge.elb.example.com"));
    let ext = in_store(&store, "prod", "ext").unwrap();
    assert_eq!(
        ext.spec.as_ref().unwrap().external_name.as_deref(),
        Some("db.example.com")
    );

    fake.apply(web("default", "new", "10.96.0.20"));
    eventually("the added Service reaches the store", || {
        in_store(&store, "default", "new")
    })
    .await;
    fake.apply(
        cluster_ip_service("default", "web", &["10.96.0.10"])
            .port("http", 80, "TCP")
            .annotation("fleetdns.io/export", "true")
            .build(),
    );
    eventually("the modified Service reaches the store", || {
        in_store(&store, "default", "web").filter(|s| !s.annotations().is_empty())
    })
    .await;
    fake.delete(Kind::Service, "prod", "ext");
    eventually("the deleted Service leaves the store", || {
        in_store(&store, "prod", "ext").is_none().then_some(())
    })
    .await;
    // All of it came through one LIST and the watch that followed.
    assert_eq!(requests(&fake, Kind::Service, Verb::List).len(), 1);

    // The legacy watch of one object by its path streams just that object.
    let uri = "/api/v1/namespaces/default/services/web?watch=true&timeoutSeconds=1";
    let (code, body) = raw(&client, "GET", uri, &[], Vec::new()).await;
    assert_eq!(code, 200);
    let events: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "web");
}

#[tokio::test]
async fn endpoint_slices_by_service_label_and_objects_entering_and_leaving_a_selector() {
    let (fake, client, _dir) = setup().await;
    fake.apply(
        endpoint_slice("prod", "web", "web-abc12", AddressType::IPv4)
            .endpoint(
                endpoint("10.1.0.1")
                    .pod("web-0")
                    .hostname("web-0")
                    .zone("z1")
                    .node("n1"),
            )
            .endpoint(endpoint("10.1.0.2").not_ready())
            .endpoint(endpoint("10.1.0.3").terminating())
            .port("http", 8080, "TCP")
            .build(),
    );
    fake.apply(
        endpoint_slice("prod", "web", "web-v6xyz", AddressType::IPv6)
            .endpoint(endpoint("fd00::1"))
            .port("http", 8080, "TCP")
            .build(),
    );
    fake.apply(
        endpoint_slice("prod", "db", "db-qwert", AddressType::IPv4)
            .endpoint(endpoint("10.1.1.1"))
            .build(),
    );
    fake.apply(
        endpoint_slice("prod", "legacy", "legacy-fqdn", AddressType::Fqdn)
            .endpoint(endpoint("legacy.example.com").no_conditions())
            .build(),
    );
    let api = Api::<EndpointSlice>::namespaced(client.clone(), "prod");
    let config = watcher::Config::default().labels("kubernetes.io/service-name=web");
    let store = start_reflector(api.clone(), config);
    ready(&store).await;
    assert_eq!(names(&store), ["prod/web-abc12", "prod/web-v6xyz"]);
    let slice = in_store(&store, "prod", "web-abc12").unwrap();
    let [ready_ep, not_ready, terminating] = &slice.endpoints[..] else {
        panic!("three endpoints: {:?}", slice.endpoints);
    };
    let conditions = |e: &k8s_openapi::api::discovery::v1::Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    assert_eq!(conditions(ready_ep), (Some(true), Some(true), Some(false)));
    assert_eq!(ready_ep.hostname.as_deref(), Some("web-0"));
    assert_eq!(ready_ep.zone.as_deref(), Some("z1"));
    assert_eq!(
        ready_ep.target_ref.as_ref().and_then(|r| r.name.as_deref()),
        Some("web-0")
    );
    assert_eq!(
        conditions(not_ready),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!(
        conditions(terminating),
        (Some(false), Some(true), Some(true))
    );

    // A slice with no endpoints (`endpoints: null` on the wire) parses as empty.
    fake.apply(endpoint_slice("prod", "web", "web-empty", AddressType::IPv4).build());
    let empty = eventually("the empty slice arrives", || {
        in_store(&store, "prod", "web-empty")
    })
    .await;
    assert!(empty.endpoints.is_empty());
    // Relabelled away from the selector: a DELETED for this watch; relabelled into it:
    // an ADDED.
    fake.apply(endpoint_slice("prod", "db", "web-empty", AddressType::IPv4).build());
    fake.apply(
        endpoint_slice("prod", "web", "db-qwert", AddressType::IPv4)
            .endpoint(endpoint("10.1.1.1"))
            .build(),
    );
    eventually("the selector change shows in the store", || {
        (names(&store) == ["prod/db-qwert", "prod/web-abc12", "prod/web-v6xyz"]).then_some(())
    })
    .await;

    // Selector grammar on plain lists.
    let list_names = |list: kube::core::ObjectList<EndpointSlice>| -> Vec<String> {
        list.items.iter().map(|s| s.name_any()).collect()
    };
    let by = |labels: &str| ListParams::default().labels(labels);
    assert_eq!(
        list_names(
            api.list(&by("kubernetes.io/service-name in (db, legacy)"))
                .await
                .unwrap()
        ),
        ["legacy-fqdn", "web-empty"]
    );
    assert_eq!(
        list_names(
            api.list(&by("kubernetes.io/service-name!=web,!nonexistent"))
                .await
                .unwrap()
        ),
        ["legacy-fqdn", "web-empty"]
    );
    let by_name = ListParams::default().fields("metadata.name=web-v6xyz");
    assert_eq!(list_names(api.list(&by_name).await.unwrap()), ["web-v6xyz"]);
    let elsewhere = Api::<EndpointSlice>::namespaced(client, "other");
    assert!(
        elsewhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn pagination_serves_a_consistent_snapshot_and_expires_continue_tokens() {
    let (fake, client, _dir) = setup().await;
    let mut expected = Vec::new();
    for ns in ["a", "b", "c"] {
        for i in 0..9 {
            let name = format!("svc-{i}");
            fake.apply(web(ns, &name, &format!("10.96.{}.{i}", ns.len())));
            expected.push(format!("{ns}/{name}"));
        }
    }
    expected.sort();

    // The watcher pages its initial list.
    let store = start_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().page_size(4),
    );
    ready(&store).await;
    assert_eq!(names(&store), expected);
    let lists = requests(&fake, Kind::Service, Verb::List);
    assert_eq!(lists.len(), 7, "27 objects in pages of 4: {lists:#?}");
    assert!(
        lists
            .iter()
            .all(|r| r.query("limit").as_deref() == Some("4"))
    );
    assert!(lists[0].query("continue").is_none());
    assert!(lists[1..].iter().all(|r| r.query("continue").is_some()));

    // Pages after the first show the list's snapshot, whatever changes in between.
    let api = Api::<Service>::all(client);
    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(17));
    fake.delete(Kind::Service, "c", "svc-8");
    fake.apply(web("c", "svc-99", "10.96.9.99"));
    let mut seen: Vec<String> = first
        .items
        .iter()
        .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any()))
        .collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        seen.extend(
            page.items
                .iter()
                .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any())),
        );
        token = page.metadata.continue_;
    }
    assert_eq!(seen, expected);
    let now = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(now.items.len(), 27);
    assert!(now.items.iter().any(|s| s.name_any() == "svc-99"));

    // A continue token from before a compaction has expired.
    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    fake.apply(web("c", "svc-100", "10.96.9.100"));
    fake.compact();
    let token = first.metadata.continue_.unwrap();
    let expired = status(
        api.list(&ListParams::default().limit(10).continue_token(&token))
            .await,
    );
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn a_410_after_an_outage_makes_the_reflector_relist_and_lose_nothing() {
    let (fake, client, _dir) = setup().await;
    for name in ["a", "b", "c"] {
        fake.apply(web("default", name, "10.96.0.1"));
    }
    let store = start_reflector(Api::<Service>::all(client), watcher::Config::default());
    ready(&store).await;
    assert_eq!(names(&store), ["default/a", "default/b", "default/c"]);

    // While the client cannot see it: a change, a deletion, an addition; then the history
    // is compacted past the client's resourceVersion (an API server restart does that).
    fake.go_down().await;
    fake.apply(
        cluster_ip_service("default", "a", &["10.96.0.1"])
            .label("changed", "yes")
            .build(),
    );
    fake.delete(Kind::Service, "default", "b");
    fake.apply(web("default", "d", "10.96.0.4"));
    fake.compact();
    fake.come_back().await;

    eventually("the store converges after the relist", || {
        let a_changed =
            in_store(&store, "default", "a").is_some_and(|a| a.labels().contains_key("changed"));
        (a_changed && names(&store) == ["default/a", "default/c", "default/d"]).then_some(())
    })
    .await;
    let watches = requests(&fake, Kind::Service, Verb::Watch);
    assert!(
        watches
            .iter()
            .any(|w| w.status == 200 && w.watch_error == Some(410)),
        "a resumed watch got ERROR 410 on HTTP 200: {watches:#?}"
    );
    assert!(requests(&fake, Kind::Service, Verb::List).len() >= 2);
}

#[tokio::test]
async fn a_watcher_without_bookmarks_relists_after_compaction_and_cut_watches() {
    let (fake, client, _dir) = setup_with(Options {
        bookmark_interval: None,
        ..Options::default()
    })
    .await;
    fake.apply(web("default", "web", "10.96.0.1"));
    let config = watcher::Config::default().disable_bookmarks();
    let store = start_reflector(Api::<Service>::all(client), config);
    ready(&store).await;
    // Writes of another kind move the global resourceVersion; a Service watcher without
    // bookmarks never hears of it, so its resourceVersion falls behind the compaction.
    fake.apply(
        endpoint_slice("default", "web", "web-1", AddressType::IPv4)
            .endpoint(endpoint("10.1.0.1"))
            .build(),
    );
    fake.compact();
    fake.drop_watches();
    // And changes after the cut.
    fake.apply(web("default", "later", "10.96.0.2"));
    fake.delete(Kind::Service, "default", "web");
    eventually("the store converges", || {
        (names(&store) == ["default/later"]).then_some(())
    })
    .await;
    let watches = requests(&fake, Kind::Service, Verb::Watch);
    assert!(
        watches
            .iter()
            .all(|w| w.query("allowWatchBookmarks").is_none())
    );
    assert!(
        watches.iter().any(|w| w.watch_error == Some(410)),
        "{watches:#?}"
    );
    assert_eq!(requests(&fake, Kind::Service, Verb::List).len(), 2);
}

#[tokio::test]
async fn bookmarks_reach_watches_and_move_the_resume_point_past_compaction() {
    let (fake, client, _dir) = setup_with(Options {
        bookmark_interval: Some(Duration::from_millis(200)),
        ..Options::default()
    })
    .await;
    fake.apply(web("default", "web", "10.96.0.1"));
    let api = Api::<Service>::all(client.clone());

    // A raw watch gets bookmarks with apiVersion, kind and the current resourceVersion,
    // also when the change that moved it was to another kind.
    let from = fake.resource_version().to_string();
    let mut events = api
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    fake.apply(
        endpoint_slice("default", "web", "web-1", AddressType::IPv4)
            .endpoint(endpoint("10.1.0.1"))
            .build(),
    );
    let target = fake.resource_version().to_string();
    fake.send_bookmarks();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.try_next().await.unwrap() {
                Some(WatchEvent::Bookmark(bm)) if bm.metadata.resource_version == target => {
                    assert_eq!(
                        (bm.types.api_version.as_str(), bm.types.kind.as_str()),
                        ("v1", "Service")
                    );
                    return;
                }
                Some(WatchEvent::Bookmark(_)) => {}
                other => panic!("only bookmarks on this watch, got {other:?}"),
            }
        }
    })
    .await
    .expect("a bookmark at the current resourceVersion");
    drop(events);

    // A reflector (bookmarks on, as by default) resumes from a bookmark's resourceVersion.
    let store = start_reflector(api, watcher::Config::default());
    ready(&store).await;
    fake.apply(
        endpoint_slice("default", "web", "web-2", AddressType::IPv4)
            .endpoint(endpoint("10.1.0.2"))
            .build(),
    );
    let target = fake.resource_version().to_string();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let before = requests(&fake, Kind::Service, Verb::Watch).len();
            fake.drop_watches();
            let resumed = eventually("the watcher reconnects", || {
                requests(&fake, Kind::Service, Verb::Watch)
                    .into_iter()
                    .nth(before)
            })
            .await;
            if resumed.query("resourceVersion").as_deref() == Some(target.as_str()) {
                return;
            }
            // Give the new stream time for its periodic bookmark.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the watcher resumed from the bookmark's resourceVersion");
    // So compaction now costs it nothing: it resumes, no 410, no relist.
    let before = requests(&fake, Kind::Service, Verb::Watch).len();
    fake.compact();
    fake.drop_watches();
    eventually("the watcher reconnects after compaction", || {
        requests(&fake, Kind::Service, Verb::Watch)
            .into_iter()
            .nth(before)
    })
    .await;
    fake.apply(web("default", "after", "10.96.0.3"));
    eventually("a later change arrives", || {
        in_store(&store, "default", "after")
    })
    .await;
    let watches = requests(&fake, Kind::Service, Verb::Watch);
    assert!(
        watches.iter().all(|w| w.watch_error.is_none()),
        "{watches:#?}"
    );
    assert_eq!(requests(&fake, Kind::Service, Verb::List).len(), 1);
}

#[tokio::test]
async fn the_watcher_recovers_when_the_api_server_comes_back_on_the_same_port() {
    let (fake, client, _dir) = setup().await;
    fake.apply(web("default", "web", "10.96.0.1"));
    let store = start_reflector(Api::<Service>::all(client), watcher::Config::default());
    ready(&store).await;
    let port = fake.port();

    fake.go_down().await;
    assert_eq!(fake.open_watches(), 0);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "a server that is down refuses connections"
    );
    fake.apply(web("default", "while-down", "10.96.0.2"));
    fake.delete(Kind::Service, "default", "web");
    fake.come_back().await;
    assert_eq!(fake.port(), port);

    eventually("the store converges after the outage", || {
        (names(&store) == ["default/while-down"]).then_some(())
    })
    .await;
    fake.apply(web("default", "after", "10.96.0.3"));
    eventually("changes flow again", || {
        in_store(&store, "default", "after")
    })
    .await;
    // The history was intact: the watcher resumed, it did not need to relist.
    assert_eq!(requests(&fake, Kind::Service, Verb::List).len(), 1);
    assert!(fake.requests().iter().all(|r| r.watch_error.is_none()));
}

#[tokio::test]
async fn a_missing_service_export_crd_is_a_404_through_discovery() {
    let (fake, client, _dir) = setup_with(Options {
        mcs: McsCrd::Absent,
        ..Options::default()
    })
    .await;
    let group = "multicluster.x-k8s.io";
    let discovered = Discovery::new(client.clone()).run().await.unwrap();
    assert!(!discovered.has_group(group));
    assert!(
        discovered.has_group("discovery.k8s.io") && discovered.has_group("coordination.k8s.io")
    );
    let core = discovered.get("").expect("the core group");
    assert!(core.recommended_kind("Service").is_some());
    match discovery::group(&client, group).await {
        Err(kube::Error::Discovery(_)) => {}
        Err(other) => panic!("the group is missing, got {other:?}"),
        Ok(_) => panic!("the group is missing, yet discovered"),
    }
    let gv = GroupVersion::gv(group, "v1alpha1");
    let missing = status(discovery::pinned_group(&client, &gv).await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    let ar = kube::discovery::ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, "v1alpha1", "ServiceExport"),
        "serviceexports",
    );
    let exports = Api::<DynamicObject>::all_with(client.clone(), &ar);
    let missing = status(exports.list(&ListParams::default()).await);
    assert_eq!(missing.code, 404);
    assert!(!discovered.has_group(group));

    // Installing MCS v0.5.0 serves both versions, v1beta1 preferred, in both discovery
    // flavours.
    fake.set_mcs(McsCrd::v0_5());
    let legacy = discovery::group(&client, group).await.unwrap();
    assert_eq!(
        legacy.versions().collect::<Vec<_>>(),
        ["v1beta1", "v1alpha1"]
    );
    assert_eq!(legacy.preferred_version(), Some("v1beta1"));
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let mcs = aggregated.get(group).expect("the MCS group");
    assert_eq!(mcs.preferred_version(), Some("v1beta1"));
    let (ar, caps) = mcs.recommended_kind("ServiceExport").unwrap();
    assert_eq!(
        (ar.version.as_str(), ar.plural.as_str()),
        ("v1beta1", "serviceexports")
    );
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    assert!(
        Api::<DynamicObject>::all_with(client, &ar)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn service_exports_are_watched_as_metadata() {
    let (fake, client, _dir) = setup().await;
    fake.apply(service_export("prod", "web"));
    fake.apply(service_export("prod", "api"));
    let gvk = GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport");
    let (ar, _) = discovery::pinned_kind(&client, &gvk).await.unwrap();

    // The current way: Api<PartialObjectMeta<K>> makes every request metadata-only.
    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &ar);
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(stream.for_each(|_| std::future::ready(())));
    tokio::time::timeout(TIMEOUT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    let mut got: Vec<String> = reader.state().iter().map(|m| m.name_any()).collect();
    got.sort();
    assert_eq!(got, ["api", "web"]);
    let types = reader.state()[0]
        .types
        .clone()
        .expect("items carry their kind");
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("meta.k8s.io/v1", "PartialObjectMetadata")
    );
    fake.delete(Kind::ServiceExport, "prod", "api");
    fake.apply(service_export("prod", "db"));
    eventually("metadata events reach the store", || {
        let mut got: Vec<String> = reader.state().iter().map(|m| m.name_any()).collect();
        got.sort();
        (got == ["db", "web"]).then_some(())
    })
    .await;

    // The deprecated metadata_watcher sends the same requests.
    #[allow(deprecated)]
    let mut events = kube::runtime::metadata_watcher(
        Api::<DynamicObject>::all_with(client, &ar),
        watcher::Config::default(),
    )
    .boxed();
    let mut listed = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.try_next().await {
                Ok(Some(watcher::Event::InitApply(meta))) => listed.push(meta.name_any()),
                Ok(Some(watcher::Event::InitDone)) => return,
                Ok(_) => {}
                Err(e) => panic!("metadata_watcher failed: {e}"),
            }
        }
    })
    .await
    .expect("the metadata list completes");
    listed.sort();
    assert_eq!(listed, ["db", "web"]);

    let exports: Vec<RequestRecord> = fake
        .requests()
        .into_iter()
        .filter(|r| r.kind == Some(Kind::ServiceExport))
        .collect();
    assert!(exports.iter().any(|r| r.verb == Some(Verb::Watch)));
    for r in &exports {
        let wanted = match r.verb {
            Some(Verb::List) => "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            _ => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        };
        assert_eq!(r.accept.as_deref(), Some(wanted), "{r:?}");
    }
}

#[tokio::test]
async fn service_exports_are_served_in_every_version_the_crd_serves() {
    let (fake, client, _dir) = setup_with(Options {
        mcs: McsCrd::v0_5(),
        ..Options::default()
    })
    .await;
    fake.apply(service_export("prod", "web"));
    for version in ["v1alpha1", "v1beta1"] {
        let gvk = GroupVersionKind::gvk("multicluster.x-k8s.io", version, "ServiceExport");
        let (ar, _) = discovery::pinned_kind(&client, &gvk).await.unwrap();
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), "prod", &ar);
        let web = api.get("web").await.unwrap();
        assert_eq!(
            web.types.unwrap().api_version,
            format!("multicluster.x-k8s.io/{version}")
        );
        // Custom resources keep apiVersion and kind on list items.
        let list = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items[0].types.as_ref().unwrap().kind, "ServiceExport");
    }
}

#[tokio::test]
async fn leases_follow_the_api_servers_optimistic_concurrency() {
    let (fake, client, _dir) = setup().await;
    let leases = Api::<Lease>::namespaced(client, "fleetdns");
    let missing = status(leases.get("leader").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        missing.message,
        "leases.coordination.k8s.io \"leader\" not found"
    );

    let leader: Lease = serde_json::from_value(lease("fleetdns", "leader", "peer-a", 15)).unwrap();
    let created = leases
        .create(&PostParams::default(), &leader)
        .await
        .unwrap();
    let rv1 = created.resource_version().unwrap();
    assert!(created.uid().is_some());
    let again = status(leases.create(&PostParams::default(), &leader).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    // A replace with the current resourceVersion wins and bumps it.
    let mut takeover = created.clone();
    takeover.spec.as_mut().unwrap().holder_identity = Some("peer-b".into());
    takeover.spec.as_mut().unwrap().lease_transitions = Some(1);
    let replaced = leases
        .replace("leader", &PostParams::default(), &takeover)
        .await
        .unwrap();
    let rv2 = replaced.resource_version().unwrap();
    assert!(rv2.parse::<u64>().unwrap() > rv1.parse::<u64>().unwrap());
    assert_eq!(replaced.uid(), created.uid());
    let view = fake.lease("fleetdns", "leader").unwrap();
    assert_eq!(
        view,
        LeaseView {
            holder: Some("peer-b".into()),
            resource_version: rv2.clone(),
            transitions: Some(1),
        }
    );

    // The loser, still holding the old resourceVersion, gets a 409 Conflict.
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("peer-c".into());
    let conflict = status(
        leases
            .replace("leader", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );
    assert_eq!(
        fake.lease("fleetdns", "leader").unwrap().holder.as_deref(),
        Some("peer-b")
    );

    // Leases refuse an update that names no resourceVersion (422), and a PUT of a
    // missing Lease creates it.
    let mut blind = replaced.clone();
    blind.metadata.resource_version = None;
    let invalid = status(
        leases
            .replace("leader", &PostParams::default(), &blind)
            .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    let mut other: Lease =
        serde_json::from_value(lease("fleetdns", "other", "peer-a", 15)).unwrap();
    other.metadata.resource_version = None;
    leases
        .replace("other", &PostParams::default(), &other)
        .await
        .unwrap();

    // An update that changes nothing is not a write: same resourceVersion.
    let same = leases
        .replace("leader", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), Some(rv2.clone()));

    // Deletion honours preconditions.
    let guarded = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some(rv1),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let refused = status(leases.delete("leader", &guarded).await);
    assert_eq!(refused.code, 409);
    leases
        .delete("leader", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status(leases.get("leader").await).code, 404);
    assert!(fake.lease("fleetdns", "leader").is_none());
}

#[tokio::test]
async fn every_request_needs_the_bearer_token() {
    let (fake, client, dir) = setup().await;
    fake.apply(web("default", "web", "10.96.0.1"));
    let store = start_reflector(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    ready(&store).await;
    Discovery::new(client.clone()).run().await.unwrap();
    let _ = Api::<Lease>::namespaced(client, "default").get("x").await;
    let log = fake.requests();
    assert!(log.len() > 5, "{log:#?}");
    assert!(log.iter().all(|r| r.bearer), "{log:#?}");

    // The same kubeconfig without its token, and with a wrong one: 401 Unauthorized.
    for token in [None, Some("wrong-token")] {
        let path = fake.kubeconfig(dir.path());
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        config.auth_info.token = token.map(|t| t.to_owned().into());
        let anonymous = kube::Client::try_from(config).unwrap();
        let denied = status(
            Api::<Service>::all(anonymous)
                .list(&ListParams::default())
                .await,
        );
        assert_eq!((denied.code, denied.reason.as_str()), (401, "Unauthorized"));
    }
    let refused: Vec<RequestRecord> = fake.requests().into_iter().filter(|r| !r.bearer).collect();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|r| r.status == 401));
}

/// Sends a raw request through the kube client and returns the Status it failed with.
async fn raw_error(
    client: &kube::Client,
    method: &str,
    uri: &str,
    body: &[u8],
) -> kube::core::Status {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .unwrap();
    status(client.request::<Value>(request).await)
}

#[tokio::test]
async fn garbage_input_gets_a_status_and_the_server_goes_on() {
    let (fake, _client, dir) = setup().await;
    // Without kube's retries: it would retry the 504 below for minutes, as it would with
    // a real API server.
    let kubeconfig = kube::config::Kubeconfig::read_from(fake.kubeconfig(dir.path())).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    fake.apply(web("default", "web", "10.96.0.1"));
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("POST", leases, b"{not json", 400, "BadRequest"),
        ("POST", leases, b"[1, 2]", 400, "BadRequest"),
        (
            "POST",
            leases,
            br#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            leases,
            br#"{"metadata":{"name":"x"},"spec":{"leaseDurationSeconds":"long"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            leases,
            br#"{"metadata":{"name":"Not_A_Name"}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            leases,
            br#"{"metadata":{"name":"x","namespace":"elsewhere"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            leases,
            br#"{"metadata":{"name":"x","resourceVersion":"5"}}"#,
            500,
            "InternalError",
        ),
        (
            "PUT",
            &format!("{leases}/x"),
            br#"{"metadata":{"name":"y"}}"#,
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            &format!("{leases}/x"),
            b"{}",
            415,
            "UnsupportedMediaType",
        ),
        ("DELETE", "/api/v1/services", b"", 405, "MethodNotAllowed"),
        (
            "GET",
            "/api/v1/services?labelSelector=a%20in%20(b",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/services?fieldSelector=spec.type%3DClusterIP",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/services?limit=2&continue=bm90LWEtdG9rZW4",
            b"",
            400,
            "BadRequest",
        ),
        ("GET", "/api/v1/services?limit=many", b"", 400, "BadRequest"),
        (
            "GET",
            "/api/v1/services?resourceVersion=abc",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/services?resourceVersion=99999999&resourceVersionMatch=Exact",
            b"",
            504,
            "Timeout",
        ),
        (
            "GET",
            "/api/v1/services?watch=true&resourceVersion=-1",
            b"",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods",
            b"",
            404,
            "NotFound",
        ),
        ("GET", "/apis/nope.example.com/v1", b"", 404, "NotFound"),
        (
            "GET",
            "/api/v1/namespaces/default/services/web/status",
            b"",
            404,
            "NotFound",
        ),
        ("GET", "/%ff%fe/..", b"", 404, "NotFound"),
    ];
    for (method, uri, body, code, reason) in cases {
        let got = raw_error(&client, method, uri, body).await;
        assert_eq!(
            (got.code, got.reason.as_str()),
            (*code, *reason),
            "{method} {uri}: {got:?}"
        );
    }
    // Not even TLS.
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", fake.port()))
        .await
        .unwrap();
    let _ = raw
        .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage")
        .await;
    drop(raw);
    let services = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(services.items.len(), 1);
}

/// Sends a raw request; returns the HTTP status and the body.
async fn raw(
    client: &kube::Client,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(kube::client::Body::from(body)).unwrap();
    let response = client.send(request).await.expect("the fake answers");
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), usize::MAX)
        .await
        .expect("a complete body");
    (status, body.to_vec())
}

/// A fixed xorshift sequence: reproducible garbage.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Up to `max` bytes, biased towards JSON and selector syntax so that parsers get
    /// past their first byte.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"{}[]\":,=!()~ -_./0123456789abcxyzKIND\x00\xff\\%+";
        let len = self.below(max);
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }

    /// A well-formed Lease with one field replaced by a random JSON value: gets past the
    /// JSON parser to typed decoding and the name and resourceVersion checks.
    fn lease_json(&mut self) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self.bytes(12)).into_owned();
        let values = [
            json!(text),
            json!("x"),
            json!(self.next() % 5000),
            json!(-1),
            json!(1.5),
            json!(true),
            Value::Null,
            json!([]),
            json!({}),
        ];
        let fields = [
            "/apiVersion",
            "/kind",
            "/metadata",
            "/metadata/name",
            "/metadata/namespace",
            "/metadata/resourceVersion",
            "/metadata/generateName",
            "/spec",
            "/spec/leaseDurationSeconds",
            "/spec/holderIdentity",
        ];
        let mut obj = lease("default", "x", "peer-a", 15);
        let field = fields[self.below(fields.len())];
        if let Some(slot) = obj.pointer_mut(field) {
            *slot = values[self.below(values.len())].clone();
        }
        obj.to_string().into_bytes()
    }

    /// Percent-encoded random bytes, for paths and query values.
    fn encoded(&mut self, max: usize) -> String {
        self.bytes(max)
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect()
    }
}

#[tokio::test]
async fn random_bytes_anywhere_get_a_status_never_a_dropped_connection() {
    let (fake, client, _dir) = setup().await;
    fake.apply(web("default", "web", "10.96.0.1"));
    fake.apply(lease("default", "x", "peer-a", 15));
    let mut g = Garbage(0x9e37_79b9_7f4a_7c15);
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    for round in 0..240u32 {
        let body = if g.next().is_multiple_of(2) {
            g.bytes(48)
        } else {
            g.lease_json()
        };
        let (method, uri, content_type) = match round % 6 {
            0 => ("POST", leases.to_owned(), "application/json"),
            1 => ("PUT", format!("{leases}/x"), "application/json"),
            2 => (
                "PATCH",
                format!("{leases}/x"),
                "application/merge-patch+json",
            ),
            3 => ("DELETE", format!("{leases}/x"), "application/json"),
            4 => {
                let query: Vec<String> = [
                    "labelSelector",
                    "fieldSelector",
                    "limit",
                    "continue",
                    "resourceVersion",
                ]
                .iter()
                .map(|k| format!("{k}={}", g.encoded(12)))
                .collect();
                (
                    "GET",
                    format!("/api/v1/services?{}", query.join("&")),
                    "application/json",
                )
            }
            _ => {
                let path = format!("/apis/{}/{}/{}", g.encoded(8), g.encoded(8), g.encoded(8));
                ("GET", path, "application/json")
            }
        };
        let accept = String::from_utf8_lossy(&g.bytes(20)).into_owned();
        let accept =
            if round.is_multiple_of(5) && axum::http::HeaderValue::from_str(&accept).is_ok() {
                accept
            } else {
                "application/json".to_owned()
            };
        let headers = [("content-type", content_type), ("accept", accept.as_str())];
        let (code, reply) = raw(&client, method, &uri, &headers, body.clone()).await;
        let context = format!(
            "{method} {uri} accept={accept:?} body={:?}",
            String::from_utf8_lossy(&body)
        );
        let reply: Value =
            serde_json::from_slice(&reply).unwrap_or_else(|e| panic!("{context}: not JSON ({e})"));
        if code >= 400 {
            assert_eq!(reply["kind"], "Status", "{context}: {reply}");
            assert_eq!(reply["code"], code, "{context}: {reply}");
            assert!(
                reply["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{context}: {reply}"
            );
        }
        if fake.get(Kind::Lease, "default", "x").is_none() {
            fake.apply(lease("default", "x", "peer-a", 15));
        }
    }
    let services = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(services.items.len(), 1);
}

#[tokio::test]
async fn injected_failures_look_like_the_api_servers() {
    let (fake, client, _dir) = setup().await;
    fake.apply(web("default", "web", "10.96.0.1"));
    let api = Api::<Service>::all(client.clone());

    // kube retries a 429 (after Retry-After) by itself.
    fake.fail_next(Verb::List, Kind::Service, 429);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let lists = requests(&fake, Kind::Service, Verb::List);
    assert_eq!(
        lists.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );

    fake.fail_next(Verb::List, Kind::Service, 500);
    let failed = status(api.list(&ListParams::default()).await);
    assert_eq!(
        (failed.code, failed.reason.as_str()),
        (500, "InternalError")
    );

    fake.fail_next(Verb::Get, Kind::Lease, 403);
    let forbidden = status(
        Api::<Lease>::namespaced(client.clone(), "fleetdns")
            .get("leader")
            .await,
    );
    assert_eq!(
        (forbidden.code, forbidden.reason.as_str()),
        (403, "Forbidden")
    );

    // A failing initial list is retried by the watcher with backoff.
    fake.fail_next(Verb::List, Kind::Service, 503);
    fake.fail_next(Verb::List, Kind::Service, 503);
    fake.fail_next(Verb::List, Kind::Service, 503);
    fake.fail_next(Verb::List, Kind::Service, 503);
    let store = start_reflector(api, watcher::Config::default());
    ready(&store).await;
    assert_eq!(names(&store), ["default/web"]);

    // An injected 410 on a watch comes as the API server sends it, an ERROR event on
    // HTTP 200, and the watcher relists.
    let lists = requests(&fake, Kind::Service, Verb::List).len();
    fake.fail_next(Verb::Watch, Kind::Service, 410);
    fake.drop_watches();
    eventually("the watcher relists after the injected 410", || {
        (requests(&fake, Kind::Service, Verb::List).len() > lists).then_some(())
    })
    .await;
    let watches = requests(&fake, Kind::Service, Verb::Watch);
    assert!(
        watches
            .iter()
            .any(|w| w.status == 200 && w.watch_error == Some(410))
    );
}

#[tokio::test]
async fn streaming_lists_end_with_the_initial_events_bookmark() {
    let (fake, client, _dir) = setup_with(Options {
        bookmark_interval: None,
        ..Options::default()
    })
    .await;
    fake.apply(web("default", "a", "10.96.0.1"));
    fake.apply(web("default", "b", "10.96.0.2"));
    let store = start_reflector(
        Api::<Service>::all(client),
        watcher::Config::default().streaming_lists(),
    );
    ready(&store).await;
    assert_eq!(names(&store), ["default/a", "default/b"]);
    assert!(requests(&fake, Kind::Service, Verb::List).is_empty());
    let watch = &requests(&fake, Kind::Service, Verb::Watch)[0];
    assert_eq!(watch.query("sendInitialEvents").as_deref(), Some("true"));
    fake.apply(web("default", "c", "10.96.0.3"));
    eventually("a change after the initial events", || {
        in_store(&store, "default", "c")
    })
    .await;
}

#[tokio::test]
async fn watches_end_after_timeout_seconds_and_the_watcher_resumes() {
    let (fake, client, _dir) = setup().await;
    fake.apply(web("default", "a", "10.96.0.1"));
    let store = start_reflector(
        Api::<Service>::all(client),
        watcher::Config::default().timeout(1),
    );
    ready(&store).await;
    eventually("the watch was renewed after its timeout", || {
        (requests(&fake, Kind::Service, Verb::Watch).len() >= 3).then_some(())
    })
    .await;
    fake.apply(web("default", "b", "10.96.0.2"));
    eventually("changes still arrive", || in_store(&store, "default", "b")).await;
    let watches = requests(&fake, Kind::Service, Verb::Watch);
    assert!(
        watches
            .iter()
            .all(|w| w.query("timeoutSeconds").as_deref() == Some("1"))
    );
    assert_eq!(requests(&fake, Kind::Service, Verb::List).len(), 1);
}

/// The machine's kubectl (client-go, independent of kube-rs) reads the fake too.
#[tokio::test]
async fn kubectl_reads_the_fake() {
    let kubectl = Path::new("/usr/bin/kubectl");
    assert!(
        kubectl.exists(),
        "kubectl is missing: install the image's kubectl (Google Cloud SDK package `kubectl`)"
    );
    let (fake, _client, dir) = setup().await;
    fake.apply(web("default", "web", "10.96.0.1"));
    fake.apply(
        headless_service("prod", "db")
            .port("pg", 5432, "TCP")
            .build(),
    );
    fake.apply(service_export("prod", "db"));
    let kubeconfig = fake.kubeconfig(dir.path());
    let cache = dir.path().join("cache");
    let run = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(kubectl);
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(TIMEOUT, cmd.output())
                .await
                .expect("kubectl finished in time")
                .expect("kubectl ran");
            assert!(
                out.status.success(),
                "kubectl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Value>(&out.stdout).expect("kubectl printed JSON")
        }
    };
    let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let services = run(args("get services -A -o json")).await;
    let names: Vec<&str> = services["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "db"]);
    let exports = run(args("get svcex -n prod -o json")).await;
    assert_eq!(exports["items"][0]["metadata"]["name"], json!("db"));
    assert!(fake.requests().iter().all(|r| r.bearer));
}

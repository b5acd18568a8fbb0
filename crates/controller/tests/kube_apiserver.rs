//! The Kubernetes provider, status writer and leader election against a
//! real API server.
//!
//! Runs only when `PORTCULLIS_TEST_KUBECONFIG` names a kubeconfig of a
//! cluster with the Gateway API CRDs installed (the e2e harness's, or a
//! bare etcd + kube-apiserver: no pods are needed); otherwise each test
//! prints that it was skipped and passes. Every test works in its own
//! namespace with its own GatewayClass and controller name, so tests (and
//! any controller already running there) do not see each other.
//!
//! The benchmark is `#[ignore]`d: run it with
//! `cargo test -p portcullis-controller --test kube_apiserver -- --ignored --nocapture`
//! (`PORTCULLIS_BENCH_ROUTES`, default 1000).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use portcullis_controller::kube::leader::{self, LeaderConfig};
use portcullis_controller::kube::store::Kind;
use portcullis_controller::kube::writer::{self, WriterStats};
use portcullis_controller::kube::{KubeProvider, KubeProviderConfig};
use portcullis_controller::CompileOptions;
use portcullis_model::{HostMatch, RouteTable};
use serde_json::json;
use tokio::sync::watch;

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("PORTCULLIS_TEST_KUBECONFIG").map(PathBuf::from) else {
        eprintln!("skipped: set PORTCULLIS_TEST_KUBECONFIG to a cluster with the Gateway API CRDs");
        return None;
    };
    let file = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig readable");
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig usable");
    Some(Client::try_from(config).expect("client"))
}

/// A namespace, a GatewayClass and a controller name of our own.
struct Scope {
    client: Client,
    namespace: String,
    class: String,
    controller_name: String,
}

impl Scope {
    async fn new(client: Client, prefix: &str) -> Scope {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let unique = format!(
            "{prefix}-{}-{n}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000_000)
                .unwrap_or(0)
        );
        let scope = Scope {
            client,
            namespace: unique.clone(),
            class: unique.clone(),
            controller_name: format!("portcullis.dev/test-{unique}"),
        };
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": scope.namespace}}))
            .expect("namespace");
        Api::<Namespace>::all(scope.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let class: GatewayClass = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": scope.class},
            "spec": {"controllerName": scope.controller_name}
        }))
        .expect("class");
        Api::<GatewayClass>::all(scope.client.clone())
            .create(&PostParams::default(), &class)
            .await
            .expect("create class");
        scope
    }

    fn options(&self) -> CompileOptions {
        CompileOptions {
            controller_name: self.controller_name.clone(),
            ..CompileOptions::default()
        }
    }

    async fn gateway(&self, name: &str, port: u16) {
        let gw: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"gatewayClassName": self.class, "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}
        }))
        .expect("gateway");
        Api::<Gateway>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &gw)
            .await
            .expect("create gateway");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "backend", "namespace": self.namespace},
            "spec": {"ports": [{"port": 80}]}
        }))
        .expect("service");
        Api::<Service>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service");
    }

    fn route(&self, name: &str, hostname: &str) -> HttpRoute {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": [hostname],
                "rules": [{"backendRefs": [{"name": "backend", "port": 80}]}]
            }
        }))
        .expect("route")
    }

    fn routes(&self) -> Api<HttpRoute> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn cleanup(self) {
        let _ = Api::<GatewayClass>::all(self.client.clone())
            .delete(&self.class, &DeleteParams::default())
            .await;
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn hostnames(table: &RouteTable) -> Vec<String> {
    let mut out: Vec<String> = table
        .ports
        .iter()
        .flat_map(|p| &p.virtual_hosts)
        .filter(|v| !v.routes.is_empty())
        .filter_map(|v| match &v.hostname {
            HostMatch::Exact(h) => Some(h.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Waits until the latest table satisfies `check`; returns the time it took.
async fn wait_table(
    tables: &mut watch::Receiver<Arc<RouteTable>>,
    within: Duration,
    check: impl Fn(&RouteTable) -> bool,
) -> Duration {
    let started = Instant::now();
    let reached = matches!(
        tokio::time::timeout(within, tables.wait_for(|t| check(t))).await,
        Ok(Ok(_))
    );
    assert!(
        reached,
        "table did not reach the expected state within {within:?}; last: {:?}",
        hostnames(&tables.borrow())
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_publishes_only_complete_tables_and_follows_changes() {
    let Some(client) = client().await else { return };
    let scope = Scope::new(client.clone(), "kt-provider").await;
    scope.gateway("gw", 18201).await;
    let routes = scope.routes();
    routes
        .create(&PostParams::default(), &scope.route("a", "a.example"))
        .await
        .expect("create route");

    let mut provider = KubeProvider::spawn(client, KubeProviderConfig::new(scope.options()));
    tokio::time::timeout(Duration::from_secs(30), provider.wait_synced())
        .await
        .expect("synced within 30 s");
    // The first table published is already complete: the route is in it.
    assert_eq!(hostnames(&provider.tables.borrow()), ["a.example"]);

    let patch = json!({"spec": {"hostnames": ["b.example"]}});
    routes
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let took = wait_table(&mut provider.tables, Duration::from_secs(10), |t| {
        hostnames(t) == ["b.example"]
    })
    .await;
    eprintln!("route change -> table: {took:?}");

    routes
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    wait_table(&mut provider.tables, Duration::from_secs(10), |t| {
        hostnames(t).is_empty()
    })
    .await;
    drop(provider);
    scope.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_compiles_only_its_gateway() {
    let Some(client) = client().await else { return };
    let scope = Scope::new(client.clone(), "kt-proxy").await;
    scope.gateway("gw", 18202).await;
    let other: Gateway = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "other", "namespace": scope.namespace},
        "spec": {"gatewayClassName": scope.class, "listeners": [{"name": "http", "port": 18203, "protocol": "HTTP"}]}
    }))
    .expect("gateway");
    Api::<Gateway>::namespaced(client.clone(), &scope.namespace)
        .create(&PostParams::default(), &other)
        .await
        .expect("create gateway");
    let mut options = scope.options();
    options.gateway = Some(portcullis_controller::ObjectKey::new(
        scope.namespace.clone(),
        "gw",
    ));
    let mut provider = KubeProvider::spawn(client, KubeProviderConfig::new(options));
    tokio::time::timeout(Duration::from_secs(30), provider.wait_synced())
        .await
        .expect("synced within 30 s");
    let ports: Vec<u16> = provider
        .tables
        .borrow()
        .ports
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [18202]);
    drop(provider);
    scope.cleanup().await;
}

async fn create_service(client: &Client, namespace: &str, name: &str) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": 80}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
}

fn route_to(namespace: &str, name: &str, gateway: (&str, &str), service: &str) -> HttpRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"namespace": gateway.0, "name": gateway.1}],
            "hostnames": [format!("{name}.example")],
            "rules": [{"backendRefs": [{"name": service, "port": 80}]}]
        }
    }))
    .expect("route")
}

async fn wait_stored(
    provider: &mut portcullis_controller::kube::KubeProviderHandle,
    kind: Kind,
    want: usize,
) {
    let ok = tokio::time::timeout(
        Duration::from_secs(20),
        provider
            .stored
            .wait_for(|c| c.get(&kind).copied() == Some(want)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        ok,
        "stored {kind} never became {want}: {:?}",
        provider.stored.borrow()
    );
}

/// A proxy stores its Gateway's routes and what they reference, not the
/// rest of the cluster; watches routes in the Gateway's namespace while
/// its listeners admit only that one; picks up an object it dropped once
/// a route needs it; widens the route watch when a listener admits other
/// namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_stores_only_what_its_gateway_needs() {
    let Some(client) = client().await else { return };
    let scope = Scope::new(client.clone(), "kt-narrow").await;
    let elsewhere = Scope::new(client.clone(), "kt-narrow-other").await;
    let ns = scope.namespace.clone();
    scope.gateway("gw", 18206).await; // + Service "backend"
    create_service(&client, &ns, "unrelated").await;
    create_service(&client, &ns, "late").await;
    create_service(&client, &elsewhere.namespace, "far").await;
    let routes = scope.routes();
    routes
        .create(&PostParams::default(), &scope.route("a", "a.example"))
        .await
        .expect("create route");
    routes
        .create(
            &PostParams::default(),
            &route_to(&ns, "not-ours", (&ns, "other-gw"), "unrelated"),
        )
        .await
        .expect("create route");
    let far_routes = Api::<HttpRoute>::namespaced(client.clone(), &elsewhere.namespace);
    far_routes
        .create(
            &PostParams::default(),
            &route_to(&elsewhere.namespace, "far", (&ns, "gw"), "far"),
        )
        .await
        .expect("create route");

    let mut options = scope.options();
    options.gateway = Some(portcullis_controller::ObjectKey::new(ns.clone(), "gw"));
    let mut provider = KubeProvider::spawn(client.clone(), KubeProviderConfig::new(options));
    tokio::time::timeout(Duration::from_secs(30), provider.wait_synced())
        .await
        .expect("synced within 30 s");
    assert_eq!(hostnames(&provider.tables.borrow()), ["a.example"]);
    let stored = provider.stored.borrow().clone();
    assert_eq!(stored[&Kind::HttpRoute], 1, "{stored:?}");
    assert_eq!(stored[&Kind::Service], 1, "only backend: {stored:?}");
    assert_eq!(stored[&Kind::Gateway], 1, "{stored:?}");
    assert_eq!(stored[&Kind::GatewayClass], 1, "{stored:?}");
    assert_eq!(stored[&Kind::ConfigMap], 0, "{stored:?}");
    assert_eq!(
        provider.scopes[&Kind::HttpRoute]
            .borrow()
            .namespace
            .as_deref(),
        Some(ns.as_str()),
        "routes watched in the Gateway's namespace only"
    );

    // A route to a Service the proxy saw and dropped: listed again.
    routes
        .create(
            &PostParams::default(),
            &route_to(&ns, "b", (&ns, "gw"), "late"),
        )
        .await
        .expect("create route");
    wait_stored(&mut provider, Kind::Service, 2).await;
    wait_table(&mut provider.tables, Duration::from_secs(10), |t| {
        hostnames(t) == ["a.example", "b.example"]
    })
    .await;

    // A listener now admits every namespace: the route of the other
    // namespace attaches.
    let patch = json!({"spec": {"listeners": [{"name": "http", "port": 18206, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}}}]}});
    Api::<Gateway>::namespaced(client.clone(), &ns)
        .patch("gw", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch gateway");
    wait_table(&mut provider.tables, Duration::from_secs(20), |t| {
        hostnames(t) == ["a.example", "b.example", "far.example"]
    })
    .await;
    wait_stored(&mut provider, Kind::Service, 3).await;
    assert_eq!(provider.scopes[&Kind::HttpRoute].borrow().namespace, None);
    assert_eq!(provider.stored.borrow()[&Kind::HttpRoute], 3);

    drop(provider);
    elsewhere.cleanup().await;
    scope.cleanup().await;
}

/// A Gateway whose parametersRef names a GatewayParameters that does not
/// exist is Accepted=False InvalidParameters; creating it accepts the
/// Gateway (the GatewayParameters watch feeds compile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_gateway_parameters_are_invalid_until_created() {
    let Some(client) = client().await else { return };
    let scope = Scope::new(client.clone(), "kt-params").await;
    let ns = scope.namespace.clone();
    let gw: Gateway = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": ns},
        "spec": {"gatewayClassName": scope.class,
                 "infrastructure": {"parametersRef": {"group": "portcullis.dev", "kind": "GatewayParameters", "name": "sized"}},
                 "listeners": [{"name": "http", "port": 18207, "protocol": "HTTP"}]}
    }))
    .expect("gateway");
    Api::<Gateway>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &gw)
        .await
        .expect("create gateway");
    let mut provider =
        KubeProvider::spawn(client.clone(), KubeProviderConfig::new(scope.options()));
    tokio::time::timeout(Duration::from_secs(30), provider.wait_synced())
        .await
        .expect("synced within 30 s");
    let accepted = |statuses: &Arc<Vec<portcullis_controller::StatusUpdate>>| {
        statuses
            .iter()
            .find(|s| s.kind == portcullis_controller::StatusKind::Gateway && s.name == "gw")
            .and_then(|s| s.condition("Accepted"))
            .map(|c| (c["status"].clone(), c["reason"].clone()))
    };
    let now = accepted(&provider.statuses.borrow());
    assert_eq!(
        now,
        Some((json!("False"), json!("InvalidParameters"))),
        "{:?}",
        provider.statuses.borrow()
    );
    let params: portcullis_api::GatewayParameters = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "GatewayParameters",
        "metadata": {"name": "sized", "namespace": ns},
        "spec": {"replicas": 2}
    }))
    .expect("parameters");
    Api::<portcullis_api::GatewayParameters>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &params)
        .await
        .expect("create GatewayParameters (is the CRD installed? `portcullis crds`)");
    let ok = tokio::time::timeout(
        Duration::from_secs(20),
        provider
            .statuses
            .wait_for(|s| accepted(s) == Some((json!("True"), json!("Accepted")))),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(ok, "{:?}", provider.statuses.borrow());
    drop(provider);
    scope.cleanup().await;
}

async fn route_status(routes: &Api<HttpRoute>, name: &str) -> serde_json::Value {
    routes
        .get(name)
        .await
        .ok()
        .and_then(|r| r.status)
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writer_writes_each_change_once_and_keeps_transition_times() {
    let Some(client) = client().await else { return };
    let scope = Scope::new(client.clone(), "kt-status").await;
    scope.gateway("gw", 18204).await;
    let routes = scope.routes();
    routes
        .create(&PostParams::default(), &scope.route("a", "a.example"))
        .await
        .expect("create route");

    let mut config = KubeProviderConfig::new(scope.options());
    config.observe_status = true;
    let provider = KubeProvider::spawn(client.clone(), config);
    let (_leading_tx, leading) = watch::channel(true);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (stats_tx, stats) = watch::channel(WriterStats::default());
    let writer = tokio::spawn(writer::run(
        client.clone(),
        scope.controller_name.clone(),
        provider.status_inputs.clone(),
        leading,
        shutdown,
        stats_tx,
    ));

    let accepted = |status: &serde_json::Value, generation: i64| {
        status["parents"].as_array().is_some_and(|parents| {
            parents.iter().any(|p| {
                p["controllerName"] == json!(scope.controller_name)
                    && p["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["type"] == "Accepted"
                                && c["status"] == "True"
                                && c["observedGeneration"] == json!(generation)
                        })
                    })
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = route_status(&routes, "a").await;
    while !accepted(&status, 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = route_status(&routes, "a").await;
    }
    assert!(accepted(&status, 1), "route not Accepted: {status}");
    let first_time = status["parents"][0]["conditions"][0]["lastTransitionTime"].clone();

    // Our own writes come back through the watch: nothing more to write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = *stats.borrow();
    assert_eq!(settled.errors, 0);
    assert_eq!(
        settled.writes, 3,
        "GatewayClass, Gateway and HTTPRoute once each: {settled:?}"
    );

    // A spec change: the route is written again with the new generation and
    // the old transition time (Accepted stayed True).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let patch = json!({"spec": {"hostnames": ["a.example", "b.example"]}});
    routes
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = route_status(&routes, "a").await;
    while !accepted(&status, 2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = route_status(&routes, "a").await;
    }
    assert!(
        accepted(&status, 2),
        "route not Accepted at generation 2: {status}"
    );
    assert_eq!(
        status["parents"][0]["conditions"][0]["lastTransitionTime"],
        first_time
    );

    let _ = shutdown_tx.send(true);
    let _ = writer.await;
    drop(provider);
    scope.cleanup().await;
}

fn fast(namespace: &str, lease: &str, identity: &str) -> LeaderConfig {
    let mut config = LeaderConfig::new(namespace.into(), lease.into(), identity.into());
    config.lease_duration = Duration::from_secs(3);
    config.renew_deadline = Duration::from_secs(2);
    config.retry_period = Duration::from_millis(300);
    config
}

struct Replica {
    leading: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn replica(client: &Client, config: LeaderConfig) -> Replica {
    let (leading_tx, leading) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(leader::run(client.clone(), config, leading_tx, shutdown_rx));
    Replica {
        leading,
        shutdown,
        task,
    }
}

async fn becomes_leader(r: &mut Replica, within: Duration) -> Duration {
    let started = Instant::now();
    let ok = tokio::time::timeout(within, r.leading.wait_for(|l| *l)).await;
    assert!(
        matches!(ok, Ok(Ok(_))),
        "did not become leader within {within:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_handover_on_release_and_on_expiry() {
    let Some(client) = client().await else { return };
    let scope = Scope::new(client.clone(), "kt-leader").await;
    let ns = scope.namespace.clone();

    let mut a = replica(&client, fast(&ns, "lease", "a"));
    becomes_leader(&mut a, Duration::from_secs(10)).await;
    let mut b = replica(&client, fast(&ns, "lease", "b"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!*b.leading.borrow(), "two leaders");

    // A clean shutdown releases the Lease: b takes over at its next try.
    let _ = a.shutdown.send(true);
    let _ = a.task.await;
    let took = becomes_leader(&mut b, Duration::from_secs(5)).await;
    eprintln!("handover after release: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // b dies without releasing: c waits for the Lease to expire.
    let mut c = replica(&client, fast(&ns, "lease", "c"));
    b.task.abort();
    let took = becomes_leader(&mut c, Duration::from_secs(10)).await;
    eprintln!("handover after expiry: {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "took over a live Lease after {took:?}"
    );
    let _ = c.shutdown.send(true);
    let _ = c.task.await;
    scope.cleanup().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Prints: object change -> table swap (p50/p99) at N routes, and the time
/// and number of status writes until N new routes are all Accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_propagation_and_status_convergence() {
    let Some(client) = client().await else { return };
    let n: usize = std::env::var("PORTCULLIS_BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let scope = Scope::new(client.clone(), "kt-bench").await;
    scope.gateway("gw", 18205).await;
    let routes = scope.routes();

    let mut config = KubeProviderConfig::new(scope.options());
    config.observe_status = true;
    let mut provider = KubeProvider::spawn(client.clone(), config);
    tokio::time::timeout(Duration::from_secs(30), provider.wait_synced())
        .await
        .expect("synced");
    let (_leading_tx, leading) = watch::channel(true);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (stats_tx, stats) = watch::channel(WriterStats::default());
    let writer = tokio::spawn(writer::run(
        client.clone(),
        scope.controller_name.clone(),
        provider.status_inputs.clone(),
        leading,
        shutdown,
        stats_tx,
    ));

    // Status convergence: create N routes, wait until every one is Accepted.
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let routes = routes.clone();
            let route = scope.route(&format!("r{i}"), &format!("r{i}.example"));
            async move { routes.create(&PostParams::default(), &route).await }
        })
        .buffer_unordered(16)
        .for_each(|r| async move {
            r.expect("create route");
        })
        .await;
    let created = started.elapsed();
    let mut statuses = provider.statuses.clone();
    let controller = scope.controller_name.clone();
    let all_accepted = |inputs: &Arc<portcullis_controller::kube::StatusInputs>| {
        let accepted = inputs
            .observed
            .iter()
            .filter(|(t, o)| {
                t.kind == portcullis_controller::StatusKind::HttpRoute
                    && o.status["parents"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["controllerName"] == json!(controller)
                                && p["conditions"][0]["status"] == "True"
                        })
                    })
            })
            .count();
        accepted == n
    };
    let mut inputs = provider.status_inputs.clone();
    tokio::time::timeout(Duration::from_secs(300), inputs.wait_for(all_accepted))
        .await
        .expect("all routes Accepted within 300 s")
        .expect("provider alive");
    let converged = started.elapsed();
    let writes = *stats.borrow();
    let _ = statuses.borrow_and_update();
    println!(
        "status convergence, {n} new HTTPRoutes: created in {created:?}, all Accepted after {converged:?}, \
         {} status writes ({} conflicts)",
        writes.writes, writes.conflicts
    );

    // Propagation: change one route's hostname, time until the table has
    // it: in the controller (which also writes statuses) and in a proxy of
    // this Gateway (what serves traffic).
    let mut proxy_options = scope.options();
    proxy_options.gateway = Some(portcullis_controller::ObjectKey::new(
        scope.namespace.clone(),
        "gw",
    ));
    let mut proxy = KubeProvider::spawn(client.clone(), KubeProviderConfig::new(proxy_options));
    tokio::time::timeout(Duration::from_secs(60), proxy.wait_synced())
        .await
        .expect("proxy synced");
    let mut end_to_end = [Vec::new(), Vec::new()];
    let mut in_provider = [Vec::new(), Vec::new()];
    let rounds = 40;
    for round in 0..rounds {
        let name = format!("r{}", (round * 37) % n);
        let host = format!("changed-{round}.example");
        let patch = json!({"spec": {"hostnames": [host]}});
        let t0 = Instant::now();
        routes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        for (i, handle) in [&mut provider, &mut proxy].into_iter().enumerate() {
            let host_for_check = host.clone();
            tokio::time::timeout(
                Duration::from_secs(30),
                handle
                    .tables
                    .wait_for(|t| hostnames(t).binary_search(&host_for_check).is_ok()),
            )
            .await
            .expect("propagated within 30 s")
            .expect("provider alive");
            // Both receive the event at about the same time; the second is
            // measured once the first is done, so its end-to-end figure
            // includes that wait: only its in-provider time is exact.
            end_to_end[i].push(t0.elapsed());
            in_provider[i].push(handle.timings.borrow().batch);
        }
        // Let the status write of this change settle, as a user's next
        // change would (it is not what is measured).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, mode) in ["controller", "proxy"].into_iter().enumerate() {
        end_to_end[i].sort();
        in_provider[i].sort();
        println!(
            "propagation at {n} HTTPRoutes, {mode}, {rounds} changes: API write -> table published p50 {:?} p99 {:?}; \
             change received -> table published p50 {:?} p99 {:?}",
            percentile(&end_to_end[i], 0.5),
            percentile(&end_to_end[i], 0.99),
            percentile(&in_provider[i], 0.5),
            percentile(&in_provider[i], 0.99),
        );
    }
    drop(proxy);

    let _ = shutdown_tx.send(true);
    let _ = writer.await;
    drop(provider);
    scope.cleanup().await;
}

//! The Kubernetes provider: one kube-runtime watcher per kind feeding the
//! [`Stores`], a compile loop that coalesces changes and publishes tables
//! and statuses over `tokio::sync::watch`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use portcullis_api::GatewayParameters;
use portcullis_model::RouteTable;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::provision::{provision_inputs, ProvisionInputs};
use super::scope::{ProxyFilter, Role};
use super::store::{Change, Effect, Kind, Stores, WatchScope};
use super::writer::{observe, StatusInputs};
use crate::snapshot::{KubeObject, ObjectKey, PolicyObject, Snapshot};
use crate::status::StatusUpdate;
use crate::{compile, CompileOptions};

/// How the provider watches and compiles.
#[derive(Debug, Clone)]
pub struct KubeProviderConfig {
    pub options: CompileOptions,
    /// A batch of changes is compiled once no new change arrived for this
    /// long... (2 ms by default: the events of one `kubectl apply` arrive
    /// well within that of each other, and a single change pays little on
    /// top of compile itself, for the 20 ms event-to-table target.)
    pub quiet: Duration,
    /// ...or once the batch is this old, whichever comes first.
    pub max_delay: Duration,
    /// Publish the observed statuses for a status writer and the inputs
    /// of the provisioner (controller mode); proxies do not need them.
    pub observe_status: bool,
    /// Written to our GatewayClasses' `status.supportedFeatures`: the
    /// Gateway API conformance features this build passes.
    pub supported_features: Vec<String>,
}

/// The conformance features claimed unless configured otherwise: the core
/// ones.
pub const CORE_FEATURES: [&str; 5] = [
    "Gateway",
    "GRPCRoute",
    "HTTPRoute",
    "ReferenceGrant",
    "TLSRoute",
];

impl KubeProviderConfig {
    pub fn new(options: CompileOptions) -> KubeProviderConfig {
        KubeProviderConfig {
            options,
            quiet: Duration::from_millis(2),
            max_delay: Duration::from_millis(50),
            observe_status: false,
            supported_features: CORE_FEATURES.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// Receivers of what the provider publishes, the same shape as
/// [`crate::file::FileProviderHandle`]. Dropping the handle stops the
/// watchers and the compile loop.
///
/// Until every watcher has completed its first list, `tables` holds an
/// empty table of generation 0 and `synced` is false: wait for
/// [`KubeProviderHandle::wait_synced`] before serving `tables`.
#[derive(Debug)]
pub struct KubeProviderHandle {
    pub tables: watch::Receiver<Arc<RouteTable>>,
    pub statuses: watch::Receiver<Arc<Vec<StatusUpdate>>>,
    /// Compiled statuses with the statuses the API server has, for the
    /// status writer (only filled with `observe_status`).
    pub status_inputs: watch::Receiver<Arc<StatusInputs>>,
    /// Our Gateways, classes and provisioned Services, for the
    /// provisioner (only filled with `observe_status`).
    pub provision_inputs: watch::Receiver<Arc<ProvisionInputs>>,
    pub synced: watch::Receiver<bool>,
    /// How many objects of each kind are stored, after each batch (proxy
    /// mode keeps only what its Gateway needs).
    pub stored: watch::Receiver<Arc<BTreeMap<Kind, usize>>>,
    /// Proxy mode: where each narrowed kind is watched (see
    /// [`super::scope`]); empty in controller mode.
    pub scopes: BTreeMap<Kind, watch::Receiver<WatchScope>>,
    /// Timing of the last published table.
    pub timings: watch::Receiver<BatchTiming>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeProviderHandle {
    /// Resolves once the first complete table is published.
    pub async fn wait_synced(&mut self) {
        let _ = self.synced.wait_for(|s| *s).await;
    }

    /// Stops watching (also done on drop).
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for KubeProviderHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Watches the cluster and publishes compiled tables.
pub struct KubeProvider;

impl KubeProvider {
    /// Starts the watchers and the compile loop on the current runtime.
    ///
    /// Controller mode watches every namespace. Proxy mode
    /// (`options.gateway`) watches its Gateway alone, stores only what
    /// that Gateway needs and narrows the other watches to the namespaces
    /// where that lives (see [`super::scope`]).
    pub fn spawn(client: Client, config: KubeProviderConfig) -> KubeProviderHandle {
        let gateway_key = config.options.gateway.clone();
        let proxy = gateway_key.is_some();
        let (change_tx, mut handle) = start_compile_loop(config, Kind::ALL);
        let scopes = handle.scopes.clone();
        let tasks = &mut handle.tasks;
        let all = || watcher::Config::default();
        let gateway_config = match &gateway_key {
            // Proxy mode: only our own Gateway.
            Some(ObjectKey { namespace, name }) => all().fields(&format!(
                "metadata.namespace={namespace},metadata.name={name}"
            )),
            None => all(),
        };
        let scope = |kind: Kind| scopes.get(&kind).cloned();
        let w = Watch {
            changes: change_tx,
            proxy,
        };
        tasks.push(w.start::<GatewayClass>(
            cluster_api(&client),
            all(),
            Kind::GatewayClass,
            KubeObject::GatewayClass,
            None,
        ));
        tasks.push(
            w.start::<Gateway>(
                namespaced_api(&client),
                gateway_config,
                Kind::Gateway,
                KubeObject::Gateway,
                gateway_key
                    .as_ref()
                    .map(|k| fixed_scope(Some(k.namespace.clone()))),
            ),
        );
        tasks.push(w.start::<HttpRoute>(
            namespaced_api(&client),
            all(),
            Kind::HttpRoute,
            KubeObject::HttpRoute,
            scope(Kind::HttpRoute),
        ));
        tasks.push(w.start::<GrpcRoute>(
            namespaced_api(&client),
            all(),
            Kind::GrpcRoute,
            KubeObject::GrpcRoute,
            scope(Kind::GrpcRoute),
        ));
        tasks.push(w.start::<TlsRoute>(
            namespaced_api(&client),
            all(),
            Kind::TlsRoute,
            KubeObject::TlsRoute,
            scope(Kind::TlsRoute),
        ));
        tasks.push(w.start::<ReferenceGrant>(
            namespaced_api(&client),
            all(),
            Kind::ReferenceGrant,
            KubeObject::ReferenceGrant,
            None,
        ));
        // Few and small: kept whole, like policies; in proxy mode they keep
        // the ConfigMaps and Secrets their caCertificateRefs name.
        tasks.push(w.start::<BackendTlsPolicy>(
            namespaced_api(&client),
            all(),
            Kind::BackendTlsPolicy,
            KubeObject::BackendTlsPolicy,
            None,
        ));
        tasks.push(w.start::<Service>(
            namespaced_api(&client),
            all(),
            Kind::Service,
            KubeObject::Service,
            scope(Kind::Service),
        ));
        // Slices not owned by a Service cannot be a backend.
        tasks.push(w.start::<EndpointSlice>(
            namespaced_api(&client),
            all().labels("kubernetes.io/service-name"),
            Kind::EndpointSlice,
            KubeObject::EndpointSlice,
            scope(Kind::EndpointSlice),
        ));
        // Certificates (kubernetes.io/tls) and what policies read (Opaque:
        // API keys, htpasswd, JWKS, Redis credentials). Field selectors
        // cannot say "one of", so the kinds no gateway ever reads are
        // excluded instead; some of them are large (Helm releases) and
        // some are credentials of their own (service account tokens).
        tasks.push(w.start::<Secret>(
            namespaced_api(&client),
            all().fields(SECRET_TYPES_NOT_READ),
            Kind::Secret,
            KubeObject::Secret,
            scope(Kind::Secret),
        ));
        tasks.push(w.start::<ConfigMap>(
            namespaced_api(&client),
            all(),
            Kind::ConfigMap,
            KubeObject::ConfigMap,
            scope(Kind::ConfigMap),
        ));
        tasks.push(w.start::<Namespace>(
            cluster_api(&client),
            all(),
            Kind::Namespace,
            KubeObject::Namespace,
            None,
        ));
        tasks.push(w.start::<GatewayParameters>(
            namespaced_api(&client),
            all(),
            Kind::GatewayParameters,
            KubeObject::GatewayParameters,
            scope(Kind::GatewayParameters),
        ));
        // Our policies, read as JSON (each kind's compile hook decodes its
        // spec). Their CRDs may not be installed: see `Watch::start`.
        for kind in portcullis_api::PolicyKind::ALL {
            tasks.push(w.start::<DynamicObject>(
                dynamic_api(&client, super::policy_resource(kind)),
                all(),
                Kind::Policy(kind),
                move |o| KubeObject::Policy(kind, policy_object(o)),
                None,
            ));
        }
        // RouteFilters (ExtensionRef targets): JSON like the policies.
        let route_filters = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(
                portcullis_api::parameters::GROUP,
                portcullis_api::PolicyKind::VERSION,
                portcullis_api::route_filter::KIND,
            ),
            "routefilters",
        );
        tasks.push(w.start::<DynamicObject>(
            dynamic_api(&client, route_filters),
            all(),
            Kind::RouteFilter,
            |o| KubeObject::RouteFilter(policy_object(o)),
            None,
        ));
        handle
    }
}

/// Builds the `Api` of a kind for a namespace (`None`: all namespaces).
type MakeApi<K> = Box<dyn Fn(Option<&str>) -> Api<K> + Send>;

fn namespaced_api<K>(client: &Client) -> MakeApi<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()> + 'static,
{
    let client = client.clone();
    Box::new(move |namespace| match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    })
}

/// The `Api` of one of our kinds read as JSON (`DynamicObject`).
fn dynamic_api(client: &Client, resource: kube::api::ApiResource) -> MakeApi<DynamicObject> {
    let client = client.clone();
    Box::new(move |namespace| match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    })
}

fn cluster_api<K>(client: &Client) -> MakeApi<K>
where
    K: Resource<DynamicType = ()> + 'static,
{
    let client = client.clone();
    Box::new(move |_| Api::all(client.clone()))
}

/// A scope that never changes: its sender is gone, which the watcher
/// task reads as "no restarts".
fn fixed_scope(namespace: Option<String>) -> watch::Receiver<WatchScope> {
    watch::channel(WatchScope {
        namespace,
        epoch: 0,
    })
    .1
}

/// What every watcher task shares.
struct Watch {
    changes: mpsc::Sender<Change>,
    proxy: bool,
}

impl Watch {
    /// Runs one watcher, turning its events into [`Change`]s. The watcher
    /// re-lists and re-watches by itself after errors ([`WatchBackoff`]);
    /// errors are logged, the first at once and then at most every 30
    /// seconds per kind. The watch restarts in the new scope whenever
    /// `scope` changes (a dependent kind of a proxy waits for its first
    /// scope). A kind of ours whose CRD is not installed (404) counts as
    /// listed and empty.
    fn start<K>(
        &self,
        make_api: MakeApi<K>,
        config: watcher::Config,
        kind: Kind,
        wrap: impl Fn(K) -> KubeObject + Send + 'static,
        scope: Option<watch::Receiver<WatchScope>>,
    ) -> JoinHandle<()>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let changes = self.changes.clone();
        let wait_first = self.proxy && Role::of(kind) == Role::Dependent;
        // Ours, BackendTLSPolicy and TLSRoute (standard only since Gateway
        // API v1.5): their CRDs may be installed after the controller, or
        // not at all in clusters with older Gateway API installs.
        let optional = matches!(
            kind,
            Kind::GatewayParameters
                | Kind::TlsRoute
                | Kind::BackendTlsPolicy
                | Kind::Policy(_)
                | Kind::RouteFilter
        );
        let mut scope = scope.unwrap_or_else(|| fixed_scope(None));
        tokio::spawn(async move {
            if wait_first && scope.changed().await.is_err() {
                return;
            }
            let mut scope_open = true;
            let mut missing_reported = false;
            loop {
                let current = scope.borrow_and_update().clone();
                if changes
                    .send(Change::Rescoped(kind, current.epoch))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(ns) = &current.namespace {
                    tracing::debug!(%kind, namespace = %ns, epoch = current.epoch, "watching {kind} in one namespace");
                }
                let api = make_api(current.namespace.as_deref());
                let stream = watcher::watcher(api, config.clone()).backoff(WatchBackoff::default());
                let mut stream = std::pin::pin!(stream);
                let mut last_error_log: Option<Instant> = None;
                let mut failing = false;
                loop {
                    let event = tokio::select! {
                        biased;
                        changed = scope.changed(), if scope_open => {
                            if changed.is_ok() {
                                break; // restart in the new scope
                            }
                            scope_open = false; // fixed from now on
                            continue;
                        }
                        event = stream.next() => event,
                    };
                    let Some(event) = event else { return };
                    let change = match event {
                        Ok(Event::Init) => Change::Relisting(kind),
                        Ok(Event::InitApply(o)) => Change::Listed(wrap(o)),
                        Ok(Event::InitDone) => Change::Synced(kind),
                        Ok(Event::Apply(o)) => Change::Applied(wrap(o)),
                        Ok(Event::Delete(o)) => Change::Deleted(wrap(o)),
                        Err(e) => {
                            failing = true;
                            if optional && !missing_reported && is_not_found(&e) {
                                // No CRD, so none of these objects exist.
                                tracing::info!(%kind, "the {kind} CRD is not installed: no {kind} objects");
                                missing_reported = true;
                                for change in [Change::Relisting(kind), Change::Synced(kind)] {
                                    if changes.send(change).await.is_err() {
                                        return;
                                    }
                                }
                                continue;
                            }
                            crate::metrics::global().record_watch_error(&kind);
                            if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
                            {
                                let hint = watch_error_hint(&e);
                                tracing::warn!(%kind, error = %e, "cannot watch {kind}{hint}; serving the last configuration and retrying");
                                last_error_log = Some(Instant::now());
                            }
                            continue;
                        }
                    };
                    if failing {
                        tracing::info!(%kind, "watching {kind} again");
                        failing = false;
                        missing_reported = false;
                        last_error_log = None;
                    }
                    if changes.send(change).await.is_err() {
                        return; // the compile loop is gone: shutting down
                    }
                }
            }
        })
    }
}

fn is_not_found(error: &watcher::Error) -> bool {
    error_code(error) == Some(404)
}

/// The compile loop alone, fed through the returned sender: by the
/// watchers in [`KubeProvider::spawn`], by tests directly. Nothing is
/// published until every kind of `expected` has completed its first list.
pub fn start_compile_loop(
    config: KubeProviderConfig,
    expected: impl IntoIterator<Item = Kind>,
) -> (mpsc::Sender<Change>, KubeProviderHandle) {
    let (change_tx, change_rx) = mpsc::channel(4096);
    let (table_tx, tables) = watch::channel(Arc::new(RouteTable::default()));
    let (status_tx, statuses) = watch::channel(Arc::new(Vec::new()));
    let (inputs_tx, status_inputs) = watch::channel(Arc::new(StatusInputs::default()));
    let (synced_tx, synced) = watch::channel(false);
    let (provision_tx, provision_inputs) = watch::channel(Arc::new(ProvisionInputs::default()));
    let stores = match &config.options.gateway {
        Some(gateway) => Stores::for_proxy(
            expected,
            ProxyFilter {
                gateway: gateway.clone(),
                controller_name: config.options.controller_name.clone(),
            },
        ),
        None => Stores::new(expected),
    };
    let (stored_tx, stored) = watch::channel(Arc::new(BTreeMap::new()));
    let (timings_tx, timings) = watch::channel(BatchTiming::default());
    let mut scope_txs = BTreeMap::new();
    let mut scopes = BTreeMap::new();
    for (kind, scope) in stores.initial_scopes() {
        let (tx, rx) = watch::channel(scope);
        scope_txs.insert(kind, tx);
        scopes.insert(kind, rx);
    }
    let publish = Publish {
        tables: table_tx,
        statuses: status_tx,
        inputs: inputs_tx,
        provision: provision_tx,
        synced: synced_tx,
        stored: stored_tx,
        scopes: scope_txs,
        timings: timings_tx,
    };
    let task = tokio::spawn(compile_loop(change_rx, stores, config, publish));
    let handle = KubeProviderHandle {
        tables,
        statuses,
        status_inputs,
        provision_inputs,
        synced,
        stored,
        scopes,
        timings,
        tasks: vec![task],
    };
    (change_tx, handle)
}

/// Secret types excluded from the Secret watch (see [`KubeProvider::spawn`]).
const SECRET_TYPES_NOT_READ: &str = "type!=kubernetes.io/service-account-token,\
     type!=helm.sh/release.v1,\
     type!=kubernetes.io/dockerconfigjson,\
     type!=kubernetes.io/dockercfg,\
     type!=bootstrap.kubernetes.io/token";

/// Delays between watch retries after errors: 0.5 s doubling up to 8 s,
/// each with ±25 % jitter so that many proxies do not retry in step.
/// kube-runtime's default grows to 30 s (client-go's, kind to a struggling
/// API server); a gateway prefers to pick up changes again within seconds
/// of the API server coming back. Reset by the first event after an error.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    seed: u64,
}

impl WatchBackoff {
    pub const MIN: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(8);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        // Any per-process varying value does as a jitter seed.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 ^ u64::from(std::process::id()))
            .unwrap_or(1)
            | 1;
        WatchBackoff {
            next: Self::MIN,
            seed,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: cheap, good enough for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // A factor in [0.75, 1.25).
        let factor = 0.75 + (self.seed % 1000) as f64 / 2000.0;
        Some(base.mul_f64(factor))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// What to check for the usual watch failures, for the operator.
fn error_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// A dynamic object of one of our policy kinds as the snapshot keeps it.
fn policy_object(object: DynamicObject) -> PolicyObject {
    let mut data = object.data;
    let mut take = |key: &str| {
        data.as_object_mut()
            .and_then(|m| m.remove(key))
            .unwrap_or(serde_json::Value::Null)
    };
    PolicyObject {
        metadata: object.metadata,
        spec: take("spec"),
        status: take("status"),
    }
}

fn watch_error_hint(error: &watcher::Error) -> &'static str {
    match error_code(error) {
        Some(404) => " (is its CRD installed?)",
        Some(401) => " (are the credentials valid?)",
        Some(403) => " (may this service account list and watch it? see deploy/rbac)",
        _ => "",
    }
}

struct Publish {
    tables: watch::Sender<Arc<RouteTable>>,
    statuses: watch::Sender<Arc<Vec<StatusUpdate>>>,
    inputs: watch::Sender<Arc<StatusInputs>>,
    provision: watch::Sender<Arc<ProvisionInputs>>,
    synced: watch::Sender<bool>,
    stored: watch::Sender<Arc<BTreeMap<Kind, usize>>>,
    scopes: BTreeMap<Kind, watch::Sender<WatchScope>>,
    timings: watch::Sender<BatchTiming>,
}

/// How long the last published table took, for benchmarks and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchTiming {
    /// `RouteTable::generation` of the table.
    pub generation: u64,
    pub routes: usize,
    /// compile() alone.
    pub compile: Duration,
    /// From the first change of the batch taken off the queue to the
    /// table published: the quiet period, applying the changes, compile.
    pub batch: Duration,
}

impl Publish {
    /// What the status writer and the provisioner work from.
    fn leader_inputs(
        &self,
        snapshot: &Snapshot,
        statuses: &Arc<Vec<StatusUpdate>>,
        controller_name: &str,
    ) {
        let observed = observe(snapshot, statuses);
        let _ = self.inputs.send(Arc::new(StatusInputs {
            statuses: statuses.clone(),
            observed,
        }));
        let _ = self
            .provision
            .send(Arc::new(provision_inputs(snapshot, controller_name)));
    }
}

/// Applies changes in batches: a batch ends when no change came for
/// `quiet`, or when it is `max_delay` old. Nothing is published before
/// every kind has done its first list.
async fn compile_loop(
    mut changes: mpsc::Receiver<Change>,
    mut stores: Stores,
    config: KubeProviderConfig,
    publish: Publish,
) {
    let mut options = config.options.clone();
    let mut statuses: Arc<Vec<StatusUpdate>> = Arc::new(Vec::new());
    let mut last_wait_log = Instant::now();
    // The table goes out first; what only the status writer and the
    // provisioner read (and freeing the previous statuses, a large part of
    // a compile's cost) waits while more changes are queued.
    let mut leader_inputs_stale = false;
    let mut garbage: Vec<Arc<Vec<StatusUpdate>>> = Vec::new();
    loop {
        if changes.is_empty() {
            if leader_inputs_stale {
                publish.leader_inputs(stores.snapshot(), &statuses, &options.controller_name);
                leader_inputs_stale = false;
            }
            garbage.clear();
        }
        let Some(first) = changes.recv().await else {
            return;
        };
        let started = Instant::now();
        let mut effect = stores.apply(first);
        let mut closed = false;
        while started.elapsed() < config.max_delay {
            match next_within(&mut changes, config.quiet).await {
                Some(Some(change)) => effect = effect.max(stores.apply(change)),
                Some(None) => {
                    closed = true;
                    break;
                }
                None => break,
            }
        }
        // What is stored, published before the table compiled from it: a
        // reader woken by `synced` or a new table sees matching counts.
        let counts = stores.counts();
        if **publish.stored.borrow() != counts {
            let _ = publish.stored.send(Arc::new(counts));
        }
        for (kind, scope) in stores.watch_scopes() {
            tracing::debug!(%kind, namespace = ?scope.namespace, epoch = scope.epoch, "rewatching {kind}");
            if let Some(tx) = publish.scopes.get(&kind) {
                tx.send_replace(scope);
            }
        }
        if !stores.is_synced() {
            if last_wait_log.elapsed() >= Duration::from_secs(10) {
                tracing::info!(waiting_for = ?stores.unsynced(), "waiting for the first list of every kind before publishing a table");
                last_wait_log = Instant::now();
            }
        } else if effect == Effect::Compile || !*publish.synced.borrow() {
            options.generation += 1;
            let compiling = Instant::now();
            let compiled = compile(stores.snapshot(), &options);
            let compile_time = compiling.elapsed();
            crate::metrics::global().record_compile(compile_time);
            let mut compiled_statuses = compiled.statuses;
            add_supported_features(&mut compiled_statuses, &config.supported_features);
            statuses = Arc::new(compiled_statuses);
            let snapshot = stores.snapshot();
            let routes =
                snapshot.http_routes.len() + snapshot.grpc_routes.len() + snapshot.tls_routes.len();
            let generation = compiled.table.generation;
            let _ = publish.tables.send(Arc::new(compiled.table));
            publish.timings.send_replace(BatchTiming {
                generation,
                routes,
                compile: compile_time,
                batch: started.elapsed(),
            });
            garbage.push(publish.statuses.send_replace(statuses.clone()));
            leader_inputs_stale |= config.observe_status;
            if !*publish.synced.borrow() {
                stores.complete();
                tracing::info!(routes, "first complete table published");
                let _ = publish.synced.send(true);
            }
            tracing::debug!(
                generation = options.generation,
                routes,
                compile_ms = compile_time.as_secs_f64() * 1000.0,
                batch_ms = started.elapsed().as_secs_f64() * 1000.0,
                "configuration compiled"
            );
        } else if effect == Effect::StatusOnly && config.observe_status {
            leader_inputs_stale = true;
        }
        if closed {
            return;
        }
    }
}

/// Sets `status.supportedFeatures` of the GatewayClass statuses: sorted by
/// name and without duplicates, as the Gateway API requires.
pub fn add_supported_features(statuses: &mut [StatusUpdate], features: &[String]) {
    let names: std::collections::BTreeSet<&str> = features.iter().map(String::as_str).collect();
    let list: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| serde_json::json!({ "name": name }))
        .collect();
    for status in statuses
        .iter_mut()
        .filter(|s| s.kind == crate::status::StatusKind::GatewayClass)
    {
        if let Some(map) = status.status.as_object_mut() {
            map.insert(
                "supportedFeatures".into(),
                serde_json::Value::Array(list.clone()),
            );
        }
    }
}

/// The next change if one arrives within `quiet`: `Some(Some(change))`;
/// `Some(None)` when the channel closed; `None` on timeout.
async fn next_within(
    changes: &mut mpsc::Receiver<Change>,
    quiet: Duration,
) -> Option<Option<Change>> {
    // Take what is already queued without touching the timer.
    match changes.try_recv() {
        Ok(change) => return Some(Some(change)),
        Err(mpsc::error::TryRecvError::Disconnected) => return Some(None),
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    timeout(quiet, changes.recv()).await
}

async fn timeout<T>(duration: Duration, fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(duration, fut).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusKind;
    use serde_json::json;

    fn status(kind: StatusKind) -> StatusUpdate {
        StatusUpdate {
            kind,
            namespace: None,
            name: "x".into(),
            status: json!({"conditions": []}),
            problems: vec![],
        }
    }

    #[test]
    fn supported_features_go_to_gateway_classes_sorted_and_unique() {
        let mut statuses = vec![
            status(StatusKind::GatewayClass),
            status(StatusKind::Gateway),
        ];
        let features: Vec<String> = ["HTTPRoute", "Gateway", "HTTPRoute", "GRPCRoute"]
            .iter()
            .map(|f| f.to_string())
            .collect();
        add_supported_features(&mut statuses, &features);
        assert_eq!(
            statuses[0].status["supportedFeatures"],
            json!([{"name": "GRPCRoute"}, {"name": "Gateway"}, {"name": "HTTPRoute"}])
        );
        assert!(statuses[1].status.get("supportedFeatures").is_none());
    }

    fn object(value: serde_json::Value) -> KubeObject {
        KubeObject::from_value(value).expect("valid object")
    }

    fn class() -> KubeObject {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "c", "resourceVersion": "1"},
            "spec": {"controllerName": portcullis_api::CONTROLLER_NAME}
        }))
    }

    fn gateway() -> KubeObject {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"gatewayClassName": "c", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
        }))
    }

    fn route(name: &str, rv: &str) -> KubeObject {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": [format!("{name}.example")],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]
            }
        }))
    }

    const KINDS: [Kind; 3] = [Kind::GatewayClass, Kind::Gateway, Kind::HttpRoute];

    async fn list(tx: &mpsc::Sender<Change>, kind: Kind, objects: Vec<KubeObject>) {
        tx.send(Change::Relisting(kind)).await.expect("loop alive");
        for o in objects {
            tx.send(Change::Listed(o)).await.expect("loop alive");
        }
        tx.send(Change::Synced(kind)).await.expect("loop alive");
    }

    fn vhosts(table: &RouteTable) -> usize {
        table.ports.iter().map(|p| p.virtual_hosts.len()).sum()
    }

    #[tokio::test]
    async fn nothing_is_published_before_every_kind_listed_then_a_complete_table() {
        let (tx, mut handle) =
            start_compile_loop(KubeProviderConfig::new(CompileOptions::default()), KINDS);
        list(&tx, Kind::HttpRoute, vec![route("a", "1"), route("b", "1")]).await;
        list(&tx, Kind::Gateway, vec![gateway()]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!*handle.synced.borrow());
        assert_eq!(handle.tables.borrow().generation, 0);
        list(&tx, Kind::GatewayClass, vec![class()]).await;
        tokio::time::timeout(Duration::from_secs(5), handle.wait_synced())
            .await
            .expect("synced");
        let table = handle.tables.borrow().clone();
        assert_eq!(
            table.generation, 1,
            "one compile for the whole initial list"
        );
        assert_eq!(table.ports.len(), 1);
        // The listener's catch-all plus a.example and b.example.
        assert_eq!(vhosts(&table), 3);
    }

    #[tokio::test]
    async fn a_burst_is_one_compile_and_status_echoes_are_none() {
        let mut config = KubeProviderConfig::new(CompileOptions::default());
        config.observe_status = true;
        let (tx, mut handle) = start_compile_loop(config, KINDS);
        list(&tx, Kind::GatewayClass, vec![class()]).await;
        list(&tx, Kind::Gateway, vec![gateway()]).await;
        list(&tx, Kind::HttpRoute, vec![]).await;
        handle.wait_synced().await;
        let first = handle.tables.borrow_and_update().generation;
        for i in 0..50 {
            tx.send(Change::Applied(route(&format!("r{i}"), "2")))
                .await
                .expect("loop alive");
        }
        tokio::time::timeout(
            Duration::from_secs(5),
            handle.tables.wait_for(|t| vhosts(t) == 51),
        )
        .await
        .expect("all 50 routes published")
        .expect("loop alive");
        let after_burst = handle.tables.borrow().generation;
        assert!(
            after_burst - first <= 2,
            "50 queued changes compiled {} times",
            after_burst - first
        );

        // Our own status write coming back: no recompile, but the status
        // writer sees the new observed status.
        let KubeObject::HttpRoute(mut echoed) = route("r0", "3") else {
            unreachable!("route() builds an HTTPRoute")
        };
        echoed.status = serde_json::from_value(json!({"parents": []})).ok();
        let mut inputs = handle.status_inputs.clone();
        inputs.borrow_and_update();
        tx.send(Change::Applied(KubeObject::HttpRoute(echoed)))
            .await
            .expect("loop alive");
        tokio::time::timeout(Duration::from_secs(5), inputs.changed())
            .await
            .expect("observed statuses republished")
            .expect("loop alive");
        let target = crate::kube::status_patch::StatusTarget {
            kind: StatusKind::HttpRoute,
            namespace: Some("ns".into()),
            name: "r0".into(),
        };
        assert_eq!(
            inputs.borrow().observed[&target]
                .resource_version
                .as_deref(),
            Some("3")
        );
        assert_eq!(handle.tables.borrow().generation, after_burst);
    }

    #[tokio::test]
    async fn a_relist_after_an_error_keeps_serving_until_complete() {
        let (tx, mut handle) =
            start_compile_loop(KubeProviderConfig::new(CompileOptions::default()), KINDS);
        list(&tx, Kind::GatewayClass, vec![class()]).await;
        list(&tx, Kind::Gateway, vec![gateway()]).await;
        list(&tx, Kind::HttpRoute, vec![route("a", "1")]).await;
        handle.wait_synced().await;
        let generation = handle.tables.borrow_and_update().generation;
        // The API server restarts: the route watch re-lists slowly.
        tx.send(Change::Relisting(Kind::HttpRoute))
            .await
            .expect("loop alive");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            handle.tables.borrow().generation,
            generation,
            "nothing published mid-list"
        );
        assert_eq!(vhosts(&handle.tables.borrow()), 2);
        tx.send(Change::Listed(route("a", "5")))
            .await
            .expect("loop alive");
        tx.send(Change::Listed(route("b", "5")))
            .await
            .expect("loop alive");
        tx.send(Change::Synced(Kind::HttpRoute))
            .await
            .expect("loop alive");
        tokio::time::timeout(
            Duration::from_secs(5),
            handle.tables.wait_for(|t| vhosts(t) == 3),
        )
        .await
        .expect("relisted table published")
        .expect("loop alive");
    }

    #[test]
    fn watch_backoff_doubles_to_its_cap_with_jitter_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = backoff.by_ref().take(8).collect();
        let bases = [500u64, 1000, 2000, 4000, 8000, 8000, 8000, 8000];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base.mul_f64(0.75) && *delay < base.mul_f64(1.25),
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        let first = backoff.next().expect("endless");
        assert!(first < Duration::from_millis(625), "{first:?}");
    }

    #[test]
    fn default_claims_only_core_features() {
        let config = KubeProviderConfig::new(CompileOptions::default());
        assert_eq!(config.supported_features, CORE_FEATURES);
    }
}

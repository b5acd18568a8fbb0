//! The watched objects, kept as the [`Snapshot`] `compile()` reads.
//!
//! Pure: watcher tasks turn kube-runtime events into [`Change`]s and the
//! compile loop applies them here, so everything about ordering, relists
//! and "is the first list complete" is tested without a cluster.
//!
//! A kind being (re)listed keeps its previous objects until the list is
//! complete ([`Change::Synced`]); the new list then replaces them at once.
//! So a watch that restarts after an error or an API server restart never
//! shows the compiler an empty or half-filled kind.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_api::PolicyKind;

use super::scope::{self, Need, ProxyFilter, Role};
use crate::snapshot::{KubeObject, ObjectKey, Snapshot};

/// Where a watcher lists and watches (proxy mode narrows it, see
/// [`scope`]). A new epoch with the same namespace asks for a relist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchScope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub epoch: u64,
}

/// A kind the Kubernetes provider watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    ReferenceGrant,
    BackendTlsPolicy,
    Service,
    EndpointSlice,
    Secret,
    ConfigMap,
    Namespace,
    GatewayParameters,
    /// One of our policy CRDs. Optional: until its CRD is installed the
    /// kind counts as listed and empty (see the provider).
    Policy(PolicyKind),
    /// Our `RouteFilter`s. Optional like the policies.
    RouteFilter,
}

impl Kind {
    /// Every kind `compile()` reads.
    pub const ALL: [Kind; 17] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TlsRoute,
        Kind::ReferenceGrant,
        Kind::BackendTlsPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Namespace,
        Kind::GatewayParameters,
        Kind::Policy(PolicyKind::AuthPolicy),
        Kind::Policy(PolicyKind::RateLimitPolicy),
        Kind::Policy(PolicyKind::BackendPolicy),
        Kind::RouteFilter,
    ];

    pub fn of(object: &KubeObject) -> Kind {
        match object {
            KubeObject::GatewayClass(_) => Kind::GatewayClass,
            KubeObject::Gateway(_) => Kind::Gateway,
            KubeObject::HttpRoute(_) => Kind::HttpRoute,
            KubeObject::GrpcRoute(_) => Kind::GrpcRoute,
            KubeObject::TlsRoute(_) => Kind::TlsRoute,
            KubeObject::ReferenceGrant(_) => Kind::ReferenceGrant,
            KubeObject::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            KubeObject::Service(_) => Kind::Service,
            KubeObject::EndpointSlice(_) => Kind::EndpointSlice,
            KubeObject::Secret(_) => Kind::Secret,
            KubeObject::ConfigMap(_) => Kind::ConfigMap,
            KubeObject::Namespace(_) => Kind::Namespace,
            KubeObject::GatewayParameters(_) => Kind::GatewayParameters,
            KubeObject::Policy(kind, _) => Kind::Policy(*kind),
            KubeObject::RouteFilter(_) => Kind::RouteFilter,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Namespace => "Namespace",
            Kind::GatewayParameters => "GatewayParameters",
            Kind::Policy(kind) => kind.as_str(),
            Kind::RouteFilter => portcullis_api::route_filter::KIND,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One watcher event, kind-independent.
#[derive(Debug, Clone)]
pub enum Change {
    /// The watch of a kind (re)starts with a full list.
    Relisting(Kind),
    /// The watch of a kind restarted with a new [`WatchScope`] (sent by
    /// the watcher before the new list): every event after it comes from
    /// that scope.
    Rescoped(Kind, u64),
    /// An object of that list.
    Listed(KubeObject),
    /// The list is complete.
    Synced(Kind),
    /// Added or modified.
    Applied(KubeObject),
    Deleted(KubeObject),
}

/// What applying a change asks of the compile loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// Nothing visible changed (e.g. a list still in progress).
    None,
    /// Only the `status` (or resourceVersion) of an object changed:
    /// compile would give the same result, but the status writer must see
    /// the new observed status.
    StatusOnly,
    /// Recompile.
    Compile,
}

/// Drops the bulk nobody reads before an object is stored: managedFields
/// and kubectl's copy of the last applied configuration.
pub fn strip(object: &mut KubeObject) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Proxy mode: drops `status`, which a proxy never reads (it writes no
/// status and provisions nothing): routes carry the status of every
/// controller they are attached to. A status-only change then compares
/// equal and costs no compile.
pub fn strip_status(object: &mut KubeObject) {
    match object {
        KubeObject::GatewayClass(o) => o.status = None,
        KubeObject::Gateway(o) => o.status = None,
        KubeObject::HttpRoute(o) => o.status = None,
        KubeObject::GrpcRoute(o) => o.status = None,
        KubeObject::TlsRoute(o) => o.status = None,
        KubeObject::Service(o) => o.status = None,
        KubeObject::Policy(_, o) | KubeObject::RouteFilter(o) => o.status = serde_json::Value::Null,
        _ => {}
    }
}

/// The stores of every watched kind.
#[derive(Debug, Default)]
pub struct Stores {
    snapshot: Snapshot,
    /// Kinds being (re)listed, with the objects listed so far.
    relisting: BTreeMap<Kind, Snapshot>,
    /// Kinds whose first list completed.
    synced: BTreeSet<Kind>,
    /// Kinds that must be synced before anything is published.
    expected: BTreeSet<Kind>,
    /// Proxy mode: what to keep, and the bookkeeping for it.
    proxy: Option<ProxyState>,
    /// Set once a complete snapshot was published (see [`Stores::complete`]).
    complete: bool,
}

/// Proxy-mode bookkeeping: reference counts of the dependents kept sources
/// need, dependents seen but not stored (so that one becoming needed later
/// is fetched again by a relist), and the watch scope of each kind.
#[derive(Debug)]
struct ProxyState {
    filter: ProxyFilter,
    needed: BTreeMap<Need, usize>,
    /// The needs each kept source contributed, by kind and key.
    sources: BTreeMap<(Kind, ObjectKey), Vec<Need>>,
    /// Keys (as needs) of dependents dropped, by kind; during a relist,
    /// the ones dropped by the new list.
    dropped: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    relist_dropped: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    /// Kinds to list again: a dropped object is needed now.
    relist: BTreeSet<Kind>,
    scopes: BTreeMap<Kind, WatchScope>,
    /// Kinds asked to rescope before the first complete snapshot: their
    /// list only counts once the rescoped watch (this epoch or later) sent it.
    pending: BTreeMap<Kind, u64>,
    /// Dependent kinds whose watch was started: only once every source
    /// kind has listed, so that the first list of dependents is already
    /// filtered by complete needs (no list of everything, no second list).
    started: BTreeSet<Kind>,
}

impl Stores {
    pub fn new(expected: impl IntoIterator<Item = Kind>) -> Stores {
        Stores {
            expected: expected.into_iter().collect(),
            ..Stores::default()
        }
    }

    /// Proxy mode: store only what `filter`'s Gateway needs (see
    /// [`scope`]), and narrow the watches to match ([`Stores::watch_scopes`]).
    pub fn for_proxy(expected: impl IntoIterator<Item = Kind>, filter: ProxyFilter) -> Stores {
        let mut stores = Stores::new(expected);
        let mut proxy = ProxyState {
            filter,
            needed: BTreeMap::new(),
            sources: BTreeMap::new(),
            dropped: BTreeMap::new(),
            relist_dropped: BTreeMap::new(),
            relist: BTreeSet::new(),
            scopes: BTreeMap::new(),
            pending: BTreeMap::new(),
            started: BTreeSet::new(),
        };
        for kind in Kind::ALL {
            let namespace = proxy.watch_namespace(kind, &stores.snapshot);
            proxy.scopes.insert(
                kind,
                WatchScope {
                    namespace,
                    epoch: 0,
                },
            );
        }
        stores.proxy = Some(proxy);
        stores
    }

    /// The watch scope of each kind, as the watchers start. In proxy mode
    /// dependent kinds start at epoch 0, which means "wait": their first
    /// scope comes from [`Stores::watch_scopes`] once the sources listed.
    pub fn initial_scopes(&self) -> BTreeMap<Kind, WatchScope> {
        self.proxy
            .as_ref()
            .map(|p| p.scopes.clone())
            .unwrap_or_default()
    }

    /// Watch scopes that changed since the last call (proxy mode): the
    /// compile loop hands them to the watchers after each batch. Before
    /// the first complete snapshot, a rescoped kind counts as not listed
    /// until its new watch has listed.
    pub fn watch_scopes(&mut self) -> Vec<(Kind, WatchScope)> {
        let Some(proxy) = self.proxy.as_mut() else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        let sources_listed = Kind::ALL
            .iter()
            .filter(|k| Role::of(**k) == Role::Source && self.expected.contains(k))
            .all(|k| self.synced.contains(k));
        for kind in Kind::ALL {
            let namespace = proxy.watch_namespace(kind, &self.snapshot);
            let mut relist = proxy.relist.remove(&kind);
            if Role::of(kind) == Role::Dependent && !proxy.started.contains(&kind) {
                if !sources_listed {
                    continue;
                }
                proxy.started.insert(kind);
                relist = true;
            }
            let Some(scope) = proxy.scopes.get_mut(&kind) else {
                continue;
            };
            if scope.namespace != namespace || relist {
                scope.namespace = namespace;
                scope.epoch += 1;
                changed.push((kind, scope.clone()));
                if !self.complete {
                    self.synced.remove(&kind);
                    proxy.pending.insert(kind, scope.epoch);
                }
            }
        }
        changed
    }

    /// Records that a complete snapshot was published.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    /// How many objects of each kind are stored (for logs and tests).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let s = &self.snapshot;
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let n = match kind {
                    Kind::GatewayClass => s.gateway_classes.len(),
                    Kind::Gateway => s.gateways.len(),
                    Kind::HttpRoute => s.http_routes.len(),
                    Kind::GrpcRoute => s.grpc_routes.len(),
                    Kind::TlsRoute => s.tls_routes.len(),
                    Kind::ReferenceGrant => s.reference_grants.len(),
                    Kind::BackendTlsPolicy => s.backend_tls_policies.len(),
                    Kind::Service => s.services.len(),
                    Kind::EndpointSlice => s.endpoint_slices.len(),
                    Kind::Secret => s.secrets.len(),
                    Kind::ConfigMap => s.config_maps.len(),
                    Kind::Namespace => s.namespaces.len(),
                    Kind::GatewayParameters => s.gateway_parameters.len(),
                    Kind::Policy(kind) => s.policies.get(&kind).map_or(0, |m| m.len()),
                    Kind::RouteFilter => s.route_filters.len(),
                };
                (kind, n)
            })
            .collect()
    }

    /// True once every expected kind has completed its first list: only
    /// then is the snapshot complete enough to compile and publish.
    pub fn is_synced(&self) -> bool {
        self.expected.is_subset(&self.synced)
    }

    /// Expected kinds still waiting for their first list, for logs.
    pub fn unsynced(&self) -> Vec<Kind> {
        self.expected.difference(&self.synced).copied().collect()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn apply(&mut self, change: Change) -> Effect {
        if self.proxy.is_some() {
            return self.apply_filtered(change);
        }
        match change {
            Change::Relisting(kind) => {
                self.relisting.insert(kind, Snapshot::default());
                Effect::None
            }
            Change::Rescoped(..) => Effect::None,
            Change::Listed(mut object) => {
                strip(&mut object);
                let kind = Kind::of(&object);
                self.relisting.entry(kind).or_default().insert(object);
                Effect::None
            }
            Change::Synced(kind) => {
                let mut listed = self.relisting.remove(&kind).unwrap_or_default();
                swap_kind(&mut self.snapshot, &mut listed, kind);
                self.synced.insert(kind);
                Effect::Compile
            }
            Change::Applied(mut object) => {
                strip(&mut object);
                let status_only = same_but_status(&self.snapshot, &object);
                self.snapshot.insert(object);
                if status_only {
                    Effect::StatusOnly
                } else {
                    Effect::Compile
                }
            }
            Change::Deleted(object) => {
                if remove(&mut self.snapshot, &object) {
                    Effect::Compile
                } else {
                    Effect::None
                }
            }
        }
    }

    /// [`Stores::apply`] in proxy mode.
    fn apply_filtered(&mut self, change: Change) -> Effect {
        let Some(proxy) = self.proxy.as_mut() else {
            return Effect::None;
        };
        match change {
            Change::Relisting(kind) => {
                self.relisting.insert(kind, Snapshot::default());
                proxy.relist_dropped.insert(kind, BTreeSet::new());
                Effect::None
            }
            Change::Rescoped(kind, epoch) => {
                if proxy.pending.get(&kind).is_some_and(|p| epoch >= *p) {
                    proxy.pending.remove(&kind);
                }
                Effect::None
            }
            Change::Listed(mut object) => {
                strip(&mut object);
                strip_status(&mut object);
                let kind = Kind::of(&object);
                let keep = match Role::of(kind) {
                    Role::Source => proxy.filter.keeps_source(&object),
                    Role::Dependent => match scope::need_of(&object) {
                        Some(need) if is_needed(&proxy.needed, &need) => true,
                        Some((_, key)) => {
                            proxy.relist_dropped.entry(kind).or_default().insert(key);
                            false
                        }
                        None => false,
                    },
                    Role::Kept => true,
                };
                if keep {
                    self.relisting.entry(kind).or_default().insert(object);
                }
                Effect::None
            }
            Change::Synced(kind) => {
                let mut listed = self.relisting.remove(&kind).unwrap_or_default();
                swap_kind(&mut self.snapshot, &mut listed, kind);
                if let Some(dropped) = proxy.relist_dropped.remove(&kind) {
                    proxy.dropped.insert(kind, dropped);
                }
                if !proxy.pending.contains_key(&kind) {
                    self.synced.insert(kind);
                }
                if Role::of(kind) == Role::Source {
                    self.recount_needs();
                } else {
                    // Needed while this list was running: list again.
                    let need_kind = scope::need_kind(kind);
                    let missed = proxy.dropped.get(&kind).is_some_and(|d| {
                        d.iter()
                            .any(|key| is_needed(&proxy.needed, &(need_kind, key.clone())))
                    });
                    if missed {
                        proxy.relist.insert(kind);
                    }
                }
                Effect::Compile
            }
            Change::Applied(mut object) => {
                strip(&mut object);
                strip_status(&mut object);
                let kind = Kind::of(&object);
                match Role::of(kind) {
                    Role::Source => {
                        let key = ObjectKey::of(object.meta());
                        if proxy.filter.keeps_source(&object) {
                            let needs = scope::needs_of(&object);
                            self.set_source_needs(kind, key, needs);
                            self.store(object)
                        } else {
                            self.set_source_needs(kind, key, Vec::new());
                            self.unstore(&object)
                        }
                    }
                    Role::Dependent => {
                        match scope::need_of(&object) {
                            Some(need) if is_needed(&proxy.needed, &need) => {
                                return self.store(object);
                            }
                            Some((_, key)) => {
                                proxy.dropped.entry(kind).or_default().insert(key);
                            }
                            None => {}
                        }
                        self.unstore(&object)
                    }
                    Role::Kept => self.store(object),
                }
            }
            Change::Deleted(object) => {
                let kind = Kind::of(&object);
                match Role::of(kind) {
                    Role::Source => {
                        let key = ObjectKey::of(object.meta());
                        self.set_source_needs(kind, key, Vec::new());
                    }
                    Role::Dependent => {
                        if let Some((_, key)) = scope::need_of(&object) {
                            if kind != Kind::EndpointSlice {
                                if let Some(d) = proxy.dropped.get_mut(&kind) {
                                    d.remove(&key);
                                }
                            }
                        }
                    }
                    Role::Kept => {}
                }
                self.unstore(&object)
            }
        }
    }

    fn store(&mut self, object: KubeObject) -> Effect {
        let status_only = same_but_status(&self.snapshot, &object);
        self.snapshot.insert(object);
        if status_only {
            Effect::StatusOnly
        } else {
            Effect::Compile
        }
    }

    fn unstore(&mut self, object: &KubeObject) -> Effect {
        if remove(&mut self.snapshot, object) {
            Effect::Compile
        } else {
            Effect::None
        }
    }

    /// Replaces the needs a source contributes, keeping or dropping the
    /// dependents whose count crosses zero.
    fn set_source_needs(&mut self, kind: Kind, key: ObjectKey, needs: Vec<Need>) {
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        let old = if needs.is_empty() {
            proxy.sources.remove(&(kind, key))
        } else {
            proxy.sources.insert((kind, key), needs.clone())
        }
        .unwrap_or_default();
        for need in needs {
            let count = proxy.needed.entry(need.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                proxy.now_needed(&need);
            }
        }
        for need in old {
            if let Some(count) = proxy.needed.get_mut(&need) {
                *count -= 1;
                if *count == 0 {
                    proxy.needed.remove(&need);
                    drop_dependents(&mut self.snapshot, proxy, &need);
                }
            }
        }
    }

    /// After a source kind was relisted: every source's needs again.
    fn recount_needs(&mut self) {
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        let sources = source_needs(&self.snapshot);
        let mut needed: BTreeMap<Need, usize> = BTreeMap::new();
        for need in sources.values().flatten() {
            *needed.entry(need.clone()).or_insert(0) += 1;
        }
        let old = std::mem::replace(&mut proxy.needed, needed);
        proxy.sources = sources;
        let gained: Vec<Need> = proxy
            .needed
            .keys()
            .filter(|n| !old.contains_key(*n))
            .cloned()
            .collect();
        for need in gained {
            proxy.now_needed(&need);
        }
        let lost: Vec<Need> = old
            .into_keys()
            .filter(|n| !proxy.needed.contains_key(n))
            .collect();
        for need in lost {
            drop_dependents(&mut self.snapshot, proxy, &need);
        }
    }
}

impl ProxyState {
    fn watch_namespace(&self, kind: Kind, snapshot: &Snapshot) -> Option<String> {
        let need_kind = scope::need_kind(kind);
        let namespaces: BTreeSet<&str> = self
            .needed
            .keys()
            .filter(|(k, _)| *k == need_kind)
            .map(|(_, key)| key.namespace.as_str())
            .collect();
        scope::watch_namespace(
            kind,
            &self.filter,
            snapshot.gateways.get(&self.filter.gateway),
            &namespaces,
        )
    }

    /// A need appeared: if its objects were dropped earlier, their kinds
    /// are listed again (the watch only sends changes from now on).
    fn now_needed(&mut self, need: &Need) {
        let (need_kind, key) = need;
        for kind in Kind::ALL {
            if scope::need_kind(kind) != *need_kind || Role::of(kind) != Role::Dependent {
                continue;
            }
            let dropped = |m: &BTreeMap<Kind, BTreeSet<ObjectKey>>| {
                m.get(&kind).is_some_and(|d| {
                    if key.name == scope::ANY {
                        d.iter().any(|k| k.namespace == key.namespace)
                    } else {
                        d.contains(key)
                    }
                })
            };
            if dropped(&self.dropped) || dropped(&self.relist_dropped) {
                self.relist.insert(kind);
            }
        }
    }
}

/// The needs of every stored source object, by kind and key (sources
/// that need nothing are left out). One exhaustive match over the kinds,
/// so that a new source kind cannot be forgotten here: a forgotten kind
/// loses its dependents at the first relist of any source kind (as
/// BackendTLSPolicies once lost their CA ConfigMaps).
fn source_needs(s: &Snapshot) -> BTreeMap<(Kind, ObjectKey), Vec<Need>> {
    let mut sources = BTreeMap::new();
    let mut add = |kind: Kind, key: ObjectKey, needs: Vec<Need>| {
        if !needs.is_empty() {
            sources.insert((kind, key), needs);
        }
    };
    for kind in Kind::ALL {
        match kind {
            // Few: cloned into a KubeObject to reuse `needs_of`.
            Kind::Gateway => {
                for g in s.gateways.values() {
                    let object = KubeObject::Gateway(g.clone());
                    add(kind, ObjectKey::of(object.meta()), scope::needs_of(&object));
                }
            }
            Kind::GatewayClass => {
                for c in s.gateway_classes.values() {
                    let object = KubeObject::GatewayClass(c.clone());
                    add(kind, ObjectKey::of(object.meta()), scope::needs_of(&object));
                }
            }
            // Many: no clone of the object, only of the needs.
            Kind::HttpRoute => {
                for (key, r) in &s.http_routes {
                    add(kind, key.clone(), scope::needs_of_http_route(r));
                }
            }
            Kind::GrpcRoute => {
                for (key, r) in &s.grpc_routes {
                    add(kind, key.clone(), scope::needs_of_grpc_route(r));
                }
            }
            Kind::TlsRoute => {
                for (key, r) in &s.tls_routes {
                    add(kind, key.clone(), scope::needs_of_tls_route(r));
                }
            }
            Kind::BackendTlsPolicy => {
                for (key, p) in &s.backend_tls_policies {
                    add(kind, key.clone(), scope::needs_of_backend_tls_policy(p));
                }
            }
            Kind::Policy(policy_kind) => {
                for key in s
                    .policies
                    .get(&policy_kind)
                    .into_iter()
                    .flat_map(|m| m.keys())
                {
                    add(kind, key.clone(), scope::needs_of_policy(key));
                }
            }
            Kind::RouteFilter => {
                for key in s.route_filters.keys() {
                    add(kind, key.clone(), scope::needs_of_policy(key));
                }
            }
            // Not sources: they need nothing.
            Kind::ReferenceGrant
            | Kind::Service
            | Kind::EndpointSlice
            | Kind::Secret
            | Kind::ConfigMap
            | Kind::Namespace
            | Kind::GatewayParameters => {}
        }
    }
    sources
}

/// Needed by name, or through a namespace-wide need of that kind (our
/// policies read Secrets and ConfigMaps of their namespace by name or by
/// label).
fn is_needed(needed: &BTreeMap<Need, usize>, need: &Need) -> bool {
    let (kind, key) = need;
    needed.contains_key(need)
        || needed.contains_key(&(*kind, ObjectKey::new(key.namespace.clone(), scope::ANY)))
}

/// A need went away: its stored dependents are dropped (and remembered
/// as dropped, in case they are needed again).
fn drop_dependents(snapshot: &mut Snapshot, proxy: &mut ProxyState, need: &Need) {
    let (kind, key) = need;
    if is_needed(&proxy.needed, need) {
        return; // still needed through a namespace-wide need
    }
    if key.name == scope::ANY {
        // Everything of that kind in the namespace not needed by name.
        let needed = &proxy.needed;
        let keep = |k: &ObjectKey| {
            k.namespace != key.namespace || needed.contains_key(&(*kind, k.clone()))
        };
        let mut gone = Vec::new();
        match kind {
            Kind::Secret => snapshot.secrets.retain(|k, _| {
                keep(k) || {
                    gone.push(k.clone());
                    false
                }
            }),
            Kind::ConfigMap => snapshot.config_maps.retain(|k, _| {
                keep(k) || {
                    gone.push(k.clone());
                    false
                }
            }),
            _ => {}
        }
        proxy.dropped.entry(*kind).or_default().extend(gone);
        return;
    }
    let mut mark = |kind: Kind| {
        proxy.dropped.entry(kind).or_default().insert(key.clone());
    };
    match kind {
        Kind::Service => {
            if snapshot.services.remove(key).is_some() {
                mark(Kind::Service);
            }
            let before = snapshot.endpoint_slices.len();
            snapshot.endpoint_slices.retain(|slice_key, slice| {
                slice_key.namespace != key.namespace
                    || slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        != Some(&key.name)
            });
            if snapshot.endpoint_slices.len() != before {
                mark(Kind::EndpointSlice);
            }
        }
        Kind::Secret | Kind::ConfigMap | Kind::GatewayParameters => {
            let removed = match kind {
                Kind::Secret => snapshot.secrets.remove(key).is_some(),
                Kind::ConfigMap => snapshot.config_maps.remove(key).is_some(),
                _ => snapshot.gateway_parameters.remove(key).is_some(),
            };
            if removed {
                mark(*kind);
            }
        }
        _ => {}
    }
}

/// Exchanges one kind's objects between two snapshots.
fn swap_kind(a: &mut Snapshot, b: &mut Snapshot, kind: Kind) {
    use std::mem::swap;
    match kind {
        Kind::GatewayClass => swap(&mut a.gateway_classes, &mut b.gateway_classes),
        Kind::Gateway => swap(&mut a.gateways, &mut b.gateways),
        Kind::HttpRoute => swap(&mut a.http_routes, &mut b.http_routes),
        Kind::GrpcRoute => swap(&mut a.grpc_routes, &mut b.grpc_routes),
        Kind::TlsRoute => swap(&mut a.tls_routes, &mut b.tls_routes),
        Kind::ReferenceGrant => swap(&mut a.reference_grants, &mut b.reference_grants),
        Kind::BackendTlsPolicy => swap(&mut a.backend_tls_policies, &mut b.backend_tls_policies),
        Kind::Service => swap(&mut a.services, &mut b.services),
        Kind::EndpointSlice => swap(&mut a.endpoint_slices, &mut b.endpoint_slices),
        Kind::Secret => swap(&mut a.secrets, &mut b.secrets),
        Kind::ConfigMap => swap(&mut a.config_maps, &mut b.config_maps),
        Kind::Namespace => swap(&mut a.namespaces, &mut b.namespaces),
        Kind::GatewayParameters => swap(&mut a.gateway_parameters, &mut b.gateway_parameters),
        Kind::Policy(kind) => swap(
            a.policies.entry(kind).or_default(),
            b.policies.entry(kind).or_default(),
        ),
        Kind::RouteFilter => swap(&mut a.route_filters, &mut b.route_filters),
    }
}

/// Removes an object; true if it was there.
fn remove(snapshot: &mut Snapshot, object: &KubeObject) -> bool {
    let meta = object.meta();
    let key = ObjectKey::of(meta);
    match object {
        KubeObject::GatewayClass(_) => snapshot.gateway_classes.remove(&key.name).is_some(),
        KubeObject::Namespace(_) => snapshot.namespaces.remove(&key.name).is_some(),
        KubeObject::Gateway(_) => snapshot.gateways.remove(&key).is_some(),
        KubeObject::HttpRoute(_) => snapshot.http_routes.remove(&key).is_some(),
        KubeObject::GrpcRoute(_) => snapshot.grpc_routes.remove(&key).is_some(),
        KubeObject::TlsRoute(_) => snapshot.tls_routes.remove(&key).is_some(),
        KubeObject::ReferenceGrant(_) => snapshot.reference_grants.remove(&key).is_some(),
        KubeObject::BackendTlsPolicy(_) => snapshot.backend_tls_policies.remove(&key).is_some(),
        KubeObject::Service(_) => snapshot.services.remove(&key).is_some(),
        KubeObject::EndpointSlice(_) => snapshot.endpoint_slices.remove(&key).is_some(),
        KubeObject::Secret(_) => snapshot.secrets.remove(&key).is_some(),
        KubeObject::ConfigMap(_) => snapshot.config_maps.remove(&key).is_some(),
        KubeObject::GatewayParameters(_) => snapshot.gateway_parameters.remove(&key).is_some(),
        KubeObject::Policy(kind, _) => snapshot
            .policies
            .get_mut(kind)
            .is_some_and(|m| m.remove(&key).is_some()),
        KubeObject::RouteFilter(_) => snapshot.route_filters.remove(&key).is_some(),
    }
}

/// True when `object` differs from the stored version only in `status`
/// and `metadata.resourceVersion`: the kinds we write status to see their
/// own status writes come back, and those must not trigger a recompile.
fn same_but_status(snapshot: &Snapshot, object: &KubeObject) -> bool {
    fn same<T: Clone + PartialEq>(old: Option<&T>, new: &T, clear: impl Fn(&mut T)) -> bool {
        let Some(old) = old else { return false };
        let (mut old, mut new) = (old.clone(), new.clone());
        clear(&mut old);
        clear(&mut new);
        old == new
    }
    match object {
        KubeObject::GatewayClass(o) => {
            let name = o.metadata.name.clone().unwrap_or_default();
            same(snapshot.gateway_classes.get(&name), o, |x| {
                x.status = None;
                x.metadata.resource_version = None;
            })
        }
        KubeObject::Gateway(o) => {
            same(snapshot.gateways.get(&ObjectKey::of(&o.metadata)), o, |x| {
                x.status = None;
                x.metadata.resource_version = None;
            })
        }
        KubeObject::HttpRoute(o) => same(
            snapshot.http_routes.get(&ObjectKey::of(&o.metadata)),
            o,
            |x| {
                x.status = None;
                x.metadata.resource_version = None;
            },
        ),
        KubeObject::GrpcRoute(o) => same(
            snapshot.grpc_routes.get(&ObjectKey::of(&o.metadata)),
            o,
            |x| {
                x.status = None;
                x.metadata.resource_version = None;
            },
        ),
        KubeObject::BackendTlsPolicy(o) => same(
            snapshot
                .backend_tls_policies
                .get(&ObjectKey::of(&o.metadata)),
            o,
            |x| {
                x.status = None;
                x.metadata.resource_version = None;
            },
        ),
        KubeObject::TlsRoute(o) => same(
            snapshot.tls_routes.get(&ObjectKey::of(&o.metadata)),
            o,
            |x| {
                x.status = None;
                x.metadata.resource_version = None;
            },
        ),
        KubeObject::Policy(kind, o) => same(
            snapshot
                .policies
                .get(kind)
                .and_then(|m| m.get(&ObjectKey::of(&o.metadata))),
            o,
            |x| {
                x.status = serde_json::Value::Null;
                x.metadata.resource_version = None;
            },
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(name: &str, rv: &str) -> KubeObject {
        KubeObject::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": name, "namespace": "default", "resourceVersion": rv,
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                    "team": "a"
                }
            },
            "spec": {"parentRefs": [{"name": "gw"}]}
        }))
        .expect("valid route")
    }

    fn service(name: &str) -> KubeObject {
        KubeObject::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": 80}]}
        }))
        .expect("valid service")
    }

    fn synced_stores() -> Stores {
        let mut stores = Stores::new([Kind::HttpRoute, Kind::Service]);
        for kind in [Kind::HttpRoute, Kind::Service] {
            stores.apply(Change::Relisting(kind));
            stores.apply(Change::Synced(kind));
        }
        stores
    }

    #[test]
    fn not_synced_until_every_expected_kind_has_listed() {
        let mut stores = Stores::new([Kind::HttpRoute, Kind::Service]);
        assert!(!stores.is_synced());
        stores.apply(Change::Relisting(Kind::HttpRoute));
        assert_eq!(stores.apply(Change::Listed(route("a", "1"))), Effect::None);
        assert_eq!(
            stores.apply(Change::Synced(Kind::HttpRoute)),
            Effect::Compile
        );
        assert!(!stores.is_synced());
        assert_eq!(stores.unsynced(), vec![Kind::Service]);
        stores.apply(Change::Relisting(Kind::Service));
        stores.apply(Change::Synced(Kind::Service));
        assert!(stores.is_synced());
        assert_eq!(stores.snapshot().http_routes.len(), 1);
    }

    #[test]
    fn a_relist_keeps_the_old_objects_until_complete_then_replaces_them() {
        let mut stores = synced_stores();
        stores.apply(Change::Applied(route("a", "1")));
        stores.apply(Change::Applied(route("b", "1")));
        // The watch restarts (e.g. API server restart): until the new list
        // is complete, the old objects stay.
        stores.apply(Change::Relisting(Kind::HttpRoute));
        stores.apply(Change::Listed(route("b", "2")));
        assert_eq!(stores.snapshot().http_routes.len(), 2);
        stores.apply(Change::Listed(route("c", "2")));
        stores.apply(Change::Synced(Kind::HttpRoute));
        let names: Vec<_> = stores
            .snapshot()
            .http_routes
            .keys()
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(names, ["b", "c"]);
        assert!(stores.is_synced());
    }

    #[test]
    fn a_relist_of_one_kind_leaves_other_kinds_alone() {
        let mut stores = synced_stores();
        stores.apply(Change::Applied(service("s")));
        stores.apply(Change::Relisting(Kind::HttpRoute));
        stores.apply(Change::Synced(Kind::HttpRoute));
        assert_eq!(stores.snapshot().services.len(), 1);
    }

    #[test]
    fn deletes_remove_and_unknown_deletes_are_no_ops() {
        let mut stores = synced_stores();
        stores.apply(Change::Applied(service("s")));
        assert_eq!(stores.apply(Change::Deleted(service("s"))), Effect::Compile);
        assert!(stores.snapshot().services.is_empty());
        assert_eq!(stores.apply(Change::Deleted(service("s"))), Effect::None);
    }

    #[test]
    fn managed_fields_and_last_applied_are_stripped() {
        let mut stores = synced_stores();
        stores.apply(Change::Applied(route("a", "1")));
        let stored = stores
            .snapshot()
            .http_routes
            .get(&ObjectKey::new("default", "a"))
            .expect("stored");
        assert!(stored.metadata.managed_fields.is_none());
        let annotations = stored.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations.get("team").map(String::as_str), Some("a"));
    }

    #[test]
    fn a_status_only_change_does_not_ask_for_a_recompile() {
        let mut stores = synced_stores();
        assert_eq!(
            stores.apply(Change::Applied(route("a", "1"))),
            Effect::Compile
        );
        let KubeObject::HttpRoute(mut with_status) = route("a", "2") else {
            unreachable!("route() builds an HTTPRoute")
        };
        with_status.status = serde_json::from_value(json!({"parents": []})).ok();
        assert_eq!(
            stores.apply(Change::Applied(KubeObject::HttpRoute(with_status.clone()))),
            Effect::StatusOnly
        );
        // The observed status is stored (the status writer reads it).
        let stored = stores
            .snapshot()
            .http_routes
            .get(&ObjectKey::new("default", "a"))
            .expect("stored");
        assert!(stored.status.is_some());
        // A spec change does.
        with_status.spec.hostnames = Some(vec!["a.example".into()]);
        assert_eq!(
            stores.apply(Change::Applied(KubeObject::HttpRoute(with_status))),
            Effect::Compile
        );
    }

    #[test]
    fn applied_before_any_list_is_stored() {
        let mut stores = Stores::new([Kind::Service]);
        assert_eq!(stores.apply(Change::Applied(service("s"))), Effect::Compile);
        assert_eq!(stores.snapshot().services.len(), 1);
    }

    mod proxy {
        use super::super::*;
        use serde_json::json;

        fn object(value: serde_json::Value) -> KubeObject {
            KubeObject::from_value(value).expect("valid object")
        }

        fn gateway(from: &str) -> KubeObject {
            object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "edge", "namespace": "infra"},
                "spec": {"gatewayClassName": "c", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                    "allowedRoutes": {"namespaces": {"from": from}}}]}
            }))
        }

        fn route(name: &str, namespace: &str, gateway: &str, service: &str) -> KubeObject {
            object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"parentRefs": [{"name": gateway, "namespace": "infra"}],
                         "rules": [{"backendRefs": [{"name": service, "port": 80}]}]}
            }))
        }

        fn service(namespace: &str, name: &str) -> KubeObject {
            object(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"ports": [{"port": 80}]}
            }))
        }

        fn slice(namespace: &str, service: &str) -> KubeObject {
            object(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{service}-1"), "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]
            }))
        }

        fn stores() -> Stores {
            Stores::for_proxy(
                Kind::ALL,
                ProxyFilter {
                    gateway: ObjectKey::new("infra", "edge"),
                    controller_name: portcullis_api::CONTROLLER_NAME.into(),
                },
            )
        }

        fn list(stores: &mut Stores, kind: Kind, objects: Vec<KubeObject>) {
            stores.apply(Change::Relisting(kind));
            for o in objects {
                stores.apply(Change::Listed(o));
            }
            stores.apply(Change::Synced(kind));
        }

        fn names<V>(map: &BTreeMap<ObjectKey, V>) -> Vec<String> {
            map.keys().map(|k| k.to_string()).collect()
        }

        /// Sources listed, then the dependents' watches start (scoped).
        fn listed(from: &str) -> Stores {
            let mut s = stores();
            list(&mut s, Kind::Gateway, vec![gateway(from)]);
            list(
                &mut s,
                Kind::HttpRoute,
                vec![
                    route("ours", "apps", "edge", "app"),
                    route("theirs", "apps", "other", "unrelated"),
                ],
            );
            for kind in Kind::ALL {
                if Role::of(kind) == Role::Source
                    && !matches!(kind, Kind::Gateway | Kind::HttpRoute)
                {
                    list(&mut s, kind, vec![]);
                }
            }
            s
        }

        #[test]
        fn only_routes_of_our_gateway_and_what_they_reference_are_stored() {
            let mut s = listed("All");
            assert_eq!(names(&s.snapshot().http_routes), ["apps/ours"]);
            let scopes: BTreeMap<Kind, WatchScope> = s.watch_scopes().into_iter().collect();
            // Dependents start now, where their needs are.
            assert_eq!(
                scopes[&Kind::Service].namespace.as_deref(),
                Some("apps"),
                "{scopes:?}"
            );
            assert_eq!(scopes[&Kind::Secret].namespace.as_deref(), Some("infra"));
            assert_eq!(scopes[&Kind::HttpRoute].namespace, None);
            list(
                &mut s,
                Kind::Service,
                vec![service("apps", "app"), service("apps", "unrelated")],
            );
            list(
                &mut s,
                Kind::EndpointSlice,
                vec![slice("apps", "app"), slice("apps", "unrelated")],
            );
            assert_eq!(names(&s.snapshot().services), ["apps/app"]);
            assert_eq!(names(&s.snapshot().endpoint_slices), ["apps/app-1"]);
            // Changes to unrelated objects are not stored and ask for nothing.
            assert_eq!(
                s.apply(Change::Applied(service("apps", "unrelated"))),
                Effect::None
            );
            assert_eq!(
                s.apply(Change::Applied(route("late", "apps", "other", "x"))),
                Effect::None
            );
            assert_eq!(s.snapshot().http_routes.len(), 1);
        }

        #[test]
        fn statuses_are_not_stored_and_status_only_changes_do_not_recompile() {
            let mut s = listed("All");
            let KubeObject::HttpRoute(mut route) = route("ours", "apps", "edge", "app") else {
                unreachable!("an HTTPRoute")
            };
            route.status = serde_json::from_value(json!({"parents": [{
                "parentRef": {"name": "edge"}, "controllerName": "example.com/x", "conditions": []
            }]}))
            .ok();
            assert_eq!(
                s.apply(Change::Applied(KubeObject::HttpRoute(route))),
                Effect::StatusOnly
            );
            let stored = &s.snapshot().http_routes[&ObjectKey::new("apps", "ours")];
            assert!(stored.status.is_none());
        }

        fn config_map(namespace: &str, name: &str) -> KubeObject {
            object(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": {"jwks.json": "{}"}
            }))
        }

        #[test]
        fn a_policy_keeps_the_config_maps_and_secrets_of_its_namespace() {
            let mut s = listed("All");
            s.watch_scopes();
            list(&mut s, Kind::ConfigMap, vec![config_map("apps", "jwks")]);
            assert!(s.snapshot().config_maps.is_empty(), "nothing needs it yet");
            let policy = object(json!({
                "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"name": "p", "namespace": "apps"},
                "spec": {"targetRefs": []}
            }));
            s.apply(Change::Applied(policy.clone()));
            let relist: Vec<Kind> = s.watch_scopes().into_iter().map(|(k, _)| k).collect();
            assert!(relist.contains(&Kind::ConfigMap), "{relist:?}");
            list(
                &mut s,
                Kind::ConfigMap,
                vec![config_map("apps", "jwks"), config_map("other", "x")],
            );
            assert_eq!(names(&s.snapshot().config_maps), ["apps/jwks"]);
            s.apply(Change::Deleted(policy));
            assert!(s.snapshot().config_maps.is_empty());
        }

        fn secret(namespace: &str, name: &str) -> KubeObject {
            object(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace},
                "data": {"tls.crt": "", "tls.key": ""}
            }))
        }

        /// The shape of the conformance test GatewayBackendClientCertificateFeature:
        /// the Gateway, its route and the BackendTLSPolicy all exist when
        /// the proxy starts, so they arrive in the first lists (not as
        /// changes). The policy's CA ConfigMap and the Gateway's client
        /// certificate must both be stored, and stay stored when a source
        /// kind is listed again (a watch restart).
        #[test]
        fn a_backend_tls_policy_listed_at_start_keeps_its_ca_config_map() {
            let mut s = stores();
            let gateway = object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "edge", "namespace": "infra"},
                "spec": {"gatewayClassName": "c",
                    "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": "Same"}}}],
                    "tls": {"backend": {"clientCertificateRef": {"group": "", "kind": "Secret", "name": "client"}}}}
            }));
            let policy = object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                "metadata": {"name": "tls", "namespace": "infra"},
                "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "app"}],
                    "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}],
                        "hostname": "abc.example.com"}}
            }));
            // The policy's kind lists before the others, as well as after:
            // each later source list recounts every need.
            list(&mut s, Kind::BackendTlsPolicy, vec![policy]);
            list(&mut s, Kind::Gateway, vec![gateway]);
            list(
                &mut s,
                Kind::HttpRoute,
                vec![route("r", "infra", "edge", "app")],
            );
            for kind in Kind::ALL {
                if Role::of(kind) != Role::Dependent
                    && !matches!(
                        kind,
                        Kind::Gateway | Kind::HttpRoute | Kind::BackendTlsPolicy
                    )
                {
                    list(&mut s, kind, vec![]);
                }
            }
            let scopes: BTreeMap<Kind, WatchScope> = s.watch_scopes().into_iter().collect();
            assert_eq!(scopes[&Kind::ConfigMap].namespace.as_deref(), Some("infra"));
            for (kind, scope) in &scopes {
                s.apply(Change::Rescoped(*kind, scope.epoch));
            }
            list(
                &mut s,
                Kind::ConfigMap,
                vec![config_map("infra", "ca"), config_map("infra", "other")],
            );
            list(
                &mut s,
                Kind::Secret,
                vec![secret("infra", "client"), secret("infra", "other")],
            );
            list(&mut s, Kind::Service, vec![service("infra", "app")]);
            list(&mut s, Kind::EndpointSlice, vec![slice("infra", "app")]);
            list(&mut s, Kind::GatewayParameters, vec![]);
            assert!(s.is_synced(), "{:?}", s.unsynced());
            assert_eq!(names(&s.snapshot().config_maps), ["infra/ca"]);
            assert_eq!(names(&s.snapshot().secrets), ["infra/client"]);

            // A watch restart of any source kind recounts the needs: the
            // policy's still count.
            list(
                &mut s,
                Kind::HttpRoute,
                vec![route("r", "infra", "edge", "app")],
            );
            assert_eq!(names(&s.snapshot().config_maps), ["infra/ca"]);
            assert!(s.watch_scopes().is_empty(), "nothing to list again");
        }

        #[test]
        fn a_dropped_object_needed_later_is_listed_again() {
            let mut s = listed("All");
            s.watch_scopes();
            list(&mut s, Kind::Service, vec![service("apps", "app")]);
            // Arrives before the route that needs it: dropped.
            assert_eq!(
                s.apply(Change::Applied(service("apps", "new"))),
                Effect::None
            );
            assert!(s.watch_scopes().is_empty());
            s.apply(Change::Applied(route("second", "apps", "edge", "new")));
            let relist: Vec<Kind> = s.watch_scopes().into_iter().map(|(k, _)| k).collect();
            assert_eq!(relist, [Kind::Service]);
            list(
                &mut s,
                Kind::Service,
                vec![service("apps", "app"), service("apps", "new")],
            );
            assert_eq!(names(&s.snapshot().services), ["apps/app", "apps/new"]);
        }

        #[test]
        fn a_removed_route_takes_its_backends_with_it() {
            let mut s = listed("All");
            s.watch_scopes();
            list(&mut s, Kind::Service, vec![service("apps", "app")]);
            list(&mut s, Kind::EndpointSlice, vec![slice("apps", "app")]);
            // Re-pointed to another Gateway: no longer ours.
            assert_eq!(
                s.apply(Change::Applied(route("ours", "apps", "other", "app"))),
                Effect::Compile
            );
            assert!(s.snapshot().http_routes.is_empty());
            assert!(s.snapshot().services.is_empty());
            assert!(s.snapshot().endpoint_slices.is_empty());
            // Back: the dropped Service and slice are listed again.
            s.apply(Change::Applied(route("ours", "apps", "edge", "app")));
            let mut relist: Vec<Kind> = s.watch_scopes().into_iter().map(|(k, _)| k).collect();
            relist.sort();
            assert_eq!(relist, [Kind::Service, Kind::EndpointSlice]);
        }

        #[test]
        fn routes_of_a_same_namespace_gateway_are_watched_there_only_and_the_first_table_waits_for_the_rescoped_list(
        ) {
            let mut s = stores();
            assert_eq!(
                s.initial_scopes()[&Kind::HttpRoute].namespace.as_deref(),
                Some("infra")
            );
            list(&mut s, Kind::HttpRoute, vec![]);
            // The Gateway admits routes from every namespace: rewatch
            // routes everywhere before anything is published.
            list(&mut s, Kind::Gateway, vec![gateway("All")]);
            let scopes: BTreeMap<Kind, WatchScope> = s.watch_scopes().into_iter().collect();
            assert_eq!(scopes[&Kind::HttpRoute].namespace, None);
            let epoch = scopes[&Kind::HttpRoute].epoch;
            for kind in Kind::ALL {
                if !matches!(kind, Kind::HttpRoute | Kind::Gateway) {
                    list(&mut s, kind, vec![]);
                }
            }
            assert!(!s.is_synced(), "old-scope list does not count");
            // A late Synced of the old watch does not count either.
            s.apply(Change::Synced(Kind::HttpRoute));
            assert!(!s.is_synced());
            s.apply(Change::Rescoped(Kind::HttpRoute, epoch));
            list(
                &mut s,
                Kind::HttpRoute,
                vec![route("x", "apps", "edge", "app")],
            );
            assert_eq!(
                s.unsynced(),
                [Kind::GrpcRoute, Kind::TlsRoute],
                "rescoped as well"
            );
            for kind in [Kind::GrpcRoute, Kind::TlsRoute] {
                s.apply(Change::Rescoped(kind, scopes[&kind].epoch));
                list(&mut s, kind, vec![]);
            }
            assert!(s.is_synced(), "{:?}", s.unsynced());
            assert_eq!(s.snapshot().http_routes.len(), 1);
        }
    }
}

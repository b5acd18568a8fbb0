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

use crate::snapshot::{KubeObject, ObjectKey, Snapshot};

/// A kind the Kubernetes provider watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    Service,
    EndpointSlice,
    Secret,
    ConfigMap,
    Namespace,
    /// One of our policy CRDs. Optional: until its CRD is installed the
    /// kind counts as listed and empty (see the provider).
    Policy(PolicyKind),
}

impl Kind {
    /// Every kind `compile()` reads.
    pub const ALL: [Kind; 13] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ReferenceGrant,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Namespace,
        Kind::Policy(PolicyKind::AuthPolicy),
        Kind::Policy(PolicyKind::RateLimitPolicy),
        Kind::Policy(PolicyKind::BackendPolicy),
    ];

    pub fn of(object: &KubeObject) -> Kind {
        match object {
            KubeObject::GatewayClass(_) => Kind::GatewayClass,
            KubeObject::Gateway(_) => Kind::Gateway,
            KubeObject::HttpRoute(_) => Kind::HttpRoute,
            KubeObject::GrpcRoute(_) => Kind::GrpcRoute,
            KubeObject::ReferenceGrant(_) => Kind::ReferenceGrant,
            KubeObject::Service(_) => Kind::Service,
            KubeObject::EndpointSlice(_) => Kind::EndpointSlice,
            KubeObject::Secret(_) => Kind::Secret,
            KubeObject::ConfigMap(_) => Kind::ConfigMap,
            KubeObject::Namespace(_) => Kind::Namespace,
            KubeObject::Policy(kind, _) => Kind::Policy(*kind),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Namespace => "Namespace",
            Kind::Policy(kind) => kind.as_str(),
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
}

impl Stores {
    pub fn new(expected: impl IntoIterator<Item = Kind>) -> Stores {
        Stores {
            expected: expected.into_iter().collect(),
            ..Stores::default()
        }
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
        match change {
            Change::Relisting(kind) => {
                self.relisting.insert(kind, Snapshot::default());
                Effect::None
            }
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
}

/// Exchanges one kind's objects between two snapshots.
fn swap_kind(a: &mut Snapshot, b: &mut Snapshot, kind: Kind) {
    use std::mem::swap;
    match kind {
        Kind::GatewayClass => swap(&mut a.gateway_classes, &mut b.gateway_classes),
        Kind::Gateway => swap(&mut a.gateways, &mut b.gateways),
        Kind::HttpRoute => swap(&mut a.http_routes, &mut b.http_routes),
        Kind::GrpcRoute => swap(&mut a.grpc_routes, &mut b.grpc_routes),
        Kind::ReferenceGrant => swap(&mut a.reference_grants, &mut b.reference_grants),
        Kind::Service => swap(&mut a.services, &mut b.services),
        Kind::EndpointSlice => swap(&mut a.endpoint_slices, &mut b.endpoint_slices),
        Kind::Secret => swap(&mut a.secrets, &mut b.secrets),
        Kind::ConfigMap => swap(&mut a.config_maps, &mut b.config_maps),
        Kind::Namespace => swap(&mut a.namespaces, &mut b.namespaces),
        Kind::Policy(kind) => swap(
            a.policies.entry(kind).or_default(),
            b.policies.entry(kind).or_default(),
        ),
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
        KubeObject::ReferenceGrant(_) => snapshot.reference_grants.remove(&key).is_some(),
        KubeObject::Service(_) => snapshot.services.remove(&key).is_some(),
        KubeObject::EndpointSlice(_) => snapshot.endpoint_slices.remove(&key).is_some(),
        KubeObject::Secret(_) => snapshot.secrets.remove(&key).is_some(),
        KubeObject::ConfigMap(_) => snapshot.config_maps.remove(&key).is_some(),
        KubeObject::Policy(kind, _) => snapshot
            .policies
            .get_mut(kind)
            .is_some_and(|m| m.remove(&key).is_some()),
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
}

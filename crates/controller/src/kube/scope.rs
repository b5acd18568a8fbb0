//! What one proxy (`portcullis proxy --gateway ns/name`) needs to store,
//! and where it needs to watch. Pure: [`super::store::Stores`] applies it.
//!
//! - *Source* objects are kept or dropped by themselves: our Gateway (the
//!   watch is already narrowed to it), GatewayClasses of our controller,
//!   routes with a parentRef to our Gateway.
//! - *Dependent* objects are kept only while a kept source references
//!   them ([`Need`]s, reference-counted by the store): Services and their
//!   EndpointSlices (backendRefs, mirror backendRefs), Secrets (listener
//!   certificateRefs, the backend client certificate), GatewayParameters
//!   (parametersRefs), ConfigMaps and Secrets named by `caCertificateRefs`
//!   (the Gateway's client certificate validation, BackendTLSPolicies).
//! - Watches are namespaced where everything needed lives in one namespace
//!   ([`watch_namespace`]): routes when every listener admits routes from
//!   its own namespace only, dependents when their needs are in one
//!   namespace.
//!
//! Our policies and RouteFilters are all kept (few; which ones apply is
//! compile's question) and need every Secret and ConfigMap of their
//! namespace ([`ANY`]): their compile hooks read them by name or by label
//! selector.
//! BackendTLSPolicies are kept whole too (which Services they target is
//! compile's question). GatewayClasses, ReferenceGrants and Namespaces are few and small: kept.

use std::collections::BTreeSet;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gateways::{Gateway, GatewayListenersAllowedRoutesNamespacesFrom as From};
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::tlsroutes::TlsRoute;

use super::store::Kind;
use crate::snapshot::{KubeObject, ObjectKey};

/// The name of a namespace-wide need: every object of that kind in the
/// namespace.
pub const ANY: &str = "*";

/// What a policy in `key`'s namespace may read.
pub fn needs_of_policy(key: &ObjectKey) -> Vec<Need> {
    vec![
        (Kind::ConfigMap, ObjectKey::new(key.namespace.clone(), ANY)),
        (Kind::Secret, ObjectKey::new(key.namespace.clone(), ANY)),
    ]
}

/// A dependent object a kept source references. EndpointSlices are needed
/// through their Service: `(Kind::Service, service key)`.
pub type Need = (Kind, ObjectKey);

/// The Gateway a proxy serves.
#[derive(Debug, Clone)]
pub struct ProxyFilter {
    pub gateway: ObjectKey,
    pub controller_name: String,
}

/// How a kind is filtered in proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Kept or dropped by itself; may reference dependents.
    Source,
    /// Kept while needed.
    Dependent,
    /// Always kept.
    Kept,
}

impl Role {
    pub fn of(kind: Kind) -> Role {
        match kind {
            Kind::GatewayClass
            | Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TlsRoute
            | Kind::Policy(_)
            | Kind::RouteFilter
            | Kind::BackendTlsPolicy => Role::Source,
            Kind::Service
            | Kind::EndpointSlice
            | Kind::Secret
            | Kind::ConfigMap
            | Kind::GatewayParameters => Role::Dependent,
            Kind::ReferenceGrant | Kind::Namespace => Role::Kept,
        }
    }
}

const GATEWAY_GROUP: &str = portcullis_api::GATEWAY_GROUP;

impl ProxyFilter {
    /// Should this source object be stored?
    pub fn keeps_source(&self, object: &KubeObject) -> bool {
        match object {
            KubeObject::Gateway(g) => ObjectKey::of(&g.metadata) == self.gateway,
            KubeObject::GatewayClass(c) => c.spec.controller_name == self.controller_name,
            KubeObject::HttpRoute(r) => {
                let ns = ObjectKey::of(&r.metadata).namespace;
                r.spec.parent_refs.iter().flatten().any(|p| {
                    self.is_our_gateway(
                        &ns,
                        p.group.as_deref(),
                        p.kind.as_deref(),
                        p.namespace.as_deref(),
                        &p.name,
                    )
                })
            }
            KubeObject::GrpcRoute(r) => {
                let ns = ObjectKey::of(&r.metadata).namespace;
                r.spec.parent_refs.iter().flatten().any(|p| {
                    self.is_our_gateway(
                        &ns,
                        p.group.as_deref(),
                        p.kind.as_deref(),
                        p.namespace.as_deref(),
                        &p.name,
                    )
                })
            }
            KubeObject::TlsRoute(r) => {
                let ns = ObjectKey::of(&r.metadata).namespace;
                r.spec.parent_refs.iter().flatten().any(|p| {
                    self.is_our_gateway(
                        &ns,
                        p.group.as_deref(),
                        p.kind.as_deref(),
                        p.namespace.as_deref(),
                        &p.name,
                    )
                })
            }
            _ => true,
        }
    }

    fn is_our_gateway(
        &self,
        route_namespace: &str,
        group: Option<&str>,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        group.unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            && kind.unwrap_or("Gateway") == "Gateway"
            && name == self.gateway.name
            && namespace
                .filter(|n| !n.is_empty())
                .unwrap_or(route_namespace)
                == self.gateway.namespace
    }
}

/// Services named by a route's backendRefs and request mirrors (rule and
/// backendRef filters). HTTPRoute and GRPCRoute types differ but share
/// field names.
macro_rules! backend_needs {
    ($rules:expr, $ns:expr, $needs:expr) => {{
        let mut service =
            |group: Option<&str>, kind: Option<&str>, namespace: Option<&str>, name: &str| {
                if group.unwrap_or("").is_empty() && kind.unwrap_or("Service") == "Service" {
                    let namespace = namespace.filter(|n| !n.is_empty()).unwrap_or(&$ns);
                    $needs.push((Kind::Service, ObjectKey::new(namespace, name)));
                }
            };
        for rule in $rules.iter().flatten() {
            for f in rule.filters.iter().flatten() {
                if let Some(m) = f.request_mirror.as_ref() {
                    let b = &m.backend_ref;
                    service(
                        b.group.as_deref(),
                        b.kind.as_deref(),
                        b.namespace.as_deref(),
                        &b.name,
                    );
                }
            }
            for b in rule.backend_refs.iter().flatten() {
                service(
                    b.group.as_deref(),
                    b.kind.as_deref(),
                    b.namespace.as_deref(),
                    &b.name,
                );
                for f in b.filters.iter().flatten() {
                    if let Some(m) = f.request_mirror.as_ref() {
                        let b = &m.backend_ref;
                        service(
                            b.group.as_deref(),
                            b.kind.as_deref(),
                            b.namespace.as_deref(),
                            &b.name,
                        );
                    }
                }
            }
        }
    }};
}

/// The dependents a (kept) source object references.
pub fn needs_of(object: &KubeObject) -> Vec<Need> {
    let mut needs = Vec::new();
    match object {
        KubeObject::Gateway(g) => {
            let ns = ObjectKey::of(&g.metadata).namespace;
            for l in &g.spec.listeners {
                let refs = l.tls.as_ref().and_then(|t| t.certificate_refs.as_ref());
                for r in refs.into_iter().flatten() {
                    if r.group.as_deref().unwrap_or("").is_empty()
                        && r.kind.as_deref().unwrap_or("Secret") == "Secret"
                    {
                        let namespace = r.namespace.clone().unwrap_or_else(|| ns.clone());
                        needs.push((Kind::Secret, ObjectKey::new(namespace, r.name.clone())));
                    }
                }
            }
            if let Some(tls) = &g.spec.tls {
                let frontend = tls.frontend.as_ref();
                let default = frontend
                    .and_then(|f| f.default.validation.as_ref())
                    .map(|v| &v.ca_certificate_refs);
                for r in default.into_iter().flatten() {
                    ca_need(
                        &mut needs,
                        &ns,
                        &r.group,
                        &r.kind,
                        r.namespace.as_deref(),
                        &r.name,
                    );
                }
                let per_port = frontend.and_then(|f| f.per_port.as_ref());
                for p in per_port.into_iter().flatten() {
                    let refs = p.tls.validation.as_ref().map(|v| &v.ca_certificate_refs);
                    for r in refs.into_iter().flatten() {
                        ca_need(
                            &mut needs,
                            &ns,
                            &r.group,
                            &r.kind,
                            r.namespace.as_deref(),
                            &r.name,
                        );
                    }
                }
                let client = tls
                    .backend
                    .as_ref()
                    .and_then(|b| b.client_certificate_ref.as_ref());
                if let Some(r) = client {
                    if r.group.as_deref().unwrap_or("").is_empty()
                        && r.kind.as_deref().unwrap_or("Secret") == "Secret"
                    {
                        let namespace = r.namespace.clone().unwrap_or_else(|| ns.clone());
                        needs.push((Kind::Secret, ObjectKey::new(namespace, r.name.clone())));
                    }
                }
            }
            if let Some(r) = g
                .spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.parameters_ref.as_ref())
            {
                needs.push((Kind::GatewayParameters, ObjectKey::new(ns, r.name.clone())));
            }
        }
        KubeObject::GatewayClass(c) => {
            if let Some(r) = c.spec.parameters_ref.as_ref() {
                if let Some(ns) = r.namespace.as_deref().filter(|n| !n.is_empty()) {
                    needs.push((Kind::GatewayParameters, ObjectKey::new(ns, r.name.clone())));
                }
            }
        }
        KubeObject::Policy(_, p) | KubeObject::RouteFilter(p) => {
            return needs_of_policy(&ObjectKey::of(&p.metadata))
        }
        KubeObject::BackendTlsPolicy(p) => return needs_of_backend_tls_policy(p),
        KubeObject::HttpRoute(r) => return needs_of_http_route(r),
        KubeObject::GrpcRoute(r) => return needs_of_grpc_route(r),
        KubeObject::TlsRoute(r) => return needs_of_tls_route(r),
        _ => {}
    }
    needs.sort();
    needs.dedup();
    needs
}

/// A `caCertificateRefs` entry: a core ConfigMap or Secret.
fn ca_need(
    needs: &mut Vec<Need>,
    own_namespace: &str,
    group: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) {
    let kind = match (group, kind) {
        ("", "ConfigMap") => Kind::ConfigMap,
        ("", "Secret") => Kind::Secret,
        _ => return,
    };
    let namespace = namespace.filter(|n| !n.is_empty()).unwrap_or(own_namespace);
    needs.push((kind, ObjectKey::new(namespace, name)));
}

/// The ConfigMaps and Secrets a BackendTLSPolicy's `caCertificateRefs`
/// name (always in the policy's namespace).
pub fn needs_of_backend_tls_policy(policy: &BackendTlsPolicy) -> Vec<Need> {
    let ns = ObjectKey::of(&policy.metadata).namespace;
    let mut needs = Vec::new();
    let refs = policy.spec.validation.ca_certificate_refs.iter().flatten();
    for r in refs {
        ca_need(&mut needs, &ns, &r.group, &r.kind, None, &r.name);
    }
    needs.sort();
    needs.dedup();
    needs
}

pub fn needs_of_http_route(route: &HttpRoute) -> Vec<Need> {
    let ns = ObjectKey::of(&route.metadata).namespace;
    let mut needs = Vec::new();
    backend_needs!(route.spec.rules, ns, needs);
    needs.sort();
    needs.dedup();
    needs
}

pub fn needs_of_grpc_route(route: &GrpcRoute) -> Vec<Need> {
    let ns = ObjectKey::of(&route.metadata).namespace;
    let mut needs = Vec::new();
    backend_needs!(route.spec.rules, ns, needs);
    needs.sort();
    needs.dedup();
    needs
}

/// Services named by a TLSRoute's backendRefs (it has no filters).
pub fn needs_of_tls_route(route: &TlsRoute) -> Vec<Need> {
    let ns = ObjectKey::of(&route.metadata).namespace;
    let mut needs = Vec::new();
    for b in route.spec.rules.iter().flat_map(|r| &r.backend_refs) {
        if b.group.as_deref().unwrap_or("").is_empty()
            && b.kind.as_deref().unwrap_or("Service") == "Service"
        {
            let namespace = b
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(&ns);
            needs.push((Kind::Service, ObjectKey::new(namespace, b.name.as_str())));
        }
    }
    needs.sort();
    needs.dedup();
    needs
}

/// The need that keeps a dependent object (`None` for other kinds, and
/// for an EndpointSlice without its Service's label).
pub fn need_of(object: &KubeObject) -> Option<Need> {
    let meta = object.meta();
    let key = ObjectKey::of(meta);
    match object {
        KubeObject::Service(_) => Some((Kind::Service, key)),
        KubeObject::EndpointSlice(_) => {
            let service = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))?;
            Some((
                Kind::Service,
                ObjectKey::new(key.namespace, service.clone()),
            ))
        }
        KubeObject::Secret(_) => Some((Kind::Secret, key)),
        KubeObject::ConfigMap(_) => Some((Kind::ConfigMap, key)),
        KubeObject::GatewayParameters(_) => Some((Kind::GatewayParameters, key)),
        _ => None,
    }
}

/// The kind of need that keeps objects of a dependent kind.
pub fn need_kind(kind: Kind) -> Kind {
    match kind {
        Kind::EndpointSlice => Kind::Service,
        other => other,
    }
}

/// Where a kind is watched in proxy mode: `Some(namespace)` or `None` for
/// every namespace. `gateway` is our Gateway if stored; `needed` the
/// namespaces of the current needs of that kind.
pub fn watch_namespace(
    kind: Kind,
    filter: &ProxyFilter,
    gateway: Option<&Gateway>,
    needed: &BTreeSet<&str>,
) -> Option<String> {
    let own = filter.gateway.namespace.clone();
    match Role::of(kind) {
        Role::Source if matches!(kind, Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute) => {
            // Without the Gateway nothing is served: its own namespace is
            // the least to list; its arrival rescopes if needed.
            let same_only = gateway.is_none_or(|g| {
                g.spec.listeners.iter().all(|l| {
                    l.allowed_routes
                        .as_ref()
                        .and_then(|a| a.namespaces.as_ref())
                        .and_then(|n| n.from.as_ref())
                        .is_none_or(|from| *from == From::Same)
                })
            });
            same_only.then_some(own)
        }
        Role::Dependent => match needed.len() {
            0 => Some(own),
            1 => needed.iter().next().map(|ns| ns.to_string()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> KubeObject {
        KubeObject::from_value(value).expect("valid object")
    }

    fn filter() -> ProxyFilter {
        ProxyFilter {
            gateway: ObjectKey::new("infra", "edge"),
            controller_name: portcullis_api::CONTROLLER_NAME.into(),
        }
    }

    fn route(namespace: &str, parent: serde_json::Value) -> KubeObject {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": namespace},
            "spec": {"parentRefs": [parent], "rules": [{
                "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 80}}}],
                "backendRefs": [
                    {"name": "app", "port": 80},
                    {"name": "remote", "namespace": "other", "port": 80},
                    {"name": "bucket", "group": "storage.example", "kind": "Bucket"}
                ]
            }]}
        }))
    }

    #[test]
    fn routes_are_kept_only_with_a_parent_ref_to_our_gateway() {
        let f = filter();
        assert!(f.keeps_source(&route("infra", json!({"name": "edge"}))));
        assert!(f.keeps_source(&route(
            "apps",
            json!({"name": "edge", "namespace": "infra"})
        )));
        // Defaults to the route's own namespace.
        assert!(!f.keeps_source(&route("apps", json!({"name": "edge"}))));
        assert!(!f.keeps_source(&route("infra", json!({"name": "other"}))));
        assert!(!f.keeps_source(&route(
            "infra",
            json!({"name": "edge", "kind": "Service", "group": ""})
        )));
    }

    #[test]
    fn a_route_needs_its_backend_and_mirror_services_only() {
        let needs = needs_of(&route(
            "apps",
            json!({"name": "edge", "namespace": "infra"}),
        ));
        assert_eq!(
            needs,
            [
                (Kind::Service, ObjectKey::new("apps", "app")),
                (Kind::Service, ObjectKey::new("apps", "shadow")),
                (Kind::Service, ObjectKey::new("other", "remote")),
            ]
        );
    }

    #[test]
    fn a_gateway_needs_its_certificates_and_parameters() {
        let gateway = object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "infra"},
            "spec": {"gatewayClassName": "c",
                "infrastructure": {"parametersRef": {"group": "portcullis.dev", "kind": "GatewayParameters", "name": "big"}},
                "listeners": [
                {"name": "a", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [
                    {"name": "own"}, {"name": "shared", "namespace": "certs"}]}},
                {"name": "b", "port": 80, "protocol": "HTTP"}
            ]}
        }));
        assert_eq!(
            needs_of(&gateway),
            [
                (Kind::Secret, ObjectKey::new("certs", "shared")),
                (Kind::Secret, ObjectKey::new("infra", "own")),
                (Kind::GatewayParameters, ObjectKey::new("infra", "big")),
            ]
        );
    }

    #[test]
    fn ca_bundles_and_the_backend_client_certificate_are_needed() {
        let gateway = object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "infra"},
            "spec": {"gatewayClassName": "c",
                "tls": {
                    "backend": {"clientCertificateRef": {"name": "client"}},
                    "frontend": {
                        "default": {"validation": {"caCertificateRefs": [
                            {"group": "", "kind": "ConfigMap", "name": "ca"}]}},
                        "perPort": [{"port": 8443, "tls": {"validation": {"caCertificateRefs": [
                            {"group": "", "kind": "Secret", "name": "ca2", "namespace": "certs"},
                            {"group": "", "kind": "Service", "name": "not-a-bundle"}]}}}]
                    }
                },
                "listeners": [{"name": "a", "port": 443, "protocol": "HTTPS"}]}
        }));
        assert_eq!(
            needs_of(&gateway),
            [
                (Kind::Secret, ObjectKey::new("certs", "ca2")),
                (Kind::Secret, ObjectKey::new("infra", "client")),
                (Kind::ConfigMap, ObjectKey::new("infra", "ca")),
            ]
        );
        let policy = object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                "validation": {"hostname": "web.internal", "caCertificateRefs": [
                    {"group": "", "kind": "ConfigMap", "name": "web-ca"}]}}
        }));
        assert!(filter().keeps_source(&policy));
        assert_eq!(
            needs_of(&policy),
            [(Kind::ConfigMap, ObjectKey::new("apps", "web-ca"))]
        );
    }

    #[test]
    fn endpoint_slices_are_needed_through_their_service() {
        let slice = object(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "app-x1", "namespace": "apps", "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4", "endpoints": []
        }));
        assert_eq!(
            need_of(&slice),
            Some((Kind::Service, ObjectKey::new("apps", "app")))
        );
    }

    #[test]
    fn routes_are_watched_in_the_gateway_namespace_unless_a_listener_admits_others() {
        let f = filter();
        let gateway = |from: &str| {
            let KubeObject::Gateway(g) = object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "edge", "namespace": "infra"},
                "spec": {"gatewayClassName": "c", "listeners": [
                    {"name": "a", "port": 80, "protocol": "HTTP"},
                    {"name": "b", "port": 81, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": from}}}
                ]}
            })) else {
                unreachable!("a Gateway")
            };
            g
        };
        let none = BTreeSet::new();
        assert_eq!(
            watch_namespace(Kind::HttpRoute, &f, None, &none).as_deref(),
            Some("infra")
        );
        let same = gateway("Same");
        assert_eq!(
            watch_namespace(Kind::GrpcRoute, &f, Some(&same), &none).as_deref(),
            Some("infra")
        );
        for from in ["All", "Selector"] {
            let g = gateway(from);
            assert_eq!(watch_namespace(Kind::HttpRoute, &f, Some(&g), &none), None);
        }
        // Dependents: where their needs are.
        assert_eq!(
            watch_namespace(Kind::Service, &f, None, &none).as_deref(),
            Some("infra")
        );
        let one = BTreeSet::from(["apps"]);
        assert_eq!(
            watch_namespace(Kind::EndpointSlice, &f, None, &one).as_deref(),
            Some("apps")
        );
        let two = BTreeSet::from(["apps", "infra"]);
        assert_eq!(watch_namespace(Kind::Secret, &f, None, &two), None);
        assert_eq!(watch_namespace(Kind::Namespace, &f, None, &none), None);
    }
}

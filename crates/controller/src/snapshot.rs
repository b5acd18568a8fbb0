//! Every Kubernetes object `compile()` looks at, by kind.
//!
//! Providers (the Kubernetes watch, the YAML directory) fill a [`Snapshot`];
//! `compile()` reads it and nothing else. Maps are `BTreeMap`s keyed by
//! namespace/name so that iteration order, and therefore the compiled table
//! and statuses, are deterministic.

use std::collections::BTreeMap;

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
// HTTPRoute is read with the experimental channel's type, a superset of the
// standard one: fields such as `rules[].retry` exist only there, and serde
// would drop them from the standard type. Where the standard CRDs are
// installed the API server prunes them and they read as unset.
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use gateway_api::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_api::policy::PolicyKind;
use portcullis_api::GatewayParameters;

/// Namespace and name of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Key of an object's metadata; objects without a namespace get
    /// `default`, as `kubectl apply` would do.
    pub fn of(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey {
            namespace: meta
                .namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// All relevant objects, by kind.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Cluster-scoped: keyed by name.
    pub gateway_classes: BTreeMap<String, GatewayClass>,
    pub gateways: BTreeMap<ObjectKey, Gateway>,
    pub http_routes: BTreeMap<ObjectKey, HttpRoute>,
    pub grpc_routes: BTreeMap<ObjectKey, GrpcRoute>,
    pub tls_routes: BTreeMap<ObjectKey, TlsRoute>,
    pub reference_grants: BTreeMap<ObjectKey, ReferenceGrant>,
    pub backend_tls_policies: BTreeMap<ObjectKey, BackendTlsPolicy>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub secrets: BTreeMap<ObjectKey, Secret>,
    pub config_maps: BTreeMap<ObjectKey, ConfigMap>,
    /// Cluster-scoped: keyed by name. Only needed for label selectors; a
    /// namespace missing here is treated as existing with no labels.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Ours (`portcullis.dev`): what GatewayClass / Gateway
    /// `parametersRef`s point to.
    pub gateway_parameters: BTreeMap<ObjectKey, GatewayParameters>,
    /// Our policy CRDs, by kind. Kept as JSON: each kind's compile hook
    /// decodes its own spec, so a spec that does not decode becomes that
    /// policy's `Invalid` status instead of a lost object.
    pub policies: BTreeMap<PolicyKind, BTreeMap<ObjectKey, PolicyObject>>,
    /// Our `RouteFilter`s (ExtensionRef targets), kept as JSON like the
    /// policies: a spec that does not decode becomes the referring route's
    /// condition.
    pub route_filters: BTreeMap<ObjectKey, PolicyObject>,
}

/// An object of one of our kinds ([`PolicyKind`], `RouteFilter`), kept as
/// JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
pub struct PolicyObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    /// As observed, for the status writer's diff.
    #[serde(default)]
    pub status: serde_json::Value,
}

/// One object of a kind the controller reads.
#[derive(Debug, Clone)]
pub enum KubeObject {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    TlsRoute(TlsRoute),
    ReferenceGrant(ReferenceGrant),
    BackendTlsPolicy(BackendTlsPolicy),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    ConfigMap(ConfigMap),
    Namespace(Namespace),
    GatewayParameters(GatewayParameters),
    Policy(PolicyKind, PolicyObject),
    RouteFilter(PolicyObject),
}

/// Why a document could not become a [`KubeObject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectError {
    /// `kind`/`apiVersion` of something the controller does not read (a
    /// Deployment in the same file, say): not an error, just skipped.
    Ignored { api_version: String, kind: String },
    /// A kind we read, but the object does not match its schema.
    Invalid(String),
}

impl KubeObject {
    /// Kubernetes kind name (`HTTPRoute`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            KubeObject::GatewayClass(_) => "GatewayClass",
            KubeObject::Gateway(_) => "Gateway",
            KubeObject::HttpRoute(_) => "HTTPRoute",
            KubeObject::GrpcRoute(_) => "GRPCRoute",
            KubeObject::TlsRoute(_) => "TLSRoute",
            KubeObject::ReferenceGrant(_) => "ReferenceGrant",
            KubeObject::BackendTlsPolicy(_) => "BackendTLSPolicy",
            KubeObject::Service(_) => "Service",
            KubeObject::EndpointSlice(_) => "EndpointSlice",
            KubeObject::Secret(_) => "Secret",
            KubeObject::ConfigMap(_) => "ConfigMap",
            KubeObject::Namespace(_) => "Namespace",
            KubeObject::GatewayParameters(_) => "GatewayParameters",
            KubeObject::Policy(kind, _) => kind.as_str(),
            KubeObject::RouteFilter(_) => portcullis_api::route_filter::KIND,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            KubeObject::GatewayClass(o) => &o.metadata,
            KubeObject::Gateway(o) => &o.metadata,
            KubeObject::HttpRoute(o) => &o.metadata,
            KubeObject::GrpcRoute(o) => &o.metadata,
            KubeObject::TlsRoute(o) => &o.metadata,
            KubeObject::ReferenceGrant(o) => &o.metadata,
            KubeObject::BackendTlsPolicy(o) => &o.metadata,
            KubeObject::Service(o) => &o.metadata,
            KubeObject::EndpointSlice(o) => &o.metadata,
            KubeObject::Secret(o) => &o.metadata,
            KubeObject::ConfigMap(o) => &o.metadata,
            KubeObject::Namespace(o) => &o.metadata,
            KubeObject::GatewayParameters(o) => &o.metadata,
            KubeObject::Policy(_, o) | KubeObject::RouteFilter(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            KubeObject::GatewayClass(o) => &mut o.metadata,
            KubeObject::Gateway(o) => &mut o.metadata,
            KubeObject::HttpRoute(o) => &mut o.metadata,
            KubeObject::GrpcRoute(o) => &mut o.metadata,
            KubeObject::TlsRoute(o) => &mut o.metadata,
            KubeObject::ReferenceGrant(o) => &mut o.metadata,
            KubeObject::BackendTlsPolicy(o) => &mut o.metadata,
            KubeObject::Service(o) => &mut o.metadata,
            KubeObject::EndpointSlice(o) => &mut o.metadata,
            KubeObject::Secret(o) => &mut o.metadata,
            KubeObject::ConfigMap(o) => &mut o.metadata,
            KubeObject::Namespace(o) => &mut o.metadata,
            KubeObject::GatewayParameters(o) => &mut o.metadata,
            KubeObject::Policy(_, o) | KubeObject::RouteFilter(o) => &mut o.metadata,
        }
    }

    fn is_cluster_scoped(&self) -> bool {
        matches!(self, KubeObject::GatewayClass(_) | KubeObject::Namespace(_))
    }

    /// `Kind namespace/name` (or `Kind name` when cluster-scoped), for
    /// messages.
    pub fn display_name(&self) -> String {
        if self.is_cluster_scoped() {
            format!(
                "{} {}",
                self.kind(),
                self.meta().name.as_deref().unwrap_or("")
            )
        } else {
            format!("{} {}", self.kind(), ObjectKey::of(self.meta()))
        }
    }

    /// Decodes one document as `kubectl apply` would see it: dispatch on
    /// `apiVersion` + `kind`; a missing namespace becomes `default`; a
    /// Secret's `stringData` is merged into `data` as the API server does.
    pub fn from_value(value: serde_json::Value) -> Result<KubeObject, ObjectError> {
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let gateway_group = group == portcullis_api::GATEWAY_GROUP;
        let object = match (kind.as_str(), group) {
            ("GatewayClass", _) if gateway_group => KubeObject::GatewayClass(decode(value)?),
            ("Gateway", _) if gateway_group => KubeObject::Gateway(decode(value)?),
            ("HTTPRoute", _) if gateway_group => KubeObject::HttpRoute(decode(value)?),
            ("GRPCRoute", _) if gateway_group => KubeObject::GrpcRoute(decode(value)?),
            ("TLSRoute", _) if gateway_group => KubeObject::TlsRoute(decode(value)?),
            ("ReferenceGrant", _) if gateway_group => KubeObject::ReferenceGrant(decode(value)?),
            ("BackendTLSPolicy", _) if gateway_group => {
                KubeObject::BackendTlsPolicy(decode(value)?)
            }
            ("Service", "") => KubeObject::Service(decode(value)?),
            ("Secret", "") => KubeObject::Secret(decode(value)?),
            ("ConfigMap", "") => KubeObject::ConfigMap(decode(value)?),
            ("Namespace", "") => KubeObject::Namespace(decode(value)?),
            ("EndpointSlice", "discovery.k8s.io") => KubeObject::EndpointSlice(decode(value)?),
            ("GatewayParameters", portcullis_api::parameters::GROUP) => {
                KubeObject::GatewayParameters(decode(value)?)
            }
            (portcullis_api::route_filter::KIND, portcullis_api::parameters::GROUP) => {
                KubeObject::RouteFilter(decode(value)?)
            }
            (_, portcullis_api::parameters::GROUP) => match PolicyKind::from_kind(&kind) {
                Some(policy_kind) => KubeObject::Policy(policy_kind, decode(value)?),
                None => return Err(ObjectError::Ignored { api_version, kind }),
            },
            _ => return Err(ObjectError::Ignored { api_version, kind }),
        };
        if object.meta().name.as_deref().unwrap_or("").is_empty() {
            return Err(ObjectError::Invalid(format!("{kind} has no metadata.name")));
        }
        Ok(object.normalized())
    }

    fn normalized(mut self) -> KubeObject {
        fn default_ns(meta: &mut ObjectMeta) {
            if meta.namespace.as_deref().unwrap_or("").is_empty() {
                meta.namespace = Some("default".to_string());
            }
        }
        match &mut self {
            KubeObject::GatewayClass(_) | KubeObject::Namespace(_) => {}
            KubeObject::Gateway(o) => default_ns(&mut o.metadata),
            KubeObject::HttpRoute(o) => default_ns(&mut o.metadata),
            KubeObject::GrpcRoute(o) => default_ns(&mut o.metadata),
            KubeObject::TlsRoute(o) => default_ns(&mut o.metadata),
            KubeObject::ReferenceGrant(o) => default_ns(&mut o.metadata),
            KubeObject::BackendTlsPolicy(o) => default_ns(&mut o.metadata),
            KubeObject::Service(o) => default_ns(&mut o.metadata),
            KubeObject::EndpointSlice(o) => default_ns(&mut o.metadata),
            KubeObject::ConfigMap(o) => default_ns(&mut o.metadata),
            KubeObject::GatewayParameters(o) => default_ns(&mut o.metadata),
            KubeObject::Policy(_, o) | KubeObject::RouteFilter(o) => default_ns(&mut o.metadata),
            KubeObject::Secret(o) => {
                default_ns(&mut o.metadata);
                if let Some(string_data) = o.string_data.take() {
                    let data = o.data.get_or_insert_with(Default::default);
                    for (key, value) in string_data {
                        data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
                    }
                }
            }
        }
        self
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ObjectError> {
    serde_json::from_value(value).map_err(|e| ObjectError::Invalid(e.to_string()))
}

impl Snapshot {
    /// Adds or replaces an object. Returns the display name of the object it
    /// replaced, if any (a duplicate definition).
    pub fn insert(&mut self, object: KubeObject) -> Option<String> {
        fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
            map.insert(key, value).is_some()
        }
        let name = object.display_name();
        let key = ObjectKey::of(object.meta());
        let replaced = match object {
            KubeObject::GatewayClass(o) => put(&mut self.gateway_classes, key.name, o),
            KubeObject::Namespace(o) => put(&mut self.namespaces, key.name, o),
            KubeObject::Gateway(o) => put(&mut self.gateways, key, o),
            KubeObject::HttpRoute(o) => put(&mut self.http_routes, key, o),
            KubeObject::GrpcRoute(o) => put(&mut self.grpc_routes, key, o),
            KubeObject::TlsRoute(o) => put(&mut self.tls_routes, key, o),
            KubeObject::ReferenceGrant(o) => put(&mut self.reference_grants, key, o),
            KubeObject::BackendTlsPolicy(o) => put(&mut self.backend_tls_policies, key, o),
            KubeObject::Service(o) => put(&mut self.services, key, o),
            KubeObject::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o),
            KubeObject::Secret(o) => put(&mut self.secrets, key, o),
            KubeObject::ConfigMap(o) => put(&mut self.config_maps, key, o),
            KubeObject::GatewayParameters(o) => put(&mut self.gateway_parameters, key, o),
            KubeObject::Policy(kind, o) => put(self.policies.entry(kind).or_default(), key, o),
            KubeObject::RouteFilter(o) => put(&mut self.route_filters, key, o),
        };
        replaced.then_some(name)
    }
}

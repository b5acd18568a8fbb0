//! Lookups built once per `compile()` so that resolving one reference does
//! not scan every object of its kind: with thousands of routes, each
//! referring to its own Service, a scan per reference is quadratic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use portcullis_model::backend_policy::BackendSettings;
use portcullis_model::route_filter::RouteFilterConfig;

use crate::snapshot::{ObjectKey, Snapshot};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The snapshot with the indexes compile needs.
pub(crate) struct Index<'a> {
    pub snapshot: &'a Snapshot,
    /// EndpointSlices by namespace, then Service name, in snapshot order.
    slices: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
    /// BackendPolicy settings of Service ports, by Service and port number
    /// (filled by `backend_policy::service_settings`).
    pub backend_settings: HashMap<(ObjectKey, i32), Arc<BackendSettings>>,
    /// BackendTLSPolicy TLS of Service ports, by Service and port number
    /// (filled from `backend_tls::compile_policies`).
    pub backend_tls: HashMap<(ObjectKey, i32), Arc<portcullis_model::BackendTls>>,
    /// The settings of every backend without a BackendPolicy: one shared
    /// allocation rather than one per backend (thousands of routes).
    pub default_backend_settings: Arc<BackendSettings>,
    /// RouteFilters compiled so far (many rules may share one).
    pub route_filters: RefCell<HashMap<ObjectKey, RouteFilterResult>>,
}

pub(crate) type RouteFilterResult = Result<Arc<RouteFilterConfig>, super::route_filter::Unusable>;

impl<'a> Index<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Index<'a> {
        let mut slices: HashMap<&str, HashMap<&str, Vec<&EndpointSlice>>> = HashMap::new();
        for (key, slice) in &snapshot.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry(key.namespace.as_str())
                    .or_default()
                    .entry(service.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        Index {
            snapshot,
            slices,
            backend_settings: HashMap::new(),
            backend_tls: HashMap::new(),
            default_backend_settings: Arc::default(),
            route_filters: RefCell::default(),
        }
    }

    /// The EndpointSlices of a Service.
    pub fn endpoint_slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.slices
            .get(namespace)
            .and_then(|by_name| by_name.get(service))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

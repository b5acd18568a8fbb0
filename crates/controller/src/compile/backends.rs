//! backendRefs -> Services -> ready endpoints.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use portcullis_model::{AppProtocol, Backend, RouteKind};

use super::index::Index;
use super::refs;
use crate::snapshot::ObjectKey;
use crate::status::reasons;

/// A reference to a backend, whatever object it came from (a rule's
/// backendRef, a mirror filter's backendRef).
#[derive(PartialEq)]
pub(crate) struct BackendRefSpec<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub port: Option<i32>,
}

/// Why a reference cannot be served: a ResolvedRefs reason and a message.
#[derive(Debug, Clone)]
pub(crate) struct RefProblem {
    pub reason: &'static str,
    pub message: String,
}

/// The route a reference belongs to.
pub(crate) struct Referrer<'a> {
    pub kind: RouteKind,
    pub namespace: &'a str,
}

/// Resolves a reference to a Service port and its ready endpoints.
pub(crate) fn resolve(
    index: &Index<'_>,
    from: &Referrer<'_>,
    r: &BackendRefSpec<'_>,
) -> Result<Arc<Backend>, RefProblem> {
    let group = r.group.unwrap_or("");
    let kind = r.kind.unwrap_or("Service");
    let namespace = r
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or(from.namespace);
    let key = ObjectKey::new(namespace, r.name);
    if !group.is_empty() || kind != "Service" {
        return Err(RefProblem {
            reason: reasons::INVALID_KIND,
            message: format!("backendRef {key} has group {group:?} kind {kind:?}: only core Services are supported"),
        });
    }
    let route_kind = match from.kind {
        RouteKind::Http => "HTTPRoute",
        RouteKind::Grpc => "GRPCRoute",
    };
    let permitted = refs::permitted(
        index.snapshot,
        &refs::From {
            group: portcullis_api::GATEWAY_GROUP,
            kind: route_kind,
            namespace: from.namespace,
        },
        &refs::To {
            group: "",
            kind: "Service",
            namespace,
            name: r.name,
        },
    );
    if !permitted {
        return Err(RefProblem {
            reason: reasons::REF_NOT_PERMITTED,
            message: format!(
                "backendRef to Service {key} crosses namespaces: add a ReferenceGrant in namespace {namespace} from {route_kind}s in {}",
                from.namespace
            ),
        });
    }
    let Some(service) = index.snapshot.services.get(&key) else {
        return Err(RefProblem {
            reason: reasons::BACKEND_NOT_FOUND,
            message: format!("Service {key} does not exist"),
        });
    };
    let Some(port) = r.port else {
        return Err(RefProblem {
            reason: reasons::BACKEND_NOT_FOUND,
            message: format!("backendRef to Service {key} has no port; set backendRefs[].port"),
        });
    };
    let Some(service_port) = service_ports(service).find(|p| p.port == port) else {
        return Err(RefProblem {
            reason: reasons::BACKEND_NOT_FOUND,
            message: format!("Service {key} has no port {port}"),
        });
    };
    let protocol = match from.kind {
        // gRPC needs HTTP/2: h2c, or h2 over TLS with a BackendTLSPolicy.
        RouteKind::Grpc => AppProtocol::H2c,
        RouteKind::Http => app_protocol(service_port.app_protocol.as_deref()),
    };
    let tls = index.backend_tls.get(&(key.clone(), port)).cloned();
    Ok(Arc::new(Backend {
        name: format!("{key}:{port}"),
        protocol,
        endpoints: ready_endpoints(index, &key, service_port),
        settings: index
            .backend_settings
            .get(&(key.clone(), port))
            .unwrap_or(&index.default_backend_settings)
            .clone(),
        tls,
    }))
}

fn service_ports(service: &Service) -> impl Iterator<Item = &ServicePort> {
    service.spec.iter().flat_map(|s| s.ports.iter().flatten())
}

fn app_protocol(value: Option<&str>) -> AppProtocol {
    match value {
        Some("kubernetes.io/h2c") => AppProtocol::H2c,
        Some("kubernetes.io/ws") => AppProtocol::WebSocket,
        _ => AppProtocol::Http1,
    }
}

/// Ready endpoints of a Service port, from its EndpointSlices. Like
/// kube-proxy, the slice port is found by the Service port's name; an
/// endpoint without `conditions.ready` counts as ready. Sorted, deduped.
fn ready_endpoints(index: &Index<'_>, service: &ObjectKey, port: &ServicePort) -> Vec<SocketAddr> {
    let port_name = port.name.as_deref().unwrap_or("");
    let mut out = BTreeSet::new();
    for slice in index.endpoint_slices(&service.namespace, &service.name) {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let target_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(target_port) = target_port else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, target_port));
                }
            }
        }
    }
    out.into_iter().collect()
}

//! `GatewayParameters` (group `portcullis.dev`, `v1alpha1`): how the
//! controller provisions the data plane of a Gateway. Referenced from a
//! GatewayClass `spec.parametersRef` (defaults for every Gateway of the
//! class) or a Gateway `spec.infrastructure.parametersRef` (that Gateway
//! only; its fields win over the class's).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of Portcullis' own resources.
pub const GROUP: &str = "portcullis.dev";

/// Data-plane settings for the Gateways that reference them. Every field
/// is optional: unset fields fall back to the GatewayClass's parameters,
/// then to the controller's defaults.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "GatewayParameters",
    plural = "gatewayparameters",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    shortname = "gwparams",
    category = "portcullis",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Service Type",
        type_ = "string",
        json_path = ".spec.serviceType"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParametersSpec {
    /// Proxy replicas (Deployment `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Proxy container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Proxy container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Service type: `LoadBalancer` (default), `NodePort` or `ClusterIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^(LoadBalancer|NodePort|ClusterIP)$"))]
    pub service_type: Option<String>,
    /// Extra annotations on the provisioned Service (e.g. cloud load
    /// balancer settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_annotations: Option<BTreeMap<String, String>>,
    /// Extra annotations on the proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Request and connection limits of the proxies (each unset field
    /// keeps the proxy's default; see the README's "Limits").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProxyLimits>,
    /// What the proxies log and where they send traces (each unset field
    /// keeps the proxy's default; see the README's "Observe").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<ProxyObservability>,
}

/// The access log and trace export of the proxies; rendered into the
/// `portcullis proxy` flags of the same names ([`ProxyObservability::to_args`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyObservability {
    /// Access log destination: `stdout` (default), `stderr` or `off`. A
    /// file is not offered: the proxy's root filesystem is read-only and
    /// the container runtime collects stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^(stdout|stderr|off)$"))]
    pub access_log: Option<String>,
    /// Access log fields in output order (default: all but `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(pattern(
        "^(timestamp|request_id|trace_id|span_id|client|port|protocol|method|host|path|query|user_agent|status|bytes|duration_ms|upstream|upstream_ms|route|backend|identity|auth_mechanism|rate_limit)$"
    )))]
    pub access_log_fields: Option<Vec<String>>,
    /// Share of requests logged, 0 to 1 (default 1); answers with status
    /// 500 or more are always logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub access_log_sample_rate: Option<f64>,
    /// OpenTelemetry collector (OTLP/HTTP) the proxies export a span per
    /// request to, e.g. `http://otel-collector.observability:4318`. Unset:
    /// trace context is only propagated and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^http://[^/?#]+(/.*)?$"))]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default `portcullis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub otlp_service_name: Option<String>,
}

impl ProxyObservability {
    /// `self` with unset fields taken from `fallback`.
    pub fn or(&self, fallback: &ProxyObservability) -> ProxyObservability {
        let pick = |mine: &Option<String>, theirs: &Option<String>| {
            mine.clone().or_else(|| theirs.clone())
        };
        ProxyObservability {
            access_log: pick(&self.access_log, &fallback.access_log),
            access_log_fields: self
                .access_log_fields
                .clone()
                .or_else(|| fallback.access_log_fields.clone()),
            access_log_sample_rate: self
                .access_log_sample_rate
                .or(fallback.access_log_sample_rate),
            otlp_endpoint: pick(&self.otlp_endpoint, &fallback.otlp_endpoint),
            otlp_service_name: pick(&self.otlp_service_name, &fallback.otlp_service_name),
        }
    }

    /// The `portcullis proxy` flags (`--name=value`) of the set fields.
    pub fn to_args(&self) -> Vec<String> {
        let fields: [(&str, Option<String>); 5] = [
            ("access-log", self.access_log.clone()),
            (
                "access-log-fields",
                self.access_log_fields.as_ref().map(|f| f.join(",")),
            ),
            (
                "access-log-sample-rate",
                self.access_log_sample_rate.map(|r| r.to_string()),
            ),
            ("otlp-endpoint", self.otlp_endpoint.clone()),
            ("otlp-service-name", self.otlp_service_name.clone()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("--{name}={v}")))
            .collect()
    }
}

/// Limits a proxy enforces on clients; each becomes the `portcullis proxy`
/// flag of the same name ([`ProxyLimits::to_args`]). `0` disables the
/// limits marked "0: unlimited".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyLimits {
    /// Request line plus headers, in bytes (default 65536; HTTP/1 at least
    /// 8192). Over it: 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_header_bytes: Option<u32>,
    /// Header fields per request (default 100). Over it: 431.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers: Option<u32>,
    /// Path and query, in bytes (default 8192). Over it: 414.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uri_bytes: Option<u32>,
    /// Request body, in bytes (default 64 MiB; 0: unlimited). Over it:
    /// 413. A BackendPolicy's `maxRequestBodyBytes` wins per Service or
    /// route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// HTTP/1 request heads must arrive within this many seconds (default
    /// 30); slower connections are closed (slowloris).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub request_header_timeout_seconds: Option<u32>,
    /// Connections with no request in flight are closed after this many
    /// seconds (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub idle_timeout_seconds: Option<u32>,
    /// TLS streams (TLSRoute) with no bytes either way are closed after
    /// this many seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub stream_idle_timeout_seconds: Option<u32>,
    /// Open connections per listener (default 10000; 0: unlimited); over
    /// it new connections are closed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests per connection before it is closed gracefully (default 0:
    /// unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u64>,
    /// HTTP/2 concurrent streams per connection (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub http2_max_concurrent_streams: Option<u32>,
    /// HTTP/2 streams opened and reset by the client before they were
    /// served, before GOAWAY (rapid reset; default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_pending_accept_reset_streams: Option<u32>,
    /// HTTP/2 streams reset for protocol errors, before GOAWAY (default
    /// 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_local_error_reset_streams: Option<u32>,
}

impl ProxyLimits {
    /// `self` with unset fields taken from `fallback`.
    pub fn or(&self, fallback: &ProxyLimits) -> ProxyLimits {
        ProxyLimits {
            max_request_header_bytes: self
                .max_request_header_bytes
                .or(fallback.max_request_header_bytes),
            max_request_headers: self.max_request_headers.or(fallback.max_request_headers),
            max_uri_bytes: self.max_uri_bytes.or(fallback.max_uri_bytes),
            max_request_body_bytes: self
                .max_request_body_bytes
                .or(fallback.max_request_body_bytes),
            request_header_timeout_seconds: self
                .request_header_timeout_seconds
                .or(fallback.request_header_timeout_seconds),
            idle_timeout_seconds: self.idle_timeout_seconds.or(fallback.idle_timeout_seconds),
            stream_idle_timeout_seconds: self
                .stream_idle_timeout_seconds
                .or(fallback.stream_idle_timeout_seconds),
            max_connections: self.max_connections.or(fallback.max_connections),
            max_requests_per_connection: self
                .max_requests_per_connection
                .or(fallback.max_requests_per_connection),
            http2_max_concurrent_streams: self
                .http2_max_concurrent_streams
                .or(fallback.http2_max_concurrent_streams),
            http2_max_pending_accept_reset_streams: self
                .http2_max_pending_accept_reset_streams
                .or(fallback.http2_max_pending_accept_reset_streams),
            http2_max_local_error_reset_streams: self
                .http2_max_local_error_reset_streams
                .or(fallback.http2_max_local_error_reset_streams),
        }
    }

    /// The `portcullis proxy` flags (`--name=value`) of the set fields.
    pub fn to_args(&self) -> Vec<String> {
        let secs = |v: Option<u32>| v.map(|s| format!("{s}s"));
        let fields: [(&str, Option<String>); 12] = [
            (
                "max-request-header-bytes",
                self.max_request_header_bytes.map(|v| v.to_string()),
            ),
            (
                "max-request-headers",
                self.max_request_headers.map(|v| v.to_string()),
            ),
            ("max-uri-bytes", self.max_uri_bytes.map(|v| v.to_string())),
            (
                "max-request-body-bytes",
                self.max_request_body_bytes.map(|v| v.to_string()),
            ),
            (
                "request-header-timeout",
                secs(self.request_header_timeout_seconds),
            ),
            ("idle-timeout", secs(self.idle_timeout_seconds)),
            (
                "stream-idle-timeout",
                secs(self.stream_idle_timeout_seconds),
            ),
            (
                "max-connections",
                self.max_connections.map(|v| v.to_string()),
            ),
            (
                "max-requests-per-connection",
                self.max_requests_per_connection.map(|v| v.to_string()),
            ),
            (
                "http2-max-concurrent-streams",
                self.http2_max_concurrent_streams.map(|v| v.to_string()),
            ),
            (
                "http2-max-pending-accept-reset-streams",
                self.http2_max_pending_accept_reset_streams
                    .map(|v| v.to_string()),
            ),
            (
                "http2-max-local-error-reset-streams",
                self.http2_max_local_error_reset_streams
                    .map(|v| v.to_string()),
            ),
        ];
        fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| format!("--{name}={v}")))
            .collect()
    }
}

impl GatewayParametersSpec {
    /// `self` with unset fields taken from `fallback` (Gateway over class).
    pub fn or(&self, fallback: &GatewayParametersSpec) -> GatewayParametersSpec {
        GatewayParametersSpec {
            replicas: self.replicas.or(fallback.replicas),
            image: self.image.clone().or_else(|| fallback.image.clone()),
            resources: self
                .resources
                .clone()
                .or_else(|| fallback.resources.clone()),
            service_type: self
                .service_type
                .clone()
                .or_else(|| fallback.service_type.clone()),
            service_annotations: self
                .service_annotations
                .clone()
                .or_else(|| fallback.service_annotations.clone()),
            pod_annotations: self
                .pod_annotations
                .clone()
                .or_else(|| fallback.pod_annotations.clone()),
            limits: match (&self.limits, &fallback.limits) {
                (Some(mine), Some(class)) => Some(mine.or(class)),
                (mine, class) => mine.clone().or_else(|| class.clone()),
            },
            observability: match (&self.observability, &fallback.observability) {
                (Some(mine), Some(class)) => Some(mine.or(class)),
                (mine, class) => mine.clone().or_else(|| class.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn crd_names_and_scope() {
        let crd = GatewayParameters::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.kind, "GatewayParameters");
        assert_eq!(crd.spec.names.plural, "gatewayparameters");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert_eq!(
            GatewayParameters::api_version(&()),
            "portcullis.dev/v1alpha1"
        );
    }

    #[test]
    fn gateway_fields_win_over_class_fields() {
        let class = GatewayParametersSpec {
            replicas: Some(2),
            image: Some("class-image".into()),
            service_type: Some("ClusterIP".into()),
            ..Default::default()
        };
        let gateway = GatewayParametersSpec {
            replicas: Some(5),
            ..Default::default()
        };
        let merged = gateway.or(&class);
        assert_eq!(merged.replicas, Some(5));
        assert_eq!(merged.image.as_deref(), Some("class-image"));
        assert_eq!(merged.service_type.as_deref(), Some("ClusterIP"));
    }

    #[test]
    fn limits_merge_field_by_field_and_become_proxy_flags() {
        let class = GatewayParametersSpec {
            limits: Some(ProxyLimits {
                max_uri_bytes: Some(4096),
                idle_timeout_seconds: Some(30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let gateway: GatewayParametersSpec = serde_json::from_value(serde_json::json!({
            "limits": {"maxUriBytes": 2048, "maxRequestBodyBytes": 0, "http2MaxConcurrentStreams": 64,
                       "streamIdleTimeoutSeconds": 600}
        }))
        .expect("valid spec");
        let merged = gateway.or(&class).limits.expect("limits");
        assert_eq!(
            merged.to_args(),
            [
                "--max-uri-bytes=2048",
                "--max-request-body-bytes=0",
                "--idle-timeout=30s",
                "--stream-idle-timeout=600s",
                "--http2-max-concurrent-streams=64"
            ]
        );
    }

    #[test]
    fn observability_merges_field_by_field_and_becomes_proxy_flags() {
        let class = GatewayParametersSpec {
            observability: Some(ProxyObservability {
                otlp_endpoint: Some("http://collector:4318".into()),
                access_log_sample_rate: Some(0.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let gateway: GatewayParametersSpec = serde_json::from_value(serde_json::json!({
            "observability": {"accessLog": "stderr", "accessLogFields": ["timestamp", "status", "route"]}
        }))
        .expect("valid spec");
        let merged = gateway.or(&class).observability.expect("observability");
        assert_eq!(
            merged.to_args(),
            [
                "--access-log=stderr",
                "--access-log-fields=timestamp,status,route",
                "--access-log-sample-rate=0.5",
                "--otlp-endpoint=http://collector:4318",
            ]
        );
    }

    #[test]
    fn camel_case_fields() {
        let spec: GatewayParametersSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "serviceType": "NodePort", "serviceAnnotations": {"a": "b"}
        }))
        .expect("valid spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_type.as_deref(), Some("NodePort"));
    }
}

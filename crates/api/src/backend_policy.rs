//! `BackendPolicy` (group `portcullis.dev`, `v1alpha1`): how the gateway
//! talks to a backend — timeouts, retries, circuit breaking, outlier
//! detection, active health checks, load balancing, upstream connections.
//!
//! Attached (GEP-713) to a Service (every route that sends to it), to an
//! HTTPRoute or to one of its rules (`sectionName`: the rule name).
//! Endpoint-level settings (load balancing, circuit breaking, outlier
//! detection, health checks, connections) belong to the Service: they act on
//! the Service's endpoints, which every route shares. Request-level settings
//! (timeouts, retries, the request body limit) may also come from routes; a route's win over the
//! Service's.
//!
//! Durations use the Gateway API format (`500ms`, `10s`, `1m30s`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{Merge, PolicyEnvelope, PolicyStatus};

/// Backend resilience and load balancing for the targeted Services and
/// routes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "BackendPolicy",
    plural = "backendpolicies",
    shortname = "bp",
    namespaced,
    status = "PolicyStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    /// `targetRefs`: Services (group `""`, kind `Service`, optionally a
    /// port name as `sectionName`), HTTPRoutes or GRPCRoutes (optionally a
    /// rule name); `defaults` and `overrides`.
    #[serde(flatten)]
    pub envelope: PolicyEnvelope<BackendPolicyRules>,
    /// Rules at the top level of `spec`: shorthand for `defaults`.
    #[serde(flatten)]
    pub rules: BackendPolicyRules,
}

/// Every part is optional: an unset part is taken from a lower-priority
/// policy, then from the gateway's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicyRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<BackendTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionSpec>,
    /// Largest request body, in bytes, accepted for this Service or route
    /// (over it: 413, and the backend never receives a complete request).
    /// A route's policy wins over the Service's, which wins over the
    /// gateway-wide limit (`--max-request-body-bytes`). `0` allows bodies
    /// of any size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_request_body_bytes: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendTimeouts {
    /// Establishing a TCP connection to an endpoint (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// The whole request, all retries included, until response headers.
    /// An HTTPRoute's own `timeouts.request` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Pooled upstream connections unused for this long are closed
    /// (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

/// When a failed attempt is tried again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RetryOn {
    /// The TCP connection to the endpoint could not be made (nothing was
    /// sent: retried for every method).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection broke before response headers arrived.
    #[serde(rename = "reset")]
    Reset,
    /// Any 5xx response, and a per-attempt timeout.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504, and a per-attempt timeout.
    #[serde(rename = "gateway-error")]
    GatewayError,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Conditions (default `connect-failure`, `reset`, `gateway-error`).
    /// (Not `on`: YAML 1.1 parsers, kubectl's among them, read an unquoted
    /// `on` key as the boolean true.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Further response status codes that are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<u16>>,
    /// gRPC status codes that are retried when a backend answers a gRPC
    /// request with them before sending any message (a "trailers-only"
    /// response: `grpc-status` in the response headers), e.g.
    /// `[unavailable, resource-exhausted]`. As in gRPC's own retry policy,
    /// these apply whatever the HTTP method (gRPC always uses POST): list
    /// only codes that mean the call was not processed. A status in the
    /// trailers of a streamed response cannot be retried: the response has
    /// already reached the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status_codes: Option<Vec<GrpcStatusCode>>,
    /// Retries after the first attempt (default 2; 0 disables retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Limit of one attempt (a per-try timeout); an HTTPRoute's
    /// `timeouts.backendRequest` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
    /// Retry POST, PATCH and other non-idempotent methods too (default
    /// false: only GET, HEAD, OPTIONS, TRACE, PUT and DELETE, plus connect
    /// failures of any method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent: Option<bool>,
    /// Request bodies up to this many bytes are buffered so they can be
    /// sent again; a longer body is streamed and its request is not
    /// retried (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
}

/// gRPC status codes (except `ok`), by their canonical names in kebab case.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GrpcStatusCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl GrpcStatusCode {
    /// The code's number on the wire (`grpc-status`).
    pub fn number(self) -> u8 {
        match self {
            GrpcStatusCode::Cancelled => 1,
            GrpcStatusCode::Unknown => 2,
            GrpcStatusCode::InvalidArgument => 3,
            GrpcStatusCode::DeadlineExceeded => 4,
            GrpcStatusCode::NotFound => 5,
            GrpcStatusCode::AlreadyExists => 6,
            GrpcStatusCode::PermissionDenied => 7,
            GrpcStatusCode::ResourceExhausted => 8,
            GrpcStatusCode::FailedPrecondition => 9,
            GrpcStatusCode::Aborted => 10,
            GrpcStatusCode::OutOfRange => 11,
            GrpcStatusCode::Unimplemented => 12,
            GrpcStatusCode::Internal => 13,
            GrpcStatusCode::Unavailable => 14,
            GrpcStatusCode::DataLoss => 15,
            GrpcStatusCode::Unauthenticated => 16,
        }
    }
}

/// Exponential backoff with jitter: the n-th retry waits a random time
/// between half of `min(base * 2^n, max)` and all of it, never below `base`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// Default `25ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Default ten times `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// Retries in flight to one backend may be at most `percent` of its active
/// requests, but always at least `minRetryConcurrency`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

/// Limits per backend (per gateway replica). A request over a limit is
/// answered 503 at once, with `x-portcullis-overloaded` naming the limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Open TCP connections to all endpoints together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection while `maxConnections` are open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight (beyond it a failed attempt is answered as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Passive health: endpoints that keep failing are taken out of load
/// balancing for a while.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx answers (or broken connections) that eject an
    /// endpoint (default 5; 0 disables).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "consecutive5xx"
    )]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 answers, connect failures and resets that
    /// eject an endpoint (default 0: disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// The first ejection lasts this long; each further ejection of the
    /// same endpoint lasts one more multiple of it (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Upper bound of one ejection (default `300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// At most this share of a backend's endpoints is ejected at once
    /// (default 10; at least one endpoint may always be ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Active health checks: every gateway replica probes every endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Between two probes of one endpoint (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// One probe (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Up to this much random time is added to each interval (default 10 %
    /// of the interval) so that replicas do not probe in lockstep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// Passing probes that bring an unhealthy endpoint back (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failing probes that take an endpoint out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Probe with an HTTP/1.1 GET. Exactly one of `http` and `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheckSpec>,
    /// Probe by opening a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheckSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheckSpec {
    /// Request path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Host header (default the endpoint address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as passing (default 200-399). Entries are codes
    /// (`204`) or inclusive ranges (`200-299`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpHealthCheckSpec {}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LoadBalancerType {
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer
    /// requests in flight.
    LeastRequest,
    Random,
    /// The same key goes to the same endpoint; when an endpoint leaves,
    /// only its keys move.
    ConsistentHash,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// Default `RoundRobin`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub r#type: Option<LoadBalancerType>,
    /// Required for `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashSpec>,
    /// Pin a client to the endpoint it first reached with a cookie the
    /// gateway sets; works with every `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistenceSpec>,
    /// New endpoints get a share of traffic that grows linearly over this
    /// window (round robin, least request and random).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_window: Option<String>,
}

/// The hash key: exactly one of the fields. A request without the key is
/// balanced randomly.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sourceIP")]
    pub source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionPersistenceSpec {
    /// Default `portcullis-session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_name: Option<String>,
    /// Cookie `Max-Age`; unset makes a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpstreamHttpVersion {
    /// HTTP/1.1.
    #[serde(rename = "HTTP/1.1")]
    Http11,
    /// HTTP/2 over cleartext with prior knowledge.
    #[serde(rename = "HTTP/2")]
    Http2,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSpec {
    /// Overrides the Service port's `appProtocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_version: Option<UpstreamHttpVersion>,
    /// Idle pooled connections kept per endpoint (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<u32>,
}

/// Fills sections left unset; inside `timeouts` and `circuitBreaker` every
/// field is independent, so those are filled field by field. Other
/// sections are taken whole: a retry policy half from one object and half
/// from another would surprise both authors.
impl Merge for BackendPolicyRules {
    fn fill_from(&mut self, lower: &Self) {
        fill_fields_timeouts(&mut self.timeouts, lower.timeouts.as_ref());
        fill_fields_circuit_breaker(&mut self.circuit_breaker, lower.circuit_breaker.as_ref());
        fill(&mut self.retry, &lower.retry);
        fill(&mut self.outlier_detection, &lower.outlier_detection);
        fill(&mut self.health_check, &lower.health_check);
        fill(&mut self.load_balancer, &lower.load_balancer);
        fill(&mut self.connection, &lower.connection);
        fill(
            &mut self.max_request_body_bytes,
            &lower.max_request_body_bytes,
        );
    }
}

fn fill<T: Clone>(mine: &mut Option<T>, lower: &Option<T>) {
    if mine.is_none() {
        mine.clone_from(lower);
    }
}

fn fill_fields_timeouts(mine: &mut Option<BackendTimeouts>, lower: Option<&BackendTimeouts>) {
    let Some(lower) = lower else { return };
    let m = mine.get_or_insert_with(Default::default);
    fill(&mut m.connect, &lower.connect);
    fill(&mut m.request, &lower.request);
    fill(&mut m.idle, &lower.idle);
}

fn fill_fields_circuit_breaker(
    mine: &mut Option<CircuitBreakerSpec>,
    lower: Option<&CircuitBreakerSpec>,
) {
    let Some(lower) = lower else { return };
    let m = mine.get_or_insert_with(Default::default);
    fill(&mut m.max_connections, &lower.max_connections);
    fill(&mut m.max_pending_requests, &lower.max_pending_requests);
    fill(&mut m.max_requests, &lower.max_requests);
    fill(&mut m.max_retries, &lower.max_retries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn crd_names_and_scope() {
        let crd = BackendPolicy::crd();
        assert_eq!(crd.spec.group, "portcullis.dev");
        assert_eq!(crd.spec.names.kind, "BackendPolicy");
        assert_eq!(crd.spec.names.plural, "backendpolicies");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(BackendPolicy::api_version(&()), "portcullis.dev/v1alpha1");
    }

    #[test]
    fn reads_the_documented_yaml_shape() {
        let spec: BackendPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "defaults": {
                "timeouts": {"connect": "1s", "request": "10s"},
                "retry": {"retryOn": ["connect-failure", "5xx"], "codes": [409], "attempts": 3,
                          "backoff": {"base": "10ms", "max": "1s"},
                          "budget": {"percent": 20, "minRetryConcurrency": 3}},
                "circuitBreaker": {"maxRequests": 100},
                "outlierDetection": {"consecutive5xx": 3, "baseEjectionTime": "10s"},
                "healthCheck": {"interval": "5s", "http": {"path": "/healthz", "expectedStatuses": ["200-299"]}},
                "loadBalancer": {"type": "ConsistentHash", "consistentHash": {"sourceIP": true}},
                "connection": {"httpVersion": "HTTP/2"}
            }
        }))
        .expect("valid spec");
        assert_eq!(spec.envelope.target_refs[0].kind, "Service");
        let d = spec.envelope.defaults.expect("defaults");
        let retry = d.retry.expect("retry");
        assert_eq!(
            retry.retry_on,
            Some(vec![RetryOn::ConnectFailure, RetryOn::ServerError])
        );
        assert_eq!(d.outlier_detection.and_then(|o| o.consecutive_5xx), Some(3));
        assert_eq!(
            d.load_balancer
                .and_then(|l| l.consistent_hash)
                .and_then(|c| c.source_ip),
            Some(true)
        );
        assert_eq!(
            d.connection.and_then(|c| c.http_version),
            Some(UpstreamHttpVersion::Http2)
        );
    }

    #[test]
    fn top_level_rules_are_read_as_shorthand() {
        let spec: BackendPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "retry": {"attempts": 1}
        }))
        .expect("valid spec");
        assert_eq!(spec.rules.retry.and_then(|r| r.attempts), Some(1));
        assert!(spec.envelope.defaults.is_none());
    }

    #[test]
    fn merge_fills_sections_and_field_wise_timeouts() {
        let mut route = BackendPolicyRules {
            timeouts: Some(BackendTimeouts {
                request: Some("2s".into()),
                ..Default::default()
            }),
            retry: Some(RetrySpec {
                attempts: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let service = BackendPolicyRules {
            timeouts: Some(BackendTimeouts {
                request: Some("30s".into()),
                connect: Some("1s".into()),
                ..Default::default()
            }),
            retry: Some(RetrySpec {
                attempts: Some(5),
                codes: Some(vec![409]),
                ..Default::default()
            }),
            circuit_breaker: Some(CircuitBreakerSpec {
                max_requests: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        route.fill_from(&service);
        let t = route.timeouts.expect("timeouts");
        assert_eq!(t.request.as_deref(), Some("2s"));
        assert_eq!(t.connect.as_deref(), Some("1s"));
        // Retry is taken whole from the more specific policy.
        let r = route.retry.expect("retry");
        assert_eq!((r.attempts, r.codes), (Some(1), None));
        assert_eq!(route.circuit_breaker.and_then(|c| c.max_requests), Some(10));
    }
}

//! Compiled `BackendPolicy` settings: validated, defaults applied, durations
//! parsed, header names built. The data plane only reads them.
//!
//! Two places carry them: [`BackendSettings`] on a [`crate::Backend`]
//! (Service-attached: everything that acts on the Service's endpoints) and
//! [`RouteBackendPolicy`] in a [`crate::Rule`]'s policies (request-level
//! settings a route may set for itself).

use std::time::Duration;

use serde::Serialize;

use crate::{AppProtocol, HeaderNameSer};

/// Endpoint-level settings of one backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendSettings {
    /// TCP connect limit per attempt.
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
    /// Whole-request limit used when the route sets none.
    pub request_timeout: Option<Duration>,
    /// Retries used when the route sets none.
    pub retry: Option<RetryPolicy>,
    pub circuit_breaker: CircuitBreaker,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_check: Option<HealthCheck>,
    pub load_balancer: LoadBalancer,
    /// Overrides the Service port's protocol.
    pub http_version: Option<AppProtocol>,
    /// `None`: unlimited.
    pub max_idle_per_endpoint: Option<usize>,
    /// Request body limit used when the route sets none (`None`: the
    /// gateway-wide limit; `Some(0)`: unlimited).
    pub max_request_body_bytes: Option<u64>,
}

/// Connect timeout without a policy.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pool idle timeout without a policy.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: None,
            retry: None,
            circuit_breaker: CircuitBreaker::default(),
            outlier_detection: None,
            health_check: None,
            load_balancer: LoadBalancer::default(),
            http_version: None,
            max_idle_per_endpoint: None,
            max_request_body_bytes: None,
        }
    }
}

/// Request-level settings of a BackendPolicy attached to a route or rule.
/// An HTTPRoute's own `timeouts` win over them; they win over the
/// Service's [`BackendSettings`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RouteBackendPolicy {
    pub request_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// Request body limit of the route (`Some(0)`: unlimited).
    pub max_request_body_bytes: Option<u64>,
}

/// Which failures a retry answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    /// Every 5xx and a per-attempt timeout.
    pub server_error: bool,
    /// 502, 503, 504 and a per-attempt timeout.
    pub gateway_error: bool,
    /// A per-attempt timeout (`timeouts.backendRequest` or the retry's
    /// per-try timeout) alone.
    pub timeout: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub on: RetryOn,
    /// Extra retriable statuses.
    pub codes: Vec<u16>,
    /// Retriable gRPC status codes of trailers-only answers to gRPC
    /// requests: bit `n` set retries `grpc-status: n`.
    pub grpc_status_mask: u32,
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget: RetryBudget,
    pub retry_non_idempotent: bool,
    /// Bodies up to this size are buffered for replay; longer ones make the
    /// request not retriable.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudget {
    /// Share (0..=100) of a backend's active requests that may be retries.
    pub percent: u32,
    /// Retries always allowed in flight, whatever the share.
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20,
            min_retry_concurrency: 3,
        }
    }
}

impl RetryPolicy {
    /// The Gateway API HTTPRoute `retry` semantics: listed codes, attempts,
    /// a minimum backoff.
    pub fn with_defaults() -> RetryPolicy {
        RetryPolicy {
            on: RetryOn {
                connect_failure: true,
                reset: true,
                server_error: false,
                gateway_error: true,
                timeout: false,
            },
            codes: Vec::new(),
            grpc_status_mask: 0,
            attempts: 2,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: RetryBudget::default(),
            retry_non_idempotent: false,
            max_body_bytes: 64 * 1024,
        }
    }

    /// Is a response with this status retried?
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on.server_error && (500..600).contains(&status))
            || (self.on.gateway_error && matches!(status, 502..=504))
            || self.codes.contains(&status)
    }

    /// Is a gRPC answer with this `grpc-status` (in its headers) retried?
    pub fn retries_grpc_status(&self, code: u8) -> bool {
        code < 32 && self.grpc_status_mask & (1 << code) != 0
    }

    /// Is a per-attempt timeout retried?
    pub fn retries_timeout(&self) -> bool {
        self.on.timeout
            || self.on.server_error
            || self.on.gateway_error
            || self.codes.contains(&504)
    }
}

/// Per-backend limits; `u32::MAX` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreaker {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// 0 disables this trigger.
    pub consecutive_5xx: u32,
    /// 0 disables this trigger.
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub kind: HealthCheckKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        /// `None`: the endpoint address.
        host: Option<String>,
        /// Inclusive ranges.
        expected_statuses: Vec<(u16, u16)>,
    },
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LoadBalancer {
    pub algorithm: LbAlgorithm,
    pub session_cookie: Option<SessionCookie>,
    /// `None`: new endpoints get their full share at once.
    pub slow_start_window: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub enum LbAlgorithm {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    ConsistentHash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum HashKey {
    Header(HeaderNameSer),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionCookie {
    pub name: String,
    /// `None`: a session cookie (no `Max-Age`).
    pub ttl: Option<Duration>,
}

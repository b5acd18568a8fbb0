//! BackendPolicy: validation, defaults and compilation into the model.
//!
//! Attached to a Service (or one of its ports), the whole policy becomes
//! that backend's [`BackendSettings`] (see [`service_settings`]); attached
//! to an HTTPRoute, a GRPCRoute or one of their rules, only the
//! request-level parts (`timeouts.request`, `retry`) apply, as a
//! [`RouteBackendPolicy`] in the rule's policies. Endpoint-level parts on a
//! route would make two routes disagree about the same endpoints, so a
//! route-attached policy that sets them is refused with a message.
//!
//! Every field is checked in `resolve`, so a policy that is accepted always
//! builds, alone or merged with others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::httproutes::HttpRouteRulesRetry;
use portcullis_api::backend_policy::{
    BackendPolicyRules, HealthCheckSpec, LoadBalancerSpec, LoadBalancerType, OutlierDetectionSpec,
    RetryOn as ApiRetryOn, RetrySpec, UpstreamHttpVersion,
};
use portcullis_api::PolicyKind;
use portcullis_model::backend_policy::{
    BackendSettings, CircuitBreaker, HashKey, HealthCheck, HealthCheckKind, LbAlgorithm,
    LoadBalancer, OutlierDetection, RetryBudget, RetryOn, RetryPolicy, RouteBackendPolicy,
    SessionCookie,
};
use portcullis_model::{AppProtocol, HeaderNameSer, RulePolicies};

use super::index::Index;
use super::policy::{Attachments, PolicyCompiler, PolicyContext, TargetKind};
use crate::snapshot::ObjectKey;

pub(crate) struct BackendPolicyCompiler;

impl PolicyCompiler for BackendPolicyCompiler {
    const KIND: PolicyKind = PolicyKind::BackendPolicy;
    const TARGETS: &'static [TargetKind] = &[
        TargetKind::Service,
        TargetKind::HttpRoute,
        TargetKind::GrpcRoute,
    ];
    type Rules = BackendPolicyRules;
    type Resolved = BackendPolicyRules;
    type Output = RouteBackendPolicy;

    fn resolve(
        rules: &BackendPolicyRules,
        ctx: &PolicyContext<'_>,
    ) -> Result<Self::Resolved, String> {
        settings(rules)?;
        if targets_a_route(ctx) {
            route_level_only(rules)?;
        }
        Ok(rules.clone())
    }

    /// The route-level part. Policies that target routes were checked to
    /// carry nothing else (`resolve`), so this does not fail in practice;
    /// the check is repeated so that it never silently drops a setting.
    fn build(effective: &BackendPolicyRules) -> Result<RouteBackendPolicy, String> {
        route_level_only(effective)?;
        Ok(RouteBackendPolicy {
            request_timeout: duration(
                "timeouts.request",
                effective
                    .timeouts
                    .as_ref()
                    .and_then(|t| t.request.as_deref()),
            )?,
            retry: effective.retry.as_ref().map(retry).transpose()?,
            max_request_body_bytes: effective.max_request_body_bytes,
        })
    }

    fn install(output: &Arc<RouteBackendPolicy>, policies: &mut RulePolicies) {
        policies.backend = Some(output.clone());
    }
}

/// Does the policy being resolved target an HTTPRoute or GRPCRoute? (The
/// context names the policy, `BackendPolicy namespace/name`; its targets
/// are read from the snapshot.)
fn targets_a_route(ctx: &PolicyContext<'_>) -> bool {
    let kind = PolicyKind::BackendPolicy;
    let key = ctx
        .policy
        .strip_prefix(kind.as_str())
        .map(str::trim_start)
        .and_then(|k| k.split_once('/'))
        .map(|(ns, name)| ObjectKey::new(ns, name));
    let Some(key) = key else {
        return false;
    };
    ctx.index
        .snapshot
        .policies
        .get(&kind)
        .and_then(|policies| policies.get(&key))
        .and_then(|p| p.spec.get("targetRefs"))
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .any(|t| {
            matches!(
                t.get("kind").and_then(|k| k.as_str()),
                Some("HTTPRoute" | "GRPCRoute")
            )
        })
}

/// Routes may set `timeouts.request`, `retry` and `maxRequestBodyBytes` only.
fn route_level_only(effective: &BackendPolicyRules) -> Result<(), String> {
    let endpoint_level = [
        ("circuitBreaker", effective.circuit_breaker.is_some()),
        ("outlierDetection", effective.outlier_detection.is_some()),
        ("healthCheck", effective.health_check.is_some()),
        ("loadBalancer", effective.load_balancer.is_some()),
        ("connection", effective.connection.is_some()),
        (
            "timeouts.connect",
            effective
                .timeouts
                .as_ref()
                .is_some_and(|t| t.connect.is_some()),
        ),
        (
            "timeouts.idle",
            effective
                .timeouts
                .as_ref()
                .is_some_and(|t| t.idle.is_some()),
        ),
    ];
    if let Some((name, _)) = endpoint_level.iter().find(|(_, set)| *set) {
        return Err(format!(
                "{name} acts on a Service's endpoints: put it in a BackendPolicy that targets the Service (a policy that targets routes may set timeouts.request, retry and maxRequestBodyBytes only)"
            ));
    }
    Ok(())
}

/// Settings of every Service port some BackendPolicy targets, keyed by
/// Service and port number, for `backends::resolve`.
pub(crate) fn service_settings(
    index: &Index<'_>,
) -> HashMap<(ObjectKey, i32), Arc<BackendSettings>> {
    let mut out = HashMap::new();
    let policies = index.snapshot.policies.get(&PolicyKind::BackendPolicy);
    let targeted: HashSet<ObjectKey> = policies
        .into_iter()
        .flatten()
        .flat_map(|(key, p)| {
            p.spec
                .get("targetRefs")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .filter(|t| t.get("kind").and_then(|k| k.as_str()) == Some("Service"))
                .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
                .map(|name| ObjectKey::new(key.namespace.clone(), name))
                .collect::<Vec<_>>()
        })
        .collect();
    if targeted.is_empty() {
        return out;
    }
    let attachments = Attachments::<BackendPolicyCompiler>::new(index);
    // Settings are built from the merged rules of each port; equal merges
    // share one Arc so the data plane can compare them cheaply.
    let mut cache: Vec<(BackendPolicyRules, Arc<BackendSettings>)> = Vec::new();
    for service_key in targeted {
        let Some(service) = index.snapshot.services.get(&service_key) else {
            continue;
        };
        let ports = service.spec.iter().flat_map(|s| s.ports.iter().flatten());
        for port in ports {
            let Some(rules) = attachments.merged_for_service(&service_key, port.name.as_deref())
            else {
                continue;
            };
            let built = match cache.iter().find(|(r, _)| *r == rules) {
                Some((_, s)) => s.clone(),
                None => match settings(&rules) {
                    Ok(s) => {
                        let s = Arc::new(s);
                        cache.push((rules, s.clone()));
                        s
                    }
                    // Unreachable: every policy was checked alone and
                    // sections merge whole. Keep the defaults if not.
                    Err(e) => {
                        tracing::warn!(service = %service_key, error = %e, "BackendPolicy settings could not be built");
                        continue;
                    }
                },
            };
            out.insert((service_key.clone(), port.port), built);
        }
    }
    out
}

/// The whole policy as a backend's settings (defaults for what is unset).
pub(crate) fn settings(rules: &BackendPolicyRules) -> Result<BackendSettings, String> {
    let mut s = BackendSettings::default();
    if let Some(t) = &rules.timeouts {
        if let Some(d) = duration("timeouts.connect", t.connect.as_deref())? {
            s.connect_timeout = d;
        }
        if let Some(d) = duration("timeouts.idle", t.idle.as_deref())? {
            s.idle_timeout = d;
        }
        s.request_timeout = duration("timeouts.request", t.request.as_deref())?;
    }
    s.retry = rules.retry.as_ref().map(retry).transpose()?;
    s.max_request_body_bytes = rules.max_request_body_bytes;
    if let Some(cb) = &rules.circuit_breaker {
        let limit = |name: &str, v: Option<u32>| match v {
            Some(0) => Err(format!(
                "circuitBreaker.{name} must be at least 1 (leave it unset for no limit)"
            )),
            Some(n) => Ok(n),
            None => Ok(u32::MAX),
        };
        s.circuit_breaker = CircuitBreaker {
            max_connections: limit("maxConnections", cb.max_connections)?,
            // Zero pending is meaningful: refuse at once when all
            // connections are busy; so is zero retries.
            max_pending_requests: cb.max_pending_requests.unwrap_or(u32::MAX),
            max_requests: limit("maxRequests", cb.max_requests)?,
            max_retries: cb.max_retries.unwrap_or(u32::MAX),
        };
    }
    s.outlier_detection = rules.outlier_detection.as_ref().map(outlier).transpose()?;
    s.health_check = rules.health_check.as_ref().map(health).transpose()?;
    if let Some(lb) = &rules.load_balancer {
        s.load_balancer = load_balancer(lb)?;
    }
    if let Some(c) = &rules.connection {
        s.http_version = c.http_version.map(|v| match v {
            UpstreamHttpVersion::Http11 => AppProtocol::Http1,
            UpstreamHttpVersion::Http2 => AppProtocol::H2c,
        });
        s.max_idle_per_endpoint = c.max_idle_per_endpoint.map(|n| n as usize);
    }
    Ok(s)
}

/// A Gateway API duration; `None` when unset. Zero is refused: every
/// duration here is a limit or a period, and zero would mean "never" in
/// some places and "always" in others.
fn duration(field: &str, v: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = v else { return Ok(None) };
    let d: gateway_api::Duration = v
        .parse()
        .map_err(|e| format!("{field} {v:?} is not a valid duration (e.g. 500ms, 10s, 1m): {e}"))?;
    let d = Duration::new(d.as_secs(), d.subsec_nanos());
    if d.is_zero() {
        return Err(format!("{field} must be longer than zero"));
    }
    Ok(Some(d))
}

/// Retries after the first attempt, at most: more only multiplies the
/// load on a failing backend.
const MAX_RETRIES: u32 = 10;

fn retry(r: &RetrySpec) -> Result<RetryPolicy, String> {
    let mut p = RetryPolicy::with_defaults();
    if let Some(on) = &r.retry_on {
        p.on = RetryOn::default();
        for c in on {
            match c {
                ApiRetryOn::ConnectFailure => p.on.connect_failure = true,
                ApiRetryOn::Reset => p.on.reset = true,
                ApiRetryOn::ServerError => p.on.server_error = true,
                ApiRetryOn::GatewayError => p.on.gateway_error = true,
            }
        }
    }
    if let Some(codes) = &r.codes {
        if let Some(bad) = codes.iter().find(|c| !(100..=599).contains(*c)) {
            return Err(format!("retry.codes: {bad} is not an HTTP status"));
        }
        p.codes = codes.clone();
    }
    if let Some(n) = r.attempts {
        if n > MAX_RETRIES {
            return Err(format!("retry.attempts {n} is more than {MAX_RETRIES}"));
        }
        p.attempts = n;
    }
    p.per_try_timeout = duration("retry.perTryTimeout", r.per_try_timeout.as_deref())?;
    if let Some(b) = &r.backoff {
        if let Some(base) = duration("retry.backoff.base", b.base.as_deref())? {
            p.backoff_base = base;
            p.backoff_max = base.saturating_mul(10);
        }
        if let Some(max) = duration("retry.backoff.max", b.max.as_deref())? {
            if max < p.backoff_base {
                return Err("retry.backoff.max must not be shorter than retry.backoff.base".into());
            }
            p.backoff_max = max;
        }
    }
    if let Some(b) = &r.budget {
        let mut budget = RetryBudget::default();
        if let Some(pct) = b.percent {
            if pct > 100 {
                return Err(format!("retry.budget.percent {pct} is more than 100"));
            }
            budget.percent = pct;
        }
        if let Some(min) = b.min_retry_concurrency {
            budget.min_retry_concurrency = min;
        }
        p.budget = budget;
    }
    p.retry_non_idempotent = r.retry_non_idempotent.unwrap_or(false);
    for code in r.grpc_status_codes.iter().flatten() {
        p.grpc_status_mask |= 1 << code.number();
    }
    if let Some(n) = r.max_body_bytes {
        p.max_body_bytes = n as usize;
    }
    Ok(p)
}

/// The Gateway API HTTPRoute `rules[].retry` stanza (GEP-1731) on the same
/// machinery: the listed status codes, connection errors (connect
/// failure, reset, per-attempt timeout: the spec says implementations
/// SHOULD retry those once a stanza exists), `attempts` retries after the
/// first try (default 2) and `backoff` as the minimum wait between tries
/// (growing with jitter up to ten times it; default 25 ms). Budget, body
/// replay limit and idempotent-only are the BackendPolicy defaults.
pub(crate) fn http_route_retry(r: &HttpRouteRulesRetry) -> Result<RetryPolicy, String> {
    let mut p = RetryPolicy::with_defaults();
    p.on = RetryOn {
        connect_failure: true,
        reset: true,
        timeout: true,
        ..RetryOn::default()
    };
    if let Some(codes) = &r.codes {
        if let Some(bad) = codes.iter().find(|c| !(400..=599).contains(*c)) {
            return Err(format!(
                "retry.codes: {bad} is not an HTTP error status (400-599)"
            ));
        }
        p.codes = codes.iter().map(|&c| c as u16).collect();
    }
    if let Some(n) = r.attempts {
        p.attempts = match u32::try_from(n) {
            Ok(n) if n <= MAX_RETRIES => n,
            _ => {
                return Err(format!(
                    "retry.attempts {n} is not between 0 and {MAX_RETRIES}"
                ))
            }
        };
    }
    if let Some(b) = &r.backoff {
        let d: gateway_api::Duration = b.parse().map_err(|e| {
            format!("retry.backoff {b:?} is not a valid duration (e.g. 100ms, 1s): {e}")
        })?;
        p.backoff_base = Duration::new(d.as_secs(), d.subsec_nanos());
        p.backoff_max = p.backoff_base.saturating_mul(10);
    }
    Ok(p)
}

fn outlier(o: &OutlierDetectionSpec) -> Result<OutlierDetection, String> {
    let base = duration(
        "outlierDetection.baseEjectionTime",
        o.base_ejection_time.as_deref(),
    )?
    .unwrap_or(Duration::from_secs(30));
    let max = duration(
        "outlierDetection.maxEjectionTime",
        o.max_ejection_time.as_deref(),
    )?
    .unwrap_or(Duration::from_secs(300))
    .max(base);
    let pct = o.max_ejection_percent.unwrap_or(10);
    if pct > 100 {
        return Err(format!(
            "outlierDetection.maxEjectionPercent {pct} is more than 100"
        ));
    }
    let detection = OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
        consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct,
    };
    if detection.consecutive_5xx == 0 && detection.consecutive_gateway_errors == 0 {
        return Err(
            "outlierDetection: consecutive5xx and consecutiveGatewayErrors are both 0: nothing would eject"
                .into(),
        );
    }
    Ok(detection)
}

fn health(h: &HealthCheckSpec) -> Result<HealthCheck, String> {
    let interval =
        duration("healthCheck.interval", h.interval.as_deref())?.unwrap_or(Duration::from_secs(10));
    let timeout =
        duration("healthCheck.timeout", h.timeout.as_deref())?.unwrap_or(Duration::from_secs(1));
    let jitter = duration("healthCheck.jitter", h.jitter.as_deref())?.unwrap_or(interval / 10);
    let threshold = |name: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(format!("healthCheck.{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let kind = match (&h.http, &h.tcp) {
        (Some(_), Some(_)) => return Err("healthCheck: set one of http and tcp, not both".into()),
        (None, None) => return Err("healthCheck: set http or tcp".into()),
        (None, Some(_)) => HealthCheckKind::Tcp,
        (Some(http), None) => {
            let path = http.path.clone().unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/')
                || path
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(format!(
                    "healthCheck.http.path {path:?} must start with / and contain no spaces or control characters"
                ));
            }
            if let Some(host) = &http.host {
                if host.is_empty()
                    || host
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(format!("healthCheck.http.host {host:?} is not a host name"));
                }
            }
            let expected_statuses = match &http.expected_statuses {
                None => vec![(200, 399)],
                Some(list) if list.is_empty() => {
                    return Err("healthCheck.http.expectedStatuses is empty".into())
                }
                Some(list) => list
                    .iter()
                    .map(|s| status_range(s))
                    .collect::<Result<_, _>>()?,
            };
            HealthCheckKind::Http {
                path,
                host: http.host.clone(),
                expected_statuses,
            }
        }
    };
    Ok(HealthCheck {
        interval,
        timeout,
        jitter,
        healthy_threshold: threshold("healthyThreshold", h.healthy_threshold, 2)?,
        unhealthy_threshold: threshold("unhealthyThreshold", h.unhealthy_threshold, 3)?,
        kind,
    })
}

/// `204` or `200-299`.
fn status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!("healthCheck.http.expectedStatuses: {s:?} is not a status or a range like 200-299")
    };
    let code = |v: &str| {
        v.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(bad)
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (code(a)?, code(b)?),
        None => {
            let c = code(s)?;
            (c, c)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn load_balancer(lb: &LoadBalancerSpec) -> Result<LoadBalancer, String> {
    let kind = lb.r#type.unwrap_or(LoadBalancerType::RoundRobin);
    let algorithm = match (kind, &lb.consistent_hash) {
        (LoadBalancerType::ConsistentHash, None) => {
            return Err("loadBalancer.type ConsistentHash needs loadBalancer.consistentHash".into())
        }
        (LoadBalancerType::ConsistentHash, Some(h)) => {
            let mut keys = Vec::new();
            if let Some(name) = &h.header {
                let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    format!("loadBalancer.consistentHash.header {name:?} is not a header name")
                })?;
                keys.push(HashKey::Header(HeaderNameSer(name)));
            }
            if let Some(name) = &h.cookie {
                cookie_name("loadBalancer.consistentHash.cookie", name)?;
                keys.push(HashKey::Cookie(name.clone()));
            }
            if h.source_ip == Some(true) {
                keys.push(HashKey::SourceIp);
            }
            if let Some(name) = &h.query_parameter {
                if name.is_empty() {
                    return Err("loadBalancer.consistentHash.queryParameter is empty".into());
                }
                keys.push(HashKey::QueryParameter(name.clone()));
            }
            if keys.len() != 1 {
                return Err(
                    "loadBalancer.consistentHash: set exactly one of header, cookie, sourceIP, queryParameter"
                        .into(),
                );
            }
            LbAlgorithm::ConsistentHash(keys.remove(0))
        }
        (_, Some(_)) => {
            return Err("loadBalancer.consistentHash is only used with type ConsistentHash".into())
        }
        (LoadBalancerType::RoundRobin, None) => LbAlgorithm::RoundRobin,
        (LoadBalancerType::LeastRequest, None) => LbAlgorithm::LeastRequest,
        (LoadBalancerType::Random, None) => LbAlgorithm::Random,
    };
    let session_cookie = match &lb.session_persistence {
        None => None,
        Some(sp) => {
            let name = sp
                .cookie_name
                .clone()
                .unwrap_or_else(|| "portcullis-session".to_string());
            cookie_name("loadBalancer.sessionPersistence.cookieName", &name)?;
            Some(SessionCookie {
                name,
                ttl: duration("loadBalancer.sessionPersistence.ttl", sp.ttl.as_deref())?,
            })
        }
    };
    Ok(LoadBalancer {
        algorithm,
        session_cookie,
        slow_start_window: duration(
            "loadBalancer.slowStartWindow",
            lb.slow_start_window.as_deref(),
        )?,
    })
}

/// RFC 6265 cookie-name: a token.
fn cookie_name(field: &str, name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(format!("{field} {name:?} is not a valid cookie name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions};
    use crate::file::parse_documents;
    use crate::snapshot::Snapshot;
    use crate::status::StatusKind;
    use portcullis_model::{BackendTarget, RouteTable};

    const BASE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: pc}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  gatewayClassName: pc
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {ports: [{name: web, port: 80}, {name: admin, port: 81}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{name: gw}]
  rules:
  - name: web
    matches: [{path: {type: PathPrefix, value: /web}}]
    backendRefs: [{name: svc, port: 80}]
  - name: admin
    backendRefs: [{name: svc, port: 81}]
";

    fn compiled(policies: &str) -> crate::compile::Compiled {
        let mut snapshot = Snapshot::default();
        for o in parse_documents(&format!("{BASE}{policies}")).expect("test YAML") {
            snapshot.insert(o);
        }
        compile(&snapshot, &CompileOptions::default())
    }

    /// Settings of each backend port of the table, by backend name.
    fn backends(table: &RouteTable) -> HashMap<String, Arc<BackendSettings>> {
        let mut out = HashMap::new();
        for route in table
            .ports
            .iter()
            .flat_map(|p| &p.virtual_hosts)
            .flat_map(|v| &v.routes)
        {
            for b in &route.rule.backends {
                if let BackendTarget::Service(b) = &b.target {
                    out.insert(b.name.clone(), b.settings.clone());
                }
            }
        }
        out
    }

    #[test]
    fn service_policies_reach_the_backends_of_every_route_port_by_port() {
        let c = compiled(
            "---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: all-ports, namespace: app}
spec:
  targetRefs: [{group: '', kind: Service, name: svc}]
  loadBalancer: {type: Random}
  timeouts: {connect: 2s}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: admin-port, namespace: app}
spec:
  targetRefs: [{group: '', kind: Service, name: svc, sectionName: admin}]
  defaults:
    loadBalancer: {type: LeastRequest}
",
        );
        let b = backends(&c.table);
        let web = &b["app/svc:80"];
        let admin = &b["app/svc:81"];
        assert_eq!(web.load_balancer.algorithm, LbAlgorithm::Random);
        // The port-level policy is more specific: its load balancer wins,
        // the Service-level timeout fills in.
        assert_eq!(admin.load_balancer.algorithm, LbAlgorithm::LeastRequest);
        assert_eq!(admin.connect_timeout, Duration::from_secs(2));
        let status = c
            .status(
                StatusKind::Policy(PolicyKind::BackendPolicy),
                Some("app"),
                "all-ports",
            )
            .expect("status");
        assert!(status.problems.is_empty(), "{:?}", status.problems);
    }

    #[test]
    fn invalid_policies_are_reported_and_leave_defaults_in_place() {
        let c = compiled(
            "---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: broken, namespace: app}
spec:
  targetRefs: [{group: '', kind: Service, name: svc}]
  retry: {codes: [42]}
",
        );
        let b = backends(&c.table);
        assert_eq!(*b["app/svc:80"], BackendSettings::default());
        let status = c
            .status(
                StatusKind::Policy(PolicyKind::BackendPolicy),
                Some("app"),
                "broken",
            )
            .expect("status");
        assert!(
            status.problems.iter().any(|p| p.contains("retry.codes")),
            "{:?}",
            status.problems
        );
    }

    fn rules(json: serde_json::Value) -> BackendPolicyRules {
        serde_json::from_value(json).expect("rules decode")
    }

    #[test]
    fn defaults_fill_what_is_unset() {
        let s = settings(&rules(serde_json::json!({
            "retry": {},
            "outlierDetection": {},
            "healthCheck": {"http": {}},
            "loadBalancer": {"type": "LeastRequest"}
        })))
        .expect("valid");
        let r = s.retry.expect("retry");
        assert_eq!(r.attempts, 2);
        assert!(r.on.connect_failure && r.on.gateway_error && !r.on.server_error);
        assert_eq!(s.outlier_detection.expect("outlier").consecutive_5xx, 5);
        let h = s.health_check.expect("health");
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(
            h.kind,
            HealthCheckKind::Http {
                path: "/".into(),
                host: None,
                expected_statuses: vec![(200, 399)]
            }
        );
        assert_eq!(s.load_balancer.algorithm, LbAlgorithm::LeastRequest);
        assert_eq!(s.circuit_breaker, CircuitBreaker::default());
    }

    #[test]
    fn mistakes_get_messages_that_name_the_field() {
        let cases = [
            (
                serde_json::json!({"timeouts": {"connect": "soon"}}),
                "timeouts.connect",
            ),
            (serde_json::json!({"retry": {"codes": [42]}}), "retry.codes"),
            (
                serde_json::json!({"retry": {"backoff": {"base": "1s", "max": "10ms"}}}),
                "retry.backoff.max",
            ),
            (
                serde_json::json!({"circuitBreaker": {"maxRequests": 0}}),
                "circuitBreaker.maxRequests",
            ),
            (serde_json::json!({"healthCheck": {}}), "healthCheck"),
            (
                serde_json::json!({"healthCheck": {"http": {"expectedStatuses": ["300-200"]}}}),
                "expectedStatuses",
            ),
            (
                serde_json::json!({"loadBalancer": {"type": "ConsistentHash"}}),
                "consistentHash",
            ),
            (
                serde_json::json!({"loadBalancer": {"type": "ConsistentHash", "consistentHash": {"header": "x", "sourceIP": true}}}),
                "exactly one",
            ),
            (
                serde_json::json!({"loadBalancer": {"sessionPersistence": {"cookieName": "a b"}}}),
                "cookieName",
            ),
            (
                serde_json::json!({"outlierDetection": {"maxEjectionPercent": 150}}),
                "maxEjectionPercent",
            ),
        ];
        for (json, field) in cases {
            let e = settings(&rules(json.clone())).expect_err(&json.to_string());
            assert!(e.contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn routes_take_request_level_parts_and_refuse_endpoint_level_ones() {
        let ok = BackendPolicyCompiler::build(&rules(serde_json::json!({
            "timeouts": {"request": "3s"},
            "retry": {"attempts": 4, "retryOn": ["5xx"]}
        })))
        .expect("valid");
        assert_eq!(ok.request_timeout, Some(Duration::from_secs(3)));
        assert_eq!(ok.retry.expect("retry").attempts, 4);
        let e = BackendPolicyCompiler::build(&rules(serde_json::json!({
            "loadBalancer": {"type": "Random"}
        })))
        .expect_err("refused");
        assert!(e.contains("targets the Service"), "{e}");
    }

    #[test]
    fn consistent_hash_keys() {
        let s = settings(&rules(serde_json::json!({
            "loadBalancer": {"type": "ConsistentHash", "consistentHash": {"header": "X-User"},
                             "sessionPersistence": {"ttl": "1h"}}
        })))
        .expect("valid");
        assert_eq!(
            s.load_balancer.algorithm,
            LbAlgorithm::ConsistentHash(HashKey::Header(HeaderNameSer(
                http::HeaderName::from_static("x-user")
            )))
        );
        let cookie = s.load_balancer.session_cookie.expect("cookie");
        assert_eq!(cookie.name, "portcullis-session");
        assert_eq!(cookie.ttl, Some(Duration::from_secs(3600)));
    }
}

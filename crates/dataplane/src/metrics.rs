//! Prometheus metrics of the data plane (`prometheus-client`), served by the
//! admin listener at `/metrics`.
//!
//! One process-wide [`Metrics`] ([`global()`]) owns the registry and every
//! metric family. Label values come from configuration only (listener port,
//! route rule, backend Service, policy names) or from small fixed sets
//! (method class, status class, outcome enums) — never from request data, so
//! the number of series is bounded by the configuration.
//!
//! The request path does not build labels per request: [`TableSeries`] is
//! derived once per routing table (ports x route rules x backends) and holds
//! the label values as `Arc<str>`; the counter and histogram of each
//! (method class, status class) slot are resolved once and then only
//! incremented.
//!
//! Policy stages (auth, rate limiting, retries, circuit breaking, outlier
//! detection) record through the `record_*` methods below, e.g.
//! `metrics::global().record_auth(&policy, "jwt", AuthResult::Denied, "expired")`.
//! Pass names that come from configuration (precompute the `Arc<str>` when
//! the policy is compiled) and `&'static str` reasons.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use portcullis_model::{Backend, BackendTarget, RouteTable, Rule};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Request latency buckets, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// The HTTP method, reduced to a fixed set so a client cannot create series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum MethodClass {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    PATCH,
    OPTIONS,
    /// CONNECT, TRACE and extension methods.
    OTHER,
}

impl MethodClass {
    const ALL: usize = 8;

    pub fn of(method: &Method) -> MethodClass {
        match *method {
            Method::GET => MethodClass::GET,
            Method::HEAD => MethodClass::HEAD,
            Method::POST => MethodClass::POST,
            Method::PUT => MethodClass::PUT,
            Method::DELETE => MethodClass::DELETE,
            Method::PATCH => MethodClass::PATCH,
            Method::OPTIONS => MethodClass::OPTIONS,
            _ => MethodClass::OTHER,
        }
    }
}

/// `1xx` .. `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

impl StatusClass {
    const ALL: usize = 5;

    pub fn of(status: StatusCode) -> StatusClass {
        // `StatusCode` is always 100..=999; 6xx..9xx are folded into 5xx.
        StatusClass((status.as_u16() / 100).clamp(1, 5) as u8)
    }

    fn index(self) -> usize {
        usize::from(self.0 - 1)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        const NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        EncodeLabelValue::encode(&NAMES[self.index()], encoder)
    }
}

/// Labels of `portcullis_requests_total` and
/// `portcullis_request_duration_seconds`. `route` and `backend` are empty
/// when the request ended before a route matched or a backend was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub port: u16,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub method: MethodClass,
    pub status: StatusClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PortLabels {
    pub port: u16,
}

/// Why an upstream attempt failed before a response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamError {
    /// TCP connection refused, unreachable or timed out.
    connect,
    /// TLS handshake with the backend failed.
    tls,
    /// No response headers within the backend timeout.
    timeout,
    /// The connection broke or the backend spoke invalid HTTP.
    protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub backend: Arc<str>,
    pub error: UpstreamError,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: Arc<str>,
}

/// Outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RateLimitDecision {
    allowed,
    limited,
    /// Over the limit in shadow (report-only) mode: let through.
    shadow,
    /// The counter store failed and the policy let the request through.
    fail_open,
    /// The counter store failed and the policy refused the request.
    fail_closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// The limit's name (limits are merged by name across the policies
    /// of a rule, so the name is what identifies one).
    pub limit: Arc<str>,
    pub decision: RateLimitDecision,
}

/// Outcome of authentication / authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AuthResult {
    allowed,
    /// No or invalid credentials (401).
    unauthenticated,
    /// Valid credentials, not permitted (403).
    denied,
    /// The auth machinery itself failed (e.g. JWKS unreachable).
    error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthLabels {
    /// The AuthPolicy, `namespace/name`.
    pub policy: Arc<str>,
    /// Allowed requests: the mechanism that authenticated them (`jwt`,
    /// `api_key`, `basic`) or `anonymous`; refusals: `any` (a refusal may
    /// come from no credential at all).
    pub mechanism: &'static str,
    pub result: AuthResult,
    /// `ok`; the RFC 6750 error of a refused bearer token
    /// (`invalid_token`, ...), `missing_or_invalid_credentials`,
    /// `forbidden` or `unavailable`.
    pub reason: &'static str,
}

/// A request or connection limit of [`crate::limits::Limits`] that was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Limit {
    /// Request head over the byte limit (431).
    header_size,
    /// Too many header fields (431).
    header_count,
    /// Request target over the byte limit (414).
    uri_length,
    /// Request body over the limit (413).
    body_size,
    /// HTTP/1 request head not complete within the header timeout.
    header_timeout,
    /// A connection closed for being idle.
    idle_timeout,
    /// A connection refused: the listener's connection limit was reached.
    max_connections,
    /// A connection closed after its last allowed request.
    max_requests,
    /// An HTTP/2 connection closed for abusive frames (rapid reset,
    /// CONTINUATION flood, too many protocol errors): GOAWAY.
    h2_abuse,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::header_size => "header_size",
            Limit::header_count => "header_count",
            Limit::uri_length => "uri_length",
            Limit::body_size => "body_size",
            Limit::header_timeout => "header_timeout",
            Limit::idle_timeout => "idle_timeout",
            Limit::max_connections => "max_connections",
            Limit::max_requests => "max_requests",
            Limit::h2_abuse => "h2_abuse",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    pub port: u16,
    pub limit: Limit,
}

/// What the response cache of a RouteFilter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheResult {
    /// Served from a fresh entry (also after waiting for a coalesced
    /// miss).
    hit,
    /// Fetched from the backend.
    miss,
    /// A stale entry confirmed by the backend (304).
    revalidated,
    /// A stale entry served because revalidation failed.
    stale,
    /// Not cacheable (method, anonymous request to an identity-keyed
    /// cache).
    bypass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CacheLabels {
    /// The RouteFilter, `namespace/name`.
    pub filter: Arc<str>,
    pub result: CacheResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CacheFilterLabels {
    pub filter: Arc<str>,
}

/// What threat protection did about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ThreatDecision {
    /// The request was refused.
    blocked,
    /// Report mode: logged and counted, the request went on.
    reported,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ThreatLabels {
    /// The RouteFilter, `namespace/name`.
    pub filter: Arc<str>,
    /// `content_type`, `body`, `json`, `xml`, `openapi` or `injection`.
    pub check: &'static str,
    /// The rule id or limit name (from the configuration, never from
    /// the request).
    pub rule: Arc<str>,
    pub decision: ThreatDecision,
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// Every data-plane metric. Cloning a family or a series handle is cheap
/// (they are `Arc`s inside).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram, LatencyHistogram>,
    upstream_duration: Family<BackendLabels, Histogram, LatencyHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    active_connections: Family<PortLabels, Gauge>,
    connections: Family<PortLabels, Counter>,
    config_generation: Gauge,
    config_last_reload: Gauge<f64, AtomicU64>,
    access_log_dropped: Counter,
    spans_exported: Counter,
    spans_dropped: Counter,
    retries: Family<BackendLabels, Counter>,
    circuit_rejections: Family<BackendLabels, Counter>,
    outlier_ejections: Family<BackendLabels, Counter>,
    rate_limit_decisions: Family<RateLimitLabels, Counter>,
    auth_results: Family<AuthLabels, Counter>,
    limits: Family<LimitLabels, Counter>,
    threat_decisions: Family<ThreatLabels, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    cache_evictions: Family<CacheFilterLabels, Counter>,
    cache_bytes: Family<CacheFilterLabels, Gauge>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide data-plane metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(LatencyHistogram),
            upstream_duration: Family::new_with_constructor(LatencyHistogram),
            upstream_errors: Family::default(),
            active_connections: Family::default(),
            connections: Family::default(),
            config_generation: Gauge::default(),
            config_last_reload: Gauge::default(),
            access_log_dropped: Counter::default(),
            spans_exported: Counter::default(),
            spans_dropped: Counter::default(),
            retries: Family::default(),
            circuit_rejections: Family::default(),
            threat_decisions: Family::default(),
            outlier_ejections: Family::default(),
            rate_limit_decisions: Family::default(),
            auth_results: Family::default(),
            limits: Family::default(),
            cache_requests: Family::default(),
            cache_evictions: Family::default(),
            cache_bytes: Family::default(),
        };
        m.registered()
    }

    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        let p = r.sub_registry_with_prefix("portcullis");
        p.register(
            "requests",
            "Requests served, by listener port, route rule, backend, method class and status class",
            self.requests.clone(),
        );
        p.register_with_unit(
            "request_duration",
            "Time from receiving the request to the end of the response body",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        p.register_with_unit(
            "upstream_duration",
            "Time from choosing a backend endpoint to its response headers",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        p.register(
            "upstream_errors",
            "Upstream attempts that failed before a response (connect, tls, timeout, protocol)",
            self.upstream_errors.clone(),
        );
        p.register(
            "active_connections",
            "Client connections currently open, by listener port",
            self.active_connections.clone(),
        );
        p.register(
            "connections",
            "Client connections accepted, by listener port",
            self.connections.clone(),
        );
        p.register(
            "config_generation",
            "Generation of the routing table being served",
            self.config_generation.clone(),
        );
        p.register(
            "config_last_reload_timestamp_seconds",
            "Unix time at which the routing table being served was swapped in",
            self.config_last_reload.clone(),
        );
        p.register(
            "access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            self.access_log_dropped.clone(),
        );
        p.register(
            "trace_spans_exported",
            "Spans delivered to the OTLP collector",
            self.spans_exported.clone(),
        );
        p.register(
            "trace_spans_dropped",
            "Spans dropped: exporter queue full or collector unreachable",
            self.spans_dropped.clone(),
        );
        p.register(
            "upstream_retries",
            "Retried upstream attempts, by backend",
            self.retries.clone(),
        );
        p.register(
            "circuit_breaker_rejections",
            "Requests refused by a backend's circuit breaker",
            self.circuit_rejections.clone(),
        );
        p.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection, by backend",
            self.outlier_ejections.clone(),
        );
        p.register(
            "rate_limit_decisions",
            "Rate-limit checks, by limit and decision",
            self.rate_limit_decisions.clone(),
        );
        p.register(
            "auth_results",
            "Authentication and authorization outcomes, by policy, mechanism, result and reason",
            self.auth_results.clone(),
        );
        p.register(
            "limit_exceeded",
            "Requests refused and connections closed or refused by a limit, by listener port and limit",
            self.limits.clone(),
        );
        p.register(
            "cache_requests",
            "Requests seen by RouteFilter response caches, by filter and result (hit, miss, revalidated, stale, bypass)",
            self.cache_requests.clone(),
        );
        p.register(
            "cache_evictions",
            "Entries evicted from RouteFilter response caches to stay within their memory bounds",
            self.cache_evictions.clone(),
        );
        p.register_with_unit(
            "cache",
            "Memory held by RouteFilter response cache entries (keys, headers, bodies)",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        p.register(
            "threat_decisions",
            "Threat-protection findings, by RouteFilter, check, rule and decision (blocked or reported)",
            self.threat_decisions.clone(),
        );
        self
    }

    /// The registry, for encoding (`prometheus_client::encoding::text`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    // ----- recorded by the data plane itself -----

    /// A new routing table is being served.
    pub fn record_reload(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.config_last_reload.set(now.as_secs_f64());
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection_opened(&self, port: u16) -> ConnectionGuard {
        let labels = PortLabels { port };
        self.connections.get_or_create(&labels).inc();
        let gauge = self.active_connections.get_or_create_owned(&labels);
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// A request or connection ran into `limit` on `port`.
    pub fn record_limit(&self, port: u16, limit: Limit) {
        self.limits
            .get_or_create(&LimitLabels { port, limit })
            .inc();
    }

    pub fn record_upstream_error(&self, backend: &Arc<str>, error: UpstreamError) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                backend: backend.clone(),
                error,
            })
            .inc();
    }

    pub fn record_access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub fn record_spans_exported(&self, n: u64) {
        self.spans_exported.inc_by(n);
    }

    pub fn record_spans_dropped(&self, n: u64) {
        self.spans_dropped.inc_by(n);
    }

    // ----- recorded by policy stages -----

    /// One retried attempt against `backend` (the first attempt is not a
    /// retry).
    pub fn record_retry(&self, backend: &Arc<str>) {
        self.backend_counter(&self.retries, backend);
    }

    /// A request refused by `backend`'s circuit breaker.
    pub fn record_circuit_rejection(&self, backend: &Arc<str>) {
        self.backend_counter(&self.circuit_rejections, backend);
    }

    /// An endpoint of `backend` ejected by outlier detection.
    pub fn record_outlier_ejection(&self, backend: &Arc<str>) {
        self.backend_counter(&self.outlier_ejections, backend);
    }

    pub fn record_rate_limit(&self, limit: &Arc<str>, decision: RateLimitDecision) {
        self.rate_limit_decisions
            .get_or_create(&RateLimitLabels {
                limit: limit.clone(),
                decision,
            })
            .inc();
    }

    pub fn record_auth(
        &self,
        policy: &Arc<str>,
        mechanism: &'static str,
        result: AuthResult,
        reason: &'static str,
    ) {
        self.auth_results
            .get_or_create(&AuthLabels {
                policy: policy.clone(),
                mechanism,
                result,
                reason,
            })
            .inc();
    }

    /// The per-filter cache series, resolved once per filter so that the
    /// request path only increments.
    pub fn cache_series(&self, filter: &Arc<str>) -> CacheSeries {
        let result = |result| {
            self.cache_requests.get_or_create_owned(&CacheLabels {
                filter: filter.clone(),
                result,
            })
        };
        let labels = CacheFilterLabels {
            filter: filter.clone(),
        };
        CacheSeries {
            hit: result(CacheResult::hit),
            miss: result(CacheResult::miss),
            revalidated: result(CacheResult::revalidated),
            stale: result(CacheResult::stale),
            bypass: result(CacheResult::bypass),
            evictions: self.cache_evictions.get_or_create_owned(&labels),
            bytes: self.cache_bytes.get_or_create_owned(&labels),
        }
    }

    /// A threat-protection finding. Called only for findings (never per
    /// clean request), so building the labels here costs nothing on the
    /// common path.
    pub fn record_threat(
        &self,
        filter: &str,
        check: &'static str,
        rule: &str,
        decision: ThreatDecision,
    ) {
        self.threat_decisions
            .get_or_create(&ThreatLabels {
                filter: filter.into(),
                check,
                rule: rule.into(),
                decision,
            })
            .inc();
    }

    fn backend_counter(&self, family: &Family<BackendLabels, Counter>, backend: &Arc<str>) {
        family
            .get_or_create(&BackendLabels {
                backend: backend.clone(),
            })
            .inc();
    }

    /// Forgets the request series of routes that `previous` served and
    /// `next` does not, so that label sets follow the configuration instead
    /// of growing with its history.
    fn forget_removed_routes(&self, previous: &TableSeries, next: &TableSeries) {
        let gone: Vec<&Arc<str>> = previous
            .route_names
            .iter()
            .filter(|name| !next.route_names.contains(*name))
            .collect();
        if gone.is_empty() {
            return;
        }
        let Ok(mut index) = SERIES_INDEX.lock() else {
            return;
        };
        index.retain(|labels| {
            let stale = gone.iter().any(|g| **g == labels.route);
            if stale {
                self.requests.remove(labels);
                self.request_duration.remove(labels);
            }
            !stale
        });
    }
}

/// Every request label set created, so that the series of removed routes
/// can be dropped (`Family` cannot list its keys). Touched only when a
/// series is first created and on reloads.
static SERIES_INDEX: LazyLock<std::sync::Mutex<Vec<RequestLabels>>> =
    LazyLock::new(|| std::sync::Mutex::new(Vec::new()));

fn index_series(labels: &RequestLabels) {
    if let Ok(mut index) = SERIES_INDEX.lock() {
        index.push(labels.clone());
    }
}

/// Decrements `portcullis_active_connections` when the connection ends.
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The request series of one (port, route rule, backend), with the counter
/// and histogram of each (method class, status class) resolved on first use.
pub struct RequestSeries {
    port: u16,
    route: Arc<str>,
    backend: Arc<str>,
    /// Allocated on the first request: with thousands of routes most
    /// series of a table may never see one.
    slots: OnceLock<Box<Slots>>,
    upstream: OnceLock<Histogram>,
}

type Slots = [[OnceLock<(Counter, Histogram)>; StatusClass::ALL]; MethodClass::ALL];

impl RequestSeries {
    fn new(port: u16, route: Arc<str>, backend: Arc<str>) -> RequestSeries {
        RequestSeries {
            port,
            route,
            backend,
            slots: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }

    pub fn backend(&self) -> &Arc<str> {
        &self.backend
    }

    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// Time from choosing an endpoint of this backend to its response
    /// headers.
    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream
            .get_or_init(|| {
                global()
                    .upstream_duration
                    .get_or_create_owned(&BackendLabels {
                        backend: self.backend.clone(),
                    })
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one finished request and its duration.
    pub fn record(&self, method: MethodClass, status: StatusClass, elapsed: Duration) {
        let slots = self.slots.get_or_init(Box::default);
        let (count, duration) = slots[method as usize][status.index()].get_or_init(|| {
            let labels = RequestLabels {
                port: self.port,
                route: self.route.clone(),
                backend: self.backend.clone(),
                method,
                status,
            };
            let m = global();
            let pair = (
                m.requests.get_or_create_owned(&labels),
                m.request_duration.get_or_create_owned(&labels),
            );
            index_series(&labels);
            pair
        });
        count.inc();
        duration.observe(elapsed.as_secs_f64());
    }
}

/// The request series of one routing table, derived once when the table is
/// swapped in. Looked up by the addresses of the table's own `Rule` and
/// `Backend` allocations, which live as long as the table does.
#[derive(Default)]
pub struct TableSeries {
    /// Per port: requests that ended before a route matched.
    unrouted: HashMap<u16, Arc<RequestSeries>>,
    rules: HashMap<(u16, usize), RuleSeries>,
    route_names: std::collections::HashSet<Arc<str>>,
}

struct RuleSeries {
    /// Requests that matched the rule but reached no backend (redirects,
    /// filters answering, invalid backends, policy refusals).
    no_backend: Arc<RequestSeries>,
    /// By the address of the `Backend`.
    backends: Vec<(usize, Arc<RequestSeries>)>,
}

/// The metrics label of a route rule: `httproute/ns/name/rule/0`, or with
/// the rule's name when it has one.
pub fn route_label(rule: &Rule) -> String {
    match &rule.id.rule_name {
        Some(name) => {
            let kind = match rule.id.kind {
                portcullis_model::RouteKind::Http => "httproute",
                portcullis_model::RouteKind::Grpc => "grpcroute",
                portcullis_model::RouteKind::Tls => "tlsroute",
            };
            format!("{kind}/{}/{}/{name}", rule.id.namespace, rule.id.name)
        }
        None => rule.id.to_string(),
    }
}

impl TableSeries {
    pub fn new(table: &RouteTable) -> TableSeries {
        let empty: Arc<str> = Arc::from("");
        let mut series = TableSeries::default();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut intern = |s: String| -> Arc<str> {
            names
                .entry(s)
                .or_insert_with_key(|k| Arc::from(k.as_str()))
                .clone()
        };
        for port in &table.ports {
            series.unrouted.insert(
                port.port,
                Arc::new(RequestSeries::new(port.port, empty.clone(), empty.clone())),
            );
            for vhost in &port.virtual_hosts {
                for route in &vhost.routes {
                    let key = (port.port, Arc::as_ptr(&route.rule) as usize);
                    if series.rules.contains_key(&key) {
                        continue;
                    }
                    let route_name = intern(route_label(&route.rule));
                    series.route_names.insert(route_name.clone());
                    let mut backends = Vec::new();
                    for wb in &route.rule.backends {
                        if let BackendTarget::Service(backend) = &wb.target {
                            let ptr = Arc::as_ptr(backend) as usize;
                            if backends.iter().any(|(p, _)| *p == ptr) {
                                continue;
                            }
                            let name = intern(backend.name.clone());
                            backends.push((
                                ptr,
                                Arc::new(RequestSeries::new(port.port, route_name.clone(), name)),
                            ));
                        }
                    }
                    series.rules.insert(
                        key,
                        RuleSeries {
                            no_backend: Arc::new(RequestSeries::new(
                                port.port,
                                route_name,
                                empty.clone(),
                            )),
                            backends,
                        },
                    );
                }
            }
        }
        series
    }

    /// The series of a request on `port` that matched `rule` (if any) and
    /// was sent to `backend` (if any). `None` when the rule or backend is
    /// not part of this table (the table was swapped while the request
    /// ran): see [`slow_series`].
    pub fn lookup(
        &self,
        port: u16,
        rule: Option<&Arc<Rule>>,
        backend: Option<&Arc<Backend>>,
    ) -> Option<Arc<RequestSeries>> {
        let Some(rule) = rule else {
            return self.unrouted.get(&port).cloned();
        };
        let rule_series = self.rules.get(&(port, Arc::as_ptr(rule) as usize))?;
        match backend {
            None => Some(rule_series.no_backend.clone()),
            Some(b) => {
                let ptr = Arc::as_ptr(b) as usize;
                rule_series
                    .backends
                    .iter()
                    .find(|(p, _)| *p == ptr)
                    .map(|(_, s)| s.clone())
            }
        }
    }

    /// Called when this table replaces `previous`: records the reload and
    /// drops the series of routes that are gone.
    pub fn activate(&self, generation: u64, previous: Option<&TableSeries>) {
        let m = global();
        m.record_reload(generation);
        if let Some(previous) = previous {
            m.forget_removed_routes(previous, self);
        }
    }
}

/// Builds the series of a request whose rule or backend is not in the
/// current table (it started on an older one). Allocates; happens only for
/// requests that straddle a reload.
pub fn slow_series(
    port: u16,
    rule: Option<&Arc<Rule>>,
    backend: Option<&Arc<Backend>>,
) -> RequestSeries {
    let route: Arc<str> = rule.map_or_else(|| Arc::from(""), |r| Arc::from(route_label(r)));
    let backend: Arc<str> = backend.map_or_else(|| Arc::from(""), |b| Arc::from(b.name.as_str()));
    RequestSeries::new(port, route, backend)
}

/// The text exposition of `registries`, in order (OpenMetrics text format).
pub fn encode(registries: &[&Registry]) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    for registry in registries {
        prometheus_client::encoding::text::encode_registry(&mut out, registry)?;
    }
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_method_classes_are_bounded() {
        assert_eq!(StatusClass::of(StatusCode::OK).index(), 1);
        assert_eq!(StatusClass::of(StatusCode::NOT_FOUND).index(), 3);
        assert_eq!(
            StatusClass::of(StatusCode::from_u16(999).unwrap()).index(),
            4
        );
        assert_eq!(
            MethodClass::of(&Method::from_bytes(b"BREW").unwrap()),
            MethodClass::OTHER
        );
    }

    #[test]
    fn series_are_encoded_with_their_labels() {
        let s = RequestSeries::new(
            8080,
            Arc::from("httproute/ns/r/rule/0"),
            Arc::from("ns/svc:80"),
        );
        s.record(
            MethodClass::GET,
            StatusClass::of(StatusCode::OK),
            Duration::from_millis(3),
        );
        let text = encode(&[global().registry()]).unwrap();
        assert!(
            text.contains(r#"portcullis_requests_total{port="8080",route="httproute/ns/r/rule/0",backend="ns/svc:80",method="GET",status="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains("portcullis_request_duration_seconds_bucket"));
    }
}

/// Counters and gauge of one RouteFilter cache (see
/// [`Metrics::cache_series`]).
#[derive(Clone)]
pub struct CacheSeries {
    pub hit: Counter,
    pub miss: Counter,
    pub revalidated: Counter,
    pub stale: Counter,
    pub bypass: Counter,
    pub evictions: Counter,
    pub bytes: Gauge,
}

impl CacheSeries {
    pub fn record(&self, result: CacheResult) {
        match result {
            CacheResult::hit => &self.hit,
            CacheResult::miss => &self.miss,
            CacheResult::revalidated => &self.revalidated,
            CacheResult::stale => &self.stale,
            CacheResult::bypass => &self.bypass,
        }
        .inc();
    }
}

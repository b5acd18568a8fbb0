//! Rate limiting: the stage that runs right after route lookup (and after
//! authentication, whose [`Identity`] keys consumer and claim counters).
//!
//! - [`window`]: the sliding-window-counter math (shared with the Redis
//!   script).
//! - [`local`]: per-replica counters, sharded and memory bounded.
//! - [`global`] + [`redis`]: counters in Redis, with a local fast path.
//!
//! [`Limiters`] is built once per table and keeps counters of unchanged
//! limits (same `counter_id`, same scope) from the previous table, so a
//! configuration reload neither resets a client's quota nor reconnects to
//! Redis.

pub mod global;
pub mod local;
pub mod redis;
pub mod window;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Response, StatusCode};
use portcullis_model::ratelimit::{
    rate_item_name, FailureMode, GlobalStore, HeaderStyle, KeyPart, Limit, RateLimitConfig,
    RedisTls, Throttle,
};
use portcullis_model::{RouteTable, Rule};
use serde_json::Value as Json;

use crate::body::Body;
use crate::identity::Identity;
use crate::metrics::RateLimitDecision;
use global::{GlobalCounters, GlobalOutcome};
use local::LocalCounters;
use redis::RedisClient;
use window::Verdict;

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What a limit decided, for the rate that matters most: the one that
/// rejected with the longest wait, or else the one with the least room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index of the reported rate in the limit's `rates`.
    pub rate: usize,
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the reported rate's window resets (admitted) or
    /// until the request would be admitted (rejected).
    pub reset_ms: u64,
    /// 0 when admitted.
    pub retry_after_ms: u64,
}

impl Decision {
    fn unlimited() -> Decision {
        Decision {
            rate: 0,
            limit: u64::MAX,
            remaining: u64::MAX,
            reset_ms: 0,
            retry_after_ms: 0,
        }
    }

    pub fn admit(rate: usize, limit: u64, remaining: u64, reset_ms: u64) -> Decision {
        Decision {
            rate,
            limit,
            remaining,
            reset_ms,
            retry_after_ms: 0,
        }
    }

    pub fn reject(rate: usize, limit: u64, remaining: u64, retry_after_ms: u64) -> Decision {
        Decision {
            rate,
            limit,
            remaining,
            reset_ms: retry_after_ms,
            retry_after_ms: retry_after_ms.max(1),
        }
    }

    pub fn admitted(&self) -> bool {
        self.retry_after_ms == 0
    }

    /// Folds in one rate's verdict.
    fn combine(&mut self, rate: usize, verdict: Verdict, limit: u64) {
        let candidate = if verdict.admitted() {
            Decision::admit(rate, limit, verdict.remaining, verdict.window_left_ms)
        } else {
            Decision::reject(rate, limit, verdict.remaining, verdict.retry_after_ms)
        };
        let replace = match (self.admitted(), candidate.admitted()) {
            (true, false) => true,
            (false, false) => candidate.retry_after_ms > self.retry_after_ms,
            (true, true) => candidate.remaining < self.remaining,
            (false, true) => false,
        };
        if replace {
            *self = candidate;
        }
    }
}

/// What the limits read from a request.
pub struct RequestInfo<'a> {
    pub client_ip: IpAddr,
    pub method: &'a Method,
    /// Normalized path.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// Set by authentication; `None` for anonymous requests.
    pub identity: Option<&'a Identity>,
}

/// Milliseconds on a process-wide monotonic clock (local windows are
/// aligned to it).
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Per-process random seed: counter keys are hashed so that no client can
/// predict (and collide with) another client's counter.
fn key_seed() -> &'static std::collections::hash_map::RandomState {
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    SEED.get_or_init(Default::default)
}

/// The counters of one limit, kept across tables while unchanged.
pub enum Counters {
    Local(LocalCounters),
    Global(GlobalCounters),
}

/// One limit of one rule (or of every rule, for shared limits), ready to
/// count.
pub struct LimitState {
    limit: Arc<Limit>,
    counters: Arc<Counters>,
    client: Option<Arc<RedisClient>>,
    store: Option<Arc<GlobalStore>>,
    /// Per rate: its name in `RateLimit` headers.
    item_names: Box<[String]>,
    /// The limit's name as a metrics label, made once per table.
    metric_label: Arc<str>,
    queued: AtomicU32,
    /// Requests over the limit admitted because of shadow mode, and admitted
    /// or rejected because Redis was unavailable.
    shadow_over: AtomicU64,
    unavailable: AtomicU64,
    last_log_ms: AtomicU64,
}

type ConnKey = (
    String,
    u16,
    u32,
    Option<String>,
    Option<String>,
    Option<RedisTls>,
);

fn conn_key(store: &GlobalStore) -> ConnKey {
    (
        store.host.clone(),
        store.port,
        store.db,
        store.username.clone(),
        store.password.clone(),
        store.tls.clone(),
    )
}

/// Every limit of a table, by (rule, limit) identity.
#[derive(Default)]
pub struct Limiters {
    states: HashMap<(usize, usize), Arc<LimitState>>,
    counters: HashMap<String, Arc<Counters>>,
    clients: HashMap<ConnKey, Arc<RedisClient>>,
}

impl Limiters {
    pub fn for_table(table: &RouteTable, previous: Option<&Limiters>) -> Limiters {
        let mut out = Limiters::default();
        for port in &table.ports {
            for vhost in &port.virtual_hosts {
                for route in &vhost.routes {
                    if let Some(config) = &route.rule.policies.rate_limit {
                        for limit in &config.limits {
                            out.add(&route.rule, config, limit, previous);
                        }
                    }
                }
            }
        }
        out
    }

    fn add(
        &mut self,
        rule: &Arc<Rule>,
        config: &RateLimitConfig,
        limit: &Arc<Limit>,
        previous: Option<&Limiters>,
    ) {
        let id = identity(rule, limit);
        if self.states.contains_key(&id) {
            return;
        }
        // Shared limits count for every route carrying them; the others
        // per route (all rules of a route share its counter; a policy on
        // one rule only reaches that rule anyway).
        let scope = if limit.shared {
            format!("shared/{}", limit.counter_id)
        } else {
            let kind = match rule.id.kind {
                portcullis_model::RouteKind::Http => "httproute",
                portcullis_model::RouteKind::Grpc => "grpcroute",
                portcullis_model::RouteKind::Tls => "tlsroute",
            };
            format!(
                "{kind}/{}/{}/{}",
                rule.id.namespace, rule.id.name, limit.counter_id
            )
        };
        let counters_key = format!("{scope}#{}", config.max_tracked_keys);
        let counters = self
            .counters
            .entry(counters_key.clone())
            .or_insert_with(|| {
                previous
                    .and_then(|p| p.counters.get(&counters_key).cloned())
                    .unwrap_or_else(|| {
                        Arc::new(match &limit.global {
                            None => Counters::Local(LocalCounters::new(
                                &limit.rates,
                                config.max_tracked_keys,
                            )),
                            Some(_) => Counters::Global(GlobalCounters::new(
                                &scope,
                                &limit.rates,
                                config.max_tracked_keys,
                            )),
                        })
                    })
            })
            .clone();
        let client = limit.global.as_ref().map(|store| {
            let key = conn_key(store);
            self.clients
                .entry(key.clone())
                .or_insert_with(|| {
                    previous
                        .and_then(|p| p.clients.get(&key).cloned())
                        .unwrap_or_else(|| Arc::new(RedisClient::start(store, global::SCRIPT)))
                })
                .clone()
        });
        let item_names = (0..limit.rates.len())
            .map(|i| rate_item_name(&limit.name, i, limit.rates.len()))
            .collect();
        self.states.insert(
            id,
            Arc::new(LimitState {
                limit: limit.clone(),
                counters,
                client,
                store: limit.global.clone(),
                item_names,
                metric_label: Arc::from(limit.name.as_str()),
                queued: AtomicU32::new(0),
                shadow_over: AtomicU64::new(0),
                unavailable: AtomicU64::new(0),
                last_log_ms: AtomicU64::new(0),
            }),
        );
    }

    fn get(&self, rule: &Arc<Rule>, limit: &Arc<Limit>) -> Option<&Arc<LimitState>> {
        self.states.get(&identity(rule, limit))
    }

    /// Redis connections in use (for tests and diagnostics).
    pub fn redis_connected(&self) -> Vec<(String, bool)> {
        self.clients
            .values()
            .map(|c| (c.address().to_string(), c.is_connected()))
            .collect()
    }
}

fn identity(rule: &Arc<Rule>, limit: &Arc<Limit>) -> (usize, usize) {
    (Arc::as_ptr(rule) as usize, Arc::as_ptr(limit) as usize)
}

/// One counter-key part of a request.
enum PartValue<'a> {
    Bytes(&'a [u8]),
    Ip(IpAddr),
    Owned(String),
}

impl PartValue<'_> {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            PartValue::Bytes(b) => f(b),
            PartValue::Owned(s) => f(s.as_bytes()),
            PartValue::Ip(ip) => f(ip.to_string().as_bytes()),
        }
    }
}

fn part_value<'a>(part: &KeyPart, req: &RequestInfo<'a>) -> Option<PartValue<'a>> {
    Some(match part {
        KeyPart::ClientIp => PartValue::Ip(req.client_ip),
        KeyPart::Method => PartValue::Bytes(req.method.as_str().as_bytes()),
        KeyPart::Path => PartValue::Bytes(req.path.as_bytes()),
        KeyPart::Header(name) => PartValue::Bytes(req.headers.get(&name.0)?.as_bytes()),
        KeyPart::Consumer => PartValue::Bytes(req.identity?.consumer.as_deref()?.as_bytes()),
        KeyPart::Claim(name) => match req.identity?.claim(name)? {
            Json::String(s) => PartValue::Bytes(s.as_bytes()),
            v @ (Json::Number(_) | Json::Bool(_)) => PartValue::Owned(v.to_string()),
            _ => return None,
        },
    })
}

/// The request's counter key as a seeded hash; `None` when a part is
/// missing (the limit then does not count the request).
fn key_hash(limit: &Limit, req: &RequestInfo<'_>) -> Option<u64> {
    let mut h = key_seed().build_hasher();
    for part in &limit.key {
        match part_value(part, req)? {
            PartValue::Ip(ip) => ip.hash(&mut h),
            other => other.with_bytes(|b| {
                h.write_usize(b.len());
                h.write(b);
            }),
        }
    }
    Some(h.finish())
}

/// The request's counter key as Redis sees it: each part length-prefixed so
/// that no two different tuples give the same key.
fn key_bytes(limit: &Limit, req: &RequestInfo<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for part in &limit.key {
        if let Some(v) = part_value(part, req) {
            v.with_bytes(|b| {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            });
        }
    }
    out
}

fn applies(limit: &Limit, req: &RequestInfo<'_>) -> bool {
    limit.when.is_empty()
        || limit.when.iter().any(|c| {
            c.method.as_deref().is_none_or(|m| m == req.method.as_str())
                && c.path.as_ref().is_none_or(|p| p.matches(req.path))
                && c.headers.iter().all(|h| match &h.value {
                    None => req.headers.contains_key(&h.name.0),
                    Some(m) => req
                        .headers
                        .get(&h.name.0)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| m.matches(v)),
                })
        })
}

impl LimitState {
    fn record(&self, decision: RateLimitDecision) {
        crate::metrics::global().record_rate_limit(&self.metric_label, decision);
    }

    async fn decide(&self, key: u64, req: &RequestInfo<'_>) -> Result<Decision, redis::RedisError> {
        match &*self.counters {
            Counters::Local(c) => Ok(c.acquire(key, now_ms())),
            Counters::Global(c) => {
                let (Some(client), Some(store)) = (&self.client, &self.store) else {
                    return Err(redis::RedisError::Unavailable("no redis configured"));
                };
                match c
                    .acquire(key, || key_bytes(&self.limit, req), client, store.timeout)
                    .await
                {
                    GlobalOutcome::Decided(d) => Ok(d),
                    GlobalOutcome::Unavailable(e) => Err(e),
                }
            }
        }
    }

    /// True at most once per second per limit: keeps logs readable under
    /// floods.
    fn should_log(&self) -> bool {
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_log_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Waits in the throttling queue until the limit admits the request or
    /// the deadline would pass. `Ok(None)`: give up (reject).
    async fn throttle(
        &self,
        key: u64,
        req: &RequestInfo<'_>,
        mut decision: Decision,
        throttle: &Throttle,
    ) -> Result<Option<Decision>, redis::RedisError> {
        let deadline = tokio::time::Instant::now() + throttle.max_wait;
        if Duration::from_millis(decision.retry_after_ms) > throttle.max_wait {
            return Ok(None);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= throttle.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        struct Slot<'a>(&'a AtomicU32);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _slot = Slot(&self.queued);
        loop {
            let wake = tokio::time::Instant::now() + Duration::from_millis(decision.retry_after_ms);
            if wake > deadline {
                return Ok(None);
            }
            tokio::time::sleep_until(wake).await;
            decision = self.decide(key, req).await?;
            if decision.admitted() {
                return Ok(Some(decision));
            }
        }
    }
}

/// What an admitted request's response should say about its limits.
pub struct Report<'a> {
    style: HeaderStyle,
    policy: Option<&'a HeaderValue>,
    name: &'a str,
    decision: Decision,
}

impl Report<'_> {
    /// Adds the rate-limit headers of the selected style.
    pub fn apply(&self, headers: &mut HeaderMap) {
        write_headers(headers, self.style, self.policy, self.name, &self.decision);
    }
}

fn seconds_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn write_headers(
    headers: &mut HeaderMap,
    style: HeaderStyle,
    policy: Option<&HeaderValue>,
    name: &str,
    d: &Decision,
) {
    let reset = seconds_ceil(d.reset_ms);
    match style {
        HeaderStyle::None => {}
        HeaderStyle::Draft => {
            if let Some(policy) = policy {
                headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
            }
            // Names were validated at compile time (token characters).
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={reset}", d.remaining))
            {
                headers.insert(RATELIMIT.clone(), v);
            }
        }
        HeaderStyle::XRateLimit => {
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(d.limit));
            headers.insert(
                X_RATELIMIT_REMAINING.clone(),
                HeaderValue::from(d.remaining),
            );
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
        }
    }
}

fn rejection(status: StatusCode, message: &str, retry_after_ms: u64) -> Response<Body> {
    let mut resp = crate::proxy::error_response(status, message);
    resp.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(seconds_ceil(retry_after_ms).max(1)),
    );
    resp
}

/// The rate-limit stage. `Ok(report)`: go on (the report's headers go on
/// the response); `Err(response)`: answer with it (429, or 503 when Redis
/// is unavailable under `failureMode: Closed`).
pub async fn enforce<'a>(
    limiters: &'a Limiters,
    rule: &Arc<Rule>,
    config: &'a RateLimitConfig,
    req: &RequestInfo<'_>,
) -> Result<Option<Report<'a>>, Response<Body>> {
    let mut reported: Option<(&'a LimitState, Decision)> = None;
    for limit in &config.limits {
        if !applies(limit, req) {
            continue;
        }
        let Some(key) = key_hash(limit, req) else {
            continue;
        };
        let Some(state) = limiters.get(rule, limit) else {
            // Every limit of the table has a state; a miss would be a bug,
            // and an unenforced limit is the safer failure than a 500.
            tracing::error!(rule = %rule.id, limit = %limit.name, "rate limit has no counters");
            continue;
        };
        let mut decision = match state.decide(key, req).await {
            Ok(d) => d,
            Err(e) => {
                if let Some(resp) = unavailable(state, rule, config, &e) {
                    return Err(resp);
                }
                continue;
            }
        };
        if !decision.admitted() && config.shadow {
            state.record(RateLimitDecision::shadow);
            let total = state.shadow_over.fetch_add(1, Ordering::Relaxed) + 1;
            if state.should_log() {
                tracing::info!(rule = %rule.id, limit = %limit.name, over_limit_total = total,
                    "request over rate limit admitted (shadow mode)");
            }
            continue;
        }
        if !decision.admitted() {
            if let Some(throttle) = &config.throttle {
                match state.throttle(key, req, decision, throttle).await {
                    Ok(Some(d)) => decision = d,
                    Ok(None) => {}
                    Err(e) => {
                        if let Some(resp) = unavailable(state, rule, config, &e) {
                            return Err(resp);
                        }
                        continue;
                    }
                }
            }
        }
        if !decision.admitted() {
            state.record(RateLimitDecision::limited);
            tracing::debug!(rule = %rule.id, limit = %limit.name, client = %req.client_ip,
                retry_after_ms = decision.retry_after_ms, "rate limited");
            let mut resp = rejection(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded",
                decision.retry_after_ms,
            );
            write_headers(
                resp.headers_mut(),
                config.headers,
                config.policy_header.as_ref().map(|h| &h.0),
                &state.item_names[decision.rate],
                &decision,
            );
            return Err(resp);
        }
        state.record(RateLimitDecision::allowed);
        let tighter = reported.is_none_or(|(_, r)| decision.remaining < r.remaining);
        if tighter {
            reported = Some((state, decision));
        }
    }
    if config.shadow || config.headers == HeaderStyle::None {
        return Ok(None);
    }
    Ok(reported.map(|(state, decision)| Report {
        style: config.headers,
        policy: config.policy_header.as_ref().map(|h| &h.0),
        name: &state.item_names[decision.rate],
        decision,
    }))
}

/// Redis did not answer: `failureMode` decides. `Some`: reject with it.
fn unavailable(
    state: &LimitState,
    rule: &Rule,
    config: &RateLimitConfig,
    error: &redis::RedisError,
) -> Option<Response<Body>> {
    let mode = state
        .store
        .as_ref()
        .map(|s| s.failure_mode)
        .unwrap_or(FailureMode::Open);
    let total = state.unavailable.fetch_add(1, Ordering::Relaxed) + 1;
    if state.should_log() {
        tracing::warn!(rule = %rule.id, limit = %state.limit.name, error = %error,
            failure_mode = ?mode, unavailable_total = total,
            "global rate limit could not be checked");
    }
    let refuse = mode == FailureMode::Closed && !config.shadow;
    state.record(if refuse {
        RateLimitDecision::fail_closed
    } else {
        RateLimitDecision::fail_open
    });
    refuse.then(|| {
        rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate limit service unavailable",
            1000,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::ratelimit::Rate;
    use portcullis_model::HeaderNameSer;

    fn limit(key: Vec<KeyPart>) -> Limit {
        Limit {
            name: "l".into(),
            counter_id: "c".into(),
            rates: vec![Rate {
                limit: 1,
                window: Duration::from_secs(1),
            }],
            key,
            when: vec![],
            shared: false,
            global: None,
        }
    }

    fn info<'a>(headers: &'a HeaderMap, identity: Option<&'a Identity>) -> RequestInfo<'a> {
        RequestInfo {
            client_ip: IpAddr::from([127, 0, 0, 1]),
            method: &Method::GET,
            path: "/p",
            headers,
            identity,
        }
    }

    #[test]
    fn consumer_and_claim_keys_come_from_the_verified_identity() {
        let l = limit(vec![KeyPart::Consumer, KeyPart::Claim("tier".into())]);
        let headers = HeaderMap::new();
        let mut claims = serde_json::Map::new();
        claims.insert("tier".into(), Json::from(3));
        let alice = Identity {
            consumer: Some("alice".into()),
            claims: Some(Arc::new(claims.clone())),
            ..Identity::default()
        };
        let bob = Identity {
            consumer: Some("bob".into()),
            claims: Some(Arc::new(claims)),
            ..Identity::default()
        };
        let a = key_hash(&l, &info(&headers, Some(&alice))).expect("keyed");
        let b = key_hash(&l, &info(&headers, Some(&bob))).expect("keyed");
        assert_ne!(a, b);
        assert_eq!(Some(a), key_hash(&l, &info(&headers, Some(&alice))));
        // Anonymous requests are not counted by consumer-keyed limits.
        assert_eq!(key_hash(&l, &info(&headers, None)), None);
        assert_eq!(key_bytes(&l, &info(&headers, Some(&alice))), b"5:alice1:3");
    }

    #[test]
    fn key_parts_cannot_be_confused_by_their_boundaries() {
        let name = |n: &'static str| KeyPart::Header(HeaderNameSer(HeaderName::from_static(n)));
        let l = limit(vec![name("x-a"), name("x-b")]);
        let mut one = HeaderMap::new();
        one.insert("x-a", HeaderValue::from_static("ab"));
        one.insert("x-b", HeaderValue::from_static("c"));
        let mut two = HeaderMap::new();
        two.insert("x-a", HeaderValue::from_static("a"));
        two.insert("x-b", HeaderValue::from_static("bc"));
        assert_ne!(
            key_hash(&l, &info(&one, None)),
            key_hash(&l, &info(&two, None))
        );
        assert_ne!(
            key_bytes(&l, &info(&one, None)),
            key_bytes(&l, &info(&two, None))
        );
    }

    #[test]
    fn the_tightest_rate_is_reported() {
        let mut d = Decision::unlimited();
        let verdict = |remaining, retry| Verdict {
            remaining,
            retry_after_ms: retry,
            window_left_ms: 500,
        };
        d.combine(0, verdict(9, 0), 10);
        d.combine(1, verdict(3, 0), 100);
        assert_eq!((d.rate, d.remaining, d.limit), (1, 3, 100));
        d.combine(2, verdict(0, 700), 5);
        d.combine(3, verdict(0, 200), 7);
        assert!(!d.admitted());
        assert_eq!((d.rate, d.retry_after_ms), (2, 700), "longest wait wins");
    }
}

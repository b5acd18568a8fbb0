//! Compiled rate limits of one route rule (from `RateLimitPolicy`).
//!
//! Everything the data path needs is precomputed: header names are
//! `HeaderName`s, path/header conditions are compiled matchers, the
//! `RateLimit-Policy` header value is rendered once, and each limit has a
//! stable `counter_id` so that counters survive table swaps (and are shared
//! across replicas in Redis) exactly while the limit is unchanged.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::{HeaderNameSer, HeaderValueSer, PathMatch, StringMatch};

#[derive(Debug, Clone, Serialize)]
pub struct RateLimitConfig {
    /// Every limit that may apply; a request must be admitted by each one
    /// whose conditions it matches.
    pub limits: Vec<Arc<Limit>>,
    pub headers: HeaderStyle,
    /// Count and log only: never reject, delay or add headers.
    pub shadow: bool,
    pub throttle: Option<Throttle>,
    /// Memory bound of each local limit: most counter keys kept.
    pub max_tracked_keys: usize,
    /// `RateLimit-Policy` value listing every rate of every limit
    /// (`HeaderStyle::Draft` only).
    pub policy_header: Option<HeaderValueSer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HeaderStyle {
    /// `RateLimit` + `RateLimit-Policy` (IETF httpapi ratelimit-headers
    /// draft, structured-field syntax).
    Draft,
    /// `X-RateLimit-Limit` / `-Remaining` / `-Reset`.
    XRateLimit,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Throttle {
    /// Most requests waiting per limit and replica.
    pub max_queued: u32,
    /// Longest a request waits.
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    /// The name in the policy.
    pub name: String,
    /// Stable identity of this limit's counters: the name plus a
    /// fingerprint of everything that changes what is counted (rates, key,
    /// conditions, mode). Equal ids mean counters carry over.
    pub counter_id: String,
    /// All must admit a request. Non-empty.
    pub rates: Vec<Rate>,
    /// What a counter is keyed by (empty: one counter).
    pub key: Vec<KeyPart>,
    /// The limit applies when any condition matches (empty: always).
    pub when: Vec<Condition>,
    /// One counter for every route carrying this limit, instead of one per
    /// route.
    pub shared: bool,
    /// Present for `mode: Global`: where the counters live.
    pub global: Option<Arc<GlobalStore>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rate {
    pub limit: u64,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KeyPart {
    ClientIp,
    Header(HeaderNameSer),
    /// Verified JWT claim name.
    Claim(String),
    /// API-key consumer.
    Consumer,
    Path,
    Method,
}

/// All given parts must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Condition {
    /// Uppercase method name.
    pub method: Option<String>,
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderCondition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderCondition {
    pub name: HeaderNameSer,
    /// `None`: the header must be present, with any value.
    pub value: Option<StringMatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum FailureMode {
    /// Admit when Redis cannot answer in time.
    Open,
    /// Reject (503) when Redis cannot answer in time.
    Closed,
}

/// A Redis server holding global counters. Limits that name the same
/// server (same address, credentials and TLS) share one connection.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct GlobalStore {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    #[serde(serialize_with = "crate::serde_helpers::redacted")]
    pub password: Option<String>,
    pub tls: Option<RedisTls>,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
}

impl std::fmt::Debug for GlobalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalStore")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

impl GlobalStore {
    /// `host:port/db`, for logs.
    pub fn display_address(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.db)
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RedisTls {
    /// PEM CA certificates the server's chain must lead to.
    pub ca_pem: Arc<str>,
    /// Name checked against the server certificate.
    pub server_name: String,
    /// Client certificate chain + key (PEM) for mutual TLS.
    pub client_cert_pem: Option<Arc<str>>,
    #[serde(serialize_with = "crate::serde_helpers::redacted")]
    pub client_key_pem: Option<Arc<str>>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// The name of one rate in `RateLimit-Policy` / `RateLimit` headers: the
/// limit's name, suffixed with the rate's position when the limit has
/// several (`per-client`, or `per-client-1`, `per-client-2`).
pub fn rate_item_name(limit_name: &str, index: usize, rate_count: usize) -> String {
    if rate_count <= 1 {
        limit_name.to_string()
    } else {
        format!("{limit_name}-{}", index + 1)
    }
}

/// Whole seconds of a window as the headers state it (at least 1).
pub fn window_seconds(window: Duration) -> u64 {
    window.as_secs() + u64::from(window.subsec_nanos() > 0)
}

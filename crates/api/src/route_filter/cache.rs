//! `RouteFilter.spec.cache`: response caching for GET and HEAD.
//!
//! By default the cache follows HTTP caching (RFC 9111) as a shared cache:
//! the backend's `Cache-Control` (`max-age`, `s-maxage`, `no-store`,
//! `no-cache`, `private`, `must-revalidate`, `stale-if-error`), `Expires`,
//! `Vary`, `ETag` and `Last-Modified` decide what is stored and for how
//! long. `ttl` gives a lifetime to responses that carry none, or replaces
//! the backend's when `overrideBackend` is set.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Freshness lifetime (e.g. `30s`, `5m`) for responses whose headers
    /// give none (no `max-age`, `s-maxage` or `Expires`). Without it such
    /// responses are only stored when they carry a validator (`ETag`,
    /// `Last-Modified`) and are then revalidated on every use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Use `ttl` for every cacheable response, ignoring the backend's
    /// freshness directives (`max-age`, `s-maxage`, `Expires`, `no-cache`,
    /// `must-revalidate`). `no-store` and `private` are still honoured:
    /// they protect data, not freshness. Requires `ttl`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub override_backend: bool,
    /// What distinguishes two requests for the same resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKeySpec>,
    /// Memory bound of this filter's entries, in bytes (default 64 MiB).
    /// The least recently used entries are evicted beyond it. The process
    /// as a whole is also bounded (`PORTCULLIS_CACHE_MAX_BYTES`, default
    /// 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Largest response body stored, in bytes (default 1 MiB). Larger
    /// responses are streamed to the client and not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<u64>,
    /// How long concurrent identical misses wait for the first one's
    /// response before going to the backend themselves (default `5s`).
    /// `0s` turns request coalescing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_timeout: Option<String>,
    /// How long past its freshness a stored response may still be served
    /// when revalidating it fails (backend unreachable or 5xx), unless the
    /// response says `must-revalidate`. A backend's `stale-if-error=N`
    /// takes precedence. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<String>,
}

/// The cache key: always the host and path; the query and headers as
/// configured here; the authenticated identity when configured or when a
/// response is `private`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheKeySpec {
    /// Which query parameters are part of the key (default `All`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryKey>,
    /// With `query: Include`: the parameter names that are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<String>,
    /// Sort the kept parameters so that `?a=1&b=2` and `?b=2&a=1` share an
    /// entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sort_query: bool,
    /// Request headers whose values are part of the key (in addition to
    /// the response's `Vary`), e.g. `Accept-Language`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Partition every entry by the authenticated identity (AuthPolicy
    /// subject and consumer), as if every response were `private`.
    /// Anonymous requests are then not cached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum QueryKey {
    /// The whole query string.
    All,
    /// No query: `/items?x=1` and `/items` share an entry.
    Ignore,
    /// Only the parameters named in `queryParams`.
    Include,
}

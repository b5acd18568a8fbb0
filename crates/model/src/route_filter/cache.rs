//! Compiled `RouteFilter` cache section: durations parsed, header names
//! validated, query parameter names sorted for lookup.

use std::time::Duration;

use serde::Serialize;

use crate::HeaderNameSer;

/// Defaults the controller applies when the spec leaves them out.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_COALESCE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct CacheConfig {
    /// Lifetime of responses that give none (or of all, with
    /// `override_backend`).
    pub ttl: Option<Duration>,
    pub override_backend: bool,
    pub key: CacheKey,
    /// Bytes this filter's entries may take (keys, headers and bodies).
    pub max_bytes: u64,
    /// Largest body stored.
    pub max_object_bytes: u64,
    /// Zero: no coalescing.
    pub coalesce_timeout: Duration,
    pub stale_if_error: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: None,
            override_backend: false,
            key: CacheKey::default(),
            max_bytes: DEFAULT_MAX_BYTES,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            coalesce_timeout: DEFAULT_COALESCE_TIMEOUT,
            stale_if_error: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheKey {
    pub query: QueryKey,
    pub sort_query: bool,
    /// Request headers whose values partition the entries.
    pub headers: Vec<HeaderNameSer>,
    /// Partition by authenticated identity, always.
    pub identity: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub enum QueryKey {
    #[default]
    All,
    Ignore,
    /// Parameter names kept, sorted (binary search on lookup).
    Include(Vec<String>),
}

//! The response store: entries of every RouteFilter cache in one map,
//! bounded in bytes per filter and for the process, evicted least
//! recently used first.
//!
//! A small own LRU rather than a cache crate: recency is a tick per
//! access, kept in one `BTreeMap` for the process and one per filter, so
//! that the oldest entry overall or of one filter is found in O(log n)
//! and byte bounds are exact (what `portcullis_cache_bytes` reports is
//! what the entries hold). One mutex; what it guards is a few map
//! operations per request, never I/O.
//!
//! Keys (see `key.rs`) are two-part: the *primary* key (filter, host,
//! path, query, configured headers) names a resource; the response
//! decides the rest (its `Vary` header names, and whether it is
//! `private`), recorded per primary key as its [`Scheme`]. Lookups build
//! the full key from the scheme the last stored response set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::metrics::CacheSeries;

/// A stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    pub status: StatusCode,
    /// Without hop-by-hop fields and `Age`; `Content-Length` is the body's.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was stored (or last revalidated).
    pub stored: Instant,
    /// Its age when it arrived.
    pub initial_age: Duration,
    pub lifetime: Duration,
    pub must_revalidate: bool,
    pub stale_if_error: Option<Duration>,
    pub shared_with_authorization: bool,
    /// Stored under a key that includes the identity.
    pub private: bool,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
}

impl Entry {
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.lifetime > self.age(now)
    }

    /// May be served stale after a failed revalidation.
    pub fn usable_on_error(&self, now: Instant) -> bool {
        !self.must_revalidate
            && self
                .stale_if_error
                .is_some_and(|grace| self.lifetime + grace > self.age(now))
    }

    pub fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// Bytes accounted for this entry: key, header fields (with the
    /// per-field overhead of a `HeaderMap`), body and bookkeeping.
    pub fn size(&self, key: &str) -> u64 {
        const OVERHEAD: usize = 256;
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        // Keys are held twice (map and recency order) plus the primary.
        (OVERHEAD + 3 * key.len() + headers + self.body.len()) as u64
    }
}

/// How entries of one primary key vary: recorded from the last stored
/// response.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scheme {
    pub vary: Arc<[HeaderName]>,
    /// Keyed by identity too.
    pub private: bool,
}

struct Slot {
    entry: Arc<Entry>,
    tick: u64,
    size: u64,
    filter: Arc<str>,
    primary: Arc<str>,
}

struct SchemeSlot {
    scheme: Scheme,
    /// Entries stored under this primary key.
    variants: usize,
}

struct FilterUsage {
    bytes: u64,
    order: BTreeMap<u64, Arc<str>>,
    series: CacheSeries,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<str>, Slot>,
    schemes: HashMap<Arc<str>, SchemeSlot>,
    filters: HashMap<Arc<str>, FilterUsage>,
    order: BTreeMap<u64, Arc<str>>,
    tick: u64,
    bytes: u64,
}

pub(crate) struct Store {
    inner: Mutex<Inner>,
    /// Bound over every filter.
    limit: u64,
}

/// What a lookup found.
pub(crate) struct Found {
    /// The full key under the current scheme; `None` when it needs an
    /// identity and the request has none.
    pub key: Option<String>,
    pub entry: Option<Arc<Entry>>,
    pub series: CacheSeries,
}

impl Store {
    pub fn new(limit: u64) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps
        // inconsistent in a way that matters more than losing the cache.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `primary` under its current scheme; `full_key` turns
    /// the primary key and scheme into the full key.
    pub fn lookup(
        &self,
        filter: &str,
        primary: &str,
        full_key: impl FnOnce(&Scheme) -> Option<String>,
    ) -> Found {
        let mut inner = self.lock();
        let series = inner.usage(filter).series.clone();
        let scheme = inner
            .schemes
            .get(primary)
            .map(|s| s.scheme.clone())
            .unwrap_or_default();
        let Some(key) = full_key(&scheme) else {
            return Found {
                key: None,
                entry: None,
                series,
            };
        };
        let entry = inner.touch(&key);
        Found {
            key: Some(key),
            entry,
            series,
        }
    }

    /// Stores `entry` under `key` (replacing what was there), evicting the
    /// least recently used entries of the filter, then of the process,
    /// until both bounds hold. An entry larger than a bound is not stored.
    pub fn insert(
        &self,
        filter: &str,
        filter_limit: u64,
        primary: &str,
        scheme: Scheme,
        key: String,
        entry: Entry,
    ) -> Arc<Entry> {
        let size = entry.size(&key);
        let entry = Arc::new(entry);
        let mut inner = self.lock();
        inner.remove(&key, false);
        if size > filter_limit || size > self.limit {
            return entry;
        }
        while inner.usage(filter).bytes + size > filter_limit {
            let Some(oldest) = inner.usage(filter).order.values().next().cloned() else {
                break;
            };
            inner.remove(&oldest, true);
        }
        while inner.bytes + size > self.limit {
            let Some(oldest) = inner.order.values().next().cloned() else {
                break;
            };
            inner.remove(&oldest, true);
        }
        let key: Arc<str> = Arc::from(key);
        let primary: Arc<str> = match inner.schemes.get_key_value(primary) {
            Some((k, _)) => k.clone(),
            None => Arc::from(primary),
        };
        let slot = inner
            .schemes
            .entry(primary.clone())
            .or_insert_with(|| SchemeSlot {
                scheme: Scheme::default(),
                variants: 0,
            });
        slot.scheme = scheme;
        slot.variants += 1;
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, key.clone());
        inner.bytes += size;
        let filter_name = inner.filter_name(filter);
        let usage = inner.usage(filter);
        usage.bytes += size;
        usage.order.insert(tick, key.clone());
        usage.series.bytes.set(gauge(usage.bytes));
        inner.entries.insert(
            key,
            Slot {
                entry: entry.clone(),
                tick,
                size,
                filter: filter_name,
                primary,
            },
        );
        entry
    }

    /// The metric series of a filter.
    pub fn series(&self, filter: &str) -> CacheSeries {
        self.lock().usage(filter).series.clone()
    }

    /// Removes one entry.
    pub fn remove(&self, key: &str) {
        self.lock().remove(key, false);
    }

    /// Removes every entry whose key starts with `prefix`; returns how
    /// many.
    pub fn purge(&self, prefix: &str) -> usize {
        self.remove_where(|key| key.starts_with(prefix))
    }

    /// Removes every entry of one resource path, whatever its query,
    /// headers or identity (`resource` is `"<filter> <host><path>"`).
    pub fn invalidate(&self, resource: &str) -> usize {
        self.remove_where(|key| {
            key.strip_prefix(resource)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['?', '\n']))
        })
    }

    fn remove_where(&self, matches: impl Fn(&str) -> bool) -> usize {
        let mut inner = self.lock();
        let doomed: Vec<Arc<str>> = inner
            .entries
            .keys()
            .filter(|k| matches(k))
            .cloned()
            .collect();
        for key in &doomed {
            inner.remove(key, false);
        }
        doomed.len()
    }

    /// Bytes held by one filter's entries.
    #[cfg(test)]
    pub fn bytes(&self, filter: &str) -> u64 {
        self.lock().filters.get(filter).map_or(0, |u| u.bytes)
    }
}

fn gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Inner {
    /// The usage record of a filter, made (and its metric series
    /// resolved) the first time the filter is seen.
    fn usage(&mut self, filter: &str) -> &mut FilterUsage {
        if !self.filters.contains_key(filter) {
            let name: Arc<str> = Arc::from(filter);
            let series = crate::metrics::global().cache_series(&name);
            self.filters.insert(
                name,
                FilterUsage {
                    bytes: 0,
                    order: BTreeMap::new(),
                    series,
                },
            );
        }
        // Inserted just above when missing.
        self.filters.get_mut(filter).expect("filter usage exists")
    }

    fn filter_name(&mut self, filter: &str) -> Arc<str> {
        self.usage(filter);
        self.filters
            .get_key_value(filter)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(filter))
    }

    /// The entry under `key`, marked most recently used.
    fn touch(&mut self, key: &str) -> Option<Arc<Entry>> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.entries.get_mut(key)?;
        let old = std::mem::replace(&mut slot.tick, tick);
        let entry = slot.entry.clone();
        let filter = slot.filter.clone();
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        if let Some(usage) = self.filters.get_mut(&filter) {
            if let Some(k) = usage.order.remove(&old) {
                usage.order.insert(tick, k);
            }
        }
        Some(entry)
    }

    fn remove(&mut self, key: &str, evicted: bool) {
        let Some(slot) = self.entries.remove(key) else {
            return;
        };
        self.order.remove(&slot.tick);
        self.bytes -= slot.size;
        if let Some(usage) = self.filters.get_mut(&slot.filter) {
            usage.order.remove(&slot.tick);
            usage.bytes -= slot.size;
            usage.series.bytes.set(gauge(usage.bytes));
            if evicted {
                usage.series.evictions.inc();
            }
        }
        if let Some(s) = self.schemes.get_mut(&slot.primary) {
            s.variants -= 1;
            if s.variants == 0 {
                self.schemes.remove(&slot.primary);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: usize) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            stored: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            must_revalidate: false,
            stale_if_error: None,
            shared_with_authorization: false,
            private: false,
            etag: None,
            last_modified: None,
        }
    }

    fn put(store: &Store, filter: &str, limit: u64, key: &str, body: usize) {
        store.insert(
            filter,
            limit,
            key,
            Scheme::default(),
            key.to_string(),
            entry(body),
        );
    }

    fn has(store: &Store, filter: &str, key: &str) -> bool {
        store
            .lookup(filter, key, |_| Some(key.to_string()))
            .entry
            .is_some()
    }

    #[test]
    fn evicts_the_least_recently_used_within_the_filter_bound() {
        let store = Store::new(u64::MAX);
        let one = entry(1000).size("f a");
        let limit = one * 3;
        put(&store, "f", limit, "f a", 1000);
        put(&store, "f", limit, "f b", 1000);
        put(&store, "f", limit, "f c", 1000);
        assert!(has(&store, "f", "f a"), "a is now the most recently used");
        put(&store, "f", limit, "f d", 1000);
        assert!(!has(&store, "f", "f b"), "b was the least recently used");
        assert!(has(&store, "f", "f a") && has(&store, "f", "f c") && has(&store, "f", "f d"));
        assert!(store.bytes("f") <= limit);
        // Another filter has its own bound.
        put(&store, "g", limit, "g a", 1000);
        assert!(has(&store, "f", "f a"));
    }

    #[test]
    fn the_process_bound_evicts_across_filters() {
        let one = entry(1000).size("f a");
        let store = Store::new(one * 2);
        put(&store, "f", u64::MAX, "f a", 1000);
        put(&store, "g", u64::MAX, "g a", 1000);
        put(&store, "g", u64::MAX, "g b", 1000);
        assert!(!has(&store, "f", "f a"));
        assert_eq!(store.bytes("f"), 0);
        assert_eq!(store.bytes("g"), one * 2);
        // Larger than the bound: not stored, nothing evicted for it.
        put(&store, "g", u64::MAX, "g huge", 10_000);
        assert!(!has(&store, "g", "g huge"));
        assert!(has(&store, "g", "g a") && has(&store, "g", "g b"));
    }

    #[test]
    fn purge_and_invalidate_by_prefix() {
        let store = Store::new(u64::MAX);
        for key in [
            "f h/items",
            "f h/items?page=2",
            "f h/items\nv",
            "f h/items2",
            "g h/items",
        ] {
            put(&store, &key[..1], u64::MAX, key, 10);
        }
        assert_eq!(store.invalidate("f h/items"), 3);
        assert!(has(&store, "f", "f h/items2"));
        assert_eq!(store.purge("g "), 1);
        assert_eq!(store.purge(""), 1);
        assert_eq!(store.bytes("f"), 0);
    }
}

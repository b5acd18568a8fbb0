//! RouteFilter response cache: a shared HTTP cache (RFC 9111) in front of
//! the rule's backend, for GET and HEAD.
//!
//! - Fresh entry: answered here (`x-cache: HIT`), a conditional request
//!   (`If-None-Match`, `If-Modified-Since`) with 304, HEAD from the GET
//!   entry; `Age` says how old it is.
//! - Stale entry with a validator: revalidated with a conditional request
//!   upstream; a 304 refreshes the entry (`REVALIDATED`); when the backend
//!   fails, the entry may be served `STALE` within `stale-if-error`.
//! - Miss: the request goes upstream (HEAD as GET, so that the answer can
//!   fill the cache; the client's own conditionals are removed and
//!   answered here), and the response is stored when the rules of
//!   `control.rs` allow it.
//! - Coalescing: while one request for a key is upstream, identical
//!   requests wait (at most `coalesceTimeout`) and are then answered from
//!   what it stored. If it stored nothing (not cacheable, backend error,
//!   the wait timed out), each goes to the backend itself: an error is
//!   never shared, and a slow leader does not hold the others longer than
//!   the timeout.
//! - Other methods pass through; a successful POST, PUT, PATCH or DELETE
//!   invalidates every entry of its path (and of its `Location` /
//!   `Content-Location` on the same host).
//!
//! Keys: `key.rs`; storage and eviction: `store.rs`; the caching rules as
//! pure functions: `control.rs`.

mod control;
mod key;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use portcullis_model::route_filter::cache::CacheConfig;
use tokio::sync::watch;

use self::store::{Entry, Scheme, Store};
use super::ClientRequest;
use crate::body::{self, Body, BoxError};
use crate::metrics::CacheResult;
use crate::proxy::ProxyError;

/// Process-wide bound of all caches, overridable with
/// `PORTCULLIS_CACHE_MAX_BYTES`.
const DEFAULT_GLOBAL_MAX_BYTES: u64 = 256 * 1024 * 1024;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Cached responses of every RouteFilter, kept across tables.
pub struct CacheState {
    store: Store,
    /// Keys being fetched, for coalescing: the leader holds the sender
    /// and drops it when done, which wakes the waiters.
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
}

impl Default for CacheState {
    fn default() -> Self {
        let limit = std::env::var("PORTCULLIS_CACHE_MAX_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_GLOBAL_MAX_BYTES);
        CacheState::new(limit)
    }
}

impl CacheState {
    pub fn new(global_max_bytes: u64) -> CacheState {
        CacheState {
            store: Store::new(global_max_bytes),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Removes every entry whose key starts with `prefix` (keys read
    /// `"<namespace>/<filter> <host><path>?<query>"`, then variant lines);
    /// returns how many were removed.
    pub fn purge(&self, prefix: &str) -> usize {
        self.store.purge(prefix)
    }

    fn join(&self, key: &str) -> Role<'_> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(key.to_string(), rx);
        Role::Leader(Leader {
            state: self,
            key: key.to_string(),
            _done: tx,
        })
    }
}

enum Role<'a> {
    Leader(Leader<'a>),
    Follower(watch::Receiver<()>),
}

/// Held by the request that fetches a key; dropping it (done, failed or
/// cancelled) releases the waiters.
struct Leader<'a> {
    state: &'a CacheState,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut inflight = self
            .state
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inflight.remove(&self.key);
    }
}

/// Answers from the cache, or through `next` (the backend) on a miss.
pub(crate) async fn serve<F, Fut>(
    state: &CacheState,
    config: &CacheConfig,
    filter: &str,
    client: &ClientRequest,
    req: Request<Body>,
    next: F,
) -> Result<Response<Body>, ProxyError>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>>,
{
    if client.method != Method::GET && client.method != Method::HEAD {
        return pass_and_invalidate(state, filter, client, req, next).await;
    }
    let primary = key::primary(config, filter, client);
    let lookup = |state: &CacheState| {
        let primary = primary.as_deref()?;
        Some(
            state
                .store
                .lookup(filter, primary, |scheme| key::full(primary, scheme, client)),
        )
    };
    let Some(mut found) = lookup(state) else {
        // Keyed by identity, and the request is anonymous.
        let resp = next(req).await?;
        return Ok(bypass(resp, state, filter));
    };
    let mut now = Instant::now();
    // RFC 9111 §3.5; a private entry is only reachable by its identity.
    let usable = |e: &Arc<Entry>| {
        e.shared_with_authorization
            || e.private
            || !client.headers.contains_key(header::AUTHORIZATION)
    };
    if let Some(entry) = found.entry.as_ref().filter(|e| usable(e)) {
        if entry.is_fresh(now) {
            found.series.record(CacheResult::hit);
            return Ok(respond(entry, client, now, Outcome::Hit));
        }
    }
    // Upstream it is, unless an identical request already is.
    let mut _leader = None;
    if let (Some(key), false) = (found.key.clone(), config.coalesce_timeout.is_zero()) {
        match state.join(&key) {
            Role::Leader(l) => _leader = Some(l),
            Role::Follower(mut rx) => {
                // Err: the leader is done (it dropped the sender).
                let _ = tokio::time::timeout(config.coalesce_timeout, rx.changed()).await;
                if let Some(again) = lookup(state) {
                    found = again;
                }
                now = Instant::now();
                if let Some(entry) = found.entry.as_ref().filter(|e| usable(e)) {
                    if entry.is_fresh(now) {
                        found.series.record(CacheResult::hit);
                        return Ok(respond(entry, client, now, Outcome::Hit));
                    }
                }
            }
        }
    }
    let stale = found
        .entry
        .clone()
        .filter(|e| usable(e) && e.has_validator());
    let upstream_req = upstream_request(req, stale.as_deref());
    let request_time = SystemTime::now();
    let result = next(upstream_req).await;
    let now = Instant::now();
    let serve_stale = |series: &crate::metrics::CacheSeries| {
        let entry = found
            .entry
            .as_ref()
            .filter(|e| usable(e) && e.usable_on_error(now))?;
        series.record(CacheResult::stale);
        Some(respond(entry, client, now, Outcome::Stale))
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => return serve_stale(&found.series).ok_or(e),
    };
    if resp.status().is_server_error() {
        if let Some(stale) = serve_stale(&found.series) {
            return Ok(stale);
        }
    }
    let Some(primary) = primary.as_deref() else {
        // Not reached: without a primary key the lookup returned None.
        return Ok(bypass(resp, state, filter));
    };
    let response_time = SystemTime::now();
    if resp.status() == StatusCode::NOT_MODIFIED {
        // A stale entry was found, so under a key.
        if let (Some(old), Some(key)) = (&stale, found.key.clone()) {
            let refreshed = refresh(
                config,
                client,
                old,
                resp.headers(),
                request_time,
                response_time,
                now,
            );
            let (scheme, entry) = match refreshed {
                Some(r) => r,
                // The 304 made the entry unstorable (e.g. no-store now):
                // the stored copy is still the valid representation.
                None => {
                    state.store.remove(&key);
                    found.series.record(CacheResult::revalidated);
                    return Ok(respond(old, client, now, Outcome::Revalidated));
                }
            };
            let key = key::full(primary, &scheme, client).unwrap_or(key);
            let entry = state
                .store
                .insert(filter, config.max_bytes, primary, scheme, key, entry);
            found.series.record(CacheResult::revalidated);
            return Ok(respond(&entry, client, now, Outcome::Revalidated));
        }
    }
    found.series.record(CacheResult::miss);
    let facts = control::RequestFacts {
        headers: &client.headers,
        authenticated: authenticated(client),
    };
    let storage = control::storage(config, facts, resp.status(), resp.headers(), response_time);
    let storage = match storage {
        Ok(s) => s,
        Err(why) => {
            tracing::debug!(filter, reason = ?why, "response not cached");
            return Ok(miss(client, resp));
        }
    };
    let too_large = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > config.max_object_bytes);
    if too_large {
        return Ok(miss(client, resp));
    }
    let (parts, body) = resp.into_parts();
    let limit = usize::try_from(config.max_object_bytes).unwrap_or(usize::MAX);
    let body = match buffer(body, limit).await {
        Buffered::Complete(bytes) => bytes,
        Buffered::TooLarge(body) => {
            return Ok(miss(client, Response::from_parts(parts, body)));
        }
        Buffered::Failed(e) => {
            return Err(ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "upstream error",
                format!("reading the response body to cache it: {e}"),
            ));
        }
    };
    let scheme = Scheme {
        vary: vary_names(&parts.headers),
        private: storage.private,
    };
    let Some(full) = key::full(primary, &scheme, client) else {
        return Ok(miss(client, Response::from_parts(parts, body::full(body))));
    };
    let initial_age = control::initial_age(&parts.headers, request_time, response_time);
    let mut headers = parts.headers;
    strip_for_storage(&mut headers);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let entry = Entry {
        status: parts.status,
        initial_age,
        private: storage.private,
        etag: headers.get(header::ETAG).cloned(),
        last_modified: headers.get(header::LAST_MODIFIED).cloned(),
        headers,
        body,
        stored: now,
        lifetime: storage.lifetime,
        must_revalidate: storage.must_revalidate,
        stale_if_error: storage.stale_if_error,
        shared_with_authorization: storage.shared_with_authorization,
    };
    let entry = state
        .store
        .insert(filter, config.max_bytes, primary, scheme, full, entry);
    Ok(respond(&entry, client, now, Outcome::Stored))
}

/// Unsafe methods go through; a success invalidates the path.
async fn pass_and_invalidate<F, Fut>(
    state: &CacheState,
    filter: &str,
    client: &ClientRequest,
    req: Request<Body>,
    next: F,
) -> Result<Response<Body>, ProxyError>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>>,
{
    state.store.series(filter).record(CacheResult::bypass);
    let resp = next(req).await?;
    let safe = matches!(
        client.method,
        Method::OPTIONS | Method::TRACE | Method::CONNECT
    );
    if !safe && (resp.status().is_success() || resp.status().is_redirection()) {
        state
            .store
            .invalidate(&key::resource(filter, &client.host, &client.path));
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(path) = resp
                .headers()
                .get(&h)
                .and_then(|v| same_host_path(v, &client.host))
            {
                state
                    .store
                    .invalidate(&key::resource(filter, &client.host, path));
            }
        }
    }
    Ok(with_status(resp, Outcome::Bypass))
}

/// The path of a `Location`-like value when it points at `host`: a
/// relative reference, or an absolute URI naming that host.
fn same_host_path<'a>(v: &'a HeaderValue, host: &str) -> Option<&'a str> {
    let v = v.to_str().ok()?;
    let path = match v.split_once("://") {
        Some((_, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/')?);
            let name = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            if !name.eq_ignore_ascii_case(host) {
                return None;
            }
            path
        }
        None if v.starts_with('/') && !v.starts_with("//") => v,
        None => return None,
    };
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// What the backend is asked: HEAD as GET (to fill the cache), without
/// the client's conditionals (the cache answers those), with the stored
/// validators when revalidating.
fn upstream_request(mut req: Request<Body>, stale: Option<&Entry>) -> Request<Body> {
    if req.method() == Method::HEAD {
        *req.method_mut() = Method::GET;
    }
    let h = req.headers_mut();
    h.remove(header::IF_NONE_MATCH);
    h.remove(header::IF_MODIFIED_SINCE);
    if let Some(e) = stale {
        if let Some(etag) = &e.etag {
            h.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = &e.last_modified {
            h.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    req
}

/// The entry refreshed by a 304's header fields (RFC 9111 §4.3.4), or
/// `None` if they make it unstorable.
fn refresh(
    config: &CacheConfig,
    client: &ClientRequest,
    old: &Entry,
    update: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    now: Instant,
) -> Option<(Scheme, Entry)> {
    let mut headers = old.headers.clone();
    for name in update.keys() {
        if *name == header::CONTENT_LENGTH || is_hop_by_hop(name) {
            continue;
        }
        headers.remove(name);
        for v in update.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    strip_for_storage(&mut headers);
    let facts = control::RequestFacts {
        headers: &client.headers,
        authenticated: authenticated(client),
    };
    let storage = control::storage(config, facts, old.status, &headers, response_time).ok()?;
    let scheme = Scheme {
        vary: vary_names(&headers),
        private: storage.private,
    };
    Some((
        scheme,
        Entry {
            status: old.status,
            initial_age: control::initial_age(update, request_time, response_time),
            etag: headers.get(header::ETAG).cloned(),
            last_modified: headers.get(header::LAST_MODIFIED).cloned(),
            headers,
            body: old.body.clone(),
            stored: now,
            lifetime: storage.lifetime,
            must_revalidate: storage.must_revalidate,
            stale_if_error: storage.stale_if_error,
            shared_with_authorization: storage.shared_with_authorization,
            private: storage.private,
        },
    ))
}

/// Someone a private response can be kept for.
fn authenticated(client: &ClientRequest) -> bool {
    client
        .identity
        .as_ref()
        .is_some_and(|i| i.subject.is_some() || i.consumer.is_some())
}

fn vary_names(headers: &HeaderMap) -> Arc<[HeaderName]> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Arc::from(names)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

fn strip_for_storage(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::AGE,
        X_CACHE,
        CACHE_STATUS,
    ] {
        headers.remove(name);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit,
    /// Fetched and stored.
    Stored,
    /// Fetched, not stored.
    Miss,
    Revalidated,
    Stale,
    Bypass,
}

impl Outcome {
    fn x_cache(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "HIT",
            Outcome::Stored | Outcome::Miss => "MISS",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
        })
    }

    /// RFC 9211 `Cache-Status`.
    fn cache_status(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "portcullis; hit",
            Outcome::Stored => "portcullis; fwd=uri-miss; stored",
            Outcome::Miss => "portcullis; fwd=uri-miss",
            Outcome::Revalidated => "portcullis; fwd=stale; fwd-status=304; stored",
            Outcome::Stale => "portcullis; hit; detail=stale-if-error",
            Outcome::Bypass => "portcullis; fwd=bypass",
        })
    }
}

fn with_status(mut resp: Response<Body>, outcome: Outcome) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(X_CACHE, outcome.x_cache());
    h.insert(CACHE_STATUS, outcome.cache_status());
    resp
}

/// An uncached response as the client gets it (no body for HEAD: the
/// backend was asked GET).
fn miss(client: &ClientRequest, mut resp: Response<Body>) -> Response<Body> {
    if client.method == Method::HEAD {
        *resp.body_mut() = body::empty();
    }
    with_status(resp, Outcome::Miss)
}

fn bypass(resp: Response<Body>, state: &CacheState, filter: &str) -> Response<Body> {
    state.store.series(filter).record(CacheResult::bypass);
    with_status(resp, Outcome::Bypass)
}

/// A response from an entry: 304 when the client's conditional matches,
/// no body for HEAD, `Age` and cache status headers.
fn respond(
    entry: &Entry,
    client: &ClientRequest,
    now: Instant,
    outcome: Outcome,
) -> Response<Body> {
    let age = HeaderValue::from(entry.age(now).as_secs());
    if entry.status == StatusCode::OK && not_modified(entry, &client.headers) {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in entry.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::AGE, age);
        return with_status(resp, outcome);
    }
    let body = if client.method == Method::HEAD {
        body::empty()
    } else {
        body::full(entry.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = entry.status;
    *resp.headers_mut() = entry.headers.clone();
    resp.headers_mut().insert(header::AGE, age);
    with_status(resp, outcome)
}

/// `If-None-Match` against the ETag; otherwise `If-Modified-Since`
/// against Last-Modified (RFC 9110 §13.2.2).
fn not_modified(entry: &Entry, request: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        return entry
            .etag
            .as_ref()
            .is_some_and(|etag| control::none_match(request, etag.as_bytes()));
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(control::http_date);
    let modified = entry.last_modified.as_ref().and_then(control::http_date);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

enum Buffered {
    Complete(Bytes),
    /// Over the limit: what was read, then the rest, as one body.
    TooLarge(Body),
    Failed(BoxError),
}

/// Reads `body` whole if it is at most `limit` bytes of data and has no
/// trailers.
async fn buffer(mut body: Body, limit: usize) -> Buffered {
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Buffered::Complete(buf.freeze()),
            Some(Err(e)) => return Buffered::Failed(e),
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) if buf.len() + data.len() <= limit => {
                        buf.extend_from_slice(&data);
                        continue;
                    }
                    Ok(data) => Frame::data(data),
                    Err(trailers) => trailers,
                };
                let read = [Ok(Frame::data(buf.freeze())), Ok(frame)];
                let rest = futures_util::stream::iter(read).chain(BodyStream::new(body));
                return Buffered::TooLarge(body::boxed(StreamBody::new(rest)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_invalidation_stays_on_the_host() {
        let v = |s| HeaderValue::from_static(s);
        assert_eq!(
            same_host_path(&v("/items/7?x=1"), "example.com"),
            Some("/items/7")
        );
        assert_eq!(
            same_host_path(&v("https://Example.com:8443/items/7"), "example.com"),
            Some("/items/7")
        );
        assert_eq!(
            same_host_path(&v("https://other.com/items/7"), "example.com"),
            None
        );
        assert_eq!(same_host_path(&v("//other.com/items"), "example.com"), None);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_passed_on_whole() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"defg"))),
            Ok(Frame::data(Bytes::from_static(b"h"))),
        ];
        let body = body::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
        let Buffered::TooLarge(rest) = buffer(body, 5).await else {
            panic!("over the limit");
        };
        let all = rest.collect().await.expect("body").to_bytes();
        assert_eq!(&all[..], b"abcdefgh");
        let Buffered::Complete(all) = buffer(body::full("abcdefgh"), 8).await else {
            panic!("within the limit");
        };
        assert_eq!(&all[..], b"abcdefgh");
    }
}

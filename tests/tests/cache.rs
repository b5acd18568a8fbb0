//! RouteFilter response cache end to end: a real gateway (standalone mode)
//! in front of a scriptable backend that counts what reaches it. The
//! backend takes its response headers from the query string
//! (`cc`: Cache-Control, `etag`, `lm`: Last-Modified, `vary`, `size`,
//! `delay` in ms, `cc304`: Cache-Control of its 304s) and answers
//! `If-None-Match` with 304 (and any request with `x-fail` with 503), so each test states the backend behaviour it
//! needs in its URL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use tokio::net::TcpListener;

const HOST: &str = "example.com";
const LAST_MODIFIED: &str = "Sat, 01 Aug 2026 10:00:00 GMT";

/// What the scripted backend received.
#[derive(Clone, Default)]
struct Backend {
    /// (method, path and query, headers), in arrival order.
    seen: Arc<Mutex<Vec<(String, String, HeaderMap)>>>,
}

impl Backend {
    async fn start() -> (Backend, SocketAddr) {
        let listener = TcpListener::bind((LOOPBACK, 0))
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let backend = Backend::default();
        let b = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = b.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let b = b.clone();
                        async move { Ok::<_, std::convert::Infallible>(b.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (backend, addr)
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let n = {
            let mut seen = self.seen.lock().expect("backend lock");
            seen.push((
                req.method().to_string(),
                target.clone(),
                req.headers().clone(),
            ));
            seen.iter().filter(|(_, t, _)| *t == target).count()
        };
        let params: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.replace("%3D", "=").replace("%2C", ",").replace('+', " "),
                )
            })
            .collect();
        if let Some(ms) = params.get("delay").and_then(|d| d.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut builder = Response::builder();
        if req.headers().contains_key("x-fail") {
            return builder
                .status(503)
                .body(Full::new(Bytes::from_static(b"down")))
                .expect("503");
        }
        let etag = params.get("etag").map(|e| format!("\"{e}\""));
        if let (Some(etag), Some(inm)) = (&etag, req.headers().get("if-none-match")) {
            if inm.as_bytes() == etag.as_bytes() {
                builder = builder.status(304).header("etag", etag);
                if let Some(cc) = params.get("cc304") {
                    builder = builder.header("cache-control", cc);
                }
                return builder.body(Full::new(Bytes::new())).expect("304");
            }
        }
        if let Some(cc) = params.get("cc") {
            builder = builder.header("cache-control", cc);
        }
        if let Some(etag) = &etag {
            builder = builder.header("etag", etag);
        }
        if params.contains_key("lm") {
            builder = builder.header("last-modified", LAST_MODIFIED);
        }
        if let Some(vary) = params.get("vary") {
            builder = builder.header("vary", vary);
        }
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
            .unwrap_or_default();
        let body = match params.get("size").and_then(|s| s.parse::<usize>().ok()) {
            Some(size) => format!("{n:<size$}").into_bytes(),
            None => format!("{} {target} #{n} {lang}", req.method()).into_bytes(),
        };
        builder
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    }

    /// Requests that reached the backend for exactly this path and query.
    fn count(&self, target: &str) -> usize {
        let seen = self.seen.lock().expect("backend lock");
        seen.iter().filter(|(_, t, _)| t == target).count()
    }

    fn last_headers(&self, target: &str) -> HeaderMap {
        let seen = self.seen.lock().expect("backend lock");
        seen.iter()
            .rev()
            .find(|(_, t, _)| t == target)
            .map(|(_, _, h)| h.clone())
            .expect("the backend saw the request")
    }
}

/// Gateway + backend + HTTPRoute `default/api` whose one rule uses
/// RouteFilter `default/cache` with `cache` (YAML, indented by 4), plus
/// whatever `extra` adds.
async fn gateway_with(cache: &str, extra: &str) -> (TestGateway, Backend) {
    gateway_named("cache", cache, extra).await
}

/// [`gateway_with`] with RouteFilter `default/<name>`: metrics are
/// process-wide, so a test reading them uses a name of its own.
async fn gateway_named(name: &str, cache: &str, extra: &str) -> (TestGateway, Backend) {
    let (backend, addr) = Backend::start().await;
    let yaml = format!(
        "{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: {name}, namespace: default}}
spec:
  cache:
{cache}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: {name}}}
    backendRefs: [{{name: backend, port: 80}}]
{extra}",
        gateway(PLAIN_LISTENER),
        service_yaml("backend", &[addr], None),
    );
    (TestGateway::start(&yaml, &["HTTP_PORT"]).await, backend)
}

async fn default_gateway() -> (TestGateway, Backend) {
    gateway_with("    coalesceTimeout: 10s", "").await
}

async fn fetch(gw: &TestGateway, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::builder()
        .method(method)
        .uri(gw.url("HTTP_PORT", target))
        .header("host", HOST);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(
        &http1_client(),
        builder.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
        .unwrap_or("")
}

fn x_cache(a: &Answer) -> &str {
    header(a, "x-cache")
}

/// One sample of the admin metrics, 0 when absent.
async fn metric(gw: &TestGateway, series: &str) -> f64 {
    let text = get(&gw.admin_url("/metrics"), "admin", &[]).await.body;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_its_age() {
    let (gw, backend) = gateway_named("fresh", "    coalesceTimeout: 10s", "").await;
    let target = "/r/fresh?cc=max-age%3D300";
    let first = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(
        header(&first, "cache-status"),
        "portcullis; fwd=uri-miss; stored"
    );
    let second = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(header(&second, "cache-status"), "portcullis; hit");
    assert_eq!(second.body, first.body);
    assert_eq!(header(&second, "cache-control"), "max-age=300");
    let age: u64 = header(&second, "age")
        .parse()
        .expect("Age is delta-seconds");
    assert!(age < 300);
    assert_eq!(backend.count(target), 1);
    // Another query is another resource.
    let other = fetch(&gw, "GET", "/r/fresh?cc=max-age%3D300&x=1", &[]).await;
    assert_eq!(x_cache(&other), "MISS");
    assert_eq!(
        metric(
            &gw,
            "portcullis_cache_requests_total{filter=\"default/fresh\",result=\"hit\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_cache_requests_total{filter=\"default/fresh\",result=\"miss\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn no_store_and_uncacheable_responses_always_reach_the_backend() {
    let (gw, backend) = default_gateway().await;
    for target in [
        "/r/ns?cc=no-store%2C+max-age%3D300",
        "/r/plain",
        "/r/private-anonymous?cc=private%2C+max-age%3D60",
    ] {
        for _ in 0..2 {
            let a = fetch(&gw, "GET", target, &[]).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(x_cache(&a), "MISS", "{target}");
        }
        assert_eq!(backend.count(target), 2, "{target}");
    }
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let (gw, backend) = default_gateway().await;
    // no-cache: stored, revalidated on every use; the backend's 304 then
    // says max-age=300, which makes the refreshed entry fresh.
    let target = "/r/reval?cc=no-cache&etag=v1&cc304=max-age%3D300";
    let first = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(backend.last_headers(target).get("if-none-match"), None);

    let second = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(x_cache(&second), "REVALIDATED");
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.body, first.body,
        "the stored body, not the empty 304"
    );
    assert_eq!(
        backend
            .last_headers(target)
            .get("if-none-match")
            .map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..]),
        "revalidation is a conditional request upstream"
    );
    assert_eq!(
        header(&second, "cache-control"),
        "max-age=300",
        "headers updated from the 304"
    );

    let third = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(x_cache(&third), "HIT");
    assert_eq!(third.body, first.body);
    assert_eq!(backend.count(target), 2);
}

#[tokio::test]
async fn conditional_client_requests_are_answered_304_from_the_cache() {
    let (gw, backend) = default_gateway().await;
    let target = "/r/cond?cc=max-age%3D300&etag=v7&lm=1";
    // The client's own conditional is not forwarded on a miss: the cache
    // needs the full response, and answers the condition itself.
    let first = fetch(&gw, "GET", target, &[("if-none-match", "\"v7\"")]).await;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED);
    assert_eq!(backend.last_headers(target).get("if-none-match"), None);

    let etag = fetch(&gw, "GET", target, &[("if-none-match", "\"v0\", W/\"v7\"")]).await;
    assert_eq!(etag.status, StatusCode::NOT_MODIFIED);
    assert_eq!(x_cache(&etag), "HIT");
    assert_eq!(header(&etag, "etag"), "\"v7\"");
    assert!(etag.body.is_empty());

    let since = fetch(&gw, "GET", target, &[("if-modified-since", LAST_MODIFIED)]).await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let changed = fetch(&gw, "GET", target, &[("if-none-match", "\"v6\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert!(!changed.body.is_empty());
    let older = fetch(
        &gw,
        "GET",
        target,
        &[("if-modified-since", "Fri, 01 Aug 2025 10:00:00 GMT")],
    )
    .await;
    assert_eq!(older.status, StatusCode::OK);
    assert_eq!(backend.count(target), 1);
}

#[tokio::test]
async fn vary_keeps_one_entry_per_request_header_value() {
    let (gw, backend) = default_gateway().await;
    let target = "/r/vary?cc=max-age%3D300&vary=accept-language";
    let en = fetch(&gw, "GET", target, &[("accept-language", "en")]).await;
    let de = fetch(&gw, "GET", target, &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&en), x_cache(&de)), ("MISS", "MISS"));
    let en2 = fetch(&gw, "GET", target, &[("accept-language", "en")]).await;
    let de2 = fetch(&gw, "GET", target, &[("accept-language", "de")]).await;
    assert_eq!((x_cache(&en2), x_cache(&de2)), ("HIT", "HIT"));
    assert!(en2.body.ends_with(b" en") && de2.body.ends_with(b" de"));
    assert_eq!(en2.body, en.body);
    assert_eq!(de2.body, de.body);
    let none = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(x_cache(&none), "MISS");
    assert_eq!(backend.count(target), 3);
}

#[tokio::test]
async fn concurrent_identical_misses_reach_the_backend_once() {
    let (gw, backend) = default_gateway().await;
    // The backend takes a second: every request below arrives while the
    // first is upstream (or after it stored the response).
    let target = "/r/burst?cc=max-age%3D300&delay=1000";
    let client = http1_client();
    let requests = (0..20).map(|_| {
        let req = Request::get(gw.url("HTTP_PORT", target))
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&client, req)
    });
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(
        backend.count(target),
        1,
        "20 concurrent misses, one backend request"
    );
    let misses = answers.iter().filter(|a| x_cache(a) == "MISS").count();
    assert_eq!(misses, 1);
}

#[tokio::test]
async fn the_least_recently_used_entries_are_evicted_within_the_memory_bound() {
    let (gw, backend) = gateway_named(
        "bounded",
        "    maxBytes: 20000\n    maxObjectBytes: 5000",
        "",
    )
    .await;
    let target = |i: usize| format!("/r/big{i}?cc=max-age%3D300&size=4000");
    for i in 0..4 {
        assert_eq!(x_cache(&fetch(&gw, "GET", &target(i), &[]).await), "MISS");
    }
    // Entry 0 used again: now entry 1 is the least recently used.
    assert_eq!(x_cache(&fetch(&gw, "GET", &target(0), &[]).await), "HIT");
    for i in 4..8 {
        fetch(&gw, "GET", &target(i), &[]).await;
    }
    let bytes = metric(&gw, "portcullis_cache_bytes{filter=\"default/bounded\"}").await;
    assert!(
        bytes > 0.0 && bytes <= 20000.0,
        "reported {bytes} bytes for a 20000-byte bound"
    );
    assert!(
        metric(
            &gw,
            "portcullis_cache_evictions_total{filter=\"default/bounded\"}"
        )
        .await
            >= 4.0
    );
    assert_eq!(
        x_cache(&fetch(&gw, "GET", &target(7), &[]).await),
        "HIT",
        "newest kept"
    );
    assert_eq!(
        x_cache(&fetch(&gw, "GET", &target(1), &[]).await),
        "MISS",
        "oldest evicted"
    );
    assert_eq!(backend.count(&target(1)), 2);
    // Larger than maxObjectBytes: passed through whole, never stored.
    let big = "/r/huge?cc=max-age%3D300&size=6000";
    for _ in 0..2 {
        let a = fetch(&gw, "GET", big, &[]).await;
        assert_eq!(a.body.len(), 6000);
        assert_eq!(x_cache(&a), "MISS");
    }
}

fn api_key_auth() -> String {
    let secret = |name: &str, key: &str, consumer: &str| {
        format!(
            "
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: default, labels: {{portcullis.dev/api-key: \"true\"}}}}
stringData:
  api_key: '{key}'
  consumer: '{consumer}'"
        )
    };
    format!(
        "{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: auth, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  apiKeys:
    selector: {{matchLabels: {{portcullis.dev/api-key: \"true\"}}}}
    header: x-api-key
",
        secret("key-a", KEY_A, "team-a"),
        secret("key-b", KEY_B, "team-b"),
    )
}

const KEY_A: &str = "pk_live_4f9c2a7e1b3d5f60";
const KEY_B: &str = "pk_live_0aa1bb2cc3dd4ee5";

#[tokio::test]
async fn a_private_response_is_never_served_to_another_identity() {
    let (gw, backend) = gateway_with("    coalesceTimeout: 10s", &api_key_auth()).await;
    let target = "/r/mine?cc=private%2C+max-age%3D300";
    let a1 = fetch(&gw, "GET", target, &[("x-api-key", KEY_A)]).await;
    assert_eq!((a1.status, x_cache(&a1)), (StatusCode::OK, "MISS"));
    let b1 = fetch(&gw, "GET", target, &[("x-api-key", KEY_B)]).await;
    assert_eq!(
        x_cache(&b1),
        "MISS",
        "team-b must not get team-a's private response"
    );
    assert_ne!(b1.body, a1.body);
    let a2 = fetch(&gw, "GET", target, &[("x-api-key", KEY_A)]).await;
    let b2 = fetch(&gw, "GET", target, &[("x-api-key", KEY_B)]).await;
    assert_eq!((x_cache(&a2), x_cache(&b2)), ("HIT", "HIT"));
    assert_eq!(a2.body, a1.body);
    assert_eq!(b2.body, b1.body);
    assert_eq!(backend.count(target), 2);
    // Without `private` either: a response to an authenticated request is
    // only shared when it says so (RFC 9111 §3.5).
    let unmarked = "/r/unmarked?cc=max-age%3D300";
    fetch(&gw, "GET", unmarked, &[("x-api-key", KEY_A)]).await;
    let b = fetch(&gw, "GET", unmarked, &[("x-api-key", KEY_B)]).await;
    assert_eq!(x_cache(&b), "MISS");
    let a = fetch(&gw, "GET", unmarked, &[("x-api-key", KEY_A)]).await;
    assert_eq!(x_cache(&a), "HIT");
    // A public response is shared between consumers.
    let shared = "/r/shared?cc=public%2C+max-age%3D300";
    fetch(&gw, "GET", shared, &[("x-api-key", KEY_A)]).await;
    let b = fetch(&gw, "GET", shared, &[("x-api-key", KEY_B)]).await;
    assert_eq!(x_cache(&b), "HIT");
    // Unauthenticated requests never reach the cache.
    assert_eq!(
        fetch(&gw, "GET", target, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn key_identity_partitions_every_entry_by_consumer() {
    let cache = "    key: {identity: true}\n    ttl: 5m";
    let (gw, backend) = gateway_with(cache, &api_key_auth()).await;
    let target = "/r/per-consumer";
    fetch(&gw, "GET", target, &[("x-api-key", KEY_A)]).await;
    let b = fetch(&gw, "GET", target, &[("x-api-key", KEY_B)]).await;
    assert_eq!(x_cache(&b), "MISS");
    assert_eq!(
        x_cache(&fetch(&gw, "GET", target, &[("x-api-key", KEY_A)]).await),
        "HIT"
    );
    assert_eq!(backend.count(target), 2);
}

#[tokio::test]
async fn the_admin_api_purges_entries_by_key_prefix() {
    let (gw, backend) = default_gateway().await;
    let a = "/r/purge/a?cc=max-age%3D300";
    let b = "/r/keep/b?cc=max-age%3D300";
    for t in [a, b] {
        fetch(&gw, "GET", t, &[]).await;
        assert_eq!(x_cache(&fetch(&gw, "GET", t, &[]).await), "HIT");
    }
    let purge =
        Request::post(gw.admin_url("/cache/purge?prefix=default/cache+example.com/r/purge/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
    let answer = send(&http1_client(), purge).await;
    assert_eq!(answer.status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(report["purged"], 1);
    assert_eq!(x_cache(&fetch(&gw, "GET", a, &[]).await), "MISS");
    assert_eq!(x_cache(&fetch(&gw, "GET", b, &[]).await), "HIT");
    assert_eq!(backend.count(a), 2);
    // GET is refused: purging is an action.
    let refused = get(&gw.admin_url("/cache/purge?prefix="), "admin", &[]).await;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_successful_post_invalidates_the_cached_path() {
    let (gw, backend) = default_gateway().await;
    let page = "/r/items?cc=max-age%3D300";
    fetch(&gw, "GET", page, &[]).await;
    assert_eq!(x_cache(&fetch(&gw, "GET", page, &[]).await), "HIT");
    let post = fetch(&gw, "POST", "/r/items", &[]).await;
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(x_cache(&post), "BYPASS");
    assert_eq!(x_cache(&fetch(&gw, "GET", page, &[]).await), "MISS");
    assert_eq!(backend.count(page), 2);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let (gw, backend) = default_gateway().await;
    let target = "/r/head?cc=max-age%3D300";
    let get = fetch(&gw, "GET", target, &[]).await;
    let head = fetch(&gw, "HEAD", target, &[]).await;
    assert_eq!(x_cache(&head), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), get.body.len().to_string());
    // A HEAD miss fills the cache for GET.
    let other = "/r/head2?cc=max-age%3D300";
    let head = fetch(&gw, "HEAD", other, &[]).await;
    assert_eq!(x_cache(&head), "MISS");
    assert!(head.body.is_empty());
    let get = fetch(&gw, "GET", other, &[]).await;
    assert_eq!(x_cache(&get), "HIT");
    assert!(get.body.starts_with(b"GET "), "filled by a GET upstream");
    assert_eq!(backend.count(target) + backend.count(other), 2);
}

#[tokio::test]
async fn the_filter_ttl_applies_when_the_backend_gives_no_lifetime() {
    let (gw, backend) = gateway_with(
        "    ttl: 5m\n    key: {query: Include, queryParams: [id], sortQuery: true}",
        "",
    )
    .await;
    fetch(&gw, "GET", "/r/ttl?id=1&utm=a", &[]).await;
    let again = fetch(&gw, "GET", "/r/ttl?utm=b&id=1", &[]).await;
    assert_eq!(x_cache(&again), "HIT", "only id is part of the key");
    assert_eq!(backend.count("/r/ttl?id=1&utm=a"), 1);
    assert_eq!(backend.count("/r/ttl?utm=b&id=1"), 0);
}

#[tokio::test]
async fn a_stale_entry_is_served_when_revalidation_fails_unless_it_must_revalidate() {
    let (gw, backend) = gateway_with("    staleIfError: 5m", "").await;
    let target = "/r/sie?cc=no-cache&etag=v1";
    let first = fetch(&gw, "GET", target, &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    let stale = fetch(&gw, "GET", target, &[("x-fail", "1")]).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.body, first.body);
    assert_eq!(backend.count(target), 2, "revalidation was attempted");

    let strict = "/r/strict?cc=no-cache%2C+must-revalidate&etag=v1";
    fetch(&gw, "GET", strict, &[]).await;
    let failed = fetch(&gw, "GET", strict, &[("x-fail", "1")]).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
}

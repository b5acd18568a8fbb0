//! BackendPolicy end to end: a gateway in standalone mode in front of real
//! local backends that answer 5xx, reset connections, hang, die and come
//! back. Every load loop is bounded; no assertion depends on timing beyond
//! generous bounds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use tokio::net::TcpListener;

/// How a test backend answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Ok = 0,
    Status500 = 1,
    Status503 = 2,
    /// Closes the connection without answering.
    Reset = 3,
    /// Never answers.
    Hang = 4,
    /// Answers 200 after 150 ms.
    Slow = 5,
}

/// One endpoint: answers with its name, counts requests, and serves
/// `/healthz` as its health flag says.
struct Endpoint {
    name: String,
    addr: SocketAddr,
    mode: AtomicU8,
    healthy: AtomicBool,
    hits: AtomicUsize,
    bodies: std::sync::Mutex<Vec<Bytes>>,
    versions: std::sync::Mutex<Vec<http::Version>>,
}

impl Endpoint {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// `n` endpoints on 127.0.0.2, .3, ... sharing one port (an EndpointSlice
/// has one port for all its endpoints).
async fn fleet(n: usize, names: &[&str]) -> Vec<Arc<Endpoint>> {
    'retry: for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let port = first.local_addr().expect("addr").port();
        let mut listeners = vec![first];
        for i in 1..n {
            match TcpListener::bind((format!("127.0.0.{}", i + 2).as_str(), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'retry,
            }
        }
        let mut out = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let e = Arc::new(Endpoint {
                name: names[i].to_string(),
                addr: l.local_addr().expect("addr"),
                mode: AtomicU8::new(Mode::Ok as u8),
                healthy: AtomicBool::new(true),
                hits: AtomicUsize::new(0),
                bodies: Default::default(),
                versions: Default::default(),
            });
            tokio::spawn(serve(l, e.clone()));
            out.push(e);
        }
        return out;
    }
    panic!("no port free on all loopback addresses");
}

async fn serve(listener: TcpListener, e: Arc<Endpoint>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let e = e.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let e = e.clone();
                async move {
                    if req.uri().path() == "/healthz" {
                        let status = if e.healthy.load(Ordering::SeqCst) {
                            200
                        } else {
                            503
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
                        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        return Ok(r);
                    }
                    e.hits.fetch_add(1, Ordering::SeqCst);
                    e.versions.lock().expect("lock").push(req.version());
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    e.bodies.lock().expect("lock").push(body);
                    let status = match e.mode.load(Ordering::SeqCst) {
                        1 => 500,
                        2 => 503,
                        3 => return Err("reset".to_string()),
                        4 => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            200
                        }
                        5 => {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            200
                        }
                        _ => 200,
                    };
                    let mut r = Response::new(Full::new(Bytes::from(e.name.clone())));
                    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    Ok::<_, String>(r)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Gateway, Service `svc` over `endpoints`, an HTTPRoute `r` (one rule
/// named `main`) to it, and `extra` YAML.
fn config(endpoints: &[&Arc<Endpoint>], extra: &str) -> String {
    let port = endpoints.first().map_or(80, |e| e.addr.port());
    let addresses: String = endpoints
        .iter()
        .map(|e| format!("\n- addresses: [\"{}\"]", e.addr.ip()))
        .collect();
    format!(
        "{}
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-1
  namespace: default
  labels: {{kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:{addresses}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - name: main
    backendRefs: [{{name: svc, port: 80}}]
{extra}",
        gateway(PLAIN_LISTENER)
    )
}

/// A BackendPolicy on Service `svc` with these `defaults` (YAML indented
/// by four spaces).
fn service_policy(defaults: &str) -> String {
    format!(
        "---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: svc-policy, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: svc}}]
  defaults:
{defaults}
"
    )
}

async fn request(gw: &TestGateway, method: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(gw.url("HTTP_PORT", "/"))
        .header("host", "example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &http1_client(),
        b.body(Full::new(Bytes::from(body.to_string())))
            .expect("request"),
    )
    .await
}

fn who(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).to_string()
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

#[tokio::test]
async fn gateway_errors_are_retried_on_another_endpoint() {
    let eps = fleet(2, &["bad", "good"]).await;
    eps[0].set(Mode::Status503);
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy("    retry: {retryOn: [gateway-error], attempts: 1, backoff: {base: 1ms}}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    for _ in 0..20 {
        let a = request(&gw, "GET", &[], "").await;
        assert_eq!((a.status.as_u16(), who(&a)), (200, "good".to_string()));
    }
    // Round robin sent about half the first attempts to the bad endpoint.
    assert!(
        eps[0].hits() >= 3,
        "bad endpoint tried {} times",
        eps[0].hits()
    );
}

#[tokio::test]
async fn attempts_bound_retries_and_the_last_answer_is_relayed() {
    let eps = fleet(1, &["bad"]).await;
    eps[0].set(Mode::Status500);
    let yaml = config(
        &[&eps[0]],
        &service_policy("    retry: {retryOn: [5xx], attempts: 3, backoff: {base: 1ms, max: 5ms}}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let a = request(&gw, "GET", &[], "").await;
    assert_eq!(a.status, 500);
    assert_eq!(eps[0].hits(), 4, "one attempt and three retries");
    // PUT is idempotent: retried, and the buffered body is sent each time.
    let a = request(&gw, "PUT", &[], "payload").await;
    assert_eq!(a.status, 500);
    assert_eq!(eps[0].hits(), 8);
    let bodies = eps[0].bodies.lock().expect("lock").clone();
    assert!(
        bodies[4..].iter().all(|b| &b[..] == b"payload"),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn non_idempotent_requests_are_not_retried_unless_allowed() {
    let eps = fleet(1, &["bad"]).await;
    eps[0].set(Mode::Status500);
    let yaml = config(
        &[&eps[0]],
        &service_policy("    retry: {retryOn: [5xx], attempts: 2, backoff: {base: 1ms}}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    assert_eq!(request(&gw, "POST", &[], "x").await.status, 500);
    assert_eq!(eps[0].hits(), 1, "POST must not be retried");
    gw.reconfigure(&config(
        &[&eps[0]],
        &service_policy(
            "    retry: {retryOn: [5xx], attempts: 2, backoff: {base: 1ms}, retryNonIdempotent: true}",
        ),
    ))
    .await;
    assert_eq!(request(&gw, "POST", &[], "x").await.status, 500);
    assert_eq!(eps[0].hits(), 4);
}

#[tokio::test]
async fn bodies_over_the_buffer_limit_are_not_retried() {
    let eps = fleet(1, &["bad"]).await;
    eps[0].set(Mode::Status500);
    let yaml = config(
        &[&eps[0]],
        &service_policy(
            "    retry: {retryOn: [5xx], attempts: 2, backoff: {base: 1ms}, maxBodyBytes: 16}",
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let long = "x".repeat(100);
    assert_eq!(request(&gw, "PUT", &[], &long).await.status, 500);
    assert_eq!(eps[0].hits(), 1);
    assert_eq!(
        eps[0].bodies.lock().expect("lock")[0].len(),
        100,
        "the body still arrives whole"
    );
}

#[tokio::test]
async fn resets_and_connect_failures_are_retried() {
    let eps = fleet(2, &["reset", "good"]).await;
    eps[0].set(Mode::Reset);
    // A third endpoint where nothing listens: connect failures.
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy(
            "    retry: {retryOn: [reset, connect-failure], attempts: 2, backoff: {base: 1ms}}",
        ),
    )
    .replace(
        "\n- addresses: [\"127.0.0.3\"]",
        "\n- addresses: [\"127.0.0.3\"]\n- addresses: [\"127.0.0.9\"]",
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    for _ in 0..10 {
        let a = request(&gw, "GET", &[], "").await;
        assert_eq!(who(&a), "good");
    }
    assert!(eps[0].hits() >= 2);
    // Without `reset` in the conditions, a reset is answered 502.
    gw.reconfigure(&config(
        &[&eps[0]],
        &service_policy("    retry: {retryOn: [connect-failure], attempts: 2}"),
    ))
    .await;
    let before = eps[0].hits();
    assert_eq!(request(&gw, "GET", &[], "").await.status, 502);
    assert_eq!(eps[0].hits(), before + 1);
}

/// `config` with the Gateway API `retry` stanza (flow YAML) on rule `main`.
fn config_with_route_retry(endpoints: &[&Arc<Endpoint>], retry: &str, extra: &str) -> String {
    let rule = "    backendRefs: [{name: svc, port: 80}]\n";
    let yaml = config(endpoints, extra);
    assert!(yaml.contains(rule), "rule main not found");
    yaml.replacen(rule, &format!("    retry: {retry}\n{rule}"), 1)
}

#[tokio::test]
async fn http_route_retry_retries_listed_codes_and_connection_errors() {
    let eps = fleet(3, &["unavailable", "reset", "good"]).await;
    eps[0].set(Mode::Status503);
    eps[1].set(Mode::Reset);
    let yaml = config_with_route_retry(
        &[&eps[0], &eps[1], &eps[2]],
        "{codes: [503], attempts: 2, backoff: 1ms}",
        "",
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    for _ in 0..12 {
        let a = request(&gw, "GET", &[], "").await;
        assert_eq!((a.status.as_u16(), who(&a)), (200, "good".to_string()));
    }
    assert!(
        eps[0].hits() >= 2 && eps[1].hits() >= 2,
        "both bad endpoints were tried"
    );

    // A status that is not listed is relayed after one attempt.
    let eps = fleet(1, &["broken"]).await;
    eps[0].set(Mode::Status500);
    gw.reconfigure(&config_with_route_retry(
        &[&eps[0]],
        "{codes: [503], attempts: 2, backoff: 1ms}",
        "",
    ))
    .await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(eps[0].hits(), 1, "500 is not in codes");
    // Listed: one attempt and `attempts` retries, then the last answer.
    gw.reconfigure(&config_with_route_retry(
        &[&eps[0]],
        "{codes: [500], attempts: 2, backoff: 1ms}",
        "",
    ))
    .await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(eps[0].hits(), 4);
}

#[tokio::test]
async fn route_backend_policy_wins_over_route_retry_which_wins_over_the_service_policy() {
    let eps = fleet(1, &["broken"]).await;
    eps[0].set(Mode::Status500);
    let service = service_policy("    retry: {retryOn: [5xx], attempts: 4, backoff: {base: 1ms}}");
    let gw = TestGateway::start(
        &config_with_route_retry(
            &[&eps[0]],
            "{codes: [500], attempts: 1, backoff: 1ms}",
            &service,
        ),
        &["HTTP_PORT"],
    )
    .await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(
        eps[0].hits(),
        2,
        "the route's retry (1), not the Service's (4)"
    );

    let on_route = "---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: route-policy, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: main}]
  defaults:
    retry: {retryOn: [5xx], attempts: 2, backoff: {base: 1ms}}
";
    gw.reconfigure(&config_with_route_retry(
        &[&eps[0]],
        "{codes: [500], attempts: 1, backoff: 1ms}",
        &format!("{service}{on_route}"),
    ))
    .await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(eps[0].hits(), 2 + 3, "the route's BackendPolicy (2) wins");
}

#[tokio::test]
async fn retry_budget_and_max_retries_stop_retries() {
    let eps = fleet(1, &["bad"]).await;
    eps[0].set(Mode::Status500);
    // A budget of 0 % with no floor admits no retry at all.
    let yaml = config(
        &[&eps[0]],
        &service_policy(
            "    retry: {retryOn: [5xx], attempts: 3, backoff: {base: 1ms}, budget: {percent: 0, minRetryConcurrency: 0}}",
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(eps[0].hits(), 1);
    gw.reconfigure(&config(
        &[&eps[0]],
        &service_policy(
            "    retry: {retryOn: [5xx], attempts: 3, backoff: {base: 1ms}}\n    circuitBreaker: {maxRetries: 0}",
        ),
    ))
    .await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(eps[0].hits(), 2);
}

#[tokio::test]
async fn over_max_requests_is_503_at_once_with_a_reason() {
    let eps = fleet(1, &["hang"]).await;
    eps[0].set(Mode::Hang);
    let yaml = config(
        &[&eps[0]],
        &service_policy("    timeouts: {request: 2s}\n    circuitBreaker: {maxRequests: 2}"),
    );
    let gw = Arc::new(TestGateway::start(&yaml, &["HTTP_PORT"]).await);
    let mut hanging = Vec::new();
    for _ in 0..2 {
        let gw = gw.clone();
        hanging.push(tokio::spawn(async move {
            request(&gw, "GET", &[], "").await.status
        }));
    }
    eventually(
        "two requests in flight",
        Duration::from_secs(5),
        async || eps[0].hits() == 2,
    )
    .await;
    let a = request(&gw, "GET", &[], "").await;
    assert_eq!(a.status, 503);
    assert_eq!(
        a.headers
            .get("x-portcullis-overloaded")
            .and_then(|v| v.to_str().ok()),
        Some("max-requests")
    );
    assert_eq!(
        eps[0].hits(),
        2,
        "the refused request never reached the backend"
    );
    for h in hanging {
        assert_eq!(h.await.expect("join"), 504);
    }
    // Released: the next request is admitted again (and times out).
    eps[0].set(Mode::Ok);
    assert_eq!(request(&gw, "GET", &[], "").await.status, 200);
}

#[tokio::test]
async fn max_connections_with_no_pending_room_is_503() {
    let eps = fleet(1, &["hang"]).await;
    eps[0].set(Mode::Hang);
    let yaml = config(
        &[&eps[0]],
        &service_policy(
            "    timeouts: {request: 5s}\n    circuitBreaker: {maxConnections: 1, maxPendingRequests: 0}",
        ),
    );
    let gw = Arc::new(TestGateway::start(&yaml, &["HTTP_PORT"]).await);
    let g = gw.clone();
    let first = tokio::spawn(async move { request(&g, "GET", &[], "").await.status });
    eventually(
        "one request in flight",
        Duration::from_secs(5),
        async || eps[0].hits() == 1,
    )
    .await;
    let a = request(&gw, "GET", &[], "").await;
    assert_eq!(a.status, 503);
    assert_eq!(
        a.headers
            .get("x-portcullis-overloaded")
            .and_then(|v| v.to_str().ok()),
        Some("max-pending")
    );
    assert_eq!(first.await.expect("join"), 504);
}

#[tokio::test]
async fn outliers_are_ejected_and_come_back() {
    let eps = fleet(2, &["flaky", "good"]).await;
    eps[0].set(Mode::Status500);
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy(
            "    outlierDetection: {consecutive5xx: 2, baseEjectionTime: 1s, maxEjectionPercent: 50}",
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    // Round robin: the flaky endpoint gets every other request until its
    // second 500 in a row ejects it.
    for _ in 0..4 {
        request(&gw, "GET", &[], "").await;
    }
    assert_eq!(eps[0].hits(), 2);
    for _ in 0..10 {
        assert_eq!(who(&request(&gw, "GET", &[], "").await), "good");
    }
    assert_eq!(eps[0].hits(), 2, "ejected: no traffic");
    // Fixed, and the ejection (1 s) over: it gets traffic again.
    eps[0].set(Mode::Ok);
    eventually(
        "ejected endpoint back",
        Duration::from_secs(10),
        async || who(&request(&gw, "GET", &[], "").await) == "flaky",
    )
    .await;
}

#[tokio::test]
async fn never_more_than_max_ejection_percent_is_ejected() {
    let eps = fleet(2, &["a", "b"]).await;
    eps[0].set(Mode::Status500);
    eps[1].set(Mode::Status500);
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy(
            "    outlierDetection: {consecutive5xx: 1, baseEjectionTime: 30s, maxEjectionPercent: 50}",
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    for _ in 0..10 {
        assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    }
    // One endpoint was ejected; the other still serves (and fails).
    let hits = (eps[0].hits(), eps[1].hits());
    assert!(hits.0 == 1 || hits.1 == 1, "{hits:?}");
    assert_eq!(hits.0 + hits.1, 10);
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    let eps = fleet(2, &["a", "b"]).await;
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy(
            "    healthCheck: {interval: 100ms, timeout: 1s, jitter: 20ms, unhealthyThreshold: 2, healthyThreshold: 1, http: {path: /healthz}}",
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    eps[0].healthy.store(false, Ordering::SeqCst);
    eventually(
        "unhealthy endpoint out",
        Duration::from_secs(10),
        async || {
            let before = eps[0].hits();
            for _ in 0..6 {
                request(&gw, "GET", &[], "").await;
            }
            eps[0].hits() == before
        },
    )
    .await;
    eps[0].healthy.store(true, Ordering::SeqCst);
    eventually(
        "healthy endpoint back",
        Duration::from_secs(10),
        async || who(&request(&gw, "GET", &[], "").await) == "a",
    )
    .await;
    // Health checks removed: their tasks stop and every endpoint serves.
    eps[1].healthy.store(false, Ordering::SeqCst);
    gw.reconfigure(&config(&[&eps[0], &eps[1]], "")).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(who(&request(&gw, "GET", &[], "").await));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn tcp_health_checks_take_dead_endpoints_out() {
    let eps = fleet(1, &["live"]).await;
    // A second address on the same port where nothing listens.
    let dead_ip = "127.0.0.9";
    let yaml = config(
            &[&eps[0]],
                &service_policy(
                "    healthCheck: {interval: 100ms, timeout: 500ms, jitter: 10ms, unhealthyThreshold: 1, tcp: {}}",
            ),
        )
        .replace(
            "endpoints:\n- addresses: [\"127.0.0.2\"]",
            &format!("endpoints:\n- addresses: [\"127.0.0.2\"]\n- addresses: [\"{dead_ip}\"]"),
        );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    eventually("dead endpoint out", Duration::from_secs(10), async || {
        let mut ok = true;
        for _ in 0..4 {
            ok &= request(&gw, "GET", &[], "").await.status == 200;
        }
        ok
    })
    .await;
}

/// Requests per endpoint name over `n` sequential requests.
async fn distribution(
    gw: &TestGateway,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(who(&request(gw, "GET", headers, "").await))
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_and_random_spread_requests() {
    let eps = fleet(3, &["a", "b", "c"]).await;
    let all = [&eps[0], &eps[1], &eps[2]];
    let gw = TestGateway::start(
        &config(
            &all,
            &service_policy("    loadBalancer: {type: RoundRobin}"),
        ),
        &["HTTP_PORT"],
    )
    .await;
    let rr = distribution(&gw, 30, &[]).await;
    assert_eq!(
        rr.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{rr:?}"
    );
    gw.reconfigure(&config(
        &all,
        &service_policy("    loadBalancer: {type: Random}"),
    ))
    .await;
    let random = distribution(&gw, 300, &[]).await;
    assert_eq!(random.len(), 3, "{random:?}");
    // Expected 100 each; 40..160 holds with overwhelming probability.
    assert!(random.values().all(|c| (40..160).contains(c)), "{random:?}");
}

#[tokio::test]
async fn least_request_prefers_the_endpoint_with_fewer_in_flight() {
    let eps = fleet(2, &["slow", "fast"]).await;
    eps[0].set(Mode::Slow);
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy("    loadBalancer: {type: LeastRequest}"),
    );
    let gw = Arc::new(TestGateway::start(&yaml, &["HTTP_PORT"]).await);
    // 8 concurrent clients, 10 requests each: the slow endpoint keeps
    // requests in flight, so two-choice sampling mostly avoids it.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut fast = 0;
            for _ in 0..10 {
                if who(&request(&gw, "GET", &[], "").await) == "fast" {
                    fast += 1;
                }
            }
            fast
        }));
    }
    let mut fast = 0;
    for t in tasks {
        fast += t.await.expect("join");
    }
    // Round robin would give 40 of 80; least request gives far more.
    assert!(fast >= 56, "fast endpoint served {fast} of 80");
}

#[tokio::test]
async fn consistent_hash_keeps_keys_when_an_unrelated_endpoint_leaves() {
    let eps = fleet(3, &["a", "b", "c"]).await;
    let policy = service_policy(
        "    loadBalancer: {type: ConsistentHash, consistentHash: {header: x-user}}",
    );
    let gw = TestGateway::start(
        &config(&[&eps[0], &eps[1], &eps[2]], &policy),
        &["HTTP_PORT"],
    )
    .await;
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut owner = HashMap::new();
    for u in &users {
        let first = who(&request(&gw, "GET", &[("x-user", u)], "").await);
        for _ in 0..2 {
            assert_eq!(
                who(&request(&gw, "GET", &[("x-user", u)], "").await),
                first,
                "{u} moved"
            );
        }
        owner.insert(u.clone(), first);
    }
    let owners: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(owners.len(), 3, "keys spread over all endpoints: {owner:?}");
    // Endpoint c leaves the Service: only its keys move.
    gw.reconfigure(&config(&[&eps[0], &eps[1]], &policy)).await;
    for u in &users {
        let now = who(&request(&gw, "GET", &[("x-user", u)], "").await);
        if owner[u] != "c" {
            assert_eq!(now, owner[u], "{u} moved although its endpoint stayed");
        } else {
            assert_ne!(now, "c");
        }
    }
}

#[tokio::test]
async fn session_cookie_sticks_to_one_endpoint() {
    let eps = fleet(3, &["a", "b", "c"]).await;
    let yaml = config(
        &[&eps[0], &eps[1], &eps[2]],
        &service_policy("    loadBalancer: {type: RoundRobin, sessionPersistence: {cookieName: sticky, ttl: 1h}}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let first = request(&gw, "GET", &[], "").await;
    let set_cookie = first
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("session cookie set")
        .to_string();
    assert!(
        set_cookie.starts_with("sticky=") && set_cookie.contains("Max-Age=3600"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("pair").to_string();
    for _ in 0..9 {
        let a = request(&gw, "GET", &[("cookie", &cookie)], "").await;
        assert_eq!(who(&a), who(&first));
        assert!(
            a.headers.get("set-cookie").is_none(),
            "cookie already right"
        );
    }
    // Without the cookie, round robin goes on.
    let others = distribution(&gw, 3, &[]).await;
    assert_eq!(others.len(), 3, "{others:?}");
}

#[tokio::test]
async fn policy_request_timeout_ends_hanging_requests() {
    let eps = fleet(1, &["hang"]).await;
    eps[0].set(Mode::Hang);
    let yaml = config(
        &[&eps[0]],
        &service_policy("    timeouts: {request: 300ms}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    // The backend would hang for 30 s; the client's own limit is 10 s.
    assert_eq!(request(&gw, "GET", &[], "").await.status, 504);
}

#[tokio::test]
async fn route_attached_policies_set_retries_and_refuse_endpoint_settings() {
    let eps = fleet(1, &["bad"]).await;
    eps[0].set(Mode::Status500);
    let route_policy = "---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: route-policy, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: main}]
  defaults:
    retry: {retryOn: [5xx], attempts: 1, backoff: {base: 1ms}}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: wrong-place, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  defaults:
    loadBalancer: {type: Random}
";
    let gw = TestGateway::start(&config(&[&eps[0]], route_policy), &["HTTP_PORT"]).await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 500);
    assert_eq!(eps[0].hits(), 2, "retried once by the rule's policy");
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let statuses: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    let find = |name: &str| {
        statuses
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no status for {name}: {statuses}"))
    };
    let ok = find("route-policy").to_string();
    assert!(ok.contains("\"status\":\"True\""), "{ok}");
    let wrong = find("wrong-place").to_string();
    assert!(wrong.contains("targets the Service"), "{wrong}");
}

#[tokio::test]
async fn a_malformed_body_on_a_retried_route_is_400_and_never_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let eps = fleet(1, &["backend"]).await;
    let yaml = config(
        &[&eps[0]],
        &service_policy("    retry: {retryOn: [5xx], attempts: 2, backoff: {base: 1ms}}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    // The body is buffered for replay before any attempt: its bad chunk
    // size is found before the backend is contacted.
    let raw = "PUT / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n";
    let mut stream = tokio::net::TcpStream::connect((LOOPBACK, gw.port("HTTP_PORT")))
        .await
        .expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(eps[0].hits(), 0);
}

#[tokio::test]
async fn hanging_attempts_time_out_and_are_retried_elsewhere() {
    let eps = fleet(2, &["hang", "good"]).await;
    eps[0].set(Mode::Hang);
    let yaml = config(
        &[&eps[0], &eps[1]],
        &service_policy(
            "    retry: {retryOn: [gateway-error], attempts: 1, perTryTimeout: 200ms, backoff: {base: 1ms}}",
        ),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    for _ in 0..4 {
        let a = request(&gw, "GET", &[], "").await;
        assert_eq!((a.status.as_u16(), who(&a)), (200, "good".to_string()));
    }
    assert!(eps[0].hits() >= 1, "round robin tried the hanging endpoint");
}

#[tokio::test]
async fn connection_http_version_overrides_the_service_protocol() {
    let eps = fleet(1, &["h2"]).await;
    let yaml = config(
        &[&eps[0]],
        &service_policy("    connection: {httpVersion: HTTP/2}"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 200);
    gw.reconfigure(&config(&[&eps[0]], "")).await;
    assert_eq!(request(&gw, "GET", &[], "").await.status, 200);
    let versions = eps[0].versions.lock().expect("lock").clone();
    assert_eq!(
        versions,
        vec![http::Version::HTTP_2, http::Version::HTTP_11]
    );
}

#[tokio::test]
async fn requests_wait_for_a_connection_up_to_the_pending_limit() {
    let eps = fleet(1, &["hang"]).await;
    eps[0].set(Mode::Hang);
    let yaml = config(
        &[&eps[0]],
        &service_policy(
            "    timeouts: {request: 3s, connect: 2s}\n    circuitBreaker: {maxConnections: 1, maxPendingRequests: 1}",
        ),
    );
    let gw = Arc::new(TestGateway::start(&yaml, &["HTTP_PORT"]).await);
    let overloaded = |a: &Answer| {
        a.headers
            .get("x-portcullis-overloaded")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let g = gw.clone();
    let first = tokio::spawn(async move { request(&g, "GET", &[], "").await.status });
    eventually(
        "one request in flight",
        Duration::from_secs(5),
        async || eps[0].hits() == 1,
    )
    .await;
    // The second waits for the only connection (up to the connect timeout).
    let g = gw.clone();
    let second = tokio::spawn(async move { request(&g, "GET", &[], "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The third finds the one pending place taken.
    let third = request(&gw, "GET", &[], "").await;
    assert_eq!(third.status, 503);
    assert_eq!(overloaded(&third).as_deref(), Some("max-pending"));
    // The connection never frees up: the waiting request gives up.
    let second = second.await.expect("join");
    assert_eq!(second.status, 503);
    assert_eq!(overloaded(&second).as_deref(), Some("max-connections"));
    assert_eq!(eps[0].hits(), 1);
    assert_eq!(first.await.expect("join"), 504);
}

#[tokio::test]
async fn ejections_survive_unrelated_configuration_changes() {
    let eps = fleet(2, &["flaky", "good"]).await;
    eps[0].set(Mode::Status500);
    let policy = service_policy(
        "    outlierDetection: {consecutive5xx: 1, baseEjectionTime: 60s, maxEjectionPercent: 50}",
    );
    let gw = TestGateway::start(&config(&[&eps[0], &eps[1]], &policy), &["HTTP_PORT"]).await;
    for _ in 0..2 {
        request(&gw, "GET", &[], "").await;
    }
    assert_eq!(eps[0].hits(), 1, "ejected after its first 500");
    // Another route appears: a new table, the same backend state.
    let other_route = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [other.example]
  rules:
  - backendRefs: [{name: svc, port: 80}]
";
    gw.reconfigure(&config(
        &[&eps[0], &eps[1]],
        &format!("{policy}{other_route}"),
    ))
    .await;
    for _ in 0..6 {
        assert_eq!(who(&request(&gw, "GET", &[], "").await), "good");
    }
    assert_eq!(eps[0].hits(), 1);
}

/// An h2c gRPC backend whose first `failures` calls are answered
/// trailers-only with `grpc-status: code`; later calls echo the request
/// message with `grpc-status: 0` trailers. Counts calls.
async fn flaky_grpc_backend(failures: usize, code: u8) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let message = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let resp = if n < failures {
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", code.to_string())
                                    .header("grpc-message", "try again")
                                    .body(http_body_util::Either::Left(Full::new(Bytes::new())))
                            } else {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().expect("value"));
                                let body =
                                    http_body_util::StreamBody::new(futures_util::stream::iter([
                                        Ok::<_, std::convert::Infallible>(
                                            hyper::body::Frame::data(message),
                                        ),
                                        Ok(hyper::body::Frame::trailers(trailers)),
                                    ]));
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(http_body_util::Either::Right(body))
                            };
                            Ok::<_, std::convert::Infallible>(resp.expect("response"))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, calls)
}

/// Sends one unary gRPC call through the gateway: (grpc-status from the
/// headers or trailers, response message).
async fn grpc_call(gw: &TestGateway) -> (String, Bytes) {
    let answer = grpc::call(&gw.url("HTTP_PORT", "/demo.Echo/Say"), &[]).await;
    (answer.status, answer.body)
}

fn grpc_config(backend: SocketAddr, retry: &str) -> String {
    format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: svc, port: 80}}]
{}",
        gateway(PLAIN_LISTENER),
        service_yaml("svc", &[backend], Some("kubernetes.io/h2c")),
        service_policy(retry),
    )
}

#[tokio::test]
async fn grpc_calls_are_retried_on_listed_trailers_only_statuses() {
    // UNAVAILABLE twice, then success: two retries, the client sees OK.
    let (backend, calls) = flaky_grpc_backend(2, 14).await;
    let gw = TestGateway::start(
        &grpc_config(
            backend,
            "    retry: {grpcStatusCodes: [unavailable, resource-exhausted], attempts: 3, backoff: {base: 1ms}}",
        ),
        &["HTTP_PORT"],
    )
    .await;
    let (status, message) = grpc_call(&gw).await;
    assert_eq!(status, "0");
    assert_eq!(
        &message[..],
        b"\x00\x00\x00\x00\x05hello",
        "the request body was replayed"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn grpc_statuses_not_listed_are_relayed_at_once() {
    // INVALID_ARGUMENT is the caller's fault: never retried.
    let (backend, calls) = flaky_grpc_backend(1, 3).await;
    let gw = TestGateway::start(
        &grpc_config(
            backend,
            "    retry: {grpcStatusCodes: [unavailable], attempts: 3, backoff: {base: 1ms}}",
        ),
        &["HTTP_PORT"],
    )
    .await;
    assert_eq!(grpc_call(&gw).await.0, "3");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Without grpcStatusCodes, a POST gRPC call is not retried either.
    let (backend, calls) = flaky_grpc_backend(1, 14).await;
    let gw = TestGateway::start(
        &grpc_config(backend, "    retry: {attempts: 3, backoff: {base: 1ms}}"),
        &["HTTP_PORT"],
    )
    .await;
    assert_eq!(grpc_call(&gw).await.0, "14");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

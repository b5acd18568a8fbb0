//! RateLimitPolicy through real gateways: local limits, global limits in a
//! real redis-server (killed and restarted mid-test), headers, shadow mode,
//! throttling, counters across reloads.
//!
//! Stated tolerances: a local limit and a global limit never admit more than
//! their limit within a window, under any concurrency (both count
//! atomically; the global fast path only spends quota already counted in
//! Redis). A global limit may under-admit by the quota leased to a replica
//! and unused when traffic stops; the three-replica test holds it within 5%.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis_tests::redis::{RedisServer, RedisTlsFiles};
use portcullis_tests::{
    gateway, get, http1_client, send, service_yaml, start_echo, Answer, Tally, TestGateway,
    TestPki, PLAIN_LISTENER,
};

const HOST: &str = "rl.example.com";

/// Gateway, echo Service and HTTPRoutes `api` (rule `main` on /api, rule
/// `other` on /other) and `second` (/second), plus `extra` YAML.
async fn config(extra: &str) -> String {
    let echo = start_echo("echo-0").await;
    format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [\"{HOST}\"]
  rules:
  - name: main
    matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{name: echo, port: 80}}]
  - name: other
    matches: [{{path: {{type: PathPrefix, value: /other}}}}]
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: second, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [\"{HOST}\"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /second}}}}]
    backendRefs: [{{name: echo, port: 80}}]
{extra}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
    )
}

/// A RateLimitPolicy targeting `target` (`kind/name[/section]`) with
/// `rules` (YAML, indented by 2, at the top level of spec).
fn policy(name: &str, target: &str, rules: &str) -> String {
    let mut parts = target.split('/');
    let kind = parts.next().unwrap_or_default();
    let target_name = parts.next().unwrap_or_default();
    let section = parts
        .next()
        .map(|s| format!(", sectionName: {s}"))
        .unwrap_or_default();
    format!(
        "
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: {kind}, name: {target_name}{section}}}
{rules}
"
    )
}

async fn start(extra: &str) -> TestGateway {
    TestGateway::start(&config(extra).await, &["HTTP_PORT"]).await
}

async fn hit(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    get(&gw.url("HTTP_PORT", path), HOST, headers).await
}

fn header(a: &Answer, name: &str) -> Option<String> {
    a.headers
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

/// Sends `n` requests one after the other; returns the statuses.
async fn statuses(gw: &TestGateway, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(hit(gw, path, headers).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn local_limit_admits_exactly_the_limit_then_429_with_retry_after() {
    let gw = start(&policy(
        "rl",
        "HTTPRoute/api/main",
        "  limits:
    per-client:
      rates: [{limit: 5, window: 1h}]
      key: [{type: ClientIP}]",
    ))
    .await;
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let a = hit(&gw, "/api", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            header(&a, "ratelimit-policy").as_deref(),
            Some("\"per-client\";q=5;w=3600")
        );
        remaining.push(header(&a, "ratelimit").expect("RateLimit header"));
    }
    for (i, r) in remaining.iter().enumerate() {
        assert!(
            r.starts_with(&format!("\"per-client\";r={};t=", 4 - i)),
            "{remaining:?}"
        );
    }
    let rejected = hit(&gw, "/api", &[]).await;
    assert_eq!(rejected.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&rejected, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    // Sliding window: the 5 requests of this window still weigh on the
    // next one, so the wait can be up to 1.2 windows.
    assert!((1..=4320).contains(&retry), "Retry-After {retry}");
    let rl = header(&rejected, "ratelimit").expect("RateLimit on 429");
    assert_eq!(rl, format!("\"per-client\";r=0;t={retry}"));
    // The other rule of the route has no policy.
    assert_eq!(
        statuses(&gw, "/other", &[], 8).await,
        vec![200; 8],
        "rule `other` is not limited"
    );
}

#[tokio::test]
async fn rate_boundary_releases_exactly_one_window_of_requests() {
    // 3 per second: a burst gets 3, and after the window slides by (at
    // most two windows, bounded wait) 3 more are admitted, never 4.
    let gw = start(&policy(
        "rl",
        "HTTPRoute/api",
        "  limits:
    burst:
      rates: [{limit: 3, window: 1s}]",
    ))
    .await;
    let first = statuses(&gw, "/api", &[], 5).await;
    assert_eq!(first, vec![200, 200, 200, 429, 429]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = statuses(&gw, "/api", &[], 5).await;
    assert_eq!(second, vec![200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn several_rates_are_all_enforced() {
    let gw = start(&policy(
        "rl",
        "HTTPRoute/api",
        "  limits:
    tiered:
      rates: [{limit: 2, window: 1s}, {limit: 3, window: 1h}]
  responseHeaders: XRateLimit",
    ))
    .await;
    assert_eq!(statuses(&gw, "/api", &[], 3).await, vec![200, 200, 429]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The second has room again, the hour has one left.
    let a = hit(&gw, "/api", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(header(&a, "x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(header(&a, "x-ratelimit-remaining").as_deref(), Some("0"));
    let rejected = hit(&gw, "/api", &[]).await;
    assert_eq!(rejected.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&rejected, "x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        header(&rejected, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let reset: u64 = header(&rejected, "x-ratelimit-reset")
        .expect("reset")
        .parse()
        .expect("seconds");
    assert!(
        reset > 1,
        "the hourly rate is the one that rejects: {reset}"
    );
}

#[tokio::test]
async fn header_keys_and_conditions_select_counters() {
    let gw = start(&policy(
        "rl",
        "HTTPRoute/api",
        "  responseHeaders: None
  limits:
    per-tenant:
      rates: [{limit: 2, window: 1h}]
      key: [{type: Header, name: x-tenant}]
    posts:
      rates: [{limit: 1, window: 1h}]
      when: [{method: POST, path: {type: PathPrefix, value: /api/write}}]",
    ))
    .await;
    let a = [("x-tenant", "a")];
    let b = [("x-tenant", "b")];
    assert_eq!(statuses(&gw, "/api", &a, 3).await, vec![200, 200, 429]);
    assert_eq!(statuses(&gw, "/api", &b, 3).await, vec![200, 200, 429]);
    // No tenant header: the per-tenant limit does not count the request.
    let none = statuses(&gw, "/api", &[], 5).await;
    assert_eq!(none, vec![200; 5]);
    // Style None: no rate-limit headers, but 429s keep Retry-After.
    let rejected = hit(&gw, "/api", &a).await;
    assert_eq!(rejected.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&rejected, "retry-after").is_some());
    assert!(header(&rejected, "ratelimit").is_none());
    assert!(header(&rejected, "x-ratelimit-limit").is_none());

    // Only POSTs under /api/write count for `posts`.
    let post = |path: &'static str| {
        let url = gw.url("HTTP_PORT", path);
        async move {
            let req = Request::post(url)
                .header("host", HOST)
                .body(Full::new(Bytes::new()))
                .expect("request");
            send(&http1_client(), req).await.status.as_u16()
        }
    };
    assert_eq!(post("/api/write").await, 200);
    assert_eq!(post("/api/write").await, 429);
    assert_eq!(post("/api/read").await, 200);
    assert_eq!(post("/api/read").await, 200);
}

/// `concurrency` tasks send `per_task` requests each to `url`; returns
/// (admitted, rejected).
async fn load(url: String, concurrency: usize, per_task: usize) -> (usize, usize) {
    let tally = Arc::new(Tally::default());
    let client = http1_client();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (tally, client, url) = (tally.clone(), client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let req = Request::get(&url)
                        .header("host", HOST)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    match send(&client, req).await.status {
                        StatusCode::OK => tally.ok.fetch_add(1, Ordering::Relaxed),
                        StatusCode::TOO_MANY_REQUESTS => {
                            tally.failed.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    (tally.ok(), tally.failed())
}

#[tokio::test]
async fn concurrent_clients_on_one_key_never_over_admit_local() {
    let gw = start(&policy(
        "rl",
        "HTTPRoute/api",
        "  limits:
    one-key:
      rates: [{limit: 150, window: 1h}]
      key: [{type: ClientIP}]",
    ))
    .await;
    let (ok, rejected) = load(gw.url("HTTP_PORT", "/api"), 32, 10).await;
    assert_eq!(ok, 150, "exactly the limit, whatever the interleaving");
    assert_eq!(rejected, 320 - 150);
}

#[tokio::test]
async fn shadow_mode_never_rejects_and_adds_no_headers() {
    let gw = start(&policy(
        "rl",
        "HTTPRoute/api",
        "  shadow: true
  limits:
    tiny:
      rates: [{limit: 1, window: 1h}]",
    ))
    .await;
    for _ in 0..10 {
        let a = hit(&gw, "/api", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(header(&a, "ratelimit").is_none());
        assert!(header(&a, "ratelimit-policy").is_none());
    }
}

#[tokio::test]
async fn throttling_delays_instead_of_rejecting_within_max_wait() {
    let gw = start(&format!(
        "{}{}",
        policy(
            "queued",
            "HTTPRoute/api/main",
            "  throttle: {maxQueued: 4, maxWait: 5s}
  limits:
    slow:
      rates: [{limit: 2, window: 1s}]",
        ),
        policy(
            "too-long",
            "HTTPRoute/second",
            "  throttle: {maxQueued: 4, maxWait: 1s}
  limits:
    hourly:
      rates: [{limit: 1, window: 1h}]",
        )
    ))
    .await;
    // Over the rate, but the wait fits in maxWait: all admitted (later).
    assert_eq!(statuses(&gw, "/api", &[], 5).await, vec![200; 5]);
    // A wait longer than maxWait is rejected at once.
    assert_eq!(statuses(&gw, "/second", &[], 2).await, vec![200, 429]);
}

#[tokio::test]
async fn throttling_queue_is_bounded() {
    let gw = start(&policy(
        "queued",
        "HTTPRoute/api",
        "  throttle: {maxQueued: 2, maxWait: 10s}
  limits:
    slow:
      rates: [{limit: 1, window: 2s}]",
    ))
    .await;
    // One admitted, two queue, the others find the queue full.
    let url = gw.url("HTTP_PORT", "/api");
    let (ok, rejected) = load(url, 6, 1).await;
    assert!(ok <= 3, "at most one admitted plus two queued: {ok}");
    assert!(rejected >= 3, "queue full: {rejected}");
}

#[tokio::test]
async fn gateway_level_limits_are_per_route_unless_shared() {
    // Limits are checked in name order; a request rejected by one limit is
    // not counted by the limits after it.
    let gw = start(&policy(
        "gw-wide",
        "Gateway/gw",
        "  limits:
    a-per-route:
      rates: [{limit: 2, window: 1h}]
    b-everything:
      shared: true
      rates: [{limit: 3, window: 1h}]",
    ))
    .await;
    // Route `api` stops at its own 2 while the shared quota still has room.
    assert_eq!(statuses(&gw, "/api", &[], 3).await, vec![200, 200, 429]);
    // Route `second` has its own 2, but only 1 of the shared 3 is left.
    assert_eq!(statuses(&gw, "/second", &[], 2).await, vec![200, 429]);
    // Rule `other` belongs to route `api`: its per-route counter is spent.
    assert_eq!(statuses(&gw, "/other", &[], 1).await, vec![429]);
}

#[tokio::test]
async fn counters_survive_a_configuration_reload() {
    let rl = policy(
        "rl",
        "HTTPRoute/api/main",
        "  limits:
    per-client:
      rates: [{limit: 3, window: 1h}]",
    );
    let yaml = config(&rl).await;
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    assert_eq!(statuses(&gw, "/api", &[], 3).await, vec![200; 3]);
    // An unrelated change (another policy) recompiles the table.
    gw.reconfigure(&format!(
        "{yaml}{}",
        policy(
            "unrelated",
            "HTTPRoute/second",
            "  limits:\n    x:\n      rates: [{limit: 100, window: 1s}]"
        )
    ))
    .await;
    assert_eq!(statuses(&gw, "/api", &[], 1).await, vec![429]);
    // Changing the limit itself starts new counters.
    gw.reconfigure(&yaml.replace("limit: 3,", "limit: 4,"))
        .await;
    assert_eq!(
        statuses(&gw, "/api", &[], 5).await,
        vec![200, 200, 200, 200, 429]
    );
}

#[tokio::test]
async fn invalid_policy_is_reported_and_not_applied() {
    let gw = start(&policy(
        "broken",
        "HTTPRoute/api",
        "  limits:
    bad:
      rates: [{limit: 5, window: forever}]",
    ))
    .await;
    assert_eq!(statuses(&gw, "/api", &[], 7).await, vec![200; 7]);
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&status.body);
    assert!(text.contains("limits.bad: rates[0].window"), "{text}");
    assert!(text.contains("\"Invalid\""), "{text}");
}

fn global_policy(name: &str, target: &str, redis_url: &str, limit: u64, failure: &str) -> String {
    policy(
        name,
        target,
        &format!(
            "  global: {{url: \"{redis_url}\", timeout: 500ms, failureMode: {failure}}}
  limits:
    shared-quota:
      mode: Global
      rates: [{{limit: {limit}, window: 1h}}]"
        ),
    )
}

#[tokio::test]
async fn global_limit_counts_exactly_in_redis() {
    let redis = RedisServer::start();
    let gw = start(&global_policy(
        "g",
        "HTTPRoute/api",
        &redis.url(),
        4,
        "Closed",
    ))
    .await;
    let a = hit(&gw, "/api", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        header(&a, "ratelimit-policy").as_deref(),
        Some("\"shared-quota\";q=4;w=3600")
    );
    assert!(header(&a, "ratelimit")
        .expect("RateLimit")
        .starts_with("\"shared-quota\";r=3;"));
    assert_eq!(
        statuses(&gw, "/api", &[], 4).await,
        vec![200, 200, 200, 429]
    );
}

#[tokio::test]
async fn global_rate_boundary_releases_exactly_one_window_of_requests() {
    let redis = RedisServer::start();
    let gw = start(&policy(
        "g",
        "HTTPRoute/api",
        &format!(
            "  global: {{url: \"{}\", timeout: 500ms, failureMode: Closed}}
  limits:
    burst:
      mode: Global
      rates: [{{limit: 3, window: 1s}}]",
            redis.url()
        ),
    ))
    .await;
    let first = statuses(&gw, "/api", &[], 5).await;
    assert_eq!(first, vec![200, 200, 200, 429, 429]);
    let rejected = hit(&gw, "/api", &[]).await;
    // 3 spent in this window: admitted again a third into the next one,
    // i.e. 1/3 to 4/3 of a second from now.
    let retry = header(&rejected, "retry-after").expect("Retry-After");
    assert!(retry == "1" || retry == "2", "Retry-After {retry}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = statuses(&gw, "/api", &[], 5).await;
    assert_eq!(second, vec![200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn concurrent_clients_on_one_key_never_over_admit_global() {
    let redis = RedisServer::start();
    let gw = start(&global_policy(
        "g",
        "HTTPRoute/api",
        &redis.url(),
        200,
        "Closed",
    ))
    .await;
    let (ok, rejected) = load(gw.url("HTTP_PORT", "/api"), 32, 12).await;
    assert!(ok <= 200, "over-admitted: {ok}");
    assert!(ok >= 190, "under-admitted by more than 5%: {ok}");
    assert_eq!(ok + rejected, 32 * 12);
}

#[tokio::test]
async fn three_gateways_sharing_one_redis_hold_the_limit_within_5_percent() {
    let redis = RedisServer::start();
    let limit = 600;
    let rl = global_policy("g", "HTTPRoute/api", &redis.url(), limit, "Closed");
    let gateways = [start(&rl).await, start(&rl).await, start(&rl).await];
    let loads: Vec<_> = gateways
        .iter()
        .map(|gw| tokio::spawn(load(gw.url("HTTP_PORT", "/api"), 12, 40)))
        .collect();
    let mut admitted = 0;
    let mut total = 0;
    for l in loads {
        let (ok, rejected) = l.await.expect("load");
        admitted += ok;
        total += ok + rejected;
    }
    assert_eq!(total, 3 * 12 * 40);
    let error = (admitted as f64 - limit as f64).abs() / limit as f64;
    eprintln!(
        "three gateways: {admitted} of {total} admitted for a limit of {limit} (error {:.2}%)",
        error * 100.0
    );
    assert!(admitted as u64 <= limit, "over-admitted: {admitted}");
    assert!(error <= 0.05, "admitted {admitted} for a limit of {limit}");
}

#[tokio::test]
async fn redis_outage_follows_failure_mode_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let extra = format!(
        "{}{}",
        // Small limits: no quota is leased ahead (a lease would keep
        // admitting from quota counted before the outage, as designed).
        global_policy("open", "HTTPRoute/api", &redis.url(), 8, "Open"),
        global_policy("closed", "HTTPRoute/second", &redis.url(), 8, "Closed"),
    );
    let gw = start(&extra).await;
    assert_eq!(hit(&gw, "/api", &[]).await.status, StatusCode::OK);
    assert_eq!(hit(&gw, "/second", &[]).await.status, StatusCode::OK);

    redis.kill();
    // Every request is answered (the client gives each at most 10 s; the
    // policy's timeout is 500 ms), per failureMode.
    for _ in 0..5 {
        assert_eq!(
            hit(&gw, "/api", &[]).await.status,
            StatusCode::OK,
            "fail open"
        );
        let closed = hit(&gw, "/second", &[]).await;
        assert_eq!(
            closed.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "fail closed"
        );
        assert_eq!(header(&closed, "retry-after").as_deref(), Some("1"));
    }

    redis.restart();
    // Recovery without restarting the gateway: bounded wait for the
    // reconnect (backoff is at most 1 s).
    let mut recovered = false;
    for _ in 0..100 {
        if hit(&gw, "/second", &[]).await.status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "closed route still failing after redis came back"
    );
    // And limits are enforced again (the restarted Redis starts empty).
    assert_eq!(hit(&gw, "/api", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn global_limit_over_tls_with_password() {
    let pki = TestPki::new();
    let (cert_pem, key_pem) = pki.server_cert(&["localhost", "127.0.0.1"]);
    let ca_pem = pki.ca_cert.pem();
    let redis = RedisServer::start_with(
        Some("s3cret"),
        Some(RedisTlsFiles {
            cert_pem,
            key_pem,
            ca_pem: ca_pem.clone(),
        }),
    );
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let extra = format!(
        "{}
---
apiVersion: v1
kind: Secret
metadata: {{name: redis-creds, namespace: default}}
stringData:
  password: s3cret
---
apiVersion: v1
kind: Secret
metadata: {{name: redis-ca, namespace: default}}
stringData:
  ca.crt: |
{}
",
        policy(
            "tls",
            "HTTPRoute/api",
            &format!(
                "  global:
    url: \"{}\"
    credentialsRef: {{name: redis-creds}}
    tls: {{caSecretRef: {{name: redis-ca}}, serverName: localhost}}
    timeout: 2s
    failureMode: Closed
  limits:
    quota:
      mode: Global
      rates: [{{limit: 3, window: 1h}}]",
                redis.url()
            ),
        ),
        indent(&ca_pem)
    );
    let gw = start(&extra).await;
    // failureMode Closed: a 200 proves Redis answered over TLS with AUTH.
    assert_eq!(
        statuses(&gw, "/api", &[], 4).await,
        vec![200, 200, 200, 429]
    );
}

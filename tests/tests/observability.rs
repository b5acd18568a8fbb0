//! Metrics, access log, request ids and trace context, end to end: real
//! requests through a gateway, then what an operator would read (the
//! admin /metrics page, the access log file, the headers the backend got).
//!
//! Metrics are process-wide; every test here uses its own route and
//! Service names so that tests running in parallel do not see each other.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use portcullis_dataplane::access_log::{AccessLog, AccessLogConfig, Destination};
use portcullis_tests::*;

fn route_yaml(route: &str, service: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {route}
  namespace: default
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [\"{route}.example\"]
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

async fn scrape(gw: &TestGateway) -> String {
    let answer = get(&gw.admin_url("/metrics"), "admin", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        answer.headers
    );
    String::from_utf8(answer.body.to_vec()).expect("metrics are text")
}

/// The value of the series whose line starts with `prefix`.
fn value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn refused_address() -> SocketAddr {
    // Bound then closed: nothing listens there.
    free_listener().local_addr().expect("address")
}

#[tokio::test]
async fn requests_are_counted_by_route_backend_method_and_status_class() {
    let echo = start_echo("metered").await;
    let yaml = format!(
        "{}{}{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("metered-svc", &[echo], None),
        route_yaml("metered", "metered-svc"),
        service_yaml("refusing-svc", &[refused_address()], None),
        route_yaml("refusing", "refusing-svc"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let port = gw.port("HTTP_PORT");
    for _ in 0..3 {
        let answer = get(&gw.url("HTTP_PORT", "/a"), "metered.example", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let refused = get(&gw.url("HTTP_PORT", "/"), "refusing.example", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);

    let metrics = scrape(&gw).await;
    let series = format!(
        "portcullis_requests_total{{port=\"{port}\",route=\"httproute/default/metered/rule/0\",backend=\"default/metered-svc:80\",method=\"GET\",status=\"2xx\"}}"
    );
    assert_eq!(value(&metrics, &series), Some(3.0), "{metrics}");
    let duration = format!(
        "portcullis_request_duration_seconds_count{{port=\"{port}\",route=\"httproute/default/metered/rule/0\",backend=\"default/metered-svc:80\",method=\"GET\",status=\"2xx\"}}"
    );
    assert_eq!(value(&metrics, &duration), Some(3.0), "{metrics}");
    assert_eq!(
        value(
            &metrics,
            "portcullis_upstream_errors_total{backend=\"default/refusing-svc:80\",error=\"connect\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            &format!("portcullis_requests_total{{port=\"{port}\",route=\"httproute/default/refusing/rule/0\",backend=\"default/refusing-svc:80\",method=\"GET\",status=\"5xx\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        value(
            &metrics,
            "portcullis_upstream_duration_seconds_count{backend=\"default/metered-svc:80\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_config_generation "),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_controller_compile_duration_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"));
}

#[tokio::test]
async fn requests_without_a_route_are_counted_without_client_data_in_labels() {
    let gw = TestGateway::start(&gateway(PLAIN_LISTENER), &["HTTP_PORT"]).await;
    let port = gw.port("HTTP_PORT");
    for i in 0..5 {
        let answer = get(
            &gw.url("HTTP_PORT", &format!("/random/{i}")),
            &format!("host-{i}.example"),
            &[],
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
    let metrics = scrape(&gw).await;
    let series = format!(
        "portcullis_requests_total{{port=\"{port}\",route=\"\",backend=\"\",method=\"GET\",status=\"4xx\"}}"
    );
    assert_eq!(value(&metrics, &series), Some(5.0), "{metrics}");
    assert!(!metrics.contains("host-1.example"), "{metrics}");
    assert!(!metrics.contains("/random/"), "{metrics}");
}

#[tokio::test]
async fn series_of_a_removed_route_disappear_on_reload() {
    let echo = start_echo("renamed").await;
    let service = service_yaml("renamed-svc", &[echo], None);
    let before = format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service,
        route_yaml("before-rename", "renamed-svc")
    );
    let gw = TestGateway::start(&before, &["HTTP_PORT"]).await;
    let answer = get(&gw.url("HTTP_PORT", "/"), "before-rename.example", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(scrape(&gw)
        .await
        .contains("route=\"httproute/default/before-rename/rule/0\""));

    gw.reconfigure(&format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service,
        route_yaml("after-rename", "renamed-svc")
    ))
    .await;
    let answer = get(&gw.url("HTTP_PORT", "/"), "after-rename.example", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let metrics = scrape(&gw).await;
    assert!(
        metrics.contains("route=\"httproute/default/after-rename/rule/0\""),
        "{metrics}"
    );
    assert!(
        !metrics.contains("before-rename"),
        "series of the removed route are gone: {metrics}"
    );
}

/// Reads access log lines until one satisfies `pred` (bounded).
async fn wait_for_line(
    path: &Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only complete lines: the writer may be in the middle of one.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        for line in complete.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if pred(&v) {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no matching access log line in {}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

#[tokio::test]
async fn access_log_lines_carry_ids_trace_route_and_upstream() {
    let echo = start_echo("logged").await;
    let yaml = format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("logged-svc", &[echo], None),
        route_yaml("logged", "logged-svc"),
    );
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("access.log");
    let log = AccessLog::spawn(AccessLogConfig {
        destination: Destination::File(log_path.clone()),
        ..AccessLogConfig::default()
    })
    .expect("access log");
    let gw = TestGateway::start_with(&yaml, &["HTTP_PORT"], |c| c.access_log = Some(log)).await;

    // A client that sends its own request id and trace context.
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = get(
        &gw.url("HTTP_PORT", "/orders/42?token=secret"),
        "logged.example",
        &[
            ("x-request-id", "client-chosen-id"),
            ("traceparent", parent),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], "client-chosen-id");
    assert_eq!(
        answer.echoed_header("x-request-id").as_deref(),
        Some("client-chosen-id")
    );
    let sent = answer
        .echoed_header("traceparent")
        .expect("traceparent sent upstream");
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert!(
        !sent.contains("b7ad6b7169203331"),
        "a new span for our hop: {sent}"
    );
    let our_span = sent[36..52].to_string();

    let line = wait_for_line(&log_path, |v| v["request_id"] == "client-chosen-id").await;
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "logged.example");
    assert_eq!(line["path"], "/orders/42");
    assert!(
        line.get("query").is_none(),
        "query strings are not logged by default"
    );
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"].as_u64(), Some(answer.body.len() as u64));
    assert_eq!(line["route"], "httproute/default/logged/rule/0");
    assert_eq!(line["backend"], "default/logged-svc:80");
    assert_eq!(line["upstream"], echo.to_string());
    assert!(line["upstream_ms"].as_f64().is_some());
    assert!(line["duration_ms"].as_f64().is_some());
    assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(line["span_id"], our_span.as_str());
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));

    // Without ids: the gateway makes them, the backend and the client get
    // the same request id, the log line too.
    let answer = get(&gw.url("HTTP_PORT", "/fresh"), "logged.example", &[]).await;
    let id = answer.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        answer.echoed_header("x-request-id").as_deref(),
        Some(id.as_str())
    );
    let trace = answer.echoed_header("traceparent").expect("a new trace");
    let line = wait_for_line(&log_path, |v| v["request_id"] == id.as_str()).await;
    assert_eq!(line["trace_id"].as_str(), Some(&trace[3..35]));
    assert_eq!(line["path"], "/fresh");

    // Requests with no route are logged too (no route, no upstream).
    let answer = get(&gw.url("HTTP_PORT", "/nowhere"), "unknown.example", &[]).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let line = wait_for_line(&log_path, |v| v["path"] == "/nowhere").await;
    assert_eq!(line["status"], 404);
    assert!(line["route"].is_null());
    assert!(line["upstream"].is_null());
}

#[tokio::test]
async fn sampling_drops_successes_but_keeps_errors() {
    let echo = start_echo("sampled").await;
    let yaml = format!(
        "{}{}{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("sampled-svc", &[echo], None),
        route_yaml("sampled", "sampled-svc"),
        service_yaml("sampled-down", &[refused_address()], None),
        route_yaml("sampled-down", "sampled-down"),
    );
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("access.log");
    let log = AccessLog::spawn(AccessLogConfig {
        destination: Destination::File(log_path.clone()),
        sample_rate: 0.0,
        ..AccessLogConfig::default()
    })
    .expect("access log");
    let gw = TestGateway::start_with(&yaml, &["HTTP_PORT"], |c| c.access_log = Some(log)).await;
    for _ in 0..5 {
        let answer = get(&gw.url("HTTP_PORT", "/ok"), "sampled.example", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let answer = get(&gw.url("HTTP_PORT", "/down"), "sampled-down.example", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let line = wait_for_line(&log_path, |v| v["path"] == "/down").await;
    assert_eq!(line["status"], 503);
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        !text.contains("\"/ok\""),
        "successes are sampled out: {text}"
    );
}

/// A stand-in OpenTelemetry collector: records the JSON bodies posted to
/// /v1/traces (no collector binary is available to the tests).
async fn start_collector() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req.headers()["content-type"] == "application/json";
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let (true, Ok(v)) = (ok, serde_json::from_slice(&body)) {
                                store.lock().expect("lock").push(v);
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_with_the_callers_trace() {
    use portcullis_dataplane::otlp::{OtlpConfig, SpanExporter};
    let (collector, received) = start_collector().await;
    let echo = start_echo("traced").await;
    let yaml = format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("traced-svc", &[echo], None),
        route_yaml("traced", "traced-svc"),
    );
    let exporter = SpanExporter::spawn(OtlpConfig {
        endpoint: format!("http://{collector}"),
        service_name: "edge-gateway".into(),
        buffer: 64,
    })
    .expect("exporter");
    let gw = TestGateway::start_with(&yaml, &["HTTP_PORT"], |c| c.spans = Some(exporter)).await;

    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let not_sampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let answer = get(
        &gw.url("HTTP_PORT", "/pay"),
        "traced.example",
        &[("traceparent", not_sampled)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = get(
        &gw.url("HTTP_PORT", "/pay"),
        "traced.example",
        &[("traceparent", sampled)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let sent = answer
        .echoed_header("traceparent")
        .expect("traceparent upstream");

    let mut span = None;
    for _ in 0..500 {
        let bodies = received.lock().expect("lock").clone();
        span = bodies
            .iter()
            .flat_map(|b| {
                b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736");
        if span.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let span = span.expect("the span reached the collector");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(
        span["spanId"].as_str(),
        Some(&sent[36..52]),
        "the backend's parent is our span"
    );
    assert_eq!(span["name"], "GET httproute/default/traced/rule/0");
    assert_eq!(span["kind"], 2);
    let bodies = received.lock().expect("lock").clone();
    assert_eq!(
        bodies[0]["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "edge-gateway"
    );
    let all = serde_json::to_string(&bodies).unwrap();
    assert!(
        !all.contains("11111111111111111111111111111111"),
        "unsampled traces are not exported"
    );
}

#[tokio::test]
async fn rate_limit_decisions_and_auth_results_are_counted() {
    let echo = start_echo("policed").await;
    let yaml = format!(
        "{}{}{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("policed-svc", &[echo], None),
        route_yaml("limited", "policed-svc"),
        route_yaml("keyed", "policed-svc"),
        "
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: metered-limits, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: limited}]
  limits:
    two-per-minute:
      rates: [{limit: 2, window: 1m}]
---
apiVersion: v1
kind: Secret
metadata:
  name: metered-key
  namespace: default
  labels: {metered-test/api-key: \"true\"}
  annotations: {portcullis.dev/consumer: metered-consumer}
stringData: {api_key: metered-key-0123456789abcdef}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: metered-auth, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: keyed}]
  apiKeys:
    selector: {matchLabels: {metered-test/api-key: \"true\"}}
"
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = gw.url("HTTP_PORT", "/");
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(get(&url, "limited.example", &[]).await.status.as_u16());
        }
        out
    };
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        get(&url, "keyed.example", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let key = [("x-api-key", "metered-key-0123456789abcdef")];
    assert_eq!(
        get(&url, "keyed.example", &key).await.status,
        StatusCode::OK
    );

    let metrics = scrape(&gw).await;
    let decision = |d: &str| {
        value(
            &metrics,
            &format!("portcullis_rate_limit_decisions_total{{limit=\"two-per-minute\",decision=\"{d}\"}}"),
        )
    };
    assert_eq!(decision("allowed"), Some(2.0), "{metrics}");
    assert_eq!(decision("limited"), Some(1.0), "{metrics}");
    let auth = |mechanism: &str, result: &str, reason: &str| {
        value(
            &metrics,
            &format!("portcullis_auth_results_total{{policy=\"AuthPolicy default/metered-auth\",mechanism=\"{mechanism}\",result=\"{result}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(auth("api_key", "allowed", "ok"), Some(1.0), "{metrics}");
    assert_eq!(
        auth("any", "unauthenticated", "missing_or_invalid_credentials"),
        Some(1.0),
        "{metrics}"
    );
}

/// A backend that answers every request with `status`, or holds it
/// unanswered (`None`) until the connection closes.
async fn fixed_backend(status: Option<u16>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    // One read per request: the test requests have no body.
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let Some(status) = status else { continue };
                    let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn retries_ejections_and_circuit_breaker_rejections_are_counted() {
    let failing = fixed_backend(Some(503)).await;
    let hanging = fixed_backend(None).await;
    let yaml = format!(
        "{}{}{}{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: flaky-policy, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: flaky-svc}}]
  retry: {{retryOn: [5xx], attempts: 2, backoff: {{base: 1ms}}}}
  outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 30s, maxEjectionPercent: 100}}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: narrow-policy, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: narrow-svc}}]
  timeouts: {{request: 3s}}
  circuitBreaker: {{maxRequests: 1}}
",
        gateway(PLAIN_LISTENER),
        service_yaml("flaky-svc", &[failing], None),
        service_yaml("narrow-svc", &[hanging], None),
        route_yaml("flaky", "flaky-svc"),
        route_yaml("narrow", "narrow-svc"),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = gw.url("HTTP_PORT", "/");

    // One request, three attempts (two retries), three consecutive 5xx:
    // the only endpoint is ejected.
    assert_eq!(get(&url, "flaky.example", &[]).await.status, 503);

    // The first request holds the only slot; the second is refused.
    let held = tokio::spawn({
        let url = url.clone();
        async move { get(&url, "narrow.example", &[]).await.status }
    });
    let mut refused = None;
    for _ in 0..100 {
        let answer = get(&url, "narrow.example", &[]).await;
        if answer.headers.contains_key("x-portcullis-overloaded") {
            refused = Some(answer.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        held.await.expect("held request"),
        StatusCode::GATEWAY_TIMEOUT
    );

    let metrics = scrape(&gw).await;
    let counter = |name: &str, backend: &str| {
        value(
            &metrics,
            &format!("portcullis_{name}_total{{backend=\"{backend}\"}}"),
        )
    };
    assert_eq!(
        counter("upstream_retries", "default/flaky-svc:80"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        counter("outlier_ejections", "default/flaky-svc:80"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        counter("circuit_breaker_rejections", "default/narrow-svc:80").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

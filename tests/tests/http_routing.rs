//! HTTPRoute matching and filters, end to end over real sockets: a gateway
//! in standalone mode in front of real echo backends.

use std::time::Duration;

use portcullis_tests::*;

fn gateway_yaml() -> String {
    gateway(PLAIN_LISTENER)
}

async fn routing_gateway() -> TestGateway {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let c = start_echo("c").await;
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: matching
  namespace: default
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [\"example.com\"]
  rules:
  - matches: [{{path: {{type: Exact, value: /exact}}}}]
    backendRefs: [{{name: svc-a, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /prefix}}}}]
    backendRefs: [{{name: svc-b, port: 80}}]
  - matches:
    - path: {{type: PathPrefix, value: /prefix}}
      headers: [{{name: x-version, value: \"2\"}}]
    backendRefs: [{{name: svc-c, port: 80}}]
  - matches:
    - path: {{type: PathPrefix, value: /q}}
      queryParams: [{{name: tier, value: gold}}]
    backendRefs: [{{name: svc-c, port: 80}}]
  - matches:
    - path: {{type: RegularExpression, value: \"/v[0-9]+/items\"}}
    backendRefs: [{{name: svc-c, port: 80}}]
  - matches:
    - path: {{type: PathPrefix, value: /m}}
      method: POST
    backendRefs: [{{name: svc-c, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: svc-a, port: 80}}]
",
        gateway_yaml(),
        service_yaml("svc-a", &[a], None),
        service_yaml("svc-b", &[b], None),
        service_yaml("svc-c", &[c], None),
    );
    TestGateway::start(&yaml, &["HTTP_PORT"]).await
}

#[tokio::test]
async fn path_header_query_method_and_regex_matches_pick_the_right_backend() {
    let gw = routing_gateway().await;
    let url = |p: &str| gw.url("HTTP_PORT", p);
    assert_eq!(get(&url("/exact"), "example.com", &[]).await.pod(), "a");
    // Exact is exact: a trailing segment falls through to the catch-all.
    assert_eq!(
        get(&url("/exact/more"), "example.com", &[]).await.pod(),
        "a"
    );
    assert_eq!(get(&url("/prefix"), "example.com", &[]).await.pod(), "b");
    assert_eq!(
        get(&url("/prefix/deeper"), "example.com", &[]).await.pod(),
        "b"
    );
    // Segment-aware: /prefixed is not under /prefix.
    assert_eq!(get(&url("/prefixed"), "example.com", &[]).await.pod(), "a");
    // More header matches win over fewer at equal path length.
    assert_eq!(
        get(&url("/prefix/x"), "example.com", &[("x-version", "2")])
            .await
            .pod(),
        "c"
    );
    assert_eq!(
        get(&url("/q?tier=gold"), "example.com", &[]).await.pod(),
        "c"
    );
    assert_eq!(
        get(&url("/q?tier=silver"), "example.com", &[]).await.pod(),
        "a"
    );
    assert_eq!(get(&url("/v12/items"), "example.com", &[]).await.pod(), "c");
    assert_eq!(
        get(&url("/v12/items/1"), "example.com", &[]).await.pod(),
        "a"
    );

    let post = http::Request::post(url("/m"))
        .header("host", "example.com")
        .body(Default::default())
        .unwrap();
    assert_eq!(send(&http1_client(), post).await.pod(), "c");
    assert_eq!(get(&url("/m"), "example.com", &[]).await.pod(), "a");
}

#[tokio::test]
async fn unknown_host_gets_404_and_host_port_is_ignored() {
    let gw = routing_gateway().await;
    let answer = get(&gw.url("HTTP_PORT", "/exact"), "other.org", &[]).await;
    assert_eq!(answer.status, 404);
    let answer = get(&gw.url("HTTP_PORT", "/exact"), "EXAMPLE.com:1234", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.pod(), "a");
}

#[tokio::test]
async fn path_tricks_are_normalized_before_matching() {
    let gw = routing_gateway().await;
    let url = |p: &str| gw.url("HTTP_PORT", p);
    // Each of these must reach the /prefix route exactly as /prefix/x would.
    for trick in [
        "/other/../prefix/x",
        "//prefix/x",
        "/%70refix/x",
        "/./prefix/./x",
        "/prefix//x",
    ] {
        let answer = get(&url(trick), "example.com", &[]).await;
        assert_eq!(answer.pod(), "b", "{trick}");
        assert!(
            answer.echo()["path"]
                .as_str()
                .unwrap()
                .starts_with("/prefix/"),
            "{trick} reached backend as {}",
            answer.echo()["path"]
        );
    }
    // Encoded dots are dot segments too.
    assert_eq!(
        get(&url("/prefix/%2e%2e/exact"), "example.com", &[])
            .await
            .pod(),
        "a"
    );
    // An encoded slash is ambiguous: refused.
    assert_eq!(
        get(&url("/prefix%2Fx"), "example.com", &[]).await.status,
        400
    );
}

#[tokio::test]
async fn header_modifiers_redirects_and_rewrites() {
    let echo = start_echo("e").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: filters
  namespace: default
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /headers}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{{name: x-set, value: set-value}}]
        add: [{{name: x-add, value: added}}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-response, value: from-gateway}}]
        remove: [x-content-type-options]
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: new.example.com
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}
        statusCode: 301
  - matches: [{{path: {{type: PathPrefix, value: /api/v1}}}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: internal.example
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v1}}
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /full}}}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {{type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{{name: echo, port: 80}}]
",
        gateway_yaml(),
        service_yaml("echo", &[echo], None)
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = |p: &str| gw.url("HTTP_PORT", p);

    let answer = get(
        &url("/headers"),
        "any.host",
        &[
            ("x-add", "original"),
            ("x-remove", "secret"),
            ("x-set", "client"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.echoed_header("x-set").as_deref(), Some("set-value"));
    assert_eq!(
        answer.echoed_header("x-add").as_deref(),
        Some("original,added")
    );
    assert_eq!(answer.echoed_header("x-remove"), None);
    assert_eq!(answer.headers["x-response"], "from-gateway");
    assert!(!answer.headers.contains_key("x-content-type-options"));
    // Forwarding headers are set by the gateway.
    assert_eq!(
        answer.echoed_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        answer.echoed_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    // The Host header reaches the backend unmodified.
    assert_eq!(answer.echo()["host"], "any.host");

    let answer = get(&url("/old/page?x=1"), "any.host", &[]).await;
    assert_eq!(answer.status, 301);
    assert_eq!(
        answer.headers["location"],
        "https://new.example.com/new/page?x=1"
    );

    let answer = get(&url("/api/v1/users?id=7"), "any.host", &[]).await;
    assert_eq!(answer.echo()["path"], "/v1/users?id=7");
    assert_eq!(answer.echo()["host"], "internal.example");

    let answer = get(&url("/full"), "any.host", &[]).await;
    assert_eq!(answer.echo()["path"], "/replaced");
}

#[tokio::test]
async fn cors_preflight_is_answered_at_the_gateway() {
    let (recorder, addr) = Recorder::start().await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: cors
  namespace: default
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: CORS
      cors:
        allowOrigins: [\"https://app.example.com\"]
        allowMethods: [GET, PUT]
        allowHeaders: [x-custom]
        exposeHeaders: [x-exposed]
        maxAge: 600
    backendRefs: [{{name: rec, port: 80}}]
",
        gateway_yaml(),
        service_yaml("rec", &[addr], None)
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let preflight = http::Request::options(gw.url("HTTP_PORT", "/data"))
        .header("host", "h")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .body(Default::default())
        .unwrap();
    let answer = send(&http1_client(), preflight).await;
    assert!(answer.status.is_success());
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(answer.headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("PUT"));
    assert_eq!(answer.headers["access-control-max-age"], "600");
    assert_eq!(answer.headers["access-control-expose-headers"], "x-exposed");
    assert!(!answer
        .headers
        .contains_key("access-control-allow-credentials"));
    assert_eq!(recorder.count(), 0, "preflight must not reach the backend");

    let answer = get(
        &gw.url("HTTP_PORT", "/data"),
        "h",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(answer.headers["access-control-expose-headers"], "x-exposed");

    let answer = get(
        &gw.url("HTTP_PORT", "/data"),
        "h",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert!(!answer.headers.contains_key("access-control-allow-origin"));
}

/// Credentials are allowed only where configured and only next to a
/// matching origin; the origin is echoed even when every origin is allowed
/// (a browser refuses `*` on a request that carries cookies).
#[tokio::test]
async fn cors_credentials_only_where_allowed_and_origins_echoed() {
    let echo = start_echo("echo").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: cors, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /any-origin}}}}]
    filters:
    - type: CORS
      cors: {{allowOrigins: [\"*\"], allowMethods: [\"*\"], allowHeaders: [\"*\"], allowCredentials: false}}
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /with-credentials}}}}]
    filters:
    - type: CORS
      cors: {{allowOrigins: [\"https://app.example\", \"https://*.bar.com\"], allowCredentials: true}}
    backendRefs: [{{name: echo, port: 80}}]
",
        gateway_yaml(),
        service_yaml("echo", &[echo], None)
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let with_cookie = |origin: &'static str| [("origin", origin), ("cookie", "sid=abc123")];

    let answer = get(
        &gw.url("HTTP_PORT", "/any-origin"),
        "h",
        &with_cookie("https://other.foo.com:8443"),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://other.foo.com:8443"
    );
    assert!(!answer
        .headers
        .contains_key("access-control-allow-credentials"));

    // A preflight with wildcards answers with what was asked.
    let preflight = http::Request::options(gw.url("HTTP_PORT", "/any-origin"))
        .header("host", "h")
        .header("origin", "https://other.foo.com")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-header-1, x-header-2")
        .body(Default::default())
        .unwrap();
    let answer = send(&http1_client(), preflight).await;
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://other.foo.com"
    );
    assert_eq!(answer.headers["access-control-allow-methods"], "PUT");
    assert_eq!(
        answer.headers["access-control-allow-headers"],
        "x-header-1, x-header-2"
    );
    assert!(!answer
        .headers
        .contains_key("access-control-allow-credentials"));

    let answer = get(
        &gw.url("HTTP_PORT", "/with-credentials"),
        "h",
        &with_cookie("https://xpto.www.bar.com"),
    )
    .await;
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://xpto.www.bar.com"
    );
    assert_eq!(answer.headers["access-control-allow-credentials"], "true");

    let answer = get(
        &gw.url("HTTP_PORT", "/with-credentials"),
        "h",
        &with_cookie("http://not-app.example"),
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "not a CORS error at the gateway: the browser decides"
    );
    assert!(!answer.headers.contains_key("access-control-allow-origin"));
    assert!(!answer
        .headers
        .contains_key("access-control-allow-credentials"));
}

#[tokio::test]
async fn weights_split_traffic_and_zero_weight_gets_none() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let z = start_echo("z").await;
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: weights
  namespace: default
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs:
    - {{name: svc-a, port: 80, weight: 1}}
    - {{name: svc-b, port: 80, weight: 3}}
    - {{name: svc-z, port: 80, weight: 0}}
",
        gateway_yaml(),
        service_yaml("svc-a", &[a], None),
        service_yaml("svc-b", &[b], None),
        service_yaml("svc-z", &[z], None)
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let client = http1_client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..400 {
        let req = http::Request::get(gw.url("HTTP_PORT", "/"))
            .header("host", "h")
            .body(Default::default())
            .unwrap();
        *counts.entry(send(&client, req).await.pod()).or_insert(0u32) += 1;
    }
    assert_eq!(counts.get("z"), None);
    let a_share = f64::from(*counts.get("a").unwrap_or(&0)) / 400.0;
    // Expected 0.25; 400 draws keep it within +-0.1 with overwhelming odds.
    assert!((0.15..0.35).contains(&a_share), "{counts:?}");
}

#[tokio::test]
async fn round_robin_across_ready_endpoints_only() {
    // Endpoints of one slice share a port: give each its own loopback
    // address (all of 127.0.0.0/8 is local).
    let l1 = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = l1.local_addr().unwrap().port();
    let l2 = tokio::net::TcpListener::bind(("127.0.0.3", port))
        .await
        .unwrap();
    let l3 = tokio::net::TcpListener::bind(("127.0.0.4", port))
        .await
        .unwrap();
    let ident = |p: &str| portcullis::echo::EchoIdentity {
        namespace: "default".into(),
        pod: p.into(),
        service: String::new(),
    };
    tokio::spawn(portcullis::echo::serve(l1, ident("p1")));
    tokio::spawn(portcullis::echo::serve(l2, ident("p2")));
    tokio::spawn(portcullis::echo::serve(l3, ident("not-ready")));
    let yaml = format!(
        "{}
---
apiVersion: v1
kind: Service
metadata: {{name: multi, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: multi-1
  namespace: default
  labels: {{kubernetes.io/service-name: multi}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: [127.0.0.2]
  conditions: {{ready: true}}
- addresses: [127.0.0.3]
- addresses: [127.0.0.4]
  conditions: {{ready: false}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: rr, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: multi, port: 80}}]
",
        gateway_yaml()
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let mut pods = Vec::new();
    for _ in 0..6 {
        pods.push(get(&gw.url("HTTP_PORT", "/"), "h", &[]).await.pod());
    }
    assert!(!pods.contains(&"not-ready".to_string()), "{pods:?}");
    // Strict alternation between the two ready endpoints.
    for pair in pods.windows(2) {
        assert_ne!(pair[0], pair[1], "{pods:?}");
    }
}

#[tokio::test]
async fn errors_have_the_right_status() {
    let echo = start_echo("slow").await;
    let closed = free_listener().local_addr().unwrap(); // dropped: nothing listens
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: errors, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /missing}}}}]
    backendRefs: [{{name: does-not-exist, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /empty}}}}]
    backendRefs: [{{name: empty, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /refused}}}}]
    backendRefs: [{{name: refused, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 200ms}}
    backendRefs: [{{name: slow, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /nobackend}}}}]
",
        gateway_yaml(),
        service_yaml("empty", &[], None),
        service_yaml("refused", &[closed], None),
        service_yaml("slow", &[echo], None),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = |p: &str| gw.url("HTTP_PORT", p);
    assert_eq!(get(&url("/missing"), "h", &[]).await.status, 500);
    assert_eq!(get(&url("/nobackend"), "h", &[]).await.status, 500);
    assert_eq!(get(&url("/empty"), "h", &[]).await.status, 503);
    assert_eq!(get(&url("/refused"), "h", &[]).await.status, 503);
    let started = std::time::Instant::now();
    assert_eq!(get(&url("/slow?delay=2s"), "h", &[]).await.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "timeout not enforced: {:?}",
        started.elapsed()
    );
    assert_eq!(get(&url("/slow?delay=10ms"), "h", &[]).await.status, 200);
    assert_eq!(get(&url("/bad%zz"), "h", &[]).await.status, 400);
}

#[tokio::test]
async fn mirrors_receive_a_copy_and_the_client_gets_the_primary_answer() {
    let echo = start_echo("primary").await;
    let (m1, m1_addr) = Recorder::start().await;
    let (m2, m2_addr) = Recorder::start().await;
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirror, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m1, port: 80}}}}
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: m2, port: 80}}}}
    backendRefs: [{{name: primary, port: 80}}]
",
        gateway_yaml(),
        service_yaml("primary", &[echo], None),
        service_yaml("m1", &[m1_addr], None),
        service_yaml("m2", &[m2_addr], None),
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let req = http::Request::post(gw.url("HTTP_PORT", "/upload?x=1"))
        .header("host", "h")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    let answer = send(&http1_client(), req).await;
    assert_eq!(answer.pod(), "primary");
    for m in [&m1, &m2] {
        assert!(
            m.wait_for(1, Duration::from_secs(5)).await,
            "mirror got no request"
        );
        let r = m.requests.lock().unwrap()[0].clone();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/upload?x=1");
        assert_eq!(r.body.as_ref(), b"payload");
    }
}

#[tokio::test]
async fn admin_endpoints_report_config_and_status() {
    let gw = routing_gateway().await;
    let dump = get(&gw.admin_url("/config_dump"), "admin", &[]).await;
    assert_eq!(dump.status, 200);
    let table: serde_json::Value = serde_json::from_slice(&dump.body).unwrap();
    assert_eq!(table["ports"][0]["port"], gw.port("HTTP_PORT"));
    assert_eq!(
        get(&gw.admin_url("/readyz"), "admin", &[]).await.status,
        200
    );
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let statuses: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert!(
        statuses
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "matching"),
        "{statuses}"
    );
}

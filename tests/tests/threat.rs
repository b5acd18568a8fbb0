//! RouteFilter threat protection over real sockets: payload limits (JSON,
//! XML), content types, OpenAPI validation, injection patterns, Report
//! mode. Every refusal is checked not to reach the backend, every pass to
//! reach it with the body intact.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis_tests::*;
use serde_json::{json, Value};

const OPENAPI: &str = include_str!("../fixtures/shop-openapi.yaml");

fn indent(text: &str, by: &str) -> String {
    text.lines().fold(String::new(), |mut out, l| {
        let _ = writeln!(out, "{by}{l}");
        out
    })
}

fn route(name: &str, prefix: &str, filter: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: {filter}}}
    backendRefs: [{{name: svc, port: 80}}]
"
    )
}

async fn threat_gateway() -> (TestGateway, Recorder) {
    let (recorder, addr) = Recorder::start().await;
    let mut yaml = gateway(PLAIN_LISTENER) + &service_yaml("svc", &[addr], None);
    yaml += &format!(
        "
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: shop-api, namespace: default}}
data:
  spec.yaml: |
{}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: limits, namespace: default}}
spec:
  threatProtection:
    maxBodyBytes: 65536
    json: {{maxDepth: 16, maxFieldsPerObject: 10}}
    xml: {{maxDepth: 8}}
    contentTypes:
    - methods: [POST, PUT, PATCH]
      allowed: [application/json, application/*+json, application/xml]
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: shop, namespace: default}}
spec:
  threatProtection:
    openApi:
      configMapRef: {{name: shop-api, key: spec.yaml}}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: scan, namespace: default}}
spec:
  threatProtection:
    injection:
      headers: [user-agent, x-comment]
      customRules:
      - id: no-internal-hosts
        pattern: '(?i)\\binternal\\.corp\\b'
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: report, namespace: default}}
spec:
  threatProtection:
    mode: Report
    json: {{maxDepth: 4}}
    injection: {{}}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: broken, namespace: default}}
spec:
  threatProtection:
    openApi:
      inline: |
        openapi: 3.0.0
        paths:
          /a: [
",
        indent(OPENAPI, "    ")
    );
    yaml += &route("limits", "/limits", "limits");
    yaml += &route("shop", "/api", "shop");
    yaml += &route("scan", "/scan", "scan");
    yaml += &route("report", "/report", "report");
    yaml += &route("broken", "/broken", "broken");
    (TestGateway::start(&yaml, &["HTTP_PORT"]).await, recorder)
}

async fn request(
    gw: &TestGateway,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Answer {
    let mut builder = Request::builder()
        .method(method)
        .uri(gw.url("HTTP_PORT", path))
        .header("host", "example.com");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    let req = builder.body(Full::new(body.into())).expect("request");
    send(&http1_client(), req).await
}

fn json_body(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&answer.body)))
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

#[tokio::test]
async fn deep_json_is_refused_without_overflowing_the_stack() {
    let (gw, recorder) = threat_gateway().await;
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let answer = request(&gw, "POST", "/limits", Some("application/json"), deep).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_body(&answer),
        json!({"error": "payload limit exceeded", "limit": "maxDepth", "max": 16})
    );
    assert_eq!(recorder.count(), 0);

    // A document within the limits reaches the backend byte for byte.
    let ok = r#"{"a": [1, {"b": "c"}], "d": "e"}"#;
    let answer = request(&gw, "POST", "/limits", Some("application/json"), ok).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = recorder.requests.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, ok.as_bytes());
}

#[tokio::test]
async fn json_with_too_many_fields_is_refused() {
    let (gw, recorder) = threat_gateway().await;
    let fields: Vec<String> = (0..11).map(|i| format!("\"f{i}\": {i}")).collect();
    let body = format!("{{{}}}", fields.join(","));
    let answer = request(&gw, "POST", "/limits", Some("application/json"), body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_body(&answer)["limit"], "maxFieldsPerObject");
    assert_eq!(recorder.count(), 0);
}

#[tokio::test]
async fn xml_entity_expansion_and_doctype_are_refused() {
    let (gw, recorder) = threat_gateway().await;
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
]>
<lolz>&lol2;</lolz>"#;
    let xxe =
        r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
    for doc in [laughs, xxe] {
        let answer = request(&gw, "POST", "/limits", Some("application/xml"), doc).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{doc}");
        assert!(
            json_body(&answer)["error"]
                .as_str()
                .unwrap_or_default()
                .contains("DOCTYPE"),
            "{:?}",
            answer.body
        );
    }
    let deep = "<a>".repeat(9) + &"</a>".repeat(9);
    let answer = request(&gw, "POST", "/limits", Some("application/xml"), deep).await;
    assert_eq!(json_body(&answer)["limit"], "maxDepth");
    assert_eq!(recorder.count(), 0);

    let ok = r#"<order id="1"><item sku="ABC-1">2 &amp; more</item></order>"#;
    let answer = request(&gw, "POST", "/limits", Some("application/xml"), ok).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(recorder.count(), 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (gw, recorder) = threat_gateway().await;
    let big = format!("[\"{}\"]", "x".repeat(70_000));
    let answer = request(&gw, "POST", "/limits", Some("application/json"), big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_body(&answer)["max"], 65536);
    assert_eq!(recorder.count(), 0);
}

#[tokio::test]
async fn content_types_are_enforced_per_method() {
    let (gw, recorder) = threat_gateway().await;
    let answer = request(&gw, "POST", "/limits", Some("text/plain"), "hello").await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        json_body(&answer),
        json!({"error": "unsupported media type",
               "allowed": ["application/json", "application/*+json", "application/xml"]})
    );
    let answer = request(&gw, "PUT", "/limits", None, "no type").await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(recorder.count(), 0);

    // Allowed types (parameters ignored, +json suffix), and bodiless or
    // unlisted methods, pass.
    let answer = request(
        &gw,
        "POST",
        "/limits",
        Some("application/json; charset=utf-8"),
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = request(
        &gw,
        "PATCH",
        "/limits",
        Some("application/merge-patch+json"),
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = request(&gw, "POST", "/limits", None, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = request(&gw, "DELETE", "/limits", Some("text/plain"), "x").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(recorder.count(), 4);
}

#[tokio::test]
async fn openapi_valid_requests_reach_the_backend() {
    let (gw, recorder) = threat_gateway().await;
    let order =
        r#"{"customer": "Ann O'Brien", "status": "new", "items": [{"sku": "ABC-1", "qty": 2}]}"#;
    let answer = request(&gw, "POST", "/api/orders", Some("application/json"), order).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let answer = request(&gw, "GET", "/api/orders/7?limit=10&view=full", None, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let answer = request(&gw, "DELETE", "/api/orders/7", None, "").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let seen = recorder.requests.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body, order.as_bytes());
    assert_eq!(seen[1].path, "/api/orders/7?limit=10&view=full");
}

#[tokio::test]
async fn openapi_invalid_requests_are_refused_with_precise_errors() {
    let (gw, recorder) = threat_gateway().await;
    let details = |a: &Answer| json_body(a)["details"].clone();

    let answer = request(&gw, "GET", "/api/orders/7", None, "").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json_body(&answer),
        json!({"error": "request validation failed", "details": [
            {"location": "query", "name": "limit", "message": "required parameter is missing"}]})
    );

    let answer = request(&gw, "GET", "/api/orders/abc?limit=5", None, "").await;
    assert_eq!(
        details(&answer),
        json!([{"location": "path", "name": "id", "message": "expected integer, got string"}])
    );

    let answer = request(
        &gw,
        "GET",
        "/api/orders/1?limit=5&view=everything",
        None,
        "",
    )
    .await;
    assert_eq!(
        details(&answer),
        json!([{"location": "query", "name": "view",
                "message": "expected one of [\"summary\", \"full\"]"}])
    );

    let order = r#"{"customer": "ann", "items": [{"sku": "ABC-1", "qty": "two"}]}"#;
    let answer = request(&gw, "POST", "/api/orders", Some("application/json"), order).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        details(&answer),
        json!([{"location": "body", "pointer": "/items/0/qty",
                "message": "expected integer, got string"}])
    );

    let order =
        r#"{"customer": "ann", "status": "lost", "items": [{"sku": "bad", "qty": 1}], "x": 1}"#;
    let answer = request(&gw, "POST", "/api/orders", Some("application/json"), order).await;
    let got = details(&answer);
    for (pointer, message) in [
        (
            "/status",
            "expected one of [\"new\", \"paid\", \"shipped\"]",
        ),
        (
            "/items/0/sku",
            "expected to match pattern \"^[A-Z]{3}-[0-9]+$\"",
        ),
        ("/x", "property is not allowed"),
    ] {
        assert!(
            got.as_array()
                .expect("details")
                .iter()
                .any(|d| d["pointer"] == pointer && d["message"] == message),
            "{pointer} {message}: {got}"
        );
    }

    let answer = request(
        &gw,
        "POST",
        "/api/orders",
        Some("application/json"),
        "{\"customer\": ",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(details(&answer)[0]["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("invalid JSON"));

    // No JSON limits on this route: the parser's own depth bound refuses
    // a 10,000-level document (no stack overflow).
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let answer = request(&gw, "POST", "/api/orders", Some("application/json"), deep).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        details(&answer)[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("recursion limit"),
        "{:?}",
        answer.body
    );

    let answer = request(&gw, "POST", "/api/orders", None, "").await;
    assert_eq!(details(&answer)[0]["message"], "request body is required");

    let answer = request(&gw, "GET", "/api/customers", None, "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(json_body(&answer)["error"], "path not described by the API");

    let answer = request(&gw, "PUT", "/api/orders/1", Some("application/json"), "{}").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers["allow"], "GET, DELETE");
    assert_eq!(json_body(&answer)["allowed"], json!(["GET", "DELETE"]));

    assert_eq!(recorder.count(), 0);
}

#[tokio::test]
async fn an_invalid_openapi_document_fails_closed_and_is_reported() {
    let (gw, recorder) = threat_gateway().await;
    let answer = request(&gw, "GET", "/broken", None, "").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(recorder.count(), 0);
    let status = get(&gw.admin_url("/status"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&status.body);
    assert!(text.contains("InvalidRouteFilter"), "{text}");
    assert!(
        text.contains("threatProtection: openApi: inline: invalid YAML") && text.contains("line"),
        "{text}"
    );
}

/// `(where, value)`: `query` values are sent percent-encoded as `q=`,
/// `path` as sent, `header` as `x-comment`, `json` as a string in a
/// JSON body, `form` as a form field.
async fn probe(gw: &TestGateway, place: &str, value: &str) -> Answer {
    match place {
        "query" => {
            request(
                gw,
                "GET",
                &format!("/scan/search?q={}", encode(value)),
                None,
                "",
            )
            .await
        }
        "raw-query" => request(gw, "GET", &format!("/scan/search?q={value}"), None, "").await,
        "path" => request(gw, "GET", &format!("/scan/{value}"), None, "").await,
        "header" => {
            let req = Request::get(gw.url("HTTP_PORT", "/scan/h"))
                .header("host", "example.com")
                .header("x-comment", value)
                .body(Full::new(Bytes::new()))
                .expect("request");
            send(&http1_client(), req).await
        }
        "json" => {
            let body = json!({"comment": {"text": [value]}}).to_string();
            request(gw, "POST", "/scan/c", Some("application/json"), body).await
        }
        "form" => {
            let body = format!("name=x&comment={}", encode(value));
            request(
                gw,
                "POST",
                "/scan/c",
                Some("application/x-www-form-urlencoded"),
                body,
            )
            .await
        }
        other => panic!("unknown place {other}"),
    }
}

#[tokio::test]
async fn injection_samples_are_blocked_with_the_rule_id() {
    let (gw, recorder) = threat_gateway().await;
    let samples = [
        ("query", "' OR 1=1 --", "sqli-tautology"),
        (
            "query",
            "1 UNION SELECT username, password FROM users",
            "sqli-union",
        ),
        ("json", "x'; DROP TABLE orders; --", "sqli-stacked-query"),
        ("form", "admin'--", "sqli-comment"),
        ("query", "<script>alert(1)</script>", "xss-script-tag"),
        (
            "json",
            "<script src=//evil.example></script>",
            "xss-script-tag",
        ),
        (
            "query",
            "javascript:alert(document.domain)",
            "xss-script-url",
        ),
        (
            "header",
            "<img src=x onerror=alert(1)>",
            "xss-event-handler",
        ),
        ("json", "<svg/onload=alert(1)>", "xss-active-tag"),
        ("query", "../../etc/passwd", "traversal-dot-dot"),
        (
            "raw-query",
            "%2e%2e%2f%2e%2e%2fetc%2fshadow",
            "traversal-dot-dot",
        ),
        ("raw-query", "%252e%252e%252fsecret", "traversal-dot-dot"),
        ("raw-query", "%253Cscript%253E", "xss-script-tag"),
        // (A single-encoded `..%2F` in the path never gets here: the
        // gateway's path normalization refuses encoded separators.)
        ("path", "files/%252e%252e%252fsecret", "traversal-dot-dot"),
        ("header", "ping internal.corp", "no-internal-hosts"),
    ];
    for (place, value, rule) in samples {
        let answer = probe(&gw, place, value).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{place} {value:?}");
        let body = json_body(&answer);
        assert_eq!(body["error"], "request blocked", "{place} {value:?}");
        assert_eq!(body["rule"], rule, "{place} {value:?}: {body}");
        // The payload is never echoed back.
        let text = String::from_utf8_lossy(&answer.body);
        assert!(!text.contains('<') && !text.contains("OR 1=1"), "{text}");
    }
    assert_eq!(recorder.count(), 0);
}

#[tokio::test]
async fn benign_samples_pass_the_default_rules() {
    let (gw, recorder) = threat_gateway().await;
    let samples = [
        ("query", "O'Brien"),
        ("json", "Conan O'Brien's show"),
        ("form", "D'Angelo and O'Neil"),
        ("json", "if a < b and c > d then"),
        ("json", "<3 and 1 < 2"),
        ("query", "please select a size"),
        ("query", "select"),
        ("json", "the union of two sets"),
        ("path", "files/report.v2.final.pdf"),
        ("path", "docs/v1.2/readme.md"),
        ("query", "50% off"),
        ("header", "JavaScript: The Good Parts"),
        ("json", "Tom & Jerry -- a classic"),
        ("query", "a+b=c"),
    ];
    for (i, (place, value)) in samples.iter().enumerate() {
        let answer = probe(&gw, place, value).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{place} {value:?}: {:?}",
            answer.body
        );
        assert_eq!(recorder.count(), i + 1);
    }
}

#[tokio::test]
async fn report_mode_lets_requests_through_and_counts_them() {
    let (gw, recorder) = threat_gateway().await;
    let answer = request(
        &gw,
        "GET",
        &format!("/report/x?q={}", encode("1 UNION SELECT 1")),
        None,
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let deep = "[".repeat(10) + &"]".repeat(10);
    let answer = request(
        &gw,
        "POST",
        "/report/x",
        Some("application/json"),
        deep.clone(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = recorder.requests.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, deep.as_bytes());

    let metrics = get(&gw.admin_url("/metrics"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for series in [
        r#"portcullis_threat_decisions_total{filter="default/report",check="injection",rule="sqli-union",decision="reported"} 1"#,
        r#"portcullis_threat_decisions_total{filter="default/report",check="json",rule="maxDepth",decision="reported"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} missing:\n{text}"
        );
    }
}

/// `examples/api-management/threat-protection.yaml` compiles without
/// problems and answers as its comments say (ports moved to free ones).
#[tokio::test]
async fn the_threat_protection_example_behaves_as_documented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/api-management/threat-protection.yaml");
    let text = std::fs::read_to_string(&path).expect("example file");
    let mut snapshot = portcullis_controller::Snapshot::default();
    for object in portcullis_controller::file::parse_documents(&text).expect("example parses") {
        snapshot.insert(object);
    }
    let compiled = portcullis_controller::compile(
        &snapshot,
        &portcullis_controller::CompileOptions::default(),
    );
    for s in &compiled.statuses {
        assert!(
            s.problems.is_empty(),
            "{}: {:?}",
            s.display_name(),
            s.problems
        );
    }

    let (recorder, addr) = Recorder::start().await;
    let yaml = text
        .replace("port: 8080", "port: ${HTTP_PORT}")
        .replace("port: 3000", &format!("port: {}", addr.port()));
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = |path: &str| gw.url("HTTP_PORT", path);
    let status = |a: Answer| a.status;
    let shop = "shop.example";
    assert_eq!(
        status(get(&url("/api/orders/7?limit=10"), shop, &[]).await),
        StatusCode::OK
    );
    assert_eq!(
        status(get(&url("/api/orders/7"), shop, &[]).await),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        status(
            get(
                &url("/api/orders/7?limit=10&q=%27%20OR%201%3D1%20--"),
                shop,
                &[]
            )
            .await
        ),
        StatusCode::FORBIDDEN
    );
    let req = Request::post(url("/api/orders"))
        .header("host", shop)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"customer": "ann", "items": [{"sku": "ABC-1", "qty": "two"}]}"#,
        )))
        .expect("request");
    let answer = send(&http1_client(), req).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(json_body(&answer)["details"][0]["pointer"], "/items/0/qty");
    assert_eq!(recorder.count(), 1);
}

//! RouteFilter versioning end to end: deprecation headers on a deprecated
//! version, 410 Gone for a retired one (without reaching the backend), and
//! routing by version with the standard HTTPRoute matchers (here the
//! `Accept` media type parameter).

use http::StatusCode;
use portcullis_tests::*;

const HOST: &str = "api.example.com";

async fn versioned_gateway() -> (TestGateway, Recorder) {
    let (recorder, v1) = Recorder::start().await;
    let v2 = start_echo("v2").await;
    let yaml = format!(
        "{}{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: v1-deprecated, namespace: default}}
spec:
  versioning:
    deprecatedSince: 2026-01-01T00:00:00Z
    sunset: 2027-06-30T00:00:00Z
    successor: https://api.example.com/v2/
    documentation: https://docs.example.com/migrate-to-v2
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: v0-retired, namespace: default}}
spec:
  versioning:
    deprecated: true
    retired: true
    successor: /v2/
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: beta-past, namespace: default}}
spec:
  versioning:
    retireAt: 2020-01-01T00:00:00Z
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: beta-future, namespace: default}}
spec:
  versioning:
    deprecated: true
    retireAt: 2999-01-01T00:00:00Z
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{HOST}]
  rules:
  - matches:
    - headers: [{{name: accept, type: RegularExpression, value: 'application/vnd\\.example\\+json; *version=2'}}]
    - path: {{type: PathPrefix, value: /v2}}
    backendRefs: [{{name: v2, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: v1-deprecated}}
    backendRefs: [{{name: v1, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /v0}}}}]
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: v0-retired}}
    backendRefs: [{{name: v1, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /beta-past}}}}]
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: beta-past}}
    backendRefs: [{{name: v1, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /beta-future}}}}]
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: beta-future}}
    backendRefs: [{{name: v1, port: 80}}]
",
        gateway(PLAIN_LISTENER),
        service_yaml("v1", &[v1], None),
        service_yaml("v2", &[v2], None),
    );
    (TestGateway::start(&yaml, &["HTTP_PORT"]).await, recorder)
}

fn values(a: &Answer, name: &str) -> Vec<String> {
    a.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect()
}

#[tokio::test]
async fn a_deprecated_version_carries_deprecation_sunset_and_links() {
    let (gw, recorder) = versioned_gateway().await;
    let a = get(&gw.url("HTTP_PORT", "/v1/orders"), HOST, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(values(&a, "deprecation"), ["@1767225600"]);
    assert_eq!(values(&a, "sunset"), ["Wed, 30 Jun 2027 00:00:00 GMT"]);
    assert_eq!(
        values(&a, "link"),
        [
            "<https://api.example.com/v2/>; rel=\"successor-version\"",
            "<https://docs.example.com/migrate-to-v2>; rel=\"deprecation\"; type=\"text/html\"",
        ]
    );
    assert_eq!(recorder.count(), 1);
}

#[tokio::test]
async fn a_retired_version_answers_410_naming_its_successor() {
    let (gw, recorder) = versioned_gateway().await;
    let a = get(&gw.url("HTTP_PORT", "/v0/orders"), HOST, &[]).await;
    assert_eq!(a.status, StatusCode::GONE);
    assert_eq!(values(&a, "content-type"), ["application/problem+json"]);
    let body: serde_json::Value = serde_json::from_slice(&a.body).expect("problem json");
    assert_eq!(body["status"], 410);
    assert_eq!(body["successor"], "/v2/");
    assert_eq!(
        body["detail"],
        "This API version has been retired; use /v2/ instead."
    );
    assert_eq!(values(&a, "deprecation"), ["true"]);
    assert_eq!(values(&a, "link"), ["</v2/>; rel=\"successor-version\""]);
    assert_eq!(
        recorder.count(),
        0,
        "a retired version never reaches the backend"
    );
}

#[tokio::test]
async fn a_retirement_date_takes_effect_once_passed() {
    let (gw, recorder) = versioned_gateway().await;
    let past = get(&gw.url("HTTP_PORT", "/beta-past/x"), HOST, &[]).await;
    assert_eq!(past.status, StatusCode::GONE);
    let future = get(&gw.url("HTTP_PORT", "/beta-future/x"), HOST, &[]).await;
    assert_eq!(future.status, StatusCode::OK);
    assert_eq!(values(&future, "deprecation"), ["true"]);
    assert_eq!(recorder.count(), 1);
}

#[tokio::test]
async fn the_version_in_the_accept_header_routes_to_that_version() {
    let (gw, recorder) = versioned_gateway().await;
    let v2 = get(
        &gw.url("HTTP_PORT", "/orders"),
        HOST,
        &[("accept", "application/vnd.example+json; version=2")],
    )
    .await;
    assert_eq!(v2.status, StatusCode::OK);
    assert_eq!(v2.pod(), "v2");
    assert!(v2.headers.get("deprecation").is_none());
    // Version 1 by path; no Accept version: not the v2 rule.
    let v1 = get(
        &gw.url("HTTP_PORT", "/v1/orders"),
        HOST,
        &[("accept", "application/vnd.example+json; version=1")],
    )
    .await;
    assert_eq!(v1.body, "recorded");
    let unversioned = get(&gw.url("HTTP_PORT", "/orders"), HOST, &[]).await;
    assert_eq!(unversioned.status, StatusCode::NOT_FOUND);
    assert_eq!(recorder.count(), 1);
}

/// `examples/api-management/cache-versioning` compiles without problems
/// and answers as its comments say (ports moved to free ones).
#[tokio::test]
async fn the_cache_and_versioning_example_behaves_as_documented() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/api-management/cache-versioning");
    let (snapshot, problems) = portcullis_controller::file::load_dir(&dir);
    assert!(problems.is_empty(), "{problems:?}");
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
    let echo = start_echo("echo").await;
    let mut yaml = String::new();
    for file in ["gateway.yaml", "routefilters.yaml", "routes.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("example file");
        yaml.push_str("\n---\n");
        yaml.push_str(
            &text
                .replace("port: 8080", "port: ${HTTP_PORT}")
                .replace("port: 3000", &format!("port: {}", echo.port())),
        );
    }
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = |path: &str| gw.url("HTTP_PORT", path);
    let cache = |a: &Answer| {
        a.headers
            .get("x-cache")
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    let first = get(&url("/v2/products?page=1&utm=x"), HOST, &[]).await;
    assert_eq!(cache(&first).as_deref(), Some("MISS"));
    let second = get(&url("/v2/products?utm=y&page=1"), HOST, &[]).await;
    assert_eq!(cache(&second).as_deref(), Some("HIT"));
    let by_accept = get(
        &url("/products"),
        HOST,
        &[("accept", "application/vnd.example+json; version=2")],
    )
    .await;
    assert_eq!(by_accept.status, StatusCode::OK);
    assert!(
        by_accept.headers.get("x-cache").is_some(),
        "the v2 rule, with its cache"
    );
    let v1 = get(&url("/v1/products"), HOST, &[]).await;
    assert_eq!(values(&v1, "deprecation"), ["@1767225600"]);
    assert_eq!(
        get(&url("/v0/products"), HOST, &[]).await.status,
        StatusCode::GONE
    );
}

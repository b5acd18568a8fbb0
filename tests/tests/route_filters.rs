//! The RouteFilter mechanism end to end: an HTTPRoute rule's ExtensionRef to
//! a `portcullis.dev/RouteFilter` puts the request through the RouteFilter
//! pipeline (crates/dataplane/src/route_filter) and on to the backend; a
//! reference that cannot be honoured answers 500 and never reaches it. The
//! sections (cache, transform, threat protection, masking, versioning)
//! have their own test files.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis_tests::*;

async fn filtered_gateway() -> (TestGateway, Recorder) {
    let (recorder, addr) = Recorder::start().await;
    let yaml = format!(
        "{}{}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: plain, namespace: default}}
spec: {{}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /filtered}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}}}
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: plain}}
    backendRefs: [{{name: svc, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /missing}}}}]
    filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: nope}}
    backendRefs: [{{name: svc, port: 80}}]
",
        gateway(PLAIN_LISTENER),
        service_yaml("svc", &[addr], None),
    );
    (TestGateway::start(&yaml, &["HTTP_PORT"]).await, recorder)
}

#[tokio::test]
async fn a_route_filter_passes_requests_and_bodies_through_to_the_backend() {
    let (gw, recorder) = filtered_gateway().await;
    let body = "x".repeat(100_000);
    let req = Request::post(gw.url("HTTP_PORT", "/filtered/item?q=1"))
        .header("host", "example.com")
        .header("x-client", "yes")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let answer = send(&http1_client(), req).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let seen = recorder.requests.lock().expect("recorder lock").clone();
    let last = seen.last().expect("the backend got the request");
    assert_eq!(last.path, "/rewritten/item?q=1");
    assert_eq!(
        last.headers.get("x-client").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
    assert_eq!(last.body.len(), body.len());
}

#[tokio::test]
async fn a_missing_route_filter_answers_500_without_reaching_the_backend() {
    let (gw, recorder) = filtered_gateway().await;
    let answer = get(&gw.url("HTTP_PORT", "/missing"), "example.com", &[]).await;
    assert_eq!(answer.status, 500);
    assert_eq!(recorder.count(), 0);
}

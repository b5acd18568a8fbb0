//! Path normalization and route matching on request parts from the fuzzer.
//! Normalization must never panic, must produce a path with no dot
//! segments or duplicate slashes, and must be idempotent (the gateway and
//! the backend see the same path); route lookup must never panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis_dataplane::normalize::normalize_path;
use portcullis_dataplane::router::{canonical_host, PortRoutes, RequestParts};
use portcullis_fuzz::{fixture_routes, FuzzRequest};

static ROUTES: LazyLock<PortRoutes> = LazyLock::new(|| {
    fixture_routes(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: exact, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [a.example, '*.wild.example']
  rules:
  - matches:
    - path: {type: Exact, value: /exact}
    - path: {type: PathPrefix, value: /api/v1}
      method: POST
      headers: [{name: x-version, value: '2'}, {type: RegularExpression, name: x-tenant, value: '^t-[0-9]+$'}]
      queryParams: [{name: debug, value: 'on'}]
    - path: {type: RegularExpression, value: '/files/[a-z]+\\.(png|jpg)'}
    backendRefs: [{name: backend, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catch-all, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: backend, port: 80}]
",
    )
});

fuzz_target!(|data: &[u8]| {
    let Some(req) = FuzzRequest::parse(data) else {
        return;
    };
    let Ok(path) = normalize_path(req.path) else {
        return;
    };
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains("//"), "duplicate slash in {path:?}");
    assert!(
        path.split('/').all(|s| s != "." && s != ".."),
        "dot segment in {path:?}"
    );
    assert_eq!(
        normalize_path(&path).as_deref(),
        Ok(path.as_str()),
        "normalizing twice changed {:?}",
        req.path
    );
    let Some(host) = canonical_host(req.host) else {
        return;
    };
    let _ = ROUTES.lookup(&RequestParts {
        host: &host,
        path: &path,
        query: req.query,
        method: &req.method,
        headers: &req.headers,
    });
});

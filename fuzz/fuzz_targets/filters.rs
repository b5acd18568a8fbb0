//! Every filter kind applied to request parts from the fuzzer, with the
//! filters of a compiled fixture: header modifiers, URL rewrites (full
//! path and prefix), redirects, CORS, hop-by-hop removal. Nothing may
//! panic; a prefix rewrite of a matched path stays absolute.
#![no_main]

use std::sync::LazyLock;

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use portcullis_dataplane::filters::{self, RedirectInput};
use portcullis_dataplane::normalize::normalize_path;
use portcullis_dataplane::router::{canonical_host, PortRoutes, RequestParts};
use portcullis_fuzz::{fixture_routes, FuzzRequest, PORT};
use portcullis_model::{Filter, PathModifier};

static ROUTES: LazyLock<PortRoutes> = LazyLock::new(|| {
    fixture_routes(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: one}]
        add: [{name: x-add, value: two}, {name: accept, value: 'text/plain'}]
        remove: [x-remove, cookie]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: portcullis}]}
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: CORS
      cors:
        allowOrigins: ['https://*.example.com', 'https://app.example']
        allowMethods: [GET, POST]
        allowHeaders: [x-custom]
        exposeHeaders: [x-exposed]
        allowCredentials: true
        maxAge: 600
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: Exact, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    backendRefs: [{name: backend, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redirects, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [redirect.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new/}}
  - filters:
    - type: RequestRedirect
      requestRedirect: {hostname: other.example, port: 8443}
",
    )
});

fuzz_target!(|data: &[u8]| {
    let Some(mut req) = FuzzRequest::parse(data) else {
        return;
    };
    let (Ok(path), Some(host)) = (normalize_path(req.path), canonical_host(req.host)) else {
        return;
    };
    let Some(route) = ROUTES.lookup(&RequestParts {
        host: &host,
        path: &path,
        query: req.query,
        method: &req.method,
        headers: &req.headers,
    }) else {
        return;
    };
    let matched = &route.matcher.path;
    let origin = req.headers.get(http::header::ORIGIN).cloned();
    for filter in &route.rule.filters {
        match filter {
            Filter::RequestHeaderModifier(m) | Filter::ResponseHeaderModifier(m) => {
                filters::modify_headers(&mut req.headers, m)
            }
            Filter::UrlRewrite(rw) => {
                if let Some(p) = &rw.path {
                    let rewritten = filters::rewrite_path(&path, p, matched);
                    if matches!(p, PathModifier::ReplacePrefixMatch(r) if r.starts_with('/')) {
                        assert!(rewritten.starts_with('/'), "{path:?} -> {rewritten:?}");
                    }
                }
            }
            Filter::RequestRedirect(r) => {
                let location = filters::redirect_location(
                    r,
                    &RedirectInput {
                        scheme: "http",
                        host: &host,
                        path: &path,
                        query: req.query,
                        listener_port: PORT,
                        matched,
                    },
                );
                // The proxy answers 400 when this fails; it must not panic.
                let _ = HeaderValue::from_str(&location);
            }
            Filter::Cors(cors) => {
                if let Some(origin) = &origin {
                    let allowed = filters::cors_origin_allowed(cors, origin.to_str().unwrap_or(""));
                    let _ = filters::cors_preflight_headers(cors, origin, &req.headers);
                    if allowed {
                        let mut response = http::HeaderMap::new();
                        filters::cors_response_headers(cors, origin, &mut response);
                    }
                }
            }
            Filter::RequestMirror(_) | Filter::RouteFilter(_) => {}
        }
    }
    filters::remove_hop_by_hop(&mut req.headers);
});

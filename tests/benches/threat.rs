//! Per-request cost of RouteFilter threat protection: the stage the proxy
//! runs (`route_filter::threat::inspect`, body buffering included) for
//! the same requests with no checks (the route without the filter),
//! OpenAPI validation, the default injection rule set, and everything
//! together (plus JSON limits). Configurations are compiled from YAML by
//! the controller, exactly as served.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method, Request};
use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, Snapshot};
use portcullis_dataplane::body;
use portcullis_dataplane::route_filter::{threat, ClientRequest};
use portcullis_model::route_filter::threat::ThreatProtectionConfig;
use portcullis_model::route_filter::RouteFilterConfig;
use portcullis_model::Filter;

const OPENAPI: &str = include_str!("../fixtures/shop-openapi.yaml");

const ORDER: &str = r#"{"customer": "Ann O'Brien", "status": "new", "items": [
  {"sku": "ABC-1", "qty": 2}, {"sku": "DEF-22", "qty": 1}, {"sku": "GHI-333", "qty": 5},
  {"sku": "JKL-4", "qty": 3}, {"sku": "MNO-55", "qty": 1}]}"#;

fn filters() -> Vec<(&'static str, Arc<RouteFilterConfig>)> {
    let indented: String = OPENAPI
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    let sections = [
        ("none", "{}".to_string()),
        (
            "openapi",
            format!("\n      openApi:\n        inline: |\n{indented}"),
        ),
        ("injection", "\n      injection: {}".to_string()),
        (
            "all",
            format!(
                "\n      json: {{}}\n      contentTypes: [{{methods: [POST], allowed: [application/json]}}]\n      injection: {{}}\n      openApi:\n        inline: |\n{indented}"
            ),
        ),
    ];
    let mut yaml = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {ports: [{name: http, port: 80}]}
",
    );
    for (name, section) in &sections {
        yaml.push_str(&format!(
            "---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {{name: {name}, namespace: default}}
spec:
  threatProtection: {section}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{name}.example]
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {{group: portcullis.dev, kind: RouteFilter, name: {name}}}
    backendRefs: [{{name: echo, port: 80}}]
"
        ));
    }
    let mut snapshot = Snapshot::default();
    for object in parse_documents(&yaml).expect("bench YAML parses") {
        snapshot.insert(object);
    }
    let table = compile(&snapshot, &CompileOptions::default()).table;
    let mut out = Vec::new();
    for (name, _) in &sections {
        let config = table
            .ports
            .iter()
            .flat_map(|p| &p.virtual_hosts)
            .flat_map(|v| &v.routes)
            .filter(|r| r.rule.id.name == *name)
            .flat_map(|r| &r.rule.filters)
            .find_map(|f| match f {
                Filter::RouteFilter(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("RouteFilter {name} compiled"));
        assert!(
            config.threat_protection.is_some(),
            "{name} has threat protection"
        );
        out.push((*name, config));
    }
    out
}

fn client(method: Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> ClientRequest {
    ClientRequest {
        method,
        host: "example.com".into(),
        path: path.into(),
        query: query.map(String::from),
        headers: headers.clone(),
        identity: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut json_headers = HeaderMap::new();
    json_headers.insert("content-type", "application/json".parse().expect("value"));
    json_headers.insert(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) bench"
            .parse()
            .expect("value"),
    );
    let post = client(Method::POST, "/api/orders", None, &json_headers);
    let get = client(
        Method::GET,
        "/api/orders/42",
        Some("limit=10&view=full"),
        &json_headers,
    );
    let run = |config: &ThreatProtectionConfig, client: &ClientRequest, body: &'static str| {
        let mut req = Request::builder()
            .method(client.method.clone())
            .uri(client.path.as_str())
            .body(if body.is_empty() {
                body::empty()
            } else {
                body::full(body)
            })
            .expect("request");
        *req.headers_mut() = client.headers.clone();
        let out = rt.block_on(threat::inspect(config, "default/bench", client, req));
        assert!(out.is_ok(), "bench request refused");
        black_box(out.is_ok());
    };
    for (label, request, body) in [
        ("post_json_order", &post, ORDER),
        ("get_with_query", &get, ""),
    ] {
        let mut group = c.benchmark_group(format!("threat_{label}"));
        for (name, filter) in filters() {
            let config = filter.threat_protection.as_ref().expect("section").clone();
            group.bench_function(name, |b| b.iter(|| run(&config, request, body)));
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

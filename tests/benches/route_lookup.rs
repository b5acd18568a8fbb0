//! Route lookup at 10, 1,000 and 10,000 HTTPRoutes; compile time also at
//! 50,000 (compile must stay near-linear: it runs on every config change).
//!
//! Two shapes: every route on its own hostname (the common multi-tenant
//! case: lookup cost must not grow with routes on other hosts), and every
//! route on one hostname (the worst case for the per-host scan).

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, Snapshot};
use portcullis_dataplane::router::{PortRoutes, RequestParts};
use portcullis_model::RouteTable;

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const COMPILE_SIZES: [usize; 4] = [10, 1_000, 10_000, 50_000];

fn base() -> String {
    "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, protocol: HTTP, port: 8080, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints: [{addresses: [127.0.0.1]}]
"
    .to_string()
}

/// `n` routes, each with its own hostname, or all on `shared.example.com`.
fn snapshot(n: usize, one_host: bool) -> Snapshot {
    let mut yaml = base();
    for i in 0..n {
        let host = if one_host {
            "shared.example.com".to_string()
        } else {
            format!("svc-{i}.example.com")
        };
        yaml.push_str(&format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: route-{i}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
  - matches: [{{path: {{type: Exact, value: /r{i}/health}}}}]
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /r{i}/api}}, headers: [{{name: x-tenant, value: t{i}}}]}}]
    backendRefs: [{{name: echo, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}]
    backendRefs: [{{name: echo, port: 80}}]
"
        ));
    }
    let mut snapshot = Snapshot::default();
    for object in parse_documents(&yaml).expect("bench YAML parses") {
        snapshot.insert(object);
    }
    snapshot
}

fn table(snapshot: &Snapshot) -> Arc<RouteTable> {
    let compiled = compile(snapshot, &CompileOptions::default());
    assert!(
        !compiled.table.ports.is_empty(),
        "bench config compiled to no ports"
    );
    Arc::new(compiled.table)
}

fn lookup(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let method = Method::GET;
    for one_host in [false, true] {
        let shape = if one_host {
            "lookup_one_host"
        } else {
            "lookup_host_per_route"
        };
        let mut group = c.benchmark_group(shape);
        for n in SIZES {
            let routes = PortRoutes::new(table(&snapshot(n, one_host)), 0);
            // The last route: the worst position for any linear scan.
            let i = n - 1;
            let host = if one_host {
                "shared.example.com".to_string()
            } else {
                format!("svc-{i}.example.com")
            };
            let path = format!("/r{i}/items/42");
            let req = RequestParts {
                host: &host,
                path: &path,
                query: None,
                method: &method,
                headers: &headers,
            };
            assert!(routes.lookup(&req).is_some(), "bench request must match");
            group.bench_with_input(BenchmarkId::from_parameter(n), &req, |b, req| {
                b.iter(|| black_box(routes.lookup(black_box(req))))
            });
        }
        group.finish();
    }
}

fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for n in COMPILE_SIZES {
        // Built on first use: a run filtered to other benchmarks does not
        // parse 50,000 routes.
        let snap = OnceCell::new();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let snap = snap.get_or_init(|| snapshot(n, false));
            b.iter(|| black_box(compile(snap, &CompileOptions::default())))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, compile_time);
criterion_main!(benches);

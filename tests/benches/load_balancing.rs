//! Per-request cost of endpoint choice: each load-balancing algorithm of
//! BackendPolicy over a backend of 10 and 100 endpoints, through the same
//! `BackendState::pick` the proxy calls (availability checks included).
//! The table is compiled from YAML, as in production.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::HeaderMap;
use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, Snapshot};
use portcullis_dataplane::lb::PickInput;
use portcullis_dataplane::resilience::Backends;
use portcullis_dataplane::upstream::Upstreams;

const ALGORITHMS: [(&str, &str); 6] = [
    ("round_robin", "{type: RoundRobin}"),
    ("least_request", "{type: LeastRequest}"),
    ("random", "{type: Random}"),
    (
        "hash_header",
        "{type: ConsistentHash, consistentHash: {header: x-user}}",
    ),
    (
        "hash_source_ip",
        "{type: ConsistentHash, consistentHash: {sourceIP: true}}",
    ),
    (
        "round_robin_session_cookie",
        "{type: RoundRobin, sessionPersistence: {cookieName: s}}",
    ),
];

fn yaml(endpoints: usize, lb: &str) -> String {
    let addresses: String = (0..endpoints)
        .map(|i| format!("\n- addresses: [10.0.{}.{}]", i / 250, i % 250 + 1))
        .collect();
    format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portcullis
  listeners: [{{name: http, protocol: HTTP, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-1, namespace: default, labels: {{kubernetes.io/service-name: svc}}}}
addressType: IPv4
ports: [{{name: http, port: 3000}}]
endpoints:{addresses}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: lb, namespace: default}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: svc}}]
  defaults:
    loadBalancer: {lb}
"
    )
}

fn backends(endpoints: usize, lb: &str) -> Backends {
    let mut snapshot = Snapshot::default();
    for object in parse_documents(&yaml(endpoints, lb)).expect("bench YAML parses") {
        snapshot.insert(object);
    }
    let compiled = compile(&snapshot, &CompileOptions::default());
    Backends::for_table(&compiled.table, None, &Upstreams::new())
}

fn pick(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "user-12345".parse().expect("header value"));
    headers.insert(
        "cookie",
        "other=1; s=unknown".parse().expect("header value"),
    );
    let input = PickInput {
        headers: &headers,
        query: None,
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        tried: &[],
    };
    for (name, lb) in ALGORITHMS {
        let mut group = c.benchmark_group(format!("lb_{name}"));
        for n in [10, 100] {
            let backends = backends(n, lb);
            let state = backends.get("default/svc:80").expect("backend state");
            assert_eq!(state.endpoints.len(), n);
            assert!(state.pick(&input).is_some());
            group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
                b.iter(|| black_box(state.pick(black_box(input))))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pick);
criterion_main!(benches);

//! The rate-limit stage in isolation: one `enforce` call (conditions, key,
//! counters, report) plus writing the response headers, for a local limit
//! that never trips, on one hot key and spread over 10,000 client IPs.
//! Complements `bench/ratelimit.sh` (whole-gateway throughput), whose
//! figures swing with the background load.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, Method};
use portcullis_controller::file::parse_documents;
use portcullis_controller::{compile, CompileOptions, Snapshot};
use portcullis_dataplane::ratelimit::{enforce, Limiters, RequestInfo};

const CONFIG: &str = "
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
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: rl, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]
  limits:
    per-client:
      rates: [{limit: 1000000000, window: 1s}, {limit: 1000000000, window: 1h}]
      key: [{type: ClientIP}]
";

fn stage(c: &mut Criterion) {
    let mut snapshot = Snapshot::default();
    for object in parse_documents(CONFIG).expect("bench config parses") {
        snapshot.insert(object);
    }
    let table = compile(&snapshot, &CompileOptions::default()).table;
    let limiters = Limiters::for_table(&table, None);
    let rule = table.ports[0].virtual_hosts[0].routes[0].rule.clone();
    let config = rule
        .policies
        .rate_limit
        .clone()
        .expect("the policy applies");
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("ratelimit");
    let mut run = |name: &str, ip_of: &dyn Fn(u32) -> IpAddr| {
        let mut i = 0u32;
        let mut response = HeaderMap::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let info = RequestInfo {
                    client_ip: ip_of(i),
                    method: &Method::GET,
                    path: "/api",
                    headers: &headers,
                    identity: None,
                };
                let report = enforce(&limiters, &rule, &config, &info)
                    .now_or_never()
                    .expect("local limits never wait")
                    .expect("never trips");
                if let Some(report) = report {
                    report.apply(&mut response);
                }
                black_box(&response);
            })
        });
    };
    run("local_one_key", &|_| IpAddr::V4(Ipv4Addr::LOCALHOST));
    run("local_10k_keys", &|i| {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i % 10_000)))
    });
    group.finish();
}

criterion_group!(benches, stage);
criterion_main!(benches);

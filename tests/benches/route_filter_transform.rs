//! Per-request cost of RouteFilter masking and JSON transformation, end to
//! end: the same ~2.5 KB JSON answer (20 records with names, e-mail
//! addresses, card numbers) fetched over loopback HTTP/1.1 keep-alive
//! through an in-process gateway on routes that differ only in their
//! RouteFilter: none, masking (pointer + patterns), masking of a gzip
//! answer (decode, mask, encode), JSON transform (templated request
//! headers, response edits). The differences to `plain` are the filters'
//! cost; absolute figures include the client, the backend and loopback.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::{
    gateway, http1_client, service_yaml, TestGateway, LOOPBACK, PLAIN_LISTENER,
};
use tokio::net::TcpListener;

fn document() -> String {
    let records: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "name": format!("Customer {i}"),
                "email": format!("customer{i}@example.com"),
                "card": "4111 1111 1111 1111",
                "ssn": "123-45-6789",
                "note": "ordinary text without anything to mask in it at all",
            })
        })
        .collect();
    serde_json::json!({"records": records, "page": 1}).to_string()
}

/// Answers `document()`, gzip-compressed for paths under /gz.
async fn start_backend() -> std::net::SocketAddr {
    let plain = Bytes::from(document());
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&plain).expect("gzip");
    let gz = Bytes::from(e.finish().expect("gzip"));
    let listener = TcpListener::bind((LOOPBACK, 0))
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (plain, gz) = (plain.clone(), gz.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let gzip = req.uri().path().starts_with("/gz");
                        let body = if gzip { gz.clone() } else { plain.clone() };
                        async move {
                            let mut resp = Response::new(Full::new(body));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().expect("value"));
                            if gzip {
                                resp.headers_mut()
                                    .insert("content-encoding", "gzip".parse().expect("value"));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

const FILTERS: &str = "
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {name: mask, namespace: default}
spec:
  masking:
    fields:
    - {pointer: /records/*/ssn, action: Remove}
    patterns:
    - {builtin: PaymentCard, action: Mask, keepLast: 4}
    - {builtin: Email, action: Replace}
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {name: transform, namespace: default}
spec:
  transform:
    request:
      headers:
        set:
        - {name: x-client, value: '${request.clientIp} ${request.method} ${request.path}'}
        - {name: x-page, value: '${request.query.page}'}
    response:
      json:
      - {op: remove, path: /records/0/ssn}
      - {op: move, from: /page, path: /meta/page}
      - {op: add, path: /meta/source, template: '${request.host}'}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /plain}}]
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /masked}}, {path: {type: PathPrefix, value: /gz}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: portcullis.dev, kind: RouteFilter, name: mask}}
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /transformed}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: portcullis.dev, kind: RouteFilter, name: transform}}
    backendRefs: [{name: backend, port: 80}]
";

fn route_filters(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let gw: TestGateway = rt.block_on(async {
        let addr = start_backend().await;
        let yaml = format!(
            "{}{}{FILTERS}",
            gateway(PLAIN_LISTENER),
            service_yaml("backend", &[addr], None)
        );
        TestGateway::start(&yaml, &["HTTP_PORT"]).await
    });
    let client = http1_client();
    let mut group = c.benchmark_group("route_filter");
    group.measurement_time(Duration::from_secs(3));
    for (name, path, accept_gzip) in [
        ("plain", "/plain?page=1", false),
        ("masking", "/masked?page=1", false),
        ("masking_gzip", "/gz?page=1", true),
        ("json_transform", "/transformed?page=1", false),
    ] {
        let url = gw.url("HTTP_PORT", path);
        // Sanity: the route answers 200 with a body, once, before timing.
        let check = rt.block_on(fetch(&client, &url, accept_gzip));
        assert!(check > 0, "{name}: empty answer");
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(fetch(&client, &url, accept_gzip)))
        });
    }
    group.finish();
    drop(gw);
}

async fn fetch(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
    accept_gzip: bool,
) -> usize {
    let mut req = Request::get(url).header("host", "bench.example");
    if accept_gzip {
        req = req.header("accept-encoding", "gzip");
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("bench request timed out")
        .expect("bench request failed");
    assert_eq!(resp.status(), 200);
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

criterion_group!(benches, route_filters);
criterion_main!(benches);

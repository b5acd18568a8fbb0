//! Protocols over real sockets: TLS with SNI, HTTP/2 via ALPN, h2c prior
//! knowledge, WebSocket upgrades, gRPC with trailers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

fn route_to(service: &str, extra: &str) -> String {
    format!(
        "
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-{service}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]{extra}
  rules:
  - backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

/// Opens a TLS connection with `sni` and returns the stream plus the ALPN
/// protocol negotiated.
async fn tls_connect(
    pki: &TestPki,
    port: u16,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(alpn));
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
        .expect("TLS handshake (certificate must match the SNI name)")
}

async fn h1_over<S>(io: S, host: &str, path: &str) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn h2_over<S>(io: S, host: &str, path: &str) -> (Answer, http::Version)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("https://{host}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("request");
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    (
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        },
        version,
    )
}

#[tokio::test]
async fn https_selects_the_certificate_by_sni_and_routes_by_host() {
    let pki = TestPki::new();
    let (cert_a, key_a) = pki.server_cert(&["a.example.com"]);
    let (cert_b, key_b) = pki.server_cert(&["*.b.example.com"]);
    let echo_a = start_echo("a").await;
    let echo_b = start_echo("b").await;
    let listeners = "  - name: https-a
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: a.example.com
    tls: {certificateRefs: [{name: cert-a}]}
  - name: https-b
    protocol: HTTPS
    port: ${HTTPS_PORT}
    hostname: \"*.b.example.com\"
    tls: {certificateRefs: [{name: cert-b}]}";
    let yaml = format!(
        "{}{}{}{}{}{}{}",
        gateway(listeners),
        tls_secret_yaml("cert-a", &cert_a, &key_a),
        tls_secret_yaml("cert-b", &cert_b, &key_b),
        service_yaml("svc-a", &[echo_a], None),
        service_yaml("svc-b", &[echo_b], None),
        route_to("svc-a", "\n  hostnames: [a.example.com]"),
        route_to("svc-b", "\n  hostnames: [\"*.b.example.com\"]"),
    );
    let gw = TestGateway::start(&yaml, &["HTTPS_PORT"]).await;
    let port = gw.port("HTTPS_PORT");

    let tls = tls_connect(&pki, port, "a.example.com", &[b"http/1.1"]).await;
    let answer = h1_over(tls, "a.example.com", "/").await;
    assert_eq!(answer.pod(), "a");
    assert_eq!(
        answer.echoed_header("x-forwarded-proto").as_deref(),
        Some("https")
    );

    let tls = tls_connect(&pki, port, "x.b.example.com", &[b"http/1.1"]).await;
    assert_eq!(h1_over(tls, "x.b.example.com", "/").await.pod(), "b");

    // ALPN h2 over TLS.
    let tls = tls_connect(&pki, port, "a.example.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (answer, version) = h2_over(tls, "a.example.com", "/h2").await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(answer.pod(), "a");
    assert_eq!(answer.echo()["path"], "/h2");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let echo = start_echo("e").await;
    let yaml = format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
        route_to("echo", "")
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let req = Request::get(gw.url("HTTP_PORT", "/over-h2c"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), h2c_client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/over-h2c");
    // The backend is HTTP/1.1: the gateway translated.
    assert_eq!(echo["proto"], "HTTP/1.1");
}

#[tokio::test]
async fn h2c_backends_are_reached_over_http2() {
    let echo = start_echo("e").await;
    let yaml = format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], Some("kubernetes.io/h2c")),
        route_to("echo", "")
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let answer = get(&gw.url("HTTP_PORT", "/"), "h", &[]).await;
    assert_eq!(answer.echo()["proto"], "HTTP/2.0");
}

#[tokio::test]
async fn websocket_upgrade_is_tunneled() {
    let echo = start_echo("ws").await;
    let yaml = format!(
        "{}{}{}",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
        route_to("echo", "")
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let mut stream = websocket::connect(gw.port("HTTP_PORT"), "h", "/chat").await;
    for message in ["hello", "through the gateway"] {
        assert_eq!(websocket::round_trip(&mut stream, message).await, message);
    }
}

#[tokio::test]
async fn grpc_route_carries_messages_and_trailers_end_to_end() {
    let echo = start_echo("grpc").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{method: {{service: demo.Echo, method: Say}}}}]
    backendRefs: [{{name: echo, port: 80}}]
",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None)
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    // One length-prefixed gRPC message: flag 0, length 5, payload.
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::post(gw.url("HTTP_PORT", "/demo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), h2c_client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-grpc-method"], "/demo.Echo/Say");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("gRPC trailers must reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), message);

    // A method the route does not match is not routed.
    let req = Request::post(gw.url("HTTP_PORT", "/demo.Echo/Other"))
        .header("content-type", "application/grpc")
        .body(Full::new(message))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), h2c_client().request(req))
        .await
        .unwrap()
        .unwrap();
    // Answered the gRPC way: trailers-only, UNIMPLEMENTED.
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "12");
}

/// A gRPC call refused by the gateway (an AuthPolicy here) gets a gRPC
/// answer a gRPC library understands, not a bare HTTP 401.
#[tokio::test]
async fn grpc_calls_refused_at_the_gateway_get_grpc_statuses() {
    let echo = start_echo("grpc").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: v1
kind: Secret
metadata:
  name: caller
  namespace: default
  labels: {{portcullis.dev/api-key: \"true\"}}
stringData: {{api_key: grpc-key-0123456789abcdef}}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: keys, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: GRPCRoute, name: grpc}}]
  apiKeys: {{selector: {{matchLabels: {{portcullis.dev/api-key: \"true\"}}}}}}
",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None)
    );
    let gw = TestGateway::start(&yaml, &["HTTP_PORT"]).await;
    let url = gw.url("HTTP_PORT", "/demo.Echo/Say");
    let refused = grpc::call(&url, &[]).await;
    let (status, headers) = (refused.status, refused.headers);
    assert_eq!(status, "16", "UNAUTHENTICATED");
    assert_eq!(headers["content-type"], "application/grpc");
    assert!(headers["grpc-message"].to_str().unwrap().contains("401"));
    assert!(
        headers.contains_key("www-authenticate"),
        "the challenge is kept"
    );
    let served = grpc::call(&url, &[("x-api-key", "grpc-key-0123456789abcdef")]).await;
    assert_eq!(served.status, "0");
}

#[tokio::test]
async fn reload_under_load_drops_nothing() {
    let a = start_echo("a").await;
    let b = start_echo("b").await;
    let config = |n: usize| {
        let (svc, value) = if n.is_multiple_of(2) {
            ("svc-a", "even")
        } else {
            ("svc-b", "odd")
        };
        format!(
            "{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: churn, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-generation, value: \"{value}-{n}\"}}]}}
    backendRefs: [{{name: {svc}, port: 80}}]
",
            gateway(PLAIN_LISTENER),
            service_yaml("svc-a", &[a], None),
            service_yaml("svc-b", &[b], None)
        )
    };
    let gw = Arc::new(TestGateway::start(&config(0), &["HTTP_PORT"]).await);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (gw, tally, stop) = (gw.clone(), tally.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = http1_client();
            // Bounded: stops when told, and never runs past 60 s.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                let req = Request::get(gw.url("HTTP_PORT", "/"))
                    .header("host", "h")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let ok =
                    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                        Ok(Ok(resp)) => {
                            resp.status() == 200 && resp.into_body().collect().await.is_ok()
                        }
                        _ => false,
                    };
                let counter = if ok { &tally.ok } else { &tally.failed };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for n in 1..=100 {
        gw.reconfigure(&config(n)).await;
    }
    // The last configuration is the one served.
    let answer = get(&gw.url("HTTP_PORT", "/"), "h", &[]).await;
    assert_eq!(
        answer.echoed_header("x-generation").as_deref(),
        Some("even-100")
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        tally.failed(),
        0,
        "requests failed during reloads ({} succeeded)",
        tally.ok()
    );
    assert!(
        tally.ok() > 100,
        "load too light to prove anything: {}",
        tally.ok()
    );
}

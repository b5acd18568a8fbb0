//! Graceful shutdown over real sockets: readiness goes false, listeners
//! close (new connections are refused), requests in flight finish, HTTP/2
//! clients get GOAWAY, WebSocket tunnels live until the drain deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::lifecycle::Shutdown;
use portcullis_tests::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// A backend that holds every request until the test releases it: each
/// arrival is announced on the channel, each release lets one answer go.
struct GatedBackend {
    addr: SocketAddr,
    arrived: mpsc::UnboundedReceiver<String>,
    release: Arc<Semaphore>,
}

async fn start_gated_backend() -> GatedBackend {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let gate = release.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived_tx = arrived_tx.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let arrived_tx = arrived_tx.clone();
                        let gate = gate.clone();
                        async move {
                            let _ = arrived_tx.send(req.uri().path().to_string());
                            if let Ok(permit) = gate.acquire().await {
                                permit.forget();
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"finished"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GatedBackend {
        addr,
        arrived,
        release,
    }
}

async fn gateway_to(backend: SocketAddr) -> TestGateway {
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: slow
  namespace: default
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: slow, port: 80}}]
",
        gateway(PLAIN_LISTENER),
        service_yaml("slow", &[backend], None),
    );
    TestGateway::start(&yaml, &["HTTP_PORT"]).await
}

const SHUTDOWN: Shutdown = Shutdown {
    delay: Duration::ZERO,
    drain: Duration::from_secs(20),
};

async fn wait_arrival(backend: &mut GatedBackend) -> String {
    tokio::time::timeout(Duration::from_secs(10), backend.arrived.recv())
        .await
        .expect("the request reached the backend")
        .expect("backend running")
}

/// Polls (bounded) until connecting to `port` fails.
async fn wait_until_refused(port: u16) -> bool {
    for _ in 0..500 {
        match TcpStream::connect((LOOPBACK, port)).await {
            Err(_) => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    false
}

#[tokio::test]
async fn an_in_flight_request_finishes_while_new_connections_are_refused() {
    let mut backend = start_gated_backend().await;
    let gw = gateway_to(backend.addr).await;
    let port = gw.port("HTTP_PORT");
    let admin = gw.admin_url("/readyz");
    assert_eq!(get(&admin, "admin", &[]).await.status, StatusCode::OK);

    let in_flight = tokio::spawn({
        let url = gw.url("HTTP_PORT", "/slow");
        async move { get(&url, "example.com", &[]).await }
    });
    assert_eq!(wait_arrival(&mut backend).await, "/slow");

    let TestGateway { running, dir, .. } = gw;
    let shutdown = tokio::spawn(running.shutdown(SHUTDOWN));

    // Readiness is false first, and the listener stops accepting, while
    // the request is still held by the backend.
    let mut not_ready = false;
    for _ in 0..500 {
        if get(&admin, "admin", &[]).await.status == StatusCode::SERVICE_UNAVAILABLE {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_ready, "/readyz must report 503 during shutdown");
    assert!(
        wait_until_refused(port).await,
        "new connections must be refused once shutdown started"
    );
    assert!(!shutdown.is_finished(), "shutdown waits for the request");

    backend.release.add_permits(1);
    let answer = in_flight.await.expect("client task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "finished");
    let drained = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends once the request finished")
        .expect("shutdown task");
    assert!(drained.in_time, "nothing had to be cut off");
    drop(dir);
}

#[tokio::test]
async fn the_drain_deadline_closes_requests_that_do_not_finish() {
    let mut backend = start_gated_backend().await;
    let gw = gateway_to(backend.addr).await;
    let in_flight = tokio::spawn({
        let url = gw.url("HTTP_PORT", "/stuck");
        async move {
            let req = Request::get(url)
                .header("host", "example.com")
                .body(Full::new(Bytes::new()))
                .expect("request");
            http1_client().request(req).await
        }
    });
    wait_arrival(&mut backend).await;
    let TestGateway { running, dir, .. } = gw;
    let drained = running
        .shutdown(Shutdown {
            delay: Duration::ZERO,
            drain: Duration::from_millis(200),
        })
        .await;
    assert!(!drained.in_time);
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the client sees the connection closed")
        .expect("client task");
    assert!(result.is_err(), "the stuck request was cut off: {result:?}");
    drop(dir);
}

#[tokio::test]
async fn http2_clients_get_goaway_and_their_open_stream_completes() {
    let mut backend = start_gated_backend().await;
    let gw = gateway_to(backend.addr).await;
    let tcp = TcpStream::connect((LOOPBACK, gw.port("HTTP_PORT")))
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let connection = tokio::spawn(connection);

    let request = Request::get(gw.url("HTTP_PORT", "/stream"))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("open a stream");
    assert_eq!(wait_arrival(&mut backend).await, "/stream");

    let TestGateway { running, dir, .. } = gw;
    let shutdown = tokio::spawn(running.shutdown(SHUTDOWN));

    // Once GOAWAY has arrived the client may not open new streams; the
    // refusal names GOAWAY with NO_ERROR (a graceful close).
    let mut refusal = None;
    for _ in 0..500 {
        let request = Request::get("http://example.com/late")
            .body(())
            .expect("request");
        let ready = client.clone().ready().await;
        match ready.and_then(|mut c| c.send_request(request, true).map(|_| ())) {
            Err(e) => {
                refusal = Some(e);
                break;
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let refusal = refusal.expect("new streams are refused after GOAWAY");
    assert!(refusal.is_go_away(), "{refusal:?}");
    assert_eq!(refusal.reason(), Some(h2::Reason::NO_ERROR), "{refusal:?}");

    // The stream opened before GOAWAY still gets its whole answer.
    backend.release.add_permits(1);
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.expect("body chunk"));
    }
    assert_eq!(bytes, b"finished");

    let drained = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends")
        .expect("shutdown task");
    assert!(drained.in_time);
    let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
    drop(dir);
}

/// A gateway in front of the echo server, whose `/` speaks WebSocket.
async fn gateway_to_websocket_echo() -> TestGateway {
    let echo = start_echo("ws").await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ws, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: echo, port: 80}}]
",
        gateway(PLAIN_LISTENER),
        service_yaml("echo", &[echo], None),
    );
    TestGateway::start(&yaml, &["HTTP_PORT"]).await
}

#[tokio::test]
async fn a_websocket_tunnel_keeps_working_during_the_drain_and_its_close_ends_it() {
    let gw = gateway_to_websocket_echo().await;
    let port = gw.port("HTTP_PORT");
    let mut ws = websocket::connect(port, "example.com", "/").await;
    assert_eq!(websocket::round_trip(&mut ws, "before").await, "before");

    let TestGateway { running, dir, .. } = gw;
    let shutdown = tokio::spawn(running.shutdown(SHUTDOWN));
    assert!(wait_until_refused(port).await, "listener still open");
    // The tunnel is not cut when the drain starts, and shutdown waits for it.
    assert_eq!(
        websocket::round_trip(&mut ws, "during the drain").await,
        "during the drain"
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the open tunnel"
    );
    // The client ends its session: the drain is complete, well before the
    // 20 s deadline.
    drop(ws);
    let drained = tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends once the tunnel is closed")
        .expect("shutdown task");
    assert!(drained.in_time);
    drop(dir);
}

#[tokio::test]
async fn the_drain_deadline_closes_websocket_tunnels() {
    use tokio::io::AsyncReadExt;
    let gw = gateway_to_websocket_echo().await;
    let mut ws = websocket::connect(gw.port("HTTP_PORT"), "example.com", "/").await;
    assert_eq!(websocket::round_trip(&mut ws, "hello").await, "hello");

    let TestGateway { running, dir, .. } = gw;
    let drained = running
        .shutdown(Shutdown {
            delay: Duration::ZERO,
            drain: Duration::from_millis(300),
        })
        .await;
    assert!(!drained.in_time, "the open tunnel outlived the deadline");
    // The client sees its tunnel closed, not left hanging.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf))
        .await
        .expect("the tunnel is closed, not left open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected end of stream, got {read:?}"
    );
    drop(dir);
}

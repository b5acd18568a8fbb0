//! Request and connection limits, driven over raw sockets (HTTP/1.1 bytes,
//! HTTP/2 frames) and real HTTP/2 clients: every limit refuses with the
//! right status or closes the connection, counts in
//! `portcullis_limit_exceeded_total`, never lets a refused request reach
//! the backend, and leaves the gateway serving everyone else.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis_dataplane::Limits;
use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with these limits routing everything to a recording backend.
/// `extra` is appended to the configuration (policies).
async fn setup(limits: Limits, extra: &str) -> (TestGateway, Recorder) {
    let (recorder, addr) = Recorder::start().await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: backend, port: 80}}]
{extra}",
        gateway(PLAIN_LISTENER),
        service_yaml("backend", &[addr], None)
    );
    let gw = TestGateway::start_with(&yaml, &["HTTP_PORT"], |c| c.limits = limits).await;
    (gw, recorder)
}

/// Reads until the peer closes (or `deadline` passes): everything
/// received, and whether it was closed.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + deadline;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (received, closed)
}

/// Sends raw bytes (ignoring a write the gateway cut short) and reads the
/// answer until the connection closes.
async fn exchange(port: u16, raw: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
    let _ = stream.write_all(raw).await;
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// `portcullis_limit_exceeded_total` for this gateway's listener.
async fn limit_count(gw: &TestGateway, limit: &str) -> u64 {
    let page = get(&gw.admin_url("/metrics"), "admin", &[]).await;
    let text = String::from_utf8_lossy(&page.body).into_owned();
    let port = format!("port=\"{}\"", gw.port("HTTP_PORT"));
    let limit = format!("limit=\"{limit}\"");
    text.lines()
        .filter(|l| l.starts_with("portcullis_limit_exceeded_total{"))
        .filter(|l| l.contains(&port) && l.contains(&limit))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The gateway still answers an ordinary request.
async fn assert_still_serving(gw: &TestGateway) {
    let answer = get(&gw.url("HTTP_PORT", "/still"), "a.example", &[]).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the gateway must keep serving"
    );
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let limits = Limits {
        max_request_header_bytes: 16 * 1024,
        ..Limits::default()
    };
    let (gw, recorder) = setup(limits, "").await;
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (response, closed) = exchange(gw.port("HTTP_PORT"), raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        status_line(&response)
    );
    assert!(closed);
    // Under the limit is fine.
    let fits = "a".repeat(8 * 1024);
    let answer = get(&gw.url("HTTP_PORT", "/"), "a.example", &[("x-big", &fits)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        recorder.count(),
        1,
        "only the request under the limit arrived"
    );
    assert_eq!(limit_count(&gw, "header_size").await, 1);
}

#[tokio::test]
async fn too_many_request_headers_get_431_over_http1_and_http2() {
    let limits = Limits {
        max_request_headers: 20,
        ..Limits::default()
    };
    let (gw, recorder) = setup(limits, "").await;
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: a.example\r\n{many}\r\n");
    let (response, closed) = exchange(gw.port("HTTP_PORT"), raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        status_line(&response)
    );
    assert!(closed);

    // HTTP/2 has no header count of its own: the gateway counts.
    let mut req = Request::get(gw.url("HTTP_PORT", "/")).header("host", "a.example");
    for i in 0..40 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let answer = send(&h2c_client(), req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(recorder.count(), 0, "nothing may reach the backend");
    assert!(limit_count(&gw, "header_count").await >= 1);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn a_long_uri_gets_414() {
    let limits = Limits {
        max_uri_bytes: 1024,
        ..Limits::default()
    };
    let (gw, recorder) = setup(limits, "").await;
    let path = format!("/{}", "p".repeat(2000));
    let raw = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n");
    let (response, closed) = exchange(gw.port("HTTP_PORT"), raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 414"),
        "{}",
        status_line(&response)
    );
    assert!(closed, "the connection is closed after a refused request");
    let answer = send(
        &h2c_client(),
        Request::get(gw.url("HTTP_PORT", &path))
            .header("host", "a.example")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::URI_TOO_LONG, "HTTP/2 too");
    assert_eq!(recorder.count(), 0);
    assert_eq!(limit_count(&gw, "uri_length").await, 2);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_never_reaches_the_backend() {
    let limits = Limits {
        max_request_body_bytes: Some(1000),
        ..Limits::default()
    };
    let (gw, recorder) = setup(limits, "").await;
    let port = gw.port("HTTP_PORT");

    // Declared length over the limit: refused before anything is sent.
    let body = "b".repeat(5000);
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (response, closed) = exchange(port, raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "{}",
        status_line(&response)
    );
    assert!(closed, "the unread body is not waited for");

    // Chunked: cut off at the limit, mid-stream.
    let chunk = "c".repeat(600);
    let chunks: String = (0..4).map(|_| format!("258\r\n{chunk}\r\n")).collect();
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n"
    );
    let (response, closed) = exchange(port, raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "{}",
        status_line(&response)
    );
    assert!(closed);

    // Give a forwarded request time to arrive, then look at what the
    // backend received: never a complete upload.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let complete_uploads = recorder
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.body.len() > 1000)
        .count();
    assert_eq!(
        complete_uploads, 0,
        "the backend must not get an over-limit body"
    );

    // Under the limit, both ways, goes through whole.
    let ok = "o".repeat(900);
    let raw = format!(
        "POST /small HTTP/1.1\r\nHost: a.example\r\nContent-Length: 900\r\nConnection: close\r\n\r\n{ok}"
    );
    let (response, _) = exchange(port, raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        status_line(&response)
    );
    let raw = format!(
        "POST /small HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n384\r\n{ok}\r\n0\r\n\r\n"
    );
    let (response, _) = exchange(port, raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        status_line(&response)
    );
    let small: Vec<usize> = recorder
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/small")
        .map(|r| r.body.len())
        .collect();
    assert_eq!(small, [900, 900]);
    assert_eq!(limit_count(&gw, "body_size").await, 2);
}

#[tokio::test]
async fn a_backend_policy_sets_the_body_limit_per_route() {
    // Gateway-wide 1000 bytes; the /upload route allows 10000, the
    // backend Service 500 for everything else.
    let limits = Limits {
        max_request_body_bytes: Some(1000),
        ..Limits::default()
    };
    let (recorder, addr) = Recorder::start().await;
    let yaml = format!(
        "{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: upload, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /upload}}}}]
    backendRefs: [{{name: backend, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: backend, port: 80}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: uploads, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: upload}}]
  maxRequestBodyBytes: 10000
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: small, namespace: default}}
spec:
  targetRefs: [{{group: '', kind: Service, name: backend}}]
  maxRequestBodyBytes: 500
",
        gateway(PLAIN_LISTENER),
        service_yaml("backend", &[addr], None)
    );
    let gw = TestGateway::start_with(&yaml, &["HTTP_PORT"], |c| c.limits = limits).await;
    let post = |path: &str, len: usize| {
        Request::post(gw.url("HTTP_PORT", path))
            .header("host", "a.example")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    let client = http1_client();
    assert_eq!(
        send(&client, post("/upload", 8000)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&client, post("/upload", 12000)).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        send(&client, post("/api", 400)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&client, post("/api", 800)).await.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the Service's policy is below the gateway's limit"
    );
    let bodies: Vec<usize> = recorder
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.body.len())
        .collect();
    assert_eq!(bodies, [8000, 400]);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let limits = Limits {
        request_header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (gw, recorder) = setup(limits, "").await;
    let mut slow = TcpStream::connect((LOOPBACK, gw.port("HTTP_PORT")))
        .await
        .expect("connect");
    let head = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // One byte every 200 ms: the head would take ~17 s. Bounded by the
    // head's length; stops as soon as the gateway hangs up.
    let mut cut_off = false;
    for (i, byte) in head.iter().enumerate() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(_)) => panic!("no answer expected for an incomplete head"),
            Err(_) => {}
        }
        // Meanwhile, everyone else is served.
        if i == 1 {
            assert_still_serving(&gw).await;
        }
    }
    assert!(cut_off, "the slow client must be disconnected");
    assert_eq!(recorder.count(), 1, "only the ordinary request arrived");
    assert_eq!(limit_count(&gw, "header_timeout").await, 1);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (gw, _recorder) = setup(limits, "").await;
    let port = gw.port("HTTP_PORT");
    // HTTP/1.1: one request, then silence.
    let mut h1 = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
    h1.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("write");
    let (received, closed) = read_until_closed(&mut h1, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
    assert!(closed, "an idle HTTP/1.1 connection is closed");
    // HTTP/2: a connection that never opens a stream gets GOAWAY.
    let mut h2 = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
    h2.write_all(&h2_preface()).await.expect("preface");
    let (frames, closed) = read_until_closed(&mut h2, Duration::from_secs(10)).await;
    assert!(closed, "an idle HTTP/2 connection is closed");
    assert_eq!(goaway_error(&frames), Some(0), "GOAWAY NO_ERROR");
    assert!(limit_count(&gw, "idle_timeout").await >= 2);
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections_per_listener: Some(2),
        ..Limits::default()
    };
    let (gw, _recorder) = setup(limits, "").await;
    let port = gw.port("HTTP_PORT");
    let request = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    // The third is accepted and closed without an answer.
    let (response, closed) = exchange(port, request).await;
    assert!(closed && response.is_empty(), "refused: {response:?}");
    assert_eq!(limit_count(&gw, "max_connections").await, 1);
    // A slot frees when a connection closes.
    drop(open.pop());
    let mut served = false;
    for _ in 0..50 {
        let raw = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
        let (response, _) = exchange(port, raw).await;
        if response.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a new connection is served once one closed");
}

#[tokio::test]
async fn connections_close_gracefully_after_their_last_request() {
    let limits = Limits {
        max_requests_per_connection: Some(3),
        ..Limits::default()
    };
    let (gw, recorder) = setup(limits, "").await;
    let port = gw.port("HTTP_PORT");
    // HTTP/1.1: four pipelined requests; three answers, the third with
    // `Connection: close`, then the connection ends.
    let one = "GET /n HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let (response, closed) = exchange(port, one.repeat(4).as_bytes()).await;
    assert_eq!(response.matches("HTTP/1.1 200").count(), 3, "{response}");
    let last = response.rsplit("HTTP/1.1 200").next().unwrap_or("");
    assert!(
        last.to_ascii_lowercase().contains("connection: close"),
        "{last}"
    );
    assert!(closed);
    assert_eq!(recorder.count(), 3);

    // HTTP/2: three requests, then GOAWAY and the connection ends.
    let tcp = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    for _ in 0..3 {
        let req = Request::get("http://a.example/h2").body(()).unwrap();
        let (response, _) = client.send_request(req, true).expect("send");
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(ended.is_ok(), "the HTTP/2 connection ends after GOAWAY");
    assert_eq!(limit_count(&gw, "max_requests").await, 2);
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_gets_goaway_and_others_are_served() {
    let (gw, _recorder) = setup(Limits::default(), "").await;
    let mut attacker = TcpStream::connect((LOOPBACK, gw.port("HTTP_PORT")))
        .await
        .expect("connect");
    let mut flood = h2_preface();
    // 500 streams opened and cancelled at once (CVE-2023-44487).
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(0x1, 0x5, stream, &request_block()));
        flood.extend(frame(0x3, 0x0, stream, &0x8u32.to_be_bytes()));
    }
    let _ = attacker.write_all(&flood).await;
    let (frames, closed) = read_until_closed(&mut attacker, Duration::from_secs(10)).await;
    assert!(closed, "the flooding connection is closed");
    assert_eq!(goaway_error(&frames), Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    assert_eq!(limit_count(&gw, "h2_abuse").await, 1);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn an_http2_continuation_flood_gets_goaway_and_others_are_served() {
    let (gw, recorder) = setup(Limits::default(), "").await;
    let mut attacker = TcpStream::connect((LOOPBACK, gw.port("HTTP_PORT")))
        .await
        .expect("connect");
    let mut flood = h2_preface();
    // HEADERS without END_HEADERS, then CONTINUATION frames that never
    // end the block: each a few small header fields.
    flood.extend(frame(0x1, 0x1, 1, &request_block()));
    let mut fields = Vec::new();
    for i in 0..8u8 {
        // Literal header field without indexing, new name "x-fN".
        fields.extend([0x00, 4, b'x', b'-', b'f', b'0' + i, 1, b'v']);
    }
    for _ in 0..1000 {
        flood.extend(frame(0x9, 0x0, 1, &fields));
    }
    let _ = attacker.write_all(&flood).await;
    let (frames, closed) = read_until_closed(&mut attacker, Duration::from_secs(10)).await;
    assert!(closed, "the flooding connection is closed");
    assert_eq!(goaway_error(&frames), Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    assert_eq!(
        recorder.count(),
        0,
        "the endless request never reaches the backend"
    );
    assert_eq!(limit_count(&gw, "h2_abuse").await, 1);
    assert_still_serving(&gw).await;
}

// ----- HTTP/2 frames by hand (a flood is what a real client won't send) -----

/// Client connection preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0x0, 0, &[]));
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend((stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK block of `GET http://a.example/`: static-table indices for
/// :method GET (2), :scheme http (6), :path / (4), and :authority
/// (index 1) as a literal without indexing.
fn request_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"a.example");
    block
}

/// The error code of the first GOAWAY frame among `bytes` (frames the
/// server sent), if there is one.
fn goaway_error(bytes: &[u8]) -> Option<u32> {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let kind = rest[3];
        let payload = rest.get(9..9 + len)?;
        if kind == 0x7 && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        rest = &rest[9 + len..];
    }
    None
}

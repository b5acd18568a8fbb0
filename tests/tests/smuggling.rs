//! Request smuggling and malformed HTTP/1.1 framing, over raw sockets.
//!
//! A gateway and the backend behind it must never disagree about where one
//! request ends and the next begins. Every ambiguous framing is refused
//! with 400 and the connection closed, and nothing of it reaches the
//! backend; well-formed requests on the same gateway keep working.

use std::time::Duration;

use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway routing everything to a recording backend.
async fn setup() -> (TestGateway, Recorder) {
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
",
        gateway(PLAIN_LISTENER),
        service_yaml("backend", &[addr], None)
    );
    (TestGateway::start(&yaml, &["HTTP_PORT"]).await, recorder)
}

/// Sends raw bytes and reads until the gateway closes the connection (or
/// 5 s pass): returns everything received and whether it was closed.
async fn exchange(port: u16, raw: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
    stream.write_all(raw).await.expect("write request");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// The request is refused with 400, the connection closed and nothing
/// reached the backend.
async fn assert_refused(raw: &str) {
    let (gw, recorder) = setup().await;
    let (response, closed) = exchange(gw.port("HTTP_PORT"), raw.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "expected 400 for {raw:?}, got {response:?}"
    );
    assert_eq!(
        response.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {response:?}"
    );
    assert!(closed, "the connection must be closed after {raw:?}");
    // Give a smuggled request time to arrive if it was forwarded.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        recorder.count(),
        0,
        "nothing may reach the backend: {:?}",
        recorder.requests.lock().map(|r| r.clone()).ok()
    );
}

#[tokio::test]
async fn a_well_formed_pipelined_pair_is_served_in_order() {
    let (gw, recorder) = setup().await;
    let raw = "POST /one HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello\
               GET /two HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let (response, closed) = exchange(gw.port("HTTP_PORT"), raw.as_bytes()).await;
    assert_eq!(response.matches("HTTP/1.1 200").count(), 2, "{response}");
    assert!(closed);
    let requests = recorder.requests.lock().expect("recorder").clone();
    let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/one", "/two"]);
    assert_eq!(&requests[0].body[..], b"hello");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    // CL.TE: a front end reading Content-Length and a back end reading the
    // chunks would see a second request ("GET /smuggled"). hyper handles
    // the message as RFC 9112 section 6.3 tells an intermediary to: the
    // chunked framing wins, Content-Length is dropped, and the connection
    // is closed after the response, so what follows is never read.
    let (gw, recorder) = setup().await;
    let raw = "POST /legit HTTP/1.1\r\nHost: a.example\r\nContent-Length: 44\r\n\
               Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
               GET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n";
    let (response, closed) = exchange(gw.port("HTTP_PORT"), raw.as_bytes()).await;
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(closed, "the connection must be closed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests = recorder.requests.lock().expect("recorder").clone();
    let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/legit"],
        "the smuggled request must never be forwarded"
    );
    let forwarded = &requests[0];
    assert!(
        forwarded.body.is_empty(),
        "the chunked body (empty) is what was sent"
    );
    assert!(
        forwarded
            .headers
            .get("content-length")
            .is_none_or(|v| v == "0"),
        "the client's Content-Length must not reach the backend: {:?}",
        forwarded.headers
    );
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    assert_refused(
        "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_refused("POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4, 5\r\n\r\nhello").await;
}

#[tokio::test]
async fn a_transfer_encoding_not_ending_in_chunked_is_refused() {
    assert_refused(
        "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_refused(
        "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn obsolete_line_folding_is_refused() {
    assert_refused("GET / HTTP/1.1\r\nHost: a.example\r\nX-Folded: one\r\n two\r\n\r\n").await;
}

#[tokio::test]
async fn invalid_chunk_sizes_are_refused() {
    assert_refused(
        "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    // A chunk size that overflows 64 bits.
    assert_refused(
        "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
         fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn bare_carriage_returns_in_headers_are_refused() {
    assert_refused("GET / HTTP/1.1\r\nHost: a.example\r\nX-A: one\rX-B: two\r\n\r\n").await;
}

#[tokio::test]
async fn whitespace_before_the_header_colon_is_refused() {
    // `Transfer-Encoding : chunked` is read as chunked by some servers and
    // ignored by others.
    assert_refused(
        "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
}

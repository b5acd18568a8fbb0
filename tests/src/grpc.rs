//! A unary gRPC call over h2c, read whole: the status from the headers
//! (trailers-only answers) or the trailers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};

/// One length-prefixed gRPC message: flag 0, length 5, `hello`.
pub const HELLO: &[u8] = b"\x00\x00\x00\x00\x05hello";

/// What came back from a gRPC call answered with HTTP 200.
#[derive(Debug)]
pub struct GrpcAnswer {
    /// `grpc-status` (empty when there was none).
    pub status: String,
    pub headers: HeaderMap,
    /// The response body (length-prefixed messages).
    pub body: Bytes,
}

/// Posts [`HELLO`] to `url` as a gRPC call with extra `headers`; panics
/// unless the answer is HTTP 200, as gRPC answers always are.
pub async fn call(url: &str, headers: &[(&str, &str)]) -> GrpcAnswer {
    let mut req = Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from_static(HELLO)))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), crate::h2c_client().request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(resp.status(), 200, "gRPC answers are HTTP 200");
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.expect("body");
    let status = headers
        .get("grpc-status")
        .or_else(|| collected.trailers().and_then(|t| t.get("grpc-status")))
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    GrpcAnswer {
        status,
        headers,
        body: collected.to_bytes(),
    }
}

//! Backends and clients for the RouteFilter transform and masking tests: a
//! backend answering a fixed response (and recording what it got), a
//! backend echoing the request body with its content type, a gRPC (h2c)
//! backend, and a raw HTTP/1.1 client that shows the bytes on the wire.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::{RecordedRequest, LOOPBACK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Handler = Arc<dyn Fn(&RecordedRequest) -> Response<Full<Bytes>> + Send + Sync>;

/// A backend whose answer `handler` makes from the request; every request
/// is recorded.
#[derive(Clone)]
pub struct Backend {
    pub seen: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl Backend {
    pub async fn start(
        handler: impl Fn(&RecordedRequest) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> (Backend, SocketAddr) {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind((LOOPBACK, 0))
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let backend = Backend {
            seen: Arc::default(),
        };
        let seen = backend.seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, handler) = (seen.clone(), handler.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, handler) = (seen.clone(), handler.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let recorded = RecordedRequest {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            let resp = handler(&recorded);
                            seen.lock().expect("backend lock").push(recorded);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (backend, addr)
    }

    /// Answers every request 200 with these headers and body.
    pub async fn fixed(headers: &[(&str, &str)], body: impl Into<Bytes>) -> (Backend, SocketAddr) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body: Bytes = body.into();
        Backend::start(move |_| {
            let mut resp = Response::new(Full::new(body.clone()));
            for (k, v) in &headers {
                resp.headers_mut().append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    http::HeaderValue::from_str(v).expect("header value"),
                );
            }
            resp
        })
        .await
    }

    /// Answers with the request's body and Content-Type.
    pub async fn echo_body() -> (Backend, SocketAddr) {
        Backend::start(|req| {
            let mut resp = Response::new(Full::new(req.body.clone()));
            if let Some(ct) = req.headers.get("content-type") {
                resp.headers_mut().insert("content-type", ct.clone());
            }
            resp
        })
        .await
    }

    pub fn last(&self) -> RecordedRequest {
        self.seen
            .lock()
            .expect("backend lock")
            .last()
            .cloned()
            .expect("the backend got a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("backend lock").len()
    }
}

/// What the gRPC backend saw of one call.
#[derive(Clone, Debug)]
pub struct GrpcCall {
    pub version: http::Version,
    pub path: String,
    pub headers: HeaderMap,
    /// The request messages (length-prefixed frames decoded).
    pub messages: Vec<Bytes>,
}

/// A gRPC server over h2c (HTTP/2 prior knowledge only, like a real gRPC
/// server): every unary call is answered with one message, `hello, ` +
/// the request message, then trailers `grpc-status: 0`,
/// `grpc-message: ok` — or, for the method `/test.Greeter/Fail`, no
/// message and `grpc-status: 5` (NOT_FOUND).
pub async fn start_grpc() -> (Arc<Mutex<Vec<GrpcCall>>>, SocketAddr) {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.expect("bind grpc");
    let addr = listener.local_addr().expect("grpc address");
    let calls: Arc<Mutex<Vec<GrpcCall>>> = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let messages = grpc_messages(&body);
                        let path = parts.uri.path().to_string();
                        seen.lock().expect("grpc lock").push(GrpcCall {
                            version: parts.version,
                            path: path.clone(),
                            headers: parts.headers,
                            messages: messages.clone(),
                        });
                        let mut trailers = HeaderMap::new();
                        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = Vec::new();
                        if path == "/test.Greeter/Fail" {
                            trailers.insert("grpc-status", "5".parse().expect("value"));
                            trailers
                                .insert("grpc-message", "no such greeting".parse().expect("value"));
                        } else {
                            let mut reply = b"hello, ".to_vec();
                            reply
                                .extend_from_slice(messages.first().map(|m| &m[..]).unwrap_or(b""));
                            frames.push(Ok(Frame::data(grpc_frame(&reply))));
                            trailers.insert("grpc-status", "0".parse().expect("value"));
                            trailers.insert("grpc-message", "ok".parse().expect("value"));
                        }
                        frames.push(Ok(Frame::trailers(trailers)));
                        let mut resp =
                            Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                        resp.headers_mut().insert(
                            "content-type",
                            "application/grpc+proto".parse().expect("value"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (calls, addr)
}

/// A gRPC length-prefixed message: flag 0, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Splits a body into its length-prefixed frames (flag byte included in
/// nothing: payloads only, data and trailer frames alike).
pub fn grpc_frames(mut body: &[u8]) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.advance(5);
        let take = len.min(body.len());
        out.push((flag, Bytes::copy_from_slice(&body[..take])));
        body.advance(take);
    }
    assert!(body.is_empty(), "trailing bytes after the last frame");
    out
}

fn grpc_messages(body: &[u8]) -> Vec<Bytes> {
    grpc_frames(body).into_iter().map(|(_, m)| m).collect()
}

/// A response read off the wire by [`raw_http1`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lowercased names, in order.
    pub headers: Vec<(String, String)>,
    /// The body after chunked decoding.
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the blank line; a
/// `connection: close` is added) and `body` over a plain TCP connection
/// and reads the response to EOF (bounded to 10 s).
pub async fn raw_http1(port: u16, head: &str, body: &[u8]) -> RawResponse {
    let work = async {
        let mut stream = TcpStream::connect((LOOPBACK, port)).await.expect("connect");
        let request = format!(
            "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write head");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("raw request timed out");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .expect("status code")
        .parse()
        .expect("numeric status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

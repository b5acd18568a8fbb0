//! `portcullis echo`: a backend that answers every request with a JSON
//! description of it, in the shape the Gateway API conformance echo server
//! (`echo-basic`) uses, so the quickstart, our tests, benchmarks and the
//! conformance suite read the same thing.
//!
//! Also: gRPC requests are echoed back message for message with trailers,
//! WebSocket upgrades get a frame echo, `?delay=250ms` delays the answer and
//! `X-Echo-Set-Header: name:value` sets response headers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_dataplane::body::{self, Body};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Identity reported in every answer (from the environment, as in a pod).
#[derive(Debug, Clone, Default)]
pub struct EchoIdentity {
    pub namespace: String,
    pub pod: String,
    pub service: String,
}

impl EchoIdentity {
    pub fn from_env() -> EchoIdentity {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        EchoIdentity {
            namespace: var("NAMESPACE"),
            pod: var("POD_NAME"),
            service: var("SERVICE_NAME"),
        }
    }
}

#[derive(Serialize)]
struct EchoAnswer<'a> {
    path: String,
    host: String,
    method: &'a str,
    proto: &'static str,
    headers: BTreeMap<String, Vec<String>>,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, identity: EchoIdentity) -> std::io::Result<()> {
    let identity = Arc::new(identity);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, identity.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "echo backend listening");
    serve(listener, EchoIdentity::from_env()).await?;
    Ok(())
}

async fn answer(
    req: Request<Incoming>,
    identity: Arc<EchoIdentity>,
) -> Result<Response<Body>, Infallible> {
    if let Some(delay) = query_param(req.uri().query(), "delay").and_then(|d| parse_delay(&d)) {
        tokio::time::sleep(delay).await;
    }
    if is_grpc(req.headers()) {
        return Ok(grpc_echo(req).await);
    }
    if is_websocket_upgrade(req.headers()) {
        return Ok(websocket_accept(req));
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let echo = EchoAnswer {
        path,
        host,
        method: req.method().as_str(),
        proto: proto_name(req.version()),
        headers,
        namespace: &identity.namespace,
        ingress: "",
        service: &identity.service,
        pod: &identity.pod,
    };
    let json = serde_json::to_vec(&echo).unwrap_or_default();
    let mut resp = Response::new(body::full(json));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    for spec in req
        .headers()
        .get_all("x-echo-set-header")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for pair in spec.split(',') {
            if let Some((name, value)) = pair.split_once(':') {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.trim().as_bytes()),
                    HeaderValue::from_str(value.trim()),
                ) {
                    resp.headers_mut().append(n, v);
                }
            }
        }
    }
    if let Some(code) = query_param(req.uri().query(), "status").and_then(|s| s.parse::<u16>().ok())
    {
        if let Ok(code) = StatusCode::from_u16(code) {
            *resp.status_mut() = code;
        }
    }
    Ok(resp)
}

fn proto_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// `x-forwarded-for` -> `X-Forwarded-For`, as Go's net/http reports names.
fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// `250ms`, `2s`, or plain milliseconds; capped at 60 s.
fn parse_delay(s: &str) -> Option<Duration> {
    let d = if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().ok()?)
    } else if let Some(secs) = s.strip_suffix('s') {
        Duration::from_secs_f64(secs.parse().ok()?)
    } else {
        Duration::from_millis(s.parse().ok()?)
    };
    Some(d.min(Duration::from_secs(60)))
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
}

/// Echoes the request body (length-prefixed gRPC messages, passed through
/// as they are) and ends with `grpc-status: 0` trailers. The request's
/// `:path` comes back in the `x-echo-grpc-method` header.
async fn grpc_echo(req: Request<Incoming>) -> Response<Body> {
    let method = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("OK"));
    let frames = futures_stream(vec![Frame::data(body), Frame::trailers(trailers)]);
    let mut resp = Response::new(frames);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Ok(v) = HeaderValue::from_str(&method) {
        resp.headers_mut().insert("x-echo-grpc-method", v);
    }
    resp
}

fn futures_stream(frames: Vec<Frame<Bytes>>) -> Body {
    let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, Infallible>));
    body::boxed(http_body_util::StreamBody::new(stream))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

fn websocket_accept(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut resp = Response::new(body::full("missing Sec-WebSocket-Key\n"));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let _ = websocket_echo(TokioIo::new(upgraded)).await;
        }
    });
    let mut resp = Response::new(body::boxed(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&crate::websocket::accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

/// Reads client frames (masked, RFC 6455) and sends each payload back in an
/// unmasked frame of the same opcode; answers close with close.
async fn websocket_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
) -> std::io::Result<()> {
    loop {
        let Some(frame) = crate::websocket::read_frame(&mut io).await? else {
            return Ok(());
        };
        let out = crate::websocket::encode_frame(frame.opcode, &frame.payload, None);
        io.write_all(&out).await?;
        if frame.opcode == crate::websocket::OPCODE_CLOSE {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_canonicalized_like_go() {
        assert_eq!(canonical_header_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_header_name("host"), "Host");
    }

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delay("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_delay("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_delay("10"), Some(Duration::from_millis(10)));
        assert_eq!(parse_delay("1h"), None);
    }
}

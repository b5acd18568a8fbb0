//! The admin listener (a separate port, never the data path): health,
//! readiness, Prometheus metrics, the compiled table being served and the
//! computed statuses; and one action: purging RouteFilter response caches
//! (`POST /cache/purge?prefix=...`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_controller::StatusUpdate;
use portcullis_dataplane::body::{self, Body};
use portcullis_dataplane::state::Shared;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub statuses: watch::Receiver<Arc<Vec<StatusUpdate>>>,
    /// True once the first complete table is being served.
    pub ready: watch::Receiver<bool>,
}

pub async fn serve(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, state.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn answer(req: Request<Incoming>, state: AdminState) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/cache/purge" {
        return Ok(purge(&req, &state));
    }
    if req.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if *state.ready.borrow() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => metrics(),
        "/config_dump" => json(&*state.shared.current().table),
        "/status" => json(&*state.statuses.borrow().clone()),
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /healthz /readyz /metrics /config_dump /status, POST /cache/purge?prefix=\n",
        ),
    })
}

/// `POST /cache/purge?prefix=P`: removes the RouteFilter cache entries
/// whose key starts with P (form-encoded: `+` or `%20` for the space
/// after the filter name). Keys read `<namespace>/<filter> <host><path>?<query>`;
/// `prefix=` (empty) empties every cache.
fn purge(req: &Request<Incoming>, state: &AdminState) -> Response<Body> {
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /cache/purge?prefix=...\n",
        );
    }
    let prefix = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(name, _)| *name == "prefix")
            .map(|(_, value)| form_decode(value))
    });
    let Some(Some(prefix)) = prefix else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing or malformed prefix: POST /cache/purge?prefix=<namespace>/<filter>+<host><path>\n",
        );
    };
    let purged = state.shared.route_filters.cache.purge(&prefix);
    tracing::info!(prefix, purged, "cache purge");
    json(&serde_json::json!({ "prefix": prefix, "purged": purged }))
}

/// `application/x-www-form-urlencoded` value decoding; `None` when the
/// escapes are invalid or the result is not UTF-8.
fn form_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Prometheus / OpenMetrics text: the data plane's and the controller's
/// registries.
fn metrics() -> Response<Body> {
    let registries = [
        portcullis_dataplane::metrics::global().registry(),
        portcullis_controller::metrics::global().registry(),
    ];
    match portcullis_dataplane::metrics::encode(&registries) {
        Ok(text) => {
            let mut resp = Response::new(body::full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
        }
    }
}

fn text(status: StatusCode, body_text: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(body_text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => {
            let mut resp = Response::new(body::full(bytes));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize admin answer");
            text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n")
        }
    }
}

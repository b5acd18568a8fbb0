//! Spans of the gateway's hop, exported over OTLP/HTTP with the JSON
//! encoding (`POST {endpoint}/v1/traces`) to an OpenTelemetry collector.
//!
//! Built on the hyper client and serde_json the data plane already has, so
//! tracing costs no OpenTelemetry SDK. Like the access log, requests hand
//! their span to a bounded channel (`try_send`, never waiting); one task
//! batches and posts them. Spans that cannot be queued or delivered are
//! counted in `portcullis_trace_spans_dropped_total`.
//!
//! Only sampled traces are exported (the `sampled` flag of `traceparent`;
//! traces the gateway starts are sampled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::access_log::hex;
use crate::metrics;

/// Spans per POST.
const BATCH: usize = 512;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Base URL of the collector's OTLP/HTTP receiver, e.g.
    /// `http://otel-collector:4318` (`/v1/traces` is appended).
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Spans waiting for the exporter; beyond this they are dropped.
    pub buffer: usize,
}

/// The server span of one request.
#[derive(Debug)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub start: SystemTime,
    pub duration: Duration,
    pub method: Method,
    pub uri: Uri,
    pub status: StatusCode,
    pub port: u16,
    pub client: SocketAddr,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
}

#[derive(Clone)]
pub struct SpanExporter {
    tx: mpsc::Sender<SpanRecord>,
}

impl SpanExporter {
    /// Starts the exporter task (on the current runtime).
    pub fn spawn(config: OtlpConfig) -> Result<SpanExporter, String> {
        let base = config.endpoint.trim_end_matches('/');
        let url: Uri = format!("{base}/v1/traces")
            .parse()
            .map_err(|e| format!("invalid OTLP endpoint {:?}: {e}", config.endpoint))?;
        if url.scheme_str() != Some("http") {
            return Err(format!(
                "OTLP endpoint {:?}: only http:// is supported (export to a collector or agent next to the gateway)",
                config.endpoint
            ));
        }
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        tokio::spawn(export_loop(rx, url, config.service_name));
        Ok(SpanExporter { tx })
    }

    /// Queues a span; never waits.
    pub fn submit(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            metrics::global().record_spans_dropped(1);
        }
    }
}

async fn export_loop(mut rx: mpsc::Receiver<SpanRecord>, url: Uri, service_name: String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_warning: Option<std::time::Instant> = None;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let count = batch.len() as u64;
        let body = export_request(&service_name, &batch);
        batch.clear();
        let result = match serde_json::to_vec(&body) {
            Ok(bytes) => post(&client, &url, bytes).await,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => metrics::global().record_spans_exported(count),
            Err(e) => {
                metrics::global().record_spans_dropped(count);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(endpoint = %url, error = %e, "cannot export spans");
                    last_warning = Some(std::time::Instant::now());
                }
            }
        }
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &Uri,
    body: Vec<u8>,
) -> Result<(), String> {
    let req = Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(EXPORT_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    // Drain so the connection is reused.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

/// An `ExportTraceServiceRequest` in the OTLP JSON encoding (ids as hex,
/// 64-bit integers as strings).
pub fn export_request(service_name: &str, spans: &[SpanRecord]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [string_attr("service.name", service_name)]},
            "scopeSpans": [{
                "scope": {"name": "portcullis", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
            }],
        }],
    })
}

fn span_json(s: &SpanRecord) -> Value {
    let start = s
        .start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let end = start + s.duration.as_nanos();
    // Span names must have low cardinality: the route, not the path.
    let name = match &s.route {
        Some(route) => format!("{} {route}", s.method),
        None => s.method.to_string(),
    };
    let mut attributes = vec![
        string_attr("http.request.method", s.method.as_str()),
        string_attr("url.path", s.uri.path()),
        int_attr("http.response.status_code", i64::from(s.status.as_u16())),
        int_attr("server.port", i64::from(s.port)),
        string_attr("client.address", &s.client.ip().to_string()),
    ];
    if let Some(route) = &s.route {
        attributes.push(string_attr("http.route", route));
    }
    if let Some(backend) = &s.backend {
        attributes.push(string_attr("portcullis.backend", backend));
    }
    if let Some(upstream) = &s.upstream {
        attributes.push(string_attr("server.address", &upstream.to_string()));
    }
    let mut span = json!({
        "traceId": hex(&s.trace_id),
        "spanId": hex(&s.span_id),
        "name": name,
        "kind": 2, // SERVER
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attributes,
        // ERROR for 5xx (the server's fault), UNSET otherwise.
        "status": {"code": if s.status.is_server_error() { 2 } else { 0 }},
    });
    if let Some(parent) = s.parent_id {
        span["parentSpanId"] = Value::String(hex(&parent));
    }
    span
}

fn string_attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int_attr(key: &str, value: i64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_the_otlp_json_encoding() {
        let span = SpanRecord {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_id: Some([0x02; 8]),
            start: UNIX_EPOCH + Duration::from_secs(2),
            duration: Duration::from_millis(5),
            method: Method::GET,
            uri: Uri::from_static("/orders/1?x=y"),
            status: StatusCode::BAD_GATEWAY,
            port: 8080,
            client: "127.0.0.1:4000".parse().unwrap(),
            route: Some(Arc::from("httproute/ns/r/rule/0")),
            backend: None,
            upstream: None,
        };
        let v = export_request("edge", &[span]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "ab".repeat(16));
        assert_eq!(s["parentSpanId"], "02".repeat(8));
        assert_eq!(s["startTimeUnixNano"], "2000000000");
        assert_eq!(s["endTimeUnixNano"], "2005000000");
        assert_eq!(s["name"], "GET httproute/ns/r/rule/0");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "edge"
        );
        let attrs = s["attributes"].as_array().unwrap();
        assert!(attrs
            .iter()
            .any(|a| a["key"] == "url.path" && a["value"]["stringValue"] == "/orders/1"));
        assert!(attrs
            .iter()
            .any(|a| a["key"] == "http.response.status_code" && a["value"]["intValue"] == "502"));
    }

    #[test]
    fn only_http_endpoints_are_accepted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = |endpoint: &str| OtlpConfig {
                endpoint: endpoint.to_string(),
                service_name: "x".into(),
                buffer: 1,
            };
            assert!(SpanExporter::spawn(config("https://collector:4318")).is_err());
            assert!(SpanExporter::spawn(config("not a url")).is_err());
            assert!(SpanExporter::spawn(config("http://127.0.0.1:4318/")).is_ok());
        });
    }
}

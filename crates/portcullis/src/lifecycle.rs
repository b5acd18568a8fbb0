//! Serving options shared by `run` and `proxy`: the access log and the
//! graceful shutdown sequence.

use std::time::Duration;

use clap::Args;
use portcullis_dataplane::access_log::{AccessLog, AccessLogConfig, Destination, Field};
use portcullis_dataplane::limits::{Limits, MIN_HTTP1_HEADER_BYTES};
use portcullis_dataplane::otlp::{OtlpConfig, SpanExporter};
use portcullis_dataplane::server::Drained;
use portcullis_dataplane::DataPlane;
use tokio::sync::watch;

#[derive(Args, Debug, Clone)]
pub struct ServeOptions {
    /// Access log destination: `stdout`, `stderr`, a file path, or `off`.
    #[arg(long, env = "PORTCULLIS_ACCESS_LOG", default_value = "stdout")]
    pub access_log: String,
    /// Access log fields, comma-separated, in output order (default: all
    /// but `query`). Known: timestamp, request_id, trace_id, span_id,
    /// client, port, protocol, method, host, path, query, user_agent,
    /// status, bytes, duration_ms, upstream, upstream_ms, route, backend,
    /// identity, auth_mechanism, rate_limit.
    #[arg(long, env = "PORTCULLIS_ACCESS_LOG_FIELDS", value_delimiter = ',')]
    pub access_log_fields: Option<Vec<Field>>,
    /// Share of requests logged (0.0 - 1.0); 5xx answers are always logged.
    #[arg(long, env = "PORTCULLIS_ACCESS_LOG_SAMPLE_RATE", default_value_t = 1.0)]
    pub access_log_sample_rate: f64,
    /// OpenTelemetry collector (OTLP/HTTP, JSON) to export a span per
    /// request to, e.g. `http://otel-collector:4318`. Unset: trace context
    /// is only propagated and logged.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "portcullis")]
    pub otlp_service_name: String,
    /// On SIGTERM/SIGINT, how long /readyz reports not ready while the
    /// listeners still accept, so that load balancers and Endpoints stop
    /// sending new connections first (e.g. `5s`; default 0s for `run`, 5s
    /// for `proxy`).
    #[arg(long, value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// How long in-flight requests may take to finish after the listeners
    /// close; connections still open then are closed.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub drain_timeout: Duration,
    #[command(flatten)]
    pub limits: LimitOptions,
}

/// Request and connection limits (README "Limits"). In Kubernetes they come
/// from GatewayParameters `spec.limits`, rendered into these flags.
#[derive(Args, Debug, Clone)]
pub struct LimitOptions {
    /// Request line plus headers, in bytes (HTTP/1 at least 8192); over it: 431.
    #[arg(long, default_value_t = Limits::default().max_request_header_bytes)]
    pub max_request_header_bytes: usize,
    /// Header fields per request; over it: 431.
    #[arg(long, default_value_t = Limits::default().max_request_headers)]
    pub max_request_headers: usize,
    /// Request target (path and query), in bytes; over it: 414.
    #[arg(long, default_value_t = Limits::default().max_uri_bytes)]
    pub max_uri_bytes: usize,
    /// Request body, in bytes (0: unlimited); over it: 413. A
    /// BackendPolicy's maxRequestBodyBytes wins per Service or route.
    #[arg(long, default_value_t = Limits::default().max_request_body_bytes.unwrap_or(0))]
    pub max_request_body_bytes: u64,
    /// HTTP/1 request heads must arrive within this long (slowloris).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub request_header_timeout: Duration,
    /// Connections with no request in flight are closed after this long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// TLS streams (TLSRoute) with no bytes either way are closed after
    /// this long.
    #[arg(long, value_parser = parse_duration, default_value = "60m")]
    pub stream_idle_timeout: Duration,
    /// Open connections per listener (0: unlimited); over it new
    /// connections are closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections_per_listener.unwrap_or(0))]
    pub max_connections: usize,
    /// Requests per connection, then `Connection: close` / GOAWAY (0:
    /// unlimited).
    #[arg(long, default_value_t = 0)]
    pub max_requests_per_connection: u64,
    /// HTTP/2 concurrent streams per connection.
    #[arg(long, default_value_t = Limits::default().h2_max_concurrent_streams)]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 streams the client resets before they are served, before
    /// GOAWAY (rapid reset, CVE-2023-44487).
    #[arg(long, default_value_t = Limits::default().h2_max_pending_accept_reset_streams)]
    pub http2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams reset for client protocol errors, before GOAWAY.
    #[arg(long, default_value_t = Limits::default().h2_max_local_error_reset_streams)]
    pub http2_max_local_error_reset_streams: usize,
}

impl LimitOptions {
    pub fn limits(&self) -> anyhow::Result<Limits> {
        if self.max_request_header_bytes < MIN_HTTP1_HEADER_BYTES {
            anyhow::bail!(
                "--max-request-header-bytes must be at least {MIN_HTTP1_HEADER_BYTES}, got {}",
                self.max_request_header_bytes
            );
        }
        if self.request_header_timeout.is_zero()
            || self.idle_timeout.is_zero()
            || self.stream_idle_timeout.is_zero()
        {
            anyhow::bail!(
                "--request-header-timeout, --idle-timeout and --stream-idle-timeout must be above zero"
            );
        }
        if self.http2_max_concurrent_streams == 0 {
            anyhow::bail!("--http2-max-concurrent-streams must be at least 1");
        }
        let nonzero = |v: u64| (v > 0).then_some(v);
        Ok(Limits {
            max_request_header_bytes: self.max_request_header_bytes,
            max_request_headers: self.max_request_headers,
            max_uri_bytes: self.max_uri_bytes,
            max_request_body_bytes: nonzero(self.max_request_body_bytes),
            request_header_timeout: self.request_header_timeout,
            idle_timeout: self.idle_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            max_connections_per_listener: (self.max_connections > 0)
                .then_some(self.max_connections),
            max_requests_per_connection: nonzero(self.max_requests_per_connection),
            h2_max_concurrent_streams: self.http2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams: self.http2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams: self.http2_max_local_error_reset_streams,
        })
    }
}

impl ServeOptions {
    /// Starts the access log writer (on the current runtime).
    pub fn access_log(&self) -> anyhow::Result<Option<AccessLog>> {
        if self.access_log == "off" {
            return Ok(None);
        }
        if !(0.0..=1.0).contains(&self.access_log_sample_rate) {
            anyhow::bail!(
                "--access-log-sample-rate must be between 0 and 1, got {}",
                self.access_log_sample_rate
            );
        }
        let destination: Destination = self.access_log.parse().map_err(anyhow::Error::msg)?;
        let config = AccessLogConfig {
            destination,
            fields: self
                .access_log_fields
                .clone()
                .unwrap_or_else(Field::defaults),
            sample_rate: self.access_log_sample_rate,
            ..AccessLogConfig::default()
        };
        let log = AccessLog::spawn(config)
            .map_err(|e| anyhow::anyhow!("cannot open access log {}: {e}", self.access_log))?;
        Ok(Some(log))
    }
}

impl ServeOptions {
    /// Starts the span exporter when an endpoint is configured.
    pub fn spans(&self) -> anyhow::Result<Option<SpanExporter>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        SpanExporter::spawn(OtlpConfig {
            endpoint: endpoint.clone(),
            service_name: self.otlp_service_name.clone(),
            buffer: 8192,
        })
        .map(Some)
        .map_err(anyhow::Error::msg)
    }
}

/// `500ms`, `5s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "expected a duration such as 500ms, 5s or 2m, got {text:?}"
        )),
    }
}

/// How to stop.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    pub delay: Duration,
    pub drain: Duration,
}

/// The graceful shutdown sequence: readiness false first, keep serving for
/// `delay` (endpoints and load balancers catch up), then stop accepting and
/// drain in-flight requests for up to `drain`.
pub async fn shut_down(
    ready: &watch::Sender<bool>,
    dataplane: DataPlane,
    how: Shutdown,
) -> Drained {
    let _ = ready.send(false);
    tracing::info!(
        delay = ?how.delay,
        drain = ?how.drain,
        "shutting down: not ready; draining"
    );
    if !how.delay.is_zero() {
        tokio::time::sleep(how.delay).await;
    }
    let drained = dataplane.shutdown(how.drain).await;
    if drained.in_time {
        tracing::info!("drained: every in-flight request finished");
    } else {
        tracing::warn!("drain deadline passed: some connections were closed");
    }
    // Give the access log writer a moment to write what the last requests
    // queued.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

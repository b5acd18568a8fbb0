//! The access log: one JSON object per line per request, written by a
//! dedicated task so that requests never wait for I/O.
//!
//! Requests hand their [`Entry`] to a bounded channel with `try_send`; when
//! the writer falls behind, entries are dropped and counted in
//! `portcullis_access_log_dropped_total` — a slow disk or a blocked stdout
//! never slows down or blocks traffic.
//!
//! Which fields are written is configurable ([`Field`]); sampling keeps a
//! share of successful requests while errors (status >= 500) are always
//! logged.
//!
//! TLS streams (TLSRoute, [`crate::tls_route`]) get one line each when they
//! end ([`StreamEntry`]), with the configured fields that make sense for a
//! stream: `host` becomes `sni`, `status` becomes `outcome`, `bytes` is
//! what the client received and `bytes_received` what it sent. Streams that
//! ended normally (`closed`) are sampled like successful requests; every
//! other outcome is always logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, StatusCode, Uri, Version};
use serde::ser::{SerializeMap, Serializer};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::identity::Identity;
use crate::metrics::{self, RateLimitDecision};

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => Destination::Stdout,
            "stderr" => Destination::Stderr,
            "" => return Err("empty access log destination".into()),
            path => Destination::File(PathBuf::from(path)),
        })
    }
}

/// Every field an entry can carry, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Timestamp,
    RequestId,
    TraceId,
    SpanId,
    Client,
    Port,
    Protocol,
    Method,
    Host,
    Path,
    Query,
    UserAgent,
    Status,
    Bytes,
    DurationMs,
    Upstream,
    UpstreamMs,
    Route,
    Backend,
    Identity,
    AuthMechanism,
    RateLimit,
}

impl Field {
    pub const ALL: [Field; 22] = [
        Field::Timestamp,
        Field::RequestId,
        Field::TraceId,
        Field::SpanId,
        Field::Client,
        Field::Port,
        Field::Protocol,
        Field::Method,
        Field::Host,
        Field::Path,
        Field::Query,
        Field::UserAgent,
        Field::Status,
        Field::Bytes,
        Field::DurationMs,
        Field::Upstream,
        Field::UpstreamMs,
        Field::Route,
        Field::Backend,
        Field::Identity,
        Field::AuthMechanism,
        Field::RateLimit,
    ];

    /// The JSON key, also the name used on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Field::Timestamp => "timestamp",
            Field::RequestId => "request_id",
            Field::TraceId => "trace_id",
            Field::SpanId => "span_id",
            Field::Client => "client",
            Field::Port => "port",
            Field::Protocol => "protocol",
            Field::Method => "method",
            Field::Host => "host",
            Field::Path => "path",
            Field::Query => "query",
            Field::UserAgent => "user_agent",
            Field::Status => "status",
            Field::Bytes => "bytes",
            Field::DurationMs => "duration_ms",
            Field::Upstream => "upstream",
            Field::UpstreamMs => "upstream_ms",
            Field::Route => "route",
            Field::Backend => "backend",
            Field::Identity => "identity",
            Field::AuthMechanism => "auth_mechanism",
            Field::RateLimit => "rate_limit",
        }
    }

    /// Fields written unless configured otherwise: all but the query
    /// string, which often carries secrets (tokens, signatures).
    pub fn defaults() -> Vec<Field> {
        Field::ALL
            .into_iter()
            .filter(|f| *f != Field::Query)
            .collect()
    }
}

impl FromStr for Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Field::ALL
            .into_iter()
            .find(|f| f.key() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Field::ALL.iter().map(|f| f.key()).collect();
                format!(
                    "unknown access log field {s:?} (known: {})",
                    known.join(", ")
                )
            })
    }
}

#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub destination: Destination,
    /// Written in this order.
    pub fields: Vec<Field>,
    /// Share of requests with status < 500 that are logged (0.0 ..= 1.0);
    /// 5xx answers are always logged.
    pub sample_rate: f64,
    /// Entries waiting for the writer; beyond this they are dropped.
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            destination: Destination::Stdout,
            fields: Field::defaults(),
            sample_rate: 1.0,
            buffer: 8192,
        }
    }
}

/// One request, as captured by [`crate::observe`]. Header values and the
/// URI are cheap reference-counted clones of the request's own bytes.
#[derive(Debug)]
pub struct Entry {
    pub start: SystemTime,
    pub request_id: Option<HeaderValue>,
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
    pub client: SocketAddr,
    pub port: u16,
    pub version: Version,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub user_agent: Option<HeaderValue>,
    pub status: StatusCode,
    pub bytes: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub identity: Option<Identity>,
    pub rate_limit: Option<RateLimitDecision>,
}

/// One TLS stream (TLSRoute), written when it ends.
#[derive(Debug)]
pub struct StreamEntry {
    /// When the connection was accepted.
    pub start: SystemTime,
    pub client: SocketAddr,
    pub port: u16,
    /// `None`: the ClientHello carried no SNI.
    pub sni: Option<String>,
    /// `passthrough` or `terminate`, once a route was found.
    pub mode: Option<&'static str>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    /// Bytes the client sent (Passthrough: TLS records; Terminate: the
    /// plaintext).
    pub bytes_received: u64,
    /// Bytes the client was sent (same rule).
    pub bytes_sent: u64,
    pub duration: Duration,
    /// How it ended: `closed`, `idle-timeout`, `no-route`, ...
    pub outcome: &'static str,
}

/// What the writer task receives. Requests come boxed already (see
/// [`crate::observe`]), which keeps the queue's slots small.
#[derive(Debug)]
enum Line {
    Request(Box<Entry>),
    Stream(StreamEntry),
}

/// The sending side, shared by every connection of a data plane.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Line>,
    sample_rate: f64,
}

impl AccessLog {
    /// Starts the writer task (on the current runtime).
    pub fn spawn(config: AccessLogConfig) -> std::io::Result<AccessLog> {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let out: Box<dyn AsyncWrite + Send + Unpin> = match &config.destination {
            Destination::Stdout => Box::new(tokio::io::stdout()),
            Destination::Stderr => Box::new(tokio::io::stderr()),
            Destination::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Box::new(tokio::fs::File::from_std(file))
            }
        };
        tokio::spawn(write_entries(rx, out, config.fields));
        Ok(AccessLog {
            tx,
            sample_rate: config.sample_rate.clamp(0.0, 1.0),
        })
    }

    /// Whether a request with this status is logged (sampling).
    pub fn wants(&self, status: StatusCode) -> bool {
        status.is_server_error() || self.sampled()
    }

    /// Whether a stream with this outcome is logged: every outcome but a
    /// normal close is, and normal closes are sampled like requests.
    pub fn wants_stream(&self, outcome: &str) -> bool {
        outcome != "closed" || self.sampled()
    }

    fn sampled(&self) -> bool {
        self.sample_rate >= 1.0
            || (self.sample_rate > 0.0 && rand::random::<f64>() < self.sample_rate)
    }

    /// Queues an entry; never waits. A full queue drops the entry and
    /// counts it.
    pub fn submit(&self, entry: Box<Entry>) {
        self.queue(Line::Request(entry));
    }

    /// Queues a stream's entry, like [`AccessLog::submit`].
    pub fn submit_stream(&self, entry: StreamEntry) {
        self.queue(Line::Stream(entry));
    }

    fn queue(&self, line: Line) {
        if self.tx.try_send(line).is_err() {
            metrics::global().record_access_log_dropped();
        }
    }
}

async fn write_entries(
    mut rx: mpsc::Receiver<Line>,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
    fields: Vec<Field>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(256);
    // Writes whatever has queued up in one go: one syscall per batch, not
    // per line.
    while rx.recv_many(&mut batch, 256).await > 0 {
        for line in batch.drain(..) {
            // A line that fails to serialize leaves a partial object:
            // cut it off so the next line starts clean.
            let len = buf.len();
            let written = match &line {
                Line::Request(entry) => write_line(&mut buf, entry, &fields),
                Line::Stream(entry) => write_stream_line(&mut buf, entry, &fields),
            };
            if written.is_err() {
                buf.truncate(len);
            }
        }
        if let Err(e) = out.write_all(&buf).await {
            tracing::warn!(error = %e, "cannot write access log");
        }
        let _ = out.flush().await;
        buf.clear();
    }
}

/// Appends one JSON line.
pub fn write_line(buf: &mut Vec<u8>, entry: &Entry, fields: &[Field]) -> serde_json::Result<()> {
    let mut ser = serde_json::Serializer::new(&mut *buf);
    let mut map = ser.serialize_map(None)?;
    for field in fields {
        let key = field.key();
        match field {
            Field::Timestamp => map.serialize_entry(key, &rfc3339(entry.start))?,
            Field::RequestId => {
                map.serialize_entry(key, &entry.request_id.as_ref().and_then(header_str))?
            }
            Field::TraceId => map.serialize_entry(key, &entry.trace_id.map(|t| hex(&t)))?,
            Field::SpanId => map.serialize_entry(key, &entry.span_id.map(|s| hex(&s)))?,
            Field::Client => map.serialize_entry(key, &entry.client.to_string())?,
            Field::Port => map.serialize_entry(key, &entry.port)?,
            Field::Protocol => map.serialize_entry(key, &format!("{:?}", entry.version))?,
            Field::Method => map.serialize_entry(key, entry.method.as_str())?,
            Field::Host => {
                let host = entry
                    .host
                    .as_ref()
                    .and_then(header_str)
                    .or_else(|| entry.uri.authority().map(|a| a.as_str()));
                map.serialize_entry(key, &host)?
            }
            Field::Path => map.serialize_entry(key, entry.uri.path())?,
            Field::Query => map.serialize_entry(key, &entry.uri.query())?,
            Field::UserAgent => {
                map.serialize_entry(key, &entry.user_agent.as_ref().and_then(header_str))?
            }
            Field::Status => map.serialize_entry(key, &entry.status.as_u16())?,
            Field::Bytes => map.serialize_entry(key, &entry.bytes)?,
            Field::DurationMs => map.serialize_entry(key, &millis(entry.duration))?,
            Field::Upstream => map.serialize_entry(key, &entry.upstream.map(|a| a.to_string()))?,
            Field::UpstreamMs => map.serialize_entry(key, &entry.upstream_time.map(millis))?,
            Field::Route => map.serialize_entry(key, &entry.route.as_deref())?,
            Field::Backend => map.serialize_entry(key, &entry.backend.as_deref())?,
            Field::Identity => map.serialize_entry(
                key,
                &entry.identity.as_ref().and_then(|i| i.subject.as_deref()),
            )?,
            Field::AuthMechanism => {
                map.serialize_entry(key, &entry.identity.as_ref().and_then(|i| i.mechanism))?
            }
            Field::RateLimit => {
                map.serialize_entry(key, &entry.rate_limit.map(|d| format!("{d:?}")))?
            }
        }
    }
    SerializeMap::end(map)?;
    buf.push(b'\n');
    Ok(())
}

/// Appends one JSON line for a stream: the configured fields that apply
/// to streams, in the configured order (see the module doc).
pub fn write_stream_line(
    buf: &mut Vec<u8>,
    entry: &StreamEntry,
    fields: &[Field],
) -> serde_json::Result<()> {
    let mut ser = serde_json::Serializer::new(&mut *buf);
    let mut map = ser.serialize_map(None)?;
    for field in fields {
        let key = field.key();
        match field {
            Field::Timestamp => map.serialize_entry(key, &rfc3339(entry.start))?,
            Field::Client => map.serialize_entry(key, &entry.client.to_string())?,
            Field::Port => map.serialize_entry(key, &entry.port)?,
            Field::Protocol => {
                map.serialize_entry(key, "TLS")?;
                map.serialize_entry("tls_mode", &entry.mode)?;
            }
            Field::Host => map.serialize_entry("sni", &entry.sni)?,
            Field::Status => map.serialize_entry("outcome", entry.outcome)?,
            Field::Bytes => {
                map.serialize_entry(key, &entry.bytes_sent)?;
                map.serialize_entry("bytes_received", &entry.bytes_received)?;
            }
            Field::DurationMs => map.serialize_entry(key, &millis(entry.duration))?,
            Field::Upstream => map.serialize_entry(key, &entry.upstream.map(|a| a.to_string()))?,
            Field::Route => map.serialize_entry(key, &entry.route.as_deref())?,
            Field::Backend => map.serialize_entry(key, &entry.backend.as_deref())?,
            // Request-only.
            Field::RequestId
            | Field::TraceId
            | Field::SpanId
            | Field::Method
            | Field::Path
            | Field::Query
            | Field::UserAgent
            | Field::UpstreamMs
            | Field::Identity
            | Field::AuthMechanism
            | Field::RateLimit => {}
        }
    }
    SerializeMap::end(map)?;
    buf.push(b'\n');
    Ok(())
}

fn header_str(v: &HeaderValue) -> Option<&str> {
    v.to_str().ok()
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// `2026-11-22T14:56:16.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_795_359_376_123),
            request_id: Some(HeaderValue::from_static("abc")),
            trace_id: Some([0xab; 16]),
            span_id: Some([1; 8]),
            client: "127.0.0.1:5555".parse().unwrap(),
            port: 8080,
            version: Version::HTTP_11,
            method: Method::GET,
            host: Some(HeaderValue::from_static("example.com")),
            uri: Uri::from_static("/a/b?token=secret"),
            user_agent: None,
            status: StatusCode::OK,
            bytes: 12,
            duration: Duration::from_micros(1500),
            upstream: Some("10.0.0.1:80".parse().unwrap()),
            upstream_time: Some(Duration::from_millis(1)),
            route: Some(Arc::from("httproute/ns/r/rule/0")),
            backend: None,
            identity: Some(Identity {
                mechanism: Some("jwt"),
                subject: Some("alice".into()),
                ..Identity::default()
            }),
            rate_limit: Some(RateLimitDecision::allowed),
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_the_configured_fields_in_order() {
        let mut buf = Vec::new();
        write_line(&mut buf, &entry(), &Field::defaults()).unwrap();
        assert_eq!(buf.last(), Some(&b'\n'));
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["timestamp"], "2026-11-22T14:56:16.123Z");
        assert_eq!(v["path"], "/a/b");
        assert!(v.get("query").is_none(), "query is off by default: {v}");
        assert_eq!(v["identity"], "alice");
        assert_eq!(v["auth_mechanism"], "jwt");
        assert_eq!(v["rate_limit"], "allowed");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["trace_id"], "ab".repeat(16));

        let mut buf = Vec::new();
        write_line(&mut buf, &entry(), &[Field::Status, Field::Query]).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "{\"status\":200,\"query\":\"token=secret\"}\n"
        );
    }

    #[test]
    fn a_stream_line_maps_host_to_sni_and_status_to_outcome() {
        let stream = StreamEntry {
            start: UNIX_EPOCH + Duration::from_millis(1_795_359_376_123),
            client: "127.0.0.1:5555".parse().unwrap(),
            port: 8443,
            sni: Some("a.example.com".into()),
            mode: Some("passthrough"),
            route: Some(Arc::from("tlsroute/ns/r/rule/0")),
            backend: Some(Arc::from("ns/svc:443")),
            upstream: Some("10.0.0.1:443".parse().unwrap()),
            bytes_received: 517,
            bytes_sent: 4096,
            duration: Duration::from_millis(20),
            outcome: "idle-timeout",
        };
        let mut buf = Vec::new();
        write_stream_line(&mut buf, &stream, &Field::defaults()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["sni"], "a.example.com");
        assert_eq!(v["outcome"], "idle-timeout");
        assert_eq!(v["protocol"], "TLS");
        assert_eq!(v["tls_mode"], "passthrough");
        assert_eq!(v["bytes"], 4096);
        assert_eq!(v["bytes_received"], 517);
        assert_eq!(v["route"], "tlsroute/ns/r/rule/0");
        assert!(v.get("method").is_none(), "request-only fields: {v}");

        let mut buf = Vec::new();
        write_stream_line(&mut buf, &stream, &[Field::Status, Field::Client]).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "{\"outcome\":\"idle-timeout\",\"client\":\"127.0.0.1:5555\"}\n"
        );
    }

    #[test]
    fn field_names_parse_and_unknown_ones_are_refused() {
        assert_eq!("duration_ms".parse::<Field>(), Ok(Field::DurationMs));
        assert!("durration".parse::<Field>().unwrap_err().contains("known"));
    }

    #[test]
    fn dates_convert_across_leap_years() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}

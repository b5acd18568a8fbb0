//! The outermost layer of every request: request id and W3C trace context
//! on the way in; metrics and the access log on the way out.
//!
//! [`handle`] wraps [`proxy::handle`]. What only the proxy knows (the rule
//! that matched, the backend and endpoint it chose, why an upstream attempt
//! failed, who the caller is) it reports through the small functions below
//! ([`route_matched`], [`backend_chosen`], [`upstream_attempt`], [`upstream_failed`],
//! [`identity`], [`rate_limit`]). They write into a task-local record of the
//! current request and do nothing outside of [`handle`], so the proxy can
//! call them unconditionally.
//!
//! Metrics and the access log are recorded when the response body ends (or
//! is dropped, when the client goes away): durations cover the whole
//! response, and `bytes` what was actually sent.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use portcullis_model::{Backend, Rule};

use crate::access_log::{AccessLog, Entry};
use crate::body::{self, Body, BoxError};
use crate::identity::Identity;
use crate::metrics::{
    self, MethodClass, RateLimitDecision, RequestSeries, StatusClass, UpstreamError,
};
use crate::otlp::{SpanExporter, SpanRecord};
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// What a data plane does with finished requests besides metrics.
#[derive(Clone, Default)]
pub struct Observer {
    pub access_log: Option<AccessLog>,
    pub spans: Option<SpanExporter>,
}

/// What the proxy reported about the current request.
#[derive(Default)]
struct Observed {
    rule: Option<Arc<Rule>>,
    backend: Option<Arc<Backend>>,
    endpoint: Option<SocketAddr>,
    upstream_start: Option<Instant>,
    upstream_error: Option<UpstreamError>,
    identity: Option<Identity>,
    rate_limit: Option<RateLimitDecision>,
    /// Only copy the identity when an access log will want it.
    wants_identity: bool,
}

tokio::task_local! {
    static CURRENT: RefCell<Observed>;
}

fn with_current(f: impl FnOnce(&mut Observed)) {
    let _ = CURRENT.try_with(|cell| {
        if let Ok(mut observed) = cell.try_borrow_mut() {
            f(&mut observed);
        }
    });
}

/// The request matched `rule`.
pub fn route_matched(rule: &Arc<Rule>) {
    with_current(|o| o.rule = Some(rule.clone()));
}

/// The request goes to `backend`. Reads the caller's [`Identity`] from the
/// request's extensions when present.
pub fn backend_chosen(backend: &Arc<Backend>, extensions: &http::Extensions) {
    with_current(|o| {
        o.backend = Some(backend.clone());
        if o.wants_identity && o.identity.is_none() {
            o.identity = extensions.get::<Identity>().cloned();
        }
    });
}

/// An attempt is about to be sent to `endpoint` (called for every attempt;
/// the last one is what the access log and upstream timing report).
pub fn upstream_attempt(endpoint: SocketAddr) {
    with_current(|o| {
        o.endpoint = Some(endpoint);
        o.upstream_start = Some(Instant::now());
        o.upstream_error = None;
    });
}

/// The last attempt failed before a response arrived.
pub fn upstream_failed(error: UpstreamError) {
    with_current(|o| o.upstream_error = Some(error));
}

/// The caller was authenticated as `identity` (for requests that end
/// before a backend is chosen, e.g. denied ones).
pub fn identity(identity: &Identity) {
    with_current(|o| {
        if o.wants_identity {
            o.identity = Some(identity.clone());
        }
    });
}

/// The rate-limit decision taken for this request.
pub fn rate_limit(decision: RateLimitDecision) {
    with_current(|o| o.rate_limit = Some(decision));
}

/// Request data copied for the access log (reference-counted clones).
struct Captured {
    start: SystemTime,
    version: http::Version,
    method: http::Method,
    host: Option<HeaderValue>,
    uri: http::Uri,
    user_agent: Option<HeaderValue>,
}

/// Serves one request through [`proxy::handle`], observed.
pub async fn handle(
    observer: Arc<Observer>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = MethodClass::of(req.method());
    let request_id = ensure_request_id(req.headers_mut());
    let trace = TraceContext::propagate(req.headers_mut());
    let traced = observer.spans.is_some() && trace.flags & 0x01 != 0;
    let captured = (observer.access_log.is_some() || traced).then(|| Captured {
        start: SystemTime::now(),
        version: req.version(),
        method: req.method().clone(),
        host: req.headers().get(http::header::HOST).cloned(),
        uri: req.uri().clone(),
        user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
    });
    // The table the proxy is about to load too (a swap in between only
    // sends this request down the slow path of `series`).
    let state = shared.current();
    let observed = RefCell::new(Observed {
        wants_identity: observer.access_log.is_some(),
        ..Observed::default()
    });
    let port = conn.local_port;
    let client = conn.remote;
    let (result, observed) = CURRENT
        .scope(observed, async move {
            let result = proxy::handle(shared, conn, req).await;
            let observed = CURRENT.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
            (result, observed)
        })
        .await;
    let Ok(mut resp) = result;

    if let Some(id) = &request_id {
        resp.headers_mut()
            .entry(X_REQUEST_ID.clone())
            .or_insert_with(|| id.clone());
    }
    let series = state
        .series
        .lookup(port, observed.rule.as_ref(), observed.backend.as_ref())
        .unwrap_or_else(|| {
            Arc::new(metrics::slow_series(
                port,
                observed.rule.as_ref(),
                observed.backend.as_ref(),
            ))
        });
    drop(state);
    let upstream_time = match (observed.upstream_start, observed.upstream_error) {
        (Some(t), None) => Some(t.elapsed()),
        _ => None,
    };
    if let Some(error) = observed.upstream_error {
        metrics::global().record_upstream_error(series.backend(), error);
    }
    if let Some(t) = upstream_time {
        series.record_upstream(t);
    }

    let status = resp.status();
    let route = (!series.route().is_empty()).then(|| series.route().clone());
    let backend = (!series.backend().is_empty()).then(|| series.backend().clone());
    let span = match (&observer.spans, &captured) {
        (Some(exporter), Some(c)) if traced => Some((
            exporter.clone(),
            Box::new(SpanRecord {
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                parent_id: trace.parent_id,
                start: c.start,
                duration: Duration::ZERO,
                method: c.method.clone(),
                uri: c.uri.clone(),
                status,
                port,
                client,
                route: route.clone(),
                backend: backend.clone(),
                upstream: observed.endpoint,
            }),
        )),
        _ => None,
    };
    let log = match (&observer.access_log, captured) {
        (Some(log), Some(c)) if log.wants(status) => Some((
            log.clone(),
            Box::new(Entry {
                start: c.start,
                request_id,
                trace_id: Some(trace.trace_id),
                span_id: Some(trace.span_id),
                client,
                port,
                version: c.version,
                method: c.method,
                host: c.host,
                uri: c.uri,
                user_agent: c.user_agent,
                status,
                bytes: 0,
                duration: Duration::ZERO,
                upstream: observed.endpoint,
                upstream_time,
                route,
                backend,
                identity: observed.identity,
                rate_limit: observed.rate_limit,
            }),
        )),
        _ => None,
    };
    let finish = Finish {
        start,
        series,
        method,
        status: StatusClass::of(status),
        log,
        span,
    };
    let (parts, inner) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        body::boxed(ObservedBody {
            inner,
            bytes: 0,
            finish: Some(finish),
        }),
    ))
}

/// Keeps the client's `x-request-id`, or sets a new random one (UUID v4
/// form). Returns the value, which the response carries too.
fn ensure_request_id(headers: &mut HeaderMap) -> Option<HeaderValue> {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        return Some(id.clone());
    }
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx, formatted on the stack.
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        write_hex(&mut text[at..at + 2], &[*b]);
        at += 2;
    }
    let value = HeaderValue::from_bytes(&text).ok()?;
    headers.insert(X_REQUEST_ID.clone(), value.clone());
    Some(value)
}

/// W3C Trace Context of this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// Our span: the parent id the backend sees.
    pub span_id: [u8; 8],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the client's trace (same trace id and flags, a new span
    /// id for this hop) or starts one, and rewrites `traceparent` for the
    /// backend. `tracestate` is passed through untouched.
    pub fn propagate(headers: &mut HeaderMap) -> TraceContext {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let ctx = match parent {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id: nonzero_random(),
                parent_id: Some(parent_id),
                flags,
            },
            None => TraceContext {
                trace_id: nonzero_random(),
                span_id: nonzero_random(),
                parent_id: None,
                // Sampled: the access log records every span we start.
                flags: 0x01,
            },
        };
        if let Ok(v) = HeaderValue::from_bytes(&ctx.header()) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        ctx
    }

    /// `00-<trace id>-<span id>-<flags>`, formatted on the stack.
    pub fn header(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let b: [u8; N] = rand::random();
        if b.iter().any(|x| *x != 0) {
            return b;
        }
    }
}

/// `version-traceid-parentid-flags`. Version `ff` and all-zero ids are
/// invalid; versions above 00 are read by their first four fields, as the
/// specification asks.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = unhex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let parent_id = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// Lowercase hex only (upper case is invalid in traceparent).
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Recorded once, when the response body ends or is dropped.
struct Finish {
    start: Instant,
    series: Arc<RequestSeries>,
    method: MethodClass,
    status: StatusClass,
    log: Option<(AccessLog, Box<Entry>)>,
    span: Option<(SpanExporter, Box<SpanRecord>)>,
}

impl Finish {
    fn record(self, bytes: u64) {
        let elapsed = self.start.elapsed();
        self.series.record(self.method, self.status, elapsed);
        if let Some((exporter, mut span)) = self.span {
            span.duration = elapsed;
            exporter.submit(*span);
        }
        if let Some((log, mut entry)) = self.log {
            entry.bytes = bytes;
            entry.duration = elapsed;
            log.submit(entry);
        }
    }
}

/// The response body, counting bytes and recording the request when it
/// ends.
struct ObservedBody {
    inner: Body,
    bytes: u64,
    finish: Option<Finish>,
}

impl ObservedBody {
    fn finish(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.record(self.bytes);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_gets_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let ctx = TraceContext::propagate(&mut headers);
        let sent = headers[&TRACEPARENT].to_str().unwrap().to_string();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert!(!sent.contains("00f067aa0ba902b7"), "a new span id: {sent}");
        assert_eq!(ctx.parent_id, Some(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7"));
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(&TRACEPARENT, HeaderValue::from_static(bad));
            let ctx = TraceContext::propagate(&mut headers);
            assert_eq!(ctx.parent_id, None, "{bad}");
            assert_eq!(headers[&TRACEPARENT].len(), 55);
        }
        // A future version with extra fields is read by its first four.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("mine"));
        assert_eq!(ensure_request_id(&mut headers).unwrap(), "mine");
        let mut headers = HeaderMap::new();
        let id = ensure_request_id(&mut headers).unwrap();
        assert_eq!(id.len(), 36);
        let text = id.to_str().unwrap();
        assert_eq!(text.as_bytes()[14], b'4', "version 4: {text}");
        assert_eq!(
            text.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert_eq!(headers[&X_REQUEST_ID], id);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()).unwrap(), id);
    }
}

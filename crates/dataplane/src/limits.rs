//! Limits on what a client may make the gateway hold: header size and
//! count, URI length, body size, how long headers may take to arrive, idle
//! connections and TLS streams, connections per listener, HTTP/2 streams and abusive frame
//! patterns, requests per connection.
//!
//! [`Limits`] is process-wide data-plane configuration (CLI flags of `run`
//! and `proxy`); the request body limit can be raised or lowered per
//! Service or route by a BackendPolicy (`maxRequestBodyBytes`).
//!
//! Where hyper enforces a limit (HTTP/1 head size and header count, the
//! header read timeout, every HTTP/2 knob) it is configured in
//! [`crate::server`]; the rest is enforced here: [`check_request`] (URI
//! length, header count and size for HTTP/2), [`LimitedBody`] (bodies
//! without a declared length) and [`ConnTracker`] (idle connections,
//! requests per connection).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;

use crate::body::BoxError;
use crate::metrics::{self, Limit};

/// Every limit, with the defaults a production gateway starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request line plus headers, in bytes (HTTP/1: the whole head;
    /// HTTP/2: the decoded header list as RFC 9113 counts it). Over it:
    /// 431. HTTP/1 cannot go below 8 KiB (hyper's smallest read buffer).
    pub max_request_header_bytes: usize,
    /// Header fields per request. Over it: 431.
    pub max_request_headers: usize,
    /// Request target (path and query), in bytes. Over it: 414.
    pub max_uri_bytes: usize,
    /// Request body, in bytes; `None`: unlimited. A BackendPolicy's
    /// `maxRequestBodyBytes` wins. Over it: 413. Not applied to GRPCRoutes
    /// (streams), which only a BackendPolicy limits.
    pub max_request_body_bytes: Option<u64>,
    /// HTTP/1: the request head must be complete this long after the
    /// gateway starts waiting for it (slowloris). The connection is closed
    /// without an answer (a slow client may not even be reading).
    pub request_header_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with GOAWAY). HTTP/1 keep-alive connections are also bound
    /// by `request_header_timeout`, whichever is shorter.
    pub idle_timeout: Duration,
    /// TLS streams (TLSRoute): a stream with no bytes either way for this
    /// long is closed on both sides, so a half-dead peer does not hold
    /// two sockets forever. Longer than `idle_timeout`: streams carry
    /// protocols that are quiet for minutes (Envoy's TCP proxy default).
    pub stream_idle_timeout: Duration,
    /// Open connections per listener; `None`: unlimited. Over it, a new
    /// connection is accepted and closed at once (see
    /// [`crate::server`]).
    pub max_connections_per_listener: Option<usize>,
    /// Requests served on one connection before it is closed gracefully
    /// (HTTP/1 `Connection: close`, HTTP/2 GOAWAY); `None`: unlimited.
    pub max_requests_per_connection: Option<u64>,
    /// HTTP/2 streams a client may have open at once (SETTINGS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 rapid reset (CVE-2023-44487): streams the client opened and
    /// reset before the gateway accepted them; over it, GOAWAY
    /// (ENHANCE_YOUR_CALM).
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the gateway reset because the client broke the
    /// protocol on them (CVE-2025-8671, "MadeYouReset"); over it, GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Envoy's default (60 KiB) rounded up; nginx allows 4 x 8 KiB.
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            max_uri_bytes: 8 * 1024,
            // Bodies are streamed, never buffered whole: the limit protects
            // backends, so it is generous; APIs lower it per route.
            max_request_body_bytes: Some(64 * 1024 * 1024),
            request_header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(3600),
            max_connections_per_listener: Some(10_000),
            max_requests_per_connection: None,
            h2_max_concurrent_streams: 256,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
        }
    }
}

/// hyper's smallest HTTP/1 read buffer, which also bounds the head.
pub const MIN_HTTP1_HEADER_BYTES: usize = 8192;

/// A request refused by a limit: its status and what the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub limit: Limit,
    pub message: &'static str,
}

/// Checks what hyper did not already: URI length (both protocols), header
/// count and size (HTTP/2; HTTP/1 heads were bounded while parsing).
pub fn check_request<B>(limits: &Limits, req: &Request<B>) -> Result<(), Refusal> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(Refusal {
            status: StatusCode::URI_TOO_LONG,
            limit: Limit::uri_length,
            message: "request URI too long",
        });
    }
    let headers = req.headers();
    if headers.len() > limits.max_request_headers {
        return Err(Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            limit: Limit::header_count,
            message: "too many request headers",
        });
    }
    // HTTP/1 heads never get here over the limit (hyper's read buffer is
    // sized to it); HTTP/2's header list limit counts 32 bytes more per
    // field, so this only catches what both would allow. Cheap: lengths
    // are stored.
    let size: usize = uri_len
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limits.max_request_header_bytes {
        return Err(Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            limit: Limit::header_size,
            message: "request headers too large",
        });
    }
    Ok(())
}

/// The body limit for a request: a route's BackendPolicy, then the
/// Service's, then the gateway's. `Some(0)` in a policy means unlimited.
pub fn body_limit(route: Option<u64>, service: Option<u64>, global: Option<u64>) -> Option<u64> {
    match route.or(service) {
        Some(0) => None,
        Some(n) => Some(n),
        None => global,
    }
}

/// A request body cut off with an error once more than `limit` bytes
/// went through (for bodies whose length was not declared up front; a
/// declared length over the limit is refused before anything is sent).
/// The upstream request then fails mid-body, so the backend never sees a
/// complete request; `exceeded` tells the proxy to answer 413.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> LimitedBody<B> {
        LimitedBody {
            inner,
            remaining: limit,
            exceeded,
        }
    }
}

/// The error a [`LimitedBody`] ends with.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than the limit")
    }
}

impl std::error::Error for BodyTooLarge {}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Per-connection bookkeeping for the idle timeout and the request cap,
/// shared by the connection's task and its requests.
pub struct ConnTracker {
    started: Instant,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds after `started` at which the last request finished.
    idle_since_ms: AtomicU64,
    /// Set when the connection should close after what is in flight.
    close: Notify,
    closing: AtomicBool,
}

impl Default for ConnTracker {
    fn default() -> Self {
        ConnTracker {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            close: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }
}

/// What the tracker says about a request that is starting.
pub struct RequestTicket {
    tracker: Arc<ConnTracker>,
    /// This is the connection's last request (the cap was reached).
    pub last: bool,
}

impl Drop for RequestTicket {
    fn drop(&mut self) {
        if self.tracker.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker
                .idle_since_ms
                .store(self.tracker.elapsed_ms(), Ordering::Release);
        }
    }
}

impl ConnTracker {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request starts; hold the ticket until its handler returned.
    pub fn request_started(self: &Arc<Self>, max_requests: Option<u64>) -> RequestTicket {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let n = self.served.fetch_add(1, Ordering::AcqRel) + 1;
        let last = max_requests.is_some_and(|max| n >= max);
        if last {
            self.close_after_in_flight();
        }
        RequestTicket {
            tracker: self.clone(),
            last,
        }
    }

    /// No request is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Asks the connection to close gracefully.
    pub fn close_after_in_flight(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.close.notify_one();
        }
    }

    /// Resolves when [`ConnTracker::close_after_in_flight`] was called.
    pub async fn close_requested(&self) {
        self.close.notified().await;
    }

    /// Resolves when the connection has had no request in flight for
    /// `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let idle_since = self.idle_since_ms.load(Ordering::Acquire);
            let deadline = self.started + Duration::from_millis(idle_since) + timeout;
            tokio::time::sleep_until(deadline.into()).await;
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            if !busy && self.idle_since_ms.load(Ordering::Acquire) == idle_since {
                return;
            }
            if busy {
                // Checked again a full timeout after the last request ends.
                tokio::time::sleep(timeout.min(Duration::from_secs(1))).await;
            }
        }
    }
}

/// Logs and counts a limit violation.
pub fn record(port: u16, limit: Limit, detail: &str) {
    tracing::info!(
        port,
        limit = limit.as_str(),
        detail,
        "request limit exceeded"
    );
    metrics::global().record_limit(port, limit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[test]
    fn uri_header_count_and_size_are_checked() {
        let limits = Limits {
            max_uri_bytes: 16,
            max_request_headers: 2,
            max_request_header_bytes: 64,
            ..Limits::default()
        };
        let ok = Request::get("/short").header("a", "b").body(()).unwrap();
        assert_eq!(check_request(&limits, &ok), Ok(()));
        let long = Request::get("/a-rather-long-path").body(()).unwrap();
        assert_eq!(
            check_request(&limits, &long).unwrap_err().status,
            StatusCode::URI_TOO_LONG
        );
        let many = Request::get("/")
            .header("a", "1")
            .header("b", "2")
            .header("c", "3")
            .body(())
            .unwrap();
        assert_eq!(
            check_request(&limits, &many).unwrap_err().limit,
            Limit::header_count
        );
        let big = Request::get("/")
            .header("a", "x".repeat(80))
            .body(())
            .unwrap();
        assert_eq!(
            check_request(&limits, &big).unwrap_err().limit,
            Limit::header_size
        );
    }

    #[test]
    fn policy_limits_win_and_zero_is_unlimited() {
        assert_eq!(body_limit(Some(10), Some(20), Some(30)), Some(10));
        assert_eq!(body_limit(None, Some(20), Some(30)), Some(20));
        assert_eq!(body_limit(None, None, Some(30)), Some(30));
        assert_eq!(body_limit(Some(0), Some(20), Some(30)), None);
        assert_eq!(body_limit(None, None, None), None);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_ends_with_an_error() {
        let chunks = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ];
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(
            StreamBody::new(futures_util::stream::iter(chunks)),
            7,
            exceeded.clone(),
        );
        assert!(body.collect().await.is_err());
        assert!(exceeded.load(Ordering::Relaxed));

        let exceeded = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(
            Full::new(Bytes::from_static(b"0123456789")),
            10,
            exceeded.clone(),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!exceeded.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn idle_waits_for_requests_in_flight() {
        let idle = Duration::from_millis(20);
        let tracker = Arc::new(ConnTracker::default());
        let ticket = tracker.request_started(Some(2));
        assert!(!ticket.last);
        let waited = tokio::time::timeout(Duration::from_millis(300), tracker.idle_for(idle));
        assert!(
            waited.await.is_err(),
            "not idle while a request is in flight"
        );
        drop(ticket);
        tokio::time::timeout(Duration::from_secs(10), tracker.idle_for(idle))
            .await
            .expect("idle after the request ended");
        let second = tracker.request_started(Some(2));
        assert!(second.last, "the cap was reached");
        tokio::time::timeout(Duration::from_secs(10), tracker.close_requested())
            .await
            .expect("close requested");
    }
}

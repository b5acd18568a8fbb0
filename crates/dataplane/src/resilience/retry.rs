//! Sending a request to a backend: endpoint choice, circuit breaking,
//! per-attempt timeout, outlier bookkeeping and retries with exponential
//! backoff, jitter and a budget.
//!
//! A request is retried only when all hold: a retry policy applies, the
//! failure is one of its conditions, attempts are left, its body could be
//! kept for replay (up to `max_body_bytes`), it is idempotent (or the policy
//! says non-idempotent requests may be retried, or the connection was never
//! made, so nothing reached the backend), and the backend's circuit breaker
//! and retry budget admit one more retry in flight. Retries go to another
//! endpoint when there is one.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_model::backend_policy::RetryPolicy;
use portcullis_model::AppProtocol;
use rand::Rng;

use super::outlier::{self, Outcome};
use super::{BackendState, EndpointGuard};
use crate::body::{self, Body, BoxError};
use crate::lb::PickInput;
use crate::upstream::{overloaded_cause, Overloaded};

/// What one request needs besides the request itself.
pub struct Attempts<'a> {
    pub backend: &'a Arc<BackendState>,
    pub protocol: AppProtocol,
    pub retry: Option<&'a RetryPolicy>,
    pub per_try_timeout: Option<Duration>,
    pub client_ip: IpAddr,
    pub query: Option<&'a str>,
    /// Upgrades are sent once: their connection is handed over.
    pub upgrade: bool,
}

/// Why no response could be relayed.
#[derive(Debug)]
pub enum Failure {
    Overloaded(Overloaded),
    NoEndpoint,
    Connect(String),
    /// The TLS handshake with the endpoint failed (BackendTLSPolicy).
    Tls(String),
    Upstream(String),
    /// Reading the client's request body failed (malformed, cut short).
    ClientBody(String),
    Timeout(Duration),
}

/// Sends `req` (origin-form URI) to an endpoint of the backend, retrying
/// as the policy allows. The response body counts as in flight (for
/// least-request and `maxRequests`) until it ends.
pub async fn send(a: Attempts<'_>, req: Request<Body>) -> Result<Response<Body>, Failure> {
    let backend = a.backend;
    let settings = &backend.settings;
    let request_guard = backend
        .counters
        .start_request(&settings.circuit_breaker)
        .map_err(Failure::Overloaded)?;
    let (parts, body) = req.into_parts();
    let retry = a.retry.filter(|r| r.attempts > 0 && !a.upgrade);
    let mut replay = match retry {
        Some(r) => Replay::prepare(body, r.max_body_bytes)
            .await
            .map_err(|e| Failure::ClientBody(e.to_string()))?,
        None => Replay::Streamed(Some(body)),
    };
    let idempotent = is_idempotent(&parts.method);
    let session_cookie = settings.load_balancer.session_cookie.as_ref();
    let mut parts = Some(parts);
    let mut tried = Vec::new();
    let mut attempt: u32 = 0;
    // Held while a retry is in flight (budget and `maxRetries`).
    let mut _retry_guard = None;
    loop {
        let Some(head) = parts.as_ref() else {
            // Unreachable: the head is moved out only for the last attempt.
            return Err(Failure::Upstream("request already sent".into()));
        };
        let endpoint = backend
            .pick(&PickInput {
                headers: &head.headers,
                query: a.query,
                client_ip: a.client_ip,
                tried: &tried,
            })
            .ok_or(Failure::NoEndpoint)?
            .clone();
        crate::observe::upstream_attempt(endpoint.addr);
        let set_cookie = session_cookie.is_some_and(|c| {
            crate::lb::cookie(&head.headers, &c.name) != Some(endpoint.session_token.as_str())
        });
        // The last possible attempt takes the head instead of copying it:
        // a request without retries is never copied.
        let last = !replay.replayable() || retry.is_none_or(|r| attempt >= r.attempts);
        let mut p = if last {
            match parts.take() {
                Some(p) => p,
                None => return Err(Failure::Upstream("request already sent".into())),
            }
        } else {
            head.clone()
        };
        let Some(body) = replay.body() else {
            // Unreachable: a streamed body is sent once (`last` above).
            return Err(Failure::Upstream("request body already sent".into()));
        };
        p.uri = endpoint_uri(&p.uri, &endpoint.authority)
            .map_err(|e| Failure::Upstream(format!("cannot build upstream URI: {e}")))?;
        let endpoint_guard = endpoint.start_request();
        let client = backend.clients.client(a.protocol);
        let sent = client.request(Request::from_parts(p, body));
        let result = match a.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, sent)
                .await
                .map_err(|_| AttemptError::Timeout(limit)),
            None => Ok(sent.await),
        };
        let result = match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
            Err(t) => Err(t),
        };
        if let Some(config) = &settings.outlier_detection {
            let outcome = match &result {
                Ok(resp) => Some(Outcome::of_status(resp.status().as_u16())),
                // Refused by our own limit: says nothing about the endpoint.
                Err(AttemptError::Overloaded(_) | AttemptError::ClientBody(_)) => None,
                Err(_) => Some(Outcome::GatewayError),
            };
            if let Some(outcome) = outcome {
                if outlier::record(config, &backend.endpoints, &endpoint, outcome) {
                    crate::metrics::global().record_outlier_ejection(&backend.label);
                }
            }
        }
        let wants_retry = match (&result, retry) {
            (_, None) => false,
            (Err(AttemptError::Overloaded(_) | AttemptError::ClientBody(_)), _) => false,
            (Ok(resp), Some(r)) => r.retries_status(resp.status().as_u16()) || grpc_retry(resp, r),
            // Another endpoint may hold a good certificate: like a
            // connect failure.
            (Err(AttemptError::Connect(_) | AttemptError::Tls(_)), Some(r)) => r.on.connect_failure,
            (Err(AttemptError::Reset(_)), Some(r)) => r.on.reset,
            (Err(AttemptError::Timeout(_)), Some(r)) => r.retries_timeout(),
        };
        // gRPC calls are all POSTs: a listed gRPC status is the policy's
        // word that the call was not processed (see `RetrySpec`).
        let method_allows = idempotent
            || retry.is_some_and(|r| r.retry_non_idempotent)
            || matches!((&result, retry), (Ok(resp), Some(r)) if grpc_retry(resp, r))
            || matches!(result, Err(AttemptError::Connect(_) | AttemptError::Tls(_)));
        let retriable = wants_retry && method_allows && !last;
        if retriable {
            if let Some(r) = retry {
                if let Some(g) = backend
                    .counters
                    .start_retry(&settings.circuit_breaker, &r.budget)
                {
                    tracing::debug!(backend = %backend.name, endpoint = %endpoint.addr, attempt, "retrying");
                    crate::metrics::global().record_retry(&backend.label);
                    drop(result);
                    drop(endpoint_guard);
                    // Only a retry needs to know (and allocates for) where
                    // this request has been.
                    tried.push(endpoint.addr);
                    _retry_guard = Some(g);
                    tokio::time::sleep(backoff(r, attempt)).await;
                    attempt += 1;
                    continue;
                }
                tracing::debug!(backend = %backend.name, "retry refused by budget or maxRetries");
            }
        }
        return match result {
            Ok(resp) => {
                let mut resp = resp.map(|b| {
                    body::boxed(Guarded {
                        inner: b,
                        _guards: (request_guard, endpoint_guard),
                    })
                });
                if let (true, Some(cookie)) = (set_cookie, session_cookie) {
                    let v = format!(
                        "{}={}{}",
                        cookie.name, endpoint.session_token, backend.session_cookie_attributes
                    );
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        resp.headers_mut().append(http::header::SET_COOKIE, v);
                    }
                }
                Ok(resp)
            }
            Err(AttemptError::Overloaded(o)) => Err(Failure::Overloaded(o)),
            Err(AttemptError::Connect(e)) => {
                Err(Failure::Connect(format!("{}: {e}", endpoint.addr)))
            }
            Err(AttemptError::Reset(e)) => {
                Err(Failure::Upstream(format!("{}: {e}", endpoint.addr)))
            }
            Err(AttemptError::Tls(e)) => Err(Failure::Tls(format!("{}: {e}", endpoint.addr))),
            Err(AttemptError::ClientBody(e)) => Err(Failure::ClientBody(e)),
            Err(AttemptError::Timeout(t)) => Err(Failure::Timeout(t)),
        };
    }
}

/// A trailers-only gRPC answer (`grpc-status` in the headers) with a status
/// the policy retries.
fn grpc_retry<B>(resp: &Response<B>, r: &RetryPolicy) -> bool {
    r.grpc_status_mask != 0
        && resp
            .headers()
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.parse::<u8>().ok())
            .is_some_and(|code| r.retries_grpc_status(code))
}

enum AttemptError {
    Overloaded(Overloaded),
    ClientBody(String),
    Connect(String),
    Tls(String),
    Reset(String),
    Timeout(Duration),
}

fn classify(e: &hyper_util::client::legacy::Error) -> AttemptError {
    if let Some(o) = overloaded_cause(e) {
        return AttemptError::Overloaded(o);
    }
    if let Some(t) = crate::backend_tls::tls_cause(e) {
        return AttemptError::Tls(t.to_string());
    }
    if crate::proxy::client_body_failed(e) {
        return AttemptError::ClientBody(format!("{e:?}"));
    }
    if e.is_connect() {
        AttemptError::Connect(format!("{e:?}"))
    } else {
        AttemptError::Reset(format!("{e:?}"))
    }
}

/// RFC 9110 idempotent methods.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Wait before retry `attempt` (0-based): a random time between half of
/// `min(base * 2^attempt, max)` and all of it, never below `base`.
pub fn backoff(r: &RetryPolicy, attempt: u32) -> Duration {
    let base = r.backoff_base;
    let ceiling = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(r.backoff_max.max(base));
    let low = (ceiling / 2).max(base);
    if ceiling <= low {
        return low;
    }
    let span = (ceiling - low).as_micros() as u64;
    low + Duration::from_micros(rand::rng().random_range(0..=span))
}

/// `http://<endpoint><path?query>`: the endpoint in the authority keys the
/// connection pool; the client's host travels in the Host header. No
/// allocation: the authority is prebuilt, the path shares its bytes.
fn endpoint_uri(origin: &Uri, authority: &Authority) -> Result<Uri, http::uri::InvalidUriParts> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        origin
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
}

/// The request body, kept for replay when it is small enough.
enum Replay {
    /// Complete; each attempt gets a copy.
    Buffered {
        data: Arc<[Bytes]>,
        trailers: Option<HeaderMap>,
    },
    /// Too long (or failed to read): sent once, never retried.
    Streamed(Option<Body>),
}

impl Replay {
    /// Reads the body up to `limit`; `Err` when the client's body broke
    /// (nothing was sent upstream yet).
    async fn prepare(mut body: Body, limit: usize) -> Result<Replay, BoxError> {
        if body.is_end_stream() {
            return Ok(Replay::Buffered {
                data: Arc::from(Vec::new()),
                trailers: None,
            });
        }
        if body.size_hint().lower() as usize > limit {
            return Ok(Replay::Streamed(Some(body)));
        }
        let mut data = Vec::new();
        let mut len = 0usize;
        loop {
            match body.frame().await {
                None => {
                    return Ok(Replay::Buffered {
                        data: Arc::from(data),
                        trailers: None,
                    })
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        len += chunk.len();
                        data.push(chunk);
                        if len > limit {
                            return Ok(Replay::Streamed(Some(body::boxed(Prefixed {
                                prefix: data.into(),
                                rest: body,
                            }))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body.
                        return Ok(Replay::Buffered {
                            data: Arc::from(data),
                            trailers: frame.into_trailers().ok(),
                        });
                    }
                },
                Some(Err(e)) => return Err(e),
            }
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Replay::Buffered { .. })
    }

    fn body(&mut self) -> Option<Body> {
        match self {
            Replay::Buffered { data, trailers } => Some(body::boxed(Replayed {
                data: data.clone(),
                next: 0,
                trailers: trailers.clone(),
            })),
            Replay::Streamed(b) => b.take(),
        }
    }
}

/// A buffered body played back.
struct Replayed {
    data: Arc<[Bytes]>,
    next: usize,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.data.get(self.next).cloned() {
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.data.len() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let rest: usize = self.data[self.next.min(self.data.len())..]
            .iter()
            .map(Bytes::len)
            .sum();
        if self.trailers.is_none() {
            SizeHint::with_exact(rest as u64)
        } else {
            let mut h = SizeHint::new();
            h.set_lower(rest as u64);
            h
        }
    }
}

/// Chunks already read, then the rest of the body.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// A response body that keeps the request counted as in flight until it
/// ends or is dropped.
struct Guarded<B> {
    inner: B,
    _guards: (super::circuit::RequestGuard, EndpointGuard),
}

impl<B> HttpBody for Guarded<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_never_below_base() {
        let mut r = RetryPolicy::with_defaults();
        r.backoff_base = Duration::from_millis(10);
        r.backoff_max = Duration::from_millis(80);
        for attempt in 0..10 {
            let d = backoff(&r, attempt);
            assert!(d >= Duration::from_millis(10), "{attempt}: {d:?}");
            assert!(d <= Duration::from_millis(80), "{attempt}: {d:?}");
        }
        // The fourth retry waits at least half of the 80 ms cap.
        assert!(backoff(&r, 3) >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn small_bodies_replay_and_long_ones_stream_once() {
        let mut small = Replay::prepare(body::full("hello"), 16).await.unwrap();
        assert!(small.replayable());
        for _ in 0..2 {
            let b = small.body().unwrap().collect().await.unwrap().to_bytes();
            assert_eq!(&b[..], b"hello");
        }
        let mut long = Replay::prepare(body::full(vec![b'x'; 100]), 16)
            .await
            .unwrap();
        assert!(!long.replayable());
        let b = long.body().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(b.len(), 100);
        assert!(long.body().is_none());
    }
}

//! TLS ports (Gateway API `TLS` listeners, TLSRoute): the ClientHello is
//! read without answering it, its SNI picks the route, and the connection
//! becomes a TCP stream to a backend endpoint:
//!
//! - Passthrough: the bytes read so far and everything after go to the
//!   backend untouched; the backend completes the handshake with the
//!   client, so the gateway never holds the session keys.
//! - Terminate: the gateway completes the handshake (certificate and
//!   settings by SNI, see [`crate::tls`]) and forwards the plaintext.
//!
//! No SNI, an SNI no route serves, or a route without a usable backend or
//! endpoint: the connection is closed (that is all TLS lets a gateway say
//! before a handshake).
//!
//! A stream with no bytes either way for the stream idle timeout
//! ([`crate::limits::Limits::stream_idle_timeout`]) is closed on both
//! sides. Every connection that sent a ClientHello gets one access-log
//! line when it ends ([`crate::access_log::StreamEntry`]): SNI, route,
//! backend, bytes each way, duration and how it ended ([`Outcome`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use portcullis_model::{BackendTarget, HostMatch, PortConfig, Rule, TlsMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::access_log::{AccessLog, StreamEntry};
use crate::lb::PickInput;
use crate::state::{PortState, Prepared};

/// A ClientHello larger than this is refused (real ones are a few hundred
/// bytes; post-quantum key shares bring them to a few KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The SNI table of one TLS port.
#[derive(Debug, Default)]
pub struct SniRoutes {
    exact: HashMap<String, usize>,
    /// Longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
    routes: Vec<SniRoute>,
}

#[derive(Debug)]
pub struct SniRoute {
    pub mode: TlsMode,
    pub rule: Option<Arc<Rule>>,
    /// The rule's name in logs and metrics (`tlsroute/ns/name/rule/0`),
    /// made once per table.
    pub label: Option<Arc<str>>,
}

impl SniRoutes {
    pub fn new(port: &PortConfig) -> SniRoutes {
        let mut out = SniRoutes::default();
        for r in &port.tls_routes {
            let i = out.routes.len();
            out.routes.push(SniRoute {
                mode: r.mode,
                rule: r.rule.clone(),
                label: r
                    .rule
                    .as_ref()
                    .map(|rule| Arc::from(crate::metrics::route_label(rule))),
            });
            match &r.hostname {
                HostMatch::Exact(h) => {
                    out.exact.entry(h.clone()).or_insert(i);
                }
                HostMatch::Wildcard(s) => out.wildcards.push((s.clone(), i)),
                HostMatch::Any => {
                    out.any.get_or_insert(i);
                }
            }
        }
        out.wildcards
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        out
    }

    /// The route for an SNI (lowercase): exact, longest wildcard, catch-all.
    pub fn lookup(&self, sni: &str) -> Option<&SniRoute> {
        let i = self.exact.get(sni).copied().or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| sni.len() > suffix.len() && sni.ends_with(suffix.as_str()))
                .map(|(_, i)| *i)
                .or(self.any)
        })?;
        self.routes.get(i)
    }
}

/// Why a TLS connection was closed without being proxied (logged at debug:
/// these are the client's doing or a route's state, and a scanner could
/// fill the log).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake with the client: {0}")]
    Handshake(std::io::Error),
    #[error("{0}")]
    Connect(String),
    #[error("sending the ClientHello to the backend: {0}")]
    Forward(std::io::Error),
    #[error("not a TLS ClientHello: {0}")]
    NotTls(rustls::Error),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("timed out waiting for the ClientHello")]
    Timeout,
    #[error("no SNI in the ClientHello")]
    NoSni,
    #[error("no TLSRoute for SNI {0:?}")]
    NoRoute(String),
    #[error("{0}")]
    NoBackend(String),
    #[error("no certificate for terminating SNI {0:?}")]
    NoCertificate(String),
}

/// How a stream ended: the access log's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides finished (or one closed and the close was passed on).
    Closed,
    /// No bytes either way for the stream idle timeout.
    IdleTimeout,
    /// No SNI, or no route serves it.
    NoRoute,
    /// The route has no usable backend or no ready endpoint.
    NoBackend,
    /// Connecting to the chosen endpoint failed or timed out.
    BackendConnectError,
    /// Terminate: the handshake with the client failed (or no
    /// certificate for its SNI).
    HandshakeError,
    /// A read or write failed mid-stream (e.g. a reset).
    Error,
    /// Cut when the gateway's drain deadline passed.
    Shutdown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::IdleTimeout => "idle-timeout",
            Outcome::NoRoute => "no-route",
            Outcome::NoBackend => "no-backend",
            Outcome::BackendConnectError => "backend-connect-error",
            Outcome::HandshakeError => "handshake-error",
            Outcome::Error => "error",
            Outcome::Shutdown => "shutdown",
        }
    }
}

impl Refused {
    /// The outcome a refusal after the ClientHello is logged with.
    fn outcome(&self) -> Outcome {
        match self {
            Refused::NoSni | Refused::NoRoute(_) => Outcome::NoRoute,
            Refused::NoBackend(_) => Outcome::NoBackend,
            Refused::Connect(_) => Outcome::BackendConnectError,
            Refused::Handshake(_) | Refused::NoCertificate(_) | Refused::Timeout => {
                Outcome::HandshakeError
            }
            Refused::Io(_) | Refused::Forward(_) | Refused::NotTls(_) | Refused::TooLarge => {
                Outcome::Error
            }
        }
    }
}

/// How a TLS port serves streams (process-wide settings).
#[derive(Clone)]
pub struct StreamSettings {
    /// For the ClientHello, and for the handshake when terminating.
    pub handshake_timeout: Duration,
    /// No bytes either way for this long: the stream is closed.
    pub idle_timeout: Duration,
    pub access_log: Option<AccessLog>,
}

/// Bytes each way and the last time any moved, shared by both directions
/// of a stream.
struct Traffic {
    started: Instant,
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// Milliseconds after `started` of the last read or write.
    last_active_ms: AtomicU64,
}

impl Traffic {
    fn new(started: Instant) -> Traffic {
        Traffic {
            started,
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// Returns once nothing moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// One stream's access-log line, written when it is dropped: also when
/// the connection's task is cut (drain deadline), with whatever was known
/// by then.
struct StreamRecord {
    log: Option<AccessLog>,
    start: SystemTime,
    client: SocketAddr,
    port: u16,
    sni: Option<String>,
    mode: Option<TlsMode>,
    route: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    traffic: Traffic,
    /// Until the stream ends on its own, the only way it can end is being
    /// cut by the drain deadline.
    outcome: Outcome,
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        let Some(log) = self.log.take() else {
            return;
        };
        let outcome = self.outcome.as_str();
        if !log.wants_stream(outcome) {
            return;
        }
        log.submit_stream(StreamEntry {
            start: self.start,
            client: self.client,
            port: self.port,
            sni: self.sni.take(),
            mode: self.mode.map(|m| match m {
                TlsMode::Passthrough => "passthrough",
                TlsMode::Terminate => "terminate",
            }),
            route: self.route.take(),
            backend: self.backend.take(),
            upstream: self.upstream,
            bytes_received: self.traffic.from_client.load(Ordering::Relaxed),
            bytes_sent: self.traffic.to_client.load(Ordering::Relaxed),
            duration: self.traffic.started.elapsed(),
            outcome,
        });
    }
}

/// The ClientHello, read and kept byte for byte.
struct Hello {
    bytes: Vec<u8>,
    sni: Option<String>,
}

async fn read_client_hello(stream: &mut TcpStream) -> Result<Hello, Refused> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Refused::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_CLIENT_HELLO {
            return Err(Refused::TooLarge);
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            // Consumes at least one byte of a non-empty slice, or fails
            // (its buffer full); a zero would mean neither: stop, not spin.
            if acceptor.read_tls(&mut fresh)? == 0 {
                return Err(Refused::TooLarge);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok(Hello { bytes, sni });
            }
            Err((e, _alert)) => return Err(Refused::NotTls(e)),
        }
    }
}

/// Serves one connection of a TLS port. Refusals before a ClientHello
/// (not TLS, too slow, too large) are returned and not access-logged,
/// like a connection that never sent an HTTP request; everything after is
/// logged (see [`StreamRecord`]) and returned for the debug log.
pub async fn serve(
    mut stream: TcpStream,
    remote: SocketAddr,
    state: Arc<Prepared>,
    port: Arc<PortState>,
    settings: &StreamSettings,
) -> Result<(), Refused> {
    let start = SystemTime::now();
    let started = Instant::now();
    let hello = tokio::time::timeout(settings.handshake_timeout, read_client_hello(&mut stream))
        .await
        .map_err(|_| Refused::Timeout)??;
    let mut record = StreamRecord {
        log: settings.access_log.clone(),
        start,
        client: remote,
        port: port.routes.config().port,
        sni: hello.sni.clone(),
        mode: None,
        route: None,
        backend: None,
        upstream: None,
        traffic: Traffic::new(started),
        outcome: Outcome::Shutdown,
    };
    match proxy_stream(stream, hello, &mut record, &state, &port, settings).await {
        Ok(outcome) => {
            record.outcome = outcome;
            Ok(())
        }
        Err(refused) => {
            record.outcome = refused.outcome();
            Err(refused)
        }
    }
}

/// Routes a stream by its SNI and pipes it to a backend endpoint until it
/// ends; fills `record` as it learns.
async fn proxy_stream(
    stream: TcpStream,
    hello: Hello,
    record: &mut StreamRecord,
    state: &Prepared,
    port: &PortState,
    settings: &StreamSettings,
) -> Result<Outcome, Refused> {
    let remote = record.client;
    let sni = hello.sni.ok_or(Refused::NoSni)?;
    let Some(routes) = port.tls_routes.as_ref() else {
        return Err(Refused::NoRoute(sni));
    };
    let route = routes
        .lookup(&sni)
        .ok_or_else(|| Refused::NoRoute(sni.clone()))?;
    let rule = route
        .rule
        .as_ref()
        .ok_or_else(|| Refused::NoRoute(sni.clone()))?;
    record.mode = Some(route.mode);
    record.route = route.label.clone();
    let backend = crate::proxy::pick_weighted(&rule.backends)
        .ok_or_else(|| Refused::NoBackend(format!("{}: no backend with weight", rule.id)))?;
    let backend = match &backend.target {
        BackendTarget::Service(b) => b,
        BackendTarget::Invalid { reason } => {
            return Err(Refused::NoBackend(format!(
                "{}: backend not usable ({reason})",
                rule.id
            )))
        }
    };
    let backend_state = state
        .backends
        .get(&backend.name)
        .ok_or_else(|| Refused::NoBackend(format!("{}: unknown backend", backend.name)))?;
    record.backend = Some(backend_state.label.clone());
    let headers = HeaderMap::new();
    let endpoint = backend_state
        .pick(&PickInput {
            headers: &headers,
            query: None,
            client_ip: remote.ip(),
            tried: &[],
        })
        .ok_or_else(|| Refused::NoBackend(format!("{}: no ready endpoint", backend.name)))?
        .clone();
    record.upstream = Some(endpoint.addr);
    let connect_timeout = backend_state.settings.connect_timeout;
    let _active = endpoint.start_request();
    let traffic = &record.traffic;

    match route.mode {
        TlsMode::Passthrough => {
            let mut upstream = connect(endpoint.addr, connect_timeout, &backend.name).await?;
            upstream
                .write_all(&hello.bytes)
                .await
                .map_err(Refused::Forward)?;
            traffic.from_client.fetch_add(
                u64::try_from(hello.bytes.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            traffic.touch();
            tracing::debug!(%remote, %sni, backend = %backend.name, endpoint = %endpoint.addr, "TLS passthrough");
            Ok(pipe(stream, upstream, traffic, settings.idle_timeout).await)
        }
        TlsMode::Terminate => {
            let tls = port
                .tls
                .as_ref()
                .ok_or_else(|| Refused::NoCertificate(sni.clone()))?;
            let replay = Replay {
                prefix: hello.bytes,
                pos: 0,
                inner: stream,
            };
            let (client, _) = tokio::time::timeout(settings.handshake_timeout, tls.accept(replay))
                .await
                .map_err(|_| Refused::Timeout)?
                .map_err(Refused::Handshake)?;
            let upstream = connect(endpoint.addr, connect_timeout, &backend.name).await?;
            traffic.touch();
            tracing::debug!(%remote, %sni, backend = %backend.name, endpoint = %endpoint.addr, "TLS terminated");
            Ok(pipe(client, upstream, traffic, settings.idle_timeout).await)
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration, backend: &str) -> Result<TcpStream, Refused> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Refused::Connect(format!(
            "{backend}: connecting to {addr}: {e}"
        ))),
        Err(_) => Err(Refused::Connect(format!(
            "{backend}: connecting to {addr} timed out"
        ))),
    }
}

/// Copies both ways until both sides are done (a half-close is passed
/// on), or until nothing moved either way for `idle_timeout`: then both
/// sockets are dropped, which closes them.
async fn pipe<A, B>(client: A, upstream: B, traffic: &Traffic, idle_timeout: Duration) -> Outcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted {
        inner: client,
        written: &traffic.to_client,
        traffic,
    };
    let mut upstream = Counted {
        inner: upstream,
        written: &traffic.from_client,
        traffic,
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
            Ok(_) => Outcome::Closed,
            Err(e) => {
                tracing::debug!(error = %e, "TLS route stream ended with error");
                Outcome::Error
            }
        },
        _ = traffic.idle_for(idle_timeout) => Outcome::IdleTimeout,
    }
}

/// One side of a stream: counts the bytes written to it, and marks the
/// stream active on every read or write that moved bytes.
struct Counted<'a, S> {
    inner: S,
    written: &'a AtomicU64,
    traffic: &'a Traffic,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.traffic.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            if *n > 0 {
                this.written
                    .fetch_add(u64::try_from(*n).unwrap_or(u64::MAX), Ordering::Relaxed);
                this.traffic.touch();
            }
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read: they are read again
/// before the rest (the ClientHello, for the terminating handshake).
struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(rest) = this.prefix.get(this.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::{Protocol, RouteKind, RuleId, Timeouts};

    fn rule(name: &str) -> Arc<Rule> {
        Arc::new(Rule {
            id: RuleId {
                kind: RouteKind::Tls,
                namespace: "ns".into(),
                name: name.into(),
                rule_index: 0,
                rule_name: None,
            },
            filters: vec![],
            backends: vec![],
            timeouts: Timeouts::default(),
            retry: None,
            policies: Default::default(),
        })
    }

    #[test]
    fn exact_beats_wildcard_beats_catch_all() {
        let route = |h: Option<&str>, name: Option<&str>| portcullis_model::TlsRoute {
            hostname: HostMatch::parse(h),
            mode: TlsMode::Passthrough,
            rule: name.map(rule),
        };
        let port = PortConfig {
            port: 443,
            protocol: Protocol::Tls,
            tls: None,
            virtual_hosts: vec![],
            tls_routes: vec![
                route(Some("a.example.com"), Some("exact")),
                route(Some("*.b.example.com"), None),
                route(Some("*.example.com"), Some("wild")),
                route(None, Some("any")),
            ],
        };
        let t = SniRoutes::new(&port);
        let name = |sni: &str| {
            t.lookup(sni).map(|r| {
                r.rule
                    .as_ref()
                    .map_or("closed".to_string(), |r| r.id.name.clone())
            })
        };
        assert_eq!(name("a.example.com").as_deref(), Some("exact"));
        assert_eq!(name("z.example.com").as_deref(), Some("wild"));
        assert_eq!(name("x.b.example.com").as_deref(), Some("closed"));
        assert_eq!(name("example.com").as_deref(), Some("any"));
        assert_eq!(name("other.org").as_deref(), Some("any"));
    }

    #[tokio::test]
    async fn replay_reads_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Replay {
            prefix: b"hello".to_vec(),
            pos: 0,
            inner: b,
        };
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}

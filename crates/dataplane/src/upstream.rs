//! Upstream connections: pooled HTTP/1.1 and h2c clients.
//!
//! Backends without connection settings share one pair of clients
//! ([`Upstreams`]); a backend whose BackendPolicy sets a connect or idle
//! timeout, an idle-pool size or a connection limit gets its own pair
//! ([`ClientPair::for_settings`]), carried across tables while those
//! settings stay the same, so a reload keeps warm connections.
//!
//! The URI authority is the endpoint address (so pools are per endpoint)
//! and the `Host` header carries what the client sent.
//!
//! A backend with a BackendTLSPolicy gets its own pair whose connector
//! runs a TLS handshake after connecting ([`crate::backend_tls`]); the URI
//! stays `http://endpoint` (pool key), the bytes on the wire are TLS.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_model::backend_policy::{
    BackendSettings, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};
use portcullis_model::{AppProtocol, BackendTls};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;

pub type UpstreamClient = Client<LimitedConnector, Body>;

/// Connection pools shared by all tables and by every backend without
/// connection settings of its own.
#[derive(Clone)]
pub struct Upstreams {
    default: ClientPair,
}

impl Upstreams {
    pub fn new() -> Upstreams {
        Upstreams {
            default: ClientPair::new(&ConnectionSettings::default()),
        }
    }

    pub fn default_pair(&self) -> &ClientPair {
        &self.default
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

/// The parts of [`BackendSettings`] that shape connections; two backends
/// (or two tables of one backend) with equal ones can share pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: Option<usize>,
    /// `u32::MAX`: unlimited.
    pub max_connections: u32,
    pub max_pending: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_idle_per_endpoint: None,
            max_connections: u32::MAX,
            max_pending: u32::MAX,
        }
    }
}

impl ConnectionSettings {
    pub fn of(settings: &BackendSettings) -> ConnectionSettings {
        ConnectionSettings {
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            max_idle_per_endpoint: settings.max_idle_per_endpoint,
            max_connections: settings.circuit_breaker.max_connections,
            max_pending: settings.circuit_breaker.max_pending_requests,
        }
    }
}

/// An HTTP/1.1 and an h2c client over one connection limit.
#[derive(Clone)]
pub struct ClientPair {
    pub settings: ConnectionSettings,
    /// The BackendTLSPolicy the connections speak, if any.
    pub tls: Option<Arc<BackendTls>>,
    http1: UpstreamClient,
    h2c: UpstreamClient,
    pub limit: Arc<ConnectionLimit>,
}

impl ClientPair {
    pub fn new(settings: &ConnectionSettings) -> ClientPair {
        ClientPair::with_tls(settings, None)
    }

    /// A pair whose connections speak TLS (`tls`) or plain TCP (`None`).
    pub fn with_tls(settings: &ConnectionSettings, tls: Option<Arc<BackendTls>>) -> ClientPair {
        let limit = Arc::new(ConnectionLimit::new(
            settings.max_connections,
            settings.max_pending,
        ));
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(true);
        let connector = LimitedConnector {
            inner: http,
            limit: limit.clone(),
            wait: settings.connect_timeout,
            tls: None,
        };
        let with_tls = |protocol: AppProtocol| {
            let mut c = connector.clone();
            c.tls = tls
                .as_ref()
                .map(|t| Arc::new(crate::backend_tls::TlsConnect::new(t, protocol)));
            c
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(settings.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // We set Host ourselves: the URI authority is the endpoint
            // address, the Host header is what the client sent.
            .set_host(false);
        if let Some(n) = settings.max_idle_per_endpoint {
            builder.pool_max_idle_per_host(n);
        }
        let http1 = builder.build(with_tls(AppProtocol::Http1));
        builder
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30));
        let h2c = builder.build(with_tls(AppProtocol::H2c));
        ClientPair {
            settings: *settings,
            tls,
            http1,
            h2c,
            limit,
        }
    }

    pub fn client(&self, protocol: AppProtocol) -> &UpstreamClient {
        match protocol {
            AppProtocol::H2c => &self.h2c,
            AppProtocol::Http1 | AppProtocol::WebSocket => &self.http1,
        }
    }
}

/// Open connections of one backend and the requests waiting for one.
pub struct ConnectionLimit {
    permits: Option<Arc<Semaphore>>,
    max_pending: u32,
    pending: AtomicU32,
}

impl ConnectionLimit {
    fn new(max_connections: u32, max_pending: u32) -> ConnectionLimit {
        let permits = (max_connections != u32::MAX).then(|| {
            Arc::new(Semaphore::new(
                (max_connections as usize).min(Semaphore::MAX_PERMITS),
            ))
        });
        ConnectionLimit {
            permits,
            max_pending,
            pending: AtomicU32::new(0),
        }
    }

    /// A permit for one more connection: at once when below the limit,
    /// else after waiting (as one of at most `max_pending` waiters) for a
    /// connection to close.
    async fn acquire(&self, wait: Duration) -> Result<Option<OwnedSemaphorePermit>, Overloaded> {
        let Some(permits) = &self.permits else {
            return Ok(None);
        };
        if let Ok(p) = permits.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overloaded::MaxPending);
        }
        let waited = tokio::time::timeout(wait, permits.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(Overloaded::MaxConnections),
        }
    }
}

/// Which circuit-breaker limit refused a request; the value of the
/// `x-portcullis-overloaded` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overloaded {
    MaxConnections,
    MaxPending,
    MaxRequests,
}

impl Overloaded {
    pub fn as_str(self) -> &'static str {
        match self {
            Overloaded::MaxConnections => "max-connections",
            Overloaded::MaxPending => "max-pending",
            Overloaded::MaxRequests => "max-requests",
        }
    }
}

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "circuit breaker: {}", self.as_str())
    }
}

impl std::error::Error for Overloaded {}

/// Finds an [`Overloaded`] in an error's source chain (hyper wraps the
/// connector's error).
pub fn overloaded_cause(e: &(dyn std::error::Error + 'static)) -> Option<Overloaded> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(o) = err.downcast_ref::<Overloaded>() {
            return Some(*o);
        }
        cur = err.source();
    }
    None
}

/// `HttpConnector` behind a [`ConnectionLimit`]: each connection holds a
/// permit until it is closed.
#[derive(Clone)]
pub struct LimitedConnector {
    inner: HttpConnector,
    limit: Arc<ConnectionLimit>,
    wait: Duration,
    /// Set for backends with a BackendTLSPolicy.
    tls: Option<Arc<crate::backend_tls::TlsConnect>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for LimitedConnector {
    type Response = LimitedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<LimitedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let limit = self.limit.clone();
        let wait = self.wait;
        let tls = self.tls.clone();
        Box::pin(async move {
            let permit = limit.acquire(wait).await?;
            let tcp = tower_service::Service::call(&mut inner, uri).await?;
            let io = match tls {
                None => Stream::Plain(tcp),
                Some(tls) => {
                    let tls_stream = tls.handshake(tcp.into_inner()).await?;
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    Stream::Tls(Box::new(TokioIo::new(tls_stream)), h2)
                }
            };
            Ok(LimitedIo {
                io,
                _permit: permit,
            })
        })
    }
}

/// A connection holding its permit.
pub struct LimitedIo {
    io: Stream,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Plain TCP, or TLS over it (and whether ALPN chose h2).
enum Stream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is a kilobyte, a TCP stream a few words.
    Tls(
        Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
        bool,
    ),
}

impl Connection for LimitedIo {
    fn connected(&self) -> Connected {
        match &self.io {
            Stream::Plain(io) => io.connected(),
            Stream::Tls(_, h2) => {
                let c = Connected::new();
                if *h2 {
                    // hyper-util then speaks HTTP/2 on this connection.
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

/// Forwards an I/O call to whichever stream is inside.
macro_rules! io_call {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.io {
            Stream::Plain($io) => $call,
            Stream::Tls(boxed, _) => {
                let $io = &mut **boxed;
                $call
            }
        }
    };
}

impl hyper::rt::Read for LimitedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        io_call!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl hyper::rt::Write for LimitedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io_call!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io_call!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io_call!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io, _) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io_call!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}

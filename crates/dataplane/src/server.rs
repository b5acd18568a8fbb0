//! Listeners: one socket per port of the table, bound and unbound as tables
//! come and go; each accepted connection is served by hyper (HTTP/1.1, h2
//! via ALPN, h2c prior knowledge, upgrades).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_model::{Protocol, RouteTable};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::limits::{self, ConnTracker, Limits, MIN_HTTP1_HEADER_BYTES};
use crate::metrics::{self, Limit};
use crate::observe::{self, Observer};
use crate::otlp::SpanExporter;
use crate::proxy::ConnInfo;
use crate::state::Shared;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DataPlaneConfig {
    /// Address every port is bound on (e.g. 0.0.0.0, or 127.0.0.1).
    pub bind_ip: IpAddr,
    /// Sockets already bound by the caller, by port; used instead of binding.
    /// Lets tests hand in sockets on free ports without a race.
    pub preopened: HashMap<u16, std::net::TcpListener>,
    /// Where finished requests are logged (none: no access log).
    pub access_log: Option<AccessLog>,
    /// Where spans are exported (none: trace context is only propagated).
    pub spans: Option<SpanExporter>,
    /// Request and connection limits.
    pub limits: Limits,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            preopened: HashMap::new(),
            access_log: None,
            spans: None,
            limits: Limits::default(),
        }
    }
}

/// Lifecycle phase, broadcast to every listener and connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Stop accepting; connections finish their in-flight requests (HTTP/1
    /// closes after the current response, HTTP/2 sends GOAWAY).
    Draining,
    /// The drain deadline passed: close whatever is left.
    Closing,
}

/// Lets a task that outlives its request, the tunnel of an upgraded
/// connection (WebSocket), take part in the drain: while a clone is alive
/// shutdown waits for it, and the task must end when [`DrainWatch::closing`]
/// resolves (the drain deadline passed).
#[derive(Debug, Clone)]
pub struct DrainWatch(watch::Receiver<Phase>);

impl DrainWatch {
    pub async fn closing(&mut self) {
        reached(&mut self.0, Phase::Closing).await
    }
}

/// A running data plane.
pub struct DataPlane {
    pub shared: Arc<Shared>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
    /// Every listener and connection holds a receiver: when all are gone,
    /// the data plane has drained.
    phase: watch::Sender<Phase>,
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// False when the deadline passed and open connections were closed.
    pub in_time: bool,
}

impl DataPlane {
    /// Serves every table received on `tables`, starting with the current
    /// one. Runs until the sender is dropped or the handle is aborted.
    pub fn spawn(
        mut tables: watch::Receiver<Arc<RouteTable>>,
        config: DataPlaneConfig,
    ) -> DataPlane {
        let first = tables.borrow_and_update().clone();
        let shared = Arc::new(Shared::new(first.clone()));
        let (ready_tx, ready) = watch::channel(false);
        let (phase_tx, mut phase) = watch::channel(Phase::Serving);
        let task_shared = shared.clone();
        let observer = Arc::new(Observer {
            access_log: config.access_log.clone(),
            spans: config.spans.clone(),
        });
        let limits = Arc::new(config.limits.clone());
        let task = tokio::spawn(async move {
            let mut listeners = Listeners {
                config,
                accepting: HashMap::new(),
                shared: task_shared.clone(),
                observer,
                limits,
                phase: phase.clone(),
            };
            listeners.reconcile(&first);
            let _ = ready_tx.send(true);
            loop {
                tokio::select! {
                    changed = tables.changed() => if changed.is_err() { break },
                    _ = reached(&mut phase, Phase::Draining) => {
                        tracing::info!("data plane draining: listeners closed");
                        break;
                    }
                }
                let table = tables.borrow_and_update().clone();
                task_shared.swap(table.clone());
                listeners.reconcile(&table);
                tracing::info!(
                    generation = table.generation,
                    ports = table.ports.len(),
                    "serving new configuration"
                );
            }
            listeners.stop_all();
        });
        DataPlane {
            shared,
            ready,
            task,
            phase: phase_tx,
        }
    }

    /// Graceful shutdown: stops accepting at once (new connections are
    /// refused), lets every open connection finish the requests it has in
    /// flight (HTTP/1.1 closes after the current response, HTTP/2 sends
    /// GOAWAY and finishes its open streams), and closes what is still open
    /// after `drain`.
    pub async fn shutdown(self, drain: Duration) -> Drained {
        let _ = self.phase.send(Phase::Draining);
        let in_time = tokio::time::timeout(drain, self.phase.closed())
            .await
            .is_ok();
        if !in_time {
            tracing::warn!(
                deadline = ?drain,
                "drain deadline passed: closing the remaining connections"
            );
            let _ = self.phase.send(Phase::Closing);
            // Closing is immediate; the bound only guards against a
            // connection task that is not being polled.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.phase.closed()).await;
        }
        self.task.abort();
        Drained { in_time }
    }

    /// Waits until the first table is served (its ports are bound).
    pub async fn ready(&mut self) {
        let _ = self.ready.wait_for(|r| *r).await;
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

struct Listeners {
    config: DataPlaneConfig,
    accepting: HashMap<u16, JoinHandle<()>>,
    shared: Arc<Shared>,
    observer: Arc<Observer>,
    limits: Arc<Limits>,
    phase: watch::Receiver<Phase>,
}

impl Listeners {
    fn reconcile(&mut self, table: &RouteTable) {
        let wanted: Vec<u16> = table.ports.iter().map(|p| p.port).collect();
        self.accepting.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                // Stops accepting; connections already open finish normally.
                task.abort();
                tracing::info!(port, "listener closed");
            }
            keep
        });
        for port in wanted {
            if self.accepting.contains_key(&port) {
                continue;
            }
            match self.bind(port) {
                Ok(listener) => {
                    tracing::info!(port, address = ?listener.local_addr().ok(), "listening");
                    self.accepting.insert(
                        port,
                        tokio::spawn(accept_loop(
                            listener,
                            port,
                            Serving {
                                shared: self.shared.clone(),
                                observer: self.observer.clone(),
                                limits: self.limits.clone(),
                                phase: self.phase.clone(),
                            },
                        )),
                    );
                }
                // Retried with the next table; the controller reports the
                // Gateway's listener status.
                Err(e) => tracing::error!(port, error = %e, "cannot listen on port"),
            }
        }
    }

    fn bind(&mut self, port: u16) -> std::io::Result<TcpListener> {
        if let Some(std_listener) = self.config.preopened.remove(&port) {
            std_listener.set_nonblocking(true)?;
            return TcpListener::from_std(std_listener);
        }
        let addr = SocketAddr::new(self.config.bind_ip, port);
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }

    fn stop_all(&mut self) {
        for (_, task) in self.accepting.drain() {
            task.abort();
        }
    }
}

/// What every connection of a data plane shares.
#[derive(Clone)]
struct Serving {
    shared: Arc<Shared>,
    observer: Arc<Observer>,
    limits: Arc<Limits>,
    phase: watch::Receiver<Phase>,
}

/// Over the connection limit a new connection is accepted and closed at
/// once rather than left in the kernel's backlog: the client (or the load
/// balancer in front) learns immediately and can go to another replica,
/// instead of waiting in a queue whose timeouts it cannot see; and the
/// backlog keeps draining, so the kernel never drops SYNs silently.
async fn accept_loop(listener: TcpListener, port: u16, serving: Serving) {
    let slots = serving
        .limits
        .max_connections_per_listener
        .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))));
    // At the limit every refused connection is counted; the log says so
    // at most once a second.
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let permit = match &slots {
                    Some(slots) => match slots.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            metrics::global().record_limit(port, Limit::max_connections);
                            if last_refusal_log
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                            {
                                last_refusal_log = Some(tokio::time::Instant::now());
                                tracing::warn!(
                                    port,
                                    %remote,
                                    max = serving.limits.max_connections_per_listener,
                                    "connection limit reached: refusing new connections"
                                );
                            }
                            drop(stream);
                            continue;
                        }
                    },
                    None => None,
                };
                let serving = serving.clone();
                tokio::spawn(async move {
                    serve_connection(stream, remote, port, serving).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, remote: SocketAddr, port: u16, serving: Serving) {
    let _open = metrics::global().connection_opened(port);
    let _ = stream.set_nodelay(true);
    let state = serving.shared.current();
    let Some(port_state) = state.port(port).cloned() else {
        return;
    };
    match port_state.routes.config().protocol {
        Protocol::Http => {}
        Protocol::Tls => {
            // A stream, not requests: it stays on the table it started
            // with, and is cut when the drain deadline passes.
            let mut closing = serving.phase.clone();
            let settings = crate::tls_route::StreamSettings {
                handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
                idle_timeout: serving.limits.stream_idle_timeout,
                access_log: serving.observer.access_log.clone(),
            };
            tokio::select! {
                result = crate::tls_route::serve(stream, remote, state, port_state, &settings) => {
                    if let Err(e) = result {
                        tracing::debug!(port, %remote, error = %e, "TLS connection closed");
                    }
                }
                _ = reached(&mut closing, Phase::Closing) => {}
            }
            return;
        }
        Protocol::Https => {
            drop(state);
            serve_https(stream, remote, port, port_state, serving).await;
            return;
        }
    }
    drop(state);
    drop(port_state);
    let conn = Arc::new(ConnInfo {
        remote,
        local_port: port,
        tls: false,
        cert: None,
        limits: serving.limits.clone(),
        client_certificate: None,
        drain: DrainWatch(serving.phase.clone()),
    });
    serve_http(TokioIo::new(stream), conn, serving).await;
}

async fn serve_https(
    stream: TcpStream,
    remote: SocketAddr,
    port: u16,
    port_state: Arc<crate::state::PortState>,
    serving: Serving,
) {
    {
        let Some(tls) = port_state.tls.as_ref() else {
            tracing::debug!(port, %remote, "refusing TLS connection: no usable certificate");
            return;
        };
        let (tls_stream, cert) =
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(port, %remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(port, %remote, "TLS handshake timed out");
                    return;
                }
            };
        let client_certificate = port_state
            .client_auth
            .as_ref()
            .and_then(|a| a.identity(tls_stream.get_ref().1.peer_certificates()));
        // The certificates of this handshake's table; requests read the
        // table current when they arrive.
        drop(port_state);
        let conn = Arc::new(ConnInfo {
            remote,
            local_port: port,
            tls: true,
            cert,
            limits: serving.limits.clone(),
            client_certificate,
            drain: DrainWatch(serving.phase.clone()),
        });
        serve_http(TokioIo::new(tls_stream), conn, serving).await;
    }
}

/// hyper's connection builder with every limit hyper enforces itself.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/1: the read buffer bounds the request head (over it: 431), and
    // so does the header count (hyper answers 431 too). The header timer
    // runs from the moment hyper waits for a head, so it also bounds how
    // long a kept-alive connection may sit idle.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout)
        .max_buf_size(limits.max_request_header_bytes.max(MIN_HTTP1_HEADER_BYTES))
        .max_headers(limits.max_request_headers);
    // HTTP/2: the header list limit is also what bounds a CONTINUATION
    // flood (h2 counts the frames of one header block against it and
    // answers GOAWAY ENHANCE_YOUR_CALM); the reset limits answer rapid
    // reset (CVE-2023-44487) and MadeYouReset (CVE-2025-8671) the same way.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
    builder
}

async fn serve_http<I>(io: I, conn: Arc<ConnInfo>, serving: Serving)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Serving {
        shared,
        observer,
        limits,
        mut phase,
    } = serving;
    let builder = connection_builder(&limits);
    let port = conn.local_port;
    let tracker = Arc::new(ConnTracker::default());
    let service = {
        let (tracker, limits) = (tracker.clone(), limits.clone());
        service_fn(move |req| {
            serve_request(
                observer.clone(),
                shared.clone(),
                conn.clone(),
                limits.clone(),
                tracker.clone(),
                req,
            )
        })
    };
    let mut closing = phase.clone();
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        why = stop_serving(&mut phase, &tracker, limits.idle_timeout) => {
            if let Some(limit) = why {
                tracing::debug!(port, limit = limit.as_str(), "closing connection");
                metrics::global().record_limit(port, limit);
            }
            // HTTP/1.1: finish the current response, then close; idle
            // connections close now. HTTP/2: GOAWAY, open streams finish.
            connection.as_mut().graceful_shutdown();
            loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    _ = reached(&mut closing, Phase::Closing) => break Ok(()),
                    // An HTTP/2 graceful close waits for the client's PING
                    // answer; a client that never answers (or never reads)
                    // must not keep the connection: once nothing is in
                    // flight for another idle period, it is dropped.
                    _ = tokio::time::sleep(limits.idle_timeout) => if tracker.is_idle() {
                        tracing::debug!(port, "client did not finish the graceful close: closing");
                        break Ok(());
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        match connection_limit(&*e) {
            Some((limit, detail)) => limits::record(port, limit, detail),
            None => tracing::debug!(error = %e, "connection ended with error"),
        }
    }
}

/// Resolves when the connection should close gracefully: the data plane
/// drains (`None`), the connection was idle too long or served its last
/// request (the limit).
async fn stop_serving(
    phase: &mut watch::Receiver<Phase>,
    tracker: &ConnTracker,
    idle_timeout: Duration,
) -> Option<Limit> {
    tokio::select! {
        _ = reached(phase, Phase::Draining) => None,
        _ = tracker.idle_for(idle_timeout) => Some(Limit::idle_timeout),
        _ = tracker.close_requested() => Some(Limit::max_requests),
    }
}

/// One request through the observed proxy (which checks the request
/// limits hyper does not), counted against the connection's request cap.
async fn serve_request(
    observer: Arc<Observer>,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    limits: Arc<Limits>,
    tracker: Arc<ConnTracker>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<crate::body::Body>, std::convert::Infallible> {
    let ticket = tracker.request_started(limits.max_requests_per_connection);
    let http1 = req.version() < http::Version::HTTP_2;
    let grpc = crate::grpc_answer::is_grpc_request(req.headers());
    let mut resp = observe::handle(observer, shared, conn, req).await?;
    if grpc {
        resp = crate::grpc_answer::answer(resp);
    }
    // After a request refused by a limit, what is left of it (the body) is
    // not worth reading: HTTP/1 closes (HTTP/2 resets just the stream).
    let refused = matches!(
        resp.status(),
        http::StatusCode::PAYLOAD_TOO_LARGE
            | http::StatusCode::URI_TOO_LONG
            | http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    if (ticket.last || refused) && http1 {
        // HTTP/2 gets GOAWAY from the connection task instead.
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// Which limit ended a connection with an error, if one did.
fn connection_limit(error: &(dyn std::error::Error + 'static)) -> Option<(Limit, &'static str)> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                // hyper answered 431 or 414 (its own 64 KiB URI cap).
                return Some((Limit::header_size, "request head too large: 431"));
            }
            if h.is_timeout() {
                return Some((
                    Limit::header_timeout,
                    "request headers not received in time",
                ));
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.is_go_away() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                return Some((Limit::h2_abuse, "abusive HTTP/2 client: GOAWAY"));
            }
        }
        current = e.source();
    }
    None
}

/// Resolves once the data plane has reached `phase` (or was dropped).
async fn reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = rx.wait_for(|p| *p >= phase).await.map(|_| ());
}

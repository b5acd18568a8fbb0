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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access_log::AccessLog;
use crate::metrics;
use crate::observe::{self, Observer};
use crate::otlp::SpanExporter;
use crate::proxy::ConnInfo;
use crate::state::Shared;

/// Slowloris guard: a client must finish sending request headers this fast.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
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
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            preopened: HashMap::new(),
            access_log: None,
            spans: None,
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
        let task = tokio::spawn(async move {
            let mut listeners = Listeners {
                config,
                accepting: HashMap::new(),
                shared: task_shared.clone(),
                observer,
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
    phase: watch::Receiver<Phase>,
}

async fn accept_loop(listener: TcpListener, port: u16, serving: Serving) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                tokio::spawn(serve_connection(stream, remote, port, serving.clone()));
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
            tokio::select! {
                result = crate::tls_route::serve(stream, remote, state, port_state, TLS_HANDSHAKE_TIMEOUT) => {
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
        client_certificate: None,
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
            client_certificate,
        });
        serve_http(TokioIo::new(tls_stream), conn, serving).await;
    }
}

async fn serve_http<I>(io: I, conn: Arc<ConnInfo>, serving: Serving)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let Serving {
        shared,
        observer,
        mut phase,
    } = serving;
    let service =
        service_fn(move |req| observe::handle(observer.clone(), shared.clone(), conn.clone(), req));
    let mut closing = phase.clone();
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = reached(&mut phase, Phase::Draining) => {
            // HTTP/1.1: finish the current response, then close; idle
            // connections close now. HTTP/2: GOAWAY, open streams finish.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = reached(&mut closing, Phase::Closing) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with error");
    }
}

/// Resolves once the data plane has reached `phase` (or was dropped).
async fn reached(rx: &mut watch::Receiver<Phase>, phase: Phase) {
    // The guard `wait_for` returns is not `Send`: drop it here.
    let _ = rx.wait_for(|p| *p >= phase).await.map(|_| ());
}

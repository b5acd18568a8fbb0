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

use crate::proxy::{self, ConnInfo};
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
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            preopened: HashMap::new(),
        }
    }
}

/// A running data plane.
pub struct DataPlane {
    pub shared: Arc<Shared>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
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
        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            let mut listeners = Listeners {
                config,
                accepting: HashMap::new(),
                shared: task_shared.clone(),
            };
            listeners.reconcile(&first);
            let _ = ready_tx.send(true);
            while tables.changed().await.is_ok() {
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
        }
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
                        tokio::spawn(accept_loop(listener, port, self.shared.clone())),
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

async fn accept_loop(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                tokio::spawn(serve_connection(stream, remote, port, shared.clone()));
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, remote: SocketAddr, port: u16, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let state = shared.current();
    let Some(port_state) = state.port(port) else {
        return;
    };
    let https = port_state.routes.config().protocol == Protocol::Https;
    let tls_config = port_state.tls.clone();
    drop(state);

    if https {
        let Some(tls_config) = tls_config else {
            tracing::debug!(port, %remote, "refusing TLS connection: no usable certificate");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
        let tls_stream =
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
        let conn = Arc::new(ConnInfo {
            remote,
            local_port: port,
            tls: true,
        });
        serve_http(TokioIo::new(tls_stream), conn, shared).await;
    } else {
        let conn = Arc::new(ConnInfo {
            remote,
            local_port: port,
            tls: false,
        });
        serve_http(TokioIo::new(stream), conn, shared).await;
    }
}

async fn serve_http<I>(io: I, conn: Arc<ConnInfo>, shared: Arc<Shared>)
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
    let service = service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req));
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(error = %e, "connection ended with error");
    }
}
